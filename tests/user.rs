//! User-to-server tokens against FakeGitHub: rotation shared by sources and processes through one store, a store
//! that fails, refusals that need the user again, the device and web flows, tokens that do not expire.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::get;
use http::{Request, Response};
use http_body_util::Full;
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::store::{FileStore, MemoryStore, StoreFuture, UserTokenStore, Versioned};
use tower_github_app::testing::{Credential, FakeGitHub, TokenState};
use tower_github_app::user::{UserToken, UserTokens};
use tower_github_app::{Error, ErrorKind, RetryOn401Policy, UserAuthLayer};

type BoxError = tower::BoxError;

fn temp_dir(name: &str) -> std::path::PathBuf {
    // Not created here: FileStore::open creates it private (0700), whatever the umask.
    std::env::temp_dir().join(format!("tga-user-{name}-{}-{}", std::process::id(), fastrand_u64()))
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The stack a user-token client uses: `Retry<RetryOn401Policy>` over `UserAuth` over `client`.
fn stack<C>(
    user: UserToken,
    client: C,
) -> impl Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>, Error = BoxError, Future: Send> + Clone
where
    C: Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>> + Clone + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::builder().no_budget().build()))
        .layer(UserAuthLayer::new(user))
        .service(client)
}

/// Signs `login` in through the web flow and returns the tokens.
async fn web_flow(github: &FakeGitHub, login: &str) -> UserTokens {
    let code = github.authorization_code(login);
    github.oauth_app().exchange_code(github.client(), &code, None).await.unwrap()
}

/// The refresh token the store holds for `key`.
async fn stored_refresh_token(store: &impl UserTokenStore, key: &str) -> String {
    let record = store.load(key).await.unwrap().expect("a record");
    let value: serde_json::Value = serde_json::from_slice(&record.record).unwrap();
    value["refresh_token"].as_str().expect("a refresh token").to_owned()
}

