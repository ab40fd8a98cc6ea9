//! A fake GitHub for tests: real HTTP on 127.0.0.1, App JWTs checked like GitHub checks them, installation
//! tokens with a lifetime you choose, and knobs for everything that goes wrong in production.
//!
//! Owns: the server, its fixtures and its record of requests. It shares no state with the client side of the
//! crate: it verifies JWTs with `jsonwebtoken`, independently of the signer.
//!
//! ```
//! use std::time::Duration;
//! use tower_github_app::{ErrorKind, Installation, testing::{FakeGitHub, MintFault}};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_github_app::Error> {
//! let github = FakeGitHub::builder().token_lifetime(Duration::from_secs(5)).start().await;
//! let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
//!     .api_base(&github.api_base())
//!     .build(github.client())?;
//! installation.token().await?;
//! assert_eq!(github.mint_count(), 1);
//!
//! // The next mint fails as GitHub would for a suspended installation.
//! github.fail_mints(MintFault::Suspended, 1);
//! let builder = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID).api_base(&github.api_base());
//! let err = builder.mint_once(github.client()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InstallationForbidden);
//! # Ok(())
//! # }
//! ```
//!
//! What it serves (each request is recorded, with which credential it carried):
//! - `POST /app/installations/{id}/access_tokens` (App JWT), with GitHub's status codes and messages;
//! - `GET /app`, `GET /app/installations`, `GET /app/installations/{id}`,
//!   `GET /repos/{owner}/{repo}/installation`, `GET /orgs/{org}/installation`, `GET /users/{user}/installation`
//!   (App JWT);
//! - `GET /repos/{owner}/{repo}`, `GET /installation/repositories`, `DELETE /installation/token`
//!   (installation token: valid, unexpired, not revoked, replicated, of an installation that can see the
//!   repository; `401 Bad credentials` otherwise);
//! - `POST /repos/{owner}/{repo}/issues/{number}/comments` (installation token, as above, with `issues: write`):
//!   `201` with the comment as GitHub shows it (written by `fake-app[bot]`), recorded for
//!   [`FakeGitHub::comments`]; `400` for a body that is not JSON, `422` without a `body`;
//! - on a second port, its uploads origin ([`FakeGitHub::uploads_base`]):
//!   `POST /repos/{owner}/{repo}/releases/{id}/assets` (installation token);
//! - on its web origin ([`FakeGitHub::web_base`], the same port; `https://github.com` on GitHub):
//!   `POST /login/oauth/access_token` (code exchange, device poll, refresh grant) and `POST /login/device/code`,
//!   with GitHub's rotation semantics (a spent refresh token and its access token die at once), GitHub's error
//!   bodies (`bad_refresh_token`, `incorrect_client_credentials`, `bad_verification_code`,
//!   `authorization_pending`, `slow_down`, `expired_token`, `access_denied`) and a count of double spends
//!   ([`FakeGitHub::oauth_counts`]);
//! - `GET /user` (user access token: the only route that takes one; the repository routes answer `401` to it);
//! - `GET /redirect?to=URL`: a `302` to `URL`, for testing that redirects never carry tokens elsewhere.
//!
//! [`RedisServer`] starts a real `redis-server` on a free loopback port, for the Redis store's tests and demos.
//!
//! Answers have GitHub's shape: they are rendered from the examples in GitHub's REST API description (full
//! repositories, installations, the App), so typed clients decode them as they decode GitHub's.

mod github;
mod oauth;
mod redis;
mod server;

pub use oauth::OAuthCounts;
pub use redis::RedisServer;
pub use server::{
    Credential, FakeGitHub, FakeGitHubBuilder, InProcess, IssueComment, MintFault, MintRecord, RecordedRequest,
    TokenState,
};

/// A 2048-bit RSA private key (PKCS#1 PEM) made for this crate's tests. It is public: never use it for a real
/// App. The fake server trusts it for [`FakeGitHub::APP_ID`].
pub const TEST_PRIVATE_KEY: &str = include_str!("test-app-key.pem");
