//! Which GitHub routes are authenticated with the App JWT instead of an installation token.

use std::borrow::Cow;

/// Whether `path` (the part after the API base, e.g. `/app/installations`) is one of the routes GitHub
/// authenticates with the App JWT (`/app/...`, `/marketplace_listing/...`, `/{orgs,users,enterprises}/X/installation`,
/// `/repos/O/R/installation`). Any input is safe.
///
/// The path is read the way a server resolves it: route names match in any case (`/APP`), one trailing slash is
/// ignored (`/app/`), percent-encoded unreserved characters are decoded (`%2e` is `.`), and dot segments are
/// resolved (`/orgs/../installation` is `/installation`, an installation route). Only such unusual paths cost an
/// allocation; the common ones are decided from a few bytes.
///
/// ```
/// use tower_github_app::auth::is_app_jwt_route;
/// assert!(is_app_jwt_route("/app/installations/42/access_tokens"));
/// assert!(is_app_jwt_route("/repos/octo-org/octo-repo/installation"));
/// assert!(is_app_jwt_route("/APP/"));
/// assert!(!is_app_jwt_route("/repos/octo-org/octo-repo"));
/// assert!(!is_app_jwt_route("/installation/repositories"));
/// assert!(!is_app_jwt_route("/orgs/../installation"));
/// assert!(is_app_jwt_route("/repos/o/r/%2e%2e/%2E%2E/../app"));
/// ```
#[inline]
pub fn is_app_jwt_route(path: &str) -> bool {
    is_app_jwt_route_with(path, has_dot_or_percent(path.as_bytes()))
}

/// [`is_app_jwt_route`] with [`has_dot_or_percent`] already known.
#[inline]
fn is_app_jwt_route_with(path: &str, unusual: bool) -> bool {
    let bytes = path.as_bytes();
    // Most requests are installation routes: decide those from a few bytes. Every App-JWT route starts with `/a`
    // or `/m` or ends with `installation`, in any case and with an optional trailing slash, unless dot segments
    // or percent-encodings change what the path means.
    let maybe =
        matches!(bytes.get(1), Some(b'a' | b'A' | b'm' | b'M')) || matches!(bytes.last(), Some(b'n' | b'N' | b'/'));
    if !maybe && !unusual {
        return false;
    }
    let normalized = if unusual { normalize(path) } else { Cow::Borrowed(path) };
    classify(&normalized)
}

/// Whether a request to `path` (its whole URI path) on an API served under `prefix` (`/api/v3` on GitHub
/// Enterprise Server, empty on github.com) goes to an App-JWT route. The whole path is resolved first, as the
/// server resolves it, then the prefix is stripped: `/api/v3/../v3/app` is `/app`, and `/api/v3/x/../../app`
/// (which is `/api/app`) is no API route at all. `unusual` is [`has_dot_or_percent`] of the path.
#[inline]
pub(crate) fn is_app_jwt_request(path: &str, prefix: &str, unusual: bool) -> bool {
    if prefix.is_empty() {
        return is_app_jwt_route_with(path, unusual);
    }
    fn under<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
        path.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }
    if unusual {
        let resolved = normalize(path);
        return under(&resolved, prefix).is_some_and(is_app_jwt_route);
    }
    under(path, prefix).is_some_and(|path| is_app_jwt_route_with(path, false))
}

/// The account a request path names, as GitHub routes it: `/repos/{owner}/{repo}/...` names a repository,
/// `/orgs/{org}/...` an organization, `/users/{user}/...` a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountRoute<'p> {
    /// `/repos/{owner}/{repo}/...`.
    Repository(&'p str, &'p str),
    /// `/orgs/{org}/...`.
    Org(&'p str),
    /// `/users/{user}/...`.
    User(&'p str),
    /// `/repos/...`, `/orgs/...` or `/users/...` without a name where one belongs (`/repos//r`, `/orgs/`), or a
    /// path that starts with `//`: not read, never guessed.
    Unreadable,
}

/// The account `path` (a whole URI path, under `prefix`) names, if any. `path` must be usual (no dot segment,
/// no percent-encoding: see [`has_dot_or_percent`]); [`account_route_resolved`] reads the others.
#[inline]
pub(crate) fn account_route<'p>(path: &'p str, prefix: &str) -> Option<AccountRoute<'p>> {
    // No `strip_prefix("")` on github.com: it calls libc's `memcmp`, whose vector entry costs more than the
    // whole route read.
    if prefix.is_empty() {
        return account_route_of(path);
    }
    account_route_of(path.strip_prefix(prefix)?)
}

