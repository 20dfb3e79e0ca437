//! One SMTP session, step by step, over lettre's async connection: connect
//! (our own socket, with `TCP_NODELAY`; implicit TLS if configured), EHLO,
//! STARTTLS, AUTH ([`session`]); then any number of transactions on it
//! ([`transaction`]: `MAIL FROM`, one `RCPT TO` per address, `DATA`); and the
//! probe (a session, then QUIT).
//!
//! Run by hand instead of through `AsyncSmtpTransport::send_raw` because the
//! outcome is per address (SPEC §7): a 5xx to one `RCPT TO` must not cost the
//! partner's other addresses the email. Every failure is named by the step it
//! happened at and what happened, and [`classify`] (pure) turns that into a
//! [`Verdict`]. This module does no retrying, reads no clock, keeps no
//! connections (`pool` does) and touches no database; the caller bounds every
//! exchange by `[mail] timeout`.
//!
//! The socket is ours, not lettre's, for one reason: lettre's own connect sets
//! no `TCP_NODELAY`, and lettre writes the message and its final dot as two
//! writes, so Nagle holds the dot until the server's delayed ACK (about 40 ms
//! on Linux) for every email.

use crate::config::TlsMode;
use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
#[allow(deprecated)] // AsyncNetworkStream: see `connect_implicit_tls`.
use lettre::transport::smtp::client::{
    AsyncNetworkStream, AsyncSmtpConnection, AsyncTokioStream, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// Where and how to reach the mail server; built once by `Mailer::new`.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Built from `ca_file` and the host; `None` with `tls = "none"`.
    pub tls_params: Option<TlsParameters>,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
}

/// The step of the exchange a failure happened at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// TCP, implicit TLS, the greeting and the first EHLO (lettre does them as one).
    Connect,
    Starttls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// The message and its final dot.
    Message,
}

impl Step {
    /// Whether the probe (connect, EHLO, STARTTLS, AUTH) goes through this step,
    /// so that a probe that succeeds shows a failure here has gone away.
    pub fn probe_sees(self) -> bool {
        matches!(self, Step::Connect | Step::Starttls | Step::Auth)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Connect => "connecting",
            Step::Starttls => "STARTTLS",
            Step::Auth => "AUTH",
            Step::MailFrom => "MAIL FROM",
            Step::RcptTo => "RCPT TO",
            Step::Data => "DATA",
            Step::Message => "the end of DATA",
        }
    }
}

/// What went wrong at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// The server answered with this negative reply code.
    Reply(u16),
    /// The TLS handshake failed (an untrusted certificate, a server not speaking TLS).
    Tls,
    /// The server lacks something this exchange needs (STARTTLS, an AUTH mechanism, 8BITMIME).
    Unsupported,
    /// The connection failed, broke or timed out, or the answer made no sense.
    Network,
}

/// What a failure means for the email and for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server is not taking sessions now (down, busy, 4xx before MAIL):
    /// retry later; the probe can tell when it is back.
    Unavailable,
    /// This email could not go now (4xx to MAIL or DATA, a connection lost mid-way): retry later.
    Transient,
    /// Our session or settings are wrong (AUTH refused, TLS failure, no STARTTLS,
    /// a 5xx to EHLO or MAIL FROM): not a verdict on the email; retry, and tell ops.
    Config,
    /// The email is refused for good (a 5xx to DATA).
    EmailRefused,
    /// This one address is refused for good (a 5xx to its RCPT TO).
    AddressRefused,
    /// This one address is refused for now (a 4xx to its RCPT TO).
    AddressDeferred,
}

/// The meaning of a failure at `step` (SPEC §7, "What counts as permanent").
pub fn classify(step: Step, what: What) -> Verdict {
    use Verdict::*;
    match (step, what) {
        (Step::RcptTo, What::Reply(code)) if code >= 500 => AddressRefused,
        (Step::RcptTo, What::Reply(_)) => AddressDeferred,
        (Step::Data | Step::Message, What::Reply(code)) if code >= 500 => EmailRefused,
        // A message this server cannot carry (8-bit without 8BITMIME) will not
        // become carriable by waiting.
        (Step::MailFrom | Step::Data | Step::Message, What::Unsupported) => EmailRefused,
        (Step::MailFrom, What::Reply(code)) if code >= 500 => Config,
        (Step::Connect | Step::Starttls | Step::Auth, What::Reply(code)) if code >= 500 => Config,
        (_, What::Tls | What::Unsupported) => Config,
        (Step::Connect | Step::Starttls | Step::Auth, What::Reply(_) | What::Network) => {
            Unavailable
        }
        (_, What::Reply(_) | What::Network) => Transient,
    }
}

