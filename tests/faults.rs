//! Faults of the token endpoint that last longer than a whole token lifetime: the old token serves until its end,
//! then requests fail fast with the typed error, the refresher retries with bounded backoff, and the first attempt
//! after the endpoint heals recovers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::get;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, MintFault, TokenState};
use tower_github_app::{Error, ErrorKind, Installation, InstallationAuthLayer};

struct Outcome {
    served: usize,
    failed: usize,
    attempts_while_failing: u64,
    attempts_to_recover: u64,
}

/// Mints once, breaks the endpoint with `fault` for 75 minutes of paused time with a request every 30 s, then
/// heals it. Every request must finish within a minute (no hang) and fail only with `kind`.
async fn run(fault: MintFault, kind: Option<ErrorKind>) -> Outcome {
    let github = FakeGitHub::start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .mint_timeout(Duration::from_secs(30))
        .build(github.client())
        .unwrap();
    let mut service =
        ServiceBuilder::new().layer(InstallationAuthLayer::new(installation.clone())).service(github.client());
    let url = format!("{}/installation/repositories", github.api_base());
    service.ready().await.unwrap().call(get(&url)).await.unwrap();
    github.fail_mints(fault.clone(), usize::MAX);

    let (mut served, mut failed) = (0, 0);
    let mut first_failure = None;
    for step in 0..150 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let call = service.ready().await.unwrap().call(get(&url));
        let result = tokio::time::timeout(Duration::from_secs(60), call).await.expect("a request hung");
        match result {
            Ok(response) => {
                assert_eq!(response.status(), 200, "{fault:?}");
                assert!(first_failure.is_none(), "{fault:?}: served again after failing at step {first_failure:?}");
                served += 1;
            }
            Err(error) => {
                let error = error.downcast::<Error>().unwrap();
                assert_eq!(Some(error.kind()), kind, "{fault:?}: {error}");
                first_failure.get_or_insert(step);
                failed += 1;
            }
        }
    }
    let attempts_while_failing = github.mint_attempts() - 1;

    github.heal();
    let before = github.mint_attempts();
    let mut recovered = false;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(60), service.ready().await.unwrap().call(get(&url))).await
        {
            assert_eq!(response.status(), 200);
            recovered = true;
            break;
        }
    }
    assert!(recovered, "{fault:?}: no recovery within two minutes of healing");
    // GitHub never saw a token past its end.
    assert!(github.requests().iter().all(|r| !matches!(
        r.credential,
        Credential::InstallationToken { state: TokenState::Expired | TokenState::Revoked, .. }
    )));
    Outcome { served, failed, attempts_while_failing, attempts_to_recover: github.mint_attempts() - before }
}

fn json(status: u16) -> MintFault {
    MintFault::Status(status, r#"{"message":"GitHub is failing"}"#.into())
}

#[tokio::test(start_paused = true)]
async fn every_lasting_fault_is_survived_while_the_old_token_lives_then_reported_then_healed() {
    let raw = |status, content_type, body: &'static [u8]| MintFault::Raw {
        status,
        content_type,
        body: Bytes::from_static(body),
    };
    let cases = [
        ("500", json(500), Some(ErrorKind::ServerError)),
        ("502", json(502), Some(ErrorKind::ServerError)),
        ("503", json(503), Some(ErrorKind::ServerError)),
        (
            "502 HTML page",
            raw(502, "text/html", b"<html><body>Bad gateway</body></html>"),
            Some(ErrorKind::ServerError),
        ),
        ("timeout", MintFault::Delay(Duration::from_secs(120)), Some(ErrorKind::Timeout)),
        ("closed connection", MintFault::CloseConnection, Some(ErrorKind::Transport)),
        (
            "malformed JSON",
            raw(201, "application/json", b"{\"token\": \"ghs_x\", "),
            Some(ErrorKind::MalformedResponse),
        ),
        ("expired token", MintFault::ExpiredToken, Some(ErrorKind::MalformedResponse)),
        ("429 rate limit", json(429), Some(ErrorKind::RateLimited)),
    ];
    println!("| fault | requests served | failed (typed, fast) | mint attempts while failing | attempts to recover |");
    for (name, fault, kind) in cases {
        let outcome = run(fault, kind).await;
        println!(
            "| {name} | {} | {} | {} | {} |",
            outcome.served, outcome.failed, outcome.attempts_while_failing, outcome.attempts_to_recover
        );
        // The token lives 60 minutes and is used until its last minute: 117 or 118 requests of 150 served.
        assert!((116..=118).contains(&outcome.served), "{name}: served {}", outcome.served);
        assert_eq!(outcome.served + outcome.failed, 150, "{name}");
        // Backoff from 1 s doubling to 60 s, jittered: tens of attempts over an hour, never a hot loop.
        assert!((10..=120).contains(&outcome.attempts_while_failing), "{name}: {}", outcome.attempts_while_failing);
        assert_eq!(outcome.attempts_to_recover, 1, "{name}: the first attempt after healing succeeds");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_token_endpoint_costs_no_request_anything() {
    let outcome = {
        let github = FakeGitHub::start().await;
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(github.client())
            .unwrap();
        let service =
            ServiceBuilder::new().layer(InstallationAuthLayer::new(installation.clone())).service(github.client());
        let url = format!("{}/installation/repositories", github.api_base());
        service.clone().oneshot(get(&url)).await.unwrap();
        // Every mint now takes 20 s.
        github.fail_mints(MintFault::Delay(Duration::from_secs(20)), usize::MAX);
        let mut failed = 0;
        for _ in 0..(3 * 120) {
            tokio::time::sleep(Duration::from_secs(30)).await;
            failed += usize::from(service.clone().oneshot(get(&url)).await.map(|r| r.status() != 200).unwrap_or(true));
        }
        (failed, github.mint_count(), installation.stats().waited_requests)
    };
    assert_eq!(outcome.0, 0, "no request failed");
    assert!(outcome.1 >= 4, "{} mints over three hours", outcome.1);
    assert_eq!(outcome.2, 1, "only the cold start waited");
}
