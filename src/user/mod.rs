//! User-to-server tokens: an App acting for a user, with access tokens (`ghu_…`, 8 hours) that are replaced in
//! the background and refresh tokens (`ghr_…`, single use) that are never spent twice and never lost.
//!
//! Owns: the OAuth side on the web origin ([`OAuthApp`]: web-flow code exchange, device flow, refresh grant), the
//! pair ([`UserTokens`]), the rotation protocol over a [`UserTokenStore`]
//! (`rotation`: lease, spend, save, adopt), and the token source [`UserToken`], which keeps the current access
//! token in the same `ArcSwap` and refresher as an [`Installation`](crate::Installation) and is stamped by
//! [`UserAuthLayer`](crate::UserAuthLayer).
//!
//! What it guarantees:
//! - Requests read the current access token without a lock; the refresher replaces it well before it expires
//!   (30 minutes by default, jittered), one rotation at a time.
//! - No two holders (tasks, sources, processes sharing the store) spend one refresh token: each rotation first
//!   takes a lease on the record by compare-and-swap; a holder that loses adopts the winner's pair.
//! - The new pair is saved before its access token is used. If the store fails after GitHub rotated, the pair is
//!   kept in memory, the save retried with backoff, and the failure reported (an [`ErrorKind::Store`] error on
//!   requests, the `on_store_error` callback, an `error` log) until it is saved.
//! - GitHub refusing the refresh token (`bad_refresh_token`), an expired refresh token, or no stored tokens make
//!   every request of the user fail fast with [`ErrorKind::ReauthorizationRequired`], and the
//!   `on_reauthorization_required` callback fires once. `incorrect_client_credentials` is
//!   [`ErrorKind::InvalidConfig`]. Apps with token expiry off (no refresh token) keep their token.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_github_app::{UserAuthLayer, store::MemoryStore, testing::FakeGitHub, user::UserToken};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let github = FakeGitHub::start().await;
//! // The web flow: the user came back from github.oauth_app().authorize_url(state) with a code.
//! let code = github.authorization_code("mona");
//! let tokens = github.oauth_app().exchange_code(github.client(), &code, None).await?;
//!
//! let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
//!     .api_base(&github.api_base())
//!     .on_reauthorization_required(|error| eprintln!("ask mona to sign in again: {error}"))
//!     .build(github.client())?;
//! user.sign_in(tokens).await?;
//!
//! let client = ServiceBuilder::new().layer(UserAuthLayer::new(user.clone())).service(github.client());
//! let request = http::Request::get(format!("{}/user", github.api_base()))
//!     .body(http_body_util::Full::<bytes::Bytes>::default())?;
//! assert_eq!(client.oneshot(request).await?.status(), 200);
//! # Ok(())
//! # }
//! ```

pub(crate) mod oauth;
pub(crate) mod rotation;

pub use oauth::{DeviceCode, OAuthApp, UserTokens};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request};
use tokio::time::Instant;

use crate::app::GitHubApp;
use crate::error::{Error, ErrorKind};
use crate::installation::mint::HttpClient;
use crate::installation::mint::{self, MintParams, Minted};
use crate::installation::settings::Settings;
use crate::installation::source::{Handle, Minter, Shared};
use crate::installation::token::{TokenDetails, TokenEntry};
use crate::installation::{ApiBase, InstallationLocal};
use crate::store::UserTokenStore;
use rotation::{Callback, Current, Rotation, RotationConfig};

/// How long GitHub's user access tokens live.
const USER_TOKEN_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// How far ahead a token that does not expire is looked at again (a sign-in elsewhere replaces it then).
const NON_EXPIRING_RECHECK: Duration = Duration::from_secs(24 * 3600);

/// One user's access token, kept current: a cheaply cloneable handle, like an
/// [`Installation`](crate::Installation), whose refresher rotates the user's token pair through a
/// [`UserTokenStore`]. See the [module docs](self).
#[derive(Clone)]
pub struct UserToken {
    handle: Arc<Handle>,
    rotation: Arc<Rotation>,
}

