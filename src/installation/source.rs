//! The token source: the current token of one installation, and the one task that replaces it.
//!
//! Owns the `ArcSwap` every request reads, the refresher task (the only code that mints), and the hand-off
//! between the two: requests that find no usable token ask the refresher and wait for its next outcome. It does
//! not know HTTP beyond calling [`mint_once`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::mint::{MintClient, MintParams, Minted, mint_once};
use super::token::TokenEntry;
use crate::app::GitHubApp;
use crate::error::{Error, ErrorKind};

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
        source: std::sync::Weak<Shared>,
    ) -> TokenEntry {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let lifetime = minted.expires.saturating_duration_since(minted.received_at);
        let margin = self.min_remaining.min(lifetime / 10);
        let ahead = self.refresh_before.min(lifetime / 3).mul_f64(1.0 + fastrand::f64() * 0.2);
        TokenEntry {
            authorization: minted.authorization,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            installation_id,
            expires_at: minted.expires_at,
            received_at: minted.received_at,
            expires: minted.expires,
            usable_until: minted.expires - margin,
            refresh_at: minted.expires - ahead,
            scoped,
            details: minted.details,
            source,
            replicated: Default::default(),
            replicated_notify: Default::default(),
        }
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
    failed_mints: AtomicU64,
    waited_requests: AtomicU64,
    invalidations: AtomicU64,
}

/// Counts of what a token source did, for tests, demos and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct InstallationStats {
    /// Tokens minted.
    pub mints: u64,
    /// Mint attempts that failed.
    pub failed_mints: u64,
    /// Requests (and `token()` calls) that found no usable token and waited for a mint.
    pub waited_requests: u64,
    /// Tokens dropped because GitHub refused them (see [`InstallationTokenUsed::invalidate`](crate::InstallationTokenUsed::invalidate)).
    pub invalidations: u64,
}

/// State shared by every handle of one installation and its refresher task.
pub(crate) struct Shared {
    pub(crate) app: GitHubApp,
    pub(crate) params: MintParams,
    pub(crate) scoped: bool,
    timing: Timing,
    client: MintClient,
    /// The token requests use. `None` before the first mint and after an invalidation.
    pub(crate) current: ArcSwapOption<TokenEntry>,
    /// The token before the current one, kept alive while requests that carried it may still be answered.
    previous: ArcSwapOption<TokenEntry>,
    status: watch::Sender<Status>,
    demand: Notify,
    /// The longest validity a caller of `token_valid_for` asked for since the last mint.
    wanted: Mutex<Option<Duration>>,
    running: Mutex<bool>,
    counters: Counters,
}

impl Shared {
    pub(crate) fn new(app: GitHubApp, client: MintClient, params: MintParams, scoped: bool, timing: Timing) -> Self {
        Shared {
            app,
            params,
            scoped,
            timing,
            client,
            current: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            status: watch::Sender::new(Status::Idle),
            demand: Notify::new(),
            wanted: Mutex::new(None),
            running: Mutex::new(false),
            counters: Counters::default(),
        }
    }

    /// The current token if it has `validity` left (or, for `None`, is still usable for requests).
    fn valid_token(&self, validity: Option<Duration>) -> Option<Arc<TokenEntry>> {
        let current = self.current.load();
        let token = current.as_ref()?;
        let now = Instant::now();
        let valid = match validity {
            None => now < token.usable_until,
            Some(validity) => token.is_valid_for(now, validity),
        };
        valid.then(|| Arc::clone(token))
    }

    /// Makes `token` current, keeping the one it replaces as `previous`.
    fn replace_current(&self, token: Option<Arc<TokenEntry>>) {
        if let Some(old) = self.current.swap(token) {
            self.previous.store(Some(old));
        }
    }

