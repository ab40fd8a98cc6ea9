//! Every installation of one App from one stack: a bounded pool of installation tokens, one per (installation,
//! scope), with one scheduler that refreshes the ones in use.
//!
//! Owns: the pool ([`InstallationPool`]) and its entries (`slot`), the lookups that find which installation a
//! request is for (`lookup`), the refresh scheduler (`scheduler`), revocation, and the per-request extensions
//! that choose an installation ([`InstallationFor`]) or a scope ([`TokenScope`]). It mints through
//! [`installation`](crate::installation)'s minter and is read by the [`auth`](crate::auth) layer
//! ([`AppAuthLayer`](crate::AppAuthLayer)) through the same interface as a single [`Installation`](crate::Installation).
//!
//! Which installation a request is for, in this order:
//! 1. an [`InstallationFor`] request extension: an installation id (from a webhook payload, say), an account, or a
//!    repository;
//! 2. the path: `/repos/{owner}/{repo}/...` is looked up with `GET /repos/{owner}/{repo}/installation`,
//!    `/orgs/{org}/...` with `GET /orgs/{org}/installation`, `/users/{user}/...` with
//!    `GET /users/{user}/installation` (App JWT). Answers are cached: an installation that covers all of an
//!    account's repositories is looked up once for all of them (the account's first lookup goes alone, and
//!    concurrent requests for its other repositories wait for it); one that covers selected repositories is
//!    looked up once per repository, side by side. A "not installed" answer is remembered for a minute
//!    ([`InstallationPoolBuilder::not_installed_ttl`]) and fails requests fast with [`ErrorKind::NotInstalled`],
//!    naming the account or repository and the App. A lookup GitHub fails (`5xx`, timeout) fails every request
//!    waiting for it with its error, and is not remembered. A path that names an account without its name
//!    (`/repos//r`, `/orgs/`, or any path starting with `//`) is refused with [`ErrorKind::InvalidRequest`],
//!    whatever the default;
//! 3. the [default installation](InstallationPoolBuilder::default_installation), if one was set;
//! 4. otherwise the request fails with [`ErrorKind::InvalidRequest`]: it is never sent without credentials.
//!
//! A [`TokenScope`] request extension asks for a token limited to repositories or permissions: such tokens are
//! kept apart from the installation's full token (the pool key is the API origin, the App, the installation and
//! the scope), so a request never gets a broader or narrower token than it asked for. Routes that take the App
//! JWT (`/app/...`, the installation lookups) get the App JWT, as with [`InstallationAuthLayer`](crate::InstallationAuthLayer).
//!
//! Per request whose installation has a usable token: a few byte comparisons to read the path (or one extension
//! lookup), then, from a small cache each service clone keeps, a few relaxed atomic loads (the token; whether
//! the entry is still in the pool and the scheduler runs) and one header clone; a clone that has not seen the
//! installation yet reads the pool's concurrent cache (moka), still without a lock or an allocation. Only a request whose installation has no token waits, for one mint shared by every
//! request that needs it.
//!
//! The pool holds at most [`max_installations`](InstallationPoolBuilder::max_installations) entries (15,000 by
//! default, like @octokit/auth-app), least recently used first out. One task refreshes tokens ahead of expiry,
//! jittered, no more than [`max_concurrent_mints`](InstallationPoolBuilder::max_concurrent_mints) at once and
//! [`mint_rate`](InstallationPoolBuilder::mint_rate) per second; an entry that no request used since its last
//! refresh is not refreshed again but evicted, so 15,000 idle installations cost nothing.
//!
//! ```
//! use http::Request;
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_github_app::{AppAuthLayer, InstallationFor, InstallationPool, testing::FakeGitHub};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let github = FakeGitHub::builder()
//!     .installation(7, FakeGitHub::APP_ID, "octo-cat", &["octo-cat/hello"])
//!     .start()
//!     .await;
//! let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client())?;
//! let client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
//!
//! // The installation from the path: looked up once for the account, then cached.
//! let request = Request::get(format!("{}/repos/octo-org/octo-repo", github.api_base())).body(Full::<Bytes>::default())?;
//! assert_eq!(client.clone().oneshot(request).await?.status(), 200);
//! let request = Request::get(format!("{}/repos/octo-cat/hello", github.api_base())).body(Full::<Bytes>::default())?;
//! assert_eq!(client.clone().oneshot(request).await?.status(), 200);
//!
//! // The installation from a webhook payload.
//! let mut request = Request::get(format!("{}/installation/repositories", github.api_base()))
//!     .body(Full::<Bytes>::default())?;
//! request.extensions_mut().insert(InstallationFor::Id(7));
//! assert_eq!(client.clone().oneshot(request).await?.status(), 200);
//!
//! assert_eq!(pool.stats().mints, 2);
//! assert_eq!(pool.stats().lookups, 2);
//! # Ok(())
//! # }
//! ```

mod lookup;
mod scheduler;
mod slot;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::cache::Cache;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::GitHubApp;
use crate::auth::{AccountRoute, OwnedAccountRoute, account_route, account_route_resolved};
use crate::error::{Error, ErrorKind};
use crate::installation::api_base::{Target, same_bytes};
use crate::installation::mint::HttpClient;
use crate::installation::mint::{self, MintClient, MintParams, api_request, mint_correcting_skew, send};
use crate::installation::settings::{INSTALLATION_TOKEN_LIFETIME, Settings};
use crate::installation::source::OVERSLEEP;
use crate::installation::token::TokenEntry;
use crate::installation::watchdog::{Registration, Watched};
use crate::installation::{ApiBase, InstallationToken, TokenScope};
use crate::shared::{Origin, SharedKey, SharedTokens, Turn, fingerprint, mint_through};
use crate::source::{Acquire, Route, TokenSource, own_copy};
use crate::telemetry::{self, Got, PoolGauge};
use lookup::{Github, Lookups, Subject};
use slot::{Slot, SlotKey, SlotKeyRef};

