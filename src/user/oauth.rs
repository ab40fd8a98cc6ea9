//! The OAuth side of a GitHub App, on the web origin (`https://github.com`, `https://HOST` for GitHub Enterprise
//! Server), never the API origin: the web flow's code exchange, the device flow, and the refresh grant.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, scrub};
use crate::installation::api_base::checked_origin;
use crate::installation::mint::HttpClient;
use crate::installation::mint::{self, MintClient};

/// A GitHub App's OAuth identity (client ID and client secret) and the web origin its OAuth endpoints live on.
///
/// `Debug` never shows the client secret.
///
/// ```
/// use tower_github_app::user::OAuthApp;
/// let github_com = OAuthApp::new("Iv23liABCDEF", "client-secret");
/// assert_eq!(github_com.web_base(), "https://github.com");
/// let ghes = OAuthApp::new("Iv23liABCDEF", "client-secret").with_web_base("https://ghe.example.com")?;
/// assert_eq!(ghes.authorize_url("some-state"),
///     "https://ghe.example.com/login/oauth/authorize?client_id=Iv23liABCDEF&state=some-state");
/// assert!(!format!("{ghes:?}").contains("client-secret"));
/// # Ok::<(), tower_github_app::Error>(())
/// ```
#[derive(Clone)]
pub struct OAuthApp {
    client_id: String,
    client_secret: String,
    web_base: String,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
}

