//! Webhook deliveries: checking that a request really comes from GitHub before anything reads it.
//!
//! GitHub signs every delivery to a webhook that has a secret: `X-Hub-Signature-256: sha256=<hex>` is the
//! HMAC-SHA256 of the raw request body, keyed with the secret. [`WebhookSecret::verify`] recomputes it and compares
//! in constant time (`aws_lc_rs::hmac::verify`), so check the body exactly as it arrived, **before** parsing it:
//! re-encoded JSON no longer matches. [`WebhookSecret::sign`] makes the header value, for tests that send
//! deliveries of their own.
//!
//! Owns: the signature check. It does not parse payloads or route events; a webhook handler does that after the
//! check passes (see `examples/webhook_bot.rs`: `installation` and `installation_repositories` events tell an
//! [`InstallationPool`](crate::InstallationPool) which tokens and lookups went stale).
//!
//! ```
//! use tower_github_app::webhook::{SIGNATURE_256, SignatureError, WebhookSecret};
//! # fn main() -> Result<(), tower_github_app::Error> {
//! let secret = WebhookSecret::new("It's a Secret to Everybody")?;
//! let body = b"Hello, World!";
//!
//! // What GitHub sends with this body (GitHub's documented test values).
//! let mut headers = http::HeaderMap::new();
//! headers.insert(
//!     SIGNATURE_256,
//!     "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".parse().unwrap(),
//! );
//! assert_eq!(secret.verify(headers.get(SIGNATURE_256), body), Ok(()));
//!
//! // Anything else is refused, with a reason that names no secret.
//! assert_eq!(secret.verify(headers.get(SIGNATURE_256), b"Hello, World?"), Err(SignatureError::Mismatch));
//! assert_eq!(secret.verify(None::<&str>, body), Err(SignatureError::Missing));
//! # Ok(())
//! # }
//! ```

use std::fmt;

use aws_lc_rs::hmac;
use http::HeaderName;

use crate::error::{Error, ErrorKind};

/// `X-Hub-Signature-256`, the header GitHub signs deliveries with.
pub const SIGNATURE_256: HeaderName = HeaderName::from_static("x-hub-signature-256");

/// What comes before the hex digits of an `X-Hub-Signature-256` value.
const PREFIX: &[u8] = b"sha256=";
/// Hex digits of an HMAC-SHA256.
const HEX_LEN: usize = 64;

/// A webhook's secret, ready to check and make `X-Hub-Signature-256` values. Its `Debug` shows no part of it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: hmac::Key,
}

impl WebhookSecret {
    /// The secret set in the webhook's settings on GitHub (the App's settings page, or the repository's or
    /// organization's webhook), as bytes or text, exactly as entered: it is not trimmed.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for an empty secret: anyone could sign with it.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, Error> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the webhook secret is empty: anyone could sign deliveries with it; set a random secret in the \
                 webhook's settings on GitHub and give the same one here",
            ));
        }
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) })
    }

    /// Checks an `X-Hub-Signature-256` value (`sha256=` and 64 hex digits, either case) against the raw body, in
    /// constant time. `signature` is the header as received (`headers.get(SIGNATURE_256)`), `None` when the
    /// request had none.
    ///
    /// ```
    /// use tower_github_app::webhook::{SignatureError, WebhookSecret};
    /// # fn main() -> Result<(), tower_github_app::Error> {
    /// let secret = WebhookSecret::new(b"webhook secret")?;
    /// let body = br#"{"action":"opened"}"#;
    /// assert_eq!(secret.verify(Some(secret.sign(body)), body), Ok(()));
    /// assert_eq!(secret.verify(Some("sha1=0123"), body), Err(SignatureError::WrongPrefix));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`SignatureError`]: no header, a header that is not `sha256=` and 64 hex digits, or a signature of
    /// another body or made with another secret.
    pub fn verify(&self, signature: Option<impl AsRef<[u8]>>, body: &[u8]) -> Result<(), SignatureError> {
        let signature = signature.ok_or(SignatureError::Missing)?;
        let hex = signature.as_ref().strip_prefix(PREFIX).ok_or(SignatureError::WrongPrefix)?;
        if hex.len() != HEX_LEN {
            return Err(SignatureError::WrongLength { found: hex.len() });
        }
        let mut tag = [0u8; HEX_LEN / 2];
        for (byte, pair) in tag.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        hmac::verify(&self.key, body, &tag).map_err(|_| SignatureError::Mismatch)
    }

    /// The `X-Hub-Signature-256` value GitHub sends with `body`: `sha256=` and 64 lowercase hex digits. For tests
    /// that send deliveries of their own.
    ///
    /// ```
    /// use tower_github_app::webhook::WebhookSecret;
    /// # fn main() -> Result<(), tower_github_app::Error> {
    /// let secret = WebhookSecret::new("It's a Secret to Everybody")?;
    /// assert_eq!(
    ///     secret.sign(b"Hello, World!"),
    ///     "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn sign(&self, body: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let tag = hmac::sign(&self.key, body);
        let mut value = String::with_capacity(PREFIX.len() + HEX_LEN);
        value.push_str("sha256=");
        for byte in tag.as_ref() {
            value.push(char::from(DIGITS[usize::from(byte >> 4)]));
            value.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
        value
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret").finish_non_exhaustive()
    }
}

