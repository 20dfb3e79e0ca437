//! Tests of the test harness itself (tests/support): the aiosmtpd server, the certificates and
//! the parsing helpers, driven by lettre as an independent client. None of this needs earlywarn,
//! so when a daemon test fails and these pass, the daemon is at fault, not the harness.
//!
//! Run with `cargo test --test smtp_harness`.

mod support;

use std::time::{Duration, Instant};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use support::{SmtpMode, SmtpOptions, SmtpServer, SmtpTls};

const WAIT: Duration = Duration::from_secs(10);

fn message(to: &[&str], subject: &str) -> Message {
    let mut b = Message::builder()
        .from("Early Warning <earlywarn@example.org>".parse().unwrap())
        .subject(subject);
    for addr in to {
        b = b.to(addr.parse::<Mailbox>().unwrap());
    }
    b.body(format!("Body of {subject}\n")).unwrap()
}

/// TLS parameters trusting only the test CA, as the daemon should when told about it.
fn tls_params(domain: &str) -> TlsParameters {
    let pem = std::fs::read(support::ca_pem_path()).unwrap();
    TlsParameters::builder(domain.to_string())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build_rustls()
        .unwrap()
}

/// A client for `server`, connecting by `domain` (which must match the certificate under TLS).
fn client(
    server: &SmtpServer,
    domain: &str,
    tls: Tls,
    creds: Option<(&str, &str)>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(domain)
        .port(server.port())
        .tls(tls)
        .timeout(Some(Duration::from_secs(5)));
    if let Some((u, p)) = creds {
        b = b.credentials(Credentials::new(u.into(), p.into()));
    }
    b.build()
}

#[tokio::test]
async fn plain_delivery_records_envelope_and_headers() {
    let server = SmtpServer::start(SmtpOptions::new());
    let mailer = client(&server, "127.0.0.1", Tls::None, None);
    mailer
        .send(message(&["a@example.org", "Bee <b@example.org>"], "plain"))
        .await
        .unwrap();

    let msgs = server.wait_for(1, WAIT);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.seq, 1);
    assert_eq!(m.mail_from, "earlywarn@example.org");
    assert_eq!(m.rcpt_tos, ["a@example.org", "b@example.org"]);
    assert_eq!(m.to(), ["a@example.org", "b@example.org"]);
    assert_eq!(m.subject().as_deref(), Some("plain"));
    assert_eq!(m.from().as_deref(), Some("earlywarn@example.org"));
    assert_eq!(
        m.header("to").as_deref(),
        Some("a@example.org, Bee <b@example.org>")
    );
    assert!(m.text_body().unwrap().contains("Body of plain"));
    assert!(!m.tls);
    assert_eq!(m.auth_user, None);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - m.received_at).abs() < 30.0,
        "received_at {}",
        m.received_at
    );
    assert_eq!(server.connection_times().len(), 1);
    assert_eq!(server.attempt_times().len(), 1);
}

#[tokio::test]
async fn starttls_with_auth() {
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth("earlywarn", "s3cret"),
    );
    let mailer = client(
        &server,
        "localhost",
        Tls::Required(tls_params("localhost")),
        Some(("earlywarn", "s3cret")),
    );
    mailer
        .send(message(&["panel@example.org"], "starttls"))
        .await
        .unwrap();

    let m = &server.wait_for(1, WAIT)[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("earlywarn"));
    assert_eq!(m.rcpt_tos, ["panel@example.org"]);
}

