//! The ways of stamping a header that the benchmarks compare, shared by the criterion benches and the
//! deterministic `inject` example.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use tower::retry::{Retry, RetryLayer};
use tower::{Layer, Service};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::user::UserToken;
use tower_github_app::{
    AppAuthLayer, Installation, InstallationAuthLayer, InstallationPool, RetryOn401Policy, UserAuthLayer,
};

/// The request body every variant takes: what hyper-util clients are usually built with.
pub type Body = Full<Bytes>;

/// The cheapest possible inner service: answers `200` at once.
#[derive(Clone, Debug)]
pub struct Bare;

impl Service<Request<Body>> for Bare {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        std::hint::black_box(&request);
        ready(Ok(Response::new(())))
    }
}

/// What users write by hand: a lock around the token, formatted into a header per request.
#[derive(Clone, Debug)]
pub struct HandRolled<S> {
    inner: S,
    token: Arc<RwLock<String>>,
}

impl<S> HandRolled<S> {
    pub fn new(inner: S, token: &str) -> Self {
        Self { inner, token: Arc::new(RwLock::new(token.to_owned())) }
    }
}

impl<S: Service<Request<Body>>> Service<Request<Body>> for HandRolled<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> S::Future {
        let token = self.token.read().unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        drop(token);
        request.headers_mut().insert(AUTHORIZATION, value);
        self.inner.call(request)
    }
}

/// The shape of the request each iteration sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A URI and nothing else: no header map is allocated until the layer inserts `Authorization`.
    Plain,
    /// What GitHub requires and users send: `accept: application/vnd.github+json` and a `user-agent`, so the
    /// header map exists before the layer runs.
    Realistic,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Plain, Shape::Realistic];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Plain => "plain",
            Shape::Realistic => "realistic",
        }
    }

    pub fn parse(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Builds one request, the way an application does.
    pub fn request(self, uri: &Uri) -> Request<Body> {
        let mut request = Request::new(Body::default());
        *request.uri_mut() = uri.clone();
        if self == Shape::Realistic {
            let headers = request.headers_mut();
            headers.insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
            headers.insert(USER_AGENT, HeaderValue::from_static("my-github-app/1.0"));
        }
        request
    }
}

/// One request through `service`, polled once (every variant completes at once). Never inlined, so each
/// variant is compiled the same way however many variants the caller holds.
#[inline(never)]
pub fn call<S>(service: &mut S, uri: &Uri, shape: Shape) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    call_with(service, shape.request(uri))
}

/// [`call`] with a request built by the caller.
pub fn call_with<S>(service: &mut S, request: Request<Body>) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = service.call(request);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => panic!("the benchmark's services answer at once"),
    }
}

/// What every variant runs against: a fake GitHub, an installation with a valid one-hour token (already proven
/// by a request, as in steady state), a pool with a proven token for the same installation (found from the
/// path, as in steady state), and the URI of an API route there. The runtime must stay alive while they are used.
pub struct Setup {
    pub runtime: tokio::runtime::Runtime,
    pub github: FakeGitHub,
    pub installation: Installation,
    pub pool: InstallationPool,
    /// A signed-in user's token source, its token proven the same way.
    pub user: UserToken,
    pub uri: Uri,
}

pub fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (github, installation, pool, user, url) = runtime.block_on(async {
        let github = FakeGitHub::start().await;
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(github.client())
            .unwrap();
        let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
        let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
        // One real request each proves the tokens, as in steady state.
        let mut service = InstallationAuthLayer::new(installation.clone()).layer(github.client());
        let request = Request::get(&url).body(Body::default()).unwrap();
        let response = tower::ServiceExt::ready(&mut service).await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut service = AppAuthLayer::new(pool.clone()).layer(github.client());
        let request = Request::get(&url).body(Body::default()).unwrap();
        let response = tower::ServiceExt::ready(&mut service).await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let store = tower_github_app::store::MemoryStore::new();
        let user = UserToken::builder(github.oauth_app(), store, "mona")
            .api_base(&github.api_base())
            .build(github.client())
            .unwrap();
        let code = github.authorization_code("mona");
        user.sign_in(github.oauth_app().exchange_code(github.client(), &code, None).await.unwrap()).await.unwrap();
        let mut service = UserAuthLayer::new(user.clone()).layer(github.client());
        let request = Request::get(format!("{}/user", github.api_base())).body(Body::default()).unwrap();
        let response = tower::ServiceExt::ready(&mut service).await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        (github, installation, pool, user, url)
    });
    let uri: Uri = url.parse().unwrap();
    Setup { runtime, github, installation, pool, user, uri }
}

/// The variants of benchmark 1, by name.
pub const VARIANTS: [&str; 8] = [
    "bare",
    "set_request_header",
    "installation_auth",
    "app_auth",
    "user_auth",
    "retry_auth",
    "retry_app_auth",
    "hand_rolled",
];

/// `SetRequestHeader` with a constant value: the floor for stamping a header.
pub fn set_request_header(token: &str) -> tower_http::set_header::SetRequestHeader<Bare, HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    value.set_sensitive(true);
    tower_http::set_header::SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(Bare)
}

/// `InstallationAuth` over the bare service.
pub fn installation_auth(installation: &Installation) -> tower_github_app::InstallationAuth<Bare> {
    InstallationAuthLayer::new(installation.clone()).layer(Bare)
}

/// The crate's part of the recommended stack: `Retry<RetryOn401Policy>` over `InstallationAuth`.
pub fn retry_auth(installation: &Installation) -> Retry<RetryOn401Policy, tower_github_app::InstallationAuth<Bare>> {
    RetryLayer::new(RetryOn401Policy::default()).layer(installation_auth(installation))
}

/// `AppAuth` (the pool's layer) over the bare service; the installation is read from the path.
pub fn app_auth(pool: &InstallationPool) -> tower_github_app::AppAuth<Bare> {
    AppAuthLayer::new(pool.clone()).layer(Bare)
}

/// `UserAuth` (a user's token source) over the bare service.
pub fn user_auth(user: &UserToken) -> tower_github_app::UserAuth<Bare> {
    UserAuthLayer::new(user.clone()).layer(Bare)
}

/// `Retry<RetryOn401Policy>` over `AppAuth`.
pub fn retry_app_auth(pool: &InstallationPool) -> Retry<RetryOn401Policy, tower_github_app::AppAuth<Bare>> {
    RetryLayer::new(RetryOn401Policy::default()).layer(app_auth(pool))
}

/// Runs `f` with the named variant as a concrete service type.
#[macro_export]
macro_rules! with_variant {
    ($name:expr, $setup:expr, $token:expr, |$service:ident| $body:expr) => {
        match $name {
            "bare" => {
                let $service = support::Bare;
                $body
            }
            "set_request_header" => {
                let $service = support::set_request_header($token);
                $body
            }
            "installation_auth" => {
                let $service = support::installation_auth(&$setup.installation);
                $body
            }
            "retry_auth" => {
                let $service = support::retry_auth(&$setup.installation);
                $body
            }
            "app_auth" => {
                let $service = support::app_auth(&$setup.pool);
                $body
            }
            "retry_app_auth" => {
                let $service = support::retry_app_auth(&$setup.pool);
                $body
            }
            "user_auth" => {
                let $service = support::user_auth(&$setup.user);
                $body
            }
            "hand_rolled" => {
                let $service = support::HandRolled::new(support::Bare, $token);
                $body
            }
            other => panic!("unknown variant {other}; one of {:?}", support::VARIANTS),
        }
    };
}
