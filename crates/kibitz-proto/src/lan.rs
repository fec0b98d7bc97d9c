//! Kibitz's offline mode (LAN.md): the hub link blob, the WebRTC answer a browser synthesises
//! from it, the hub's JSON channel frames, and the LAN room payloads that ride `to`/`from`.
//!
//! The hub never sends SDP: a browser (or `kibitz join --hub`) builds the hub's answer from the
//! blob alone ([`synthesize_answer`]), so the blob's shape and the answer's lines are a contract
//! with the deployed web client and must not drift.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The well-known hub identity upstream publishes (LAN.md §6): with it a browser can discover a
/// hub on UDP 4711 with nothing handed to it.
pub mod fixed {
    /// ICE username fragment.
    pub const UFRAG: &str = "wbxlanhub01";
    /// ICE password.
    pub const PWD: &str = "774B1GNZgs48OidH45A7DZx";
    /// base64url SHA-256 of the fixed certificate's DER.
    pub const FINGERPRINT_B64: &str = "iMQvZo7x61ukUXjDvSJnKmr3PFy6iDvHSa9XV3mb_kA";
    /// The UDP port discovery probes.
    pub const PORT: u16 = 4711;
    /// The fixed TURN port, user and password.
    pub const TURN_PORT: u16 = 3478;
    /// The fixed TURN user.
    pub const TURN_USER: &str = "wblan";
    /// The fixed TURN password.
    pub const TURN_PASS: &str = "Sp64SHsXMZOdzT6rgYcF";
}

/// The TURN realm of the hub's embedded relay.
pub const TURN_REALM: &str = "kibitz";

/// The largest message the synthesised answer advertises (`a=max-message-size`).
pub const MAX_MESSAGE_SIZE: usize = 262_144;

/// Why a blob was refused (the web client's `parseGalaxyBlob` rules, LAN.md §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Nothing after trimming.
    #[error("empty hub blob")]
    Empty,
    /// Fewer than five `|`-separated fields.
    #[error("hub blob has too few fields")]
    TooFewFields,
    /// Field 0 is neither `g1` nor `g2`.
    #[error("hub blob version is not g1 or g2")]
    Version,
    /// ufrag, pwd or fingerprint is empty.
    #[error("hub blob lacks ICE credentials or fingerprint")]
    MissingField,
    /// The fingerprint is not base64url of 32 bytes.
    #[error("hub blob fingerprint is not 32 bytes of base64url")]
    Fingerprint,
    /// No endpoint survived parsing.
    #[error("hub blob has no usable endpoint")]
    NoEndpoint,
    /// A link without a `galaxy=` parameter.
    #[error("no galaxy= parameter in the link")]
    NoBlobInLink,
}

/// One address the hub listens on: an IPv4 literal or a `.local` name, and the UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv4 literal or `.local` name.
    pub addr: String,
    /// UDP port (1–65535).
    pub port: u16,
}

/// The hub's embedded TURN relay as a g2 blob names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnInfo {
    /// UDP port of the relay (on every dotted-quad endpoint).
    pub port: u16,
    /// Long-term credential user.
    pub user: String,
    /// Long-term credential password.
    pub pass: String,
}

/// A parsed hub blob: `g1|ufrag|pwd|fp|ep…` or `g2|ufrag|pwd|fp|port,user,pass|ep…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// ICE username fragment.
    pub ufrag: String,
    /// ICE password.
    pub pwd: String,
    /// SHA-256 of the hub's certificate DER.
    pub fingerprint: [u8; 32],
    /// The relay, when the blob is g2 and its TURN field is well formed.
    pub turn: Option<TurnInfo>,
    /// Where the hub listens, in preference order.
    pub endpoints: Vec<Endpoint>,
}

impl Blob {
    /// The fingerprint as SDP wants it: upper-case hex pairs joined by `:`.
    pub fn fingerprint_sdp(&self) -> String {
        colon_hex(&self.fingerprint)
    }

