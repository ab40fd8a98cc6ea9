use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, DATE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::github::{self, Urls};
use super::oauth::{OAuthCounts, OAuthState};
use crate::app::{GitHubApp, PrivateKey, unix_seconds};
use crate::installation::mint::{CLOCK_SKEW_MESSAGES, JWT_NOT_DECODED};

/// A way the token endpoint misbehaves, queued with [`FakeGitHub::fail_mints`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MintFault {
    /// Answer with this status and JSON body, e.g. `Status(502, r#"{"message":"Server Error"}"#.into())`.
    Status(u16, String),
    /// Answer with this status, content type and raw body (HTML error pages, non-UTF-8, huge bodies).
    Raw {
        /// The status code.
        status: u16,
        /// The `Content-Type`.
        content_type: &'static str,
        /// The body, as is.
        body: Bytes,
    },
    /// Answer normally, after this delay (on the Tokio clock).
    Delay(Duration),
    /// Close the connection without answering.
    CloseConnection,
    /// Answer `201` with a token whose `expires_at` is already past.
    ExpiredToken,
    /// Answer `403` as for a suspended installation.
    Suspended,
}

/// The credential a recorded request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// No `Authorization` header.
    None,
    /// An App JWT; `valid` says whether it passed GitHub's checks.
    AppJwt {
        /// Whether signature, issuer and times were accepted.
        valid: bool,
    },
    /// A user access token (`ghu_…`) this server issued.
    UserToken {
        /// The order in which the server issued it, from 1.
        serial: u64,
        /// Its user.
        login: String,
        /// Its state when the request arrived (`Revoked` once its refresh token was spent).
        state: TokenState,
    },
    /// An installation token this server issued.
    InstallationToken {
        /// The order in which the server issued it, from 1.
        serial: u64,
        /// Its installation.
        installation_id: u64,
        /// Its state when the request arrived.
        state: TokenState,
    },
    /// Something this server never issued.
    Unknown,
}

/// The state of an installation token when a request presented it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Accepted.
    Valid,
    /// Younger than the replication lag: refused.
    Replicating,
    /// Past its lifetime: refused.
    Expired,
    /// Revoked: refused.
    Revoked,
}

/// One request the server received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: String,
    /// Whether it came to the uploads origin ([`FakeGitHub::uploads_base`]) rather than the API.
    pub uploads: bool,
    /// The credential it carried.
    pub credential: Credential,
    /// The status the server answered (0 when it closed the connection instead).
    pub status: u16,
}

/// An issue comment the server accepted (`POST /repos/{owner}/{repo}/issues/{number}/comments`), see
/// [`FakeGitHub::comments`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssueComment {
    /// The comment's id, as the answer gave it: 1 for the first comment, and so on.
    pub id: u64,
    /// The installation whose token authorized it.
    pub installation: u64,
    /// That token's serial (see [`MintRecord::serial`]).
    pub token_serial: u64,
    /// The repository's owner, as the path named it.
    pub owner: String,
    /// The repository's name, as the path named it.
    pub repo: String,
    /// The issue (or pull request) number.
    pub issue: u64,
    /// The comment's text.
    pub body: String,
}

pub(super) struct App {
    id: u64,
    pub(super) client_id: String,
    key: DecodingKey,
}

struct InstallationFixture {
    app_id: u64,
    account: String,
    repositories: Vec<String>,
    permissions: BTreeMap<String, String>,
    suspended: bool,
    /// `repository_selection: "all"` rather than `"selected"`.
    all_repositories: bool,
}

impl InstallationFixture {
    /// Whether it covers the repository `owner/name`, named in any case (as GitHub matches names).
    fn covers(&self, full_name: &str) -> bool {
        self.repositories.iter().any(|r| r.eq_ignore_ascii_case(full_name))
    }
}

struct IssuedToken {
    serial: u64,
    installation_id: u64,
    minted_at: Instant,
    expires: Instant,
    revoked: bool,
    /// Repository names the token is limited to; `None` for the whole installation.
    repositories: Option<Vec<String>>,
    /// What the token may do (the installation's permissions, or the ones it was limited to).
    permissions: BTreeMap<String, String>,
    scoped: bool,
}

pub(super) struct State {
    pub(super) urls: Urls,
    pub(super) oauth: OAuthState,
    /// Rendered `GET /repos/{owner}/{repo}` answers, by full name.
    rendered: HashMap<String, Bytes>,
    /// Rendered repositories as lists show them, by full name.
    listed: HashMap<String, Value>,
    /// Rendered `GET /installation/repositories` answers for unscoped tokens, by installation.
    installation_lists: HashMap<u64, Bytes>,
    /// Replaces GitHub's messages for JWTs refused for their times, as another GitHub version might word them.
    jwt_time_message: Option<String>,
    token_lifetime: Duration,
    clock_offset: i64,
    replication_lag: Duration,
    long_tokens: bool,
    prefix: String,
    pub(super) apps: Vec<App>,
    installations: BTreeMap<u64, InstallationFixture>,
    tokens: HashMap<String, IssuedToken>,
    faults: VecDeque<MintFault>,
    /// A fault that answers every token request until healed.
    lasting_fault: Option<MintFault>,
    requests: Vec<RecordedRequest>,
    mints: u64,
    mint_attempts: u64,
    mint_log: Vec<MintRecord>,
    comments: Vec<IssueComment>,
}

/// One token the fake minted: for which installation, and when (see [`FakeGitHub::mint_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MintRecord {
    /// The installation.
    pub installation: u64,
    /// The token's serial: 1 for the first token the fake minted, and so on.
    pub serial: u64,
    /// When it was minted.
    pub at: std::time::Instant,
}

