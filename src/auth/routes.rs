//! Which GitHub routes are authenticated with the App JWT instead of an installation token.

/// Whether `path` (the part after the API base, e.g. `/app/installations`) is one of the routes GitHub
/// authenticates with the App JWT (`/app/...`, `/marketplace_listing/...`, `/{orgs,users,enterprises}/X/installation`,
/// `/repos/O/R/installation`). No allocation; any input is safe.
///
/// ```
/// use tower_github_app::auth::is_app_jwt_route;
/// assert!(is_app_jwt_route("/app/installations/42/access_tokens"));
/// assert!(is_app_jwt_route("/repos/octo-org/octo-repo/installation"));
/// assert!(!is_app_jwt_route("/repos/octo-org/octo-repo"));
/// assert!(!is_app_jwt_route("/installation/repositories"));
/// ```
pub fn is_app_jwt_route(path: &str) -> bool {
    // Most requests are installation routes: decide those from two bytes, without splitting the path. Every
    // App-JWT route starts with `/a` or `/m`, or ends with `installation`.
    let bytes = path.as_bytes();
    let maybe =
        matches!(bytes.get(1), Some(b'a' | b'm')) || (bytes.last() == Some(&b'n') && path.ends_with("/installation"));
    if !maybe {
        return false;
    }
    // A route is absolute: `app` (or what is left of `/api/v3app` after the prefix) is none.
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    const MAX: usize = 6;
    let mut segments = [""; MAX];
    let mut count = 0;
    for segment in relative.split('/') {
        if count == MAX {
            return false;
        }
        segments[count] = segment;
        count += 1;
    }
    let id = |s: &str| !s.is_empty();
    match &segments[..count] {
        ["app"]
        | ["app", "hook", "config"]
        | ["app", "hook", "deliveries"]
        | ["app", "installations"]
        | ["app", "installation-requests"] => true,
        ["app", "hook", "deliveries", d] | ["app", "installations", d] => id(d),
        ["app", "hook", "deliveries", d, "attempts"] => id(d),
        ["app", "installations", i, "access_tokens" | "suspended"] => id(i),
        ["marketplace_listing", rest @ ..] => {
            let rest = match rest {
                ["stubbed", rest @ ..] => rest,
                rest => rest,
            };
            match rest {
                ["plan"] | ["plans"] => true,
                ["accounts", a] => id(a),
                ["plans", p, "accounts"] => id(p),
                _ => false,
            }
        }
        ["orgs" | "users" | "enterprises", owner, "installation"] => id(owner),
        ["repos", owner, repo, "installation"] => id(owner) && id(repo),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_app_jwt_route;

    #[test]
    fn every_jwt_route_of_githubs_list() {
        for path in [
            "/app",
            "/app/hook/config",
            "/app/hook/deliveries",
            "/app/hook/deliveries/12",
            "/app/hook/deliveries/12/attempts",
            "/app/installations",
            "/app/installations/42",
            "/app/installations/42/access_tokens",
            "/app/installations/42/suspended",
            "/app/installation-requests",
            "/marketplace_listing/accounts/7",
            "/marketplace_listing/plan",
            "/marketplace_listing/plans",
            "/marketplace_listing/plans/3/accounts",
            "/marketplace_listing/stubbed/accounts/7",
            "/marketplace_listing/stubbed/plan",
            "/marketplace_listing/stubbed/plans",
            "/marketplace_listing/stubbed/plans/3/accounts",
            "/orgs/octo-org/installation",
            "/repos/octo-org/octo-repo/installation",
            "/users/octocat/installation",
            "/enterprises/acme/installation",
        ] {
            assert!(is_app_jwt_route(path), "{path}");
        }
    }

    #[test]
    fn installation_routes_and_near_misses() {
        for path in [
            "",
            "/",
            "/installation/repositories",
            "/installation/token",
            "/repos/o/r",
            "/repos/o/r/installations",
            "/repos//r/installation",
            "/orgs/o/installations",
            "/app/installations//access_tokens",
            "/app/hook",
            "/application",
            "/marketplace_listing",
            "/marketplace_listing/stubbed",
            "/marketplace_listing/plans/3",
            "/app/installations/42/access_tokens/extra/more",
            "/a/b/c/d/e/f/g/h",
            "app",
            "app/installations",
            "marketplace_listing/plans",
            "repos/o/r/installation",
        ] {
            assert!(!is_app_jwt_route(path), "{path}");
        }
    }
}
