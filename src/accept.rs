//! What every accept loop (the metrics endpoint, the web console) shares:
//! pausing after failed accepts instead of spinning. Pure: callers pass the time.
//!
//! accept() fails with EMFILE, ENFILE or ENOBUFS when descriptors or buffers
//! run out, and fails again at once until something closes; a loop that simply
//! retried would spin a core and flood the log while feeds and mail starve.

use std::time::Duration;

/// How long to pause after failed accepts, and when to log them. Pure: the
/// caller passes the time.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// Failures in a row since the last successful accept.
    failures: u32,
    /// Failures not yet logged.
    unreported: u64,
    last_report: Option<std::time::Instant>,
}

/// The first pause after a failed accept; it doubles up to [`ACCEPT_PAUSE_MAX`].
pub const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one log line about failing accepts per this interval.
pub const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    /// A failed accept at `now`: how long to pause, and, when it is time to
    /// log, how many failures the log line covers.
    pub fn failed(&mut self, now: std::time::Instant) -> (Duration, Option<u64>) {
        self.failures = self.failures.saturating_add(1);
        self.unreported += 1;
        let pause = crate::delivery::backoff(self.failures, ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        let due = self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_REPORT_EVERY);
        if !due {
            return (pause, None);
        }
        self.last_report = Some(now);
        (pause, Some(std::mem::take(&mut self.unreported)))
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_pause_longer_and_are_logged_now_and_then() {
        let mut b = AcceptBackoff::default();
        let t0 = std::time::Instant::now();
        let (pause, report) = b.failed(t0);
        assert_eq!((pause, report), (ACCEPT_PAUSE_MIN, Some(1)));
        let mut pauses = Vec::new();
        for i in 1..20u64 {
            let (pause, report) = b.failed(t0 + Duration::from_millis(i));
            assert_eq!(report, None, "logged again within the interval");
            pauses.push(pause);
        }
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), ACCEPT_PAUSE_MAX);
        // The next line, once the interval is over, counts every failure since the last.
        let (_, report) = b.failed(t0 + ACCEPT_REPORT_EVERY);
        assert_eq!(report, Some(20));
        b.succeeded();
        assert_eq!(b.failed(t0 + ACCEPT_REPORT_EVERY).0, ACCEPT_PAUSE_MIN);
    }
}
