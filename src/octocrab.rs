//! [octocrab](https://docs.rs/octocrab) on this crate's stack (feature `octocrab`): octocrab's typed API with
//! background-refreshed installation tokens (one installation, every installation of the App, or a user's).
//!
//! [`octocrab()`] builds an [`Octocrab`] whose HTTP stack is, from the outside in: the `User-Agent` and
//! `X-GitHub-Api-Version` headers, octocrab's base URI (the source's API), tower-http's `FollowRedirect` (a
//! redirect to another host carries no token: the auth layer stamps each hop by its origin), a timeout between
//! parts of a response body, a [`RetryOn401Policy`] that replays octocrab's buffered bodies, a timeout per
//! attempt, the
//! [`GitHubAuthLayer`], and a hyper client over rustls ([`client_for`]). octocrab's own App authentication is not
//! used: its `AuthState` is `None`, and tokens come from the layer, refreshed ahead of expiry, never minted on
//! the request path while a valid one exists.
//!
//! ```no_run
//! use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, client::https_client};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let app = GitHubApp::from_pem(12345, std::fs::read("app.pem")?)?;
//! let installation = Installation::builder(app, 67890).build(https_client()?)?;
//! let octocrab = tower_github_app::octocrab::octocrab(InstallationAuthLayer::new(installation))?;
//! let repo = octocrab.repos("octo-org", "octo-repo").get().await?;
//! println!("{} has {} stars", repo.full_name.unwrap_or_default(), repo.stargazers_count.unwrap_or(0));
//! # Ok(())
//! # }
//! ```
//!
//! With an [`InstallationPool`](crate::InstallationPool) behind [`AppAuthLayer`](crate::AppAuthLayer), one
//! `Octocrab` serves every installation: the installation is read from the path (`/repos/{owner}/{repo}/…`,
//! `/orgs/{org}/…`) as for any request through the pool layer, and the App's own routes (`/app/…`) take the App
//! JWT, so `octocrab.apps().installations()` works too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::octocrab::service::middleware::base_uri::BaseUriLayer;
use ::octocrab::service::middleware::extra_headers::ExtraHeadersLayer;
use ::octocrab::{AuthState, OctoBody, Octocrab, OctocrabBuilder};
use http::{HeaderName, HeaderValue, Uri};
use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use tower::timeout::TimeoutLayer;
use tower_http_06::follow_redirect::FollowRedirectLayer;
use tower_http_06::timeout::ResponseBodyTimeoutLayer;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::GitHubAuthLayer;
use crate::client::client_for;
use crate::error::{BoxError, Error, ErrorKind};
use crate::retry::{RetryOn401Policy, RetryOn401PolicyBuilder};
use crate::source::TokenSource;

/// An [`Octocrab`] over [`client_for`] the source's API, with the defaults of [`OctocrabStack`].
#[allow(private_bounds)]
pub fn octocrab<T: TokenSource>(auth: GitHubAuthLayer<T>) -> Result<Octocrab, Error> {
    OctocrabStack::new(auth).build()
}

/// Configures the [`Octocrab`] that [`octocrab()`] builds.
#[must_use]
pub struct OctocrabStack<T> {
    auth: GitHubAuthLayer<T>,
    user_agent: HeaderValue,
    timeout: Duration,
    retry: Option<RetryOn401PolicyBuilder>,
    follow_redirects: bool,
}

/// Copies a body octocrab buffered (every body its typed API sends); an empty one is copied as empty. Streams
/// are not copied, so their requests are sent once.
fn copy_body(body: &OctoBody) -> Option<OctoBody> {
    body.try_clone().or_else(|| http_body::Body::is_end_stream(body).then(OctoBody::empty))
}

#[allow(private_bounds)]
impl<T: TokenSource> OctocrabStack<T> {
    /// The default `User-Agent`: GitHub refuses requests without one.
    pub const DEFAULT_USER_AGENT: &str = concat!("tower-github-app/", env!("CARGO_PKG_VERSION"), " octocrab");

