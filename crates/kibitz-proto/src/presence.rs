//! The presence wire (KIBITZ.md §4.3): frames between a participant and the room's authority
//! on the presence DataConnection, and the `meta` block members announce.
//!
//! Every frame is an object with a `t` tag. Decode a frame as [`Wire<ClientWire>`] (what the
//! authority receives) or [`Wire<AuthorityWire>`] (what a participant receives): a frame whose
//! `t` is unknown (or known but malformed) is kept whole as [`Wire::Unknown`], never an error,
//! because the wire is additive-only (§4.11). The types are serde types, so the same values
//! decode from JSON or from BinaryPack.
//!
//! The web client emits object fields whose value is `undefined` as nil; a nil field reads as
//! absent (`None`) here, and absent fields are not written back.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// An opaque value kept as received (app payloads, unknown frames): a [BinaryPack
/// value](crate::binarypack::Value), so binary, integer-vs-float and key order survive a round
/// trip. It reads from and writes to JSON too.
pub type Raw = crate::binarypack::Value;

/// A frame that is either one of the kinds `T` knows, or anything else, kept as received.
///
/// Only a map can be a known frame (serde would otherwise also read a tagged enum from an
/// array). Decoding goes through [`Raw`], so anything the wire can carry decodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Wire<T> {
    /// A frame of a known kind.
    Known(T),
    /// A frame of an unknown kind (or a known kind in an unreadable shape), kept whole.
    Unknown(Raw),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Wire<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        Ok(Self::from_raw(raw))
    }
}

impl<T: DeserializeOwned> Wire<T> {
    /// Classifies a value: a known frame if it is a map `T` reads, else unknown.
    pub fn from_raw(raw: Raw) -> Self {
        if matches!(raw, Raw::Map(_))
            && let Ok(t) = T::deserialize(raw.clone())
        {
            return Self::Known(t);
        }
        Self::Unknown(raw)
    }
}

impl<T> Wire<T> {
    /// The known frame, if it is one.
    pub fn known(&self) -> Option<&T> {
        match self {
            Self::Known(t) => Some(t),
            Self::Unknown(_) => None,
        }
    }
}

impl<T> From<T> for Wire<T> {
    fn from(t: T) -> Self {
        Self::Known(t)
    }
}

/// Longest `jwt` or `agentCredit` the identity gate reads, in characters.
pub const MAX_CREDENTIAL_CHARS: usize = 8192;
/// Longest `agentAssertion` the identity gate reads, in characters.
pub const MAX_ASSERTION_CHARS: usize = 2048;

/// Whether announced credentials are too long to read (the gate answers `unverified` at once).
fn oversize(jwt: Option<&str>, assertion: Option<&str>, credit: Option<&str>) -> bool {
    let over = |s: Option<&str>, max: usize| s.is_some_and(|s| s.len() > max);
    over(jwt, MAX_CREDENTIAL_CHARS)
        || over(credit, MAX_CREDENTIAL_CHARS)
        || over(assertion, MAX_ASSERTION_CHARS)
}

/// The engine protocol version this crate speaks (`~kbz.p`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Feature tags a current web client advertises in `~kbz.f`.
pub mod feature {
    /// Chat text.
    pub const CHAT_V1: &str = "chat.v1";
    /// Opaque app payloads.
    pub const APP_V1: &str = "app.v1";
    /// The shared ink layer.
    pub const INK_V1: &str = "ink.v1";
    /// Payment links.
    pub const PAY_V1: &str = "pay.v1";
    /// Capability grants.
    pub const CAPS_V1: &str = "caps.v1";
    /// Cert-bound ID tokens.
    pub const IDENTITY_V1: &str = "identity.v1";
    /// App schemas.
    pub const SCHEMA_V1: &str = "schema.v1";
    /// Chunked transfers (base64 chunks).
    pub const XFER_V1: &str = "xfer.v1";
    /// Chunked transfers as binary frames.
    pub const XFER_V2: &str = "xfer.v2";
    /// Transfers offered for download.
    pub const XFER_DL: &str = "xfer.dl";
    /// Resumable transfers.
    pub const XFER_RESUME: &str = "xfer.resume";
    /// Widgets.
    pub const WIDGET_V1: &str = "widget.v1";
}

