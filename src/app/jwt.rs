//! App JWTs: the claims, the signature seam, and the cache that makes a signature last for minutes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AppId, GitHubApp};
use crate::error::{BoxError, Error, ErrorKind};

/// Signs App JWTs. The seam where a key held in a KMS or HSM replaces the in-process [`PrivateKey`](super::PrivateKey).
///
/// The signer receives the JWT's signing input (`base64url(header) "." base64url(claims)`) and returns the raw
/// RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256). It is called about once every nine minutes per App, never on
/// the request path, so a network round trip to a KMS is fine. A call is bounded by the App's sign timeout
/// ([`GitHubAppBuilder::sign_timeout`](super::GitHubAppBuilder::sign_timeout), 10 s by default): a signer that
/// never answers fails that signature with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), and the next
/// request that needs a JWT calls it again.
pub trait JwtSigner: Send + Sync + 'static {
    /// Signs `message` with RS256 and returns the raw signature bytes.
    fn sign<'a>(&'a self, message: &'a [u8]) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, BoxError>> + Send + 'a>>;
}

/// The time claims of an App JWT, in Unix seconds of GitHub's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppJwtClaims {
    /// Issued at: 60 s in the past by default.
    pub iat: i64,
    /// Expires at: at most 10 minutes in the future.
    pub exp: i64,
}

/// A signed App JWT. `Debug` shows its claims, never the token.
#[derive(Clone)]
pub struct AppJwt {
    authorization: HeaderValue,
    claims: AppJwtClaims,
    /// The App's clock offset when it was signed.
    offset: i64,
}

impl AppJwt {
    /// The claims it was signed with.
    pub fn claims(&self) -> AppJwtClaims {
        self.claims
    }

    /// `Bearer <jwt>`, marked sensitive, for the `Authorization` header.
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// The App's clock offset (GitHub's clock minus the local one, in seconds) its times were corrected by.
    pub fn clock_offset(&self) -> i64 {
        self.offset
    }

    /// The JWT itself. Keep it out of logs.
    pub fn expose_secret(&self) -> &str {
        // Built from `Bearer ` and base64url text only, so it is visible ASCII.
        self.authorization.to_str().unwrap_or_default().trim_start_matches("Bearer ")
    }
}

/// Put into a response's extensions by [`InstallationAuth`](crate::InstallationAuth) when it stamped the request
/// with the App JWT (routes such as `/app/installations`), so a retry policy can correct the App's clock when
/// GitHub refuses the JWT. It does not expose the JWT.
#[derive(Clone)]
pub struct AppJwtUsed {
    pub(crate) app: GitHubApp,
    pub(crate) claims: AppJwtClaims,
    pub(crate) offset: i64,
}

impl AppJwtUsed {
    pub(crate) fn new(app: GitHubApp, jwt: &AppJwt) -> Self {
        Self { app, claims: jwt.claims, offset: jwt.offset }
    }

    /// The App whose JWT the request carried.
    pub fn app_id(&self) -> &AppId {
        self.app.id()
    }

    /// The JWT's claims.
    pub fn claims(&self) -> AppJwtClaims {
        self.claims
    }

    /// Measures GitHub's clock from an answer's `Date` and stores the offset in the App. Returns whether the
    /// JWT this request carried was signed with a clock more than 2 s off from that: then a new JWT (signed for
    /// the retry) will differ and may succeed.
    pub fn correct_clock(&self, server_date: SystemTime) -> bool {
        let offset = self.app.learn_clock_offset(server_date, SystemTime::now());
        (offset - self.offset).abs() > 2
    }
}

impl fmt::Debug for AppJwtUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppJwtUsed")
            .field("app", self.app.id())
            .field("claims", &self.claims)
            .field("clock_offset", &self.offset)
            .finish()
    }
}

impl fmt::Debug for AppJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppJwt").field("claims", &self.claims).field("jwt", &"[redacted]").finish()
    }
}

/// `{"alg":"RS256","typ":"JWT"}`, encoded once.
const HEADER_B64: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

#[derive(Serialize)]
struct Payload<'a> {
    iat: i64,
    exp: i64,
    iss: Iss<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Iss<'a> {
    Number(u64),
    String(&'a str),
}

