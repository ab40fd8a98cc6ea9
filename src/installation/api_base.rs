//! Where the GitHub API lives: github.com, GitHub Enterprise Cloud (`*.ghe.com`) or a GitHub Enterprise Server.

use std::fmt;

use http::Uri;
use http::uri::{Authority, Scheme};

use crate::error::{Error, ErrorKind};

/// The base URL of a GitHub REST API, checked against how GitHub lays out its hosts.
///
/// - `https://api.github.com` (the default),
/// - `https://api.SUBDOMAIN.ghe.com` for GitHub Enterprise Cloud with data residency,
/// - `https://HOST/api/v3` for GitHub Enterprise Server (a missing `/api/v3` is refused: GitHub would answer
///   404 or 406 to every request),
/// - any path on a loopback host (`127.0.0.1`, `[::1]`, `localhost`), for test servers; only there is plain
///   `http` allowed, so tokens never cross a network unencrypted.
///
/// Tokens minted here are only ever sent to this scheme, host and port.
///
/// ```
/// use tower_github_app::ApiBase;
/// assert!(ApiBase::parse("https://api.github.com").is_ok());
/// assert!(ApiBase::parse("https://ghe.example.com/api/v3/").is_ok());
/// assert!(ApiBase::parse("https://ghe.example.com").is_err());
/// assert!(ApiBase::parse("api.github.com").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiBase {
    scheme: Scheme,
    authority: Authority,
    path: String,
}

impl ApiBase {
    /// `https://api.github.com`.
    pub fn github_com() -> Self {
        ApiBase { scheme: Scheme::HTTPS, authority: Authority::from_static("api.github.com"), path: String::new() }
    }

    /// Parses and checks a base URL.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        let uri: Uri = url.parse().map_err(|_| config(format!("the API base URL {url:?} is not a valid URL")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(config(format!(
                "the API base URL {url:?} has no scheme or host: write it in full, as https://api.github.com or \
                 https://HOST/api/v3"
            )));
        };
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(config(format!(
                "the API base URL {url:?} carries a query or user info: give only scheme, host and path"
            )));
        }
        let host = authority.host().to_ascii_lowercase();
        let loopback = is_loopback(&host);
        let path = uri.path().trim_end_matches('/').to_owned();
        if *scheme != Scheme::HTTPS && !(loopback && *scheme == Scheme::HTTP) {
            return Err(config(format!(
                "the API base URL {url:?} does not use https: tokens must not travel unencrypted (plain http is \
                 only allowed on loopback test servers)"
            )));
        }
        if host == "github.com" || host == "www.github.com" {
            return Err(config("github.com is the web host; the REST API is at https://api.github.com"));
        }
        if !loopback {
            let cloud = host == "api.github.com" || host.ends_with(".ghe.com");
            if cloud && !path.is_empty() {
                return Err(config(format!("the API base URL {url:?} has a path; {host} serves the API at its root")));
            }
            if host.ends_with(".ghe.com") && !host.starts_with("api.") {
                return Err(config(format!(
                    "{host} is the web host of a GitHub Enterprise Cloud tenant; its API is at https://api.{host}"
                )));
            }
            if !cloud && path != "/api/v3" {
                return Err(config(format!(
                    "the API base URL {url:?} looks like a GitHub Enterprise Server, whose REST API lives under \
                     /api/v3: use https://{authority}/api/v3"
                )));
            }
        }
        Ok(ApiBase { scheme: scheme.clone(), authority: authority.clone(), path })
    }

    /// The URL of an API path such as `/app/installations/1/access_tokens`.
    pub fn url(&self, path_and_query: &str) -> Result<Uri, Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.path, path_and_query))
            .build()
            .map_err(|e| Error::build(ErrorKind::InvalidRequest, "could not build an API URL").source(e).finish())
    }

    /// Whether `uri` goes to this API's scheme, host and port: the only place its tokens may be sent.
    pub fn is_same_origin(&self, uri: &Uri) -> bool {
        if uri.scheme() != Some(&self.scheme) {
            return false;
        }
        let Some(authority) = uri.authority() else {
            return false;
        };
        // Requests built from the base carry its authority verbatim: no parsing on the hot path.
        same_bytes(authority.as_str().as_bytes(), self.authority.as_str().as_bytes())
            || (authority.host().eq_ignore_ascii_case(self.authority.host())
                && authority.port_u16().or_else(|| default_port(&self.scheme)) == self.port())
    }

    fn port(&self) -> Option<u16> {
        self.authority.port_u16().or_else(|| default_port(&self.scheme))
    }

    /// The path prefix (`/api/v3` on GitHub Enterprise Server, empty on github.com).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host, for messages.
    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

