use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::DATE;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::retry::Policy;
use tower::retry::budget::Budget;
use tracing::Instrument;

use super::body::{BuiltinBodies, CloneBody, CloneBodyFn};
use super::budget::RetryBudget;
use crate::app::AppJwtUsed;
use crate::installation::InstallationTokenUsed;
use crate::installation::replication::{ProbeSteps, Turn};

/// A [`tower::retry::Policy`] that retries what GitHub refused for credential reasons: replication lag of fresh
/// tokens, stale or revoked tokens, and App JWTs refused for clock skew. See the [module docs](crate::retry).
///
/// `RetryOn401Policy::default()` suits most stacks; [`RetryOn401Policy::builder`] changes the lag window, the
/// backoff, the budget and which bodies can be copied for a retry (`C`, [`BuiltinBodies`] by default).
pub struct RetryOn401Policy<C = BuiltinBodies> {
    config: Arc<Config>,
    clone_body: C,
    /// This request's state. Tower calls `clone_request` for a request's first attempt on the service's own
    /// policy, then clones that policy into the request's future: the service's copy is never changed by
    /// `retry`, so every request starts from a fresh one.
    attempt: Attempt,
    /// Requests this service has sent but not yet paid into the default budget (not carried by clones).
    unpaid: u32,
}

struct Config {
    lag_window: Duration,
    probe_steps: ProbeSteps,
    max_lag_retries: u32,
    budget: Option<BudgetRef>,
}

/// The default budget takes deposits in batches; any other `Budget` one by one.
enum BudgetRef {
    Batched(Arc<RetryBudget>),
    Other(Box<dyn Budget + Send + Sync>),
}

impl BudgetRef {
    fn withdraw(&self) -> bool {
        match self {
            BudgetRef::Batched(budget) => budget.withdraw(),
            BudgetRef::Other(budget) => budget.withdraw(),
        }
    }
}

/// Per-request state: each request gets its own copy of the policy.
#[derive(Clone, Copy, Default)]
struct Attempt {
    /// When GitHub first refused this request (the clock is read only on refusals).
    refused_at: Option<Instant>,
    retries: u32,
    lag_retries: u32,
    /// The fresh token whose replication lag this request waited on: it waits out one token's lag at most.
    lag_token: Option<u64>,
    invalidated: bool,
    /// The serial of the last user token refused for this request.
    user_token: Option<u64>,
    clock_corrected: bool,
    retried_after_proof: bool,
}

/// How many times one request is retried for refused user tokens, each time on a newer token.
const MAX_USER_TOKEN_RETRIES: u32 = 2;

/// Put into a response's extensions when [`RetryOn401Policy`] declined to retry a credential refusal it would
/// otherwise have retried. Also logged as a `WARN` event. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryGaveUp {
    /// Retries made for this request before giving up.
    pub retries: u32,
    /// Time spent retrying: from GitHub's first refusal of this request to giving up.
    pub elapsed: Duration,
    /// Why it stopped: `"retry budget exhausted"`, `"token refused after invalidation"`, `"a second fresh
    /// token refused"` (the request already waited out one token's replication lag, then its replacement was
    /// refused too), `"replication lag outlasted the retries"` or `"scoped token refused after its lag window"`.
    pub reason: &'static str,
}

impl Default for RetryOn401Policy {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl<C: Clone> Clone for RetryOn401Policy<C> {
    #[inline]
    fn clone(&self) -> Self {
        Self { config: Arc::clone(&self.config), clone_body: self.clone_body.clone(), attempt: self.attempt, unpaid: 0 }
    }
}

impl<C> Drop for RetryOn401Policy<C> {
    fn drop(&mut self) {
        if self.unpaid > 0 {
            self.pay_deposits();
        }
    }
}

impl RetryOn401Policy {
    /// Configures a policy. Defaults: 10 s lag window, probes of a lagging token from 250 ms apart doubling to
    /// 1 s, 16 lag retries per request, and a [`RetryBudget`] with tower's default parameters shared by every
    /// request through this policy.
    pub fn builder() -> RetryOn401PolicyBuilder {
        RetryOn401PolicyBuilder {
            lag_window: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(250),
            max_probe_interval: Duration::from_secs(1),
            max_lag_retries: 16,
            budget: Some(BudgetRef::Batched(Arc::new(RetryBudget::default()))),
            clone_body: BuiltinBodies,
        }
    }
}

impl<C> RetryOn401Policy<C> {
    fn withdraw(&self) -> bool {
        self.config.budget.as_ref().is_none_or(BudgetRef::withdraw)
    }

