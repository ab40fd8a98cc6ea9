//! The fake GitHub answers in GitHub's shape: typed clients decode its answers as they decode GitHub's. The
//! structs below hold exactly the fields octocrab 0.54 (`models::Repository`, `Author`, `Installation`,
//! `InstallationRepositories`, `App`) cannot decode without, with URLs that must be absolute.

mod common;

use common::get;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tower::{Layer, ServiceExt};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::{Installation, InstallationAuthLayer};

/// A URL field as octocrab reads it (`url::Url`): absolute, with a scheme and a host.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct AbsoluteUrl(http::Uri);

impl TryFrom<String> for AbsoluteUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        // Templates such as `{/other_user}` are not part of the URL's authority.
        let uri: http::Uri = text.split('{').next().unwrap().parse().map_err(|e| format!("{text}: {e}"))?;
        if uri.scheme().is_some() && uri.host().is_some() {
            Ok(AbsoluteUrl(uri))
        } else {
            Err(format!("{text} is not absolute"))
        }
    }
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Author {
    login: String,
    id: u64,
    node_id: String,
    avatar_url: AbsoluteUrl,
    gravatar_id: String,
    url: AbsoluteUrl,
    html_url: AbsoluteUrl,
    followers_url: AbsoluteUrl,
    following_url: AbsoluteUrl,
    gists_url: AbsoluteUrl,
    starred_url: AbsoluteUrl,
    subscriptions_url: AbsoluteUrl,
    organizations_url: AbsoluteUrl,
    repos_url: AbsoluteUrl,
    events_url: AbsoluteUrl,
    received_events_url: AbsoluteUrl,
    r#type: String,
    site_admin: bool,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Repository {
    id: u64,
    name: String,
    full_name: String,
    url: AbsoluteUrl,
    html_url: AbsoluteUrl,
    owner: Author,
    private: bool,
    permissions: Option<Permissions>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Permissions {
    push: bool,
    pull: bool,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct InstallationRepositories {
    total_count: u64,
    repositories: Vec<Repository>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct InstallationJson {
    id: u64,
    account: Author,
    permissions: serde_json::Map<String, serde_json::Value>,
    events: Vec<String>,
    access_tokens_url: AbsoluteUrl,
    repositories_url: AbsoluteUrl,
    html_url: AbsoluteUrl,
    app_id: u64,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct App {
    id: u64,
    node_id: String,
    owner: Author,
    name: String,
    external_url: AbsoluteUrl,
    html_url: AbsoluteUrl,
    permissions: serde_json::Map<String, serde_json::Value>,
    events: Vec<String>,
}

async fn fetch<T: DeserializeOwned>(github: &FakeGitHub, installation: &Installation, path: &str) -> T {
    let service = InstallationAuthLayer::new(installation.clone()).layer(github.client());
    let response = service.oneshot(get(&format!("{}{path}", github.api_base()))).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn answers_decode_into_the_types_typed_clients_use() {
    for prefix in ["", "/api/v3"] {
        let github = FakeGitHub::builder().path_prefix(prefix).start().await;
        let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
            .api_base(&github.api_base())
            .build(github.client())
            .unwrap();

        let repository: Repository = fetch(&github, &installation, "/repos/octo-org/octo-repo").await;
        assert_eq!(repository.full_name, "octo-org/octo-repo");
        assert_eq!(repository.owner.login, "octo-org");
        assert_eq!(repository.url.0.to_string(), format!("{}/repos/octo-org/octo-repo", github.api_base()));

        let listed: InstallationRepositories = fetch(&github, &installation, "/installation/repositories").await;
        assert_eq!(listed.total_count, 2);
        assert_eq!(listed.repositories.len(), 2);

        for path in [
            "/repos/octo-org/octo-repo/installation",
            "/orgs/octo-org/installation",
            &format!("/app/installations/{}", FakeGitHub::INSTALLATION_ID),
        ] {
            let found: InstallationJson = fetch(&github, &installation, path).await;
            assert_eq!(found.id, FakeGitHub::INSTALLATION_ID, "{path}");
            assert_eq!(found.account.login, "octo-org");
        }
        let all: Vec<InstallationJson> = fetch(&github, &installation, "/app/installations").await;
        assert_eq!(all.len(), 1);
        let app: App = fetch(&github, &installation, "/app").await;
        assert_eq!(app.id, FakeGitHub::APP_ID);
    }
}
