//! A GitHub App webhook bot on axum: it thanks whoever opens an issue, with a comment made through one shared
//! tower stack for every installation of the App.
//!
//! ```text
//! cargo run --example webhook_bot --features test-util                # demo: fake GitHub on 127.0.0.1, no network
//!
//! GITHUB_APP_ID=123456 GITHUB_APP_KEY_FILE=app.pem WEBHOOK_SECRET=... BIND=0.0.0.0:3000 \
//!     cargo run --example webhook_bot --features test-util,hyper-client   # for real (GITHUB_API_URL for GHES)
//! ```
//!
//! `POST /webhook`, per delivery:
//! 1. the raw body (at most 25 MB, GitHub's largest payload) is checked against `X-Hub-Signature-256` with
//!    [`WebhookSecret`] **before anything is parsed**: a missing, malformed or wrong signature gets `401`, and
//!    nothing else happens (no parsing, no GitHub call);
//! 2. `issues` `opened`: a comment on the issue, as the installation named by the payload's `installation.id`
//!    (an [`InstallationFor::Id`] request extension, so the pool needs no lookup), through
//!    `Timeout` → `RetryLayer<RetryOn401Policy>` → `AppAuthLayer<InstallationPool>` → the HTTP client;
//! 3. `installation` `deleted`/`suspend`/`new_permissions_accepted`: `pool.forget_installation(id)` (its tokens
//!    stop being used at once); `created` and `installation_repositories`: `pool.forget_account(login)` (what
//!    lookups said about the account is stale); `unsuspend`: both (and the failed mint is forgotten too);
//! 4. `ping`: `200`; any other event or action: `204`; a payload that is not the JSON the event needs: `400`.
//!
//! A delivery handled once (answered `2xx`) is not handled again: its `X-GitHub-Delivery` id is remembered for a
//! day (100,000 at most), so a captured delivery replayed by someone else is answered `200` and ignored, while
//! GitHub's redelivery of one that failed is handled. At most [`MAX_CONCURRENT`] deliveries are read and handled
//! at a time (each may be 25 MB before its signature can be checked); the others wait.
//!
//! The comment is made before the bot answers, so the answer says what happened (`502` when GitHub refused).
//! GitHub waits 10 seconds for an answer: a bot with slower work answers first and queues the work.
//!
//! `tests/webhook.rs` drives [`router`] in process against the fake GitHub.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::json;
use tower::retry::RetryLayer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::webhook::{SIGNATURE_256, WebhookSecret};
use tower_github_app::{AppAuthLayer, InstallationFor, InstallationPool, RetryOn401Policy};

/// GitHub's largest webhook payload: it does not deliver bigger ones.
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;
/// Deliveries read and handled at once.
pub const MAX_CONCURRENT: usize = 32;
/// What the bot says on a new issue.
pub const THANKS: &str = "Thanks for opening this issue! A maintainer will have a look soon.";
/// The `User-Agent` of the bot's API requests (GitHub requires one).
pub const USER_AGENT: &str = "tower-github-app-webhook-bot";

/// The GitHub API as the bot calls it: one tower stack for every installation.
type GitHub = BoxCloneSyncService<Request<Full<Bytes>>, Response<axum::body::Body>, BoxError>;

/// The bot: the webhook secret, the installation pool and the stack that comments. Cheap to clone.
#[derive(Clone)]
pub struct Bot {
    inner: Arc<Inner>,
}

struct Inner {
    secret: WebhookSecret,
    pool: InstallationPool,
    github: GitHub,
    /// The `X-GitHub-Delivery` ids of deliveries handled: a replay is not handled again.
    handled: moka::sync::Cache<String, ()>,
}

impl Bot {
    /// A bot that checks deliveries with `secret` and calls GitHub through `client`, authenticated by `pool`
    /// (built with the same client).
    pub fn new<C, ResBody>(secret: WebhookSecret, pool: InstallationPool, client: C) -> Self
    where
        C: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
        C::Future: Send + 'static,
        C::Error: Into<BoxError>,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let github = ServiceBuilder::new()
            // Within GitHub's 10 seconds for an answer, including retries and a first mint.
            .timeout(Duration::from_secs(8))
            .layer(RetryLayer::new(RetryOn401Policy::default()))
            .layer(AppAuthLayer::new(pool.clone()))
            .map_response(|response: Response<ResBody>| response.map(axum::body::Body::new))
            .service(client);
        let handled =
            moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(24 * 3600)).build();
        Self { inner: Arc::new(Inner { secret, pool, github: BoxCloneSyncService::new(github), handled }) }
    }

    /// The pool the bot's requests take their tokens from.
    pub fn pool(&self) -> &InstallationPool {
        &self.inner.pool
    }
}

