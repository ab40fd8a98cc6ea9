//! The crate's one error type.
//!
//! Owns: [`Error`], [`ErrorKind`] and the rules for what an error message may contain. Every message says what
//! happened and what to do about it, and none carries a secret: no token, no JWT, no key material, and no raw
//! response body (a garbled `201` could hold a token). What GitHub said is kept only as its JSON `message`, cut
//! short and scrubbed of anything that looks like a credential.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

/// A boxed error, as tower middleware returns them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, for callers that react differently to different failures.
///
/// Match on it with a wildcard arm: new kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The private key could not be used: wrong format (OpenSSH, encrypted, public key, certificate, EC), empty,
    /// truncated or corrupted.
    InvalidKey,
    /// A configuration value is outside what GitHub accepts (API base URL, installation id, lifetimes).
    InvalidConfig,
    /// The request cannot be authenticated as given (for example a URI without a host).
    InvalidRequest,
    /// GitHub did not accept the App JWT (`401`): the key does not belong to the App, or the App id is wrong.
    JwtRejected,
    /// GitHub refused the App JWT because the clocks disagree; [`Error::clock_offset`] holds the measured offset.
    ClockSkew,
    /// GitHub refused to mint a token for the installation (`403`): suspended, or permissions the App lacks.
    InstallationForbidden,
    /// GitHub does not know the installation on this host (`404`).
    InstallationNotFound,
    /// The App is not installed on the account or repository a request names (the installation lookup answered
    /// `404`): the request was not sent.
    NotInstalled,
    /// The requested repositories or permissions are not valid for the installation (`422`).
    InvalidScope,
    /// GitHub's rate limit refused the request (`429`, or `403` with the rate limit exhausted).
    RateLimited,
    /// GitHub answered with a server error (`5xx`).
    ServerError,
    /// GitHub answered with a status this crate does not expect for the request.
    UnexpectedStatus,
    /// The HTTP client failed to send the request or to read the answer.
    Transport,
    /// No answer arrived within the configured time.
    Timeout,
    /// The answer was not what GitHub sends: not JSON, no token, or an unusable `expires_at`.
    MalformedResponse,
    /// The JWT signer failed (for example a remote KMS).
    Signing,
    /// The token refresher could not run: no Tokio runtime, or it was shut down.
    Runtime,
    /// The user must authorize the App again: GitHub refused the refresh token (`bad_refresh_token`: spent,
    /// revoked, or the user removed the authorization), the refresh token expired, or no tokens are stored for
    /// the user. Every request of that user fails fast with it until new tokens are signed in.
    ReauthorizationRequired,
    /// The user did not complete an authorization: the device flow was denied (`access_denied`) or its code
    /// expired (`expired_token`), or the web flow's code was refused (`bad_verification_code`). Start again.
    AuthorizationFailed,
    /// The token store failed (a user-token store's read or write). When a rotated pair could not be saved, it is
    /// kept in memory and the write is retried with backoff.
    Store,
}

/// An error from this crate: a [`kind`](Error::kind) to match on and a message that says what to do.
///
/// Cheap to clone: every request waiting on a failed mint receives the same error.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    status: Option<StatusCode>,
    github_message: Option<String>,
    request_id: Option<String>,
    clock_offset: Option<i64>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::build(kind, message).finish()
    }

    pub(crate) fn build(kind: ErrorKind, message: impl Into<String>) -> ErrorBuilder {
        ErrorBuilder(Inner {
            kind,
            message: message.into(),
            status: None,
            github_message: None,
            request_id: None,
            clock_offset: None,
            source: None,
        })
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status GitHub answered with, when the error comes from an answer.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// GitHub's own `message` from the error body, shortened and scrubbed of anything credential-like.
    pub fn github_message(&self) -> Option<&str> {
        self.inner.github_message.as_deref()
    }

    /// The `X-GitHub-Request-Id` of the failed request, for GitHub support.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// For [`ErrorKind::ClockSkew`]: GitHub's clock minus the local clock, in seconds, measured from the answer's
    /// `Date` header.
    pub fn clock_offset(&self) -> Option<i64> {
        self.inner.clock_offset
    }

    /// Whether retrying later may succeed without anyone changing configuration (server errors, transport
    /// failures, timeouts, rate limits, clock skew after correction).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::ServerError
                | ErrorKind::Transport
                | ErrorKind::Timeout
                | ErrorKind::RateLimited
                | ErrorKind::ClockSkew
        )
    }
}

pub(crate) struct ErrorBuilder(Inner);

impl ErrorBuilder {
    pub(crate) fn status(mut self, status: StatusCode) -> Self {
        self.0.status = Some(status);
        self
    }

    pub(crate) fn github_message(mut self, message: Option<String>) -> Self {
        self.0.github_message = message;
        self
    }

    pub(crate) fn request_id(mut self, id: Option<String>) -> Self {
        self.0.request_id = id;
        self
    }

    pub(crate) fn clock_offset(mut self, offset: Option<i64>) -> Self {
        self.0.clock_offset = offset;
        self
    }

