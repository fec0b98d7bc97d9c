//! Room links: reading a pasted link or code the way the Kibitz app does, and building links
//! it opens.
//!
//! Reading is two steps, as in the web client. [`rehome_room_target`] turns a paste (a full
//! link with `/j/<room>`, `#<room>` or `?room=<room>`, or a bare code) into a link on our own
//! origin, keeping the fragment and, only when the paste came from our own origin, the query.
//! [`read_room_link`] then reads that link as the app does on load: the room from the
//! fragment, the gate from the fragment's parameters or else the query's.
//! [`parse_room_target`] does both.
//!
//! Building: [`room_link`] gives `<origin>/#<room>?<gate params>`; [`share_link`] gives the
//! `/j/<room>` form for open rooms. The host-tier helpers on [`NewHost`] fill the descriptor.

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::gate::{GateDescriptor, UrlParams, split_room_hash, with_gate_fragment};
use crate::room::{is_reserved, normalize_room, peer_id_for};
use crate::seal::{SealError, open_host_key, seal_host_key};
use crate::token::{EcJwk, SigningKey};

/// What a room link opens: the normalised room, its broker peer id, and its gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomTarget {
    /// The normalised room id.
    pub room: String,
    /// The presence authority's broker peer id (`kbz-v1-<room>`).
    pub signaling_id: String,
    /// The gate and host material the link carries.
    pub gate: GateDescriptor,
}

/// Why a link or code names no room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing but whitespace.
    #[error("empty link")]
    Empty,
    /// The origin is not an `http(s)://host[:port]` origin.
    #[error("not a web origin: {0}")]
    BadOrigin(String),
    /// Looks like a URL but does not parse as one.
    #[error("malformed link")]
    Malformed,
    /// A URL without a room in its `/j/` path, fragment or `?room=`.
    #[error("the link names no room")]
    NoRoom,
    /// One of the app's own routes, not a room.
    #[error("{0:?} is a reserved name, not a room")]
    Reserved(String),
}

/// The ASCII serialisation of an origin (`https://host[:port]`, no trailing `/`).
pub fn normalize_origin(origin: &str) -> Result<String, LinkError> {
    let bad = || LinkError::BadOrigin(origin.to_owned());
    let url = url::Url::parse(origin.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// JavaScript's `decodeURIComponent`, falling back to the input where that would throw (a
/// malformed escape or invalid UTF-8), as the app does.
fn safe_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return s.to_owned();
    }
    String::from_utf8(percent_decode(bytes)).unwrap_or_else(|_| s.to_owned())
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|&c| char::from(c).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 0xff.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn looks_like_url(s: &str) -> bool {
    let scheme = s.split_once("://").is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
    });
    scheme || s.starts_with('/') || s.starts_with('#')
}

fn room_or_reserved(room: String) -> Result<String, LinkError> {
    if room.is_empty() {
        Err(LinkError::NoRoom)
    } else if is_reserved(&room) {
        Err(LinkError::Reserved(room))
    } else {
        Ok(room)
    }
}

/// Turns a pasted link or bare room code into a link on `origin`, as the app's paste box does
/// (`parseRoomTarget`): `/j/<room>` and `?room=<room>` move the room into the fragment; a
/// `#<room>…` fragment is kept whole (gate parameters included); the query is kept only when
/// the paste is from `origin` itself; reserved names are refused.
pub fn rehome_room_target(input: &str, origin: &str) -> Result<String, LinkError> {
    let origin = normalize_origin(origin)?;
    let raw = input.trim();
    if raw.is_empty() {
        return Err(LinkError::Empty);
    }
    if !looks_like_url(raw) {
        let room = room_or_reserved(normalize_room(raw))?;
        return Ok(format!("{origin}/#{room}"));
    }
    let base = url::Url::parse(&origin).map_err(|_| LinkError::BadOrigin(origin.clone()))?;
    let url = base.join(raw).map_err(|_| LinkError::Malformed)?;
    let same_origin = url.origin().ascii_serialization() == origin;
    // `location.search`: empty for no query and for a bare `?`.
    let search = match url.query() {
        Some(q) if same_origin && !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    };

    let segments: Vec<&str> = url.path().strip_prefix("/j/").map_or(vec![], |rest| {
        rest.strip_suffix('/').unwrap_or(rest).split('/').collect()
    });
    if let [segment] = segments[..]
        && !segment.is_empty()
    {
        let room = room_or_reserved(normalize_room(&safe_decode(segment)))?;
        return Ok(format!("{origin}/{search}#{room}"));
    }

    let fragment = url.fragment().unwrap_or("");
    let room = normalize_room(&safe_decode(split_room_hash(fragment).0));
    if !room.is_empty() {
        room_or_reserved(room)?;
        return Ok(format!("{origin}/{search}#{fragment}"));
    }

    let query = UrlParams::parse(url.query().unwrap_or(""));
    let room = room_or_reserved(normalize_room(&safe_decode(
        query.get("room").unwrap_or(""),
    )))?;
    let rest = UrlParams(if same_origin {
        query.0.into_iter().filter(|(k, _)| k != "room").collect()
    } else {
        Vec::new()
    });
    let rest = rest.encode();
    let qs = if rest.is_empty() {
        String::new()
    } else {
        format!("?{rest}")
    };
    Ok(format!("{origin}/{qs}#{room}"))
}

