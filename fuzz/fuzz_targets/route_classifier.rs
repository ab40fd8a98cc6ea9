//! The App-JWT route classifier takes any path without panicking, agrees with a slow reference implementation
//! built from GitHub's list (on the path as a server resolves it: percent-encoded unreserved characters decoded,
//! dot segments removed, names in any case, one trailing slash ignored), and never claims a path that does not
//! resolve to `/app`, `/marketplace_listing` or `.../installation`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_github_app::auth::is_app_jwt_route;

/// RFC 3986 6.2.2.2: `%XX` of an unreserved character is that character.
fn decode_unreserved(path: &str) -> String {
    let mut out = String::new();
    let mut chars = path.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '%' {
            if let Some(hex) = path.get(i + 1..i + 3) {
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    if v.is_ascii_alphanumeric() || "-._~".contains(v as char) {
                        out.push(v as char);
                        chars.next();
                        chars.next();
                        continue;
                    }
                }
            }
        }
        out.push(c);
    }
    out
}

/// RFC 3986 5.2.4, literally: the output buffer algorithm.
fn remove_dot_segments(input: &str) -> String {
    let mut input = input.to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../").or_else(|| input.strip_prefix("./")) {
            input = rest.to_owned();
        } else if input.starts_with("/./") {
            input = input[2..].to_owned();
        } else if input == "/." {
            input = "/".to_owned();
        } else if input.starts_with("/../") || input == "/.." {
            input = if input == "/.." { "/".to_owned() } else { input[3..].to_owned() };
            match output.rfind('/') {
                Some(at) => output.truncate(at),
                None => output.clear(),
            }
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |at| at + start);
            output.push_str(&input[..end]);
            input = input[end..].to_owned();
        }
    }
    output
}

fn reference(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    let resolved = if path.contains('.') || path.contains('%') {
        remove_dot_segments(&decode_unreserved(path))
    } else {
        path.to_owned()
    };
    let lower = resolved.to_ascii_lowercase();
    let Some(relative) = lower.strip_prefix('/') else {
        return false;
    };
    let relative = match relative.strip_suffix('/') {
        Some(r) if !r.is_empty() => r,
        _ => relative,
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
        if fast && !path.contains('.') && !path.contains('%') {
            let lower = path.to_ascii_lowercase();
            let lower = lower.strip_suffix('/').unwrap_or(&lower);
            assert!(lower.starts_with("/app") || lower.starts_with("/marketplace_listing") || lower.ends_with("/installation"));
        }
    }
});
