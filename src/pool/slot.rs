//! One entry of the pool: the current token of one installation for one scope.
//!
//! Owns the `ArcSwap` that requests read, the token it replaced (kept while requests that carried it may still
//! be answered), a token minted and waiting out its replication grace, the single flight of mints, and the
//! failure that makes waiters fail fast during a backoff. It does not decide when to refresh (the
//! [`scheduler`](super::scheduler) does) and does not send requests (the pool's minter does).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::Counters;
use crate::error::Error;
use crate::installation::TokenScope;
use crate::installation::token::{TokenEntry, replace_current, take_current_if};
use crate::source::Invalidate;

/// What a pool entry is for: an installation and the scope of its tokens. The API origin and the App are the
/// pool's own, so together they make the key (origin, App, installation, scope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    pub(crate) installation: u64,
    pub(crate) scope: Option<Arc<TokenScope>>,
}

/// A borrowed [`SlotKey`], to look entries up without allocating. Hashes exactly as `SlotKey` does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotKeyRef<'a> {
    pub(crate) installation: u64,
    pub(crate) scope: Option<&'a TokenScope>,
}

impl Hash for SlotKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.installation.hash(state);
        self.scope.hash(state);
    }
}

impl equivalent::Equivalent<SlotKey> for SlotKeyRef<'_> {
    fn equivalent(&self, key: &SlotKey) -> bool {
        self.installation == key.installation && self.scope == key.scope.as_deref()
    }
}

impl SlotKey {
    pub(crate) fn borrowed(&self) -> SlotKeyRef<'_> {
        SlotKeyRef { installation: self.installation, scope: self.scope.as_deref() }
    }
}

/// What a slot keeps only while minting or failing.
#[derive(Default)]
struct Busy {
    /// Held by whoever mints for the slot: one mint at a time, however many requests wait.
    flight: Arc<tokio::sync::Mutex<()>>,
    /// The last failed mint and until when waiters fail fast with it.
    failure: Option<(Instant, Error)>,
    /// Mints that failed in a row.
    failures: u32,
}

/// The tokens of one installation and scope.
pub(crate) struct Slot {
    pub(crate) key: SlotKey,
    /// The token requests use. `None` before the first mint, after an invalidation, and once withdrawn.
    pub(crate) current: ArcSwapOption<TokenEntry>,
    /// The token before the current one.
    previous: ArcSwapOption<TokenEntry>,
    /// A token minted by a scheduled refresh, waiting out its replication grace while the current one serves.
    pending: ArcSwapOption<TokenEntry>,
    /// A mint in flight, or failures remembered: allocated only then (a pool holds thousands of slots).
    busy: Mutex<Option<Box<Busy>>>,
    /// Set by requests (only when it was clear: one write per refresh period), cleared by the scheduler at each
    /// refresh: a slot nobody used since its last refresh is not refreshed again, and is evicted.
    pub(crate) used: AtomicBool,
    /// Set once the slot left the pool (evicted, forgotten): requests holding it look again.
    pub(crate) retired: AtomicBool,
    counters: Arc<Counters>,
}

