//! The App's private key: reading it from PEM, refusing every other format with directions.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;

use super::JwtSigner;
use crate::error::{BoxError, Error, ErrorKind};

/// A GitHub App's RSA private key, parsed and checked once.
///
/// Accepts what GitHub hands out and what users turn it into: PKCS#1 (`BEGIN RSA PRIVATE KEY`, the file GitHub
/// downloads), PKCS#8 (`BEGIN PRIVATE KEY`), either with newlines written as literal `\n` (as environment
/// variables often carry them), with `\r\n` line ends, or wrapped in quotes. Anything else is refused with an
/// [`ErrorKind::InvalidKey`] error that names what was found and how to convert it. Neither errors nor `Debug`
/// ever show key material.
///
/// ```
/// use tower_github_app::{ErrorKind, PrivateKey};
///
/// let err = PrivateKey::from_pem("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----")
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidKey);
/// assert!(err.to_string().contains("ssh-keygen"));
/// ```
#[derive(Clone)]
pub struct PrivateKey {
    pair: Arc<KeyPair>,
    format: &'static str,
}

impl PrivateKey {
    /// Parses a PEM private key (PKCS#1 or PKCS#8, RSA, unencrypted).
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let text = std::str::from_utf8(pem.as_ref()).map_err(|_| {
            invalid(
                "the private key is not text: a PEM key is ASCII. If this is a binary DER file, load it with \
                 PrivateKey::from_der or convert it with `openssl rsa -inform DER -in key.der -out key.pem`",
            )
        })?;
        let text = normalize(text);
        if text.is_empty() {
            return Err(invalid(
                "the private key is empty: pass the contents of the .pem file downloaded from the GitHub App's \
                 settings page (is the environment variable or file path set?)",
            ));
        }
        let Some(block) = find_block(&text) else {
            return Err(no_pem_block(&text));
        };
        match block.label {
            "RSA PRIVATE KEY" => {
                if block.headers.contains("ENCRYPTED") || block.body.contains("Proc-Type:") {
                    return Err(encrypted());
                }
                let der = block.decode()?;
                let pair = KeyPair::from_der(&der).map_err(|_| corrupted("PKCS#1"))?;
                Ok(Self::new(pair, "PKCS#1"))
            }
            "PRIVATE KEY" => {
                let der = block.decode()?;
                match KeyPair::from_pkcs8(&der) {
                    Ok(pair) => Ok(Self::new(pair, "PKCS#8")),
                    Err(_) => Err(pkcs8_problem(&der)),
                }
            }
            "ENCRYPTED PRIVATE KEY" => Err(encrypted()),
            "OPENSSH PRIVATE KEY" => Err(invalid(
                "the private key is in OpenSSH format (BEGIN OPENSSH PRIVATE KEY); GitHub App keys are PEM. Use \
                 the .pem file from the App's settings page, or convert this file in place to PKCS#1 with \
                 `ssh-keygen -p -m PEM -f <file>`",
            )),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Err(invalid(
                "this is a public key, not the private key: use the .pem private key from the GitHub App's \
                 settings page (\"Generate a private key\")",
            )),
            "CERTIFICATE" | "TRUSTED CERTIFICATE" | "CERTIFICATE REQUEST" => Err(invalid(
                "this is a certificate, not a private key: use the .pem private key from the GitHub App's \
                 settings page (\"Generate a private key\")",
            )),
            "EC PRIVATE KEY" => Err(not_rsa("an EC")),
            "DSA PRIVATE KEY" => Err(not_rsa("a DSA")),
            other => Err(invalid(format!(
                "the PEM block is labelled {:?}, which is not a private key this crate can use: GitHub App keys \
                 are RSA, labelled RSA PRIVATE KEY (PKCS#1) or PRIVATE KEY (PKCS#8)",
                label_for_message(other)
            ))),
        }
    }

    /// Parses a DER private key: PKCS#1 `RSAPrivateKey` or unencrypted PKCS#8.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        if der.is_empty() {
            return Err(invalid("the private key is empty"));
        }
        if let Ok(pair) = KeyPair::from_der(der) {
            return Ok(Self::new(pair, "PKCS#1"));
        }
        KeyPair::from_pkcs8(der).map(|pair| Self::new(pair, "PKCS#8")).map_err(|_| pkcs8_problem(der))
    }

    fn new(pair: KeyPair, format: &'static str) -> Self {
        Self { pair: Arc::new(pair), format }
    }

    /// The public half as a DER `RSAPublicKey` (PKCS#1), for verifying this key's JWTs.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `message` with RS256 (RSASSA-PKCS1-v1_5 with SHA-256) and returns the raw signature.
    pub fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), message, &mut signature)
            .map_err(|_| Error::new(ErrorKind::Signing, "RS256 signing with the App's private key failed"))?;
        Ok(signature)
    }
}

