//! Lifecycle: the refresher task ends with the last handle, and building and dropping thousands of layers and
//! token sources leaves no task and no memory behind. Counts live heap bytes with a counting allocator.

mod common;

use common::TokenEndpoint;
use tower::Layer;
use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, testing::TEST_PRIVATE_KEY};

#[global_allocator]
static ALLOCATOR: common::counting::Counting = common::counting::Counting;

fn token_endpoint() -> TokenEndpoint {
    TokenEndpoint::default()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Lets woken tasks run until `alive_tasks()` reaches `tasks` (bounded: at most 10,000 yields).
async fn settle(tasks: usize) {
    for _ in 0..10_000 {
        if alive_tasks() == tasks {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// The live-byte counter is process-wide: one measuring test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "current_thread")]
async fn refreshers_end_with_their_last_handle_and_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let app = GitHubApp::from_pem(1, TEST_PRIVATE_KEY).unwrap();
    app.jwt().await.unwrap();
    let baseline_tasks = alive_tasks();

    let round = || async {
        let installations: Vec<Installation> = (1..=1000)
            .map(|id| {
                Installation::builder(app.clone(), id).api_base("http://127.0.0.1:9").build(token_endpoint()).unwrap()
            })
            .collect();
        for installation in &installations {
            installation.token().await.unwrap();
        }
        assert_eq!(alive_tasks(), baseline_tasks + 1000, "one refresher per installation");
        drop(installations);
        settle(baseline_tasks).await;
        assert_eq!(alive_tasks(), baseline_tasks, "every refresher ended with its last handle");
    };
    // The first round grows the runtime's and allocator's capacity; the second must return to where it began.
    round().await;
    let before = common::counting::live_bytes();
    round().await;
    let after = common::counting::live_bytes();
    println!("1000 token sources with refreshers, twice: live heap {before} -> {after} bytes");
    assert!((after - before).abs() < 16 * 1024, "{} bytes left behind", after - before);
    assert_eq!(app.jwt_signatures(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_layers_built_and_dropped_leave_no_task_and_no_memory() {
    let _serial = SERIAL.lock().await;
    let app = GitHubApp::from_pem(1, TEST_PRIVATE_KEY).unwrap();
    let baseline_tasks = alive_tasks();
    let round = || {
        let services: Vec<_> = (1..=10_000)
            .map(|id| {
                let installation = Installation::builder(app.clone(), id)
                    .api_base("http://127.0.0.1:9")
                    .build(token_endpoint())
                    .unwrap();
                InstallationAuthLayer::new(installation).layer(token_endpoint())
            })
            .collect();
        assert_eq!(alive_tasks(), baseline_tasks, "nothing runs until a request needs a token");
        drop(services);
    };
    round();
    let before = common::counting::live_bytes();
    round();
    settle(baseline_tasks).await;
    let after = common::counting::live_bytes();
    println!("10,000 layers, twice: live heap {before} -> {after} bytes");
    assert!((after - before).abs() < 4 * 1024, "{} bytes left behind", after - before);
    assert_eq!(alive_tasks(), baseline_tasks);
}
