//! App JWTs: the claims, the signature seam, and the cache that makes a signature last for minutes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde::Serialize;
use tokio::time::Instant;

use super::{AppId, GitHubApp};
use crate::error::{BoxError, Error, ErrorKind};

/// Signs App JWTs. The seam where a key held in a KMS or HSM replaces the in-process [`PrivateKey`](super::PrivateKey).
///
/// The signer receives the JWT's signing input (`base64url(header) "." base64url(claims)`) and returns the raw
/// RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256). It is called about once every nine minutes per App, never on
/// the request path, so a network round trip to a KMS is fine.
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
    let signature = signer.sign(jwt.as_bytes()).await.map_err(|e| {
        Error::build(ErrorKind::Signing, "the JWT signer failed; check the signer (KMS/HSM) configuration and access")
            .source(e)
            .finish()
    })?;
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    let mut authorization = HeaderValue::try_from(format!("Bearer {jwt}"))
        .map_err(|_| Error::new(ErrorKind::Signing, "the signed JWT is not a valid header value"))?;
    authorization.set_sensitive(true);
    Ok(AppJwt { authorization, claims, offset })
}

/// How long before its `exp` a cached JWT stops being handed out: the mint request must reach GitHub in time.
const REUSE_MARGIN: Duration = Duration::from_secs(30);

/// The last JWT, reused while it has more than [`REUSE_MARGIN`] left on both the monotonic and the wall clock
/// (the wall clock catches a suspended laptop) and the clock offset is unchanged.
#[derive(Default)]
pub(super) struct JwtCache {
    slot: tokio::sync::Mutex<Option<CachedJwt>>,
}

struct CachedJwt {
    jwt: AppJwt,
    offset: i64,
    signed_at: Instant,
    signed_at_wall: SystemTime,
}

impl JwtCache {
    pub(super) async fn get_or_sign(&self, app: &GitHubApp) -> Result<AppJwt, Error> {
        // One signer at a time: concurrent mints for many installations share one signature.
        let mut slot = self.slot.lock().await;
        let reuse_for = app.jwt_lifetime().saturating_sub(REUSE_MARGIN);
        if let Some(cached) = slot.as_ref() {
            let wall_age = SystemTime::now().duration_since(cached.signed_at_wall).unwrap_or(Duration::MAX);
            if cached.offset == app.clock_offset() && cached.signed_at.elapsed() < reuse_for && wall_age < reuse_for {
                return Ok(cached.jwt.clone());
            }
        }
        let now = SystemTime::now();
        let offset = app.clock_offset();
        let jwt = app.sign_claims_with_offset(app.claims_at(now), offset).await?;
        *slot = Some(CachedJwt { jwt: jwt.clone(), offset, signed_at: Instant::now(), signed_at_wall: now });
        Ok(jwt)
    }
}
