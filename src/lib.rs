//! Call the GitHub API as a GitHub App installation from any [tower](https://docs.rs/tower) HTTP client, with
//! tokens that are always current and cost nothing on the request path.
//!
//! A GitHub App authenticates in two steps: it signs a short-lived JWT with its private key ([`GitHubApp`]), then
//! trades it for an installation token that lasts an hour ([`Installation`]). This crate keeps one token per
//! installation in an `ArcSwap`, replaces it in the background well before it expires, and stamps it on every
//! request with [`InstallationAuthLayer`]. A request with a valid token never waits and never takes a lock.
//!
//! # Rooms
//! - [`app`]: App ids, private keys, App JWTs and the clock offset learned from GitHub.
//! - [`installation`]: minting installation tokens, the token source, its refresher and the watchdog thread that
//!   keeps tokens honest when no runtime drives the refresher.
//! - [`pool`]: every installation of an App from one stack ([`InstallationPool`], [`AppAuthLayer`]): which
//!   installation a request is for, a bounded cache of tokens and one scheduler that refreshes them.
//! - [`user`]: user-to-server tokens ([`UserToken`](user::UserToken), [`UserAuthLayer`]): the web and device
//!   flows, and rotation of the user's single-use refresh tokens through a store.
//! - [`store`]: where user tokens are kept between processes ([`UserTokenStore`](store::UserTokenStore), in
//!   memory, in files).
//! - [`auth`]: the tower layer that stamps requests, over any of the token sources.
//! - [`retry`]: the retry policy for credential refusals (replication lag, stale tokens, clock skew).
//! - [`webhook`]: checking the signature GitHub puts on webhook deliveries, before reading them.
//! - [`telemetry`]: the spans the crate opens, and (feature `metrics`) the counters and histograms it records.
//! - `testing` (feature `test-util`): a fake GitHub server to test against.
//! - `client` (feature `hyper-client`): a ready-made HTTPS client.
//! - `octocrab` (feature `octocrab`): octocrab's typed API over this crate's stack.
//!
//! Beside the library: the `gh-app-token` command (feature `cli`: tokens for shells and CI, git's credential
//! helper, revocation, the App's installations) and an axum webhook bot (`examples/webhook_bot.rs`).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, testing::FakeGitHub};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Against real GitHub: GitHubApp::from_pem(app_id, std::fs::read("app.pem")?)? and
//! // a hyper-util client with TLS. Here: the built-in fake GitHub.
//! let github = FakeGitHub::start().await;
//! let app: GitHubApp = github.app();
//! let installation = Installation::builder(app, FakeGitHub::INSTALLATION_ID)
//!     .api_base(&github.api_base())
//!     .build(github.client())?;
//!
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))
//!     .layer(InstallationAuthLayer::new(installation.clone()))
//!     .service(github.client());
//!
//! let request = http::Request::get(format!("{}/repos/octo-org/octo-repo", github.api_base()))
//!     .body(http_body_util::Full::<bytes::Bytes>::default())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(installation.stats().mints, 1);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod app;
pub mod auth;
#[cfg(feature = "hyper-client")]
pub mod client;
mod error;
#[macro_use]
pub mod installation;
#[cfg(feature = "octocrab")]
#[cfg_attr(docsrs, doc(cfg(feature = "octocrab")))]
pub mod octocrab;
pub mod pool;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod retry;
mod shared;
mod source;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod user;
pub mod webhook;

/// Entry points for the fuzz targets in `fuzz/` (feature `__fuzz`). Not part of the API.
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;
    use std::time::Duration;

    use crate::installation::mint::{MintParams, read_answer};
    use crate::{ApiBase, Error, GitHubApp};

    /// Reads a token-endpoint answer exactly as minting does; returns the token's length.
    pub fn mint_answer(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Result<usize, Error> {
        static APP: OnceLock<GitHubApp> = OnceLock::new();
        let app = APP.get_or_init(|| GitHubApp::from_pem(1, crate::testing_key()).expect("the test key parses"));
        let params = MintParams {
            api_base: ApiBase::github_com(),
            installation_id: 42,
            body: None,
            user_agent: http::HeaderValue::from_static("fuzz"),
            timeout: Duration::from_secs(1),
        };
        let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        read_answer(status, headers, body, app, &params, 0).map(|minted| minted.authorization.len())
    }

    /// What an error message keeps of text that came from the network.
    pub fn scrub(message: &str) -> String {
        crate::error::scrub(message)
    }
}

#[cfg(feature = "__fuzz")]
fn testing_key() -> &'static str {
    include_str!("testing/test-app-key.pem")
}

/// The README's snippets, compiled as doctests (and by `.ci/readme-check` with exactly its dependency lines).
#[cfg(all(
    doctest,
    feature = "hyper-client",
    feature = "test-util",
    feature = "redis",
    feature = "octocrab",
    feature = "metrics"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use app::{AppId, AppJwt, AppJwtClaims, AppJwtUsed, GitHubApp, JwtSigner, PrivateKey};
pub use auth::{
    AppAuth, AppAuthLayer, GitHubAuth, GitHubAuthLayer, InstallationAuth, InstallationAuthLayer, UserAuth,
    UserAuthLayer,
};
pub use error::{BoxError, Error, ErrorKind};
pub use installation::{
    ApiBase, HttpClient, Installation, InstallationBuilder, InstallationStats, InstallationToken,
    InstallationTokenUsed, Repository, TokenScope,
};
pub use pool::{InstallationFor, InstallationPool, InstallationPoolBuilder, PoolStats, RevokeReport};
pub use retry::{RetryBudget, RetryGaveUp, RetryOn401Policy};
