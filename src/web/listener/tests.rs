//! The listener over real loopback sockets, with a one-route router and a
//! client written out by hand, so each test sees exactly what goes on the wire.

use super::*;
use axum::routing::get;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Generous bound for what must happen: the machine may be busy.
const LIVENESS: Duration = Duration::from_secs(10);

/// The one route: answers with the client's address as the handler saw it.
fn app() -> Router {
    Router::new().route(
        "/",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("hello {peer}") }),
    )
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

async fn start(limits: Limits, tls: Option<WebTls>, app: Router) -> Running {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task =
        tokio::spawn(async move { serve_with(listener, tls.as_ref(), &limits, app, token).await });
    Running {
        addr,
        shutdown,
        task,
    }
}

fn quick(max_connections: usize) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::new(max_connections)
    }
}

/// Sends a keep-alive GET / and reads one whole response: (status, body).
async fn get_root<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> (u16, String) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_response(stream).await
}

async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
    (status, body)
}

/// Waits until the server closes `stream` (EOF or reset) and returns when.
async fn closed_by_server(stream: &mut TcpStream) -> Instant {
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(LIVENESS, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open past {LIVENESS:?}"),
        }
    }
}

#[tokio::test]
async fn plain_http_serves_the_router_and_tells_it_the_client_address() {
    let server = start(Limits::new(4), None, app()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (status, body) = get_root(&mut stream).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("hello {}", stream.local_addr().unwrap()));
    // Keep-alive: a second request on the same connection is answered too.
    assert_eq!(get_root(&mut stream).await.0, 200);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

fn self_signed(dir: &std::path::Path) -> (WebTls, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls = WebTls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, signing_key.serialize_pem()).unwrap();
    (tls, cert.der().clone())
}

#[tokio::test]
async fn https_with_a_certificate_the_client_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, der) = self_signed(dir.path());
    let server = start(Limits::new(4), Some(tls), app()).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let (status, body) = get_root(&mut stream).await;
    assert_eq!((status, body), (200, format!("hello {local}")));

    // Plain HTTP to the HTTPS port gets no page.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIVENESS, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("hello"));
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_pem_that_does_not_load_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = self_signed(dir.path());
    let garbage = dir.path().join("not-a-cert.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = dir.path().join("missing.key");
    for (tls, named, says) in [
        (
            WebTls {
                cert: garbage.clone(),
                key: good.key.clone(),
            },
            &garbage,
            "no certificate",
        ),
        (
            WebTls {
                cert: good.cert.clone(),
                key: missing.clone(),
            },
            &missing,
            "cannot read the TLS private key",
        ),
        (
            // A certificate where the key should be.
            WebTls {
                cert: good.cert.clone(),
                key: good.cert.clone(),
            },
            &good.cert,
            "private key",
        ),
    ] {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let err = serve(listener, Some(&tls), 4, app(), CancellationToken::new())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            message.contains(&named.display().to_string()) && message.contains(says),
            "{message}"
        );
    }
}

#[tokio::test]
async fn the_connection_after_max_connections_waits_for_a_free_place() {
    let limits = Limits {
        header_read_timeout: LIVENESS * 3,
        ..Limits::new(2)
    };
    let server = start(limits, None, app()).await;
    // Two connections answered once each, then left open: both places taken.
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_root(&mut first).await.0, 200);
    assert_eq!(get_root(&mut second).await.0, 200);

    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served while two were open"
    );

    drop(first);
    let (status, _) = tokio::time::timeout(LIVENESS, read_response(&mut third))
        .await
        .expect("the third connection was not served after one closed");
    assert_eq!(status, 200);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let limits = quick(4);
    let server = start(limits.clone(), None, app()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_root(&mut stream).await.0, 200);
    let answered = Instant::now();
    let closed = closed_by_server(&mut stream).await;
    assert!(
        closed - answered >= limits.header_read_timeout - Duration::from_millis(50),
        "closed too early: {:?}",
        closed - answered
    );
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_header_that_never_ends_is_dropped() {
    let limits = quick(4);
    let server = start(limits.clone(), None, app()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // A slow loris: a header line every 50 ms, never the blank line that ends them.
    let drip = tokio::spawn(async move {
        writer
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            .await?;
        for i in 0..1000u32 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer
                .write_all(format!("X-Drip-{i}: x\r\n").as_bytes())
                .await?;
        }
        io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIVENESS, reader.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server still listened to the header after {LIVENESS:?}"
    );
    assert!(started.elapsed() >= limits.header_read_timeout - Duration::from_millis(50));
    assert!(!String::from_utf8_lossy(&answer).contains("hello"));
    drip.abort();
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_oversized_header_is_refused_with_431() {
    let server = start(Limits::new(4), None, app()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let huge = "a".repeat(Limits::new(4).max_header_bytes + 1);
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.0, 431);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_the_request_in_flight_finish() {
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let app = {
        let (release, started) = (release.clone(), started.clone());
        Router::new().route(
            "/",
            get(move || async move {
                started.notify_one();
                release.notified().await;
                "finished"
            }),
        )
    };
    let server = start(Limits::new(4), None, app).await;
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    started.notified().await;
    // An idle connection too: it is closed at once, not kept for the grace period.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), idle.read(&mut [0u8; 1]))
            .await
            .is_err()
    );

    server.shutdown.cancel();
    closed_by_server(&mut idle).await;
    tokio::time::timeout(LIVENESS, async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("still accepting after shutdown");

    release.notify_one();
    let (status, body) = read_response(&mut busy).await;
    assert_eq!((status, body.as_str()), (200, "finished"));
    tokio::time::timeout(LIVENESS, server.task)
        .await
        .expect("serve did not return after its connections ended")
        .unwrap()
        .unwrap();
}
