//! The gate descriptor a room link carries (`g*` parameters), where those parameters ride in
//! the URL, and which host tier a link commits.
//!
//! New links carry the parameters inside the fragment, after the room: `#room?g=…&gk=…` (the
//! fragment never reaches a web server). Legacy links carry them in the query: `?g=…#room`.
//! A reader takes the fragment's parameters when they hold any of [`GATE_KEYS`], else the
//! query's. Parameters are `application/x-www-form-urlencoded`, read as `URLSearchParams` reads
//! them (first value wins, `+` is a space) and written as it writes them.
//!
//! Decoding is best effort, like the web client's: an unknown mode reads as open, a corrupt
//! key is dropped (the gate then fails closed), and `gn`/`gk`/`gm`/`ge` are read only for a
//! gated mode while the host fields, `gc` and `gd` are read for every mode. If both `ge` and
//! `gm` are present the sealed `ge` wins and `gm` is ignored.

use serde::{Deserialize, Serialize};

use crate::token::EcJwk;

/// Parameters whose presence in the fragment makes the fragment (not the query) the source.
pub const GATE_KEYS: [&str; 16] = [
    "g", "gn", "gk", "gm", "ge", "gc", "gt", "gh", "ghk", "ghn", "gho", "gl", "gd", "d", "ag", "n",
];

/// Decoded `application/x-www-form-urlencoded` parameters, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlParams(pub Vec<(String, String)>);

impl UrlParams {
    /// Parses a query string (one leading `?` is skipped, as `URLSearchParams` does).
    pub fn parse(query: &str) -> Self {
        let query = query.strip_prefix('?').unwrap_or(query);
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, unless absent or empty.
    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Whether `key` is present (even with an empty value).
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Appends a parameter.
    pub fn push(&mut self, key: &str, value: &str) {
        self.0.push((key.to_owned(), value.to_owned()));
    }

    /// Serialises as `URLSearchParams.toString()` does.
    pub fn encode(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.0)
            .finish()
    }
}

/// Splits a URL fragment (with or without its `#`) into the room part and the parameters
/// after the first `?`: `#standup?g=names&gn=a` → (`standup`, `g=names&gn=a`).
pub fn split_room_hash(hash: &str) -> (&str, &str) {
    let raw = hash.strip_prefix('#').unwrap_or(hash);
    raw.split_once('?').unwrap_or((raw, ""))
}

/// The gate parameters of a page: the fragment's when they hold any of [`GATE_KEYS`], else
/// the query's.
pub fn gate_params_from(hash: &str, search: &str) -> UrlParams {
    let fragment = UrlParams::parse(split_room_hash(hash).1);
    if GATE_KEYS.iter().any(|k| fragment.has(k)) {
        fragment
    } else {
        UrlParams::parse(search)
    }
}

/// Appends encoded parameters to a link's fragment: `#?…` when it has no fragment, `?…` when
/// the fragment has no parameters yet, `&…` otherwise. Empty `query` leaves `base` as is.
pub fn with_gate_fragment(base: &str, query: &str) -> String {
    if query.is_empty() {
        return base.to_owned();
    }
    let sep = match base.find('#') {
        None => "#?",
        Some(at) if base[at..].contains('?') => "&",
        Some(_) => "?",
    };
    format!("{base}{sep}{query}")
}

/// How joiners prove themselves (`g`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    /// Anyone with the link (also any unknown mode).
    #[default]
    Open,
    /// Pick a name from `gn`.
    Names,
    /// A short code.
    Code,
    /// A verified email (email-code OIDC).
    Email,
    /// A Google sign-in.
    Google,
    /// A signed invite verified with `gk`.
    Invite,
}

