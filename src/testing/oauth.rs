//! The fake's OAuth side, on its web origin: the web flow's code exchange, the device flow, and the refresh grant
//! with GitHub's rotation semantics (spending a refresh token kills it and the access token it came with, at
//! once), plus the user API route `GET /user`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::server::{State, TokenState, respond};

/// Counts of what the fake's OAuth endpoints saw. See [`FakeGitHub::oauth_counts`](super::FakeGitHub::oauth_counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OAuthCounts {
    /// Refresh grants answered with a new pair (rotations).
    pub refreshes: u64,
    /// Refresh tokens presented after they were spent: each one a double spend.
    pub double_spends: u64,
    /// Refresh grants refused for another reason (revoked, expired, unknown).
    pub refused_refreshes: u64,
    /// Code exchanges answered with tokens.
    pub codes_exchanged: u64,
    /// Device-flow polls received.
    pub device_polls: u64,
    /// Device-flow polls that came sooner than the interval allowed (each answered `slow_down`).
    pub early_polls: u64,
    /// `slow_down` answers sent (early polls and forced ones).
    pub slow_downs: u64,
}

pub(super) struct OAuthState {
    pub(super) client_secret: String,
    /// `None`: the App has user-token expiry turned off.
    pub(super) access_lifetime: Option<Duration>,
    pub(super) refresh_lifetime: Duration,
    /// The status of OAuth error answers (GitHub: `200`).
    pub(super) error_status: u16,
    pub(super) device_interval: Duration,
    pub(super) device_lifetime: Duration,
    /// Polls answered `slow_down` whatever their timing.
    pub(super) forced_slow_downs: usize,
    access: HashMap<String, UserAccess>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, Code>,
    devices: HashMap<String, Device>,
    serial: u64,
    pub(super) counts: OAuthCounts,
}

struct UserAccess {
    serial: u64,
    login: String,
    expires: Option<Instant>,
    revoked: bool,
}

struct RefreshToken {
    login: String,
    access_token: String,
    expires: Instant,
    spent: bool,
    revoked: bool,
}

struct Code {
    login: String,
    used: bool,
}

struct Device {
    device_code: String,
    login: Option<String>,
    denied: bool,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    done: bool,
}

impl Default for OAuthState {
    fn default() -> Self {
        OAuthState {
            client_secret: super::FakeGitHub::CLIENT_SECRET.to_owned(),
            access_lifetime: Some(Duration::from_secs(8 * 3600)),
            refresh_lifetime: Duration::from_secs(15_811_200),
            error_status: 200,
            device_interval: Duration::from_secs(5),
            device_lifetime: Duration::from_secs(900),
            forced_slow_downs: 0,
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            devices: HashMap::new(),
            serial: 0,
            counts: OAuthCounts::default(),
        }
    }
}

fn random(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric).take(n).collect()
}

impl OAuthState {
    pub(super) fn authorization_code(&mut self, login: &str) -> String {
        let code = random(20).to_ascii_lowercase();
        self.codes.insert(code.clone(), Code { login: login.to_owned(), used: false });
        code
    }

    pub(super) fn approve_device(&mut self, user_code: &str, login: Option<&str>, denied: bool) -> bool {
        match self.devices.get_mut(user_code) {
            Some(device) => {
                device.login = login.map(str::to_owned);
                device.denied = denied;
                true
            }
            None => false,
        }
    }

    pub(super) fn revoke_user(&mut self, login: &str) {
        self.access.values_mut().filter(|a| a.login == login).for_each(|a| a.revoked = true);
        self.refresh.values_mut().filter(|r| r.login == login).for_each(|r| r.revoked = true);
    }

    /// Whether `token` is a refresh token that would be accepted now.
    pub(super) fn refresh_token_is_live(&self, token: &str) -> bool {
        self.refresh.get(token).is_some_and(|r| !r.spent && !r.revoked && Instant::now() < r.expires)
    }