impl OAuthApp {
    /// The App with this client ID (`Iv1.…` or `Iv23…`, on the App's settings page) and client secret, on
    /// github.com.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        OAuthApp {
            client_id: client_id.into().trim().to_owned(),
            client_secret: client_secret.into().trim().to_owned(),
            web_base: "https://github.com".to_owned(),
            user_agent: HeaderValue::from_static(concat!("tower-github-app/", env!("CARGO_PKG_VERSION"))),
            timeout: Duration::from_secs(30),
        }
    }

    /// The web origin of the OAuth endpoints: `https://github.com` (default), `https://HOST` for GitHub Enterprise
    /// Server (not `https://HOST/api/v3`: that is the API), `https://SUBDOMAIN.ghe.com` for GitHub Enterprise Cloud
    /// with data residency. https only (plain http on loopback test servers).
    pub fn with_web_base(mut self, url: &str) -> Result<Self, Error> {
        let (origin, host, _) = checked_origin(url, "the web base URL", "https://github.com or https://HOST")?;
        if host == "api.github.com" || host.starts_with("api.") && host.ends_with(".ghe.com") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{host} is the API; GitHub's OAuth endpoints are on the web host (https://github.com)"),
            ));
        }
        if !origin.path.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the web base URL has a path ({}); OAuth endpoints are at the host's root: use {}://{}",
                    scrub(&origin.path),
                    origin.scheme,
                    origin.authority
                ),
            ));
        }
        self.web_base = format!("{}://{}", origin.scheme, origin.authority);
        Ok(self)
    }

    /// The `User-Agent` of OAuth requests (default `tower-github-app/VERSION`).
    pub fn with_user_agent(mut self, user_agent: &str) -> Result<Self, Error> {
        self.user_agent = HeaderValue::try_from(user_agent).map_err(|_| {
            Error::new(ErrorKind::InvalidConfig, "the user agent contains characters not allowed in an HTTP header")
        })?;
        Ok(self)
    }

    /// How long one OAuth request may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client ID.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The web origin, e.g. `https://github.com`.
    pub fn web_base(&self) -> &str {
        &self.web_base
    }

    /// Where to send the user to authorize the App (the web flow's first step). `state` is your random value,
    /// checked when GitHub redirects back with `code` and the same `state`.
    pub fn authorize_url(&self, state: &str) -> String {
        format!("{}/login/oauth/authorize?{}", self.web_base, form(&[("client_id", &self.client_id), ("state", state)]))
    }

    /// [`authorize_url`](Self::authorize_url) with the callback URL registered for the App (`redirect_uri`, which
    /// [`exchange_code`](Self::exchange_code) must then repeat) and a suggested account (`login`).
    pub fn authorize_url_with(&self, state: &str, redirect_uri: Option<&str>, login: Option<&str>) -> String {
        let mut fields = vec![("client_id", self.client_id.as_str()), ("state", state)];
        if let Some(uri) = redirect_uri {
            fields.push(("redirect_uri", uri));
        }
        if let Some(login) = login {
            fields.push(("login", login));
        }
        format!("{}/login/oauth/authorize?{}", self.web_base, form(&fields))
    }

    /// The web flow's second step: trades the `code` GitHub redirected back with for the user's tokens.
    /// `redirect_uri`, if given, must be the one the authorization used.
    ///
    /// A code works once and for ten minutes; a refused one is [`ErrorKind::AuthorizationFailed`].
    pub async fn exchange_code<S: HttpClient<B>, B>(
        &self,
        client: S,
        code: &str,
        redirect_uri: Option<&str>,
    ) -> Result<UserTokens, Error> {
        let mut fields = vec![("client_id", self.client_id.as_str()), ("client_secret", &self.client_secret)];
        fields.push(("code", code));
        if let Some(uri) = redirect_uri {
            fields.push(("redirect_uri", uri));
        }
        let answer = self.post(&mint::erase(client), "/login/oauth/access_token", &fields, "the code exchange").await?;
        match answer {
            Answer::Tokens(tokens) => Ok(tokens),
            Answer::Pending | Answer::SlowDown(_) => Err(unexpected("the code exchange", "a device-flow answer")),
        }
    }

    /// The device flow's first step: a code for the user to enter at [`DeviceCode::verification_uri`]. Then
    /// [`poll_device`](Self::poll_device).
    pub async fn start_device_flow<S: HttpClient<B>, B>(&self, client: S) -> Result<DeviceCode, Error> {
        let request = self.form_request("/login/device/code", &[("client_id", &self.client_id)])?;
        let response =
            mint::send(&mint::erase(client), request, self.timeout, "the device code request", &self.web_base).await?;
        #[derive(Deserialize)]
        struct Answer {
            device_code: Option<String>,
            user_code: Option<String>,
            verification_uri: Option<String>,
            expires_in: Option<u64>,
            interval: Option<u64>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(response.body())
            .map_err(|_| malformed(response.status(), "the device code request"))?;
        if let Some(error) = answer.error {
            return Err(refusal(&error, answer.error_description, response.status(), "the device code request"));
        }
        match (answer.device_code, answer.user_code, answer.verification_uri) {
            (Some(device_code), Some(user_code), Some(verification_uri)) => Ok(DeviceCode {
                device_code,
                user_code,
                verification_uri,
                expires_in: Duration::from_secs(answer.expires_in.unwrap_or(900).min(24 * 3600)),
                interval: Duration::from_secs(answer.interval.unwrap_or(5).clamp(1, 3600)),
                issued_at: Instant::now(),
            }),
            _ => Err(malformed(response.status(), "the device code request")),
        }
    }

    /// The device flow's second step: polls GitHub, no faster than the interval it asked for (plus 5 s for every
    /// `slow_down`, or the interval a `slow_down` names), until the user approves (the tokens), denies
    /// ([`ErrorKind::AuthorizationFailed`]) or the code expires (the same).
    pub async fn poll_device<S: HttpClient<B>, B>(&self, client: S, code: &DeviceCode) -> Result<UserTokens, Error> {
        let client = mint::erase(client);
        let deadline = code.issued_at + code.expires_in;
        let mut interval = code.interval;
        let fields = [
            ("client_id", self.client_id.as_str()),
            ("device_code", &code.device_code),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ];
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::AuthorizationFailed,
                    "the device code expired before the user entered it: start the device flow again",
                ));
            }
            let answer = match self.post(&client, "/login/oauth/access_token", &fields, "the device flow").await {
                Ok(answer) => answer,
                // A network hiccup or a GitHub outage does not end the flow: the user may still be typing.
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, "device flow poll failed; polling on");
                    continue;
                }
                Err(error) => return Err(error),
            };
            match answer {
                Answer::Tokens(tokens) => return Ok(tokens),
                Answer::Pending => {}
                Answer::SlowDown(asked) => {
                    let slower = interval + Duration::from_secs(5);
                    interval = asked.map_or(slower, |asked| asked.max(slower));
                    tracing::debug!(?interval, "GitHub asked the device flow to slow down");
                }
            }
        }
    }

    /// The refresh grant: spends `refresh_token` (it and the access token it came with die at once) for a new pair.
    /// The error says whether GitHub spent the refresh token anyway (its answer carried tokens it could not be read
    /// as): such a refresh token must never be presented again.
    pub(crate) async fn refresh(
        &self,
        client: &MintClient,
        refresh_token: &str,
        user_agent: &HeaderValue,
        timeout: Duration,
    ) -> Result<UserTokens, RefreshError> {
        let unspent = |error| RefreshError { error, spent: false };
        let fields = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", &self.client_secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let mut request = self.form_request("/login/oauth/access_token", &fields).map_err(unspent)?;
        request.headers_mut().insert(USER_AGENT, user_agent.clone());
        let response =
            mint::send(client, request, timeout, "the token refresh", &self.web_base).await.map_err(unspent)?;
        match read_answer(&response, "the token refresh") {
            Ok(Answer::Tokens(tokens)) => Ok(tokens),
            Ok(Answer::Pending | Answer::SlowDown(_)) => {
                Err(unspent(unexpected("the token refresh", "a device-flow answer")))
            }
            Err(error) => Err(RefreshError { error, spent: carries_tokens(response.body()) }),
        }
    }

    async fn post(
        &self,
        client: &MintClient,
        path: &str,
        fields: &[(&str, &str)],
        what: &str,
    ) -> Result<Answer, Error> {
        let request = self.form_request(path, fields)?;
        let response = mint::send(client, request, self.timeout, what, &self.web_base).await?;
        read_answer(&response, what)
    }

    fn form_request(&self, path: &str, fields: &[(&str, &str)]) -> Result<Request<Bytes>, Error> {
        Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.web_base))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(USER_AGENT, self.user_agent.clone())
            .body(Bytes::from(form(fields)))
            .map_err(|e| Error::build(ErrorKind::InvalidRequest, "could not build an OAuth request").source(e).finish())
    }
}

