//! The one task that refreshes every entry of a pool: not one task or timer per installation.
//!
//! Owns the queue of refresh deadlines (one per entry, jittered by the token's own refresh time), the cap on
//! concurrent mints and the spacing that keeps scheduled refreshes at or under the configured rate. At each
//! deadline it refreshes entries that requests used since their last refresh and evicts the others, then sleeps
//! until the next deadline: between refreshes it uses no CPU. It runs on the Tokio runtime of the request that
//! first needed it; when that runtime goes away, the next request starts it again where it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::PoolInner;
use super::slot::Slot;
use crate::error::{Error, ErrorKind};
use crate::installation::source::{OVERSLEEP, epoch, real_time};

/// The refresh queue and the limits every mint of the pool goes through.
pub(crate) struct Scheduler {
    /// Entries by the second their refresh is due (seconds after `origin`, rounded up): a few bytes per entry,
    /// where a queue ordered to the nanosecond would take five times as many, and a second is nothing next to
    /// the ten minutes a refresh comes ahead of expiry.
    queue: Mutex<BTreeMap<u64, Vec<Weak<Slot>>>>,
    origin: Instant,
    /// Wakes the live task when an earlier deadline was queued, and when the pool is dropped. Each task has its
    /// own: a retired task whose runtime stopped driving it must not swallow its successor's wake-ups.
    wake: Mutex<Arc<Notify>>,
    /// Whether a task runs, and its generation: a task the watchdog retired (its runtime stopped driving it)
    /// exits when it runs again, since a newer one may have started meanwhile.
    running: Mutex<(bool, u64)>,
    /// `running.0`, for the request path: while no task runs (its runtime shut down or stopped driving it),
    /// requests take the slow path, which starts one where they run, so refreshes never stop for long.
    pub(crate) live: AtomicBool,
    /// When the task will wake at the latest, on the real clock (nanoseconds after the crate's epoch; `u64::MAX`
    /// while it waits for work with no deadline).
    wakes_by: AtomicU64,
    /// Whether the task waits for a deadline or a wake-up (rather than for its turn under the rate or for a
    /// permit): only then does an earlier deadline move `wakes_by`.
    listening: AtomicBool,
    permits: Arc<Semaphore>,
    /// Scheduled refreshes start no closer together than this.
    spacing: Duration,
    /// When the next scheduled refresh may start.
    next_start: Mutex<Instant>,
}

impl Scheduler {
    pub(crate) fn new(max_concurrent_mints: usize, rate_per_second: f64) -> Self {
        Scheduler {
            queue: Mutex::new(BTreeMap::new()),
            origin: Instant::now(),
            wake: Mutex::new(Arc::new(Notify::new())),
            running: Mutex::new((false, 0)),
            live: AtomicBool::new(false),
            wakes_by: AtomicU64::new(u64::MAX),
            listening: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(max_concurrent_mints)),
            spacing: Duration::from_secs_f64(1.0 / rate_per_second),
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Queues `slot` for a refresh at `at`. When that is the earliest deadline, wakes the task and moves the
    /// moment it promised to wake by to then; returns that moment (real clock) for the watchdog, so that a task
    /// that does not wake is found out.
    pub(crate) fn schedule(&self, slot: Weak<Slot>, at: Instant) -> Option<std::time::Instant> {
        let second = self.second(at);
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = queue.first_key_value().map(|(second, _)| *second);
        queue.entry(second).or_default().push(slot);
        drop(queue);
        if earliest.is_none_or(|earliest| second < earliest) {
            self.wake.lock().unwrap_or_else(|e| e.into_inner()).notify_one();
            if self.listening.load(Ordering::Acquire) {
                let due = real_nanos(self.moment(second));
                self.wakes_by.fetch_min(due, Ordering::AcqRel);
                return Some(epoch() + Duration::from_nanos(due));
            }
        }
        None
    }

    /// Takes `slot` out of the queue second `second`, where the task found it. Returns whether it was there
    /// (a newer task may have taken it meanwhile).
    fn take(&self, second: u64, slot: &Weak<Slot>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = queue.get_mut(&second) else {
            return false;
        };
        let Some(at) = bucket.iter().rposition(|queued| queued.ptr_eq(slot)) else {
            return false;
        };
        bucket.swap_remove(at);
        if bucket.is_empty() {
            queue.remove(&second);
        }
        true
    }

    /// Wakes the live task (the pool is going away, or something changed).
    pub(crate) fn wake(&self) {
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).notify_one();
    }

