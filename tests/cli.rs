//! `gh-app-token` (feature `cli`) run as a process against the fake GitHub, and as git's credential helper under
//! the real `git`.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tower::ServiceExt;
use tower_github_app::testing::{FakeGitHub, TEST_PRIVATE_KEY};

use common::assert_no_secrets;

const BIN: &str = env!("CARGO_BIN_EXE_gh-app-token");

/// A scratch directory holding the App's key (and git's config), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("tga-cli-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.pem"), TEST_PRIVATE_KEY).unwrap();
        Scratch(dir)
    }

    fn key(&self) -> PathBuf {
        self.0.join("app.pem")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The environment the command runs with: nothing from this process's (CI runners set `GITHUB_API_URL`), only
/// what is given.
fn command(program: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

async fn run(mut command: Command, args: &[&str], stdin: &str) -> Output {
    let mut child = command.args(args).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The App's environment for the fake GitHub.
fn app_env<'a>(github: &'a str, key: &'a Path) -> Vec<(&'static str, String)> {
    vec![
        ("GITHUB_APP_ID", FakeGitHub::APP_ID.to_string()),
        ("GITHUB_APP_KEY_FILE", key.display().to_string()),
        ("GITHUB_API_URL", github.to_owned()),
    ]
}

async fn cli(github: &FakeGitHub, scratch: &Scratch, args: &[&str], stdin: &str) -> Output {
    let env = app_env(&github.api_base(), &scratch.key().clone()).into_iter().collect::<Vec<_>>();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(command(BIN, &env), args, stdin).await
}

/// Asserts a failure: the exit code, one line on stderr starting with the program's name and holding `needle`,
/// nothing on stdout, no token anywhere.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("gh-app-token: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", text(&output.stdout));
    assert_no_secrets(&stderr, &[]);
}

/// Whether the fake GitHub accepts `token` for an API call.
async fn accepted(github: &FakeGitHub, token: &str) -> bool {
    accepted_on(github, token, "/installation/repositories").await
}

/// Whether the fake GitHub answers `path` with `200` for `token`.
async fn accepted_on(github: &FakeGitHub, token: &str, path: &str) -> bool {
    let request = http::Request::get(format!("{}{path}", github.api_base()))
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", "test")
        .body(http_body_util::Full::default())
        .unwrap();
    github.client().oneshot(request).await.unwrap().status() == 200
}

#[tokio::test]
async fn token_prints_one_line_with_a_working_token() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let output = cli(&github, &scratch, &["token", "--installation-id", &id], "").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty());
    let stdout = text(&output.stdout);
    let token = stdout.strip_suffix('\n').unwrap();
    assert!(token.starts_with("ghs_") && !token.contains('\n'), "{stdout:?}");
    assert!(accepted(&github, token).await);
    assert_eq!(github.mint_count(), 1);
    assert_eq!(github.lookup_count(), 0);
}

#[tokio::test]
async fn token_json_by_repository_with_a_scope() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let args = ["token", "--repo", "octo-org/octo-repo", "--permission", "contents=read", "--json"];
    let output = cli(&github, &scratch, &args, "").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(json["token"].as_str().unwrap().starts_with("ghs_"));
    assert_eq!(json["installation_id"], FakeGitHub::INSTALLATION_ID);
    assert_eq!(json["permissions"], serde_json::json!({"contents": "read"}));
    assert_eq!(json["repositories"], serde_json::json!(["octo-repo"]));
    assert_eq!(json["repository_selection"], "selected");
    let expires_at = humantime::parse_rfc3339(json["expires_at"].as_str().unwrap()).unwrap();
    let remaining = expires_at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(remaining > std::time::Duration::from_secs(50 * 60), "{remaining:?}");
    assert_eq!((github.mint_count(), github.lookup_count()), (1, 1));

    // By account, and the same with --owner plus a bare repository name.
    let output = cli(&github, &scratch, &["token", "--owner", "octo-org", "--json"], "").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["installation_id"], FakeGitHub::INSTALLATION_ID);
    assert_eq!(json["repositories"], serde_json::json!([]));
    let output = cli(&github, &scratch, &["token", "--owner", "octo-org", "--repo", "octo-lib"], "").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(github.mint_count(), 3);
}