    /// The stack over `auth`: the default `User-Agent`, a 30 s timeout per attempt, [`RetryOn401Policy`]'s
    /// defaults, redirects followed.
    pub fn new(auth: GitHubAuthLayer<T>) -> Self {
        OctocrabStack {
            auth,
            user_agent: HeaderValue::from_static(Self::DEFAULT_USER_AGENT),
            timeout: Duration::from_secs(30),
            retry: None,
            follow_redirects: true,
        }
    }

    /// The `User-Agent` sent with every request (GitHub asks for the App's name or the owner's login). A value
    /// that is not a valid header value keeps the default.
    pub fn user_agent(mut self, user_agent: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(user_agent) {
            self.user_agent = value;
        }
        self
    }

    /// How long one attempt may wait for GitHub's answer, and then for each part of its body, before it fails
    /// with a timeout (default 30 s; like octocrab's read timeout, a body that keeps arriving is not cut). A
    /// request waiting for its installation's first token waits within it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The retry policy's settings (budget, lag probes…); the body copier is octocrab's, set here.
    pub fn retry_policy(mut self, policy: RetryOn401PolicyBuilder) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Whether redirects are followed (default yes, as octocrab does). Each hop is stamped by its own origin.
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        self.follow_redirects = follow;
        self
    }

    /// An [`Octocrab`] over a hyper client for the source's API ([`client_for`]: rustls with webpki roots;
    /// plain http only for a loopback test server).
    pub fn build(self) -> Result<Octocrab, Error> {
        let client = client_for::<OctoBody>(self.auth.source().origin())?;
        self.build_with_client(client)
    }

    /// An [`Octocrab`] over `client`, any tower service that sends octocrab's requests.
    pub fn build_with_client<S, B>(self, client: S) -> Result<Octocrab, Error>
    where
        S: Service<http::Request<OctoBody>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let origin = self.auth.source().origin();
        let base_uri: Uri = origin.to_string().parse().map_err(|e| {
            Error::build(ErrorKind::InvalidConfig, format!("octocrab cannot use the API base {origin} as its base URI"))
                .source(e)
                .finish()
        })?;
        let headers = vec![
            (http::header::USER_AGENT, self.user_agent),
            (HeaderName::from_static("x-github-api-version"), HeaderValue::from_static("2022-11-28")),
        ];
        let copy: fn(&OctoBody) -> Option<OctoBody> = copy_body;
        let policy: RetryOn401Policy<_> =
            self.retry.unwrap_or_else(RetryOn401Policy::builder).clone_body_fn(copy).build();
        let attempts = ServiceBuilder::new()
            .layer(ResponseBodyTimeoutLayer::new(self.timeout))
            .layer(RetryLayer::new(policy))
            .layer(TimeoutLayer::new(self.timeout))
            .layer(self.auth)
            .service(client);
        let builder = OctocrabBuilder::new_empty().with_auth(AuthState::None);
        let octocrab = if self.follow_redirects {
            let service = FollowRedirectLayer::new().layer(attempts);
            builder
                .with_service(service)
                .with_layer(&BaseUriLayer::new(base_uri))
                .with_layer(&ExtraHeadersLayer::new(Arc::new(headers)))
                .build()
        } else {
            builder
                .with_service(attempts)
                .with_layer(&BaseUriLayer::new(base_uri))
                .with_layer(&ExtraHeadersLayer::new(Arc::new(headers)))
                .build()
        };
        Ok(octocrab.unwrap_or_else(|never| match never {}))
    }
}

impl<T: fmt::Debug> fmt::Debug for OctocrabStack<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OctocrabStack")
            .field("auth", &self.auth)
            .field("user_agent", &self.user_agent)
            .field("timeout", &self.timeout)
            .field("follow_redirects", &self.follow_redirects)
            .finish_non_exhaustive()
    }
}
