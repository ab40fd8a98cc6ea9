//! The webhook bot of `examples/webhook_bot.rs`, driven in process (its axum `Router` as a tower service) against
//! the fake GitHub: signatures are checked before anything else happens, one token per installation serves every
//! comment, `installation` events make the pool drop tokens and lookups, and no answer ever carries a token.

mod common;

#[allow(dead_code)]
#[path = "../examples/webhook_bot.rs"]
mod webhook_bot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_github_app::testing::{Credential, FakeGitHub, FakeGitHubBuilder, TokenState};
use tower_github_app::webhook::WebhookSecret;
use tower_github_app::{InstallationFor, InstallationPool};
use webhook_bot::{Bot, MAX_PAYLOAD, THANKS, USER_AGENT, deliveries, router};

const SECRET: &str = "the webhook secret GitHub and the bot share";

/// The fake GitHub, the bot's pool and router, and GitHub's side of the secret.
struct Harness {
    github: FakeGitHub,
    pool: InstallationPool,
    bot: axum::Router,
    /// What GitHub signs deliveries with.
    hookshot: WebhookSecret,
    /// Every answer the bot gave, for the secret checks.
    answers: Arc<Mutex<Vec<String>>>,
}

async fn harness(github: FakeGitHubBuilder) -> Harness {
    let github = github.start().await;
    let pool = InstallationPool::builder(github.app())
        .api_base(&github.api_base())
        .user_agent(USER_AGENT)
        .build(github.client())
        .unwrap();
    let bot = router(Bot::new(WebhookSecret::new(SECRET).unwrap(), pool.clone(), github.client()));
    Harness { github, pool, bot, hookshot: WebhookSecret::new(SECRET).unwrap(), answers: Default::default() }
}

/// The default fixtures plus three more installations, each on its own account.
fn four_installations() -> FakeGitHubBuilder {
    FakeGitHub::builder()
        .installation_on_all(101, FakeGitHub::APP_ID, "octo-cat", &["octo-cat/hello"])
        .installation(102, FakeGitHub::APP_ID, "mona", &["mona/lisa"])
        .installation_on_all(103, FakeGitHub::APP_ID, "hubot", &["hubot/brain"])
}

/// Installation, owner and repository of the four installations.
const INSTALLATIONS: [(u64, &str, &str); 4] =
    [(42, "octo-org", "octo-repo"), (101, "octo-cat", "hello"), (102, "mona", "lisa"), (103, "hubot", "brain")];

impl Harness {
    /// Sends one delivery; returns the bot's status and text. No answer carries anything shaped like a token.
    async fn deliver(&self, event: &str, payload: Bytes, signature: Option<&str>) -> (StatusCode, String) {
        let request = deliveries::request::<Body>("/webhook", event, payload, signature);
        let response = self.bot.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        common::assert_no_secrets(&text, &[SECRET]);
        self.answers.lock().unwrap().push(text.clone());
        (status, text)
    }

    /// Sends a delivery signed as GitHub signs it.
    async fn signed(&self, event: &str, payload: Bytes) -> (StatusCode, String) {
        let signature = self.hookshot.sign(&payload);
        self.deliver(event, payload, Some(&signature)).await
    }

    async fn issue_opened(&self, installation: u64, owner: &str, repo: &str, number: u64) -> (StatusCode, String) {
        self.signed("issues", deliveries::issues_opened(installation, owner, repo, number)).await
    }

    /// Mints per installation, as the fake GitHub saw them.
    fn mints_by_installation(&self) -> BTreeMap<u64, usize> {
        let mut mints = BTreeMap::new();
        for mint in self.github.mint_log() {
            *mints.entry(mint.installation).or_default() += 1;
        }
        mints
    }

    /// Asserts that GitHub saw nothing at all: no request, no mint, no lookup, no comment.
    fn assert_github_untouched(&self) {
        assert_eq!(self.github.requests().len(), 0, "{:?}", self.github.requests());
        assert_eq!(self.github.mint_attempts(), 0);
        assert_eq!(self.github.mint_count(), 0);
        assert_eq!(self.github.lookup_count(), 0);
        assert!(self.github.comments().is_empty());
        let stats = self.pool.stats();
        assert_eq!((stats.mints, stats.lookups, stats.entries, stats.waited_requests), (0, 0, 0, 0));
    }
}

