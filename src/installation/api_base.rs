//! Where the GitHub API lives: github.com, GitHub Enterprise Cloud (`*.ghe.com`) or a GitHub Enterprise Server,
//! and where its release assets are uploaded.

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
/// Tokens minted here are only ever sent to this scheme, host and port, and to the API's uploads origin for
/// release assets: `https://uploads.github.com` for github.com, `https://uploads.SUBDOMAIN.ghe.com` for
/// `*.ghe.com`, `https://HOST/api/uploads` for GitHub Enterprise Server (set another with
/// [`with_uploads`](Self::with_uploads), e.g. for a test server). A host written with a trailing dot
/// (`api.github.com.`) is the same host.
///
/// ```
/// use tower_github_app::ApiBase;
/// assert!(ApiBase::parse("https://api.github.com").is_ok());
/// assert!(ApiBase::parse("https://ghe.example.com/api/v3/").is_ok());
/// assert!(ApiBase::parse("https://ghe.example.com").is_err());
/// assert!(ApiBase::parse("api.github.com").is_err());
/// assert_eq!(ApiBase::github_com().uploads().unwrap().to_string(), "https://uploads.github.com");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiBase {
    scheme: Scheme,
    authority: Authority,
    path: String,
    uploads: Option<Origin>,
}

/// A scheme, host, port and path prefix: where uploads go.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    pub(crate) path: String,
}

/// Where a request goes, as far as a token of this API may follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The REST API's origin.
    Api,
    /// The API's uploads origin (release assets): the installation token, never the App JWT.
    Uploads,
    /// Another origin: no token.
    Elsewhere,
    /// A URI without a host: refused, since nobody can tell where a token would go.
    NoHost,
}

impl ApiBase {
    /// `https://api.github.com`.
    pub fn github_com() -> Self {
        ApiBase {
            scheme: Scheme::HTTPS,
            authority: Authority::from_static("api.github.com"),
            path: String::new(),
            uploads: Some(Origin {
                scheme: Scheme::HTTPS,
                authority: Authority::from_static("uploads.github.com"),
                path: String::new(),
            }),
        }
    }

