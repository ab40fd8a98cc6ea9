//! One App, many installations: `InstallationPool` behind `AppAuthLayer`, against the fake GitHub (and, for
//! hours of token lifetimes in paused time, the in-process token endpoint).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TokenEndpoint, get, read_whole};
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, FakeGitHubBuilder, TokenState};
use tower_github_app::{
    AppAuthLayer, ErrorKind, GitHubApp, InstallationFor, InstallationPool, RetryOn401Policy, TokenScope,
};

const APP: u64 = FakeGitHub::APP_ID;

/// Installations 1000.. on accounts `acct-N`, each with repositories `acct-N/repo-0..repos`: even ones on all
/// of the account's repositories, odd ones on selected repositories.
fn many(builder: FakeGitHubBuilder, count: u64, repos: usize) -> FakeGitHubBuilder {
    (0..count).fold(builder, |builder, n| {
        let account = format!("acct-{n}");
        let names: Vec<String> = (0..repos).map(|r| format!("{account}/repo-{r}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        if n % 2 == 0 {
            builder.installation_on_all(1000 + n, APP, &account, &names)
        } else {
            builder.installation(1000 + n, APP, &account, &names)
        }
    })
}

fn pool(github: &FakeGitHub) -> tower_github_app::InstallationPoolBuilder {
    InstallationPool::builder(github.app()).api_base(&github.api_base())
}

/// The installation id each recorded request's token belonged to, by path.
fn tokens_by_path(github: &FakeGitHub) -> Vec<(String, Option<u64>, u16)> {
    github
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/installation") && !r.path.contains("/access_tokens"))
        .map(|r| {
            let installation = match r.credential {
                Credential::InstallationToken { installation_id, .. } => Some(installation_id),
                _ => None,
            };
            (r.path, installation, r.status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_installations_under_concurrent_requests_each_get_their_own_token() {
    let github = many(FakeGitHub::builder(), 1000, 2).start().await;
    let pool = pool(&github).max_concurrent_mints(32).build(github.client()).unwrap();
    let client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client_http2());

    // 4 requests per installation, all at once, in a shuffled order: two by path (two repositories), one by
    // the account's org route... and one by id from a "webhook payload".
    let mut order: Vec<(u64, u8)> = (0..1000).flat_map(|n| (0..4).map(move |k| (n, k))).collect();
    fastrand::shuffle(&mut order);
    let limit = Arc::new(tokio::sync::Semaphore::new(400));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, kind) in order {
        let base = github.api_base();
        let client = client.clone();
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let request = match kind {
                0 | 1 => get(&format!("{base}/repos/acct-{n}/repo-{kind}")),
                2 => get(&format!("{base}/repos/ACCT-{n}/repo-0")),
                _ => {
                    let mut request = get(&format!("{base}/installation/repositories"));
                    request.extensions_mut().insert(InstallationFor::Id(1000 + n));
                    request
                }
            };
            let status = read_whole(client.oneshot(request).await.unwrap()).await.unwrap();
            drop(permit);
            (n, kind, status)
        });
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (_, _, status) = done.unwrap();
        *statuses.entry(status.as_u16()).or_default() += 1;
    }
    let mut wrong = 0;
    let mut carried = 0;
    for (path, installation, _) in tokens_by_path(&github) {
        let expected = if path.starts_with("/installation/") {
            installation // by id: checked below through the mint count
        } else {
            let account = path.split('/').nth(2).unwrap().to_ascii_lowercase();
            Some(1000 + account.trim_start_matches("acct-").parse::<u64>().unwrap())
        };
        carried += 1;
        if installation.is_none() || installation != expected {
            wrong += 1;
        }
    }
    assert_eq!(carried, 4000);
    assert_eq!(wrong, 0, "requests carrying another installation's token (or none)");
    let stats = pool.stats();
    assert_eq!(stats.mints, 1000, "{stats:?}");
    // One lookup per account on all repositories; one per repository for selected ones (GitHub answers 404 for
    // the others): 500 × 1 + 500 × 2.
    assert_eq!(github.lookup_count(), 1500, "{stats:?}");
    // Names in any case, as GitHub matches them.
    assert_eq!(statuses.get(&200), Some(&4000), "{statuses:?}");
}

#[tokio::test]
async fn one_lookup_per_account_however_many_requests_name_it() {
    let github = FakeGitHub::builder()
        .installation_on_all(7, APP, "octo-cat", &["octo-cat/a", "octo-cat/b", "octo-cat/c"])
        .start()
        .await;
    let pool = pool(&github).build(github.client()).unwrap();
    let client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let path = match i % 4 {
            0 => "/repos/octo-cat/a",
            1 => "/repos/Octo-Cat/b",
            2 => "/repos/octo-cat/c",
            _ => "/orgs/octo-cat/installation/../../../repos/octo-cat/a",
        };
        let request = get(&format!("{}{path}", github.api_base()));
        tasks.spawn(client.clone().oneshot(request));
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(github.lookup_count(), 1);
    assert_eq!(pool.stats().lookups, 1);
    assert_eq!(pool.stats().mints, 1);
}

#[tokio::test]
async fn an_uninstalled_repository_fails_fast_with_a_typed_error_and_is_remembered() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    for _ in 0..5 {
        let request = get(&format!("{}/repos/nobody/nothing/issues", github.api_base()));
        let error = client.ready().await.unwrap().call(request).await.unwrap_err();
        let error = error.downcast::<tower_github_app::Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::NotInstalled);
        let message = error.to_string();
        assert!(message.contains("nobody/nothing") && message.contains("App 1"), "{message}");
    }
    assert_eq!(github.lookup_count(), 1, "negative-cached");
    assert_eq!(pool.stats().not_installed, 1);
    // Never sent, with or without credentials.
    assert!(github.requests().iter().all(|r| !r.path.ends_with("/issues")));
    // The same account's installed repositories are unaffected.
    let request = get(&format!("{}/repos/octo-org/octo-repo", github.api_base()));
    assert_eq!(client.ready().await.unwrap().call(request).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_forgotten_installation_stops_being_used_at_once() {
    let github = FakeGitHub::builder().installation_on_all(7, APP, "octo-cat", &["octo-cat/a"]).start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    let url = format!("{}/repos/octo-cat/a", github.api_base());
    for _ in 0..3 {
        assert_eq!(client.ready().await.unwrap().call(get(&url)).await.unwrap().status(), 200);
    }
    // The `installation` webhook says `deleted`.
    github.delete_installation(7);
    pool.forget_installation(7);
    let before = github.requests().len();
    let error = client.ready().await.unwrap().call(get(&url)).await.unwrap_err();
    assert_eq!(error.downcast::<tower_github_app::Error>().unwrap().kind(), ErrorKind::NotInstalled);
    let mut by_id = get(&format!("{}/installation/repositories", github.api_base()));
    by_id.extensions_mut().insert(InstallationFor::Id(7));
    let error = client.ready().await.unwrap().call(by_id).await.unwrap_err();
    assert_eq!(error.downcast::<tower_github_app::Error>().unwrap().kind(), ErrorKind::InstallationNotFound);
    // After forgetting: a lookup and a mint attempt, and no request carried the old token.
    let after: Vec<_> = github.requests()[before..].to_vec();
    assert!(after.iter().all(|r| !matches!(r.credential, Credential::InstallationToken { .. })), "{after:?}");
    assert_eq!(after.len(), 2, "{after:?}");
}

#[tokio::test]
async fn scoped_and_unscoped_requests_to_one_installation_get_different_tokens() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let scoped = || {
        let mut request = get(&url);
        request.extensions_mut().insert(TokenScope::new().repositories(["octo-repo"]).permission("contents", "read"));
        request
    };
    for _ in 0..3 {
        assert_eq!(client.ready().await.unwrap().call(get(&url)).await.unwrap().status(), 200);
        assert_eq!(client.ready().await.unwrap().call(scoped()).await.unwrap().status(), 200);
    }
    // A narrower scope is yet another token; the scoped token does not serve octo-lib.
    let mut lib = get(&format!("{}/repos/octo-org/octo-lib", github.api_base()));
    lib.extensions_mut().insert(TokenScope::new().repositories(["octo-repo"]).permission("contents", "read"));
    assert_eq!(client.ready().await.unwrap().call(lib).await.unwrap().status(), 404);
    let serials: Vec<u64> = github
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/repos/"))
        .filter_map(|r| match r.credential {
            Credential::InstallationToken { serial, .. } => Some(serial),
            _ => None,
        })
        .collect();
    assert_eq!(serials.len(), 7);
    // Alternating unscoped, scoped: two tokens, never mixed up.
    let unscoped: Vec<u64> = serials.iter().step_by(2).copied().take(3).collect();
    let narrow: Vec<u64> = serials.iter().skip(1).step_by(2).copied().collect();
    assert!(unscoped.iter().all(|s| *s == unscoped[0]));
    assert!(narrow.iter().all(|s| *s == narrow[0]));
    assert_ne!(unscoped[0], narrow[0]);
    assert_eq!(pool.stats().mints, 2);
}

