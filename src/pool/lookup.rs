//! Which installation of the App covers an account or a repository: `GET /repos/{owner}/{repo}/installation`,
//! `GET /orgs/{org}/installation`, `GET /users/{user}/installation` (App JWT), cached.
//!
//! Owns the cache of answers (positive ones until forgotten or evicted, "not installed" ones for a short while),
//! the single flight of lookups per account, and the reading of GitHub's answer. An installation covers an
//! account: when it covers all of the account's repositories (`repository_selection: "all"`), one lookup serves
//! every repository of the account; when it covers selected ones, each repository is looked up once (GitHub
//! answers `404` for the others). It never mints.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::GitHubApp;
use crate::error::{Error, ErrorKind, scrub};
use crate::installation::ApiBase;
use crate::installation::mint::{MintClient, api_request, corrected_clock, send};

/// What was asked: an account (`/orgs/X`, `/users/X`, or an account by name) or a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    /// An organization (`/orgs/{org}/installation`).
    Org(String),
    /// A user or an account of unknown kind (`/users/{user}/installation`, which GitHub answers for both).
    User(String),
    /// `owner/repo`.
    Repository(String, String),
}

impl Subject {
    fn owner(&self) -> &str {
        match self {
            Subject::Org(owner) | Subject::User(owner) | Subject::Repository(owner, _) => owner,
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Subject::Repository(_, repo) => Some(repo),
            _ => None,
        }
    }

    fn path(&self) -> String {
        match self {
            Subject::Org(org) => format!("/orgs/{org}/installation"),
            Subject::User(user) => format!("/users/{user}/installation"),
            Subject::Repository(owner, repo) => format!("/repos/{owner}/{repo}/installation"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Subject::Org(owner) | Subject::User(owner) => format!("the account {owner}"),
            Subject::Repository(owner, repo) => format!("the repository {owner}/{repo}"),
        }
    }

    /// Names as GitHub allows them: letters, digits, `-` (and `.`, `_` in repository names). Anything else
    /// would change the lookup's URL.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let login =
            |s: &str| !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let repo = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if login(self.owner()) && self.repo().is_none_or(repo) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "{} is not a GitHub account or repository name, so its installation cannot be looked up: names \
                 are letters, digits and '-' ('.' and '_' too in repository names)",
                scrub(&self.describe())
            ),
        ))
    }
}

/// A lookup's answer, as cached.
#[derive(Debug)]
pub(crate) struct Resolved {
    owner: Box<str>,
    repo: Option<Box<str>>,
    pub(crate) outcome: Outcome,
    /// Set when the answer is forgotten, so that service clones that cached it look again.
    forgotten: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The installation's id, and whether it covers all of the account's repositories.
    Installed { id: u64, all_repositories: bool },
    /// GitHub answered `404`; remembered until then.
    NotInstalled { until: Instant },
}

impl Resolved {
    fn names(&self, owner: &str, repo: Option<&str>) -> bool {
        self.owner.eq_ignore_ascii_case(owner)
            && match (&self.repo, repo) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    }

    /// The installation, if this answer names one.
    pub(crate) fn installation(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Installed { id, .. } => Some(id),
            Outcome::NotInstalled { .. } => None,
        }
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether a request naming this answer's owner (and `repo`) is served by its installation.
    #[inline]
    pub(crate) fn serves(&self, repo: Option<&str>) -> bool {
        let Outcome::Installed { all_repositories, .. } = self.outcome else {
            return false;
        };
        if self.forgotten.load(Ordering::Relaxed) {
            return false;
        }
        match (repo, &self.repo) {
            (None, None) => true,
            (Some(_), None) => all_repositories,
            (Some(repo), Some(mine)) => super::same_name(mine, repo),
            (None, Some(_)) => false,
        }
    }
}

type Flight = watch::Receiver<Option<Result<(), Error>>>;

/// The cache of lookups and the lookups in flight.
pub(crate) struct Lookups {
    /// By a keyed hash of the lower-cased names (so that a request's names are looked up without allocating);
    /// every hit is checked against the names it was stored for.
    cache: moka::sync::Cache<u64, Arc<Resolved>>,
    hasher: RandomState,
    /// One lookup per account at a time: others for the same account wait for it, then read the cache.
    flights: Mutex<HashMap<u64, Flight>>,
    negative_ttl: Duration,
    /// Bumped by every forget.
    generation: AtomicU64,
}

