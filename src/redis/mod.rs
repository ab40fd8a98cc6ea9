//! One Redis shared by every process of an App (feature `redis`): installation tokens minted once per refresh
//! fleet-wide, user refresh tokens rotated by compare-and-swap, everything encrypted at rest.
//!
//! Owns: the [`RedisStore`] (its connection, its pub/sub listener, the Lua scripts, the state "Redis is
//! unavailable, mint locally") and the encryption of stored values ([`EncryptionKey`]). Pools take it with
//! [`InstallationPoolBuilder::shared_store`](crate::InstallationPoolBuilder::shared_store) (a single installation
//! with [`InstallationBuilder::shared_store`](crate::InstallationBuilder::shared_store)); user tokens take it as
//! their [`UserTokenStore`].
//!
//! **Installation tokens.** Redis is touched only around a mint, never on the request path: requests read the
//! process's own copy of the token, as without Redis. When a process needs a token (its first request for an
//! installation, or its refresh ahead of expiry), one Lua script either hands it the token another process
//! minted (if this process would not refresh that one yet), or gives it the lease to mint (`SET NX PX` with a
//! fencing value), or tells it who holds the lease. The holder mints (renewing its lease, 5 s by default, every
//! third of it), stores the token (only while its fencing value still holds the lease) and publishes on the
//! store's channel; the others wait for that message (or poll, every 250 ms by default) and take the token. A
//! holder that dies stops renewing: its lease ends within 5 s and a waiter takes over. So a fleet of any size
//! mints one token per installation per refresh.
//!
//! **Redis is an optimisation, never a point of failure.** Every Redis call is bounded
//! ([`op_timeout`](RedisStoreBuilder::op_timeout), 500 ms by default). A call that fails or times out (Redis
//! down, slow, refusing the password, out of memory) makes the process that met it mint on its own, as it would
//! without Redis, with a warning logged once per outage; calls are tried again after a short pause (0.5 s, doubling up to
//! [`retry_max`](RedisStoreBuilder::retry_max)), and sharing resumes with an `info` line when Redis answers. A
//! key Redis evicted or lost is minted again. While Redis is away, each process mints at most once per
//! installation per refresh, as a process alone does.
//!
//! **User refresh tokens are the exception**: a refresh token is spent once, and only the store knows whether
//! another process spent it. Without Redis a [`UserToken`](crate::user::UserToken) never spends it: its access
//! token serves until its end of use, and requests after that fail with
//! [`ErrorKind::Store`] (each store call bounded by the op timeout, retried with the
//! source's backoff) until Redis answers again. Keep user records on one Redis primary with persistence
//! (`appendonly yes`, `appendfsync always`) and `maxmemory-policy noeviction` (eviction is instance-wide, and
//! user records carry a TTL, so `volatile-*` policies evict them too): a record lost after a rotation (evicted,
//! or lost in a failover to a replica that had not received it) is a refresh token lost or spent twice.
//!
//! **At rest**, values are sealed with AES-256-GCM under your [`EncryptionKey`], bound to their key name (and,
//! for installation tokens, to the API origin and to the expiry and fingerprint stored beside them): a dump, a
//! replica or a `MONITOR` shows no token, refresh token or JWT, and a value moved to another key or altered does
//! not open. Stored in clear: App ids, installation ids, hashes of API origins, scopes and user keys, expiry
//! times (GitHub's UTC; each process converts them with its own clock offset), a 16-byte SHA-256 fingerprint of
//! each token, record versions, lease fences. Installation tokens expire from Redis when they expire at GitHub
//! (`PEXPIRE`); user records a day after their refresh token does (records of tokens that never expire are
//! kept).
//!
//! **Keys**, for a namespace `tga` (the default): `tga:{app:<app>:<origin hash>:inst:<id>:<scope>}:tok` (a
//! hash: `exp`, `life`, `fp`, `blob`), `…:lease`, `tga:{user:<hash of the user key>}:rec` (a hash: `v`,
//! `blob`), and the channel `tga:minted`. The braces are Redis Cluster hash tags: each script touches one slot.
//!
//! ```no_run
//! use tower_github_app::redis::{EncryptionKey, RedisStore};
//! use tower_github_app::{GitHubApp, InstallationPool};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let app = GitHubApp::from_pem(1, include_str!("../testing/test-app-key.pem"))?;
//! # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default()))
//! # });
//! let key = EncryptionKey::from_base64("2026-11", &std::env::var("TOKEN_STORE_KEY")?)?;
//! let store = RedisStore::builder("redis://127.0.0.1:6379/", key).build()?;
//! let pool = InstallationPool::builder(app).shared_store(store.clone()).build(client)?;
//! # Ok(())
//! # }
//! ```

mod crypto;