/// The bot's routes: `POST /webhook`.
pub fn router(bot: Bot) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(bot)
}

/// One delivery.
async fn webhook(State(bot): State<Bot>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let delivery = headers.get("x-github-delivery").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    // First the signature, over the body exactly as it arrived. Nothing is parsed before it passes.
    if let Err(error) = bot.inner.secret.verify(headers.get(SIGNATURE_256), &body) {
        tracing::warn!(%delivery, %error, "refused a webhook delivery");
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    if delivery != "-" && bot.inner.handled.contains_key(&delivery) {
        tracing::warn!(%delivery, "a delivery handled before arrived again: ignored");
        return (StatusCode::OK, "already handled".to_owned()).into_response();
    }
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info!(%delivery, event, "webhook delivery");
    let (status, text) = match event {
        "ping" => (StatusCode::OK, "pong".to_owned()),
        "issues" => bot.on_issues(&body).await,
        "installation" => bot.on_installation(&body),
        "installation_repositories" => bot.on_installation_repositories(&body),
        _ => (StatusCode::NO_CONTENT, String::new()),
    };
    if status.is_success() && delivery != "-" {
        bot.inner.handled.insert(delivery, ());
    }
    (status, text).into_response()
}

/// What a handler answers: a status and a line of text.
type Answer = (StatusCode, String);

#[derive(Deserialize)]
struct IssuesEvent {
    action: String,
    issue: Issue,
    repository: Repository,
    /// Present in every delivery to a GitHub App.
    installation: Option<InstallationId>,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
}

#[derive(Deserialize)]
struct Repository {
    name: String,
    owner: Account,
}

#[derive(Deserialize)]
struct Account {
    login: String,
}

#[derive(Deserialize)]
struct InstallationId {
    id: u64,
}

/// `installation` and `installation_repositories` deliveries.
#[derive(Deserialize)]
struct InstallationEvent {
    action: String,
    installation: InstallationOn,
}

#[derive(Deserialize)]
struct InstallationOn {
    id: u64,
    account: Account,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Answer> {
    serde_json::from_slice(body)
        .map_err(|error| (StatusCode::BAD_REQUEST, format!("the payload is not the JSON this event has: {error}")))
}

impl Bot {
    async fn on_issues(&self, body: &[u8]) -> Answer {
        let event: IssuesEvent = match parse(body) {
            Ok(event) => event,
            Err(answer) => return answer,
        };
        if event.action != "opened" {
            return (StatusCode::NO_CONTENT, String::new());
        }
        let Some(InstallationId { id: installation }) = event.installation else {
            return (StatusCode::BAD_REQUEST, "the payload has no installation.id: is this an App's webhook?".into());
        };
        let (owner, repo, number) = (event.repository.owner.login, event.repository.name, event.issue.number);
        if !is_name(&owner) || !is_name(&repo) {
            return (StatusCode::BAD_REQUEST, "the payload's repository is not a GitHub repository name".into());
        }
        let place = format!("{owner}/{repo}#{number}");
        match self.comment(installation, &owner, &repo, number, THANKS).await {
            Ok(()) => (StatusCode::OK, format!("commented on {place}")),
            Err(error) => {
                tracing::warn!(installation, %place, %error, "could not comment");
                (StatusCode::BAD_GATEWAY, format!("could not comment on {place}: {error}"))
            }
        }
    }

    fn on_installation(&self, body: &[u8]) -> Answer {
        let event: InstallationEvent = match parse(body) {
            Ok(event) => event,
            Err(answer) => return answer,
        };
        let InstallationOn { id, account } = event.installation;
        match event.action.as_str() {
            // Its tokens are of no use any more (deleted, suspended) or lack the new permissions.
            "deleted" | "suspend" | "new_permissions_accepted" => {
                self.inner.pool.forget_installation(id);
                (StatusCode::OK, format!("forgot installation {id}"))
            }
            // A "not installed" answer about the account is stale.
            "created" => {
                self.inner.pool.forget_account(&account.login);
                (StatusCode::OK, format!("forgot lookups of {}", account.login))
            }
            // So is a failed mint of the suspended installation, which requests would wait out otherwise.
            "unsuspend" => {
                self.inner.pool.forget_installation(id);
                self.inner.pool.forget_account(&account.login);
                (StatusCode::OK, format!("forgot installation {id} and lookups of {}", account.login))
            }
            _ => (StatusCode::NO_CONTENT, String::new()),
        }
    }

    fn on_installation_repositories(&self, body: &[u8]) -> Answer {
        let event: InstallationEvent = match parse(body) {
            Ok(event) => event,
            Err(answer) => return answer,
        };
        // Which repositories the installation covers changed: what lookups said about them is stale.
        self.inner.pool.forget_account(&event.installation.account.login);
        (StatusCode::OK, format!("forgot lookups of {}", event.installation.account.login))
    }

    /// `POST /repos/{owner}/{repo}/issues/{number}/comments` as `installation`.
    async fn comment(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        number: u64,
        text: &str,
    ) -> Result<(), BoxError> {
        let uri = self.inner.pool.api_base().url(&format!("/repos/{owner}/{repo}/issues/{number}/comments"))?;
        let mut request = Request::post(uri)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header(header::USER_AGENT, USER_AGENT)
            .header("x-github-api-version", "2022-11-28")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json!({ "body": text }).to_string())))?;
        request.extensions_mut().insert(InstallationFor::Id(installation));
        let response = self.inner.github.clone().oneshot(request).await?;
        let status = response.status();
        // Read whole, so that the connection serves again.
        let answer = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::CREATED {
            let message = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|answer| answer["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!("GitHub answered {status} {message:?}").into());
        }
        Ok(())
    }
}