    /// Parses and checks a base URL.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let (Origin { scheme, authority, path }, host, loopback) =
            checked_origin(url, "the API base URL", API_EXAMPLE)?;
        // Shown as given: `checked_origin` refused user info and queries, where URLs carry secrets.
        let shown = url.trim();
        if host == "github.com" || host == "www.github.com" {
            return Err(config("github.com is the web host; the REST API is at https://api.github.com"));
        }
        if !loopback {
            let cloud = host == "api.github.com" || host.ends_with(".ghe.com");
            if cloud && !path.is_empty() {
                return Err(config(format!(
                    "the API base URL {shown:?} has a path; {host} serves the API at its root"
                )));
            }
            if host.ends_with(".ghe.com") && !host.starts_with("api.") {
                return Err(config(format!(
                    "{host} is the web host of a GitHub Enterprise Cloud tenant; its API is at https://api.{host}"
                )));
            }
            if !cloud && path != "/api/v3" {
                return Err(config(format!(
                    "the API base URL {shown:?} looks like a GitHub Enterprise Server, whose REST API lives under \
                     /api/v3: use https://{authority}/api/v3"
                )));
            }
        }
        let uploads = if loopback {
            None
        } else if host == "api.github.com" || host.ends_with(".ghe.com") {
            // api.github.com → uploads.github.com; api.X.ghe.com → uploads.X.ghe.com.
            let uploads_host = format!("uploads.{}", host.strip_prefix("api.").unwrap_or(&host));
            let authority = match authority.port() {
                Some(port) => format!("{uploads_host}:{port}"),
                None => uploads_host,
            };
            Authority::try_from(authority.as_str()).ok().map(|authority| Origin {
                scheme: scheme.clone(),
                authority,
                path: String::new(),
            })
        } else {
            Some(Origin { scheme: scheme.clone(), authority: authority.clone(), path: "/api/uploads".into() })
        };
        Ok(ApiBase { scheme, authority, path, uploads })
    }

    /// The same API with release-asset uploads at `url` (scheme, host, port and path prefix), for servers whose
    /// uploads origin is not GitHub's usual one (test servers, proxies). Checked like the API base: https, or
    /// plain http on loopback only.
    pub fn with_uploads(mut self, url: &str) -> Result<Self, Error> {
        self.uploads =
            Some(checked_origin(url, "the uploads URL", "https://uploads.github.com or https://HOST/api/uploads")?.0);
        Ok(self)
    }

    /// Where release assets are uploaded with this API's tokens, if anywhere.
    pub fn uploads(&self) -> Option<String> {
        self.uploads.as_ref().map(|o| format!("{}://{}{}", o.scheme, o.authority, o.path))
    }

    /// Where `uri` goes: this API (and which route), its uploads origin, elsewhere, or nowhere.
    #[inline(always)]
    pub(crate) fn target(&self, uri: &Uri) -> Target {
        let Some(authority) = uri.authority() else {
            return Target::NoHost;
        };
        // The hot path: requests built from the base carry its scheme and authority verbatim.
        let verbatim = uri.scheme() == Some(&self.scheme)
            && same_bytes(authority.as_str().as_bytes(), self.authority.as_str().as_bytes());
        if verbatim || same_origin(uri, &self.scheme, &self.authority) {
            // GitHub Enterprise Server: uploads share the API's host, under /api/uploads.
            if !self.path.is_empty() && self.is_uploads(uri) {
                return Target::Uploads;
            }
            return Target::Api;
        }
        if self.is_uploads(uri) { Target::Uploads } else { Target::Elsewhere }
    }

    fn is_uploads(&self, uri: &Uri) -> bool {
        self.uploads.as_ref().is_some_and(|uploads| {
            same_origin(uri, &uploads.scheme, &uploads.authority)
                && (uploads.path.is_empty() || under(uri.path(), &uploads.path))
        })
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

    /// Whether `uri` goes to this API's scheme, host and port (its uploads origin aside): with
    /// [`uploads`](Self::uploads), the only places its tokens may be sent.
    pub fn is_same_origin(&self, uri: &Uri) -> bool {
        same_origin(uri, &self.scheme, &self.authority)
    }

    /// The path prefix (`/api/v3` on GitHub Enterprise Server, empty on github.com).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The uploads origin's path prefix (`/api/uploads` on GitHub Enterprise Server, empty elsewhere).
    pub(crate) fn uploads_path(&self) -> &str {
        self.uploads.as_ref().map_or("", |uploads| uploads.path.as_str())
    }

    /// Whether the API is served over plain http: only ever a loopback address (a local test server), since
    /// [`parse`](Self::parse) refuses plain http anywhere else.
    pub fn is_plain_http(&self) -> bool {
        self.scheme == Scheme::HTTP
    }

    /// The host, for messages.
    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

const API_EXAMPLE: &str = "https://api.github.com or https://HOST/api/v3";

/// The scheme, authority and path of `url`, its host (lower case, without a trailing dot) and whether it is
/// loopback: refused unless it is absolute, has no query or user info, and uses https (plain http only on
/// loopback). `what` names the URL in messages, which show it scrubbed (user info may carry a token).
pub(crate) fn checked_origin(url: &str, what: &str, example: &str) -> Result<(Origin, String, bool), Error> {
    let url = url.trim();
    let shown = crate::error::scrub(url);
    let uri: Uri = url.parse().map_err(|_| config(format!("{what} {shown:?} is not a valid URL")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(config(format!("{what} {shown:?} has no scheme or host: write it in full, as {example}")));
    };
    if uri.query().is_some() || authority.as_str().contains('@') {
        // Not shown: user info and queries are where URLs carry passwords and tokens.
        return Err(config(format!(
            "{what} carries a query or user info (not shown: either may hold a secret): give only scheme, host and \
             path, as {example}"
        )));
    }
    // `api.github.com.` (a fully qualified name) is `api.github.com`.
    let host = authority.host().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
    let loopback = is_loopback(&host);
    if *scheme != Scheme::HTTPS && !(loopback && *scheme == Scheme::HTTP) {
        return Err(config(format!(
            "{what} {shown:?} does not use https: tokens must not travel unencrypted (plain http is only allowed \
             on loopback test servers)"
        )));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok((Origin { scheme: scheme.clone(), authority: authority.clone(), path }, host, loopback))
}

/// Whether `uri` goes to this scheme, host and port: hosts compared without case and without a trailing dot
/// (`api.github.com.` is `api.github.com`), ports with the scheme's default filled in.
fn same_origin(uri: &Uri, scheme: &Scheme, authority: &Authority) -> bool {
    let Some(theirs) = uri.authority() else {
        return false;
    };
    if uri.scheme() != Some(scheme) {
        return false;
    }
    fn host(authority: &Authority) -> &str {
        let host = authority.host();
        host.strip_suffix('.').unwrap_or(host)
    }
    host(theirs).eq_ignore_ascii_case(host(authority))
        && theirs.port_u16().or_else(|| default_port(scheme)) == authority.port_u16().or_else(|| default_port(scheme))
}

/// Whether `path` is `prefix` or lies under it (`/api/v3` holds `/api/v3/x`, not `/api/v3x`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Byte equality of two short strings in at most four word comparisons, without a call into libc's `memcmp`
/// (whose vector code path costs more than the comparison itself for a host name).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    match n {
        0..=7 => a == b,
        // Two overlapping words cover 8..=16 bytes; four cover up to 32.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=32 => {
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
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
            ("https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@ghe.example.com/api/v3", "user info"),
        ] {
            let err = ApiBase::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig);
            assert!(err.to_string().contains(says), "{bad}: {err}");
            assert!(!format!("{err} {err:?}").contains("ghs_"), "{err}");
        }
    }

    #[test]
    fn same_bytes_is_equality() {
        let long = "a-very-long-enterprise-host.example.com";
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("api.github.com", "api.github.com"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("ghe.example.internal:8443", "ghe.example.internal:8443"),
            (long, long),
        ] {
            assert!(same_bytes(a.as_bytes(), b.as_bytes()));
        }
        for (a, b) in [
            ("", "a"),
            ("api.github.com", "api.github.con"),
            ("api.github.com", "bpi.github.com"),
            ("api.github.com", "api.gXthub.com"),
            ("a", "b"),
            ("ghe.example.internal:8443", "ghe.example.intXrnal:8443"),
            ("ghe.example.internal:8443", "ghe.examXle.internal:8443"),
            ("a-very-long-enterprise-host.example.com", "a-very-long-enterprise-host.examplX.com"),
        ] {
            assert!(!same_bytes(a.as_bytes(), b.as_bytes()), "{a} {b}");
        }
        // Every length from 0 to 40, every position of a difference.
        for n in 0..40 {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same_bytes(&a, &b), "{n} {i}");
            }
        }
    }

    #[test]
    fn targets_api_uploads_and_elsewhere() {
        let dotcom = ApiBase::github_com();
        let target = |base: &ApiBase, s: &str| format!("{:?}", base.target(&s.parse::<Uri>().unwrap()));
        assert_eq!(target(&dotcom, "https://api.github.com/repos/o/r"), "Api");
        assert_eq!(target(&dotcom, "https://api.github.com./repos/o/r"), "Api");
        assert_eq!(target(&dotcom, "https://API.GitHub.com:443/app"), "Api");
        assert_eq!(target(&dotcom, "https://uploads.github.com/repos/o/r/releases/1/assets?name=a"), "Uploads");
        assert_eq!(target(&dotcom, "https://uploads.github.com./repos/o/r/releases/1/assets"), "Uploads");
        assert_eq!(target(&dotcom, "http://uploads.github.com/x"), "Elsewhere");
        assert_eq!(target(&dotcom, "https://api.github.com.evil.com/x"), "Elsewhere");
        assert_eq!(target(&dotcom, "https://objects.githubusercontent.com/x"), "Elsewhere");
        assert_eq!(target(&dotcom, "/repos/o/r"), "NoHost");

        let ghes = ApiBase::parse("https://ghe.example.com/api/v3").unwrap();
        assert_eq!(ghes.uploads().unwrap(), "https://ghe.example.com/api/uploads");
        assert_eq!(target(&ghes, "https://ghe.example.com/api/v3/app"), "Api");
        assert_eq!(target(&ghes, "https://ghe.example.com/api/uploads/repos/o/r/releases/1/assets"), "Uploads");
        assert_eq!(target(&ghes, "https://ghe.example.com/api/v3x/app"), "Api");
        assert_eq!(target(&ghes, "https://ghe.example.com/login"), "Api");

        let cloud = ApiBase::parse("https://api.acme.ghe.com").unwrap();
        assert_eq!(cloud.uploads().unwrap(), "https://uploads.acme.ghe.com");
        assert_eq!(target(&cloud, "https://uploads.acme.ghe.com/repos/o/r/releases/1/assets"), "Uploads");

        // A fully qualified host is the same host; only a leading `api.` becomes `uploads.`.
        assert_eq!(ApiBase::parse("https://api.github.com.").unwrap().uploads().unwrap(), "https://uploads.github.com");
        assert_eq!(
            ApiBase::parse("https://api.api.ghe.com").unwrap().uploads().unwrap(),
            "https://uploads.api.ghe.com"
        );

        let local = ApiBase::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(local.uploads(), None);
        assert_eq!(target(&local, "http://127.0.0.1:3001/repos/o/r/releases/1/assets"), "Elsewhere");
        let local = local.with_uploads("http://127.0.0.1:3001").unwrap();
        assert_eq!(target(&local, "http://127.0.0.1:3001/repos/o/r/releases/1/assets"), "Uploads");
        assert!(ApiBase::github_com().with_uploads("http://uploads.example.com").is_err());
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
