use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::Stamp;
use super::{InstallationAuthLayer, ResponseFuture, is_app_jwt_route};
use crate::app::AppJwtUsed;
use crate::error::{BoxError, Error, ErrorKind};
use crate::installation::{Installation, InstallationTokenUsed};

/// Middleware that stamps requests with an installation token. See the [module docs](crate::auth).
#[derive(Debug, Clone)]
pub struct InstallationAuth<S> {
    inner: S,
    installation: Installation,
}

impl<S> InstallationAuth<S> {
    /// Wraps `inner`, authorizing its requests with `installation`'s tokens.
    pub fn new(inner: S, installation: Installation) -> Self {
        Self {
            inner,
            installation,
        }
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &self.installation.handle.shared;
        if !shared.params.api_base.is_same_origin(request.uri()) {
            if request.uri().authority().is_none() {
                return ResponseFuture::failed(Error::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "the request URI has no host, so InstallationAuth cannot tell where its token would go: \
                         use absolute URIs under {}",
                        shared.params.api_base
                    ),
                ));
            }
            // Another origin: never send it this installation's token.
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let api_path = request
            .uri()
            .path()
            .strip_prefix(shared.params.api_base.path())
            .unwrap_or_default();
        if is_app_jwt_route(api_path) {
            // App routes take the App JWT: cached for minutes, signed anew only near its expiry.
            let app = shared.app.clone();
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            let stamp = async move {
                let jwt = app.jwt().await?;
                Ok(Stamp::AppJwt(
                    jwt.authorization(),
                    AppJwtUsed::new(app, &jwt),
                ))
            };
            return ResponseFuture::waiting(Box::pin(stamp), ready, request);
        }

        // The hot path: one load, one header clone.
        let current = shared.current.load();
        if let Some(token) = current
            .as_ref()
            .filter(|token| Instant::now() < token.usable_until)
        {
            request
                .headers_mut()
                .insert(AUTHORIZATION, token.authorization.clone());
            let used = InstallationTokenUsed {
                entry: Arc::clone(token),
            };
            drop(current);
            return ResponseFuture::authorized(self.inner.call(request), used);
        }
        drop(current);

        // No usable token: wait for the refresher, then call the inner service that was polled ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let handle = Arc::clone(&self.installation.handle);
        ResponseFuture::waiting(
            Box::pin(async move { handle.acquire(None).await.map(Stamp::Installation) }),
            ready,
            request,
        )
    }
}
