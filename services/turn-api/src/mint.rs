//! Minting: TURN REST credentials, Cloudflare's `generate-ice-servers`, or a static list.

use crate::config::{CloudflareConfig, HmacConfig};
use kibitz_proto::turn::{RestSigner, rest_username};
use serde_json::{Value, json};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A successful mint: the fields to merge into the response body.
pub(crate) type Minted = serde_json::Map<String, Value>;

/// Opaque, unlinkable credential ids without a system call per request: a keyed hash
/// (SipHash with a per-process random key) of a counter.
#[derive(Debug)]
pub(crate) struct OpaqueIds {
    key: std::hash::RandomState,
    counter: AtomicU64,
}

impl OpaqueIds {
    pub(crate) fn new() -> Self {
        Self {
            key: std::hash::RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    /// 16 hex characters, never repeated within the process.
    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.key.hash_one(n))
    }
}

/// The parts of a TURN REST answer that never change, serialised once at start-up.
#[derive(Debug)]
pub(crate) struct Template {
    stun: String,
    uris: String,
    ttl: u64,
    /// Signs with the newest secret; `None` when none is configured.
    signer: Option<RestSigner>,
}

impl Template {
    pub(crate) fn new(cfg: &HmacConfig, ttl: u64) -> Self {
        let mut stun = Vec::new();
        let mut uris = Vec::new();
        for host in &cfg.hosts {
            stun.push(format!("stun:{host}:{}", cfg.port));
            uris.push(format!("turn:{host}:{}?transport=udp", cfg.port));
            if cfg.tcp {
                uris.push(format!("turn:{host}:{}?transport=tcp", cfg.port));
            }
            if let Some(tls) = cfg.tls_port {
                uris.push(format!("turns:{host}:{tls}?transport=tcp"));
            }
        }
        Self {
            stun: Value::from(stun).to_string(),
            uris: Value::from(uris).to_string(),
            ttl,
            signer: cfg.secrets.first().map(|s| RestSigner::new(s.expose())),
        }
    }

    /// TURN REST credentials in both the WebRTC shape (`iceServers`) and the REST-draft shape
    /// (`username`, `password`, `ttl`, `uris`), plus `expiresAt`, as a JSON body. The username
    /// (digits, `:`, hex) and password (base64) never need escaping.
    pub(crate) fn body(&self, user: &str, now_unix: u64, tier: &str) -> Result<String, String> {
        let signer = self.signer.as_ref().ok_or("no secret configured")?;
        let expires_at = now_unix.saturating_add(self.ttl);
        let username = rest_username(expires_at, user);
        let password = signer.password(&username);
        let (stun, uris, ttl) = (&self.stun, &self.uris, self.ttl);
        Ok(format!(
            r#"{{"iceServers":[{{"urls":{stun}}},{{"urls":{uris},"username":"{username}","credential":"{password}"}}],"configured":true,"tier":"{tier}","username":"{username}","password":"{password}","ttl":{ttl},"uris":{uris},"expiresAt":{expires_at}}}"#
        ))
    }
}

/// Adds `configured` and `tier` to a pass-through answer and serialises it.
pub(crate) fn with_tier(mut body: Minted, tier: &str) -> String {
    body.insert("configured".into(), true.into());
    body.insert("tier".into(), tier.into());
    Value::Object(body).to_string()
}

/// Browsers refuse port 53; old Cloudflare answers listed it.
fn port_53(url: &str) -> bool {
    let hostport = url.split('?').next().unwrap_or(url);
    hostport.rsplit(':').next() == Some("53")
}

/// Keeps only usable entries: `urls` as a list without port-53 URLs, entries left empty dropped.
pub(crate) fn clean_ice_servers(raw: Value) -> Vec<Value> {
    let entries = match raw {
        Value::Array(a) => a,
        obj @ Value::Object(_) => vec![obj],
        _ => Vec::new(),
    };
    entries
        .into_iter()
        .filter_map(|mut e| {
            let urls: Vec<Value> = match e.get("urls") {
                Some(Value::String(s)) => vec![Value::String(s.clone())],
                Some(Value::Array(a)) => a.iter().filter(|u| u.is_string()).cloned().collect(),
                _ => Vec::new(),
            };
            let urls: Vec<Value> = urls
                .into_iter()
                .filter(|u| u.as_str().is_some_and(|s| !port_53(s)))
                .collect();
            if urls.is_empty() {
                return None;
            }
            e.as_object_mut()?.insert("urls".into(), Value::Array(urls));
            Some(e)
        })
        .collect()
}