/// Whether `name` can be a GitHub login or repository name (and so a path segment, never `..`).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Deliveries as GitHub sends them (the fields the bot reads, and a few more), for the demo and the tests.
pub mod deliveries {
    use super::*;

    /// An `issues` `opened` payload for issue `number` of `owner/repo`, delivered to `installation`.
    pub fn issues_opened(installation: u64, owner: &str, repo: &str, number: u64) -> Bytes {
        let payload = json!({
            "action": "opened",
            "issue": {
                "number": number,
                "title": "Something is broken",
                "state": "open",
                "user": { "login": "mona", "type": "User" },
            },
            "repository": {
                "name": repo,
                "full_name": format!("{owner}/{repo}"),
                "private": true,
                "owner": { "login": owner, "type": "Organization" },
            },
            "sender": { "login": "mona", "type": "User" },
            "installation": { "id": installation, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI=" },
        });
        Bytes::from(payload.to_string())
    }

    /// An `installation` payload (`action`: `created`, `deleted`, `suspend`, ...) for `installation` on
    /// `account`; also the shape of `installation_repositories`.
    pub fn installation(action: &str, installation: u64, account: &str) -> Bytes {
        let payload = json!({
            "action": action,
            "installation": {
                "id": installation,
                "account": { "login": account, "type": "Organization" },
                "repository_selection": "selected",
                "app_id": FakeGitHub::APP_ID,
            },
            "sender": { "login": "mona", "type": "User" },
        });
        Bytes::from(payload.to_string())
    }

    /// A delivery of `event` with `payload` to `uri`, with GitHub's headers; `signature` is the
    /// `X-Hub-Signature-256` value (`secret.sign(&payload)` for a genuine delivery, `None` for none).
    pub fn request<B: From<Bytes>>(uri: &str, event: &str, payload: Bytes, signature: Option<&str>) -> Request<B> {
        let mut request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "GitHub-Hookshot/fake")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("{:032x}", fastrand::u128(..)))
            .body(B::from(payload))
            .expect("a valid request");
        if let Some(signature) = signature.and_then(|s| HeaderValue::try_from(s).ok()) {
            request.headers_mut().insert(SIGNATURE_256, signature);
        }
        request
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .init();
    let result = match Config::from_env() {
        Ok(None) => demo().await,
        Ok(Some(config)) => serve(config).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serving for real: from `GITHUB_APP_ID`, `GITHUB_APP_KEY_FILE`, `WEBHOOK_SECRET`, and optionally
/// `GITHUB_API_URL` (GitHub Enterprise Server: `https://HOST/api/v3`) and `BIND` (default `127.0.0.1:3000`).
#[cfg_attr(not(feature = "hyper-client"), allow(dead_code))]
struct Config {
    app_id: String,
    key_file: String,
    secret: String,
    api_url: String,
    bind: String,
}

impl Config {
    /// `None` when none of the App's variables is set (the demo runs then).
    fn from_env() -> Result<Option<Self>, BoxError> {
        const REQUIRED: [&str; 3] = ["GITHUB_APP_ID", "GITHUB_APP_KEY_FILE", "WEBHOOK_SECRET"];
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let set: Vec<Option<String>> = REQUIRED.iter().map(|name| var(name)).collect();
        if set.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> = REQUIRED.iter().zip(&set).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(
                format!("set {} too, or unset {} to run the demo", missing.join(", "), REQUIRED.join(", ")).into()
            );
        }
        let mut set = set.into_iter().flatten();
        Ok(Some(Self {
            app_id: set.next().unwrap_or_default(),
            key_file: set.next().unwrap_or_default(),
            secret: set.next().unwrap_or_default(),
            api_url: var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
            bind: var("BIND").unwrap_or_else(|| "127.0.0.1:3000".into()),
        }))
    }
}

#[cfg(feature = "hyper-client")]
async fn serve(config: Config) -> Result<(), BoxError> {
    let key = std::fs::read(&config.key_file).map_err(|e| format!("could not read {}: {e}", config.key_file))?;
    let app = tower_github_app::GitHubApp::from_pem(config.app_id, key)?;
    // HTTPS (plain http only to a loopback test server, such as `FakeGitHub`).
    let api_base = tower_github_app::ApiBase::parse(&config.api_url)?;
    let client = tower_github_app::client::client_for(&api_base)?;
    let pool = InstallationPool::builder(app).api_base(&config.api_url).user_agent(USER_AGENT).build(client.clone())?;
    let bot = Bot::new(WebhookSecret::new(config.secret)?, pool, client);
    let listener = tokio::net::TcpListener::bind(&config.bind).await?;
    println!("listening on http://{}/webhook (Ctrl-C to stop)", listener.local_addr()?);
    axum::serve(listener, router(bot.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Stopped: revoke every token this process minted.
    let report = bot.pool().revoke_all().await;
    println!("revoked {} tokens ({} failed)", report.revoked, report.failed);
    Ok(())
}

#[cfg(not(feature = "hyper-client"))]
async fn serve(_: Config) -> Result<(), BoxError> {
    Err("serving for real needs the HTTPS client: cargo run --example webhook_bot --features test-util,hyper-client"
        .into())
}

/// The demo: the fake GitHub, the bot on 127.0.0.1, and four deliveries over HTTP.
async fn demo() -> Result<(), BoxError> {
    const SECRET: &str = "a webhook secret shared by GitHub and the bot";
    let github = FakeGitHub::start().await;
    let pool = InstallationPool::builder(github.app())
        .api_base(&github.api_base())
        .user_agent(USER_AGENT)
        .build(github.client())?;
    let bot = Bot::new(WebhookSecret::new(SECRET)?, pool.clone(), github.client());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(axum::serve(listener, router(bot)).into_future());
    println!("fake GitHub on {}, the bot on http://{addr}/webhook", github.api_base());

    // What GitHub holds: the same secret.
    let hookshot = WebhookSecret::new(SECRET)?;
    let installation = FakeGitHub::INSTALLATION_ID;

    let payload = deliveries::issues_opened(installation, "octo-org", "octo-repo", 1);
    let signature = hookshot.sign(&payload);
    let answer = deliver(addr, "issues", payload, Some(&signature)).await?;
    println!("1. issues.opened, signed:        {answer}");
    for comment in github.comments() {
        println!(
            "   GitHub recorded comment {} on {}/{}#{} by installation {}: {:?}",
            comment.id, comment.owner, comment.repo, comment.issue, comment.installation, comment.body
        );
    }

    let payload = deliveries::issues_opened(installation, "octo-org", "octo-repo", 2);
    let forged = WebhookSecret::new("not the secret")?.sign(&payload);
    let answer = deliver(addr, "issues", payload, Some(&forged)).await?;
    println!("2. issues.opened, forged:        {answer}");
    println!("   comments on GitHub: {}, requests to GitHub: {}", github.comments().len(), github.requests().len());

    print_stats(&pool);
    github.delete_installation(installation);
    let payload = deliveries::installation("deleted", installation, "octo-org");
    let signature = hookshot.sign(&payload);
    let answer = deliver(addr, "installation", payload, Some(&signature)).await?;
    println!("3. installation.deleted, signed: {answer}");
    print_stats(&pool);

    // The pool forgot the installation's token: the next delivery for it asks GitHub for a new one, which GitHub
    // refuses (uninstalled), rather than presenting the old one.
    let payload = deliveries::issues_opened(installation, "octo-org", "octo-repo", 3);
    let signature = hookshot.sign(&payload);
    let answer = deliver(addr, "issues", payload, Some(&signature)).await?;
    println!("4. issues.opened, signed, for the deleted installation: {answer}");
    print_stats(&pool);
    println!(
        "   comments on GitHub: {}, token requests to GitHub: {}",
        github.comments().len(),
        github.mint_attempts()
    );
    Ok(())
}

fn print_stats(pool: &InstallationPool) {
    let stats = pool.stats();
    println!(
        "   pool: mints {}, failed mints {}, entries {}, lookups {}",
        stats.mints, stats.failed_mints, stats.entries, stats.lookups
    );
}

/// Sends one delivery to the bot over HTTP; returns its status and text.
async fn deliver(bot: SocketAddr, event: &str, payload: Bytes, signature: Option<&str>) -> Result<String, BoxError> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = deliveries::request(&format!("http://{bot}/webhook"), event, payload, signature);
    let response = client.request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    Ok(format!("{status} {}", String::from_utf8_lossy(&text)))
}