impl State {
    fn wall_now(&self) -> SystemTime {
        shift(SystemTime::now(), self.clock_offset)
    }
}

fn shift(t: SystemTime, seconds: i64) -> SystemTime {
    if seconds >= 0 { t + Duration::from_secs(seconds as u64) } else { t - Duration::from_secs(seconds.unsigned_abs()) }
}

/// Configures a [`FakeGitHub`] before it starts.
#[must_use]
pub struct FakeGitHubBuilder {
    state: State,
}

impl fmt::Debug for FakeGitHubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGitHubBuilder")
            .field("token_lifetime", &self.state.token_lifetime)
            .field("clock_offset", &self.state.clock_offset)
            .field("replication_lag", &self.state.replication_lag)
            .field("prefix", &self.state.prefix)
            .finish_non_exhaustive()
    }
}

impl FakeGitHubBuilder {
    /// How long minted tokens live (default one hour, as on GitHub). `expires_at` has second precision, like
    /// GitHub's, so use whole seconds.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.state.token_lifetime = lifetime;
        self
    }

    /// The server's clock minus the real clock, in seconds.
    pub fn clock_offset(mut self, seconds: i64) -> Self {
        self.state.clock_offset = seconds;
        self
    }

    /// Refuse each new token for this long after it was minted, as GitHub does while it replicates.
    pub fn replication_lag(mut self, lag: Duration) -> Self {
        self.state.replication_lag = lag;
        self
    }

    /// Words the `401` for a JWT refused for its times (`exp` too far ahead, `iat` in the future) with `message`
    /// instead of GitHub's current wording, as another GitHub version (or a future one) might: clients must not
    /// depend on the wording.
    pub fn jwt_time_message(mut self, message: &str) -> Self {
        self.state.jwt_time_message = Some(message.to_owned());
        self
    }

    /// Issue tokens in the ~520-character stateless format `ghs_<appid>_<jwt>`.
    pub fn long_tokens(mut self, long: bool) -> Self {
        self.state.long_tokens = long;
        self
    }

    /// Serve the API under a path prefix, as GitHub Enterprise Server does under `/api/v3`.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.state.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// Registers another App, trusting `key`'s public half for JWTs with `iss` = `app_id` or `client_id`.
    pub fn app(mut self, app_id: u64, client_id: &str, key: &PrivateKey) -> Self {
        self.state.apps.push(App {
            id: app_id,
            client_id: client_id.to_owned(),
            key: DecodingKey::from_rsa_der(&key.public_key_der()),
        });
        self
    }

    /// Registers an installation of `app_id` on `account` with access to `repositories` (`owner/name`), as an
    /// installation on selected repositories (`repository_selection: "selected"`).
    pub fn installation(self, id: u64, app_id: u64, account: &str, repositories: &[&str]) -> Self {
        self.add_installation(id, app_id, account, repositories, false)
    }

    /// Registers an installation of `app_id` on all of `account`'s repositories (`repository_selection: "all"`),
    /// which are `repositories` (`owner/name`).
    pub fn installation_on_all(self, id: u64, app_id: u64, account: &str, repositories: &[&str]) -> Self {
        self.add_installation(id, app_id, account, repositories, true)
    }

    fn add_installation(mut self, id: u64, app_id: u64, account: &str, repositories: &[&str], all: bool) -> Self {
        self.state.installations.insert(
            id,
            InstallationFixture {
                app_id,
                account: account.to_owned(),
                repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
                permissions: default_permissions(),
                suspended: false,
                all_repositories: all,
            },
        );
        self
    }

    /// Binds 127.0.0.1 on a port the OS chooses and starts serving on the current Tokio runtime.
    ///
    /// # Panics
    /// If no port on 127.0.0.1 can be bound: a test environment problem, not an input.
    pub async fn start(mut self) -> FakeGitHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0 for the fake GitHub");
        let addr = listener.local_addr().expect("local address of the fake GitHub");
        let uploads = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0 for the fake uploads origin");
        let uploads_addr = uploads.local_addr().expect("local address of the fake uploads origin");
        self.state.urls = Urls { api: format!("http://{addr}{}", self.state.prefix), web: format!("http://{addr}") };
        // Every fixture repository, rendered once: GitHub-sized answers cost the tests nothing per request.
        let names: std::collections::BTreeSet<String> =
            self.state.installations.values().flat_map(|i| i.repositories.iter().cloned()).collect();
        for name in names {
            let full = Bytes::from(github::full_repository(&self.state.urls, &name, true).to_string());
            self.state.rendered.insert(name.clone(), full);
            let listed = github::repository(&self.state.urls, &name, true);
            self.state.listed.insert(name, listed);
        }
        for (id, installation) in &self.state.installations {
            let repositories: Vec<Value> =
                installation.repositories.iter().filter_map(|name| self.state.listed.get(name).cloned()).collect();
            let body = json!({
                "total_count": repositories.len(),
                "repository_selection": "selected",
                "repositories": repositories,
            });
            self.state.installation_lists.insert(*id, Bytes::from(body.to_string()));
        }
        let state = Arc::new(Mutex::new(self.state));
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(serve(listener, Arc::clone(&state), shutdown_rx.clone(), false));
        tokio::spawn(serve(uploads, Arc::clone(&state), shutdown_rx, true));
        let app = GitHubApp::new(
            FakeGitHub::APP_ID,
            PrivateKey::from_pem(super::TEST_PRIVATE_KEY).expect("the crate's test key parses"),
        );
        FakeGitHub { inner: Arc::new(Inner { state, addr, uploads_addr, app, _shutdown: shutdown }) }
    }
}

