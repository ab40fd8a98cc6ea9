//! One mint: `POST /app/installations/{id}/access_tokens`, and what GitHub's answer means.
//!
//! Owns the request GitHub expects, the reading of its `201`, and the translation of every other answer into
//! an [`Error`] that says what to do. It does not retry, cache or schedule; the refresher does.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::ApiBase;
use super::settings::INSTALLATION_TOKEN_LIFETIME;
use super::token::TokenDetails;
use crate::app::GitHubApp;
use crate::error::{BoxError, Error, ErrorKind, scrub};

/// The largest answer read from the token endpoint. A token response listing 500 repositories is about 3 MB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// The HTTP client minting goes through, with its body types erased.
pub(crate) type MintClient = BoxCloneSyncService<Request<Bytes>, Response<Bytes>, BoxError>;

/// An HTTP client the crate sends its own requests through (token requests, installation lookups, OAuth
/// requests): any tower `Service<Request<B>>` whose request body `B` can be built from [`Bytes`]
/// (`Full<Bytes>`, for example) and whose response body can be read, cloneable and `Send + Sync` (a hyper-util
/// client, octocrab's stack, anything tower). Implemented for every such service; it cannot be implemented
/// otherwise. Wrap other clients with [`ServiceExt::map_request`](tower::ServiceExt::map_request).
pub trait HttpClient<B>: sealed::Erase<B> {}

impl<S: sealed::Erase<B>, B> HttpClient<B> for S {}

pub(crate) mod sealed {
    use super::*;

    /// Turns a client into the crate's own boxed form: the request body is built from `Bytes`, the response body
    /// is read whole (up to [`MAX_RESPONSE_BYTES`]).
    pub trait Erase<B> {
        fn erase(self) -> BoxCloneSyncService<Request<Bytes>, Response<Bytes>, BoxError>;
    }

    impl<S, B, ResB> Erase<B> for S
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: From<Bytes> + Send + 'static,
        ResB: http_body::Body + Send + 'static,
        ResB::Data: Send,
        ResB::Error: Into<BoxError>,
    {
        fn erase(self) -> BoxCloneSyncService<Request<Bytes>, Response<Bytes>, BoxError> {
            let client = self.map_request(|req: Request<Bytes>| req.map(B::from)).map_err(Into::into).and_then(
                |response: Response<ResB>| async move {
                    let (parts, body) = response.into_parts();
                    let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await?.to_bytes();
                    Ok::<_, BoxError>(Response::from_parts(parts, body))
                },
            );
            BoxCloneSyncService::new(client)
        }
    }
}

/// [`HttpClient`] in the crate's boxed form.
pub(crate) fn erase<B>(client: impl HttpClient<B>) -> MintClient {
    sealed::Erase::erase(client)
}

/// What a token is limited to: the body of the token request. Empty means the whole installation.
///
/// ```
/// use tower_github_app::TokenScope;
/// let scope = TokenScope::new().repositories(["octo-repo"]).permission("contents", "read");
/// assert!(!scope.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[must_use]
pub struct TokenScope {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repository_ids: Vec<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    permissions: BTreeMap<String, String>,
}

impl TokenScope {
    /// The whole installation: every repository and permission it has.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits the token to these repositories (names without the owner).
    pub fn repositories<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.repositories.extend(names.into_iter().map(Into::into));
        self
    }

    /// Limits the token to these repository ids.
    pub fn repository_ids(mut self, ids: impl IntoIterator<Item = u64>) -> Self {
        self.repository_ids.extend(ids);
        self
    }

    /// Limits the token to a permission at a level, e.g. `("contents", "read")`.
    pub fn permission(mut self, name: impl Into<String>, level: impl Into<String>) -> Self {
        self.permissions.insert(name.into(), level.into());
        self
    }

    /// Whether nothing limits the token.
    pub fn is_empty(&self) -> bool {
        self.repositories.is_empty() && self.repository_ids.is_empty() && self.permissions.is_empty()
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let count = self.repositories.len() + self.repository_ids.len();
        if count > 500 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{count} repositories requested; GitHub allows at most 500 per token: split the work"),
            ));
        }
        if self.repositories.iter().any(|r| r.is_empty() || r.contains('/')) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "repository names in a token scope are names without the owner (`repo`, not `owner/repo`)",
            ));
        }
        Ok(())
    }

    pub(crate) fn body(&self) -> Option<Bytes> {
        (!self.is_empty()).then(|| Bytes::from(serde_json::to_vec(self).unwrap_or_default()))
    }
}

