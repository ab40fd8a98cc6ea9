//! The default retry budget: tower's `TpsBudget` algorithm, with deposits that can be made in batches.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

/// A retry budget that allows retries for a share of recent requests plus a minimum rate, like tower's
/// [`TpsBudget`](tower::retry::budget::TpsBudget) (same parameters, same arithmetic), with one difference:
/// [`RetryOn401Policy`](super::RetryOn401Policy) deposits into it in batches of up to
/// [`BATCH`](Self::BATCH) requests, so that two threads sending requests through one policy do not meet on its
/// lock for every request. The batch a service has not yet deposited is at most `BATCH - 1` requests.
pub struct RetryBudget {
    window: Mutex<Window>,
    slot_length: Duration,
    reserve: isize,
    deposit_amount: isize,
    withdraw_amount: isize,
}

struct Window {
    slots: [isize; SLOTS],
    index: usize,
    rotated_at: Instant,
    writer: isize,
}

const SLOTS: usize = 10;

impl RetryBudget {
    /// How many deposits a policy gathers before it pays them in.
    pub const BATCH: u32 = 16;

    /// A budget in which a deposit counts for `ttl` (1 to 60 s), `min_per_sec` retries per second are always
    /// allowed, and each deposit allows `retry_percent` more (0.2: one retry per five requests). Values outside
    /// those ranges are clamped.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let retry_percent = if retry_percent.is_finite() { retry_percent.clamp(0.0, 1000.0) } else { 0.0 };
        let (deposit_amount, withdraw_amount) = if retry_percent == 0.0 {
            (0, 1)
        } else if retry_percent <= 1.0 {
            (1, (1.0 / retry_percent) as isize)
        } else {
            (1000, (1000.0 / retry_percent) as isize)
        };
        let reserve = (min_per_sec.min(i32::MAX as u32) as isize)
            .saturating_mul(ttl.as_secs() as isize)
            .saturating_mul(withdraw_amount);
        RetryBudget {
            window: Mutex::new(Window { slots: [0; SLOTS], index: 0, rotated_at: Instant::now(), writer: 0 }),
            slot_length: ttl / SLOTS as u32,
            reserve,
            deposit_amount,
            withdraw_amount,
        }
    }

    /// Records `n` requests at once.
    pub fn deposit_many(&self, n: u32) {
        let mut window = self.lock();
        window.writer = window.writer.saturating_add(self.deposit_amount.saturating_mul(n as isize));
    }

    /// Retries allowed right now (for tests and metrics).
    pub fn available(&self) -> isize {
        let window = self.lock();
        self.sum(&window) / self.withdraw_amount.max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut elapsed = now.saturating_duration_since(window.rotated_at);
        if elapsed >= self.slot_length {
            let index = window.index;
            window.slots[index] = std::mem::take(&mut window.writer);
            let mut next = (index + 1) % SLOTS;
            while elapsed > self.slot_length {
                window.slots[next] = 0;
                elapsed -= self.slot_length;
                next = (next + 1) % SLOTS;
            }
            window.index = next;
            window.rotated_at = now;
        }
        window
    }

    fn sum(&self, window: &Window) -> isize {
        window.slots.iter().fold(window.writer, |sum, slot| sum.saturating_add(*slot)).saturating_add(self.reserve)
    }
}

impl Default for RetryBudget {
    /// tower's defaults: deposits count for 10 s, 10 retries per second, plus 20 % of requests.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.deposit_many(1);
    }

    fn withdraw(&self) -> bool {
        let mut window = self.lock();
        if self.sum(&window) >= self.withdraw_amount {
            window.writer -= self.withdraw_amount;
            true
        } else {
            false
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("slot_length", &self.slot_length)
            .field("reserve", &self.reserve)
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn behaves_like_tps_budget() {
        use tower::retry::budget::TpsBudget;
        let ours = RetryBudget::new(Duration::from_secs(10), 1, 0.5);
        let theirs = TpsBudget::new(Duration::from_secs(10), 1, 0.5);
        // 10 in reserve, plus one per two deposits.
        ours.deposit_many(4);
        for _ in 0..4 {
            theirs.deposit();
        }
        let count = |b: &dyn Budget| (0..100).take_while(|_| b.withdraw()).count();
        assert_eq!(count(&ours), 12);
        assert_eq!(count(&theirs), 12);
        // Deposits and withdrawals expire after the ttl; the reserve stays.
        ours.deposit_many(20);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(count(&ours), 10, "only the reserve is left");
    }
}