#[tokio::test]
async fn app_jwt_routes_get_the_app_jwt_through_the_pool_layer() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    for path in ["/app", "/app/installations", "/repos/octo-org/octo-repo/installation"] {
        let response = client.ready().await.unwrap().call(get(&format!("{}{path}", github.api_base()))).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert!(github.requests().iter().all(|r| r.credential == Credential::AppJwt { valid: true }));
    assert_eq!(pool.stats().mints, 0);
}

#[tokio::test]
async fn a_request_that_names_no_installation_is_refused_unless_there_is_a_default() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool)).service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    let error = client.ready().await.unwrap().call(get(&url)).await.unwrap_err();
    let error = error.downcast::<tower_github_app::Error>().unwrap();
    assert_eq!(error.kind(), ErrorKind::InvalidRequest);
    assert!(error.to_string().contains("InstallationFor"), "{error}");
    assert!(github.requests().is_empty());

    let pool = pool_default(&github);
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool)).service(github.client());
    assert_eq!(client.ready().await.unwrap().call(get(&url)).await.unwrap().status(), 200);
}

fn pool_default(github: &FakeGitHub) -> InstallationPool {
    pool(github).default_installation(FakeGitHub::INSTALLATION_ID).build(github.client()).unwrap()
}

#[tokio::test]
async fn revoke_all_revokes_every_live_token() {
    let github = many(FakeGitHub::builder(), 20, 1).start().await;
    let pool = pool(&github).max_installations(15).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    for n in 0..20 {
        let url = format!("{}/repos/acct-{n}/repo-0", github.api_base());
        assert_eq!(client.ready().await.unwrap().call(get(&url)).await.unwrap().status(), 200);
    }
    // A scoped token too; and 5 entries were evicted for capacity, their tokens still live.
    let mut scoped = get(&format!("{}/repos/acct-0/repo-0", github.api_base()));
    scoped.extensions_mut().insert(TokenScope::new().permission("contents", "read"));
    assert_eq!(client.ready().await.unwrap().call(scoped).await.unwrap().status(), 200);
    assert_eq!(pool.stats().mints, 21);
    assert!(pool.stats().entries <= 15);

    let report = pool.revoke_all().await;
    assert_eq!((report.revoked, report.failed), (21, 0), "{report:?}");
    let deletes: Vec<_> = github.requests().into_iter().filter(|r| r.method == http::Method::DELETE).collect();
    assert_eq!(deletes.len(), 21);
    assert!(
        deletes.iter().all(|r| r.status == 204
            && matches!(r.credential, Credential::InstallationToken { state: TokenState::Valid, .. }))
    );
    assert_eq!(pool.stats().entries, 0);
    // Still usable: a new token.
    let url = format!("{}/repos/acct-3/repo-0", github.api_base());
    assert_eq!(client.ready().await.unwrap().call(get(&url)).await.unwrap().status(), 200);
    assert_eq!(pool.stats().mints, 22);
}

