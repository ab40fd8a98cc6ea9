//! `gh-app-token`: act as a GitHub App from any shell. Prints installation tokens (what
//! `actions/create-github-app-token` does, anywhere), answers git's credential helper protocol, revokes tokens and
//! lists the App's installations. Built with `cargo install tower-github-app --features cli`.
//!
//! Tokens are printed on stdout only, and only by `token` and `git-credential get`. Errors are one line on stderr
//! and never hold a token; the exit code says what kind of failure it was (see `--help`).
#![forbid(unsafe_code)]
// The doc comments below are `--help` text, where a URL is written out, not linked.
#![allow(rustdoc::bare_urls)]

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
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_github_app::client::{HttpsClient, client_for};
use tower_github_app::{
    ApiBase, AppAuthLayer, Error, ErrorKind, GitHubApp, InstallationFor, InstallationPool, InstallationToken,
    RetryOn401Policy, TokenScope,
};

const USER_AGENT: &str = concat!("gh-app-token/", env!("CARGO_PKG_VERSION"));

const EXIT_CODES: &str = "\
Exit codes:
  0  success (git-credential: also when git asks about a host this helper is not for; it then prints nothing)
  1  GitHub refused: the App is not installed there, the installation is unknown or suspended, the key is not the
     App's, the repositories or permissions are not granted, the rate limit; or --min-validity cannot be met
  2  usage: the arguments are wrong (or name no installation)
  3  configuration: no App id, no key or a key that cannot be used, a bad API URL, input that is not a token
  4  GitHub could not be reached or failed: network error, timeout, 5xx, an answer that is not GitHub's
  5  the answer could not be written to stdout (the token, if one was minted, is revoked)
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
    #[arg(
        long,
        global = true,
        value_name = "VAR",
        default_value = "GITHUB_APP_PRIVATE_KEY",
        allow_hyphen_values = true
    )]
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
    #[command(after_help = EXIT_CODES)]
    Token(TokenArgs),
    /// The git credential helper: `git config credential.helper '/path/to/gh-app-token git-credential ...'`.
    #[command(after_help = EXIT_CODES)]
    GitCredential(CredentialArgs),
    /// Revoke an installation token, read from stdin (or from --token-env), never from the command line.
    #[command(after_help = EXIT_CODES)]
    Revoke(RevokeArgs),
    /// List the App's installations (id, account, account type, repository selection).
    #[command(after_help = EXIT_CODES)]
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
    /// Limit the token to these repositories (`owner/name`, or `name` with --owner or --installation-id); without
    /// --installation-id the installation is the one on the first. Repeat, or separate with commas.
    #[arg(long = "repo", value_name = "REPO", value_delimiter = ',')]
    repos: Vec<String>,
    /// Limit the token to this permission, `NAME=LEVEL` (`contents=read`, `issues=write`). Repeat, or separate
    /// with commas.
    #[arg(long = "permission", value_name = "NAME=LEVEL", value_parser = permission, value_delimiter = ',')]
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
    #[arg(long, value_name = "VAR", allow_hyphen_values = true)]
    token_env: Option<String>,
}

