//! Installation tokens: minting them, and keeping one current per installation.
//!
//! Owns: the API base and uploads origin ([`ApiBase`]), the token request and the reading of GitHub's answer
//! (`mint`), the token types ([`InstallationToken`], [`InstallationTokenUsed`]), what is known of a fresh token's
//! replication (`replication`: the proof and the probe schedule the retry policy waits on), and the token source
//! ([`Installation`]) with its background refresher and the watchdog thread. It signs nothing itself (it asks the [`GitHubApp`]) and touches no user request (the
//! [`auth`](crate::auth) layer does).
//!
//! ```
//! use std::time::Duration;
//! use tower_github_app::{GitHubApp, Installation, testing::FakeGitHub};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_github_app::Error> {
//! let github = FakeGitHub::start().await;
//! let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
//!     .api_base(&github.api_base())
//!     .refresh_before(Duration::from_secs(600))
//!     .build(github.client())?;
//!
//! // For `git` or a subprocess: a token with at least 15 minutes left.
//! let token = installation.token_valid_for(Duration::from_secs(15 * 60)).await?;
//! assert!(token.expose_secret().starts_with("ghs_"));
//! assert_eq!(format!("{token:?}").contains(token.expose_secret()), false);
//! assert_eq!(installation.stats().mints, 1);
//! # Ok(())
//! # }
//! ```

pub(crate) mod api_base;
pub(crate) mod mint;
pub(crate) mod replication;
pub(crate) mod source;
pub(crate) mod token;
mod watchdog;

pub use api_base::ApiBase;
pub use mint::TokenScope;
pub use source::InstallationStats;
pub use token::{InstallationToken, InstallationTokenUsed, Repository};

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tower::Service;

use crate::app::GitHubApp;
use crate::error::{BoxError, Error, ErrorKind};
use mint::MintParams;
use source::{Handle, Shared, Timing};

/// The token source of one installation: a cheaply cloneable handle to its current token, which a background
/// task replaces ahead of expiry.
///
/// - Exactly one mint is in flight at any time, however many requests arrive.
/// - Requests that arrive before the first token exists wait for that one mint; while a usable token exists,
///   nothing waits.
/// - The refresher replaces a token when about 10 minutes remain (configurable, jittered), keeps using the old
///   one for a few seconds while GitHub replicates the new one, retries a failed refresh with bounded exponential
///   backoff while the old token still serves, and stops when the last handle is dropped. It starts lazily, on
///   the first request, on the Tokio runtime that request runs on (which needs timers enabled).
/// - No runtime is trusted to keep running it: when that runtime shuts down or stops being driven, the next
///   request on a live runtime restores the token and starts a new refresher there, without waiting; a
///   process-wide watchdog thread withdraws tokens whose time is over meanwhile, so none is ever stamped past it.
///
/// Wrap an HTTP service with [`InstallationAuthLayer`](crate::InstallationAuthLayer) to stamp requests with it,
/// or call [`token`](Installation::token) for `git` and subprocesses.
#[derive(Clone)]
pub struct Installation {
    pub(crate) handle: Arc<Handle>,
}

