//! GitHub-shaped answers for the fake server, rendered from the examples in GitHub's own REST API description
//! (`components.examples` of `api.github.com.json`, npm `@octokit/openapi` 23.0.2, API version 2022-11-28):
//!
//! | file | example | answers |
//! |---|---|---|
//! | `full-repository.json` | `full-repository-default-response` | `GET /repos/{owner}/{repo}` |
//! | `repository.json` | the item of `repository-paginated-2` | lists of repositories, token responses |
//! | `installation.json` | `installation` | `GET /app/installations`, `/…/installation` lookups |
//! | `integration.json` | `integration` | `GET /app` |
//! | `issue-comment.json` | `issue-comment` | `POST /repos/{owner}/{repo}/issues/{number}/comments` |
//!
//! The files are unchanged; rendering replaces the example's names (`octocat`, `Hello-World`), ids and URLs
//! (`https://api.github.com`, `https://github.com`) with the fixture's, so typed clients (octocrab and the like)
//! decode the fake's answers exactly as they decode GitHub's.

use std::collections::BTreeMap;

use serde_json::{Value, json};

const FULL_REPOSITORY: &str = include_str!("full-repository.json");
const REPOSITORY: &str = include_str!("repository.json");
const INSTALLATION: &str = include_str!("installation.json");
const INTEGRATION: &str = include_str!("integration.json");
const ISSUE_COMMENT: &str = include_str!("issue-comment.json");

/// The fake's Apps' slug: their bot user is `fake-app[bot]`.
pub(super) const APP_SLUG: &str = "fake-app";

/// Where the fake server answers: the URLs inside its answers point there.
#[derive(Debug, Clone)]
pub(super) struct Urls {
    /// `http://127.0.0.1:PORT` plus the API path prefix.
    pub(super) api: String,
    /// `http://127.0.0.1:PORT` (the "web" host).
    pub(super) web: String,
}

/// A stable id for a name (GitHub's ids are numbers; the fixture's only need to be stable and distinct).
pub(super) fn id_of(name: &str) -> u64 {
    name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 1_000_000_000 + 1
}

fn render(template: &str, urls: &Urls, owner: &str, name: &str) -> Value {
    let text = template
        .replace("https://api.github.com", &urls.api)
        .replace("https://github.com", &urls.web)
        .replace("https://uploads.github.com", &urls.web)
        .replace("octocat/Hello-World", &format!("{owner}/{name}"))
        .replace("/octocat", &format!("/{owner}"))
        .replace("\"octocat\"", &format!("{owner:?}"))
        .replace("Hello-World", name);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Sets the account object's login and ids (`owner` of a repository, `account` of an installation).
fn set_account(account: &mut Value, login: &str, kind: &str) {
    if let Value::Object(account) = account {
        account.insert("login".into(), json!(login));
        account.insert("id".into(), json!(id_of(login)));
        account.insert("type".into(), json!(kind));
    }
}

fn account_kind(login: &str) -> &'static str {
    if login.ends_with("-org") || login.contains("org") { "Organization" } else { "User" }
}

/// `GET /repos/{owner}/{repo}`: the full repository.
pub(super) fn full_repository(urls: &Urls, full_name: &str, private: bool) -> Value {
    repository_from(FULL_REPOSITORY, urls, full_name, private)
}

/// A repository as lists and token responses show it.
pub(super) fn repository(urls: &Urls, full_name: &str, private: bool) -> Value {
    repository_from(REPOSITORY, urls, full_name, private)
}

fn repository_from(template: &str, urls: &Urls, full_name: &str, private: bool) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let mut value = render(template, urls, owner, name);
    value["id"] = json!(id_of(full_name));
    value["private"] = json!(private);
    value["visibility"] = json!(if private { "private" } else { "public" });
    set_account(&mut value["owner"], owner, account_kind(owner));
    // The example's organization (on full repositories) is the owner when the owner is an organization.
    if value.get("organization").is_some() {
        set_account(&mut value["organization"], owner, "Organization");
    }
    value
}

/// An installation of `app_id` on `account`.
pub(super) fn installation(
    urls: &Urls,
    id: u64,
    app_id: u64,
    client_id: &str,
    account: &str,
    access: Access<'_>,
) -> Value {
    let Access { permissions, suspended, all_repositories } = access;
    let mut value = render(INSTALLATION, urls, account, "");
    let kind = account_kind(account);
    value["id"] = json!(id);
    value["app_id"] = json!(app_id);
    value["client_id"] = json!(client_id);
    value["app_slug"] = json!(APP_SLUG);
    value["target_id"] = json!(id_of(account));
    value["target_type"] = json!(kind);
    value["repository_selection"] = json!(if all_repositories { "all" } else { "selected" });
    value["permissions"] = json!(permissions);
    value["access_tokens_url"] = json!(format!("{}/app/installations/{id}/access_tokens", urls.api));
    value["html_url"] = json!(format!("{}/organizations/{account}/settings/installations/{id}", urls.web));
    if !suspended {
        value["suspended_at"] = Value::Null;
        value["suspended_by"] = Value::Null;
    } else if value["suspended_at"].is_null() {
        value["suspended_at"] = json!("2026-01-01T00:00:00Z");
    }
    set_account(&mut value["account"], account, kind);
    value
}