#[tokio::test]
async fn min_validity_beyond_an_hour_is_refused() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let output = cli(&github, &scratch, &["token", "--installation-id", &id, "--min-validity", "2h"], "").await;
    assert_fails(&output, 1, "--min-validity 2h");
    assert_eq!(github.mint_count(), 0, "refused before minting");
    let output = cli(&github, &scratch, &["token", "--installation-id", &id, "--min-validity", "30m"], "").await;
    assert!(output.status.success());
}

#[tokio::test]
async fn installations_are_listed() {
    let github = FakeGitHub::builder()
        .installation(7, FakeGitHub::APP_ID, "octocat", &["octocat/hello-world"])
        .installation(8, 999, "someone-else", &["someone-else/x"])
        .start()
        .await;
    let scratch = Scratch::new();
    github.set_suspended(7, true);
    let output = cli(&github, &scratch, &["installations"], "").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let expected = format!("{}\tocto-org\tOrganization\tselected", FakeGitHub::INSTALLATION_ID);
    assert_eq!(lines, [expected.as_str(), "7\toctocat\tUser\tselected\tsuspended"], "{stdout}");

    let output = cli(&github, &scratch, &["installations", "--json"], "").await;
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut ids: Vec<u64> = json.as_array().unwrap().iter().map(|i| i["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [FakeGitHub::INSTALLATION_ID.min(7), FakeGitHub::INSTALLATION_ID.max(7)]);
    assert_eq!(json[0]["account"].as_str().map(str::is_empty), Some(false));
    assert_eq!(github.mint_count(), 0, "listing takes the App JWT, not a token");
}

#[tokio::test]
async fn revoke_reads_the_token_from_stdin_or_a_variable() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let token = text(&cli(&github, &scratch, &["token", "--installation-id", &id], "").await.stdout);
    let token = token.trim();
    assert!(accepted(&github, token).await);

    let output = cli(&github, &scratch, &["revoke"], &format!("{token}\n")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "revoked\n");
    assert!(!accepted(&github, token).await);
    // Again: GitHub no longer takes it, which is what revoking was for.
    let output = cli(&github, &scratch, &["revoke"], token).await;
    assert_eq!(text(&output.stdout), "not valid: already revoked or expired\n");
    assert!(output.status.success());

    // From a variable.
    let second = text(&cli(&github, &scratch, &["token", "--installation-id", &id], "").await.stdout);
    let mut env = app_env(&github.api_base(), &scratch.key());
    env.push(("MY_TOKEN", second.trim().to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run(command(BIN, &env), &["revoke", "--token-env", "MY_TOKEN"], "").await;
    assert_eq!(text(&output.stdout), "revoked\n");
    assert!(!accepted(&github, second.trim()).await);

    // `token --json`'s output.
    let third = text(&cli(&github, &scratch, &["token", "--installation-id", &id, "--json"], "").await.stdout);
    let output = cli(&github, &scratch, &["revoke"], &third).await;
    assert_eq!(text(&output.stdout), "revoked\n", "{}", text(&output.stderr));

    // Not a token, two tokens, a personal token: refused without echoing them.
    let output = cli(&github, &scratch, &["revoke"], "ghs_abc def\n").await;
    assert_fails(&output, 3, "not a GitHub token");
    let output = cli(&github, &scratch, &["revoke"], "ghs_abcdef\nghs_ghijkl\n").await;
    assert_fails(&output, 3, "one token per run");
    let output = cli(&github, &scratch, &["revoke"], "ghp_abcdef\n").await;
    assert_fails(&output, 3, "only installation tokens");
    let output = cli(&github, &scratch, &["revoke"], "").await;
    assert_fails(&output, 3, "no token");
}

#[tokio::test]
async fn bad_input_is_one_line_and_an_exit_code() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let api = github.api_base();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let app_id = FakeGitHub::APP_ID.to_string();
    let key = scratch.key().display().to_string();
    let token = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["token".to_owned(), "--installation-id".to_owned(), id.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    // No key anywhere.
    let output = run_with(vec![("GITHUB_APP_ID", app_id.clone()), ("GITHUB_API_URL", api.clone())], &token(&[])).await;
    assert_fails(&output, 3, "no private key");
    // A key file that is not there.
    let env = vec![
        ("GITHUB_APP_ID", app_id.clone()),
        ("GITHUB_APP_KEY_FILE", "/nonexistent/app.pem".into()),
        ("GITHUB_API_URL", api.clone()),
    ];
    assert_fails(&run_with(env, &token(&[])).await, 3, "/nonexistent/app.pem");
    // An OpenSSH key: the message says how to convert it.
    let openssh = scratch.0.join("openssh.pem");
    std::fs::write(&openssh, common::read("vectors/octokit-jwt/private-key-openssh.txt")).unwrap();
    let env = vec![
        ("GITHUB_APP_ID", app_id.clone()),
        ("GITHUB_APP_KEY_FILE", openssh.display().to_string()),
        ("GITHUB_API_URL", api.clone()),
    ];
    assert_fails(&run_with(env, &token(&[])).await, 3, "ssh-keygen -p -m PEM");
    // The PEM in a variable, on one line with `\n` escapes, as CI secrets often are: works.
    let env = vec![
        ("GITHUB_APP_ID", app_id.clone()),
        ("GITHUB_APP_PRIVATE_KEY", TEST_PRIVATE_KEY.replace('\n', "\\n")),
        ("GITHUB_API_URL", api.clone()),
    ];
    let output = run_with(env, &token(&[])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    // No App id.
    let env = vec![("GITHUB_APP_KEY_FILE", key.clone()), ("GITHUB_API_URL", api.clone())];
    assert_fails(&run_with(env, &token(&[])).await, 3, "GITHUB_APP_ID");
    // The wrong App id: GitHub refuses the JWT.
    let env =
        vec![("GITHUB_APP_ID", "4242".into()), ("GITHUB_APP_KEY_FILE", key.clone()), ("GITHUB_API_URL", api.clone())];
    assert_fails(&run_with(env, &token(&[])).await, 1, "App");

    let app = app_env(&api, &scratch.key());
    // An unknown installation, a repository the App is not installed on, a repository outside the installation.
    let output = run_with(app.clone(), &strings(&["token", "--installation-id", "999999"])).await;
    assert_fails(&output, 1, "999999");
    let output = run_with(app.clone(), &strings(&["token", "--repo", "nobody/nothing"])).await;
    assert_fails(&output, 1, "nobody/nothing");
    let output = run_with(app.clone(), &token(&["--repo", "not-there"])).await;
    assert_fails(&output, 1, "");
    // Arguments: no installation named; a malformed permission (clap's own message); repositories of two owners.
    assert_fails(&run_with(app.clone(), &strings(&["token"])).await, 2, "--installation-id");
    assert_fails(&run_with(app.clone(), &token(&["--permission", "contents"])).await, 2, "NAME=LEVEL");
    assert_fails(&run_with(app.clone(), &strings(&["token", "--frobnicate"])).await, 2, "--frobnicate");
    let output = run_with(app.clone(), &strings(&["token", "--repo", "a/x", "--repo", "b/y"])).await;
    assert_fails(&output, 2, "one installation");
    // With an installation id, only GitHub knows its account: repository names without an owner.
    let output = run_with(app.clone(), &token(&["--repo", "other-org/octo-lib"])).await;
    assert_fails(&output, 2, "names in the installation's account");
    // Plain http to anything but loopback, and no server listening: refused, unreachable.
    let mut env = app.clone();
    env[2].1 = "http://api.example.com".into();
    assert_fails(&run_with(env, &token(&[])).await, 3, "https");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut env = app.clone();
    env[2].1 = closed_url;
    assert_fails(&run_with(env, &token(&[])).await, 4, "");
    assert_eq!(github.mint_count(), 1, "only the PEM-in-a-variable run minted");
}

async fn run_with(env: Vec<(&'static str, String)>, args: &[String]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(command(BIN, &env), &args, "").await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// git's global config for these tests: only what is set here (no system or user config).
fn git(scratch: &Scratch, config: &[(&str, &str)], env: &[(&str, String)]) -> Command {
    let config_file = scratch.0.join("gitconfig");
    let mut text = String::new();
    for (key, value) in config {
        text.push_str(&format!(
            "[{}]\n\t{} = {}\n",
            key.rsplit_once('.').unwrap().0,
            key.rsplit_once('.').unwrap().1,
            value
        ));
    }
    std::fs::write(&config_file, text).unwrap();
    let mut all: Vec<(&str, String)> = vec![
        ("HOME", scratch.0.display().to_string()),
        ("GIT_CONFIG_GLOBAL", config_file.display().to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GIT_ASKPASS", "".into()),
        ("SSH_ASKPASS", "".into()),
    ];
    all.extend(env.iter().cloned());
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    command("git", &all)
}

fn helper(args: &str) -> String {
    // An absolute path: git runs it through the shell with the operation appended.
    format!("\"{BIN} git-credential {args}\"")
}

#[tokio::test]
async fn git_credential_fill_answers_with_an_expiring_token() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let env = app_env(&github.api_base(), &scratch.key());
    let id = FakeGitHub::INSTALLATION_ID;
    let config = [("credential.helper", helper(&format!("--host github.com --installation-id {id}")))];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let output =
        run(git(&scratch, &config, &env), &["credential", "fill"], "protocol=https\nhost=github.com\n\n").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[..3], ["protocol=https", "host=github.com", "username=x-access-token"]);
    let token = lines[3].strip_prefix("password=ghs_").map(|t| format!("ghs_{t}")).expect(lines[3]);
    let expiry: u64 = lines[4].strip_prefix("password_expiry_utc=").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 50 * 60..=now + 61 * 60).contains(&expiry), "{expiry} vs {now}");
    assert!(accepted(&github, &token).await);
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    assert_eq!(github.mint_count(), 1);

    // `store` (git approve) is ignored: no mint, no output.
    let approve = format!("protocol=https\nhost=github.com\nusername=x-access-token\npassword={token}\n\n");
    let output = run(git(&scratch, &config, &env), &["credential", "approve"], &approve).await;
    assert!(output.status.success() && output.stdout.is_empty() && output.stderr.is_empty());

    // Another host, or plain http: the helper says nothing, git finds no credential, nothing is minted.
    for input in ["protocol=https\nhost=gitlab.com\n\n", "protocol=http\nhost=github.com\n\n"] {
        let output = run(git(&scratch, &config, &env), &["credential", "fill"], input).await;
        assert!(!output.status.success(), "{}", text(&output.stdout));
        assert!(!text(&output.stdout).contains("password="));
        assert_no_secrets(&text(&output.stderr), &[&token]);
    }
    assert_eq!(github.mint_count(), 1);

    // `erase` (git reject) leaves the token alone unless asked to revoke it…
    let reject = approve.clone();
    let output = run(git(&scratch, &config, &env), &["credential", "reject"], &reject).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(accepted(&github, &token).await);
    // …and with --revoke-on-erase, revokes it.
    let revoking =
        [("credential.helper", helper(&format!("--host github.com --installation-id {id} --revoke-on-erase")))];
    let revoking: Vec<(&str, &str)> = revoking.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run(git(&scratch, &revoking, &env), &["credential", "reject"], &reject).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!accepted(&github, &token).await);
}

#[tokio::test]
async fn git_credential_finds_the_installation_from_the_repository_path() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let env = app_env(&github.api_base(), &scratch.key());
    let config = [("credential.helper", helper("--host github.com")), ("credential.useHttpPath", "true".into())];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let input = "protocol=https\nhost=github.com\npath=octo-org/octo-repo.git\n\n";
    let output = run(git(&scratch, &config, &env), &["credential", "fill"], input).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("\nusername=x-access-token\npassword=ghs_"));
    assert_eq!((github.mint_count(), github.lookup_count()), (1, 1));

    // The token is for the repository git asked about, not the whole installation.
    let stdout = text(&output.stdout);
    let token = stdout.lines().find_map(|l| l.strip_prefix("password=")).unwrap().to_owned();
    assert!(accepted_on(&github, &token, "/repos/octo-org/octo-repo").await);
    assert!(!accepted_on(&github, &token, "/repos/octo-org/octo-lib").await);

    // Flags that name an owner: a repository of another owner gets no answer (git asks its next helper).
    let owner = [
        ("credential.helper", helper("--host github.com --owner octo-org")),
        ("credential.useHttpPath", "true".into()),
    ];
    let owner: Vec<(&str, &str)> = owner.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let input = "protocol=https\nhost=github.com\npath=evil/octo-repo.git\n\n";
    let output = run(git(&scratch, &owner, &env), &["credential", "fill"], input).await;
    assert!(!output.status.success());
    assert!(!text(&output.stdout).contains("password="));
    assert!(!text(&output.stderr).contains("gh-app-token"), "{}", text(&output.stderr));
    assert_eq!(github.mint_count(), 1);

    // A repository the App is not installed on: no credential, one line saying why.
    let input = "protocol=https\nhost=github.com\npath=someone/else.git\n\n";
    let output = run(git(&scratch, &config, &env), &["credential", "fill"], input).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("gh-app-token: ") && l.contains("someone/else")), "{stderr}");
    assert_no_secrets(&stderr, &[]);

    // Without the path (useHttpPath off) and no installation flags: told what to configure.
    let config = [("credential.helper", helper("--host github.com"))];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output =
        run(git(&scratch, &config, &env), &["credential", "fill"], "protocol=https\nhost=github.com\n\n").await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("credential.useHttpPath"), "{}", text(&output.stderr));
    assert_eq!(github.mint_count(), 1);
}

