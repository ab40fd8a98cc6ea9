//! The token source: the current token of one installation, and the one task that replaces it.
//!
//! Owns the `ArcSwap` every request reads, the refresher task (the only code that mints), and the hand-off
//! between the two: requests that find no usable token ask the refresher and wait for its next outcome. It does
//! not know HTTP beyond calling [`mint_once`].
//!
//! The refresher runs on the Tokio runtime of the request that first needed it, and nothing here trusts that
//! runtime to stay alive or to be driven:
//! - Its state (the guard that marks it stopped) is part of its future from the moment it is spawned, so a
//!   runtime that drops it unpolled still leaves the source restartable.
//! - When it stops (runtime shut down), the current token is *parked*, not discarded: the next request restores
//!   it at once and starts a new refresher on its own runtime, without a mint or a wait.
//! - When its runtime is alive but not driven (a `current_thread` runtime nobody blocks on), the
//!   [`watchdog`](super::watchdog) thread notices that it overslept and parks the token the same way, and
//!   withdraws any token whose time for requests is over; a request waiting for a mint that nobody starts takes
//!   over after [`ACK_PATIENCE`]. Each refresher carries a generation, and one that was replaced exits at its
//!   next step without publishing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::mint::{MintClient, MintParams, Minted, mint_correcting_skew};
use super::token::{TokenEntry, replace_current, take_current_if};
use super::watchdog::{self, Registration, Watched};
use crate::app::GitHubApp;
use crate::error::{Error, ErrorKind};
use crate::shared::{AlwaysTurn, Origin, SharedTokens, known, mint_through};
use crate::telemetry::{self, Got};
use crate::user::rotation::Rotation;

/// How long a request that needs a token waits for the refresher to take up its demand before it concludes that
/// the refresher's runtime is not running it, and starts a new refresher on its own runtime.
pub(crate) const ACK_PATIENCE: Duration = Duration::from_millis(500);

/// How far past the moment it said it would wake a refresher may be before the watchdog counts it as stalled.
pub(crate) const OVERSLEEP: Duration = Duration::from_millis(200);

/// The real-clock moment matching a moment on the Tokio clock (which tests pause and advance).
pub(crate) fn real_time(at: Instant) -> std::time::Instant {
    std::time::Instant::now() + at.saturating_duration_since(Instant::now())
}

/// When tokens are used and replaced. See the builder methods of [`InstallationBuilder`](super::InstallationBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) refresh_before: Duration,
    pub(crate) min_remaining: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) replication_grace: Duration,
}

impl Timing {
    /// Turns a received token into an entry: when requests stop using it and when it is replaced. Both scale
    /// down for short-lived tokens (test servers), and the refresh time is jittered so installations that were
    /// minted together do not refresh together.
    pub(crate) fn entry(
        &self,
        minted: Minted,
        installation_id: u64,
        scoped: bool,
        source: std::sync::Weak<dyn crate::source::Invalidate>,
    ) -> TokenEntry {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let lifetime = minted.expires.saturating_duration_since(minted.received_at);
        let margin = self.min_remaining.min(lifetime / 10);
        let ahead = self.refresh_before.min(lifetime / 3).mul_f64(1.0 + fastrand::f64() * 0.2);
        TokenEntry {
            authorization: minted.authorization,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            installation_id,
            expires_at_ms: TokenEntry::millis_since_epoch(minted.expires_at),
            received_at: minted.received_at,
            expires_ms: 0,
            usable_ms: 0,
            refresh_ms: 0,
            usable_until_real: real_time(minted.expires - margin),
            scoped,
            shared: false,
            details: minted.details.intern(),
            source,
            replication: Default::default(),
            age_at_use: telemetry::AgeAtUse::new(telemetry::kind(installation_id)),
        }
        .with_times(
            minted.expires,
            minted.expires - margin,
            if minted.refreshable { minted.expires - ahead } else { minted.expires - margin },
        )
    }
}

#[derive(Clone, Debug)]
enum Status {
    /// No attempt has finished since the refresher started.
    Idle,
    /// An attempt is under way.
    Minting,
    /// The last attempt succeeded.
    Ready,
    /// The last attempt failed; the refresher waits out its backoff.
    Failed(Error),
    /// The refresher is not running (its runtime shut down, or every handle was dropped).
    Stopped,
}

#[derive(Default)]
struct Counters {
    mints: AtomicU64,
    shared: AtomicU64,
    failed_mints: AtomicU64,
    waited_requests: AtomicU64,
    invalidations: AtomicU64,
    refresher_starts: AtomicU64,
}

/// Counts of what a token source did, for tests, demos and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct InstallationStats {
    /// Tokens minted (by this process).
    pub mints: u64,
    /// Tokens taken from the [shared store](crate::InstallationBuilder::shared_store), minted by another process.
    pub shared: u64,
    /// Mint attempts that failed.
    pub failed_mints: u64,
    /// Requests (and `token()` calls) that found no usable token and waited for a mint.
    pub waited_requests: u64,
    /// Tokens dropped because GitHub refused them (see [`InstallationTokenUsed::invalidate`](crate::InstallationTokenUsed::invalidate)).
    pub invalidations: u64,
    /// Times a refresher task was started: once at first use, and again whenever the runtime running it shut
    /// down or stopped driving it.
    pub refresher_starts: u64,
}