fn hex_digit(digit: u8) -> Result<u8, SignatureError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(SignatureError::NotHex),
    }
}

/// Why a delivery's signature was refused. Messages say what to check; they never contain the secret or the
/// expected signature, and never echo the header received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    Missing,
    /// The header does not start with `sha256=` (an `X-Hub-Signature` SHA-1 value, say).
    WrongPrefix,
    /// Not 64 hex digits after `sha256=`.
    WrongLength {
        /// How many characters there were.
        found: usize,
    },
    /// A character other than a hex digit after `sha256=`.
    NotHex,
    /// A well-formed signature, but not of this body with this secret.
    Mismatch,
}

impl SignatureError {
    /// Whether the header was there but is not `sha256=` and 64 hex digits.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::WrongPrefix | Self::WrongLength { .. } | Self::NotHex)
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str(
                "the request has no X-Hub-Signature-256 header: give the webhook a secret in its settings on \
                 GitHub, so that GitHub signs its deliveries",
            ),
            Self::WrongPrefix => f.write_str(
                "the X-Hub-Signature-256 header does not start with `sha256=`: pass that header's value as \
                 received (the SHA-1 X-Hub-Signature header is not accepted)",
            ),
            Self::WrongLength { found } => write!(
                f,
                "the X-Hub-Signature-256 header has {found} characters after `sha256=` where 64 hex digits are \
                 expected: pass the header's value as received"
            ),
            Self::NotHex => f.write_str(
                "the X-Hub-Signature-256 header has characters other than hex digits after `sha256=`: pass the \
                 header's value as received",
            ),
            Self::Mismatch => f.write_str(
                "the X-Hub-Signature-256 header does not match the body: check that the webhook secret is the one \
                 set on GitHub, and that the body is checked exactly as received, before any parsing",
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's test values ("Validating webhook deliveries", docs.github.com).
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn github() -> WebhookSecret {
        WebhookSecret::new(GITHUB_SECRET).unwrap()
    }

    #[test]
    fn githubs_test_vector() {
        assert_eq!(github().sign(GITHUB_BODY), GITHUB_SIGNATURE);
        assert_eq!(github().verify(Some(GITHUB_SIGNATURE), GITHUB_BODY), Ok(()));
        let header = http::HeaderValue::from_static(GITHUB_SIGNATURE);
        assert_eq!(github().verify(Some(&header), GITHUB_BODY), Ok(()));
        // Bytes and text make the same key.
        let from_bytes = WebhookSecret::new(GITHUB_SECRET.as_bytes()).unwrap();
        assert_eq!(from_bytes.verify(Some(GITHUB_SIGNATURE), GITHUB_BODY), Ok(()));
    }

    #[test]
    fn uppercase_hex_is_the_same_signature() {
        let upper = format!("sha256={}", GITHUB_SIGNATURE["sha256=".len()..].to_ascii_uppercase());
        assert_eq!(github().verify(Some(&upper), GITHUB_BODY), Ok(()));
        // The prefix is not case-insensitive: GitHub sends it in lowercase.
        assert_eq!(
            github().verify(Some(upper.replace("sha256=", "SHA256=")), GITHUB_BODY),
            Err(SignatureError::WrongPrefix)
        );
    }

    #[test]
    fn wrong_length() {
        let short = &GITHUB_SIGNATURE[..GITHUB_SIGNATURE.len() - 1];
        assert_eq!(github().verify(Some(short), GITHUB_BODY), Err(SignatureError::WrongLength { found: 63 }));
        let long = format!("{GITHUB_SIGNATURE}0");
        assert_eq!(github().verify(Some(&long), GITHUB_BODY), Err(SignatureError::WrongLength { found: 65 }));
        assert_eq!(github().verify(Some("sha256="), GITHUB_BODY), Err(SignatureError::WrongLength { found: 0 }));
        assert!(SignatureError::WrongLength { found: 0 }.is_malformed());
    }

    #[test]
    fn sha1_and_other_prefixes() {
        // What GitHub sends in the older X-Hub-Signature header for this body (HMAC-SHA1, 40 hex digits).
        let sha1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
        assert_eq!(github().verify(Some(sha1), GITHUB_BODY), Err(SignatureError::WrongPrefix));
        // The right digits without the prefix, or with another one.
        let digits = &GITHUB_SIGNATURE["sha256=".len()..];
        assert_eq!(github().verify(Some(digits), GITHUB_BODY), Err(SignatureError::WrongPrefix));
        assert_eq!(
            github().verify(Some(format!(" {GITHUB_SIGNATURE}")), GITHUB_BODY),
            Err(SignatureError::WrongPrefix)
        );
        assert!(SignatureError::WrongPrefix.is_malformed());
    }

    #[test]
    fn non_hex() {
        let bad = GITHUB_SIGNATURE.replace('e', "g");
        assert_eq!(github().verify(Some(&bad), GITHUB_BODY), Err(SignatureError::NotHex));
        let non_ascii = format!("sha256={}é", &GITHUB_SIGNATURE["sha256=".len()..GITHUB_SIGNATURE.len() - 2]);
        assert_eq!(non_ascii.len() - "sha256=".len(), 64);
        assert_eq!(github().verify(Some(&non_ascii), GITHUB_BODY), Err(SignatureError::NotHex));
        assert!(SignatureError::NotHex.is_malformed());
    }

    #[test]
    fn empty_body() {
        // HMAC-SHA256 of nothing under GitHub's test secret (computed independently with Python's hmac).
        let signature = "sha256=66a0c074deaa0f489ead6537e0d32f9a344b90bbeda705b6ed45ecd3b413fb40";
        assert_eq!(github().sign(b""), signature);
        assert_eq!(github().verify(Some(signature), b""), Ok(()));
        assert_eq!(github().verify(Some(GITHUB_SIGNATURE), b""), Err(SignatureError::Mismatch));
        assert_eq!(github().verify(Some(signature), GITHUB_BODY), Err(SignatureError::Mismatch));
    }

    #[test]
    fn another_body_or_secret_or_no_header() {
        assert_eq!(github().verify(Some(GITHUB_SIGNATURE), b"Hello, World?"), Err(SignatureError::Mismatch));
        let other = WebhookSecret::new("It's a Secret to Everybody!").unwrap();
        assert_eq!(other.verify(Some(GITHUB_SIGNATURE), GITHUB_BODY), Err(SignatureError::Mismatch));
        assert_eq!(github().verify(None::<&str>, GITHUB_BODY), Err(SignatureError::Missing));
        assert!(!SignatureError::Mismatch.is_malformed() && !SignatureError::Missing.is_malformed());
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let error = WebhookSecret::new("").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig);
        assert!(error.to_string().contains("empty"), "{error}");
    }

    #[test]
    fn nothing_secret_in_debug_or_messages() {
        let secret = github();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "WebhookSecret { .. }");
        let expected = &GITHUB_SIGNATURE["sha256=".len()..];
        let errors = [
            SignatureError::Missing,
            SignatureError::WrongPrefix,
            SignatureError::WrongLength { found: 63 },
            SignatureError::NotHex,
            SignatureError::Mismatch,
        ];
        for error in errors {
            let text = format!("{error} {error:?}");
            assert!(!text.contains(GITHUB_SECRET) && !text.contains(expected) && !text.contains("Secret"), "{text}");
            assert!(text.contains("X-Hub-Signature-256"), "{text}");
        }
    }
}
