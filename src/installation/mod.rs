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
#[macro_use]
pub(crate) mod settings;
pub(crate) mod mint;
pub(crate) mod replication;
pub(crate) mod source;
pub(crate) mod token;
pub(crate) mod watchdog;

pub use api_base::ApiBase;
pub use mint::{HttpClient, TokenScope};
pub use source::InstallationStats;
pub use token::{InstallationToken, InstallationTokenUsed, Repository};

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Request};

use crate::app::GitHubApp;
use crate::error::{Error, ErrorKind};
use mint::MintParams;
use settings::{INSTALLATION_TOKEN_LIFETIME, Settings};
use source::{Handle, Shared};

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
            scope: TokenScope::new(),
            settings: Settings::default(),
            shared: None,
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
        self.handle.shared.invalidate_serial(token.entry.serial)
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
        // An installation source is always built with its App.
        self.handle.shared.app().expect("an installation source has an App")
    }
}

impl fmt::Debug for Installation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("Installation")
            .field("installation_id", &shared.params.installation_id)
            .field("api_base", &shared.params.api_base)
            .field("app", &shared.app().map(GitHubApp::id))
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
    scope: TokenScope,
    settings: Settings,
    shared: Option<Arc<dyn crate::shared::SharedTokens>>,
}

impl InstallationBuilder {
    /// Replace a token when about this much of its life remains: 10 minutes.
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(600);
    /// Stop stamping requests with a token when this much of its life remains: 1 minute.
    pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(60);

    settings_methods!();
    grace_method!();

    /// Limits tokens to repositories and permissions. By default they cover the whole installation.
    pub fn scope(mut self, scope: TokenScope) -> Self {
        self.scope = scope;
        self
    }

    /// Shares the installation's tokens with every process that uses the same Redis (and namespace): before
    /// minting, the source takes the token another process minted, or mints under a lease that makes the others
    /// wait for it. The request path does not change: it never touches Redis. See [`crate::redis`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_store(mut self, store: crate::redis::RedisStore) -> Self {
        self.shared = Some(store.shared());
        self
    }

    /// Builds the token source. Tokens are minted through `client`: normally the same HTTP client the API
    /// requests use, so proxies, TLS roots and timeouts apply to minting too (any [`HttpClient`]: its request
    /// body must be constructible from `Bytes`, as `Full<Bytes>` is).
    ///
    /// Nothing is sent until the first request or [`Installation::token`] call.
    pub fn build<S: HttpClient<B>, B>(self, client: S) -> Result<Installation, Error> {
        let params = self.params()?;
        let scoped = !self.scope.is_empty();
        let minter = source::Minter::Installation { app: self.app, client: mint::erase(client), store: self.shared };
        let shared = Shared::new(minter, params, scoped, self.settings.timing);
        Ok(Installation { handle: Arc::new(Handle::new(shared)) })
    }

    /// Mints one token now, with no cache, refresher or retry: for one-off scripts and for inspecting exactly
    /// how GitHub answers. A clock-skew refusal still teaches the App the offset.
    pub async fn mint_once<S: HttpClient<B>, B>(&self, client: S) -> Result<InstallationToken, Error> {
        let params = self.params()?;
        let minted = mint::mint_once(&self.app, &mint::erase(client), &params).await?;
        let entry = self.settings.timing.entry(
            minted,
            self.installation_id,
            !self.scope.is_empty(),
            Weak::<source::Shared>::new(),
        );
        Ok(InstallationToken { entry: entry.share() })
    }

    fn params(&self) -> Result<MintParams, Error> {
        if self.installation_id == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "installation id 0 does not exist: use the id from the installation's settings URL, a webhook's \
                 installation.id, or GET /repos/{owner}/{repo}/installation",
            ));
        }
        self.scope.validate()?;
        let checked = self.settings.check(INSTALLATION_TOKEN_LIFETIME)?;
        Ok(MintParams {
            api_base: checked.api_base,
            installation_id: self.installation_id,
            body: self.scope.body(),
            user_agent: checked.user_agent,
            timeout: checked.timeout,
        })
    }
}

impl fmt::Debug for InstallationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationBuilder")
            .field("app", self.app.id())
            .field("installation_id", &self.installation_id)
            .field("scope", &self.scope)
            .field("settings", &self.settings)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Each service clone's view of the installation's current token.
pub(crate) struct InstallationLocal {
    /// Revalidated with one relaxed atomic load per request (arc-swap's `Cache`). It may keep a replaced token
    /// alive until this clone's next request.
    current: arc_swap::cache::Cache<CurrentToken, Option<Arc<token::TokenEntry>>>,
    /// This clone's own copy of the current token's header value. Made once per token per clone.
    stamp: Option<(u64, HeaderValue)>,
}

impl Clone for InstallationLocal {
    fn clone(&self) -> Self {
        // A clone makes its own copy of the header value on first use.
        Self { current: self.current.clone(), stamp: None }
    }
}

/// Lets arc-swap's `Cache` reach the token source's `ArcSwap` through a handle that keeps it alive.
#[derive(Clone)]
struct CurrentToken(Arc<Handle>);

impl std::ops::Deref for CurrentToken {
    type Target = arc_swap::ArcSwapOption<token::TokenEntry>;

    fn deref(&self) -> &Self::Target {
        &self.0.shared.current
    }
}

impl crate::source::TokenSource for Installation {
    type Local = InstallationLocal;

    fn local(&self) -> InstallationLocal {
        InstallationLocal::new(&self.handle)
    }

    fn origin(&self) -> &ApiBase {
        &self.handle.shared.params.api_base
    }

    fn app(&self) -> Option<&GitHubApp> {
        self.handle.shared.app()
    }

    #[inline]
    fn current<'l, B>(
        &self,
        local: &'l mut InstallationLocal,
        _: &Request<B>,
        _: crate::source::Route,
    ) -> Option<(HeaderValue, &'l Arc<token::TokenEntry>)> {
        local.current()
    }

    fn acquire<B>(&self, _: &Request<B>, _: crate::source::Route) -> crate::source::Acquire {
        let handle = Arc::clone(&self.handle);
        Box::pin(async move { handle.acquire(None).await })
    }
}

impl InstallationLocal {
    /// A fresh cache of `handle`'s current token (shared by the single-token sources: one installation, one user).
    pub(crate) fn new(handle: &Arc<Handle>) -> Self {
        InstallationLocal { current: arc_swap::cache::Cache::new(CurrentToken(Arc::clone(handle))), stamp: None }
    }

    /// The hot path: one relaxed load, one header clone (a copy of its own once per token).
    #[inline]
    pub(crate) fn current(&mut self) -> Option<(HeaderValue, &Arc<token::TokenEntry>)> {
        let token = self.current.load().as_ref()?;
        let value = match &self.stamp {
            Some((serial, value)) if *serial == token.serial => value.clone(),
            _ => {
                let value = crate::source::own_copy(&token.authorization);
                self.stamp = Some((token.serial, value.clone()));
                value
            }
        };
        Some((value, token))
    }
}