impl Installation {
    /// Starts configuring the token source for `installation_id` of `app`.
    pub fn builder(app: GitHubApp, installation_id: u64) -> InstallationBuilder {
        InstallationBuilder {
            app,
            installation_id,
            api_base: None,
            uploads_base: None,
            scope: TokenScope::new(),
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

    /// The current token, minting one first if there is none (or it is about to expire).
    pub async fn token(&self) -> Result<InstallationToken, Error> {
        self.handle.acquire(None).await.map(|entry| InstallationToken { entry })
    }

    /// A token with at least `validity` left, replacing the current one early if it has less. Use it before
    /// long jobs that cannot refresh midway (a `git clone` of a large repository). `validity` must be shorter
    /// than a token's lifetime (an hour on GitHub).
    pub async fn token_valid_for(&self, validity: Duration) -> Result<InstallationToken, Error> {
        self.handle.acquire(Some(validity)).await.map(|entry| InstallationToken { entry })
    }

    /// Drops `token` if it is still the current one, so the next request gets a freshly minted token.
    pub fn invalidate(&self, token: &InstallationToken) -> bool {
        self.handle.shared.invalidate(token.entry.serial)
    }

    /// What the token source has done so far.
    pub fn stats(&self) -> InstallationStats {
        self.handle.shared.stats()
    }

    /// The installation's id.
    pub fn installation_id(&self) -> u64 {
        self.handle.shared.params.installation_id
    }

    /// The API its tokens are minted on and sent to.
    pub fn api_base(&self) -> &ApiBase {
        &self.handle.shared.params.api_base
    }

    /// The App the tokens are minted for.
    pub fn app(&self) -> &GitHubApp {
        &self.handle.shared.app
    }
}

impl fmt::Debug for Installation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("Installation")
            .field("installation_id", &shared.params.installation_id)
            .field("api_base", &shared.params.api_base)
            .field("app", shared.app.id())
            .field("scoped", &shared.scoped)
            .field("stats", &shared.stats())
            .finish_non_exhaustive()
    }
}

/// Configures an [`Installation`].
#[must_use]
pub struct InstallationBuilder {
    app: GitHubApp,
    installation_id: u64,
    api_base: Option<String>,
    uploads_base: Option<String>,
    scope: TokenScope,
    timing: Timing,
    mint_timeout: Duration,
    user_agent: Option<String>,
}

impl InstallationBuilder {
    /// Replace a token when about this much of its life remains: 10 minutes.
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(600);
    /// Stop stamping requests with a token when this much of its life remains: 1 minute.
    pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(60);

    /// The REST API base: `https://api.github.com` (default), `https://HOST/api/v3` for GitHub Enterprise Server.
    /// Checked by [`ApiBase::parse`] when the source is built.
    pub fn api_base(mut self, url: &str) -> Self {
        self.api_base = Some(url.to_owned());
        self
    }

    /// Where release assets are uploaded, when not where GitHub puts them for the API base
    /// (`https://uploads.github.com`, `https://uploads.SUBDOMAIN.ghe.com`, `https://HOST/api/uploads`): for test
    /// servers and proxies. Tokens are sent there too. Checked by [`ApiBase::with_uploads`].
    pub fn uploads_base(mut self, url: &str) -> Self {
        self.uploads_base = Some(url.to_owned());
        self
    }

    /// Limits tokens to repositories and permissions. By default they cover the whole installation.
    pub fn scope(mut self, scope: TokenScope) -> Self {
        self.scope = scope;
        self
    }

    /// Replace the token when this much of its life remains (default 10 minutes; jittered up to 20 % earlier).
    /// For short-lived tokens (test servers) at most a third of the lifetime is used.
    pub fn refresh_before(mut self, before: Duration) -> Self {
        self.timing.refresh_before = before;
        self
    }

    /// Stop stamping requests with a token when this much of its life remains (default 1 minute, at most a
    /// tenth of the lifetime). The refresher replaces it long before that, unless GitHub is failing.
    pub fn min_remaining(mut self, remaining: Duration) -> Self {
        self.timing.min_remaining = remaining;
        self
    }

