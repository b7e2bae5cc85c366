//! TLS for both listeners (rustls): certificate, key and optional client CA (mTLS) from PEM
//! files, read again on SIGHUP or when a file changes, without dropping open connections.
//!
//! Each accepted connection is handshaken with the configuration current at that moment, so
//! a renewed certificate applies to the next connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files' modification times are checked.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The files a TLS listener is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: refuse clients without a certificate (else they may still use a
    /// token).
    pub client_cert_required: bool,
}

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// A rustls server configuration offering `alpn` (e.g. `h2` for gRPC).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError(format!("{}: {e}", self.key.display())))?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if self.client_cert_required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| TlsError(e.to_string()))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("{}: {e}", self.cert.display())))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// A listener's TLS configuration, swapped whole when the files change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl ReloadingTls {
    /// Loads `files` now (an error here stops start-up).
    pub fn new(files: TlsFiles, alpn: &[&'static [u8]]) -> Result<Arc<Self>, TlsError> {
        let config = files.server_config(alpn)?;
        Ok(Arc::new(Self {
            stamps: RwLock::new(files.stamps()),
            files,
            alpn: alpn.to_vec(),
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The configuration for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()));
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on error the old configuration stays (and the error is logged).
    pub fn reload(&self) {
        match self.files.server_config(&self.alpn) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(config);
                }
                if let Ok(mut stamps) = self.stamps.write() {
                    *stamps = self.files.stamps();
                }
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "tls reload failed; keeping the previous certificate")
            }
        }
    }

    fn changed(&self) -> bool {
        let now = self.files.stamps();
        self.stamps.read().map(|s| *s != now).unwrap_or(false)
    }

    /// Reloads when a file's modification time changes, until `stop` (SIGHUP is handled
    /// by the caller, which reloads everything at once).
    pub fn watch(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(WATCH_EVERY) => {
                        if this.changed() {
                            this.reload();
                        }
                    }
                }
            }
        });
    }
}