/// What an installation may do: its permissions, whether it is suspended, and whether it covers all of its
/// account's repositories.
pub(super) struct Access<'a> {
    pub(super) permissions: &'a BTreeMap<String, String>,
    pub(super) suspended: bool,
    pub(super) all_repositories: bool,
}

/// `GET /app`.
pub(super) fn app(urls: &Urls, id: u64, client_id: &str) -> Value {
    let mut value = render(INTEGRATION, urls, "octo-org", "");
    value["id"] = json!(id);
    value["client_id"] = json!(client_id);
    value["slug"] = json!(APP_SLUG);
    value["name"] = json!("Fake App");
    set_account(&mut value["owner"], "octo-org", "Organization");
    value
}

/// An issue comment the App's bot user wrote (`{slug}[bot]`, type `Bot`), as
/// `POST /repos/{owner}/{repo}/issues/{number}/comments` answers it.
pub(super) fn issue_comment(urls: &Urls, full_name: &str, number: u64, id: u64, body: &str, at: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let mut value = render(ISSUE_COMMENT, urls, owner, name);
    let bot = format!("{APP_SLUG}[bot]");
    // The user's URLs name the bot (`/users/fake-app%5Bbot%5D`), not the repository's owner.
    let mut user = render(ISSUE_COMMENT, urls, &format!("{APP_SLUG}%5Bbot%5D"), "")["user"].take();
    user["login"] = json!(bot);
    user["id"] = json!(id_of(&bot));
    user["type"] = json!("Bot");
    user["html_url"] = json!(format!("{}/apps/{APP_SLUG}", urls.web));
    value["user"] = user;
    value["id"] = json!(id);
    // GitHub's legacy global id: base64 of "012:IssueComment{id}", as in the example.
    value["node_id"] =
        json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("012:IssueComment{id}")));
    value["url"] = json!(format!("{}/repos/{full_name}/issues/comments/{id}", urls.api));
    value["html_url"] = json!(format!("{}/{full_name}/issues/{number}#issuecomment-{id}", urls.web));
    value["issue_url"] = json!(format!("{}/repos/{full_name}/issues/{number}", urls.api));
    value["body"] = json!(body);
    value["created_at"] = json!(at);
    value["updated_at"] = json!(at);
    value["author_association"] = json!("NONE");
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Urls {
        Urls { api: "http://127.0.0.1:1/api/v3".into(), web: "http://127.0.0.1:1".into() }
    }

    #[test]
    fn templates_parse_and_take_the_fixtures_names() {
        let repo = full_repository(&urls(), "octo-org/octo-repo", true);
        assert_eq!(repo["full_name"], "octo-org/octo-repo");
        assert_eq!(repo["name"], "octo-repo");
        assert_eq!(repo["owner"]["login"], "octo-org");
        assert_eq!(repo["url"], "http://127.0.0.1:1/api/v3/repos/octo-org/octo-repo");
        assert_eq!(repo["html_url"], "http://127.0.0.1:1/octo-org/octo-repo");
        assert_eq!(repo["private"], true);
        assert!(!repo.to_string().contains("octocat") && !repo.to_string().contains("Hello-World"));
        assert!(!repo.to_string().contains("https://api.github.com"));
        let listed = repository(&urls(), "octo-org/octo-lib", false);
        assert_eq!(listed["full_name"], "octo-org/octo-lib");
        let installation = installation(
            &urls(),
            42,
            1,
            "Iv1.x",
            "octo-org",
            Access { permissions: &BTreeMap::new(), suspended: false, all_repositories: false },
        );
        assert_eq!(installation["id"], 42);
        assert_eq!(installation["account"]["login"], "octo-org");
        assert_eq!(installation["account"]["type"], "Organization");
        assert_eq!(app(&urls(), 1, "Iv1.x")["id"], 1);
    }

    #[test]
    fn issue_comment_is_the_bots() {
        let comment = issue_comment(&urls(), "octo-org/octo-repo", 7, 1, "Thanks!", "2026-01-02T03:04:05Z");
        assert_eq!(comment["id"], 1);
        assert_eq!(comment["node_id"], "MDEyOklzc3VlQ29tbWVudDE=", "the example's own node id for id 1");
        assert_eq!(comment["body"], "Thanks!");
        assert_eq!(comment["user"]["login"], "fake-app[bot]");
        assert_eq!(comment["user"]["type"], "Bot");
        assert_eq!(comment["user"]["url"], "http://127.0.0.1:1/api/v3/users/fake-app%5Bbot%5D");
        assert_eq!(comment["html_url"], "http://127.0.0.1:1/octo-org/octo-repo/issues/7#issuecomment-1");
        assert_eq!(comment["issue_url"], "http://127.0.0.1:1/api/v3/repos/octo-org/octo-repo/issues/7");
        assert_eq!(comment["created_at"], "2026-01-02T03:04:05Z");
        assert!(!comment.to_string().contains("octocat") && !comment.to_string().contains("Hello-World"));
    }
}
