//! `gh-app-token`: act as a GitHub App from any shell. Prints installation tokens (what
//! `actions/create-github-app-token` does, anywhere), answers git's credential helper protocol, revokes tokens and
//! lists the App's installations. Built with `cargo install tower-github-app --features cli`.
//!
//! Tokens are printed on stdout only, and only by `token` and `git-credential get`. Errors are one line on stderr
//! and never hold a token; the exit code says what kind of failure it was (see `--help`).
#![forbid(unsafe_code)]

mod credential;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_github_app::client::{HttpsClient, client_for};
use tower_github_app::{
    ApiBase, AppAuthLayer, Error, ErrorKind, GitHubApp, InstallationFor, InstallationPool, InstallationToken,
    TokenScope,
};

const USER_AGENT: &str = concat!("gh-app-token/", env!("CARGO_PKG_VERSION"));

const EXIT_CODES: &str = "\
Exit codes:
  0  success (git-credential: also when git asks about a host this helper is not for; it then prints nothing)
  1  GitHub refused: the App is not installed there, the installation is unknown or suspended, the key is not the
     App's, the repositories or permissions are not granted, the rate limit; or --min-validity cannot be met
  2  usage: the arguments are wrong
  3  configuration: no App id, no key or a key that cannot be used, a bad API URL, input that is not a token
  4  GitHub could not be reached or failed: network error, timeout, 5xx, an answer that is not GitHub's
Errors are one line on stderr, never with a token in it.";

/// Installation tokens, a git credential helper and more, as a GitHub App.
#[derive(Parser)]
#[command(name = "gh-app-token", version, after_help = EXIT_CODES, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    app: AppArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct AppArgs {
    /// The App's ID or client ID (`Iv23…`), from its settings page.
    #[arg(long, env = "GITHUB_APP_ID", global = true, value_name = "ID")]
    app_id: Option<String>,
    /// The App's private key: the `.pem` file from its settings page.
    #[arg(long, env = "GITHUB_APP_KEY_FILE", global = true, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Without --key-file: the environment variable that holds the PEM text itself (`\n` escapes are read as
    /// line breaks).
    #[arg(long, global = true, value_name = "VAR", default_value = "GITHUB_APP_PRIVATE_KEY")]
    key_env: String,
    /// The REST API: https://api.github.com, https://api.TENANT.ghe.com or https://HOST/api/v3.
    #[arg(long, env = "GITHUB_API_URL", global = true, value_name = "URL", default_value = "https://api.github.com")]
    api_url: String,
    /// How long to wait for GitHub, per request.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Print an installation token (and with --json: when it expires, its permissions and repositories).
    Token(TokenArgs),
    /// The git credential helper: `git config credential.helper '/path/to/gh-app-token git-credential ...'`.
    GitCredential(CredentialArgs),
    /// Revoke an installation token, read from stdin (or from --token-env), never from the command line.
    Revoke(RevokeArgs),
    /// List the App's installations (id, account, account type, repository selection).
    Installations {
        /// One JSON array instead of tab-separated lines.
        #[arg(long)]
        json: bool,
    },
}

/// Which installation, and what the token is limited to.
#[derive(Args)]
struct Which {
    /// The installation's id (from its settings URL, or a webhook's `installation.id`).
    #[arg(long, value_name = "ID", conflicts_with = "owner")]
    installation_id: Option<u64>,
    /// The account (organization or user) the App is installed on; the installation is looked up.
    #[arg(long, value_name = "LOGIN")]
    owner: Option<String>,
    /// Limit the token to these repositories (`name` in the installation's account, or `owner/name`); without
    /// --installation-id the installation is the one on the first. Repeat, or separate with commas.
    #[arg(long = "repo", value_name = "REPO", value_delimiter = ',')]
    repos: Vec<String>,
    /// Limit the token to this permission, `NAME=LEVEL` (`contents=read`, `issues=write`). Repeat for more.
    #[arg(long = "permission", value_name = "NAME=LEVEL", value_parser = permission)]
    permissions: Vec<(String, String)>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    which: Which,
    /// Fail (exit 1) unless the token stays valid at least this long (GitHub's tokens last one hour).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_validity: Option<Duration>,
    /// Print JSON: token, expires_at, installation_id, permissions, repository_selection, repositories.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CredentialArgs {
    #[command(flatten)]
    which: Which,
    /// The git host to answer for (default: the API's, e.g. github.com for api.github.com). Repeatable. Other
    /// hosts get no answer, so git asks its next helper.
    #[arg(long = "host", value_name = "HOST[:PORT]")]
    hosts: Vec<String>,
    /// On `erase` (git says the token was refused), revoke the token git names.
    #[arg(long)]
    revoke_on_erase: bool,
    /// What git asks: get, store or erase (others are ignored, as the protocol requires).
    operation: String,
}

