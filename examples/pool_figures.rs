//! The pool's figures (BENCHMARKS.md, "Pool"): memory for 15,000 cached installation tokens of GitHub's
//! 520 characters, measured with a counting allocator, and 15,000 installations kept warm over 3 token lifetimes
//! in paused time (mints per installation per lifetime, peak scheduled mints per second against the configured
//! rate, scheduler wake-ups between refreshes).
//!
//! ```text
//! cargo run --release --example pool_figures --features test-util
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::{AppAuthLayer, GitHubApp, InstallationFor, InstallationPool};

#[global_allocator]
static ALLOCATOR: common::counting::Counting = common::counting::Counting;

const INSTALLATIONS: u64 = 15_000;
const RATE: f64 = 10.0;

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let endpoint = common::TokenEndpoint::default();
        endpoint.github_sized.store(true, Ordering::Relaxed);
        let app = GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
        let pool =
            InstallationPool::builder(app).mint_rate(RATE).max_concurrent_mints(16).build(endpoint.clone()).unwrap();
        let backend = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut client = ServiceBuilder::new().layer(AppAuthLayer::new(pool.clone())).service(backend);
        let request = |n: u64| {
            let mut request = common::get("https://api.github.com/installation/repositories");
            request.extensions_mut().insert(InstallationFor::Id(n));
            request
        };
        // The first request builds what every pool has (the JWT, caches' own tables) before counting starts.
        client.ready().await.unwrap().call(request(INSTALLATIONS + 1)).await.unwrap();
        pool.forget_installation(INSTALLATIONS + 1);
        endpoint.minted.lock().unwrap().reserve(8 * INSTALLATIONS as usize);
        let before = common::counting::live_bytes();
        for n in 1..=INSTALLATIONS {
            client.ready().await.unwrap().call(request(n)).await.unwrap();
        }
        let _ = pool.stats();
        let warm = common::counting::live_bytes() - before;
        println!(
            "memory: {INSTALLATIONS} installations, one 520-character token each: {:.2} MiB ({} bytes per entry)",
            mib(warm),
            warm / INSTALLATIONS as isize
        );

        // Three lifetimes (one-hour tokens) with every installation used every 5 minutes.
        let minted_before = endpoint.minted.lock().unwrap().len();
        let wakeups_before = pool.stats().scheduler_wakeups;
        let started = tokio::time::Instant::now();
        for _ in 0..(3 * 12) {
            tokio::time::sleep(Duration::from_secs(300)).await;
            for n in 1..=INSTALLATIONS {
                client.ready().await.unwrap().call(request(n)).await.unwrap();
            }
        }
        let stats = pool.stats();
        let steady = common::counting::live_bytes() - before;
        let minted = endpoint.minted.lock().unwrap()[minted_before..].to_vec();
        let refreshes = minted.len();
        let hours = (tokio::time::Instant::now() - started).as_secs_f64() / 3600.0;
        let mut peak = 0;
        for (i, (_, at)) in minted.iter().enumerate() {
            let within = minted[i..].iter().take_while(|(_, t)| *t - *at < Duration::from_secs(1)).count();
            peak = peak.max(within);
        }
        let by_installation = endpoint.mints_by_installation();
        let (least, most) = (1..=INSTALLATIONS)
            .map(|n| by_installation.get(&n).copied().unwrap_or(0))
            .fold((u64::MAX, 0), |(lo, hi), m| (lo.min(m), hi.max(m)));
        println!(
            "warm: {refreshes} refreshes over {hours:.2} h of one-hour tokens = {:.2} mints per installation per \
             lifetime (each installation: {least} to {most} mints in all, first included); peak {peak} scheduled \
             mints in any second (rate {RATE}/s); {} requests waited; {} scheduler wake-ups for {} refreshes",
            refreshes as f64 / INSTALLATIONS as f64 / hours,
            stats.waited_requests,
            stats.scheduler_wakeups - wakeups_before,
            stats.refreshes,
        );
        println!(
            "memory in steady state (each entry holds its current token and the one it replaced, until the latter \
             expires): {:.2} MiB",
            mib(steady)
        );
        // Two hours with no requests: each entry is refreshed once more (it was used since its last refresh),
        // then let go at the refresh after; then the scheduler sleeps.
        let wakeups_before = pool.stats().scheduler_wakeups;
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        let stats = pool.stats();
        println!(
            "idle: two hours without requests: {} scheduler wake-ups, {} idle evictions, {} entries left, {} mints",
            stats.scheduler_wakeups - wakeups_before,
            stats.idle_evictions,
            stats.entries,
            endpoint.minted.lock().unwrap().len() - minted_before - refreshes,
        );
    });
}
