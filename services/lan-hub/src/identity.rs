//! The hub's permanent identity (LAN.md §6): ICE ufrag/pwd and a self-signed ECDSA P-256
//! certificate, kept in a JSON state file (mode 0600), or upstream's well-known fixed pair.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use kibitz_proto::lan::fixed;
use p256::SecretKey;
use p256::pkcs8::EncodePrivateKey as _;
use p256::pkcs8::LineEnding;
use p256::pkcs8::der::pem;
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use str0m::config::DtlsCert;

use crate::HubError;

const FIXED_CERT_PEM: &str = include_str!("../fixed/cert.pem");
const FIXED_KEY_PEM: &str = include_str!("../fixed/key.pem");

/// The hub's ICE credentials and DTLS certificate.
#[derive(Clone)]
pub struct HubIdentity {
    ufrag: String,
    pwd: String,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    /// SEC1 DER: str0m's DTLS (dimpl) loads PKCS#8 or SEC1 EC keys.
    key_der: Vec<u8>,
    fingerprint: [u8; 32],
}

impl fmt::Debug for HubIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubIdentity")
            .field("ufrag", &self.ufrag)
            .field(
                "fingerprint",
                &kibitz_proto::lan::fingerprint_b64(&self.fingerprint),
            )
            .finish_non_exhaustive()
    }
}