fn default_permissions() -> BTreeMap<String, String> {
    [("contents", "write"), ("issues", "write"), ("metadata", "read")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A fake GitHub API server on 127.0.0.1. Stops when the last clone is dropped.
///
/// Starts with App [`FakeGitHub::APP_ID`] (client ID [`FakeGitHub::CLIENT_ID`], key
/// [`TEST_PRIVATE_KEY`](super::TEST_PRIVATE_KEY)) and its installation [`FakeGitHub::INSTALLATION_ID`] on
/// `octo-org` with the repositories `octo-org/octo-repo` and `octo-org/octo-lib`.
#[derive(Clone)]
pub struct FakeGitHub {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    uploads_addr: SocketAddr,
    app: GitHubApp,
    _shutdown: watch::Sender<()>,
}

impl fmt::Debug for FakeGitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGitHub").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

impl FakeGitHub {
    /// The App the server knows from the start.
    pub const APP_ID: u64 = 1;
    /// That App's client ID.
    pub const CLIENT_ID: &'static str = "Iv1.fake0client0id";
    /// That App's client secret (for the OAuth endpoints).
    pub const CLIENT_SECRET: &'static str = "fake-client-secret-for-tests";
    /// Its installation on `octo-org`.
    pub const INSTALLATION_ID: u64 = 42;

    /// A builder with the default fixtures.
    pub fn builder() -> FakeGitHubBuilder {
        let key = PrivateKey::from_pem(super::TEST_PRIVATE_KEY).expect("the crate's test key parses");
        FakeGitHubBuilder {
            state: State {
                urls: Urls { api: String::new(), web: String::new() },
                oauth: OAuthState::default(),
                rendered: HashMap::new(),
                listed: HashMap::new(),
                installation_lists: HashMap::new(),
                jwt_time_message: None,
                token_lifetime: Duration::from_secs(3600),
                clock_offset: 0,
                replication_lag: Duration::ZERO,
                long_tokens: false,
                prefix: String::new(),
                apps: Vec::new(),
                installations: BTreeMap::new(),
                tokens: HashMap::new(),
                faults: VecDeque::new(),
                lasting_fault: None,
                requests: Vec::new(),
                mints: 0,
                mint_log: Vec::new(),
                mint_attempts: 0,
                comments: Vec::new(),
            },
        }
        .app(Self::APP_ID, Self::CLIENT_ID, &key)
        .installation(
            Self::INSTALLATION_ID,
            Self::APP_ID,
            "octo-org",
            &["octo-org/octo-repo", "octo-org/octo-lib"],
        )
    }

    /// Starts a server with the default fixtures.
    pub async fn start() -> FakeGitHub {
        Self::builder().start().await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT` plus the path prefix, for [`InstallationBuilder::api_base`](crate::InstallationBuilder::api_base).
    pub fn api_base(&self) -> String {
        format!("http://{}{}", self.inner.addr, self.state().prefix)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT2`: its uploads origin (release assets), a second port, as `uploads.github.com` is
    /// another host than `api.github.com`. Give it to
    /// [`InstallationBuilder::uploads_base`](crate::InstallationBuilder::uploads_base). It serves
    /// `POST /repos/{owner}/{repo}/releases/{id}/assets?name=NAME` with an installation token.
    pub fn uploads_base(&self) -> String {
        format!("http://{}", self.inner.uploads_addr)
    }

    /// The App [`FakeGitHub::APP_ID`] with the test key. Clones share JWT cache and clock offset.
    pub fn app(&self) -> GitHubApp {
        self.inner.app.clone()
    }

    /// A hyper-util HTTP/1 client for it (and any other http URL).
    pub fn client(&self) -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector())
    }

    /// A hyper-util client speaking HTTP/2 without TLS (prior knowledge): thousands of concurrent requests share
    /// one connection.
    pub fn client_http2(&self) -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).http2_only(true).build(connector())
    }

    /// Tokens minted so far.
    pub fn mint_count(&self) -> u64 {
        self.state().mints
    }

    /// Every token minted so far, in order: which installation, when. For counting mints per installation and
    /// per refresh across processes.
    pub fn mint_log(&self) -> Vec<MintRecord> {
        self.state().mint_log.clone()
    }

    /// Token requests received so far, answered or not.
    pub fn mint_attempts(&self) -> u64 {
        self.state().mint_attempts
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Every issue comment created so far, in order: which installation's token created it, where, and what it
    /// says.
    pub fn comments(&self) -> Vec<IssueComment> {
        self.state().comments.clone()
    }

    /// Sets the lifetime of tokens minted from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().token_lifetime = lifetime;
    }

    /// Sets the server's clock offset, in seconds.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.state().clock_offset = seconds;
    }

    /// Sets the replication lag for tokens minted from now on.
    pub fn set_replication_lag(&self, lag: Duration) {
        self.state().replication_lag = lag;
    }

    /// Makes the next `count` token requests fail with `fault` (`usize::MAX`: until [`heal`](Self::heal)).
    pub fn fail_mints(&self, fault: MintFault, count: usize) {
        let mut state = self.state();
        if count == usize::MAX {
            state.lasting_fault = Some(fault);
        } else {
            state.faults.extend(std::iter::repeat_n(fault, count));
        }
    }

    /// Clears every queued and lasting mint fault.
    pub fn heal(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.lasting_fault = None;
    }

    /// Suspends or unsuspends an installation: its token requests get `403`.
    pub fn set_suspended(&self, installation_id: u64, suspended: bool) {
        if let Some(installation) = self.state().installations.get_mut(&installation_id) {
            installation.suspended = suspended;
        }
    }

    /// Deletes an installation (the App was uninstalled): its tokens stop working, its lookups answer `404`.
    pub fn delete_installation(&self, installation_id: u64) {
        let mut state = self.state();
        state.installations.remove(&installation_id);
        for token in state.tokens.values_mut().filter(|t| t.installation_id == installation_id) {
            token.revoked = true;
        }
    }

    /// How many installation lookups (`GET .../installation` with an App JWT) the server answered.
    pub fn lookup_count(&self) -> usize {
        self.state().requests.iter().filter(|r| r.method == Method::GET && r.path.ends_with("/installation")).count()
    }

    /// The App's OAuth identity (client ID [`FakeGitHub::CLIENT_ID`], secret [`FakeGitHub::CLIENT_SECRET`]) on
    /// this server's web origin, for [`UserToken`](crate::user::UserToken) and the web and device flows.
    pub fn oauth_app(&self) -> crate::user::OAuthApp {
        crate::user::OAuthApp::new(Self::CLIENT_ID, Self::CLIENT_SECRET)
            .with_web_base(&self.web_base())
            .expect("the fake's web origin is a loopback URL")
    }

    /// `http://127.0.0.1:PORT`: the web origin (`https://github.com` on GitHub), where the OAuth endpoints are.
    pub fn web_base(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A web-flow code for `login`, as GitHub's redirect after the user authorized the App would carry: it works
    /// once with [`OAuthApp::exchange_code`](crate::user::OAuthApp::exchange_code).
    pub fn authorization_code(&self, login: &str) -> String {
        self.state().oauth.authorization_code(login)
    }

    /// The user entered `user_code` and authorized the App as `login`: the next device poll gets tokens.
    /// Returns whether the code was known.
    pub fn approve_device(&self, user_code: &str, login: &str) -> bool {
        self.state().oauth.approve_device(user_code, Some(login), false)
    }

    /// The user entered `user_code` and denied the authorization: the next poll gets `access_denied`.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.state().oauth.approve_device(user_code, None, true)
    }

    /// The user revoked the App's authorization (or GitHub did): every token of `login` stops working and its
    /// refresh tokens are refused with `bad_refresh_token`.
    pub fn revoke_user_authorization(&self, login: &str) {
        self.state().oauth.revoke_user(login);
    }

    /// Whether `refresh_token` would be accepted now (issued, not spent, not revoked, not expired).
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.state().oauth.refresh_token_is_live(refresh_token)
    }

    /// How many of `login`'s refresh tokens would be accepted now (1 for a user whose pair was never lost).
    pub fn live_refresh_tokens(&self, login: &str) -> usize {
        self.state().oauth.live_refresh_tokens(login)
    }

    /// What the OAuth endpoints saw: rotations, double spends, device polls.
    pub fn oauth_counts(&self) -> OAuthCounts {
        self.state().oauth.counts
    }

    /// Sets the lifetime of user access tokens issued from now on (`None`: the App has token expiry off, and
    /// issues no refresh tokens).
    pub fn set_user_token_lifetime(&self, lifetime: Option<Duration>) {
        self.state().oauth.access_lifetime = lifetime;
    }

    /// Sets the lifetime of refresh tokens issued from now on.
    pub fn set_refresh_token_lifetime(&self, lifetime: Duration) {
        self.state().oauth.refresh_lifetime = lifetime;
    }

    /// The status of OAuth error answers (GitHub sends `200`; the status is not a contract).
    pub fn set_oauth_error_status(&self, status: u16) {
        self.state().oauth.error_status = status;
    }

    /// The device flow's polling interval for codes issued from now on (GitHub: 5 s).
    pub fn set_device_interval(&self, interval: Duration) {
        self.state().oauth.device_interval = interval;
    }

    /// The next `count` device polls get `slow_down` (adding 5 s to the interval) whatever their timing.
    pub fn force_slow_downs(&self, count: usize) {
        self.state().oauth.forced_slow_downs = count;
    }

    /// A client that answers in this process, without sockets: the same routes, state and records as over
    /// HTTP. For tests under `tokio::time::pause()`, where a request waiting on a socket lets paused time jump
    /// ahead to the next timer (a device flow's 5-second interval, a timeout).
    pub fn in_process(&self) -> InProcess {
        InProcess { state: Arc::clone(&self.inner.state), uploads_port: self.inner.uploads_addr.port() }
    }

    /// Revokes every token issued so far.
    pub fn revoke_all_tokens(&self) {
        for token in self.state().tokens.values_mut() {
            token.revoked = true;
        }
    }
}