impl fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("web_base", &self.web_base)
            .finish_non_exhaustive()
    }
}

/// A device-flow code: show [`user_code`](Self::user_code) and [`verification_uri`](Self::verification_uri) to the
/// user, then [`OAuthApp::poll_device`].
#[derive(Clone)]
pub struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    expires_in: Duration,
    interval: Duration,
    issued_at: Instant,
}

impl DeviceCode {
    /// What the user types in, e.g. `WDJB-MJHT`.
    pub fn user_code(&self) -> &str {
        &self.user_code
    }

    /// Where the user types it, e.g. `https://github.com/login/device`.
    pub fn verification_uri(&self) -> &str {
        &self.verification_uri
    }

    /// How long the code is valid (GitHub: 15 minutes).
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// How often GitHub lets the flow poll at first (GitHub: 5 s).
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A user's tokens: the access token (`ghu_…`) and, when the App has token expiry on (GitHub's default), the
/// refresh token (`ghr_…`) and both expiries. `Debug` shows neither token.
///
/// Hand them to [`UserToken::sign_in`](crate::user::UserToken::sign_in) as soon as the web or device flow gives
/// them: from then on the store keeps them and the refresher rotates them.
#[derive(Clone, PartialEq, Eq)]
pub struct UserTokens {
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) refresh_token_expires_at: Option<SystemTime>,
}

impl UserTokens {
    /// Tokens you already hold (from your own database, say). `expires_at` and `refresh_token_expires_at` are
    /// GitHub's times (`now + expires_in` when they were issued); `None` for tokens that do not expire.
    pub fn new(
        access_token: impl Into<String>,
        refresh_token: Option<String>,
        expires_at: Option<SystemTime>,
        refresh_token_expires_at: Option<SystemTime>,
    ) -> Self {
        UserTokens { access_token: access_token.into(), refresh_token, expires_at, refresh_token_expires_at }
    }

    /// The access token. Keep it out of logs.
    pub fn expose_access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token, if the App's tokens expire. Keep it out of logs; it works exactly once.
    pub fn expose_refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    /// When the access token expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When the refresh token expires, if there is one.
    pub fn refresh_token_expires_at(&self) -> Option<SystemTime> {
        self.refresh_token_expires_at
    }

