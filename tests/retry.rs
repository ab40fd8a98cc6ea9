//! `RetryOn401Policy` against the fake GitHub: replication lag, revoked tokens, clock skew, streaming bodies,
//! the retry budget, and the composed tower-http stack with redirects to another host.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::get;
use futures_util::TryFutureExt;
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tower::retry::RetryLayer;
use tower::retry::budget::TpsBudget;
use tower::{ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, TokenState};
use tower_github_app::{
    AppJwtUsed, Installation, InstallationAuthLayer, InstallationTokenUsed, RetryGaveUp, RetryOn401Policy,
};

fn installation_for(
    github: &FakeGitHub,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Installation {
    Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID).api_base(&github.api_base()).build(client).unwrap()
}

/// 1,000 requests right after a mint whose token is refused for its first 3 s. Returns (ok, failed).
async fn lag_burst(with_policy: bool) -> (usize, usize, FakeGitHub) {
    let github = FakeGitHub::builder().replication_lag(Duration::from_secs(3)).start().await;
    let client = github.client();
    let installation = installation_for(&github, client.clone());
    installation.token().await.unwrap();
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let statuses: Vec<StatusCode> = if with_policy {
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryOn401Policy::default()))
            .layer(InstallationAuthLayer::new(installation))
            .service(client);
        // Statuses only: each body is dropped as its response arrives, as a client that reads it would.
        join_all((0..1000).map(|_| service.clone().oneshot(get(&url)).map_ok(|r| r.status())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    } else {
        let service = ServiceBuilder::new().layer(InstallationAuthLayer::new(installation)).service(client);
        // Statuses only: each body is dropped as its response arrives, as a client that reads it would.
        join_all((0..1000).map(|_| service.clone().oneshot(get(&url)).map_ok(|r| r.status())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    };
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    (ok, statuses.len() - ok, github)
}

#[tokio::test(start_paused = true)]
async fn replication_lag_of_three_seconds_costs_no_failed_request_and_no_re_mint() {
    let (ok, failed, github) = lag_burst(true).await;
    assert_eq!((ok, failed), (1000, 0));
    assert_eq!(github.mint_count(), 1, "no re-mint inside the lag window");
    let attempts = github.requests().iter().filter(|r| r.path.starts_with("/repos")).count();
    println!("with the policy: 1000 ok, {attempts} attempts reached the API");
    // Each request is sent, refused, and resent once the token is proven; probes on top are budgeted.
    assert!(attempts <= 1000 + 1000 + 400, "{attempts}");

    let (ok, failed, _) = lag_burst(false).await;
    println!("without the policy: {ok} ok, {failed} failed");
    assert_eq!(failed, 1000);
}

#[tokio::test(start_paused = true)]
async fn a_token_revoked_mid_run_costs_one_re_mint_and_no_failed_request() {
    let github = FakeGitHub::start().await;
    let client = github.client();
    let installation = installation_for(&github, client.clone());
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation.clone()))
        .service(client);
    let url = format!("{}/installation/repositories", github.api_base());
    let mut failed = 0;
    for round in 0..6 {
        if round == 3 {
            github.revoke_all_tokens();
        }
        let statuses = join_all((0..100).map(|_| service.clone().oneshot(get(&url)).map_ok(|r| r.status()))).await;
        failed += statuses.iter().filter(|s| *s.as_ref().unwrap() != 200).count();
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(failed, 0);
    assert_eq!(github.mint_count(), 2, "exactly one re-mint");
    assert_eq!(installation.stats().invalidations, 1);
    let revoked = github
        .requests()
        .iter()
        .filter(|r| matches!(r.credential, Credential::InstallationToken { state: TokenState::Revoked, .. }))
        .count();
    assert!((1..=100).contains(&revoked), "{revoked}");
}

#[tokio::test]
async fn a_server_clock_ten_minutes_off_costs_one_refused_jwt_then_none() {
    for offset in [600, -600] {
        let github = FakeGitHub::builder().clock_offset(offset).start().await;
        let installation = installation_for(&github, github.client());
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryOn401Policy::default()))
            .layer(InstallationAuthLayer::new(installation.clone()))
            .service(github.client());
        for path in ["/app", "/app/installations", "/repos/octo-org/octo-repo/installation", "/app"] {
            let response = service.clone().oneshot(get(&format!("{}{path}", github.api_base()))).await.unwrap();
            assert_eq!(response.status(), 200, "{offset} {path}");
            assert!(response.extensions().get::<AppJwtUsed>().is_some());
        }
        // Installation routes mint with the corrected clock at once.
        let response = service.oneshot(get(&format!("{}/repos/octo-org/octo-repo", github.api_base()))).await.unwrap();
        assert_eq!(response.status(), 200);
        let refused: Vec<_> =
            github.requests().into_iter().filter(|r| r.credential == Credential::AppJwt { valid: false }).collect();
        assert_eq!(refused.len(), 1, "offset {offset}: {refused:?}");
        assert_eq!(installation.stats().failed_mints, 0);
    }
}

