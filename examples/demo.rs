//! The crate's main job, end to end, with no account and no network: a fake GitHub on 127.0.0.1 issues tokens
//! that live 4 seconds and refuses each new token for its first 300 ms (replication lag), and for 7 seconds
//! - a steady stream of API requests for one installation goes through a tower stack while its token is replaced
//!   in the background at least twice, and
//! - another stream goes through the same stack with an `InstallationPool` instead: one App serving four
//!   installations, each request's installation read from its path (`/repos/{owner}/{repo}`, looked up once per
//!   account) or from an `InstallationFor` extension, as a webhook handler would set it. At the end the pool
//!   revokes every token it minted.
//!
//! Then a user signs in through the device flow and two `UserToken` sources share the user's tokens through one
//! file store while workers call `GET /user` for 4 seconds with user tokens that live 3 seconds: the tokens are
//! rotated in the background, one source adopting the other's rotations, and no refresh token is spent twice.
//!
//! At the end it prints what the `metrics` facade recorded (feature `metrics`): mints, waits, retries by
//! reason, token age at use, pool size.
//!
//! ```text
//! cargo run --example demo --features test-util,metrics
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tower_github_app=info".into()),
        )
        .init();
    // Installed before any token source: each token registers its histogram handle when it is minted.
    #[cfg(feature = "metrics")]
    let metrics = {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only metrics recorder");
        snapshotter
    };

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

    let user = users(&github).await;

    #[cfg(feature = "metrics")]
    print_metrics(&metrics);
    #[cfg(not(feature = "metrics"))]
    println!("\n(run with --features test-util,metrics to see the metrics as well)");

    let single_ok = failed == 0 && stats.mints >= 3 && stats.waited_requests <= WORKERS as u64;
    let pool_ok = pool_failed == 0
        && wrong == 0
        && pool_stats.lookups == 4
        && pool_stats.refreshes >= 4
        && revoked.failed == 0
        && revoked.revoked >= 4;
    if single_ok && pool_ok && user {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: expected no failed request, at least two background refreshes per token source, every pool \
             request with its own installation's token, every pool token revoked, and no refresh token spent twice"
        );
        ExitCode::FAILURE
    }
}

/// A user's tokens, signed in through the device flow and shared by two sources through one file store.
async fn users(github: &FakeGitHub) -> bool {
    use tower_github_app::UserAuthLayer;
    use tower_github_app::store::FileStore;
    use tower_github_app::user::UserToken;

    github.set_user_token_lifetime(Some(Duration::from_secs(3)));
    github.set_device_interval(Duration::from_secs(1));
    let dir = std::env::temp_dir().join(format!("tga-demo-users-{}", std::process::id()));
    let oauth = github.oauth_app();
    let source = |name: &str| {
        UserToken::builder(oauth.clone(), FileStore::open(&dir).expect("a temporary directory"), "mona")
            .api_base(&github.api_base())
            .user_agent(name)
            .refresh_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .on_reauthorization_required(|error| eprintln!("mona must authorize again: {error}"))
            .build(github.client())
            .expect("valid settings")
    };
    let (a, b) = (source("demo-a"), source("demo-b"));
    println!();
    let signed_in = async {
        let code = oauth.start_device_flow(github.client()).await?;
        println!(
            "the user: open {} and enter {} (approved by the fake GitHub)",
            code.verification_uri(),
            code.user_code()
        );
        github.approve_device(code.user_code(), "mona");
        a.sign_in(oauth.poll_device(github.client(), &code).await?).await
    };
    if let Err(error) = signed_in.await {
        println!("FAILED: the device flow: {error}");
        return false;
    }
    println!(
        "two sources share mona's tokens through one file store; when one rotates them, the other's token dies: its \
         next request gets 401, RetryOn401Policy drops the token and that source adopts the stored pair (the INFO \
         lines 'token invalidated' below)"
    );
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let user = if worker % 2 == 0 { a.clone() } else { b.clone() };
            let client = ServiceBuilder::new()
                .layer(RetryLayer::new(RetryOn401Policy::default()))
                .layer(UserAuthLayer::new(user))
                .service(github.client());
            let (url, sent, failed) = (format!("{}/user", github.api_base()), Arc::clone(&sent), Arc::clone(&failed));
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(4) {
                    let request = http::Request::get(&url).body(Full::<Bytes>::default()).expect("a valid request");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match client.clone().oneshot(request).await {
                        Ok(response) if response.status() == 200 => {}
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("user worker {worker}: {:?}", other.map(|r| r.status()));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("user worker finished");
    }
    let counts = github.oauth_counts();
    let (sa, sb) = (a.stats(), b.stats());
    let _ = std::fs::remove_dir_all(&dir);
    println!("user tokens: two sources, one file store, {WORKERS} workers, tokens living 3 s");
    println!("requests sent:                    {}", sent.load(Ordering::Relaxed));
    println!("requests failed:                  {}", failed.load(Ordering::Relaxed));
    println!(
        "rotations (refresh tokens spent): {} (source a {}, source b {})",
        counts.refreshes, sa.refreshes, sb.refreshes
    );
    println!("rotations adopted from the other: {} (a {}, b {})", sa.adopted + sb.adopted, sa.adopted, sb.adopted);
    println!("refresh tokens spent twice:       {}", counts.double_spends);
    println!("live refresh tokens for mona:     {}", github.live_refresh_tokens("mona"));
    failed.load(Ordering::Relaxed) == 0
        && counts.double_spends == 0
        && counts.refreshes >= 1
        && github.live_refresh_tokens("mona") == 1
}

/// What the `metrics` facade recorded: counters and gauges as they stand, histograms as count, median and max.
#[cfg(feature = "metrics")]
fn print_metrics(snapshotter: &metrics_util::debugging::Snapshotter) {
    use metrics_util::debugging::DebugValue;
    let mut lines: Vec<(String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(n) => n.to_string(),
                DebugValue::Histogram(mut samples) => {
                    samples.sort();
                    let median = samples.get(samples.len() / 2).map_or(0.0, |s| s.0);
                    let max = samples.last().map_or(0.0, |s| s.0);
                    format!("count {}, median {median:.3}, max {max:.3}", samples.len())
                }
            };
            (name, value)
        })
        .collect();
    lines.sort();
    println!();
    println!("metrics (the `metrics` facade, all three parts of the demo):");
    println!("  (mints count this process's: the first part's installation kept refreshing during the later parts;");
    println!("  the pool gauge is 0 because the pool revoked and dropped its tokens at the end of its part)");
    for (name, value) in lines {
        println!("  {name:<72} {value}");
    }
}
