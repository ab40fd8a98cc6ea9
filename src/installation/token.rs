//! Installation tokens as the rest of the crate sees them: built once per mint, shared by `Arc`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::replication::Replication;
use crate::source::Invalidate;

/// Everything known about one minted installation token. Built once per mint; requests share it.
pub(crate) struct TokenEntry {
    /// `Bearer <token>`, marked sensitive: what the hot path clones.
    pub(crate) authorization: HeaderValue,
    pub(crate) serial: u64,
    pub(crate) installation_id: u64,
    /// `expires_at` as GitHub sent it, in milliseconds after the Unix epoch.
    pub(crate) expires_at_ms: i64,
    pub(crate) received_at: Instant,
    /// When the token expires, on the local monotonic clock: milliseconds after `received_at` (so that a pool of
    /// 15,000 tokens keeps 12 bytes of times per token rather than 48).
    pub(crate) expires_ms: u32,
    /// Its end of use for requests: the refresher withdraws it then if no replacement arrived (the hot path
    /// itself reads no clock). Milliseconds after `received_at`.
    pub(crate) usable_ms: u32,
    /// When the refresher replaces it. Milliseconds after `received_at`.
    pub(crate) refresh_ms: u32,
    /// Its end of use on the real clock, for the watchdog thread, which withdraws it when no runtime drives
    /// the refresher.
    pub(crate) usable_until_real: std::time::Instant,
    pub(crate) scoped: bool,
    /// Whether other processes may use it too (it went through a shared store): a clean shutdown of this
    /// process does not revoke it.
    pub(crate) shared: bool,
    /// Shared by every token with the same permissions and repositories (most installations of an App have the
    /// same), so a pool of 15,000 tokens keeps a handful of copies.
    pub(crate) details: Arc<TokenDetails>,
    /// Where `invalidate` goes: the source that minted it.
    pub(crate) source: Weak<dyn Invalidate>,
    /// Whether GitHub accepted it yet, and the probes of its replication lag.
    pub(crate) replication: Replication,
    /// Where each request that carries it records its age (feature `metrics`; nothing without).
    pub(crate) age_at_use: crate::telemetry::AgeAtUse,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub(crate) struct TokenDetails {
    #[serde(default)]
    pub(crate) permissions: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) repository_selection: Option<String>,
    #[serde(default)]
    pub(crate) repositories: Vec<Repository>,
}

impl TokenDetails {
    /// The one shared copy of these details.
    pub(crate) fn intern(self) -> Arc<TokenDetails> {
        static INTERNED: Mutex<Option<std::collections::HashSet<Arc<TokenDetails>>>> = Mutex::new(None);
        let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let set = interned.get_or_insert_with(Default::default);
        if let Some(found) = set.get(&self) {
            return Arc::clone(found);
        }
        // Forget details no token holds any more, whenever the set has doubled since.
        if set.len() >= 64 && set.len().is_power_of_two() {
            set.retain(|details| Arc::strong_count(details) > 1);
        }
        let details = Arc::new(self);
        set.insert(Arc::clone(&details));
        details
    }
}

/// Every live token by serial, for the rare response (a `401`) that needs the entry of a token its request did
/// not hold on to. Written once per mint and once per drop; read only on refusals.
static REGISTRY: Mutex<BTreeMap<u64, Weak<TokenEntry>>> = Mutex::new(BTreeMap::new());

/// Makes `token` current, keeping the one it replaces in `previous`: requests that carried it may still be
/// answered, and the retry policy then needs its entry.
pub(crate) fn replace_current(
    current: &ArcSwapOption<TokenEntry>,
    previous: &ArcSwapOption<TokenEntry>,
    token: Option<Arc<TokenEntry>>,
) {
    if let Some(old) = current.swap(token) {
        previous.store(Some(old));
    }
}

/// Takes the current token from requests if `spent` says so, keeping it in `previous`. Returns it if it was
/// taken. One atomic load when it is not.
pub(crate) fn take_current_if(
    current: &ArcSwapOption<TokenEntry>,
    previous: &ArcSwapOption<TokenEntry>,
    spent: impl Fn(&TokenEntry) -> bool,
) -> Option<Arc<TokenEntry>> {
    if current.load().as_deref().is_none_or(|token| !spent(token)) {
        return None;
    }
    let mut taken = false;
    let before = current.rcu(|current| {
        taken = current.as_deref().is_some_and(&spent);
        if taken { None } else { current.clone() }
    });
    if !taken {
        return None;
    }
    previous.store(before.clone());
    before
}