impl GateMode {
    /// The `g` value (`open` is written by leaving `g` out).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Names => "names",
            Self::Code => "code",
            Self::Email => "email",
            Self::Google => "google",
            Self::Invite => "invite",
        }
    }

    /// Reads a `g` value; anything unknown is open.
    pub fn parse(g: &str) -> Self {
        match g {
            "names" => Self::Names,
            "code" => Self::Code,
            "email" => Self::Email,
            "google" => Self::Google,
            "invite" => Self::Invite,
            _ => Self::Open,
        }
    }
}

/// Who may moderate the room, by what the link commits (strongest wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostTier {
    /// Nothing committed: no admin at all.
    None,
    /// `ghn`: whoever joins under that name (spoofable).
    Name,
    /// `gho` + `gc`: whoever proves that email with an OIDC sign-in.
    Oidc,
    /// `gh` (+ `ghk`): whoever holds the host key, unsealed with the host password. A
    /// committed key disables the name and OIDC tiers.
    Password,
}

/// The gate and host material a room link carries. Serialises camelCase, leaving out what
/// the link does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateDescriptor {
    /// `g`.
    pub mode: GateMode,
    /// `gn`: the names a joiner may pick (names mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// `gk`: the creator's public key, verifying invites and the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pub_key: Option<EcJwk>,
    /// `gm`: the signed room manifest token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// `ge`: the manifest sealed under a group passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc_manifest: Option<String>,
    /// `gt`: a per-guest credential (an invite token); never in a shared link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_token: Option<String>,
    /// `gc`: the OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `gh`: the host's public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pub_key: Option<EcJwk>,
    /// `ghk`: the host's private key sealed under the host password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_sealed: Option<String>,
    /// `ghn`: the soft host's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// `gho`: the OIDC host's email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_email: Option<String>,
    /// `gl=1`: the room starts with the waiting room on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lobby_on_start: bool,
    /// `gd`: the open room's "declare who you are" list (display only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declare: Vec<String>,
}