    pub(crate) fn source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(Arc::from(source.into()));
        self
    }

    pub(crate) fn finish(self) -> Error {
        Error { inner: Arc::new(self.0) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(message) = &self.inner.github_message {
            write!(f, " (GitHub said: {message:?})")?;
        }
        if let Some(id) = &self.inner.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind).field("message", &self.inner.message);
        if let Some(status) = self.inner.status {
            d.field("status", &status);
        }
        if let Some(message) = &self.inner.github_message {
            d.field("github_message", message);
        }
        if let Some(id) = &self.inner.request_id {
            d.field("request_id", id);
        }
        if let Some(offset) = self.inner.clock_offset {
            d.field("clock_offset", &offset);
        }
        if let Some(source) = &self.inner.source {
            // Sources come from user code (signers) and clients: shown scrubbed, like GitHub's messages.
            d.field("source", &format_args!("{:?}", scrub(&source.to_string())));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Keeps what is safe to show of a message that came from the network: at most 200 characters, no control or
/// invisible characters, and every run of token-alphabet characters that could be (part of) a credential replaced
/// by `[redacted]`.
///
/// Runs are maximal sequences of `A-Z a-z 0-9 _ - . + / = ~` (the alphabets of GitHub tokens, base64url JWTs and
/// base64 key material), found inside words, so a secret glued to punctuation (`sig:<signature>`) is caught. A
/// run is redacted when it is 20 characters or longer, carries a credential prefix (`ghs_`, `eyJ`, ...), or is
/// 12 or longer and mixes upper case, lower case and digits (a secret cut into short words). Invisible
/// characters are removed first, so a zero-width space cannot split a secret into harmless pieces.
pub(crate) fn scrub(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let visible: String = message
        .chars()
        .filter_map(|c| {
            if c.is_whitespace() {
                Some(' ')
            } else if c.is_control() || is_invisible(c) {
                None
            } else {
                Some(c)
            }
        })
        .collect();
    if visible.to_ascii_uppercase().contains("PRIVATE KEY") {
        return "[redacted: key material]".to_owned();
    }
    let mut out = String::with_capacity(visible.len().min(MAX_CHARS + 16));
    let mut run_start = None;
    for (i, c) in visible.char_indices().chain(std::iter::once((visible.len(), ' '))) {
        if is_token_char(c) && i < visible.len() {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = run_start.take() {
            let run = &visible[start..i];
            out.push_str(if looks_like_secret(run) { "[redacted]" } else { run });
        }
        if i < visible.len() && !(c == ' ' && (out.is_empty() || out.ends_with(' '))) {
            out.push(c);
        }
    }
    let out = out.trim_end();
    if out.chars().count() > MAX_CHARS {
        let mut cut: String = out.chars().take(MAX_CHARS).collect();
        cut.push('…');
        cut
    } else {
        out.to_owned()
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '/' | '=' | '~')
}

fn looks_like_secret(run: &str) -> bool {
    const PREFIXES: [&str; 8] = ["ghs_", "ghu_", "ghr_", "ghp_", "gho_", "ghv_", "github_pat_", "eyJ"];
    let mixed = || {
        let b = run.as_bytes();
        b.iter().any(u8::is_ascii_uppercase) && b.iter().any(u8::is_ascii_lowercase) && b.iter().any(u8::is_ascii_digit)
    };
    run.len() >= 20 || PREFIXES.iter().any(|p| run.contains(p)) || (run.len() >= 12 && mixed())
}

/// Characters that render as nothing (Unicode format characters and variation selectors): removed before
/// looking for secrets, so that they cannot hide one.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_credentials_and_control_characters() {
        let scrubbed = scrub("Bad ghs_abc123 and eyJhbGci.x.y\n fine");
        assert_eq!(scrubbed, "Bad [redacted] and [redacted] fine");
        // A control character cannot smuggle a token past the check.
        assert_eq!(scrub("x gh\u{0}s_abc\tgh\u{7f}u_def"), "x [redacted] [redacted]");
        // Found by fuzzing: a word ending in a token prefix.
        assert_eq!(scrub("claim exp`p')tighu_ ; far"), "claim exp`p')[redacted] ; far");
        let long = "x ".repeat(300);
        assert!(scrub(&long).chars().count() <= 201);
        for message in [
            "A JSON web token could not be decoded",
            "'Expiration time' claim ('exp') is too far in the future",
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            "Resource not accessible by integration",
            "This installation has been suspended",
            "Bad credentials",
        ] {
            assert_eq!(scrub(message), message);
        }
    }

    /// Found by an outside review: secrets glued to punctuation, split by invisible characters, or cut into
    /// words shorter than a whole-word check looks for.
    #[test]
    fn scrub_finds_secrets_inside_words() {
        let signature: String = (0..342).map(|i| b"AZaz09-_"[i % 8] as char).collect();
        let glued = format!("sig:{signature}");
        assert_eq!(scrub(&glued), "sig:[redacted]");
        let zero_width = "token ghs\u{200B}_16C7e42F292c6912E7710c838347Ae178B4a here";
        assert_eq!(scrub(zero_width), "token [redacted] here");
        let split: Vec<String> =
            signature.as_bytes().chunks(31).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        let scrubbed = scrub(&split.join(" "));
        assert!(!scrubbed.contains(&signature[..12]) && !scrubbed.contains(&signature[40..60]), "{scrubbed}");
        let short: Vec<String> = ["Ab3dEf9hIj2L", "Mn4pQr5tUv6X"].iter().map(|s| s.to_string()).collect();
        assert_eq!(scrub(&short.join(" ")), "[redacted] [redacted]");
        assert_eq!(scrub("key: -----BEGIN RSA PRIVATE KEY-----"), "[redacted: key material]");
        assert_eq!(scrub("(\"eyJhbGciOiJSUzI1NiJ9\")"), "(\"[redacted]\")");
    }

    #[test]
    fn display_and_debug_carry_context() {
        let error = Error::build(ErrorKind::InstallationNotFound, "installation 5 was not found")
            .status(StatusCode::NOT_FOUND)
            .github_message(Some("Not Found".into()))
            .request_id(Some("ABCD:1234".into()))
            .finish();
        assert_eq!(
            error.to_string(),
            "installation 5 was not found (GitHub said: \"Not Found\") [request id ABCD:1234]"
        );
        assert!(format!("{error:?}").contains("InstallationNotFound"));
        assert!(!error.is_transient());
    }
}
