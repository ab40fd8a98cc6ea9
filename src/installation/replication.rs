//! What is known about GitHub's replication of one fresh token, shared by every request that carried it.
//!
//! Owns the proof (GitHub accepted the token once: every replica will soon) and the probe schedule while there
//! is none: whatever the retry budget says, one request per step goes back to GitHub with the token, and every
//! other refused request waits for that probe's answer instead of sending its own. Steps grow from the first
//! backoff and are capped, so a burst of any size finishes within about one step of the lag's end.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The replication state of one token.
#[derive(Debug, Default)]
pub(crate) struct Replication {
    proven: AtomicBool,
    /// Made by the first request that waits for a proof (most tokens never need one: 16 bytes saved per token
    /// in a pool of thousands).
    proof: std::sync::OnceLock<Box<Notify>>,
    /// When the next probe may go out, in nanoseconds after `origin` (the token's receipt); 0 before the first
    /// refusal.
    next_probe: AtomicU64,
    /// Probes sent so far.
    probes: AtomicU32,
}

/// What a refused request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Turn {
    /// GitHub accepted the token meanwhile: retry with it.
    Proven,
    /// This request is the probe for the current step: retry with the token.
    Probe,
    /// The lag window closed without a proof: retry once more; a refusal then counts as a stale token.
    WindowClosed,
}

/// How probes are spaced: `first * 2^(k-1)` for step `k`, at most `max`, jittered to 50-100 %.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeSteps {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl ProbeSteps {
    fn step(&self, k: u32) -> Duration {
        let base = self.first.saturating_mul(1 << k.saturating_sub(1).min(20)).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

impl Replication {
    /// Records that GitHub accepted the token, waking every request waiting on a probe. One load once known.
    pub(crate) fn mark_proven(&self) {
        if !self.proven.load(Ordering::Acquire) && !self.proven.swap(true, Ordering::SeqCst) {
            // Pairs with the fence in `wait_turn`: either the waiter sees the proof, or this sees its `Notify`.
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(proof) = self.proof.get() {
                proof.notify_waiters();
            }
        }
    }

    /// Whether GitHub accepted the token at least once.
    pub(crate) fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }

    /// Probes sent for this token so far.
    pub(crate) fn probes(&self) -> u32 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Waits until the token is proven, this request's turn to probe comes, or the window closes.
    pub(crate) async fn wait_turn(&self, origin: Instant, window_ends: Instant, steps: ProbeSteps) -> Turn {
        loop {
            let proof = self.proof.get_or_init(|| Box::new(Notify::new())).notified();
            tokio::pin!(proof);
            proof.as_mut().enable();
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.is_proven() {
                return Turn::Proven;
            }
            let now = Instant::now();
            if now >= window_ends {
                return Turn::WindowClosed;
            }
            let wake = match self.claim(origin, now, steps) {
                Ok(()) => return Turn::Probe,
                Err(next) => next.min(window_ends),
            };
            tokio::select! {
                _ = &mut proof => return Turn::Proven,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Takes the probe slot that is due, if any; otherwise says when the next one is.
    fn claim(&self, origin: Instant, now: Instant, steps: ProbeSteps) -> Result<(), Instant> {
        let offset = |t: Instant| (t.saturating_duration_since(origin).as_nanos() as u64).max(1);
        let at = |nanos: u64| origin + Duration::from_nanos(nanos);
        let now_nanos = offset(now);
        let mut next = self.next_probe.load(Ordering::Acquire);
        loop {
            if next == 0 {
                // The first refusal: the token was just sent by everyone; the first probe waits one step.
                let first = offset(now + steps.step(1));
                match self.next_probe.compare_exchange(0, first, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Err(at(first)),
                    Err(actual) => next = actual,
                }
                continue;
            }
            if now_nanos < next {
                return Err(at(next));
            }
            let k = self.probes.load(Ordering::Relaxed) + 2;
            let following = offset(now + steps.step(k));
            match self.next_probe.compare_exchange(next, following, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.probes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(actual) => next = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: ProbeSteps = ProbeSteps { first: Duration::from_millis(250), max: Duration::from_secs(1) };

    #[tokio::test(start_paused = true)]
    async fn one_probe_per_step_and_everyone_else_waits_for_it() {
        let replication = std::sync::Arc::new(Replication::default());
        let origin = Instant::now();
        let window_ends = origin + Duration::from_secs(10);
        let turns: Vec<_> = (0..500)
            .map(|_| {
                let replication = replication.clone();
                tokio::spawn(async move { replication.wait_turn(origin, window_ends, STEPS).await })
            })
            .collect();
        // Nobody probes before the first step; then exactly one request per step.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(replication.probes(), 0);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let after_a_second = replication.probes();
        assert!((1..=4).contains(&after_a_second), "{after_a_second}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let probes = replication.probes();
        assert!(probes > after_a_second && probes <= after_a_second + 8, "{probes}");
        replication.mark_proven();
        let mut counts = std::collections::BTreeMap::new();
        for turn in turns {
            *counts.entry(turn.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&Turn::Probe).copied().unwrap_or(0), probes as usize);
        assert_eq!(counts[&Turn::Proven], 500 - probes as usize);
        assert_eq!(Instant::now() - origin, Duration::from_millis(4020), "everyone woke at the proof");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_proof_the_window_closes() {
        let replication = Replication::default();
        let origin = Instant::now();
        let mut turns = Vec::new();
        loop {
            let turn = replication.wait_turn(origin, origin + Duration::from_secs(3), STEPS).await;
            turns.push(turn);
            if turn == Turn::WindowClosed {
                break;
            }
        }
        assert_eq!(Instant::now(), origin + Duration::from_secs(3));
        assert!(turns[..turns.len() - 1].iter().all(|t| *t == Turn::Probe));
        // Steps of 125-250 ms, 250-500 ms, 500 ms-1 s, then at most 1 s: between 3 and 12 probes in 3 s.
        assert!((3..=12).contains(&(turns.len() - 1)), "{turns:?}");
    }
}
