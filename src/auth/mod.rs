//! The middleware that stamps requests with installation tokens.
//!
//! Owns: [`GitHubAuthLayer`] and its service [`GitHubAuth`], generic over the token source:
//! [`InstallationAuthLayer`] / [`InstallationAuth`] for one [`Installation`](crate::Installation),
//! [`AppAuthLayer`] / [`AppAuth`] for every installation of an App ([`InstallationPool`](crate::InstallationPool),
//! which also decides which installation each request is for), [`UserAuthLayer`] / [`UserAuth`] for one user's
//! access token ([`UserToken`](crate::user::UserToken); no request of a user source carries the App JWT). It reads the token source through a small
//! interface (where tokens may go, the App, the current token for a request, and the slow path that waits for
//! one) and never mints, signs or retries; the token source mints and the retry policy (outside this layer)
//! retries.
//!
//! Per request with a usable token, the layer does an origin comparison, one relaxed atomic load (arc-swap's
//! `Cache` over the token source's `ArcSwap`) and one clone of a prebuilt, sensitive `HeaderValue` (each service
//! clone keeps its own copy, so threads do not contend): no lock, no allocation, no clock read, no formatting.
//! The token source (or, when no runtime drives its refresher, its watchdog thread) withdraws a token when its
//! time for requests is over, so the layer needs no clock. `401` and
//! `403` responses get an [`InstallationTokenUsed`](crate::InstallationTokenUsed) extension for the retry policy;
//! [`GitHubAuthLayer::token_used_on_every_response`] attaches it to every response.
//!
//! - Requests to the installation's API origin (scheme, host, port; hosts without case and without a trailing
//!   dot) and to its uploads origin ([`ApiBase::uploads`](crate::ApiBase::uploads), release assets) get
//!   `Authorization: Bearer <token>`.
//! - Requests to any other origin pass through untouched: a token is only ever sent to the host it was minted
//!   for, so a redirect to another host, followed by `FollowRedirect` outside this layer, carries no token.
//! - Requests to the routes GitHub authenticates with the App JWT ([`is_app_jwt_route`]: `/app/...`,
//!   `/repos/{owner}/{repo}/installation`, ..., read as a server resolves the path) get
//!   `Authorization: Bearer <App JWT>` instead, and an [`AppJwtUsed`](crate::AppJwtUsed) response extension.
//! - A request that already has an `Authorization` header keeps it.
//! - A request without a host is refused with [`ErrorKind::InvalidRequest`](crate::ErrorKind::InvalidRequest):
//!   URIs must be absolute (clients that send path-only URIs need a layer that sets the base URI first).
//! - When no usable token can be had, the request fails with the token source's [`Error`](crate::Error); it is
//!   never sent without credentials.
//!
//! ```
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_github_app::{Installation, InstallationAuthLayer, InstallationTokenUsed, testing::FakeGitHub};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let github = FakeGitHub::start().await;
//! let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
//!     .api_base(&github.api_base())
//!     .build(github.client())?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(InstallationAuthLayer::new(installation).token_used_on_every_response())
//!     .service(github.client());
//!
//! let request = Request::get(format!("{}/installation/repositories", github.api_base()))
//!     .body(Full::<Bytes>::default())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert!(response.extensions().get::<InstallationTokenUsed>().is_some());
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod routes;
mod service;

pub use future::ResponseFuture;
pub use layer::{AppAuthLayer, GitHubAuthLayer, InstallationAuthLayer, UserAuthLayer};
pub use routes::is_app_jwt_route;
pub(crate) use routes::{
    AccountRoute, OwnedAccountRoute, account_route, account_route_resolved, has_dot_or_percent, is_app_jwt_request,
};
pub use service::{AppAuth, GitHubAuth, InstallationAuth, UserAuth};
