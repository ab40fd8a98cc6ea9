//! Rotation of a user's token pair through a [`UserTokenStore`], so that no holder (task, source, process) spends
//! a refresh token another one spends, and no pair GitHub hands out is lost.
//!
//! The protocol, on the store's compare-and-swap alone (every store call bounded by `mint_timeout`):
//! 1. Load the record. A pair whose access token differs from the one this source last handed out, with no lease
//!    on it and not due, was rotated by another holder or signed in: it is adopted, no refresh.
//! 2. Claim: swap in the same record with a lease (this attempt's id, an expiry). Losing the swap means someone
//!    else moved first: load again (bounded). A live lease of another holder: wait for its result (bounded), then
//!    adopt it. A lease that would run out before the refresh could end is given back unspent.
//! 3. Spend the refresh token at GitHub, in a task of its own: dropping the source or its refresher does not stop
//!    a rotation between spending and saving.
//! 4. Save: swap in the new pair (no lease). Only then is the new access token handed to requests.
//!    - The save fails (store down): the pair stays in memory, the failure is reported (typed error, callback,
//!      log), requests fail fast with it, and the save is retried with backoff before anything else.
//!    - The save loses (the lease ran out and another holder took over): the new pair is written over whatever
//!      that holder left (a refusal: the refresh token was already spent), unless the user signed out meanwhile or
//!      a sign-in put another pair there.
//! 5. GitHub refuses the refresh token (or answers with tokens it spent but that cannot be used): the record is
//!    marked "re-authorization required" (that write is kept and retried like a pair), so no holder presents it
//!    again, and the callback fires once. A refusal because another holder already rotated it is not one: its
//!    pair is adopted.
//!
//! A holder that crashes between 3 and 4 loses the pair: GitHub rotated, nobody saved. Nothing can prevent that
//! except GitHub; the lease then runs out, the next holder spends the old refresh token, GitHub refuses it, and the
//! user is asked to authorize again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::oauth::{OAuthApp, UserTokens};
use crate::error::{Error, ErrorKind, scrub};
use crate::installation::mint::MintClient;
use crate::installation::token::TokenEntry;
use crate::store::{UserTokenStore, Versioned};

/// A callback the user registered.
pub(crate) type Callback = Arc<dyn Fn(&Error) + Send + Sync>;

/// A record in the store (JSON). Times are GitHub's (UTC), in milliseconds after the Unix epoch.
#[derive(Serialize, Deserialize, Clone)]
struct Record {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token_expires_at: Option<i64>,
    /// When the pair was issued (or signed in).
    issued_at: i64,
    /// Held by the attempt that is spending the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Lease>,
    /// Why the user must authorize again, once GitHub refused the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reauthorize: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Lease {
    holder: String,
    until: i64,
}

fn ms(t: SystemTime) -> i64 {
    TokenEntry::millis_since_epoch(t)
}

fn at(ms: i64) -> SystemTime {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 { SystemTime::UNIX_EPOCH + offset } else { SystemTime::UNIX_EPOCH - offset }
}

impl Record {
    fn new(tokens: &UserTokens, issued_at: SystemTime) -> Self {
        Record {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            expires_at: tokens.expires_at.map(ms),
            refresh_token_expires_at: tokens.refresh_token_expires_at.map(ms),
            issued_at: ms(issued_at),
            lease: None,
            reauthorize: None,
        }
    }

    fn tokens(&self) -> UserTokens {
        UserTokens {
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            expires_at: self.expires_at.map(at),
            refresh_token_expires_at: self.refresh_token_expires_at.map(at),
        }
    }

    fn encode(&self, version: u64) -> Versioned {
        Versioned { version, record: serde_json::to_vec(self).unwrap_or_default() }
    }

    fn decode(stored: &Versioned) -> Result<Self, Error> {
        serde_json::from_slice(&stored.record).map_err(|_| {
            Error::new(
                ErrorKind::Store,
                format!(
                    "the stored user token record (version {}) is not one this crate wrote: was the key reused for \
                     something else? Sign the user in again to replace it",
                    stored.version
                ),
            )
        })
    }
}