/// Which refresher is the live one.
struct Refresher {
    /// Bumped for every refresher started; a refresher whose generation is no longer current exits.
    generation: u64,
    running: bool,
    /// Wakes the live refresher (each generation has its own, so a replaced one cannot swallow a wake-up).
    wake: Arc<Notify>,
    /// The runtime it was spawned on, to ask whether that runtime still runs tasks.
    runtime: Option<tokio::runtime::Handle>,
}

/// How a refresher is started.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Unless one is running.
    IfStopped,
    /// In place of generation `n`, which does not make progress (unless that was already done).
    Replacing(u64),
}

/// State shared by every handle of one installation and its refresher task.
pub(crate) struct Shared {
    pub(crate) minter: Minter,
    pub(crate) params: MintParams,
    pub(crate) scoped: bool,
    timing: Timing,
    /// Set by a sign-in: the refresher's next step mints (adopts) at once, whatever backoff runs.
    retry_now: std::sync::atomic::AtomicBool,
    /// Taken by publishing a minted token and by [`mint_now`](Shared::mint_now) (a sign-in or sign-out), so a user
    /// token rotated before a sign-in or sign-out is never published after it.
    epoch_gate: Mutex<()>,
    /// Sign-ins and sign-outs so far (bumped under `epoch_gate`): a token taken aside (parked, withdrawn) before
    /// one is not put back after it.
    signins: AtomicU64,
    /// The token requests use. `None` before the first mint, after an invalidation, and while parked.
    pub(crate) current: ArcSwapOption<TokenEntry>,
    /// The token before the current one, kept alive while requests that carried it may still be answered.
    previous: ArcSwapOption<TokenEntry>,
    /// A usable token taken from requests because its refresher stopped or stalled, with that refresher's
    /// generation. The next request that needs a token restores it and starts a refresher on its own runtime.
    parked: Mutex<Option<(Arc<TokenEntry>, u64)>>,
    /// A token minted and waiting out its replication grace before it is published: if its refresher stops
    /// meanwhile, this one is parked (not the older current one), so the mint is not wasted.
    pending: Mutex<Option<Arc<TokenEntry>>>,
    /// The lifetime of the last token received, in milliseconds (0 before the first): `token_valid_for` asks
    /// for longer are refused without minting.
    lifetime_ms: AtomicU64,
    status: watch::Sender<Status>,
    refresher: Mutex<Refresher>,
    /// When the live refresher will next wake at the latest, on the real clock (nanoseconds after `EPOCH`).
    wakes_by: AtomicU64,
    /// When a probe last ran on the refresher's runtime (nanoseconds after `EPOCH`), and whether one is out.
    runtime_seen: AtomicU64,
    probing: std::sync::atomic::AtomicBool,
    /// The longest validity a caller of `token_valid_for` asked for since the last mint.
    wanted: Mutex<Option<Duration>>,
    counters: Counters,
    watchdog: Registration,
    this: Weak<Shared>,
}

/// The origin of `wakes_by`.
pub(crate) fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// How a source gets its tokens.
pub(crate) enum Minter {
    /// An installation token: the App's JWT traded at the API (or taken from the store other processes share).
    Installation { app: GitHubApp, client: MintClient, store: Option<Arc<dyn SharedTokens>> },
    /// A user access token: rotated through the store and the web origin.
    User(Arc<Rotation>),
}

impl Shared {
    pub(crate) fn new(minter: Minter, params: MintParams, scoped: bool, timing: Timing) -> Arc<Self> {
        Arc::new_cyclic(|this| Shared {
            minter,
            params,
            scoped,
            timing,
            retry_now: Default::default(),
            epoch_gate: Mutex::new(()),
            signins: AtomicU64::new(0),
            current: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            parked: Mutex::new(None),
            status: watch::Sender::new(Status::Idle),
            refresher: Mutex::new(Refresher {
                generation: 0,
                running: false,
                wake: Arc::new(Notify::new()),
                runtime: None,
            }),
            pending: Mutex::new(None),
            lifetime_ms: AtomicU64::new(0),
            wakes_by: AtomicU64::new(u64::MAX),
            runtime_seen: AtomicU64::new(0),
            probing: Default::default(),
            wanted: Mutex::new(None),
            counters: Counters::default(),
            watchdog: Registration::new(),
            this: this.clone(),
        })
    }

    /// The current token if it has `validity` left (or, for `None`, is still usable for requests).
    fn valid_token(&self, validity: Option<Duration>) -> Option<Arc<TokenEntry>> {
        let current = self.current.load();
        let token = current.as_ref()?;
        is_valid(token, Instant::now(), validity).then(|| Arc::clone(token))
    }

