//! Log output: human-readable text or one JSON object per line, and a
//! limiter for errors that repeat in bursts.
//!
//! Every event about a client carries `client = <id>`, the id the admin API
//! shows; events about an upstream connection carry `upstream = <id>`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Changes the log level of the running process (a reload).
pub type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

fn filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("warren={level}"))
}

pub fn init(level: &str, format: LogFormat) -> SetLevel {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let builder = builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level| handle.reload(filter(level)).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level| handle.reload(filter(level)).map_err(|e| e.to_string()))
        }
    }
}

/// Lets an error through once per interval and counts the ones held back,
/// so a dead broker with a thousand clients knocking logs a line a second
/// saying how many, not a thousand lines.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were held back since the last one logged; `None` when it should not.
    pub fn check(&self) -> Option<u64> {
        let mut last = self.last.lock().expect("rate limit lock");
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        *limit.last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(limit.check(), Some(2));
    }
}