/// What a signed-out record says instead of a refusal.
const SIGNED_OUT: &str = "signed out";

/// A pair ready for requests: the tokens and when they were issued.
pub(crate) struct Current {
    pub(crate) tokens: UserTokens,
    pub(crate) issued_at: SystemTime,
}

/// Why a rotation gave no pair, and whether the access token requests hold is dead now (its refresh token was
/// spent, or GitHub refused it).
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) current_dead: bool,
}

impl Failure {
    fn alive(error: Error) -> Self {
        Failure { error, current_dead: false }
    }

    fn dead(error: Error) -> Self {
        Failure { error, current_dead: true }
    }
}

/// A write GitHub's answer obliges this source to make before anything else.
#[derive(Clone)]
enum Pending {
    /// A rotated pair, replacing version `replaces`; `spent` is the fingerprint of the refresh token traded for it.
    Pair { tokens: UserTokens, spent: u64, replaces: Option<u64> },
    /// A refusal mark on `record`, replacing version `replaces`.
    Refusal { record: Record, spent: u64, replaces: Option<u64>, error: Error },
}

#[derive(Default)]
pub(crate) struct RotationCounters {
    pub(crate) refreshes: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) store_failures: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) reauthorizations: AtomicU64,
}

/// What a [`Rotation`] is built from.
pub(crate) struct RotationConfig {
    pub(crate) oauth: OAuthApp,
    pub(crate) client: MintClient,
    pub(crate) store: Arc<dyn UserTokenStore>,
    pub(crate) key: String,
    pub(crate) lease: Duration,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
    pub(crate) refresh_before: Duration,
    pub(crate) on_reauthorization_required: Option<Callback>,
    pub(crate) on_store_error: Option<Callback>,
}

pub(crate) struct Rotation {
    pub(crate) config: RotationConfig,
    /// This source's id in leases (each attempt adds a number).
    holder: String,
    attempts: AtomicU64,
    /// Which attempt of this source may rotate, and until when (the real clock): one at a time, and an attempt
    /// stuck on a runtime nobody drives holds the turn for one rotation budget at most.
    turn: Mutex<Option<(u64, std::time::Instant)>>,
    /// A fingerprint of the access token this source last handed out, and the sign-in epoch of the rotation that
    /// handed it out (one from before the latest sign-in or sign-out does not count).
    known: Mutex<Option<(u64, u64)>>,
    /// Attempts of this source that claimed the record and have not settled (released it, or kept GitHub's answer
    /// in `pending`). Their leases are live like another holder's: an attempt that was dropped or panicked
    /// mid-refresh may have spent the refresh token.
    unsettled: Mutex<std::collections::HashSet<u64>>,
    /// Bumped by every sign-in and sign-out: a rotation that ran across one is not handed out.
    epoch: AtomicU64,
    pending: Mutex<Option<Pending>>,
    /// A fingerprint of the refresh token GitHub refused last (or of nothing, for an empty store), so it is never
    /// presented again and reported once.
    refused: Mutex<Option<u64>>,
    pub(crate) counters: RotationCounters,
}

/// A fingerprint of a secret, for comparing tokens without keeping a second copy around.
fn fingerprint(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    hasher.finish()
}

/// The version after `version`.
fn next(version: Option<u64>) -> Result<u64, Error> {
    match version {
        None => Ok(1),
        Some(v) => v.checked_add(1).ok_or_else(|| {
            Error::new(
                ErrorKind::Store,
                "the stored user token record is at the last version there is: sign the user in again",
            )
        }),
    }
}

/// Releases the turn when the attempt ends, however it ends.
struct Turn<'a> {
    rotation: &'a Rotation,
    id: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turn = self.rotation.turn.lock().unwrap_or_else(|e| e.into_inner());
        if turn.is_some_and(|(id, _)| id == self.id) {
            *turn = None;
        }
    }
}

/// How many claims a rotation may lose in a row before it backs off.
const MAX_LOST_CLAIMS: u32 = 32;

/// The longest lease a builder accepts; a lease dated further ahead (than this and [`LEASE_SKEW_SLACK`]) is void.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(3600);