    /// Makes `token` current, keeping the one it replaces as `previous`.
    fn replace_current(&self, token: Option<Arc<TokenEntry>>) {
        if let Some(token) = &token {
            self.watch_until(token.usable_until_real);
        }
        replace_current(&self.current, &self.previous, token);
    }

    /// Drops the token with this serial if it is still the current one, and asks for a new one.
    pub(crate) fn invalidate_serial(&self, serial: u64) -> bool {
        let dropped = take_current_if(&self.current, &self.previous, |token| token.serial == serial).is_some();
        if dropped {
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
            telemetry::invalidated(self.kind());
            tracing::info!(
                installation = self.params.installation_id,
                serial,
                kind = self.kind(),
                "token invalidated; getting a new one"
            );
            self.wake_refresher();
        }
        dropped
    }

    /// Takes the current token from requests if `spent` says so. Returns it if it was taken.
    fn take_current_if(&self, spent: impl Fn(&TokenEntry) -> bool) -> Option<Arc<TokenEntry>> {
        take_current_if(&self.current, &self.previous, spent)
    }

    /// Withdraws the current token if its time for requests is over.
    fn withdraw_if_spent(&self, now: Instant) {
        if let Some(token) = self.take_current_if(|token| now >= token.usable_until()) {
            tracing::warn!(
                installation = self.params.installation_id,
                serial = token.serial,
                "installation token withdrawn: no replacement before its end of use"
            );
        }
    }

