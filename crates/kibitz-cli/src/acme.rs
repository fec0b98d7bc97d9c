//! `--acme-*`: automatic certificates from an ACME CA (Let's Encrypt by default) through
//! TLS-ALPN-01 on the serving port itself ([`kibitz_http::acme`]).

use anyhow::bail;
use kibitz_http::acme::{AcmeConfig, LETS_ENCRYPT, LETS_ENCRYPT_STAGING};
use std::path::PathBuf;

/// ACME flags (part of every listener's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct AcmeArgs {
    /// Obtain and renew a certificate for this DNS name automatically (repeat for more names;
    /// comma-separated in env). Validation is TLS-ALPN-01 only: port 443 of every name must
    /// reach this listener. Needs --acme-cache.
    #[arg(
        long = "acme-domain",
        value_name = "NAME",
        env = "KIBITZ_ACME_DOMAINS",
        value_delimiter = ',',
        conflicts_with_all = ["tls_cert", "tls_self_signed"]
    )]
    pub acme_domains: Vec<String>,
    /// Contact address for the CA (expiry and incident mail); optional.
    #[arg(
        long,
        value_name = "ADDRESS",
        env = "KIBITZ_ACME_EMAIL",
        requires = "acme_domains"
    )]
    pub acme_email: Option<String>,
    /// Directory keeping the ACME account key, the certificate and its private key across
    /// restarts (created owner-only). Without it every start would order a new certificate.
    #[arg(
        long,
        value_name = "DIR",
        env = "KIBITZ_ACME_CACHE",
        requires = "acme_domains"
    )]
    pub acme_cache: Option<PathBuf>,
    /// ACME directory URL of the CA.
    #[arg(long, value_name = "URL", env = "KIBITZ_ACME_DIRECTORY", default_value = LETS_ENCRYPT)]
    pub acme_directory: String,
    /// Use Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
    #[arg(long, env = "KIBITZ_ACME_STAGING", conflicts_with = "acme_directory")]
    pub acme_staging: bool,
    /// PEM file of CA certificates to trust, besides the web roots, for the ACME server's own
    /// HTTPS (a test or company CA). Says nothing about the certificates it issues.
    #[arg(
        long,
        value_name = "PEM",
        env = "KIBITZ_ACME_CA_ROOT",
        requires = "acme_domains"
    )]
    pub acme_ca_root: Option<PathBuf>,
}

impl AcmeArgs {
    /// The validated ACME configuration (roots read); `None` when no domain is given.
    pub fn to_config(&self) -> anyhow::Result<Option<AcmeConfig>> {
        if self.acme_domains.is_empty() {
            return Ok(None);
        }
        let Some(cache_dir) = self.acme_cache.clone() else {
            bail!(
                "--acme-domain needs --acme-cache DIR: without a cache every start orders a new \
                 certificate, and CAs limit how often (Let's Encrypt: 5 a week for the same names)"
            );
        };
        let directory = if self.acme_staging {
            LETS_ENCRYPT_STAGING.to_owned()
        } else {
            self.acme_directory.clone()
        };
        let extra_roots = match &self.acme_ca_root {
            Some(p) => kibitz_http::acme::read_roots(p)?,
            None => Vec::new(),
        };
        let email = self
            .acme_email
            .as_deref()
            .map(|e| e.trim().trim_start_matches("mailto:").to_owned())
            .filter(|e| !e.is_empty());
        let cfg = AcmeConfig {
            domains: self
                .acme_domains
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .collect(),
            email,
            cache_dir,
            directory,
            extra_roots,
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<AcmeArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct P {
            #[arg(long)]
            tls_cert: Option<PathBuf>,
            #[arg(long)]
            tls_self_signed: bool,
            #[command(flatten)]
            a: AcmeArgs,
        }
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(v).map(|p| p.a)
    }

    #[test]
    fn off_without_domains() {
        assert!(args(&[]).unwrap().to_config().unwrap().is_none());
    }

    #[test]
    fn needs_a_cache_and_defaults_to_production() {
        let a = args(&["--acme-domain", "Kibitz.Example.org"]).unwrap();
        let e = a.to_config().unwrap_err().to_string();
        assert!(e.contains("--acme-cache"), "{e}");
        let a = args(&[
            "--acme-domain",
            "Kibitz.Example.org",
            "--acme-cache",
            "/nonexistent/kibitz-acme",
            "--acme-email",
            "mailto:ops@example.org",
        ])
        .unwrap();
        let c = a.to_config().unwrap().unwrap();
        assert_eq!(c.domains, ["kibitz.example.org"]);
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(c.email.as_deref(), Some("ops@example.org"));
    }

    #[test]
    fn staging_conflicts_and_requirements() {
        let c = args(&[
            "--acme-domain",
            "a.example",
            "--acme-cache",
            "/tmp/x",
            "--acme-staging",
        ])
        .unwrap()
        .to_config()
        .unwrap()
        .unwrap();
        assert_eq!(c.directory, LETS_ENCRYPT_STAGING);
        assert!(
            args(&[
                "--acme-domain",
                "a.example",
                "--acme-staging",
                "--acme-directory",
                "https://x.example/dir"
            ])
            .is_err()
        );
        assert!(args(&["--acme-domain", "a.example", "--tls-self-signed"]).is_err());
        assert!(args(&["--acme-email", "a@b.example"]).is_err());
        let bad_root = args(&[
            "--acme-domain",
            "a.example",
            "--acme-cache",
            "/tmp/x",
            "--acme-ca-root",
            "/nonexistent/root.pem",
        ])
        .unwrap();
        assert!(bad_root.to_config().is_err());
    }
}