pub use crypto::EncryptionKey;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisResult, Script, Value};
use futures_util::StreamExt;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{BoxError, Error, ErrorKind};
use crate::installation::mint::Minted;
use crate::installation::token::{TokenDetails, TokenEntry};
use crate::shared::{BoxFuture, Lease, Obtain, Obtained, SharedKey, SharedTokens, digest, fingerprint, hex};
use crate::store::{StoreFuture, UserTokenStore, Versioned};
use crypto::Keys;

/// A Redis shared by the processes of an App: a cheaply cloneable handle. See the [module docs](self).
///
/// Built without connecting: the first call connects (and reconnects after failures), so a process starts, and
/// serves, whether Redis is up or not.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Configures a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    keys: Keys,
    namespace: String,
    op_timeout: Duration,
    poll: Duration,
    retry_max: Duration,
    lease: Duration,
}

/// What a [`RedisStore`] did so far, for tests, demos and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisStats {
    /// Calls sent to Redis, connection attempts included (a script invocation counts once).
    pub round_trips: u64,
    /// Calls that failed or timed out.
    pub failures: u64,
    /// Times Redis became unavailable (each logged once).
    pub outages: u64,
    /// Whether Redis was unavailable at the last call (calls are skipped until the next try is due). Calls are
    /// made only around mints, so this can stay set long after Redis is back, until the next mint.
    pub unavailable: bool,
    /// Installation tokens taken from Redis, minted by another process (or an earlier run of this one).
    pub adopted: u64,
    /// Leases taken: mints this process made for the fleet.
    pub leases: u64,
    /// Mints this process made on its own: Redis unavailable, or another holder too slow.
    pub local_mints: u64,
    /// Times a process waited for another one's mint.
    pub waits: u64,
    /// Stored values (installation tokens and user records) that did not decrypt: foreign, altered, or sealed
    /// under a key this store was not given.
    pub unreadable: u64,
    /// Messages received on the store's channel, this process's own publications included.
    pub notifications: u64,
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    failures: AtomicU64,
    outages: AtomicU64,
    adopted: AtomicU64,
    leases: AtomicU64,
    local_mints: AtomicU64,
    waits: AtomicU64,
    unreadable: AtomicU64,
    notifications: AtomicU64,
}

struct Inner {
    client: ::redis::Client,
    namespace: String,
    channel: String,
    keys: Keys,
    op_timeout: Duration,
    poll: Duration,
    retry_max: Duration,
    lease: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    health: Mutex<Option<Down>>,
    counters: Counters,
    waiters: Mutex<HashMap<String, Arc<Signal>>>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    subscribed: AtomicBool,
    /// Dropped with the store: ends the listener.
    shutdown: tokio::sync::watch::Sender<()>,
    scripts: Scripts,
    /// Distinguishes this process's leases from every other's.
    process: String,
    fences: AtomicU64,
    this: Weak<Inner>,
}

/// Redis is taken as unavailable until `retry_at`.
struct Down {
    since: Instant,
    retry_at: Instant,
    failures: u32,
    /// What the last call met, for the errors of the calls skipped meanwhile.
    cause: String,
}

struct Scripts {
    claim: Script,
    publish: Script,
    release: Script,
    forget: Script,
    renew: Script,
    swap: Script,
}

/// Takes a fresh token that is not to be avoided, else the lease, else says who holds it. Run twice with one
/// fence (an answer lost with its connection), it answers the lease again. Values of the wrong type at its keys
/// (not written by this crate) are deleted, and a lease without an expiry gets one: neither blocks the fleet.
/// KEYS: tok, lease. ARGV: fence, lease ms, GitHub's now (ms), refresh_before (ms), '1' to take no stored token,
/// fingerprints to avoid...
const CLAIM: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
local t = redis.call('HMGET', KEYS[1], 'exp', 'life', 'fp', 'blob')
if t[4] and ARGV[5] ~= '1' then
  local exp = tonumber(t[1]) or 0
  local life = tonumber(t[2]) or 0
  local ahead = math.min(tonumber(ARGV[4]), life / 3) * 1.25
  local fresh = exp - tonumber(ARGV[3]) > ahead
  for i = 6, #ARGV do
    if t[3] == ARGV[i] then fresh = false end
  end
  if fresh then return {1, t[4], t[1], t[2], t[3]} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
if redis.call('GET', KEYS[2]) == ARGV[1] then return {2} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {3, ttl}
";

/// Stores a minted token if the lease is still the writer's (or free, and the token newer than the stored one),
/// then frees the lease and tells the waiters.
/// KEYS: tok, lease. ARGV: fence, exp, life, fp, blob, ttl ms, channel, message.
const PUBLISH: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
local holder = redis.call('GET', KEYS[2])
local ours = holder == ARGV[1]
if not ours and not holder then
  ours = (tonumber(redis.call('HGET', KEYS[1], 'exp')) or 0) < tonumber(ARGV[2])
end
if not ours then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'exp', ARGV[2], 'life', ARGV[3], 'fp', ARGV[4], 'blob', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if holder == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
";

