//! The outbox worker's clock: where its stored times (`next_attempt_at`,
//! `handed_off_at`, `delivered_at`), its monotonic intervals (the probe, the
//! fault log) and its waits (backoff, idle poll) all come from.
//!
//! [`Clock::system`] is the wall clock and tokio's timer: what the daemon uses.
//! [`Clock::manual`] stands still until a test [`advance`](Clock::advance)s it,
//! so backoff and probing are tested exactly and without real waiting.
//!
//! Why not `tokio::time::pause()`: the outbox talks to a real SMTP server, and
//! a paused tokio clock jumps to the next timer whenever the runtime waits,
//! which, with a socket in flight, is the exchange's own `[mail] timeout`: it
//! would fire at once. So only the worker's scheduling follows this clock;
//! every exchange stays bounded by tokio's real timer.

use jiff::Timestamp;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The outbox worker's source of time. Cheap to clone; clones share the time.
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    System,
    Manual(Arc<Manual>),
}

/// A clock that moves only when told to.
#[derive(Debug)]
struct Manual {
    /// The time since the clock was made: every reading derives from it, so
    /// stored times and intervals agree.
    elapsed: watch::Sender<Duration>,
    /// The wall-clock time and the `Instant` the clock started at.
    origin: (Timestamp, Instant),
    /// When each pending [`Clock::sleep`] ends (by elapsed time), so that a test
    /// can tell that the worker has finished its turn and is waiting.
    sleepers: Mutex<Vec<Duration>>,
    sleepers_changed: watch::Sender<()>,
}

impl Clock {
    /// The wall clock, and tokio's timer for waits.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `start` until [`advance`](Self::advance)d.
    pub fn manual(start: Timestamp) -> Clock {
        Clock(Source::Manual(Arc::new(Manual {
            elapsed: watch::Sender::new(Duration::ZERO),
            origin: (start, Instant::now()),
            sleepers: Mutex::new(Vec::new()),
            sleepers_changed: watch::Sender::new(()),
        })))
    }

    /// The current time, as stored in the database.
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Source::System => Timestamp::now(),
            Source::Manual(m) => {
                let elapsed = *m.elapsed.borrow();
                // Beyond jiff's range only after some 10,000 years of advancing.
                m.origin.0.checked_add(elapsed).unwrap_or(m.origin.0)
            }
        }
    }

    /// The current monotonic time, for intervals that must not follow wall-clock jumps.
    pub fn instant(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(m) => m.origin.1 + *m.elapsed.borrow(),
        }
    }

    /// Waits `duration` of this clock's time.
    pub async fn sleep(&self, duration: Duration) {
        let manual = match &self.0 {
            Source::System => return tokio::time::sleep(duration).await,
            Source::Manual(m) => m,
        };
        let mut elapsed = manual.elapsed.subscribe();
        let until = *elapsed.borrow_and_update() + duration;
        let _registered = Sleeper::register(manual, until);
        // Err only if the sender is gone, which cannot happen while `manual` lives.
        let _ = elapsed.wait_for(|now| *now >= until).await;
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    ///
    /// # Panics
    /// On the system clock: a test that means to drive time must make a manual one.
    pub fn advance(&self, by: Duration) {
        match &self.0 {
            Source::System => panic!("the system clock cannot be advanced"),
            Source::Manual(m) => m.elapsed.send_modify(|e| *e += by),
        }
    }

    /// Waits until some task sleeps on this manual clock past its current time:
    /// the positive sign that the worker has done everything due now. Returns
    /// how long until the first such sleep ends.
    ///
    /// # Panics
    /// On the system clock.
    pub async fn sleeping(&self) -> Duration {
        let Source::Manual(m) = &self.0 else {
            panic!("only a manual clock can tell who sleeps on it")
        };
        let mut changed = m.sleepers_changed.subscribe();
        loop {
            changed.borrow_and_update();
            let now = *m.elapsed.borrow();
            let next = lock(&m.sleepers)
                .iter()
                .filter(|until| **until > now)
                .min()
                .copied();
            if let Some(until) = next {
                return until - now;
            }
            // Err only if the sender is gone, which cannot happen while `m` lives.
            let _ = changed.changed().await;
        }
    }
}

/// One pending sleep on a manual clock, listed while it lasts (also when the
/// sleep is dropped unfinished, as a `select!` does).
struct Sleeper<'a> {
    clock: &'a Manual,
    until: Duration,
}

impl<'a> Sleeper<'a> {
    fn register(clock: &'a Manual, until: Duration) -> Sleeper<'a> {
        lock(&clock.sleepers).push(until);
        clock.sleepers_changed.send_replace(());
        Sleeper { clock, until }
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        let mut sleepers = lock(&self.clock.sleepers);
        if let Some(i) = sleepers.iter().position(|u| *u == self.until) {
            sleepers.swap_remove(i);
        }
        drop(sleepers);
        self.clock.sleepers_changed.send_replace(());
    }
}

/// The list stays consistent whatever a panicking holder did (it only pushes
/// or removes one entry), so a poisoned lock is simply taken over.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_advanced_and_wakes_its_sleepers() {
        let start: Timestamp = "2025-11-04T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::from_secs(30)).await })
        };
        assert_eq!(clock.sleeping().await, Duration::from_secs(30));
        clock.advance(Duration::from_secs(29));
        assert_eq!(clock.sleeping().await, Duration::from_secs(1));
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(30));
        let origin = clock.instant();
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.instant() - origin, Duration::from_secs(5));
    }
}