fn csv(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl GateDescriptor {
    /// Decodes the descriptor from a link's gate parameters (see the module docs).
    pub fn decode(p: &UrlParams) -> Self {
        let mut d = Self {
            mode: p.get("g").map_or(GateMode::Open, GateMode::parse),
            host_pub_key: p.non_empty("gh").and_then(EcJwk::from_link_param),
            host_key_sealed: p.non_empty("ghk").map(str::to_owned),
            host_name: p.non_empty("ghn").map(str::to_owned),
            host_email: p.non_empty("gho").map(str::to_owned),
            lobby_on_start: p.get("gl") == Some("1"),
            declare: p.non_empty("gd").map(csv).unwrap_or_default(),
            client_id: p.non_empty("gc").map(str::to_owned),
            guest_token: p.non_empty("gt").map(str::to_owned),
            ..Self::default()
        };
        if d.mode == GateMode::Open {
            return d;
        }
        d.names = p.non_empty("gn").map(csv).unwrap_or_default();
        d.pub_key = p.non_empty("gk").and_then(EcJwk::from_link_param);
        if let Some(ge) = p.non_empty("ge") {
            d.enc_manifest = Some(ge.to_owned());
        } else {
            d.manifest = p.non_empty("gm").map(str::to_owned);
        }
        d
    }

    /// Decodes the descriptor of a page from its fragment and query ([`gate_params_from`]).
    pub fn from_url_parts(hash: &str, search: &str) -> Self {
        Self::decode(&gate_params_from(hash, search))
    }

    /// The parameters, in the web client's order (`gt`, which it appends separately, last).
    /// An open room with nothing else adds nothing.
    pub fn to_params(&self) -> UrlParams {
        let mut p = UrlParams::default();
        let mut set = |k: &str, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                p.push(k, v);
            }
        };
        set(
            "g",
            (self.mode != GateMode::Open).then(|| self.mode.as_str()),
        );
        set("gn", Some(&self.names.join(",")));
        set(
            "gk",
            self.pub_key.as_ref().map(EcJwk::to_link_param).as_deref(),
        );
        set("gm", self.manifest.as_deref());
        set("ge", self.enc_manifest.as_deref());
        set("gc", self.client_id.as_deref());
        set(
            "gh",
            self.host_pub_key
                .as_ref()
                .map(EcJwk::to_link_param)
                .as_deref(),
        );
        set("ghk", self.host_key_sealed.as_deref());
        set("ghn", self.host_name.as_deref());
        set("gho", self.host_email.as_deref());
        set("gl", self.lobby_on_start.then_some("1"));
        set("gd", Some(&self.declare.join(",")));
        set("gt", self.guest_token.as_deref());
        p
    }

    /// [`to_params`](Self::to_params), encoded.
    pub fn encode(&self) -> String {
        self.to_params().encode()
    }

    /// The host tier this descriptor commits: a host key wins over an OIDC email (which needs
    /// `gc`), which wins over a soft name.
    pub fn host_tier(&self) -> HostTier {
        if self.host_pub_key.is_some() {
            HostTier::Password
        } else if self.host_email.is_some() && self.client_id.is_some() {
            HostTier::Oidc
        } else if self.host_name.is_some() {
            HostTier::Name
        } else {
            HostTier::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SigningKey;

    fn jwk(seed: u8) -> EcJwk {
        let k = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        EcJwk::from_verifying_key(k.verifying_key())
    }

    #[test]
    fn hash_splitting_and_fragment_building() {
        assert_eq!(
            split_room_hash("#standup?g=google&gm=x"),
            ("standup", "g=google&gm=x")
        );
        assert_eq!(split_room_hash("standup"), ("standup", ""));
        assert_eq!(split_room_hash(""), ("", ""));
        assert_eq!(
            with_gate_fragment("https://k.chat/#r", ""),
            "https://k.chat/#r"
        );
        assert_eq!(
            with_gate_fragment("https://k.chat/#r", "a=1"),
            "https://k.chat/#r?a=1"
        );
        assert_eq!(
            with_gate_fragment("https://k.chat/#r?a=1", "b=2"),
            "https://k.chat/#r?a=1&b=2"
        );
        assert_eq!(
            with_gate_fragment("https://k.chat/", "a=1"),
            "https://k.chat/#?a=1"
        );
        // A `?` in the query (before the `#`) does not count.
        assert_eq!(
            with_gate_fragment("https://k.chat/?x=1#r", "a=1"),
            "https://k.chat/?x=1#r?a=1"
        );
    }

    #[test]
    fn fragment_wins_over_query_only_with_a_gate_key() {
        let p = gate_params_from("#room?g=names&gn=a", "?g=invite");
        assert_eq!(p.get("g"), Some("names"));
        // Display-only keys count too.
        let p = gate_params_from("#room?d=hello", "?g=invite");
        assert_eq!(p.get("g"), None);
        // Unknown fragment keys do not.
        let p = gate_params_from("#room?zz=1", "?g=invite");
        assert_eq!(p.get("g"), Some("invite"));
        let p = gate_params_from("#room", "g=names&gn=x");
        assert_eq!(GateDescriptor::decode(&p).names, vec!["x"]);
        // Present but empty still counts as present.
        let p = gate_params_from("#room?g=", "?g=names");
        assert_eq!(GateDescriptor::decode(&p).mode, GateMode::Open);
    }

    #[test]
    fn decoding_follows_the_web_client() {
        let k = jwk(1);
        let q = format!(
            "g=nope&gn=a,b&gk={}&gm=m.s&gh={}&ghk=blob&ghn=Alex&gho=a@x.org&gc=cid&gl=1&gd=a@x.org,+Guest+,&gt=t.s",
            k.to_link_param(),
            k.to_link_param()
        );
        let d = GateDescriptor::decode(&UrlParams::parse(&q));
        // Unknown mode → open: gated-only fields are skipped, host fields and gc/gd are read.
        assert_eq!(d.mode, GateMode::Open);
        assert!(d.names.is_empty() && d.pub_key.is_none() && d.manifest.is_none());
        assert_eq!(d.host_pub_key, Some(k.clone()));
        assert_eq!(d.host_key_sealed.as_deref(), Some("blob"));
        assert_eq!(d.host_name.as_deref(), Some("Alex"));
        assert_eq!(d.host_email.as_deref(), Some("a@x.org"));
        assert_eq!(d.client_id.as_deref(), Some("cid"));
        assert!(d.lobby_on_start);
        assert_eq!(d.declare, vec!["a@x.org", "Guest"]);
        assert_eq!(d.guest_token.as_deref(), Some("t.s"));

        let q = format!(
            "g=invite&gn=+a+,,b&gk={}&gm=m.s&ge=sealed&gl=0",
            k.to_link_param()
        );
        let d = GateDescriptor::decode(&UrlParams::parse(&q));
        assert_eq!(d.mode, GateMode::Invite);
        assert_eq!(d.names, vec!["a", "b"]);
        assert_eq!(d.pub_key, Some(k));
        // `ge` wins over `gm`.
        assert_eq!(d.enc_manifest.as_deref(), Some("sealed"));
        assert_eq!(d.manifest, None);
        assert!(!d.lobby_on_start);
        assert_eq!(d.host_tier(), HostTier::None);
    }

    #[test]
    fn corrupt_keys_are_dropped() {
        let d = GateDescriptor::decode(&UrlParams::parse("g=invite&gk=%%%&gh=e30&ghk=x"));
        assert_eq!(d.mode, GateMode::Invite);
        assert_eq!(d.pub_key, None);
        assert_eq!(d.host_pub_key, None);
        assert_eq!(d.host_key_sealed.as_deref(), Some("x"));
    }

    #[test]
    fn codec_round_trips() {
        let full = GateDescriptor {
            mode: GateMode::Names,
            names: vec!["Ann Lee".into(), "Bo+b".into()],
            pub_key: Some(jwk(2)),
            manifest: Some("body.sig".into()),
            client_id: Some("123.apps.googleusercontent.com".into()),
            host_pub_key: Some(jwk(3)),
            host_key_sealed: Some("AQID".into()),
            host_name: Some("Alex & co".into()),
            host_email: Some("host@example.org".into()),
            lobby_on_start: true,
            declare: vec!["a@b.c".into(), "Guest".into()],
            guest_token: Some("t.s".into()),
            ..GateDescriptor::default()
        };
        let encoded = full.encode();
        assert!(encoded.starts_with("g=names&gn=Ann+Lee%2CBo%2Bb&gk="));
        assert_eq!(GateDescriptor::decode(&UrlParams::parse(&encoded)), full);

        let sealed = GateDescriptor {
            mode: GateMode::Google,
            enc_manifest: Some("AQ".into()),
            ..GateDescriptor::default()
        };
        assert_eq!(
            GateDescriptor::decode(&UrlParams::parse(&sealed.encode())),
            sealed
        );
        assert_eq!(GateDescriptor::default().encode(), "");
    }

    #[test]
    fn host_tiers_by_precedence() {
        let mut d = GateDescriptor {
            host_name: Some("Alex".into()),
            ..GateDescriptor::default()
        };
        assert_eq!(d.host_tier(), HostTier::Name);
        d.host_email = Some("a@x.org".into());
        assert_eq!(d.host_tier(), HostTier::Name, "an OIDC host needs gc");
        d.client_id = Some("cid".into());
        assert_eq!(d.host_tier(), HostTier::Oidc);
        d.host_pub_key = Some(jwk(4));
        assert_eq!(d.host_tier(), HostTier::Password);
    }

    #[test]
    fn serialises_camel_case_and_sparse() {
        let d = GateDescriptor {
            host_key_sealed: Some("x".into()),
            lobby_on_start: true,
            ..GateDescriptor::default()
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"mode":"open","hostKeySealed":"x","lobbyOnStart":true}"#
        );
    }
}
