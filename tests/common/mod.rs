//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// Fails if `text` contains any of the secrets, or anything shaped like a GitHub token, a JWT or PEM key material.
pub fn assert_no_secrets(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
    for marker in ["ghs_", "ghu_", "ghr_", "eyJ", "MII"] {
        assert!(!text.contains(marker), "{marker:?} leaked into: {text}");
    }
}

/// Reads a response's body whole, as a client does (unread bodies of many concurrent GitHub-sized answers would
/// exhaust HTTP/2's flow-control window), and keeps its status.
pub async fn read_whole<B>(response: Response<B>) -> Result<http::StatusCode, tower::BoxError>
where
    B: http_body::Body,
    B::Error: Into<tower::BoxError>,
{
    let status = response.status();
    http_body_util::BodyExt::collect(response.into_body()).await.map_err(Into::into)?;
    Ok(status)
}

/// A GET request to `url` with an empty body.
pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A token endpoint in process: answers every mint at once with a fresh one-hour token, and counts them. No
/// sockets, no tasks, so thousands of token sources and runtimes cost next to nothing.
#[derive(Clone, Default)]
pub struct TokenEndpoint {
    pub mints: Arc<AtomicU64>,
    /// How many of the next token requests to answer `502` instead.
    pub failures: Arc<AtomicU64>,
}

impl tower::Service<Request<Full<Bytes>>> for TokenEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let now = SystemTime::now();
        if self.failures.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            let response = Response::builder()
                .status(502)
                .header("date", httpdate::fmt_http_date(now))
                .body(Full::new(Bytes::from_static(br#"{"message":"Server Error"}"#)))
                .unwrap();
            return std::future::ready(Ok(response));
        }
        self.mints.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            r#"{{"token":"ghs_{:036}","expires_at":"{}"}}"#,
            SERIAL.fetch_add(1, Ordering::Relaxed),
            humantime::format_rfc3339_seconds(now + Duration::from_secs(3600))
        );
        let response = Response::builder()
            .status(201)
            .header("date", httpdate::fmt_http_date(now))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

/// The stack the README recommends: Buffer, Trace, Timeout, `Retry<RetryOn401Policy>`, FollowRedirect,
/// ConcurrencyLimit, `InstallationAuth`, then `client` (which also mints).
pub fn recommended_stack<C>(
    installation: tower_github_app::Installation,
    client: C,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>,
    Error = tower::BoxError,
    Future: Send,
> + Clone
+ Send
where
    C: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<hyper::body::Incoming>,
            Error = hyper_util::client::legacy::Error,
        > + Clone
        + Send
        + 'static,
    C::Future: Send + 'static,
{
    use tower::ServiceBuilder;
    use tower::retry::RetryLayer;
    use tower_github_app::{InstallationAuthLayer, RetryOn401Policy};
    use tower_http::follow_redirect::FollowRedirectLayer;
    use tower_http::trace::TraceLayer;
    ServiceBuilder::new()
        .map_response(|response: Response<_>| response.map(http_body_util::BodyExt::boxed))
        .buffer(1024)
        .layer(TraceLayer::new_for_http())
        .timeout(Duration::from_secs(30))
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(FollowRedirectLayer::new())
        .concurrency_limit(64)
        .layer(InstallationAuthLayer::new(installation))
        .service(client)
}