    /// Takes the current token from requests because the refresher of `generation` stopped or stalled; the next
    /// request that needs a token restores it and starts a new refresher.
    fn park(&self, generation: u64) {
        let current = self.take_current_if(|_| true);
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The newest token there is: one minted and still in its replication grace beats the current one.
        if let Some(token) = pending.or(current) {
            *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, generation));
        }
    }

    /// Takes a token minted by a refresher that was replaced meanwhile, if it is newer than what there is, so
    /// its mint is not wasted.
    fn adopt(&self, token: Arc<TokenEntry>, epoch: Option<u64>) {
        let _gate = self.epoch_gate.lock().unwrap_or_else(|e| e.into_inner());
        if !self.in_epoch(epoch) {
            return;
        }
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((older, _)) = parked.as_mut() {
            if older.expires() < token.expires() {
                *older = token;
            }
            return;
        }
        drop(parked);
        let newer = |current: &Option<Arc<TokenEntry>>| current.as_ref().is_none_or(|c| c.expires() < token.expires());
        if newer(&self.current.load()) {
            self.replace_current(Some(Arc::clone(&token)));
            self.status.send_replace(Status::Ready);
        }
    }

    /// When the refresher should mint next.
    fn next_mint(&self, now: Instant, retry_at: Option<Instant>) -> Instant {
        let current = self.current.load();
        let wanted = *self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let needed = match current.as_deref() {
            None => true,
            Some(token) => now >= token.usable_until() || wanted.is_some_and(|w| !token.is_valid_for(now, w)),
        };
        match (needed, retry_at, current.as_deref()) {
            (_, Some(retry_at), _) => retry_at,
            (false, None, Some(token)) => token.refresh_at(),
            _ => now,
        }
    }

    /// The longest a mint can take: signing the JWT and the token request, both bounded by `mint_timeout`, plus
    /// a moment to publish.
    fn mint_budget(&self) -> Duration {
        match &self.minter {
            Minter::Installation { store: None, .. } => self.params.timeout + Duration::from_secs(1),
            // Waiting for another process's mint, then minting here.
            Minter::Installation { store: Some(store), .. } => store.budget(self.params.timeout),
            // Up to three rotations when sign-ins keep coming in between.
            Minter::User(rotation) => rotation.budget().saturating_mul(3),
        }
    }

    /// What kind of token the source keeps, for logs (a user source logs installation 0).
    pub(crate) fn kind(&self) -> &'static str {
        match &self.minter {
            Minter::Installation { .. } => "installation",
            Minter::User(_) => "user",
        }
    }

    /// The App, for an installation source.
    pub(crate) fn app(&self) -> Option<&GitHubApp> {
        match &self.minter {
            Minter::Installation { app, .. } => Some(app),
            Minter::User(_) => None,
        }
    }

    /// Asks the refresher to mint at once, ending any backoff (a sign-in).
    pub(crate) fn mint_now(&self) {
        self.retry_now.store(true, Ordering::Release);
        {
            // Nothing from before the sign-in or sign-out serves after it: not the current token, not one parked
            // for a stopped refresher, not one waiting out its grace.
            let _gate = self.epoch_gate.lock().unwrap_or_else(|e| e.into_inner());
            self.signins.fetch_add(1, Ordering::AcqRel);
            self.take_current_if(|_| true);
            self.parked.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        if matches!(*self.status.borrow(), Status::Failed(_)) {
            self.status.send_replace(Status::Idle);
        }
        self.wake_refresher();
    }

    /// Publishes a freshly minted token, unless it was rotated before a sign-in or sign-out that came since (then
    /// the caller mints again). Returns whether it was published.
    fn publish_minted(&self, token: Arc<TokenEntry>, epoch: Option<u64>) -> bool {
        let _gate = self.epoch_gate.lock().unwrap_or_else(|e| e.into_inner());
        if !self.in_epoch(epoch) {
            return false;
        }
        self.replace_current(Some(token));
        true
    }

    /// Puts a token taken aside back as the current one (if there is none), unless a sign-in or sign-out came since
    /// `seen` (the count of them when it was taken). Returns whether it was put back.
    fn restore(&self, token: Arc<TokenEntry>, seen: u64) -> bool {
        let _gate = self.epoch_gate.lock().unwrap_or_else(|e| e.into_inner());
        if self.signins.load(Ordering::Acquire) != seen {
            return false;
        }
        self.current.compare_and_swap(&None::<Arc<TokenEntry>>, Some(token)).is_none()
    }

    /// Whether a token minted in sign-in `epoch` (`None`: an installation token) may still be published.
    fn in_epoch(&self, epoch: Option<u64>) -> bool {
        match (&self.minter, epoch) {
            (Minter::User(rotation), Some(epoch)) => rotation.epoch() == epoch,
            _ => true,
        }
    }

    /// One mint, in a `mint` span that names the token it got (by serial) and how long it lasts.
    async fn mint(self: &Arc<Self>) -> Result<(TokenEntry, Option<u64>), Error> {
        let span = telemetry::mint_span(self.params.installation_id, self.kind(), self.scoped);
        let outcome = self.mint_once().instrument(span.clone()).await;
        if let Ok((token, _)) = &outcome {
            telemetry::minted_in(&span, token);
        }
        outcome
    }

    /// One mint: an installation token (corrected once for clock skew), or a user token rotation.
    async fn mint_once(self: &Arc<Self>) -> Result<(TokenEntry, Option<u64>), Error> {
        let started = Instant::now();
        let source: Weak<dyn crate::source::Invalidate> = Arc::downgrade(self) as _;
        let (minted, epoch) = match &self.minter {
            Minter::Installation { app, client, store } => {
                let failed = |error: &Error| {
                    self.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
                    telemetry::mint_failed(self.kind(), error);
                    tracing::warn!(installation = self.params.installation_id, %error, "retrying the mint with a corrected clock");
                };
                let mint = || mint_correcting_skew(app, client, &self.params, failed);
                let (minted, origin) = match store {
                    None => (mint().await?, Origin::Minted),
                    Some(store) => {
                        let known = known(&self.current, &self.previous);
                        let refresh_before = self.timing.refresh_before;
                        mint_through(&**store, app, &self.params, known, refresh_before, &AlwaysTurn, mint).await?
                    }
                };
                let (counter, got) = match origin {
                    Origin::Minted | Origin::ForFleet => (&self.counters.mints, Got::Minted),
                    Origin::Adopted => (&self.counters.shared, Got::Shared),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                telemetry::minted(self.kind(), got, started.elapsed());
                (minted, None)
            }
            Minter::User(rotation) => {
                // Spending the refresh token kills the access token requests hold: they wait for the new one.
                // Kept aside, it comes back if the refresh fails before GitHub could have rotated. The rotation runs
                // in a task of its own: once it has spent the refresh token it must save the new pair, even if
                // this future is dropped (the last handle gone, the refresher replaced).
                // A sign-in or sign-out during the rotation wins over it: the rotation runs again (and adopts
                // the signed-in pair, or finds the user signed out).
                let seen = self.signins.load(Ordering::Acquire);
                let mut tries = 0;
                let ((outcome, withdrawn), epoch) = loop {
                    let epoch = rotation.epoch();
                    let (shared, rotating) = (Arc::clone(self), Arc::clone(rotation));
                    let task = tokio::spawn(async move {
                        let withdrawn: Mutex<Option<Arc<TokenEntry>>> = Mutex::new(None);
                        let withdraw = || {
                            let taken = shared.take_current_if(|_| true);
                            *withdrawn.lock().unwrap_or_else(|e| e.into_inner()) = taken;
                        };
                        let outcome = rotating.rotate(&withdraw, epoch).await;
                        (outcome, withdrawn.into_inner().unwrap_or_else(|e| e.into_inner()))
                    });
                    // (The panic's payload is not shown: it could be anything the user's store or client held.)
                    let done = task.await.map_err(|join| {
                        let how = if join.is_panic() { "panicked" } else { "was cancelled" };
                        Error::new(ErrorKind::Runtime, format!("the user token rotation task {how}; retrying"))
                    })?;
                    tries += 1;
                    if rotation.epoch() == epoch {
                        break (done, Some(epoch));
                    }
                    if tries == 3 {
                        self.take_current_if(|_| true);
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            "the user's tokens were signed in or out during three rotations in a row; retrying",
                        ));
                    }
                };
                match outcome {
                    Ok(current) => {
                        self.counters.mints.fetch_add(1, Ordering::Relaxed);
                        telemetry::minted(self.kind(), Got::Minted, started.elapsed());
                        (crate::user::minted(current)?, epoch)
                    }
                    Err(failure) => {
                        if failure.current_dead {
                            self.take_current_if(|_| true);
                        } else if let Some(token) = withdrawn
                            && Instant::now() < token.usable_until()
                        {
                            self.restore(token, seen);
                        }
                        return Err(failure.error);
                    }
                }
            }
        };
        Ok((self.timing.entry(minted, self.params.installation_id, self.scoped, source), epoch))
    }

    fn backoff(&self, failures: u32, now: Instant) -> Duration {
        let exponential = self.timing.backoff_min.saturating_mul(1 << (failures.saturating_sub(1)).min(20));
        let delay = exponential.min(self.timing.backoff_max).mul_f64(0.5 + fastrand::f64() * 0.5);
        // While the old token is still usable, try again at least twice before it runs out.
        match self.current.load().as_deref() {
            Some(token) if token.usable_until() > now => {
                delay.min(((token.usable_until() - now) / 2).max(self.timing.backoff_min))
            }
            _ => delay,
        }
    }

    pub(crate) fn stats(&self) -> InstallationStats {
        let c = &self.counters;
        InstallationStats {
            mints: c.mints.load(Ordering::Relaxed),
            shared: c.shared.load(Ordering::Relaxed),
            failed_mints: c.failed_mints.load(Ordering::Relaxed),
            waited_requests: c.waited_requests.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            refresher_starts: c.refresher_starts.load(Ordering::Relaxed),
        }
    }

    fn generation(&self) -> u64 {
        self.refresher.lock().unwrap_or_else(|e| e.into_inner()).generation
    }

    /// Whether the refresher of `generation` should go on. One the watchdog retired for oversleeping (its runtime
    /// was busy or idle) takes itself back when it runs again, unless a newer one was started meanwhile: running
    /// proves its runtime runs.
    fn is_live(&self, generation: u64) -> bool {
        let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        if refresher.generation != generation {
            return false;
        }
        if !refresher.running {
            refresher.running = true;
            drop(refresher);
            tracing::info!(installation = self.params.installation_id, "the token refresher's runtime runs again");
            // Its token, if nobody restored it meanwhile, serves again.
            let seen = self.signins.load(Ordering::Acquire);
            let restored = {
                let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
                match parked.take() {
                    Some((token, g)) if g == generation => Some(token),
                    other => {
                        *parked = other;
                        None
                    }
                }
            };
            if let Some(token) = restored {
                self.restore(token, seen);
            }
            if matches!(*self.status.borrow(), Status::Stopped) {
                self.status.send_replace(Status::Ready);
            }
        }
        true
    }

    /// Whether the runtime that runs the refresher still runs tasks: a probe spawned there must run within
    /// [`ACK_PATIENCE`]. Measured on the real clock, so it works from any runtime.
    /// One probe at a time, however many requests wait: the others take the last answer.
    async fn refresher_runtime_runs(self: &Arc<Self>) -> bool {
        let now = || std::time::Instant::now().saturating_duration_since(epoch()).as_nanos() as u64;
        let recently = |seen: u64| now().saturating_sub(seen) < ACK_PATIENCE.as_nanos() as u64 * 2;
        if recently(self.runtime_seen.load(Ordering::Acquire)) || self.probing.swap(true, Ordering::AcqRel) {
            return true;
        }
        // Cleared however this future ends (it may be dropped with its request).
        struct Probing<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Probing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _probing = Probing(&self.probing);
        let runtime = self.refresher.lock().unwrap_or_else(|e| e.into_inner()).runtime.clone();
        let Some(runtime) = runtime else {
            return false;
        };
        let (ran, probe) = tokio::sync::oneshot::channel::<()>();
        let this = Arc::clone(self);
        drop(runtime.spawn(async move {
            this.runtime_seen.store(now(), Ordering::Release);
            let _ = ran.send(());
        }));
        tokio::select! {
            answered = probe => answered.is_ok(),
            _ = watchdog::sleep(ACK_PATIENCE) => false,
        }
    }

    fn wake_refresher(&self) {
        let wake = Arc::clone(&self.refresher.lock().unwrap_or_else(|e| e.into_inner()).wake);
        wake.notify_one();
    }

    /// Tells the watchdog when the live refresher will wake at the latest.
    fn heartbeat(&self, wakes_by: Instant) {
        let real = real_time(wakes_by);
        let nanos = real.saturating_duration_since(epoch()).as_nanos().min(u128::from(u64::MAX - 1)) as u64;
        self.wakes_by.store(nanos, Ordering::Release);
        self.watch_until(real + OVERSLEEP);
    }

    /// Asks the watchdog to look at this source at `at` at the latest.
    fn watch_until(&self, at: std::time::Instant) {
        let this: Weak<dyn Watched> = self.this.clone();
        self.watchdog.schedule(this, at);
    }

    /// Starts a refresher on the current Tokio runtime (it stops with its runtime).
    fn start(self: &Arc<Self>, how: Start, shutdown: &watch::Sender<()>) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Runtime,
                "installation tokens are refreshed by a background task, which needs a Tokio runtime: send \
                 requests and call token() from within one (for example under #[tokio::main])",
            )
        })?;
        let (generation, wake) = {
            let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
            match how {
                Start::IfStopped if refresher.running => return Ok(()),
                Start::Replacing(stuck) if refresher.running && refresher.generation != stuck => return Ok(()),
                _ => {}
            }
            refresher.generation += 1;
            refresher.running = true;
            refresher.wake = Arc::new(Notify::new());
            refresher.runtime = Some(runtime.clone());
            (refresher.generation, Arc::clone(&refresher.wake))
        };
        self.counters.refresher_starts.fetch_add(1, Ordering::Relaxed);
        if let Start::Replacing(stuck) = how {
            tracing::warn!(
                installation = self.params.installation_id,
                replaced = stuck,
                "the token refresher's runtime is not running it; starting a new refresher on this runtime"
            );
        }
        if matches!(*self.status.borrow(), Status::Stopped | Status::Minting) {
            self.status.send_replace(Status::Idle);
        }
        self.heartbeat(Instant::now() + ACK_PATIENCE);
        // The guard is part of the future from here on: dropped unpolled (a runtime shutting down), it still
        // marks this refresher stopped.
        let guard = RunningGuard { shared: Arc::clone(self), generation };
        drop(runtime.spawn(refresh(guard, shutdown.subscribe(), wake)));
        // A runtime that is shutting down drops the task at once, and its guard marks it stopped before `spawn`
        // returns: this request runs on a runtime that cannot run anything.
        let refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        if refresher.generation == generation && !refresher.running {
            return Err(stopped());
        }
        Ok(())
    }
}

