//! A token bucket that may go into debt: a publish is never refused or
//! split for its rate, it is let through and the client is then not read
//! until the debt is paid. Pure (time is passed in), unit-tested.

use std::time::{Duration, Instant};

/// A rate (units per second) with a burst of a tenth of a second's worth,
/// so a publisher is held to the rate within a few percent over seconds.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(per_second: u64, now: Instant) -> Self {
        let rate = per_second as f64;
        let burst = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Spends `amount`. Within the rate: `None`. Over it: how long the
    /// client must not be read, until half a burst has come back (so a
    /// steady publisher over its rate is paused a few times a second, not
    /// at every message).
    pub fn take(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= amount as f64;
        (self.tokens < 0.0)
            .then(|| Duration::from_secs_f64((self.burst / 2.0 - self.tokens) / self.rate))
    }

    /// Forgets any debt: for a bucket that only measures.
    pub fn forgive(&mut self) {
        self.tokens = self.tokens.max(0.0);
    }

    /// Back to a full burst: nothing of the past is owed.
    pub fn is_rested(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut bucket = Bucket::new(100, start);
        // A tenth of a second's worth passes at once.
        for _ in 0..10 {
            assert_eq!(bucket.take(1, start), None);
        }
        let wait = bucket.take(1, start).expect("over the burst");
        // One unit of debt plus half a burst back: 6 units at 100/s.
        assert!((wait.as_secs_f64() - 0.06).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(1, start + wait), None);
    }

    #[test]
    fn a_message_larger_than_the_burst_passes_and_is_paid_for() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1000, start);
        let wait = bucket.take(5000, start).expect("a debt");
        assert!(wait >= Duration::from_secs(4), "{wait:?}");
        assert!(!bucket.is_rested(start + Duration::from_secs(4)));
        assert!(bucket.is_rested(start + Duration::from_secs(6)));
    }

    #[test]
    fn the_average_over_seconds_is_the_rate() {
        // A publisher that always has the next message ready: it is read
        // whenever it is not paused.
        let start = Instant::now();
        let mut bucket = Bucket::new(500, start);
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(10) {
            sent += 1;
            if let Some(wait) = bucket.take(1, now) {
                now += wait;
            }
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 500.0).abs() / 500.0 < 0.02, "{rate}");
    }
}
