use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use arc_swap::cache::Cache;
use std::task::{Context, Poll};

use http::HeaderValue;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_service::Service;

use super::future::Stamp;
use super::{InstallationAuthLayer, ResponseFuture, is_app_jwt_request};
use crate::app::AppJwtUsed;
use crate::error::{BoxError, Error, ErrorKind};
use crate::installation::api_base::Target;
use crate::installation::source::Handle;
use crate::installation::token::TokenEntry;
use crate::installation::{ApiBase, Installation};

/// Middleware that stamps requests with an installation token. See the [module docs](crate::auth).
pub struct InstallationAuth<S> {
    inner: S,
    installation: Installation,
    /// This clone's view of the current token: revalidated with one relaxed atomic load per request
    /// (arc-swap's `Cache`). It may keep a replaced token alive until this clone's next request.
    current: Cache<CurrentToken, Option<Arc<TokenEntry>>>,
    /// This clone's own copy of the current token's header value, so that clones driven from different threads
    /// do not contend on one reference count. Made once per token per clone.
    stamp: Option<(u64, HeaderValue)>,
    pub(super) every_response: bool,
}

impl<S: Clone> Clone for InstallationAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            installation: self.installation.clone(),
            current: self.current.clone(),
            // A clone makes its own copy of the header value on first use.
            stamp: None,
            every_response: self.every_response,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for InstallationAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationAuth")
            .field("inner", &self.inner)
            .field("installation", &self.installation)
            .field("every_response", &self.every_response)
            .finish_non_exhaustive()
    }
}

impl<S> InstallationAuth<S> {
    /// Wraps `inner`, authorizing its requests with `installation`'s tokens.
    pub fn new(inner: S, installation: Installation) -> Self {
        let current = Cache::new(CurrentToken(Arc::clone(&installation.handle)));
        Self { inner, installation, current, stamp: None, every_response: false }
    }

    /// A layer wrapping services in `InstallationAuth`.
    pub fn layer(installation: Installation) -> InstallationAuthLayer {
        InstallationAuthLayer::new(installation)
    }

    /// The token source.
    pub fn installation(&self) -> &Installation {
        &self.installation
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for InstallationAuth<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &self.installation.handle.shared;
        let api_base = &shared.params.api_base;
        let app_jwt_route = match api_base.target(request.uri()) {
            Target::Api => is_app_jwt_request(request.uri().path(), api_base.path()),
            // Release assets take the installation token, never the App JWT.
            Target::Uploads => false,
            // Another origin: never send it this installation's token.
            Target::Elsewhere => return ResponseFuture::passthrough(self.inner.call(request)),
            Target::NoHost => return ResponseFuture::failed(no_host(&shared.params.api_base)),
        };
        if app_jwt_route && !request.headers().contains_key(AUTHORIZATION) {
            // App routes take the App JWT: cached for minutes, signed anew only near its expiry.
            let app = shared.app.clone();
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            let stamp = async move {
                let jwt = app.jwt().await?;
                Ok(Stamp::AppJwt(jwt.authorization(), AppJwtUsed::new(app, &jwt)))
            };
            return ResponseFuture::waiting(Box::pin(stamp), ready, request, self.every_response);
        }

        // The hot path: one cache revalidation, one header clone. The token source (and its watchdog) withdraws
        // a token when its time for requests is over, so the hot path needs no clock.
        if let Some(token) = self.current.load() {
            let value = match &self.stamp {
                Some((serial, value)) if *serial == token.serial => value.clone(),
                _ => {
                    let value = own_copy(&token.authorization);
                    self.stamp = Some((token.serial, value.clone()));
                    value
                }
            };
            let headers = request.headers_mut();
            if let Some(callers) = headers.insert(AUTHORIZATION, value) {
                // The caller chose the credential: put it back and do not claim the request.
                headers.insert(AUTHORIZATION, callers);
                return ResponseFuture::passthrough(self.inner.call(request));
            }
            // The future holds the token's entry only while every response needs it: before GitHub has proved
            // the token (its first seconds), or when asked to. Otherwise it holds just the serial, and no
            // reference count is touched beyond the header's.
            let entry = (self.every_response || !token.replication.is_proven()).then(|| Arc::clone(token));
            return ResponseFuture::stamped(self.inner.call(request), token.serial, entry, self.every_response);
        }
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }

        // No usable token: wait for the refresher, then call the inner service that was polled ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let handle = Arc::clone(&self.installation.handle);
        ResponseFuture::waiting(
            Box::pin(async move { handle.acquire(None).await.map(Stamp::Installation) }),
            ready,
            request,
            self.every_response,
        )
    }
}

#[cold]
fn no_host(api_base: &ApiBase) -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        format!(
            "the request URI has no host, so InstallationAuth cannot tell where its token would go: use absolute \
             URIs under {api_base} (clients that send path-only URIs need a layer that sets the base URI first)"
        ),
    )
}

/// A separately allocated copy of a (sensitive) header value.
fn own_copy(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(value.as_bytes()))
        .unwrap_or_else(|_| value.clone());
    copy.set_sensitive(true);
    // Cloning once turns it into a plain reference-counted handle, as cheap to clone as can be.
    copy.clone()
}

/// Lets arc-swap's `Cache` reach the token source's `ArcSwap` through a handle that keeps it alive.
#[derive(Clone)]
struct CurrentToken(Arc<Handle>);

impl Deref for CurrentToken {
    type Target = ArcSwapOption<TokenEntry>;

    fn deref(&self) -> &Self::Target {
        &self.0.shared.current
    }
}
