//! App JWTs and private keys: the octokit conformance vector, every key format users bring, and the errors for
//! those that cannot work.

mod common;

use std::time::{Duration, SystemTime};

use common::{assert_no_secrets, read};
use tower_github_app::{AppId, AppJwtClaims, ErrorKind, GitHubApp, PrivateKey};

fn vector_claims() -> AppJwtClaims {
    AppJwtClaims { iat: -30, exp: 570 }
}

#[tokio::test]
async fn octokit_vector_matches_byte_for_byte_pkcs1_and_pkcs8() {
    let expected = read("vectors/octokit-jwt/expected.jwt");
    for key in ["private-key-pkcs1.pem", "private-key-pkcs8.pem"] {
        let app = GitHubApp::from_pem(1, read(&format!("vectors/octokit-jwt/{key}"))).unwrap();
        let jwt = app.sign_claims(vector_claims()).await.unwrap();
        assert_eq!(jwt.expose_secret(), expected.trim(), "{key}");
        assert!(jwt.authorization().is_sensitive());
        assert_no_secrets(&format!("{jwt:?} {app:?}"), &[expected.trim()]);
    }
}

#[tokio::test]
async fn the_vector_also_holds_with_escaped_newlines_and_quotes() {
    let expected = read("vectors/octokit-jwt/expected.jwt");
    let pem = read("vectors/octokit-jwt/private-key-pkcs1.pem");
    for mangled in [
        pem.replace('\n', "\\n"),
        format!("\"{}\"", pem.replace('\n', "\\n")),
        pem.replace('\n', "\r\n"),
        format!("  \n{pem}\n\n"),
    ] {
        let app = GitHubApp::from_pem(1, mangled).unwrap();
        assert_eq!(app.sign_claims(vector_claims()).await.unwrap().expose_secret(), expected.trim());
    }
}

#[tokio::test]
async fn client_ids_go_into_iss_as_strings_and_app_ids_as_numbers() {
    use base64::Engine as _;
    let pem = read("vectors/octokit-jwt/private-key-pkcs1.pem");
    for (id, payload) in [
        (AppId::from("Iv1.0123abcd"), r#"{"iat":-30,"exp":570,"iss":"Iv1.0123abcd"}"#),
        (AppId::from("1"), r#"{"iat":-30,"exp":570,"iss":1}"#),
    ] {
        let app = GitHubApp::from_pem(id, &pem).unwrap();
        let jwt = app.sign_claims(vector_claims()).await.unwrap();
        let segment = jwt.expose_secret().split('.').nth(1).unwrap().to_owned();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), payload);
    }
}