#[tokio::test]
async fn git_credential_protocol_directly() {
    // The helper on its own, as git drives it: the exact bytes of the answer.
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let args = ["git-credential", "--installation-id", &id, "get"];
    // The default host for a loopback API is the API's own host and port.
    let host = github.api_base().trim_start_matches("http://").to_owned();
    let output =
        cli(&github, &scratch, &args, &format!("protocol=http\nhost={host}\nwwwauth[]=Basic realm=\"x\"\n\n")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("username=x-access-token"));
    assert!(lines.next().unwrap().starts_with("password=ghs_"));
    assert!(lines.next().unwrap().starts_with("password_expiry_utc="));
    assert_eq!(lines.next(), None);
    // Unknown operations and foreign hosts: nothing at all.
    for (op, input) in
        [("frobnicate", "protocol=https\nhost=github.com\n\n"), ("get", "protocol=https\nhost=github.com\n\n")]
    {
        let args = ["git-credential", "--installation-id", &id, op];
        let output = cli(&github, &scratch, &args, input).await;
        assert!(output.status.success() && output.stdout.is_empty() && output.stderr.is_empty());
    }
    // Not git's protocol.
    let output = cli(&github, &scratch, &args, "hello\n").await;
    assert_fails(&output, 3, "`=`");
    assert_eq!(github.mint_count(), 1);
}