/// A [`FakeGitHub`] answering in this process: see [`FakeGitHub::in_process`]. Requests to its uploads port go
/// to the uploads origin; everything else to the API and web origin.
#[derive(Clone)]
pub struct InProcess {
    state: Arc<Mutex<State>>,
    uploads_port: u16,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess").finish_non_exhaustive()
    }
}

impl tower::Service<Request<Full<Bytes>>> for InProcess {
    type Response = Response<Full<Bytes>>;
    type Error = crate::BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let uploads = request.uri().port_u16() == Some(self.uploads_port);
        let state = Arc::clone(&self.state);
        Box::pin(async move { handle(state, request, uploads).await.map_err(Into::into) })
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, mut shutdown: watch::Receiver<()>, uploads: bool) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small answers must not wait for delayed ACKs (Nagle): tests and benchmarks time them.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(_) => continue,
            },
        };
        let state = Arc::clone(&state);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(Arc::clone(&state), request, uploads));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// Dropping the connection instead of answering.
#[derive(Debug)]
struct Hangup;

impl fmt::Display for Hangup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake GitHub closed the connection on purpose")
    }
}

impl std::error::Error for Hangup {}

type Answer = Result<Response<Full<Bytes>>, Hangup>;

async fn handle<B>(state: Arc<Mutex<State>>, request: Request<B>, uploads: bool) -> Answer
where
    B: http_body::Body,
{
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let path = parts.uri.path().to_owned();
    if uploads {
        return Ok(upload(&mut lock(), &parts, &path, body.len()));
    }
    // The web origin's OAuth endpoints, at the root whatever the API's prefix.
    if parts.method == Method::POST && (path == "/login/oauth/access_token" || path == "/login/device/code") {
        let mut s = lock();
        let response = if path == "/login/device/code" {
            super::oauth::device_code(&mut s, &body)
        } else {
            super::oauth::access_token(&mut s, &body)
        };
        return Ok(record(&mut s, &parts.method, &path, Credential::None, response));
    }
    let prefix = lock().prefix.clone();
    let Some(route) = path.strip_prefix(prefix.as_str()).map(str::to_owned) else {
        let mut s = lock();
        let response = not_found(&s);
        return Ok(record(&mut s, &parts.method, &path, Credential::None, response));
    };
    let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    let authorization = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);

    // The token endpoint: faults first, then GitHub's checks.
    if let (&Method::POST, ["app", "installations", id, "access_tokens"]) = (&parts.method, segments.as_slice()) {
        let fault = {
            let mut s = lock();
            s.mint_attempts += 1;
            s.faults.pop_front().or_else(|| s.lasting_fault.clone())
        };
        let id = id.parse::<u64>().unwrap_or(0);
        match fault {
            Some(MintFault::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(MintFault::CloseConnection) => {
                let mut s = lock();
                let credential = classify(&s, authorization.as_deref());
                s.requests.push(RecordedRequest { method: parts.method, path, uploads: false, credential, status: 0 });
                return Err(Hangup);
            }
            Some(MintFault::Status(status, body)) => {
                let mut s = lock();
                let response = respond(&s, status, "application/json; charset=utf-8", Bytes::from(body));
                return Ok(record(&mut s, &parts.method, &path, Credential::None, response));
            }
            Some(MintFault::Raw { status, content_type, body }) => {
                let mut s = lock();
                let response = respond(&s, status, content_type, body);
                return Ok(record(&mut s, &parts.method, &path, Credential::None, response));
            }
            Some(MintFault::Suspended) => {
                let mut s = lock();
                let response = error(&s, 403, "This installation has been suspended");
                return Ok(record(&mut s, &parts.method, &path, Credential::AppJwt { valid: true }, response));
            }
            Some(MintFault::ExpiredToken) | None => {}
        }
        let expired = fault == Some(MintFault::ExpiredToken);
        let mut s = lock();
        let (credential, response) = mint(&mut s, id, authorization.as_deref(), &body, expired);
        return Ok(record(&mut s, &parts.method, &path, credential, response));
    }

    let mut s = lock();
    let (credential, response) = match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["app"]) => with_jwt(&s, authorization.as_deref(), |s, app| {
            let client_id = s.apps.iter().find(|a| a.id == app).map(|a| a.client_id.clone()).unwrap_or_default();
            ok(s, github::app(&s.urls, app, &client_id))
        }),
        (&Method::GET, ["app", "installations"]) => with_jwt(&s, authorization.as_deref(), |s, app| {
            let list: Vec<Value> = s
                .installations
                .iter()
                .filter(|(_, i)| i.app_id == app)
                .map(|(id, i)| installation_json(s, *id, i))
                .collect();
            ok(s, Value::Array(list))
        }),
        (&Method::GET, ["app", "installations", id]) => {
            let id = id.parse::<u64>().unwrap_or(0);
            with_jwt(&s, authorization.as_deref(), |s, app| match s.installations.get(&id) {
                Some(i) if i.app_id == app => ok(s, installation_json(s, id, i)),
                _ => not_found(s),
            })
        }
        (&Method::GET, ["repos", owner, repo, "installation"]) => {
            let full_name = format!("{owner}/{repo}");
            with_jwt(&s, authorization.as_deref(), |s, app| {
                match s.installations.iter().find(|(_, i)| i.app_id == app && i.covers(&full_name)) {
                    Some((id, i)) => ok(s, installation_json(s, *id, i)),
                    None => not_found(s),
                }
            })
        }
        (&Method::GET, ["orgs" | "users", account, "installation"]) => {
            let account = (*account).to_owned();
            with_jwt(&s, authorization.as_deref(), |s, app| {
                match s.installations.iter().find(|(_, i)| i.app_id == app && i.account.eq_ignore_ascii_case(&account))
                {
                    Some((id, i)) => ok(s, installation_json(s, *id, i)),
                    None => not_found(s),
                }
            })
        }
        (&Method::GET, ["repos", owner, repo]) => {
            let full_name = format!("{owner}/{repo}");
            let (credential, response) = with_token(&s, authorization.as_deref(), |s, installation, token| {
                if !token.sees(s, installation, &full_name) {
                    return not_found(s);
                }
                match s.rendered.get(&full_name) {
                    Some(body) => respond(s, 200, "application/json; charset=utf-8", body.clone()),
                    None => ok(s, github::full_repository(&s.urls, &full_name, true)),
                }
            });
            (credential, response)
        }
        (&Method::POST, ["repos", owner, repo, "issues", number, "comments"]) => {
            let full_name = format!("{owner}/{repo}");
            let number = number.parse::<u64>().ok().filter(|n| *n > 0);
            let text = comment_text(&body);
            let id = s.comments.len() as u64 + 1;
            let at = humantime::format_rfc3339_seconds(s.wall_now()).to_string();
            let (credential, response) = with_token(&s, authorization.as_deref(), |s, installation, token| {
                let Some(number) = number.filter(|_| token.sees(s, installation, &full_name)) else {
                    return not_found(s);
                };
                if token.permissions.get("issues").is_none_or(|level| level != "write") {
                    return error(s, 403, "Resource not accessible by integration");
                }
                let text = match &text {
                    Ok(text) => text,
                    Err((status, message)) => return error(s, *status, message),
                };
                let comment = github::issue_comment(&s.urls, &full_name, number, id, text, &at);
                let mut response = respond(s, 201, "application/json; charset=utf-8", Bytes::from(comment.to_string()));
                if let Some(location) = comment["url"].as_str().and_then(|url| http::HeaderValue::try_from(url).ok()) {
                    response.headers_mut().insert(LOCATION, location);
                }
                response
            });
            if response.status() == StatusCode::CREATED
                && let (Credential::InstallationToken { serial, installation_id, .. }, Ok(text), Some(issue)) =
                    (&credential, text, number)
            {
                s.comments.push(IssueComment {
                    id,
                    installation: *installation_id,
                    token_serial: *serial,
                    owner: (*owner).to_owned(),
                    repo: (*repo).to_owned(),
                    issue,
                    body: text,
                });
            }
            (credential, response)
        }
        (&Method::GET, ["installation", "repositories"]) => {
            with_token(&s, authorization.as_deref(), |s, installation, token| {
                if token.repositories.is_none()
                    && let Some(body) = s.installation_lists.get(&installation)
                {
                    return respond(s, 200, "application/json; charset=utf-8", body.clone());
                }
                let repositories: Vec<Value> = s.installations[&installation]
                    .repositories
                    .iter()
                    .filter(|full| {
                        let name = full.split('/').nth(1).unwrap_or_default();
                        token.repositories.as_ref().is_none_or(|names| names.iter().any(|n| n == name))
                    })
                    .map(|full| listed(s, full))
                    .collect();
                ok(
                    s,
                    json!({"total_count": repositories.len(), "repository_selection": "selected", "repositories": repositories}),
                )
            })
        }
        (&Method::DELETE, ["installation", "token"]) => {
            let token = bearer(authorization.as_deref()).map(str::to_owned);
            let (credential, response) =
                with_token(&s, authorization.as_deref(), |s, _, _| respond(s, 204, "text/plain", Bytes::new()));
            if response.status() == StatusCode::NO_CONTENT
                && let Some(issued) = token.and_then(|t| s.tokens.get_mut(&t))
            {
                issued.revoked = true;
            }
            (credential, response)
        }
        (&Method::GET, ["user"]) => {
            let credential = classify(&s, authorization.as_deref());
            let response = match &credential {
                Credential::UserToken { login, state: TokenState::Valid, .. } => {
                    ok(&s, json!({"login": login, "id": github::id_of(login), "type": "User"}))
                }
                Credential::None => error(&s, 401, "Requires authentication"),
                Credential::InstallationToken { state: TokenState::Valid, .. } => {
                    error(&s, 403, "Resource not accessible by integration")
                }
                _ => error(&s, 401, "Bad credentials"),
            };
            (credential, response)
        }
        (&Method::GET, ["redirect"]) => {
            let to = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("to="))
                .map(|to| to.replace("%3A", ":").replace("%2F", "/"))
                .unwrap_or_default();
            let mut response = respond(&s, 302, "text/plain", Bytes::new());
            if let Ok(location) = http::HeaderValue::try_from(to) {
                response.headers_mut().insert(LOCATION, location);
            }
            (classify(&s, authorization.as_deref()), response)
        }
        _ => (classify(&s, authorization.as_deref()), not_found(&s)),
    };
    Ok(record(&mut s, &parts.method, &path, credential, response))
}

