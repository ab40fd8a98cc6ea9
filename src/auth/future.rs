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
        // The hot path: the request carries an installation token, known by serial; its entry is held only
        // while GitHub has not proved the token yet or when every response must name it.
        Stamped {
            #[pin]
            future: S::Future,
            serial: u64,
            entry: Option<Arc<TokenEntry>>,
            every_response: bool,
        },
        AppJwt {
            #[pin]
            future: S::Future,
            used: Option<Box<AppJwtUsed>>,
        },
        Passthrough {
            #[pin]
            future: S::Future,
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
    #[inline]
    pub(super) fn stamped(
        future: S::Future,
        serial: u64,
        entry: Option<Arc<TokenEntry>>,
        every_response: bool,
    ) -> Self {
        Self { state: State::Stamped { future, serial, entry, every_response } }
    }

    pub(super) fn passthrough(future: S::Future) -> Self {
        Self { state: State::Passthrough { future } }
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

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Stamped { future, serial, entry, every_response } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let status = response.status();
                    if entry.is_some()
                        || *every_response
                        || status == StatusCode::UNAUTHORIZED
                        || status == StatusCode::FORBIDDEN
                    {
                        name_the_token(&mut response, *serial, entry.take(), *every_response);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Passthrough { future } => {
                    return Poll::Ready(ready!(future.poll(cx)).map_err(Into::into));
                }
                StateProj::AppJwt { future, used } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(used) = used.take() {
                        response.extensions_mut().insert(*used);
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
                    match stamp {
                        Stamp::Installation(entry) => {
                            request.headers_mut().insert(AUTHORIZATION, entry.authorization.clone());
                            let future = inner.call(request);
                            let serial = entry.serial;
                            state.set(State::Stamped { future, serial, entry: Some(entry), every_response });
                        }
                        Stamp::AppJwt(authorization, used) => {
                            request.headers_mut().insert(AUTHORIZATION, authorization);
                            let future = inner.call(request);
                            state.set(State::AppJwt { future, used: Some(Box::new(used)) });
                        }
                    }
                }
                StateProj::Failed { error } => {
                    let error = error.take().expect("InstallationAuth's ResponseFuture polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

/// What the rare responses need: a token GitHub accepted is marked proven (waking requests that wait out its
/// replication lag), and refusals (or every response, when asked) name the token for the retry policy.
#[cold]
#[inline(never)]
fn name_the_token<ResB>(response: &mut Response<ResB>, serial: u64, entry: Option<Arc<TokenEntry>>, every: bool) {
    let status = response.status();
    if let Some(entry) = &entry
        && (status.is_success() || status.is_redirection())
    {
        entry.replication.mark_proven();
    }
    // Extensions allocate: attach only where a retry policy reads them, unless asked.
    let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if (every || refused)
        && let Some(entry) = entry.or_else(|| TokenEntry::find(serial))
    {
        response.extensions_mut().insert(InstallationTokenUsed { entry });
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