/// Which installation a request is for, when its path does not say (or says otherwise): put it in the
/// request's extensions. Taken before the path.
///
/// ```
/// use tower_github_app::InstallationFor;
/// let mut request = http::Request::get("https://api.github.com/installation/repositories").body(()).unwrap();
/// // From a webhook payload's `installation.id`:
/// request.extensions_mut().insert(InstallationFor::Id(42));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallationFor {
    /// The installation with this id.
    Id(u64),
    /// The installation on this account (an organization or a user), looked up once and cached.
    Account(String),
    /// The installation that covers this repository (`owner`, `repo`), looked up once and cached.
    Repository(String, String),
}

/// What a pool did so far, for tests, demos and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tokens minted by this process.
    pub mints: u64,
    /// Tokens taken from the [shared store](InstallationPoolBuilder::shared_store), minted by another process.
    pub shared: u64,
    /// Mint attempts that failed.
    pub failed_mints: u64,
    /// Requests (and `token()` calls) that found no usable token and waited for a mint.
    pub waited_requests: u64,
    /// Installation lookups sent to GitHub.
    pub lookups: u64,
    /// Lookups GitHub answered with `404`: the App is not installed there.
    pub not_installed: u64,
    /// Scheduled refreshes (mints ahead of expiry for entries in use).
    pub refreshes: u64,
    /// Entries let go because no request used them since their last refresh.
    pub idle_evictions: u64,
    /// Entries evicted because the pool was full.
    pub capacity_evictions: u64,
    /// Tokens dropped because GitHub refused them.
    pub invalidations: u64,
    /// Tokens revoked with `DELETE /installation/token`.
    pub revocations: u64,
    /// Entries in the pool now.
    pub entries: u64,
    /// Times the scheduler task woke up (a due refresh, a new earliest deadline): between refreshes it sleeps.
    pub scheduler_wakeups: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    mints: AtomicU64,
    shared: AtomicU64,
    failed_mints: AtomicU64,
    waited_requests: AtomicU64,
    lookups: AtomicU64,
    not_installed: AtomicU64,
    refreshes: AtomicU64,
    idle_evictions: AtomicU64,
    capacity_evictions: AtomicU64,
    invalidations: AtomicU64,
    revocations: AtomicU64,
    pub(crate) scheduler_wakeups: AtomicU64,
}

/// The tokens of every installation of one App: a cheaply cloneable handle. See the [module docs](self).
#[derive(Clone)]
pub struct InstallationPool {
    inner: Arc<PoolInner>,
}

pub(crate) struct PoolInner {
    app: GitHubApp,
    api_base: ApiBase,
    client: MintClient,
    user_agent: HeaderValue,
    mint_timeout: Duration,
    settings: Settings,
    slots: moka::sync::Cache<SlotKey, Arc<Slot>>,
    lookups: Lookups,
    scheduler: scheduler::Scheduler,
    /// Tokens of entries that left the pool, kept until they expire so that `revoke_all` reaches them.
    retired: Arc<Mutex<Vec<Arc<TokenEntry>>>>,
    counters: Arc<Counters>,
    /// The [`POOL_INSTALLATIONS`](crate::telemetry::POOL_INSTALLATIONS) gauge: up when a slot is created, down
    /// when it leaves.
    gauge: PoolGauge,
    default_installation: Option<u64>,
    not_installed_ttl: Duration,
    /// Mints under way, and a signal when the last one settles: `revoke_all` waits for them.
    minting: std::sync::atomic::AtomicUsize,
    mints_done: tokio::sync::Notify,
    /// The pool's one registration with the watchdog thread, which checks that the scheduler keeps its
    /// deadlines and, when none runs, withdraws tokens whose time for requests is over.
    watchdog: Registration,
    /// A store shared with other processes (the `redis` feature), asked before each mint.
    shared: Option<Arc<dyn SharedTokens>>,
    this: Weak<PoolInner>,
}

impl PoolInner {
    /// Queues `slot`'s refresh at `at`; if that is the earliest, the watchdog checks that the scheduler wakes.
    fn schedule(&self, slot: Weak<Slot>, at: Instant) {
        if let Some(wakes_by) = self.scheduler.schedule(slot, at) {
            self.watch_at(wakes_by + OVERSLEEP);
        }
    }

    /// Asks the watchdog to look at the pool at `at` at the latest.
    fn watch_at(&self, at: std::time::Instant) {
        let this: Weak<dyn Watched> = self.this.clone();
        self.watchdog.schedule(this, at);
    }

    /// The longest a mint can take: signing and the token request, plus a moment (and, with a shared store, the
    /// wait for another process's mint).
    fn mint_budget(&self) -> Duration {
        match &self.shared {
            None => self.mint_timeout + Duration::from_secs(1),
            Some(store) => store.budget(self.mint_timeout),
        }
    }
}

impl Watched for PoolInner {
    fn check(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let (running, generation, wakes_by) = self.scheduler.state();
        if running {
            match wakes_by {
                // Waiting for work: no token to watch.
                None => return None,
                Some(wakes_by) if now < wakes_by + OVERSLEEP => return Some(wakes_by + OVERSLEEP),
                Some(wakes_by) => {
                    if self.scheduler.retire(generation) {
                        tracing::warn!(
                            overslept = ?now.saturating_duration_since(wakes_by),
                            "the pool's refresh scheduler is not being run by its runtime; the next request that \
                             needs a token starts it again"
                        );
                    }
                }
            }
        }
        // No scheduler: withdraw tokens whose time is over, and look again when the next one's is (grouped by
        // the second: a token's end of use is a minute before it expires).
        let mut next: Option<std::time::Instant> = None;
        for (_, slot) in self.slots.iter() {
            if let Some(until) = slot.withdraw_if_spent(now) {
                next = Some(next.map_or(until, |n| n.min(until)));
            }
        }
        next.map(|next| next.max(now + Duration::from_secs(1)))
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // Ends the scheduler task.
        self.scheduler.wake();
    }
}