fn record(
    s: &mut State,
    method: &Method,
    path: &str,
    credential: Credential,
    response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    s.requests.push(RecordedRequest {
        method: method.clone(),
        path: path.to_owned(),
        uploads: false,
        credential,
        status: response.status().as_u16(),
    });
    response
}

pub(super) fn respond(s: &State, status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    if let Ok(date) = http::HeaderValue::try_from(httpdate::fmt_http_date(s.wall_now())) {
        headers.insert(DATE, date);
    }
    headers.insert("x-github-request-id", http::HeaderValue::from_static("FAKE:0001"));
    response
}

fn ok(s: &State, body: Value) -> Response<Full<Bytes>> {
    respond(s, 200, "application/json; charset=utf-8", Bytes::from(body.to_string()))
}

fn error(s: &State, status: u16, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": status.to_string(),
    });
    respond(s, status, "application/json; charset=utf-8", Bytes::from(body.to_string()))
}

fn not_found(s: &State) -> Response<Full<Bytes>> {
    error(s, 404, "Not Found")
}

fn listed(s: &State, full_name: &str) -> Value {
    s.listed.get(full_name).cloned().unwrap_or_else(|| github::repository(&s.urls, full_name, true))
}

fn installation_json(s: &State, id: u64, installation: &InstallationFixture) -> Value {
    let client_id = s.apps.iter().find(|a| a.id == installation.app_id).map(|a| a.client_id.as_str()).unwrap_or("");
    github::installation(
        &s.urls,
        id,
        installation.app_id,
        client_id,
        &installation.account,
        github::Access {
            permissions: &installation.permissions,
            suspended: installation.suspended,
            all_repositories: installation.all_repositories,
        },
    )
}

