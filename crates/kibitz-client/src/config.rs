//! What a participant brings to a room, and the protocol's timings (KIBITZ.md §4.4).

use kibitz_proto::gate::GateDescriptor;
use kibitz_proto::presence::Meta;
use p256::ecdsa::{SigningKey, VerifyingKey};

use crate::verify::Verifier;

/// The protocol's timings, in milliseconds.
pub mod timing {
    /// A claim of `kbz-v1-<room>` that has not answered by then failed.
    pub const CLAIM_TIMEOUT_MS: u64 = 8_000;
    /// A presence connection that has not opened by then failed.
    pub const OPEN_TIMEOUT_MS: u64 = 15_000;
    /// Presence connection attempts before giving up on the authority.
    pub const CONNECT_ATTEMPTS: u32 = 4;
    /// Pause before retrying a failed claim or connection.
    pub const RETRY_MS: u64 = 3_000;
    /// Heartbeat on both sides of the presence star.
    pub const PING_MS: u64 = 2_500;
    /// A tick gap this long means this process was frozen: refresh liveness, do not reap.
    pub const FREEZE_GAP_MS: u64 = 6_000;
    /// Members silent this long are reaped.
    pub const REAP_MS: u64 = 12_000;
    /// An authority silent this long is given up on.
    pub const AUTHORITY_SILENCE_MS: u64 = 12_000;
    /// Pause between giving up on the authority and claiming its id (migration).
    pub const RECLAIM_DELAY_MS: u64 = 1_500;
    /// Re-announce `voice` this often while in the call.
    pub const REANNOUNCE_MS: u64 = 3_000;
    /// Extra announces after joining.
    pub const JOIN_ANNOUNCES_MS: [u64; 2] = [600, 1_800];
    /// Re-dial a mesh peer after a failed connection.
    pub const MESH_REDIAL_MS: u64 = 800;
    /// Mesh links to a peer the roster stopped listing are closed after this long (a roster
    /// gap during a broker blip or a migration must not tear the mesh down).
    pub const MESH_DROP_GRACE_MS: u64 = 7_000;
    /// The `mh` keepalive on every mesh sig channel.
    pub const MESH_KEEPALIVE_MS: u64 = 2_000;
    /// A sig channel whose keepalive stopped this long ago is dead, open or not.
    pub const SIG_DEAD_MS: u64 = 8_000;
    /// Frames for a member whose link is still opening wait at most this many, per member.
    pub const PENDING_MAX: usize = 64;
    /// ... and at most this long (ms).
    pub const PENDING_MS: u64 = 10_000;
    /// Media: an initiator whose peer showed no sign of owned media (`cap`, `m-sdp`, `m-dial`)
    /// this long after sig opened calls it the legacy way.
    pub const MEDIA_LEGACY_WAIT_MS: u64 = 2_000;
    /// Media heartbeat: `m-dial` from an answerer without a pc, the initiator's pc retry.
    pub const MEDIA_HEARTBEAT_MS: u64 = 2_000;
    /// Media: inbound below [`MEDIA_MIN_KBPS`] this long (while the peer says it sends), or
    /// nothing at all this long after connecting, starts a recovery.
    pub const MEDIA_RECOVER_MS: u64 = 9_000;
    /// Media: inbound below this (kbps) counts as no flow.
    pub const MEDIA_MIN_KBPS: u64 = 1;
    /// Media: recoveries before giving up (the budget resets when both directions flow).
    pub const MEDIA_MAX_RECOVERIES: u32 = 3;
    /// Media: a pc not connected this long after it was made is dropped and re-made.
    pub const MEDIA_STUCK_MS: u64 = 8_000;
    /// Media: ... at most this many times in a row.
    pub const MEDIA_STUCK_RETRIES: u32 = 3;
    /// Re-sign an agent assertion this often (it is valid for 300 s).
    pub const ASSERTION_RESIGN_MS: u64 = 240_000;
}

/// What the room link commits about its host (KIBITZ.md §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommit {
    /// No admin at all: every host command is dropped.
    None,
    /// Soft name: the first member announcing this name (trimmed, lowercased) is host.
    Name(String),
    /// OIDC email: the member proving this email (through the verifier) is host.
    Email(String),
    /// Password key: signed host commands verified against this key.
    Key(VerifyingKey),
}

impl HostCommit {
    /// The commitment a gate descriptor makes (a committed key wins over the other tiers).
    pub fn from_gate(gate: &GateDescriptor) -> Self {
        if let Some(key) = gate
            .host_pub_key
            .as_ref()
            .and_then(|k| k.to_verifying_key().ok())
        {
            Self::Key(key)
        } else if let (Some(email), Some(_)) = (&gate.host_email, &gate.client_id) {
            Self::Email(email.clone())
        } else if let Some(name) = &gate.host_name {
            Self::Name(name.clone())
        } else {
            Self::None
        }
    }

    /// Whether the tier is cryptographic (only then are `caps` frames honoured).
    pub fn is_cryptographic(&self) -> bool {
        matches!(self, Self::Email(_) | Self::Key(_))
    }
}

/// An agent's identity: its key for assertions, and what it discloses.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The agent key (`kbz-agent-key.v1` assertions are signed with it).
    pub key: Option<SigningKey>,
    /// Disclosed backend (model provider), shown to everyone.
    pub backend: Option<String>,
    /// Disclosed egress (content leaves the room).
    pub egress: bool,
}

/// Everything a participant brings to a room.
#[derive(Debug)]
pub struct RoomConfig {
    /// The room (normalised on use).
    pub room: String,
    /// Display name.
    pub name: String,
    /// Avatar (the web client sends `""` when none).
    pub avatar: String,
    /// Stable per-participant token (dedupes reconnects; kicks bind to it).
    pub token: String,
    /// Announced meta (the `~kbz` block and anything else).
    pub meta: Meta,
    /// Own DTLS certificate fingerprint (colon hex), which host commands and assertions bind to.
    pub fingerprint: Option<String>,
    /// The host commitment.
    pub host: HostCommit,
    /// Whether the room starts with the waiting room on (`gl=1`).
    pub lobby_on_start: bool,
    /// The unsealed host key (password tier), if this participant is the host.
    pub host_key: Option<SigningKey>,
    /// Credential sent as `jwt` (invite token, picked name or OIDC token).
    pub credential: Option<String>,
    /// Set when this participant is an agent.
    pub agent: Option<AgentIdentity>,
    /// The identity gate, when the room has one.
    pub verifier: Option<Box<dyn Verifier>>,
    /// Seed for the engine's own ids (host command `jti`s, message ids).
    pub seed: u64,
    /// Run the media plane (MEDIA.md): the engine emits media commands for the transport.
    pub media: bool,
    /// Camera on at start (`cam` in our announces; [`crate::Engine::set_cam`] changes it).
    pub cam: bool,
}

impl RoomConfig {
    /// A plain participant in an open room.
    pub fn new(room: &str, name: &str, token: &str) -> Self {
        Self {
            room: room.to_owned(),
            name: name.to_owned(),
            avatar: String::new(),
            token: token.to_owned(),
            meta: Meta::default(),
            fingerprint: None,
            host: HostCommit::None,
            lobby_on_start: false,
            host_key: None,
            credential: None,
            agent: None,
            verifier: None,
            seed: 0,
            media: true,
            cam: false,
        }
    }
}
