//! Benchmarks 4, 5 and 6b: refresh off the request path, cold starts, and JWT reuse across installations,
//! against the fake GitHub on 127.0.0.1. A measurement program (`harness = false`): it prints its figures.
//!
//! ```text
//! cargo bench --bench lifecycle
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{get, read_whole};
use futures_util::TryFutureExt;
use futures_util::future::join_all;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, MintFault, TokenState};
use tower_github_app::{Installation, InstallationAuthLayer};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 4: a steady stream of requests while tokens rotate about every 1.3 s, each mint taking 200 ms.
async fn refresh_off_the_request_path() {
    let github = FakeGitHub::builder().token_lifetime(Duration::from_secs(3)).start().await;
    github.fail_mints(MintFault::Delay(Duration::from_millis(200)), usize::MAX);
    let client = github.client();
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(client.clone())
        .unwrap();
    installation.token().await.unwrap();
    let waited_before = installation.stats().waited_requests;
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());

    let run_for = Duration::from_secs(8);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut service =
                ServiceBuilder::new().layer(InstallationAuthLayer::new(installation.clone())).service(client.clone());
            let (github, installation, url) = (github.clone(), installation.clone(), url.clone());
            tokio::spawn(async move {
                let (mut inside, mut outside) = (Vec::new(), Vec::new());
                let started = Instant::now();
                while started.elapsed() < run_for {
                    // A mint is under way when GitHub has seen more token requests than the source has published.
                    let in_window = github.mint_attempts() > installation.stats().mints;
                    let sent = Instant::now();
                    let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
                    let latency = sent.elapsed();
                    assert_eq!(response.status(), 200);
                    if in_window { inside.push(latency) } else { outside.push(latency) }
                }
                (inside, outside)
            })
        })
        .collect();
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for worker in join_all(workers).await {
        let (i, o) = worker.unwrap();
        inside.extend(i);
        outside.extend(o);
    }
    inside.sort();
    outside.sort();
    let waited = installation.stats().waited_requests - waited_before;
    println!(
        "4 refresh: {} mints in {:?}; inside mint windows: {} requests, p50 {:?}, p99 {:?}; outside: {} requests, \
         p50 {:?}, p99 {:?}; requests that waited for a mint: {waited}",
        installation.stats().mints,
        run_for,
        inside.len(),
        percentile(&inside, 0.5),
        percentile(&inside, 0.99),
        outside.len(),
        percentile(&outside, 0.5),
        percentile(&outside, 0.99),
    );
}

/// 5: N concurrent first requests on a cold start: mints and time until all are answered (median of 5).
async fn cold_start(n: usize) {
    let mut times = Vec::new();
    let mut mints = Vec::new();
    for _ in 0..5 {
        let github = FakeGitHub::start().await;
        let client = github.client_http2();
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(client.clone())
            .unwrap();
        let service = ServiceBuilder::new().layer(InstallationAuthLayer::new(installation)).service(client);
        let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
        let started = Instant::now();
        // Each answer read whole as it arrives, as a client does (unread bodies would exhaust HTTP/2's
        // flow-control window).
        let statuses = join_all((0..n).map(|_| service.clone().oneshot(get(&url)).and_then(read_whole))).await;
        times.push(started.elapsed());
        assert!(statuses.iter().all(|s| *s.as_ref().unwrap() == 200));
        mints.push(github.mint_count());
    }
    times.sort();
    println!(
        "5 cold start N={n}: mints {mints:?}, all answered in median {:?} (min {:?}, max {:?})",
        times[2], times[0], times[4]
    );
}

/// 7: a cold-start burst of `n` requests through the README's recommended stack (Buffer, Trace, Timeout,
/// `Retry<RetryOn401Policy>`, FollowRedirect, ConcurrencyLimit, auth) while GitHub refuses the fresh token for
/// `lag`, on the real clock: when the requests finish, measured from the burst's start (median of 3 runs).
async fn burst_under_lag(n: usize, lag: Duration) {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let github = FakeGitHub::builder().replication_lag(lag).start().await;
        let client = github.client();
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(client.clone())
            .unwrap();
        let service = common::recommended_stack(installation, client);
        let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
        let started = Instant::now();
        let outcomes = join_all((0..n).map(|_| {
            service.clone().oneshot(get(&url)).and_then(read_whole).map_ok(move |status| (status, started.elapsed()))
        }))
        .await;
        let mut times: Vec<Duration> = outcomes.iter().map(|o| o.as_ref().unwrap().1).collect();
        times.sort();
        let ok = outcomes.iter().filter(|o| o.as_ref().unwrap().0 == 200).count();
        let refused = github
            .requests()
            .iter()
            .filter(|r| matches!(r.credential, Credential::InstallationToken { state: TokenState::Replicating, .. }))
            .count();
        runs.push((times[n / 10], times[n / 2], times[n - 1], ok, refused, github.mint_count()));
    }
    runs.sort_by_key(|r| r.2);
    let (p10, p50, last, ok, refused, mints) = runs[1];
    println!(
        "7 burst N={n} lag {lag:?} (median run of 3): {ok} ok, done p10 {p10:?} p50 {p50:?} last {last:?}; \
         {refused} refused attempts, {mints} mint(s)"
    );
}

/// 6b: tokens for 1,000 installations of one App, minted over 9 minutes: how many JWT signatures.
fn jwts_for_a_thousand_installations() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let mut builder = FakeGitHub::builder();
        for id in 1000..2000 {
            builder = builder.installation(id, FakeGitHub::APP_ID, "octo-org", &["octo-org/octo-repo"]);
        }
        let github = builder.start().await;
        let app = github.app();
        for id in 1000..2000 {
            let installation =
                Installation::builder(app.clone(), id).api_base(&github.api_base()).build(github.client()).unwrap();
            installation.token().await.unwrap();
            tokio::time::sleep(Duration::from_millis(540)).await;
        }
        println!(
            "6 JWTs: 1000 installations minted over 9 min: {} mints, {} JWT signatures (one per mint would be 1000)",
            github.mint_count(),
            app.jwt_signatures()
        );
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(refresh_off_the_request_path());
    for n in [1, 100, 10_000] {
        runtime.block_on(cold_start(n));
    }
    for (n, lag) in [(200, 300), (1000, 300), (500, 3000)] {
        runtime.block_on(burst_under_lag(n, Duration::from_millis(lag)));
    }
    drop(runtime);
    jwts_for_a_thousand_installations();
}
