//! Rotation of a user's token pair through a [`UserTokenStore`], so that no holder (task, source, process) spends
//! a refresh token another one spends, and no pair GitHub hands out is lost.
//!
//! The protocol, on the store's compare-and-swap alone:
//! 1. Load the record. A pair that another holder rotated (or a sign-in wrote) since this source last used one,
//!    and that is not due, is adopted: no refresh.
//! 2. Claim: swap in the same record with a lease (this attempt's id, an expiry). Losing the swap means someone
//!    else moved first: load again. A live lease of another holder: wait for its result (bounded), then adopt it.
//! 3. Spend the refresh token at GitHub.
//! 4. Save: swap in the new pair (no lease). Only then is the new access token handed to requests.
//!    - The save fails (store down): the pair stays in memory, the failure is reported (typed error, callback,
//!      log), requests fail fast with it, and the save is retried with backoff before anything else.
//!    - The save loses (the lease ran out and another holder took over): the new pair is written over whatever
//!      that holder left (a refusal: the refresh token was already spent), unless a sign-in put a fresh pair there.
//! 5. GitHub refuses the refresh token: the record is marked "re-authorization required", so every holder stops
//!    spending it, and the callback fires once.
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
use crate::error::{Error, ErrorKind};
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

#[derive(Default)]
pub(crate) struct RotationCounters {
    pub(crate) refreshes: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) store_failures: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) reauthorizations: AtomicU64,
}

pub(crate) struct Rotation {
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
    /// This source's id in leases (each attempt adds a number).
    holder: String,
    attempts: AtomicU64,
    /// One rotation at a time in this source, whichever refresher runs it.
    running: tokio::sync::Mutex<()>,
    /// The version of the pair this source last handed to requests.
    known: Mutex<Option<u64>>,
    /// A rotated pair GitHub gave that the store has not taken yet, and the version it replaces.
    unsaved: Mutex<Option<(UserTokens, Option<u64>)>>,
    /// A fingerprint of the refresh token GitHub refused last, so it is never presented again.
    refused: Mutex<Option<u64>>,
    pub(crate) counters: RotationCounters,
}

fn fingerprint(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    hasher.finish()
}