    /// Counts a new request into the budget: in batches for the default budget.
    #[inline]
    fn deposit(&mut self) {
        match &self.config.budget {
            Some(BudgetRef::Batched(_)) => {
                self.unpaid += 1;
                if self.unpaid >= RetryBudget::BATCH {
                    self.pay_deposits();
                }
            }
            Some(BudgetRef::Other(budget)) => budget.deposit(),
            None => {}
        }
    }

    #[cold]
    fn pay_deposits(&mut self) {
        if let Some(BudgetRef::Batched(budget)) = &self.config.budget {
            budget.deposit_many(std::mem::take(&mut self.unpaid));
        }
    }

    fn give_up<B>(&self, response: &mut Response<B>, reason: &'static str) {
        let elapsed = self.attempt.refused_at.map_or(Duration::ZERO, |s| s.elapsed());
        tracing::warn!(
            status = response.status().as_u16(),
            retries = self.attempt.retries,
            elapsed = ?elapsed,
            reason,
            "GitHub refused the request's credentials; not retrying"
        );
        response.extensions_mut().insert(RetryGaveUp { retries: self.attempt.retries, elapsed, reason });
    }

    /// The backoff before lag retry number `n` (from 1): `initial * 2^(n-1)`, jittered to 50-100 %.
    fn lag_backoff(&self, n: u32) -> Duration {
        let base = self.config.probe_steps.first.saturating_mul(1 << n.saturating_sub(1).min(16));
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn on_installation_token<B>(
        &mut self,
        response: &mut Response<B>,
        used: InstallationTokenUsed,
    ) -> Option<RetryFuture> {
        let status = response.status();
        let refused = status == StatusCode::UNAUTHORIZED || (status == StatusCode::FORBIDDEN && used.is_scoped());
        if !refused {
            // (The auth layer marks tokens GitHub accepted; this covers responses it did not see first.)
            if status.is_success() || status.is_redirection() {
                used.mark_proven();
            }
            return None;
        }
        if used.is_user_token() {
            return self.on_user_token(response, used);
        }
        if status == StatusCode::FORBIDDEN && used.is_proven() {
            // GitHub accepted this scoped token before: its 403 is about permissions, not replication.
            return None;
        }
        let now = Instant::now();
        self.attempt.refused_at.get_or_insert(now);
        let window_ends = used.minted_at() + self.config.lag_window;
        if now < window_ends && self.attempt.lag_retries >= self.config.max_lag_retries {
            // Still inside the lag window: a re-mint would lag as well. Give up on this request, keep the token.
            self.give_up(response, "replication lag outlasted the retries");
            return None;
        }
        if now < window_ends {
            // Replication lag: the same token again, no re-mint. One token's lag per request: a replacement
            // refused as well means something other than lag is wrong, and more retries would only add load.
            if self.attempt.lag_token.is_some_and(|serial| serial != used.serial()) {
                self.give_up(response, "a second fresh token refused");
                return None;
            }
            self.attempt.lag_token = Some(used.serial());
            self.attempt.lag_retries += 1;
            self.attempt.retries += 1;
            if used.is_proven() {
                if !self.attempt.retried_after_proof {
                    // This attempt was likely sent before another request proved the token: retry at once, free.
                    self.attempt.retried_after_proof = true;
                    return Some(self.retrying(LAG, Some(&used), std::future::ready(())));
                }
                // Refused again after the proof: a lagging replica. A plain, paid retry after backoff.
                if !self.withdraw() {
                    self.give_up(response, "retry budget exhausted");
                    return None;
                }
                let delay = self.lag_backoff(self.attempt.lag_retries).min(window_ends - now);
                return Some(self.retrying(LAG, Some(&used), tokio::time::sleep(delay)));
            }
            // Not proven yet: wait for another request's proof, or for this request's turn to probe. One probe
            // per token per step goes out whatever the budget says; everyone else waits on its answer. A token
            // that no probe got through for the whole window is stale: replace it (one shared mint) and retry
            // once with the new one.
            let steps = self.config.probe_steps;
            let span_of = used.clone();
            return Some(self.retrying(LAG, Some(&span_of), async move {
                if used.replication().wait_turn(used.minted_at(), window_ends, steps).await == Turn::WindowClosed {
                    used.invalidate();
                }
            }));
        }
        if status == StatusCode::UNAUTHORIZED {
            if self.attempt.invalidated {
                self.give_up(response, "token refused after invalidation");
                return None;
            }
            // Stale or revoked: one shared re-mint, whether or not the budget pays for this request's retry (the
            // next requests need the new token either way).
            self.attempt.invalidated = true;
            used.invalidate();
            if !self.withdraw() {
                self.give_up(response, "retry budget exhausted");
                return None;
            }
            self.attempt.retries += 1;
            return Some(self.retrying("stale_token", Some(&used), std::future::ready(())));
        }
        self.give_up(response, "scoped token refused after its lag window");
        None
    }

    /// A user token refused: most often one whose refresh token was spent meanwhile (by this source or another
    /// holder of the user's tokens), which killed it. The source drops it if it is still current and rotates or
    /// adopts the stored pair once; the request is retried with whatever is current then. Once per token: a
    /// retry refused on the same token, or on an older one, is not retried; one refused on a newer token (rotated
    /// again meanwhile by another holder) is, twice in all. (A route that answers `401` to every token thus costs
    /// two rotations per request, paid from the retry budget.)
    fn on_user_token<B>(&mut self, response: &mut Response<B>, used: InstallationTokenUsed) -> Option<RetryFuture> {
        if response.status() != StatusCode::UNAUTHORIZED {
            return None;
        }
        self.attempt.refused_at.get_or_insert_with(Instant::now);
        let newer = self.attempt.user_token.is_none_or(|before| used.serial() > before);
        if !newer || self.attempt.retries >= MAX_USER_TOKEN_RETRIES {
            self.give_up(response, "user token refused after a refresh");
            return None;
        }
        self.attempt.user_token = Some(used.serial());
        self.attempt.invalidated = true;
        used.invalidate();
        if !self.withdraw() {
            self.give_up(response, "retry budget exhausted");
            return None;
        }
        self.attempt.retries += 1;
        Some(self.retrying("user_token_rotated", Some(&used), std::future::ready(())))
    }

    fn on_app_jwt<B>(&mut self, response: &mut Response<B>, used: AppJwtUsed) -> Option<RetryFuture> {
        if response.status() != StatusCode::UNAUTHORIZED || self.attempt.clock_corrected {
            return None;
        }
        self.attempt.refused_at.get_or_insert_with(Instant::now);
        let server_date = response
            .headers()
            .get(DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())?;
        if !used.correct_clock(server_date) {
            return None;
        }
        if !self.withdraw() {
            self.give_up(response, "retry budget exhausted");
            return None;
        }
        self.attempt.clock_corrected = true;
        self.attempt.retries += 1;
        Some(self.retrying("clock_skew", None, std::future::ready(())))
    }

    /// The wait before a retry, in a `retry` span (which token, which attempt, why), counted by reason.
    fn retrying(
        &self,
        reason: &'static str,
        used: Option<&InstallationTokenUsed>,
        wait: impl Future<Output = ()> + Send + 'static,
    ) -> RetryFuture {
        crate::telemetry::retried(reason);
        let span = tracing::info_span!(
            "retry",
            installation = used.map(InstallationTokenUsed::installation_id),
            serial = used.map(InstallationTokenUsed::serial),
            attempt = self.attempt.retries,
            reason,
        );
        span.in_scope(|| tracing::debug!("GitHub refused the request's credentials; retrying"));
        Box::pin(wait.instrument(span))
    }
}

/// The `reason` of retries while GitHub replicates a fresh token.
const LAG: &str = "replication_lag";

type RetryFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<B, ResB, E, C> Policy<Request<B>, Response<ResB>, E> for RetryOn401Policy<C>
where
    C: CloneBody<B>,
{
    type Future = RetryFuture;

    fn retry(&mut self, _request: &mut Request<B>, result: &mut Result<Response<ResB>, E>) -> Option<Self::Future> {
        let response = result.as_mut().ok()?;
        let status = response.status();
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN && response.extensions().is_empty() {
            return None;
        }
        if let Some(used) = response.extensions().get::<InstallationTokenUsed>().cloned() {
            return self.on_installation_token(response, used);
        }
        if let Some(used) = response.extensions().get::<AppJwtUsed>().cloned() {
            return self.on_app_jwt(response, used);
        }
        None
    }

    #[inline]
    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.attempt.retries == 0 {
            // A request's first attempt (retries are counted only in the request's own copy of the policy).
            self.deposit();
        }
        let mut clone = Request::new(self.clone_body.clone_body(request.body())?);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

impl<C> fmt::Debug for RetryOn401Policy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryOn401Policy")
            .field("lag_window", &self.config.lag_window)
            .field("initial_backoff", &self.config.probe_steps.first)
            .field("max_probe_interval", &self.config.probe_steps.max)
            .field("max_lag_retries", &self.config.max_lag_retries)
            .field("budget", &self.config.budget.is_some())
            .field("retries", &self.attempt.retries)
            .finish()
    }
}

/// Configures a [`RetryOn401Policy`].
#[must_use]
pub struct RetryOn401PolicyBuilder<C = BuiltinBodies> {
    lag_window: Duration,
    initial_backoff: Duration,
    max_probe_interval: Duration,
    max_lag_retries: u32,
    budget: Option<BudgetRef>,
    clone_body: C,
}

impl<C> RetryOn401PolicyBuilder<C> {
    /// How long after its mint a refused token is assumed to be replicating (default 10 s; GitHub says lag is
    /// usually under 1 s, users report several).
    pub fn lag_window(mut self, window: Duration) -> Self {
        self.lag_window = window;
        self
    }