/// Frees a lease after a failed mint, and tells the waiters. KEYS: lease. ARGV: fence, channel, message.
const RELEASE: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// Drops a stored token known by its fingerprint (revoked), and tells the waiters. KEYS: tok. ARGV: fp, channel,
/// message.
const FORGET: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' and redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// Extends a lease its holder still holds (while it mints). KEYS: lease. ARGV: fence, lease ms.
const RENEW: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-swap of a user record (run twice, as after an answer lost with its connection, it answers as the
/// first time: the sealed value is unique). KEYS: rec. ARGV: expected version ('' for none), new version, blob,
/// ttl ms ('' for none), channel, message.
const SWAP: &str = r"
local now = redis.call('HMGET', KEYS[1], 'v', 'blob')
local v = now[1]
if not v then v = '' end
if v == ARGV[2] and now[2] == ARGV[3] then return 1 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'blob', ARGV[3])
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) else redis.call('PERSIST', KEYS[1]) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

impl RedisStore {
    /// Starts configuring a store on the Redis at `url` (`redis://[:password@]host[:port][/db]`,
    /// `redis://user:password@…` with ACLs, or `redis+unix:///path`), sealing values with `key`.
    pub fn builder(url: &str, key: EncryptionKey) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            keys: Keys { current: key, older: Vec::new() },
            namespace: "tga".to_owned(),
            op_timeout: Duration::from_millis(500),
            poll: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            lease: Duration::from_secs(5),
        }
    }

    /// What the store did so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            round_trips: n(&c.round_trips),
            failures: n(&c.failures),
            outages: n(&c.outages),
            unavailable: self.inner.health.lock().unwrap_or_else(|e| e.into_inner()).is_some(),
            adopted: n(&c.adopted),
            leases: n(&c.leases),
            local_mints: n(&c.local_mints),
            waits: n(&c.waits),
            unreadable: n(&c.unreadable),
            notifications: n(&c.notifications),
        }
    }

    /// The namespace its keys start with.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub(crate) fn shared(&self) -> Arc<dyn SharedTokens> {
        Arc::clone(&self.inner) as Arc<dyn SharedTokens>
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.namespace)
            .field("key_id", &self.inner.keys.current.id())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("namespace", &self.namespace)
            .field("key_id", &self.keys.current.id())
            .field("older_key_ids", &self.keys.older.iter().map(EncryptionKey::id).collect::<Vec<_>>())
            .field("op_timeout", &self.op_timeout)
            .field("poll", &self.poll)
            .field("retry_max", &self.retry_max)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Another key that values may have been sealed with (a key being rotated out): read, never written. Give
    /// every process the new key as the builder's key and the old one here; once every value was rewritten (an
    /// hour for installation tokens; a rotation for each user), drop the old one.
    pub fn decryption_key(mut self, key: EncryptionKey) -> Self {
        self.keys.older.push(key);
        self
    }

    /// What every key and the channel start with (default `tga`): one namespace per App and environment, so
    /// that several share a Redis. Letters, digits, `-`, `_`, `.` and `:`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// The longest one Redis call (or a connection) may take before Redis is taken as unavailable (default
    /// 500 ms). Every mint waits at most a few of these for Redis.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// How often a process waiting for another one's mint looks again, in case the message that would wake it
    /// is lost (default 250 ms).
    pub fn poll(mut self, interval: Duration) -> Self {
        self.poll = interval;
        self
    }

    /// The longest pause between tries while Redis is unavailable (default 5 s; the first is 0.5 s).
    pub fn retry_max(mut self, max: Duration) -> Self {
        self.retry_max = max;
        self
    }

    /// How long a lease to mint lasts unless its holder renews it (default 5 s; renewed every third of that
    /// while the holder mints). A holder that dies holds up the others this long at most. At least six op
    /// timeouts: a renewal may take two of them, and a reconnection.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Builds the store. Does not connect: see [`RedisStore`].
    pub fn build(self) -> Result<RedisStore, Error> {
        let config = |message: &str| Error::new(ErrorKind::InvalidConfig, message);
        if self.namespace.is_empty()
            || self.namespace.len() > 64
            || !self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(config("the Redis namespace must be 1 to 64 letters, digits, '-', '_', '.' or ':'"));
        }
        for (name, value) in [("op_timeout", self.op_timeout), ("poll", self.poll), ("retry_max", self.retry_max)] {
            if value < Duration::from_millis(1) || value > Duration::from_secs(3600) {
                return Err(config(&format!("the Redis store's {name} must be between 1 ms and 1 hour")));
            }
        }
        // A renewal comes every third of the lease and may take two op timeouts (and a reconnection): the lease
        // must outlast that.
        if self.lease < self.op_timeout * 6 || self.lease > Duration::from_secs(3600) {
            return Err(config("the Redis store's lease must be at least six op timeouts, and at most 1 hour"));
        }
        // The URL is never echoed: it may hold a password.
        let client = ::redis::Client::open(self.url.as_str()).map_err(|_| {
            config(
                "the Redis URL could not be read: use redis://[user:password@]host[:port][/db] or \
                 redis+unix:///path (rediss:// needs TLS, which this build of redis-rs does not have)",
            )
        })?;
        let mut process = [0u8; 8];
        aws_lc_rs::rand::fill(&mut process)
            .map_err(|_| Error::new(ErrorKind::Runtime, "the system's random generator failed"))?;
        let (shutdown, _) = tokio::sync::watch::channel(());
        let inner = |this: &Weak<Inner>| Inner {
            client,
            channel: format!("{}:minted", self.namespace),
            namespace: self.namespace,
            keys: self.keys,
            op_timeout: self.op_timeout,
            poll: self.poll,
            retry_max: self.retry_max,
            lease: self.lease,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            health: Mutex::new(None),
            counters: Counters::default(),
            waiters: Mutex::new(HashMap::new()),
            listener: Mutex::new(None),
            subscribed: AtomicBool::new(false),
            shutdown,
            scripts: Scripts {
                claim: Script::new(CLAIM),
                publish: Script::new(PUBLISH),
                release: Script::new(RELEASE),
                forget: Script::new(FORGET),
                renew: Script::new(RENEW),
                swap: Script::new(SWAP),
            },
            process: hex(&process),
            fences: AtomicU64::new(0),
            this: this.clone(),
        };
        Ok(RedisStore { inner: Arc::new_cyclic(inner) })
    }
}

