use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{BoxError, Error};
use crate::installation::InstallationTokenUsed;
use crate::installation::token::TokenEntry;

type Acquire = Pin<Box<dyn Future<Output = Result<Arc<TokenEntry>, Error>> + Send>>;

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
            used: Option<InstallationTokenUsed>,
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
                used: Some(used),
            },
        }
    }

    pub(super) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Calling { future, used: None },
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
                    if let Some(used) = used.take() {
                        response.extensions_mut().insert(used);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Waiting {
                    acquire,
                    inner,
                    request,
                } => {
                    let token = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let (Some(mut inner), Some(mut request)) = (inner.take(), request.take())
                    else {
                        panic!("InstallationAuth's ResponseFuture polled after completion");
                    };
                    request
                        .headers_mut()
                        .insert(AUTHORIZATION, token.authorization.clone());
                    let future = inner.call(request);
                    state.set(State::Calling {
                        future,
                        used: Some(InstallationTokenUsed { entry: token }),
                    });
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