    /// Refresh tokens of `login` that would be accepted now.
    pub(super) fn live_refresh_tokens(&self, login: &str) -> usize {
        self.refresh.iter().filter(|(t, r)| r.login == login && self.refresh_token_is_live(t)).count()
    }

    /// The serial, login and state of a user access token.
    pub(super) fn access_token(&self, token: &str) -> Option<(u64, String, TokenState)> {
        let access = self.access.get(token)?;
        let state = if access.revoked {
            TokenState::Revoked
        } else if access.expires.is_some_and(|e| Instant::now() >= e) {
            TokenState::Expired
        } else {
            TokenState::Valid
        };
        Some((access.serial, access.login.clone(), state))
    }

    /// Issues a pair for `login`.
    fn issue(&mut self, login: &str) -> Value {
        self.serial += 1;
        let now = Instant::now();
        let access_token = format!("ghu_{}", random(36));
        self.access.insert(
            access_token.clone(),
            UserAccess {
                serial: self.serial,
                login: login.to_owned(),
                expires: self.access_lifetime.map(|l| now + l),
                revoked: false,
            },
        );
        let Some(lifetime) = self.access_lifetime else {
            return json!({"access_token": access_token, "token_type": "bearer", "scope": ""});
        };
        let refresh_token = format!("ghr_{}", random(76));
        self.refresh.insert(
            refresh_token.clone(),
            RefreshToken {
                login: login.to_owned(),
                access_token: access_token.clone(),
                expires: now + self.refresh_lifetime,
                spent: false,
                revoked: false,
            },
        );
        json!({
            "access_token": access_token,
            "expires_in": lifetime.as_secs().max(1),
            "refresh_token": refresh_token,
            "refresh_token_expires_in": self.refresh_lifetime.as_secs(),
            "token_type": "bearer",
            "scope": "",
        })
    }
}

/// Reads a form or JSON body into its fields.
fn fields(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    if text.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return value
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
    }
    text.split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((decode(name), decode(value)))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) =
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn oauth_error(s: &State, error: &str, description: &str, extra: Option<(&str, Value)>) -> Response<Full<Bytes>> {
    let mut body = json!({
        "error": error,
        "error_description": description,
        "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors",
    });
    if let Some((name, value)) = extra {
        body[name] = value;
    }
    respond(s, s.oauth.error_status, "application/json; charset=utf-8", Bytes::from(body.to_string()))
}

fn tokens(s: &State, body: Value) -> Response<Full<Bytes>> {
    respond(s, 200, "application/json; charset=utf-8", Bytes::from(body.to_string()))
}

/// `POST /login/oauth/access_token`: code exchange, device poll, or refresh grant.
pub(super) fn access_token(s: &mut State, body: &[u8]) -> Response<Full<Bytes>> {
    let form = fields(body);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let known_client = s.apps.iter().any(|a| a.client_id == field("client_id"));
    if !known_client {
        return oauth_error(
            s,
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            None,
        );
    }
    match field("grant_type") {
        "urn:ietf:params:oauth:grant-type:device_code" => return device_poll(s, field("device_code")),
        "refresh_token" | "" => {}
        _ => return oauth_error(s, "unsupported_grant_type", "The grant type is not supported.", None),
    }
    if field("client_secret") != s.oauth.client_secret {
        return oauth_error(
            s,
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            None,
        );
    }
    if field("grant_type") == "refresh_token" {
        let presented = field("refresh_token").to_owned();
        let now = Instant::now();
        let oauth = &mut s.oauth;
        let outcome = match oauth.refresh.get_mut(&presented) {
            Some(token) if token.spent => {
                oauth.counts.double_spends += 1;
                Err(())
            }
            Some(token) if token.revoked || now >= token.expires => {
                oauth.counts.refused_refreshes += 1;
                Err(())
            }
            Some(token) => {
                // Spending it kills it and its access token at once.
                token.spent = true;
                let (login, access) = (token.login.clone(), token.access_token.clone());
                if let Some(access) = oauth.access.get_mut(&access) {
                    access.revoked = true;
                }
                oauth.counts.refreshes += 1;
                Ok(login)
            }
            None => {
                oauth.counts.refused_refreshes += 1;
                Err(())
            }
        };
        return match outcome {
            Ok(login) => {
                let body = s.oauth.issue(&login);
                tokens(s, body)
            }
            Err(()) => oauth_error(s, "bad_refresh_token", "The refresh token passed is incorrect or expired.", None),
        };
    }
    // The web flow's code exchange.
    let code = field("code").to_owned();
    let login = match s.oauth.codes.get_mut(&code) {
        Some(found) if !found.used => {
            found.used = true;
            found.login.clone()
        }
        _ => {
            return oauth_error(s, "bad_verification_code", "The code passed is incorrect or expired.", None);
        }
    };
    s.oauth.counts.codes_exchanged += 1;
    let body = s.oauth.issue(&login);
    tokens(s, body)
}