impl Rotation {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        oauth: OAuthApp,
        client: MintClient,
        store: Arc<dyn UserTokenStore>,
        key: String,
        lease: Duration,
        user_agent: HeaderValue,
        timeout: Duration,
        refresh_before: Duration,
        on_reauthorization_required: Option<Callback>,
        on_store_error: Option<Callback>,
    ) -> Self {
        Rotation {
            oauth,
            client,
            store,
            key,
            lease,
            user_agent,
            timeout,
            refresh_before,
            on_reauthorization_required,
            on_store_error,
            holder: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            attempts: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
            known: Mutex::new(None),
            unsaved: Mutex::new(None),
            refused: Mutex::new(None),
            counters: RotationCounters::default(),
        }
    }

    /// Whether a rotated pair waits to be saved.
    pub(crate) fn has_unsaved(&self) -> bool {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The longest one rotation may take: waiting out another holder's lease, then a refresh and two writes.
    pub(crate) fn budget(&self) -> Duration {
        self.lease.saturating_mul(2).saturating_add(self.timeout.saturating_mul(2)) + Duration::from_secs(1)
    }

    /// A pair for requests: adopted from the store, or rotated. `withdraw` is called just before the refresh
    /// token is spent (its access token dies with it), so requests wait for the new one instead of carrying a
    /// dead one.
    pub(crate) async fn rotate(&self, withdraw: &(dyn Fn() + Send + Sync)) -> Result<Current, Failure> {
        let _one = self.running.lock().await;
        let unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((tokens, replaces)) = unsaved {
            return self.save(tokens, replaces).await;
        }
        let give_up = Instant::now() + self.lease * 2;
        let mut waited = false;
        loop {
            let stored =
                self.store.load(&self.key).await.map_err(|e| Failure::alive(self.store_error("read", e, true)))?;
            let Some(stored) = stored else {
                // Not signed in yet: nothing was lost, so no callback.
                return Err(Failure::dead(Error::new(
                    ErrorKind::ReauthorizationRequired,
                    format!(
                        "no user tokens are stored under the key {:?}: complete the web or device flow and sign the \
                         user in",
                        crate::error::scrub(&self.key)
                    ),
                )));
            };
            let record = Record::decode(&stored).map_err(Failure::alive)?;
            let now = SystemTime::now();
            if let Some(why) = &record.reauthorize {
                if why == SIGNED_OUT {
                    return Err(Failure::dead(Error::new(
                        ErrorKind::ReauthorizationRequired,
                        format!("the user {:?} signed out: sign them in again", crate::error::scrub(&self.key)),
                    )));
                }
                let why = why.clone();
                return Err(Failure::dead(self.reauthorization_required(record.refresh_token.as_deref(), why)));
            }
            // A live lease of another holder. One of this source's own is stale: its rotations run one at a time,
            // so it is one a failed attempt could not give back (the store was failing).
            let mine = |lease: &Lease| lease.holder.split('#').next() == Some(self.holder.as_str());
            if let Some(lease) = record.lease.as_ref().filter(|lease| lease.until > ms(now) && !mine(lease)) {
                // Another holder is spending the refresh token: its result is what this source will use.
                if !waited {
                    waited = true;
                    self.counters.lease_waits.fetch_add(1, Ordering::Relaxed);
                }
                if Instant::now() >= give_up {
                    return Err(Failure::alive(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "another holder of the user's tokens has been rotating them for over {:?} (its lease \
                             keeps being renewed); retrying",
                            self.lease * 2
                        ),
                    )));
                }
                let left = Duration::from_millis(u64::try_from(lease.until - ms(now)).unwrap_or(0));
                let _ = tokio::time::timeout(
                    left.min(Duration::from_millis(250)),
                    self.store.changed(&self.key, Some(stored.version)),
                )
                .await;
                continue;
            }
            let known = *self.known.lock().unwrap_or_else(|e| e.into_inner());
            if known != Some(stored.version) && self.is_fresh(&record, now) {
                // Rotated by another holder, or signed in: use it.
                if known.is_some() {
                    self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                }
                *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored.version);
                return Ok(Current { tokens: record.tokens(), issued_at: at(record.issued_at) });
            }
            let Some(refresh_token) = record.refresh_token.clone() else {
                // Expiry turned off: the token lasts until revoked, and there is nothing to refresh.
                if record.expires_at.is_some_and(|e| e <= ms(now)) {
                    return Err(Failure::dead(self.reauthorization_required(
                        None,
                        "the user access token expired and there is no refresh token".into(),
                    )));
                }
                *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored.version);
                return Ok(Current { tokens: record.tokens(), issued_at: at(record.issued_at) });
            };
            if self.refused.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|f| f == fingerprint(&refresh_token))
            {
                // GitHub refused this one already (and marking the record failed): never present it again.
                return Err(Failure::dead(
                    self.reauthorization_required(Some(&refresh_token), "GitHub refused the refresh token".into()),
                ));
            }
            if record.refresh_token_expires_at.is_some_and(|e| e <= ms(now)) {
                let error = self.reauthorization_required(Some(&refresh_token), "the refresh token expired".into());
                let mut dead = record.clone();
                dead.reauthorize = Some("the refresh token expired".into());
                let _ = self
                    .store
                    .compare_and_swap(&self.key, Some(stored.version), &dead.encode(stored.version + 1))
                    .await;
                return Err(Failure::dead(error));
            }

            // Claim the refresh token for this attempt.
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
            let mut claimed = record.clone();
            claimed.lease = Some(Lease { holder: format!("{}#{attempt}", self.holder), until: ms(now + self.lease) });
            let claim = claimed.encode(stored.version + 1);
            match self.store.compare_and_swap(&self.key, Some(stored.version), &claim).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(Failure::alive(self.store_error("lease", e, true))),
            }

            // Spend it. Its access token dies now: requests wait for the new one.
            withdraw();
            let released = |mut record: Record| {
                record.lease = None;
                record
            };
            match self.oauth.refresh(&self.client, &refresh_token, &self.user_agent, self.timeout).await {
                Ok(tokens) => {
                    self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                    return self.save(tokens, Some(claim.version)).await;
                }
                Err(error) if error.kind() == ErrorKind::ReauthorizationRequired => {
                    let mut dead = released(record);
                    dead.reauthorize = Some(error.to_string());
                    let _ = self
                        .store
                        .compare_and_swap(&self.key, Some(claim.version), &dead.encode(claim.version + 1))
                        .await;
                    return Err(Failure::dead(self.report_refusal(&refresh_token, error)));
                }
                Err(error) => {
                    // Refused for another reason, or lost on the way: give the lease back and retry later with
                    // the same refresh token (if GitHub did rotate and the answer was lost, the retry is refused
                    // and the user must authorize again: nothing else can recover a pair lost in transit).
                    let _ = self
                        .store
                        .compare_and_swap(&self.key, Some(claim.version), &released(record).encode(claim.version + 1))
                        .await;
                    return Err(Failure::alive(error));
                }
            }
        }
    }

    /// Whether a stored pair can serve as it is (not due for a refresh).
    fn is_fresh(&self, record: &Record, now: SystemTime) -> bool {
        let Some(expires_at) = record.expires_at else {
            return true;
        };
        let lifetime = Duration::from_millis(u64::try_from(expires_at - record.issued_at).unwrap_or(0));
        let left = Duration::from_millis(u64::try_from(expires_at - ms(now)).unwrap_or(0));
        left > self.refresh_before.min(lifetime / 3).mul_f64(1.2)
    }

    /// Saves a pair GitHub rotated, replacing version `replaces`. Until it is saved, it stays in memory and every
    /// rotation starts by saving it.
    async fn save(&self, tokens: UserTokens, replaces: Option<u64>) -> Result<Current, Failure> {
        let issued_at = SystemTime::now();
        let record = Record::new(&tokens, issued_at);
        let mut expected = replaces;
        for _ in 0..4 {
            let new = record.encode(expected.map_or(1, |v| v + 1));
            match self.store.compare_and_swap(&self.key, expected, &new).await {
                Ok(true) => {
                    let was_unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).take().is_some();
                    if was_unsaved {
                        tracing::warn!(key = %crate::error::scrub(&self.key), "the rotated user token pair is saved now");
                    }
                    *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(new.version);
                    return Ok(Current { tokens, issued_at });
                }
                Ok(false) => {
                    // The record changed under the lease: it ran out and another holder took over (GitHub refused
                    // it the spent refresh token), or a sign-in wrote a fresh pair.
                    let current = match self.store.load(&self.key).await {
                        Ok(current) => current,
                        Err(e) => return Err(self.unsaved(tokens, expected, "read", e)),
                    };
                    if let Some(current) = &current
                        && let Ok(theirs) = Record::decode(current)
                        && theirs.reauthorize.is_none()
                        && theirs.lease.is_none()
                        && theirs.refresh_token != tokens.refresh_token
                        && self.is_fresh(&theirs, SystemTime::now())
                        && theirs.issued_at > record.issued_at - self.lease.as_millis() as i64 * 2
                    {
                        tracing::warn!(
                            key = %crate::error::scrub(&self.key),
                            "a sign-in replaced the user's tokens during a rotation; using the signed-in pair"
                        );
                        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).take();
                        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(current.version);
                        return Ok(Current { tokens: theirs.tokens(), issued_at: at(theirs.issued_at) });
                    }
                    expected = current.map(|c| c.version);
                }
                Err(e) => return Err(self.unsaved(tokens, expected, "write", e)),
            }
        }
        Err(self.unsaved(tokens, expected, "write", "the record kept changing under the rotation".into()))
    }

    /// Keeps a pair the store did not take, and says so loudly.
    fn unsaved(&self, tokens: UserTokens, replaces: Option<u64>, what: &str, error: crate::BoxError) -> Failure {
        *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()) = Some((tokens, replaces));
        let error = Error::build(
            ErrorKind::Store,
            format!(
                "GitHub rotated the tokens of {:?} but the store failed to {what} them ({}): the new pair is kept \
                 in memory and saved as soon as the store takes it (requests fail until then; do not stop the process)",
                crate::error::scrub(&self.key),
                crate::error::scrub(&error.to_string()),
            ),
        )
        .source(error)
        .finish();
        self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(key = %crate::error::scrub(&self.key), %error, "user token pair not saved");
        if let Some(callback) = &self.on_store_error {
            callback(&error);
        }
        Failure::dead(error)
    }

    fn store_error(&self, what: &str, error: crate::BoxError, retrying: bool) -> Error {
        let error = Error::build(
            ErrorKind::Store,
            format!(
                "the user token store failed to {what} the record of {:?} ({}){}",
                crate::error::scrub(&self.key),
                crate::error::scrub(&error.to_string()),
                if retrying { "; retrying with backoff" } else { "" }
            ),
        )
        .source(error)
        .finish();
        self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %crate::error::scrub(&self.key), %error, "user token store failed");
        if let Some(callback) = &self.on_store_error {
            callback(&error);
        }
        error
    }

    fn report_refusal(&self, refresh_token: &str, error: Error) -> Error {
        self.report(Some(refresh_token), error)
    }

    /// The re-authorization error for `why`, reported once per refresh token (once for "no tokens").
    fn reauthorization_required(&self, refresh_token: Option<&str>, why: String) -> Error {
        let error = Error::new(
            ErrorKind::ReauthorizationRequired,
            if why.contains("authorize") { why } else { format!("{why}: the user must authorize the App again") },
        );
        self.report(refresh_token, error)
    }

    fn report(&self, refresh_token: Option<&str>, error: Error) -> Error {
        let print = refresh_token.map_or(0, fingerprint);
        let first = {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            let first = *refused != Some(print);
            *refused = Some(print);
            first
        };
        if first {
            self.counters.reauthorizations.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %crate::error::scrub(&self.key), %error, "the user must authorize the App again");
            if let Some(callback) = &self.on_reauthorization_required {
                callback(&error);
            }
        }
        error
    }

    /// Writes a signed-in pair over whatever the store holds; clears a refusal.
    pub(crate) async fn sign_in(&self, tokens: &UserTokens) -> Result<(), Error> {
        let record = Record::new(tokens, SystemTime::now());
        self.overwrite(&record, "sign-in").await?;
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).take();
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
        self.overwrite(&out, "sign-out").await?;
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    /// Whether the store holds a pair not known to need re-authorization.
    pub(crate) async fn is_signed_in(&self) -> Result<bool, Error> {
        let stored = self.store.load(&self.key).await.map_err(|e| self.store_error("read", e, false))?;
        Ok(match stored {
            Some(stored) => Record::decode(&stored)?.reauthorize.is_none(),
            None => false,
        })
    }

    /// Replaces the record, whatever its version, once the rotation under way in this source (if any) ended.
    async fn overwrite(&self, record: &Record, what: &str) -> Result<(), Error> {
        let _one = self.running.lock().await;
        for _ in 0..8 {
            let current = self.store.load(&self.key).await.map_err(|e| self.store_error("read", e, false))?;
            let expected = current.as_ref().map(|c| c.version);
            let next = record.encode(expected.map_or(1, |v| v + 1));
            let swapped = self
                .store
                .compare_and_swap(&self.key, expected, &next)
                .await
                .map_err(|e| self.store_error("write", e, false))?;
            if swapped {
                return Ok(());
            }
        }
        Err(Error::new(ErrorKind::Store, format!("the user token record kept changing during the {what}; try again")))
    }
}
