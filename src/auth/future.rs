use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
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
    /// An installation token, by serial; its entry if the request kept it.
    Token(u64, Option<Arc<TokenEntry>>),
    AppJwt(Box<AppJwtUsed>),
}

/// The slow path's state, boxed so that the hot path's future stays small.
struct Waiting<S, B> {
    acquire: Acquire,
    inner: S,
    request: Request<B>,
    every_response: bool,
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
            every_response: bool,
        },
        Waiting {
            waiting: Option<Box<Waiting<S, B>>>,
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
    pub(super) fn authorized(
        future: S::Future,
        serial: u64,
        entry: Option<Arc<TokenEntry>>,
        every_response: bool,
    ) -> Self {
        let used = Used::Token(serial, entry);
        Self { state: State::Calling { future, used, every_response } }
    }

    pub(super) fn passthrough(future: S::Future) -> Self {
        Self { state: State::Calling { future, used: Used::Nothing, every_response: false } }
    }

    pub(super) fn waiting(acquire: Acquire, inner: S, request: Request<B>, every_response: bool) -> Self {
        let waiting = Box::new(Waiting { acquire, inner, request, every_response });
        Self { state: State::Waiting { waiting: Some(waiting) } }
    }

    pub(super) fn failed(error: Error) -> Self {
        Self { state: State::Failed { error: Some(error) } }
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
                StateProj::Calling { future, used, every_response } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    match std::mem::replace(used, Used::Nothing) {
                        Used::Nothing => {}
                        Used::Token(serial, entry) => {
                            let status = response.status();
                            if let Some(entry) = &entry
                                && (status.is_success() || status.is_redirection())
                            {
                                entry.mark_replicated();
                            }
                            // Extensions allocate: attach only where a retry policy reads them, unless asked.
                            let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
                            if (*every_response || refused)
                                && let Some(entry) = entry.or_else(|| TokenEntry::find(serial))
                            {
                                response.extensions_mut().insert(InstallationTokenUsed { entry });
                            }
                        }
                        Used::AppJwt(used) => {
                            response.extensions_mut().insert(*used);
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Waiting { waiting } => {
                    let slot = waiting.as_mut().expect("InstallationAuth's ResponseFuture polled after completion");
                    let stamp = match ready!(slot.acquire.as_mut().poll(cx)) {
                        Ok(stamp) => stamp,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let Waiting { mut inner, mut request, every_response, .. } =
                        *waiting.take().expect("present: checked above");
                    let (authorization, used) = match stamp {
                        Stamp::Installation(entry) => {
                            (entry.authorization.clone(), Used::Token(entry.serial, Some(entry)))
                        }
                        Stamp::AppJwt(authorization, used) => (authorization, Used::AppJwt(Box::new(used))),
                    };
                    request.headers_mut().insert(AUTHORIZATION, authorization);
                    let future = inner.call(request);
                    state.set(State::Calling { future, used, every_response });
                }
                StateProj::Failed { error } => {
                    let error = error.take().expect("InstallationAuth's ResponseFuture polled after completion");
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