/// Configures an [`InstallationPool`].
#[must_use]
pub struct InstallationPoolBuilder {
    app: GitHubApp,
    settings: Settings,
    max_installations: u64,
    max_concurrent_mints: usize,
    mint_rate: f64,
    not_installed_ttl: Duration,
    default_installation: Option<u64>,
    shared: Option<Arc<dyn SharedTokens>>,
}

impl InstallationPool {
    /// Starts configuring the pool of `app`'s installation tokens.
    pub fn builder(app: GitHubApp) -> InstallationPoolBuilder {
        InstallationPoolBuilder {
            app,
            settings: Settings::default(),
            max_installations: InstallationPoolBuilder::DEFAULT_MAX_INSTALLATIONS,
            max_concurrent_mints: 8,
            mint_rate: 20.0,
            not_installed_ttl: Duration::from_secs(60),
            default_installation: None,
            shared: None,
        }
    }

    /// A token for `installation` (and `scope`, if given), minting one first if there is none: for `git` and
    /// subprocesses. Looks the installation up if it is given by account or repository.
    pub async fn token(
        &self,
        installation: InstallationFor,
        scope: Option<TokenScope>,
    ) -> Result<InstallationToken, Error> {
        let entry = self.inner.acquire(Want { who: Who::For(installation), scope: scope.map(Arc::new) }).await?;
        Ok(InstallationToken { entry })
    }

    /// Revokes `token` (`DELETE /installation/token`) and drops it from the pool. A token GitHub no longer
    /// accepts counts as revoked. A token shared through a [shared store](InstallationPoolBuilder::shared_store)
    /// is dropped from the store first (no process takes it again) and revoked: processes that already hold it
    /// get a `401` on their next request with it, and with [`RetryOn401Policy`](crate::RetryOn401Policy) drop it
    /// and retry with a new one. (A scoped token whose entry already left the pool stays in the store until it
    /// expires.)
    pub async fn revoke(&self, token: &InstallationToken) -> Result<(), Error> {
        let entry = &token.entry;
        if let Some(source) = entry.source.upgrade() {
            source.invalidate(entry.serial);
        }
        if entry.shared
            && let Some(store) = &self.inner.shared
        {
            // Out of the store first, so that no other process takes it once revoked. Its key is its entry's
            // (or, for an entry gone from the pool, the installation's unscoped one).
            let key = self.inner.slots.iter().find(|(_, slot)| slot.holds(entry.serial)).map(|(key, _)| (*key).clone());
            let key =
                key.or_else(|| (!entry.scoped).then(|| SlotKey { installation: entry.installation_id, scope: None }));
            if let Some(key) = key {
                let params = self.inner.params(&key);
                store.forget(&SharedKey::for_mint(&self.inner.app, &params), fingerprint(&entry.authorization)).await;
            }
        }
        self.inner.revoke(entry).await
    }

    /// Revokes every token this pool minted that GitHub may still accept, and empties the pool: for a clean
    /// shutdown. With a [shared store](InstallationPoolBuilder::shared_store), tokens that went through the store
    /// (taken from it, or minted here and stored) are left alone, since other processes use them
    /// ([`RevokeReport::kept_shared`]); only tokens this process minted on its own are revoked. Mints under way are waited for (up to twice the mint timeout) and their tokens revoked too.
    /// Tokens are revoked [`max_concurrent_mints`](InstallationPoolBuilder::max_concurrent_mints) at a time;
    /// every one is tried, and the first failures are reported. The pool stays usable: requests that arrive
    /// meanwhile or later mint new tokens (stop sending requests first for a clean shutdown).
    pub async fn revoke_all(&self) -> RevokeReport {
        let inner = &self.inner;
        let mut tokens: Vec<Arc<TokenEntry>> = Vec::new();
        for (_, slot) in inner.slots.iter() {
            tokens.extend(slot.retire());
        }
        inner.slots.invalidate_all();
        inner.slots.run_pending_tasks();
        // Mints under way settle into the retired slots' keeping: wait for them (each bounded by its timeout).
        let deadline = Instant::now() + inner.mint_budget() * 2;
        loop {
            let settled = inner.mints_done.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if inner.minting.load(Ordering::SeqCst) == 0 || tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        tokens.extend(inner.retired.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
        let now = Instant::now();
        let mut seen = HashSet::new();
        tokens.retain(|token| now < token.expires() && seen.insert(token.serial));
        let mut report = RevokeReport::default();
        // Tokens the fleet shares stay: other processes are using them.
        tokens.retain(|token| {
            report.kept_shared += usize::from(token.shared);
            !token.shared
        });
        let mut tasks = tokio::task::JoinSet::new();
        for token in tokens {
            let inner = Arc::clone(inner);
            let permit = inner.scheduler.permit().await;
            tasks.spawn(async move {
                let outcome = inner.revoke(&token).await;
                drop(permit);
                outcome
            });
            while let Some(done) = tasks.try_join_next() {
                report.add(done);
            }
        }
        while let Some(done) = tasks.join_next().await {
            report.add(done);
        }
        report
    }

    /// Forgets `installation`: its tokens (of every scope) stop being used at once (they stay revocable by
    /// [`revoke_all`](Self::revoke_all)) and every lookup answer that named it is dropped. For the
    /// `installation` webhook event (`deleted`, `suspend`) and for `installation_repositories` (`removed`) when
    /// scoped tokens named the removed repositories.
    pub fn forget_installation(&self, installation: u64) {
        let inner = &self.inner;
        // Lookups first, so that no request finds the installation again while its slots are retired.
        inner.lookups.forget_installation(installation);
        for (key, slot) in inner.slots.iter() {
            if key.installation == installation {
                // A suspended installation's tokens live on: `revoke_all` still reaches them.
                keep_for_revocation(&inner.retired, slot.retire());
                inner.slots.invalidate(&key.borrowed());
            }
        }
        inner.slots.run_pending_tasks();
        tracing::info!(installation, "installation forgotten");
    }

    /// Forgets what lookups said about `account` (an organization or user login) and its repositories: the
    /// next request naming them looks them up again (lookups under way when it is called are not cached). For
    /// the `installation_repositories` webhook event (the repositories an installation covers changed), for
    /// `installation` `created`, and for `installation_target` `renamed` (with the old login).
    pub fn forget_account(&self, account: &str) {
        self.inner.lookups.forget_account(account);
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.inner.slots.run_pending_tasks();
        PoolStats {
            mints: n(&c.mints),
            shared: n(&c.shared),
            failed_mints: n(&c.failed_mints),
            waited_requests: n(&c.waited_requests),
            lookups: n(&c.lookups),
            not_installed: n(&c.not_installed),
            refreshes: n(&c.refreshes),
            idle_evictions: n(&c.idle_evictions),
            capacity_evictions: n(&c.capacity_evictions),
            invalidations: n(&c.invalidations),
            revocations: n(&c.revocations),
            entries: self.inner.slots.entry_count(),
            scheduler_wakeups: n(&c.scheduler_wakeups),
        }
    }

    /// The API its tokens are minted on and sent to.
    pub fn api_base(&self) -> &ApiBase {
        &self.inner.api_base
    }

    /// The App the tokens are minted for.
    pub fn app(&self) -> &GitHubApp {
        &self.inner.app
    }
}

impl fmt::Debug for InstallationPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationPool")
            .field("app", self.inner.app.id())
            .field("api_base", &self.inner.api_base)
            .field("stats", &self.stats())
            .field("lookups_cached", &self.inner.lookups.len())
            .field("refreshes_queued", &self.inner.scheduler.queued())
            .finish_non_exhaustive()
    }
}