/// Why a call did not reach Redis, or what Redis answered instead.
#[derive(Debug)]
struct Unavailable(String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

impl Inner {
    /// One call to Redis, bounded by the op timeout; skipped while Redis is taken as unavailable. A call that
    /// finds its connection broken (Redis restarted, or closed an idle client) is sent once more on a new one
    /// before Redis counts as unavailable: every script is safe to run twice.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, Unavailable>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.skip_while_down()?;
        let mut fresh = false;
        loop {
            let (connection, new) = self.connection().await?;
            fresh |= new;
            self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
            let error = match tokio::time::timeout(self.op_timeout, op(connection)).await {
                Ok(Ok(value)) => {
                    self.succeeded();
                    return Ok(value);
                }
                Ok(Err(error)) => error,
                Err(_) => return Err(self.failed(format!("Redis did not answer within {:?}", self.op_timeout), false)),
            };
            // A node demoted in a failover answers READONLY (or MASTERDOWN) on a connection that still works:
            // the next connection finds the new primary.
            let demoted = matches!(error.code(), Some("READONLY" | "MASTERDOWN"));
            let lost = error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_unrecoverable_error()
                || demoted;
            // A timeout says the server is slow, not that the connection broke: no second try.
            if lost && !fresh && !error.is_timeout() {
                *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
                fresh = true;
                continue;
            }
            // A value of the wrong type at one key (not written by this crate) fails that call only: Redis works.
            let this_call_only = error.code() == Some("WRONGTYPE")
                || matches!(error.kind(), ::redis::ErrorKind::UnexpectedReturnType | ::redis::ErrorKind::Parse);
            if this_call_only {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %self.namespace, %error, "a Redis call failed on an unexpected value");
                return Err(Unavailable(format!("Redis answered with an error: {error}")));
            }
            return Err(self.failed(format!("Redis answered with an error: {error}"), lost));
        }
    }

    /// Refuses a call while Redis is taken as unavailable and its next try is not due.
    fn skip_while_down(&self) -> Result<(), Unavailable> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.as_ref() {
            Some(down) if Instant::now() < down.retry_at => Err(Unavailable(format!(
                "Redis has been unavailable for {:.1?} (tried again in {:.1?}); last: {}",
                down.since.elapsed(),
                down.retry_at.saturating_duration_since(Instant::now()),
                down.cause
            ))),
            _ => Ok(()),
        }
    }

    /// The connection, made if there is none (then the flag is set).
    async fn connection(&self) -> Result<(MultiplexedConnection, bool), Unavailable> {
        if let Some(connection) = self.connection.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok((connection, false));
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.connection.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok((connection, true));
        }
        self.skip_while_down()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout));
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let connected = tokio::time::timeout(
            self.op_timeout * 2,
            self.client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match connected {
            Ok(Ok(connection)) => {
                *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
                Ok((connection, true))
            }
            Ok(Err(error)) => Err(self.failed(format!("could not connect to Redis: {error}"), true)),
            Err(_) => Err(self.failed(format!("could not connect to Redis within {:?}", self.op_timeout * 2), true)),
        }
    }

    /// Takes Redis as unavailable for a while; logs the first failure of an outage.
    fn failed(&self, cause: String, lost: bool) -> Unavailable {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if lost {
            *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.as_mut() {
            None => {
                self.counters.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    namespace = %self.namespace,
                    %cause,
                    "Redis is unavailable: each process mints its own installation tokens (and user tokens are not \
                     rotated) until it answers again"
                );
                *health = Some(Down {
                    since: now,
                    retry_at: now + Duration::from_millis(500),
                    failures: 1,
                    cause: cause.clone(),
                });
            }
            Some(down) => {
                down.failures = down.failures.saturating_add(1);
                let pause = Duration::from_millis(500).saturating_mul(1 << down.failures.min(16).saturating_sub(1));
                down.retry_at = now + pause.min(self.retry_max);
                down.cause.clone_from(&cause);
                tracing::debug!(namespace = %self.namespace, %cause, "Redis still unavailable");
            }
        }
        Unavailable(cause)
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(down) = health.take() {
            tracing::info!(
                namespace = %self.namespace,
                down_for = ?down.since.elapsed(),
                "Redis answers again: installation tokens are shared again"
            );
        }
    }

    fn token_keys(&self, key: &SharedKey) -> (String, String) {
        (format!("{}:{{{}}}:tok", self.namespace, key.id), format!("{}:{{{}}}:lease", self.namespace, key.id))
    }

    /// How long a waiter waits for a live holder (one that keeps renewing its lease): the holder's whole mint,
    /// the calls around it, and a lease.
    fn patience(&self, mint_budget: Duration) -> Duration {
        mint_budget + self.op_timeout * 4 + self.lease
    }

    fn fence(&self) -> String {
        format!("{}:{}", self.process, self.fences.fetch_add(1, Ordering::Relaxed))
    }

    /// A wake-up for messages about `id`, registered before the call whose answer it may change.
    fn waiter(&self, id: &str) -> Waiter<'_> {
        self.ensure_listening();
        let signal = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(waiters.entry(id.to_owned()).or_insert_with(|| Arc::new(Signal::default())))
        };
        let seen = signal.generation.load(Ordering::SeqCst);
        Waiter { inner: self, id: id.to_owned(), signal, seen }
    }

    /// Starts the pub/sub listener if none runs (it ends with the store, and with the runtime it was started on).
    fn ensure_listening(&self) {
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if listener.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            *listener = Some(runtime.spawn(listen(self.this.clone(), self.shutdown.subscribe())));
        }
    }

    fn wake(&self, id: &[u8]) {
        let Ok(id) = std::str::from_utf8(id) else { return };
        if let Some(signal) = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            signal.wake();
        }
    }

    fn wake_all(&self) {
        for signal in self.waiters.lock().unwrap_or_else(|e| e.into_inner()).values() {
            signal.wake();
        }
    }

    /// The token a claim handed over, if it is one this process can use: it opens under this key name, origin,
    /// expiry and fingerprint, its fingerprint is the one stored, it is none to avoid, and it has a second left.
    fn open_token(
        &self,
        tok: &str,
        key: &SharedKey,
        fields: &[Value],
        avoid: &[String],
        clock_offset: i64,
    ) -> Option<Minted> {
        let [blob, exp, life, fp] = fields else { return None };
        let (Some(blob), Some(exp), Some(life), Some(fp)) = (bytes(blob), text(exp), text(life), text(fp)) else {
            return None;
        };
        let aad = sealed_with(tok, &exp, &life, &fp, &key.origin);
        let plain = match self.keys.open(&blob, aad.as_bytes()) {
            Ok(plain) => plain,
            Err(why) => {
                self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %tok, %why, "a shared installation token was not used");
                return None;
            }
        };
        let stored: StoredToken = serde_json::from_slice(&plain).ok()?;
        let (exp, life): (i64, u64) = (exp.parse().ok()?, life.parse().ok()?);
        if !stored.token.bytes().all(|b| b.is_ascii_graphic()) || stored.token.is_empty() {
            return None;
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", stored.token)).ok()?;
        authorization.set_sensitive(true);
        let opened = hex(&fingerprint(&authorization));
        if opened != fp || avoid.contains(&opened) {
            return None;
        }
        let github_now = github_millis(clock_offset);
        let remaining = Duration::from_millis(u64::try_from(exp.checked_sub(github_now)?).ok()?);
        if remaining < Duration::from_secs(1) {
            return None;
        }
        let now = Instant::now();
        let age = Duration::from_millis(life).saturating_sub(remaining);
        Some(Minted {
            authorization,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(exp).ok()?),
            received_at: now.checked_sub(age).unwrap_or(now),
            expires: now + remaining,
            details: stored.details,
            refreshable: true,
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// What a stored installation token is bound to besides its bytes: its key name, the fields stored beside it,
/// and the API origin it is for.
fn sealed_with(tok: &str, exp: &str, life: &str, fp: &str, origin: &str) -> String {
    format!("{tok}|{exp}|{life}|{fp}|{origin}")
}

/// GitHub's now, in milliseconds since the epoch, as this process reckons it.
fn github_millis(clock_offset: i64) -> i64 {
    TokenEntry::millis_since_epoch(SystemTime::now()).saturating_add(clock_offset.saturating_mul(1000))
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Int(n) => Some(n.to_string()),
        other => bytes(other).and_then(|b| String::from_utf8(b).ok()),
    }
}

/// What a stored installation token holds, sealed.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    token: String,
    #[serde(default)]
    details: TokenDetails,
}