    /// Refuses what cannot be a user's pair: empty tokens, and tokens of another kind.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let config = |message: &str| Err(Error::new(ErrorKind::InvalidConfig, message));
        if self.access_token.trim().is_empty() || self.refresh_token.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return config("the user tokens are empty: pass the access_token (and refresh_token) GitHub answered");
        }
        for (prefix, what) in [
            ("ghs_", "an installation token"),
            ("ghp_", "a personal access token"),
            ("github_pat_", "a personal access token"),
            ("ghr_", "a refresh token"),
        ] {
            if self.access_token.starts_with(prefix) {
                return config(&format!("the access token is {what}, not a user access token (ghu_…)"));
            }
        }
        if self.refresh_token.as_deref().is_some_and(|r| r.starts_with("ghu_")) {
            return config("the refresh token is an access token (ghu_…): the refresh token starts with ghr_");
        }
        if self.refresh_token.as_deref().is_some_and(|t| t.bytes().any(|b| !b.is_ascii_graphic())) {
            return config("the refresh token has characters GitHub never puts in one");
        }
        match self.authorization() {
            Ok(_) => Ok(()),
            Err(_) => config("the access token has characters GitHub never puts in one"),
        }
    }

    pub(crate) fn authorization(&self) -> Result<HeaderValue, Error> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.access_token)).map_err(|_| {
            Error::new(ErrorKind::MalformedResponse, "the user access token has characters not allowed in a header")
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        f.debug_struct("UserTokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &at(self.expires_at))
            .field("refresh_token_expires_at", &at(self.refresh_token_expires_at))
            .finish()
    }
}

const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;

/// A refresh that gave no usable pair, and whether GitHub spent the refresh token nonetheless.
pub(crate) struct RefreshError {
    pub(crate) error: Error,
    pub(crate) spent: bool,
}

/// Whether an answer GitHub sent holds tokens (however unusable): then it issued them, and spent what was traded.
fn carries_tokens(body: &[u8]) -> bool {
    // Read loosely: a field of an unexpected type elsewhere must not hide that tokens were issued.
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let present = |name: &str| match answer.get(name) {
        Some(serde_json::Value::String(text)) => !text.is_empty(),
        Some(serde_json::Value::Null) | None => false,
        Some(_) => true,
    };
    present("access_token") || present("refresh_token")
}

/// What the token endpoint said.
enum Answer {
    Tokens(UserTokens),
    /// `authorization_pending`.
    Pending,
    /// `slow_down`, with the interval GitHub named if it did.
    SlowDown(Option<Duration>),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    refresh_token_expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
    interval: Option<u64>,
}

/// Reads the token endpoint's answer. GitHub reports refusals in a `200` body (`{"error": …}`); they are read
/// whatever the status.
fn read_answer(response: &Response<Bytes>, what: &str) -> Result<Answer, Error> {
    let status = response.status();
    let parsed: Result<TokenAnswer, _> = serde_json::from_slice(response.body());
    let answer = match parsed {
        Ok(answer) => answer,
        Err(_) if status.is_server_error() => {
            return Err(Error::build(
                ErrorKind::ServerError,
                format!("{what} failed: GitHub answered {status}; it is retried"),
            )
            .status(status)
            .finish());
        }
        Err(_) if status == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Error::build(ErrorKind::RateLimited, format!("{what} was rate limited; it is retried"))
                .status(status)
                .finish());
        }
        Err(_) => return Err(malformed(status, what)),
    };
    if let Some(error) = answer.error {
        return match error.as_str() {
            "authorization_pending" => Ok(Answer::Pending),
            "slow_down" => Ok(Answer::SlowDown(answer.interval.map(|s| Duration::from_secs(s.min(3600))))),
            _ => Err(refusal(&error, answer.error_description, status, what)),
        };
    }
    let Some(access_token) = answer.access_token.filter(|t| !t.is_empty()) else {
        return Err(match status {
            s if s.is_server_error() => {
                Error::build(ErrorKind::ServerError, format!("{what} failed: GitHub answered {s}; it is retried"))
                    .status(s)
                    .finish()
            }
            StatusCode::TOO_MANY_REQUESTS => {
                Error::build(ErrorKind::RateLimited, format!("{what} was rate limited; it is retried"))
                    .status(status)
                    .finish()
            }
            _ => malformed(status, what),
        });
    };
    // Tokens are tokens whatever the status: GitHub issued them (and spent what was traded for them).
    let now = SystemTime::now();
    let tokens = UserTokens {
        access_token,
        refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
        // Bounded, so that a garbage lifetime cannot overflow the clock: ten years is beyond any GitHub token.
        expires_at: answer.expires_in.map(|s| now + Duration::from_secs(s.min(TEN_YEARS))),
        refresh_token_expires_at: answer.refresh_token_expires_in.map(|s| now + Duration::from_secs(s.min(TEN_YEARS))),
    };
    // A token that cannot be a header value is garbage, whatever else the answer says.
    tokens.authorization()?;
    if tokens.refresh_token.as_deref().is_some_and(|t| t.bytes().any(|b| !b.is_ascii_graphic())) {
        return Err(Error::build(
            ErrorKind::MalformedResponse,
            format!("{what}: the answer held a refresh token with characters GitHub never puts in one"),
        )
        .status(status)
        .finish());
    }
    Ok(Answer::Tokens(tokens))
}