/// What the lookup of a request's installation found.
pub(crate) enum Found {
    Installation(u64),
    NotInstalled,
    Unknown,
}

impl Lookups {
    pub(crate) fn new(capacity: u64, negative_ttl: Duration) -> Self {
        Lookups {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            hasher: RandomState::new(),
            flights: Mutex::new(HashMap::new()),
            negative_ttl,
            generation: AtomicU64::new(0),
        }
    }

    fn key(&self, owner: &str, repo: Option<&str>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for b in owner.bytes() {
            hasher.write_u8(b.to_ascii_lowercase());
        }
        if let Some(repo) = repo {
            hasher.write_u8(b'/');
            for b in repo.bytes() {
                hasher.write_u8(b.to_ascii_lowercase());
            }
        }
        repo.is_some().hash(&mut hasher);
        hasher.finish()
    }

    /// Where a "not installed" answer about `subject` is kept: its own key, except for an organization, whose
    /// `404` (the login may be a user's) must not hide the answer of the user route.
    fn negative_key(&self, subject: &Subject) -> u64 {
        match subject {
            Subject::Org(org) => self.key(org, None) ^ 0x6f72_6773_0000_0001,
            _ => self.key(subject.owner(), subject.repo()),
        }
    }

    fn get(&self, owner: &str, repo: Option<&str>) -> Option<Arc<Resolved>> {
        self.cache
            .get(&self.key(owner, repo))
            .filter(|resolved| resolved.names(owner, repo) && !resolved.forgotten.load(Ordering::Relaxed))
    }

    /// The cached answer for a request naming `owner` (and `repo`): no request, no allocation. An account's
    /// installation serves its repositories when it covers all of them.
    #[inline]
    pub(crate) fn cached(&self, owner: &str, repo: Option<&str>) -> Option<Arc<Resolved>> {
        let account = self.get(owner, None);
        let Some(repo) = repo else {
            return account.filter(|a| a.installation().is_some());
        };
        if let Some(account) = account
            && let Outcome::Installed { all_repositories: true, .. } = account.outcome
        {
            return Some(account);
        }
        self.get(owner, Some(repo))
    }