#[derive(Default)]
struct Signal {
    generation: AtomicU64,
    notify: Notify,
}

impl Signal {
    fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// Wakes when a message about its id arrives (or when the listener reconnects), or after a bounded wait.
struct Waiter<'a> {
    inner: &'a Inner,
    id: String,
    signal: Arc<Signal>,
    seen: u64,
}

impl Waiter<'_> {
    async fn wait(&mut self, max: Duration) {
        let notified = self.signal.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.signal.generation.load(Ordering::SeqCst) == self.seen {
            let _ = tokio::time::timeout(max, notified).await;
        }
        self.seen = self.signal.generation.load(Ordering::SeqCst);
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // This waiter's handle goes first; then, under the lock, only the map's left means nobody else waits.
        drop(std::mem::take(&mut self.signal));
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.get(&self.id).is_some_and(|signal| Arc::strong_count(signal) == 1) {
            waiters.remove(&self.id);
        }
    }
}

/// Listens on the store's channel, reconnecting after failures, until the store is dropped.
async fn listen(store: Weak<Inner>, mut shutdown: tokio::sync::watch::Receiver<()>) {
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let (client, channel, timeout) = (inner.client.clone(), inner.channel.clone(), inner.op_timeout * 2);
        drop(inner);
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub()).await.ok()?.ok()?;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel)).await.ok()?.ok()?;
            Some(pubsub)
        };
        let subscribed = tokio::select! {
            _ = shutdown.changed() => return,
            subscribed = subscribed => subscribed,
        };
        if let Some(pubsub) = subscribed {
            failures = 0;
            if let Some(inner) = store.upgrade() {
                inner.subscribed.store(true, Ordering::SeqCst);
                // Messages may have been missed while unsubscribed: every waiter looks again.
                inner.wake_all();
            }
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    _ = shutdown.changed() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let Some(inner) = store.upgrade() else { return };
                inner.counters.notifications.fetch_add(1, Ordering::Relaxed);
                inner.wake(message.get_payload_bytes());
            }
            if let Some(inner) = store.upgrade() {
                inner.subscribed.store(false, Ordering::SeqCst);
            }
        } else {
            failures = failures.saturating_add(1);
        }
        let pause = Duration::from_millis(250).saturating_mul(1 << failures.min(5));
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(pause.min(Duration::from_secs(5))) => {}
        }
    }
}

