//! A process-wide thread that keeps token sources honest when no runtime drives their refresher.
//!
//! Owns one OS thread (started on first use) and, per registered source, the next moment that source must be
//! looked at. It runs on the real clock, not on a Tokio runtime, so it keeps working when the runtime that owns
//! a refresher is idle (a `current_thread` runtime nobody drives), blocked or gone. At each deadline it calls
//! [`Watched::check`], which withdraws tokens whose time for requests is over and parks tokens whose refresher
//! overslept, so that the request path itself never reads a clock. It never mints: it only takes tokens away, and
//! the next request (on a runtime that runs) starts a new refresher.
//!
//! It is also a timer on the real clock ([`sleep`]) for code that must not depend on the caller's runtime: a
//! request that waits for a refresher on another runtime bounds its patience with it, so it neither needs its own
//! runtime's timers nor panics when that runtime is shutting down.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Something with deadlines on the real clock: a token source.
pub(crate) trait Watched: Send + Sync {
    /// Acts on whatever is due at `now`; returns when to be looked at next (`None`: nothing is pending).
    fn check(&self, now: Instant) -> Option<Instant>;
}

/// A source's registration. Dropping it removes the source, so nothing of it stays behind.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
}

struct Watchdog {
    state: Mutex<State>,
    thread: Thread,
}

#[derive(Default)]
struct State {
    queue: BTreeSet<(Instant, u64)>,
    sources: HashMap<u64, (Instant, Weak<dyn Watched>)>,
    /// Sleeping futures: woken at their deadline.
    timers: std::collections::BTreeMap<(Instant, u64), Waker>,
}

static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn watchdog() -> Option<&'static Watchdog> {
    WATCHDOG
        .get_or_init(|| {
            let spawned = std::thread::Builder::new().name("github-token-watchdog".into()).spawn(run);
            match spawned {
                Ok(handle) => Some(Watchdog { state: Mutex::new(State::default()), thread: handle.thread().clone() }),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "could not start the token watchdog thread; tokens are withdrawn only by their refresher"
                    );
                    None
                }
            }
        })
        .as_ref()
}

impl Registration {
    /// A new, empty registration. Starts nothing until [`schedule`](Self::schedule) is called.
    pub(crate) fn new() -> Self {
        Registration { id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// Asks to be checked at `at` at the latest. An earlier pending deadline is kept.
    pub(crate) fn schedule(&self, source: Weak<dyn Watched>, at: Instant) {
        schedule(self.id, source, at);
    }
}

fn schedule(id: u64, source: Weak<dyn Watched>, at: Instant) {
    let Some(watchdog) = watchdog() else {
        return;
    };
    let mut state = watchdog.state.lock().unwrap_or_else(|e| e.into_inner());
    let earliest_before = state.queue.first().map(|(t, _)| *t);
    match state.sources.get(&id).map(|(t, _)| *t) {
        Some(pending) if pending <= at => return,
        Some(pending) => {
            state.queue.remove(&(pending, id));
        }
        None => {}
    }
    state.queue.insert((at, id));
    state.sources.insert(id, (at, source));
    drop(state);
    if earliest_before.is_none_or(|earliest| at < earliest) {
        watchdog.thread.unpark();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(Some(watchdog)) = WATCHDOG.get() else {
            return;
        };
        let mut state = watchdog.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, _)) = state.sources.remove(&self.id) {
            state.queue.remove(&(at, self.id));
        }
    }
}