    /// The installation for `subject`: from the cache, else from GitHub. Lookups for an account whose answer is
    /// not known yet go one at a time (the first answer may cover all of its repositories); once it is known,
    /// the lookups of its other repositories go out side by side.
    pub(crate) async fn resolve(&self, subject: &Subject, github: &Github<'_>) -> Result<u64, Error> {
        subject.check()?;
        let mut waited = false;
        loop {
            match self.find(subject) {
                Found::Installation(id) => return Ok(id),
                Found::NotInstalled => return Err(not_installed(subject, github)),
                Found::Unknown => {}
            }
            // The first lookup of an account goes alone (its answer may cover every repository); requests that
            // waited for it and still have no answer (a repository of an installation on selected repositories,
            // or of an account without the App) ask for their own subject side by side.
            let key = if waited || self.get(subject.owner(), None).is_some() {
                self.negative_key(subject)
            } else {
                self.key(subject.owner(), None)
            };
            // Join the lookup in flight for the key, or start one.
            let (flight, sender) = {
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                match flights.get(&key) {
                    Some(flight) => (Some(flight.clone()), None),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        flights.insert(key, receiver);
                        (None, Some(sender))
                    }
                }
            };
            if let Some(mut flight) = flight {
                // Its answer is in the cache now (or it was for another repository of the account): look again.
                // A lookup GitHub failed (server error, timeout, rate limit, refused JWT) would fail again:
                // everyone waiting gets its error. Other errors are about its subject only.
                let outcome = flight.wait_for(Option::is_some).await.map(|o| o.clone());
                if let Ok(Some(Err(error))) = outcome
                    && is_about_github(&error)
                {
                    return Err(error);
                }
                waited = true;
                continue;
            }
            // Removed however this ends (the future may be dropped with its request).
            let _flight = Landing { lookups: self, key };
            let sender = sender.expect("set when no flight was found");
            let outcome = self.look_up(subject, github).await;
            let _ = sender.send(Some(outcome.clone().map(|_| ())));
            // This request takes its own answer, cached or not (a zero `not_installed_ttl`, a forget meanwhile).
            return match outcome? {
                Some(id) => Ok(id),
                None => Err(not_installed(subject, github)),
            };
        }
    }

    fn find(&self, subject: &Subject) -> Found {
        let (owner, repo) = (subject.owner(), subject.repo());
        if let Some(resolved) = self.cached(owner, repo)
            && let Outcome::Installed { id, .. } = resolved.outcome
        {
            return Found::Installation(id);
        }
        // A "not installed" answer for exactly this account or repository, while it is remembered.
        let negative = self.cache.get(&self.negative_key(subject)).filter(|r| r.names(owner, repo));
        match negative.filter(|r| !r.forgotten.load(Ordering::Relaxed)).map(|resolved| resolved.outcome) {
            Some(Outcome::NotInstalled { until }) if Instant::now() < until => Found::NotInstalled,
            _ => Found::Unknown,
        }
    }

    /// Asks GitHub and caches the answer (unless something was forgotten meanwhile: the answer may predate it).
    /// `Some(installation)`, or `None` when GitHub says the App is not installed there.
    async fn look_up(&self, subject: &Subject, github: &Github<'_>) -> Result<Option<u64>, Error> {
        let span = tracing::info_span!(
            "lookup",
            account = subject.owner(),
            repository = subject.repo().unwrap_or(""),
            installation = tracing::field::Empty,
        );
        let outcome = self.ask(subject, github).instrument(span.clone()).await;
        let label = match &outcome {
            Ok(Some(installation)) => {
                span.record("installation", installation);
                "found"
            }
            Ok(None) => "not_installed",
            Err(_) => "failed",
        };
        crate::telemetry::looked_up(label);
        outcome
    }

    async fn ask(&self, subject: &Subject, github: &Github<'_>) -> Result<Option<u64>, Error> {
        github.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let what = format!("the installation lookup for {}", subject.describe());
        let url = github.api_base.url(&subject.path())?;
        let mut corrected = false;
        let response = loop {
            let jwt = github.app.jwt().await?;
            let request = api_request(Method::GET, url.clone(), github.user_agent, jwt.authorization())
                .body(bytes::Bytes::new())
                .map_err(|e| {
                    Error::build(ErrorKind::InvalidRequest, "could not build the lookup").source(e).finish()
                })?;
            let response = send(github.client, request, github.timeout, &what, github.api_base).await?;
            // A JWT refused for the clock it was signed with: once more, with GitHub's clock.
            if !corrected
                && corrected_clock(
                    response.status(),
                    response.headers(),
                    response.body(),
                    github.app,
                    jwt.clock_offset(),
                )
            {
                corrected = true;
                tracing::warn!(
                    offset = github.app.clock_offset(),
                    "{what}: the App JWT was refused for this machine's clock; retrying with GitHub's"
                );
                continue;
            }
            break response;
        };
        let status = response.status();
        let owner: Box<str> = subject.owner().into();
        let repo: Option<Box<str>> = subject.repo().map(Into::into);
        if status == StatusCode::NOT_FOUND {
            // "Forever" is a century.
            let until = Instant::now() + self.negative_ttl.min(Duration::from_secs(100 * 365 * 24 * 3600));
            let resolved =
                Resolved { owner, repo, outcome: Outcome::NotInstalled { until }, forgotten: AtomicBool::new(false) };
            self.store(generation, self.negative_key(subject), resolved);
            github.counters.not_installed.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::TEMPORARY_REDIRECT {
            let moved_to = response.headers().get(http::header::LOCATION).and_then(|l| l.to_str().ok());
            let moved_to = scrub(moved_to.unwrap_or("an address GitHub did not give"));
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{what} was answered {status}: {} was renamed or transferred (GitHub points to {moved_to}). \
                     Send requests to its new name",
                    subject.describe()
                ),
            ));
        }
        if !status.is_success() {
            return Err(lookup_refused(status, &what, response.body(), github));
        }
        #[derive(Deserialize)]
        struct Answer {
            id: u64,
            #[serde(default)]
            repository_selection: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(response.body()).map_err(|e| {
            Error::new(
                ErrorKind::MalformedResponse,
                format!("{what} was answered with something that is not an installation ({e}): is a proxy answering?"),
            )
        })?;
        if answer.id == 0 {
            return Err(Error::new(
                ErrorKind::MalformedResponse,
                format!("{what} was answered with installation id 0"),
            ));
        }
        let all_repositories = answer.repository_selection.as_deref() == Some("all");
        let installed = Outcome::Installed { id: answer.id, all_repositories };
        // The account's entry serves its other repositories (when the installation covers all of them) and its
        // org and user routes.
        let account =
            Resolved { owner: owner.clone(), repo: None, outcome: installed, forgotten: AtomicBool::new(false) };
        self.store(generation, self.key(subject.owner(), None), account);
        if let Some(repo_name) = subject.repo() {
            let resolved = Resolved { owner, repo, outcome: installed, forgotten: AtomicBool::new(false) };
            self.store(generation, self.key(subject.owner(), Some(repo_name)), resolved);
        }
        Ok(Some(answer.id))
    }

    /// Caches an answer, unless something was forgotten since its lookup started (`generation`).
    fn store(&self, generation: u64, key: u64, resolved: Resolved) {
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let resolved = Arc::new(resolved);
        self.cache.insert(key, Arc::clone(&resolved));
        // A forget that ran between the check and the insert may not have seen the entry: take it back.
        if self.generation.load(Ordering::Acquire) != generation {
            resolved.forgotten.store(true, Ordering::Relaxed);
            self.cache.invalidate(&key);
        }
    }

    /// Drops every answer about `owner` (its repositories too).
    pub(crate) fn forget_account(&self, owner: &str) {
        self.forget(|resolved| resolved.owner.eq_ignore_ascii_case(owner));
    }

    /// Drops every answer that names `installation`.
    pub(crate) fn forget_installation(&self, installation: u64) {
        self.forget(|resolved| resolved.installation() == Some(installation));
    }

    fn forget(&self, which: impl Fn(&Resolved) -> bool) {
        // Lookups in flight may have been answered before the event: their answers are not cached.
        self.generation.fetch_add(1, Ordering::AcqRel);
        for (key, resolved) in self.cache.iter() {
            if which(&resolved) {
                // Service clones that cached it stop using it at once.
                resolved.forgotten.store(true, Ordering::Relaxed);
                self.cache.invalidate(&*key);
            }
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// Removes an account's flight when its lookup ends, however it ends.
struct Landing<'a> {
    lookups: &'a Lookups,
    key: u64,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.lookups.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// What a lookup needs of the pool.
pub(crate) struct Github<'a> {
    pub(crate) app: &'a GitHubApp,
    pub(crate) api_base: &'a ApiBase,
    pub(crate) client: &'a MintClient,
    pub(crate) user_agent: &'a http::HeaderValue,
    pub(crate) timeout: Duration,
    pub(crate) counters: &'a super::Counters,
    pub(crate) negative_ttl: Duration,
}

/// Whether a failed lookup says something about GitHub (or the App), not about the account or repository asked.
fn is_about_github(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ServerError
            | ErrorKind::Transport
            | ErrorKind::Timeout
            | ErrorKind::RateLimited
            | ErrorKind::JwtRejected
            | ErrorKind::ClockSkew
            | ErrorKind::Signing
    )
}