/// An API stand-in under the auth layer that always answers 401 and counts calls.
fn always_401<B: Send + 'static>(
    calls: Arc<AtomicU64>,
) -> impl tower::Service<Request<B>, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(move |_request: Request<B>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async {
            // A network round trip: concurrent requests are all in flight before the first answer.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, Infallible>(Response::builder().status(401).body(String::new()).unwrap())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_once_and_its_401_returned_untouched() {
    let github = FakeGitHub::start().await;
    let installation = installation_for(&github, github.client());
    installation.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());

    let calls = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation.clone()))
        .service(always_401::<BoxBody<Bytes, Infallible>>(calls.clone()));
    let streaming = Full::new(Bytes::from_static(b"{\"body\":1}")).boxed();
    let request = Request::post(&url).body(streaming).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert!(response.extensions().get::<RetryGaveUp>().is_none());
    assert_eq!(github.mint_count(), 1, "no invalidation for a request that could not be retried");

    // The same request with a clonable body is retried, with its extensions intact.
    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u32);
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let (calls2, seen2) = (calls.clone(), seen.clone());
    let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
        calls2.fetch_add(1, Ordering::Relaxed);
        if request.extensions().get::<Marker>() == Some(&Marker(7)) {
            seen2.fetch_add(1, Ordering::Relaxed);
        }
        async { Ok::<_, Infallible>(Response::builder().status(401).body(String::new()).unwrap()) }
    });
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation))
        .service(inner);
    let mut request = Request::post(&url).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    request.extensions_mut().insert(Marker(7));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(calls.load(Ordering::Relaxed) > 1);
    assert_eq!(seen.load(Ordering::Relaxed), calls.load(Ordering::Relaxed));
    assert!(response.extensions().get::<RetryGaveUp>().is_some());
}