#[tokio::test]
async fn the_retry_policy_works_unchanged_on_the_pool() {
    let github = many(FakeGitHub::builder(), 5, 1).replication_lag(Duration::from_millis(300)).start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::builder().lag_window(Duration::from_millis(800)).build()))
        .layer(AppAuthLayer::new(pool.clone()))
        .service(github.client());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let request = get(&format!("{}/repos/acct-{}/repo-0", github.api_base(), i % 5));
        tasks.spawn(client.clone().oneshot(request));
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap().status(), 200);
    }
    assert_eq!(pool.stats().mints, 5, "{:?}", pool.stats());
    // A revoked token, past its lag window: the policy invalidates it in the pool, one new mint, the retry
    // succeeds once GitHub knows the new token.
    tokio::time::sleep(Duration::from_millis(900)).await;
    github.revoke_all_tokens();
    let response = client.clone().oneshot(get(&format!("{}/repos/acct-0/repo-0", github.api_base()))).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(pool.stats().invalidations, 1);
    assert_eq!(pool.stats().mints, 6);
}

/// Hours of one-hour tokens in paused time: entries in use are refreshed once per lifetime, at no more than
/// the configured rate; entries nobody uses stop being refreshed and leave the pool.
#[tokio::test(start_paused = true)]
async fn warm_entries_are_refreshed_once_per_lifetime_and_idle_ones_are_evicted() {
    let endpoint = TokenEndpoint::default();
    let app = GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let pool = InstallationPool::builder(app).mint_rate(5.0).build(endpoint.clone()).unwrap();
    let backend = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default()))
    });
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(backend);
    let request = |n: u64| {
        let mut request = get("https://api.github.com/installation/repositories");
        request.extensions_mut().insert(InstallationFor::Id(n));
        request
    };
    // 200 installations warm; 100 stay in use (a request every 5 minutes), 100 are used once.
    for n in 1..=200 {
        client.ready().await.unwrap().call(request(n)).await.unwrap();
    }
    for _ in 0..(3 * 12) {
        tokio::time::sleep(Duration::from_secs(300)).await;
        for n in 1..=100 {
            client.ready().await.unwrap().call(request(n)).await.unwrap();
        }
    }
    let by_installation = endpoint.mints_by_installation();
    let stats = pool.stats();
    // 3 hours: the first token and 3 refreshes (every ~50 minutes) for the ones in use, nothing waited.
    for n in 1..=100 {
        let mints = by_installation[&n];
        assert!((3..=4).contains(&mints), "installation {n}: {mints} mints; {stats:?}");
    }
    for n in 101..=200 {
        assert_eq!(by_installation[&n], 1, "installation {n} was refreshed though idle");
    }
    assert_eq!(stats.waited_requests, 200, "{stats:?}");
    assert_eq!(stats.idle_evictions, 100, "{stats:?}");
    assert!(endpoint.peak_mints_per_second() <= 200, "cold start: demand mints are not held back");
    let refreshes_only = {
        let minted = endpoint.minted.lock().unwrap();
        let first_refresh = minted[200..].to_vec();
        let mut peak = 0;
        for (i, (_, at)) in first_refresh.iter().enumerate() {
            let within = first_refresh[i..].iter().take_while(|(_, t)| *t - *at < Duration::from_secs(1)).count();
            peak = peak.max(within);
        }
        peak
    };
    assert!(refreshes_only <= 5, "scheduled refreshes at most 5 per second: {refreshes_only}");
    assert_eq!(stats.entries, 100);
    assert_eq!(endpoint.revocations.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn capacity_bounds_the_pool_and_evicted_installations_still_work() {
    let github = many(FakeGitHub::builder(), 30, 1).start().await;
    let pool = pool(&github).max_installations(10).build(github.client()).unwrap();
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    for round in 0..2 {
        for n in 0..30 {
            let url = format!("{}/repos/acct-{n}/repo-0", github.api_base());
            let status = client.ready().await.unwrap().call(get(&url)).await.unwrap().status();
            assert_eq!(status, 200, "round {round}, installation {n}");
        }
    }
    let stats = pool.stats();
    assert!(stats.entries <= 10, "{stats:?}");
    assert!(stats.capacity_evictions >= 20, "{stats:?}");
}

/// The scheduler runs on the runtime of the request that first needed it. When that runtime is gone, the next
/// request, on another runtime, starts it there: refreshes go on, and nothing waits.
#[test]
fn the_scheduler_moves_to_a_live_runtime_when_its_runtime_is_gone() {
    let endpoint = TokenEndpoint::default();
    let app = GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let pool = InstallationPool::builder(app).build(endpoint.clone()).unwrap();
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let first = runtime();
    let token = first.block_on(pool.token(InstallationFor::Id(5), None)).unwrap();
    drop(first);
    let second = runtime();
    second.block_on(async {
        let backend = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(backend);
        // Three hours of requests, one every five minutes.
        for _ in 0..36 {
            let mut request = get("https://api.github.com/installation/repositories");
            request.extensions_mut().insert(InstallationFor::Id(5));
            client.ready().await.unwrap().call(request).await.unwrap();
            tokio::time::sleep(Duration::from_secs(300)).await;
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.waited_requests, 1, "only the first token() waited: {stats:?}");
    assert!((3..=4).contains(&stats.refreshes), "{stats:?}");
    assert_eq!(endpoint.mints.load(Ordering::Relaxed), stats.refreshes + 1);
    drop(token);
}

type Req = http::Request<http_body_util::Full<bytes::Bytes>>;
type Resp = http::Response<http_body_util::Full<bytes::Bytes>>;

/// An in-process GitHub for paused time: mints through `endpoint`; each installation lookup is answered by
/// `answer(path, n)` (n: lookups so far) after `delay`, while `in_flight` counts lookups under way.
fn scripted(
    endpoint: TokenEndpoint,
    delay: Duration,
    in_flight: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    answer: impl Fn(&str, u64) -> (u16, String) + Clone + Send + Sync + 'static,
) -> impl tower::Service<Req, Response = Resp, Error = std::convert::Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let lookups = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tower::service_fn(move |request: Req| {
        let mut endpoint = endpoint.clone();
        let (answer, lookups, in_flight) = (answer.clone(), Arc::clone(&lookups), Arc::clone(&in_flight));
        async move {
            let path = request.uri().path().to_owned();
            if request.method() != http::Method::GET || !path.ends_with("/installation") {
                return endpoint.call(request).await;
            }
            let n = lookups.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
            in_flight.1.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            in_flight.0.fetch_sub(1, Ordering::SeqCst);
            let (status, body) = answer(&path, n);
            Ok(http::Response::builder().status(status).body(http_body_util::Full::from(body)).unwrap())
        }
    })
}

fn test_app() -> GitHubApp {
    GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap()
}

const NOT_FOUND: &str = r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest","status":"404"}"#;

#[tokio::test]
async fn an_organization_or_user_without_the_app_is_a_typed_error_and_is_remembered() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(github.client());
    for path in ["/orgs/nobody/members", "/orgs/nobody/repos", "/users/nobody"] {
        let error = client.clone().oneshot(get(&format!("{}{path}", github.api_base()))).await.unwrap_err();
        let error = error.downcast::<tower_github_app::Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::NotInstalled, "{path}: {error}");
    }
    let error = pool.token(InstallationFor::Account("nobody".into()), None).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotInstalled);
    // `/orgs/nobody/installation` once, `/users/nobody/installation` once: an organization's 404 does not hide
    // the user route (the login may be a user's); each is remembered.
    assert_eq!(github.lookup_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_zero_not_installed_ttl_looks_up_every_time_and_still_answers() {
    let counts = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::from_millis(10), Arc::clone(&counts), |_, _| {
        (404, NOT_FOUND.to_owned())
    });
    let pool = InstallationPool::builder(test_app()).not_installed_ttl(Duration::ZERO).build(client).unwrap();
    for _ in 0..3 {
        let error = pool.token(InstallationFor::Repository("o".into(), "r".into()), None).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotInstalled);
    }
    assert_eq!(pool.stats().lookups, 3);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_answered_before_a_forget_is_not_kept_after_it() {
    let counts = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::from_millis(300), Arc::clone(&counts), |_, n| {
        if n == 0 {
            (200, r#"{"id":5,"repository_selection":"all","account":{"login":"o"}}"#.to_owned())
        } else {
            (404, NOT_FOUND.to_owned())
        }
    });
    let pool = InstallationPool::builder(test_app()).build(client).unwrap();
    let early = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.token(InstallationFor::Repository("o".into(), "r".into()), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The `installation` webhook (deleted) arrives while the lookup is under way.
    pool.forget_account("o");
    assert_eq!(early.await.unwrap().unwrap().installation_id(), 5, "the request that asked before gets its answer");
    let later = pool.token(InstallationFor::Repository("o".into(), "r".into()), None).await.unwrap_err();
    assert_eq!(later.kind(), ErrorKind::NotInstalled);
    assert_eq!(pool.stats().lookups, 2);
}

#[tokio::test(start_paused = true)]
async fn repositories_of_a_known_account_are_looked_up_side_by_side() {
    let counts: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)> = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::from_millis(200), Arc::clone(&counts), |_, _| {
        (200, r#"{"id":5,"repository_selection":"selected","account":{"login":"o"}}"#.to_owned())
    });
    let pool = InstallationPool::builder(test_app()).build(client).unwrap();
    // The account's first answer: one lookup, however many repositories ask at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let pool = pool.clone();
        tasks.spawn(async move { pool.token(InstallationFor::Repository("o".into(), format!("r{i}")), None).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap().installation_id(), 5);
    }
    // It covers selected repositories: each needs its own answer (GitHub answers 404 for the others), and
    // they no longer wait for each other.
    assert_eq!(pool.stats().lookups, 10);
    assert!(counts.1.load(Ordering::SeqCst) >= 9, "lookups at once: {}", counts.1.load(Ordering::SeqCst));
}