    /// Drops the token with this serial if it is still the current one, and asks for a new one.
    pub(crate) fn invalidate(&self, serial: u64) -> bool {
        let mut dropped = false;
        let before = self.current.rcu(|current| {
            dropped = current.as_ref().is_some_and(|token| token.serial == serial);
            if dropped { None } else { current.clone() }
        });
        if dropped {
            // Requests that carried it may still be answered: keep it reachable.
            self.previous.store(before);
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                installation = self.params.installation_id,
                serial,
                "installation token invalidated; minting a new one"
            );
            self.demand.notify_one();
        }
        dropped
    }

    /// Withdraws the current token if its time for requests is over.
    fn withdraw_if_spent(&self, now: Instant) {
        if self.current.load().as_ref().is_none_or(|token| now < token.usable_until) {
            return;
        }
        let mut spent = false;
        let before = self.current.rcu(|current| {
            spent = current.as_ref().is_some_and(|token| now >= token.usable_until);
            if spent { None } else { current.clone() }
        });
        if spent {
            let serial = before.as_ref().map(|t| t.serial);
            tracing::warn!(
                installation = self.params.installation_id,
                serial,
                "installation token withdrawn: no replacement before its end of use"
            );
            self.previous.store(before);
        }
    }

    /// When the refresher should mint next.
    fn next_mint(&self, now: Instant, retry_at: Option<Instant>) -> Instant {
        let current = self.current.load();
        let wanted = *self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let needed = match current.as_deref() {
            None => true,
            Some(token) => now >= token.usable_until || wanted.is_some_and(|w| !token.is_valid_for(now, w)),
        };
        match (needed, retry_at, current.as_deref()) {
            (_, Some(retry_at), _) => retry_at,
            (false, None, Some(token)) => token.refresh_at,
            _ => now,
        }
    }

    /// One mint, plus one immediate retry when GitHub refused the JWT for clock skew and the App has just
    /// learned a different offset (the retry's JWT is corrected).
    async fn mint(self: &Arc<Self>) -> Result<TokenEntry, Error> {
        let offset_before = self.app.clock_offset();
        let mut result = mint_once(&self.app, &self.client, &self.params).await;
        if let Err(error) = &result
            && error.kind() == ErrorKind::ClockSkew
            && self.app.clock_offset() != offset_before
        {
            self.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(installation = self.params.installation_id, %error, "retrying the mint with a corrected clock");
            result = mint_once(&self.app, &self.client, &self.params).await;
        }
        result.map(|minted| self.timing.entry(minted, self.params.installation_id, self.scoped, Arc::downgrade(self)))
    }

    fn backoff(&self, failures: u32, now: Instant) -> Duration {
        let exponential = self.timing.backoff_min.saturating_mul(1 << (failures.saturating_sub(1)).min(20));
        let delay = exponential.min(self.timing.backoff_max).mul_f64(0.5 + fastrand::f64() * 0.5);
        // While the old token is still usable, try again at least twice before it runs out.
        match self.current.load().as_deref() {
            Some(token) if token.usable_until > now => {
                delay.min(((token.usable_until - now) / 2).max(self.timing.backoff_min))
            }
            _ => delay,
        }
    }

    pub(crate) fn stats(&self) -> InstallationStats {
        let c = &self.counters;
        InstallationStats {
            mints: c.mints.load(Ordering::Relaxed),
            failed_mints: c.failed_mints.load(Ordering::Relaxed),
            waited_requests: c.waited_requests.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
        }
    }
}

/// What [`Installation`](super::Installation) handles share: the state, and the signal that ends the refresher
/// when the last handle is dropped.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    shutdown: watch::Sender<()>,
}

impl Handle {
    pub(crate) fn new(shared: Shared) -> Self {
        Handle { shared: Arc::new(shared), shutdown: watch::Sender::new(()) }
    }

