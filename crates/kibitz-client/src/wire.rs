//! Presence frames exactly as the web client shapes them.
//!
//! The JS client writes object literals whose `undefined` fields still go out as nil, in a
//! fixed key order (KIBITZ.md §4.2); a frame built here is byte-for-byte what the real client
//! sends for the same values (checked against `shared/fixtures/kibitz-presence-frames.json`).
//! Reading uses the serde types of `kibitz_proto::presence`, where nil reads as absent.

use kibitz_proto::binarypack::{Value, to_value};
use kibitz_proto::presence::{AuthorityWire, ClientWire, LobbyStatus, Meta, Roster, Wire};

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn opt(v: Option<&str>) -> Value {
    v.map_or(Value::Nil, s)
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// What `knock` and `voice` carry besides the call state.
#[derive(Debug, Clone, Default)]
pub struct Announce<'a> {
    /// Display name.
    pub name: &'a str,
    /// Avatar.
    pub avatar: &'a str,
    /// Stable token.
    pub token: &'a str,
    /// The media peer's id, once known.
    pub voice_id: Option<&'a str>,
    /// Announced meta.
    pub meta: Option<&'a Meta>,
    /// Credential.
    pub jwt: Option<&'a str>,
    /// Agent assertion.
    pub agent_assertion: Option<&'a str>,
    /// Agent credit (only written when present: the 0.1.0 client has no such field).
    pub agent_credit: Option<&'a str>,
}

/// `{t:'knock', name, avatar, token, voiceId, jwt, agentAssertion[, agentCredit]}`.
pub fn knock(a: &Announce<'_>) -> Value {
    let mut m = vec![
        ("t", s("knock")),
        ("name", s(a.name)),
        ("avatar", s(a.avatar)),
        ("token", s(a.token)),
        ("voiceId", opt(a.voice_id)),
        ("jwt", opt(a.jwt)),
        ("agentAssertion", opt(a.agent_assertion)),
    ];
    if let Some(c) = a.agent_credit {
        m.push(("agentCredit", s(c)));
    }
    map(m)
}

/// `{t:'voice', on, cam, name, avatar, voiceId, token, meta, jwt, agentAssertion[, agentCredit]}`.
pub fn voice(on: bool, cam: bool, a: &Announce<'_>) -> Value {
    let meta = a.meta.and_then(|m| to_value(m).ok()).unwrap_or(Value::Nil);
    let mut m = vec![
        ("t", s("voice")),
        ("on", Value::Bool(on)),
        ("cam", Value::Bool(cam)),
        ("name", s(a.name)),
        ("avatar", s(a.avatar)),
        ("voiceId", opt(a.voice_id)),
        ("token", s(a.token)),
        ("meta", meta),
        ("jwt", opt(a.jwt)),
        ("agentAssertion", opt(a.agent_assertion)),
    ];
    if let Some(c) = a.agent_credit {
        m.push(("agentCredit", s(c)));
    }
    map(m)
}

/// A frame with only a tag: `{t}`.
pub fn bare(t: &str) -> Value {
    map(vec![("t", s(t))])
}

/// `{t:'bans', bans}`: a participant hands the bans it knows to an authority whose roster
/// lacks them (ours; other clients ignore unknown kinds).
pub fn bans(bans: &[String]) -> Value {
    map(vec![
        ("t", s("bans")),
        ("bans", Value::Array(bans.iter().map(|b| s(b)).collect())),
    ])
}

/// The bans in a `{t:'bans'}` frame, if it is one.
pub fn read_bans(v: &Value) -> Option<Vec<String>> {
    if v.get("t").and_then(Value::as_str) != Some("bans") {
        return None;
    }
    match v.get("bans") {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|b| b.as_str().filter(|b| b.len() <= 64).map(str::to_owned))
                .take(MAX_BANS)
                .collect(),
        ),
        _ => Some(Vec::new()),
    }
}

/// `{t:'mod', token}`.
pub fn host_command(token: &str) -> Value {
    map(vec![("t", s("mod")), ("token", s(token))])
}

/// `{t:'lobby', status}`.
pub fn lobby(status: LobbyStatus) -> Value {
    to_value(&AuthorityWire::Lobby { status }).unwrap_or(Value::Nil)
}

/// `{t:'roster', members, lobby, host, locked}`, plus two additions other clients ignore
/// (unknown keys): `bans`, the room's kicked-token hashes, which a later authority inherits
/// (only when there are any), and `pending`, the knockers, sent only to the verified host.
pub fn roster(r: &Roster, bans: &[String], pending: Option<&[(String, String)]>) -> Value {
    let mut v = to_value(&AuthorityWire::Roster(r.clone())).unwrap_or(Value::Nil);
    if let (false, Value::Map(m)) = (bans.is_empty(), &mut v) {
        m.push((s("bans"), Value::Array(bans.iter().map(|b| s(b)).collect())));
    }
    if let (Some(p), Value::Map(m)) = (pending, &mut v) {
        let list = p
            .iter()
            .map(|(id, name)| map(vec![("id", s(id)), ("name", s(name))]))
            .collect();
        m.push((s("pending"), Value::Array(list)));
    }
    v
}

/// Reads a frame a participant sent.
pub fn read_client(v: Value) -> Option<ClientWire> {
    match Wire::<ClientWire>::from_raw(v) {
        Wire::Known(c) => Some(c),
        Wire::Unknown(_) => None,
    }
}

/// Most bans a roster may carry (a bound on what a peer keeps from the wire).
pub const MAX_BANS: usize = 1024;

/// What a roster frame carries besides the roster itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterExtras {
    /// Pending knockers `(id, name)`.
    pub pending: Vec<(String, String)>,
    /// Kicked-token hashes.
    pub bans: Vec<String>,
}

/// The hash a kicked token is banned under: base64url SHA-256 of `room|token`.
pub fn ban_hash(room: &str, token: &str) -> String {
    use sha2::Digest as _;
    kibitz_proto::token::b64url_encode(sha2::Sha256::digest(format!("{room}|{token}").as_bytes()))
}

/// Reads a frame the authority sent, with a roster's extras.
pub fn read_authority(v: Value) -> Option<(AuthorityWire, RosterExtras)> {
    let bans = match v.get("bans") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|b| b.as_str().filter(|b| b.len() <= 64).map(str::to_owned))
            .take(MAX_BANS)
            .collect(),
        _ => Vec::new(),
    };
    let pending = v
        .get("pending")
        .and_then(|p| match p {
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|i| {
                        Some((
                            i.get("id")?.as_str()?.to_owned(),
                            i.get("name")?.as_str()?.to_owned(),
                        ))
                    })
                    .take(256)
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    match Wire::<AuthorityWire>::from_raw(v) {
        Wire::Known(a) => Some((a, RosterExtras { pending, bans })),
        Wire::Unknown(_) => None,
    }
}