impl UserToken {
    /// Starts configuring the token source of the user whose tokens `store` keeps under `key` (your id for the
    /// user: a login, a database id). `oauth` is the App's client ID and secret.
    pub fn builder(oauth: OAuthApp, store: impl UserTokenStore, key: impl Into<String>) -> UserTokenBuilder {
        let mut settings = Settings::default();
        settings.timing.refresh_before = UserTokenBuilder::DEFAULT_REFRESH_BEFORE;
        settings.timing.replication_grace = Duration::ZERO;
        UserTokenBuilder {
            oauth,
            store: Arc::new(store),
            key: key.into(),
            settings,
            lease: UserTokenBuilder::DEFAULT_LEASE,
            on_reauthorization_required: None,
            on_store_error: None,
        }
    }

    /// Stores `tokens` (from [`OAuthApp::exchange_code`] or [`OAuthApp::poll_device`], or your own database) as the
    /// user's, replacing whatever the store held (a pair that needed re-authorization, say), and waits until
    /// requests use them.
    pub async fn sign_in(&self, tokens: UserTokens) -> Result<(), Error> {
        tokens.check()?;
        self.rotation.sign_in(&tokens).await?;
        self.handle.shared.mint_now();
        self.handle.acquire(None).await.map(drop)
    }

    /// Marks the user signed out in the store and drops this source's token: its requests fail with
    /// [`ErrorKind::ReauthorizationRequired`] (without the callback) until [`sign_in`](Self::sign_in). Other
    /// holders of the store stop when they next read it (at their next rotation or refusal). The tokens stay
    /// valid at GitHub until they expire or the user revokes the App's authorization.
    pub async fn sign_out(&self) -> Result<(), Error> {
        self.rotation.sign_out().await?;
        self.handle.shared.mint_now();
        Ok(())
    }

    /// Whether the store holds tokens for the user that are not known to need re-authorization (a sign-in, then
    /// no refusal and no sign-out). Reads the store; fires no callback.
    pub async fn is_signed_in(&self) -> Result<bool, Error> {
        self.rotation.is_signed_in().await
    }

    /// The current access token, rotating first if there is none usable.
    pub async fn token(&self) -> Result<UserAccessToken, Error> {
        self.handle.acquire(None).await.map(|entry| UserAccessToken { entry })
    }

    /// An access token that this source will not replace for at least `validity`, rotating first if the current
    /// one would be replaced sooner: for `git` and jobs that cannot refresh midway. Replacing a user token ends it
    /// (its refresh token is spent), so the bound is the token's refresh time, not its expiry: at most about its
    /// lifetime less [`refresh_before`](UserTokenBuilder::refresh_before). Another holder sharing the store may
    /// still rotate it sooner, on its own schedule or after a refusal.
    pub async fn token_valid_for(&self, validity: Duration) -> Result<UserAccessToken, Error> {
        self.handle.acquire(Some(validity)).await.map(|entry| UserAccessToken { entry })
    }

    /// Drops `token` if it is still the current one; the next request gets a rotated (or adopted) one.
    pub fn invalidate(&self, token: &UserAccessToken) -> bool {
        self.handle.shared.invalidate_serial(token.entry.serial)
    }

    /// What the source has done so far.
    pub fn stats(&self) -> UserTokenStats {
        let shared = self.handle.shared.stats();
        let c = &self.rotation.counters;
        UserTokenStats {
            refreshes: c.refreshes.load(Ordering::Relaxed),
            adopted: c.adopted.load(Ordering::Relaxed),
            failed: shared.failed_mints,
            waited_requests: shared.waited_requests,
            invalidations: shared.invalidations,
            lease_waits: c.lease_waits.load(Ordering::Relaxed),
            store_failures: c.store_failures.load(Ordering::Relaxed),
            reauthorizations_required: c.reauthorizations.load(Ordering::Relaxed),
            unsaved: self.rotation.has_unsaved(),
        }
    }

    /// The key of the user's record in the store.
    pub fn key(&self) -> &str {
        self.rotation.key()
    }

    /// The API the access tokens are sent to.
    pub fn api_base(&self) -> &ApiBase {
        &self.handle.shared.params.api_base
    }
}

