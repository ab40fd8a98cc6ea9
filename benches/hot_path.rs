//! Benchmarks 1, 3 and 6a: the cost of stamping a request (two request shapes), with one and two threads, and of
//! signing a JWT.
//! See BENCHMARKS.md for the figures and how to reproduce them.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_github_app::AppJwtClaims;

fn header_injection(c: &mut Criterion) {
    let (_runtime, _github, installation, uri) = support::installation_with_token();
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    let mut group = c.benchmark_group("inject");
    for shape in support::Shape::ALL {
        for name in support::VARIANTS {
            with_variant!(name, &installation, token, |service| {
                let mut service = service;
                group.bench_function(format!("{}/{name}", shape.name()), |b| {
                    b.iter(|| black_box(support::call(&mut service, &uri, shape)))
                });
            });
        }
    }
    group.finish();
}

fn contention(c: &mut Criterion) {
    let (_runtime, _github, installation, uri) = support::installation_with_token();
    let mut group = c.benchmark_group("threads");
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    // `bare` is the control: what a second thread costs the machine itself (two vCPUs may share a core).
    let shape = support::Shape::Realistic;
    for name in ["bare", "set_request_header", "installation_auth", "retry_auth"] {
        for threads in [1usize, 2] {
            with_variant!(name, &installation, token, |service| {
                group.bench_function(format!("{name}/{threads}"), |b| {
                    b.iter_custom(|iters| {
                        // Each thread drives its own clone of one service; the result is time per request per thread.
                        let start = std::sync::Barrier::new(threads);
                        std::thread::scope(|scope| {
                            let handles: Vec<_> = (0..threads)
                                .map(|_| {
                                    let mut service = service.clone();
                                    // Each thread its own URI: a shared one would contend on its reference count.
                                    let uri: http::Uri = uri.to_string().parse().unwrap();
                                    let start = &start;
                                    scope.spawn(move || {
                                        start.wait();
                                        let began = Instant::now();
                                        for _ in 0..iters {
                                            black_box(support::call(&mut service, &uri, shape));
                                        }
                                        began.elapsed()
                                    })
                                })
                                .collect();
                            handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
                        })
                    })
                });
            });
        }
    }
    group.finish();
}

fn jwt_signing(c: &mut Criterion) {
    let app = tower_github_app::GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("jwt");
    group.bench_function("sign", |b| {
        b.iter(|| runtime.block_on(app.sign_claims(black_box(AppJwtClaims { iat: 1, exp: 600 }))).unwrap())
    });
    group.bench_function("cached", |b| b.iter(|| runtime.block_on(app.jwt()).unwrap()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = header_injection, contention, jwt_signing
}
criterion_main!(benches);