impl JwtSigner for PrivateKey {
    fn sign<'a>(&'a self, message: &'a [u8]) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, BoxError>> + Send + 'a>> {
        let signature = self.sign_rs256(message).map_err(BoxError::from);
        Box::pin(std::future::ready(signature))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("format", &self.format)
            .field("bits", &(self.pair.public_modulus_len() * 8))
            .finish_non_exhaustive()
    }
}

/// Undoes what environment variables and config files do to a PEM file: surrounding quotes and whitespace,
/// literal `\n` escapes, `\r\n` line ends.
fn normalize(text: &str) -> String {
    let mut text = text.trim();
    for quote in ['"', '\''] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            text = text[1..text.len() - 1].trim();
        }
    }
    text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n").replace('\r', "\n")
}

struct PemBlock<'a> {
    label: &'a str,
    headers: &'a str,
    body: &'a str,
    complete: bool,
}

impl PemBlock<'_> {
    fn decode(&self) -> Result<Vec<u8>, Error> {
        if !self.complete {
            return Err(truncated());
        }
        let base64: String = self.body.chars().filter(|c| !c.is_whitespace()).collect();
        let der =
            base64::engine::general_purpose::STANDARD.decode(base64.as_bytes()).map_err(|_| corrupted_base64())?;
        if der.is_empty() {
            return Err(invalid("the PEM block is empty: the key was cut off; copy the whole .pem file"));
        }
        Ok(der)
    }
}

/// Finds the first PEM block, preferring a private key when the file holds several (a certificate and its key).
fn find_block(text: &str) -> Option<PemBlock<'_>> {
    let mut first = None;
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let end_of_label = after.find("-----")?;
        let label = &after[..end_of_label];
        let content = &after[end_of_label + 5..];
        let end_marker = format!("-----END {label}-----");
        let block = match content.find(&end_marker) {
            Some(end) => {
                let (headers, body) = split_headers(&content[..end]);
                rest = &content[end + end_marker.len()..];
                PemBlock { label, headers, body, complete: true }
            }
            // No END line: keep the label so the error can say what was cut off.
            None => {
                rest = "";
                PemBlock { label, headers: "", body: "", complete: false }
            }
        };
        if block.label.ends_with("PRIVATE KEY") {
            return Some(block);
        }
        first.get_or_insert(block);
    }
    first
}

/// Splits RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`) from the base64 body.
fn split_headers(content: &str) -> (&str, &str) {
    match content.find("\n\n") {
        Some(blank) if content[..blank].contains(':') => (&content[..blank], &content[blank..]),
        _ if content.contains("Proc-Type:") => (content, ""),
        _ => ("", content),
    }
}

fn no_pem_block(text: &str) -> Error {
    if text.contains("-----BEGIN") {
        return truncated();
    }
    if text.starts_with("ssh-rsa ") || text.starts_with("ssh-ed25519 ") || text.starts_with("ecdsa-sha2-") {
        return invalid(
            "this is an SSH public key, not the App's private key: use the .pem private key from the GitHub \
             App's settings page",
        );
    }
    if text.ends_with(".pem") || text.contains('/') && !text.contains('\n') && text.len() < 4096 {
        return invalid(
            "the private key looks like a file path, not a key: read the file and pass its contents \
             (for example with std::fs::read)",
        );
    }
    invalid(
        "no PEM block found (expected a line -----BEGIN RSA PRIVATE KEY-----): pass the whole .pem file \
         downloaded from the GitHub App's settings page",
    )
}

fn pkcs8_problem(der: &[u8]) -> Error {
    // Object identifiers of the key algorithm inside PKCS#8, as DER.
    const EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    const RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    if contains(der, EC) {
        not_rsa("an EC")
    } else if contains(der, ED25519) {
        not_rsa("an Ed25519")
    } else if contains(der, RSA) {
        corrupted("PKCS#8")
    } else {
        invalid(
            "the key is not an RSA private key GitHub issued (unknown or damaged structure): use the .pem \
             private key from the GitHub App's settings page",
        )
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn label_for_message(label: &str) -> String {
    label.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ' ').take(40).collect()
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidKey, message)
}

fn encrypted() -> Error {
    invalid(
        "the private key is encrypted with a passphrase; GitHub App keys are not. Decrypt it with \
         `openssl pkey -in encrypted.pem -out key.pem` (it asks for the passphrase) and pass key.pem",
    )
}

fn not_rsa(kind: &str) -> Error {
    invalid(format!(
        "this is {kind} private key; GitHub App keys are RSA (RS256). Use the .pem private key from the GitHub \
         App's settings page"
    ))
}

fn truncated() -> Error {
    invalid(
        "the PEM key is truncated: its -----END ...----- line is missing. Copy the whole .pem file; if it comes \
         from an environment variable, check that multi-line values are not cut at the first line",
    )
}

fn corrupted_base64() -> Error {
    invalid("the PEM key's body is not valid base64: the key was cut off or edited. Copy the whole .pem file again")
}

fn corrupted(format: &str) -> Error {
    invalid(format!(
        "the {format} RSA private key is damaged or truncated (its structure does not parse, or the key is \
         shorter than 2048 bits): download a new private key from the GitHub App's settings page"
    ))
}