/// Keeps tokens that left the pool until they expire, so that `revoke_all` reaches them.
fn keep_for_revocation(retired: &Mutex<Vec<Arc<TokenEntry>>>, tokens: Vec<Arc<TokenEntry>>) {
    let now = Instant::now();
    let mut retired = retired.lock().unwrap_or_else(|e| e.into_inner());
    // Expired ones go whenever the list has doubled: amortized, however many entries churn.
    if retired.len() >= 64 && retired.len().is_power_of_two() {
        retired.retain(|token| now < token.expires());
    }
    retired.extend(tokens.into_iter().filter(|token| now < token.expires()));
}

/// What [`InstallationPool::revoke_all`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RevokeReport {
    /// Tokens GitHub revoked (or no longer accepted).
    pub revoked: usize,
    /// Tokens whose revocation failed, with the first few errors.
    pub failed: usize,
    /// Up to 10 of the errors.
    pub errors: Vec<Error>,
    /// Tokens left alone because other processes share them (through a shared store).
    pub kept_shared: usize,
}

impl RevokeReport {
    fn add(&mut self, done: Result<Result<(), Error>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(())) => self.revoked += 1,
            Ok(Err(error)) => {
                self.failed += 1;
                if self.errors.len() < 10 {
                    self.errors.push(error);
                }
            }
            Err(join) => {
                self.failed += 1;
                if self.errors.len() < 10 {
                    self.errors.push(Error::new(ErrorKind::Runtime, format!("a revocation task ended: {join}")));
                }
            }
        }
    }
}

impl InstallationPoolBuilder {
    /// The default bound on entries: 15,000, as @octokit/auth-app keeps.
    pub const DEFAULT_MAX_INSTALLATIONS: u64 = 15_000;

    settings_methods!();
    grace_method!();

    /// At most this many entries (an installation and scope each; default 15,000). The least recently used go
    /// first.
    pub fn max_installations(mut self, max: u64) -> Self {
        self.max_installations = max;
        self
    }

    /// At most this many token requests at once, pool-wide (default 8).
    pub fn max_concurrent_mints(mut self, max: usize) -> Self {
        self.max_concurrent_mints = max;
        self
    }

    /// Scheduled refreshes start at most this many per second (default 20: 15,000 installations refreshed
    /// every 50 minutes need 5). Requests that wait for a token are not held back by it, only by
    /// [`max_concurrent_mints`](Self::max_concurrent_mints).
    pub fn mint_rate(mut self, per_second: f64) -> Self {
        self.mint_rate = per_second;
        self
    }

    /// How long a "not installed" answer to a lookup is remembered (default 1 minute).
    pub fn not_installed_ttl(mut self, ttl: Duration) -> Self {
        self.not_installed_ttl = ttl;
        self
    }

    /// The installation of requests that neither carry an [`InstallationFor`] nor name an account in their
    /// path (`/installation/repositories`, `/search/...`, `/graphql`). Without one, such requests fail.
    pub fn default_installation(mut self, installation: u64) -> Self {
        self.default_installation = Some(installation);
        self
    }

