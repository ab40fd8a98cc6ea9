//! Tokens at rest: AES-256-GCM (aws-lc-rs) under a key the user supplies, with the key's id stored beside each
//! value so that keys can rotate. The Redis key name (and the fields stored in clear beside the value) are the
//! associated data: a value moved to another key, or given another expiry, does not open.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;

use crate::error::{Error, ErrorKind};

/// What every sealed value starts with: the format's name and version.
const MAGIC: &[u8] = b"tga1";

/// A 256-bit key that encrypts the tokens a [`RedisStore`](super::RedisStore) keeps, and its id.
///
/// The id is stored (in clear) with every value it seals, so that a store given the new key and the old ones
/// ([`RedisStoreBuilder::decryption_key`](super::RedisStoreBuilder::decryption_key)) reads values sealed under
/// any of them and writes under the new one: installation tokens are rewritten within the hour, user records at
/// their next rotation. Every process of the fleet needs the key; Redis never sees it.
///
/// ```
/// use tower_github_app::redis::EncryptionKey;
/// // 32 bytes, base64: `openssl rand -base64 32`, kept in your secret store.
/// let key = EncryptionKey::from_base64("2026-11", "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")?;
/// assert_eq!(key.id(), "2026-11");
/// assert!(!format!("{key:?}").contains("q83v"));
/// # Ok::<(), tower_github_app::Error>(())
/// ```
#[derive(Clone)]
pub struct EncryptionKey {
    id: Arc<str>,
    key: Arc<LessSafeKey>,
}

impl EncryptionKey {
    /// A key from its 32 bytes. `id` names it in stored values: 1 to 32 printable ASCII characters, no spaces.
    pub fn new(id: &str, key: &[u8]) -> Result<Self, Error> {
        let config = |message: String| Error::new(ErrorKind::InvalidConfig, message);
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(config(format!(
                "the encryption key id {:?} must be 1 to 32 printable ASCII characters without spaces",
                id.chars().take(40).collect::<String>()
            )));
        }
        if key.len() != 32 {
            return Err(config(format!(
                "the encryption key {id:?} has {} bytes; AES-256-GCM needs exactly 32 (`openssl rand -base64 32`)",
                key.len()
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| config(format!("the encryption key {id:?} was refused by AES-256-GCM")))?;
        Ok(EncryptionKey { id: Arc::from(id), key: Arc::new(LessSafeKey::new(unbound)) })
    }

    /// A key from its 32 bytes in standard base64 (as `openssl rand -base64 32` prints them).
    pub fn from_base64(id: &str, key: &str) -> Result<Self, Error> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(key.trim()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("the encryption key {id:?} is not standard base64 (`openssl rand -base64 32` prints one)"),
            )
        })?;
        Self::new(id, &bytes)
    }

    /// A new random key (from aws-lc-rs's generator): for tests and tools. A fleet needs one key shared by all
    /// its processes, so a key generated here must be stored and handed to the others.
    pub fn generate(id: &str) -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| Error::new(ErrorKind::Runtime, "the system's random generator failed"))?;
        Self::new(id, &bytes)
    }

    /// The key's id, stored with every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The key that seals, and every key that may open.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) current: EncryptionKey,
    pub(crate) older: Vec<EncryptionKey>,
}

/// Why a stored value did not open.
#[derive(Debug)]
pub(crate) enum Unsealed {
    /// Not a value this crate wrote.
    Garbled,
    /// Sealed under a key id this store was not given.
    UnknownKey(String),
    /// The key id is known but the value does not open: altered, moved to another key, or another key with the
    /// same id.
    Refused(String),
}

impl fmt::Display for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsealed::Garbled => f.write_str("the stored value is not one this crate wrote (garbled or foreign)"),
            Unsealed::UnknownKey(id) => write!(
                f,
                "the stored value was encrypted under key id {id:?}, which this store was not given: add that key \
                 with RedisStoreBuilder::decryption_key"
            ),
            Unsealed::Refused(id) => write!(
                f,
                "the stored value does not decrypt under key id {id:?}: it was altered, moved from another key, or \
                 encrypted by another key with the same id"
            ),
        }
    }
}

impl Keys {
    /// `plain` sealed under the current key, bound to `aad`.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let key = &self.current;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| Error::new(ErrorKind::Runtime, "the system's random generator failed"))?;
        let mut sealed = Vec::with_capacity(MAGIC.len() + 1 + key.id.len() + NONCE_LEN + plain.len() + 16);
        sealed.extend_from_slice(MAGIC);
        sealed.push(key.id.len() as u8);
        sealed.extend_from_slice(key.id.as_bytes());
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| Error::new(ErrorKind::Runtime, "AES-256-GCM refused to seal a token"))?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// The plain text of `sealed`, bound to `aad`.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unsealed> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(Unsealed::Garbled)?;
        let (&id_len, rest) = rest.split_first().ok_or(Unsealed::Garbled)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + 16 {
            return Err(Unsealed::Garbled);
        }
        let (id, rest) = rest.split_at(id_len);
        let id = std::str::from_utf8(id).map_err(|_| Unsealed::Garbled)?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let key = std::iter::once(&self.current)
            .chain(&self.older)
            .find(|key| &*key.id == id)
            .ok_or_else(|| Unsealed::UnknownKey(crate::error::scrub(id)))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealed::Garbled)?;
        let mut body = body.to_vec();
        let plain =
            key.key.open_in_place(nonce, Aad::from(aad), &mut body).map_err(|_| Unsealed::Refused(id.to_owned()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            current: EncryptionKey::new("new", &[7; 32]).unwrap(),
            older: vec![EncryptionKey::new("old", &[9; 32]).unwrap()],
        }
    }

    #[test]
    fn seals_and_opens_under_the_current_and_older_keys() {
        let keys = keys();
        let sealed = keys.seal(b"ghs_secret", b"key-a").unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"ghs_"));
        assert_eq!(keys.open(&sealed, b"key-a").unwrap(), b"ghs_secret");
        let old = Keys { current: keys.older[0].clone(), older: vec![] };
        assert_eq!(keys.open(&old.seal(b"x", b"k").unwrap(), b"k").unwrap(), b"x");
    }

    #[test]
    fn refuses_moved_altered_foreign_and_unknown_values() {
        let keys = keys();
        let sealed = keys.seal(b"ghs_secret", b"key-a").unwrap();
        assert!(matches!(keys.open(&sealed, b"key-b"), Err(Unsealed::Refused(_))));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(keys.open(&altered, b"key-a"), Err(Unsealed::Refused(_))));
        assert!(matches!(keys.open(b"ghs_plain", b"key-a"), Err(Unsealed::Garbled)));
        assert!(matches!(keys.open(&sealed[..10], b"key-a"), Err(Unsealed::Garbled)));
        let other = Keys { current: EncryptionKey::new("other", &[1; 32]).unwrap(), older: vec![] };
        let error = keys.open(&other.seal(b"x", b"k").unwrap(), b"k").unwrap_err();
        assert!(matches!(error, Unsealed::UnknownKey(_)) && error.to_string().contains("decryption_key"));
    }

    #[test]
    fn refuses_bad_keys() {
        assert!(EncryptionKey::new("id", &[0; 16]).is_err());
        assert!(EncryptionKey::new("", &[0; 32]).is_err());
        assert!(EncryptionKey::new("has space", &[0; 32]).is_err());
        assert!(EncryptionKey::from_base64("id", "not base64!").is_err());
        assert_ne!(EncryptionKey::generate("a").unwrap().id(), "");
    }
}