#[tokio::test]
async fn revoke_all_reaches_tokens_of_forgotten_installations_and_mints_under_way() {
    let github = FakeGitHub::start().await;
    let pool = pool(&github).build(github.client()).unwrap();
    let forgotten = pool.token(InstallationFor::Id(FakeGitHub::INSTALLATION_ID), None).await.unwrap();
    // `installation` suspend: the tokens leave the pool but still work until revoked.
    pool.forget_installation(FakeGitHub::INSTALLATION_ID);
    github.fail_mints(tower_github_app::testing::MintFault::Delay(Duration::from_millis(300)), 1);
    let under_way = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.token(InstallationFor::Id(FakeGitHub::INSTALLATION_ID), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = pool.revoke_all().await;
    let minted_meanwhile = under_way.await.unwrap().unwrap();
    let second = pool.revoke_all().await;
    // One call reaches both: it waits for the mint under way.
    assert_eq!((first.revoked, second.revoked), (2, 0), "{first:?} {second:?}");
    for token in [forgotten, minted_meanwhile] {
        let mut request = get(&format!("{}/repos/octo-org/octo-repo", github.api_base()));
        request.headers_mut().insert(http::header::AUTHORIZATION, token.authorization());
        assert_eq!(github.client().oneshot(request).await.unwrap().status(), 401);
    }
}

#[tokio::test]
async fn a_path_that_names_an_account_unreadably_is_refused_not_given_the_default() {
    let github = FakeGitHub::start().await;
    let pool = pool_default(&github);
    let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool)).service(github.client());
    for path in ["/repos//octo-org/octo-repo", "/repos/octo-org//octo-repo", "//repos/octo-org/octo-repo", "/orgs/"] {
        let error = client.ready().await.unwrap().call(get(&format!("{}{path}", github.api_base()))).await;
        let error = error.unwrap_err().downcast::<tower_github_app::Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest, "{path}");
    }
    assert!(github.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_renamed_repository_says_so() {
    let counts = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::ZERO, Arc::clone(&counts), |_, _| {
        (301, r#"{"message":"Moved Permanently","url":"https://api.github.com/repositories/9/installation"}"#.into())
    });
    let pool = InstallationPool::builder(test_app()).build(client).unwrap();
    let error = pool.token(InstallationFor::Repository("o".into(), "old".into()), None).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidRequest);
    assert!(error.to_string().contains("renamed or transferred"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn failing_lookups_fail_every_waiter_with_one_request_and_odd_ttls_are_safe() {
    let counts: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)> = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::from_secs(1), Arc::clone(&counts), |_, _| {
        (502, r#"{"message":"Server Error"}"#.to_owned())
    });
    let pool = InstallationPool::builder(test_app()).not_installed_ttl(Duration::MAX).build(client).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let pool = pool.clone();
        tasks.spawn(async move { pool.token(InstallationFor::Account("o".into()), None).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap_err().kind(), ErrorKind::ServerError);
    }
    assert_eq!(pool.stats().lookups, 1, "one lookup answered every waiter");

    // A "forever" negative answer neither panics nor forgets.
    let client =
        scripted(TokenEndpoint::default(), Duration::ZERO, Arc::clone(&counts), |_, _| (404, NOT_FOUND.to_owned()));
    let pool = InstallationPool::builder(test_app()).not_installed_ttl(Duration::MAX).build(client).unwrap();
    for _ in 0..2 {
        let error = pool.token(InstallationFor::Repository("o".into(), "r".into()), None).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotInstalled);
    }
    assert_eq!(pool.stats().lookups, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_error_about_one_repository_is_not_given_to_another() {
    let counts = Arc::new(Default::default());
    let client = scripted(TokenEndpoint::default(), Duration::from_millis(200), Arc::clone(&counts), |path, _| {
        if path.contains("/old/") {
            (301, r#"{"message":"Moved Permanently"}"#.to_owned())
        } else {
            (200, r#"{"id":5,"repository_selection":"selected","account":{"login":"o"}}"#.to_owned())
        }
    });
    let pool = InstallationPool::builder(test_app()).build(client).unwrap();
    let old = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.token(InstallationFor::Repository("o".into(), "old".into()), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let new = pool.token(InstallationFor::Repository("o".into(), "new".into()), None).await;
    assert_eq!(new.unwrap().installation_id(), 5);
    assert_eq!(old.await.unwrap().unwrap_err().kind(), ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn lookups_correct_the_clock_like_mints_do() {
    // The machine's clock ten minutes off GitHub's, either way: the first lookup's JWT is refused, the App learns
    // GitHub's clock from `Date`, and the same lookup goes through once more; later ones are right at once.
    for offset in [600, -600] {
        let github = FakeGitHub::builder().clock_offset(offset).start().await;
        let pool = pool(&github).build(github.client()).unwrap();
        let by_account = pool.token(InstallationFor::Account("octo-org".into()), None).await.unwrap();
        assert_eq!(by_account.installation_id(), FakeGitHub::INSTALLATION_ID);
        assert!((pool.app().clock_offset() - offset).abs() <= 2, "{}", pool.app().clock_offset());
        pool.token(InstallationFor::Repository("octo-org".into(), "octo-lib".into()), None).await.unwrap();
        let refused = github.requests().iter().filter(|r| r.status == 401).count();
        assert_eq!(refused, 1, "one refused JWT, the first lookup's");
        assert_eq!((pool.stats().lookups, pool.stats().failed_mints), (2, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_refresh_during_a_refreshed_tokens_grace_does_not_evict_the_entry() {
    // Each installation's first token is replaced early (GitHub revoked it), so two refreshes are queued for its
    // entry: the replaced token's (stale) and the new token's. When the new token's refresh comes first, the
    // stale one may fire while the refreshed token waits out its replication grace (5 minutes here): the entry
    // was just refreshed and is in use, and must be neither refreshed again nor evicted as idle. About half of
    // the ten installations meet that order in any run.
    let github = many(FakeGitHub::builder(), 10, 1).start().await;
    let pool = pool(&github).replication_grace(Duration::from_secs(300)).build(github.client()).unwrap();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(AppAuthLayer::new(pool.clone()))
        .service(github.client());
    let urls: Vec<String> = (0..10).map(|n| format!("{}/repos/acct-{n}/repo-0", github.api_base())).collect();
    let round = || {
        futures_util::future::join_all(urls.iter().map(|url| {
            let request = service.clone().oneshot(get(url));
            async move { request.await.map(|r| r.status()) }
        }))
    };
    assert!(round().await.iter().all(|s| *s.as_ref().unwrap() == 200));
    tokio::time::sleep(Duration::from_secs(1)).await;
    github.revoke_all_tokens();
    assert!(round().await.iter().all(|s| *s.as_ref().unwrap() == 200));
    assert_eq!(github.mint_count(), 20);
    // 70 minutes of requests, one a minute per installation: every entry refreshed once, none evicted.
    for _ in 0..70 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(round().await.iter().all(|s| *s.as_ref().unwrap() == 200));
    }
    let stats = pool.stats();
    assert_eq!((stats.idle_evictions, stats.refreshes, github.mint_count()), (0, 10, 30), "{stats:?}");
}