#[derive(Args)]
struct RevokeArgs {
    /// Read the token from this environment variable instead of stdin.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
}

fn permission(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, level)) if !name.trim().is_empty() && !level.trim().is_empty() => {
            Ok((name.trim().to_owned(), level.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=LEVEL (for example contents=read)")),
    }
}

/// A failure: one line on stderr and an exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl Into<String>) -> Self {
        Failure { code: 3, message: message.into() }
    }

    fn refused(message: impl Into<String>) -> Self {
        Failure { code: 1, message: message.into() }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match error.kind() {
            ErrorKind::InvalidKey | ErrorKind::InvalidConfig | ErrorKind::InvalidRequest => 3,
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::ServerError | ErrorKind::MalformedResponse => 4,
            _ => 1,
        };
        Failure { code, message: error.to_string() }
    }
}

impl From<tower::BoxError> for Failure {
    fn from(error: tower::BoxError) -> Self {
        match error.downcast::<Error>() {
            Ok(error) => Failure::from(*error),
            Err(error) => Failure { code: 4, message: format!("could not reach GitHub: {error}") },
        }
    }
}

fn main() -> ExitCode {
    // A bug must not print whatever it was holding: one line with where it happened.
    std::panic::set_hook(Box::new(|info| {
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("gh-app-token: internal error{place}; please report it");
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(Failure { code: 4, message: format!("could not start the async runtime: {e}") }),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    // One line: whatever the message holds, it cannot start a second one.
    let line: String = failure.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    eprintln!("gh-app-token: {line}");
    ExitCode::from(failure.code)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api_base = ApiBase::parse(&cli.app.api_url)?;
    match cli.command {
        Command::Token(args) => {
            let github = GitHub::connect(&cli.app, &api_base)?;
            let (installation, scope) = args.which.resolve(None)?;
            let token = github.pool.token(installation, scope).await?;
            if let Some(min) = args.min_validity
                && token.remaining() < min
            {
                return Err(Failure::refused(format!(
                    "the token is valid for {}, less than --min-validity {} (GitHub's tokens last one hour)",
                    humantime::format_duration(Duration::from_secs(token.remaining().as_secs())),
                    humantime::format_duration(min)
                )));
            }
            let out = if args.json { token_json(&token) } else { format!("{}\n", token.expose_secret()) };
            print(&out)
        }
        Command::GitCredential(args) => git_credential(&cli.app, &api_base, args).await,
        Command::Revoke(args) => {
            let token = read_token(args.token_env.as_deref())?;
            let client: HttpsClient = client_for(&api_base)?;
            if revoke(&client, &api_base, &token, cli.app.timeout).await? {
                print("revoked\n")
            } else {
                print("not valid: already revoked or expired\n")
            }
        }
        Command::Installations { json } => {
            let github = GitHub::connect(&cli.app, &api_base)?;
            let installations = github.installations().await?;
            if json {
                print(&format!("{}\n", Value::Array(installations)))
            } else {
                let mut out = String::new();
                for i in &installations {
                    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}{}\n",
                        i["id"],
                        text(&i["account"]),
                        text(&i["target_type"]),
                        text(&i["repository_selection"]),
                        if i["suspended_at"].is_string() { "\tsuspended" } else { "" }
                    ));
                }
                print(&out)
            }
        }
    }
}

fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure { code: 4, message: format!("could not write the answer to stdout: {e}") })
}

impl Which {
    /// The installation and scope these flags name; `from_git` is the repository git named, used when the flags
    /// name no installation.
    fn resolve(self, from_git: Option<(String, String)>) -> Result<(InstallationFor, Option<TokenScope>), Failure> {
        let mut owner = self.owner;
        let mut names = Vec::with_capacity(self.repos.len());
        for repo in &self.repos {
            let repo = repo.trim();
            let name = match repo.split_once('/') {
                Some((repo_owner, name)) => {
                    match &owner {
                        Some(owner) if !owner.eq_ignore_ascii_case(repo_owner) => {
                            return Err(Failure::config(format!(
                                "--repo {repo} is not in {owner}'s account: a token covers one installation"
                            )));
                        }
                        _ => owner = Some(repo_owner.to_owned()),
                    }
                    name
                }
                None => repo,
            };
            if name.is_empty() || name.contains('/') {
                return Err(Failure::config(format!("--repo {repo:?} is not a repository name")));
            }
            names.push(name.to_owned());
        }
        let installation = match (self.installation_id, owner, names.first(), from_git) {
            (Some(id), ..) => InstallationFor::Id(id),
            (None, Some(owner), Some(name), _) => InstallationFor::Repository(owner, name.clone()),
            (None, Some(owner), None, _) => InstallationFor::Account(owner),
            (None, None, _, Some((owner, repo))) => InstallationFor::Repository(owner, repo),
            (None, None, ..) => {
                return Err(Failure::config(
                    "say which installation: --installation-id ID, --owner LOGIN, or --repo OWNER/NAME",
                ));
            }
        };
        let mut scope = TokenScope::new();
        if !names.is_empty() {
            scope = scope.repositories(names);
        }
        for (name, level) in self.permissions {
            scope = scope.permission(name, level);
        }
        Ok((installation, (!scope.is_empty()).then_some(scope)))
    }
}

