//! Automatic certificates: ACME (RFC 8555) with the TLS-ALPN-01 challenge (RFC 8737) answered
//! on the serving port itself, so one process on port 443 needs nothing else. The protocol is
//! `rustls-acme`'s; this module configures it, runs it in the background and reports what it
//! does. The certificate is ordered at start unless the cache holds a valid one, renewed once
//! two thirds of its lifetime have passed, and swapped in for new handshakes without touching
//! established connections. Failed orders are retried with exponential back-off (up to ~18 h).

use crate::{TlsConfig, TlsError};
use futures_util::StreamExt as _;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous rate limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What to obtain and from where.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// DNS names on the certificate (the first is its subject); each must resolve to this
    /// host, whose port 443 must reach this listener.
    pub domains: Vec<String>,
    /// Contact address given to the CA (expiry and incident mail), if any.
    pub email: Option<String>,
    /// Where the account key, the certificate and its private key are kept across restarts.
    pub cache_dir: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// Roots trusted for the ACME server's own HTTPS besides the web roots (a test or
    /// company CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// An ACME setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// No domain, or one that TLS-ALPN-01 cannot validate.
    #[error("ACME domain {0:?}: {1}")]
    Domain(String, &'static str),
    /// The directory URL is not an https URL.
    #[error("ACME directory {0:?}: must be an https:// URL")]
    Directory(String),
    /// The contact address is not one.
    #[error("ACME contact e-mail {0:?} is not an address")]
    Email(String),
    /// The cache directory is unusable.
    #[error("ACME cache {path}: {reason}")]
    Cache {
        /// The directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The extra roots file could not be read.
    #[error("ACME CA roots {path}: {reason}")]
    Roots {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads PEM certificates to trust for the ACME server (`--acme-ca-root`).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    use rustls::pki_types::pem::PemObject;
    let err = |reason: String| AcmeError::Roots {
        path: path.display().to_string(),
        reason,
    };
    let roots = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if roots.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(roots)
}

/// A name TLS-ALPN-01 can validate: a DNS name (not an address, not a wildcard).
fn check_domain(d: &str) -> Result<(), AcmeError> {
    let bad = |why| Err(AcmeError::Domain(d.to_owned(), why));
    if d.starts_with("*.") {
        return bad("wildcards need the DNS-01 challenge; TLS-ALPN-01 cannot validate them");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return bad("an IP address; ACME certificates here are for DNS names");
    }
    let name = d.strip_suffix('.').unwrap_or(d);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return bad("not a DNS name (letters, digits, '-' and dots; IDNs in their xn-- form)");
    }
    Ok(())
}

impl AcmeConfig {
    /// Checks the settings without touching the network or the disk beyond looking.
    pub fn validate(&self) -> Result<(), AcmeError> {
        if self.domains.is_empty() {
            return Err(AcmeError::Domain(String::new(), "at least one is needed"));
        }
        for d in &self.domains {
            check_domain(d)?;
        }
        if !self
            .directory
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            || self.directory.len() <= 8
        {
            return Err(AcmeError::Directory(self.directory.clone()));
        }
        if let Some(e) = &self.email {
            let (user, host) = e.split_once('@').unwrap_or_default();
            if user.is_empty() || host.is_empty() || e.chars().any(|c| c.is_whitespace()) {
                return Err(AcmeError::Email(e.clone()));
            }
        }
        match std::fs::metadata(&self.cache_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(AcmeError::Cache {
                    path: self.cache_dir.display().to_string(),
                    reason: "not a directory".into(),
                });
            }
            // Created at start; only its parent has to exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AcmeError::Cache {
                    path: self.cache_dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, AcmeError> {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for r in &self.extra_roots {
            roots.add(r.clone()).map_err(|e| AcmeError::Roots {
                path: "--acme-ca-root".into(),
                reason: e.to_string(),
            })?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// The running certificate manager: serve with [`Acme::tls_config`]. Stops when dropped.
#[derive(Debug)]
pub struct Acme {
    config: Arc<TlsConfig>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Acme {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Acme {
    /// Validates `cfg`, creates the cache directory (owner-only: it holds private keys) and
    /// starts obtaining or loading the certificate in the background. Handshakes fail until a
    /// certificate is in place; TLS-ALPN-01 validation handshakes are answered from the start.
    /// Call inside a Tokio runtime.
    pub fn start(cfg: AcmeConfig) -> Result<Self, AcmeError> {
        cfg.validate()?;
        create_private_dir(&cfg.cache_dir).map_err(|e| AcmeError::Cache {
            path: cfg.cache_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut acme =
            rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, cfg.client_config()?)
                .directory(&cfg.directory)
                .contact(cfg.email.iter().map(|e| format!("mailto:{e}")))
                .cache(rustls_acme::caches::DirCache::new(cfg.cache_dir.clone()))
                .state();
        let mut config = crate::tls_with_resolver(acme.resolver())?;
        // Normal clients offer http/1.1 and get it; validators offer only acme-tls/1, get the
        // challenge certificate from the resolver, and the connection ends after the handshake.
        Arc::make_mut(&mut config)
            .alpn_protocols
            .push(ACME_TLS_ALPN.to_vec());
        let domains = cfg.domains.join(",");
        tracing::info!(%domains, directory = %cfg.directory, "ACME: certificate manager started (TLS-ALPN-01)");
        let ordered = metrics::counter!("kibitz_acme_certificates_total", "source" => "ordered");
        let cached = metrics::counter!("kibitz_acme_certificates_total", "source" => "cache");
        let errors = metrics::counter!("kibitz_acme_errors_total");
        let task = tokio::spawn(async move {
            while let Some(event) = acme.next().await {
                match event {
                    Ok(rustls_acme::EventOk::DeployedNewCert) => {
                        ordered.increment(1);
                        tracing::info!(%domains, "ACME: new certificate deployed");
                    }
                    Ok(rustls_acme::EventOk::DeployedCachedCert) => {
                        cached.increment(1);
                        tracing::info!(%domains, "ACME: certificate loaded from the cache");
                    }
                    Ok(other) => tracing::debug!(event = ?other, "ACME"),
                    Err(error) => {
                        errors.increment(1);
                        tracing::warn!(%domains, %error, "ACME: failed; retrying with back-off");
                    }
                }
            }
        });
        Ok(Self { config, task })
    }

    /// The TLS configuration: the current certificate, and TLS-ALPN-01 answers.
    pub fn tls_config(&self) -> Arc<TlsConfig> {
        self.config.clone()
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(domains: &[&str]) -> AcmeConfig {
        AcmeConfig {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            email: None,
            cache_dir: std::env::temp_dir().join("kibitz-acme-unit-does-not-exist"),
            directory: LETS_ENCRYPT_STAGING.into(),
            extra_roots: Vec::new(),
        }
    }

    #[test]
    fn domains_must_be_dns_names() {
        assert!(cfg(&["example.org", "www.example.org."]).validate().is_ok());
        assert!(cfg(&["xn--bcher-kva.example"]).validate().is_ok());
        for bad in [
            "",
            "*.example.org",
            "203.0.113.7",
            "::1",
            "exa mple.org",
            "-a.example",
            "a..b",
        ] {
            assert!(cfg(&[bad]).validate().is_err(), "{bad:?} accepted");
        }
        assert!(cfg(&[]).validate().is_err());
    }

    #[test]
    fn directory_email_and_cache_are_checked() {
        let mut c = cfg(&["example.org"]);
        c.directory = "http://acme.example/dir".into();
        assert!(matches!(c.validate(), Err(AcmeError::Directory(_))));
        c.directory = "https://".into();
        assert!(matches!(c.validate(), Err(AcmeError::Directory(_))));
        let mut c = cfg(&["example.org"]);
        c.email = Some("ops".into());
        assert!(matches!(c.validate(), Err(AcmeError::Email(_))));
        c.email = Some("ops@example.org".into());
        assert!(c.validate().is_ok());
        // A file where the directory should be.
        let file = std::env::temp_dir().join(format!("kibitz-acme-unit-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap_or_default();
        c.cache_dir = file.clone();
        assert!(matches!(c.validate(), Err(AcmeError::Cache { .. })));
        let _ = std::fs::remove_file(file);
    }
}