    /// Shares the pool's tokens with every process that uses the same Redis (and namespace): before minting, the
    /// pool takes the token another process minted, or mints under a lease that makes the others wait for it.
    /// The request path does not change: it never touches Redis. See [`crate::redis`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_store(mut self, store: crate::redis::RedisStore) -> Self {
        self.shared = Some(store.shared());
        self
    }

    /// Builds the pool. Tokens are minted (and installations looked up) through `client`, normally the same
    /// HTTP client the API requests use. See [`InstallationBuilder::build`](crate::InstallationBuilder::build).
    pub fn build<S: HttpClient<B>, B>(self, client: S) -> Result<InstallationPool, Error> {
        let config = |message: &str| Error::new(ErrorKind::InvalidConfig, message);
        let checked = self.settings.check(INSTALLATION_TOKEN_LIFETIME)?;
        if self.max_installations == 0 {
            return Err(config("max_installations must be at least 1"));
        }
        if self.max_concurrent_mints == 0 || self.max_concurrent_mints > Semaphore::MAX_PERMITS {
            return Err(config("max_concurrent_mints must be at least 1"));
        }
        if !(self.mint_rate.is_finite() && self.mint_rate >= 0.001) {
            return Err(config("mint_rate must be a positive number of mints per second"));
        }
        if self.default_installation == Some(0) {
            return Err(config("installation id 0 does not exist"));
        }
        let counters = Arc::new(Counters::default());
        let retired = Arc::new(Mutex::new(Vec::<Arc<TokenEntry>>::new()));
        let gauge = PoolGauge::new();
        let slots = {
            let counters = Arc::clone(&counters);
            let retired = Arc::clone(&retired);
            let gauge = gauge.clone();
            moka::sync::Cache::builder()
                .max_capacity(self.max_installations)
                // Plain LRU: a new installation is always admitted (TinyLFU could refuse it, and then every
                // request for it would mint).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(move |_key, slot: Arc<Slot>, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        counters.capacity_evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    gauge.decrement();
                    keep_for_revocation(&retired, slot.retire());
                })
                .build()
        };
        let inner = |this: &Weak<PoolInner>| PoolInner {
            app: self.app,
            api_base: checked.api_base,
            client: mint::erase(client),
            user_agent: checked.user_agent,
            mint_timeout: checked.timeout,
            settings: self.settings,
            slots,
            lookups: Lookups::new(self.max_installations.saturating_mul(2), self.not_installed_ttl),
            scheduler: scheduler::Scheduler::new(self.max_concurrent_mints, self.mint_rate),
            retired,
            counters,
            gauge,
            default_installation: self.default_installation,
            not_installed_ttl: self.not_installed_ttl,
            minting: Default::default(),
            mints_done: tokio::sync::Notify::new(),
            watchdog: Registration::new(),
            shared: self.shared,
            this: this.clone(),
        };
        Ok(InstallationPool { inner: Arc::new_cyclic(inner) })
    }
}

impl fmt::Debug for InstallationPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationPoolBuilder")
            .field("app", self.app.id())
            .field("settings", &self.settings)
            .field("max_installations", &self.max_installations)
            .field("max_concurrent_mints", &self.max_concurrent_mints)
            .field("mint_rate", &self.mint_rate)
            .field("not_installed_ttl", &self.not_installed_ttl)
            .field("default_installation", &self.default_installation)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

/// Who a request is for, as far as the slow path needs to know.
#[derive(Debug, Clone)]
enum Who {
    For(InstallationFor),
    Route(Subject),
    Default,
    Unreadable,
}

/// What the slow path must get a token for.
#[derive(Debug, Clone)]
struct Want {
    who: Who,
    scope: Option<Arc<TokenScope>>,
}

