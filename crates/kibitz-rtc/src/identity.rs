//! The DTLS certificate a process presents on every connection, and its fingerprint.

use std::fmt;
use std::sync::{Arc, OnceLock};

use str0m::config::{CryptoProvider, DtlsCert};

static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();

/// str0m's crypto backend (aws-lc-rs), created once per process and passed to every `Rtc`
/// explicitly, so nothing depends on a process-wide default being installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// Why an [`Identity`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The crypto backend could not generate a certificate.
    #[error("could not generate a DTLS certificate")]
    Generate,
    /// The DER certificate is empty.
    #[error("empty DTLS certificate")]
    Empty,
}

/// One DTLS certificate and key, shared by every connection of every [`crate::Peer`] it is
/// given to (cheap to clone). Kibitz binds host commands and identity tokens to its
/// [`Identity::fingerprint`], so a participant's presence and media peers use the same one.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    cert: DtlsCert,
    fingerprint: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate from the crypto backend.
    pub fn generate() -> Result<Self, IdentityError> {
        let cert = provider()
            .dtls_provider
            .generate_certificate()
            .ok_or(IdentityError::Generate)?;
        Self::from_cert(cert)
    }

    /// An identity from a stored DER certificate and DER private key (as returned by
    /// [`Identity::certificate_der`] / [`Identity::private_key_der`]).
    pub fn from_der(certificate: Vec<u8>, private_key: Vec<u8>) -> Result<Self, IdentityError> {
        Self::from_cert(DtlsCert {
            certificate,
            private_key,
        })
    }

    fn from_cert(cert: DtlsCert) -> Result<Self, IdentityError> {
        if cert.certificate.is_empty() {
            return Err(IdentityError::Empty);
        }
        let digest = provider().sha256_provider.sha256(&cert.certificate);
        Ok(Identity {
            inner: Arc::new(Inner {
                fingerprint: colon_hex(&digest),
                cert,
            }),
        })
    }

    /// The SHA-256 fingerprint of the certificate in colon-hex (`AB:CD:…`, upper case), as it
    /// appears in `a=fingerprint:sha-256 …` of every SDP this identity signs.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.inner.cert.certificate
    }

    /// The private key, DER. Secret: store it like one.
    pub fn private_key_der(&self) -> &[u8] {
        &self.inner.cert.private_key
    }

    pub(crate) fn cert(&self) -> DtlsCert {
        self.inner.cert.clone()
    }
}

/// `AB:CD:…`.
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}