/// Everything one mint request needs besides the App and the client.
#[derive(Debug, Clone)]
pub(crate) struct MintParams {
    pub(crate) api_base: ApiBase,
    pub(crate) installation_id: u64,
    pub(crate) body: Option<Bytes>,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
}

/// A token as received, before the refresher decides when to use and replace it.
pub(crate) struct Minted {
    pub(crate) authorization: HeaderValue,
    pub(crate) expires_at: SystemTime,
    pub(crate) received_at: Instant,
    pub(crate) expires: Instant,
    pub(crate) details: TokenDetails,
    /// Whether anything can replace it before it expires (a user token without a refresh token cannot: it is used
    /// until its end of use, not refreshed ahead).
    pub(crate) refreshable: bool,
}

/// Sends one token request and reads the answer. Signing the JWT and the request share `params.timeout`. On a
/// clock-skew refusal, the offset read from `Date` is stored in the App before the error is returned, so the
/// next JWT is already corrected.
pub(crate) async fn mint_once(app: &GitHubApp, client: &MintClient, params: &MintParams) -> Result<Minted, Error> {
    let attempt = async {
        let jwt = app.jwt().await?;
        let url = params.api_base.url(&format!("/app/installations/{}/access_tokens", params.installation_id))?;
        let mut request = api_request(Method::POST, url, &params.user_agent, jwt.authorization());
        if params.body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(params.body.clone().unwrap_or_default()).map_err(|e| {
            Error::build(ErrorKind::InvalidRequest, "could not build the token request").source(e).finish()
        })?;
        let mut client = client.clone();
        let response = async { client.ready().await?.call(request).await }
            .await
            .map_err(|error| transport_error(error, params))?;
        Ok::<_, Error>((response, jwt.clock_offset()))
    };
    let (response, jwt_offset) = match tokio::time::timeout(params.timeout, attempt).await {
        Ok(outcome) => outcome?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the token request to {} (signing its JWT included) got no answer within {:?}; it is retried \
                     with backoff (raise mint_timeout if the network or the signer is slow)",
                    params.api_base, params.timeout
                ),
            ));
        }
    };
    let (parts, body) = response.into_parts();
    read_answer(parts.status, &parts.headers, &body, app, params, jwt_offset)
}

/// A request to the REST API as GitHub asks for it: JSON media type, API version, `User-Agent`, credential.
pub(crate) fn api_request(
    method: Method,
    url: http::Uri,
    user_agent: &HeaderValue,
    authorization: HeaderValue,
) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(url)
        .header(ACCEPT, "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header(USER_AGENT, user_agent.clone())
        .header(AUTHORIZATION, authorization)
}

/// [`mint_once`], plus one immediate retry when GitHub refused the JWT for clock skew and the App has just
/// learned a different offset (the retry's JWT is corrected). `failed` is called for the first attempt when it
/// is retried.
pub(crate) async fn mint_correcting_skew(
    app: &GitHubApp,
    client: &MintClient,
    params: &MintParams,
    failed: impl FnOnce(&Error),
) -> Result<Minted, Error> {
    let offset_before = app.clock_offset();
    let result = mint_once(app, client, params).await;
    match &result {
        Err(error) if error.kind() == ErrorKind::ClockSkew && app.clock_offset() != offset_before => {
            failed(error);
            mint_once(app, client, params).await
        }
        _ => result,
    }
}

/// Sends `request` through `client` within `timeout`: the answer, read whole, or a transport or timeout error
/// that says what was asked of which API.
pub(crate) async fn send(
    client: &MintClient,
    request: Request<Bytes>,
    timeout: Duration,
    what: &str,
    api_base: &(dyn std::fmt::Display + Sync),
) -> Result<Response<Bytes>, Error> {
    let mut client = client.clone();
    match tokio::time::timeout(timeout, async { client.ready().await?.call(request).await }).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(Error::build(
            ErrorKind::Transport,
            format!("{what} could not be sent to {api_base}: check the network and that base URL"),
        )
        .source(error)
        .finish()),
        Err(_) => {
            Err(Error::new(ErrorKind::Timeout, format!("{what} got no answer from {api_base} within {timeout:?}")))
        }
    }
}

