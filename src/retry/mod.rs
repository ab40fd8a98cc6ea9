//! Retrying requests that GitHub refused for credential reasons, and nothing else.
//!
//! Owns [`RetryOn401Policy`], a [`tower::retry::Policy`] for `tower::retry::RetryLayer`, placed *outside*
//! [`InstallationAuthLayer`](crate::InstallationAuthLayer) so that every attempt is stamped anew with the token
//! current at that moment. It decides from the response alone (status, `Date`, and the
//! [`InstallationTokenUsed`](crate::InstallationTokenUsed) / [`AppJwtUsed`](crate::AppJwtUsed) extensions the
//! auth layer adds) and shares no state with the layer. It never mints or signs: it asks the token source to
//! drop a refused token, or the App to correct its clock.
//!
//! | answer | token | what the policy does |
//! |---|---|---|
//! | `401` (or `403` for a scoped token) | younger than the lag window (10 s) | replication lag: the same token again, no re-mint. One request per step (from 250 ms, doubling to 1 s, jittered) probes GitHub whatever the budget says; every other refused request waits for that probe's answer and retries as soon as GitHub accepts the token. A token no probe got through for the whole window is replaced once |
//! | `401` | older | stale or revoked: invalidate it (every request that saw it shares one new mint) and retry once |
//! | `401` on an App-JWT route | — | clock skew: learn GitHub's clock from `Date`, retry once with a corrected JWT |
//! | `401` on a user token ([`UserToken`](crate::user::UserToken)) | any | dead: another holder of the user's tokens rotated them (which ends the old access token), or the user revoked them. The source drops it and adopts the stored pair or rotates; the request is retried, once per token (twice if the user's tokens were rotated again under it) |
//! | anything else: `2xx`, other `4xx`, `5xx`, `429`, transport errors | | passed through untouched |
//!
//! Requests are retried only if their body can be cloned: empty bodies, `Full<Bytes>`, `String`, `Bytes` and
//! `Vec<u8>`. A streaming body is sent once and its `401` returned as is. To make one retryable, buffer it first
//! (`http_body_util::BodyExt::collect(body).await?.to_bytes()` into a `Full<Bytes>`). Extensions survive retries.
//!
//! Requests with other bodies can be retried with [`RetryOn401PolicyBuilder::clone_body_fn`].
//!
//! Re-mints and repeated refusals are paid from a [`RetryBudget`] (tower's `TpsBudget` arithmetic and defaults:
//! 20 % of requests plus 10 per second over 10 s, deposited in batches), so a GitHub that refuses everything does
//! not get a retry storm; any [`Budget`](tower::retry::budget::Budget) can replace it. Probes of a lagging token
//! are not charged (there is one per step per token, however many requests wait), nor is a retry after another
//! request proved the token works. Per-request state stays per request even when one `Retry` service serves
//! every request (behind `Buffer`). When the policy gives up on a refusal it could have retried, the response
//! carries [`RetryGaveUp`] and a `WARN` event says why.
//!
//! For `5xx` and `429`, stack a general retry policy of your own next to this one (outside it), with its own
//! budget and `Retry-After` handling; this policy deliberately ignores them.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower::retry::RetryLayer;
//! use tower_github_app::{Installation, InstallationAuthLayer, RetryOn401Policy, testing::FakeGitHub};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let github = FakeGitHub::builder().replication_lag(Duration::from_millis(300)).start().await;
//! let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
//!     .api_base(&github.api_base())
//!     .build(github.client())?;
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryOn401Policy::default()))
//!     .layer(InstallationAuthLayer::new(installation))
//!     .service(github.client());
//!
//! // The fresh token is refused for 300 ms; the policy waits that out.
//! let request = http::Request::get(format!("{}/repos/octo-org/octo-repo", github.api_base()))
//!     .body(http_body_util::Full::<bytes::Bytes>::default())?;
//! let response = tower::ServiceExt::oneshot(client, request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```

mod body;
mod budget;
mod policy;

pub use body::{BuiltinBodies, CloneBody, CloneBodyFn};
pub use budget::RetryBudget;
pub use policy::{RetryGaveUp, RetryOn401Policy, RetryOn401PolicyBuilder};
