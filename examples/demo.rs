//! The crate's main job, end to end, with no account and no network: a fake GitHub on 127.0.0.1 issues tokens
//! that live 4 seconds and refuses each new token for its first 300 ms (replication lag), and for 7 seconds
//! - a steady stream of API requests for one installation goes through a tower stack while its token is replaced
//!   in the background at least twice, and
//! - another stream goes through the same stack with an `InstallationPool` instead: one App serving four
//!   installations, each request's installation read from its path (`/repos/{owner}/{repo}`, looked up once per
//!   account) or from an `InstallationFor` extension, as a webhook handler would set it. At the end the pool
//!   revokes every token it minted.
//!
//! ```text
//! cargo run --example demo --features test-util
//! ```
//!
//! The stack is what an application builds: tower-http `TraceLayer`, a timeout, `RetryLayer<RetryOn401Policy>`,
//! `InstallationAuthLayer` (or `AppAuthLayer` for the pool), and a hyper-util client, the same client that mints
//! the tokens.

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
use tower_github_app::{
    AppAuthLayer, Installation, InstallationAuthLayer, InstallationFor, InstallationPool, InstallationTokenUsed,
    RetryOn401Policy,
};
use tower_http::trace::TraceLayer;

const RUN_FOR: Duration = Duration::from_secs(7);
const WORKERS: usize = 4;
/// What the pool's workers request, in turn: four accounts, and one request by installation id.
const POOL_PATHS: [&str; 7] = [
    "/repos/octo-org/octo-repo",
    "/repos/octo-cat/hello",
    "/repos/octo-cat/world",
    "/repos/mona/lisa",
    "/repos/hubot/brain",
    "/repos/hubot/scripts",
    "/installation/repositories",
];

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
        .installation_on_all(101, FakeGitHub::APP_ID, "octo-cat", &["octo-cat/hello", "octo-cat/world"])
        .installation(102, FakeGitHub::APP_ID, "mona", &["mona/lisa"])
        .installation_on_all(103, FakeGitHub::APP_ID, "hubot", &["hubot/brain", "hubot/scripts"])
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
    let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
    let pool_service = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .timeout(Duration::from_secs(10))
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(AppAuthLayer::new(pool.clone()))
        .service(github.client());
    let pool_sent = Arc::new(AtomicU64::new(0));
    let pool_failed = Arc::new(AtomicU64::new(0));
    let pool_workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut service = pool_service.clone();
            let base = github.api_base();
            let (sent, failed) = (Arc::clone(&pool_sent), Arc::clone(&pool_failed));
            tokio::spawn(async move {
                let mut n = worker;
                while started.elapsed() < RUN_FOR {
                    n += 1;
                    let path = POOL_PATHS[n % POOL_PATHS.len()];
                    let mut request =
                        http::Request::get(format!("{base}{path}")).body(Full::<Bytes>::default()).expect("valid");
                    if path == "/installation/repositories" {
                        // From a webhook payload's installation.id.
                        request.extensions_mut().insert(InstallationFor::Id(103));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = match service.ready().await {
                        Ok(service) => service.call(request).await,
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.into_body().collect().await;
                        }
                        Ok(response) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("pool worker {worker}: {path}: status {}", response.status());
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("pool worker {worker}: {path}: {error}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let mut tokens_used = BTreeSet::new();
    for worker in workers {
        tokens_used.extend(worker.await.expect("worker finished"));
    }
    for worker in pool_workers {
        worker.await.expect("pool worker finished");
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
    println!("tokens minted:                    {}", stats.mints);
    println!("background refreshes:             {}", stats.mints.saturating_sub(1));
    println!("distinct tokens on requests:      {}", tokens_used.len());
    println!("requests that waited for a token: {} (the cold start)", stats.waited_requests);
    println!("attempts GitHub refused (401):    {refused} (cold start's fresh token, retried by RetryOn401Policy)");
    println!("failed mint attempts:             {}", stats.failed_mints);
    println!("App JWTs signed:                  {}", installation.app().jwt_signatures());

    // The pool: which installation's token each request carried, by the account its path names.
    let pool_stats = pool.stats();
    let mut per_installation: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut wrong = 0;
    for request in github.requests() {
        let Credential::InstallationToken { installation_id, .. } = request.credential else { continue };
        let Some(account) = request.path.strip_prefix("/repos/").and_then(|p| p.split('/').next()) else { continue };
        let expected = match account {
            "octo-org" => FakeGitHub::INSTALLATION_ID,
            "octo-cat" => 101,
            "mona" => 102,
            _ => 103,
        };
        wrong += u64::from(installation_id != expected);
        *per_installation.entry(installation_id).or_default() += 1;
    }
    let revoked = pool.revoke_all().await;
    let pool_sent = pool_sent.load(Ordering::Relaxed);
    let pool_failed = pool_failed.load(Ordering::Relaxed);
    println!();
    println!("the pool: one App, four installations, {WORKERS} workers over {} routes", POOL_PATHS.len());
    println!("requests sent:                    {pool_sent}");
    println!("requests failed:                  {pool_failed}");
    println!("requests by installation:         {per_installation:?} (with the single-installation stream's)");
    println!("requests with another's token:    {wrong}");
    println!(
        "installation lookups:             {} (one per account, per repository when selected)",
        pool_stats.lookups
    );
    println!("tokens minted:                    {} ({} background refreshes)", pool_stats.mints, pool_stats.refreshes);
    println!("requests that waited for a token: {}", pool_stats.waited_requests);
    println!("tokens revoked at the end:        {} ({} failed)", revoked.revoked, revoked.failed);
    println!("fake GitHub minted {} tokens in all", github.mint_count());

    let single_ok = failed == 0 && stats.mints >= 3 && stats.waited_requests <= WORKERS as u64;
    let pool_ok = pool_failed == 0
        && wrong == 0
        && pool_stats.lookups == 4
        && pool_stats.refreshes >= 4
        && revoked.failed == 0
        && revoked.revoked >= 4;
    if single_ok && pool_ok {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: expected no failed request, at least two background refreshes per token source, every pool \
             request with its own installation's token, and every pool token revoked"
        );
        ExitCode::FAILURE
    }
}
