//! The crate's main job, end to end, with no account and no network: a fake GitHub on 127.0.0.1 issues tokens
//! that live 4 seconds and refuses each new token for its first 300 ms (replication lag), and a steady stream of
//! API requests goes through a tower stack for 7 seconds while the token is replaced in the background at least
//! twice.
//!
//! ```text
//! cargo run --example demo --features test-util
//! ```
//!
//! The stack is what an application builds: tower-http `TraceLayer`, a timeout, `RetryLayer<RetryOn401Policy>`,
//! `InstallationAuthLayer`, and a hyper-util client, the same client that mints the tokens.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::{Credential, FakeGitHub, TokenState};
use tower_github_app::{Installation, InstallationAuthLayer, InstallationTokenUsed, RetryOn401Policy};
use tower_http::trace::TraceLayer;

const RUN_FOR: Duration = Duration::from_secs(7);
const WORKERS: usize = 4;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tower_github_app=info".into()),
        )
        .init();

    let github = FakeGitHub::builder()
        .token_lifetime(Duration::from_secs(4))
        .replication_lag(Duration::from_millis(300))
        .start()
        .await;
    println!("fake GitHub listening on {}, tokens live 4 s and are refused for their first 300 ms", github.api_base());

    let client = github.client();
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(client.clone())
        .expect("valid configuration");
    let service = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .timeout(Duration::from_secs(10))
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(client);

    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut service = service.clone();
            let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
            let (sent, failed) = (Arc::clone(&sent), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut serials = BTreeSet::new();
                while started.elapsed() < RUN_FOR {
                    let request = http::Request::get(&url).body(Full::<Bytes>::default()).expect("valid request");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match service.ready().await.map(|s| s.call(request)) {
                        Ok(call) => match call.await {
                            Ok(response) if response.status() == 200 => {
                                if let Some(used) = response.extensions().get::<InstallationTokenUsed>() {
                                    serials.insert(used.serial());
                                }
                                let _ = response.into_body().collect().await;
                            }
                            Ok(response) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("worker {worker}: status {}", response.status());
                            }
                            Err(error) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("worker {worker}: {error}");
                            }
                        },
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("worker {worker}: not ready: {error}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                serials
            })
        })
        .collect();
    let mut tokens_used = BTreeSet::new();
    for worker in workers {
        tokens_used.extend(worker.await.expect("worker finished"));
    }

    let stats = installation.stats();
    let refused = github
        .requests()
        .iter()
        .filter(|r| matches!(r.credential, Credential::InstallationToken { state, .. } if state != TokenState::Valid))
        .count();
    let sent = sent.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    println!("ran {:.1} s with {WORKERS} concurrent workers", started.elapsed().as_secs_f64());
    println!("requests sent:                    {sent}");
    println!("requests failed:                  {failed}");
    println!("tokens minted:                    {} (fake GitHub counted {})", stats.mints, github.mint_count());
    println!("background refreshes:             {}", stats.mints.saturating_sub(1));
    println!("distinct tokens on requests:      {}", tokens_used.len());
    println!("requests that waited for a token: {} (the cold start)", stats.waited_requests);
    println!("attempts GitHub refused (401):    {refused} (cold start's fresh token, retried by RetryOn401Policy)");
    println!("failed mint attempts:             {}", stats.failed_mints);
    println!("App JWTs signed:                  {}", installation.app().jwt_signatures());

    if failed == 0 && stats.mints >= 3 && stats.waited_requests <= WORKERS as u64 {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: expected no failed request and at least two background refreshes");
        ExitCode::FAILURE
    }
}