#[tokio::test]
async fn behind_gits_cache_a_token_is_minted_once() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let env = app_env(&github.api_base(), &scratch.key());
    // git's cache daemon refuses a socket directory others can read.
    let sockets = scratch.0.join("cache");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = sockets.join("sock").display().to_string();
    let id = FakeGitHub::INSTALLATION_ID;
    // The README's setup: git's own cache first, this helper second.
    let cache = format!("\"cache --timeout=3600 --socket {socket}\"");
    let ours = helper(&format!("--host github.com --installation-id {id}"));
    let config_file = scratch.0.join("gitconfig");
    std::fs::write(&config_file, format!("[credential]\n\thelper = {cache}\n\thelper = {ours}\n")).unwrap();
    let git = || {
        let mut all: Vec<(&str, String)> = vec![
            ("HOME", scratch.0.display().to_string()),
            ("GIT_CONFIG_GLOBAL", config_file.display().to_string()),
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
            ("GIT_TERMINAL_PROMPT", "0".into()),
        ];
        all.extend(env.iter().cloned());
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        command("git", &all)
    };
    let ask = "protocol=https\nhost=github.com\n\n";
    let first = run(git(), &["credential", "fill"], ask).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    // What git does after a request with it succeeded: every helper is told to store it.
    let filled = text(&first.stdout);
    let output = run(git(), &["credential", "approve"], &format!("{filled}\n")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    for _ in 0..3 {
        let again = run(git(), &["credential", "fill"], ask).await;
        assert_eq!(text(&again.stdout), filled, "served from git's cache");
    }
    assert_eq!(github.mint_count(), 1);
    let _ = run(git(), &["credential-cache", "--socket", &socket, "exit"], "").await;
}

