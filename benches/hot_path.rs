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
    let setup = support::setup();
    let uri = setup.uri.clone();
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    let mut group = c.benchmark_group("inject");
    for shape in support::Shape::ALL {
        for name in support::VARIANTS {
            with_variant!(name, &setup, token, |service| {
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
    let setup = support::setup();
    let uri = setup.uri.clone();
    let mut group = c.benchmark_group("threads");
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    // `bare` is the control: what a second thread costs the machine itself (two vCPUs may share a core).
    let shape = support::Shape::Realistic;
    for name in ["bare", "set_request_header", "installation_auth", "app_auth", "retry_auth"] {
        for threads in [1usize, 2] {
            with_variant!(name, &setup, token, |service| {
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

/// The pool's shared path: requests naming installations by id (as a webhook handler does), rotating over 1,000
/// warm installations, so the service's small cache of recent entries misses and the pool's moka cache answers;
/// against the same requests for one installation (the small cache hits) and a bare service.
fn pool_rotating(c: &mut Criterion) {
    use tower_github_app::{AppAuthLayer, InstallationFor, InstallationPool};
    const N: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (_github, pool, uri) = runtime.block_on(async {
        let github = (0..N)
            .fold(tower_github_app::testing::FakeGitHub::builder(), |b, n| {
                b.installation(1000 + n, 1, &format!("acct-{n}"), &[&format!("acct-{n}/repo")])
            })
            .start()
            .await;
        let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
        for n in 0..N {
            pool.token(InstallationFor::Id(1000 + n), None).await.unwrap();
        }
        let uri: http::Uri = format!("{}/installation/repositories", github.api_base()).parse().unwrap();
        (github, pool, uri)
    });
    let request = |n: u64| {
        let mut request = support::Shape::Realistic.request(&uri);
        request.extensions_mut().insert(InstallationFor::Id(1000 + n % N));
        request
    };
    let mut group = c.benchmark_group("pool");
    let mut bare = support::Bare;
    let mut one = tower::Layer::layer(&AppAuthLayer::new(pool.clone()), support::Bare);
    let mut rotating = tower::Layer::layer(&AppAuthLayer::new(pool.clone()), support::Bare);
    let mut n = 0u64;
    group.bench_function("bare", |b| b.iter(|| black_box(support::call_with(&mut bare, request(7)))));
    group.bench_function("one_installation", |b| b.iter(|| black_box(support::call_with(&mut one, request(7)))));
    group.bench_function("rotating_1000", |b| {
        b.iter(|| {
            n += 1;
            black_box(support::call_with(&mut rotating, request(n)))
        })
    });
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
    targets = header_injection, contention, pool_rotating, jwt_signing
}
criterion_main!(benches);