/// [`AccountRoute`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedAccountRoute {
    Repository(String, String),
    Org(String),
    User(String),
    Unreadable,
}

/// [`account_route`] for any path, resolved as a server resolves it first.
pub(crate) fn account_route_resolved(path: &str, prefix: &str) -> Option<OwnedAccountRoute> {
    let resolved = if has_dot_or_percent(path.as_bytes()) { normalize(path) } else { Cow::Borrowed(path) };
    Some(match account_route_of(resolved.strip_prefix(prefix)?)? {
        AccountRoute::Repository(owner, repo) => OwnedAccountRoute::Repository(owner.to_owned(), repo.to_owned()),
        AccountRoute::Org(org) => OwnedAccountRoute::Org(org.to_owned()),
        AccountRoute::User(user) => OwnedAccountRoute::User(user.to_owned()),
        AccountRoute::Unreadable => OwnedAccountRoute::Unreadable,
    })
}

#[inline]
fn account_route_of(path: &str) -> Option<AccountRoute<'_>> {
    // A few byte comparisons, no iterator: this runs on every request of a pool.
    let bytes = path.as_bytes();
    // `name` in any case, then a slash. Setting bit 5 lower-cases a letter and maps no other byte onto one.
    let word = |at: usize, name: &[u8]| {
        bytes.len() > at + name.len()
            && bytes[at + name.len()] == b'/'
            && bytes[at..at + name.len()].iter().zip(name).all(|(b, n)| b | 0x20 == *n)
    };
    match bytes {
        [b'/', b'/', ..] => return Some(AccountRoute::Unreadable),
        [b'/', ..] => {}
        _ => return None,
    }
    // 0: repository, 1: organization, 2: user.
    let (kind, rest) = if word(1, b"repos") {
        (0, &path[7..])
    } else if word(1, b"orgs") {
        (1, &path[6..])
    } else if word(1, b"users") {
        (2, &path[7..])
    } else {
        return None;
    };
    let (owner, rest) = segment(rest);
    if owner.is_empty() {
        return Some(AccountRoute::Unreadable);
    }
    match kind {
        1 => return Some(AccountRoute::Org(owner)),
        2 => return Some(AccountRoute::User(owner)),
        _ => {}
    }
    let (repo, _) = segment(rest);
    if repo.is_empty() {
        return Some(AccountRoute::Unreadable);
    }
    Some(AccountRoute::Repository(owner, repo))
}

/// The first segment of `path` and what follows its slash.
#[inline]
fn segment(path: &str) -> (&str, &str) {
    match find_slash(path.as_bytes()) {
        Some(end) => (&path[..end], &path[end + 1..]),
        None => (path, ""),
    }
}

/// Where the first `/` in `bytes` is, eight bytes at a time (GitHub names are short: one or two words).
#[inline]
fn find_slash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default()) ^ (ONES * u64::from(b'/'));
        // The lowest zero byte sets its high bit exactly (false positives only above a true one).
        let zero = word.wrapping_sub(ONES) & !word & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..].iter().position(|&b| b == b'/').map(|i| at + i)
}