#[tokio::test]
async fn a_signed_issue_opened_gets_one_comment_with_one_mint() {
    let h = harness(FakeGitHub::builder()).await;
    let (status, text) = h.issue_opened(42, "octo-org", "octo-repo", 7).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "commented on octo-org/octo-repo#7"));

    let comments = h.github.comments();
    assert_eq!(comments.len(), 1);
    let comment = &comments[0];
    assert_eq!((comment.installation, comment.token_serial), (42, 1));
    assert_eq!((comment.owner.as_str(), comment.repo.as_str(), comment.issue), ("octo-org", "octo-repo", 7));
    assert_eq!(comment.body, THANKS);
    assert_eq!(h.github.mint_count(), 1);
    assert_eq!(h.github.mint_log()[0].installation, 42);
    // The installation came from the payload: no lookup.
    assert_eq!(h.github.lookup_count(), 0);
    assert_eq!((h.pool.stats().mints, h.pool.stats().lookups), (1, 0));
    // The comment request carried the installation's valid token, and GitHub created the comment at once.
    let posts: Vec<_> = h.github.requests().into_iter().filter(|r| r.path.ends_with("/comments")).collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].status, 201);
    assert!(matches!(
        posts[0].credential,
        Credential::InstallationToken { installation_id: 42, serial: 1, state: TokenState::Valid }
    ));

    // The next issue takes the same token.
    let (status, _) = h.issue_opened(42, "octo-org", "octo-lib", 8).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.github.comments().len(), 2);
    assert_eq!(h.github.comments()[1].token_serial, 1);
    assert_eq!(h.github.mint_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_deliveries_mints_once_per_installation() {
    let h = Arc::new(harness(four_installations()).await);
    let deliveries: Vec<_> = (0..200u64)
        .map(|i| {
            let h = Arc::clone(&h);
            let (installation, owner, repo) = INSTALLATIONS[i as usize % INSTALLATIONS.len()];
            tokio::spawn(async move { h.issue_opened(installation, owner, repo, i + 1).await })
        })
        .collect();
    for delivery in deliveries {
        let (status, text) = delivery.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    // One mint per installation, whatever the interleaving.
    assert_eq!(h.github.mint_count(), 4);
    let one_each: BTreeMap<u64, usize> = INSTALLATIONS.iter().map(|(id, ..)| (*id, 1)).collect();
    assert_eq!(h.mints_by_installation(), one_each);
    let stats = h.pool.stats();
    assert_eq!((stats.mints, stats.failed_mints, stats.lookups, stats.entries), (4, 0, 0, 4));
    assert_eq!(h.github.lookup_count(), 0);

    // A comment each, on the right issue, by the right installation, with that installation's one token.
    let serials: BTreeMap<u64, u64> = h.github.mint_log().iter().map(|m| (m.installation, m.serial)).collect();
    let comments = h.github.comments();
    assert_eq!(comments.len(), 200);
    let expected: BTreeSet<(u64, String, String, u64)> = (0..200u64)
        .map(|i| {
            let (installation, owner, repo) = INSTALLATIONS[i as usize % INSTALLATIONS.len()];
            (installation, owner.to_owned(), repo.to_owned(), i + 1)
        })
        .collect();
    let got: BTreeSet<(u64, String, String, u64)> =
        comments.iter().map(|c| (c.installation, c.owner.clone(), c.repo.clone(), c.issue)).collect();
    assert_eq!(got, expected);
    for comment in &comments {
        assert_eq!(comment.body, THANKS);
        assert_eq!(comment.token_serial, serials[&comment.installation]);
    }
    // Every comment request was accepted the first time: no refusal, no retry.
    let posts: Vec<_> = h.github.requests().into_iter().filter(|r| r.path.ends_with("/comments")).collect();
    assert_eq!(posts.len(), 200);
    assert!(posts.iter().all(|r| r.status == 201));
}

#[tokio::test]
async fn deliveries_without_a_good_signature_are_refused_before_anything_else() {
    let h = harness(FakeGitHub::builder()).await;
    let payload = deliveries::issues_opened(42, "octo-org", "octo-repo", 1);
    let genuine = h.hookshot.sign(&payload);
    let forged = WebhookSecret::new("a guess").unwrap().sign(&payload);
    let of_another_body = h.hookshot.sign(&deliveries::issues_opened(42, "octo-org", "octo-repo", 2));
    let truncated = &genuine[..genuine.len() - 2];
    // What GitHub sends in the older X-Hub-Signature header, made with the right secret: still refused.
    let sha1 = {
        use aws_lc_rs::hmac;
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET.as_bytes());
        let tag = hmac::sign(&key, &payload);
        format!("sha1={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("forged", Some(&forged), "does not match"),
        ("missing", None, "has no X-Hub-Signature-256"),
        ("sha1", Some(&sha1), "does not start with `sha256=`"),
        ("another body's", Some(&of_another_body), "does not match"),
        ("truncated", Some(truncated), "62 characters"),
    ];
    for (case, signature, says) in cases {
        let (status, text) = h.deliver("issues", payload.clone(), signature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {text}");
        assert!(text.contains(says), "{case}: {text}");
        assert!(!text.contains(&genuine[7..]), "{case}: the expected signature leaked: {text}");
    }
    // Not JSON, badly signed: refused for the signature (401), not for the JSON (400): nothing was parsed.
    let (status, _) = h.deliver("issues", Bytes::from_static(b"{not json"), Some(&forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An installation event with a forged signature does not reach the pool.
    let (status, _) = h.deliver("installation", deliveries::installation("deleted", 42, "octo-org"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    h.assert_github_untouched();
}

#[tokio::test]
async fn ping_other_events_and_bad_payloads() {
    let h = harness(FakeGitHub::builder()).await;
    assert_eq!(
        h.signed("ping", Bytes::from_static(br#"{"zen":"Keep it logically awesome."}"#)).await.0,
        StatusCode::OK
    );
    assert_eq!(h.signed("push", Bytes::from_static(br#"{"ref":"refs/heads/main"}"#)).await.0, StatusCode::NO_CONTENT);
    // An issue closed: ignored.
    let mut closed: serde_json::Value =
        serde_json::from_slice(&deliveries::issues_opened(42, "octo-org", "octo-repo", 1)).unwrap();
    closed["action"] = "closed".into();
    assert_eq!(h.signed("issues", Bytes::from(closed.to_string())).await.0, StatusCode::NO_CONTENT);
    // An installation event the bot has nothing to do for.
    let unknown = deliveries::installation("renamed", 42, "octo-org");
    assert_eq!(h.signed("installation", unknown).await.0, StatusCode::NO_CONTENT);

    // Well signed, but not the JSON the event has: 400.
    for (event, payload) in [
        ("issues", &b"{not json"[..]),
        ("issues", br#"{"action":"opened"}"#),
        ("installation", b"[]"),
        ("installation_repositories", br#"{"action":"added"}"#),
    ] {
        let (status, text) = h.signed(event, Bytes::copy_from_slice(payload)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{event} {payload:?}: {text}");
    }
    // No installation (a repository's own webhook), or a repository name that is not one.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&deliveries::issues_opened(42, "octo-org", "octo-repo", 1)).unwrap();
    payload.as_object_mut().unwrap().remove("installation");
    let (status, text) = h.signed("issues", Bytes::from(payload.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = h.issue_opened(42, "octo-org", "..", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    h.assert_github_untouched();
}

#[tokio::test]
async fn installation_deleted_on_github_its_token_is_never_presented_again() {
    let h = harness(FakeGitHub::builder()).await;
    assert_eq!(h.issue_opened(42, "octo-org", "octo-repo", 1).await.0, StatusCode::OK);
    let token = h.pool.token(InstallationFor::Id(42), None).await.unwrap();
    assert_eq!(h.github.mint_count(), 1, "the pool's token is the one the comment used");

    // The App is uninstalled: GitHub revokes the tokens and tells the bot.
    h.github.delete_installation(42);
    let (status, text) = h.signed("installation", deliveries::installation("deleted", 42, "octo-org")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "forgot installation 42"));
    assert_eq!(h.pool.stats().entries, 0);

    // A late delivery for it: the pool asks GitHub for a new token rather than presenting the old one, and GitHub
    // refuses (404); nothing is commented.
    let seen = h.github.requests().len();
    let (status, text) = h.issue_opened(42, "octo-org", "octo-repo", 2).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("installation 42 was not found"), "{text}");
    assert_eq!(h.github.mint_attempts(), 2);
    assert_eq!(h.github.mint_count(), 1);
    assert_eq!(h.github.comments().len(), 1);
    let after = &h.github.requests()[seen..];
    assert!(!after.iter().any(|r| matches!(r.credential, Credential::InstallationToken { .. })), "{after:?}");
    assert!(after.iter().all(|r| !r.path.ends_with("/comments")), "{after:?}");

    // No answer carried the token, the expired or the live one.
    for answer in h.answers.lock().unwrap().iter() {
        common::assert_no_secrets(answer, &[token.expose_secret()]);
    }
}

#[tokio::test]
async fn installation_events_make_the_next_delivery_mint_anew() {
    let h = harness(FakeGitHub::builder()).await;
    assert_eq!(h.issue_opened(42, "octo-org", "octo-repo", 1).await.0, StatusCode::OK);
    // The installation stays on the fake GitHub: each forgetting shows as a new mint and a comment with its token.
    for (n, action) in (2..).zip(["deleted", "suspend", "new_permissions_accepted"]) {
        let (status, text) = h.signed("installation", deliveries::installation(action, 42, "octo-org")).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "forgot installation 42"), "{action}");
        assert_eq!(h.issue_opened(42, "octo-org", "octo-repo", n).await.0, StatusCode::OK);
        assert_eq!(h.github.mint_count(), n, "after {action}");
        assert_eq!(h.github.comments().last().unwrap().token_serial, n, "after {action}");
    }
    // `created` drops lookups, not tokens.
    let (status, text) = h.signed("installation", deliveries::installation("created", 42, "octo-org")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "forgot lookups of octo-org"));
    assert_eq!(h.issue_opened(42, "octo-org", "octo-repo", 5).await.0, StatusCode::OK);
    assert_eq!(h.github.mint_count(), 4);
    // `unsuspend` drops both (a suspended installation's failed mint must not be waited out).
    let (status, text) = h.signed("installation", deliveries::installation("unsuspend", 42, "octo-org")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "forgot installation 42 and lookups of octo-org"));
    assert_eq!(h.issue_opened(42, "octo-org", "octo-repo", 6).await.0, StatusCode::OK);
    assert_eq!(h.github.mint_count(), 5);
    assert_eq!(h.github.comments().len(), 6);
}

#[tokio::test]
async fn installation_repositories_drops_the_accounts_lookups() {
    let h = harness(FakeGitHub::builder()).await;
    let by_account = || h.pool.token(InstallationFor::Account("octo-org".into()), None);
    by_account().await.unwrap();
    by_account().await.unwrap();
    assert_eq!(h.github.lookup_count(), 1, "a lookup is cached");

    let payload = deliveries::installation("added", 42, "octo-org");
    let (status, text) = h.signed("installation_repositories", payload).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "forgot lookups of octo-org"));
    by_account().await.unwrap();
    assert_eq!(h.github.lookup_count(), 2, "looked up again");
    // The token itself was not dropped.
    assert_eq!(h.github.mint_count(), 1);
}

#[tokio::test]
async fn payloads_up_to_githubs_25_mb_are_taken() {
    let h = harness(FakeGitHub::builder()).await;
    // Exactly the limit (axum's own default is 2 MB): the payload padded with whitespace, which JSON allows.
    let mut payload = deliveries::issues_opened(42, "octo-org", "octo-repo", 1).to_vec();
    payload.resize(MAX_PAYLOAD, b' ');
    let (status, text) = h.signed("issues", Bytes::from(payload)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(h.github.comments().len(), 1);

    // One byte more: refused before the signature is even looked at.
    let mut payload = deliveries::issues_opened(42, "octo-org", "octo-repo", 2).to_vec();
    payload.resize(MAX_PAYLOAD + 1, b' ');
    let (status, _) = h.signed("issues", Bytes::from(payload)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.github.comments().len(), 1);
    assert_eq!(h.github.mint_count(), 1);
}

#[tokio::test]
async fn a_delivery_handled_once_is_not_handled_again_but_a_failed_one_is() {
    let h = harness(FakeGitHub::builder()).await;
    let payload = deliveries::issues_opened(42, "octo-org", "octo-repo", 1);
    let signature = h.hookshot.sign(&payload);
    let send = |payload: Bytes| {
        let mut request = deliveries::request::<Body>("/webhook", "issues", payload, Some(&signature));
        request.headers_mut().insert("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap());
        let bot = h.bot.clone();
        async move {
            let response = bot.oneshot(request).await.unwrap();
            let status = response.status();
            (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
        }
    };
    // Replayed (by GitHub's "Redeliver" button or by whoever captured it): handled once, one comment.
    assert_eq!(send(payload.clone()).await, (StatusCode::OK, "commented on octo-org/octo-repo#1".into()));
    for _ in 0..3 {
        assert_eq!(send(payload.clone()).await, (StatusCode::OK, "already handled".into()));
    }
    assert_eq!(h.github.comments().len(), 1);

    // A delivery that failed (GitHub refused the comment) is handled when it comes again.
    let payload = deliveries::issues_opened(42, "octo-org", "octo-repo", 2);
    let failing = h.hookshot.sign(&payload);
    let retried = |failing: String| {
        let mut request = deliveries::request::<Body>("/webhook", "issues", payload.clone(), Some(&failing));
        request.headers_mut().insert("x-github-delivery", "0b989ba4-242f-11e5-81e1-c7b6b3e8f9e9".parse().unwrap());
        h.bot.clone().oneshot(request)
    };
    h.github.set_suspended(42, true);
    let (status, _) = h.signed("installation", deliveries::installation("suspend", 42, "octo-org")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retried(failing.clone()).await.unwrap().status(), StatusCode::BAD_GATEWAY);
    h.github.set_suspended(42, false);
    let (status, _) = h.signed("installation", deliveries::installation("unsuspend", 42, "octo-org")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retried(failing).await.unwrap().status(), StatusCode::OK);
    assert_eq!(h.github.comments().len(), 2);
}
