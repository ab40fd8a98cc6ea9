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
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Keeps what is safe to show of a message that came from the network: at most 200 characters, no control
/// characters, and anything that looks like a GitHub token or a JWT replaced by `[redacted]`.
pub(crate) fn scrub(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = String::new();
    // Control characters go first, so that none can split a secret into words that pass the check.
    let visible: String = message
        .chars()
        .filter_map(|c| if c.is_whitespace() { Some(' ') } else { (!c.is_control()).then_some(c) })
        .collect();
    for word in visible.split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        if looks_like_secret(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        if out.chars().count() > MAX_CHARS {
            out = out.chars().take(MAX_CHARS).collect();
            out.push('…');
            break;
        }
    }
    out
}

fn looks_like_secret(word: &str) -> bool {
    // No trimming: a prefix such as `ghu_` ends in punctuation, and a trimmed word would lose it.
    ["ghs_", "ghu_", "ghr_", "ghp_", "gho_", "github_pat_", "eyJ"].iter().any(|p| word.contains(p))
        || word.contains("PRIVATE KEY")
        // Long unbroken runs of token alphabet are treated as secrets too.
        || (word.len() >= 32 && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
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
        assert_eq!(scrub("claim exp`p')tighu_ ; far"), "claim [redacted] ; far");
        let long = "x ".repeat(300);
        assert!(scrub(&long).chars().count() <= 201);
        assert_eq!(scrub("A JSON web token could not be decoded"), "A JSON web token could not be decoded");
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