/// The reserved engine block `meta["~kbz"]`: `{v, b?, p?, f}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbzMeta {
    /// Engine version (semver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    /// Build stamp, `"<sha> · <UTC>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
    /// Protocol version; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<u32>,
    /// Feature tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<Vec<String>>,
}

impl KbzMeta {
    /// The advertised protocol version (absent = 1).
    pub fn protocol(&self) -> u32 {
        self.p.unwrap_or(1)
    }

    /// Whether the peer advertises a feature tag.
    pub fn has_feature(&self, tag: &str) -> bool {
        self.f.as_ref().is_some_and(|f| f.iter().any(|x| x == tag))
    }

    /// Whether the peer speaks a strictly newer protocol (the client should offer a refresh).
    pub fn is_newer_protocol(&self) -> bool {
        self.protocol() > PROTOCOL_VERSION
    }
}

/// A member's announced `meta`: the engine block, the well-known keys, and anything else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// The reserved engine block.
    #[serde(rename = "~kbz", default, skip_serializing_if = "Option::is_none")]
    pub kbz: Option<KbzMeta>,
    /// `agent`, or `kibitzer` (an unseen observer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// e.g. `voice-assistant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A disclosed agent backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// A disclosed agent egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Raw>,
    /// Stage image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_image: Option<Raw>,
    /// Stage media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_media: Option<Raw>,
    /// Every other key, kept as received and in order.
    #[serde(flatten)]
    pub other: Extra,
}

impl Meta {
    /// Whether the member is an agent (`role: "agent"`).
    pub fn is_agent(&self) -> bool {
        self.role.as_deref() == Some("agent")
    }

    /// Whether the member is an unseen observer (`role: "kibitzer"`).
    pub fn is_kibitzer(&self) -> bool {
        self.role.as_deref() == Some("kibitzer")
    }

    /// Whether the member does not count toward a mesh's human cap (agent or voice assistant).
    pub fn is_non_human(&self) -> bool {
        self.is_agent() || self.kind.as_deref() == Some("voice-assistant")
    }

    /// Whether `egress` is disclosed as `true`.
    pub fn discloses_egress(&self) -> bool {
        self.egress == Some(Raw::Bool(true))
    }
}

/// The keys of an object that its type does not name, in wire order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extra(pub Vec<(String, Raw)>);

