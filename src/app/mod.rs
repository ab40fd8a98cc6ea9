//! The GitHub App's own credentials: its id, its private key, and the App JWTs signed with them.
//!
//! Owns: parsing keys ([`PrivateKey`]), the [`JwtSigner`] seam for KMS/HSM signers, signing and reusing App JWTs,
//! and the clock offset learned from GitHub. It knows nothing of installations or HTTP; the installation room
//! asks it for a JWT and tells it when GitHub's clock disagrees.
//!
//! ```
//! # use tower_github_app::{GitHubApp, PrivateKey};
//! # let pem = tower_github_app::testing::TEST_PRIVATE_KEY;
//! # tokio_test_block_on(async {
//! let app = GitHubApp::new(12345, PrivateKey::from_pem(pem)?);
//! let jwt = app.jwt().await?;
//! assert_eq!(jwt.claims().exp - jwt.claims().iat, 630);
//! // Reused until shortly before it expires: no second signature.
//! let again = app.jwt().await?;
//! assert_eq!(app.jwt_signatures(), 1);
//! # Ok::<_, tower_github_app::Error>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

mod jwt;
mod key;

pub use jwt::{AppJwt, AppJwtClaims, AppJwtUsed, JwtSigner};
pub use key::PrivateKey;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind};
use jwt::JwtCache;

/// How a GitHub App is identified in the JWT's `iss` claim.
///
/// GitHub accepts either; it recommends the client ID. Strings of digits are read as numeric app ids, so an id
/// read from an environment variable works either way.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum AppId {
    /// The numeric App ID, sent as a JSON number.
    Id(u64),
    /// The client ID (`Iv1.…`, `Iv23…`), sent as a JSON string.
    ClientId(String),
}

impl AppId {
    fn validate(&self) -> Result<(), Error> {
        match self {
            AppId::Id(0) => Err(Error::new(
                ErrorKind::InvalidConfig,
                "the App id is 0: use the App ID or client ID shown on the GitHub App's settings page",
            )),
            AppId::ClientId(id)
                if id.is_empty() || id.len() > 100 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') =>
            {
                Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "the App's client ID is empty or contains characters a client ID never has: copy it from the \
                     GitHub App's settings page (it looks like Iv1.0123456789abcdef or Iv23li...)",
                ))
            }
            _ => Ok(()),
        }
    }
}

impl From<u64> for AppId {
    fn from(id: u64) -> Self {
        AppId::Id(id)
    }
}

impl From<&str> for AppId {
    fn from(id: &str) -> Self {
        let id = id.trim();
        match id.parse::<u64>() {
            Ok(n) if !id.starts_with('+') => AppId::Id(n),
            _ => AppId::ClientId(id.to_owned()),
        }
    }
}

impl From<String> for AppId {
    fn from(id: String) -> Self {
        AppId::from(id.as_str())
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppId::Id(id) => write!(f, "App {id}"),
            AppId::ClientId(id) => write!(f, "App with client ID {id}"),
        }
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppId::Id(id) => write!(f, "AppId({id})"),
            AppId::ClientId(id) => write!(f, "ClientId({id:?})"),
        }
    }
}

/// A GitHub App: its id and a way to sign App JWTs. Cheap to clone; clones share the JWT cache and clock offset.
#[derive(Clone)]
pub struct GitHubApp {
    inner: Arc<AppInner>,
}

struct AppInner {
    id: AppId,
    signer: Arc<dyn JwtSigner>,
    jwt_lifetime: Duration,
    sign_timeout: Duration,
    clock_offset: AtomicI64,
    signatures: AtomicU64,
    cache: JwtCache,
}

impl GitHubApp {
    /// The longest `exp` GitHub accepts, counted from now.
    pub const MAX_JWT_LIFETIME: Duration = Duration::from_secs(600);
    /// The default `exp`, counted from now: 9 min 30 s, leaving 30 s for clocks that are a little off.
    pub const DEFAULT_JWT_LIFETIME: Duration = Duration::from_secs(570);
    /// How far `iat` is set in the past, as GitHub recommends, to absorb clock drift.
    pub const IAT_BACKDATE: Duration = Duration::from_secs(60);
    /// How long one signature may take by default before it fails with [`ErrorKind::Timeout`].
    pub const DEFAULT_SIGN_TIMEOUT: Duration = Duration::from_secs(10);