fn is_valid(token: &TokenEntry, now: Instant, validity: Option<Duration>) -> bool {
    match validity {
        None => now < token.usable_until(),
        Some(validity) => token.is_valid_for(now, validity),
    }
}

impl crate::source::Invalidate for Shared {
    fn invalidate(&self, serial: u64) -> bool {
        self.invalidate_serial(serial)
    }
}

impl Watched for Shared {
    fn check(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        // Tokens whose time for requests is over, whoever should have replaced them.
        if let Some(token) = self.take_current_if(|token| now >= token.usable_until_real) {
            tracing::warn!(
                installation = self.params.installation_id,
                serial = token.serial,
                "installation token withdrawn by the watchdog: its refresher did not replace it in time"
            );
            self.wake_refresher();
        }
        {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            if parked.as_ref().is_some_and(|(token, _)| now >= token.usable_until_real) {
                *parked = None;
            }
        }
        // A refresher that should have woken by now and did not: its runtime is not driving it.
        let (running, generation) = {
            let refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
            (refresher.running, refresher.generation)
        };
        let wakes_by = epoch() + Duration::from_nanos(self.wakes_by.load(Ordering::Acquire));
        let mut running = running;
        if running && now >= wakes_by + OVERSLEEP {
            // Retire it as if its runtime had shut down (it exits if it ever runs again): its token is parked
            // for the next request to restore, and a stale `Failed` status (its backoff will never end) gives
            // way to `Stopped`, so requests start a refresher where they run instead of failing on.
            let retired = {
                let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
                let retire = refresher.running && refresher.generation == generation;
                if retire {
                    refresher.running = false;
                }
                retire
            };
            if retired {
                tracing::warn!(
                    installation = self.params.installation_id,
                    overslept = ?now.saturating_duration_since(wakes_by),
                    "the token refresher's runtime is not running it; the next request restarts it"
                );
                self.park(generation);
                self.status.send_replace(Status::Stopped);
                running = false;
            }
        }
        let mut next: Option<std::time::Instant> = None;
        let mut consider = |at: std::time::Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Some(token) = self.current.load().as_deref() {
            consider(token.usable_until_real);
        }
        if let Some((token, _)) = self.parked.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            consider(token.usable_until_real);
        }
        if running && wakes_by + OVERSLEEP > now {
            consider(wakes_by + OVERSLEEP);
        }
        next
    }
}