impl Slot {
    pub(crate) fn new(key: SlotKey, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Slot {
            key,
            current: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            pending: ArcSwapOption::empty(),
            busy: Mutex::new(None),
            used: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            counters,
        })
    }

    /// Where its tokens' `invalidate` goes.
    pub(crate) fn as_source(this: &Arc<Slot>) -> Weak<dyn Invalidate> {
        Arc::downgrade(this) as Weak<dyn Invalidate>
    }

    /// Marks the slot used (a relaxed load per request; a store once per refresh period).
    #[inline]
    pub(crate) fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// The current token if it is still usable for requests (or has `validity` left).
    pub(crate) fn valid(&self, validity: Option<Duration>) -> Option<Arc<TokenEntry>> {
        let current = self.current.load();
        let token = current.as_ref()?;
        let now = Instant::now();
        let valid = match validity {
            None => now < token.usable_until(),
            Some(validity) => token.is_valid_for(now, validity),
        };
        valid.then(|| Arc::clone(token))
    }

    /// Publishes `token`, keeping the one it replaces as `previous`. (Its refresh, queued before its end of use,
    /// is what the watchdog watches: see the [scheduler](super::scheduler).)
    /// Returns false if the slot was retired meanwhile (then the token may be in it: `retire` again takes it).
    pub(crate) fn publish(&self, token: Arc<TokenEntry>) -> bool {
        replace_current(&self.current, &self.previous, Some(token));
        // Waiters that hold the flight still take it, then find this token.
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Pairs with `retire`: either its swap saw this token, or this sees the flag.
        !self.retired.load(Ordering::SeqCst)
    }

    /// The lock whoever mints for the slot holds.
    pub(crate) fn flight(&self) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&busy.get_or_insert_with(Default::default).flight)
    }

    /// Mints that failed in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |busy| busy.failures)
    }

    /// Keeps `token` until [`take_pending`](Self::take_pending), while the current one still serves.
    pub(crate) fn set_pending(&self, token: Arc<TokenEntry>) {
        self.pending.store(Some(token));
    }

    /// Takes the token waiting out its replication grace, if it is still there.
    pub(crate) fn take_pending(&self) -> Option<Arc<TokenEntry>> {
        self.pending.swap(None)
    }

    /// The failure waiters should get now, if a mint failed and its backoff runs.
    pub(crate) fn failure(&self) -> Option<Error> {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let (until, error) = busy.as_ref()?.failure.as_ref()?;
        (Instant::now() < *until).then(|| error.clone())
    }

    pub(crate) fn set_failure(&self, error: Error, until: Instant) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let busy = busy.get_or_insert_with(Default::default);
        busy.failures += 1;
        busy.failure = Some((until, error));
    }

    /// Takes the slot out of service: requests holding it look again, and nothing is published into it.
    /// Returns the tokens it held (current, pending, previous), for revocation.
    pub(crate) fn retire(&self) -> Vec<Arc<TokenEntry>> {
        self.retired.store(true, Ordering::SeqCst);
        let mut tokens: Vec<Arc<TokenEntry>> = Vec::new();
        tokens.extend(self.current.swap(None));
        tokens.extend(self.pending.swap(None));
        tokens.extend(self.previous.swap(None));
        tokens
    }

    /// Withdraws the current token if its time for requests is over at `now` (real clock): requests never read
    /// the clock, so when no scheduler replaces it, the watchdog takes it away. Returns when the token it keeps
    /// must go, if it keeps one.
    pub(crate) fn withdraw_if_spent(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let spent = |token: &TokenEntry| now >= token.usable_until_real;
        if let Some(token) = take_current_if(&self.current, &self.previous, spent) {
            tracing::warn!(
                installation = self.key.installation,
                serial = token.serial,
                "installation token withdrawn: no replacement before its end of use"
            );
        }
        self.current.load().as_ref().map(|token| token.usable_until_real)
    }

    /// The fingerprints of its current and previous tokens: a shared store must not hand either back (one is
    /// due, or GitHub refused it).
    pub(crate) fn fingerprints(&self) -> [Option<crate::shared::Fingerprint>; 2] {
        crate::shared::known(&self.current, &self.previous)
    }

    /// Whether it holds the token with this serial (current, previous, or waiting out its grace).
    pub(crate) fn holds(&self, serial: u64) -> bool {
        [&self.current, &self.previous, &self.pending]
            .iter()
            .any(|token| token.load().as_ref().is_some_and(|token| token.serial == serial))
    }

    /// When its newest token must be replaced, if it has one: the refreshed token waiting out its replication
    /// grace, else the current one. (A refresh queued for an older token that fires during the grace is stale,
    /// not due: its slot was just refreshed, and is not idle for being unused in those seconds.)
    pub(crate) fn refresh_at(&self) -> Option<Instant> {
        let pending = self.pending.load();
        let current = self.current.load();
        pending.as_ref().or(current.as_ref()).map(|token| token.refresh_at())
    }
}

impl Invalidate for Slot {
    fn invalidate(&self, serial: u64) -> bool {
        let dropped = take_current_if(&self.current, &self.previous, |token| token.serial == serial).is_some();
        if dropped {
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::invalidated("installation");
            tracing::info!(installation = self.key.installation, serial, "installation token invalidated");
        }
        dropped
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).finish_non_exhaustive()
    }
}