impl PoolInner {
    fn github(&self) -> Github<'_> {
        Github {
            app: &self.app,
            api_base: &self.api_base,
            client: &self.client,
            user_agent: &self.user_agent,
            timeout: self.mint_timeout,
            counters: &self.counters,
            negative_ttl: self.not_installed_ttl,
        }
    }

    /// The installation `who` names.
    async fn installation(&self, who: &Who) -> Result<u64, Error> {
        let subject = match who {
            Who::For(InstallationFor::Id(0)) => {
                return Err(Error::new(ErrorKind::InvalidRequest, "installation id 0 does not exist"));
            }
            Who::For(InstallationFor::Id(id)) => return Ok(*id),
            Who::For(InstallationFor::Account(login)) => Subject::User(login.clone()),
            Who::For(InstallationFor::Repository(owner, repo)) => Subject::Repository(owner.clone(), repo.clone()),
            Who::Route(subject) => subject.clone(),
            Who::Unreadable => {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    "the request's path names an account or repository without its name (`/repos//r`, `/orgs/`, \
                     or a path starting with `//`), so its installation cannot be told: fix the path, or insert \
                     InstallationFor into its extensions",
                ));
            }
            Who::Default => {
                return self.default_installation.ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidRequest,
                        "the request names no installation: its path names no account or repository (as \
                         /repos/{owner}/{repo}/... does) and it carries no InstallationFor extension. Insert \
                         InstallationFor::Id(installation id from the webhook payload) into its extensions, or \
                         set a default_installation on the pool",
                    )
                });
            }
        };
        self.lookups.resolve(&subject, &self.github()).await
    }

    /// The slot for `key`, created if there is none.
    fn slot(&self, key: SlotKey) -> Arc<Slot> {
        let counters = Arc::clone(&self.counters);
        self.slots.get_with(key.clone(), || {
            self.gauge.increment();
            Slot::new(key, counters)
        })
    }

    /// The slow path: resolve the installation, then a usable token of its slot, minting if needed (one mint
    /// per slot at a time; waiters fail fast while a failed mint's backoff runs).
    async fn acquire(self: &Arc<Self>, want: Want) -> Result<Arc<TokenEntry>, Error> {
        self.scheduler.ensure_running(self)?;
        let installation = self.installation(&want.who).await?;
        let key = SlotKey { installation, scope: want.scope };
        let mut counted = false;
        loop {
            let slot = self.slot(key.clone());
            slot.touch();
            if let Some(token) = slot.valid(None) {
                return Ok(token);
            }
            if !counted {
                counted = true;
                self.counters.waited_requests.fetch_add(1, Ordering::Relaxed);
                telemetry::waited("installation");
            }
            if let Some(error) = slot.failure() {
                return Err(error);
            }
            let flight = slot.flight();
            let _flight = flight.lock().await;
            // Counted before `retired` is read: `revoke_all` either sees this mint under way or this sees it
            // retired.
            let _in_flight = self.in_flight();
            if slot.retired.load(Ordering::SeqCst) {
                // Evicted or forgotten while we waited: start over with the entry that replaced it.
                continue;
            }
            if let Some(token) = slot.valid(None) {
                return Ok(token);
            }
            if let Some(error) = slot.failure() {
                return Err(error);
            }
            // A refreshed token waiting out its replication grace: better than a new mint.
            if let Some(token) = slot.take_pending() {
                self.settle(&slot, Arc::clone(&token));
                return Ok(token);
            }
            let permit = self.scheduler.permit().await;
            let minted = self.mint(&slot, permit).await;
            return match minted {
                Ok(token) => {
                    if self.settle(&slot, Arc::clone(&token)) {
                        self.schedule(Arc::downgrade(&slot), token.refresh_at());
                    }
                    Ok(token)
                }
                Err(error) => {
                    if error.kind() == ErrorKind::InstallationNotFound {
                        // Deleted (and maybe installed again under a new id): lookups that named it are stale.
                        self.lookups.forget_installation(installation);
                    }
                    self.failed(&slot, error.clone());
                    Err(error)
                }
            };
        }
    }

    /// One mint for `slot`, holding a mint permit; with a shared store, the token another process minted, or
    /// one minted here under the store's lease (the permit is held only while this process mints).
    async fn mint(&self, slot: &Arc<Slot>, permit: OwnedSemaphorePermit) -> Result<Arc<TokenEntry>, Error> {
        let span = telemetry::mint_span(slot.key.installation, "installation", slot.key.scope.is_some());
        let token = self.mint_once(slot, permit).instrument(span.clone()).await?;
        telemetry::minted_in(&span, &token);
        Ok(token)
    }

    async fn mint_once(&self, slot: &Arc<Slot>, permit: OwnedSemaphorePermit) -> Result<Arc<TokenEntry>, Error> {
        let started = Instant::now();
        let params = self.params(&slot.key);
        let failed = |error: &Error| {
            self.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
            telemetry::mint_failed("installation", error);
            tracing::warn!(installation = slot.key.installation, %error, "retrying the mint with a corrected clock");
        };
        let (minted, origin) = match &self.shared {
            None => {
                let minted = mint_correcting_skew(&self.app, &self.client, &params, failed).await;
                drop(permit);
                (minted?, Origin::Minted)
            }
            Some(shared) => {
                // The permit is held from each claim through the mint (a process never holds a lease it cannot
                // mint for at once), and given back only while this process waits for another one's mint.
                let turn = PermitTurn { held: Mutex::new(Some(permit)), scheduler: &self.scheduler };
                let mint = || async {
                    let kept = turn.held.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let _permit = match kept {
                        Some(permit) => permit,
                        None => self.scheduler.permit().await,
                    };
                    mint_correcting_skew(&self.app, &self.client, &params, failed).await
                };
                let refresh_before = self.settings.timing.refresh_before;
                let known = slot.fingerprints();
                mint_through(&**shared, &self.app, &params, known, refresh_before, &turn, mint).await?
            }
        };
        let (counter, got) = match origin {
            Origin::Minted | Origin::ForFleet => (&self.counters.mints, Got::Minted),
            Origin::Adopted => (&self.counters.shared, Got::Shared),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        telemetry::minted("installation", got, started.elapsed());
        // Uses count from the token's arrival: one that no request uses is not refreshed.
        slot.used.store(false, Ordering::Relaxed);
        let mut entry =
            self.settings.timing.entry(minted, slot.key.installation, slot.key.scope.is_some(), Slot::as_source(slot));
        entry.shared = origin.shared();
        tracing::debug!(
            installation = slot.key.installation,
            serial = entry.serial,
            ?origin,
            "installation token ready"
        );
        Ok(entry.share())
    }

    /// What a mint for `key` sends.
    fn params(&self, key: &SlotKey) -> MintParams {
        MintParams {
            api_base: self.api_base.clone(),
            installation_id: key.installation,
            body: key.scope.as_deref().and_then(TokenScope::body),
            user_agent: self.user_agent.clone(),
            timeout: self.mint_timeout,
        }
    }

    /// Records a failed mint: waiters fail fast until the backoff ends, and a retry is scheduled while the slot
    /// is in use.
    fn failed(&self, slot: &Arc<Slot>, error: Error) {
        self.counters.failed_mints.fetch_add(1, Ordering::Relaxed);
        telemetry::mint_failed("installation", &error);
        let failures = slot.failures() + 1;
        let timing = &self.settings.timing;
        let exponential = timing.backoff_min.saturating_mul(1 << failures.saturating_sub(1).min(20));
        let mut delay = exponential.min(timing.backoff_max).mul_f64(0.5 + fastrand::f64() * 0.5);
        let now = Instant::now();
        // While the old token is still usable, try again at least twice before it runs out.
        if let Some(token) = slot.current.load().as_ref()
            && token.usable_until() > now
        {
            delay = delay.min(((token.usable_until() - now) / 2).max(timing.backoff_min));
        }
        tracing::warn!(installation = slot.key.installation, %error, failures, retry_in = ?delay, "minting an installation token failed");
        slot.set_failure(error, now + delay);
        if slot.current.load().is_some() {
            // Still in use as far as the retry is concerned.
            slot.touch();
            self.schedule(Arc::downgrade(slot), now + delay);
        }
    }

    /// Counts a mint under way (see [`InFlight`]).
    fn in_flight(&self) -> InFlight<'_> {
        self.minting.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Puts a minted token into its slot, or, when the slot left the pool (forgotten, evicted, revoked), keeps it
    /// for `revoke_all` only. Returns whether the slot took it.
    fn settle(&self, slot: &Slot, token: Arc<TokenEntry>) -> bool {
        if slot.retired.load(Ordering::SeqCst) {
            keep_for_revocation(&self.retired, vec![token]);
            return false;
        }
        if slot.publish(token) {
            return true;
        }
        // Retired while it was published: take back what it holds.
        keep_for_revocation(&self.retired, slot.retire());
        false
    }

    /// Lets an idle entry go: no request used it since its last refresh.
    fn evict_idle(&self, slot: &Arc<Slot>) {
        self.counters.idle_evictions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(installation = slot.key.installation, "idle installation token evicted");
        self.slots.invalidate(&slot.key.borrowed());
    }

    /// `DELETE /installation/token` with `token`.
    async fn revoke(&self, token: &TokenEntry) -> Result<(), Error> {
        let url = self.api_base.url("/installation/token")?;
        let request = api_request(Method::DELETE, url, &self.user_agent, token.authorization.clone())
            .body(Bytes::new())
            .map_err(|e| {
                Error::build(ErrorKind::InvalidRequest, "could not build the revocation").source(e).finish()
            })?;
        let what = format!("the revocation of installation {}'s token {}", token.installation_id, token.serial);
        let response = send(&self.client, request, self.mint_timeout, &what, &self.api_base).await?;
        match response.status() {
            // Revoked, or no longer accepted anyway.
            StatusCode::NO_CONTENT | StatusCode::UNAUTHORIZED => {
                self.counters.revocations.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            status => Err(Error::new(
                ErrorKind::UnexpectedStatus,
                format!(
                    "{what} was answered {status}; GitHub answers 204. The token expires on its own within the hour"
                ),
            )),
        }
    }
}

/// A pool's mint permit as the shared store's [`Turn`]: given back while the pool waits for another process's mint.
struct PermitTurn<'a> {
    held: Mutex<Option<OwnedSemaphorePermit>>,
    scheduler: &'a scheduler::Scheduler,
}