/// Reads a link the way the app reads its own address on load: the room is the fragment up
/// to `?`, URI-decoded and normalised; the gate comes from the fragment's parameters when
/// they hold a gate key, else from the query.
pub fn read_room_link(link: &str) -> Result<RoomTarget, LinkError> {
    let url = url::Url::parse(link).map_err(|_| LinkError::Malformed)?;
    let fragment = url.fragment().unwrap_or("");
    let room = room_or_reserved(normalize_room(&safe_decode(split_room_hash(fragment).0)))?;
    Ok(RoomTarget {
        signaling_id: peer_id_for(&room),
        gate: GateDescriptor::from_url_parts(fragment, url.query().unwrap_or("")),
        room,
    })
}

/// What a pasted link or room code opens on `origin`: [`rehome_room_target`], then
/// [`read_room_link`]. This is what a `/api/room?link=` endpoint answers with.
pub fn parse_room_target(input: &str, origin: &str) -> Result<RoomTarget, LinkError> {
    read_room_link(&rehome_room_target(input, origin)?)
}

/// The canonical room link, `<origin>/#<room>` with the gate's parameters in the fragment.
/// The room is normalised.
pub fn room_link(origin: &str, room: &str, gate: &GateDescriptor) -> Result<String, LinkError> {
    let origin = normalize_origin(origin)?;
    let room = room_or_reserved(normalize_room(room))?;
    Ok(with_gate_fragment(
        &format!("{origin}/#{room}"),
        &gate.encode(),
    ))
}

/// The chat-app-friendly share link of an open room, `<origin>/j/<room>`. (Gated rooms are
/// shared with their full [`room_link`].)
pub fn share_link(origin: &str, room: &str) -> Result<String, LinkError> {
    let origin = normalize_origin(origin)?;
    let room = room_or_reserved(normalize_room(room))?;
    Ok(format!("{origin}/j/{room}"))
}

/// The host a new room commits to (one tier per link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewHost {
    /// No admin.
    None,
    /// Soft host: whoever joins under this name.
    Name(String),
    /// OIDC host: whoever signs in as this email with this OAuth client.
    Oidc {
        /// The host's email.
        email: String,
        /// The OAuth client id (`gc`).
        client_id: String,
    },
}

impl NewHost {
    /// Writes this tier into `gate` (values trimmed, as the create page trims them).
    pub fn commit(&self, gate: &mut GateDescriptor) {
        match self {
            Self::None => {}
            Self::Name(name) => gate.host_name = Some(name.trim().to_owned()),
            Self::Oidc { email, client_id } => {
                gate.host_email = Some(email.trim().to_owned());
                gate.client_id = Some(client_id.trim().to_owned());
            }
        }
    }
}

