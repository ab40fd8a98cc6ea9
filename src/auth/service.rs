use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_service::Service;

use super::future::Stamp;
use super::{AppAuthLayer, InstallationAuthLayer, ResponseFuture, has_dot_or_percent, is_app_jwt_request};
use crate::app::AppJwtUsed;
use crate::error::{BoxError, Error, ErrorKind};
use crate::installation::api_base::Target;
use crate::installation::{ApiBase, Installation};
use crate::pool::InstallationPool;
use crate::source::{Route, TokenSource};
use crate::user::UserToken;

/// Middleware that stamps requests with the tokens of a token source. See the [module docs](crate::auth).
#[allow(private_bounds)]
pub struct GitHubAuth<S, T: TokenSource> {
    inner: S,
    source: T,
    /// This clone's hot-path cache of the source's tokens.
    local: T::Local,
    pub(super) every_response: bool,
}

/// Stamps requests with the current token of one [`Installation`].
pub type InstallationAuth<S> = GitHubAuth<S, Installation>;

/// Stamps each request with a token of the installation it is for, from an [`InstallationPool`].
pub type AppAuth<S> = GitHubAuth<S, InstallationPool>;

/// Stamps requests with the current access token of one user ([`UserToken`]).
pub type UserAuth<S> = GitHubAuth<S, UserToken>;

#[allow(private_bounds)]
impl<S: Clone, T: TokenSource> Clone for GitHubAuth<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            source: self.source.clone(),
            local: self.local.clone(),
            every_response: self.every_response,
        }
    }
}

#[allow(private_bounds)]
impl<S: fmt::Debug, T: TokenSource + fmt::Debug> fmt::Debug for GitHubAuth<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubAuth")
            .field("inner", &self.inner)
            .field("source", &self.source)
            .field("every_response", &self.every_response)
            .finish_non_exhaustive()
    }
}

impl<S> GitHubAuth<S, Installation> {
    /// Wraps `inner`, authorizing its requests with `installation`'s tokens.
    pub fn new(inner: S, installation: Installation) -> Self {
        Self::with_source(inner, installation)
    }

    /// A layer wrapping services in `InstallationAuth`.
    pub fn layer(installation: Installation) -> InstallationAuthLayer {
        InstallationAuthLayer::new(installation)
    }

    /// The token source.
    pub fn installation(&self) -> &Installation {
        &self.source
    }
}

impl<S> GitHubAuth<S, InstallationPool> {
    /// Wraps `inner`, authorizing each request with a token of its installation from `pool`.
    pub fn new(inner: S, pool: InstallationPool) -> Self {
        Self::with_source(inner, pool)
    }

    /// A layer wrapping services in `AppAuth`.
    pub fn layer(pool: InstallationPool) -> AppAuthLayer {
        AppAuthLayer::new(pool)
    }
}

#[allow(private_bounds)]
impl<S, T: TokenSource> GitHubAuth<S, T> {
    pub(super) fn with_source(inner: S, source: T) -> Self {
        let local = source.local();
        Self { inner, source, local, every_response: false }
    }

    /// The token source.
    pub fn source(&self) -> &T {
        &self.source
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

#[allow(private_bounds)]
impl<S, T, B, ResB> Service<Request<B>> for GitHubAuth<S, T>
where
    T: TokenSource,
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
        let origin = self.source.origin();
        let target = origin.target(request.uri());
        // One scan decides whether the path must be resolved before it is read (for every route decision).
        let unusual = has_dot_or_percent(request.uri().path().as_bytes());
        let app_jwt_route = match target {
            // (The source's App is looked at only for App routes: the hot path does not load it.)
            Target::Api => {
                is_app_jwt_request(request.uri().path(), origin.path(), unusual) && self.source.app().is_some()
            }
            // Release assets take the installation token, never the App JWT.
            Target::Uploads => false,
            // Another origin: never send it this source's tokens.
            Target::Elsewhere => return ResponseFuture::passthrough(self.inner.call(request)),
            Target::NoHost => return ResponseFuture::failed(no_host(origin)),
        };
        if app_jwt_route
            && !request.headers().contains_key(AUTHORIZATION)
            && let Some(app) = self.source.app()
        {
            // App routes take the App JWT: cached for minutes, signed anew only near its expiry.
            let app = app.clone();
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
        if let Some((value, token)) = self.source.current(&mut self.local, &request, Route { target, unusual }) {
            // The future holds the token's entry only while every response needs it: before GitHub has proved
            // the token (its first seconds), or when asked to. Otherwise it holds just the serial, and no
            // reference count is touched beyond the header's.
            let serial = token.serial;
            let entry = (self.every_response || !token.replication.is_proven()).then(|| Arc::clone(token));
            let headers = request.headers_mut();
            if let Some(callers) = headers.insert(AUTHORIZATION, value) {
                // The caller chose the credential: put it back and do not claim the request.
                headers.insert(AUTHORIZATION, callers);
                return ResponseFuture::passthrough(self.inner.call(request));
            }
            // Feature `metrics`: the token's age, through the histogram handle it holds. Nothing without.
            token.age_at_use.record(token.received_at);
            return ResponseFuture::stamped(self.inner.call(request), serial, entry, self.every_response);
        }
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }

        // No usable token: wait for the source, then call the inner service that was polled ready.
        let acquire = self.source.acquire(&request, Route { target, unusual });
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(
            Box::pin(async move { acquire.await.map(Stamp::Installation) }),
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
            "the request URI has no host, so the auth layer cannot tell where its token would go: use absolute \
             URIs under {api_base} (clients that send path-only URIs need a layer that sets the base URI first)"
        ),
    )
}