fn not_installed(subject: &Subject, github: &Github<'_>) -> Error {
    let remembered = if github.negative_ttl.is_zero() {
        "This answer is not remembered (not_installed_ttl is zero)".to_owned()
    } else {
        format!("This answer is remembered for {}", humantime::format_duration(github.negative_ttl))
    };
    Error::new(
        ErrorKind::NotInstalled,
        format!(
            "the GitHub {} is not installed on {} ({} on {} answered 404), so the request was not sent: install \
             the App there or grant it the repository. {remembered}",
            github.app.id(),
            subject.describe(),
            subject.path(),
            github.api_base,
        ),
    )
}

fn lookup_refused(status: StatusCode, what: &str, body: &[u8], github: &Github<'_>) -> Error {
    #[derive(Deserialize)]
    struct Message {
        message: Option<String>,
    }
    let message = serde_json::from_slice::<Message>(body).ok().and_then(|m| m.message).unwrap_or_default();
    let message = scrub(&message.chars().take(200).collect::<String>());
    let (kind, advice) = match status.as_u16() {
        401 => (
            ErrorKind::JwtRejected,
            format!("GitHub refused the App JWT of {}: check the App id and its private key", github.app.id()),
        ),
        403 | 429 => (ErrorKind::RateLimited, "the App's rate limit is exhausted or the lookup was refused".into()),
        500..=599 => (ErrorKind::ServerError, "GitHub failed; the next request looks up again".into()),
        _ => (ErrorKind::UnexpectedStatus, "not an answer GitHub gives to this route".into()),
    };
    Error::new(kind, format!("{what} was answered {status} ({message:?}): {advice}"))
}
