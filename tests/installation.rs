//! The token source and the auth layer end to end against the fake GitHub: cold starts, background refresh over
//! many token lifetimes, clock skew, failing refreshes, and shutdown.

mod common;

use std::time::Duration;

use common::{assert_no_secrets, get};
use futures_util::TryFutureExt;
use futures_util::future::join_all;
use http::Response;
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, MintFault, TokenState};
use tower_github_app::{Error, ErrorKind, Installation, InstallationAuthLayer, InstallationTokenUsed};

fn installation(github: &FakeGitHub) -> Installation {
    Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap()
}

/// Every API request the server saw, with the state of the token it carried.
fn api_token_states(github: &FakeGitHub) -> Vec<Option<TokenState>> {
    github
        .requests()
        .into_iter()
        .filter(|r| !r.path.contains("access_tokens"))
        .map(|r| match r.credential {
            Credential::InstallationToken { state, .. } => Some(state),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_cold_start_cause_one_mint() {
    let github = FakeGitHub::start().await;
    let client = github.client_http2();
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(client.clone())
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(client);
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());

    // Each response is read whole as it arrives, as a client does: unread bodies of 1,000 GitHub-sized answers
    // would exhaust the HTTP/2 connection's flow-control window, and dropped ones reset their streams.
    let responses = join_all((0..1000).map(|_| {
        service.clone().oneshot(get(&url)).and_then(|response| async move {
            let used = response.extensions().get::<InstallationTokenUsed>().cloned();
            let status = response.status();
            response.into_body().collect().await?;
            Ok(Response::builder().status(status).extension(used).body(()).unwrap())
        })
    }))
    .await;

    let ok = responses.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200)).count();
    assert_eq!(ok, 1000);
    assert_eq!(github.mint_count(), 1);
    assert_eq!(github.mint_attempts(), 1);
    let stats = installation.stats();
    assert_eq!((stats.mints, stats.failed_mints), (1, 0));
    assert!(stats.waited_requests >= 1 && stats.waited_requests <= 1000);
    assert!(api_token_states(&github).iter().all(|s| *s == Some(TokenState::Valid)));
    // Every response says which token it carried: all the same one.
    let serials: std::collections::BTreeSet<u64> = responses
        .iter()
        .map(|r| {
            r.as_ref().unwrap().extensions().get::<Option<InstallationTokenUsed>>().unwrap().as_ref().unwrap().serial()
        })
        .collect();
    assert_eq!(serials.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn over_three_token_lifetimes_every_request_carries_a_valid_token_and_only_the_first_waits() {
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let mut service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());

    // Three and a half hours of one-hour tokens, a request every 15 s of paused time.
    let mut serials = Vec::new();
    for _ in 0..(3 * 240 + 120) {
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
        serials.push(response.extensions().get::<InstallationTokenUsed>().unwrap().serial());
        tokio::time::sleep(Duration::from_secs(15)).await;
    }

    let states = api_token_states(&github);
    assert_eq!(states.len(), 840);
    assert!(states.iter().all(|s| *s == Some(TokenState::Valid)), "{states:?}");
    serials.dedup();
    assert!(serials.len() >= 4, "tokens used: {serials:?}");
    let stats = installation.stats();
    assert_eq!(stats.waited_requests, 1, "only the cold start may wait: {stats:?}");
    assert_eq!(stats.failed_mints, 0);
    assert_eq!(stats.mints, github.mint_count());
    // Refreshed ahead of expiry: about one mint per 50 minutes, never a mint per request.
    assert!((4..=6).contains(&github.mint_count()), "{}", github.mint_count());
}

#[tokio::test(start_paused = true)]
async fn a_failing_refresh_is_retried_with_backoff_while_the_old_token_serves() {
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let mut service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());

    service.ready().await.unwrap().call(get(&url)).await.unwrap();
    github.fail_mints(MintFault::Status(502, r#"{"message":"Server Error"}"#.into()), usize::MAX);
    // Into the refresh window (10-12 min before expiry) and 8 minutes through it.
    for _ in 0..(56 * 4) {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let attempts = github.mint_attempts();
    // Backoff 1 s doubling to 60 s with jitter: a handful per minute at most, never a hot loop.
    assert!((4..=40).contains(&attempts), "{attempts} mint attempts");
    assert_eq!(installation.stats().failed_mints, attempts - 1);

    github.heal();
    for _ in 0..(4 * 4) {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(github.mint_count(), 2, "recovered on the first attempt after healing");
    assert!(api_token_states(&github).iter().all(|s| *s == Some(TokenState::Valid)));
    assert_eq!(installation.stats().waited_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_valid_token_requests_fail_fast_with_the_typed_error_and_are_never_sent() {
    let github = FakeGitHub::start().await;
    github.fail_mints(MintFault::Status(503, r#"{"message":"Service Unavailable"}"#.into()), usize::MAX);
    let installation = installation(&github);
    let mut service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());

    for _ in 0..20 {
        let error = service.ready().await.unwrap().call(get(&url)).await.unwrap_err();
        let error = error.downcast::<Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::ServerError);
        assert_eq!(error.status().map(|s| s.as_u16()), Some(503));
        assert_no_secrets(&format!("{error} {error:?}"), &[]);
    }
    // Nothing reached the API without credentials, and the refresher did not hammer the endpoint.
    assert!(api_token_states(&github).is_empty());
    assert!(github.mint_attempts() <= 3, "{}", github.mint_attempts());

    github.heal();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_server_clock_ten_minutes_off_costs_one_refused_jwt_then_none() {
    for offset in [600, -600] {
        let github = FakeGitHub::builder().clock_offset(offset).start().await;
        let installation = installation(&github);
        let service = ServiceBuilder::new()
            .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
            .service(github.client());
        let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
        for _ in 0..5 {
            let response = service.clone().oneshot(get(&url)).await.unwrap();
            assert_eq!(response.status(), 200, "offset {offset}");
        }
        let stats = installation.stats();
        assert_eq!((stats.mints, stats.failed_mints), (1, 1), "offset {offset}");
        assert!((installation.app().clock_offset() - offset).abs() <= 2);
        // The next JWT is right the first time.
        let again = Installation::builder(installation.app().clone(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .mint_once(github.client())
            .await;
        assert!(again.is_ok(), "offset {offset}: {again:?}");
        assert_eq!(github.mint_attempts(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn the_refresher_stops_when_the_last_handle_is_dropped() {
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let token = installation.token().await.unwrap();
    let layer = InstallationAuthLayer::new(installation.clone()).token_used_on_every_response();
    drop(installation);
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let minted = github.mint_count();
    assert_eq!(minted, 3, "a clone inside the layer keeps it refreshing (every 48-50 minutes)");
    drop(layer);
    tokio::time::sleep(Duration::from_secs(5 * 3600)).await;
    assert_eq!(github.mint_count(), minted, "no handle, no refresher");
    // A token handed out earlier stays usable on its own and cannot restart anything.
    assert!(!token.expose_secret().is_empty());
}

#[tokio::test]
async fn token_valid_for_replaces_a_token_that_would_not_last() {
    tokio::time::pause();
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let first = installation.token().await.unwrap();
    tokio::time::advance(Duration::from_secs(40 * 60)).await;
    // 20 minutes left: enough for 15, not for 30.
    let same = installation.token_valid_for(Duration::from_secs(15 * 60)).await.unwrap();
    assert_eq!(same.serial(), first.serial());
    let fresh = installation.token_valid_for(Duration::from_secs(30 * 60)).await.unwrap();
    assert_ne!(fresh.serial(), first.serial());
    assert!(fresh.remaining() > Duration::from_secs(58 * 60));
    let too_long = installation.token_valid_for(Duration::from_secs(2 * 3600)).await.unwrap_err();
    assert_eq!(too_long.kind(), ErrorKind::InvalidRequest);
    // Tokens are known to live an hour: asking for two is refused without a mint (it used to mint each time).
    for _ in 0..5 {
        assert!(installation.token_valid_for(Duration::from_secs(2 * 3600)).await.is_err());
    }
    assert_eq!(github.mint_count(), 2);
}

#[tokio::test]
async fn invalidating_a_token_shares_one_fresh_mint_among_everyone_who_saw_it() {
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    let response = service.clone().oneshot(get(&url)).await.unwrap();
    let used = response.extensions().get::<InstallationTokenUsed>().unwrap().clone();
    github.revoke_all_tokens();

    assert!(used.invalidate());
    assert!(!used.invalidate(), "a second invalidation of the same token is a no-op");
    let responses = join_all((0..50).map(|_| service.clone().oneshot(get(&url)))).await;
    assert!(responses.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(github.mint_count(), 2);
    assert_eq!(installation.stats().invalidations, 1);
}

#[tokio::test]
async fn scoped_and_long_tokens_work() {
    let github = FakeGitHub::builder().long_tokens(true).path_prefix("/api/v3").start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .scope(tower_github_app::TokenScope::new().repositories(["octo-repo"]).permission("contents", "read"))
        .build(github.client())
        .unwrap();
    let token = installation.token().await.unwrap();
    assert!(token.expose_secret().len() > 500, "{}", token.expose_secret().len());
    assert!(token.is_scoped());
    assert_eq!(token.repositories()[0].full_name, "octo-org/octo-repo");
    assert_eq!(token.permissions()["contents"], "read");
    assert_eq!(token.repository_selection(), Some("selected"));
    assert_no_secrets(&format!("{token:?} {installation:?}"), &[token.expose_secret()]);

    let service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation).token_used_on_every_response())
        .service(github.client());
    let visible =
        service.clone().oneshot(get(&format!("{}/repos/octo-org/octo-repo", github.api_base()))).await.unwrap();
    assert_eq!(visible.status(), 200);
    let hidden = service.oneshot(get(&format!("{}/repos/octo-org/octo-lib", github.api_base()))).await.unwrap();
    assert_eq!(hidden.status(), 404);
}

#[test]
fn outside_a_runtime_the_error_says_what_is_needed() {
    let github_base = "http://127.0.0.1:9";
    let app = tower_github_app::GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    });
    let installation = Installation::builder(app, 42).api_base(github_base).build(client).unwrap();
    let error = futures_util::FutureExt::now_or_never(installation.token()).unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Runtime);
    assert!(error.to_string().contains("Tokio runtime"));
}

#[tokio::test(start_paused = true)]
async fn refreshed_tokens_are_used_only_after_a_replication_grace() {
    // GitHub refuses each new token for 3 s. Without any retry policy, no request after the cold start meets
    // that: the old token serves for 5 s more after each refresh.
    let github = FakeGitHub::builder().replication_lag(Duration::from_secs(3)).start().await;
    let installation = installation(&github);
    installation.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    // Two hours, a request every second, so every refresh is probed within its first seconds.
    for _ in 0..(2 * 3600) {
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(github.mint_count() >= 3, "{}", github.mint_count());
    assert!(api_token_states(&github).iter().all(|s| *s == Some(TokenState::Valid)));

    // With the grace switched off, requests right after each refresh meet the lag.
    let github = FakeGitHub::builder().replication_lag(Duration::from_secs(3)).start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .replication_grace(Duration::ZERO)
        .build(github.client())
        .unwrap();
    installation.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut service = ServiceBuilder::new()
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    let mut refused = 0;
    for _ in 0..(2 * 3600) {
        let response = service.ready().await.unwrap().call(get(&url)).await.unwrap();
        refused += usize::from(response.status() == 401);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(refused >= 2, "each refresh without grace meets the lag: {refused}");
}

#[tokio::test(start_paused = true)]
async fn a_token_whose_refresh_keeps_failing_is_withdrawn_before_it_expires() {
    let github = FakeGitHub::start().await;
    let installation = installation(&github);
    let mut service =
        ServiceBuilder::new().layer(InstallationAuthLayer::new(installation.clone())).service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    service.ready().await.unwrap().call(get(&url)).await.unwrap();
    github.fail_mints(MintFault::Status(502, r#"{"message":"Server Error"}"#.into()), usize::MAX);

    // A request a minute for an hour and a half: served until about 59 minutes, then refused locally.
    let (mut served, mut refused) = (0, 0);
    for _ in 0..90 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match service.ready().await.unwrap().call(get(&url)).await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                served += 1;
            }
            Err(error) => {
                assert_eq!(error.downcast::<Error>().unwrap().kind(), ErrorKind::ServerError);
                refused += 1;
            }
        }
    }
    assert!((57..=59).contains(&served), "served {served}");
    assert_eq!(served + refused, 90);
    // GitHub never saw the token after its end.
    assert!(api_token_states(&github).iter().all(|s| *s == Some(TokenState::Valid)));
    // Bounded retries: backoff up to 60 s means at most a few attempts a minute.
    assert!(github.mint_attempts() < 200, "{}", github.mint_attempts());
}

#[tokio::test(start_paused = true)]
async fn one_jwt_serves_the_mints_of_many_installations() {
    let mut builder = FakeGitHub::builder();
    for id in 1000..1200 {
        builder = builder.installation(id, FakeGitHub::APP_ID, "octo-org", &["octo-org/octo-repo"]);
    }
    let github = builder.start().await;
    let app = github.app();
    // 200 installations minted across 9 minutes share one JWT (valid 9.5 minutes, reused until 30 s before).
    for id in 1000..1200 {
        let installation =
            Installation::builder(app.clone(), id).api_base(&github.api_base()).build(github.client()).unwrap();
        installation.token().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2700)).await;
    }
    assert_eq!(github.mint_count(), 200);
    assert_eq!(app.jwt_signatures(), 1);
}
