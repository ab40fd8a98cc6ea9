//! The git credential helper protocol (`git help credential`): what git sends a helper on stdin, and what a
//! helper answers on stdout.
//!
//! Git sends `key=value` lines ending at a blank line or at the end of input; keys ending in `[]` repeat. A helper
//! answering `get` prints the attributes it fills in; for `store` and `erase` it prints nothing.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest input a helper reads: git sends a few hundred bytes; anything far larger is not git.
pub(crate) const MAX_INPUT: usize = 64 * 1024;

/// What git asked about.
#[derive(Default)]
pub(crate) struct Request {
    pub(crate) protocol: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) username: Option<String>,
    /// Only read for `erase` (the token git says was refused); never printed.
    pub(crate) password: Option<String>,
}

impl Request {
    /// Reads git's attributes. Unknown keys (`capability[]`, `wwwauth[]`, `url`…) are ignored; a line without
    /// `=` is refused, as git itself refuses it.
    pub(crate) fn parse(input: &str) -> Result<Request, String> {
        let mut request = Request::default();
        for line in input.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err("git sent a line without `=`: is this git's credential protocol?".into());
            };
            let value = Some(value.to_owned());
            match key {
                "protocol" => request.protocol = value,
                "host" => request.host = value,
                "path" => request.path = value,
                "username" => request.username = value,
                "password" => request.password = value,
                // `url=` is split by git into the attributes above before helpers run.
                _ => {}
            }
        }
        Ok(request)
    }

    /// `owner/repo` from `path` (sent when `credential.useHttpPath` is true): `owner/repo.git`, `owner/repo`,
    /// with or without a trailing `/` or further segments (`owner/repo.git/info/refs`).
    pub(crate) fn repository(&self) -> Option<(String, String)> {
        let mut segments = self.path.as_deref()?.trim_matches('/').split('/');
        let owner = segments.next().filter(|s| !s.is_empty())?;
        let repo = segments.next()?;
        let repo = repo.strip_suffix(".git").unwrap_or(repo);
        (!repo.is_empty()).then(|| (owner.to_owned(), repo.to_owned()))
    }
}

/// The answer to `get`: GitHub's documented username for installation tokens, the token, and when it expires
/// (git ≥ 2.41 then drops it from `credential-cache` in time; older gits ignore the attribute).
pub(crate) fn answer(token: &str, expires_at: SystemTime) -> String {
    let expiry = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = String::with_capacity(token.len() + 80);
    let _ = write!(out, "username=x-access-token\npassword={token}\npassword_expiry_utc={expiry}\n");
    out
}

/// The host git uses for the API at `api_host` (`host[:port]`): `github.com` for `api.github.com`,
/// `X.ghe.com` for `api.X.ghe.com`; a GitHub Enterprise Server (API under `/api/v3`) serves git on its own host.
pub(crate) fn git_host_for(api_host: &str) -> String {
    // `api.github.com:443` and `api.github.com.` are `api.github.com`.
    let lower = api_host.to_ascii_lowercase();
    let lower = lower.strip_suffix(":443").unwrap_or(&lower);
    let lower = lower.strip_suffix('.').unwrap_or(lower).to_owned();
    if lower == "api.github.com" {
        return "github.com".into();
    }
    if let Some(tenant) = lower.strip_prefix("api.")
        && tenant.ends_with(".ghe.com")
    {
        return tenant.to_owned();
    }
    lower
}

/// Whether git's `host` (`name[:port]`) is this machine: the only place a token may go over plain http.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_git_sends() {
        let request = Request::parse(
            "capability[]=authtype\nprotocol=https\nhost=github.com\npath=octo-org/octo-repo.git\nwwwauth[]=Basic \
             realm=\"GitHub\"\n\nprotocol=ignored\n",
        )
        .unwrap();
        assert_eq!(request.protocol.as_deref(), Some("https"));
        assert_eq!(request.host.as_deref(), Some("github.com"));
        assert_eq!(request.repository(), Some(("octo-org".into(), "octo-repo".into())));
        assert!(Request::parse("protocol https\n").is_err());
        assert!(Request::parse("").unwrap().host.is_none());
    }

    #[test]
    fn repository_paths() {
        let repo = |path: &str| Request { path: Some(path.into()), ..Request::default() }.repository();
        assert_eq!(repo("o/r"), Some(("o".into(), "r".into())));
        assert_eq!(repo("/o/r.git/"), Some(("o".into(), "r".into())));
        assert_eq!(repo("o/r.git/info/refs"), Some(("o".into(), "r".into())));
        assert_eq!(repo("o"), None);
        assert_eq!(repo("o/.git"), None);
        assert_eq!(repo(""), None);
    }

    #[test]
    fn git_hosts() {
        assert_eq!(git_host_for("api.github.com"), "github.com");
        assert_eq!(git_host_for("api.github.com:443"), "github.com");
        assert_eq!(git_host_for("api.github.com."), "github.com");
        assert_eq!(git_host_for("API.octo.ghe.com"), "octo.ghe.com");
        assert_eq!(git_host_for("ghe.example.com"), "ghe.example.com");
        assert_eq!(git_host_for("127.0.0.1:8080"), "127.0.0.1:8080");
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.0.0.1:8080", "localhost:3000", "[::1]:80", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["github.com", "127.0.0.1.evil.com", "localhost.evil.com:80", "10.0.0.1", "::2"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn answers_with_the_expiry() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(answer("ghs_x", at), "username=x-access-token\npassword=ghs_x\npassword_expiry_utc=1700000000\n");
    }
}
