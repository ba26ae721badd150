//! Log lines a client can cause at will, written at most once per period.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often one recurring failure is logged at most.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// One recurring failure's log line (the database down while clients keep guessing, the process
/// out of descriptors), written at most once per period so that a flood of causes cannot flood
/// the log. The line that is written says how many were held back since the one before.
pub(crate) struct Throttle {
    period_ms: u64,
    /// Milliseconds since [`EPOCH`] before which no line is written.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Throttle {
    pub(crate) const fn new(period: Duration) -> Throttle {
        Throttle {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = EPOCH.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        let mine = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if mine {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_one_counts_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.admit(), Some(0), "the first line is written");
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.admit(), Some(2), "the next says two were held back");
        assert_eq!(t.admit(), None);
    }
}