/// Checks that `--flag`'s value is an environment variable's name, without repeating a value that is not (a
/// token or a PEM pasted by mistake).
fn variable_name(flag: &str, name: &str) -> Result<(), Failure> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    // GitHub's token prefixes: a token is a valid name too.
    let token_like = ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"].iter().any(|p| name.starts_with(p));
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') && name.len() <= 128 && !token_like {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{flag} takes the name of an environment variable (letters, digits, _), not its value (not shown)"
        )))
    }
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

    fn usage(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into() }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match error.kind() {
            ErrorKind::InvalidKey | ErrorKind::InvalidConfig | ErrorKind::InvalidRequest => 3,
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::ServerError | ErrorKind::MalformedResponse => 4,
            _ => 1,
        };
        let mut message = error.to_string();
        if error.kind() == ErrorKind::Transport {
            // What the network said (connection refused, DNS, TLS): the innermost cause, from the client's I/O.
            // Only there: other causes may quote what a server sent.
            let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&error);
            while let Some(inner) = cause.and_then(std::error::Error::source) {
                cause = Some(inner);
            }
            if let Some(cause) = cause {
                message = format!("{message} ({cause})");
            }
        }
        Failure { code, message }
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind as Clap;
            if matches!(
                error.kind(),
                Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                error.exit();
            }
            // One line, like every other failure: clap's first, without its usage block.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return fail(Failure::usage(format!("{first} (see --help)")));
        }
    };
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
    variable_name("--key-env", &cli.app.key_env)?;
    let api_base = ApiBase::parse(&cli.app.api_url)?;
    match cli.command {
        Command::Token(args) => {
            if let Some(min) = args.min_validity.filter(|min| *min >= Duration::from_secs(3600)) {
                return Err(Failure::refused(format!(
                    "--min-validity {} cannot be met: GitHub's installation tokens last one hour",
                    humantime::format_duration(min)
                )));
            }
            let github = GitHub::connect(&cli.app, &api_base)?;
            let (installation, scope) = args.which.resolve()?;
            let token = github.pool.token(installation, scope).await?;
            if let Some(min) = args.min_validity
                && token.remaining() < min
            {
                let _ = github.pool.revoke(&token).await;
                return Err(Failure::refused(format!(
                    "the token is valid for {}, less than --min-validity {}: revoked",
                    humantime::format_duration(Duration::from_secs(token.remaining().as_secs())),
                    humantime::format_duration(min)
                )));
            }
            let out = if args.json { token_json(&token) } else { format!("{}\n", token.expose_secret()) };
            let printed = print(&out);
            if printed.is_err() {
                // Nobody will ever see it: it must not stay valid.
                let _ = github.pool.revoke(&token).await;
            }
            printed
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
        .map_err(|e| Failure { code: 5, message: format!("could not write the answer to stdout: {e}") })
}

impl Which {
    /// The installation and scope these flags name, for `token`.
    fn resolve(self) -> Result<(InstallationFor, Option<TokenScope>), Failure> {
        // Without a repository from git, the flags decide: never `None`.
        self.resolve_for_git(None)?.ok_or_else(|| Failure::usage("say which installation"))
    }

    /// The installation and scope for the repository git names (`owner`, `repo`; sent with
    /// `credential.useHttpPath`): the flags' installation, or the one on that repository, with a token limited to
    /// it (unless `--repo` says which repositories). `None` when git names a repository outside what the flags
    /// name (another owner, a repository not in `--repo`): not this helper's to answer.
    fn resolve_for_git(
        self,
        from_git: Option<(String, String)>,
    ) -> Result<Option<(InstallationFor, Option<TokenScope>)>, Failure> {
        let mut owner = self.owner;
        let mut names = Vec::with_capacity(self.repos.len());
        for repo in &self.repos {
            let repo = repo.trim();
            let name = match repo.split_once('/') {
                Some(_) if self.installation_id.is_some() => {
                    // The installation's account is the owner, and only GitHub knows it: names only.
                    return Err(Failure::usage(format!(
                        "with --installation-id, --repo takes names in the installation's account, not {repo:?}"
                    )));
                }
                Some((repo_owner, name)) => {
                    match &owner {
                        Some(owner) if !owner.eq_ignore_ascii_case(repo_owner) => {
                            return Err(Failure::usage(format!(
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
                return Err(Failure::usage(format!("--repo {repo:?} is not a repository name")));
            }
            names.push(name.to_owned());
        }
        if let Some((git_owner, git_repo)) = &from_git {
            let other_owner = owner.as_ref().is_some_and(|owner| !owner.eq_ignore_ascii_case(git_owner));
            let other_repo = !names.is_empty() && !names.iter().any(|name| name.eq_ignore_ascii_case(git_repo));
            if other_owner || other_repo {
                return Ok(None);
            }
        }
        // For git, a token for the repository it asked about, unless the flags list repositories.
        let git_repo = from_git.as_ref().filter(|_| names.is_empty()).map(|(_, repo)| repo.clone());
        let installation = match (self.installation_id, owner, names.first(), from_git) {
            (Some(id), ..) => InstallationFor::Id(id),
            (None, Some(owner), Some(name), _) => InstallationFor::Repository(owner, name.clone()),
            (None, Some(owner), None, _) => InstallationFor::Account(owner),
            (None, None, _, Some((owner, repo))) => InstallationFor::Repository(owner, repo),
            (None, None, ..) => {
                return Err(Failure::usage(
                    "say which installation: --installation-id ID, --owner LOGIN, or --repo OWNER/NAME",
                ));
            }
        };
        let mut scope = TokenScope::new();
        if !names.is_empty() {
            scope = scope.repositories(names);
        } else if let Some(repo) = git_repo {
            scope = scope.repositories([repo]);
        }
        for (name, level) in self.permissions {
            scope = scope.permission(name, level);
        }
        Ok(Some((installation, (!scope.is_empty()).then_some(scope))))
    }
}

/// The App, and a pool of its installation tokens on one client.
struct GitHub {
    pool: InstallationPool,
    client: HttpsClient,
    api_base: ApiBase,
    timeout: Duration,
}

/// Pages of 100 installations `installations` reads at most.
const MAX_PAGES: u32 = 1000;

/// The most of an answer the CLI reads: GitHub's pages of 100 installations are far smaller.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// `exchange` (a request and the read of its whole answer), bounded by `timeout`.
async fn within<T>(timeout: Duration, exchange: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
        Err(Failure {
            code: 4,
            message: format!("GitHub did not answer within {} (--timeout)", humantime::format_duration(timeout)),
        })
    })
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
        Ok(GitHub { pool, client, api_base: api_base.clone(), timeout: args.timeout })
    }

    /// Every installation of the App (`GET /app/installations`, all pages), each trimmed to what a listing
    /// needs.
    async fn installations(&self) -> Result<Vec<Value>, Failure> {
        // The retry policy corrects the App JWT's clock if GitHub refuses it for its time.
        let mut stack = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryOn401Policy::default()))
            .layer(AppAuthLayer::new(self.pool.clone()))
            .service(self.client.clone());
        let mut found = Vec::new();
        for page in 1..=MAX_PAGES {
            let uri = self.api_base.url(&format!("/app/installations?per_page=100&page={page}"))?;
            let request = github_request(Method::GET, uri.to_string().as_str(), None);
            let exchange = async {
                let response = stack.ready().await?.call(request).await?;
                read(response).await
            };
            let (status, body) = within(self.timeout, exchange).await?;
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
                return Ok(found);
            }
        }
        Err(Failure {
            code: 4,
            message: format!("GitHub listed more than {} installations; stopped there", MAX_PAGES * 100),
        })
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
    B::Error: Into<tower::BoxError>,
{
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| {
        let message = if e.is::<http_body_util::LengthLimitError>() {
            format!("GitHub's answer is larger than {} MiB: not read", MAX_ANSWER >> 20)
        } else {
            format!("could not read GitHub's answer: {e}")
        };
        Failure { code: 4, message }
    })?;
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
    let exchange = async {
        let response = client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Failure { code: 4, message: format!("could not reach {}: {e}", api_base.host()) })?;
        read(response).await
    };
    let (status, body) = within(timeout, exchange).await?;
    match status {
        StatusCode::NO_CONTENT => Ok(true),
        StatusCode::UNAUTHORIZED => Ok(false),
        status => Err(refusal(status, &body, "revoke the token")),
    }
}

/// The token to revoke: from the environment variable `var`, or stdin's first line.
fn read_token(var: Option<&str>) -> Result<String, Failure> {
    let text = match var {
        Some(var) => {
            variable_name("--token-env", var)?;
            std::env::var(var)
                .map_err(|_| Failure::config("the variable --token-env names is not set (or not UTF-8)"))?
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .map_err(|e| Failure::config(format!("could not read the token from stdin: {e}")))?;
            text
        }
    };
    let text = text.trim();
    // `gh-app-token token --json | gh-app-token revoke` works too.
    let from_json = serde_json::from_str::<Value>(text).ok().and_then(|v| v["token"].as_str().map(str::to_owned));
    let token = from_json.as_deref().unwrap_or(text);
    if token.is_empty() {
        return Err(Failure::config("no token: pipe it on stdin, or name its variable with --token-env"));
    }
    if token.lines().count() > 1 {
        return Err(Failure::config("one token per run: the input holds more than one line"));
    }
    if token.len() > 255 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::config(
            "the input is not a GitHub token (a prefix such as ghs, then `_`, letters and digits)",
        ));
    }
    if !token.starts_with("ghs_") {
        return Err(Failure::config(
            "only installation tokens (prefix `ghs`) are revoked here; user and personal tokens are revoked in GitHub's settings",
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
    // `github.com:443` and `github.com.` are github.com over https.
    let asked = request.host.as_deref().map(|host| {
        let https = request.protocol.as_deref() == Some("https");
        let host = if https { host.strip_suffix(":443").unwrap_or(host) } else { host };
        host.strip_suffix('.').unwrap_or(host)
    });
    let host_ok = asked.is_some_and(|host| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)));
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
    let resolved = args.which.resolve_for_git(request.repository()).map_err(|mut failure| {
        if failure.code == 2 && request.path.is_none() {
            failure.message = "git sent no repository path: run `git config --global credential.useHttpPath true`, \
                               or pass --installation-id, --owner or --repo"
                .into();
        }
        failure
    })?;
    let Some((installation, scope)) = resolved else {
        // A repository the flags are not for: no answer, so git asks its next helper.
        return Ok(());
    };
    let token = github.pool.token(installation, scope).await?;
    print(&credential::answer(token.expose_secret(), token.expires_at()))
}