    /// The queue's second for `at` (rounded up).
    fn second(&self, at: Instant) -> u64 {
        let after = at.saturating_duration_since(self.origin);
        after.as_secs() + u64::from(after.subsec_nanos() > 0)
    }

    /// The moment a queue second begins.
    fn moment(&self, second: u64) -> Instant {
        self.origin + Duration::from_secs(second)
    }

    /// How many refreshes are queued.
    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }

    /// A permit to mint: at most `max_concurrent_mints` at a time, pool-wide.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        Arc::clone(&self.permits).acquire_owned().await.expect("the mint semaphore is never closed")
    }

    /// When the next scheduled refresh may start under the rate (reserving that turn).
    fn turn(&self) -> Instant {
        let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*next).max(Instant::now());
        *next = start + self.spacing;
        start
    }

    /// Whether the task of `generation` is the live one.
    fn is_live(&self, generation: u64) -> bool {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) == (true, generation)
    }

    /// The task's state for the watchdog: whether it runs, its generation, and when it will wake at the latest.
    pub(crate) fn state(&self) -> (bool, u64, Option<std::time::Instant>) {
        let (running, generation) = *self.running.lock().unwrap_or_else(|e| e.into_inner());
        let wakes_by = match self.wakes_by.load(Ordering::Acquire) {
            u64::MAX => None,
            nanos => Some(epoch() + Duration::from_nanos(nanos)),
        };
        (running, generation, wakes_by)
    }

    /// Retires the task of `generation` (the watchdog saw it oversleep, or its runtime dropped it): the next
    /// request starts another where it runs. Returns whether it was the live one.
    pub(crate) fn retire(&self, generation: u64) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let retire = *running == (true, generation);
        if retire {
            running.0 = false;
            self.live.store(false, Ordering::Relaxed);
        }
        retire
    }

    /// Starts the task on the current runtime unless one runs.
    pub(crate) fn ensure_running(&self, pool: &Arc<PoolInner>) -> Result<(), Error> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.0 {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Runtime,
                "the pool refreshes tokens with a background task, which needs a Tokio runtime: send requests \
                 and call token() from within one",
            )
        })?;
        *running = (true, running.1 + 1);
        self.live.store(true, Ordering::Relaxed);
        let generation = running.1;
        let wake = Arc::new(Notify::new());
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&wake);
        drop(running);
        let guard = Running { pool: Arc::downgrade(pool), generation };
        drop(runtime.spawn(run(guard, wake)));
        Ok(())
    }
}

/// A real-clock moment as `wakes_by` stores it.
fn real_nanos(at: Instant) -> u64 {
    real_time(at).saturating_duration_since(epoch()).as_nanos().min(u128::from(u64::MAX - 1)) as u64
}

/// The task's state that must outlive it: however it ends (pool dropped, runtime shut down, dropped unpolled),
/// it marks itself stopped and hands the pool to the watchdog, which withdraws tokens at the end of their use
/// until a request starts a new task. (An entry leaves the queue only when its refresh is spawned, so a task
/// that ends or is retired takes none with it.)
struct Running {
    pool: Weak<PoolInner>,
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade()
            && pool.scheduler.retire(self.generation)
        {
            pool.watch_at(std::time::Instant::now());
        }
    }
}

/// Tells the watchdog when the task of `generation` wakes at the latest (`None`: it waits for work, with no
/// token to watch). A retired task that still runs promises nothing.
fn heartbeat(pool: &PoolInner, generation: u64, wakes_by: Option<Instant>) {
    if !pool.scheduler.is_live(generation) {
        return;
    }
    let Some(at) = wakes_by else {
        pool.scheduler.wakes_by.store(u64::MAX, Ordering::Release);
        return;
    };
    let nanos = real_nanos(at);
    pool.scheduler.wakes_by.store(nanos, Ordering::Release);
    pool.watch_at(epoch() + Duration::from_nanos(nanos) + OVERSLEEP);
}