/// What GitHub's answer to a token request means: a token, or the error that says why not. `jwt_offset` is the
/// clock offset the request's JWT was signed with.
pub(crate) fn read_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    app: &GitHubApp,
    params: &MintParams,
    jwt_offset: i64,
) -> Result<Minted, Error> {
    let received_at = Instant::now();
    let local_now = SystemTime::now();
    let server_date = headers.get(DATE).and_then(|d| d.to_str().ok()).and_then(|d| httpdate::parse_http_date(d).ok());
    if status == StatusCode::CREATED || status == StatusCode::OK {
        read_token(body, server_date, local_now, received_at, app, params)
    } else {
        Err(refusal(status, headers, body, Clocks { server_date, local_now, jwt_offset }, app, params))
    }
}

/// What is known of the two clocks when GitHub answered.
struct Clocks {
    server_date: Option<SystemTime>,
    local_now: SystemTime,
    /// The offset the refused JWT was signed with.
    jwt_offset: i64,
}

impl Clocks {
    /// Whether a refused JWT was refused for the time it was signed at. GitHub's wording is not a contract: its
    /// known clock messages are a fast path, and a JWT signed with a clock seconds away from GitHub's `Date`
    /// counts as skew whatever the message says.
    fn skewed(&self, message: Option<&str>) -> bool {
        let known_message = message.is_some_and(|m| CLOCK_SKEW_MESSAGES.iter().any(|c| m.contains(c)));
        known_message || self.measured_offset().is_some_and(|m| (m - self.jwt_offset).abs() > SKEW_TOLERANCE_SECS)
    }

    /// GitHub's clock minus ours, in seconds, if GitHub sent `Date`.
    fn measured_offset(&self) -> Option<i64> {
        self.server_date.map(|date| crate::app::signed_seconds_between(self.local_now, date))
    }
}

/// A JWT signed with a clock further than this from GitHub's may have been refused for its times, whatever the
/// message says.
const SKEW_TOLERANCE_SECS: i64 = 5;

fn transport_error(error: BoxError, params: &MintParams) -> Error {
    if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
        return malformed(format!(
            "the answer to the token request was larger than {} MiB; GitHub's is a few KiB: is a proxy answering \
             instead of {}?",
            MAX_RESPONSE_BYTES >> 20,
            params.api_base
        ));
    }
    Error::build(
        ErrorKind::Transport,
        format!(
            "the token request to {} failed before GitHub answered (connection, DNS, TLS or proxy); it is retried \
             with backoff",
            params.api_base
        ),
    )
    .source(error)
    .finish()
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<serde_json::Value>,
    expires_at: Option<serde_json::Value>,
    #[serde(flatten)]
    details: TokenDetails,
}

fn read_token(
    body: &[u8],
    server_date: Option<SystemTime>,
    local_now: SystemTime,
    received_at: Instant,
    app: &GitHubApp,
    params: &MintParams,
) -> Result<Minted, Error> {
    // Never echo the body: it may hold the token.
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        malformed(format!(
            "the answer to the token request ({} bytes) is not the JSON GitHub sends: is a proxy or a wrong API \
             base ({}) answering?",
            body.len(),
            params.api_base
        ))
    })?;
    let token = match parsed.token {
        Some(serde_json::Value::String(token)) if !token.is_empty() => token,
        _ => {
            return Err(malformed("the token response has no `token` string: GitHub's answer was cut or altered"));
        }
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed("the token in GitHub's answer contains characters that cannot go into an HTTP header"));
    }
    let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| malformed("the token in GitHub's answer cannot go into an HTTP header"))?;
    authorization.set_sensitive(true);
    // A clone of a `Bytes` built from a `String` is a plain reference-counted handle, and so are its clones:
    // the hot path clones this value once per request.
    let authorization = authorization.clone();

    let expires_at = match &parsed.expires_at {
        Some(serde_json::Value::String(text)) => parse_timestamp(text).ok_or_else(|| {
            malformed(format!(
                "the token response's expires_at {:?} is not an RFC 3339 time",
                scrub(&text.chars().take(40).collect::<String>())
            ))
        })?,
        _ => {
            return Err(malformed("the token response has no `expires_at`: GitHub's answer was cut or altered"));
        }
    };
    // The lifetime as GitHub counts it: its expires_at minus its own clock (the Date header, which has second
    // precision, hence one second less), or, without Date, the local clock corrected by the known offset.
    let server_now = match server_date {
        Some(date) => date + Duration::from_secs(1),
        None => shift(local_now, app.clock_offset()),
    };
    let lifetime = expires_at.duration_since(server_now).unwrap_or(Duration::ZERO);
    // GitHub's installation tokens live an hour. A longer life (a replayed or altered answer) is not believed:
    // the token is used and refreshed as if it lived an hour, and shared for no longer (a shared store keeps its
    // expires_at).
    let (lifetime, expires_at) = if lifetime > INSTALLATION_TOKEN_LIFETIME {
        (INSTALLATION_TOKEN_LIFETIME, server_now + INSTALLATION_TOKEN_LIFETIME)
    } else {
        (lifetime, expires_at)
    };
    if lifetime < Duration::from_secs(1) {
        return Err(malformed(format!(
            "GitHub answered with a token that has already expired (expires_at {}, GitHub's clock {}): retried \
             with backoff; if it repeats, a caching proxy may be replaying old answers",
            humantime::format_rfc3339_seconds(expires_at),
            humantime::format_rfc3339_seconds(server_now),
        )));
    }
    Ok(Minted {
        authorization,
        expires_at,
        received_at,
        expires: received_at + lifetime,
        details: parsed.details,
        refreshable: true,
    })
}

