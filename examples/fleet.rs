//! A fleet of processes shares one App's installation tokens through Redis: one mint per installation per
//! refresh, however many processes send requests.
//!
//! `cargo run --example fleet --features test-util,redis` starts a real `redis-server` (from `PATH`: `apt-get
//! install redis-server`) on a free loopback port, a fake GitHub with 100 installations whose tokens live 8
//! seconds, then runs this binary 8 more times as workers for 3 token lifetimes, and prints what the fake GitHub
//! minted per installation and what each worker did.
//!
//! As a worker (environment `TGA_API_BASE`, `TGA_REDIS_URL`, `TGA_REDIS_KEY` (base64), `TGA_INSTALLATIONS`,
//! `TGA_SECONDS`, optional `TGA_TASKS`, `TGA_PAUSE_MS`, `TGA_RETRY_MAX_MS`) it sends requests for installations 1 to
//! `TGA_INSTALLATIONS` in turn through an `InstallationPool` on the Redis store, and prints one JSON line: its
//! requests, failures, the pool's mints and shared tokens, and the store's counts. The tests in `tests/redis.rs`
//! run it that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_github_app::redis::{EncryptionKey, RedisStore};
use tower_github_app::testing::{FakeGitHub, RedisServer, TEST_PRIVATE_KEY};
use tower_github_app::{AppAuthLayer, GitHubApp, InstallationFor, InstallationPool, RetryOn401Policy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if std::env::var_os("TGA_REDIS_URL").is_some() { worker().await } else { demo().await }
}

fn var<T: std::str::FromStr>(name: &str, default: Option<T>) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|_| format!("{name} is not valid").into()),
        Err(_) => default.ok_or_else(|| format!("{name} is not set").into()),
    }
}

async fn worker() -> Result<(), BoxError> {
    // Warnings (Redis unavailable, and back) on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let api_base: String = var("TGA_API_BASE", None)?;
    let key = EncryptionKey::from_base64(
        &var::<String>("TGA_REDIS_KEY_ID", Some("fleet".into()))?,
        &var::<String>("TGA_REDIS_KEY", None)?,
    )?;
    let store = RedisStore::builder(&var::<String>("TGA_REDIS_URL", None)?, key)
        .retry_max(Duration::from_millis(var("TGA_RETRY_MAX_MS", Some(5000))?))
        .build()?;
    let installations: u64 = var("TGA_INSTALLATIONS", Some(100))?;
    let run_for = Duration::from_secs_f64(var("TGA_SECONDS", Some(10.0))?);
    let tasks: u64 = var("TGA_TASKS", Some(2))?;
    let pause = Duration::from_millis(var("TGA_PAUSE_MS", Some(20))?);

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let app = GitHubApp::from_pem(FakeGitHub::APP_ID, TEST_PRIVATE_KEY)?;
    let pool = InstallationPool::builder(app)
        .api_base(&api_base)
        .mint_rate(1000.0)
        .max_concurrent_mints(16)
        .shared_store(store.clone())
        .build(client.clone())?;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(AppAuthLayer::new(pool.clone()))
        .service(client);

    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = tokio::time::Instant::now() + run_for;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (stack, api_base, requests, failed) =
            (stack.clone(), api_base.clone(), Arc::clone(&requests), Arc::clone(&failed));
        handles.push(tokio::spawn(async move {
            let mut n = task;
            while tokio::time::Instant::now() < stop {
                let installation = n % installations + 1;
                n += tasks;
                let mut request = http::Request::get(format!("{api_base}/installation/repositories"))
                    .header("user-agent", "fleet-example")
                    .header("accept", "application/vnd.github+json")
                    .body(Full::<Bytes>::default())
                    .expect("a valid request");
                request.extensions_mut().insert(InstallationFor::Id(installation));
                requests.fetch_add(1, Ordering::Relaxed);
                match stack.clone().oneshot(request).await {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("installation {installation}: status {}", response.status());
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("installation {installation}: {error}");
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let (pool_stats, redis) = (pool.stats(), store.stats());
    println!(
        "{}",
        serde_json::json!({
            "requests": requests.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "mints": pool_stats.mints,
            "shared": pool_stats.shared,
            "refreshes": pool_stats.refreshes,
            "waited_requests": pool_stats.waited_requests,
            "round_trips": redis.round_trips,
            "redis_failures": redis.failures,
            "outages": redis.outages,
            "adopted": redis.adopted,
            "leases": redis.leases,
            "local_mints": redis.local_mints,
            "waits": redis.waits,
            "unreadable": redis.unreadable,
        })
    );
    Ok(())
}

async fn demo() -> Result<(), BoxError> {
    const WORKERS: usize = 8;
    const INSTALLATIONS: u64 = 100;
    let lifetime = Duration::from_secs(8);
    let redis = RedisServer::start()?;
    let mut github = FakeGitHub::builder().token_lifetime(lifetime);
    for id in 1..=INSTALLATIONS {
        github = github.installation(id, FakeGitHub::APP_ID, &format!("org-{id}"), &[&format!("org-{id}/repo")]);
    }
    let github = github.start().await;
    // The key every worker seals and opens tokens with.
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no randomness")?;
    let key_text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
    println!(
        "redis-server on port {}, fake GitHub with {INSTALLATIONS} installations and {lifetime:?} tokens; {WORKERS} \
         worker processes for 3 token lifetimes",
        redis.port()
    );
    let spawn = || {
        tokio::process::Command::new(std::env::current_exe().expect("this binary's path"))
            .env("TGA_API_BASE", github.api_base())
            .env("TGA_REDIS_URL", redis.url())
            .env("TGA_REDIS_KEY", &key_text)
            .env("TGA_INSTALLATIONS", INSTALLATIONS.to_string())
            .env("TGA_SECONDS", (lifetime * 3).as_secs_f64().to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    let children = (0..WORKERS).map(|_| spawn()).collect::<Result<Vec<_>, _>>()?;
    let mut failed = 0;
    for (n, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().await?;
        let summary: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|_| serde_json::json!({"failed": 1}));
        failed += summary["failed"].as_u64().unwrap_or(1);
        println!(
            "worker {n}: {} requests, {} failed; {} tokens minted for the fleet, {} on its own, {} taken from Redis \
             ({} waits for another's mint); {} Redis round trips, {} outages",
            summary["requests"],
            summary["failed"],
            summary["leases"],
            summary["local_mints"],
            summary["shared"],
            summary["waits"],
            summary["round_trips"],
            summary["outages"]
        );
    }
    let log = github.mint_log();
    let mut per_installation = std::collections::BTreeMap::<u64, u64>::new();
    for record in &log {
        *per_installation.entry(record.installation).or_default() += 1;
    }
    let (min, max) = (per_installation.values().min(), per_installation.values().max());
    println!(
        "fake GitHub: {} tokens minted for {} installations ({:?} to {:?} each: the first mint and one per refresh)",
        log.len(),
        per_installation.len(),
        min.unwrap_or(&0),
        max.unwrap_or(&0)
    );
    if failed == 0 { Ok(()) } else { Err(format!("FAILED: {failed} requests failed").into()) }
}