    /// An App signing its JWTs with `key`.
    ///
    /// # Panics
    /// Never on input: an invalid id is reported when the first JWT is signed. Use [`GitHubApp::builder`] to
    /// validate up front.
    pub fn new(id: impl Into<AppId>, key: PrivateKey) -> Self {
        Self::from_parts(id.into(), Arc::new(key), Self::DEFAULT_JWT_LIFETIME, Self::DEFAULT_SIGN_TIMEOUT)
    }

    /// Parses `pem` and validates `id`; the usual way to build an App from configuration.
    pub fn from_pem(id: impl Into<AppId>, pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        Self::builder(id).private_key(PrivateKey::from_pem(pem)?).build()
    }

    /// A builder for the less common settings: a custom [`JwtSigner`], the JWT lifetime.
    pub fn builder(id: impl Into<AppId>) -> GitHubAppBuilder {
        GitHubAppBuilder {
            id: id.into(),
            signer: None,
            jwt_lifetime: Self::DEFAULT_JWT_LIFETIME,
            sign_timeout: Self::DEFAULT_SIGN_TIMEOUT,
        }
    }

    fn from_parts(id: AppId, signer: Arc<dyn JwtSigner>, jwt_lifetime: Duration, sign_timeout: Duration) -> Self {
        GitHubApp {
            inner: Arc::new(AppInner {
                id,
                signer,
                jwt_lifetime,
                sign_timeout,
                clock_offset: AtomicI64::new(0),
                signatures: AtomicU64::new(0),
                cache: JwtCache::default(),
            }),
        }
    }

    /// The App's id as it goes into `iss`.
    pub fn id(&self) -> &AppId {
        &self.inner.id
    }

    /// An App JWT valid for at least 30 more seconds, reusing the last one when it still is.
    ///
    /// Signing costs about a millisecond; a JWT is signed at most once per [`GitHubApp::DEFAULT_JWT_LIFETIME`]
    /// minus 30 s, however many installations mint tokens with it. Concurrent callers share one signature, and
    /// waiting for it is bounded by [`sign_timeout`](Self::sign_timeout), so it needs a Tokio runtime with timers
    /// (`enable_all` or `enable_time`).
    pub async fn jwt(&self) -> Result<AppJwt, Error> {
        self.inner.cache.get_or_sign(self).await
    }

    /// Signs a JWT for exactly these claims, bypassing the cache and the clock. For tests and conformance.
    pub async fn sign_claims(&self, claims: AppJwtClaims) -> Result<AppJwt, Error> {
        self.sign_claims_with_offset(claims, self.clock_offset()).await
    }

    async fn sign_claims_with_offset(&self, claims: AppJwtClaims, offset: i64) -> Result<AppJwt, Error> {
        self.inner.id.validate()?;
        let jwt = jwt::sign(&*self.inner.signer, &self.inner.id, claims, offset).await?;
        self.inner.signatures.fetch_add(1, Ordering::Relaxed);
        Ok(jwt)
    }

    /// How many JWTs this App has signed (cache misses), for tests and benchmarks.
    pub fn jwt_signatures(&self) -> u64 {
        self.inner.signatures.load(Ordering::Relaxed)
    }

    /// GitHub's clock minus the local clock, in seconds, as last learned. Applied to every JWT's `iat` and `exp`.
    pub fn clock_offset(&self) -> i64 {
        self.inner.clock_offset.load(Ordering::Relaxed)
    }

    /// Sets the clock offset (GitHub's clock minus the local clock, in seconds). A change retires the cached JWT,
    /// so the next one is signed with corrected times.
    pub fn set_clock_offset(&self, seconds: i64) {
        let old = self.inner.clock_offset.swap(seconds, Ordering::Relaxed);
        if old != seconds {
            tracing::info!(app = %self.inner.id, offset_secs = seconds, "GitHub clock offset changed; new JWTs use it");
        }
    }

    /// Learns the clock offset from the `Date` of a GitHub answer received at `local_now`. Offsets of a few
    /// seconds are ignored (the `Date` header has second precision and `iat` is backdated by a minute anyway).
    /// Returns the offset now in force.
    pub fn learn_clock_offset(&self, server_date: SystemTime, local_now: SystemTime) -> i64 {
        let offset = signed_seconds_between(local_now, server_date);
        if (offset - self.clock_offset()).abs() > 2 {
            self.set_clock_offset(offset);
        }
        self.clock_offset()
    }

