//! Authenticated SMTP sessions kept open between emails, so that an email
//! costs one transaction (`MAIL`, `RCPT`, `DATA`) and not a connect, EHLO,
//! STARTTLS and AUTH as well.
//!
//! Rules, each for a reason:
//! - Only a session whose last transaction ended cleanly is kept (the message
//!   accepted, or every address answered and the transaction reset). Any
//!   failure that ends a session (a `421`, a TLS error, a broken socket, the
//!   exchange's timeout, which drops the future and the connection with it)
//!   leaves nothing behind to reuse.
//! - At most [`IDLE_LIMIT`] idle and [`MAX_EMAILS_PER_SESSION`] emails per
//!   session: servers close idle sessions themselves (Postfix after 300 s,
//!   sooner under load), and a long-lived session would pin one relay process.
//! - A kept session the server has meanwhile closed is normal, not a delivery
//!   failure: if the first commands on it fail the way a closed session does
//!   ([`smtp::Failure::is_stale_connection`]), the email goes again at once on a
//!   fresh session and no failed attempt is recorded. The other idle sessions
//!   are dropped too (they were most likely closed by the same restart).
//! - The pool never opens more sessions than there are emails in flight: a
//!   fresh session is opened only when none is idle, and the outbox starts at
//!   most `[mail] max_connections` emails at once, so at most that many
//!   connections are open (the probe, run only when nothing is in flight,
//!   adds its own short one).
//!
//! Idle times are real (`Instant`), not the outbox's [`Clock`](super::Clock):
//! they are about sockets, which live on tokio's real timer.

use super::smtp::{self, Failure, Outcome, Settings};
use lettre::Address;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session unused this long is closed rather than reused.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// A session is closed after carrying this many emails.
pub const MAX_EMAILS_PER_SESSION: u32 = 100;

/// An open session waiting for the next email.
struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
    /// Emails this session has carried.
    carried: u32,
}

/// The idle sessions to one server.
pub struct Pool {
    /// A std mutex, never held across an await: taking and putting back are
    /// a push or a pop.
    idle: Mutex<Vec<Idle>>,
    /// Sessions kept beyond this many are closed (`[mail] max_connections`).
    max_idle: usize,
}

/// What [`Pool::send`] did besides the email's own outcome: for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reuse {
    /// The email went over a session kept from an earlier one.
    pub reused: bool,
    /// Kept sessions found closed by the server before this one went.
    pub stale: u32,
}

impl Pool {
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// The most recently used idle session, if one is young enough; the
    /// expired ones are returned too, to be closed by the caller.
    fn take(&self) -> (Option<Idle>, Vec<Idle>) {
        // Poisoned: a panic between a push and a pop leaves a valid Vec.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (fresh, expired): (Vec<Idle>, Vec<Idle>) = idle
            .drain(..)
            .partition(|i| now.duration_since(i.since) < IDLE_LIMIT);
        *idle = fresh;
        (idle.pop(), expired)
    }

    /// Keeps `conn` for the next email, or says it should be closed.
    fn put_back(&self, conn: AsyncSmtpConnection, carried: u32) -> Option<AsyncSmtpConnection> {
        if conn.has_broken() || carried >= MAX_EMAILS_PER_SESSION {
            return Some(conn);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            return Some(conn);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
            carried,
        });
        None
    }

    fn drop_idle(&self) -> Vec<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *idle)
    }

    /// How many sessions wait idle now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends one email over a kept session, or a fresh one (see the module's
    /// header). Not bounded here: the caller's timeout drops the future, and
    /// with it whichever session was in use.
    pub async fn send(
        &self,
        settings: &Settings,
        helo: &ClientId,
        from: &Address,
        to: &[Address],
        message: &[u8],
    ) -> (Result<Outcome, Failure>, Reuse) {
        let mut reuse = Reuse::default();
        loop {
            let (kept, expired) = self.take();
            close(expired).await;
            let (mut conn, carried, reused) = match kept {
                Some(i) => (i.conn, i.carried, true),
                None => match smtp::session(settings, helo).await {
                    Ok(conn) => (conn, 0, false),
                    Err(failure) => return (Err(failure), reuse),
                },
            };
            let result = smtp::transaction(&mut conn, from, to, message).await;
            if let Err(failure) = &result
                && reused
                && failure.is_stale_connection()
            {
                tracing::debug!(error = %crate::display::escape_controls(&failure.reason),
                    "A kept SMTP session was closed by the server; sending on a fresh one");
                reuse.stale += 1;
                close(self.drop_idle()).await;
                continue;
            }
            reuse.reused = reused;
            if let Some(mut done) = self.put_back(conn, carried + 1)
                && !done.has_broken()
            {
                // Polite: tell the server we are done with a session it may still count.
                let _ = done.quit().await;
            }
            return (result, reuse);
        }
    }

    /// Closes every idle session (QUIT), e.g. at shutdown.
    pub async fn close_all(&self) {
        close(self.drop_idle()).await;
    }
}

/// QUIT on each, then close; answers do not matter any more.
async fn close(sessions: Vec<Idle>) {
    for mut s in sessions {
        s.conn.abort().await;
    }
}