/// Fields shared by the pass-through backends: the list, plus the REST-draft fields taken from
/// the first entry that carries credentials.
pub(crate) fn from_list(list: Vec<Value>, ttl: Option<u64>, now_unix: u64) -> Minted {
    let mut m = Minted::new();
    if let Some(cred) = list.iter().find(|e| e.get("username").is_some()) {
        m.insert("username".into(), cred["username"].clone());
        m.insert(
            "password".into(),
            cred.get("credential").cloned().unwrap_or(Value::Null),
        );
        m.insert("uris".into(), cred["urls"].clone());
    }
    if let Some(ttl) = ttl {
        m.insert("ttl".into(), ttl.into());
        m.insert("expiresAt".into(), now_unix.saturating_add(ttl).into());
    }
    m.insert("iceServers".into(), Value::Array(list));
    m
}

/// Asks Cloudflare for ICE servers. Errors name the status only: never the token or body.
pub(crate) async fn cloudflare(
    client: &reqwest::Client,
    cfg: &CloudflareConfig,
    ttl: u64,
    now_unix: u64,
) -> Result<Minted, String> {
    let url = format!(
        "{}/v1/turn/keys/{}/credentials/generate-ice-servers",
        cfg.base_url, cfg.key_id
    );
    let token = String::from_utf8_lossy(cfg.api_token.expose()).into_owned();
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "ttl": ttl }))
        .send()
        .await
        .map_err(|_| "cf unreachable".to_owned())?;
    let status = resp.status().as_u16();
    if status != 200 && status != 201 {
        return Err(format!("cf {status}"));
    }
    let body: Value = resp
        .json()
        .await
        .map_err(|_| "cf bad response".to_owned())?;
    let list = clean_ice_servers(body.get("iceServers").cloned().unwrap_or(Value::Null));
    if list.is_empty() {
        return Err("cf returned no ice servers".into());
    }
    Ok(from_list(list, Some(ttl), now_unix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn hmac_mints_both_shapes_for_every_host() {
        let cfg = HmacConfig {
            secrets: vec![Secret::new("SOMESECRET"), Secret::new("OLD")],
            hosts: vec!["a.example".into(), "127.0.0.1".into()],
            port: 3478,
            tls_port: Some(5349),
            tcp: true,
        };
        let body = Template::new(&cfg, 300)
            .body("alice", 1_699_999_700, "open")
            .unwrap();
        let m: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(m["tier"], "open");
        assert_eq!(m["configured"], true);
        assert_eq!(m["username"], "1700000000:alice");
        assert_eq!(m["password"], "2FkwxKJPhNfNI0HFeFxNGhDsEnc=");
        assert_eq!(m["expiresAt"], 1_700_000_000u64);
        assert_eq!(m["ttl"], 300);
        assert_eq!(m["uris"].as_array().unwrap().len(), 6);
        assert_eq!(m["uris"][2], "turns:a.example:5349?transport=tcp");
        assert_eq!(m["iceServers"][0]["urls"][1], "stun:127.0.0.1:3478");
        assert_eq!(m["iceServers"][1]["credential"], m["password"]);
    }

    #[test]
    fn hmac_without_tcp_lists_udp_only() {
        let cfg = HmacConfig {
            secrets: vec![Secret::new("S")],
            hosts: vec!["127.0.0.1".into()],
            port: 3478,
            tls_port: None,
            tcp: false,
        };
        let body = Template::new(&cfg, 300).body("a", 1, "open").unwrap();
        let m: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(m["uris"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    }

    #[test]
    fn opaque_ids_are_fresh_hex() {
        let ids = OpaqueIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(a.len() == 16 && a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn cloudflare_lists_are_cleaned() {
        let raw = json!([
            {"urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]},
            {"urls": ["turn:turn.cloudflare.com:53?transport=udp", "turns:turn.cloudflare.com:443?transport=tcp"],
             "username": "u", "credential": "c"},
            {"urls": "turn:x:53"}
        ]);
        let list = clean_ice_servers(raw);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["urls"], json!(["stun:stun.cloudflare.com:3478"]));
        assert_eq!(
            list[1]["urls"],
            json!(["turns:turn.cloudflare.com:443?transport=tcp"])
        );
        let single =
            clean_ice_servers(json!({"urls": "turn:h:3478", "username": "u", "credential": "c"}));
        assert_eq!(single.len(), 1);
        let m = from_list(single, Some(60), 100);
        assert_eq!(m["password"], "c");
        assert_eq!(m["expiresAt"], 160);
    }
}
