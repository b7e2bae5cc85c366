//! Accepting connections on both ports: a bound on open connections, TLS handshakes off the
//! accept loop and under a timeout, who the peer is (its verified client certificate, for
//! mTLS), and the HTTP side's header-read timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::tls::ReloadingTls;

/// What is known about the peer of a connection; inserted into every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Its address.
    pub remote: Option<SocketAddr>,
    /// Over TLS.
    pub tls: bool,
    /// Its certificate chain, verified against the client CA (mTLS), leaf first.
    pub client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted (and, with TLS, handshaken) connection. Holds one of the listener's
/// connection permits until it closes.
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl Conn {
    /// Who the peer is.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// Connections refused because the listener was full, for `/metrics`.
pub static REFUSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Accepts connections on `listener` until `stop`, as a stream for tonic (or
/// [`serve_http`]). Handshakes run in their own tasks, so a slow client never holds up the
/// accept loop.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: let the moment pass.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                if REFUSED_CONNECTIONS
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection refused: too many open connections (--max-connections)"
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sender = sender.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut info = ConnInfo {
                    remote: Some(remote),
                    ..ConnInfo::default()
                };
                let io = match tls {
                    None => ConnIo::Plain(stream),
                    Some(tls) => {
                        let handshake = tls.acceptor().accept(stream);
                        match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                info.tls = true;
                                info.client_certs = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .map(|certs| Arc::new(certs.to_vec()));
                                ConnIo::Tls(Box::new(stream))
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "tls handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let _ = sender
                    .send(Ok(Conn {
                        io,
                        info,
                        _permit: permit,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// Serves `router` over HTTP/1.1 on the connections of `incoming` until `stop`: a request's
/// headers must arrive within `header_read_timeout`, and each request carries its
/// connection's [`ConnInfo`].
pub async fn serve_http(
    mut incoming: ReceiverStream<io::Result<Conn>>,
    router: axum::Router,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio_stream::StreamExt as _;
    use tower::ServiceExt as _;

    while let Some(Ok(conn)) = incoming.next().await {
        let info = conn.info().clone();
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info.clone());
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(conn), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "http connection ended");
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
