//! `/api/turn` configuration: the validated [`Config`] and the clap [`TurnArgs`] that build it.

use std::path::PathBuf;

/// Longest credential lifetime minted (Cloudflare's maximum; coturn has none of its own).
pub const MAX_TTL_SECS: u64 = 48 * 3600;

/// A secret: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The bytes, for signing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(*** {} bytes)", self.0.len())
    }
}

/// Where credentials come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// Nothing configured: answers `{"iceServers":null,"configured":false}`.
    None,
    /// TURN REST credentials for coturn's `use-auth-secret`.
    Hmac(HmacConfig),
    /// Cloudflare Realtime TURN `generate-ice-servers`.
    Cloudflare(CloudflareConfig),
    /// An operator-supplied `iceServers` list, served as is.
    Static(serde_json::Value),
}

/// TURN REST settings.
#[derive(Debug, Clone)]
pub struct HmacConfig {
    /// Shared secrets, newest first: minting uses the first; list the rest in coturn too while
    /// rotating.
    pub secrets: Vec<Secret>,
    /// TURN hosts (name or IP, no port).
    pub hosts: Vec<String>,
    /// STUN/TURN port (UDP and TCP).
    pub port: u16,
    /// TURN-over-TLS port (`turns:`); none when `None`.
    pub tls_port: Option<u16>,
    /// List `?transport=tcp` URLs too (coturn listens on TCP; the embedded relay does not).
    pub tcp: bool,
}

/// Cloudflare Realtime TURN settings.
#[derive(Debug, Clone)]
pub struct CloudflareConfig {
    /// TURN key id.
    pub key_id: String,
    /// TURN key API token.
    pub api_token: Secret,
    /// API base URL (overridable for tests against a local stand-in).
    pub base_url: String,
}

/// Gating: who gets credentials.
#[derive(Debug, Clone)]
pub struct Gating {
    /// Signs and verifies room grants (`X-Kibitz-Grant`).
    pub grant_secret: Secret,
    /// Keys allowed to mint room grants at `POST /api/room-grant` (as `Bearer`).
    pub issuer_keys: Vec<Secret>,
    /// Lifetime of a minted grant, seconds.
    pub grant_ttl_secs: u64,
}

/// Everything `/api/turn` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where credentials come from.
    pub backend: Backend,
    /// Credential lifetime, seconds (1..=48 h).
    pub ttl_secs: u64,
    /// Off (`None`): every caller gets credentials (tier `open`).
    pub gating: Option<Gating>,
    /// Requests per minute per client IP; 0 = unlimited.
    pub rate_per_minute: u32,
    /// If non-empty, browser requests from other origins get 403. A deterrent, not
    /// authentication: non-browser clients choose their `Origin` freely.
    pub allowed_origins: Vec<String>,
}

