//! Where user tokens live between processes and restarts: a versioned record per user, replaced only by
//! compare-and-swap.
//!
//! Owns the [`UserTokenStore`] trait (what a user implements for their database: load a record and its version,
//! swap it if the version is still the one expected) and the two stores in the crate: [`MemoryStore`] (one
//! process) and [`FileStore`] (one machine: atomic file replacement and an advisory lock, so processes share it).
//! What a record means (the token pair, a lease while one holder spends the refresh token, a refusal that needs
//! the user again) is the [`user`](crate::user) module's business: stores keep opaque bytes.
//!
//! A store for a database is two statements:
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use tower_github_app::store::{StoreFuture, UserTokenStore, Versioned};
//!
//! /// `CREATE TABLE user_tokens (key TEXT PRIMARY KEY, version BIGINT NOT NULL, record BYTEA NOT NULL)`
//! struct Table {
//!     // A connection pool in a real application; a map here.
//!     rows: Mutex<HashMap<String, Versioned>>,
//! }
//!
//! impl UserTokenStore for Table {
//!     fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
//!         // SELECT version, record FROM user_tokens WHERE key = $1
//!         Box::pin(async move { Ok(self.rows.lock().unwrap().get(key).cloned()) })
//!     }
//!
//!     fn compare_and_swap<'a>(
//!         &'a self,
//!         key: &'a str,
//!         expected: Option<u64>,
//!         new: &'a Versioned,
//!     ) -> StoreFuture<'a, bool> {
//!         // expected = None:    INSERT INTO user_tokens VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
//!         // expected = Some(v): UPDATE user_tokens SET version = $2, record = $3 WHERE key = $1 AND version = $4
//!         // ($2 = new.version, $3 = new.record, $4 = v.) Either way: whether a row was written.
//!         Box::pin(async move {
//!             let mut rows = self.rows.lock().unwrap();
//!             if rows.get(key).map(|r| r.version) != expected {
//!                 return Ok(false);
//!             }
//!             rows.insert(key.to_owned(), new.clone());
//!             Ok(true)
//!         })
//!     }
//! }
//! ```

mod file;

pub use file::FileStore;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::BoxError;

/// The longest user key the crate's stores take, in bytes (the file store names files after the key in hex).
pub(crate) const MAX_KEY_BYTES: usize = 100;

/// Refuses a user key the crate's stores do not take: empty, or longer than [`MAX_KEY_BYTES`].
pub(crate) fn check_key(key: &str) -> Result<(), BoxError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Box::new(crate::error::Error::new(
            crate::error::ErrorKind::InvalidConfig,
            format!("a user token key must be 1 to {MAX_KEY_BYTES} bytes long (a user id or login, say)"),
        )));
    }
    Ok(())
}

/// What a store's methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// A record and its version, as a store keeps them.
///
/// The record is opaque to the store and holds secrets (an access token and a refresh token): keep it out of
/// logs. `Debug` shows only its length. Versions start at 1 and grow by one with every swap.
#[derive(Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version, chosen by the writer: the expected version plus one.
    pub version: u64,
    /// The record's bytes (JSON written by this crate).
    pub record: Vec<u8>,
}

impl fmt::Debug for Versioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versioned")
            .field("version", &self.version)
            .field("record", &format_args!("[{} bytes, redacted]", self.record.len()))
            .finish()
    }
}

/// Keeps each user's token record, replaced only by compare-and-swap, so that holders in different tasks,
/// processes or machines never spend one refresh token twice and never lose the pair a rotation produced.
///
/// Implement it for your database: [`load`](Self::load) reads the record and its version; [`compare_and_swap`]
/// writes a new one only if the version is still the one expected, atomically (a conditional `UPDATE`, a
/// transaction, a Lua script). Everything else (leases, adoption of another holder's rotation, retries) is done
/// by [`UserToken`](crate::user::UserToken) on top of these two operations.
///
/// [`compare_and_swap`]: Self::compare_and_swap
pub trait UserTokenStore: Send + Sync + 'static {
    /// The record under `key` and its version; `None` if there is none.
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>>;

    /// Writes `new` under `key` if the version stored there is `expected` (`None`: no record yet). Returns
    /// whether it wrote. Must be atomic with respect to every other holder of the store, and durable when it
    /// returns `Ok(true)`.
    fn compare_and_swap<'a>(&'a self, key: &'a str, expected: Option<u64>, new: &'a Versioned)
    -> StoreFuture<'a, bool>;

    /// Resolves when the record under `key` may have changed from `version`, or after a short while: a holder
    /// waiting for another one's rotation calls it between loads. The default waits 50 ms; stores that can
    /// notify (in memory, Redis pub/sub) answer sooner.
    fn changed<'a>(&'a self, key: &'a str, version: Option<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = (key, version);
        Box::pin(tokio::time::sleep(Duration::from_millis(50)))
    }
}

impl<T: UserTokenStore + ?Sized> UserTokenStore for Arc<T> {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        (**self).load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        (**self).compare_and_swap(key, expected, new)
    }

    fn changed<'a>(&'a self, key: &'a str, version: Option<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        (**self).changed(key, version)
    }
}

/// A store in this process's memory: for tests, and for tokens that need not outlive the process. Clones share
/// the records.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    records: Mutex<HashMap<String, Versioned>>,
    changed: Notify,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("MemoryStore").field("records", &records.len()).finish()
    }
}

impl UserTokenStore for MemoryStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        let found = self.inner.records.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        let swapped = {
            let mut records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
            let swap = records.get(key).map(|r| r.version) == expected;
            if swap {
                records.insert(key.to_owned(), new.clone());
            }
            swap
        };
        if swapped {
            self.inner.changed.notify_waiters();
        }
        Box::pin(std::future::ready(Ok(swapped)))
    }

    fn changed<'a>(&'a self, key: &'a str, version: Option<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.inner.records.lock().unwrap_or_else(|e| e.into_inner()).get(key).map(|r| r.version);
            if now != version {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        })
    }
}