/// The error for a refusal GitHub named in the body.
fn refusal(error: &str, description: Option<String>, status: StatusCode, what: &str) -> Error {
    let (kind, message) = match error {
        "bad_refresh_token" => (
            ErrorKind::ReauthorizationRequired,
            format!(
                "{what}: GitHub refused the refresh token (bad_refresh_token: spent, expired or revoked): the user \
                 must authorize the App again"
            ),
        ),
        "incorrect_client_credentials" => (
            ErrorKind::InvalidConfig,
            format!("{what}: GitHub refused the client ID or client secret (incorrect_client_credentials): check both"),
        ),
        "bad_verification_code" => (
            ErrorKind::AuthorizationFailed,
            format!("{what}: GitHub refused the code (bad_verification_code: used, expired or wrong): sign in again"),
        ),
        "expired_token" => (
            ErrorKind::AuthorizationFailed,
            format!("{what}: the device code expired before the user entered it: start the device flow again"),
        ),
        "access_denied" => (ErrorKind::AuthorizationFailed, format!("{what}: the user denied the authorization")),
        "incorrect_device_code" => (
            ErrorKind::AuthorizationFailed,
            format!("{what}: GitHub does not know the device code: start the device flow again"),
        ),
        "device_flow_disabled" => (
            ErrorKind::InvalidConfig,
            format!("{what}: the device flow is not enabled in the App's settings (device_flow_disabled)"),
        ),
        "unsupported_grant_type" | "incorrect_client_id" | "invalid_client" => (
            ErrorKind::InvalidConfig,
            format!("{what}: GitHub refused the request ({}): check the client ID", scrub(error)),
        ),
        other => (ErrorKind::UnexpectedStatus, format!("{what}: GitHub answered with the error {:?}", scrub(other))),
    };
    Error::build(kind, message).status(status).github_message(description.map(|d| scrub(&d))).finish()
}

fn malformed(status: StatusCode, what: &str) -> Error {
    Error::build(
        ErrorKind::MalformedResponse,
        format!("{what}: the answer ({status}) was neither tokens nor an OAuth error: is the web base right?"),
    )
    .status(status)
    .finish()
}

fn unexpected(what: &str, got: &str) -> Error {
    Error::new(ErrorKind::UnexpectedStatus, format!("{what}: GitHub answered with {got}"))
}

/// `application/x-www-form-urlencoded`.
pub(crate) fn form(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, name);
        out.push('=');
        encode_into(&mut out, value);
    }
    out
}

fn encode_into(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, Error> {
        let mut response = Response::new(Bytes::from(body.to_owned()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        read_answer(&response, "the token refresh")
    }

    #[test]
    fn refusals_are_typed_whatever_the_status() {
        for status in [200, 400, 401] {
            let bad = answer(
                status,
                r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
            );
            assert_eq!(bad.err().unwrap().kind(), ErrorKind::ReauthorizationRequired);
            let creds = answer(status, r#"{"error":"incorrect_client_credentials"}"#);
            assert_eq!(creds.err().unwrap().kind(), ErrorKind::InvalidConfig);
        }
        assert!(matches!(answer(200, r#"{"error":"authorization_pending"}"#), Ok(Answer::Pending)));
        assert!(
            matches!(answer(200, r#"{"error":"slow_down","interval":10}"#), Ok(Answer::SlowDown(Some(d))) if d == Duration::from_secs(10))
        );
        assert_eq!(answer(502, "<html>").err().unwrap().kind(), ErrorKind::ServerError);
        assert_eq!(answer(200, "<html>").err().unwrap().kind(), ErrorKind::MalformedResponse);
        assert_eq!(answer(200, r#"{"access_token":"bad\ntoken"}"#).err().unwrap().kind(), ErrorKind::MalformedResponse);
        // A description that carries a token is scrubbed.
        let leaky = answer(
            200,
            r#"{"error":"bad_refresh_token","error_description":"ghr_0123456789abcdefghijklmnopqrstuvwxyz"}"#,
        );
        assert!(!leaky.err().unwrap().to_string().contains("ghr_0123"));
    }

    #[test]
    fn tokens_without_expiry_are_kept_as_such() {
        let Ok(Answer::Tokens(tokens)) = answer(200, r#"{"access_token":"ghu_abc","token_type":"bearer","scope":""}"#)
        else {
            panic!("tokens expected");
        };
        assert_eq!(tokens.expires_at(), None);
        assert_eq!(tokens.expose_refresh_token(), None);
        assert!(!format!("{tokens:?}").contains("ghu_abc"));
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(form(&[("a b", "c&d=é")]), "a%20b=c%26d%3D%C3%A9");
    }

    #[test]
    fn the_api_is_not_a_web_base() {
        assert!(OAuthApp::new("id", "s").with_web_base("https://api.github.com").is_err());
        assert!(OAuthApp::new("id", "s").with_web_base("https://ghe.example.com/api/v3").is_err());
        assert!(OAuthApp::new("id", "s").with_web_base("http://ghe.example.com").is_err());
        assert!(OAuthApp::new("id", "s").with_web_base("http://127.0.0.1:8080").is_ok());
    }
}
