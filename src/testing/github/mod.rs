//! GitHub-shaped answers for the fake server, rendered from the examples in GitHub's own REST API description
//! (`components.examples` of `api.github.com.json`, npm `@octokit/openapi` 23.0.2, API version 2022-11-28):
//!
//! | file | example | answers |
//! |---|---|---|
//! | `full-repository.json` | `full-repository-default-response` | `GET /repos/{owner}/{repo}` |
//! | `repository.json` | the item of `repository-paginated-2` | lists of repositories, token responses |
//! | `installation.json` | `installation` | `GET /app/installations`, `/…/installation` lookups |
//! | `integration.json` | `integration` | `GET /app` |
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
    value["app_slug"] = json!("fake-app");
    value["target_id"] = json!(id_of(account));
    value["target_type"] = json!(kind);
    value["repository_selection"] = json!(if all_repositories { "all" } else { "selected" });
    value["permissions"] = json!(permissions);
    value["access_tokens_url"] = json!(format!("{}/app/installations/{id}/access_tokens", urls.api));
    value["html_url"] = json!(format!("{}/organizations/{account}/settings/installations/{id}", urls.web));
    if !suspended {
        value["suspended_at"] = Value::Null;
        value["suspended_by"] = Value::Null;
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
    value["slug"] = json!("fake-app");
    value["name"] = json!("Fake App");
    set_account(&mut value["owner"], "octo-org", "Organization");
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
}