fn run() {
    // The static is set right after this thread is spawned; wait for it.
    let watchdog = loop {
        match WATCHDOG.get() {
            Some(Some(watchdog)) => break watchdog,
            _ => std::thread::park_timeout(std::time::Duration::from_millis(1)),
        }
    };
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut state = watchdog.state.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(entry) = state.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            let mut due = Vec::new();
            while let Some(&(at, id)) = state.queue.first() {
                if at > now {
                    break;
                }
                state.queue.pop_first();
                if let Some((_, source)) = state.sources.remove(&id) {
                    due.push((id, source));
                }
            }
            let next_timer = state.timers.first_key_value().map(|((at, _), _)| *at);
            let next_check = state.queue.first().map(|(at, _)| *at);
            (due, next_timer.into_iter().chain(next_check).min())
        };
        // Checked without the lock: a check may drop the last handle of a source, whose registration then
        // takes the lock to remove itself.
        for (id, source) in due {
            let Some(source) = source.upgrade() else {
                continue;
            };
            if let Some(at) = source.check(now) {
                schedule(id, std::sync::Arc::downgrade(&source), at);
            }
        }
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

/// A future that completes at `now + duration` on the real clock, woken by the watchdog thread: it needs no
/// Tokio timer, so it works on any runtime, even one that is shutting down. Without the watchdog thread (it could
/// not be started), it falls back to Tokio's timer.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        registered: false,
        fallback: None,
    }
}

/// See [`sleep`].
#[derive(Debug)]
pub(crate) struct Sleep {
    deadline: Instant,
    id: u64,
    registered: bool,
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let Some(watchdog) = watchdog() else {
            // No watchdog thread: Tokio's timer it is (fine on a live runtime with timers).
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            return self.fallback.get_or_insert_with(|| Box::pin(tokio::time::sleep(remaining))).as_mut().poll(cx);
        };
        let key = (self.deadline, self.id);
        let mut state = watchdog.state.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = state.timers.first_key_value().map(|(k, _)| k.0);
        let earliest_check = state.queue.first().map(|(at, _)| *at);
        state.timers.insert(key, cx.waker().clone());
        drop(state);
        self.registered = true;
        if earliest.into_iter().chain(earliest_check).min().is_none_or(|at| self.deadline < at) {
            watchdog.thread.unpark();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if self.registered
            && let Some(Some(watchdog)) = WATCHDOG.get()
        {
            watchdog.state.lock().unwrap_or_else(|e| e.into_inner()).timers.remove(&(self.deadline, self.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    struct Counter {
        checks: AtomicUsize,
        every: Duration,
        times: usize,
    }

    impl Watched for Counter {
        fn check(&self, now: Instant) -> Option<Instant> {
            let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
            (n < self.times).then_some(now + self.every)
        }
    }

    #[test]
    fn sleeps_on_the_real_clock_without_a_runtime_timer() {
        // A runtime without timers: Tokio's sleep would panic here.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let started = Instant::now();
        runtime.block_on(sleep(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
        // Dropped before its deadline, a sleep leaves nothing registered.
        let mut early = Box::pin(sleep(Duration::from_secs(3600)));
        let waker = std::task::Waker::noop();
        assert!(early.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        let key = (early.deadline, early.id);
        drop(early);
        assert!(!watchdog().unwrap().state.lock().unwrap().timers.contains_key(&key));
    }

    #[test]
    fn checks_at_deadlines_and_forgets_dropped_sources() {
        let counter = Arc::new(Counter { checks: AtomicUsize::new(0), every: Duration::from_millis(5), times: 3 });
        let registration = Registration::new();
        let weak: Weak<dyn Watched> = Arc::downgrade(&(counter.clone() as Arc<dyn Watched>));
        registration.schedule(weak, Instant::now() + Duration::from_millis(5));
        for _ in 0..400 {
            if counter.checks.load(Ordering::Relaxed) == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(counter.checks.load(Ordering::Relaxed), 3, "checked at each deadline it asked for, then left");
        let id = registration.id;
        registration.schedule(
            Arc::downgrade(&(counter.clone() as Arc<dyn Watched>)),
            Instant::now() + Duration::from_secs(3600),
        );
        assert!(watchdog().unwrap().state.lock().unwrap().sources.contains_key(&id));
        drop(registration);
        assert!(
            !watchdog().unwrap().state.lock().unwrap().sources.contains_key(&id),
            "a dropped registration leaves nothing"
        );
    }
}