/// RFC 3339 with `Z` or a numeric offset, with or without fractional seconds.
pub(crate) fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(t) = humantime::parse_rfc3339(text) {
        return Some(t);
    }
    // `+HH:MM` / `-HH:MM` offsets, which humantime does not take.
    let split = text.len().checked_sub(6).filter(|&i| text.is_char_boundary(i))?;
    let (local, offset) = text.split_at(split);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    let t = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    Some(shift(t, -sign * (hours * 3600 + minutes * 60)))
}

fn shift(t: SystemTime, seconds: i64) -> SystemTime {
    if seconds >= 0 { t + Duration::from_secs(seconds as u64) } else { t - Duration::from_secs(seconds.unsigned_abs()) }
}

/// GitHub's messages for a JWT refused because of the clock.
pub(crate) const CLOCK_SKEW_MESSAGES: [&str; 3] = [
    "'Expiration time' claim ('exp') is too far in the future",
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
];

/// GitHub's message for a JWT signed with the wrong key or for the wrong App.
pub(crate) const JWT_NOT_DECODED: &str = "A JSON web token could not be decoded";

#[derive(Deserialize)]
struct GitHubErrorBody {
    message: Option<String>,
}

/// For an answer to a request signed with an App JWT whose clock offset was `jwt_offset` (any route but the
/// token endpoint, whose refusals [`read_answer`] reads): whether it is a `401` for the JWT's time, after which the
/// App has learned GitHub's clock from `Date` and a new JWT may be sent once.
pub(crate) fn corrected_clock(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    app: &GitHubApp,
    jwt_offset: i64,
) -> bool {
    if status != StatusCode::UNAUTHORIZED {
        return false;
    }
    let local_now = SystemTime::now();
    let server_date = headers.get(DATE).and_then(|d| d.to_str().ok()).and_then(|d| httpdate::parse_http_date(d).ok());
    let message = serde_json::from_slice::<GitHubErrorBody>(body).ok().and_then(|b| b.message);
    let clocks = Clocks { server_date, local_now, jwt_offset };
    match server_date {
        Some(date) if clocks.skewed(message.as_deref()) => app.learn_clock_offset(date, local_now) != jwt_offset,
        _ => false,
    }
}