/// A server on loopback that answers every request with headers promising 1,000 bytes, sends one, and stalls.
async fn stalling_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[";
            let _ = socket.write_all(head.as_bytes()).await;
            held.push(socket);
        }
    });
    url
}

#[tokio::test]
async fn a_stalling_server_is_given_up_on_after_the_timeout() {
    let scratch = Scratch::new();
    let url = stalling_server().await;
    let env = app_env(&url, &scratch.key());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let timeout = ["--timeout", "300ms"];
    let output = run(command(BIN, &env), &[&timeout[..], &["installations"]].concat(), "").await;
    assert_fails(&output, 4, "300ms");
    let output = run(command(BIN, &env), &[&timeout[..], &["revoke"]].concat(), "ghs_abcdefghijklmnop\n").await;
    assert_fails(&output, 4, "300ms");
    let host = url.trim_start_matches("http://");
    let erase = format!("protocol=http\nhost={host}\nusername=x-access-token\npassword=ghs_abcdef\n\n");
    let args = [&timeout[..], &["git-credential", "--installation-id", "1", "--revoke-on-erase", "erase"]].concat();
    let output = run(command(BIN, &env), &args, &erase).await;
    assert_fails(&output, 4, "300ms");
    let output = run(command(BIN, &env), &[&timeout[..], &["token", "--installation-id", "1"]].concat(), "").await;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
}

