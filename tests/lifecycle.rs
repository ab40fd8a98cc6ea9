//! Lifecycle: the refresher task ends with the last handle, and building and dropping thousands of layers and
//! token sources leaves no task and no memory behind. Counts live heap bytes with a counting allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use common::TokenEndpoint;
use tower::Layer;
use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, testing::TEST_PRIVATE_KEY};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// The library forbids unsafe code; a counting global allocator needs `unsafe impl`, so it lives only in this test
// crate, and it only counts and forwards to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    round().await;
    let after = LIVE_BYTES.load(Ordering::Relaxed);
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
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    round();
    settle(baseline_tasks).await;
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    println!("10,000 layers, twice: live heap {before} -> {after} bytes");
    assert!((after - before).abs() < 4 * 1024, "{} bytes left behind", after - before);
    assert_eq!(alive_tasks(), baseline_tasks);
}
