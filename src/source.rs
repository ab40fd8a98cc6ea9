//! The seam between the [`auth`](crate::auth) layer and whatever keeps tokens current.
//!
//! Owns the small interface a token source offers the layer: where its tokens may go ([`TokenSource::origin`]),
//! the App whose JWT the App-only routes take, the hot-path read of a usable token for a request (through a
//! per-service-clone cache, [`TokenSource::Local`]), and the slow path that waits for one. The layer knows
//! nothing else of a source, and a source knows nothing of the layer. Tokens reach the retry policy only as
//! [`InstallationTokenUsed`](crate::InstallationTokenUsed), whose `invalidate` goes back to the source through
//! [`Invalidate`].
//!
//! Implemented by [`Installation`](crate::Installation) (one installation, one token, its own refresher) and
//! [`InstallationPool`](crate::InstallationPool) (every installation of an App, one scheduler) and
//! [`UserToken`](crate::user::UserToken) (one user's token, rotated through a store). Sources backed by a store
//! shared across processes plug in here the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Request};

use crate::app::GitHubApp;
use crate::error::Error;
use crate::installation::ApiBase;
use crate::installation::api_base::Target;
use crate::installation::token::TokenEntry;

/// Where a request goes, as the auth layer read it once for every decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// Its origin: the API or its uploads origin (never elsewhere: those requests get no token).
    pub(crate) target: Target,
    /// Whether its path has dot segments or percent-encodings, which must be resolved before it is read.
    pub(crate) unusual: bool,
}

/// The slow path's future: a token for the request, once there is one.
pub(crate) type Acquire = Pin<Box<dyn Future<Output = Result<Arc<TokenEntry>, Error>> + Send>>;

/// What the auth layer needs from a token source.
pub(crate) trait TokenSource: Clone + Send + Sync + 'static {
    /// What each service clone keeps between requests so that the hot path reads one atomic and clones one
    /// header value: an arc-swap cache for one installation, a few recently used entries for a pool.
    type Local: Clone + Send;

    /// A fresh per-clone cache.
    fn local(&self) -> Self::Local;

    /// Where tokens may be sent (the API origin and its uploads origin).
    fn origin(&self) -> &ApiBase;

    /// The App, for the routes GitHub authenticates with the App JWT; `None` for sources of user tokens, whose
    /// requests never carry the App's JWT.
    fn app(&self) -> Option<&GitHubApp>;

    /// The hot path: the header value to stamp on `request` (going where `route` says) and the token it holds,
    /// if a usable one is at hand. No lock, no allocation, no clock, no waiting.
    fn current<'l, B>(
        &self,
        local: &'l mut Self::Local,
        request: &Request<B>,
        route: Route,
    ) -> Option<(HeaderValue, &'l Arc<TokenEntry>)>;

    /// The slow path: a token for `request`, minting (or looking up its installation) first if needed. Errors
    /// say why the request cannot be authenticated; it is then never sent.
    fn acquire<B>(&self, request: &Request<B>, route: Route) -> Acquire;
}

/// Where a token goes back when GitHub refused it: its source drops it if it is still current.
pub(crate) trait Invalidate: Send + Sync {
    /// Drops the token with this serial if it is still current. Returns whether it was.
    fn invalidate(&self, serial: u64) -> bool;
}

/// A separately allocated copy of a (sensitive) header value, so that service clones driven from different
/// threads do not contend on one reference count.
pub(crate) fn own_copy(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(value.as_bytes()))
        .unwrap_or_else(|_| value.clone());
    copy.set_sensitive(true);
    // Cloning once turns it into a plain reference-counted handle, as cheap to clone as can be.
    copy.clone()
}