    /// The `turn:` URLs the web client derives (`turnServersFor`): one per distinct dotted-quad
    /// endpoint, `.local` names skipped; empty without TURN.
    pub fn turn_urls(&self) -> Vec<String> {
        let Some(turn) = &self.turn else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for ep in &self.endpoints {
            if ep.addr.parse::<std::net::Ipv4Addr>().is_err() {
                continue;
            }
            let url = format!("turn:{}:{}?transport=udp", ep.addr, turn.port);
            if !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }
}

impl fmt::Display for Blob {
    /// `buildGalaxyBlob`: g2 when there is a relay, else g1.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp = URL_SAFE_NO_PAD.encode(self.fingerprint);
        match &self.turn {
            Some(t) => write!(
                f,
                "g2|{}|{}|{fp}|{},{},{}",
                self.ufrag, self.pwd, t.port, t.user, t.pass
            )?,
            None => write!(f, "g1|{}|{}|{fp}", self.ufrag, self.pwd)?,
        }
        for ep in &self.endpoints {
            write!(f, "|{}~{}", ep.addr, ep.port)?;
        }
        Ok(())
    }
}

/// Parses a blob with the web client's rules (`parseGalaxyBlob`, LAN.md §2): bad endpoints are
/// dropped, a malformed g2 TURN field leaves the blob valid without TURN.
pub fn parse_blob(raw: &str) -> Result<Blob, BlobError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(BlobError::Empty);
    }
    let parts: Vec<&str> = raw.split('|').collect();
    if parts.len() < 5 {
        return Err(BlobError::TooFewFields);
    }
    let g2 = match parts[0] {
        "g1" => false,
        "g2" => true,
        _ => return Err(BlobError::Version),
    };
    let (ufrag, pwd, fp) = (parts[1], parts[2], parts[3]);
    if ufrag.is_empty() || pwd.is_empty() || fp.is_empty() {
        return Err(BlobError::MissingField);
    }
    let fingerprint: [u8; 32] = URL_SAFE_NO_PAD
        .decode(fp)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(BlobError::Fingerprint)?;
    let (turn, first_ep) = if g2 {
        (parse_turn_field(parts[4]), 5)
    } else {
        (None, 4)
    };
    let endpoints: Vec<Endpoint> = parts[first_ep..]
        .iter()
        .filter_map(|s| parse_endpoint(s))
        .collect();
    if endpoints.is_empty() {
        return Err(BlobError::NoEndpoint);
    }
    Ok(Blob {
        ufrag: ufrag.to_owned(),
        pwd: pwd.to_owned(),
        fingerprint,
        turn,
        endpoints,
    })
}

/// A blob from what a user pastes: a bare blob, or a link with `?galaxy=<blob>` (percent-encoded
/// or not; the `#room` fragment is ignored).
pub fn blob_from_input(input: &str) -> Result<Blob, BlobError> {
    let input = input.trim();
    if input.starts_with("g1|") || input.starts_with("g2|") {
        return parse_blob(input);
    }
    let Some(start) = input.find("galaxy=") else {
        return Err(BlobError::NoBlobInLink);
    };
    let before = input[..start].chars().last();
    if !matches!(before, Some('?') | Some('&')) {
        return Err(BlobError::NoBlobInLink);
    }
    let rest = &input[start + "galaxy=".len()..];
    let end = rest.find(['&', '#']).unwrap_or(rest.len());
    let value: String = form_urlencoded::parse(format!("g={}", &rest[..end]).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    parse_blob(&value)
}

/// The room a hub link's fragment names (`…?galaxy=…#<room>[?…]`), normalised, if any.
pub fn room_from_link(input: &str) -> Option<String> {
    let frag = input.split_once('#')?.1;
    let room = frag.split(['?', '&']).next().unwrap_or_default();
    let room = crate::room::normalize_room(room);
    (!room.is_empty()).then_some(room)
}

fn parse_turn_field(field: &str) -> Option<TurnInfo> {
    let mut it = field.split(',');
    let port = parse_port(it.next()?)?;
    let user = it.next()?;
    let pass = it.next()?;
    if user.is_empty() || pass.is_empty() {
        return None;
    }
    Some(TurnInfo {
        port,
        user: user.to_owned(),
        pass: pass.to_owned(),
    })
}

fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let at = s.rfind('~')?;
    if at == 0 {
        return None;
    }
    Some(Endpoint {
        addr: s[..at].to_owned(),
        port: parse_port(&s[at + 1..])?,
    })
}

