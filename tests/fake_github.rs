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

/// `models::issues::Comment` of octocrab 0.54: the fields it cannot decode without.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Comment {
    id: u64,
    node_id: String,
    url: AbsoluteUrl,
    html_url: AbsoluteUrl,
    issue_url: Option<AbsoluteUrl>,
    body: Option<String>,
    author_association: Option<String>,
    user: Author,
    created_at: String,
    updated_at: Option<String>,
}

#[tokio::test]
async fn issue_comments_are_created_recorded_and_refused_like_github() {
    use bytes::Bytes;
    use http_body_util::Full;
    use tower_github_app::{AppAuthLayer, InstallationPool, TokenScope};

    let github = FakeGitHub::start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    let client = InstallationAuthLayer::new(installation).layer(github.client());
    let post = |path: &str, body: &'static str| {
        http::Request::post(format!("{}{path}", github.api_base()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let answer = |response: http::Response<hyper::body::Incoming>| async move {
        let status = response.status().as_u16();
        let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, location, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
    };

    let path = "/repos/octo-org/octo-repo/issues/7/comments";
    let response = client.clone().oneshot(post(path, r#"{"body":"Thanks!"}"#)).await.unwrap();
    let (status, location, json) = answer(response).await;
    assert_eq!(status, 201, "{json}");
    let html_url = json["html_url"].as_str().unwrap().to_owned();
    let comment: Comment = serde_json::from_value(json).unwrap();
    assert_eq!((comment.id, comment.body.as_deref()), (1, Some("Thanks!")));
    assert_eq!(comment.node_id, "MDEyOklzc3VlQ29tbWVudDE=");
    assert_eq!((comment.user.login.as_str(), comment.user.r#type.as_str()), ("fake-app[bot]", "Bot"));
    let url = format!("{}/repos/octo-org/octo-repo/issues/comments/1", github.api_base());
    assert_eq!(comment.url.0.to_string(), url);
    assert_eq!(location.as_deref(), Some(url.as_str()));
    assert_eq!(html_url, format!("{}/octo-org/octo-repo/issues/7#issuecomment-1", github.web_base()));
    assert!(humantime::parse_rfc3339(&comment.created_at).is_ok(), "{}", comment.created_at);
    let recorded = github.comments();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].id, recorded[0].installation, recorded[0].token_serial),
        (1, FakeGitHub::INSTALLATION_ID, 1)
    );
    assert_eq!(
        (recorded[0].owner.as_str(), recorded[0].repo.as_str(), recorded[0].issue),
        ("octo-org", "octo-repo", 7)
    );
    assert_eq!(recorded[0].body, "Thanks!");

    // Refused as GitHub refuses, and not recorded.
    for (path, body, status, message) in [
        (path, "{not json", 400, "Problems parsing JSON"),
        (path, r#"{"title":"no body"}"#, 422, "\"body\" wasn't supplied"),
        (path, r#"{"body":5}"#, 422, "is not a string"),
        (path, r#"{"body":""}"#, 422, "Validation Failed"),
        ("/repos/someone/else/issues/1/comments", r#"{"body":"hi"}"#, 404, "Not Found"),
        ("/repos/octo-org/octo-repo/issues/0/comments", r#"{"body":"hi"}"#, 404, "Not Found"),
        ("/repos/octo-org/octo-repo/issues/x/comments", r#"{"body":"hi"}"#, 404, "Not Found"),
    ] {
        let (got, _, json) = answer(client.clone().oneshot(post(path, body)).await.unwrap()).await;
        assert_eq!(got, status, "{path} {body}: {json}");
        assert!(json["message"].as_str().unwrap().contains(message), "{path} {body}: {json}");
    }
    // Without a token, and with a token that may only read issues.
    let (status, _, _) = answer(github.client().request(post(path, r#"{"body":"hi"}"#)).await.unwrap()).await;
    assert_eq!(status, 401);
    let pool = InstallationPool::builder(github.app()).api_base(&github.api_base()).build(github.client()).unwrap();
    let mut request = post(path, r#"{"body":"hi"}"#);
    request.extensions_mut().insert(TokenScope::new().permission("issues", "read"));
    let response = AppAuthLayer::new(pool).layer(github.client()).oneshot(request).await.unwrap();
    let (status, _, json) = answer(response).await;
    assert_eq!((status, json["message"].as_str()), (403, Some("Resource not accessible by integration")));
    assert_eq!(github.comments().len(), 1);
}