/// Requests the fake answered carrying a user token that was no longer live.
fn dead_token_requests(github: &FakeGitHub) -> usize {
    github
        .requests()
        .iter()
        .filter(|r| matches!(&r.credential, Credential::UserToken { state, .. } if *state != TokenState::Valid))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_and_eight_tasks_share_a_file_store_without_double_spends() {
    const ROTATIONS: u64 = 500;
    let github = FakeGitHub::start().await;
    let dir = temp_dir("two-sources");
    let source = |name: &str| {
        UserToken::builder(github.oauth_app(), FileStore::open(&dir).unwrap(), "mona")
            .api_base(&github.api_base())
            .refresh_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .user_agent(name)
            .build(github.client())
            .unwrap()
    };
    let (a, b) = (source("a"), source("b"));
    a.sign_in(web_flow(&github, "mona").await).await.unwrap();

    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let user = if task % 2 == 0 { a.clone() } else { b.clone() };
        let client = stack(user.clone(), github.client());
        let (github, requests, failures) = (github.clone(), Arc::clone(&requests), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                if github.oauth_counts().refreshes >= ROTATIONS {
                    break;
                }
                // Force a rotation (or an adoption of the other source's), then use the token.
                if let Ok(token) = user.token().await {
                    user.invalidate(&token);
                }
                let response = client.clone().oneshot(get(&format!("{}/user", github.api_base()))).await;
                requests.fetch_add(1, Ordering::Relaxed);
                match response {
                    Ok(response) if response.status() == 200 => {
                        common::read_whole(response).await.unwrap();
                    }
                    other => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request failed: {:?}", other.map(|r| r.status()));
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counts = github.oauth_counts();
    let store = FileStore::open(&dir).unwrap();
    let live = stored_refresh_token(&store, "mona").await;
    eprintln!(
        "rotations {}, double spends {}, requests {}, failed {}, first attempts with a dead token {}, a: {:?}, b: {:?}",
        counts.refreshes,
        counts.double_spends,
        requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        dead_token_requests(&github),
        a.stats(),
        b.stats()
    );
    assert!(counts.refreshes >= ROTATIONS, "{counts:?}");
    assert_eq!(counts.double_spends, 0);
    assert_eq!(counts.refused_refreshes, 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "every request was answered 200");
    // Not lost: the stored refresh token is the one live refresh token of the user.
    assert!(github.refresh_token_is_live(&live));
    assert_eq!(github.live_refresh_tokens("mona"), 1);
    // Both sources rotated, and the pairs one rotated were adopted by the other.
    assert!(a.stats().refreshes > 0 && b.stats().refreshes > 0);
    assert!(a.stats().adopted + b.stats().adopted > 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The example binary `user_rotation`, built by `cargo test` beside this test's binary.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = debug.join("examples").join(format!("user_rotation{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the whole suite (`cargo test --all-features` builds the examples), or \
         `cargo build --example user_rotation --features test-util` first",
        binary.display()
    );
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_file_store_without_double_spends() {
    let github = FakeGitHub::start().await;
    let dir = temp_dir("two-processes");
    let user = UserToken::builder(github.oauth_app(), FileStore::open(&dir).unwrap(), "mona")
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    user.sign_in(web_flow(&github, "mona").await).await.unwrap();
    drop(user);

    let binary = example_binary();
    let spawn = || {
        tokio::process::Command::new(&binary)
            .env("TGA_API_BASE", github.api_base())
            .env("TGA_WEB_BASE", github.web_base())
            .env("TGA_STORE_DIR", &dir)
            .env("TGA_ITERATIONS", "40")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let bound = Duration::from_secs(120);
    let (first, second) = tokio::join!(
        tokio::time::timeout(bound, first.wait_with_output()),
        tokio::time::timeout(bound, second.wait_with_output())
    );
    let mut summaries = Vec::new();
    for output in [first, second] {
        let output = output.expect("the child finished in time").unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed: {stdout}\n{stderr}");
        common::assert_no_secrets(&stdout, &[]);
        common::assert_no_secrets(&stderr, &[]);
        let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
        summaries.push(summary);
    }
    let counts = github.oauth_counts();
    eprintln!("processes: {summaries:?}; fake: {counts:?}");
    for summary in &summaries {
        assert_eq!(summary["failed"], 0, "{summary}");
        assert_eq!(summary["requests"], 4 * 40, "{summary}");
        assert!(summary["refreshes"].as_u64().unwrap() > 0, "both processes rotated: {summary}");
    }
    assert_eq!(counts.double_spends, 0);
    assert_eq!(counts.refused_refreshes, 0);
    assert!(counts.refreshes >= 100, "{counts:?}");
    let live = stored_refresh_token(&FileStore::open(&dir).unwrap(), "mona").await;
    assert!(github.refresh_token_is_live(&live));
    assert_eq!(github.live_refresh_tokens("mona"), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A store whose writes fail while `failing` is above zero, after letting `pass` writes through.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: MemoryStore,
    pass: Arc<AtomicUsize>,
    failing: Arc<AtomicUsize>,
}

impl UserTokenStore for FlakyStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.inner.load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        let pass = self.pass.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if !pass && self.failing.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            return Box::pin(async { Err("database is down".into()) });
        }
        self.inner.compare_and_swap(key, expected, new)
    }

    fn changed<'a>(&'a self, key: &'a str, version: Option<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.inner.changed(key, version)
    }
}

#[tokio::test]
async fn a_store_that_fails_after_github_rotated_loses_no_pair_and_says_so() {
    let github = FakeGitHub::start().await;
    let store = FlakyStore::default();
    let reported = Arc::new(Mutex::new(Vec::<Error>::new()));
    let user = UserToken::builder(github.oauth_app(), store.clone(), "mona")
        .api_base(&github.api_base())
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .on_store_error({
            let reported = Arc::clone(&reported);
            move |error| reported.lock().unwrap().push(error.clone())
        })
        .build(github.client())
        .unwrap();
    user.sign_in(web_flow(&github, "mona").await).await.unwrap();
    let first = user.token().await.unwrap();

    // The claim goes through; the next three writes (saving what GitHub rotated) fail.
    store.pass.store(1, Ordering::SeqCst);
    store.failing.store(3, Ordering::SeqCst);
    user.invalidate(&first);
    let mut store_errors = 0;
    let second = loop {
        match user.token().await {
            Ok(token) => break token,
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::Store, "{error}");
                common::assert_no_secrets(&format!("{error} {error:?}"), &[first.expose_secret()]);
                store_errors += 1;
                assert!(store_errors < 1_000, "the save never recovered");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let counts = github.oauth_counts();
    eprintln!(
        "store errors seen by requests: {store_errors}, reported: {}, {counts:?}, {:?}",
        reported.lock().unwrap().len(),
        user.stats()
    );
    assert!(store_errors >= 1, "requests saw the typed error while the pair was unsaved");
    assert_eq!(reported.lock().unwrap().len(), 3, "each failed write reported");
    assert!(reported.lock().unwrap().iter().all(|e| e.kind() == ErrorKind::Store));
    assert_eq!(counts.refreshes, 1, "GitHub rotated once; the saves were retried, not the rotation");
    assert_eq!(counts.double_spends, 0);
    assert_ne!(second.serial(), first.serial());
    assert!(!user.stats().unsaved);
    let live = stored_refresh_token(&store, "mona").await;
    assert!(github.refresh_token_is_live(&live), "the stored pair is the live one");
    assert_eq!(github.live_refresh_tokens("mona"), 1);
    let client = stack(user.clone(), github.client());
    assert_eq!(client.oneshot(get(&format!("{}/user", github.api_base()))).await.unwrap().status(), 200);
}

use std::sync::Mutex;

fn kind_of(error: &BoxError) -> Option<ErrorKind> {
    error.downcast_ref::<Error>().map(Error::kind)
}

#[tokio::test]
async fn a_refused_refresh_token_fails_every_request_fast_and_calls_back_once() {
    for status in [200, 400, 401] {
        let github = FakeGitHub::start().await;
        github.set_oauth_error_status(status);
        let calls = Arc::new(AtomicU64::new(0));
        let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
            .api_base(&github.api_base())
            .refresh_backoff(Duration::from_millis(5), Duration::from_millis(10))
            .on_reauthorization_required({
                let calls = Arc::clone(&calls);
                move |error| {
                    assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired);
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build(github.client())
            .unwrap();
        user.sign_in(web_flow(&github, "mona").await).await.unwrap();
        let client = stack(user.clone(), github.client());
        let url = format!("{}/user", github.api_base());
        assert_eq!(client.clone().oneshot(get(&url)).await.unwrap().status(), 200);

        // The user revokes the App's authorization: the token dies, the refresh token is refused.
        github.revoke_user_authorization("mona");
        let first = client.clone().oneshot(get(&url)).await.expect_err("the refresh was refused");
        assert_eq!(kind_of(&first), Some(ErrorKind::ReauthorizationRequired), "{first}");
        // Every later request fails fast with the same kind, while the refresher keeps looking at the store.
        for _ in 0..50 {
            let error = client.clone().oneshot(get(&url)).await.expect_err("still refused");
            assert_eq!(kind_of(&error), Some(ErrorKind::ReauthorizationRequired), "{error}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the callback fired once (error status {status})");
        let counts = github.oauth_counts();
        assert_eq!(counts.refused_refreshes, 1, "the refused refresh token was never presented again");
        assert_eq!(counts.double_spends, 0);
        assert_eq!(user.stats().reauthorizations_required, 1);

        // Signing in again heals it.
        user.sign_in(web_flow(&github, "mona").await).await.unwrap();
        assert_eq!(client.clone().oneshot(get(&url)).await.unwrap().status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn wrong_client_credentials_are_a_configuration_error_and_leave_the_pair_alone() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let tokens = web_flow(&github, "mona").await;
    let wrong = tower_github_app::user::OAuthApp::new(FakeGitHub::CLIENT_ID, "not-the-secret")
        .with_web_base(&github.web_base())
        .unwrap();
    let user =
        UserToken::builder(wrong, store.clone(), "mona").api_base(&github.api_base()).build(github.client()).unwrap();
    user.sign_in(tokens.clone()).await.unwrap();
    let token = user.token().await.unwrap();
    user.invalidate(&token);
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    assert!(error.to_string().contains("client secret"), "{error}");
    common::assert_no_secrets(&format!("{error} {error:?} {user:?}"), &["not-the-secret"]);
    // The refresh token was not spent: it is still the stored, live one.
    assert_eq!(stored_refresh_token(&store, "mona").await, tokens.expose_refresh_token().unwrap());
    assert!(github.refresh_token_is_live(tokens.expose_refresh_token().unwrap()));
}

#[tokio::test]
async fn the_web_flow_code_works_once() {
    let github = FakeGitHub::start().await;
    let oauth = github.oauth_app();
    let code = github.authorization_code("mona");
    let tokens = oauth.exchange_code(github.client(), &code, Some("http://127.0.0.1/callback")).await.unwrap();
    assert!(tokens.expose_access_token().starts_with("ghu_"));
    assert!(tokens.expose_refresh_token().unwrap().starts_with("ghr_"));
    assert!(tokens.expires_at().is_some() && tokens.refresh_token_expires_at().is_some());
    let again = oauth.exchange_code(github.client(), &code, None).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AuthorizationFailed, "{again}");
    // The OAuth request went to the web origin's root, with no Authorization header.
    assert!(
        github.requests().iter().all(|r| r.path == "/login/oauth/access_token" && r.credential == Credential::None)
    );
    assert!(
        oauth.authorize_url("st4te").starts_with(&format!("{}/login/oauth/authorize?client_id=", github.web_base()))
    );
}

#[tokio::test(start_paused = true)]
async fn the_device_flow_honours_slow_down() {
    let github = FakeGitHub::start().await;
    let oauth = github.oauth_app();
    let client = github.in_process();
    let started = tokio::time::Instant::now();
    let code = oauth.start_device_flow(client.clone()).await.unwrap();
    assert_eq!(code.interval(), Duration::from_secs(5));
    assert!(code.verification_uri().ends_with("/login/device"));
    // The user approves at once, but GitHub asks the client to slow down twice.
    github.force_slow_downs(2);
    assert!(github.approve_device(code.user_code(), "mona"));
    let tokens = oauth.poll_device(client.clone(), &code).await.unwrap();
    assert!(tokens.expose_access_token().starts_with("ghu_"));
    let counts = github.oauth_counts();
    assert_eq!((counts.device_polls, counts.slow_downs, counts.early_polls), (3, 2, 0), "{counts:?}");
    // 5 s, then 10 s, then 15 s: each slow_down added 5 s.
    assert!(started.elapsed() >= Duration::from_secs(30), "{:?}", started.elapsed());

    // Pending polls keep the interval; a denial ends the flow.
    let code = oauth.start_device_flow(client.clone()).await.unwrap();
    let polling = tokio::spawn({
        let (oauth, client, code) = (oauth.clone(), client.clone(), code.clone());
        async move { oauth.poll_device(client, &code).await }
    });
    tokio::time::sleep(Duration::from_secs(22)).await;
    github.deny_device(code.user_code());
    let denied = polling.await.unwrap().unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::AuthorizationFailed, "{denied}");
    assert_eq!(github.oauth_counts().early_polls, 0);

    // A code nobody enters expires.
    let code = oauth.start_device_flow(client.clone()).await.unwrap();
    let expired = oauth.poll_device(client, &code).await.unwrap_err();
    assert_eq!(expired.kind(), ErrorKind::AuthorizationFailed, "{expired}");
    assert!(expired.to_string().contains("expired"), "{expired}");
    assert_eq!(github.oauth_counts().early_polls, 0);
}

#[tokio::test]
async fn tokens_without_expiry_are_kept_and_never_refreshed() {
    let github = FakeGitHub::start().await;
    github.set_user_token_lifetime(None);
    let tokens = web_flow(&github, "mona").await;
    assert_eq!(tokens.expose_refresh_token(), None);
    assert_eq!(tokens.expires_at(), None);
    let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    user.sign_in(tokens.clone()).await.unwrap();
    let client = stack(user.clone(), github.client());
    for _ in 0..3 {
        let token = user.token().await.unwrap();
        assert_eq!(token.expose_secret(), tokens.expose_access_token());
        user.invalidate(&token);
        assert_eq!(client.clone().oneshot(get(&format!("{}/user", github.api_base()))).await.unwrap().status(), 200);
    }
    assert_eq!(github.oauth_counts().refreshes, 0);
    assert_eq!(user.stats().refreshes, 0);
}

#[tokio::test(start_paused = true)]
async fn tokens_are_rotated_in_the_background_ahead_of_expiry() {
    let github = FakeGitHub::start().await;
    let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
        .api_base(&github.api_base())
        .build(github.in_process())
        .unwrap();
    let code = github.authorization_code("mona");
    user.sign_in(github.oauth_app().exchange_code(github.in_process(), &code, None).await.unwrap()).await.unwrap();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(UserAuthLayer::new(user.clone()))
        .service(github.in_process());
    // 24 hours of 8-hour tokens, a request every 10 minutes.
    for _ in 0..(24 * 6) {
        let response = client.clone().oneshot(get(&format!("{}/user", github.api_base()))).await.unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let stats = user.stats();
    let counts = github.oauth_counts();
    eprintln!("{stats:?} {counts:?}");
    // One rotation per lifetime (about 7.5 h), none waited for after the sign-in, no request with a dead token.
    assert!((3..=4).contains(&counts.refreshes), "{counts:?}");
    assert_eq!(stats.refreshes, counts.refreshes);
    assert_eq!(dead_token_requests(&github), 0);
    assert_eq!(counts.double_spends, 0);
}

#[tokio::test]
async fn requests_of_a_user_source_never_carry_the_app_jwt_or_leave_the_api() {
    let github = FakeGitHub::start().await;
    let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    user.sign_in(web_flow(&github, "mona").await).await.unwrap();
    let client = UserAuthLayer::new(user.clone());
    let mut service = tower::Layer::layer(&client, github.client());
    // An App route: the user's token, not the App JWT (GitHub refuses it; the crate does not sign for users).
    let response = service.ready().await.unwrap().call(get(&format!("{}/app", github.api_base()))).await.unwrap();
    assert_eq!(response.status(), 401);
    let last = github.requests().last().cloned().unwrap();
    assert!(matches!(last.credential, Credential::UserToken { .. }), "{last:?}");
    // Another origin: no token at all.
    let response = service.ready().await.unwrap().call(get(&format!("{}/user", github.uploads_base()))).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(github.requests().last().unwrap().credential, Credential::None);
    let debug = format!("{user:?} {:?}", user.token().await.unwrap());
    common::assert_no_secrets(&debug, &[FakeGitHub::CLIENT_SECRET]);
}

#[tokio::test]
async fn first_runs_sign_outs_and_junk_are_told_apart_without_the_callback() {
    let github = FakeGitHub::start().await;
    let calls = Arc::new(AtomicU64::new(0));
    let store = MemoryStore::new();
    let user = UserToken::builder(github.oauth_app(), store.clone(), "mona")
        .api_base(&github.api_base())
        .on_reauthorization_required({
            let calls = Arc::clone(&calls);
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build(github.client())
        .unwrap();
    // First run: nothing stored, nothing lost: a typed error, no callback.
    assert!(!user.is_signed_in().await.unwrap());
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired, "{error}");
    assert!(error.to_string().contains("sign the user in"), "{error}");
    // What cannot be a user's pair is refused before it reaches the store.
    for junk in [
        UserTokens::new("", None, None, None),
        UserTokens::new("ghs_installationtoken", None, None, None),
        UserTokens::new("ghu_accesstoken", Some(String::new()), None, None),
        UserTokens::new("ghu_accesstoken", Some("ghu_swapped".into()), None, None),
        UserTokens::new("ghu_line\nbreak", None, None, None),
    ] {
        let refused = user.sign_in(junk).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::InvalidConfig, "{refused}");
    }
    assert!(store.load("mona").await.unwrap().is_none());

    user.sign_in(web_flow(&github, "mona").await).await.unwrap();
    assert!(user.is_signed_in().await.unwrap());
    let client = stack(user.clone(), github.client());
    let url = format!("{}/user", github.api_base());
    assert_eq!(client.clone().oneshot(get(&url)).await.unwrap().status(), 200);

    user.sign_out().await.unwrap();
    assert!(!user.is_signed_in().await.unwrap());
    let error = client.clone().oneshot(get(&url)).await.unwrap_err();
    assert_eq!(kind_of(&error), Some(ErrorKind::ReauthorizationRequired), "{error}");
    assert!(error.to_string().contains("signed out"), "{error}");
    // Another holder of the store finds it signed out too, at its first read.
    let other = UserToken::builder(github.oauth_app(), store.clone(), "mona")
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    assert_eq!(other.token().await.unwrap_err().kind(), ErrorKind::ReauthorizationRequired);

    user.sign_in(web_flow(&github, "mona").await).await.unwrap();
    assert_eq!(client.clone().oneshot(get(&url)).await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "neither a first run nor a sign-out calls back");
    assert_eq!(github.oauth_counts().double_spends, 0);
}

#[tokio::test(start_paused = true)]
async fn token_valid_for_is_not_ended_by_a_rotation_within_its_time() {
    let github = FakeGitHub::start().await;
    github.set_user_token_lifetime(Some(Duration::from_secs(3600)));
    let user = UserToken::builder(github.oauth_app(), MemoryStore::new(), "mona")
        .api_base(&github.api_base())
        .build(github.in_process())
        .unwrap();
    let code = github.authorization_code("mona");
    user.sign_in(github.oauth_app().exchange_code(github.in_process(), &code, None).await.unwrap()).await.unwrap();
    // Refreshes run 20 to 24 minutes before expiry (a third of the hour, jittered): at minute 30 the current token
    // has 6 to 10 minutes before it is replaced, which would end it.
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    let token = user.token_valid_for(Duration::from_secs(15 * 60)).await.unwrap();
    assert!(token.remaining() >= Duration::from_secs(15 * 60), "{token:?}");
    assert_eq!(github.oauth_counts().refreshes, 1, "rotated first");
    tokio::time::sleep(Duration::from_secs(15 * 60)).await;
    let mut request = get(&format!("{}/user", github.api_base()));
    request.headers_mut().insert(http::header::AUTHORIZATION, token.authorization());
    let response = github.in_process().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "still live after the 15 minutes asked for");
    let too_long = user.token_valid_for(Duration::from_secs(3600)).await.unwrap_err();
    assert_eq!(too_long.kind(), ErrorKind::InvalidRequest, "{too_long}");
    assert!(!too_long.to_string().contains("installation"), "{too_long}");
}
