//! Every way a mint can fail, produced by a real answer of the fake GitHub, surfaces as its typed error with a
//! message that says what to do and carries no secret.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{assert_no_secrets, get, read};
use tower::ServiceExt;
use tower_github_app::testing::{FakeGitHub, MintFault};
use tower_github_app::{
    Error, ErrorKind, GitHubApp, Installation, InstallationAuthLayer, InstallationBuilder, TokenScope,
};

fn builder(github: &FakeGitHub) -> InstallationBuilder {
    Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID).api_base(&github.api_base())
}

async fn mint_error(github: &FakeGitHub, builder: InstallationBuilder) -> Error {
    let error = builder.mint_once(github.client()).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert_no_secrets(&text, &[]);
    error
}

#[tokio::test]
async fn jwt_signed_with_another_key_is_rejected() {
    let github = FakeGitHub::start().await;
    let wrong = GitHubApp::from_pem(FakeGitHub::APP_ID, read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    let error =
        mint_error(&github, Installation::builder(wrong, FakeGitHub::INSTALLATION_ID).api_base(&github.api_base()))
            .await;
    assert_eq!(error.kind(), ErrorKind::JwtRejected);
    assert_eq!(error.github_message(), Some("A JSON web token could not be decoded"));
    assert!(error.to_string().contains("private key does not belong to this App"), "{error}");

    let unknown_app = GitHubApp::from_pem(999, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let error = mint_error(&github, Installation::builder(unknown_app, 42).api_base(&github.api_base())).await;
    assert_eq!(error.kind(), ErrorKind::JwtRejected);
}

#[tokio::test]
async fn clock_skew_carries_the_measured_offset() {
    for (offset, message) in [
        (600, "'Expiration time' claim ('exp') must be a numeric value"),
        (-600, "'Expiration time' claim ('exp') is too far in the future"),
    ] {
        let github = FakeGitHub::builder().clock_offset(offset).start().await;
        let error = mint_error(&github, builder(&github)).await;
        assert_eq!(error.kind(), ErrorKind::ClockSkew);
        let measured = error.clock_offset().unwrap();
        assert!((measured - offset).abs() <= 2, "{measured} vs {offset}");
        assert!(error.github_message().unwrap().starts_with(message), "{error}");
        assert!(error.to_string().contains(if offset > 0 { "ahead of" } else { "behind" }), "{error}");
        assert!(error.is_transient());
    }
}

#[tokio::test]
async fn an_iat_in_the_future_is_clock_skew_too() {
    let github = FakeGitHub::start().await;
    let app = GitHubApp::builder(FakeGitHub::APP_ID)
        .private_key(tower_github_app::PrivateKey::from_pem(tower_github_app::testing::TEST_PRIVATE_KEY).unwrap())
        .jwt_lifetime(Duration::from_secs(60))
        .build()
        .unwrap();
    // A JWT from a clock 100 s ahead with a short lifetime: exp is within 10 minutes, iat lies in GitHub's future.
    app.set_clock_offset(100);
    let error = mint_error(&github, Installation::builder(app, 42).api_base(&github.api_base())).await;
    assert_eq!(error.kind(), ErrorKind::ClockSkew);
    assert!(error.github_message().unwrap().starts_with("'Issued at' claim ('iat')"));
}

#[tokio::test]
async fn suspended_installation_is_forbidden() {
    let github = FakeGitHub::start().await;
    github.set_suspended(FakeGitHub::INSTALLATION_ID, true);
    let error = mint_error(&github, builder(&github)).await;
    assert_eq!(error.kind(), ErrorKind::InstallationForbidden);
    assert_eq!(error.status().unwrap(), 403);
    assert!(error.to_string().contains("suspended"));
    assert_eq!(error.request_id(), Some("FAKE:0001"));
}

#[tokio::test]
async fn unknown_installation_names_the_installation_and_the_host() {
    let github = FakeGitHub::start().await;
    let error = mint_error(&github, Installation::builder(github.app(), 31337).api_base(&github.api_base())).await;
    assert_eq!(error.kind(), ErrorKind::InstallationNotFound);
    let text = error.to_string();
    assert!(text.contains("31337") && text.contains(&github.api_base()), "{text}");
    assert!(text.contains("uninstalled") && text.contains("/api/v3"), "{text}");
}

#[tokio::test]
async fn invalid_scope_is_its_own_kind() {
    let github = FakeGitHub::start().await;
    for scope in
        [TokenScope::new().repositories(["not-installed"]), TokenScope::new().permission("administration", "write")]
    {
        let error = mint_error(&github, builder(&github).scope(scope)).await;
        assert_eq!(error.kind(), ErrorKind::InvalidScope);
        assert_eq!(error.status().unwrap(), 422);
    }
}

#[tokio::test]
async fn server_errors_rate_limits_and_odd_statuses() {
    let github = FakeGitHub::start().await;
    for (status, kind) in [
        (500, ErrorKind::ServerError),
        (502, ErrorKind::ServerError),
        (503, ErrorKind::ServerError),
        (429, ErrorKind::RateLimited),
        (406, ErrorKind::UnexpectedStatus),
    ] {
        github.fail_mints(MintFault::Status(status, r#"{"message":"nope"}"#.into()), 1);
        let error = mint_error(&github, builder(&github)).await;
        assert_eq!((error.kind(), error.status().unwrap().as_u16()), (kind, status));
    }
    github.fail_mints(MintFault::Status(403, r#"{"message":"API rate limit exceeded for installation"}"#.into()), 1);
    assert_eq!(mint_error(&github, builder(&github)).await.kind(), ErrorKind::RateLimited);
}

#[tokio::test]
async fn closed_connection_is_a_transport_error() {
    let github = FakeGitHub::start().await;
    github.fail_mints(MintFault::CloseConnection, 1);
    let error = mint_error(&github, builder(&github)).await;
    assert_eq!(error.kind(), ErrorKind::Transport);
    assert!(std::error::Error::source(&error).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_a_timeout() {
    let github = FakeGitHub::start().await;
    github.fail_mints(MintFault::Delay(Duration::from_secs(120)), 1);
    let error = mint_error(&github, builder(&github).mint_timeout(Duration::from_secs(5))).await;
    assert_eq!(error.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn malformed_answers() {
    let github = FakeGitHub::start().await;
    let raw = |status: u16, content_type: &'static str, body: &[u8]| MintFault::Raw {
        status,
        content_type,
        body: Bytes::copy_from_slice(body),
    };
    let cases = [
        (raw(201, "text/html", b"<html>proxy login</html>"), "not the JSON"),
        (raw(201, "application/json", b"\xff\xfe\x00garbage"), "not the JSON"),
        (raw(201, "application/json", br#"{"expires_at":"2030-01-01T00:00:00Z"}"#), "no `token`"),
        (
            raw(201, "application/json", br#"{"token":"ghs_abc def","expires_at":"2030-01-01T00:00:00Z"}"#),
            "HTTP header",
        ),
        (raw(201, "application/json", br#"{"token":"ghs_secretvalue"}"#), "no `expires_at`"),
        (raw(201, "application/json", br#"{"token":"ghs_secretvalue","expires_at":"soon"}"#), "RFC 3339"),
        (
            raw(201, "application/json", b"{\"token\":\"ghs_a\\u0001b\",\"expires_at\":\"2030-01-01T00:00:00Z\"}"),
            "HTTP header",
        ),
        (raw(201, "application/json", b"[\"ghs_secretvalue\"]"), "not the JSON"),
        (raw(201, "application/json", br#"{"token":"ghs_secretvalue","expires_at":1893456000}"#), "no `expires_at`"),
        (MintFault::ExpiredToken, "already expired"),
        (raw(201, "application/json", &vec![b' '; 9 * 1024 * 1024]), "larger than"),
    ];
    for (fault, says) in cases {
        github.fail_mints(fault, 1);
        let error = mint_error(&github, builder(&github)).await;
        assert_eq!(error.kind(), ErrorKind::MalformedResponse, "{error}");
        assert!(error.to_string().contains(says), "{says}: {error}");
        assert!(!error.to_string().contains("secretvalue"));
    }
}

#[tokio::test]
async fn the_layer_surfaces_the_typed_error_and_sends_nothing() {
    let github = FakeGitHub::start().await;
    github.set_suspended(FakeGitHub::INSTALLATION_ID, true);
    let installation = builder(&github).build(github.client()).unwrap();
    let service = tower::ServiceBuilder::new().layer(InstallationAuthLayer::new(installation)).service(github.client());
    let error = service.oneshot(get(&format!("{}/repos/octo-org/octo-repo", github.api_base()))).await.unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(error.kind(), ErrorKind::InstallationForbidden);
    assert!(github.requests().iter().all(|r| r.path.ends_with("access_tokens")));
}

#[test]
fn bad_configuration_is_refused_before_anything_is_sent() {
    let app = GitHubApp::from_pem(1, tower_github_app::testing::TEST_PRIVATE_KEY).unwrap();
    let client = tower::service_fn(|_: http::Request<http_body_util::Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
    });
    let cases: Vec<(InstallationBuilder, &str)> = vec![
        (Installation::builder(app.clone(), 0), "installation id 0"),
        (Installation::builder(app.clone(), 1).api_base("api.github.com"), "no scheme"),
        (Installation::builder(app.clone(), 1).api_base("https://ghe.example.com"), "/api/v3"),
        (Installation::builder(app.clone(), 1).refresh_before(Duration::from_secs(30)), "min_remaining"),
        (Installation::builder(app.clone(), 1).refresh_before(Duration::from_secs(3600)), "59 minutes"),
        (Installation::builder(app.clone(), 1).refresh_backoff(Duration::ZERO, Duration::from_secs(1)), "0 < min"),
        (Installation::builder(app.clone(), 1).mint_timeout(Duration::ZERO), "mint_timeout"),
        (Installation::builder(app.clone(), 1).user_agent("bad\nagent"), "user agent"),
        (Installation::builder(app.clone(), 1).scope(TokenScope::new().repositories(["o/r"])), "without the owner"),
    ];
    for (builder, says) in cases {
        let error = builder.build(client).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{says}");
        assert!(error.to_string().contains(says), "{says}: {error}");
    }
}

/// GitHub's wording is not a contract: with its clock 10 minutes behind and a refusal worded in a way the crate
/// has never seen, the offset is still learned from `Date` and the next mint succeeds.
#[tokio::test]
async fn clock_skew_is_recognised_whatever_githubs_message_says() {
    for (offset, wording) in [
        (-600, "'Issued at' claim ('iat') must be a time in the past"),
        (600, "JWT has expired"),
        (-600, "Bad credentials"),
    ] {
        let github = FakeGitHub::builder().clock_offset(offset).jwt_time_message(wording).start().await;
        let error = mint_error(&github, builder(&github)).await;
        assert_eq!(error.kind(), ErrorKind::ClockSkew, "{offset} {wording}: {error}");
        assert_eq!(error.github_message(), Some(wording));
        let learned = error.clock_offset().unwrap();
        assert!((learned - offset).abs() <= 2, "{learned}");
        assert!(error.to_string().contains(if offset < 0 { "behind" } else { "ahead of" }), "{error}");

        // Through the token source: one refused JWT, one corrected mint, no failure seen by the caller.
        let github = FakeGitHub::builder().clock_offset(offset).jwt_time_message(wording).start().await;
        let installation = builder(&github).build(github.client()).unwrap();
        installation.token().await.unwrap();
        assert_eq!((github.mint_attempts(), github.mint_count()), (2, 1), "{wording}");
        assert!((installation.app().clock_offset() - offset).abs() <= 2);
    }

    // A refused JWT while the clocks agree stays what it is.
    let github = FakeGitHub::builder().jwt_time_message("whatever").start().await;
    let wrong = GitHubApp::from_pem(FakeGitHub::APP_ID, read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    let error =
        mint_error(&github, Installation::builder(wrong, FakeGitHub::INSTALLATION_ID).api_base(&github.api_base()))
            .await;
    assert_eq!(error.kind(), ErrorKind::JwtRejected);
}

/// A token endpoint that echoes a JWT signature glued to punctuation: nothing of it reaches the error.
#[tokio::test]
async fn secrets_glued_to_punctuation_in_githubs_message_are_scrubbed() {
    let github = FakeGitHub::start().await;
    let jwt = github.app().jwt().await.unwrap();
    let signature = jwt.expose_secret().rsplit('.').next().unwrap().to_owned();
    let split: Vec<&str> = signature.as_bytes().chunks(31).map(|c| std::str::from_utf8(c).unwrap()).collect();
    for message in [
        format!("sig:{signature}"),
        "bad token ghs\u{200B}_16C7e42F292c6912E7710c838347Ae178B4a".to_owned(),
        format!("parts {}", split.join(" ")),
    ] {
        let body = serde_json::json!({ "message": message }).to_string();
        github.fail_mints(MintFault::Status(401, body), 1);
        let error = mint_error(&github, builder(&github)).await;
        let shown = format!("{error} {error:?}");
        for window in signature.as_bytes().windows(24) {
            assert!(!shown.contains(std::str::from_utf8(window).unwrap()), "{shown}");
        }
        assert!(!shown.contains("16C7e42F292c6912E7710c838347Ae178B4a"), "{shown}");
    }
}
