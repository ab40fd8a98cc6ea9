use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::app::AppJwtUsed;
use crate::error::{BoxError, Error};
use crate::installation::InstallationTokenUsed;
use crate::installation::token::TokenEntry;

/// The credential a waiting request gets once it is available.
pub(super) enum Stamp {
    Installation(Arc<TokenEntry>),
    AppJwt(HeaderValue, AppJwtUsed),
}

type Acquire = Pin<Box<dyn Future<Output = Result<Stamp, Error>> + Send>>;

/// Which credential the response's extensions will name.
enum Used {
    Nothing,
    Installation(InstallationTokenUsed),
    AppJwt(AppJwtUsed),
}

pin_project! {
    /// Response future of [`InstallationAuth`](super::InstallationAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Calling {
            #[pin]
            future: S::Future,
            used: Used,
        },
        Waiting {
            acquire: Acquire,
            inner: Option<S>,
            request: Option<Request<B>>,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn authorized(future: S::Future, used: InstallationTokenUsed) -> Self {
        Self {
            state: State::Calling {
                future,
                used: Used::Installation(used),
            },
        }
    }

    pub(super) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                used: Used::Nothing,
            },
        }
    }

    pub(super) fn waiting(acquire: Acquire, inner: S, request: Request<B>) -> Self {
        Self {
            state: State::Waiting {
                acquire,
                inner: Some(inner),
                request: Some(request),
            },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Calling { future, used } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    match std::mem::replace(used, Used::Nothing) {
                        Used::Nothing => {}
                        Used::Installation(used) => {
                            response.extensions_mut().insert(used);
                        }
                        Used::AppJwt(used) => {
                            response.extensions_mut().insert(used);
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Waiting {
                    acquire,
                    inner,
                    request,
                } => {
                    let stamp = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(stamp) => stamp,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let (Some(mut inner), Some(mut request)) = (inner.take(), request.take())
                    else {
                        panic!("InstallationAuth's ResponseFuture polled after completion");
                    };
                    let (authorization, used) = match stamp {
                        Stamp::Installation(entry) => (
                            entry.authorization.clone(),
                            Used::Installation(InstallationTokenUsed { entry }),
                        ),
                        Stamp::AppJwt(authorization, used) => (authorization, Used::AppJwt(used)),
                    };
                    request.headers_mut().insert(AUTHORIZATION, authorization);
                    let future = inner.call(request);
                    state.set(State::Calling { future, used });
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("InstallationAuth's ResponseFuture polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