/// `POST /login/device/code`.
pub(super) fn device_code(s: &mut State, body: &[u8]) -> Response<Full<Bytes>> {
    let form = fields(body);
    if !s.apps.iter().any(|a| Some(&a.client_id) == form.get("client_id")) {
        return oauth_error(s, "incorrect_client_credentials", "The client_id passed is incorrect.", None);
    }
    let device_code = random(40).to_ascii_lowercase();
    let user_code = format!("{}-{}", random(4).to_ascii_uppercase(), random(4).to_ascii_uppercase());
    let interval = s.oauth.device_interval;
    let lifetime = s.oauth.device_lifetime;
    s.oauth.devices.insert(
        user_code.clone(),
        Device {
            device_code: device_code.clone(),
            login: None,
            denied: false,
            expires: Instant::now() + lifetime,
            interval,
            last_poll: None,
            done: false,
        },
    );
    let body = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{}/login/device", s.urls.web),
        "expires_in": lifetime.as_secs(),
        "interval": interval.as_secs().max(1),
    });
    tokens(s, body)
}

fn device_poll(s: &mut State, device_code: &str) -> Response<Full<Bytes>> {
    s.oauth.counts.device_polls += 1;
    let now = Instant::now();
    let forced = s.oauth.forced_slow_downs > 0;
    let Some(device) = s.oauth.devices.values_mut().find(|d| d.device_code == device_code && !d.done) else {
        return oauth_error(s, "incorrect_device_code", "The device_code provided is not valid.", None);
    };
    let early = device.last_poll.is_some_and(|last| now.duration_since(last) < device.interval);
    device.last_poll = Some(now);
    if early || forced {
        // GitHub adds 5 seconds to the interval with every slow_down.
        device.interval += Duration::from_secs(5);
        let interval = device.interval.as_secs();
        if early {
            s.oauth.counts.early_polls += 1;
        } else {
            s.oauth.forced_slow_downs -= 1;
        }
        s.oauth.counts.slow_downs += 1;
        return oauth_error(
            s,
            "slow_down",
            "Too many requests have been made in the same timeframe.",
            Some(("interval", json!(interval))),
        );
    }
    if now >= device.expires {
        device.done = true;
        return oauth_error(s, "expired_token", "The device code has expired.", None);
    }
    if device.denied {
        device.done = true;
        return oauth_error(s, "access_denied", "The authorization request was denied.", None);
    }
    let Some(login) = device.login.clone() else {
        return oauth_error(s, "authorization_pending", "The authorization request is still pending.", None);
    };
    device.done = true;
    let body = s.oauth.issue(&login);
    tokens(s, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let f = fields(b"a%20b=c%26d%3D%C3%A9&grant_type=refresh_token&x=%zz&y=%4");
        assert_eq!(f["a b"], "c&d=é");
        assert_eq!(f["grant_type"], "refresh_token");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
        let j = fields(br#"{"client_id":"Iv1","refresh_token":"ghr_x"}"#);
        assert_eq!(j["refresh_token"], "ghr_x");
    }
}