/// A failed exchange (or a failed part of one): where, what it means, and the server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub what: What,
    pub verdict: Verdict,
    pub reason: String,
}

impl Failure {
    fn new(step: Step, what: What, error: impl std::fmt::Display) -> Failure {
        Failure {
            step,
            what,
            verdict: classify(step, what),
            reason: format!("{}: {error}", step.name()),
        }
    }

    /// Whether this failure, on a connection that sat idle in the pool, is
    /// what a server that closed it looks like (the socket gone, or `421`
    /// "closing"), before any of the message was sent: then the email was not
    /// tried at all, and goes again at once on a fresh connection.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self.what, What::Network | What::Reply(421))
            && matches!(self.step, Step::MailFrom | Step::RcptTo | Step::Data)
    }

    fn of(step: Step, error: &SmtpError, tls_in_play: bool) -> Failure {
        Failure::new(step, what_of(error, tls_in_play), error)
    }
}

/// What an error from lettre was. A TLS handshake failure reaches us as a
/// connection error whose cause is an `InvalidData` I/O error (rustls'), so
/// it is only read as TLS where a handshake happens (`tls_in_play`): elsewhere
/// `InvalidData` is just a garbled answer.
fn what_of(error: &SmtpError, tls_in_play: bool) -> What {
    if let Some(code) = error.status() {
        return What::Reply(u16::from(code));
    }
    if error.is_tls() || (tls_in_play && has_invalid_data(error)) {
        return What::Tls;
    }
    if error.is_client() {
        return What::Unsupported;
    }
    What::Network
}

fn has_invalid_data(error: &SmtpError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The EHLO argument for a name already checked by `config::valid_helo_name`
/// (or found by the daemon): address literals become lettre's literal forms.
pub fn client_id(name: &str) -> ClientId {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        if let Some(v6) = inner.strip_prefix("IPv6:")
            && let Ok(ip) = v6.parse()
        {
            return ClientId::Ipv6(ip);
        }
        if let Ok(ip) = inner.parse() {
            return ClientId::Ipv4(ip);
        }
    }
    ClientId::Domain(name.to_string())
}

/// An address literal for the local side of a connection (RFC 5321 §4.1.3).
pub fn address_literal(ip: std::net::IpAddr) -> ClientId {
    match ip {
        std::net::IpAddr::V4(v4) => ClientId::Ipv4(v4),
        std::net::IpAddr::V6(v6) => ClientId::Ipv6(v6),
    }
}

/// Connects, says EHLO, secures the session as configured and authenticates.
/// Everything a session needs before any email: the probe is exactly this.
pub async fn session(s: &Settings, helo: &ClientId) -> Result<AsyncSmtpConnection, Failure> {
    let implicit = match s.tls {
        TlsMode::Tls => s.tls_params.clone(),
        _ => None,
    };
    let tls_in_play = implicit.is_some();
    let tcp = connect_tcp(s).await?;
    let mut conn = match implicit {
        Some(params) => connect_implicit_tls(tcp, params, helo).await,
        None => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), helo).await,
    }
    .map_err(|e| Failure::of(Step::Connect, &e, tls_in_play))?;
    if s.tls == TlsMode::Starttls {
        let Some(params) = s.tls_params.clone() else {
            // Mailer::new builds the parameters for every TLS mode.
            return Err(Failure::new(
                Step::Starttls,
                What::Unsupported,
                "no TLS parameters",
            ));
        };
        if !conn.can_starttls() {
            conn.abort().await;
            // Never fall back to plain text: the password and the data would cross in clear.
            return Err(Failure::new(
                Step::Starttls,
                What::Unsupported,
                "the server does not offer STARTTLS (tls = \"starttls\"); mail is never sent unencrypted",
            ));
        }
        if let Err(e) = conn.starttls(params, helo).await {
            // Not `abort`: after a failed handshake lettre has no stream left to
            // write QUIT to (and says so with a debug assertion). Dropping the
            // connection closes the socket.
            return Err(Failure::of(Step::Starttls, &e, true));
        }
    }
    if let Some(credentials) = &s.credentials
        && let Err(e) = conn.auth(DEFAULT_MECHANISMS, credentials).await
    {
        conn.abort().await;
        return Err(Failure::of(Step::Auth, &e, false));
    }
    Ok(conn)
}

