//! The App-JWT route classifier takes any path without panicking, agrees with a slow reference implementation
//! built from GitHub's list, and never claims a path outside `/app`, `/marketplace_listing` or `.../installation`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_github_app::auth::is_app_jwt_route;

fn reference(path: &str) -> bool {
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = relative.split('/').collect();
    let id = |s: &&str| !s.is_empty();
    match segments.as_slice() {
        ["app"] | ["app", "hook", "config"] | ["app", "hook", "deliveries"] | ["app", "installations"]
        | ["app", "installation-requests"] => true,
        ["app", "hook", "deliveries", d] | ["app", "installations", d] => id(d),
        ["app", "hook", "deliveries", d, "attempts"] => id(d),
        ["app", "installations", i, "access_tokens"] | ["app", "installations", i, "suspended"] => id(i),
        ["marketplace_listing", "stubbed", rest @ ..] | ["marketplace_listing", rest @ ..] => match rest {
            ["plan"] | ["plans"] => true,
            ["accounts", a] => id(a),
            ["plans", p, "accounts"] => id(p),
            _ => false,
        },
        ["orgs", o, "installation"] | ["users", o, "installation"] | ["enterprises", o, "installation"] => id(o),
        ["repos", o, r, "installation"] => id(o) && id(r),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        let fast = is_app_jwt_route(path);
        assert_eq!(fast, reference(path), "{path:?}");
        if fast {
            assert!(path.starts_with("/app") || path.starts_with("/marketplace_listing") || path.ends_with("/installation"));
        }
    }
});
