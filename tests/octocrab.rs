//! octocrab's typed API over this crate's stack (feature `octocrab`), against the fake GitHub.
#![cfg(feature = "octocrab")]

use tower_github_app::octocrab::{OctocrabStack, octocrab};
use tower_github_app::testing::{Credential, FakeGitHub};
use tower_github_app::{AppAuthLayer, Installation, InstallationAuthLayer, InstallationPool};

fn installation(github: &FakeGitHub) -> Installation {
    Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap()
}

#[tokio::test]
async fn typed_calls_carry_one_background_token() {
    let github = FakeGitHub::start().await;
    let octocrab = octocrab(InstallationAuthLayer::new(installation(&github))).unwrap();
    for _ in 0..20 {
        let repo = octocrab.repos("octo-org", "octo-repo").get().await.unwrap();
        assert_eq!(repo.full_name.as_deref(), Some("octo-org/octo-repo"));
    }
    assert_eq!(github.mint_count(), 1);
    let requests: Vec<_> = github.requests().into_iter().filter(|r| r.path == "/repos/octo-org/octo-repo").collect();
    assert_eq!(requests.len(), 20);
    assert!(requests.iter().all(|r| matches!(r.credential, Credential::InstallationToken { .. }) && r.status == 200));

    // A repository outside the installation: GitHub's 404, as octocrab's typed error.
    let error = octocrab.repos("someone", "else").get().await.unwrap_err();
    assert!(matches!(error, ::octocrab::Error::GitHub { ref source, .. } if source.status_code == 404), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_revoked_token_is_replaced_and_the_call_retried() {
    let github = FakeGitHub::start().await;
    let octocrab = octocrab(InstallationAuthLayer::new(installation(&github))).unwrap();
    octocrab.repos("octo-org", "octo-repo").get().await.unwrap();
    // A minute on (paused time), past replication lag: a 401 now means the token was revoked.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    github.revoke_all_tokens();
    // The 401 is retried once with a new token: the caller sees the repository.
    let repo = octocrab.repos("octo-org", "octo-lib").get().await.unwrap();
    assert_eq!(repo.name, "octo-lib");
    assert_eq!(github.mint_count(), 2);
    let statuses: Vec<u16> =
        github.requests().into_iter().filter(|r| r.path == "/repos/octo-org/octo-lib").map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200]);
}

#[tokio::test]
async fn one_octocrab_for_every_installation_and_the_apps_own_routes() {
    let github =
        FakeGitHub::builder().installation(7, FakeGitHub::APP_ID, "octocat", &["octocat/hello-world"]).start().await;
    let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
    let octocrab = OctocrabStack::new(AppAuthLayer::new(pool.clone())).user_agent("my-app").build().unwrap();
    let a = octocrab.repos("octo-org", "octo-repo").get().await.unwrap();
    let b = octocrab.repos("octocat", "hello-world").get().await.unwrap();
    assert_eq!((a.name.as_str(), b.name.as_str()), ("octo-repo", "hello-world"));
    let installations = octocrab.apps().installations().send().await.unwrap();
    let mut ids: Vec<u64> = installations.items.iter().map(|i| i.id.0).collect();
    ids.sort();
    assert_eq!(ids, [7, FakeGitHub::INSTALLATION_ID]);
    assert_eq!(github.mint_count(), 2, "one token per installation; the App's route took the JWT");
    assert_eq!(pool.stats().lookups, 2);
}

#[tokio::test]
async fn a_redirect_to_another_host_carries_no_token() {
    let github = FakeGitHub::start().await;
    let elsewhere = FakeGitHub::start().await;
    let octocrab = octocrab(InstallationAuthLayer::new(installation(&github))).unwrap();
    let target = format!("{}/repos/octo-org/octo-repo", elsewhere.api_base()).replace(':', "%3A").replace('/', "%2F");
    let response = octocrab._get(format!("/redirect?to={target}")).await.unwrap();
    // The other server wants a token of its own: 401, and it saw none of ours.
    assert_eq!(response.status(), 401);
    let seen = elsewhere.requests();
    assert_eq!(seen.len(), 1);
    assert!(matches!(seen[0].credential, Credential::None), "{:?}", seen[0].credential);
    // The first hop, to the installation's own API, carried the token.
    assert!(matches!(github.requests()[1].credential, Credential::InstallationToken { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_refused_post_is_replayed_with_its_body() {
    let github = FakeGitHub::start().await;
    let octocrab = octocrab(InstallationAuthLayer::new(installation(&github))).unwrap();
    octocrab.repos("octo-org", "octo-repo").get().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    github.revoke_all_tokens();
    // octocrab buffers the JSON body it sends: the retry after the 401 sends it again, whole.
    let comment = octocrab.issues("octo-org", "octo-repo").create_comment(7, "Thanks for the report!").await.unwrap();
    assert_eq!(comment.body.as_deref(), Some("Thanks for the report!"));
    let comments = github.comments();
    assert_eq!(comments.len(), 1);
    assert_eq!((comments[0].issue, comments[0].body.as_str()), (7, "Thanks for the report!"));
    let statuses: Vec<u16> = github
        .requests()
        .into_iter()
        .filter(|r| r.path == "/repos/octo-org/octo-repo/issues/7/comments")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401, 201]);
    assert_eq!(github.mint_count(), 2);
}
