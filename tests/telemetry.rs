//! What the crate reports (feature `metrics`): counters, gauges and histograms through the `metrics` facade, and
//! the `mint`, `refresh`, `lookup` and `retry` spans, for a pool serving three installations against the fake
//! GitHub. One test: the metrics recorder is global to the process.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_github_app::telemetry::{
    FAILED_MINTS, INVALIDATIONS, LOOKUPS, MINT_SECONDS, MINTS, POOL_INSTALLATIONS, RETRIES, TOKEN_AGE_AT_USE, WAITS,
};
use tower_github_app::testing::{FakeGitHub, MintFault};
use tower_github_app::{AppAuthLayer, InstallationPool, RetryOn401Policy};

use common::{assert_no_secrets, get};

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `name{label=value,…}` → value, for every metric recorded so far.
fn snapshot(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(values: &HashMap<String, DebugValue>, key: &str) -> u64 {
    match values.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn counters_histograms_and_spans() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    // A current-thread runtime: every task runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let github = FakeGitHub::builder()
        .installation(7, FakeGitHub::APP_ID, "octocat", &["octocat/hello-world"])
        .installation(8, FakeGitHub::APP_ID, "hubot", &["hubot/tools"])
        .start()
        .await;
    let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOn401Policy::default()))
        .layer(AppAuthLayer::new(pool.clone()))
        .service(github.client());
    let base = github.api_base();
    let urls: Vec<String> = ["octo-org/octo-repo", "octocat/hello-world", "hubot/tools"]
        .iter()
        .map(|repo| format!("{base}/repos/{repo}"))
        .collect();

    // One failed mint for the first installation asked for: its requests fail fast, the next ones mint.
    github.fail_mints(MintFault::Status(502, "Bad Gateway".into()), 1);
    let first = service.clone().oneshot(get(&urls[0])).await;
    assert!(first.is_err());
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A burst over the three installations: 3 mints, 3 lookups.
    let burst = join_all((0..300).map(|i| service.clone().oneshot(get(&urls[i % 3])))).await;
    assert!(burst.iter().all(|r| r.as_ref().is_ok_and(|r| r.status() == 200)));
    // A minute later every token is revoked: one stale-token retry per installation, then 3 new mints.
    tokio::time::sleep(Duration::from_secs(60)).await;
    github.revoke_all_tokens();
    for url in &urls {
        assert_eq!(service.clone().oneshot(get(url)).await.unwrap().status(), 200);
    }
    assert_eq!(github.mint_count(), 6);
    // An hour of requests every five minutes: the three tokens in use were refreshed in the background.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(300)).await;
        for url in &urls {
            assert_eq!(service.clone().oneshot(get(url)).await.unwrap().status(), 200);
        }
    }
    assert_eq!(github.mint_count(), 9, "{:?} {:?}", github.mint_log(), pool.stats());

    let values = snapshot(&snapshotter);
    let names: Vec<&String> = values.keys().collect();
    assert_eq!(counter(&values, &format!("{MINTS}{{kind=installation,origin=github}}")), 9, "{names:?}");
    assert_eq!(
        counter(&values, &format!("{FAILED_MINTS}{{error=server_error,kind=installation}}")),
        pool.stats().failed_mints
    );
    assert!(pool.stats().failed_mints >= 1);
    assert_eq!(counter(&values, &format!("{WAITS}{{kind=installation}}")), pool.stats().waited_requests);
    assert_eq!(counter(&values, &format!("{RETRIES}{{reason=stale_token}}")), 3);
    assert_eq!(counter(&values, &format!("{INVALIDATIONS}{{kind=installation}}")), 3);
    assert_eq!(counter(&values, &format!("{LOOKUPS}{{outcome=found}}")), 3);
    match values.get(&format!("{POOL_INSTALLATIONS}{{}}")) {
        Some(DebugValue::Gauge(n)) => assert_eq!(n.0, 3.0),
        other => panic!("{other:?}"),
    }
    match values.get(&format!("{MINT_SECONDS}{{kind=installation}}")) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 9),
        other => panic!("{other:?}"),
    }
    // Every request stamped on the hot path recorded its token's age: of the 300 + 3 + 3 + 36 requests and
    // retries, all but those that waited for a mint (stamped on the slow path). None older than the refresh
    // point (about 50 minutes); the revoked ones were a minute old.
    match values.get(&format!("{TOKEN_AGE_AT_USE}{{kind=installation}}")) {
        Some(DebugValue::Histogram(ages)) => {
            let waited = pool.stats().waited_requests as usize;
            assert!(ages.len() >= 342 - waited && ages.len() <= 342, "{} ages, {waited} waited", ages.len());
            assert!(ages.iter().all(|age| (0.0..=3000.0).contains(&age.0)), "{ages:?}");
            assert!(ages.iter().any(|age| (60.0..70.0).contains(&age.0)), "the revoked tokens were a minute old");
        }
        other => panic!("{other:?}"),
    }

    // The spans, with their fields, and never a secret.
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for needle in [
        "mint{installation=42 kind=\"installation\" scoped=false serial=",
        "refresh{installation=42 kind=\"installation\" attempt=1}",
        "lookup{account=\"octocat\" repository=\"hello-world\" installation=7}",
        "retry{installation=",
        "reason=\"stale_token\"",
        "expires_in=35",
        "attempt=1",
    ] {
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
    }
    assert_no_secrets(&log, &[]);
}
