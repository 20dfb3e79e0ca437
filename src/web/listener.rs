//! The console's socket: the accept loop and HTTP/1.1 (and HTTPS) under the
//! router. It knows nothing of pages; it serves whatever `Router` it is given.
//!
//! What it guarantees, whatever the router does:
//! - at most `max_connections` connections at once: the next accept waits for a
//!   free slot, so the rest queue in the kernel and hold no descriptor here;
//! - an exhausted descriptor table (EMFILE) pauses accepting instead of spinning
//!   (`accept::AcceptBackoff`, shared with the metrics endpoint);
//! - a client gets [`Limits::header_read_timeout`] to send a request's headers,
//!   counted from when the connection waits for one, so a slow-loris header and
//!   an idle keep-alive connection are both closed after it; headers are capped
//!   at [`Limits::max_header_bytes`] (larger ones are answered 431);
//! - with `tls`, HTTPS with rustls (the ring provider lettre's rustls already
//!   uses), the PEM files read once at start, a handshake time limit;
//! - handlers see the client's address as `axum::extract::ConnectInfo<SocketAddr>`;
//! - on shutdown it stops accepting at once and gives requests in flight
//!   [`Limits::shutdown_grace`] to finish; idle connections close straight away.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::accept::AcceptBackoff;
use crate::config::WebTls;

/// The limits one listener enforces. [`Limits::new`] gives the daemon's.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, from when the
    /// connection starts waiting for them: after accepting (or the handshake)
    /// and after each answer. So it is also the keep-alive idle time limit.
    pub header_read_timeout: Duration,
    /// How long a client has to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// The largest request head (start line and headers) accepted.
    pub max_header_bytes: usize,
    /// How long requests in flight may still take once shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The daemon's limits: a form post or a page request has headers of a
    /// few hundred bytes and arrives at once; 10 s is generous on a phone.
    pub fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read the TLS certificate chain: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)", path.display())]
    NoCert { path: PathBuf },
    #[error("{}: cannot read the TLS private key: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} with {}: refused by rustls: {source}", cert.display(), key.display())]
    Refused {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Binds the console's listener (before privileges or the rest of start-up,
/// so a port in use is an error at once).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Reads `tls`'s PEM certificate chain and private key into an acceptor.
pub fn tls_acceptor(tls: &WebTls) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |source| TlsError::Cert {
        path: tls.cert.clone(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: tls.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| TlsError::Key {
        path: tls.key.clone(),
        source,
    })?;
    let refused = |source| TlsError::Refused {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown`, with the daemon's [`Limits`].
/// Fails at once (before accepting anything) if `tls`'s files do not load.
pub async fn serve(
    listener: TcpListener,
    tls: Option<&WebTls>,
    max_connections: usize,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, tls, &Limits::new(max_connections), app, shutdown).await
}

/// [`serve`] with the given limits (tests shorten the timeouts).
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<&WebTls>,
    limits: &Limits,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let acceptor = tls
        .map(tls_acceptor)
        .transpose()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // Zero would stop the console for good; the config refuses it, this is a floor.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // Ends the connections still busy when the grace period is over.
    let hard_stop = CancellationToken::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        // A slot first, then accept: while every slot is taken, new connections
        // stay queued in the kernel instead of holding a descriptor here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                let (pause, report) = backoff.failed(std::time::Instant::now());
                if let Some(failures) = report {
                    tracing::warn!(error = %e, failures, pause_ms = pause.as_millis() as u64,
                        "Console: accept failed; slowing down");
                }
                drop(slot);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let connection = Connection {
            stream,
            peer,
            slot,
            http: http.clone(),
            app: app.clone(),
            acceptor: acceptor.clone(),
            tls_handshake_timeout: limits.tls_handshake_timeout,
            watcher: graceful.watcher(),
            shutdown: shutdown.clone(),
        };
        let hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = connection.serve() => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }
    // Closing the socket now refuses new connections while the others finish.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace_ms = limits.shutdown_grace.as_millis() as u64,
                "Console: requests still running at shutdown were cut off");
        }
    }
    hard_stop.cancel();
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Held while the connection lives: dropping it frees the place.
    slot: OwnedSemaphorePermit,
    http: hyper::server::conn::http1::Builder,
    app: Router,
    acceptor: Option<TlsAcceptor>,
    tls_handshake_timeout: Duration,
    /// Tells hyper to finish the request in flight and close, at shutdown.
    watcher: Watcher,
    /// Abandons a handshake still under way at shutdown.
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self) {
        let Connection {
            stream,
            peer,
            slot: _slot,
            http,
            app,
            acceptor,
            tls_handshake_timeout,
            watcher,
            shutdown,
        } = self;
        // Pages are small and answered whole: no reason to wait for more to send.
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            // A Router is always ready (poll_ready is a no-op), so call at once.
            app.clone().call(request)
        });
        let served = match acceptor {
            None => {
                watcher
                    .watch(http.serve_connection(TokioIo::new(stream), service))
                    .await
            }
            Some(acceptor) => {
                let handshake = tokio::select! {
                    done = tokio::time::timeout(tls_handshake_timeout, acceptor.accept(stream)) => done,
                    () = shutdown.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "Console: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "Console: TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        if let Err(e) = served {
            // A client's doing (timeouts, bad requests, resets): worth a debug line only.
            tracing::debug!(%peer, error = %e, "Console: connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests;