pub(super) async fn sign(
    signer: &dyn JwtSigner,
    id: &AppId,
    claims: AppJwtClaims,
    offset: i64,
) -> Result<AppJwt, Error> {
    let iss = match id {
        AppId::Id(id) => Iss::Number(*id),
        AppId::ClientId(id) => Iss::String(id),
    };
    let payload = serde_json::to_vec(&Payload { iat: claims.iat, exp: claims.exp, iss })
        .map_err(|e| Error::build(ErrorKind::Signing, "could not encode the JWT claims").source(e).finish())?;
    let mut jwt = String::with_capacity(600);
    jwt.push_str(HEADER_B64);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut jwt);
    let signature = match (CatchUnwind { future: signer.sign(jwt.as_bytes()) }).await {
        Ok(signature) => signature.map_err(|e| {
            Error::build(
                ErrorKind::Signing,
                "the JWT signer failed; check the signer (KMS/HSM) configuration and access",
            )
            .source(e)
            .finish()
        })?,
        Err(()) => {
            return Err(Error::new(
                ErrorKind::Signing,
                "the JWT signer panicked; it is a bug in the signer (KMS/HSM client), and the next request that needs \
                 a JWT calls it again",
            ));
        }
    };
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    let mut authorization = HeaderValue::try_from(format!("Bearer {jwt}"))
        .map_err(|_| Error::new(ErrorKind::Signing, "the signed JWT is not a valid header value"))?;
    authorization.set_sensitive(true);
    Ok(AppJwt { authorization, claims, offset })
}

pin_project_lite::pin_project! {
    /// Turns a panic inside a user's signer into an error: the signer is user code, and a panic in it must not
    /// take the refresher (or a request) down with it.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let future = self.project().future;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

/// How long before its `exp` a cached JWT stops being handed out: the mint request must reach GitHub in time.
const REUSE_MARGIN: Duration = Duration::from_secs(30);

/// The last JWT, reused while it has more than [`REUSE_MARGIN`] left on both the monotonic and the wall clock
/// (the wall clock catches a suspended laptop) and the clock offset is unchanged; and the signature in progress,
/// which every caller that needs a new JWT meanwhile waits for. No lock is held across the signer call, and
/// both the signer and the waiters are bounded by the App's sign timeout.
#[derive(Default)]
pub(super) struct JwtCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    cached: Option<CachedJwt>,
    /// The signature in progress: its outcome arrives on this channel.
    signing: Option<(u64, watch::Receiver<Outcome>)>,
    next_signer: u64,
}

/// A signature's outcome, once there is one.
type Outcome = Option<Result<AppJwt, Error>>;

struct CachedJwt {
    jwt: AppJwt,
    offset: i64,
    signed_at: Instant,
    signed_at_wall: SystemTime,
}

impl JwtCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn get_or_sign(&self, app: &GitHubApp) -> Result<AppJwt, Error> {
        let signer = loop {
            let mut outcome = {
                let mut state = self.lock();
                let reuse_for = app.jwt_lifetime().saturating_sub(REUSE_MARGIN);
                if let Some(cached) = state.cached.as_ref() {
                    let wall_age = SystemTime::now().duration_since(cached.signed_at_wall).unwrap_or(Duration::MAX);
                    if cached.offset == app.clock_offset()
                        && cached.signed_at.elapsed() < reuse_for
                        && wall_age < reuse_for
                    {
                        return Ok(cached.jwt.clone());
                    }
                }
                if let Some((_, outcome)) = &state.signing {
                    // Somebody signs already: one signature serves every installation's mint.
                    outcome.clone()
                } else {
                    let id = state.next_signer;
                    state.next_signer += 1;
                    let (sender, receiver) = watch::channel(None);
                    state.signing = Some((id, receiver));
                    break Signer { cache: self, id, sender };
                }
            };
            let timeout = app.sign_timeout();
            match tokio::time::timeout(timeout, outcome.wait_for(Option::is_some)).await {
                Ok(Ok(result)) => return result.clone().unwrap_or_else(|| Err(signer_gone())),
                // The signer's future was dropped (its request cancelled): sign ourselves.
                Ok(Err(_)) => continue,
                Err(_) => return Err(sign_timeout(timeout)),
            }
        };
        signer.sign(app).await
    }
}

/// The caller that signs; clears the in-progress mark however it ends (finished, failed, timed out, dropped).
struct Signer<'a> {
    cache: &'a JwtCache,
    id: u64,
    sender: watch::Sender<Outcome>,
}

impl Signer<'_> {
    async fn sign(self, app: &GitHubApp) -> Result<AppJwt, Error> {
        let now = SystemTime::now();
        let offset = app.clock_offset();
        let timeout = app.sign_timeout();
        let result = match tokio::time::timeout(timeout, app.sign_claims_with_offset(app.claims_at(now), offset)).await
        {
            Ok(result) => result,
            Err(_) => Err(sign_timeout(timeout)),
        };
        if let Ok(jwt) = &result {
            self.cache.lock().cached =
                Some(CachedJwt { jwt: jwt.clone(), offset, signed_at: Instant::now(), signed_at_wall: now });
        }
        self.sender.send_replace(Some(result.clone()));
        result
    }
}

impl Drop for Signer<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if state.signing.as_ref().is_some_and(|(id, _)| *id == self.id) {
            state.signing = None;
        }
    }
}

fn sign_timeout(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the JWT signer did not answer within {timeout:?}: check that the signer (KMS/HSM) is reachable, or \
             raise the App's sign_timeout. The next request that needs a JWT tries again"
        ),
    )
}

fn signer_gone() -> Error {
    Error::new(ErrorKind::Signing, "the JWT signature in progress was abandoned; retry the request")
}
