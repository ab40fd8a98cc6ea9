//! No token, JWT or key material in any log line (TRACE level, hyper included), `Debug` or `Display` that
//! representative scenarios produce.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_no_secrets, get, read};
use tower::ServiceExt;
use tower_github_app::testing::{FakeGitHub, MintFault};
use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, InstallationTokenUsed, PrivateKey, TokenScope};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_secret_reaches_logs_debug_display_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let github = FakeGitHub::builder().long_tokens(true).clock_offset(-600).start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .scope(TokenScope::new().repositories(["octo-repo"]))
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build(github.client())
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(InstallationAuthLayer::new(installation.clone()).token_used_on_every_response())
        .service(github.client());
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());

    let mut texts = Vec::new();
    let mut secrets = Vec::new();
    // Cold start with a clock-skew refusal, then requests.
    let response = service.clone().oneshot(get(&url)).await.unwrap();
    let used = response.extensions().get::<InstallationTokenUsed>().unwrap().clone();
    let token = installation.token().await.unwrap();
    secrets.push(token.expose_secret().to_owned());
    let jwt = installation.app().jwt().await.unwrap();
    secrets.push(jwt.expose_secret().to_owned());
    // A revoked token, invalidated, and a failing re-mint.
    github.revoke_all_tokens();
    github.fail_mints(MintFault::Status(502, r#"{"message":"ghs_fake leaked? Server Error"}"#.into()), 1);
    used.invalidate();
    if let Err(error) = service.clone().oneshot(get(&url)).await {
        texts.push(format!("{error} {error:?}"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = service.clone().oneshot(get(&url)).await.unwrap();
    texts.push(format!("{:?} {:?}", response.extensions().get::<InstallationTokenUsed>(), response.headers()));
    secrets.push(installation.token().await.unwrap().expose_secret().to_owned());
    // A mint with the wrong key, and a malformed answer holding a token.
    let wrong = GitHubApp::from_pem(1, read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    let builder = Installation::builder(wrong.clone(), 42).api_base(&github.api_base());
    let error = builder.mint_once(github.client()).await.unwrap_err();
    texts.push(format!("{error} {error:?} {builder:?}"));
    github.fail_mints(
        MintFault::Raw {
            status: 201,
            content_type: "application/json",
            body: r#"{"token":"ghs_inthebody","expires_at":"x"}"#.into(),
        },
        1,
    );
    let error = Installation::builder(github.app(), 42)
        .api_base(&github.api_base())
        .mint_once(github.client())
        .await
        .unwrap_err();
    texts.push(format!("{error} {error:?}"));
    secrets.push("ghs_inthebody".into());

    // The refresher's WARN log of a refusal whose message glues the JWT's signature to punctuation.
    let signature = jwt.expose_secret().rsplit('.').next().unwrap().to_owned();
    let glued = serde_json::json!({ "message": format!("sig:{signature}") }).to_string();
    github.fail_mints(MintFault::Status(401, glued), 1);
    let fresh = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build(github.client())
        .unwrap();
    if let Err(error) = fresh.token().await {
        texts.push(format!("{error} {error:?}"));
    }
    secrets.extend(signature.as_bytes().windows(24).map(|w| String::from_utf8_lossy(w).into_owned()));

    // The retry stack and an App-JWT route, for the policy's and the App-JWT extension's Debug output.
    let retrying = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(tower_github_app::RetryOn401Policy::default()))
        .layer(InstallationAuthLayer::new(installation.clone()))
        .service(github.client());
    let app_route = retrying.clone().oneshot(get(&format!("{}/app", github.api_base()))).await.unwrap();
    texts.push(format!("{:?} {:?}", app_route.extensions().get::<tower_github_app::AppJwtUsed>(), retrying));
    github.revoke_all_tokens();
    let refused = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(
            tower_github_app::RetryOn401Policy::builder()
                .budget(tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 0, 0.0))
                .build(),
        ))
        .layer(InstallationAuthLayer::new(installation.clone()))
        .service(github.client())
        .oneshot(get(&url))
        .await
        .unwrap();
    texts.push(format!(
        "{:?} {:?}",
        refused.extensions().get::<tower_github_app::RetryGaveUp>(),
        refused.extensions().get::<InstallationTokenUsed>()
    ));
    texts.push(format!(
        "{:?} {:?} {} {:?} {:?}",
        TokenScope::new().repositories(["octo-repo"]),
        tower_github_app::ApiBase::github_com(),
        tower_github_app::ApiBase::github_com(),
        GitHubApp::builder(1),
        Installation::builder(github.app(), 42),
    ));

    let key = PrivateKey::from_pem(tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    texts.push(format!("{key:?} {wrong:?} {jwt:?} {token:?} {used:?} {installation:?} {github:?}"));
    texts.push(format!("{:?} {:?}", InstallationAuthLayer::new(installation.clone()), service));
    texts.push(format!("{:?}", installation.stats()));
    drop(_guard);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "the capture saw the traces");
    texts.push(logs);
    let key_lines: Vec<&str> = tower_github_app::testing::TEST_PRIVATE_KEY.lines().skip(1).take(20).collect();
    let mut all: Vec<&str> = secrets.iter().map(String::as_str).collect();
    all.extend(key_lines);
    for text in &texts {
        assert_no_secrets(text, &all);
    }
}