impl fmt::Debug for UserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserToken")
            .field("key", &self.rotation.key())
            .field("api_base", &self.handle.shared.params.api_base)
            .field("oauth", &self.rotation.config.oauth)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Counts of what a [`UserToken`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UserTokenStats {
    /// Refresh tokens this source spent (each a rotation GitHub performed).
    pub refreshes: u64,
    /// Pairs another holder rotated (or a sign-in wrote) that this source took from the store instead of
    /// refreshing.
    pub adopted: u64,
    /// Rotations that failed (store, network, GitHub).
    pub failed: u64,
    /// Requests (and `token()` calls) that found no usable token and waited.
    pub waited_requests: u64,
    /// Tokens dropped because GitHub refused them.
    pub invalidations: u64,
    /// Rotations that waited for another holder's lease.
    pub lease_waits: u64,
    /// Store reads or writes that failed.
    pub store_failures: u64,
    /// Times the user was found to need re-authorization (the callback fired as often).
    pub reauthorizations_required: u64,
    /// Whether a rotated pair is waiting for the store to take it.
    pub unsaved: bool,
}

/// Configures a [`UserToken`].
#[must_use]
pub struct UserTokenBuilder {
    oauth: OAuthApp,
    store: Arc<dyn UserTokenStore>,
    key: String,
    settings: Settings,
    lease: Duration,
    on_reauthorization_required: Option<Callback>,
    on_store_error: Option<Callback>,
}

impl UserTokenBuilder {
    /// Replace a token when about this much of its life remains: 30 minutes (of GitHub's 8 hours).
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(30 * 60);
    /// How long a rotation may hold the record before another holder may take over: 2 minutes (four times the
    /// default `mint_timeout`).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

    settings_methods!();

    /// How long a rotation holds the user's record against other holders (default 2 minutes): longer than twice
    /// `mint_timeout` (30 s by default, which bounds the store calls; the refresh request may take what is left of
    /// the lease after a save's share), at most an hour. A holder that dies mid-rotation blocks the others this
    /// long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Called once each time the user must authorize the App again (GitHub refused the refresh token, it
    /// expired, or the store has no tokens for the user). Requests of the user fail fast with
    /// [`ErrorKind::ReauthorizationRequired`] until [`UserToken::sign_in`].
    pub fn on_reauthorization_required(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_reauthorization_required = Some(Arc::new(callback));
        self
    }

    /// Called for every failed store read or write, notably when GitHub rotated the pair and the store did not
    /// take it: the pair is then kept in memory and the write retried with backoff.
    pub fn on_store_error(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_store_error = Some(Arc::new(callback));
        self
    }

    /// Builds the source. Refreshes go through `client` to the [`OAuthApp`]'s web origin; tokens are sent only
    /// to the API origin. Nothing is read or sent until the first request, [`UserToken::token`] or
    /// [`UserToken::sign_in`].
    pub fn build<S: HttpClient<B>, B>(self, client: S) -> Result<UserToken, Error> {
        let checked = self.settings.check(USER_TOKEN_LIFETIME)?;
        if self.key.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the user's store key is empty: use the user's login or id",
            ));
        }
        let usable = self.lease.saturating_sub(rotation::skew_margin(self.lease));
        if usable <= checked.timeout.saturating_mul(2) || self.lease > rotation::MAX_LEASE {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the lease ({:?}) must be longer than twice mint_timeout ({:?}), which bounds the refresh and the \
                     save it covers, plus a tenth for clocks (at most 5 s), and at most an hour (default 2 minutes)",
                    self.lease, checked.timeout
                ),
            ));
        }
        // Refreshes say who is asking as the sign-in did, unless this builder was told otherwise.
        let user_agent =
            if self.settings.user_agent.is_some() { checked.user_agent.clone() } else { self.oauth.user_agent.clone() };
        let rotation = Arc::new(Rotation::new(RotationConfig {
            oauth: self.oauth,
            client: mint::erase(client),
            store: self.store,
            key: self.key,
            lease: self.lease,
            user_agent,
            timeout: checked.timeout,
            refresh_before: self.settings.timing.refresh_before,
            on_reauthorization_required: self.on_reauthorization_required,
            on_store_error: self.on_store_error,
        }));
        let params = MintParams {
            api_base: checked.api_base,
            installation_id: 0,
            body: None,
            user_agent: checked.user_agent,
            timeout: checked.timeout,
        };
        let shared = Shared::new(Minter::User(Arc::clone(&rotation)), params, false, self.settings.timing);
        Ok(UserToken { handle: Arc::new(Handle::new(shared)), rotation })
    }
}

