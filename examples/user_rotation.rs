//! Two processes share one user's tokens through a file store, rotating them as fast as they can, and no refresh
//! token is ever spent twice.
//!
//! `cargo run --example user_rotation --features test-util` starts a fake GitHub, signs a user in through the web
//! flow, then runs this binary twice more as workers (each with 4 tasks that force a rotation, then call
//! `GET /user`) and prints what the fake GitHub counted.
//!
//! As a worker (environment `TGA_API_BASE`, `TGA_WEB_BASE`, `TGA_STORE_DIR`, `TGA_ITERATIONS`) it prints one JSON
//! line: its requests, failures, refreshes and adoptions. The test `two_processes_share_a_file_store_without_double_spends`
//! runs it that way. With `TGA_REDIS_URL` and `TGA_REDIS_KEY` (base64) instead of `TGA_STORE_DIR` (and the
//! `redis` feature), the worker keeps the tokens in Redis: `tests/redis.rs` runs it that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_github_app::store::{FileStore, UserTokenStore};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::user::{OAuthApp, UserToken};
use tower_github_app::{RetryOn401Policy, UserAuthLayer};

const TASKS: u64 = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("TGA_REDIS_URL") {
        use tower_github_app::redis::{EncryptionKey, RedisStore};
        let key = EncryptionKey::from_base64(
            &std::env::var("TGA_REDIS_KEY_ID").unwrap_or_else(|_| "fleet".into()),
            &std::env::var("TGA_REDIS_KEY")?,
        )?;
        return worker(Arc::new(RedisStore::builder(&url, key).build()?)).await;
    }
    match std::env::var("TGA_STORE_DIR") {
        Ok(dir) => worker(Arc::new(FileStore::open(dir)?)).await,
        Err(_) => demo().await,
    }
}

async fn worker(store: Arc<dyn UserTokenStore>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let api_base = std::env::var("TGA_API_BASE")?;
    let web_base = std::env::var("TGA_WEB_BASE")?;
    let iterations: u64 = std::env::var("TGA_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let oauth = OAuthApp::new(FakeGitHub::CLIENT_ID, FakeGitHub::CLIENT_SECRET).with_web_base(&web_base)?;
    let user = UserToken::builder(oauth, store, "mona")
        .api_base(&api_base)
        .refresh_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .build(client.clone())?;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::builder().no_budget().build()))
        .layer(UserAuthLayer::new(user.clone()))
        .service(client);
    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (user, stack, api_base) = (user.clone(), stack.clone(), api_base.clone());
        let (requests, failed) = (Arc::clone(&requests), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            for _ in 0..iterations {
                // Force a rotation (or the adoption of the other process's), then use the token.
                if let Ok(token) = user.token().await {
                    user.invalidate(&token);
                }
                let request = http::Request::get(format!("{api_base}/user")).body(Full::default()).unwrap();
                requests.fetch_add(1, Ordering::Relaxed);
                match stack.clone().oneshot(request).await {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("status {}", response.status());
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("error: {error}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let stats = user.stats();
    println!(
        "{}",
        serde_json::json!({
            "requests": requests.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "refreshes": stats.refreshes,
            "adopted": stats.adopted,
            "lease_waits": stats.lease_waits,
        })
    );
    Ok(())
}

async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let github = FakeGitHub::start().await;
    let dir = std::env::temp_dir().join(format!("tga-user-rotation-demo-{}", std::process::id()));
    let store = FileStore::open(&dir)?;
    let user =
        UserToken::builder(github.oauth_app(), store, "mona").api_base(&github.api_base()).build(github.client())?;
    // The web flow: the user authorized the App and came back with a code.
    let code = github.authorization_code("mona");
    user.sign_in(github.oauth_app().exchange_code(github.client(), &code, None).await?).await?;
    drop(user);
    println!("signed mona in through the web flow; her tokens are in a file store in a temporary directory");
    println!("two worker processes, each 4 tasks x 40 times: force a rotation (or adopt the other's), call GET /user");

    let spawn = || {
        tokio::process::Command::new(std::env::current_exe().expect("this binary's path"))
            .env("TGA_API_BASE", github.api_base())
            .env("TGA_WEB_BASE", github.web_base())
            .env("TGA_STORE_DIR", &dir)
            .env("TGA_ITERATIONS", "40")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    let (first, second) = (spawn()?, spawn()?);
    let (first, second) = tokio::join!(first.wait_with_output(), second.wait_with_output());
    let mut failed = 0;
    for (name, output) in [("process 1", first?), ("process 2", second?)] {
        let summary: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|_| serde_json::json!({"failed": 1}));
        failed += summary["failed"].as_u64().unwrap_or(1);
        println!(
            "{name}: {} requests, {} failed, {} refresh tokens spent, {} pairs adopted from the other process, {} \
             waits for the other's lease",
            summary["requests"], summary["failed"], summary["refreshes"], summary["adopted"], summary["lease_waits"]
        );
    }
    let counts = github.oauth_counts();
    let live = github.live_refresh_tokens("mona");
    println!(
        "fake GitHub: {} rotations, {} refresh tokens spent twice, {} refused, {live} live refresh token(s) for mona",
        counts.refreshes, counts.double_spends, counts.refused_refreshes,
    );
    std::fs::remove_dir_all(&dir)?;
    if failed == 0 && counts.double_spends == 0 && counts.refused_refreshes == 0 && live == 1 {
        println!("ok");
        Ok(())
    } else {
        Err("FAILED: expected no failed request, no refresh token spent twice, one live refresh token".into())
    }
}