/// What is kept clear at the end of a lease, for clocks of holders that disagree by a little: a tenth of the
/// lease, at most 5 s.
pub(crate) fn skew_margin(lease: Duration) -> Duration {
    (lease / 10).min(Duration::from_secs(5))
}

/// How far ahead of this host's clock another holder's may be before its leases count as void.
const LEASE_SKEW_SLACK: Duration = Duration::from_secs(600);

/// Turns a panic of the future it polls (a user's store) into an error.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

impl Rotation {
    pub(crate) fn new(config: RotationConfig) -> Self {
        Rotation {
            config,
            holder: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            attempts: AtomicU64::new(0),
            turn: Mutex::new(None),
            known: Mutex::new(None),
            unsettled: Mutex::new(Default::default()),
            epoch: AtomicU64::new(0),
            pending: Mutex::new(None),
            refused: Mutex::new(None),
            counters: RotationCounters::default(),
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.config.key
    }

    /// Whether a rotated pair waits to be saved.
    pub(crate) fn has_unsaved(&self) -> bool {
        matches!(*self.pending.lock().unwrap_or_else(|e| e.into_inner()), Some(Pending::Pair { .. }))
    }

    /// The longest one rotation may take: waiting out another holder's lease, then a refresh and a few writes.
    pub(crate) fn budget(&self) -> Duration {
        let c = &self.config;
        c.lease.saturating_mul(3).saturating_add(c.timeout.saturating_mul(8)) + Duration::from_secs(1)
    }

    /// Waits for this source's turn to rotate: at most `mint_timeout`, so requests fail fast (and retry with
    /// backoff) while another attempt of this source holds it, even one stuck on a runtime nobody drives.
    async fn take_turn(&self) -> Result<Turn<'_>, Error> {
        let id = self.attempts.fetch_add(1, Ordering::Relaxed);
        let give_up = Instant::now() + self.config.timeout;
        loop {
            {
                let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
                let now = std::time::Instant::now();
                if turn.is_none_or(|(_, until)| until <= now) {
                    *turn = Some((id, now + self.budget()));
                    return Ok(Turn { rotation: self, id });
                }
            }
            if Instant::now() >= give_up {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "another rotation of the tokens of {:?} in this process has been under way for over {:?} \
                         (or is stuck on a runtime that is not running it); retrying",
                        scrub(&self.config.key),
                        self.config.timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A store call, bounded by `mint_timeout`.
    async fn call<'a, T>(
        &'a self,
        operation: impl FnOnce(&'a dyn UserTokenStore) -> crate::store::StoreFuture<'a, T>,
    ) -> Result<T, crate::BoxError> {
        let store: &'a dyn UserTokenStore = &*self.config.store;
        let Ok(operation) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| operation(store))) else {
            return Err("the store panicked".into());
        };
        match tokio::time::timeout(self.config.timeout, CatchUnwind(operation)).await {
            Ok(Ok(result)) => result,
            Ok(Err(())) => Err("the store panicked".into()),
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout).into()),
        }
    }

    /// The current sign-in epoch (see [`Rotation::epoch`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    async fn load(&self) -> Result<Option<Versioned>, crate::BoxError> {
        let key = self.config.key.as_str();
        self.call(|store| store.load(key)).await
    }

    async fn swap(&self, expected: Option<u64>, new: &Versioned) -> Result<bool, crate::BoxError> {
        let key = self.config.key.as_str();
        self.call(|store| store.compare_and_swap(key, expected, new)).await
    }

    /// Waits for the record to change from `version`, at most `patience` (a store that panics is waited out).
    async fn changed(&self, version: u64, patience: Duration) {
        let started = Instant::now();
        // However soon the store says the record changed, at least this long between loads (a store whose
        // `changed` answers at once must not turn the wait into a busy loop).
        let floor = patience.min(Duration::from_millis(20));
        self.changed_or_sleep(version, patience).await;
        tokio::time::sleep(floor.saturating_sub(started.elapsed())).await;
    }

    async fn changed_or_sleep(&self, version: u64, patience: Duration) {
        let store = &*self.config.store;
        let key = self.config.key.as_str();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.changed(key, Some(version)))) {
            Ok(changed) => {
                let started = Instant::now();
                if let Ok(Err(())) = tokio::time::timeout(patience, CatchUnwind(changed)).await {
                    // It panicked when polled: wait out the rest as a plain poll would.
                    tokio::time::sleep(patience.saturating_sub(started.elapsed())).await;
                }
            }
            Err(_) => tokio::time::sleep(patience).await,
        }
    }

    /// A pair for requests: adopted from the store, or rotated. `withdraw` is called just before the refresh
    /// token is spent (its access token dies with it), so requests wait for the new one instead of carrying a
    /// dead one.
    /// `epoch` is the sign-in epoch the caller read before it started: what this rotation hands out belongs to it.
    pub(crate) async fn rotate(&self, withdraw: &(dyn Fn() + Send + Sync), epoch: u64) -> Result<Current, Failure> {
        let _turn = self.take_turn().await.map_err(Failure::alive)?;
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(pending) = pending {
            return self.finish(pending, true, epoch).await;
        }
        let c = &self.config;
        let give_up = Instant::now() + c.lease.saturating_mul(2);
        let (mut waited, mut lost) = (false, 0u32);
        loop {
            let stored = self.load().await.map_err(|e| Failure::alive(self.store_error("read", e, true)))?;
            let Some(stored) = stored else {
                // Not signed in yet: nothing was lost, so no callback.
                return Err(Failure::dead(Error::new(
                    ErrorKind::ReauthorizationRequired,
                    format!(
                        "no user tokens are stored under the key {:?}: complete the web or device flow and sign the \
                         user in",
                        scrub(&c.key)
                    ),
                )));
            };
            let record = Record::decode(&stored).map_err(Failure::alive)?;
            let now = SystemTime::now();
            if let Some(why) = &record.reauthorize {
                if why == SIGNED_OUT {
                    return Err(Failure::dead(signed_out(&c.key)));
                }
                let why = scrub(why);
                return Err(Failure::dead(self.reauthorization_required(record.refresh_token.as_deref(), why)));
            }
            // A live lease of another holder. One of this source's own is stale: its attempts run one at a time,
            // so it is one a failed attempt could not give back (the store was failing).
            let mine = |lease: &Lease| {
                let (holder, attempt) = lease.holder.split_once('#').unwrap_or_default();
                let unsettled = || {
                    let attempt = attempt.parse::<u64>().unwrap_or(u64::MAX);
                    self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).contains(&attempt)
                };
                holder == self.holder && !unsettled()
            };
            // A lease dated further ahead than any lease can be was written by a clock that is wrong: void.
            let plausible = |lease: &Lease| lease.until <= ms(now + MAX_LEASE + LEASE_SKEW_SLACK);
            if let Some(lease) =
                record.lease.as_ref().filter(|lease| lease.until > ms(now) && plausible(lease) && !mine(lease))
            {
                // Another holder is spending the refresh token: its result is what this source will use.
                if !waited {
                    waited = true;
                    self.counters.lease_waits.fetch_add(1, Ordering::Relaxed);
                }
                if Instant::now() >= give_up {
                    return Err(Failure::alive(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "another holder of the tokens of {:?} has held their record for over {:?}; retrying",
                            scrub(&c.key),
                            c.lease.saturating_mul(2)
                        ),
                    )));
                }
                let left = Duration::from_millis(u64::try_from(lease.until.saturating_sub(ms(now))).unwrap_or(0));
                self.changed(stored.version, left.min(Duration::from_millis(250))).await;
                continue;
            }
            let access = fingerprint(&record.access_token);
            let known = self.known();
            if known != Some(access) && record.lease.is_none() && self.is_fresh(&record, now) {
                // Rotated by another holder, or signed in: use it.
                if known.is_some() {
                    self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(self.adopt(&record, epoch));
            }
            let Some(refresh_token) = record.refresh_token.clone() else {
                // Expiry turned off: the token lasts until revoked, and there is nothing to refresh.
                if record.expires_at.is_some_and(|e| e <= ms(now)) {
                    return Err(Failure::dead(self.reauthorization_required(
                        None,
                        "the user access token expired and there is no refresh token".into(),
                    )));
                }
                return Ok(self.adopt(&record, epoch));
            };
            let spent = fingerprint(&refresh_token);
            if *self.refused.lock().unwrap_or_else(|e| e.into_inner()) == Some(spent) {
                // GitHub refused this one already (and marking the record failed): never present it again.
                return Err(Failure::dead(
                    self.reauthorization_required(Some(&refresh_token), "GitHub refused the refresh token".into()),
                ));
            }
            let version = next(Some(stored.version)).map_err(Failure::alive)?;
            if record.refresh_token_expires_at.is_some_and(|e| e <= ms(now)) {
                let error = self.reauthorization_required(Some(&refresh_token), "the refresh token expired".into());
                let mut dead = record.clone();
                dead.reauthorize = Some("the refresh token expired".into());
                let _ = self.swap(Some(stored.version), &dead.encode(version)).await;
                return Err(Failure::dead(error));
            }

            // Claim the refresh token for this attempt.
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
            let until = ms(now + c.lease);
            let mut claimed = record.clone();
            claimed.lease = Some(Lease { holder: format!("{}#{attempt}", self.holder), until });
            let claim = claimed.encode(version);
            match self.swap(Some(stored.version), &claim).await {
                Ok(true) => {}
                Ok(false) => {
                    lost += 1;
                    if lost >= MAX_LOST_CLAIMS {
                        return Err(Failure::alive(Error::new(
                            ErrorKind::Store,
                            format!(
                                "the record of {:?} changed under {lost} claims in a row (does the store's \
                                 compare_and_swap answer false when it wrote?); retrying with backoff",
                                scrub(&c.key)
                            ),
                        )));
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(e) => return Err(Failure::alive(self.store_error("lease", e, true))),
            }
            self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).insert(attempt);
            let settled = || self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).remove(&attempt);
            let released = |mut record: Record| {
                record.lease = None;
                record
            };
            let after_claim = next(Some(claim.version)).map_err(Failure::alive)?;
            // The lease must outlast the refresh and the save: a claim the store took long to answer is given back
            // unspent.
            let left = Duration::from_millis(u64::try_from(until.saturating_sub(ms(SystemTime::now()))).unwrap_or(0));
            let margin = skew_margin(c.lease);
            if left <= c.timeout.saturating_mul(2) + margin {
                let _ = self.swap(Some(claim.version), &released(record).encode(after_claim)).await;
                settled();
                return Err(Failure::alive(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the store took the lease on the tokens of {:?} with only {left:?} of it left, less than a \
                         refresh and a save may take (2 x {:?}, and {margin:?} for clocks): not spending the refresh \
                         token; retrying",
                        scrub(&c.key),
                        c.timeout
                    ),
                )));
            }

            // Spend it. Its access token dies now: requests wait for the new one.
            // Its answer is awaited as long as the lease allows (less the save's share): an answer abandoned after
            // GitHub rotated would be a pair lost.
            withdraw();
            let patience = left.saturating_sub(c.timeout).saturating_sub(margin);
            match c.oauth.refresh(&c.client, &refresh_token, &c.user_agent, patience).await {
                Ok(tokens) => {
                    self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                    let pending = Pending::Pair { tokens, spent, replaces: Some(claim.version) };
                    // Kept before it is written: a store that panics, or a runtime that drops this task, leaves it
                    // for the next rotation to save.
                    self.keep_pending(pending.clone());
                    settled();
                    return self.finish(pending, false, epoch).await;
                }
                Err(refused) if refused.spent || refused.error.kind() == ErrorKind::ReauthorizationRequired => {
                    // (Refused because another holder rotated it after all, our lease having run out on the way?
                    // Then the record holds that holder's pair, and writing the mark gives way to it.)
                    let error = if refused.error.kind() == ErrorKind::ReauthorizationRequired {
                        refused.error
                    } else {
                        Error::build(
                            ErrorKind::ReauthorizationRequired,
                            format!(
                                "GitHub rotated the tokens of {:?} but its answer could not be used ({}); the refresh \
                                 token it spent cannot be presented again: the user must authorize the App again",
                                scrub(&c.key),
                                refused.error
                            ),
                        )
                        .source(refused.error)
                        .finish()
                    };
                    let mut mark = released(record);
                    mark.reauthorize = Some(error.to_string());
                    let pending = Pending::Refusal { record: mark, spent, replaces: Some(claim.version), error };
                    self.keep_pending(pending.clone());
                    settled();
                    return self.finish(pending, false, epoch).await;
                }
                Err(refused) => {
                    // Refused for another reason, or lost on the way: give the lease back and retry later with
                    // the same refresh token (if GitHub did rotate and the answer was lost, the retry is refused
                    // and the user must authorize again: nothing else can recover a pair lost in transit).
                    let _ = self.swap(Some(claim.version), &released(record).encode(after_claim)).await;
                    settled();
                    // An answer that never came to a request GitHub may have received may mean a spent token (and
                    // a dead access token): not restored. One that never left (no connection) leaves it alive.
                    let lost_in_transit = match refused.error.kind() {
                        ErrorKind::Timeout => true,
                        ErrorKind::Transport => !never_sent(&refused.error),
                        _ => false,
                    };
                    return Err(if lost_in_transit {
                        Failure::dead(refused.error)
                    } else {
                        Failure::alive(refused.error)
                    });
                }
            }
        }
    }

    /// The access token this source last handed out, if since the latest sign-in or sign-out.
    fn known(&self) -> Option<u64> {
        let known = *self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.filter(|(_, epoch)| *epoch == self.epoch()).map(|(access, _)| access)
    }

    /// Keeps a write GitHub's answer obliges. A refusal never displaces a pair (the refusal came second: the pair is
    /// the live one).
    fn keep_pending(&self, pending: Pending) {
        let mut kept = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !(matches!(pending, Pending::Refusal { .. }) && matches!(*kept, Some(Pending::Pair { .. }))) {
            *kept = Some(pending);
        }
    }

    /// Hands out a stored pair.
    fn adopt(&self, record: &Record, epoch: u64) -> Current {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((fingerprint(&record.access_token), epoch));
        Current { tokens: record.tokens(), issued_at: at(record.issued_at) }
    }

    /// Whether a stored pair can serve as it is (not due for a refresh).
    fn is_fresh(&self, record: &Record, now: SystemTime) -> bool {
        let Some(expires_at) = record.expires_at else {
            return true;
        };
        let lifetime = Duration::from_millis(u64::try_from(expires_at.saturating_sub(record.issued_at)).unwrap_or(0));
        let left = Duration::from_millis(u64::try_from(expires_at.saturating_sub(ms(now))).unwrap_or(0));
        left > self.config.refresh_before.min(lifetime / 3).mul_f64(1.2)
    }

    /// Makes the write GitHub's answer obliges: saves a rotated pair (then hands it out), or marks a refusal. Until
    /// it is written it stays in memory, and every rotation of this source starts with it.
    async fn finish(&self, pending: Pending, retrying: bool, epoch: u64) -> Result<Current, Failure> {
        let (mut replaces, spent) = match &pending {
            Pending::Pair { replaces, spent, .. } | Pending::Refusal { replaces, spent, .. } => (*replaces, *spent),
        };
        let (record, issued_at) = match &pending {
            Pending::Pair { tokens, .. } => {
                let issued_at = SystemTime::now();
                (Record::new(tokens, issued_at), issued_at)
            }
            Pending::Refusal { record, .. } => (record.clone(), SystemTime::now()),
        };
        let keep = |replaces: Option<u64>| {
            let mut kept = pending.clone();
            match &mut kept {
                Pending::Pair { replaces: r, .. } | Pending::Refusal { replaces: r, .. } => *r = replaces,
            }
            self.keep_pending(kept);
        };
        // Takes the pending write if it is this one (same kind, same spent refresh token).
        let done = || {
            let mut kept = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let same = match (&*kept, &pending) {
                (Some(Pending::Pair { spent: a, .. }), Pending::Pair { .. })
                | (Some(Pending::Refusal { spent: a, .. }), Pending::Refusal { .. }) => *a == spent,
                _ => false,
            };
            same && kept.take().is_some()
        };
        for _ in 0..4 {
            let new = record.encode(next(replaces).map_err(Failure::alive)?);
            match self.swap(replaces, &new).await {
                Ok(true) => {
                    if done() && retrying {
                        tracing::warn!(key = %scrub(&self.config.key), "the user token record is saved now");
                    }
                    return match pending {
                        Pending::Pair { tokens, .. } => {
                            *self.known.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some((fingerprint(&tokens.access_token), epoch));
                            Ok(Current { tokens, issued_at })
                        }
                        Pending::Refusal { error, .. } => Err(Failure::dead(self.report(Some(spent), error))),
                    };
                }
                Ok(false) => {
                    // The record changed under the lease: it ran out and another holder took over (GitHub refused
                    // it the spent refresh token), the user signed out, or a sign-in wrote another pair.
                    let current = match self.load().await {
                        Ok(current) => current,
                        Err(e) => return Err(self.unwritten(&pending, replaces, "read", e, &keep)),
                    };
                    let theirs = current.as_ref().and_then(|c| Record::decode(c).ok());
                    if let Some(theirs) = &theirs {
                        if theirs.reauthorize.as_deref() == Some(SIGNED_OUT) {
                            done();
                            return Err(Failure::dead(signed_out(&self.config.key)));
                        }
                        // Ours to overwrite: what a holder that took over our lease left of our refresh token (a
                        // refusal of it, or its claim). Anything else is another pair, signed in meanwhile (and
                        // perhaps being rotated, or refused, since): ours gives way to it.
                        let ours = theirs.refresh_token.as_deref().is_some_and(|t| fingerprint(t) == spent);
                        if !ours {
                            done();
                            if theirs.reauthorize.is_none()
                                && theirs.lease.is_none()
                                && self.is_fresh(theirs, SystemTime::now())
                            {
                                tracing::warn!(
                                    key = %scrub(&self.config.key),
                                    "the user's tokens were signed in again during a rotation; using the signed-in pair"
                                );
                                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                                return Ok(self.adopt(theirs, epoch));
                            }
                            return Err(Failure::dead(Error::new(
                                ErrorKind::Store,
                                format!(
                                    "the tokens of {:?} were signed in again during a rotation; the new pair is used \
                                     as soon as its holder has it",
                                    scrub(&self.config.key)
                                ),
                            )));
                        }
                    }
                    replaces = current.map(|c| c.version);
                }
                Err(e) => return Err(self.unwritten(&pending, replaces, "write", e, &keep)),
            }
        }
        keep(replaces);
        Err(Failure::dead(Error::new(
            ErrorKind::Store,
            format!("the record of {:?} kept changing while a rotation saved it; retrying", scrub(&self.config.key)),
        )))
    }

    /// Keeps a write the store did not take, and says so loudly.
    fn unwritten(
        &self,
        pending: &Pending,
        replaces: Option<u64>,
        what: &str,
        error: crate::BoxError,
        keep: &dyn Fn(Option<u64>),
    ) -> Failure {
        keep(replaces);
        self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
        let key = scrub(&self.config.key);
        let error = match pending {
            Pending::Pair { .. } => Error::build(
                ErrorKind::Store,
                format!(
                    "GitHub rotated the tokens of {key:?} but the store failed to {what} them ({}): the new pair is \
                     kept in memory and saved as soon as the store takes it (requests fail until then; do not stop \
                     the process)",
                    scrub(&error.to_string()),
                ),
            ),
            Pending::Refusal { .. } => Error::build(
                ErrorKind::ReauthorizationRequired,
                format!(
                    "GitHub refused the refresh token of {key:?} and the store failed to {what} the record ({}); \
                     the user must authorize the App again",
                    scrub(&error.to_string()),
                ),
            ),
        }
        .source(error)
        .finish();
        tracing::error!(key = %key, %error, "user token record not written");
        if let Some(callback) = &self.config.on_store_error {
            callback(&error);
        }
        match pending {
            Pending::Pair { .. } => Failure::dead(error),
            Pending::Refusal { spent, .. } => Failure::dead(self.report(Some(*spent), error)),
        }
    }

    fn store_error(&self, what: &str, error: crate::BoxError, retrying: bool) -> Error {
        let error = Error::build(
            ErrorKind::Store,
            format!(
                "the user token store failed to {what} the record of {:?} ({}){}",
                scrub(&self.config.key),
                scrub(&error.to_string()),
                if retrying { "; retrying with backoff" } else { "" }
            ),
        )
        .source(error)
        .finish();
        self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %scrub(&self.config.key), %error, "user token store failed");
        if let Some(callback) = &self.config.on_store_error {
            callback(&error);
        }
        error
    }

    /// The re-authorization error for `why`, reported once per refresh token.
    fn reauthorization_required(&self, refresh_token: Option<&str>, why: String) -> Error {
        let message =
            if why.contains("authorize") { why } else { format!("{why}: the user must authorize the App again") };
        self.report(refresh_token.map(fingerprint), Error::new(ErrorKind::ReauthorizationRequired, message))
    }

    /// Fires the callback for `error` unless it was fired for this refresh token already.
    fn report(&self, refresh_token: Option<u64>, error: Error) -> Error {
        let print = refresh_token.unwrap_or(0);
        let first = {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            let first = *refused != Some(print);
            *refused = Some(print);
            first
        };
        if first {
            self.counters.reauthorizations.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %scrub(&self.config.key), %error, "the user must authorize the App again");
            if let Some(callback) = &self.config.on_reauthorization_required {
                callback(&error);
            }
        }
        error
    }

    /// Writes a signed-in pair over whatever the store holds; clears a refusal and any write still pending.
    pub(crate) async fn sign_in(&self, tokens: &UserTokens) -> Result<(), Error> {
        self.overwrite(&Record::new(tokens, SystemTime::now()), "sign-in").await?;
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Whatever this source handed out before, the signed-in pair is adopted, not spent.
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Marks the record signed out, keeping nothing usable in it.
    pub(crate) async fn sign_out(&self) -> Result<(), Error> {
        let out = Record {
            access_token: String::new(),
            refresh_token: None,
            expires_at: None,
            refresh_token_expires_at: None,
            issued_at: ms(SystemTime::now()),
            lease: None,
            reauthorize: Some(SIGNED_OUT.into()),
        };
        self.overwrite(&out, "sign-out").await
    }

    /// Whether the store holds a pair not known to need re-authorization.
    pub(crate) async fn is_signed_in(&self) -> Result<bool, Error> {
        let stored = self.load().await.map_err(|e| self.store_error("read", e, false))?;
        Ok(match stored {
            Some(stored) => Record::decode(&stored)?.reauthorize.is_none(),
            None => false,
        })
    }

    /// Replaces the record, whatever its version. It does not wait for a rotation under way: a rotation that
    /// loses its save to it adopts what it wrote, or stops if it was a sign-out.
    async fn overwrite(&self, record: &Record, what: &str) -> Result<(), Error> {
        for _ in 0..8 {
            let current = self.load().await.map_err(|e| self.store_error("read", e, false))?;
            let expected = current.as_ref().map(|c| c.version);
            // A record at the last version there is starts over (compare-and-swap still guards the write).
            let version = next(expected).unwrap_or(1);
            let swapped =
                self.swap(expected, &record.encode(version)).await.map_err(|e| self.store_error("write", e, false))?;
            if swapped {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                self.epoch.fetch_add(1, Ordering::AcqRel);
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        Err(Error::new(ErrorKind::Store, format!("the user token record kept changing during the {what}; try again")))
    }
}

/// Whether a transport error happened before the request could reach GitHub: the connection was refused, the
/// host not found or unreachable.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        // hyper-util's connection errors ("client error (Connect)"), and failed name lookups.
        let text = error.to_string();
        if text.contains("(Connect)") || text.contains("dns error") || text.contains("failed to lookup address") {
            return true;
        }
        cause = error.source();
    }
    false
}

fn signed_out(key: &str) -> Error {
    Error::new(ErrorKind::ReauthorizationRequired, format!("the user {:?} signed out: sign them in again", scrub(key)))
}
