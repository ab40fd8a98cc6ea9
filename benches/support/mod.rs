//! The four ways of stamping a header that the benchmarks compare, shared by the criterion benches and the
//! deterministic `inject` example.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use tower::{Layer, Service};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::{Installation, InstallationAuthLayer};

/// The cheapest possible inner service: answers at once.
#[derive(Clone, Debug)]
pub struct Bare;

impl Service<Request<()>> for Bare {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
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

impl<S: Service<Request<()>>> Service<Request<()>> for HandRolled<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<()>) -> S::Future {
        let token = self.token.read().unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        drop(token);
        request.headers_mut().insert(AUTHORIZATION, value);
        self.inner.call(request)
    }
}

/// One request through `service`, polled once (every variant completes at once).
pub fn call<S>(service: &mut S, uri: &Uri) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(service.poll_ready(&mut cx).is_ready());
    let mut request = Request::new(());
    *request.uri_mut() = uri.clone();
    let future = service.call(request);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => panic!("the benchmark's services answer at once"),
    }
}

use std::future::Future;

/// A fake GitHub, an installation with a valid one-hour token, and the URI of an API route on it. The runtime
/// must stay alive while the installation is used.
pub fn installation_with_token() -> (tokio::runtime::Runtime, FakeGitHub, Installation, Uri) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (github, installation) = runtime.block_on(async {
        let github = FakeGitHub::start().await;
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(github.client())
            .unwrap();
        installation.token().await.unwrap();
        (github, installation)
    });
    let uri: Uri = format!("{}/repos/octo-org/octo-repo", github.api_base()).parse().unwrap();
    (runtime, github, installation, uri)
}

/// The variants of benchmark 1, by name.
pub const VARIANTS: [&str; 4] = ["bare", "set_request_header", "installation_auth", "hand_rolled"];

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

/// Runs `f` with the named variant as a concrete service type.
#[macro_export]
macro_rules! with_variant {
    ($name:expr, $installation:expr, $token:expr, |$service:ident| $body:expr) => {
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
                let $service = support::installation_auth($installation);
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