/// The App, and a pool of its installation tokens on one client.
struct GitHub {
    pool: InstallationPool,
    client: HttpsClient,
    api_base: ApiBase,
}

impl GitHub {
    fn connect(args: &AppArgs, api_base: &ApiBase) -> Result<GitHub, Failure> {
        let app_id = args.app_id.as_deref().map(str::trim).filter(|id| !id.is_empty()).ok_or_else(|| {
            Failure::config(
                "no App: pass --app-id or set GITHUB_APP_ID (the App ID or client ID from its settings page)",
            )
        })?;
        let pem = match &args.key_file {
            Some(path) => std::fs::read(path)
                .map_err(|e| Failure::config(format!("could not read the private key file {}: {e}", path.display())))?,
            None => match std::env::var_os(&args.key_env).map(OsString::into_string) {
                Some(Ok(text)) if !text.trim().is_empty() => {
                    // CI secrets often hold the PEM on one line with `\n` escapes.
                    if text.contains('\n') { text.into_bytes() } else { text.replace("\\n", "\n").into_bytes() }
                }
                Some(_) => {
                    return Err(Failure::config(format!(
                        "{} is empty or not UTF-8: it must hold the PEM",
                        args.key_env
                    )));
                }
                None => {
                    return Err(Failure::config(format!(
                        "no private key: pass --key-file PATH (the .pem from the App's settings page), set \
                         GITHUB_APP_KEY_FILE, or put the PEM in {}",
                        args.key_env
                    )));
                }
            },
        };
        let app = GitHubApp::from_pem(app_id, pem)?;
        let client: HttpsClient = client_for(api_base)?;
        let pool = InstallationPool::builder(app)
            .api_base(&args.api_url)
            .user_agent(USER_AGENT)
            .mint_timeout(args.timeout)
            // One process, one token: nothing to refresh in the background.
            .max_concurrent_mints(1)
            .build(client.clone())?;
        Ok(GitHub { pool, client, api_base: api_base.clone() })
    }

    /// Every installation of the App (`GET /app/installations`, all pages), each trimmed to what a listing
    /// needs.
    async fn installations(&self) -> Result<Vec<Value>, Failure> {
        let mut stack = AppAuthLayer::new(self.pool.clone()).layer(self.client.clone());
        let mut found = Vec::new();
        for page in 1..=1000u32 {
            let uri = self.api_base.url(&format!("/app/installations?per_page=100&page={page}"))?;
            let request = github_request(Method::GET, uri.to_string().as_str(), None);
            let response = stack.ready().await?.call(request).await?;
            let (status, body) = read(response).await?;
            if status != StatusCode::OK {
                return Err(refusal(status, &body, "list the App's installations"));
            }
            let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else {
                return Err(Failure { code: 4, message: "GitHub's list of installations is not a JSON array".into() });
            };
            let last = items.len() < 100;
            found.extend(items.into_iter().map(|i| {
                json!({
                    "id": i["id"],
                    "account": i["account"]["login"],
                    "target_type": i["target_type"],
                    "repository_selection": i["repository_selection"],
                    "suspended_at": i["suspended_at"],
                })
            }));
            if last {
                break;
            }
        }
        Ok(found)
    }
}

fn github_request(method: Method, uri: &str, authorization: Option<HeaderValue>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .body(Full::default())
        .expect("a request from a checked URL and fixed headers");
    if let Some(authorization) = authorization {
        request.headers_mut().insert(header::AUTHORIZATION, authorization);
    }
    request
}

async fn read<B>(response: http::Response<B>) -> Result<(StatusCode, Bytes), Failure>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure { code: 4, message: format!("could not read GitHub's answer: {e}") })?;
    Ok((status, body.to_bytes()))
}