/// Whether `bytes` holds a `.` or a `%`, eight bytes at a time (no call, no dispatch: request paths are short).
#[inline]
pub(crate) fn has_dot_or_percent(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A zero byte in `x` sets its high bit here (exactly, for the first zero; others may be false positives
    // only after a true one, which is enough for "any").
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let hit = |word: u64| has_zero(word ^ (ONES * u64::from(b'.'))) | has_zero(word ^ (ONES * u64::from(b'%'))) != 0;
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().any(|&b| b == b'.' || b == b'%');
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    // Whole words, then one last word that overlaps the one before: no byte-by-byte tail.
    let mut at = 0;
    while at + 8 < n {
        if hit(word(at)) {
            return true;
        }
        at += 8;
    }
    hit(word(n - 8))
}

/// Decodes percent-encoded unreserved characters and resolves dot segments (RFC 3986, sections 6.2.2.2 and
/// 5.2.4). Other percent-encodings (`%2F`) stay as they are: they are data, not structure.
fn normalize(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(value) = bytes.get(i + 1..i + 3).and_then(|hex| std::str::from_utf8(hex).ok())
            && let Ok(value) = u8::from_str_radix(value, 16)
            && (value.is_ascii_alphanumeric() || b"-._~".contains(&value))
        {
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII was decoded, so this stays valid UTF-8.
    let decoded = String::from_utf8(decoded).unwrap_or_default();
    let Some(relative) = decoded.strip_prefix('/') else {
        return Cow::Owned(decoded);
    };
    let segments: Vec<&str> = relative.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            other => {
                out.push(other);
                continue;
            }
        }
        // A trailing `.` or `..` leaves a trailing slash.
        if last {
            out.push("");
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

fn classify(path: &str) -> bool {
    // A route is absolute: `app` (or what is left of `/api/v3app` after the prefix) is none.
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    // One trailing slash names the same resource.
    let relative = relative.strip_suffix('/').filter(|r| !r.is_empty()).unwrap_or(relative);
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
    let is = |s: &str, name: &str| s.eq_ignore_ascii_case(name);
    match &segments[..count] {
        [app] if is(app, "app") => true,
        [app, rest @ ..] if is(app, "app") => match rest {
            [installations] => is(installations, "installations") || is(installations, "installation-requests"),
            // `/app/hook/config`, `/app/hook/deliveries`, `/app/installations/{id}`.
            [first, second] => {
                (is(first, "hook") && (is(second, "config") || is(second, "deliveries")))
                    || (is(first, "installations") && id(second))
            }
            // `/app/hook/deliveries/{id}`, `/app/installations/{id}/access_tokens|suspended`.
            [first, second, third] => {
                (is(first, "hook") && is(second, "deliveries") && id(third))
                    || (is(first, "installations")
                        && id(second)
                        && (is(third, "access_tokens") || is(third, "suspended")))
            }
            [hook, deliveries, d, attempts] => {
                is(hook, "hook") && is(deliveries, "deliveries") && id(d) && is(attempts, "attempts")
            }
            _ => false,
        },
        [marketplace, rest @ ..] if is(marketplace, "marketplace_listing") => {
            let rest = match rest {
                [stubbed, rest @ ..] if is(stubbed, "stubbed") => rest,
                rest => rest,
            };
            match rest {
                [plan] => is(plan, "plan") || is(plan, "plans"),
                [accounts, a] => is(accounts, "accounts") && id(a),
                [plans, p, accounts] => is(plans, "plans") && id(p) && is(accounts, "accounts"),
                _ => false,
            }
        }
        [kind, owner, installation] => {
            (is(kind, "orgs") || is(kind, "users") || is(kind, "enterprises"))
                && id(owner)
                && is(installation, "installation")
        }
        [repos, owner, repo, installation] => {
            is(repos, "repos") && id(owner) && id(repo) && is(installation, "installation")
        }
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
            "//",
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
            "/app//",
            "/repos/o/r/installation//",
        ] {
            assert!(!is_app_jwt_route(path), "{path}");
        }
    }

    #[test]
    fn case_and_a_trailing_slash_do_not_change_the_route() {
        for path in [
            "/APP",
            "/App/",
            "/app/",
            "/App/Installations/42/Access_Tokens",
            "/MARKETPLACE_LISTING/Stubbed/PLANS",
            "/Repos/Octo-Org/Octo-Repo/Installation",
            "/repos/o/r/installation/",
            "/ORGS/o/INSTALLATION/",
        ] {
            assert!(is_app_jwt_route(path), "{path}");
        }
    }

    #[test]
    fn under_a_prefix_the_whole_path_is_resolved_first() {
        use super::is_app_jwt_request;
        for (path, jwt) in [
            ("/api/v3/app", true),
            ("/api/v3/../v3/app", true),
            ("/api/v3/%2e%2e/v3/app", true),
            ("/api/v3/x/../../app", false),
            ("/api/v3/repos/o/r", false),
            ("/api/v3x/app", false),
            ("/app", false),
            ("/api/v3/orgs/../installation", false),
        ] {
            let unusual = super::has_dot_or_percent(path.as_bytes());
            assert_eq!(is_app_jwt_request(path, "/api/v3", unusual), jwt, "{path}");
        }
        assert!(is_app_jwt_request("/app", "", false));
    }

    #[test]
    fn the_word_scan_finds_every_dot_and_percent() {
        for n in 0..40 {
            let clean: Vec<u8> = (0..n).map(|i| b"/abcxyz-_0"[i % 10]).collect();
            assert!(!super::has_dot_or_percent(&clean), "{n}");
            for i in 0..n {
                for special in [b'.', b'%'] {
                    let mut dirty = clean.clone();
                    dirty[i] = special;
                    assert!(super::has_dot_or_percent(&dirty), "{n} {i}");
                }
            }
        }
        // Bytes next to the searched ones (and 0x80 and up) are not mistaken for them.
        assert!(!super::has_dot_or_percent("/-/$&,/\u{e9}\u{ff}/\u{2e2e}".as_bytes()));
    }

    #[test]
    fn dot_segments_and_encoded_dots_are_resolved_first() {
        for (path, jwt) in [
            ("/orgs/../installation", false),
            ("/orgs/%2e%2e/installation", false),
            ("/orgs/%2E%2E/installation", false),
            ("/repos/o/r/../../../app", true),
            ("/repos/o/r/%2e%2e/%2e%2e/%2e%2e/app", true),
            ("/app/./installations", true),
            ("/app/installations/..", true),
            ("/app/installations/.", true),
            ("/app/../installation/repositories", false),
            ("/../../app", true),
            ("/orgs/o%2Fx/installation", true),
            ("/%61pp", true),
            ("/repos/o/r.js/installation", true),
            ("/repos/o/.../installation", true),
            ("/repos/o/../installation", false),
        ] {
            assert_eq!(is_app_jwt_route(path), jwt, "{path}");
        }
    }

    #[test]
    fn find_slash_finds_the_first_slash() {
        for text in ["", "/", "a/", "abcdefgh/", "abcdefghi/j/", "abcdefghijklmnop", "abcdefg/h/", "0123456789abcde/"] {
            assert_eq!(super::find_slash(text.as_bytes()), text.find('/'), "{text:?}");
        }
        for len in 0..40 {
            for slash in 0..len {
                let mut text = vec![b'x'; len];
                text[slash] = b'/';
                if slash + 1 < len {
                    text[len - 1] = b'/';
                }
                assert_eq!(super::find_slash(&text), Some(slash));
            }
        }
    }

    #[test]
    fn account_routes() {
        use super::{AccountRoute, account_route, account_route_resolved};
        let repo = |o, r| Some(AccountRoute::Repository(o, r));
        assert_eq!(account_route("/repos/Octo-Org/octo-repo/issues/1", ""), repo("Octo-Org", "octo-repo"));
        assert_eq!(account_route("/repos/o/r", ""), repo("o", "r"));
        assert_eq!(account_route("/REPOS/o/r/", ""), repo("o", "r"));
        assert_eq!(account_route("/repos/o", ""), Some(AccountRoute::Unreadable));
        assert_eq!(account_route("/repos//r", ""), Some(AccountRoute::Unreadable));
        assert_eq!(account_route("//repos/o/r", ""), Some(AccountRoute::Unreadable));
        assert_eq!(account_route("/repos/o//r", ""), Some(AccountRoute::Unreadable));
        assert_eq!(account_route("/orgs/", ""), Some(AccountRoute::Unreadable));
        assert_eq!(account_route("/user", ""), None);
        assert_eq!(account_route("/users", ""), None);
        assert_eq!(account_route("/repo/o/r", ""), None);
        assert_eq!(account_route("/repoS/o/r", ""), repo("o", "r"));
        assert_eq!(account_route("/rePo\x13/o/r", ""), None);
        assert_eq!(account_route("/orgs/octo-org/members", ""), Some(AccountRoute::Org("octo-org")));
        assert_eq!(account_route("/users/octocat", ""), Some(AccountRoute::User("octocat")));
        assert_eq!(account_route("/installation/repositories", ""), None);
        assert_eq!(account_route("/api/v3/repos/o/r", "/api/v3"), repo("o", "r"));
        assert_eq!(account_route("/repos/o/r", "/api/v3"), None);
        use super::OwnedAccountRoute as Owned;
        let owned = |o: &str, r: &str| Some(Owned::Repository(o.to_owned(), r.to_owned()));
        assert_eq!(account_route_resolved("/repos/x/../o/r", ""), owned("o", "r"));
        assert_eq!(account_route_resolved("/repos/a/b/../../../repos/o/r", ""), owned("o", "r"));
        assert_eq!(account_route_resolved("/repos/%6F/r", ""), owned("o", "r"));
        assert_eq!(account_route_resolved("/orgs/%6F", ""), Some(Owned::Org("o".to_owned())));
        assert_eq!(account_route_resolved("/users/o/x", ""), Some(Owned::User("o".to_owned())));
        assert_eq!(account_route_resolved("/repos/o/%2e%2e", ""), Some(Owned::Unreadable));
    }
}