fn refusal(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    clocks: Clocks,
    app: &GitHubApp,
    params: &MintParams,
) -> Error {
    let raw_message = serde_json::from_slice::<GitHubErrorBody>(body).ok().and_then(|b| b.message);
    let message = raw_message.as_deref().map(scrub);
    let request_id = headers
        .get("x-github-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|id| scrub(&id.chars().take(64).collect::<String>()));
    let id = params.installation_id;
    let base = &params.api_base;
    let (kind, text, offset) = match status.as_u16() {
        401 if clocks.skewed(raw_message.as_deref()) => {
            let offset = clocks.server_date.map(|date| app.learn_clock_offset(date, clocks.local_now));
            let text = match offset {
                Some(offset) => format!(
                    "GitHub refused the App JWT because the clocks disagree: GitHub's clock is {} s {} this \
                     machine's. Later JWTs are corrected by that offset; if this repeats, synchronise the clock \
                     (NTP)",
                    offset.abs(),
                    if offset >= 0 { "ahead of" } else { "behind" }
                ),
                None => "GitHub refused the App JWT because the clocks disagree, and its answer had no Date \
                         header to measure by: synchronise this machine's clock (NTP)"
                    .to_owned(),
            };
            (ErrorKind::ClockSkew, text, offset)
        }
        401 if raw_message.as_deref().is_some_and(|m| m.contains(JWT_NOT_DECODED)) => (
            ErrorKind::JwtRejected,
            format!(
                "GitHub did not accept the App JWT for {} at {base}: the private key does not belong to this App, \
                 the App id or client ID is wrong, or the key was deleted. Check both on the App's settings page",
                app.id()
            ),
            None,
        ),
        401 => (
            ErrorKind::JwtRejected,
            format!(
                "GitHub answered 401 to the token request for installation {id} at {base}: it did not accept the \
                 App JWT of {}. Check the App id and private key",
                app.id()
            ),
            None,
        ),
        403 | 429 if is_rate_limited(status, headers, raw_message.as_deref()) => (
            ErrorKind::RateLimited,
            format!(
                "GitHub's rate limit refused the token request for installation {id} ({status}); it is retried \
                 with backoff. Mint less often: tokens are cached for their whole hour"
            ),
            None,
        ),
        403 => (
            ErrorKind::InstallationForbidden,
            format!(
                "GitHub refused to mint a token for installation {id} at {base} (403): the installation may be \
                 suspended, or the App lacks a requested permission. Unsuspend it in the account's settings or \
                 request only permissions the App has"
            ),
            None,
        ),
        404 => (
            ErrorKind::InstallationNotFound,
            format!(
                "installation {id} was not found at {base} for {}: it may have been uninstalled, belong to another \
                 App, or live on another host (for GitHub Enterprise Server the API base is https://HOST/api/v3). \
                 List the App's installations with GET /app/installations",
                app.id()
            ),
            None,
        ),
        422 => (
            ErrorKind::InvalidScope,
            format!(
                "GitHub refused the requested repositories or permissions for installation {id} (422): request \
                 only repositories the installation can access (at most 500) and permissions the App has"
            ),
            None,
        ),
        500..=599 => (
            ErrorKind::ServerError,
            format!(
                "GitHub answered {status} to the token request for installation {id} at {base}: a problem on \
                 GitHub's side; it is retried with backoff"
            ),
            None,
        ),
        _ => (
            ErrorKind::UnexpectedStatus,
            format!(
                "GitHub answered {status} to the token request for installation {id} at {base}, which it does \
                 not send for this request: check the API base (406 or an HTML 404 often mean a missing /api/v3) \
                 and any proxy in between"
            ),
            None,
        ),
    };
    Error::build(kind, text).status(status).github_message(message).request_id(request_id).clock_offset(offset).finish()
}

fn is_rate_limited(status: StatusCode, headers: &HeaderMap, message: Option<&str>) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || headers.get("x-ratelimit-remaining").is_some_and(|v| v == "0")
        || message.is_some_and(|m| m.to_ascii_lowercase().contains("rate limit"))
}

fn malformed(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::MalformedResponse, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let z = parse_timestamp("2016-07-11T22:14:10Z").unwrap();
        assert_eq!(parse_timestamp("2016-07-11T23:14:10+01:00").unwrap(), z);
        assert_eq!(parse_timestamp("2016-07-11T21:14:10-01:00").unwrap(), z);
        assert!(parse_timestamp("2016-07-11T22:14:10.5Z").unwrap() > z);
        assert!(parse_timestamp("tomorrow").is_none());
        assert!(parse_timestamp("").is_none());
        assert!(parse_timestamp("ü+01:00").is_none());
    }

    #[test]
    fn scope_body() {
        assert_eq!(TokenScope::new().body(), None);
        let body = TokenScope::new().repositories(["a"]).permission("issues", "write").body().unwrap();
        assert_eq!(&body[..], br#"{"repositories":["a"],"permissions":{"issues":"write"}}"#);
        assert!(TokenScope::new().repositories(["o/a"]).validate().is_err());
        assert!(TokenScope::new().repository_ids(0..501).validate().is_err());
    }
}