    /// The slow path: no usable token. Waits for the refresher's next outcome; fails fast while a failed
    /// mint's backoff runs, so a broken token endpoint never makes requests hang.
    pub(crate) async fn acquire(&self, validity: Option<Duration>) -> Result<Arc<TokenEntry>, Error> {
        let shared = &self.shared;
        let mut status = shared.status.subscribe();
        let mut asked = false;
        loop {
            // Status first, then the token: the refresher stores a token before it announces it, so every
            // token announced up to the status just read is visible below.
            let seen = status.borrow_and_update().clone();
            if let Some(token) = shared.valid_token(validity) {
                return Ok(token);
            }
            match seen {
                Status::Failed(error) => return Err(error),
                Status::Stopped if asked => return Err(stopped()),
                Status::Ready if asked && shared.current.load().is_some() => {
                    return Err(Error::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "a token valid for {validity:?} was asked for, but GitHub's tokens for installation {} \
                             live shorter than that: ask for less",
                            shared.params.installation_id
                        ),
                    ));
                }
                _ => {}
            }
            if !asked {
                asked = true;
                self.ensure_running()?;
                if let Some(validity) = validity {
                    let mut wanted = shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
                    *wanted = Some(wanted.map_or(validity, |w| w.max(validity)));
                }
                shared.counters.waited_requests.fetch_add(1, Ordering::Relaxed);
                shared.demand.notify_one();
            }
            // The sender lives in `shared`, which this future holds: `changed` cannot fail.
            let _ = status.changed().await;
        }
    }

    /// Starts the refresher on the current Tokio runtime unless it runs already (it stops with its runtime).
    fn ensure_running(&self) -> Result<(), Error> {
        let mut running = self.shared.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Runtime,
                "installation tokens are refreshed by a background task, which needs a Tokio runtime: send \
                 requests and call token() from within one (for example under #[tokio::main])",
            )
        })?;
        *running = true;
        self.shared.status.send_replace(Status::Idle);
        runtime.spawn(refresh(Arc::clone(&self.shared), self.shutdown.subscribe()));
        Ok(())
    }
}

fn stopped() -> Error {
    Error::new(
        ErrorKind::Runtime,
        "the token refresher stopped because its Tokio runtime shut down; it restarts on the next request made \
         from a running runtime",
    )
}

/// Marks the refresher as stopped however its future ends (handles dropped, runtime shut down).
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        // Nobody would withdraw the token when it runs out: drop it now, and the next request restarts the
        // refresher on a live runtime.
        self.0.current.store(None);
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.status.send_replace(Status::Stopped);
    }
}

/// The refresher: the only code that mints for this installation, so at most one mint is ever in flight.
async fn refresh(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    let _guard = RunningGuard(Arc::clone(&shared));
    let installation = shared.params.installation_id;
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Requests never read the clock: a token whose time for requests is over (its refresh kept failing)
        // is withdrawn here, and they wait or fail fast instead.
        shared.withdraw_if_spent(now);
        let due = shared.next_mint(now, retry_at);
        if due > now {
            let spent_at = shared.current.load().as_ref().map(|t| t.usable_until);
            let wake = spent_at.map_or(due, |spent_at| due.min(spent_at));
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = shared.demand.notified() => continue,
                _ = tokio::time::sleep_until(wake) => continue,
            }
        }
        shared.status.send_replace(Status::Minting);
        let outcome = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            outcome = shared.mint() => outcome,
        };
        match outcome {
            Ok(token) => {
                failures = 0;
                retry_at = None;
                let wanted = shared.wanted.lock().unwrap_or_else(|e| e.into_inner()).take();
                // A scheduled refresh while the old token still serves: keep stamping the old one while GitHub
                // replicates the new one, so requests never meet a token GitHub may not know yet. Anyone who
                // asks for a token meanwhile (an invalidation, token_valid_for) ends the wait.
                let lifetime = token.expires.saturating_duration_since(token.received_at);
                let grace = shared.timing.replication_grace.min(lifetime / 10);
                let old_serves =
                    shared.current.load().as_ref().is_some_and(|old| Instant::now() + grace < old.usable_until);
                if wanted.is_none() && old_serves && !grace.is_zero() {
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => return,
                        _ = shared.demand.notified() => {}
                        _ = tokio::time::sleep(grace) => {}
                    }
                }
                tracing::debug!(
                    installation,
                    serial = token.serial,
                    expires_at = %humantime::format_rfc3339_seconds(token.expires_at),
                    "installation token minted"
                );
                shared.replace_current(Some(token.share()));
                shared.counters.mints.fetch_add(1, Ordering::Relaxed);
                shared.status.send_replace(Status::Ready);
            }
            Err(error) => {
                failures += 1;
                let now = Instant::now();
                let delay = shared.backoff(failures, now);
                retry_at = Some(now + delay);
                shared.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(installation, %error, failures, retry_in = ?delay, "minting an installation token failed");
                shared.status.send_replace(Status::Failed(error));
            }
        }
    }
}