/// JavaScript's `parseInt` accepts leading digits; the web then range-checks. Upstream's
/// parser takes `Number(x)` with an integer check, so require all digits.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

/// `AB:CD:…` upper-case hex.
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// base64url without padding of a SHA-256 digest, the blob's `fp` field.
pub fn fingerprint_b64(digest: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(digest)
}

/// The hub's answer exactly as the web client synthesises it (LAN.md §3), for `offer`: the mid
/// is the offer's first `a=mid:` (default `0`); one host candidate per endpoint.
pub fn synthesize_answer(offer_sdp: &str, blob: &Blob) -> String {
    let mid = offer_sdp
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .unwrap_or("0");
    let mut lines = vec![
        "v=0".to_owned(),
        "o=- 1 1 IN IP4 127.0.0.1".to_owned(),
        "s=-".to_owned(),
        "t=0 0".to_owned(),
        "a=ice-lite".to_owned(),
        format!("a=group:BUNDLE {mid}"),
        "a=msid-semantic: WMS".to_owned(),
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel".to_owned(),
        "c=IN IP4 0.0.0.0".to_owned(),
        format!("a=ice-ufrag:{}", blob.ufrag),
        format!("a=ice-pwd:{}", blob.pwd),
        format!("a=fingerprint:sha-256 {}", blob.fingerprint_sdp()),
        "a=setup:passive".to_owned(),
        format!("a=mid:{mid}"),
        "a=sctp-port:5000".to_owned(),
        format!("a=max-message-size:{MAX_MESSAGE_SIZE}"),
    ];
    for (i, ep) in blob.endpoints.iter().enumerate() {
        lines.push(format!(
            "a=candidate:{} 1 udp {} {} {} typ host generation 0",
            i + 1,
            2_130_706_431u32.saturating_sub(i as u32),
            ep.addr,
            ep.port
        ));
    }
    let mut sdp = lines.join("\r\n");
    sdp.push_str("\r\n");
    sdp
}

/// The hub's own mDNS name: `kbz-` + the first 8 lowercase alphanumerics of the ufrag (or
/// `relay` when it has none) + `.local`.
pub fn mdns_name(ufrag: &str) -> String {
    let tag: String = ufrag
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(8)
        .collect();
    let tag = if tag.is_empty() { "relay".into() } else { tag };
    format!("kbz-{tag}.local")
}

/// A frame a client sends the hub (LAN.md §4). Payloads stay raw: the hub relays them verbatim.
#[derive(Debug)]
pub enum ClientFrame {
    /// `{"t":"join","room":"…"}`.
    Join {
        /// The room key, compared exactly.
        room: String,
    },
    /// `{"t":"peers"}`.
    Peers,
    /// `{"t":"to","id":N,"payload":…}`.
    To {
        /// Destination hub id.
        id: u64,
        /// The payload's JSON text, verbatim (`null` when absent).
        payload: Box<RawValue>,
    },
    /// `{"t":"echo","x":…}`.
    Echo {
        /// The value's JSON text, verbatim (`null` when absent).
        x: Box<RawValue>,
    },
}

#[derive(Deserialize)]
struct RawClientFrame<'a> {
    #[serde(borrow)]
    t: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    x: Option<&'a RawValue>,
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable_null())
}

// `null` is valid JSON; serde_json cannot refuse it.
#[allow(clippy::unreachable)]
fn unreachable_null() -> Box<RawValue> {
    unreachable!("null is valid JSON")
}

/// Parses a client frame; `None` for anything the hub ignores (invalid JSON, unknown `t`, an id
/// that is not a non-negative JSON integer, a room that is not a string).
pub fn parse_client_frame(text: &str) -> Option<ClientFrame> {
    let raw: RawClientFrame<'_> = serde_json::from_str(text).ok()?;
    let t: String = serde_json::from_str(raw.t?.get()).ok()?;
    let keep = |v: Option<&RawValue>| v.map(|v| v.to_owned()).unwrap_or_else(null);
    match t.as_str() {
        "join" => Some(ClientFrame::Join {
            room: serde_json::from_str(raw.room?.get()).ok()?,
        }),
        "peers" => Some(ClientFrame::Peers),
        "to" => Some(ClientFrame::To {
            id: serde_json::from_str(raw.id?.get()).ok()?,
            payload: keep(raw.payload),
        }),
        "echo" => Some(ClientFrame::Echo { x: keep(raw.x) }),
        _ => None,
    }
}