/// A TCP connection to the server, bounded by the timeout, with `TCP_NODELAY`
/// (see the module's header). Each resolved address is tried in turn.
async fn connect_tcp(s: &Settings) -> Result<TcpStream, Failure> {
    let tcp = match tokio::time::timeout(s.timeout, TcpStream::connect((s.host.as_str(), s.port)))
        .await
    {
        Err(_) => {
            return Err(Failure::new(
                Step::Connect,
                What::Network,
                "connection timed out",
            ));
        }
        Ok(Err(e)) => return Err(Failure::new(Step::Connect, What::Network, e)),
        Ok(Ok(tcp)) => tcp,
    };
    tcp.set_nodelay(true)
        .map_err(|e| Failure::new(Step::Connect, What::Network, e))?;
    Ok(tcp)
}

/// Implicit TLS on our socket: lettre's own handshake (its certificate
/// checks, our `ca_file`) on a stream built from the socket, which is then
/// handed to lettre as the connection's transport. lettre offers no
/// "connect over this socket with TLS" call; `AsyncNetworkStream` (deprecated
/// as "not meant to be public", still exported in 0.11) is the way to its
/// handshake. The connection then does not know it is encrypted
/// (`is_encrypted()` is false): only `can_starttls` reads that, and it is
/// never asked with `tls = "tls"`.
#[allow(deprecated)]
async fn connect_implicit_tls(
    tcp: TcpStream,
    params: TlsParameters,
    helo: &ClientId,
) -> Result<AsyncSmtpConnection, SmtpError> {
    let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
    stream.upgrade_tls(params).await?;
    AsyncSmtpConnection::connect_with_transport(Box::new(TlsOverTcp(stream.compat())), helo).await
}

/// An encrypted [`AsyncNetworkStream`] seen as a plain tokio stream, so that
/// lettre's connection can run over it.
#[allow(deprecated)]
#[derive(Debug)]
struct TlsOverTcp(Compat<AsyncNetworkStream>);

impl AsyncRead for TlsOverTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsOverTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsOverTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}

/// The probe: a session, then QUIT. Cheap, and it notices a fixed password too.
pub async fn probe(s: &Settings, helo: &ClientId) -> Result<(), Failure> {
    let mut conn = session(s, helo).await?;
    // The session was fine; a QUIT the server answers badly changes nothing.
    let _ = conn.quit().await;
    Ok(())
}

/// What one exchange did, address by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Addresses that accepted the email.
    pub accepted: Vec<String>,
    /// `(address, reason)`: refused for good.
    pub refused: Vec<(String, String)>,
    /// `(address, reason)`: refused for now; still owed the email.
    pub deferred: Vec<(String, String)>,
}

