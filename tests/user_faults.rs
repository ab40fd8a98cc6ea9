//! User-token rotation when things go wrong between spending a refresh token and saving its successor: handles
//! dropped mid-rotation, slow stores, sign-outs racing rotations, answers GitHub garbled after it rotated, stores
//! that never swap, records at the edge of what they can hold.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::get;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_github_app::store::{MemoryStore, StoreFuture, UserTokenStore, Versioned};
use tower_github_app::testing::{FakeGitHub, InProcess};
use tower_github_app::user::{UserToken, UserTokenBuilder, UserTokens};
use tower_github_app::{ErrorKind, UserAuthLayer};

type BoxError = tower::BoxError;
type Rewrite = Arc<Mutex<Option<Box<dyn Fn(&mut serde_json::Value, &mut StatusCode) + Send>>>>;

/// The fake GitHub in process, with its answers to refresh grants delayed or rewritten on the way back (what a
/// proxy, a slow network or a GitHub bug does after GitHub rotated).
#[derive(Clone)]
struct Tamper {
    inner: InProcess,
    delay: Arc<Mutex<Duration>>,
    rewrite: Rewrite,
}

impl Tamper {
    fn new(github: &FakeGitHub) -> Self {
        Tamper { inner: github.in_process(), delay: Default::default(), rewrite: Default::default() }
    }

    fn rewrite(&self, f: impl Fn(&mut serde_json::Value, &mut StatusCode) + Send + 'static) {
        *self.rewrite.lock().unwrap() = Some(Box::new(f));
    }
}

impl Service<Request<Full<Bytes>>> for Tamper {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let refresh = parts.uri.path() == "/login/oauth/access_token"
                && std::str::from_utf8(&body).unwrap_or_default().contains("grant_type=refresh_token");
            let response = this.inner.clone().oneshot(Request::from_parts(parts, Full::new(body))).await?;
            if !refresh {
                return Ok(response);
            }
            let delay = *this.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let (mut parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            let rewrite = this.rewrite.lock().unwrap();
            let Some(rewrite) = rewrite.as_ref() else {
                return Ok(Response::from_parts(parts, Full::new(body)));
            };
            let mut value: serde_json::Value = serde_json::from_slice(&body)?;
            rewrite(&mut value, &mut parts.status);
            Ok(Response::from_parts(parts, Full::new(Bytes::from(value.to_string()))))
        })
    }
}

fn builder(github: &FakeGitHub, store: impl UserTokenStore) -> UserTokenBuilder {
    UserToken::builder(github.oauth_app(), store, "mona")
        .api_base(&github.api_base())
        .refresh_backoff(Duration::from_millis(20), Duration::from_millis(100))
}

async fn signed_in_tokens(github: &FakeGitHub) -> UserTokens {
    let code = github.authorization_code("mona");
    github.oauth_app().exchange_code(github.in_process(), &code, None).await.unwrap()
}