/// What the claim script answered.
enum Claim {
    Adopt(Vec<Value>),
    Leased,
    Held(Duration),
}

fn read_claim(value: Value) -> Option<Claim> {
    let Value::Array(mut items) = value else { return None };
    if items.is_empty() {
        return None;
    }
    let rest = items.split_off(1);
    match (&items[0], rest.as_slice()) {
        (Value::Int(1), [_, _, _, _]) => Some(Claim::Adopt(rest)),
        (Value::Int(2), []) => Some(Claim::Leased),
        // A lease without an expiry (PTTL -1: not one this crate wrote) reads as zero: polled, never spun on.
        (Value::Int(3), [Value::Int(ttl)]) => {
            Some(Claim::Held(Duration::from_millis(u64::try_from(*ttl).unwrap_or(0))))
        }
        _ => None,
    }
}

impl Inner {
    /// The answer that makes this process mint on its own, counted.
    fn local(&self) -> Obtained {
        self.counters.local_mints.fetch_add(1, Ordering::Relaxed);
        Obtained::Local
    }
}

impl SharedTokens for Inner {
    fn obtain<'a>(&'a self, want: Obtain<'a>) -> BoxFuture<'a, Obtained> {
        Box::pin(async move {
            let (tok, lease) = self.token_keys(want.key);
            let fence = self.fence();
            let lease_ms = self.lease.as_millis();
            // Fingerprints (hex, as stored) of tokens not to take: the caller's, and any stored one found unusable.
            let mut avoid: Vec<String> = want.avoid.iter().flatten().map(|fp| hex(fp)).collect();
            // A holder that keeps renewing its lease gets the time of its whole mint before this process mints on
            // its own; one that died stops renewing, and its lease ends within `lease`: then a waiter takes it.
            let give_up = Instant::now() + self.patience(want.mint_budget);
            let mut waited = false;
            // Set when a stored token proved unusable and carries no fingerprint to avoid it by: the next claim
            // (only) takes the lease rather than a stored token.
            let mut take_none = false;
            loop {
                let mut waiter = self.waiter(&want.key.id);
                let mut claim = self.scripts.claim.key(&tok);
                claim
                    .key(&lease)
                    .arg(&fence)
                    .arg(lease_ms.to_string())
                    .arg(github_millis(want.clock_offset))
                    .arg(want.refresh_before.as_millis().to_string())
                    .arg(if std::mem::take(&mut take_none) { "1" } else { "0" });
                for fp in &avoid {
                    claim.arg(fp);
                }
                let answer = self
                    .call(|mut connection| {
                        let claim = &claim;
                        async move { claim.invoke_async::<Value>(&mut connection).await }
                    })
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(_) => {
                        return self.local();
                    }
                };
                match read_claim(answer) {
                    Some(Claim::Adopt(fields)) => {
                        if let Some(minted) = self.open_token(&tok, want.key, &fields, &avoid, want.clock_offset) {
                            self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(key = ?want.key, "installation token taken from Redis");
                            return Obtained::Adopted(minted);
                        }
                        // Unusable (altered, refused here, sealed under another key): as if there were none. A
                        // token another process stores meanwhile is taken at the next claim.
                        match fields.get(3).and_then(text) {
                            Some(fp) if !avoid.contains(&fp) => avoid.push(fp),
                            Some(_) => {
                                // Avoided by the script, yet answered: not a script this crate wrote.
                                return self.local();
                            }
                            None => take_none = true,
                        }
                    }
                    Some(Claim::Leased) => {
                        self.counters.leases.fetch_add(1, Ordering::Relaxed);
                        return Obtained::Lease(Lease { key: want.key.clone(), fence });
                    }
                    Some(Claim::Held(ttl)) => {
                        let now = Instant::now();
                        if now >= give_up {
                            tracing::warn!(
                                key = ?want.key,
                                "another process holds the lease to mint this installation's token but did not \
                                 deliver in time: minting here"
                            );
                            return self.local();
                        }
                        if !waited {
                            waited = true;
                            self.counters.waits.fetch_add(1, Ordering::Relaxed);
                        }
                        want.turn.pause();
                        // Until the lease ends or the poll interval passes; at least a few ms, so that a lease that
                        // has no expiry or just ended does not make this spin.
                        let pause = if ttl.is_zero() { self.poll } else { ttl.min(self.poll) };
                        let pause = pause.max(Duration::from_millis(5)).min(give_up - now);
                        waiter.wait(pause).await;
                        want.turn.resume().await;
                    }
                    None => {
                        tracing::warn!(key = ?want.key, "Redis answered the claim script unexpectedly: minting here");
                        return self.local();
                    }
                }
            }
        })
    }

    fn publish<'a>(&'a self, lease: Lease, minted: &'a Minted) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (tok, lease_key) = self.token_keys(&lease.key);
            let now = Instant::now();
            let exp = TokenEntry::millis_since_epoch(minted.expires_at);
            let life = minted.expires.saturating_duration_since(minted.received_at).as_millis();
            let ttl = minted.expires.saturating_duration_since(now).as_millis().max(1);
            let token = minted.authorization.to_str().unwrap_or_default();
            let stored = StoredToken {
                token: token.strip_prefix("Bearer ").unwrap_or(token).to_owned(),
                details: minted.details.clone(),
            };
            let Ok(plain) = serde_json::to_vec(&stored) else { return };
            let fp = hex(&fingerprint(&minted.authorization));
            let aad = sealed_with(&tok, &exp.to_string(), &life.to_string(), &fp, &lease.key.origin);
            let blob = match self.keys.seal(&plain, aad.as_bytes()) {
                Ok(blob) => blob,
                Err(error) => {
                    tracing::warn!(%error, "an installation token could not be sealed for Redis: not shared");
                    return;
                }
            };
            let mut publish = self.scripts.publish.key(&tok);
            publish
                .key(&lease_key)
                .arg(&lease.fence)
                .arg(exp)
                .arg(life.to_string())
                .arg(&fp)
                .arg(blob)
                .arg(ttl.to_string())
                .arg(&self.channel)
                .arg(&lease.key.id);
            let stored = self
                .call(|mut connection| {
                    let publish = &publish;
                    async move { publish.invoke_async::<i64>(&mut connection).await }
                })
                .await;
            if let Ok(0) = stored {
                tracing::debug!(key = ?lease.key, "lease lost before the token was stored: not shared");
            }
        })
    }

    fn budget(&self, mint_timeout: Duration) -> Duration {
        let mint = crate::shared::mint_budget(mint_timeout);
        // A claim (and a connection), the wait for a holder, a mint, the publication.
        self.op_timeout * 4 + self.patience(mint) + mint + self.op_timeout * 3
    }

    fn forget<'a>(&'a self, key: &'a SharedKey, fp: crate::shared::Fingerprint) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (tok, _) = self.token_keys(key);
            let mut forget = self.scripts.forget.key(&tok);
            forget.arg(hex(&fp)).arg(&self.channel).arg(&key.id);
            let _ = self
                .call(|mut connection| {
                    let forget = &forget;
                    async move { forget.invoke_async::<i64>(&mut connection).await }
                })
                .await;
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (_, lease_key) = self.token_keys(&lease.key);
            let mut renew = self.scripts.renew.key(&lease_key);
            renew.arg(&lease.fence).arg(self.lease.as_millis().to_string());
            let _ = self
                .call(|mut connection| {
                    let renew = &renew;
                    async move { renew.invoke_async::<i64>(&mut connection).await }
                })
                .await;
        })
    }

    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    fn release(&self, lease: Lease) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (_, lease_key) = self.token_keys(&lease.key);
            let mut release = self.scripts.release.key(&lease_key);
            release.arg(&lease.fence).arg(&self.channel).arg(&lease.key.id);
            let _ = self
                .call(|mut connection| {
                    let release = &release;
                    async move { release.invoke_async::<i64>(&mut connection).await }
                })
                .await;
        })
    }
}