impl Config {
    /// TURN REST credentials for one coturn host, defaults elsewhere.
    pub fn hmac(secrets: Vec<String>, host: &str, port: u16) -> Self {
        Self {
            backend: Backend::Hmac(HmacConfig {
                secrets: secrets.into_iter().map(Secret::new).collect(),
                hosts: vec![host.to_owned()],
                port,
                tls_port: None,
                tcp: true,
            }),
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: Backend::None,
            ttl_secs: 3600,
            gating: None,
            rate_per_minute: 60,
            allowed_origins: Vec::new(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A secret or list file could not be read.
    #[error("reading {0}: {1}")]
    File(String, std::io::Error),
    /// A required setting is missing for the chosen backend.
    #[error("{0}")]
    Missing(&'static str),
    /// A value is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Credential backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// TURN REST (HMAC-SHA1) credentials for coturn `use-auth-secret`.
    Hmac,
    /// Cloudflare Realtime TURN.
    Cloudflare,
    /// A fixed iceServers list.
    Static,
}

/// `/api/turn` flags, shared by `kibitz serve` and `kibitz turn-api`. Every flag also reads a
/// `KIBITZ_*` environment variable; secrets are best passed as files.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnArgs {
    /// Credential backend. Without any backend settings, /api/turn answers "not configured".
    #[arg(long, env = "KIBITZ_TURN_BACKEND", value_enum, default_value_t = BackendKind::Hmac)]
    pub turn_backend: BackendKind,
    /// Shared secret(s) for coturn's static-auth-secret, newest first (comma-separated in env).
    #[arg(
        long,
        env = "KIBITZ_TURN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub turn_secret: Vec<String>,
    /// File with one shared secret per line, newest first.
    #[arg(long, env = "KIBITZ_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// TURN host name or IP (repeat for several).
    #[arg(long, env = "KIBITZ_TURN_HOSTS", value_delimiter = ',')]
    pub turn_host: Vec<String>,
    /// TURN/STUN port.
    #[arg(long, env = "KIBITZ_TURN_PORT", default_value_t = 3478)]
    pub turn_port: u16,
    /// TURN-over-TLS port for turns: URIs (5349 or 443); 0 = none.
    #[arg(long, env = "KIBITZ_TURN_TLS_PORT", default_value_t = 0)]
    pub turn_tls_port: u16,
    /// Credential lifetime in seconds (clamped to 1..=172800).
    #[arg(long, env = "KIBITZ_TURN_TTL_SECS", default_value_t = 3600)]
    pub turn_ttl_secs: u64,
    /// Cloudflare TURN key id.
    #[arg(long, env = "KIBITZ_TURN_CF_KEY_ID")]
    pub turn_cf_key_id: Option<String>,
    /// Cloudflare TURN key API token.
    #[arg(long, env = "KIBITZ_TURN_CF_API_TOKEN", hide_env_values = true)]
    pub turn_cf_api_token: Option<String>,
    /// File holding the Cloudflare TURN key API token.
    #[arg(long, env = "KIBITZ_TURN_CF_API_TOKEN_FILE")]
    pub turn_cf_api_token_file: Option<PathBuf>,
    /// Cloudflare API base URL.
    #[arg(
        long,
        env = "KIBITZ_TURN_CF_BASE_URL",
        default_value = "https://rtc.live.cloudflare.com"
    )]
    pub turn_cf_base_url: String,
    /// JSON file with the iceServers list to serve (static backend).
    #[arg(long, env = "KIBITZ_TURN_STATIC_FILE")]
    pub turn_static_file: Option<PathBuf>,
    /// Secret that signs room grants; setting it turns gating on (tiers room/free).
    #[arg(long, env = "KIBITZ_TURN_GRANT_SECRET", hide_env_values = true)]
    pub turn_grant_secret: Option<String>,
    /// File holding the grant secret.
    #[arg(long, env = "KIBITZ_TURN_GRANT_SECRET_FILE")]
    pub turn_grant_secret_file: Option<PathBuf>,
    /// File with keys (one per line) allowed to mint room grants via POST /api/room-grant.
    #[arg(long, env = "KIBITZ_TURN_ISSUER_KEYS_FILE")]
    pub turn_issuer_keys_file: Option<PathBuf>,
    /// Room grant lifetime in seconds.
    #[arg(long, env = "KIBITZ_TURN_GRANT_TTL_SECS", default_value_t = 600)]
    pub turn_grant_ttl_secs: u64,
    /// Requests per minute per client IP (429 beyond); 0 = unlimited.
    #[arg(long, env = "KIBITZ_TURN_RATE_PER_MINUTE", default_value_t = 60)]
    pub turn_rate_per_minute: u32,
    /// Allowed browser origin (repeat); none allows all. A deterrent, not authentication.
    #[arg(
        long = "turn-allowed-origin",
        env = "KIBITZ_TURN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub turn_allowed_origins: Vec<String>,
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File(path.display().to_string(), e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn one_secret(
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(f) = file {
        return Ok(read_lines(f)?.into_iter().next().map(Secret::new));
    }
    Ok(value
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| Secret::new(v.as_bytes())))
}

impl TurnArgs {
    /// Reads secret files and validates the flags into a [`Config`].
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let backend = match self.turn_backend {
            BackendKind::Hmac => {
                let mut secrets: Vec<Secret> = self
                    .turn_secret
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| Secret::new(s.as_bytes()))
                    .collect();
                if let Some(f) = &self.turn_secret_file {
                    let lines = read_lines(f)?;
                    if lines.is_empty() {
                        return Err(ConfigError::Invalid(format!(
                            "{}: no secret in the file",
                            f.display()
                        )));
                    }
                    secrets.extend(lines.into_iter().map(Secret::new));
                }
                if self.turn_port == 53 || self.turn_tls_port == 53 {
                    return Err(ConfigError::Invalid(
                        "browsers refuse TURN on port 53".into(),
                    ));
                }
                match (secrets.is_empty(), self.turn_host.is_empty()) {
                    (true, true) => Backend::None,
                    (false, false) => Backend::Hmac(HmacConfig {
                        secrets,
                        hosts: self.turn_host.clone(),
                        port: self.turn_port,
                        tls_port: (self.turn_tls_port != 0).then_some(self.turn_tls_port),
                        tcp: true,
                    }),
                    (true, false) => {
                        return Err(ConfigError::Missing(
                            "--turn-host needs --turn-secret or --turn-secret-file",
                        ));
                    }
                    (false, true) => {
                        return Err(ConfigError::Missing("--turn-secret needs --turn-host"));
                    }
                }
            }
            BackendKind::Cloudflare => {
                let key_id = self.turn_cf_key_id.clone().ok_or(ConfigError::Missing(
                    "--turn-cf-key-id is required for the cloudflare backend",
                ))?;
                let api_token = one_secret(&self.turn_cf_api_token, &self.turn_cf_api_token_file)?
                    .ok_or(ConfigError::Missing(
                        "--turn-cf-api-token(-file) is required for the cloudflare backend",
                    ))?;
                Backend::Cloudflare(CloudflareConfig {
                    key_id,
                    api_token,
                    base_url: self.turn_cf_base_url.trim_end_matches('/').to_owned(),
                })
            }
            BackendKind::Static => {
                let path = self.turn_static_file.as_ref().ok_or(ConfigError::Missing(
                    "--turn-static-file is required for the static backend",
                ))?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File(path.display().to_string(), e))?;
                let list: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
                if !list.is_array() {
                    return Err(ConfigError::Invalid(
                        "the static iceServers file must hold a JSON array".into(),
                    ));
                }
                Backend::Static(list)
            }
        };
        let gating = match one_secret(&self.turn_grant_secret, &self.turn_grant_secret_file)? {
            None => None,
            Some(grant_secret) => Some(Gating {
                grant_secret,
                issuer_keys: match &self.turn_issuer_keys_file {
                    Some(f) => read_lines(f)?.into_iter().map(Secret::new).collect(),
                    None => Vec::new(),
                },
                grant_ttl_secs: self.turn_grant_ttl_secs.clamp(1, MAX_TTL_SECS),
            }),
        };
        Ok(Config {
            backend,
            ttl_secs: self.turn_ttl_secs.clamp(1, MAX_TTL_SECS),
            gating,
            rate_per_minute: self.turn_rate_per_minute,
            allowed_origins: self
                .turn_allowed_origins
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(*** 7 bytes)");
        let cfg = Config::hmac(vec!["hunter2".into()], "turn.example", 3478);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn an_empty_secret_file_is_refused_by_name() {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: TurnArgs,
        }
        let file = std::env::temp_dir().join(format!("kibitz-empty-secret-{}", std::process::id()));
        std::fs::write(&file, "\n  \n").unwrap();
        let p = <P as clap::Parser>::parse_from([
            "x",
            "--turn-host",
            "turn.example",
            "--turn-secret-file",
            file.to_str().unwrap(),
        ]);
        let e = p.a.to_config().unwrap_err().to_string();
        let _ = std::fs::remove_file(&file);
        assert!(e.contains("no secret in the file"), "{e}");
    }
}