/// Byte equality of two short strings, word by word, without a call into libc's `memcmp` (whose vector code
/// path costs more than the comparison itself for a host name).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let words_equal = a_words.by_ref().zip(b_words.by_ref()).all(|(x, y)| {
        u64::from_ne_bytes(x.try_into().unwrap_or_default()) == u64::from_ne_bytes(y.try_into().unwrap_or_default())
    });
    words_equal && a_words.remainder().iter().zip(b_words.remainder()).all(|(x, y)| x == y)
}

fn default_port(scheme: &Scheme) -> Option<u16> {
    if *scheme == Scheme::HTTPS {
        Some(443)
    } else if *scheme == Scheme::HTTP {
        Some(80)
    } else {
        None
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "[::1]" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn config(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, message)
}

impl Default for ApiBase {
    fn default() -> Self {
        Self::github_com()
    }
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

impl fmt::Debug for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiBase({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_github_hosts() {
        for ok in [
            "https://api.github.com",
            "https://api.github.com/",
            "https://ghe.example.com/api/v3",
            "https://api.acme.ghe.com",
            "http://127.0.0.1:8080",
            "http://localhost:1/prefix",
        ] {
            assert!(ApiBase::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_github_would_404() {
        for (bad, says) in [
            ("api.github.com", "no scheme"),
            ("/api/v3", "no scheme"),
            ("http://api.github.com", "https"),
            ("https://github.com", "api.github.com"),
            ("https://ghe.example.com", "/api/v3"),
            ("https://ghe.example.com/api", "/api/v3"),
            ("https://acme.ghe.com", "https://api.acme.ghe.com"),
            ("https://api.github.com/v3", "root"),
            ("https://u:p@api.github.com", "user info"),
        ] {
            let err = ApiBase::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig);
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn same_bytes_is_equality() {
        for (a, b) in [("", ""), ("a", "a"), ("api.github.com", "api.github.com"), ("127.0.0.1:8080", "127.0.0.1:8080")]
        {
            assert!(same_bytes(a.as_bytes(), b.as_bytes()));
        }
        for (a, b) in
            [("", "a"), ("api.github.com", "api.github.con"), ("api.github.com", "bpi.github.com"), ("a", "b")]
        {
            assert!(!same_bytes(a.as_bytes(), b.as_bytes()), "{a} {b}");
        }
    }

    #[test]
    fn origin_comparison() {
        let base = ApiBase::parse("https://ghe.example.com/api/v3").unwrap();
        assert!(base.is_same_origin(&"https://ghe.example.com/api/v3/repos/a/b".parse().unwrap()));
        assert!(base.is_same_origin(&"https://GHE.example.com:443/x".parse().unwrap()));
        assert!(!base.is_same_origin(&"http://ghe.example.com/api/v3".parse().unwrap()));
        assert!(!base.is_same_origin(&"https://ghe.example.com:8443/".parse().unwrap()));
        assert!(!base.is_same_origin(&"https://evil.example.com/api/v3".parse().unwrap()));
        assert!(!base.is_same_origin(&"/repos/a/b".parse().unwrap()));
        assert_eq!(base.url("/app").unwrap().to_string(), "https://ghe.example.com/api/v3/app");
    }
}