impl RedisStore {
    /// The id a user record is stored and announced under: a hash of the user key (which may be a login or an
    /// email address), not the key itself.
    fn record_id(key: &str) -> String {
        format!("user:{}", hex(&digest(key.as_bytes())[..16]))
    }

    fn record_key(&self, key: &str) -> String {
        format!("{}:{{{}}}:rec", self.inner.namespace, Self::record_id(key))
    }
}

fn store_error(what: &str, key: &str, cause: impl fmt::Display) -> BoxError {
    Box::new(Error::new(
        ErrorKind::Store,
        format!("{what} Redis failed (user record {:?}): {cause}", crate::error::scrub(key)),
    ))
}

/// When Redis may forget a user record: a day after its refresh token expires (a day from now if it already
/// has), if the record says when. A record without that time (tokens that never expire) is kept.
fn record_ttl(record: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Expiry {
        refresh_token_expires_at: Option<i64>,
    }
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let expiry = serde_json::from_slice::<Expiry>(record).ok()?.refresh_token_expires_at?;
    let left = expiry.saturating_sub(TokenEntry::millis_since_epoch(SystemTime::now()));
    u64::try_from(left.max(0).saturating_add(DAY_MS)).ok()
}

impl UserTokenStore for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        Box::pin(async move {
            crate::store::check_key(key)?;
            let rec = self.record_key(key);
            let read = {
                self.inner
                    .call(|mut connection| {
                        let rec = &rec;
                        async move {
                            ::redis::cmd("HMGET")
                                .arg(rec)
                                .arg("v")
                                .arg("blob")
                                .query_async::<(Option<String>, Option<Vec<u8>>)>(&mut connection)
                                .await
                        }
                    })
                    .await
                    .map_err(|cause| store_error("reading from", key, cause))?
            };
            let (version, blob) = match read {
                (None, _) => return Ok(None),
                (Some(version), Some(blob)) => (version, blob),
                (Some(_), None) => {
                    return Err(store_error("reading from", key, "the record has a version but no value"));
                }
            };
            let version: u64 =
                version.parse().map_err(|_| store_error("reading from", key, "its version is not a number"))?;
            let aad = format!("{rec}|{version}");
            let record = self.inner.keys.open(&blob, aad.as_bytes()).map_err(|why| {
                self.inner.counters.unreadable.fetch_add(1, Ordering::Relaxed);
                store_error("reading from", key, why)
            })?;
            Ok(Some(Versioned { version, record }))
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            crate::store::check_key(key)?;
            let rec = self.record_key(key);
            let aad = format!("{rec}|{}", new.version);
            let blob = self.inner.keys.seal(&new.record, aad.as_bytes())?;
            let ttl = record_ttl(&new.record).map(|ttl| ttl.to_string()).unwrap_or_default();
            let mut swap = self.inner.scripts.swap.key(&rec);
            swap.arg(expected.map(|v| v.to_string()).unwrap_or_default())
                .arg(new.version.to_string())
                .arg(blob)
                .arg(ttl)
                .arg(&self.inner.channel)
                .arg(Self::record_id(key));
            let swapped = self
                .inner
                .call(|mut connection| {
                    let swap = &swap;
                    async move { swap.invoke_async::<i64>(&mut connection).await }
                })
                .await
                .map_err(|cause| store_error("writing to", key, cause))?;
            Ok(swapped == 1)
        })
    }

    fn changed<'a>(
        &'a self,
        key: &'a str,
        version: Option<u64>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let mut waiter = self.inner.waiter(&Self::record_id(key));
            let rec = self.record_key(key);
            let now = self
                .inner
                .call(|mut connection| {
                    let rec = &rec;
                    async move {
                        ::redis::cmd("HGET").arg(rec).arg("v").query_async::<Option<String>>(&mut connection).await
                    }
                })
                .await;
            match now {
                Ok(now) if now.as_deref().and_then(|v| v.parse::<u64>().ok()) != version => {}
                Ok(_) => waiter.wait(Duration::from_secs(1)).await,
                Err(_) => tokio::time::sleep(self.inner.poll).await,
            }
        })
    }
}
