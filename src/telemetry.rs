//! What the crate reports about its tokens: `tracing` spans and events, and (feature `metrics`) counters,
//! gauges and histograms through the [`metrics`](https://docs.rs/metrics) facade, for whichever exporter the
//! application installs (Prometheus, StatsD, OpenTelemetry…).
//!
//! # Spans
//! | span | level | fields |
//! |---|---|---|
//! | `mint` | `INFO` | `installation` (0 for a user token), `kind`, `scoped`, `serial` and `expires_in` once minted |
//! | `refresh` | `INFO` | `installation`, `kind`, `attempt` (1, then 2… after failures); a `mint` runs inside |
//! | `lookup` | `INFO` | `account`, `repository` (empty for an account), `installation` once found |
//! | `retry` | `INFO` | `installation`, `serial`, `attempt`, `reason`: the wait before a retry of a refused request |
//!
//! Never a token, a JWT, a refresh token or a key: spans name tokens by their serial (the order this process got
//! them in), installations by id.
//!
//! # Metrics (feature `metrics`)
//! Labels have a handful of values each: no installation ids (a pool may hold 15,000 of them).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`MINTS`] | counter | `kind`, `origin` | tokens this process got: `origin="github"` minted here, `"shared"` taken from a shared store |
//! | [`FAILED_MINTS`] | counter | `kind`, `error` | mint attempts that failed; `error` is the [`ErrorKind`] in snake case |
//! | [`MINT_SECONDS`] | histogram | `kind` | how long a mint took, JWT and shared store included |
//! | [`WAITS`] | counter | `kind` | requests (and `token()` calls) that found no usable token and waited for one |
//! | [`RETRIES`] | counter | `reason` | retries by [`RetryOn401Policy`](crate::RetryOn401Policy): `replication_lag`, `stale_token`, `user_token_rotated`, `clock_skew` |
//! | [`INVALIDATIONS`] | counter | `kind` | tokens dropped because GitHub refused them |
//! | [`TOKEN_AGE_AT_USE`] | histogram | `kind` | seconds since the token a request carries was received, recorded per request |
//! | [`LOOKUPS`] | counter | `outcome` | installation lookups: `found`, `not_installed`, `failed` |
//! | [`POOL_INSTALLATIONS`] | gauge | | entries (installation and scope) the process's [`InstallationPool`](crate::InstallationPool)s hold |
//!
//! `kind` is `installation` or `user`. Handles are registered once per token (and once per pool), so install the
//! recorder before building sources and pools: a token minted before it reports its age to no one.
//!
//! Cost: with the feature, a request with a valid token also reads the clock once and records one histogram
//! value through the handle its token holds; everything else is per mint, per wait or per retry. Without the
//! feature, none of it is compiled.

use std::time::Duration;

use crate::error::Error;
#[cfg(any(doc, feature = "metrics"))]
use crate::error::ErrorKind;

/// Counter: tokens this process got (labels `kind`, `origin`).
pub const MINTS: &str = "github_app_token_mints_total";
/// Counter: mint attempts that failed (labels `kind`, `error`).
pub const FAILED_MINTS: &str = "github_app_token_mint_failures_total";
/// Histogram: seconds a mint took (label `kind`).
pub const MINT_SECONDS: &str = "github_app_token_mint_duration_seconds";
/// Counter: requests that waited for a token (label `kind`).
pub const WAITS: &str = "github_app_token_waits_total";
/// Counter: retries of refused requests (label `reason`).
pub const RETRIES: &str = "github_app_retries_total";
/// Counter: tokens dropped because GitHub refused them (label `kind`).
pub const INVALIDATIONS: &str = "github_app_token_invalidations_total";
/// Histogram: the age in seconds of the token each request carries (label `kind`).
pub const TOKEN_AGE_AT_USE: &str = "github_app_token_age_at_use_seconds";
/// Counter: installation lookups (label `outcome`).
pub const LOOKUPS: &str = "github_app_installation_lookups_total";
/// Gauge: tokens an installation pool holds.
pub const POOL_INSTALLATIONS: &str = "github_app_pool_installations";

