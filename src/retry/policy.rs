use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::DATE;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use super::body::clone_body;
use crate::app::AppJwtUsed;
use crate::installation::InstallationTokenUsed;

/// A [`tower::retry::Policy`] that retries what GitHub refused for credential reasons: replication lag of fresh
/// tokens, stale or revoked tokens, and App JWTs refused for clock skew. See the [module docs](crate::retry).
///
/// `RetryOn401Policy::default()` suits most stacks; [`RetryOn401Policy::builder`] changes the lag window, the
/// backoff and the budget.
#[derive(Clone)]
pub struct RetryOn401Policy {
    config: Arc<Config>,
    attempt: Attempt,
}

struct Config {
    lag_window: Duration,
    initial_backoff: Duration,
    max_lag_retries: u32,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
}

/// Per-request state: each request gets its own copy of the policy.
#[derive(Clone, Default)]
struct Attempt {
    started: Option<Instant>,
    retries: u32,
    lag_retries: u32,
    invalidated: bool,
    clock_corrected: bool,
    retried_after_proof: bool,
}

/// Put into a response's extensions when [`RetryOn401Policy`] declined to retry a credential refusal it would
/// otherwise have retried. Also logged as a `WARN` event. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryGaveUp {
    /// Retries made for this request before giving up.
    pub retries: u32,
    /// Time from the first attempt to giving up.
    pub elapsed: Duration,
    /// Why it stopped: `"retry budget exhausted"` or `"token refused after invalidation"`.
    pub reason: &'static str,
}

impl Default for RetryOn401Policy {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RetryOn401Policy {
    /// Configures a policy. Defaults: 10 s lag window, 250 ms initial backoff, 6 lag retries, tower's default
    /// [`TpsBudget`] shared by every request through this policy.
    pub fn builder() -> RetryOn401PolicyBuilder {
        RetryOn401PolicyBuilder {
            lag_window: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(250),
            max_lag_retries: 6,
            budget: Some(Arc::new(TpsBudget::default())),
        }
    }

    fn withdraw(&self) -> bool {
        self.config.budget.as_ref().is_none_or(|budget| budget.withdraw())
    }

    fn give_up<B>(&self, response: &mut Response<B>, reason: &'static str) {
        let elapsed = self.attempt.started.map_or(Duration::ZERO, |s| s.elapsed());
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
        let base = self.config.initial_backoff.saturating_mul(1 << n.saturating_sub(1).min(16));
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
                used.entry.mark_replicated();
            }
            return None;
        }
        let window_ends = used.minted_at() + self.config.lag_window;
        let now = Instant::now();
        if now < window_ends && self.attempt.lag_retries < self.config.max_lag_retries {
            // Replication lag: same token, after a backoff or as soon as another request proves it works.
            self.attempt.lag_retries += 1;
            self.attempt.retries += 1;
            let delay = self.lag_backoff(self.attempt.lag_retries).min(window_ends - now);
            let entry = Arc::clone(&used.entry);
            if entry.replicated.load(Ordering::Acquire) {
                if !self.attempt.retried_after_proof {
                    // This attempt was likely sent before another request proved the token: retry at once, free.
                    self.attempt.retried_after_proof = true;
                    return Some(Box::pin(std::future::ready(())));
                }
                // Refused again after the proof: a lagging replica. A plain, paid retry after backoff.
                if !self.withdraw() {
                    self.give_up(response, "retry budget exhausted");
                    return None;
                }
                return Some(Box::pin(tokio::time::sleep(delay)));
            }
            let budget = self.config.budget.clone();
            return Some(Box::pin(async move {
                let notified = entry.replicated_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if entry.replicated.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    _ = &mut notified => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                // Our own backoff ran out first: probe GitHub if the budget allows, else keep waiting for
                // another request's proof until the window closes.
                if budget.is_none_or(|b| b.withdraw()) {
                    return;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(window_ends) => {}
                }
            }));
        }
        if status == StatusCode::UNAUTHORIZED {
            if self.attempt.invalidated {
                self.give_up(response, "token refused after invalidation");
                return None;
            }
            if !self.withdraw() {
                self.give_up(response, "retry budget exhausted");
                return None;
            }
            // Stale or revoked: one shared re-mint, one retry.
            self.attempt.invalidated = true;
            self.attempt.retries += 1;
            used.invalidate();
            return Some(Box::pin(std::future::ready(())));
        }
        None
    }

    fn on_app_jwt<B>(&mut self, response: &mut Response<B>, used: AppJwtUsed) -> Option<RetryFuture> {
        if response.status() != StatusCode::UNAUTHORIZED || self.attempt.clock_corrected {
            return None;
        }
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
        Some(Box::pin(std::future::ready(())))
    }
}

type RetryFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<B, ResB, E> Policy<Request<B>, Response<ResB>, E> for RetryOn401Policy
where
    B: http_body::Body + Default + 'static,
{
    type Future = RetryFuture;

    fn retry(&mut self, _request: &mut Request<B>, result: &mut Result<Response<ResB>, E>) -> Option<Self::Future> {
        let response = result.as_mut().ok()?;
        if let Some(used) = response.extensions().get::<InstallationTokenUsed>().cloned() {
            return self.on_installation_token(response, used);
        }
        if let Some(used) = response.extensions().get::<AppJwtUsed>().cloned() {
            return self.on_app_jwt(response, used);
        }
        None
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.attempt.started.is_none() {
            self.attempt.started = Some(Instant::now());
            if let Some(budget) = &self.config.budget {
                budget.deposit();
            }
        }
        let mut clone = Request::new(clone_body(request.body())?);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

impl fmt::Debug for RetryOn401Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryOn401Policy")
            .field("lag_window", &self.config.lag_window)
            .field("initial_backoff", &self.config.initial_backoff)
            .field("max_lag_retries", &self.config.max_lag_retries)
            .field("budget", &self.config.budget.is_some())
            .field("retries", &self.attempt.retries)
            .finish()
    }
}

/// Configures a [`RetryOn401Policy`].
#[must_use]
pub struct RetryOn401PolicyBuilder {
    lag_window: Duration,
    initial_backoff: Duration,
    max_lag_retries: u32,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
}

impl RetryOn401PolicyBuilder {
    /// How long after its mint a refused token is assumed to be replicating (default 10 s; GitHub says lag is
    /// usually under 1 s, users report several).
    pub fn lag_window(mut self, window: Duration) -> Self {
        self.lag_window = window;
        self
    }

    /// The first lag backoff, doubled per retry, jittered to 50-100 % (default 250 ms).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// How many times one request may retry for replication lag (default 6).
    pub fn max_lag_retries(mut self, retries: u32) -> Self {
        self.max_lag_retries = retries;
        self
    }

    /// The retry budget, shared by every request through policies built from this builder's result.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// No budget: only the per-request bounds limit retries.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The policy.
    pub fn build(self) -> RetryOn401Policy {
        RetryOn401Policy {
            config: Arc::new(Config {
                lag_window: self.lag_window,
                initial_backoff: self.initial_backoff,
                max_lag_retries: self.max_lag_retries,
                budget: self.budget,
            }),
            attempt: Attempt::default(),
        }
    }
}

impl fmt::Debug for RetryOn401PolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryOn401PolicyBuilder")
            .field("lag_window", &self.lag_window)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_lag_retries", &self.max_lag_retries)
            .field("budget", &self.budget.is_some())
            .finish()
    }
}