/// 100 concurrent requests that GitHub refuses whatever the token; returns calls that reached the API and how
/// many responses say the policy gave up.
async fn refuse_everything(policy: RetryOn401Policy) -> (u64, usize) {
    let github = FakeGitHub::start().await;
    let installation = installation_for(&github, github.client());
    installation.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(InstallationAuthLayer::new(installation))
        .service(always_401::<Full<Bytes>>(calls.clone()));
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let responses = join_all((0..100).map(|_| service.clone().oneshot(get(&url)))).await;
    let gave_up = responses.iter().filter(|r| r.as_ref().unwrap().extensions().get::<RetryGaveUp>().is_some()).count();
    assert!(responses.iter().all(|r| r.as_ref().unwrap().status() == 401));
    (calls.load(Ordering::Relaxed), gave_up)
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_when_every_request_gets_401() {
    let (unbounded, gave_up_unbounded) = refuse_everything(RetryOn401Policy::builder().no_budget().build()).await;
    let (budgeted, gave_up) =
        refuse_everything(RetryOn401Policy::builder().budget(TpsBudget::new(Duration::from_secs(10), 1, 0.0)).build())
            .await;
    let (default, _) = refuse_everything(RetryOn401Policy::default()).await;
    println!("calls for 100 refused requests: no budget {unbounded}, default {default}, tight budget {budgeted}");
    assert_eq!(gave_up, 100, "every response says the policy gave up");
    assert_eq!(gave_up_unbounded, 100);
    // Without a budget, per-request bounds alone: the stale token, one shared re-mint, one waited-out lag window
    // (probed once per step, not by every request), one last try with a replacement. At most three calls per
    // request plus the probes of two windows.
    assert!(unbounded <= 300 + 2 * 15, "{unbounded}");
    // The tight budget holds 10 paid retries (the re-mints after a stale token); the other 90 requests give up
    // at once.
    assert!(budgeted <= 100 + 3 * 10 + 2 * 15, "{budgeted}");
    assert!(budgeted * 2 <= unbounded, "{budgeted} vs {unbounded}");
    // The default budget (100 in reserve) pays every re-mint here, so it is bounded like no budget.
    assert!(default <= 300 + 2 * 15, "{default}");
}

#[tokio::test]
async fn the_composed_stack_never_sends_the_token_to_another_host() {
    use tower_http::follow_redirect::FollowRedirectLayer;
    use tower_http::trace::TraceLayer;

    let github = FakeGitHub::start().await;
    let elsewhere = FakeGitHub::start().await;
    let client = github.client();
    let installation = installation_for(&github, client.clone());
    let service = ServiceBuilder::new()
        .buffer(256)
        .layer(TraceLayer::new_for_http())
        .timeout(Duration::from_secs(30))
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(FollowRedirectLayer::new())
        .concurrency_limit(64)
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(client);

    // Same origin: the redirect is followed with the token.
    let same = format!("{}/redirect?to={}/repos/octo-org/octo-repo", github.api_base(), github.api_base());
    let response = service.clone().oneshot(get(&same)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.extensions().get::<InstallationTokenUsed>().is_some());

    // Another host (another port): followed, but without the token, and its 401 is not retried.
    let other = format!("{}/redirect?to={}/repos/octo-org/octo-repo", github.api_base(), elsewhere.api_base());
    let responses = join_all((0..20).map(|_| service.clone().oneshot(get(&other)))).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.extensions().get::<InstallationTokenUsed>().is_none());
    }
    let seen = elsewhere.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.credential == Credential::None), "{seen:?}");
    assert_eq!(github.mint_count(), 1);
}

/// A budget that counts what the policy pays into it.
#[derive(Clone, Default)]
struct CountingBudget {
    deposits: Arc<AtomicU64>,
}

impl tower::retry::budget::Budget for CountingBudget {
    fn deposit(&self) {
        self.deposits.fetch_add(1, Ordering::Relaxed);
    }
    fn withdraw(&self) -> bool {
        true
    }
}

/// Tower's `Retry` used as one service (behind `Buffer`, or `ready().call()` again and again) calls
/// `clone_request` on its own policy for every request: per-request state must not leak from one to the next.
#[tokio::test(start_paused = true)]
async fn one_retry_service_called_five_times_keeps_per_request_state_per_request() {
    let github = FakeGitHub::start().await;
    let installation = installation_for(&github, github.client());
    installation.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let budget = CountingBudget::default();
    let calls = Arc::new(AtomicU64::new(0));
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::builder().budget(budget.clone()).build()))
        .layer(InstallationAuthLayer::new(installation))
        .service(always_401::<Full<Bytes>>(calls.clone()));
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let mut elapsed = Vec::new();
    for _ in 0..5 {
        use tower::Service;
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        elapsed.push(response.extensions().get::<RetryGaveUp>().unwrap().elapsed);
        // An hour between requests: a request's `elapsed` must not count it.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    assert_eq!(budget.deposits.load(Ordering::Relaxed), 5, "one deposit per request");
    assert!(elapsed.iter().all(|e| *e < Duration::from_secs(60)), "{elapsed:?}");
}