/// The uploads origin: `POST /repos/{owner}/{repo}/releases/{id}/assets?name=NAME` with an installation token.
fn upload(s: &mut State, parts: &http::request::Parts, path: &str, size: usize) -> Response<Full<Bytes>> {
    let authorization = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = parts.uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("name="))).unwrap_or("asset");
    let (credential, response) = match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["repos", owner, repo, "releases", release, "assets"]) => {
            let full_name = format!("{owner}/{repo}");
            let release = release.parse::<u64>().unwrap_or(0);
            let name = name.to_owned();
            with_token(s, authorization.as_deref(), |s, installation, _| {
                if !s.installations[&installation].covers(&full_name) {
                    return not_found(s);
                }
                let id = github::id_of(&format!("{full_name}/{release}/{name}"));
                let body = json!({
                    "id": id,
                    "name": name,
                    "state": "uploaded",
                    "size": size,
                    "url": format!("{}/repos/{full_name}/releases/assets/{id}", s.urls.api),
                    "browser_download_url": format!("{}/{full_name}/releases/download/{release}/{name}", s.urls.web),
                });
                respond(s, 201, "application/json; charset=utf-8", Bytes::from(body.to_string()))
            })
        }
        _ => (classify(s, authorization.as_deref()), not_found(s)),
    };
    s.requests.push(RecordedRequest {
        method: parts.method.clone(),
        path: path.to_owned(),
        uploads: true,
        credential,
        status: response.status().as_u16(),
    });
    response
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("token ")).map(str::trim)
}