/// Sends `message` from `from` to each of `to` as one transaction on `conn`,
/// an open session. `Ok` whenever the transaction ran to its end (even if every
/// address refused); `Err` when it stopped before the email was accepted by
/// anyone. Afterwards `conn.has_broken()` says whether the session may carry
/// another transaction: every failure here aborts it (QUIT, then close).
pub async fn transaction(
    conn: &mut AsyncSmtpConnection,
    from: &Address,
    to: &[Address],
    message: &[u8],
) -> Result<Outcome, Failure> {
    let server = conn.server_info();
    let mut options = Vec::new();
    if !from.to_string().is_ascii() || to.iter().any(|a| !a.to_string().is_ascii()) {
        if !server.supports_feature(Extension::SmtpUtfEight) {
            conn.abort().await;
            return Err(Failure::new(
                Step::MailFrom,
                What::Unsupported,
                "an address is not ASCII and the server does not offer SMTPUTF8",
            ));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !server.supports_feature(Extension::EightBitMime) {
            conn.abort().await;
            return Err(Failure::new(
                Step::MailFrom,
                What::Unsupported,
                "the message is 8-bit and the server does not offer 8BITMIME",
            ));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    if let Err(e) = conn.command(Mail::new(Some(from.clone()), options)).await {
        conn.abort().await;
        return Err(Failure::of(Step::MailFrom, &e, false));
    }
    let mut outcome = Outcome::default();
    let mut taken = Vec::new();
    for address in to {
        match conn.command(Rcpt::new(address.clone(), vec![])).await {
            Ok(_) => taken.push(address.to_string()),
            Err(e) => {
                let failure = Failure::of(Step::RcptTo, &e, false);
                match failure.verdict {
                    Verdict::AddressRefused => {
                        outcome.refused.push((address.to_string(), failure.reason))
                    }
                    Verdict::AddressDeferred => {
                        outcome.deferred.push((address.to_string(), failure.reason))
                    }
                    _ => {
                        conn.abort().await;
                        return Err(failure);
                    }
                }
            }
        }
    }
    if taken.is_empty() {
        // Nobody to send DATA to: end the transaction so the session can carry
        // the next one. A session that cannot even reset is not kept.
        if conn.command(Rset).await.is_err() {
            conn.abort().await;
        }
        return Ok(outcome);
    }
    if let Err(e) = conn.command(Data).await {
        conn.abort().await;
        return Err(Failure::of(Step::Data, &e, false));
    }
    if let Err(e) = conn.message(message).await {
        conn.abort().await;
        return Err(Failure::of(Step::Message, &e, false));
    }
    // Accepted. The session stays open for the next email (the pool keeps or
    // closes it); after `250` to the final dot no RSET is needed.
    outcome.accepted = taken;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_the_step_they_answer() {
        use Verdict::*;
        let cases = [
            // Per address at RCPT: 5xx fails that address, 4xx defers it.
            (Step::RcptTo, What::Reply(550), AddressRefused),
            (Step::RcptTo, What::Reply(553), AddressRefused),
            (Step::RcptTo, What::Reply(450), AddressDeferred),
            (Step::RcptTo, What::Reply(452), AddressDeferred),
            (Step::RcptTo, What::Network, Transient),
            // DATA: 5xx fails the email, 4xx retries it.
            (Step::Data, What::Reply(554), EmailRefused),
            (Step::Message, What::Reply(552), EmailRefused),
            (Step::Message, What::Reply(451), Transient),
            (Step::Message, What::Network, Transient),
            (Step::MailFrom, What::Unsupported, EmailRefused),
            // Our session or settings: configuration faults, never a verdict on the email.
            (Step::Auth, What::Reply(535), Config),
            (Step::Auth, What::Reply(534), Config),
            (Step::Auth, What::Unsupported, Config),
            (Step::Connect, What::Reply(504), Config),
            (Step::Connect, What::Reply(554), Config),
            (Step::Connect, What::Tls, Config),
            (Step::Starttls, What::Tls, Config),
            (Step::Starttls, What::Unsupported, Config),
            (Step::Starttls, What::Reply(502), Config),
            (Step::MailFrom, What::Reply(553), Config),
            // A server that is down or busy.
            (Step::Connect, What::Network, Unavailable),
            (Step::Connect, What::Reply(421), Unavailable),
            (Step::Starttls, What::Reply(454), Unavailable),
            (Step::Auth, What::Reply(454), Unavailable),
            (Step::MailFrom, What::Reply(451), Transient),
        ];
        for (step, what, want) in cases {
            assert_eq!(classify(step, what), want, "{step:?} {what:?}");
        }
    }

    #[test]
    fn only_the_steps_of_a_session_are_seen_by_the_probe() {
        assert!(
            Step::Connect.probe_sees() && Step::Starttls.probe_sees() && Step::Auth.probe_sees()
        );
        for step in [Step::MailFrom, Step::RcptTo, Step::Data, Step::Message] {
            assert!(!step.probe_sees(), "{step:?}");
        }
    }

    #[test]
    fn helo_names_become_client_ids() {
        assert_eq!(
            client_id("mail1.example.org"),
            ClientId::Domain("mail1.example.org".into())
        );
        assert_eq!(client_id("[192.0.2.1]").to_string(), "[192.0.2.1]");
        assert_eq!(
            client_id("[IPv6:2001:db8::1]").to_string(),
            "[IPv6:2001:db8::1]"
        );
        assert_eq!(
            address_literal("127.0.0.1".parse().unwrap()).to_string(),
            "[127.0.0.1]"
        );
    }
}