/// What [`Installation`](super::Installation) handles share: the state, and the signal that ends the refresher
/// when the last handle is dropped.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    shutdown: watch::Sender<()>,
}

impl Handle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Handle { shared, shutdown: watch::Sender::new(()) }
    }

    /// The slow path: no usable token. Waits for the refresher's next outcome; fails fast while a failed
    /// mint's backoff runs, so a broken token endpoint never makes requests hang. Never depends on a runtime
    /// other than the caller's: a refresher that does not answer (its runtime idle or gone) is replaced by one
    /// started here, and the patience is measured on the real clock.
    pub(crate) async fn acquire(&self, validity: Option<Duration>) -> Result<Arc<TokenEntry>, Error> {
        let shared = &self.shared;
        if let Some(validity) = validity {
            let lifetime = Duration::from_millis(shared.lifetime_ms.load(Ordering::Relaxed));
            if !lifetime.is_zero() && validity >= lifetime {
                return Err(too_long(validity, lifetime, shared.params.installation_id));
            }
        }
        let mut status = shared.status.subscribe();
        // The serial of the current token when this call asked for a new one: a `Ready` with the same token is
        // not an answer (a restored token, or a token that was already there).
        let mut asked: Option<Option<u64>> = None;
        loop {
            // Status first, then the token: the refresher stores a token before it announces it, so every
            // token announced up to the status just read is visible below.
            let seen = status.borrow_and_update().clone();
            if let Some(token) = shared.valid_token(validity) {
                return Ok(token);
            }
            if let Some(token) = self.unpark(validity)? {
                return Ok(token);
            }
            let current_serial = shared.current.load().as_ref().map(|t| t.serial);
            match &seen {
                Status::Failed(error) => return Err(error.clone()),
                Status::Stopped if asked.is_some() => {
                    // The refresher's runtime shut down or stopped running it while we waited: start one here
                    // (an error if this runtime cannot run one either).
                    shared.start(Start::IfStopped, &self.shutdown)?;
                    shared.wake_refresher();
                }
                Status::Ready if current_serial.is_some() && asked.is_some_and(|s| s != current_serial) => {
                    let lifetime = Duration::from_millis(shared.lifetime_ms.load(Ordering::Relaxed));
                    return Err(too_long(validity.unwrap_or_default(), lifetime, shared.params.installation_id));
                }
                _ => {}
            }
            if asked.is_none() {
                if let (Some(validity), Minter::User(_)) = (validity, &shared.minter) {
                    // The token there cannot serve that long. A fresh user token is replaced (which ends it) up to
                    // 1.2 × refresh_before ahead of expiry: asking for more than that would only spend refresh
                    // tokens.
                    let lifetime = Duration::from_millis(shared.lifetime_ms.load(Ordering::Relaxed));
                    let longest = lifetime.saturating_sub(shared.timing.refresh_before.min(lifetime / 3).mul_f64(1.2));
                    if !lifetime.is_zero() && validity >= longest {
                        return Err(too_long(validity, lifetime, shared.params.installation_id));
                    }
                }
                asked = Some(current_serial);
                shared.start(Start::IfStopped, &self.shutdown)?;
                if let Some(validity) = validity {
                    let mut wanted = shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
                    *wanted = Some(wanted.map_or(validity, |w| w.max(validity)));
                }
                shared.counters.waited_requests.fetch_add(1, Ordering::Relaxed);
                telemetry::waited(shared.kind());
                shared.wake_refresher();
            }
            // Bounded: a refresher whose runtime does not run it never answers; then we start our own.
            let generation = shared.generation();
            // The sender lives in `shared`, which this future holds: `changed` cannot fail.
            let answered = tokio::select! {
                _ = status.changed() => true,
                _ = watchdog::sleep(ACK_PATIENCE) => false,
            };
            if !answered && !shared.refresher_runtime_runs().await {
                shared.start(Start::Replacing(generation), &self.shutdown)?;
                shared.wake_refresher();
            }
        }
    }

    /// Restores a parked token (its refresher stopped or stalled) and starts a refresher on this runtime.
    fn unpark(&self, validity: Option<Duration>) -> Result<Option<Arc<TokenEntry>>, Error> {
        let shared = &self.shared;
        let seen = shared.signins.load(Ordering::Acquire);
        let (token, generation) = {
            let mut parked = shared.parked.lock().unwrap_or_else(|e| e.into_inner());
            let Some((token, generation)) = parked.take() else {
                return Ok(None);
            };
            if !is_valid(&token, Instant::now(), None) {
                return Ok(None);
            }
            if let Err(error) = shared.start(Start::Replacing(generation), &self.shutdown) {
                // This runtime cannot run a refresher: leave the token for one that can.
                *parked = Some((token, generation));
                return Err(error);
            }
            (token, generation)
        };
        tracing::info!(
            installation = shared.params.installation_id,
            serial = token.serial,
            replaced = generation,
            "restored the installation token of a stopped refresher"
        );
        if !shared.restore(Arc::clone(&token), seen) {
            // A sign-in or sign-out came in between: this token belongs to before it.
            return Ok(None);
        }
        shared.watch_until(token.usable_until_real);
        shared.status.send_replace(Status::Ready);
        Ok(is_valid(&token, Instant::now(), validity).then_some(token))
    }
}