/// A failure for an answer other than the one expected, with GitHub's message (at most one short line).
fn refusal(status: StatusCode, body: &[u8], what: &str) -> Failure {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(|m| m.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    let code = if status.is_server_error() { 4 } else { 1 };
    let hint = match status.as_u16() {
        401 => ": is the key the App's, and the App id right?",
        _ => "",
    };
    Failure { code, message: format!("GitHub answered {status} to the request to {what}: {message:?}{hint}") }
}

/// `DELETE /installation/token` with `token`: `true` if revoked, `false` if GitHub no longer accepted it.
async fn revoke(client: &HttpsClient, api_base: &ApiBase, token: &str, timeout: Duration) -> Result<bool, Failure> {
    let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Failure::config("the token holds characters no GitHub token has"))?;
    authorization.set_sensitive(true);
    let uri = api_base.url("/installation/token")?;
    let request = github_request(Method::DELETE, &uri.to_string(), Some(authorization));
    let response = tokio::time::timeout(timeout, client.clone().oneshot(request))
        .await
        .map_err(|_| Failure { code: 4, message: format!("GitHub did not answer within {timeout:?}") })?
        .map_err(|e| Failure { code: 4, message: format!("could not reach {}: {e}", api_base.host()) })?;
    let (status, body) = read(response).await?;
    match status {
        StatusCode::NO_CONTENT => Ok(true),
        StatusCode::UNAUTHORIZED => Ok(false),
        status => Err(refusal(status, &body, "revoke the token")),
    }
}

/// The token to revoke: from the environment variable `var`, or stdin's first line.
fn read_token(var: Option<&str>) -> Result<String, Failure> {
    let text = match var {
        Some(var) => std::env::var(var).map_err(|_| Failure::config(format!("{var} is not set (or not UTF-8)")))?,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .map_err(|e| Failure::config(format!("could not read the token from stdin: {e}")))?;
            text
        }
    };
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(Failure::config("no token: pipe it on stdin, or name its variable with --token-env"));
    }
    if token.len() > 255 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::config(
            "the input is not a GitHub token (a prefix such as ghs, then `_`, letters and digits)",
        ));
    }
    Ok(token.to_owned())
}

fn token_json(token: &InstallationToken) -> String {
    let repositories: Vec<&str> = token.repositories().iter().map(|r| r.name.as_str()).collect();
    let value = json!({
        "token": token.expose_secret(),
        "expires_at": humantime::format_rfc3339_seconds(token.expires_at()).to_string(),
        "installation_id": token.installation_id(),
        "permissions": token.permissions(),
        "repository_selection": token.repository_selection(),
        "repositories": repositories,
    });
    format!("{value}\n")
}

async fn git_credential(app: &AppArgs, api_base: &ApiBase, args: CredentialArgs) -> Result<(), Failure> {
    let operation = args.operation.as_str();
    if !matches!(operation, "get" | "erase" | "store") {
        // The protocol: helpers ignore operations they do not know.
        return Ok(());
    }
    let mut input = String::new();
    std::io::stdin()
        .take(credential::MAX_INPUT as u64)
        .read_to_string(&mut input)
        .map_err(|e| Failure::config(format!("could not read git's request on stdin: {e}")))?;
    if operation == "store" {
        // Nothing to keep: every `get` answers with a current token.
        return Ok(());
    }
    let request = credential::Request::parse(&input).map_err(Failure::config)?;
    let api_authority = api_base.url("/").ok().and_then(|u| u.authority().map(|a| a.as_str().to_owned()));
    let hosts: Vec<String> = if args.hosts.is_empty() {
        api_authority.iter().map(|a| credential::git_host_for(a)).collect()
    } else {
        args.hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect()
    };
    // Tokens travel over https only (plain http only to a loopback host: a local test server).
    let protocol_ok = match request.protocol.as_deref() {
        Some("https") => true,
        Some("http") => request.host.as_deref().is_some_and(credential::is_loopback),
        _ => false,
    };
    let host_ok = request.host.as_deref().is_some_and(|host| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)));
    if !protocol_ok || !host_ok {
        // Not this helper's host: no answer, so git asks its next helper (or the user).
        return Ok(());
    }
    if operation == "erase" {
        let Some(password) = request.password.filter(|_| args.revoke_on_erase) else { return Ok(()) };
        let is_ours = request.username.as_deref().is_none_or(|u| u == "x-access-token");
        if is_ours && password.starts_with("ghs_") {
            let client: HttpsClient = client_for(api_base)?;
            revoke(&client, api_base, &password, app.timeout).await?;
        }
        return Ok(());
    }
    let github = GitHub::connect(app, api_base)?;
    let (installation, scope) = args.which.resolve(request.repository()).map_err(|mut failure| {
        if failure.code == 3 && request.path.is_none() {
            failure.message = "git sent no repository path: run `git config --global credential.useHttpPath true`, \
                               or pass --installation-id, --owner or --repo"
                .into();
        }
        failure
    })?;
    let token = github.pool.token(installation, scope).await?;
    print(&credential::answer(token.expose_secret(), token.expires_at()))
}