/// Milliseconds from `from` to `to` (0 if `to` is earlier), for [`TokenEntry`]'s times.
pub(crate) fn millis_between(from: Instant, to: Instant) -> u32 {
    u32::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u32::MAX)
}

impl TokenEntry {
    /// Sets the token's times, all on the local monotonic clock.
    pub(crate) fn with_times(mut self, expires: Instant, usable_until: Instant, refresh_at: Instant) -> Self {
        self.expires_ms = millis_between(self.received_at, expires);
        self.usable_ms = millis_between(self.received_at, usable_until);
        self.refresh_ms = millis_between(self.received_at, refresh_at);
        self
    }

    /// `expires_at` as GitHub sent it (GitHub's clock).
    pub(crate) fn expires_at(&self) -> SystemTime {
        let offset = Duration::from_millis(self.expires_at_ms.unsigned_abs());
        if self.expires_at_ms >= 0 { SystemTime::UNIX_EPOCH + offset } else { SystemTime::UNIX_EPOCH - offset }
    }

    /// [`expires_at`](Self::expires_at) as stored.
    pub(crate) fn millis_since_epoch(t: SystemTime) -> i64 {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// When the token expires, on the local monotonic clock.
    pub(crate) fn expires(&self) -> Instant {
        self.received_at + Duration::from_millis(self.expires_ms.into())
    }

    /// Its end of use for requests.
    pub(crate) fn usable_until(&self) -> Instant {
        self.received_at + Duration::from_millis(self.usable_ms.into())
    }

    /// When it is to be replaced.
    pub(crate) fn refresh_at(&self) -> Instant {
        self.received_at + Duration::from_millis(self.refresh_ms.into())
    }

    /// Puts the entry behind an `Arc` and registers it under its serial.
    pub(crate) fn share(self) -> Arc<TokenEntry> {
        let entry = Arc::new(self);
        REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.serial, Arc::downgrade(&entry));
        entry
    }

    /// The entry of a live token.
    pub(crate) fn find(serial: u64) -> Option<Arc<TokenEntry>> {
        REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).get(&serial)?.upgrade()
    }

    /// Whether the token stays usable for `validity` from `now`: until it expires, or for a user token until its
    /// source replaces it (spending the refresh token kills it).
    pub(crate) fn is_valid_for(&self, now: Instant, validity: Duration) -> bool {
        now + validity <= if self.is_user() { self.refresh_at() } else { self.expires() }
    }

    /// Whether it is a user access token (user sources record installation 0; installation ids start at 1).
    pub(crate) fn is_user(&self) -> bool {
        self.installation_id == 0
    }
}

impl Drop for TokenEntry {
    fn drop(&mut self) {
        REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.serial);
    }
}

/// A repository an installation token was limited to, as GitHub lists it in the token response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Repository {
    /// The repository's id.
    pub id: u64,
    /// Its name, without the owner.
    pub name: String,
    /// `owner/name`.
    #[serde(default)]
    pub full_name: String,
}

/// An installation access token (`ghs_…`) and what GitHub said about it.
///
/// `Debug` and `Display` never show the token; [`expose_secret`](Self::expose_secret) does, for handing it to
/// `git` or a subprocess.
#[derive(Clone)]
pub struct InstallationToken {
    pub(crate) entry: Arc<TokenEntry>,
}

impl InstallationToken {
    /// The token itself. Keep it out of logs, URLs and error messages.
    pub fn expose_secret(&self) -> &str {
        // Checked to be visible ASCII when it was received.
        self.entry.authorization.to_str().unwrap_or_default().trim_start_matches("Bearer ")
    }

    /// `Bearer <token>` as a header value marked sensitive.
    pub fn authorization(&self) -> HeaderValue {
        self.entry.authorization.clone()
    }

    /// The installation it authorizes.
    pub fn installation_id(&self) -> u64 {
        self.entry.installation_id
    }

    /// `expires_at` as GitHub sent it (GitHub's clock).
    pub fn expires_at(&self) -> SystemTime {
        self.entry.expires_at()
    }