#[tokio::test]
async fn starttls_server_trusted_by_ip_address() {
    // The leaf carries IP:127.0.0.1 as well, for a daemon configured with host = "127.0.0.1".
    let server = SmtpServer::start(SmtpOptions::new().tls(SmtpTls::Starttls));
    let mailer = client(
        &server,
        "127.0.0.1",
        Tls::Required(tls_params("127.0.0.1")),
        None,
    );
    mailer
        .send(message(&["x@example.org"], "ip"))
        .await
        .unwrap();
    assert!(server.wait_for(1, WAIT)[0].tls);
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    // Without the test CA the client must refuse: proves the TLS tests really verify.
    let server = SmtpServer::start(SmtpOptions::new().tls(SmtpTls::Starttls));
    let params = TlsParameters::builder("localhost".into())
        .certificate_store(CertificateStore::None)
        .build_rustls()
        .unwrap();
    let mailer = client(&server, "localhost", Tls::Required(params), None);
    let err = mailer
        .send(message(&["x@example.org"], "untrusted"))
        .await
        .unwrap_err();
    // rustls reports this as a Connection error wrapping an io::Error, so `err.is_tls()` is
    // false: a client that wants to call it permanent must look at the source chain.
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn wrong_password_is_permanent() {
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth("earlywarn", "s3cret"),
    );
    let mailer = client(
        &server,
        "localhost",
        Tls::Required(tls_params("localhost")),
        Some(("earlywarn", "wrong")),
    );
    let err = mailer
        .send(message(&["x@example.org"], "bad auth"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("535"));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn auth_is_required_before_mail() {
    let server = SmtpServer::start(SmtpOptions::new().auth("earlywarn", "s3cret"));
    let mailer = client(&server, "127.0.0.1", Tls::None, None);
    let err = mailer
        .send(message(&["x@example.org"], "no auth"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("530"));
}

#[test]
fn starttls_server_withholds_auth_until_tls() {
    // Raw SMTP, since a library client would not try AUTH in the clear.
    use std::io::{BufRead, BufReader, Write};
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth("earlywarn", "s3cret"),
    );
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut reply = || {
        // Read one (possibly multi-line) reply.
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(reply().starts_with("220"));
    w.write_all(b"EHLO test\r\n").unwrap();
    let ehlo = reply();
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    w.write_all(b"AUTH PLAIN AGVhcmx5d2FybgBzM2NyZXQ=\r\n")
        .unwrap();
    assert!(reply().starts_with("538"));
    w.write_all(b"MAIL FROM:<a@example.org>\r\n").unwrap();
    assert!(reply().starts_with("530"));
    w.write_all(b"QUIT\r\n").unwrap();
}

#[tokio::test]
async fn implicit_tls_with_auth() {
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Implicit)
            .auth("earlywarn", "s3cret"),
    );
    let mailer = client(
        &server,
        "localhost",
        Tls::Wrapper(tls_params("localhost")),
        Some(("earlywarn", "s3cret")),
    );
    mailer
        .send(message(&["a@example.org", "b@example.org"], "implicit"))
        .await
        .unwrap();
    let m = &server.wait_for(1, WAIT)[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("earlywarn"));
    assert_eq!(m.rcpt_tos, ["a@example.org", "b@example.org"]);
}

#[tokio::test]
async fn reject550_is_permanent() {
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Reject550));
    let mailer = client(&server, "127.0.0.1", Tls::None, None);
    let err = mailer
        .send(message(&["x@example.org"], "rejected"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(server.messages().is_empty());
    assert_eq!(server.attempt_times().len(), 1);
}

#[tokio::test]
async fn temp451_is_transient() {
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Temp451));
    let mailer = client(&server, "127.0.0.1", Tls::None, None);
    let err = mailer
        .send(message(&["x@example.org"], "later"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn tarpit_times_out_quickly_with_an_outer_timeout() {
    // lettre's async `timeout()` bounds only the TCP connect, which a tarpit completes; the
    // greeting is then awaited forever. An async client (the daemon) must bound the whole
    // exchange itself, as here.
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Tarpit));
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.port())
        .tls(Tls::None)
        .timeout(Some(Duration::from_secs(1)))
        .build();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        mailer.send(message(&["x@example.org"], "tarpit")),
    )
    .await;
    assert!(result.is_err(), "a tarpit answered: {result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(support::wait_until(WAIT, || server
        .connection_times()
        .len()
        == 1));
    assert!(server.attempt_times().is_empty());
}