fn too_long(validity: Duration, lifetime: Duration, installation: u64) -> Error {
    let message = if installation == 0 {
        format!(
            "a user token valid for {validity:?} was asked for, but GitHub's user tokens live {lifetime:?} and are \
             replaced (which ends them) refresh_before ahead of expiry: ask for less"
        )
    } else {
        format!(
            "a token valid for {validity:?} was asked for, but GitHub's tokens for installation {installation} live \
             {lifetime:?}: ask for less"
        )
    };
    Error::new(ErrorKind::InvalidRequest, message)
}

fn stopped() -> Error {
    Error::new(
        ErrorKind::Runtime,
        "the token refresher could not run: the Tokio runtime this request runs on is shutting down. Send \
         requests from a running runtime",
    )
}

/// Marks the refresher stopped however its future ends (handles dropped, runtime shut down, dropped unpolled).
struct RunningGuard {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        {
            let mut refresher = self.shared.refresher.lock().unwrap_or_else(|e| e.into_inner());
            if !refresher.running || refresher.generation != self.generation {
                // Replaced: the live refresher is somebody else.
                return;
            }
            refresher.running = false;
        }
        // Nobody would replace or withdraw the token now: park it, and the next request restores it on a
        // live runtime.
        self.shared.park(self.generation);
        self.shared.status.send_replace(Status::Stopped);
    }
}