/// The task: takes due refreshes one by one, refreshes entries in use and evicts idle ones, sleeps until the
/// next.
async fn run(guard: Running, wake: Arc<Notify>) {
    let generation = guard.generation;
    loop {
        let Some(pool) = guard.pool.upgrade() else {
            return;
        };
        if !pool.scheduler.is_live(generation) {
            // Retired by the watchdog while its runtime did not drive it; a newer task may run.
            return;
        }
        pool.counters.scheduler_wakeups.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let notified = wake.notified();
        tokio::pin!(notified);
        // Registered before the queue is read: a deadline queued after the read wakes this task.
        notified.as_mut().enable();
        enum Next {
            Due(u64, Weak<Slot>),
            At(Instant),
            Nothing,
        }
        let next = {
            let mut queue = pool.scheduler.queue.lock().unwrap_or_else(|e| e.into_inner());
            match queue.first_entry() {
                Some(first) if pool.scheduler.moment(*first.key()) <= now => match first.get().last() {
                    Some(slot) => Next::Due(*first.key(), slot.clone()),
                    None => {
                        first.remove();
                        continue;
                    }
                },
                Some(first) => Next::At(pool.scheduler.moment(*first.key())),
                None => Next::Nothing,
            }
        };
        let (second, queued) = match next {
            Next::Due(second, queued) => (second, queued),
            Next::At(at) => {
                heartbeat(&pool, generation, Some(at));
                pool.scheduler.listening.store(true, Ordering::Release);
                drop(pool);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
                continue;
            }
            Next::Nothing => {
                heartbeat(&pool, generation, None);
                pool.scheduler.listening.store(true, Ordering::Release);
                drop(pool);
                notified.await;
                continue;
            }
        };
        pool.scheduler.listening.store(false, Ordering::Release);
        let Some(slot) = queued.upgrade() else {
            pool.scheduler.take(second, &queued);
            continue;
        };
        if slot.retired.load(Ordering::Acquire) || slot.refresh_at().is_some_and(|at| at > now) {
            // Left the pool, or a refresh queued for a token that was replaced meanwhile (an invalidation, a
            // demand mint): the newer token queued its own.
            pool.scheduler.take(second, &queued);
            continue;
        }
        if slot.flight().try_lock().is_err() {
            // A mint for it is under way (a refresh, or a request's): it queues the next refresh itself. (Not
            // idle either: the refresh cleared `used`, and no request may have come since.)
            pool.scheduler.take(second, &queued);
            continue;
        }
        if !slot.used.load(Ordering::Relaxed) && slot.current.load().is_some() {
            // Nobody used it since its token arrived: let it go rather than keep it warm.
            pool.scheduler.take(second, &queued);
            pool.evict_idle(&slot);
            continue;
        }
        // Spread over time at the configured rate, and no more mints at once than the cap.
        let start = pool.scheduler.turn();
        heartbeat(&pool, generation, Some(start));
        tokio::time::sleep_until(start).await;
        // Waiting for a permit is waiting for mints under way, each bounded by the mint timeout (twice, with a
        // clock correction); time spent there is not oversleeping.
        heartbeat(&pool, generation, Some(Instant::now() + pool.mint_budget() * 3));
        let permit = pool.scheduler.permit().await;
        // It leaves the queue only now: a task retired or dropped before this point leaves it to the next.
        if !pool.scheduler.is_live(generation) || !pool.scheduler.take(second, &queued) {
            continue;
        }
        // (`used` is cleared when the new token arrives, not here: until then the entry is as used as it was, and
        // a stale refresh firing meanwhile must not find it idle.)
        let requeue = super::Requeue::new(&pool, &slot);
        drop(tokio::spawn(super::refresh(pool, slot, permit, requeue)));
    }
}