#[derive(Deserialize)]
struct Claims {
    iat: Option<Value>,
    exp: Option<Value>,
    iss: Option<Value>,
}

/// GitHub's checks of an App JWT: signature and issuer, then `exp`, then `iat`. Returns the App id.
fn check_jwt(s: &State, authorization: Option<&str>) -> Result<u64, &'static str> {
    let jwt = bearer(authorization).ok_or("Requires authentication")?;
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(jwt).map_err(|_| JWT_NOT_DECODED)?;
    let app = match claims.iss {
        Some(Value::Number(n)) => n.as_u64().and_then(|id| s.apps.iter().find(|a| a.id == id)),
        Some(Value::String(text)) => {
            s.apps.iter().find(|a| a.client_id == text || text.parse::<u64>().is_ok_and(|id| id == a.id))
        }
        _ => None,
    }
    .ok_or(JWT_NOT_DECODED)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &app.key, &validation).map_err(|_| JWT_NOT_DECODED)?;
    let now = unix_seconds(s.wall_now());
    let exp = claims.exp.as_ref().and_then(Value::as_i64).ok_or(CLOCK_SKEW_MESSAGES[1])?;
    if exp <= now {
        return Err(CLOCK_SKEW_MESSAGES[1]);
    }
    if exp > now + 600 {
        return Err(CLOCK_SKEW_MESSAGES[0]);
    }
    let iat = claims.iat.as_ref().and_then(Value::as_i64).ok_or(CLOCK_SKEW_MESSAGES[2])?;
    if iat > now {
        return Err(CLOCK_SKEW_MESSAGES[2]);
    }
    Ok(app.id)
}

fn with_jwt(
    s: &State,
    authorization: Option<&str>,
    answer: impl FnOnce(&State, u64) -> Response<Full<Bytes>>,
) -> (Credential, Response<Full<Bytes>>) {
    match check_jwt(s, authorization) {
        Ok(app) => (Credential::AppJwt { valid: true }, answer(s, app)),
        Err(message) => (classify(s, authorization), error(s, 401, jwt_message(s, message))),
    }
}

/// GitHub's message for a refused JWT, in this server's wording.
fn jwt_message<'a>(s: &'a State, message: &'a str) -> &'a str {
    match &s.jwt_time_message {
        Some(wording) if CLOCK_SKEW_MESSAGES.contains(&message) => wording,
        _ => message,
    }
}

/// What a request's credential is, without judging it for a particular route.
fn classify(s: &State, authorization: Option<&str>) -> Credential {
    let Some(presented) = bearer(authorization) else {
        return Credential::None;
    };
    if let Some(token) = s.tokens.get(presented) {
        return Credential::InstallationToken {
            serial: token.serial,
            installation_id: token.installation_id,
            state: token_state(s, token),
        };
    }
    if let Some((serial, login, state)) = s.oauth.access_token(presented) {
        return Credential::UserToken { serial, login, state };
    }
    if presented.starts_with("eyJ") {
        return Credential::AppJwt { valid: check_jwt(s, authorization).is_ok() };
    }
    Credential::Unknown
}

fn token_state(s: &State, token: &IssuedToken) -> TokenState {
    let now = Instant::now();
    if token.revoked {
        TokenState::Revoked
    } else if now >= token.expires {
        TokenState::Expired
    } else if now < token.minted_at + s.replication_lag {
        TokenState::Replicating
    } else {
        TokenState::Valid
    }
}