impl Extra {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Raw> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Serialize for Extra {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Extra {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Extra;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map with string keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Extra, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Raw>()? {
                    out.push(entry);
                }
                Ok(Extra(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// `voice`: join, update or leave the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Voice {
    /// In the call.
    #[serde(default)]
    pub on: bool,
    /// Camera on.
    #[serde(default)]
    pub cam: bool,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Avatar (often `""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// The media peer's id (the roster id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    /// Stable per-tab token (dedupes reconnects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Announced meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Credential (invite token, picked name or OIDC token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// Agent key assertion (§4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_assertion: Option<String>,
    /// Agent credit JWT (§4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_credit: Option<String>,
}

impl Voice {
    /// Whether a credential is too long for the identity gate to read.
    pub fn has_oversize_credential(&self) -> bool {
        oversize(
            self.jwt.as_deref(),
            self.agent_assertion.as_deref(),
            self.agent_credit.as_deref(),
        )
    }
}

/// `knock`: ask to be let in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Knock {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// Stable per-tab token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The media peer's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    /// Credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// Agent key assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_assertion: Option<String>,
    /// Agent credit JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_credit: Option<String>,
}

impl Knock {
    /// Whether a credential is too long for the identity gate to read.
    pub fn has_oversize_credential(&self) -> bool {
        oversize(
            self.jwt.as_deref(),
            self.agent_assertion.as_deref(),
            self.agent_credit.as_deref(),
        )
    }
}

/// Participant → authority.
// Frames live for one message; boxing `Voice` would only cost every match a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum ClientWire {
    /// Join, update or leave the call.
    Voice(Voice),
    /// Ask to be let in.
    Knock(Knock),
    /// Heartbeat.
    Ping,
    /// Leaving now.
    Leave,
    /// A signed host command (§4.6).
    Mod {
        /// The `kbz-host-cmd.v1` token.
        token: String,
    },
}

/// One roster entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's voiceId.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Camera on.
    #[serde(default)]
    pub cam: bool,
    /// Avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// Announced meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

/// The full roster the authority sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    /// Members in the call.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Lobby on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lobby: Option<bool>,
    /// The verified host's voiceId (`""` when none; older builds: the authority's voiceId).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Room locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
}

impl Roster {
    /// The verified host's voiceId, if one is named.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref().filter(|h| !h.is_empty())
    }
}

/// A lobby status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LobbyStatus {
    /// Queued for the host.
    Waiting,
    /// Let in.
    Admitted,
    /// Turned away.
    Denied,
    /// The room is locked to newcomers.
    Locked,
    /// The identity gate refused the credential.
    Unverified,
}

/// Authority → participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum AuthorityWire {
    /// The full roster.
    Roster(Roster),
    /// Heartbeat.
    Ping,
    /// Lobby status change.
    Lobby {
        /// The new status.
        status: LobbyStatus,
    },
    /// You were removed.
    Kick,
    /// Clear ephemeral chat.
    Reset,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    type Json = serde_json::Value;

    pub(crate) fn raw(v: Json) -> Raw {
        serde_json::from_value(v).unwrap()
    }

    fn client(v: Json) -> Wire<ClientWire> {
        serde_json::from_value(v).unwrap()
    }

    fn authority(v: Json) -> Wire<AuthorityWire> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn knock_with_nils_reads_as_absent() {
        let w = client(
            json!({"t": "knock", "name": "Bob", "avatar": "", "token": "zmh",
                              "voiceId": null, "jwt": null, "agentAssertion": null}),
        );
        let Wire::Known(ClientWire::Knock(k)) = &w else {
            panic!("{w:?}")
        };
        assert!(!k.has_oversize_credential());
        let big = Knock {
            agent_assertion: Some("a".repeat(MAX_ASSERTION_CHARS + 1)),
            ..k.clone()
        };
        assert!(big.has_oversize_credential());
        let ok = Voice {
            jwt: Some("j".repeat(MAX_CREDENTIAL_CHARS)),
            ..Voice::default()
        };
        assert!(!ok.has_oversize_credential());
        assert!(
            Voice {
                agent_credit: Some("c".repeat(MAX_CREDENTIAL_CHARS + 1)),
                ..ok
            }
            .has_oversize_credential()
        );
        assert_eq!(k.name, "Bob");
        assert_eq!(k.avatar.as_deref(), Some(""));
        assert_eq!(k.voice_id, None);
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            json!({"t": "knock", "name": "Bob", "avatar": "", "token": "zmh"})
        );
    }

    #[test]
    fn voice_with_meta_round_trips() {
        let v = json!({"t": "voice", "on": true, "cam": false, "name": "Bob", "avatar": "",
            "voiceId": "17fa", "token": "zmh",
            "meta": {"~kbz": {"v": "0.1.0", "b": "abc · now", "p": 1, "f": ["chat.v1", "xfer.v2"]},
                     "role": "agent", "backend": "x", "egress": true, "custom": [1, 2]},
            "agentCredit": "j.w.t"});
        let w = client(v.clone());
        let Wire::Known(ClientWire::Voice(voice)) = &w else {
            panic!("{w:?}")
        };
        let meta = voice.meta.as_ref().unwrap();
        let kbz = meta.kbz.as_ref().unwrap();
        assert!(kbz.has_feature(feature::XFER_V2));
        assert!(!kbz.has_feature(feature::WIDGET_V1));
        assert_eq!(kbz.protocol(), 1);
        assert!(meta.is_agent() && meta.is_non_human() && meta.discloses_egress());
        assert_eq!(meta.other.get("custom"), Some(&raw(json!([1, 2]))));
        assert_eq!(serde_json::to_value(&w).unwrap(), v);
        let newer: KbzMeta = serde_json::from_value(json!({"p": 2})).unwrap();
        assert!(newer.is_newer_protocol());
        assert_eq!(KbzMeta::default().protocol(), 1);
    }

    #[test]
    fn binarypack_keeps_unnamed_meta_keys_in_order() {
        // Built by hand: `json!` would sort the keys.
        let m = |entries: Vec<(&str, Raw)>| {
            Raw::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Raw::Str(k.into()), v))
                    .collect(),
            )
        };
        let s = |x: &str| Raw::Str(x.into());
        let kbz = m(vec![("v", s("0.2.0")), ("p", Raw::Int(1))]);
        let frame = |meta: Raw| {
            m(vec![
                ("t", s("voice")),
                ("on", Raw::Bool(true)),
                ("cam", Raw::Bool(false)),
                ("name", s("Bob")),
                ("meta", meta),
            ])
        };
        let zeta = ("zeta", Raw::Int(1));
        let alpha = ("alpha", Raw::Array(vec![Raw::Float(0.5)]));
        let role = ("role", s("agent"));
        let sent = frame(m(vec![
            ("~kbz", kbz.clone()),
            zeta.clone(),
            role.clone(),
            alpha.clone(),
        ]));
        let bytes = crate::binarypack::encode(&sent).unwrap();
        let w: Wire<ClientWire> = crate::binarypack::from_slice(&bytes).unwrap();
        let Wire::Known(ClientWire::Voice(voice)) = &w else {
            panic!("{w:?}")
        };
        let meta = voice.meta.as_ref().unwrap();
        assert!(meta.is_agent());
        let keys: Vec<&str> = meta.other.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha"]);
        // Named keys are written in declaration order, unnamed ones after them, in wire order.
        let want = frame(m(vec![("~kbz", kbz), role, zeta, alpha]));
        assert_eq!(crate::binarypack::to_value(&w).unwrap(), want);
    }

    #[test]
    fn client_kinds() {
        for (v, want) in [
            (json!({"t": "ping"}), ClientWire::Ping),
            (json!({"t": "leave"}), ClientWire::Leave),
            (
                json!({"t": "mod", "token": "a.b"}),
                ClientWire::Mod {
                    token: "a.b".into(),
                },
            ),
        ] {
            assert_eq!(client(v.clone()), Wire::Known(want.clone()));
            assert_eq!(serde_json::to_value(Wire::Known(want)).unwrap(), v);
        }
        // Unknown kinds, and known kinds in unreadable shapes, are kept whole.
        for v in [
            json!({"t": "wave", "x": [1]}),
            json!({"t": "mod"}),
            json!({"no": "tag"}),
            json!("ping"),
        ] {
            let w = client(v.clone());
            assert_eq!(w, Wire::Unknown(raw(v.clone())));
            assert_eq!(serde_json::to_value(&w).unwrap(), v);
        }
    }

    #[test]
    fn authority_kinds() {
        let roster = json!({"t": "roster", "members": [{"id": "a", "name": "Alice", "cam": true,
            "avatar": "", "meta": {"~kbz": {"v": "0.1.0", "f": ["chat.v1"]}}}],
            "lobby": false, "host": "", "locked": false});
        let w = authority(roster.clone());
        let Wire::Known(AuthorityWire::Roster(r)) = &w else {
            panic!("{w:?}")
        };
        assert_eq!(r.members[0].id, "a");
        assert_eq!(r.host(), None);
        assert_eq!(serde_json::to_value(&w).unwrap(), roster);
        for (v, want) in [
            (json!({"t": "ping"}), AuthorityWire::Ping),
            (json!({"t": "kick"}), AuthorityWire::Kick),
            (json!({"t": "reset"}), AuthorityWire::Reset),
            (
                json!({"t": "lobby", "status": "unverified"}),
                AuthorityWire::Lobby {
                    status: LobbyStatus::Unverified,
                },
            ),
        ] {
            assert_eq!(authority(v.clone()), Wire::Known(want.clone()));
            assert_eq!(serde_json::to_value(Wire::Known(want)).unwrap(), v);
        }
        let odd = json!({"t": "lobby", "status": "maybe"});
        assert_eq!(authority(odd.clone()), Wire::Unknown(raw(odd)));
    }
}