async fn stored_refresh_token(store: &impl UserTokenStore) -> Option<String> {
    let record = store.load("mona").await.unwrap()?;
    let value: serde_json::Value = serde_json::from_slice(&record.record).ok()?;
    value["refresh_token"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_saves_its_pair_even_when_every_handle_is_dropped_midway() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let client = Tamper::new(&github);
    *client.delay.lock().unwrap() = Duration::from_millis(300);
    let user = builder(&github, store.clone())
        .mint_timeout(Duration::from_secs(2))
        .lease(Duration::from_secs(5))
        .build(client.clone())
        .unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    let rotating = tokio::spawn({
        let user = user.clone();
        async move {
            user.invalidate(&first);
            user.token().await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // GitHub has the refresh request; its answer is on the way. Every handle goes away.
    rotating.abort();
    let _ = rotating.await;
    drop(user);
    tokio::time::sleep(Duration::from_millis(800)).await;

    let counts = github.oauth_counts();
    assert_eq!(counts.refreshes, 1);
    let saved = stored_refresh_token(&store).await.expect("a stored pair");
    assert!(github.refresh_token_is_live(&saved), "the rotated pair was saved, not lost");
    let again = builder(&github, store.clone()).build(client).unwrap();
    again.token().await.unwrap();
    assert_eq!(github.oauth_counts().double_spends, 0);
    assert_eq!(again.stats().refreshes, 0, "adopted, not refreshed");
}

/// A store that answers 300 ms late after committing a claim (a lease), when `slow` is set.
#[derive(Clone, Default)]
struct SlowClaims {
    inner: MemoryStore,
    slow: Arc<AtomicBool>,
}

impl UserTokenStore for SlowClaims {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.inner.load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let swapped = self.inner.compare_and_swap(key, expected, new).await?;
            let claim = String::from_utf8_lossy(&new.record).contains("\"lease\"");
            if swapped && claim && self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(swapped)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_store_granted_too_late_is_given_back_unspent() {
    let github = FakeGitHub::start().await;
    let store = SlowClaims::default();
    let user = builder(&github, store.clone())
        .mint_timeout(Duration::from_millis(500))
        .lease(Duration::from_millis(1_200))
        .build(github.in_process())
        .unwrap();
    let tokens = signed_in_tokens(&github).await;
    user.sign_in(tokens.clone()).await.unwrap();
    let token = user.token().await.unwrap();
    store.slow.store(true, Ordering::SeqCst);
    user.invalidate(&token);
    // The store grants the lease with 0.9 s of it left, less than a refresh and a save may take (2 x 0.5 s): not
    // spent.
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(error.to_string().contains("not spending"), "{error}");
    assert_eq!(github.oauth_counts().refreshes, 0, "nothing spent on a lease about to run out");
    assert!(github.refresh_token_is_live(tokens.expose_refresh_token().unwrap()));
    // The store answers in time again: one rotation.
    store.slow.store(false, Ordering::SeqCst);
    let mut rotated = None;
    for _ in 0..100 {
        if let Ok(token) = user.token().await {
            rotated = Some(token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rotated.is_some());
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends, counts.refused_refreshes), (1, 0, 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_during_another_holders_rotation_stands() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let slow = Tamper::new(&github);
    *slow.delay.lock().unwrap() = Duration::from_millis(300);
    let a = builder(&github, store.clone()).build(github.in_process()).unwrap();
    let b = builder(&github, store.clone()).build(slow).unwrap();
    a.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = b.token().await.unwrap();
    let rotating = tokio::spawn({
        let b = b.clone();
        async move {
            b.invalidate(&token);
            b.token().await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.sign_out().await.unwrap();
    let outcome = rotating.await.unwrap();
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::ReauthorizationRequired);
    assert!(!a.is_signed_in().await.unwrap(), "the rotation did not undo the sign-out");
    assert_eq!(b.token().await.unwrap_err().kind(), ErrorKind::ReauthorizationRequired);
    assert_eq!(github.oauth_counts().double_spends, 0);
}

#[tokio::test]
async fn tokens_are_kept_whatever_the_status_and_an_unusable_answer_is_never_presented_again() {
    let github = FakeGitHub::start().await;
    let client = Tamper::new(&github);
    let calls = Arc::new(AtomicU64::new(0));
    let store = MemoryStore::new();
    let user = builder(&github, store.clone())
        .on_reauthorization_required({
            let calls = Arc::clone(&calls);
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build(client.clone())
        .unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let api = tower::ServiceBuilder::new().layer(UserAuthLayer::new(user.clone())).service(github.in_process());
    let url = format!("{}/user", github.api_base());

    // Tokens in a 400: GitHub issued them (and spent the old refresh token): used.
    client.rewrite(|_, status| *status = StatusCode::BAD_REQUEST);
    let token = user.token().await.unwrap();
    user.invalidate(&token);
    assert_eq!(api.clone().oneshot(get(&url)).await.unwrap().status(), 200);
    assert_eq!(github.oauth_counts().refreshes, 1);

    // A refresh token GitHub would never send: the pair is unusable and the old refresh token spent. The user
    // must authorize again; the spent token is never presented again.
    client.rewrite(|value, _| {
        let garbled = format!("{}\u{7f}", value["refresh_token"].as_str().unwrap_or_default());
        value["refresh_token"] = serde_json::json!(garbled);
    });
    let token = user.token().await.unwrap();
    user.invalidate(&token);
    for _ in 0..5 {
        let error = user.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired, "{error}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends, counts.refused_refreshes), (2, 0, 0), "{counts:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!user.is_signed_in().await.unwrap());
}

#[tokio::test]
async fn a_token_that_expires_at_once_does_not_start_a_rotation_storm() {
    let github = FakeGitHub::start().await;
    let client = Tamper::new(&github);
    let user = builder(&github, MemoryStore::new()).build(client.clone()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = user.token().await.unwrap();
    client.rewrite(|value, _| value["expires_in"] = serde_json::json!(0));
    user.invalidate(&token);
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        let error = user.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MalformedResponse, "{error}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let counts = github.oauth_counts();
    // Backoff from 20 ms to 100 ms, jittered down to half: 10 to 25 rotations in a second, not thousands.
    assert!(counts.refreshes <= 30, "{counts:?}");
    assert_eq!(counts.double_spends, 0);
}

/// A store whose compare-and-swap never writes.
#[derive(Clone, Default)]
struct NeverSwaps(MemoryStore);

impl UserTokenStore for NeverSwaps {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.0.load(key)
    }

    fn compare_and_swap<'a>(&'a self, _: &'a str, _: Option<u64>, _: &'a Versioned) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }
}

#[tokio::test]
async fn a_store_that_never_swaps_gets_an_error_not_a_hang() {
    let github = FakeGitHub::start().await;
    let seeded = MemoryStore::new();
    let seeder = builder(&github, seeded.clone()).build(github.in_process()).unwrap();
    seeder.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = seeder.token().await.unwrap();
    let user = builder(&github, NeverSwaps(seeded)).build(github.in_process()).unwrap();
    let adopted = user.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), token.expose_secret());
    user.invalidate(&adopted);
    let error = tokio::time::timeout(Duration::from_secs(5), user.token()).await.expect("no hang").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    let error = tokio::time::timeout(Duration::from_secs(5), user.sign_in(signed_in_tokens(&github).await))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    assert_eq!(github.oauth_counts().refreshes, 0);
}

#[tokio::test]
async fn records_at_the_edges_are_errors_not_panics() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let seeder = builder(&github, store.clone()).build(github.in_process()).unwrap();
    seeder.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let record = store.load("mona").await.unwrap().unwrap().record;

    // The last version there is: usable as it is; a rotation cannot version its successor; a sign-in starts over.
    let edge = MemoryStore::new();
    assert!(
        edge.compare_and_swap("mona", None, &Versioned { version: u64::MAX, record: record.clone() }).await.unwrap()
    );
    let user = builder(&github, edge.clone()).build(github.in_process()).unwrap();
    let token = user.token().await.unwrap();
    user.invalidate(&token);
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    user.token().await.unwrap();

    // Times at the ends of the range, and a record that is not one.
    for odd in [
        br#"{"access_token":"ghu_x","refresh_token":"ghr_y","expires_at":-9223372036854775808,"issued_at":9223372036854775807}"#.to_vec(),
        br#"{"access_token":"ghu_x","refresh_token":"ghr_y","expires_at":9223372036854775807,"issued_at":-9223372036854775808,"lease":{"holder":"h","until":-9223372036854775808}}"#.to_vec(),
        b"not a record".to_vec(),
    ] {
        let store = MemoryStore::new();
        assert!(store.compare_and_swap("mona", None, &Versioned { version: 1, record: odd }).await.unwrap());
        let user = builder(&github, store).build(github.in_process()).unwrap();
        // Whatever it answers, it answers.
        let _ = tokio::time::timeout(Duration::from_secs(5), user.token()).await.expect("no hang");
    }
    assert_eq!(github.oauth_counts().double_spends, 0);
}

/// A store that, when armed, waits after committing a saved pair (a record with a refresh token and no lease)
/// before it answers, or panics instead of writing one.
#[derive(Clone, Default)]
struct SlowSaves {
    inner: MemoryStore,
    slow: Arc<AtomicBool>,
    panic_once: Arc<AtomicBool>,
}

impl UserTokenStore for SlowSaves {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.inner.load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let text = String::from_utf8_lossy(&new.record).into_owned();
            let pair =
                text.contains("\"refresh_token\"") && !text.contains("\"lease\"") && !text.contains("reauthorize");
            if pair && self.panic_once.swap(false, Ordering::SeqCst) {
                panic!("the database driver panicked");
            }
            let swapped = self.inner.compare_and_swap(key, expected, new).await?;
            if swapped && pair && self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok(swapped)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_while_a_rotation_saves_is_not_undone_by_it() {
    let github = FakeGitHub::start().await;
    let store = SlowSaves::default();
    let user = builder(&github, store.clone()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    store.slow.store(true, Ordering::SeqCst);
    let rotating = tokio::spawn({
        let user = user.clone();
        async move {
            user.invalidate(&first);
            user.token().await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    user.sign_out().await.unwrap();
    let _ = rotating.await.unwrap();
    assert!(!user.is_signed_in().await.unwrap());
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired, "{error}");
    assert_eq!(github.oauth_counts().double_spends, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_panics_while_saving_loses_nothing() {
    let github = FakeGitHub::start().await;
    let store = SlowSaves::default();
    let user = builder(&github, store.clone()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    store.panic_once.store(true, Ordering::SeqCst);
    user.invalidate(&first);
    let error = user.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    assert!(user.stats().unsaved);
    let mut token = None;
    for _ in 0..100 {
        if let Ok(t) = user.token().await {
            token = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(token.is_some());
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends, counts.refused_refreshes), (1, 0, 0), "{counts:?}");
    let saved = stored_refresh_token(&store.inner).await.unwrap();
    assert!(github.refresh_token_is_live(&saved));
}

#[tokio::test]
async fn signing_in_the_pair_in_use_again_spends_nothing() {
    let github = FakeGitHub::start().await;
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    let tokens = signed_in_tokens(&github).await;
    user.sign_in(tokens.clone()).await.unwrap();
    user.token().await.unwrap();
    user.sign_in(tokens.clone()).await.unwrap();
    assert_eq!(user.token().await.unwrap().expose_secret(), tokens.expose_access_token());
    assert_eq!(github.oauth_counts().refreshes, 0);
}

#[tokio::test]
async fn a_lease_dated_beyond_any_lease_is_void() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let seeder = builder(&github, store.clone()).build(github.in_process()).unwrap();
    seeder.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let stored = store.load("mona").await.unwrap().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&stored.record).unwrap();
    let day_ahead =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 86_400_000;
    record["lease"] = serde_json::json!({"holder": "skewed#1", "until": day_ahead});
    let skewed = Versioned { version: stored.version + 1, record: record.to_string().into_bytes() };
    assert!(store.compare_and_swap("mona", Some(stored.version), &skewed).await.unwrap());
    let user = builder(&github, store).build(github.in_process()).unwrap();
    let token = tokio::time::timeout(Duration::from_secs(5), user.token()).await.expect("no wait on a void lease");
    token.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_mint_timeout_is_still_awaited_and_saved() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let client = Tamper::new(&github);
    let user = builder(&github, store.clone())
        .mint_timeout(Duration::from_millis(500))
        .lease(Duration::from_secs(5))
        .build(client.clone())
        .unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    *client.delay.lock().unwrap() = Duration::from_millis(900);
    user.invalidate(&first);
    let second = user.token().await.unwrap();
    assert_ne!(second.serial(), first.serial());
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends), (1, 0), "{counts:?}");
    assert!(github.refresh_token_is_live(&stored_refresh_token(&store).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsaved_pair_gives_way_to_a_later_sign_in() {
    let github = FakeGitHub::start().await;
    let store = SlowSaves::default();
    let a = builder(&github, store.clone()).build(github.in_process()).unwrap();
    a.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = a.token().await.unwrap();
    store.panic_once.store(true, Ordering::SeqCst);
    a.invalidate(&first);
    assert_eq!(a.token().await.unwrap_err().kind(), ErrorKind::Store);
    assert!(a.stats().unsaved);
    // Meanwhile the user signs in again elsewhere.
    let x = builder(&github, store.clone()).build(github.in_process()).unwrap();
    let code = github.authorization_code("mona");
    let fresh = github.oauth_app().exchange_code(github.in_process(), &code, None).await.unwrap();
    x.sign_in(fresh.clone()).await.unwrap();
    // A's retry finds another pair there: it gives way and uses it.
    let mut adopted = None;
    for _ in 0..100 {
        if let Ok(t) = a.token().await {
            adopted = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(adopted.unwrap().expose_secret(), fresh.expose_access_token());
    assert_eq!(stored_refresh_token(&store.inner).await.as_deref(), fresh.expose_refresh_token());
    assert!(!a.stats().unsaved);
    assert_eq!(github.oauth_counts().double_spends, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_during_a_rotation_is_used_as_signed_in_not_spent() {
    let github = FakeGitHub::start().await;
    let store = MemoryStore::new();
    let client = Tamper::new(&github);
    *client.delay.lock().unwrap() = Duration::from_millis(300);
    let user = builder(&github, store.clone()).build(client).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    let rotating = tokio::spawn({
        let user = user.clone();
        async move {
            user.invalidate(&first);
            user.token().await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = signed_in_tokens(&github).await;
    user.sign_in(fresh.clone()).await.unwrap();
    let _ = rotating.await.unwrap();
    let token = user.token().await.unwrap();
    assert_eq!(token.expose_secret(), fresh.expose_access_token(), "the signed-in pair is used");
    assert!(github.refresh_token_is_live(fresh.expose_refresh_token().unwrap()), "and not spent");
    assert_eq!(stored_refresh_token(&store).await.as_deref(), fresh.expose_refresh_token());
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends), (1, 0), "{counts:?}");
}

/// The in-process fake, with the web origin unreachable (connection refused) while `down` is set.
#[derive(Clone)]
struct WebDown {
    inner: InProcess,
    down: Arc<AtomicBool>,
}

impl Service<Request<Full<Bytes>>> for WebDown {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        if self.down.load(Ordering::SeqCst) && request.uri().path().starts_with("/login/") {
            let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let mut inner = self.inner.clone();
        Box::pin(async move { inner.call(request).await })
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_web_origin_leaves_the_current_token_in_use() {
    let github = FakeGitHub::start().await;
    let client = WebDown { inner: github.in_process(), down: Arc::default() };
    let user = builder(&github, MemoryStore::new()).build(client.clone()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = user.token().await.unwrap();
    client.down.store(true, Ordering::SeqCst);
    // Past the scheduled refresh (about 7 h 25 min into the 8 hours): it cannot even connect.
    tokio::time::sleep(Duration::from_secs(7 * 3600 + 40 * 60)).await;
    assert!(user.stats().failed > 0, "{:?}", user.stats());
    // Nothing was spent: the current token still serves.
    for _ in 0..5 {
        assert_eq!(user.token().await.unwrap().serial(), token.serial());
    }
    assert_eq!(github.oauth_counts().refreshes, 0);
}

#[tokio::test]
async fn a_route_that_refuses_every_token_costs_two_rotations_per_request() {
    let github = FakeGitHub::start().await;
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let client = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(tower_github_app::RetryOn401Policy::builder().no_budget().build()))
        .layer(UserAuthLayer::new(user.clone()))
        .service(github.in_process());
    // The fake answers 401 to a user token on the installation routes.
    for _ in 0..3 {
        let response = client.clone().oneshot(get(&format!("{}/installation/repositories", github.api_base()))).await;
        assert_eq!(response.unwrap().status(), 401);
    }
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends), (6, 0), "{counts:?}");
}

#[test]
fn a_token_parked_by_a_stopped_runtime_does_not_outlive_a_sign_out() {
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let github = main.block_on(FakeGitHub::start());
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    let short = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    short.block_on(async {
        user.sign_in(signed_in_tokens(&github).await).await.unwrap();
        user.token().await.unwrap();
    });
    // The refresher's runtime goes away: its token is parked for the next request to restore.
    drop(short);
    main.block_on(async {
        user.sign_out().await.unwrap();
        let error = user.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired, "{error}");
        // And a sign-in afterwards serves its own pair, not the parked one.
        let fresh = signed_in_tokens(&github).await;
        user.sign_in(fresh.clone()).await.unwrap();
        assert_eq!(user.token().await.unwrap().expose_secret(), fresh.expose_access_token());
    });
}

#[tokio::test]
async fn a_sign_in_right_after_an_invalidation_is_adopted_not_spent() {
    let github = FakeGitHub::start().await;
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let first = user.token().await.unwrap();
    let fresh = signed_in_tokens(&github).await;
    user.invalidate(&first);
    tokio::spawn({
        let (user, fresh) = (user.clone(), fresh.clone());
        async move { user.sign_in(fresh).await }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(user.token().await.unwrap().expose_secret(), fresh.expose_access_token());
    assert!(github.refresh_token_is_live(fresh.expose_refresh_token().unwrap()));
    assert_eq!(github.oauth_counts().double_spends, 0);
}

#[tokio::test]
async fn tokens_in_an_answer_with_a_mistyped_field_count_as_spent() {
    let github = FakeGitHub::start().await;
    let client = Tamper::new(&github);
    let user = builder(&github, MemoryStore::new()).build(client.clone()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = user.token().await.unwrap();
    client.rewrite(|value, _| value["expires_in"] = serde_json::json!(value["expires_in"].to_string()));
    user.invalidate(&token);
    assert!(user.token().await.is_err());
    *client.rewrite.lock().unwrap() = None;
    for _ in 0..3 {
        let error = user.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ReauthorizationRequired, "{error}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let counts = github.oauth_counts();
    assert_eq!((counts.refreshes, counts.double_spends), (1, 0), "{counts:?}");
}

/// Counts loads.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    loads: Arc<AtomicU64>,
}

impl UserTokenStore for CountingStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        self.inner.compare_and_swap(key, expected, new)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_a_refresh_token_are_used_to_their_end_without_spinning() {
    let github = FakeGitHub::start().await;
    github.set_user_token_lifetime(None);
    let code = github.authorization_code("mona");
    let issued = github.oauth_app().exchange_code(github.in_process(), &code, None).await.unwrap();
    let store = CountingStore::default();
    let user = builder(&github, store.clone()).build(github.in_process()).unwrap();
    // An expiry but no refresh token: nothing can replace it; it ends in 2 s.
    let ending = std::time::SystemTime::now() + Duration::from_secs(2);
    user.sign_in(UserTokens::new(issued.expose_access_token(), None, Some(ending), None)).await.unwrap();
    user.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(user.token().await.unwrap_err().kind(), ErrorKind::ReauthorizationRequired);
    let loads = store.loads.load(Ordering::Relaxed);
    assert!(loads < 50, "{loads} store loads in 2.5 s");

    // A token that does not expire, signed in 60 days ago, serves.
    let old = MemoryStore::new();
    let record = serde_json::json!({
        "access_token": issued.expose_access_token(),
        "issued_at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
            - 60 * 86_400_000,
    });
    assert!(
        old.compare_and_swap("mona", None, &Versioned { version: 1, record: record.to_string().into_bytes() })
            .await
            .unwrap()
    );
    let user = builder(&github, old).build(github.in_process()).unwrap();
    let token = tokio::time::timeout(Duration::from_secs(5), user.token()).await.expect("no hang").unwrap();
    assert_eq!(token.expose_secret(), issued.expose_access_token());
    assert!(token.remaining() > Duration::from_secs(3600));
}

/// A store whose `changed` always answers at once.
#[derive(Clone, Default)]
struct Impatient(CountingStore);

impl UserTokenStore for Impatient {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        self.0.load(key)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        self.0.compare_and_swap(key, expected, new)
    }

    fn changed<'a>(&'a self, _: &'a str, _: Option<u64>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(std::future::ready(()))
    }
}

#[tokio::test]
async fn waiting_out_another_holders_lease_never_spins() {
    let github = FakeGitHub::start().await;
    let store = Impatient::default();
    let seeder = builder(&github, store.0.inner.clone()).build(github.in_process()).unwrap();
    seeder.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let stored = store.0.inner.load("mona").await.unwrap().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&stored.record).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    record["lease"] = serde_json::json!({"holder": "other#1", "until": now + 1_000});
    let leased = Versioned { version: stored.version + 1, record: record.to_string().into_bytes() };
    assert!(store.0.inner.compare_and_swap("mona", Some(stored.version), &leased).await.unwrap());
    let user = builder(&github, store.clone()).build(github.in_process()).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = Arc::clone(&ticks);
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), user.token()).await.expect("no hang");
    ticker.abort();
    let loads = store.0.loads.load(Ordering::Relaxed);
    assert!(loads < 200, "{loads} loads while waiting out a one-second lease");
    assert!(ticks.load(Ordering::Relaxed) >= 20, "the runtime kept running other tasks");
}

#[tokio::test]
async fn a_validity_no_user_token_can_have_is_refused_without_spending() {
    let github = FakeGitHub::start().await;
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    user.token().await.unwrap();
    for _ in 0..5 {
        let error = user.token_valid_for(Duration::from_secs(7 * 3600 + 45 * 60)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest, "{error}");
    }
    assert_eq!(github.oauth_counts().refreshes, 0);
}

#[tokio::test]
async fn a_validity_the_current_token_can_meet_is_served_by_it() {
    let github = FakeGitHub::start().await;
    let user = builder(&github, MemoryStore::new()).build(github.in_process()).unwrap();
    user.sign_in(signed_in_tokens(&github).await).await.unwrap();
    let token = user.token().await.unwrap();
    // Whatever the jitter, the fresh token is not replaced for 7 h 20 min of its 8 hours.
    let served = user.token_valid_for(Duration::from_secs(7 * 3600 + 20 * 60)).await.unwrap();
    assert_eq!(served.serial(), token.serial());
    assert_eq!(github.oauth_counts().refreshes, 0);
}