    /// The claims a JWT signed at local time `now` gets: GitHub's time is `now` plus the clock offset.
    pub fn claims_at(&self, now: SystemTime) -> AppJwtClaims {
        let server_now = unix_seconds(now) + self.clock_offset();
        AppJwtClaims {
            iat: server_now - Self::IAT_BACKDATE.as_secs() as i64,
            exp: server_now + self.inner.jwt_lifetime.as_secs() as i64,
        }
    }

    pub(crate) fn jwt_lifetime(&self) -> Duration {
        self.inner.jwt_lifetime
    }

    /// How long one signature may take (see [`GitHubAppBuilder::sign_timeout`]).
    pub fn sign_timeout(&self) -> Duration {
        self.inner.sign_timeout
    }
}

impl fmt::Debug for GitHubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubApp")
            .field("id", &self.inner.id)
            .field("jwt_lifetime", &self.inner.jwt_lifetime)
            .field("sign_timeout", &self.inner.sign_timeout)
            .field("clock_offset_secs", &self.clock_offset())
            .finish_non_exhaustive()
    }
}

/// Builds a [`GitHubApp`], validating everything up front.
#[must_use]
pub struct GitHubAppBuilder {
    id: AppId,
    signer: Option<Arc<dyn JwtSigner>>,
    jwt_lifetime: Duration,
    sign_timeout: Duration,
}

impl fmt::Debug for GitHubAppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubAppBuilder")
            .field("id", &self.id)
            .field("has_signer", &self.signer.is_some())
            .field("jwt_lifetime", &self.jwt_lifetime)
            .field("sign_timeout", &self.sign_timeout)
            .finish()
    }
}

impl GitHubAppBuilder {
    /// Signs JWTs with this in-process key.
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.signer = Some(Arc::new(key));
        self
    }

    /// Signs JWTs with a custom signer, for keys held in a KMS or HSM.
    pub fn signer(mut self, signer: impl JwtSigner) -> Self {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// How far after now a JWT's `exp` lies: at least 60 s, at most 600 s (GitHub's limit); 570 s by default.
    pub fn jwt_lifetime(mut self, lifetime: Duration) -> Self {
        self.jwt_lifetime = lifetime;
        self
    }

    /// How long one signature may take before it fails with [`ErrorKind::Timeout`] (default 10 s). Bounds a
    /// [`JwtSigner`] that calls a KMS which never answers; mints that wait for the signature are bounded by it
    /// and by their own `mint_timeout`.
    pub fn sign_timeout(mut self, timeout: Duration) -> Self {
        self.sign_timeout = timeout;
        self
    }

    /// Checks the id, the signer and the lifetime.
    pub fn build(self) -> Result<GitHubApp, Error> {
        self.id.validate()?;
        let signer = self.signer.ok_or_else(|| {
            Error::new(ErrorKind::InvalidConfig, "no private key or signer given: call .private_key(..) or .signer(..)")
        })?;
        if self.jwt_lifetime < Duration::from_secs(60) || self.jwt_lifetime > GitHubApp::MAX_JWT_LIFETIME {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "JWT lifetime of {} s is outside GitHub's limits: choose between 60 and 600 seconds \
                     (GitHub refuses an exp more than 10 minutes ahead)",
                    self.jwt_lifetime.as_secs()
                ),
            ));
        }
        if self.sign_timeout.is_zero() {
            return Err(Error::new(ErrorKind::InvalidConfig, "sign_timeout must be longer than zero"));
        }
        Ok(GitHubApp::from_parts(self.id, signer, self.jwt_lifetime, self.sign_timeout))
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// `to − from` in whole seconds, negative when `to` is earlier.
pub(crate) fn signed_seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64().round() as i64,
        Err(e) => -(e.duration().as_secs_f64().round() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_from_strings() {
        assert_eq!(AppId::from("12345"), AppId::Id(12345));
        assert_eq!(AppId::from(" 12345 "), AppId::Id(12345));
        assert_eq!(AppId::from("Iv1.0123abcd"), AppId::ClientId("Iv1.0123abcd".into()));
        assert!(AppId::Id(0).validate().is_err());
        assert!(AppId::from("Iv1 abc").validate().is_err());
        assert!(AppId::from("").validate().is_err());
    }

    #[test]
    fn signed_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(signed_seconds_between(t, t + Duration::from_secs(600)), 600);
        assert_eq!(signed_seconds_between(t, t - Duration::from_secs(600)), -600);
        assert_eq!(unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(30)), -30);
    }
}