/// The state file's shape (upstream's field names, so either hub reads the other's file).
#[derive(Serialize, Deserialize)]
struct StateFile {
    ufrag: String,
    pwd: String,
    #[serde(rename = "certPem")]
    cert_pem: String,
    #[serde(rename = "keyPem")]
    key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl HubIdentity {
    /// A fresh identity: random ufrag (8) and pwd (24) alphanumerics and a self-signed P-256
    /// certificate (CN `kibitz-relay`, serial = unix nanos, valid -1 h to +20 y).
    pub fn generate() -> Result<HubIdentity, HubError> {
        let key = SecretKey::random(&mut OsRng);
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|_| HubError::Identity("could not encode the key"))?;
        let key_pair = rcgen::KeyPair::try_from(pkcs8.as_bytes())
            .map_err(|_| HubError::Identity("could not load the generated key"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|_| HubError::Identity("certificate parameters"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kibitz-relay");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365 * 20 + 5);
        let nanos = now.unix_timestamp_nanos().max(1) as u128;
        let serial: Vec<u8> = nanos
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params
            .self_signed(&key_pair)
            .map_err(|_| HubError::Identity("could not sign the certificate"))?;
        let key_pem = key
            .to_sec1_pem(LineEnding::LF)
            .map_err(|_| HubError::Identity("could not encode the key"))?;
        Self::from_parts(
            random_alnum(8),
            random_alnum(24),
            cert.pem(),
            key_pem.to_string(),
        )
    }

    /// Upstream's well-known identity (fixed ufrag, pwd and certificate), which discovery
    /// finds on UDP 4711.
    pub fn fixed() -> Result<HubIdentity, HubError> {
        Self::from_parts(
            fixed::UFRAG.to_owned(),
            fixed::PWD.to_owned(),
            FIXED_CERT_PEM.to_owned(),
            FIXED_KEY_PEM.to_owned(),
        )
    }

    /// Reads the state file; a missing or unusable one (bad JSON, empty ufrag, a pair that
    /// does not load) is replaced by a fresh identity, written at once. Returns the saved port.
    pub fn load_or_create(path: &Path) -> Result<(HubIdentity, Option<u16>), HubError> {
        if let Some(loaded) = Self::read(path) {
            return Ok(loaded);
        }
        if path.exists() {
            tracing::warn!(path = %path.display(), "hub state file unusable; making a new identity");
        }
        let id = Self::generate()?;
        id.save(path, None)?;
        Ok((id, None))
    }

    /// The state file's own identity and saved port, if the file is usable. Upstream's fixed
    /// identity (which a fixed-mode run writes to a fresh file) is public, so it never counts
    /// as an own identity.
    pub fn read(path: &Path) -> Option<(HubIdentity, Option<u16>)> {
        let (id, port) = Self::load(path)?;
        (!id.is_fixed()).then_some((id, port))
    }

    fn load(path: &Path) -> Option<(HubIdentity, Option<u16>)> {
        let text = fs::read_to_string(path).ok()?;
        let state: StateFile = serde_json::from_str(&text).ok()?;
        if state.ufrag.is_empty() || state.pwd.is_empty() {
            return None;
        }
        let port = state.port.filter(|p| *p != 0);
        let id = Self::from_parts(state.ufrag, state.pwd, state.cert_pem, state.key_pem).ok()?;
        Some((id, port))
    }

    /// Writes the state file (JSON, 1-space indent, mode 0600), atomically.
    pub fn save(&self, path: &Path, port: Option<u16>) -> Result<(), HubError> {
        let state = StateFile {
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            port,
        };
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        state
            .serialize(&mut ser)
            .map_err(|_| HubError::Identity("could not encode the state file"))?;
        out.push(b'\n');
        let io = |source| HubError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp_name);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        #[cfg(unix)]
        {
            // `mode` applies only to a file this call creates; a stale tmp keeps its own.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        f.write_all(&out).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(io)
    }

    fn from_parts(
        ufrag: String,
        pwd: String,
        cert_pem: String,
        key_pem: String,
    ) -> Result<HubIdentity, HubError> {
        let (label, cert_der) = pem::decode_vec(cert_pem.as_bytes())
            .map_err(|_| HubError::Identity("certificate is not PEM"))?;
        if label != "CERTIFICATE" {
            return Err(HubError::Identity("certificate is not PEM"));
        }
        let key = SecretKey::from_sec1_pem(&key_pem)
            .map_err(|_| HubError::Identity("key is not a SEC1 P-256 key"))?;
        // The pair must match: the certificate carries the key's public point.
        let public = key.public_key();
        let point = p256::EncodedPoint::from(public);
        let point = point.as_bytes();
        if !cert_der.windows(point.len()).any(|w| w == point) {
            return Err(HubError::Identity("certificate and key do not match"));
        }
        let key_der = key
            .to_sec1_der()
            .map_err(|_| HubError::Identity("could not encode the key"))?
            .to_vec();
        let fingerprint: [u8; 32] = Sha256::digest(&cert_der).into();
        Ok(HubIdentity {
            ufrag,
            pwd,
            cert_pem,
            key_pem,
            cert_der,
            key_der,
            fingerprint,
        })
    }

    /// Whether this is upstream's well-known (public) identity.
    pub fn is_fixed(&self) -> bool {
        kibitz_proto::lan::fingerprint_b64(&self.fingerprint) == fixed::FINGERPRINT_B64
    }

    /// ICE username fragment.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// ICE password.
    pub fn pwd(&self) -> &str {
        &self.pwd
    }

    /// SHA-256 of the certificate DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub(crate) fn dtls_cert(&self) -> DtlsCert {
        DtlsCert {
            certificate: self.cert_der.clone(),
            private_key: self.key_der.clone(),
        }
    }
}

/// `n` random characters of `[A-Za-z0-9]` (ICE credentials, the hub's per-run TURN user).
pub fn random_alnum(n: usize) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 1];
        OsRng.fill_bytes(&mut b);
        // 248 = 4 × 62: reject the tail so every character is equally likely.
        if b[0] < 248 {
            out.push(SET[usize::from(b[0]) % SET.len()] as char);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let mut b = [0u8; 8];
        OsRng.fill_bytes(&mut b);
        let d = std::env::temp_dir().join(format!(
            "kibitz-hub-{tag}-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn fixed_identity_matches_upstream_fingerprint() {
        let id = HubIdentity::fixed().unwrap();
        assert_eq!(id.ufrag(), fixed::UFRAG);
        assert_eq!(id.pwd(), fixed::PWD);
        assert!(id.is_fixed());
        assert!(!HubIdentity::generate().unwrap().is_fixed());
        assert_eq!(
            kibitz_proto::lan::fingerprint_b64(&id.fingerprint()),
            fixed::FINGERPRINT_B64
        );
    }

    #[test]
    fn generated_identity_shape() {
        let id = HubIdentity::generate().unwrap();
        assert_eq!(id.ufrag().len(), 8);
        assert_eq!(id.pwd().len(), 24);
        assert!(id.ufrag().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(id.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        // CN kibitz-relay is in the DER.
        assert!(id.cert_der().windows(12).any(|w| w == b"kibitz-relay"));
        let other = HubIdentity::generate().unwrap();
        assert_ne!(id.fingerprint(), other.fingerprint());
    }

    #[test]
    fn state_file_round_trip_mode_and_regeneration() {
        let dir = tmpdir("state");
        let path = dir.join("relay-state.json");
        let (a, port) = HubIdentity::load_or_create(&path).unwrap();
        assert_eq!(port, None);
        a.save(&path, Some(4711)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n \"ufrag\": "), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, port) = HubIdentity::load_or_create(&path).unwrap();
        assert_eq!(port, Some(4711));
        assert_eq!((b.ufrag(), b.fingerprint()), (a.ufrag(), a.fingerprint()));

        // A key from another pair makes the file unusable: a new identity replaces it.
        let other = HubIdentity::generate().unwrap();
        let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
        state["keyPem"] = other.key_pem.clone().into();
        fs::write(&path, state.to_string()).unwrap();
        let (c, port) = HubIdentity::load_or_create(&path).unwrap();
        assert_eq!(port, None);
        assert_ne!(c.fingerprint(), a.fingerprint());
        fs::write(&path, "{not json").unwrap();
        let (d, _) = HubIdentity::load_or_create(&path).unwrap();
        assert_ne!(d.fingerprint(), c.fingerprint());
        let (e, _) = HubIdentity::load_or_create(&path).unwrap();
        assert_eq!(e.fingerprint(), d.fingerprint());
        // The public fixed identity in the file is never taken for an own one.
        HubIdentity::fixed()
            .unwrap()
            .save(&path, Some(4711))
            .unwrap();
        assert!(HubIdentity::read(&path).is_none());
        let (f, port) = HubIdentity::load_or_create(&path).unwrap();
        assert!(!f.is_fixed());
        assert_eq!(port, None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