    /// How long it stays valid, measured on the local monotonic clock from GitHub's `expires_at` and `Date`.
    pub fn remaining(&self) -> Duration {
        self.entry.expires().saturating_duration_since(Instant::now())
    }

    /// How long ago it was received.
    pub fn age(&self) -> Duration {
        self.entry.received_at.elapsed()
    }

    /// The permissions GitHub granted, e.g. `{"contents": "read"}`.
    pub fn permissions(&self) -> &BTreeMap<String, String> {
        &self.entry.details.permissions
    }

    /// `all` or `selected`, when GitHub said.
    pub fn repository_selection(&self) -> Option<&str> {
        self.entry.details.repository_selection.as_deref()
    }

    /// The repositories it is limited to, when it was minted for a list of them.
    pub fn repositories(&self) -> &[Repository] {
        &self.entry.details.repositories
    }

    /// Whether it was minted for chosen repositories or permissions rather than the whole installation.
    pub fn is_scoped(&self) -> bool {
        self.entry.scoped
    }

    /// A number identifying this token within the process (not a secret; unique per mint).
    pub fn serial(&self) -> u64 {
        self.entry.serial
    }
}

impl fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationToken")
            .field("serial", &self.entry.serial)
            .field("installation_id", &self.entry.installation_id)
            .field("expires_at", &humantime::format_rfc3339_seconds(self.entry.expires_at()))
            .field("scoped", &self.entry.scoped)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Put into a response's extensions by [`InstallationAuth`](crate::InstallationAuth): which token the request
/// carried and when it was minted, so a retry policy outside the layer can tell a replication-lag `401` on a
/// fresh token from a revoked token, without state shared with the layer.
///
/// By default it is attached to `401` and `403` responses, the ones a retry policy reads, so successful
/// requests cost no allocation; [`InstallationAuthLayer::token_used_on_every_response`](crate::InstallationAuthLayer::token_used_on_every_response)
/// attaches it to every response.
///
/// It does not expose the token itself.
#[derive(Clone)]
pub struct InstallationTokenUsed {
    pub(crate) entry: Arc<TokenEntry>,
}

impl InstallationTokenUsed {
    /// The token's serial number (see [`InstallationToken::serial`]).
    pub fn serial(&self) -> u64 {
        self.entry.serial
    }

    /// The installation the token belongs to; 0 for a user access token ([`UserToken`](crate::user::UserToken)).
    pub fn installation_id(&self) -> u64 {
        self.entry.installation_id
    }

    /// Whether it is a user access token rather than an installation token.
    pub fn is_user_token(&self) -> bool {
        self.entry.is_user()
    }

    /// When the token was received, on the Tokio clock.
    pub fn minted_at(&self) -> Instant {
        self.entry.received_at
    }

    /// How old the token is now.
    pub fn age(&self) -> Duration {
        self.entry.received_at.elapsed()
    }

    /// Whether the token was limited to repositories or permissions (such tokens answer `403`, not `401`,
    /// while GitHub replicates them).
    pub fn is_scoped(&self) -> bool {
        self.entry.scoped
    }

    /// Whether GitHub has accepted the token at least once (from this process's point of view).
    pub fn is_proven(&self) -> bool {
        self.entry.replication.is_proven()
    }

    /// How many requests have gone back to GitHub to probe whether it knows the token yet (replication lag):
    /// one per probe step, however many requests were refused.
    pub fn lag_probes(&self) -> u32 {
        self.entry.replication.probes()
    }

    /// Tells the token's source that GitHub refused it: if it is still the current token, it is dropped and one
    /// new token is minted, shared by every request that waits for it. Returns whether it was current.
    pub fn invalidate(&self) -> bool {
        self.entry.source.upgrade().is_some_and(|shared| shared.invalidate(self.entry.serial))
    }

    /// The token's replication state, shared by every request that carried it (for the retry policy).
    pub(crate) fn replication(&self) -> &Replication {
        &self.entry.replication
    }

    /// Records that GitHub accepted the token.
    pub(crate) fn mark_proven(&self) {
        self.entry.replication.mark_proven();
    }
}

impl fmt::Debug for InstallationTokenUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationTokenUsed")
            .field("serial", &self.entry.serial)
            .field("installation_id", &self.entry.installation_id)
            .field("age", &self.age())
            .field("scoped", &self.entry.scoped)
            .finish()
    }
}
