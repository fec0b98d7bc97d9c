//! What goes over a data connection, and how it is framed.

use kibitz_proto::binarypack;

/// How a data connection frames messages (the PeerJS `serialization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Serialization {
    /// BinaryPack, chunked above 16 300 bytes (`binary`; also accepts `binary-utf8` and
    /// `default` from a remote OFFER). What Kibitz uses everywhere.
    #[default]
    Binary,
    /// UTF-8 JSON in a binary frame, no chunking, refused from 16 300 bytes.
    Json,
    /// No framing: text frames and binary frames as they are.
    Raw,
}

impl Serialization {
    /// The value written in an OFFER.
    pub fn as_wire(self) -> &'static str {
        match self {
            Serialization::Binary => "binary",
            Serialization::Json => "json",
            Serialization::Raw => "raw",
        }
    }

    /// Reads an OFFER's `serialization`; `None` for ones this peer does not speak (`MsgPack`).
    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "binary" | "binary-utf8" | "default" => Some(Serialization::Binary),
            "json" => Some(Serialization::Json),
            "raw" => Some(Serialization::Raw),
            _ => None,
        }
    }
}

/// One message on a data connection. Which variants fit depends on the [`Serialization`]:
/// `Binary` carries [`Message::Pack`], `Json` carries [`Message::Json`], `Raw` carries
/// [`Message::Text`] and [`Message::Bytes`].
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A BinaryPack value (`binary` connections).
    Pack(binarypack::Value),
    /// A JSON value (`json` connections).
    Json(serde_json::Value),
    /// A text frame (`raw` connections).
    Text(String),
    /// A binary frame (`raw` connections).
    Bytes(Vec<u8>),
}

/// A data connection of one peer. Local, opaque and never reused within a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// How to open a data connection ([`crate::PeerHandle::connect`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectOptions {
    /// The channel label; `None` uses the connectionId, as PeerJS does.
    pub label: Option<String>,
    /// Framing; default `binary`.
    pub serialization: Serialization,
    /// `reliable` in the OFFER: an ordered channel when true (PeerJS channels are always fully
    /// retransmitted; `false` only makes them unordered). Default false, as in PeerJS.
    pub reliable: bool,
    /// Sent as the OFFER's `metadata`.
    pub metadata: Option<serde_json::Value>,
    /// The PeerJS connectionId; `None` draws `dc_` + 11 random base-36 characters.
    pub connection_id: Option<String>,
}

/// What a remote OFFER or a local connect asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnInfo {
    /// The PeerJS connectionId.
    pub connection_id: String,
    /// The channel label.
    pub label: String,
    /// Framing.
    pub serialization: Serialization,
    /// Ordered delivery.
    pub reliable: bool,
    /// The OFFER's `metadata`, if any.
    pub metadata: Option<serde_json::Value>,
}