#[test]
fn tarpit_fails_a_blocking_client_with_a_1s_timeout() {
    // The blocking transport sets socket read timeouts, so its own 1 s timeout suffices. On
    // Linux an expired SO_RCVTIMEO is EAGAIN (io::ErrorKind::WouldBlock), not TimedOut, so
    // lettre's `err.is_timeout()` is false here: check the time taken instead.
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Tarpit));
    let mailer = lettre::SmtpTransport::builder_dangerous("127.0.0.1")
        .port(server.port())
        .tls(Tls::None)
        .timeout(Some(Duration::from_secs(1)))
        .build();
    let started = Instant::now();
    let err = lettre::Transport::send(&mailer, &message(&["x@example.org"], "tarpit")).unwrap_err();
    assert!(!err.is_permanent() && !err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stall_after_data_stores_nothing() {
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::StallAfterData));
    let mailer = client(&server, "127.0.0.1", Tls::None, None);
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        mailer.send(message(&["x@example.org"], "stalled")),
    )
    .await;
    assert!(result.is_err(), "a stalled server answered: {result:?}");
    // MAIL FROM got through: the stall really was after DATA.
    assert_eq!(server.attempt_times().len(), 1);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn restart_on_same_port_keeps_numbering() {
    let mut server = SmtpServer::start(SmtpOptions::new());
    let port = server.port();
    client(&server, "127.0.0.1", Tls::None, None)
        .send(message(&["x@example.org"], "first"))
        .await
        .unwrap();

    server.stop();
    assert!(!server.is_running());
    let down = client(&server, "127.0.0.1", Tls::None, None)
        .send(message(&["x@example.org"], "while down"))
        .await;
    assert!(down.is_err());

    server.restart_with(SmtpMode::Temp451);
    assert_eq!(server.port(), port);
    let err = client(&server, "127.0.0.1", Tls::None, None)
        .send(message(&["x@example.org"], "temp"))
        .await
        .unwrap_err();
    assert!(err.is_transient());

    server.restart_with(SmtpMode::Accept);
    assert_eq!(server.port(), port);
    client(&server, "127.0.0.1", Tls::None, None)
        .send(message(&["x@example.org"], "second"))
        .await
        .unwrap();

    let msgs = server.wait_for(2, WAIT);
    let subjects: Vec<_> = msgs.iter().map(|m| (m.seq, m.subject().unwrap())).collect();
    assert_eq!(
        subjects,
        [(1, "first".to_string()), (2, "second".to_string())]
    );
    assert_eq!(server.connection_times().len(), 3);
}

#[tokio::test]
async fn parsing_helpers_decode_multipart_and_encoded_headers() {
    let server = SmtpServer::start(SmtpOptions::new());
    let subject = "OFFICIAL-SENSITIVE: Nitazène detected in Bolton \u{2013} critical";
    let msg = Message::builder()
        .from("earlywarn@example.org".parse().unwrap())
        .to("Zoë Partner <p1@example.org>".parse().unwrap())
        .to("p2@example.org".parse().unwrap())
        .subject(subject)
        // lettre adds no Message-ID unless asked: the daemon must set its stable one itself.
        .message_id(Some("<A-000123.p1@earlywarn.example.org>".into()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Earlywarn-Alert"),
            "A-000123".into(),
        ))
        .multipart(MultiPart::alternative_plain_html(
            "Plain text: <not html> & ünïcode".to_string(),
            "<p>Rich &amp; <b>bold</b> ünïcode</p>".to_string(),
        ))
        .unwrap();
    client(&server, "127.0.0.1", Tls::None, None)
        .send(msg)
        .await
        .unwrap();

    let m = &server.wait_for(1, WAIT)[0];
    // The wire form is encoded, the helpers decode.
    assert!(!m.header_raw("Subject").unwrap().contains('è'));
    assert_eq!(m.subject().as_deref(), Some(subject));
    assert_eq!(m.header("subject").as_deref(), Some(subject));
    assert_eq!(m.header("x-earlywarn-alert").as_deref(), Some("A-000123"));
    assert_eq!(m.header("X-Missing"), None);
    assert_eq!(m.to(), ["p1@example.org", "p2@example.org"]);
    assert_eq!(
        m.header("To").as_deref(),
        Some("Zoë Partner <p1@example.org>, p2@example.org")
    );
    assert_eq!(
        m.text_body().as_deref().map(str::trim_end),
        Some("Plain text: <not html> & ünïcode")
    );
    assert_eq!(
        m.html_body().as_deref().map(str::trim_end),
        Some("<p>Rich &amp; <b>bold</b> ünïcode</p>")
    );
    assert_eq!(
        m.message_id().as_deref(),
        Some("A-000123.p1@earlywarn.example.org")
    );
    assert!(m.header_names().iter().any(|h| h == "X-Earlywarn-Alert"));
}

#[test]
fn write_atomically_and_wait_until() {
    let dir = tempfile::tempdir().unwrap();
    let path = support::write_atomically(dir.path(), "a.csv", "x,y\n1,2\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "x,y\n1,2\n");
    assert!(!dir.path().join(".a.csv.tmp").exists());

    let start = Instant::now();
    assert!(support::wait_until(Duration::from_secs(2), || start
        .elapsed()
        > Duration::from_millis(100)));
    assert!(!support::wait_until(Duration::from_millis(50), || false));
}
