//! Token sources against runtimes that die, shut down mid-spawn, or stay alive without being driven: no
//! request ever hangs, none carries an expired token, and a source is never wedged.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{TokenEndpoint, get};
use tokio::runtime::{Builder, Runtime};
use tower::{Layer, Service, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, TokenState};
use tower_github_app::{ErrorKind, Installation, InstallationAuthLayer};

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn in_process(endpoint: &TokenEndpoint) -> Installation {
    let app = tower_github_app::GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    Installation::builder(app, 7).api_base("http://127.0.0.1:9").build(endpoint.clone()).unwrap()
}

/// Runs `f` on its own thread and waits at most `limit` for it: a hang shows up as `None`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver.recv_timeout(limit).ok()
}

/// The deterministic form of the race: the first poll happens inside a runtime that is gone, so the refresher is
/// spawned there and dropped unpolled.
#[test]
fn a_first_request_inside_a_dropped_runtime_fails_fast_and_leaves_the_source_usable() {
    let endpoint = TokenEndpoint::default();
    let installation = in_process(&endpoint);
    let dead = current_thread();
    let handle = dead.handle().clone();
    drop(dead);

    let source = installation.clone();
    let outcome = within(Duration::from_secs(10), move || handle.block_on(source.token()).map(|_| ()));
    let error = outcome.expect("token() inside a dropped runtime returned instead of hanging").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Runtime);
    assert!(error.to_string().contains("shutting down"), "{error}");

    // Not wedged: a live runtime gets a token at once.
    let source = installation.clone();
    let outcome = within(Duration::from_secs(10), move || current_thread().block_on(source.token()).map(|_| ()));
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    assert_eq!(endpoint.mints.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// 4,000 runtimes shut down while a task on another worker keeps asking for tokens, so that refreshers are
/// spawned on runtimes that are shutting down. Afterwards every token source must still answer.
#[test]
fn four_thousand_runtime_drops_wedge_no_token_source() {
    const DROPS: usize = 4000;
    let mut wedged = 0;
    let mut restarts = 0;
    let checker = current_thread();
    for i in 0..DROPS {
        let endpoint = TokenEndpoint::default();
        let installation = in_process(&endpoint);
        let runtime = Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        for _ in 0..2 {
            let source = installation.clone();
            runtime.spawn(async move {
                loop {
                    if let Ok(token) = source.token().await
                        && fastrand::bool()
                    {
                        source.invalidate(&token);
                    }
                    tokio::task::yield_now().await;
                }
            });
        }
        // Let the tasks run for a varying moment, then shut the runtime down under them.
        std::thread::sleep(Duration::from_micros((i % 7 * 40) as u64));
        drop(runtime);
        let answered =
            checker.block_on(async { tokio::time::timeout(Duration::from_secs(2), installation.token()).await });
        match answered {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("drop {i}: {error}"),
            Err(_) => wedged += 1,
        }
        restarts += installation.stats().refresher_starts;
    }
    println!("{DROPS} runtime drops: {wedged} token sources wedged, {restarts} refresher starts");
    assert_eq!(wedged, 0, "{wedged} of {DROPS} token sources never answered again");
}

/// A `current_thread` runtime that started the refresher, kept alive but never driven again, while requests
/// run on another runtime: over more than two token lifetimes, no request carries an expired token, none fails
/// and none waits for a mint.
#[test]
fn an_idle_runtime_owning_the_refresher_never_makes_a_request_carry_an_expired_token() {
    let server = Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Three-second tokens: the client sees about two seconds of life in them (`Date` has second precision).
    let github = server.block_on(FakeGitHub::builder().token_lifetime(Duration::from_secs(3)).start());
    // A hyper-util client's pooled connections are driven by the runtime that opened them: one opened on the
    // runtime that goes idle would hang every later mint. This client keeps no idle connections, so every mint
    // connects from the runtime it runs on (the README's "Limits worth knowing" says the same to users).
    let mint_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(mint_client)
        .unwrap();

    let idle = current_thread();
    idle.block_on(installation.token()).unwrap();
    // `idle` stays alive from here on, and nobody drives it.

    let requests = Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let statuses = requests.block_on(async {
        let mut service = InstallationAuthLayer::new(installation.clone()).layer(github.client());
        let mut statuses = Vec::new();
        for _ in 0..50 {
            let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
            statuses.push(response.status().as_u16());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let states: Vec<TokenState> = github
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/repos"))
        .filter_map(|r| match r.credential {
            Credential::InstallationToken { state, .. } => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 50);
    let expired = states.iter().filter(|s| **s != TokenState::Valid).count();
    let stats = installation.stats();
    println!(
        "idle owner: 50 requests, {expired} with a token GitHub refused, {} mints, {stats:?}",
        github.mint_count()
    );
    assert_eq!(expired, 0, "{states:?}");
    assert!(github.mint_count() >= 3, "tokens were refreshed: {}", github.mint_count());
    assert!(stats.refresher_starts >= 2, "the refresher moved off the idle runtime: {stats:?}");
    assert_eq!(stats.waited_requests, 1, "only the first token() waited: {stats:?}");
    drop(idle);
}

/// The same idle owner, and an invalidation: `token()` on another runtime does not wait for the idle one.
#[test]
fn after_an_invalidation_token_does_not_wait_for_an_idle_runtime() {
    let endpoint = TokenEndpoint::default();
    let installation = in_process(&endpoint);
    let idle = current_thread();
    let first = idle.block_on(installation.token()).unwrap();

    let source = installation.clone();
    let outcome = within(Duration::from_secs(20), move || {
        current_thread().block_on(async {
            let started = tokio::time::Instant::now();
            assert!(source.invalidate(&first));
            let token = source.token().await?;
            Ok::<_, tower_github_app::Error>((token.serial() != first.serial(), started.elapsed()))
        })
    });
    let (fresh, waited) = outcome.expect("token() returned instead of hanging").unwrap();
    println!("token() after an invalidation with an idle refresher runtime: answered in {waited:?}");
    assert!(fresh);
    assert_eq!(endpoint.mints.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(idle);
}

/// The refresher failed a mint and its runtime then went idle: its backoff never ends there. Requests on another
/// runtime fail fast at first (the last error), then, once the watchdog sees it overslept, start a refresher where
/// they run and get a token, instead of failing on for good.
#[test]
fn a_failed_refresher_on_an_idle_runtime_does_not_fail_requests_for_good() {
    let endpoint = TokenEndpoint::default();
    endpoint.failures.store(1, std::sync::atomic::Ordering::Relaxed);
    let app = tower_github_app::GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let installation = Installation::builder(app, 7)
        .api_base("http://127.0.0.1:9")
        .refresh_backoff(Duration::from_millis(300), Duration::from_millis(300))
        .build(endpoint.clone())
        .unwrap();
    let idle = current_thread();
    let error = idle.block_on(installation.token()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ServerError);

    let source = installation.clone();
    let outcome = within(Duration::from_secs(20), move || {
        current_thread().block_on(async {
            let started = tokio::time::Instant::now();
            let mut failures = 0;
            loop {
                match source.token().await {
                    Ok(_) => return (failures, started.elapsed()),
                    Err(error) => {
                        assert_eq!(error.kind(), ErrorKind::ServerError, "{error}");
                        failures += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let (failures, took) = outcome.expect("a token arrived instead of failing for good");
    println!("failed refresher on an idle runtime: {failures} fast failures, then a token after {took:?}");
    assert_eq!(endpoint.mints.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(idle);
}