    /// The first step between probes of a lagging token, doubled per step up to
    /// [`max_probe_interval`](Self::max_probe_interval), jittered to 50-100 % (default 250 ms). Also the first
    /// backoff for a token refused again after GitHub accepted it.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The longest step between two probes of a lagging token (default 1 s): however many requests wait on
    /// it, they finish within about this long of the lag's end.
    pub fn max_probe_interval(mut self, interval: Duration) -> Self {
        self.max_probe_interval = interval;
        self
    }

    /// How many times one request may retry for replication lag (default 16: with the default steps, enough for
    /// a lone request to probe through the whole 10 s window).
    pub fn max_lag_retries(mut self, retries: u32) -> Self {
        self.max_lag_retries = retries;
        self
    }

    /// The retry budget, shared by every request through policies built from this builder's result. Probes of a
    /// lagging token are not paid from it (there is one per step, whatever the number of requests).
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.budget = Some(BudgetRef::Other(Box::new(budget)));
        self
    }

    /// A [`RetryBudget`] (paid in batches, see there), which you may share between policies and read with
    /// [`RetryBudget::available`].
    pub fn retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(BudgetRef::Batched(budget));
        self
    }

    /// No budget: only the per-request bounds limit retries.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Copies request bodies for retries with `clone`, for body types the built-ins do not know (as tower-http's
    /// `FollowRedirect` does). Return `None` for a body that cannot be copied: its request is sent once.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
    /// use tower_github_app::RetryOn401Policy;
    ///
    /// // A body type of your own that knows whether it holds a buffered payload.
    /// #[derive(Default)]
    /// struct MyBody(Option<Bytes>);
    ///
    /// let policy = RetryOn401Policy::builder()
    ///     .clone_body_fn(|body: &MyBody| body.0.clone().map(|bytes| MyBody(Some(bytes))))
    ///     .build();
    /// # let _ = policy;
    /// ```
    pub fn clone_body_fn<B, F>(self, clone: F) -> RetryOn401PolicyBuilder<CloneBodyFn<F>>
    where
        F: Fn(&B) -> Option<B> + Clone,
    {
        RetryOn401PolicyBuilder {
            lag_window: self.lag_window,
            initial_backoff: self.initial_backoff,
            max_probe_interval: self.max_probe_interval,
            max_lag_retries: self.max_lag_retries,
            budget: self.budget,
            clone_body: CloneBodyFn(clone),
        }
    }

    /// The policy.
    pub fn build(self) -> RetryOn401Policy<C> {
        RetryOn401Policy {
            config: Arc::new(Config {
                lag_window: self.lag_window,
                probe_steps: ProbeSteps {
                    first: self.initial_backoff.max(Duration::from_millis(1)),
                    max: self.max_probe_interval.max(self.initial_backoff).max(Duration::from_millis(1)),
                },
                max_lag_retries: self.max_lag_retries,
                budget: self.budget,
            }),
            clone_body: self.clone_body,
            attempt: Attempt::default(),
            unpaid: 0,
        }
    }
}

impl<C> fmt::Debug for RetryOn401PolicyBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryOn401PolicyBuilder")
            .field("lag_window", &self.lag_window)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_probe_interval", &self.max_probe_interval)
            .field("max_lag_retries", &self.max_lag_retries)
            .field("budget", &self.budget.is_some())
            .finish()
    }
}