#[tokio::test]
async fn claims_backdate_iat_and_follow_the_clock_offset() {
    let app = GitHubApp::from_pem(7, read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(app.claims_at(now), AppJwtClaims { iat: 1_000_000 - 60, exp: 1_000_000 + 570 });
    app.set_clock_offset(-600);
    assert_eq!(app.claims_at(now), AppJwtClaims { iat: 1_000_000 - 660, exp: 1_000_000 - 30 });
    // Learned from a Date header: small differences are noise, large ones replace the offset.
    assert_eq!(app.learn_clock_offset(now - Duration::from_secs(599), now), -600);
    assert_eq!(app.learn_clock_offset(now + Duration::from_secs(300), now), 300);
}

#[tokio::test]
async fn a_jwt_is_signed_once_and_reused_until_shortly_before_exp() {
    tokio::time::pause();
    let app = GitHubApp::from_pem(7, read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    let first = app.jwt().await.unwrap();
    for _ in 0..1000 {
        assert_eq!(app.jwt().await.unwrap().expose_secret(), first.expose_secret());
    }
    assert_eq!(app.jwt_signatures(), 1);
    // Nine minutes on: exp is 30 s away, so a new one is signed.
    tokio::time::advance(Duration::from_secs(540)).await;
    let second = app.jwt().await.unwrap();
    assert_eq!(app.jwt_signatures(), 2);
    // A new clock offset retires the cached JWT at once.
    app.set_clock_offset(120);
    let third = app.jwt().await.unwrap();
    assert_eq!(app.jwt_signatures(), 3);
    assert_eq!(third.claims().iat - second.claims().iat, 120);
}

#[test]
fn jwt_lifetime_is_bounded_by_githubs_limit() {
    let key = PrivateKey::from_pem(read("vectors/octokit-jwt/private-key-pkcs1.pem")).unwrap();
    for seconds in [0, 59, 601, 3600] {
        let err = GitHubApp::builder(1).private_key(key.clone()).jwt_lifetime(Duration::from_secs(seconds)).build();
        assert_eq!(err.unwrap_err().kind(), ErrorKind::InvalidConfig, "{seconds}");
    }
    assert!(GitHubApp::builder(1).private_key(key.clone()).jwt_lifetime(Duration::from_secs(600)).build().is_ok());
    assert_eq!(GitHubApp::builder(0).private_key(key).build().unwrap_err().kind(), ErrorKind::InvalidConfig);
    assert_eq!(GitHubApp::builder(1).build().unwrap_err().kind(), ErrorKind::InvalidConfig);
}

#[test]
fn keys_that_cannot_sign_are_refused_with_directions() {
    let pkcs1 = read("vectors/octokit-jwt/private-key-pkcs1.pem");
    let body_line = pkcs1.lines().nth(1).unwrap().to_owned();
    let cases: Vec<(&str, String, &str)> = vec![
        ("openssh", read("vectors/octokit-jwt/private-key-openssh.txt"), "ssh-keygen -p -m PEM"),
        ("public key", read("vectors/octokit-jwt/public-key.pem"), "public key"),
        ("certificate", read("fixtures/certificate.pem"), "certificate"),
        ("encrypted pkcs8", read("fixtures/encrypted-pkcs8.pem"), "openssl pkey"),
        ("encrypted pkcs1", read("fixtures/encrypted-pkcs1.pem"), "openssl pkey"),
        ("ec sec1", read("fixtures/ec-sec1.pem"), "EC private key"),
        ("ec pkcs8", read("fixtures/ec-pkcs8.pem"), "EC private key"),
        ("ed25519", read("fixtures/ed25519-pkcs8.pem"), "Ed25519"),
        ("rsa 1024", read("fixtures/rsa-1024.pem"), "2048 bits"),
        ("empty", String::new(), "empty"),
        ("whitespace", "  \n ".into(), "empty"),
        ("truncated", pkcs1.lines().take(10).collect::<Vec<_>>().join("\n"), "truncated"),
        (
            "cut in the middle",
            pkcs1.lines().take(12).collect::<Vec<_>>().join("\n") + "\n-----END RSA PRIVATE KEY-----",
            "damaged",
        ),
        ("cut mid-line", pkcs1[..pkcs1.len() / 2].to_owned() + "\n-----END RSA PRIVATE KEY-----", "base64"),
        ("bad base64", pkcs1.replacen(&body_line, &"!".repeat(64), 1), "base64"),
        ("no pem", "just some text".into(), "no PEM block"),
        ("path", "/etc/keys/app.pem".into(), "file path"),
        ("ssh public", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host".into(), "SSH public key"),
        ("unknown label", "-----BEGIN FOO-----\nAAAA\n-----END FOO-----".into(), "FOO"),
    ];
    for (name, input, hint) in cases {
        let err = PrivateKey::from_pem(&input).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{name}");
        let text = format!("{err} {err:?}");
        assert!(text.contains(hint), "{name}: {text}");
        assert_no_secrets(&text, &[&body_line]);
    }
    let not_utf8 = PrivateKey::from_pem([0xff, 0xfe, 0x00]).unwrap_err();
    assert!(not_utf8.to_string().contains("DER"));
    assert_eq!(PrivateKey::from_der(&[0x30, 0x03, 0x02, 0x01]).unwrap_err().kind(), ErrorKind::InvalidKey);
}

#[test]
fn a_certificate_bundle_with_a_key_uses_the_key() {
    let bundle = format!("{}\n{}", read("fixtures/certificate.pem"), read("vectors/octokit-jwt/private-key-pkcs8.pem"));
    let key = PrivateKey::from_pem(bundle).unwrap();
    assert_eq!(format!("{key:?}"), "PrivateKey { format: \"PKCS#8\", bits: 2048, .. }");
}

/// A KMS signer whose first call misbehaves (never answers, or panics: the outside review's cases), then works.
#[derive(Clone)]
struct MisbehavesOnce {
    calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
    panics: bool,
}

impl MisbehavesOnce {
    fn hangs() -> Self {
        Self { calls: Default::default(), panics: false }
    }
    fn panics() -> Self {
        Self { calls: Default::default(), panics: true }
    }
}

impl tower_github_app::JwtSigner for MisbehavesOnce {
    fn sign<'a>(
        &'a self,
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, tower_github_app::BoxError>> + Send + 'a>>
    {
        let first = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        let panics = self.panics;
        Box::pin(async move {
            if first && panics {
                panic!("a bug in the KMS client");
            }
            if first {
                std::future::pending::<()>().await;
            }
            Ok(PrivateKey::from_pem(tower_github_app::testing::TEST_PRIVATE_KEY)?.sign_rs256(message)?)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_signer_that_never_answers_costs_a_typed_timeout_not_a_hang() {
    let signer = MisbehavesOnce::hangs();
    let app = GitHubApp::builder(1).signer(signer.clone()).sign_timeout(Duration::from_secs(5)).build().unwrap();
    // Ten callers at once: one signature in progress, everyone bounded by the sign timeout, nobody blocked by a
    // lock held across the signer's call.
    let started = tokio::time::Instant::now();
    let outcomes = futures_util::future::join_all((0..10).map(|_| app.jwt())).await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    for outcome in &outcomes {
        let error = outcome.as_ref().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert!(error.to_string().contains("signer"), "{error}");
    }
    assert_eq!(signer.calls.load(std::sync::atomic::Ordering::Relaxed), 1, "one signature in flight, shared");
    // The next caller tries again, and the signer answers this time.
    assert!(app.jwt().await.is_ok());
    assert_eq!(signer.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_signer_is_bounded_by_the_mint_timeout_too() {
    use tower_github_app::{Installation, testing::FakeGitHub};
    let github = FakeGitHub::start().await;
    // No sign timeout to speak of: the mint's own timeout must still bound the mint.
    let app = GitHubApp::builder(FakeGitHub::APP_ID)
        .signer(MisbehavesOnce::hangs())
        .sign_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let builder = Installation::builder(app, FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .mint_timeout(Duration::from_secs(20));
    let started = tokio::time::Instant::now();
    let error = builder.mint_once(github.client()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert!(error.to_string().contains("signing its JWT included"), "{error}");
    // The abandoned signature left nothing locked: the next mint signs and succeeds.
    assert!(builder.mint_once(github.client()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_caller_cancelled_while_signing_hands_over_to_the_next() {
    let signer = MisbehavesOnce::hangs();
    let app = GitHubApp::builder(1).signer(signer.clone()).build().unwrap();
    // The signing caller gives up after a second (its request timed out); a waiter then signs itself.
    let first = tokio::time::timeout(Duration::from_secs(1), app.jwt());
    let second = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        app.jwt().await
    };
    let (first, second) = tokio::join!(first, second);
    assert!(first.is_err(), "the first caller timed out");
    assert!(second.is_ok(), "{second:?}");
    assert_eq!(signer.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// A signer that panics (a bug in a KMS client) costs a typed `Signing` error, not a dead refresher reported as
/// a runtime shutting down, and not a panic in the caller's task.
#[tokio::test]
async fn a_panicking_signer_is_a_signing_error() {
    use tower_github_app::{Installation, testing::FakeGitHub};
    let github = FakeGitHub::start().await;
    let app = GitHubApp::builder(FakeGitHub::APP_ID).signer(MisbehavesOnce::panics()).build().unwrap();
    let installation = Installation::builder(app.clone(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .build(github.client())
        .unwrap();
    let error = installation.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Signing, "{error}");
    assert!(error.to_string().contains("panicked"), "{error}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(installation.token().await.is_ok(), "the refresher lived on and the next signature worked");
    assert_eq!(installation.stats().refresher_starts, 1);
}