impl Turn for PermitTurn<'_> {
    fn pause(&self) {
        drop(self.held.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn resume(&self) -> crate::shared::BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.held.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                return;
            }
            let permit = self.scheduler.permit().await;
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        })
    }
}

/// A scheduled refresh of `slot`, holding a mint permit: mints, waits out the replication grace while the old
/// token serves, publishes, and queues the next refresh.
/// `requeue` is an argument, not made inside: dropped unpolled (its runtime shutting down), it still puts the
/// refresh back in the queue for the next task.
async fn refresh(pool: Arc<PoolInner>, slot: Arc<Slot>, permit: OwnedSemaphorePermit, requeue: Requeue) {
    let flight = slot.flight();
    // Never waits for the flight while holding a permit (a request's mint holds the flight while it waits for
    // one): a mint under way for the slot queues the next refresh itself; this one looks again in a moment, in
    // case the flight's holder did not mint.
    let Ok(flight) = flight.try_lock() else {
        pool.schedule(Arc::downgrade(&slot), Instant::now() + Duration::from_millis(500));
        requeue.done();
        return;
    };
    // Counted before `retired` is read: `revoke_all` either sees this mint under way or this sees it retired.
    let in_flight = pool.in_flight();
    if slot.retired.load(Ordering::SeqCst) || slot.refresh_at().is_some_and(|at| at > Instant::now()) {
        // Forgotten, or a request's mint replaced the token meanwhile.
        requeue.done();
        return;
    }
    let span = tracing::info_span!(
        "refresh",
        installation = slot.key.installation,
        kind = "installation",
        attempt = slot.failures() + 1
    );
    let minted = pool.mint(&slot, permit).instrument(span).await;
    let token = match minted {
        Ok(token) => token,
        Err(error) => {
            pool.failed(&slot, error);
            requeue.done();
            return;
        }
    };
    pool.counters.refreshes.fetch_add(1, Ordering::Relaxed);
    let timing = &pool.settings.timing;
    let lifetime = token.expires().saturating_duration_since(token.received_at);
    let grace = timing.replication_grace.min(lifetime / 10);
    let old_serves = slot.current.load().as_ref().is_some_and(|old| Instant::now() + grace < old.usable_until());
    pool.schedule(Arc::downgrade(&slot), token.refresh_at());
    requeue.done();
    if old_serves && !grace.is_zero() {
        // Keep stamping the old token while GitHub replicates the new one; a request that needs a token
        // meanwhile takes the new one at once. (`retire` and `revoke_all` reach it there.)
        slot.set_pending(token);
        if slot.retired.load(Ordering::SeqCst)
            && let Some(token) = slot.take_pending()
        {
            // Retired before the token was set aside: keep it where `revoke_all` finds it.
            pool.settle(&slot, token);
            return;
        }
        drop(in_flight);
        drop(flight);
        tokio::time::sleep(grace).await;
        if let Some(token) = slot.take_pending() {
            pool.settle(&slot, token);
        }
    } else {
        pool.settle(&slot, token);
    }
}

/// Puts a refresh back in the queue unless it was done (see [`refresh`]).
pub(crate) struct Requeue {
    pool: Weak<PoolInner>,
    slot: Weak<Slot>,
    done: bool,
}

impl Requeue {
    pub(crate) fn new(pool: &Arc<PoolInner>, slot: &Arc<Slot>) -> Self {
        Requeue { pool: Arc::downgrade(pool), slot: Arc::downgrade(slot), done: false }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Requeue {
    fn drop(&mut self) {
        if !self.done
            && let Some(pool) = self.pool.upgrade()
        {
            pool.schedule(self.slot.clone(), Instant::now());
        }
    }
}

/// A mint under way, until its token is in its slot or kept for revocation: `revoke_all` waits for these.
struct InFlight<'a>(&'a PoolInner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.minting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.mints_done.notify_waiters();
        }
    }
}

/// Each service clone's cache of recently used entries: a request whose entry is here reads one atomic and
/// clones one header value.
#[derive(Clone, Default)]
pub(crate) struct PoolLocal {
    entries: [Option<LocalEntry>; LOCAL_ENTRIES],
    next: usize,
}

const LOCAL_ENTRIES: usize = 4;

#[derive(Clone)]
struct LocalEntry {
    /// What requests it serves name.
    by: By,
    slot: Arc<Slot>,
    current: Cache<SlotCurrent, Option<Arc<TokenEntry>>>,
    /// This clone's own copy of the current token's header value.
    stamp: Option<(u64, HeaderValue)>,
}

#[derive(Clone)]
enum By {
    Id(u64),
    /// A lookup answer: requests naming its account (or its repository) are served.
    Lookup(Arc<lookup::Resolved>),
    Default,
}

/// Lets arc-swap's `Cache` reach a slot's `ArcSwap`.
#[derive(Clone)]
struct SlotCurrent(Arc<Slot>);

