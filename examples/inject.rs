//! Benchmark 2: the deterministic twin of `benches/hot_path.rs`'s `inject` group. Runs N requests of one shape
//! through one variant, with no timing of its own, so `valgrind --tool=callgrind` counts instructions
//! reproducibly:
//!
//! ```text
//! cargo build --release --example inject --features test-util
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/inject installation_auth realistic 100000
//! ```
//!
//! Variants: `bare`, `set_request_header`, `installation_auth`, `app_auth` (the pool), `user_auth`, `retry_auth`,
//! `retry_app_auth`, `hand_rolled`; shapes: `plain`
//! (a URI only) and `realistic` (with `accept` and `user-agent`, as GitHub requires). Per-request counts are the
//! difference between runs with 200,000 and 100,000 requests, divided by 100,000 (setup cancels out);
//! `benches/inject-counts.sh` does exactly that.
//!
//! Built with the `metrics` feature, it measures what recording each token's age costs: with no recorder, or
//! with `TGA_METRICS=debugging`, metrics-util's `DebuggingRecorder` (an atomic bucket per histogram, as the
//! Prometheus exporter keeps), installed before the token is minted.

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "installation_auth".into());
    let shape = args.next().and_then(|s| support::Shape::parse(&s)).unwrap_or(support::Shape::Realistic);
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    #[cfg(feature = "metrics")]
    if std::env::var("TGA_METRICS").as_deref() == Ok("debugging") {
        metrics_util::debugging::DebuggingRecorder::new().install().expect("the only recorder");
    }
    let setup = support::setup();
    let uri = setup.uri.clone();
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    with_variant!(name.as_str(), &setup, token, |service| {
        let mut service = service;
        for _ in 0..n {
            std::hint::black_box(support::call(&mut service, &uri, shape));
        }
    });
}
