//! Certificates that can change while serving. The TLS configuration resolves its certificate
//! on every handshake, so a reload (SIGHUP) or an ACME renewal changes only what new
//! handshakes get; established connections keep the certificate they were made with.

use crate::{TlsConfig, TlsError};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// One certificate (chain and key), swappable at any time.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(key))))
    }

    /// Replaces the certificate for handshakes from now on.
    pub fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS from a PEM certificate chain and key file that [`PemTls::reload`] re-reads.
#[derive(Debug, Clone)]
pub struct PemTls {
    cert: PathBuf,
    key: PathBuf,
    slot: Arc<CertSlot>,
    config: Arc<TlsConfig>,
}

impl PemTls {
    /// Reads both files and builds the configuration.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let slot = CertSlot::new(certified_key_from_pem(cert, key)?);
        let config = crate::tls_with_resolver(slot.clone())?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            slot,
            config,
        })
    }

    /// The configuration to serve with; it follows every successful reload.
    pub fn config(&self) -> Arc<TlsConfig> {
        self.config.clone()
    }

    /// Re-reads both files. On error the certificate in use stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.slot
            .set(certified_key_from_pem(&self.cert, &self.key)?);
        Ok(())
    }
}

/// A chain and its private key from PEM files, checked to belong together.
pub(crate) fn certified_key_from_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |p: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if certs.is_empty() {
        return Err(pem_err(cert, &"no certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    certified_key(certs, key_der)
}

/// A chain and its private key, checked to belong together.
pub(crate) fn certified_key(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(certs, key, &crate::provider())?)
}