impl fmt::Debug for UserTokenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTokenBuilder")
            .field("oauth", &self.oauth)
            .field("key", &self.key)
            .field("settings", &self.settings)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Turns a pair ready for requests into what the refresher publishes: times on the local monotonic clock,
/// measured from when GitHub issued the pair.
pub(crate) fn minted(current: Current) -> Result<Minted, Error> {
    let Current { tokens, issued_at } = current;
    let authorization = tokens.authorization()?;
    let now = SystemTime::now();
    // How old the token is, as far as the local times go: at most a day (the times are kept as millisecond offsets
    // from it, and nothing reads an age beyond seconds).
    let age = now.duration_since(issued_at).unwrap_or_default().min(NON_EXPIRING_RECHECK);
    let received_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    let (expires_at, left) = match tokens.expires_at {
        Some(expires_at) => {
            let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
            if lifetime < Duration::from_secs(1) {
                // Rotating again at once would only get another such token: the refresher backs off instead.
                return Err(Error::new(
                    ErrorKind::MalformedResponse,
                    "GitHub issued a user access token that expires at once (expires_in 0); retrying with backoff",
                ));
            }
            // Looked at again within a day at the latest, however long it lives.
            (expires_at, expires_at.duration_since(now).unwrap_or_default().min(NON_EXPIRING_RECHECK))
        }
        // A token that does not expire is looked at again daily.
        None => (now + NON_EXPIRING_RECHECK, NON_EXPIRING_RECHECK),
    };
    Ok(Minted {
        authorization,
        expires_at,
        received_at,
        expires: Instant::now() + left,
        details: TokenDetails::default(),
        // Without a refresh token nothing can replace it before it expires: it is used until then (a refresh would
        // only hand out the same token again, at once). A token that does not expire is looked at again daily.
        refreshable: tokens.refresh_token.is_some() || tokens.expires_at.is_none(),
    })
}

impl crate::source::TokenSource for UserToken {
    type Local = InstallationLocal;

    fn local(&self) -> InstallationLocal {
        InstallationLocal::new(&self.handle)
    }

    fn origin(&self) -> &ApiBase {
        &self.handle.shared.params.api_base
    }

    fn app(&self) -> Option<&GitHubApp> {
        None
    }

    #[inline]
    fn current<'l, B>(
        &self,
        local: &'l mut InstallationLocal,
        _: &Request<B>,
        _: crate::source::Route,
    ) -> Option<(HeaderValue, &'l Arc<TokenEntry>)> {
        local.current()
    }

    fn acquire<B>(&self, _: &Request<B>, _: crate::source::Route) -> crate::source::Acquire {
        let handle = Arc::clone(&self.handle);
        Box::pin(async move { handle.acquire(None).await })
    }
}

/// A user access token (`ghu_…`) and what is known of it. `Debug` never shows it.
#[derive(Clone)]
pub struct UserAccessToken {
    entry: Arc<TokenEntry>,
}

impl UserAccessToken {
    /// The token itself. Keep it out of logs, URLs and error messages.
    pub fn expose_secret(&self) -> &str {
        self.entry.authorization.to_str().unwrap_or_default().trim_start_matches("Bearer ")
    }

    /// `Bearer <token>` as a header value marked sensitive.
    pub fn authorization(&self) -> HeaderValue {
        self.entry.authorization.clone()
    }

    /// How long it stays usable: until this source replaces it, which ends it (a day at most for tokens that do
    /// not expire: they are looked at again then). Another holder of the user's tokens may end it sooner.
    pub fn remaining(&self) -> Duration {
        self.entry.refresh_at().saturating_duration_since(Instant::now())
    }

    /// When it expires at GitHub, if nothing replaces it first (GitHub's clock; a day ahead for tokens that do
    /// not expire).
    pub fn expires_at(&self) -> SystemTime {
        self.entry.expires_at()
    }

    /// A number identifying this token within the process (not a secret; unique per token).
    pub fn serial(&self) -> u64 {
        self.entry.serial
    }
}

impl fmt::Debug for UserAccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAccessToken")
            .field("serial", &self.entry.serial)
            .field("remaining", &self.remaining())
            .field("token", &"[redacted]")
            .finish()
    }
}