impl IssuedToken {
    /// Whether a token of `installation` can see the repository `owner/name`: the installation covers it, and
    /// the token is not limited to other repositories. GitHub answers `404` for a repository a token cannot see.
    fn sees(&self, s: &State, installation: u64, full_name: &str) -> bool {
        let name = full_name.split_once('/').map_or(full_name, |(_, name)| name);
        s.installations[&installation].covers(full_name)
            && self.repositories.as_ref().is_none_or(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// The text of an issue comment request (`{"body": "..."}`), or GitHub's status and message for a request without
/// one: `400` for a body that is not JSON, `422` for JSON without a `body` string or with an empty one.
fn comment_text(body: &[u8]) -> Result<String, (u16, String)> {
    let request: Value = serde_json::from_slice(body).map_err(|_| (400, "Problems parsing JSON".to_owned()))?;
    match request.get("body") {
        None | Some(Value::Null) => Err((422, "Invalid request.\n\n\"body\" wasn't supplied.".to_owned())),
        Some(Value::String(text)) if text.trim().is_empty() => Err((422, "Validation Failed".to_owned())),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err((422, format!("Invalid request.\n\nFor 'properties/body', {other} is not a string."))),
    }
}

fn with_token(
    s: &State,
    authorization: Option<&str>,
    answer: impl FnOnce(&State, u64, &IssuedToken) -> Response<Full<Bytes>>,
) -> (Credential, Response<Full<Bytes>>) {
    let credential = classify(s, authorization);
    let token = bearer(authorization).and_then(|t| s.tokens.get(t));
    match (&credential, token) {
        (Credential::InstallationToken { installation_id, state: TokenState::Valid, .. }, Some(token)) => {
            let response = answer(s, *installation_id, token);
            (credential, response)
        }
        (Credential::InstallationToken { state: TokenState::Replicating, .. }, Some(token)) if token.scoped => {
            let response = error(s, 403, "Resource not accessible by integration");
            (credential, response)
        }
        (Credential::None, _) => (credential, error(s, 401, "Requires authentication")),
        _ => (credential, error(s, 401, "Bad credentials")),
    }
}

#[derive(Deserialize, Default)]
struct ScopeRequest {
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    repository_ids: Vec<u64>,
    #[serde(default)]
    permissions: BTreeMap<String, String>,
}

fn mint(
    s: &mut State,
    id: u64,
    authorization: Option<&str>,
    body: &[u8],
    expired: bool,
) -> (Credential, Response<Full<Bytes>>) {
    let app = match check_jwt(s, authorization) {
        Ok(app) => app,
        Err(message) => return (classify(s, authorization), error(s, 401, jwt_message(s, message))),
    };
    let credential = Credential::AppJwt { valid: true };
    let Some(installation) = s.installations.get(&id).filter(|i| i.app_id == app) else {
        return (credential, not_found(s));
    };
    if installation.suspended {
        return (credential, error(s, 403, "This installation has been suspended"));
    }
    let scope: ScopeRequest = if body.is_empty() {
        ScopeRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(scope) => scope,
            Err(_) => return (credential, error(s, 400, "Problems parsing JSON")),
        }
    };
    let names: Vec<&str> = installation.repositories.iter().filter_map(|r| r.split('/').nth(1)).collect();
    if scope.repositories.iter().any(|r| !names.contains(&r.as_str())) || !scope.repository_ids.is_empty() {
        return (
            credential,
            error(
                s,
                422,
                "There is at least one repository that does not exist or is not accessible to the parent installation.",
            ),
        );
    }
    let granted = |name: &String, level: &String| {
        installation.permissions.get(name).is_some_and(|have| have == level || have == "write" && level == "read")
    };
    if !scope.permissions.iter().all(|(name, level)| granted(name, level)) {
        return (credential, error(s, 422, "The permissions requested are not granted to this installation."));
    }
    let permissions =
        if scope.permissions.is_empty() { installation.permissions.clone() } else { scope.permissions.clone() };
    let scoped = !scope.repositories.is_empty() || !scope.permissions.is_empty();
    let repositories: Vec<Value> = installation
        .repositories
        .iter()
        .filter(|full| scope.repositories.iter().any(|r| full.ends_with(&format!("/{r}"))))
        .map(|full| listed(s, full))
        .collect();

    s.mints += 1;
    let serial = s.mints;
    s.mint_log.push(MintRecord { installation: id, serial, at: std::time::Instant::now() });
    let token = if s.long_tokens {
        let filler: String = std::iter::repeat_with(fastrand::alphanumeric).take(480).collect();
        format!("ghs_{app}_eyJhbGciOiJSUzI1NiJ9.{}-{}_{}", &filler[..200], &filler[200..400], &filler[400..])
    } else {
        let random: String = std::iter::repeat_with(fastrand::alphanumeric).take(36).collect();
        format!("ghs_{random}")
    };
    let now = Instant::now();
    let lifetime = s.token_lifetime;
    let wall_now = s.wall_now();
    let expires_at = if expired { wall_now - Duration::from_secs(60) } else { wall_now + lifetime };
    let answer = json!({
        "token": token,
        "expires_at": humantime::format_rfc3339_seconds(expires_at).to_string(),
        "permissions": permissions,
        // An unscoped token covers what the installation covers.
        "repository_selection": if scope.repositories.is_empty() && installation.all_repositories { "all" } else { "selected" },
        "repositories": repositories,
    });
    s.tokens.insert(
        token,
        IssuedToken {
            serial,
            installation_id: id,
            minted_at: now,
            expires: now + lifetime,
            revoked: false,
            repositories: (!scope.repositories.is_empty()).then_some(scope.repositories),
            permissions,
            scoped,
        },
    );
    (credential, respond(s, 201, "application/json; charset=utf-8", Bytes::from(answer.to_string())))
}