/// `{"t":"id","id":N}`.
pub fn id_frame(id: u64) -> String {
    format!(r#"{{"t":"id","id":{id}}}"#)
}

/// `{"t":"peers","ids":[…]}`.
pub fn peers_frame(ids: &[u64]) -> String {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!(r#"{{"t":"peers","ids":[{}]}}"#, list.join(","))
}

/// `{"t":"from","id":N,"payload":<raw>}`.
pub fn from_frame(id: u64, payload: &RawValue) -> String {
    format!(r#"{{"t":"from","id":{id},"payload":{}}}"#, payload.get())
}

/// `{"t":"echo","x":<raw>}`.
pub fn echo_frame(x: &RawValue) -> String {
    format!(r#"{{"t":"echo","x":{}}}"#, x.get())
}

/// `{"t":"join","room":"…"}`.
pub fn join_frame(room: &str) -> String {
    serde_json::json!({"t": "join", "room": room}).to_string()
}

/// `{"t":"to","id":N,"payload":…}`.
pub fn to_frame(id: u64, payload: &serde_json::Value) -> String {
    serde_json::json!({"t": "to", "id": id, "payload": payload}).to_string()
}

/// A frame the hub sends a client, as a client reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
#[non_exhaustive]
pub enum HubFrame {
    /// The session's id, first frame on the channel.
    Id {
        /// Hub id.
        id: u64,
    },
    /// Ids in the requester's room, itself included.
    Peers {
        /// Hub ids.
        ids: Vec<u64>,
    },
    /// A payload another session sent us.
    From {
        /// Sender's hub id.
        id: u64,
        /// What it sent.
        #[serde(default)]
        payload: serde_json::Value,
    },
    /// The answer to `echo`.
    Echo {
        /// What we sent.
        #[serde(default)]
        x: serde_json::Value,
    },
}

/// A LAN room payload (LAN.md §7), tagged by `k`, riding inside `to`/`from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
#[non_exhaustive]
pub enum LanMsg {
    /// Broadcast on connect; receivers re-announce.
    Hi,
    /// Presence, every 2.5 s while in the call.
    Present {
        /// Display name.
        #[serde(default)]
        name: String,
        /// Camera on.
        #[serde(default)]
        cam: bool,
        /// Avatar (emoji or URL).
        #[serde(default)]
        avatar: String,
        /// Optional metadata, opaque here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<serde_json::Value>,
    },
    /// Leaving.
    Bye,
    /// WebRTC signaling to one peer.
    Sig {
        /// `{d:{type,sdp}}` or `{c:{candidate,…}}`.
        payload: SigPayload,
    },
}

/// The `sig` payload: a description or a trickled candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SigPayload {
    /// `{d:{type:"offer"|"answer",sdp}}`.
    Description {
        /// The description.
        d: Description,
    },
    /// `{c:{candidate,sdpMid,sdpMLineIndex,usernameFragment}}`.
    Candidate {
        /// The candidate init.
        c: CandidateInit,
    },
}

/// An `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP.
    pub sdp: String,
}

/// An `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateInit {
    /// `candidate:…` line (may be empty at end of gathering).
    pub candidate: String,
    /// The m-line's mid.
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    /// The m-line index.
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u32>,
    /// The generation's ufrag.
    #[serde(rename = "usernameFragment", default)]
    pub username_fragment: Option<String>,
}

/// JavaScript's default string order for the dial rule ("10" < "9"): the member whose hub id,
/// as a decimal string, sorts first dials.
pub fn lan_dials(my_id: u64, other_id: u64) -> bool {
    my_id.to_string() < other_id.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fp_seq() -> [u8; 32] {
        let mut fp = [0u8; 32];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = ((i * 7) % 256) as u8;
        }
        fp
    }

    #[test]
    fn g1_worked_example_round_trips() {
        let s = "g1|uf|pw|AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK-2vcTL0tk|192.168.1.5~4711";
        let b = parse_blob(s).unwrap();
        assert_eq!(b.fingerprint, fp_seq());
        assert_eq!(b.turn, None);
        assert_eq!(
            b.endpoints,
            vec![Endpoint {
                addr: "192.168.1.5".into(),
                port: 4711
            }]
        );
        assert_eq!(b.to_string(), s);
    }

    #[test]
    fn g2_worked_example_round_trips() {
        let fp = fingerprint_b64(&fp_seq());
        let s = format!(
            "g2|wbxlanhub01|secretpwd|{fp}|3478,wblan,turnpass|192.168.42.1~4711|kbz-ab12cd.local~4711"
        );
        let b = parse_blob(&s).unwrap();
        assert_eq!(
            b.turn,
            Some(TurnInfo {
                port: 3478,
                user: "wblan".into(),
                pass: "turnpass".into()
            })
        );
        assert_eq!(b.endpoints.len(), 2);
        assert_eq!(b.to_string(), s);
        assert_eq!(b.turn_urls(), vec!["turn:192.168.42.1:3478?transport=udp"]);
    }

    #[test]
    fn g2_with_bad_turn_is_valid_without_turn() {
        let s = format!("g2|uf|pw|{}|notaport|192.168.1.5~4711", "A".repeat(43));
        let b = parse_blob(&s).unwrap();
        assert_eq!(b.turn, None);
        assert_eq!(b.endpoints.len(), 1);
        assert!(b.turn_urls().is_empty());
    }

    #[test]
    fn rejections() {
        let fp = "A".repeat(43);
        assert_eq!(parse_blob("  "), Err(BlobError::Empty));
        assert_eq!(parse_blob("g1|a|b|c"), Err(BlobError::TooFewFields));
        assert_eq!(
            parse_blob(&format!("g3|a|b|{fp}|1.2.3.4~1")),
            Err(BlobError::Version)
        );
        assert_eq!(
            parse_blob(&format!("g1||b|{fp}|1.2.3.4~1")),
            Err(BlobError::MissingField)
        );
        assert_eq!(
            parse_blob("g1|a|b|AAAA|1.2.3.4~1"),
            Err(BlobError::Fingerprint)
        );
        assert_eq!(
            parse_blob(&format!("g1|a|b|{fp}|~1|x~0|y~70000|z~|w")),
            Err(BlobError::NoEndpoint)
        );
        // Split at the LAST `~`.
        let b = parse_blob(&format!("g1|a|b|{fp}|we~ird~9")).unwrap();
        assert_eq!(b.endpoints[0].addr, "we~ird");
    }

    #[test]
    fn blob_from_links() {
        let blob = "g1|uf|pw|AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK-2vcTL0tk|192.168.1.5~4711";
        let raw = format!("https://kibitz.chat/?galaxy={blob}");
        assert_eq!(blob_from_input(&raw).unwrap().to_string(), blob);
        let enc: String = form_urlencoded::byte_serialize(blob.as_bytes()).collect();
        let link = format!("https://kibitz.chat/?x=1&galaxy={enc}#ember-a3f9k2mq7p?d=1");
        assert_eq!(blob_from_input(&link).unwrap().to_string(), blob);
        assert_eq!(room_from_link(&link).as_deref(), Some("ember-a3f9k2mq7p"));
        assert_eq!(
            blob_from_input("https://x/?nogalaxy=1").unwrap_err(),
            BlobError::NoBlobInLink
        );
    }

    #[test]
    fn answer_lines() {
        let b = parse_blob(&format!(
            "g1|uf|pw|{}|127.0.0.1~4711|kbz-x.local~4711",
            fingerprint_b64(&fp_seq())
        ))
        .unwrap();
        let a = synthesize_answer("v=0\r\na=mid:data\r\n", &b);
        assert!(a.contains("a=group:BUNDLE data\r\n"));
        assert!(a.contains("a=fingerprint:sha-256 00:07:0E:"));
        assert!(
            a.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 4711 typ host generation 0\r\n")
        );
        assert!(a.contains("a=candidate:2 1 udp 2130706430 kbz-x.local 4711 typ host"));
        assert!(synthesize_answer("v=0\r\n", &b).contains("a=mid:0\r\n"));
    }

    #[test]
    fn mdns_names() {
        assert_eq!(mdns_name(fixed::UFRAG), "kbz-wbxlanhu.local");
        assert_eq!(mdns_name("AB"), "kbz-ab.local");
        assert_eq!(mdns_name("--"), "kbz-relay.local");
        // upstream mdns_test: stable per ufrag, `kbz-` + [a-z0-9] + `.local`, ufrags differ.
        for uf in ["Xy7Qa9Lm", "wbxlanhub01", "a-b_c", "ZZZZZZZZZZZZ"] {
            let n = mdns_name(uf);
            assert_eq!(n, mdns_name(uf));
            let tag = n
                .strip_prefix("kbz-")
                .and_then(|t| t.strip_suffix(".local"));
            let tag = tag.unwrap_or_else(|| panic!("{n}"));
            assert!(!tag.is_empty() && tag.len() <= 8, "{n}");
            assert!(
                tag.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{n}"
            );
        }
        assert_ne!(mdns_name("Xy7Qa9Lm"), mdns_name("Pq2Rs8Tu"));
    }

    #[test]
    fn client_frames() {
        assert!(matches!(
            parse_client_frame(r#"{"t":"join","room":"a"}"#),
            Some(ClientFrame::Join { room }) if room == "a"
        ));
        assert!(parse_client_frame(r#"{"t":"join","room":5}"#).is_none());
        assert!(parse_client_frame(r#"{"t":"to","id":1.5}"#).is_none());
        assert!(parse_client_frame(r#"{"t":"to","id":"1"}"#).is_none());
        assert!(parse_client_frame(r#"{"t":"to","id":-1}"#).is_none());
        assert!(parse_client_frame(r#"{"t":"nope"}"#).is_none());
        assert!(parse_client_frame("not json").is_none());
        assert!(parse_client_frame("[1]").is_none());
        match parse_client_frame(r#"{"t":"to","id":3,"payload":{"k":"hi"}}"#) {
            Some(ClientFrame::To { id, payload }) => {
                assert_eq!(id, 3);
                assert_eq!(
                    from_frame(7, &payload),
                    r#"{"t":"from","id":7,"payload":{"k":"hi"}}"#
                );
            }
            other => panic!("{other:?}"),
        }
        match parse_client_frame(r#"{"t":"to","id":3}"#) {
            Some(ClientFrame::To { payload, .. }) => assert_eq!(payload.get(), "null"),
            other => panic!("{other:?}"),
        }
        match parse_client_frame(r#"{"t":"echo"}"#) {
            Some(ClientFrame::Echo { x }) => assert_eq!(echo_frame(&x), r#"{"t":"echo","x":null}"#),
            other => panic!("{other:?}"),
        }
        assert_eq!(peers_frame(&[]), r#"{"t":"peers","ids":[]}"#);
        assert_eq!(peers_frame(&[1, 2]), r#"{"t":"peers","ids":[1,2]}"#);
        let f: HubFrame = serde_json::from_str(&id_frame(4)).unwrap();
        assert_eq!(f, HubFrame::Id { id: 4 });
    }

    #[test]
    fn lan_payloads() {
        let m: LanMsg = serde_json::from_str(
            r#"{"k":"present","name":"A","cam":false,"avatar":"🦊","meta":{"x":1}}"#,
        )
        .unwrap();
        assert!(matches!(m, LanMsg::Present { ref name, .. } if name == "A"));
        let s: LanMsg = serde_json::from_str(
            r#"{"k":"sig","payload":{"c":{"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}}"#,
        )
        .unwrap();
        assert!(matches!(
            s,
            LanMsg::Sig {
                payload: SigPayload::Candidate { .. }
            }
        ));
        let d = serde_json::to_value(LanMsg::Sig {
            payload: SigPayload::Description {
                d: Description {
                    kind: "offer".into(),
                    sdp: "v=0".into(),
                },
            },
        })
        .unwrap();
        assert_eq!(d["payload"]["d"]["type"], "offer");
        assert_eq!(serde_json::to_string(&LanMsg::Hi).unwrap(), r#"{"k":"hi"}"#);
        assert!(lan_dials(10, 9));
        assert!(!lan_dials(9, 10));
    }
}
