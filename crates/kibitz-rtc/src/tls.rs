//! The client side of TLS: one configuration for every connection a participant makes (the
//! broker's `https://…/id` and `wss://`, `/api/signal`, `/api/turn`).
//!
//! Trusted roots are the compiled-in web roots (`webpki-roots`), the platform's store
//! (`rustls-native-certs`: on Linux the OpenSSL locations, `SSL_CERT_FILE`/`SSL_CERT_DIR`
//! when set; the keychain on macOS; the system store on Windows) and any extra PEM files
//! ([`ClientTlsOptions::ca_certs`]: a company CA, a self-signed server's certificate).
//!
//! Insecure mode ([`ClientTlsOptions::insecure`]) accepts a certificate that does not verify,
//! but only from servers on loopback and private addresses ([`is_private`]): names are
//! resolved first and refused if any address is public, IP literals are checked as given,
//! and the connection goes to the checked addresses (no second lookup to race). Every
//! certificate accepted that way is logged at WARN.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::{debug, warn};

/// What to trust beyond the web roots and the platform's store.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsOptions {
    /// PEM files whose certificates are trusted as roots as well.
    pub ca_certs: Vec<PathBuf>,
    /// Accept certificates that do not verify, from loopback and private addresses only.
    pub insecure: bool,
}

/// Why a TLS client configuration could not be built or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// An extra CA file could not be read or holds no usable certificate.
    #[error("CA certificate file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Insecure mode and a server that is not on a loopback or private address.
    #[error(
        "insecure TLS is only allowed to loopback and private addresses, not {host}{}",
        if host == addr { String::new() } else { format!(" ({addr})") }
    )]
    NotPrivate {
        /// The host as given.
        host: String,
        /// The public address it is (or resolves to).
        addr: String,
    },
    /// The host name did not resolve.
    #[error("resolving {host}: {reason}")]
    Resolve {
        /// The host as given.
        host: String,
        /// Why.
        reason: String,
    },
    /// rustls or the HTTP client refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A client TLS configuration and whether it is insecure; cheap to clone, build once.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    insecure: bool,
}

/// A caller's own rustls configuration (e.g. trusting one test certificate only).
impl From<Arc<rustls::ClientConfig>> for ClientTls {
    fn from(config: Arc<rustls::ClientConfig>) -> Self {
        ClientTls {
            config,
            insecure: false,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Web roots, the platform's store and `opts.ca_certs`; insecure as `opts` says (which
    /// is logged at WARN). Reads the platform's store: build once and clone.
    pub fn new(opts: &ClientTlsOptions) -> Result<Self, ClientTlsError> {
        let roots = Arc::new(root_store(&opts.ca_certs)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| ClientTlsError::Config(e.to_string()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientTlsError::Config(e.to_string()))?;
        let config = if opts.insecure {
            warn!(
                "insecure TLS: certificates that do not verify are accepted from loopback and \
                 private addresses (local testing only)"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { inner: webpki }))
                .with_no_client_auth()
        } else {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        };
        Ok(ClientTls {
            config: Arc::new(config),
            insecure: opts.insecure,
        })
    }

    /// The default (web roots and the platform's store), built once per process.
    pub fn shared_default() -> Result<Self, ClientTlsError> {
        static DEFAULT: OnceLock<Result<ClientTls, ClientTlsError>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| ClientTls::new(&ClientTlsOptions::default()))
            .clone()
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Whether certificates that do not verify are accepted (from private addresses).
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// `host`'s addresses for `port`; in insecure mode, refused unless every one of them is
    /// loopback or private. Connect to these (not to the name again).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientTlsError> {
        let addrs = lookup(host, port).await?;
        if self.insecure {
            check_private(host, &addrs)?;
        }
        Ok(addrs)
    }

    /// An HTTP client on this configuration; `builder` carries the caller's timeouts.
    /// In insecure mode its resolver refuses names with a public address, and it ignores
    /// proxy settings (a proxy would stand between the check and the server).
    pub fn http_client(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<HttpClient, ClientTlsError> {
        let mut builder = builder.use_preconfigured_tls((*self.config).clone());
        if self.insecure {
            builder = builder.no_proxy().dns_resolver(Arc::new(PrivateOnly));
        }
        let client = builder
            .build()
            .map_err(|e| ClientTlsError::Config(error_chain(&e)))?;
        Ok(HttpClient {
            client,
            insecure: self.insecure,
        })
    }
}

/// An HTTP client built by [`ClientTls::http_client`]. Requests go through [`HttpClient::get`],
/// which applies the insecure-mode address rule to IP-literal URLs (names are checked by the
/// client's resolver when it connects).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    insecure: bool,
}

impl HttpClient {
    /// `GET url`, refused before any connection in insecure mode if `url`'s host is a public
    /// IP address.
    pub fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, ClientTlsError> {
        if self.insecure
            && let Ok(u) = reqwest::Url::parse(url)
        {
            let host = u.host_str().unwrap_or_default();
            if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
                let addr = SocketAddr::new(ip, 0);
                check_private(&ip.to_string(), &[addr])?;
            }
        }
        Ok(self.client.get(url))
    }
}

/// Loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7) or link-local
/// (169.254/16, fe80::/10), IPv4-mapped addresses as their IPv4 address: where insecure
/// mode is allowed.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// Whether `e` (or anything in its source chain) is a server certificate that did not verify.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let bad_cert = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some_and(bad_cert) {
            return true;
        }
        // An io::Error's source() skips the error it wraps (hyper-rustls wraps tokio-rustls's
        // io::Error in another): look inside.
        let mut io = err.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(std::io::Error::get_ref) {
            if inner.downcast_ref::<rustls::Error>().is_some_and(bad_cert) {
                return true;
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        cur = err.source();
    }
    false
}

/// `e` and its sources, `: `-separated (reqwest's own message omits why a request failed).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

fn root_store(ca_certs: &[PathBuf]) -> Result<rustls::RootCertStore, ClientTlsError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let web = roots.len();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        warn!(error = %e, "reading the platform's certificate store");
    }
    let (platform, ignored) = roots.add_parsable_certificates(native.certs);
    for path in ca_certs {
        let fail = |reason: String| ClientTlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    debug!(
        web,
        platform,
        ignored,
        extra_files = ca_certs.len(),
        "TLS roots"
    );
    Ok(roots)
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientTlsError> {
    let fail = |reason: String| ClientTlsError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(fail("no address".into()));
    }
    Ok(addrs)
}

fn check_private(host: &str, addrs: &[SocketAddr]) -> Result<(), ClientTlsError> {
    match addrs.iter().find(|a| !is_private(a.ip())) {
        Some(a) => Err(ClientTlsError::NotPrivate {
            host: host.to_owned(),
            addr: a.ip().to_string(),
        }),
        None => Ok(()),
    }
}

/// The insecure-mode resolver for HTTP: names with any public address are refused.
#[derive(Debug)]
struct PrivateOnly;

impl reqwest::dns::Resolve for PrivateOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup(&host, 0).await?;
            check_private(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Insecure mode's verifier: verifies as usual, and when that fails accepts anyway (loudly).
/// The address rule is enforced before connecting; IP-literal names are checked here again.
#[derive(Debug)]
struct Lenient {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let ServerName::IpAddress(ip) = server_name {
            let ip = IpAddr::from(*ip);
            if !is_private(ip) {
                return Err(rustls::Error::General(format!(
                    "insecure TLS is only allowed to loopback and private addresses, not {ip}"
                )));
            }
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(e) => {
                warn!(
                    server = %server_name.to_str(),
                    error = %e,
                    "accepting a TLS certificate that does not verify (insecure mode)"
                );
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ok in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.5",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            assert!(
                is_private(ok.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{ok}"
            );
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "192.0.2.1",
            "100.64.0.1",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(
                !is_private(no.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{no}"
            );
        }
    }

    #[tokio::test]
    async fn insecure_refuses_public_hosts_before_connecting() {
        let tls = ClientTls::new(&ClientTlsOptions {
            insecure: true,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.resolve("127.0.0.1", 443).await.is_ok());
        assert!(matches!(
            tls.resolve("192.0.2.1", 443).await,
            Err(ClientTlsError::NotPrivate { .. })
        ));
        let http = tls
            .http_client(reqwest::Client::builder())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(http.get("https://127.0.0.1:1/x").is_ok());
        assert!(matches!(
            http.get("https://[2001:db8::1]/api/signal"),
            Err(ClientTlsError::NotPrivate { .. })
        ));
        // Verified mode has no such rule.
        let tls = ClientTls::shared_default().unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.resolve("192.0.2.1", 443).await.is_ok());
    }

    #[test]
    fn bad_ca_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("kibitz-rtc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        for path in [empty, dir.join("missing.pem")] {
            let e = ClientTls::new(&ClientTlsOptions {
                ca_certs: vec![path.clone()],
                insecure: false,
            })
            .err();
            assert!(
                matches!(&e, Some(ClientTlsError::CaFile { path: p, .. }) if *p == path.display().to_string()),
                "{e:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