/// Commits a password host: `gh` = the key's public JWK, `ghk` = its private JWK sealed under
/// `password` (trimmed, as the create page trims it). Salt and IV come from `rng`.
pub fn commit_host_password(
    gate: &mut GateDescriptor,
    key: &SigningKey,
    password: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<(), SealError> {
    gate.host_key_sealed = Some(seal_host_key(key, password.trim(), rng)?);
    gate.host_pub_key = Some(EcJwk::from_verifying_key(key.verifying_key()));
    Ok(())
}

/// Unlocks a link's host key with the host password: `None` unless `ghk` opens and the key
/// it holds is the committed `gh` (a mismatched key could not sign accepted commands).
pub fn unlock_host_key(gate: &GateDescriptor, password: &str) -> Option<SigningKey> {
    let key = open_host_key(gate.host_key_sealed.as_deref()?, password.trim())?;
    let committed = gate.host_pub_key.as_ref()?.to_verifying_key().ok()?;
    (key.verifying_key() == &committed).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{GateMode, HostTier};
    use crate::room::tests::Replay;

    const O: &str = "https://kibitz.chat";

    fn rehome(input: &str) -> Result<String, LinkError> {
        rehome_room_target(input, O)
    }

    #[test]
    fn bare_codes_and_reserved_names() {
        assert_eq!(
            rehome("tidal-3pu4s1ghy1").as_deref(),
            Ok("https://kibitz.chat/#tidal-3pu4s1ghy1")
        );
        assert_eq!(
            rehome("  My Room ").as_deref(),
            Ok("https://kibitz.chat/#my-room")
        );
        assert_eq!(rehome("   "), Err(LinkError::Empty));
        assert_eq!(rehome("!!!"), Err(LinkError::NoRoom));
        assert_eq!(rehome("Help"), Err(LinkError::Reserved("help".into())));
        assert_eq!(rehome("#new"), Err(LinkError::Reserved("new".into())));
        assert_eq!(
            rehome("https://x.org/j/privacy"),
            Err(LinkError::Reserved("privacy".into()))
        );
        assert_eq!(
            rehome("https://x.org/?room=wake"),
            Err(LinkError::Reserved("wake".into()))
        );
        assert_eq!(rehome("https://x.org/path"), Err(LinkError::NoRoom));
        assert_eq!(rehome("http://[::1"), Err(LinkError::Malformed));
        assert!(matches!(
            rehome_room_target("r", "not an origin"),
            Err(LinkError::BadOrigin(_))
        ));
    }

    #[test]
    fn share_paths() {
        assert_eq!(
            rehome("https://kibitz.chat/j/Standup").as_deref(),
            Ok("https://kibitz.chat/#standup")
        );
        assert_eq!(
            rehome("https://kibitz.chat/j/standup/").as_deref(),
            Ok("https://kibitz.chat/#standup")
        );
        assert_eq!(
            rehome("https://kibitz.chat/j/caf%C3%A9%20chat?ag=av&n=hi").as_deref(),
            Ok("https://kibitz.chat/?ag=av&n=hi#caf-chat")
        );
        // A cross-origin query is dropped; the room is re-homed.
        assert_eq!(
            rehome("https://evil.example/j/r?idclient=x").as_deref(),
            Ok("https://kibitz.chat/#r")
        );
        // Not the /j/<room> shape: falls through to the fragment.
        assert_eq!(
            rehome("https://kibitz.chat/j/a/b#c").as_deref(),
            Ok("https://kibitz.chat/#c")
        );
        // Relative paths resolve against the origin.
        assert_eq!(rehome("/j/abc").as_deref(), Ok("https://kibitz.chat/#abc"));
    }

    #[test]
    fn fragments_and_embed_queries() {
        assert_eq!(
            rehome("https://other.host/x?g=names#team?g=invite&gk=k").as_deref(),
            Ok("https://kibitz.chat/#team?g=invite&gk=k")
        );
        assert_eq!(
            rehome("https://kibitz.chat/x?g=names&gn=a#team").as_deref(),
            Ok("https://kibitz.chat/?g=names&gn=a#team")
        );
        assert_eq!(
            rehome("#Team%20A").as_deref(),
            Ok("https://kibitz.chat/#Team%20A")
        );
        assert_eq!(
            rehome("https://kibitz.chat/embed.html?room=Daily+Sync&relay=0&room=x").as_deref(),
            Ok("https://kibitz.chat/?relay=0#daily-sync")
        );
        assert_eq!(
            rehome("https://embed.example/embed.html?room=daily&relay=0").as_deref(),
            Ok("https://kibitz.chat/#daily")
        );
        // A malformed escape is kept raw, then normalised.
        assert_eq!(
            rehome("#a%zzb").as_deref(),
            Ok("https://kibitz.chat/#a%zzb")
        );
        assert_eq!(
            parse_room_target("#a%zzb", O).map(|t| t.room),
            Ok("a-zzb".into())
        );
    }

    #[test]
    fn parsing_reads_room_id_and_gate() {
        let t = parse_room_target("https://kibitz.chat/#Team%20A?g=names&gn=Ann,Bo", O).unwrap();
        assert_eq!(t.room, "team-a");
        assert_eq!(t.signaling_id, "kbz-v1-team-a");
        assert_eq!(t.gate.mode, GateMode::Names);
        assert_eq!(t.gate.names, vec!["Ann", "Bo"]);
        // Legacy: gate in the (same-origin) query.
        let t = parse_room_target("https://kibitz.chat/?g=names&gn=Cy#team", O).unwrap();
        assert_eq!(t.gate.names, vec!["Cy"]);
        // The fragment's gate wins over the query's.
        let t = parse_room_target("https://kibitz.chat/?g=names&gn=Cy#team?g=code", O).unwrap();
        assert_eq!(t.gate.mode, GateMode::Code);
        assert!(t.gate.names.is_empty());
        // Cross-origin legacy links lose their query gate.
        let t = parse_room_target("https://other.host/?g=names&gn=Cy#team", O).unwrap();
        assert_eq!(t.gate, GateDescriptor::default());
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"room": "team", "signalingId": "kbz-v1-team", "gate": {"mode": "open"}})
        );
    }

    #[test]
    fn link_building() {
        let mut gate = GateDescriptor::default();
        assert_eq!(
            room_link(O, "My Room", &gate).as_deref(),
            Ok("https://kibitz.chat/#my-room")
        );
        assert_eq!(
            share_link("https://kibitz.chat/", "My Room").as_deref(),
            Ok("https://kibitz.chat/j/my-room")
        );
        NewHost::Name(" Alex ".into()).commit(&mut gate);
        gate.lobby_on_start = true;
        assert_eq!(
            room_link(O, "r", &gate).as_deref(),
            Ok("https://kibitz.chat/#r?ghn=Alex&gl=1")
        );
        assert_eq!(
            room_link(O, "docs", &gate),
            Err(LinkError::Reserved("docs".into()))
        );
        assert_eq!(room_link(O, "", &gate), Err(LinkError::NoRoom));

        let mut oidc = GateDescriptor::default();
        NewHost::Oidc {
            email: "host@example.org".into(),
            client_id: "cid".into(),
        }
        .commit(&mut oidc);
        let link = room_link("http://localhost:8080", "r", &oidc).unwrap();
        assert_eq!(
            link,
            "http://localhost:8080/#r?gc=cid&gho=host%40example.org"
        );
        let t = parse_room_target(&link, "http://localhost:8080").unwrap();
        assert_eq!(t.gate.host_tier(), HostTier::Oidc);
        assert_eq!(t.gate, oidc);
    }

    #[test]
    fn password_host_round_trip() {
        let key = SigningKey::from_bytes(&[11u8; 32].into()).unwrap();
        let mut gate = GateDescriptor::default();
        let mut rng = Replay((100..128).collect(), 0);
        commit_host_password(&mut gate, &key, " pass phrase \n", &mut rng).unwrap();
        let link = room_link(O, "ember-a3f9k2mq7p", &gate).unwrap();
        assert!(link.starts_with("https://kibitz.chat/#ember-a3f9k2mq7p?gh="));
        assert!(link.contains("&ghk="));

        let t = parse_room_target(&link, "https://elsewhere.example").unwrap();
        assert_eq!(t.room, "ember-a3f9k2mq7p");
        assert_eq!(t.gate.host_tier(), HostTier::Password);
        assert_eq!(
            t.gate.host_pub_key,
            Some(EcJwk::from_verifying_key(key.verifying_key()))
        );
        let unlocked = unlock_host_key(&t.gate, "pass phrase").unwrap();
        assert_eq!(unlocked.to_bytes(), key.to_bytes());

        // A sealed key that is not the committed one does not unlock.
        let mut swapped = t.gate.clone();
        swapped.host_pub_key = Some(EcJwk::from_verifying_key(
            SigningKey::from_bytes(&[12u8; 32].into())
                .unwrap()
                .verifying_key(),
        ));
        assert!(unlock_host_key(&swapped, "pass phrase").is_none());
    }
}