/// The `mint` span: which installation, which kind of token, whether scoped; [`minted_in`] adds which token.
pub(crate) fn mint_span(installation: u64, kind: &'static str, scoped: bool) -> tracing::Span {
    tracing::info_span!(
        "mint",
        installation,
        kind,
        scoped,
        serial = tracing::field::Empty,
        expires_in = tracing::field::Empty
    )
}

/// Names the token a `mint` span got: its serial and the seconds it has left.
pub(crate) fn minted_in(span: &tracing::Span, token: &crate::installation::token::TokenEntry) {
    span.record("serial", token.serial);
    span.record("expires_in", token.expires().saturating_duration_since(tokio::time::Instant::now()).as_secs());
}

/// `installation` or `user`: user tokens carry installation id 0.
pub(crate) fn kind(installation: u64) -> &'static str {
    if installation == 0 { "user" } else { "installation" }
}

/// Where a token came from, for [`MINTS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Got {
    /// Minted by this process.
    Minted,
    /// Taken from a shared store, minted by another process.
    Shared,
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn minted(kind: &'static str, got: Got, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let origin = match got {
            Got::Minted => "github",
            Got::Shared => "shared",
        };
        metrics::counter!(MINTS, "kind" => kind, "origin" => origin).increment(1);
        metrics::histogram!(MINT_SECONDS, "kind" => kind).record(took);
    }
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn mint_failed(kind: &'static str, error: &Error) {
    #[cfg(feature = "metrics")]
    metrics::counter!(FAILED_MINTS, "kind" => kind, "error" => error_label(error.kind())).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn waited(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(WAITS, "kind" => kind).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn retried(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(RETRIES, "reason" => reason).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn invalidated(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(INVALIDATIONS, "kind" => kind).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn looked_up(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(LOOKUPS, "outcome" => outcome).increment(1);
}

/// The pool's size gauge, registered once per pool; pools add up.
#[derive(Clone)]
pub(crate) struct PoolGauge {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl PoolGauge {
    pub(crate) fn new() -> Self {
        PoolGauge {
            #[cfg(feature = "metrics")]
            gauge: metrics::gauge!(POOL_INSTALLATIONS),
        }
    }

    /// A slot entered the pool.
    pub(crate) fn increment(&self) {
        #[cfg(feature = "metrics")]
        self.gauge.increment(1.0);
    }

    /// A slot left the pool.
    pub(crate) fn decrement(&self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

/// What a token records each time a request carries it: registered once per token.
pub(crate) struct AgeAtUse {
    #[cfg(feature = "metrics")]
    histogram: metrics::Histogram,
}

impl AgeAtUse {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(kind: &'static str) -> Self {
        AgeAtUse {
            #[cfg(feature = "metrics")]
            histogram: metrics::histogram!(TOKEN_AGE_AT_USE, "kind" => kind),
        }
    }

    /// Records the age of a token received at `received_at`: the hot path's one addition with the feature on.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn record(&self, received_at: tokio::time::Instant) {
        #[cfg(feature = "metrics")]
        self.histogram.record(received_at.elapsed());
    }
}

/// The `error` label of [`FAILED_MINTS`].
#[cfg(feature = "metrics")]
fn error_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidKey => "invalid_key",
        ErrorKind::InvalidConfig => "invalid_config",
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::JwtRejected => "jwt_rejected",
        ErrorKind::ClockSkew => "clock_skew",
        ErrorKind::InstallationForbidden => "installation_forbidden",
        ErrorKind::InstallationNotFound => "installation_not_found",
        ErrorKind::NotInstalled => "not_installed",
        ErrorKind::InvalidScope => "invalid_scope",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::ServerError => "server_error",
        ErrorKind::UnexpectedStatus => "unexpected_status",
        ErrorKind::Transport => "transport",
        ErrorKind::Timeout => "timeout",
        ErrorKind::MalformedResponse => "malformed_response",
        ErrorKind::Signing => "signing",
        ErrorKind::Runtime => "runtime",
        ErrorKind::ReauthorizationRequired => "reauthorization_required",
        ErrorKind::AuthorizationFailed => "authorization_failed",
        ErrorKind::Store => "store",
    }
}
