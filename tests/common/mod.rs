//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod counting;

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

/// A token endpoint in process: answers every mint at once with a fresh one-hour token (or `lifetime`), and
/// counts them, by installation and by moment; answers `DELETE /installation/token` with `204`. No sockets, no
/// tasks, so thousands of token sources and runtimes cost next to nothing.
#[derive(Clone, Default)]
pub struct TokenEndpoint {
    pub mints: Arc<AtomicU64>,
    /// How many of the next token requests to answer `502` instead.
    pub failures: Arc<AtomicU64>,
    /// Token lifetime in seconds (0: an hour).
    pub lifetime_secs: Arc<AtomicU64>,
    /// Installation id and Tokio-clock moment of every mint.
    pub minted: Arc<std::sync::Mutex<Vec<(u64, tokio::time::Instant)>>>,
    /// `DELETE /installation/token` requests.
    pub revocations: Arc<AtomicU64>,
    /// Answer as GitHub does today: 520-character stateless tokens, with permissions and repository selection.
    pub github_sized: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenEndpoint {
    /// Mints per installation.
    pub fn mints_by_installation(&self) -> std::collections::HashMap<u64, u64> {
        let mut counts = std::collections::HashMap::new();
        for (installation, _) in self.minted.lock().unwrap().iter() {
            *counts.entry(*installation).or_default() += 1;
        }
        counts
    }

    /// The most mints that fell in any one-second window.
    pub fn peak_mints_per_second(&self) -> usize {
        let mut at: Vec<tokio::time::Instant> = self.minted.lock().unwrap().iter().map(|(_, t)| *t).collect();
        at.sort();
        let mut peak = 0;
        let mut start = 0;
        for end in 0..at.len() {
            while at[end] - at[start] >= Duration::from_secs(1) {
                start += 1;
            }
            peak = peak.max(end - start + 1);
        }
        peak
    }
}

impl tower::Service<Request<Full<Bytes>>> for TokenEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let now = SystemTime::now();
        if request.method() == http::Method::DELETE {
            self.revocations.fetch_add(1, Ordering::Relaxed);
            return std::future::ready(Ok(Response::builder().status(204).body(Full::default()).unwrap()));
        }
        if self.failures.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            let response = Response::builder()
                .status(502)
                .header("date", httpdate::fmt_http_date(now))
                .body(Full::new(Bytes::from_static(br#"{"message":"Server Error"}"#)))
                .unwrap();
            return std::future::ready(Ok(response));
        }
        self.mints.fetch_add(1, Ordering::Relaxed);
        let installation = request.uri().path().split('/').nth(3).and_then(|id| id.parse().ok()).unwrap_or(0);
        self.minted.lock().unwrap().push((installation, tokio::time::Instant::now()));
        let lifetime = match self.lifetime_secs.load(Ordering::Relaxed) {
            0 => 3600,
            secs => secs,
        };
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let expires_at = humantime::format_rfc3339_seconds(now + Duration::from_secs(lifetime));
        let body = if self.github_sized.load(Ordering::Relaxed) {
            format!(
                r#"{{"token":"ghs_{serial:0516}","expires_at":"{expires_at}","permissions":{{"contents":"write","issues":"write","metadata":"read","pull_requests":"write"}},"repository_selection":"all"}}"#
            )
        } else {
            format!(r#"{{"token":"ghs_{serial:036}","expires_at":"{expires_at}"}}"#)
        };
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