    /// Backoff between failed mint attempts: exponential from `min` to `max`, with jitter (default 1 s to 60 s).
    pub fn refresh_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.timing.backoff_min = min;
        self.timing.backoff_max = max;
        self
    }

    /// After a scheduled refresh, keep stamping the old (still valid) token this long before switching to the
    /// new one, so requests do not meet GitHub's replication lag of fresh tokens (default 5 s, at most a tenth
    /// of the lifetime; zero switches at once). A cold start or an invalidation never waits for it.
    pub fn replication_grace(mut self, grace: Duration) -> Self {
        self.timing.replication_grace = grace;
        self
    }

    /// How long one token request may take before it counts as failed (default 30 s).
    pub fn mint_timeout(mut self, timeout: Duration) -> Self {
        self.mint_timeout = timeout;
        self
    }

    /// The `User-Agent` of token requests (default `tower-github-app/VERSION`). GitHub asks for the App's name.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Builds the token source. Tokens are minted through `client`: normally the same HTTP client the API
    /// requests use, so proxies, TLS roots and timeouts apply to minting too. Its request body must be
    /// constructible from [`Bytes`] (`Full<Bytes>`, for example); wrap other clients with
    /// [`ServiceExt::map_request`](tower::ServiceExt::map_request).
    ///
    /// Nothing is sent until the first request or [`Installation::token`] call.
    pub fn build<S, B, ResB>(self, client: S) -> Result<Installation, Error>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: From<Bytes> + Send + 'static,
        ResB: http_body::Body + Send + 'static,
        ResB::Data: Send,
        ResB::Error: Into<BoxError>,
    {
        let params = self.params()?;
        let scoped = !self.scope.is_empty();
        let shared = Shared::new(self.app, mint::erase(client), params, scoped, self.timing);
        Ok(Installation { handle: Arc::new(Handle::new(shared)) })
    }

    /// Mints one token now, with no cache, refresher or retry: for one-off scripts and for inspecting exactly
    /// how GitHub answers. A clock-skew refusal still teaches the App the offset.
    pub async fn mint_once<S, B, ResB>(&self, client: S) -> Result<InstallationToken, Error>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: From<Bytes> + Send + 'static,
        ResB: http_body::Body + Send + 'static,
        ResB::Data: Send,
        ResB::Error: Into<BoxError>,
    {
        let params = self.params()?;
        let minted = mint::mint_once(&self.app, &mint::erase(client), &params).await?;
        let entry = self.timing.entry(minted, self.installation_id, !self.scope.is_empty(), Weak::new());
        Ok(InstallationToken { entry: entry.share() })
    }

    fn params(&self) -> Result<MintParams, Error> {
        let config = |message: String| Error::new(ErrorKind::InvalidConfig, message);
        if self.installation_id == 0 {
            return Err(config(
                "installation id 0 does not exist: use the id from the installation's settings URL, a webhook's \
                 installation.id, or GET /repos/{owner}/{repo}/installation"
                    .into(),
            ));
        }
        let t = &self.timing;
        if t.refresh_before.is_zero() || t.min_remaining >= t.refresh_before {
            return Err(config(format!(
                "refresh_before ({:?}) must be longer than min_remaining ({:?}), or tokens would expire before \
                 they are replaced",
                t.refresh_before, t.min_remaining
            )));
        }
        if t.refresh_before >= Duration::from_secs(59 * 60) {
            return Err(config(format!(
                "refresh_before ({:?}) is at least the 59 minutes a token lives: tokens would be replaced as soon \
                 as they arrive. The default is 10 minutes",
                t.refresh_before
            )));
        }
        if t.backoff_min.is_zero() || t.backoff_min > t.backoff_max {
            return Err(config(format!(
                "refresh_backoff({:?}, {:?}) needs 0 < min <= max",
                t.backoff_min, t.backoff_max
            )));
        }
        if self.mint_timeout.is_zero() {
            return Err(config("mint_timeout must be longer than zero".into()));
        }
        self.scope.validate()?;
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
        Ok(MintParams {
            api_base,
            installation_id: self.installation_id,
            body: self.scope.body(),
            user_agent,
            timeout: self.mint_timeout,
        })
    }
}

impl fmt::Debug for InstallationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationBuilder")
            .field("app", self.app.id())
            .field("installation_id", &self.installation_id)
            .field("api_base", &self.api_base)
            .field("uploads_base", &self.uploads_base)
            .field("scope", &self.scope)
            .field("timing", &self.timing)
            .field("mint_timeout", &self.mint_timeout)
            .finish_non_exhaustive()
    }
}