/// The default budget is paid in batches: a service that sent requests has paid for all but the last few.
#[tokio::test(start_paused = true)]
async fn the_default_budget_is_paid_in_batches() {
    use tower::Service;
    use tower_github_app::retry::RetryBudget;
    let github = FakeGitHub::start().await;
    let installation = installation_for(&github, github.client());
    // One retry allowed per request deposited, none in reserve: `available` counts the deposits paid in.
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 1.0));
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::builder().retry_budget(budget.clone()).build()))
        .layer(InstallationAuthLayer::new(installation))
        .service(github.client());
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let requests = RetryBudget::BATCH * 3 + 5;
    for _ in 0..requests {
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(budget.available(), isize::try_from(RetryBudget::BATCH * 3).unwrap(), "whole batches paid");
    drop(service);
    assert_eq!(budget.available(), isize::try_from(requests).unwrap(), "the rest paid when the service goes");
}

/// A cold-start burst of `n` requests through the README's stack while GitHub refuses the fresh token for `lag`:
/// (completion times from the burst's start, refused attempts, mints).
async fn burst_under_lag(n: usize, lag: Duration) -> (Vec<Duration>, usize, u64) {
    let github = FakeGitHub::builder().replication_lag(lag).start().await;
    let client = github.client();
    let installation = installation_for(&github, client.clone());
    let service = common::recommended_stack(installation.clone(), client);
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let started = tokio::time::Instant::now();
    let outcomes = join_all((0..n).map(|_| {
        service
            .clone()
            .oneshot(get(&url))
            .and_then(common::read_whole)
            .map_ok(move |status| (status, started.elapsed()))
    }))
    .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(outcomes.iter().all(|(status, _)| *status == 200));
    let mut times: Vec<Duration> = outcomes.into_iter().map(|(_, time)| time).collect();
    times.sort();
    let refused = github
        .requests()
        .iter()
        .filter(|r| matches!(r.credential, Credential::InstallationToken { state: TokenState::Replicating, .. }))
        .count();
    (times, refused, github.mint_count())
}

/// Found by an outside review: 100 to 200 concurrent requests under a 300 ms lag took ~10 s each, because the
/// retry budget ran dry on probes and then nobody probed until the lag window closed. Probing no longer depends on
/// the budget: one probe per token per step, whatever the budget says, and everyone else waits on its answer.
#[tokio::test(start_paused = true)]
async fn a_cold_start_burst_under_replication_lag_ends_within_a_probe_step_of_the_lag() {
    for (n, lag, step) in [
        (200, Duration::from_millis(300), Duration::from_millis(500)),
        (1000, Duration::from_millis(300), Duration::from_millis(500)),
        (500, Duration::from_secs(3), Duration::from_secs(1)),
    ] {
        let (times, refused, mints) = burst_under_lag(n, lag).await;
        let (p10, p50, last) = (times[n / 10], times[n / 2], times[n - 1]);
        println!("{n} requests, lag {lag:?}: done p10 {p10:?} p50 {p50:?} last {last:?}; {refused} refused attempts");
        assert_eq!(mints, 1, "no re-mint inside the lag window");
        assert!(last <= lag + step + Duration::from_millis(100), "{n} under {lag:?}: last done at {last:?}");
        // Everyone's first attempt is refused; after that only the probes are, one per step.
        assert!(refused <= n + 12, "{refused} refused attempts for {n} requests");
    }
}