#[tokio::test]
async fn values_pasted_where_a_variable_name_belongs_are_not_repeated() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let secret = "ghs_abcdefghijklmnopqrstuvwxyz0123456789";
    let output = cli(&github, &scratch, &["revoke", "--token-env", secret], "").await;
    assert_fails(&output, 2, "--token-env takes the name");
    assert!(!text(&output.stderr).contains("abcdefghij"));
    let output = cli(&github, &scratch, &["--key-env", TEST_PRIVATE_KEY, "installations"], "").await;
    assert_fails(&output, 2, "--key-env takes the name");
    // A URL with a password in it: refused without showing it.
    let mut env = app_env("https://x:hunter2@api.github.com", &scratch.key());
    env.truncate(3);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run(command(BIN, &env), &["installations"], "").await;
    assert_fails(&output, 3, "user info");
    assert!(!text(&output.stderr).contains("hunter2"));
}

#[tokio::test]
async fn a_token_that_cannot_be_printed_is_revoked() {
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let env = app_env(&github.api_base(), &scratch.key());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut command = command(BIN, &env);
    command.stdout(std::fs::File::create("/dev/full").unwrap());
    let output = run(command, &["token", "--installation-id", &id], "").await;
    assert_fails(&output, 5, "could not write");
    assert_eq!(github.mint_count(), 1);
    let revoked = github.requests().iter().filter(|r| r.path == "/installation/token" && r.status == 204).count();
    assert_eq!(revoked, 1, "the token nobody saw was revoked");
}

#[tokio::test]
async fn the_installations_list_corrects_the_clock() {
    for offset in [600, -600] {
        let github = FakeGitHub::builder().clock_offset(offset).start().await;
        let scratch = Scratch::new();
        let output = cli(&github, &scratch, &["installations"], "").await;
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).starts_with("42\tocto-org"));
        let output = cli(&github, &scratch, &["token", "--owner", "octo-org"], "").await;
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
}

#[tokio::test]
async fn a_garbage_answer_holding_a_token_never_reaches_stderr() {
    use tower_github_app::testing::MintFault;
    let github = FakeGitHub::start().await;
    let scratch = Scratch::new();
    let id = FakeGitHub::INSTALLATION_ID.to_string();
    let leaked = "ghs_LeakedLeakedLeakedLeakedLeaked0123";
    for body in [
        format!(r#"{{"token": 5, "expires_at": "{leaked}"}}"#),
        format!(r#"{{"token": "{leaked}", "expires_at": 12345}}"#),
        format!(r#"{{"token": "{leaked}", "expires_at": "2099-01-01T00:00:00Z", "permissions": ["{leaked}"]}}"#),
        format!("{leaked} not json"),
    ] {
        let fault = MintFault::Raw { status: 201, content_type: "application/json", body: body.into() };
        github.fail_mints(fault, 1);
        let output = cli(&github, &scratch, &["token", "--installation-id", &id], "").await;
        assert_fails(&output, 4, "");
        assert!(!text(&output.stderr).contains("Leaked"), "{}", text(&output.stderr));
    }
}
