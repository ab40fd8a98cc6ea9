//! What every installation-token source is configured with: where the API is, when tokens are used and
//! replaced, how long a mint may take, and the `User-Agent` of token requests. [`InstallationBuilder`] and
//! [`InstallationPoolBuilder`](crate::InstallationPoolBuilder) share it, and its builder methods.

use std::time::Duration;

use http::HeaderValue;

use super::InstallationBuilder;
use super::api_base::ApiBase;
use super::source::Timing;
use crate::error::{Error, ErrorKind};

/// How long GitHub's installation tokens live.
pub(crate) const INSTALLATION_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Shared settings of token sources.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) api_base: Option<String>,
    pub(crate) uploads_base: Option<String>,
    pub(crate) timing: Timing,
    pub(crate) mint_timeout: Duration,
    pub(crate) user_agent: Option<String>,
}

/// The settings once checked.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) api_base: ApiBase,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            api_base: None,
            uploads_base: None,
            timing: Timing {
                refresh_before: InstallationBuilder::DEFAULT_REFRESH_BEFORE,
                min_remaining: InstallationBuilder::DEFAULT_MIN_REMAINING,
                backoff_min: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
                replication_grace: Duration::from_secs(5),
            },
            mint_timeout: Duration::from_secs(30),
            user_agent: None,
        }
    }
}

impl Settings {
    /// Checks the settings against what GitHub accepts and what keeps tokens usable, for tokens that live
    /// `lifetime` on GitHub.
    pub(crate) fn check(&self, lifetime: Duration) -> Result<Checked, Error> {
        let config = |message: String| Error::new(ErrorKind::InvalidConfig, message);
        let t = &self.timing;
        if t.refresh_before.is_zero() || t.min_remaining >= t.refresh_before {
            return Err(config(format!(
                "refresh_before ({:?}) must be longer than min_remaining ({:?}), or tokens would expire before \
                 they are replaced",
                t.refresh_before, t.min_remaining
            )));
        }
        let longest = lifetime.saturating_sub(Duration::from_secs(60));
        if t.refresh_before >= longest {
            return Err(config(format!(
                "refresh_before ({:?}) is at least the {} minutes a token lives: tokens would be replaced as soon as \
                 they arrive",
                t.refresh_before,
                longest.as_secs() / 60
            )));
        }
        if t.backoff_min.is_zero() || t.backoff_min > t.backoff_max || t.backoff_max > Duration::from_secs(24 * 3600) {
            return Err(config(format!(
                "refresh_backoff({:?}, {:?}) needs 0 < min <= max <= 1 day",
                t.backoff_min, t.backoff_max
            )));
        }
        if self.mint_timeout.is_zero() {
            return Err(config("mint_timeout must be longer than zero".into()));
        }
        if self.mint_timeout > Duration::from_secs(3600) {
            return Err(config(format!(
                "mint_timeout ({:?}) is over an hour: GitHub answers in seconds",
                self.mint_timeout
            )));
        }
        let mut api_base = match &self.api_base {
            Some(url) => ApiBase::parse(url)?,
            None => ApiBase::github_com(),
        };
        if let Some(url) = &self.uploads_base {
            api_base = api_base.with_uploads(url)?;
        }
        let user_agent = match &self.user_agent {
            Some(ua) => HeaderValue::try_from(ua.as_str())
                .map_err(|_| config("the user agent contains characters not allowed in an HTTP header".into()))?,
            None => HeaderValue::from_static(concat!("tower-github-app/", env!("CARGO_PKG_VERSION"))),
        };
        Ok(Checked { api_base, user_agent, timeout: self.mint_timeout })
    }
}

/// The builder methods of [`Settings`], for a builder with a `settings` field.
macro_rules! settings_methods {
    () => {
        /// The REST API base: `https://api.github.com` (default), `https://HOST/api/v3` for GitHub Enterprise Server.
        /// Checked by [`ApiBase::parse`](crate::ApiBase::parse) when the source is built.
        pub fn api_base(mut self, url: &str) -> Self {
            self.settings.api_base = Some(url.to_owned());
            self
        }

        /// Where release assets are uploaded, when not where GitHub puts them for the API base
        /// (`https://uploads.github.com`, `https://uploads.SUBDOMAIN.ghe.com`, `https://HOST/api/uploads`): for test
        /// servers and proxies. Tokens are sent there too. Checked by [`ApiBase::with_uploads`](crate::ApiBase::with_uploads).
        pub fn uploads_base(mut self, url: &str) -> Self {
            self.settings.uploads_base = Some(url.to_owned());
            self
        }

        /// Replace the token when this much of its life remains (default 10 minutes for installation tokens, 30
        /// minutes for user tokens; jittered up to 20 % earlier).
        /// For short-lived tokens (test servers) at most a third of the lifetime is used.
        pub fn refresh_before(mut self, before: Duration) -> Self {
            self.settings.timing.refresh_before = before;
            self
        }

        /// Stop stamping requests with a token when this much of its life remains (default 1 minute, at most a
        /// tenth of the lifetime). The refresher replaces it long before that, unless GitHub is failing.
        pub fn min_remaining(mut self, remaining: Duration) -> Self {
            self.settings.timing.min_remaining = remaining;
            self
        }

        /// Backoff between failed mint attempts: exponential from `min` to `max`, with jitter (default 1 s to 60 s).
        pub fn refresh_backoff(mut self, min: Duration, max: Duration) -> Self {
            self.settings.timing.backoff_min = min;
            self.settings.timing.backoff_max = max;
            self
        }

        /// How long one token request may take before it counts as failed (default 30 s). For user tokens it bounds
        /// each store call; the refresh request itself may take what is left of the lease after a save's share.
        pub fn mint_timeout(mut self, timeout: Duration) -> Self {
            self.settings.mint_timeout = timeout;
            self
        }

        /// The `User-Agent` of token requests (default `tower-github-app/VERSION`). GitHub asks for the App's name.
        pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
            self.settings.user_agent = Some(user_agent.into());
            self
        }
    };
}

/// [`Settings::timing`]'s replication grace, for sources whose old token stays valid after a refresh
/// (installation tokens; a user's old token dies when its refresh token is spent).
macro_rules! grace_method {
    () => {
        /// After a scheduled refresh, keep stamping the old (still valid) token this long before switching to the
        /// new one, so requests do not meet GitHub's replication lag of fresh tokens (default 5 s, at most a tenth
        /// of the lifetime; zero switches at once). A cold start or an invalidation never waits for it.
        pub fn replication_grace(mut self, grace: Duration) -> Self {
            self.settings.timing.replication_grace = grace;
            self
        }
    };
}