/// Found by review: a lone request under a lag of 5 to 9 s gave up after about 5 s and forced a re-mint. It now
/// probes through the whole 10 s window, on the same token.
#[tokio::test(start_paused = true)]
async fn a_lone_request_waits_out_a_lag_of_most_of_the_window_on_one_token() {
    for lag in [3u64, 6, 9] {
        let github = FakeGitHub::builder().replication_lag(Duration::from_secs(lag)).start().await;
        let installation = installation_for(&github, github.client());
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryOn401Policy::default()))
            .layer(InstallationAuthLayer::new(installation))
            .service(github.client());
        let started = tokio::time::Instant::now();
        let response = service.oneshot(get(&format!("{}/repos/octo-org/octo-repo", github.api_base()))).await.unwrap();
        assert_eq!(response.status(), 200, "lag {lag} s");
        assert_eq!(github.mint_count(), 1, "lag {lag} s: no re-mint inside the window");
        assert!(started.elapsed() <= Duration::from_secs(lag + 1), "lag {lag} s: {:?}", started.elapsed());
    }
}

/// A `403` on a scoped token GitHub has accepted before is about permissions: returned at once. One on a fresh
/// scoped token that never turns into a `200` is given up on at the end of the lag window, and says so.
#[tokio::test(start_paused = true)]
async fn a_403_on_a_scoped_token_is_retried_only_while_it_may_be_lag() {
    use tower::Layer;
    use tower_github_app::TokenScope;
    let github = FakeGitHub::start().await;
    let scoped = || {
        Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .scope(TokenScope::new().repositories(["octo-repo"]))
            .build(github.client())
            .unwrap()
    };
    // A stand-in API that answers 403 to everything, as GitHub does to a scope that lacks a permission.
    let forbidden = |calls: Arc<AtomicU64>| {
        tower::service_fn(move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::builder().status(403).body(String::new()).unwrap()) }
        })
    };
    let url = format!("{}/repos/octo-org/octo-repo/issues", github.api_base());

    // A fresh token: the 403 may be lag, so it is probed through the window, then given up on, visibly.
    let calls = Arc::new(AtomicU64::new(0));
    let fresh = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(scoped()))
        .service(forbidden(calls.clone()));
    let started = tokio::time::Instant::now();
    let response = fresh.oneshot(get(&url)).await.unwrap();
    assert_eq!(response.status(), 403);
    let gave_up = response.extensions().get::<RetryGaveUp>().expect("the policy says it gave up").clone();
    let (n, took) = (calls.load(Ordering::Relaxed), started.elapsed());
    println!("fresh scoped token, lasting 403: {n} calls, returned after {took:?}: {gave_up:?}");
    assert!(took <= Duration::from_secs(11), "{took:?}");

    // Proven by a 200: the next 403 is an answer, not lag.
    let installation = scoped();
    let ok = InstallationAuthLayer::new(installation.clone()).layer(github.client());
    let response = ok.oneshot(get(&format!("{}/repos/octo-org/octo-repo", github.api_base()))).await.unwrap();
    assert_eq!(response.status(), 200);
    let calls = Arc::new(AtomicU64::new(0));
    let proven = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation))
        .service(forbidden(calls.clone()));
    let response = proven.oneshot(get(&url)).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "a 403 on a proven token is not retried");
}

/// Found by review: with the retry budget exhausted, a revoked token was never invalidated, so every later
/// request met it too. Now the token is replaced whether or not the budget pays for this request's retry.
#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_still_replaces_a_revoked_token() {
    use tower::Layer;
    let github = FakeGitHub::start().await;
    let installation = installation_for(&github, github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    InstallationAuthLayer::new(installation.clone()).layer(github.client()).oneshot(get(&url)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    github.revoke_all_tokens();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryOn401Policy::builder().budget(TpsBudget::new(Duration::from_secs(1), 0, 0.0)).build(),
        ))
        .layer(InstallationAuthLayer::new(installation.clone()))
        .service(github.client());
    let refused = service.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.extensions().get::<RetryGaveUp>().unwrap().reason, "retry budget exhausted");
    assert_eq!(installation.stats().invalidations, 1);
    let next = service.oneshot(get(&url)).await.unwrap();
    assert_eq!(next.status(), 200, "the next request has the new token");
    assert_eq!(github.mint_count(), 2);
}