impl std::ops::Deref for SlotCurrent {
    type Target = arc_swap::ArcSwapOption<TokenEntry>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

/// Who a request names, borrowed from it.
enum Named<'r> {
    Id(u64),
    Account(&'r str),
    Repository(&'r str, &'r str),
    Default,
    /// A path that names an account unreadably (`/repos//r`): matches nothing; the slow path refuses it.
    Unreadable,
}

impl<'r> Named<'r> {
    /// Who `request` names; its path must be usual (`Route::unusual` false).
    #[inline]
    fn of<B>(request: &'r Request<B>, prefix: &str) -> Self {
        if let Some(named) = request.extensions().get::<InstallationFor>() {
            return match named {
                InstallationFor::Id(id) => Named::Id(*id),
                InstallationFor::Account(login) => Named::Account(login),
                InstallationFor::Repository(owner, repo) => Named::Repository(owner, repo),
            };
        }
        match account_route(request.uri().path(), prefix) {
            Some(AccountRoute::Repository(owner, repo)) => Named::Repository(owner, repo),
            Some(AccountRoute::Org(login) | AccountRoute::User(login)) => Named::Account(login),
            Some(AccountRoute::Unreadable) => Named::Unreadable,
            None => Named::Default,
        }
    }

    #[inline]
    fn serves(&self, by: &By) -> bool {
        match (self, by) {
            (Named::Id(id), By::Id(b)) => id == b,
            (Named::Default, By::Default) => true,
            (Named::Account(login), By::Lookup(r)) => same_name(r.owner(), login) && r.serves(None),
            (Named::Repository(owner, repo), By::Lookup(r)) => same_name(r.owner(), owner) && r.serves(Some(repo)),
            _ => false,
        }
    }
}

/// Who `request` is for, owned for the slow path; its path is resolved first if it is unusual.
fn who<B>(request: &Request<B>, prefix: &str) -> Who {
    if let Some(named) = request.extensions().get::<InstallationFor>() {
        return Who::For(named.clone());
    }
    match account_route_resolved(request.uri().path(), prefix) {
        Some(OwnedAccountRoute::Repository(owner, repo)) => Who::Route(Subject::Repository(owner, repo)),
        Some(OwnedAccountRoute::Org(org)) => Who::Route(Subject::Org(org)),
        Some(OwnedAccountRoute::User(user)) => Who::Route(Subject::User(user)),
        Some(OwnedAccountRoute::Unreadable) => Who::Unreadable,
        None => Who::Default,
    }
}

impl PoolInner {
    fn prefix(&self, target: Target) -> &str {
        match target {
            Target::Uploads => self.api_base.uploads_path(),
            _ => self.api_base.path(),
        }
    }
}

impl TokenSource for InstallationPool {
    type Local = PoolLocal;

    fn local(&self) -> PoolLocal {
        PoolLocal::default()
    }

    fn origin(&self) -> &ApiBase {
        &self.inner.api_base
    }

    fn app(&self) -> Option<&GitHubApp> {
        Some(&self.inner.app)
    }

    #[inline]
    fn current<'l, B>(
        &self,
        local: &'l mut PoolLocal,
        request: &Request<B>,
        route: Route,
    ) -> Option<(HeaderValue, &'l Arc<TokenEntry>)> {
        let inner = &*self.inner;
        if route.unusual || !inner.scheduler.live.load(Ordering::Relaxed) {
            // Dot segments or percent-encodings: resolved on the slow path. No scheduler (its runtime went
            // away): the slow path starts one here. Either way the token is there: no mint, no wait.
            return None;
        }
        let named = Named::of(request, inner.prefix(route.target));
        let scope = request.extensions().get::<TokenScope>();
        let hit = local.entries.iter().position(|entry| {
            entry.as_ref().is_some_and(|entry| {
                named.serves(&entry.by)
                    && entry.slot.key.scope.as_deref() == scope
                    && !entry.slot.retired.load(Ordering::Relaxed)
            })
        });
        let index = match hit {
            Some(index) => index,
            None => {
                // This clone has not seen it: the pool's caches, without a lock or an allocation.
                let (by, installation) = match &named {
                    Named::Id(id) => (By::Id(*id), *id),
                    Named::Default => (By::Default, inner.default_installation?),
                    Named::Unreadable => return None,
                    Named::Account(owner) | Named::Repository(owner, _) => {
                        let repo = if let Named::Repository(_, repo) = named { Some(repo) } else { None };
                        let resolved = inner.lookups.cached(owner, repo)?;
                        let installation = resolved.installation()?;
                        (By::Lookup(resolved), installation)
                    }
                };
                let slot = inner.slots.get(&SlotKeyRef { installation, scope })?;
                let index = local.next;
                local.next = (local.next + 1) % LOCAL_ENTRIES;
                let current = Cache::new(SlotCurrent(Arc::clone(&slot)));
                local.entries[index] = Some(LocalEntry { by, slot, current, stamp: None });
                index
            }
        };
        let entry = local.entries[index].as_mut()?;
        entry.slot.touch();
        let token = entry.current.load().as_ref()?;
        let value = match &entry.stamp {
            Some((serial, value)) if *serial == token.serial => value.clone(),
            _ => {
                let value = own_copy(&token.authorization);
                entry.stamp = Some((token.serial, value.clone()));
                value
            }
        };
        Some((value, token))
    }

    fn acquire<B>(&self, request: &Request<B>, route: Route) -> Acquire {
        let inner = Arc::clone(&self.inner);
        let who = who(request, inner.prefix(route.target));
        let scope = request.extensions().get::<TokenScope>().cloned().map(Arc::new);
        Box::pin(async move { inner.acquire(Want { who, scope }).await })
    }
}

/// Whether two GitHub names are the same: in any case, decided by one byte comparison when they are written
/// alike (the common case).
#[inline]
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && (same_bytes(a.as_bytes(), b.as_bytes()) || a.eq_ignore_ascii_case(b))
}