/// The refresher: the only code that mints for this installation, so at most one mint is ever in flight
/// (a replaced refresher on a runtime that resumes exits without publishing).
async fn refresh(guard: RunningGuard, mut shutdown: watch::Receiver<()>, wake: Arc<Notify>) {
    let shared = Arc::clone(&guard.shared);
    let generation = guard.generation;
    let installation = shared.params.installation_id;
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    loop {
        if !shared.is_live(generation) {
            return;
        }
        if shared.retry_now.swap(false, Ordering::AcqRel) {
            retry_at = None;
        }
        let now = Instant::now();
        // Requests never read the clock: a token whose time for requests is over (its refresh kept failing)
        // is withdrawn here, and they wait or fail fast instead.
        shared.withdraw_if_spent(now);
        let due = shared.next_mint(now, retry_at);
        if due > now {
            let spent_at = shared.current.load().as_ref().map(|t| t.usable_until());
            let wake_at = spent_at.map_or(due, |spent_at| due.min(spent_at));
            shared.heartbeat(wake_at);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = wake.notified() => continue,
                _ = tokio::time::sleep_until(wake_at) => continue,
            }
        }
        let until = now + shared.mint_budget();
        shared.heartbeat(until);
        shared.status.send_replace(Status::Minting);
        let span = tracing::info_span!("refresh", installation, kind = shared.kind(), attempt = failures + 1);
        let outcome = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            outcome = shared.mint().instrument(span) => outcome,
        };
        if !shared.is_live(generation) {
            // Replaced while minting (its runtime stalled): hand the token over rather than waste the mint.
            if let Ok((token, epoch)) = outcome {
                shared.adopt(token.share(), epoch);
            }
            return;
        }
        match outcome {
            Ok((token, epoch)) => {
                failures = 0;
                retry_at = None;
                let wanted = shared.wanted.lock().unwrap_or_else(|e| e.into_inner()).take();
                // A scheduled refresh while the old token still serves: keep stamping the old one while GitHub
                // replicates the new one, so requests never meet a token GitHub may not know yet. Anyone who
                // asks for a token meanwhile (an invalidation, token_valid_for) ends the wait.
                let lifetime = token.expires().saturating_duration_since(token.received_at);
                let grace = shared.timing.replication_grace.min(lifetime / 10);
                let old_serves =
                    shared.current.load().as_ref().is_some_and(|old| Instant::now() + grace < old.usable_until());
                shared.lifetime_ms.store(lifetime.as_millis().max(1) as u64, Ordering::Relaxed);
                let token = token.share();
                if wanted.is_none() && old_serves && !grace.is_zero() {
                    // Kept where a stop (runtime shut down, watchdog) finds it, so the mint is never wasted.
                    *shared.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&token));
                    shared.heartbeat(Instant::now() + grace);
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => return,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(grace) => {}
                    }
                    let pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if !shared.is_live(generation) {
                        if let Some(token) = pending {
                            shared.adopt(token, epoch);
                        }
                        return;
                    }
                    if pending.is_none() {
                        // The watchdog parked it meanwhile, and this refresher, running again, took it back.
                        shared.status.send_replace(Status::Ready);
                        continue;
                    }
                }
                tracing::debug!(
                    installation,
                    kind = shared.kind(),
                    serial = token.serial,
                    expires_at = %humantime::format_rfc3339_seconds(token.expires_at()),
                    "token minted"
                );
                let due = token.refresh_at();
                if !shared.publish_minted(token, epoch) {
                    // A sign-in or sign-out came after this rotation: rotate (adopt) again.
                    continue;
                }
                shared.status.send_replace(Status::Ready);
                if due <= Instant::now() {
                    // What was minted is already due (a lifetime shorter than the margins, a stored pair at its
                    // end): minting again at once would only spin. Next attempt after the shortest backoff.
                    retry_at = Some(Instant::now() + shared.backoff(1, Instant::now()));
                }
            }
            Err(error) => {
                failures += 1;
                let now = Instant::now();
                let delay = shared.backoff(failures, now);
                retry_at = Some(now + delay);
                shared.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
                telemetry::mint_failed(shared.kind(), &error);
                tracing::warn!(installation, kind = shared.kind(), %error, failures, retry_in = ?delay, "getting a token failed");
                shared.status.send_replace(Status::Failed(error));
            }
        }
    }
}
