//! `kibitz join` (a terminal participant) and `kibitz agent` (newline-delimited JSON on
//! stdin/stdout, so any program can be an agent).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use kibitz_client::verify::GateVerifier;
use kibitz_client::{AgentIdentity, Event, HostCommit, Participant, RoomConfig, Status};
use kibitz_join::media::MediaConfig;
use kibitz_join::select::{broker_from, broker_from_api, http_client, relay_from_api};
use kibitz_join::{HostAction, RoomHandle, RoomOptions};
use kibitz_media::AudioSource;
use kibitz_proto::content::Content;
use kibitz_proto::gate::GateMode;
use kibitz_proto::link::{RoomTarget, parse_room_target, unlock_host_key};
use kibitz_proto::presence::{KbzMeta, LobbyStatus, Meta, PROTOCOL_VERSION, feature};
use kibitz_rtc::{BrokerError, ClientTls, ClientTlsError, ClientTlsOptions, Identity};
use rand_core::{OsRng, RngCore as _};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc::UnboundedReceiver;

const DEFAULT_ORIGIN: &str = "https://kibitz.chat";

/// Where a participant connects, and as whom.
#[derive(Debug, clap::Args)]
pub struct RoomArgs {
    /// A room link (https://…/#room, /j/room) or a room code; with --hub, the LAN room
    /// (default: the hub link's #fragment).
    #[arg(required_unless_present = "hub")]
    target: Option<String>,
    /// Offline mode: a `kibitz hub` link (…?galaxy=<blob>#room) or bare blob; joins the LAN
    /// room through that hub instead of a broker.
    #[arg(long, env = "KIBITZ_HUB")]
    pub(crate) hub: Option<String>,
    /// Display name.
    #[arg(long, env = "KIBITZ_NAME")]
    name: Option<String>,
    /// The broker: a host (wss://HOST:443/peerjs, as Kibitz's signalHost), wss://host:port or
    /// ws://host:port. Default: ask the link's origin (`/api/signal`).
    #[arg(long, env = "KIBITZ_SIGNAL_HOST")]
    signal_host: Option<String>,
    /// Where /api/turn is: a host[:port] (https://HOST/api/turn) or a full URL.
    #[arg(long, env = "KIBITZ_TURN_HOST")]
    turn_host: Option<String>,
    /// Hide your IP: connect only through the TURN relay from --turn-host; no relay, no
    /// connection.
    #[arg(long, env = "KIBITZ_RELAY_ONLY", requires = "turn_host")]
    relay_only: bool,
    /// File holding the host password (unseals the link's host key: you moderate).
    #[arg(long, env = "KIBITZ_HOST_PASSWORD_FILE")]
    host_password_file: Option<PathBuf>,
    /// Credential for a gated room: an invite token or a picked name (default: the link's).
    #[arg(long, env = "KIBITZ_CREDENTIAL")]
    credential: Option<String>,
    /// Stable identity token (reconnects are recognised by it); default: a fresh one.
    #[arg(long, env = "KIBITZ_TOKEN")]
    token: Option<String>,
    /// Also trust the certificates in this PEM file (a company CA, or the certificate
    /// `kibitz serve --tls-self-signed-out` wrote), for every connection: the broker,
    /// /api/signal and /api/turn. Repeatable; the web roots and the system's store are
    /// trusted anyway. Env: comma-separated.
    #[arg(
        long = "ca-cert",
        env = "KIBITZ_CA_CERT",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    ca_certs: Vec<PathBuf>,
    /// Accept TLS certificates that do not verify, for every connection, but only from
    /// servers on loopback and private addresses (anything else is refused); each one
    /// accepted is logged as a warning. Local testing only: prefer --ca-cert.
    #[arg(long, env = "KIBITZ_INSECURE")]
    insecure: bool,
    #[command(flatten)]
    media: MediaArgs,
}

/// What a participant sends and keeps of the call's audio and video.
#[derive(Debug, clap::Args)]
pub struct MediaArgs {
    /// The microphone: `silence` (muted, as a browser joins: real silence flows), `tone:HZ`,
    /// or a WAV file (played once, then silence); anything but `silence` starts unmuted.
    #[arg(long, env = "KIBITZ_AUDIO_IN", default_value = "silence")]
    audio_in: String,
    /// The camera: `none`, or `pattern[:WxH]` (a VP8 test pattern, default 320x240).
    #[arg(long, env = "KIBITZ_VIDEO_IN", default_value = "none")]
    video_in: String,
    /// Record every remote participant here: a 48 kHz WAV per audio lane, a frame log and an
    /// IVF per video lane, named `<name>-<voiceId>-<lane>`.
    #[arg(long, env = "KIBITZ_RECORD")]
    record: Option<PathBuf>,
    /// Data only: no audio or video connections at all.
    #[arg(long, env = "KIBITZ_NO_MEDIA")]
    no_media: bool,
}

impl MediaArgs {
    fn config(&self) -> anyhow::Result<MediaConfig> {
        let audio_in = AudioSource::parse(&self.audio_in)
            .with_context(|| format!("--audio-in {:?}", self.audio_in))?;
        let video = match self.video_in.as_str() {
            "none" => None,
            "pattern" => Some((320, 240)),
            v => {
                let size = v
                    .strip_prefix("pattern:")
                    .and_then(|s| s.split_once('x'))
                    .and_then(|(w, h)| Some((w.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
                    .filter(|&(w, h)| (16..=1920).contains(&w) && (16..=1080).contains(&h));
                Some(size.with_context(|| {
                    format!(
                        "--video-in {v:?}: use none, pattern or pattern:WxH (16x16 to 1920x1080)"
                    )
                })?)
            }
        };
        if let Some(dir) = &self.record {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating --record {}", dir.display()))?;
        }
        Ok(MediaConfig {
            audio_in,
            muted: self.audio_in == "silence",
            record: self.record.clone(),
            pcm: None,
            video,
        })
    }
}

/// A terminal participant.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    #[command(flatten)]
    room: RoomArgs,
}

/// An agent speaking newline-delimited JSON on stdin/stdout.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    room: RoomArgs,
    /// Disclosed model backend (shown to everyone, e.g. "local llama").
    #[arg(long, env = "KIBITZ_AGENT_BACKEND")]
    backend: Option<String>,
    /// Disclose that content leaves the room (egress).
    #[arg(long, env = "KIBITZ_AGENT_EGRESS")]
    egress: bool,
}

fn origin_of(target: &str) -> String {
    url::Url::parse(target)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|| DEFAULT_ORIGIN.to_owned())
}

fn random_token() -> String {
    let mut b = [0u8; 12];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

fn meta() -> Meta {
    Meta {
        kbz: Some(KbzMeta {
            v: Some(env!("CARGO_PKG_VERSION").to_owned()),
            p: Some(PROTOCOL_VERSION),
            f: Some(vec![
                feature::CHAT_V1.into(),
                feature::APP_V1.into(),
                feature::CAPS_V1.into(),
            ]),
            ..KbzMeta::default()
        }),
        ..Meta::default()
    }
}

/// The verifier a gated link asks the coordinator (whoever that is) to run.
fn verifier(target: &RoomTarget) -> Option<Box<dyn kibitz_client::verify::Verifier>> {
    let gate = &target.gate;
    let v = match gate.mode {
        GateMode::Names if !gate.names.is_empty() => GateVerifier {
            names: Some(gate.names.clone()),
            ..GateVerifier::default()
        },
        GateMode::Invite => GateVerifier {
            invite_key: gate
                .pub_key
                .as_ref()
                .and_then(|k| k.to_verifying_key().ok()),
            ..GateVerifier::default()
        },
        _ => return None,
    };
    Some(Box::new(v))
}

async fn connect(
    args: &RoomArgs,
    default_name: &str,
    agent: Option<AgentIdentity>,
) -> anyhow::Result<(RoomHandle, UnboundedReceiver<Event>, RoomTarget)> {
    let raw = args
        .target
        .as_deref()
        .context("a room link or code is needed")?;
    let origin = origin_of(raw);
    let target = parse_room_target(raw, &origin).with_context(|| format!("reading {raw:?}"))?;
    let media = args.media.config()?;
    // One TLS configuration for every connection this participant makes.
    let tls = ClientTls::new(&ClientTlsOptions {
        ca_certs: args.ca_certs.clone(),
        insecure: args.insecure,
    })
    .context("--ca-cert")?;
    let client = http_client(&tls)?;
    let mut broker = match &args.signal_host {
        Some(h) => broker_from(h)?,
        None => broker_from_api(&client, &origin)
            .await
            .map_err(explain_select)?,
    };
    broker.tls = Some(tls);
    // The room would retry an untrusted broker forever: say so now instead.
    if broker.secure {
        match kibitz_rtc::check_broker(&broker).await {
            Ok(()) => {}
            Err(e @ BrokerError::Certificate(_)) => return Err(explain(e.into(), true)),
            Err(e @ BrokerError::ClientTls(ClientTlsError::NotPrivate { .. })) => {
                return Err(e.into());
            }
            Err(e) => tracing::warn!(error = %e, "the broker is not reachable yet; retrying"),
        }
    }
    let relay = match (&args.turn_host, args.relay_only) {
        (Some(t), true) => Some(
            relay_from_api(&client, t)
                .await
                .map_err(explain_select)?
                .ok_or_else(|| kibitz_join::select::SelectError::NoRelay(t.clone()))?,
        ),
        _ => None,
    };
    // A direct participant still keeps the relay for media a peer asks to rebuild
    // relay-only (the last recovery rung); without one that rung just fails.
    let media_relay = match (&args.turn_host, args.relay_only) {
        (Some(t), false) => match relay_from_api(&client, t).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no TURN relay for media rebuilds");
                None
            }
        },
        _ => None,
    };
    let mut cfg = RoomConfig::new(
        &target.room,
        args.name.as_deref().unwrap_or(default_name),
        &args.token.clone().unwrap_or_else(random_token),
    );
    cfg.meta = meta();
    cfg.host = HostCommit::from_gate(&target.gate);
    cfg.lobby_on_start = target.gate.lobby_on_start;
    cfg.credential = args
        .credential
        .clone()
        .or_else(|| target.gate.guest_token.clone());
    cfg.verifier = verifier(&target);
    cfg.agent = agent;
    cfg.seed = OsRng.next_u64();
    cfg.media = !args.media.no_media;
    if let Some(file) = &args.host_password_file {
        let password =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        cfg.host_key = Some(
            unlock_host_key(&target.gate, &password)
                .context("the host password does not open this link's host key")?,
        );
    }
    let identity = Identity::generate().context("making a DTLS certificate")?;
    let (handle, events) = kibitz_join::start_with_media(
        cfg,
        RoomOptions {
            media_relay,
            broker,
            relay,
            identity,
        },
        media,
    );
    handle.join();
    Ok((handle, events, target))
}

/// What to do about a TLS failure, in the terms of this command's flags.
fn explain(e: anyhow::Error, certificate: bool) -> anyhow::Error {
    if certificate {
        e.context(
            "the server's TLS certificate is not trusted (trust its CA, or the certificate \
             itself, with --ca-cert FILE or in the system's store; for a test server on a \
             loopback or private address, --insecure)",
        )
    } else {
        e
    }
}

fn explain_select(e: kibitz_join::select::SelectError) -> anyhow::Error {
    let certificate = matches!(
        e,
        kibitz_join::select::SelectError::Api {
            certificate: true,
            ..
        }
    );
    explain(e.into(), certificate)
}

fn status_line(s: &Status) -> String {
    match s {
        Status::Idle => "* starting".into(),
        Status::Claiming => "* looking for the room…".into(),
        Status::Connecting => "* connecting to the room…".into(),
        Status::Connected => "* connected".into(),
        Status::Authority => "* connected (you coordinate the room)".into(),
        Status::Reconnecting { reason } => format!("* reconnecting ({reason})…"),
        Status::Left { reason } => format!("* left the room ({reason})"),
    }
}

fn lobby_line(s: LobbyStatus) -> &'static str {
    match s {
        LobbyStatus::Waiting => "* waiting in the lobby for the host to let you in",
        LobbyStatus::Admitted => "* the host let you in",
        LobbyStatus::Denied => "* the host turned you away",
        LobbyStatus::Locked => "* the room is locked",
        LobbyStatus::Unverified => "* your credential was not accepted",
    }
}

fn roster_line(ps: &[Participant]) -> String {
    let names: Vec<String> = ps
        .iter()
        .map(|p| {
            let mut n = p.name.clone();
            if p.is_self {
                n.push_str(" (you)");
            }
            if p.is_host {
                n.push_str(" (host)");
            }
            if p.meta.as_ref().is_some_and(Meta::is_agent) {
                n.push_str(" (agent)");
            }
            n
        })
        .collect();
    format!("* in the room: {}", names.join(", "))
}

/// Runs a session until the room is left: events and typed lines in, lines printed out.
/// Closing stdin leaves the room.
async fn session<S>(
    room: &RoomHandle,
    mut events: UnboundedReceiver<Event>,
    mut state: S,
    on_event: impl Fn(&Event, &mut S) -> (Option<String>, bool),
    on_line: impl AsyncFn(&RoomHandle, &str) -> (Option<String>, bool),
) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let (text, done) = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => on_event(&ev, &mut state),
                None => break,
            },
            line = lines.next_line() => match line? {
                None => {
                    room.leave().await;
                    break;
                }
                Some(l) if l.trim().is_empty() => (None, false),
                Some(l) => on_line(room, l.trim()).await,
            },
        };
        if let Some(mut t) = text {
            t.push('\n');
            out.write_all(t.as_bytes()).await?;
            out.flush().await?;
        }
        if done {
            break;
        }
    }
    Ok(())
}

/// `kibitz join`.
pub async fn run_join(args: JoinArgs) -> anyhow::Result<()> {
    if let Some(hub) = &args.room.hub {
        let name = args.room.name.as_deref().unwrap_or("Guest");
        return crate::lan_join::run(hub, args.room.target.as_deref(), name).await;
    }
    let (room, events, target) = connect(&args.room, "Guest", None).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("* room {}\n", target.room).as_bytes())
        .await?;
    out.flush().await?;
    session(
        &room,
        events,
        BTreeMap::new(),
        describe,
        async |room: &RoomHandle, line: &str| (command(room, line).await, line == "/quit"),
    )
    .await
}

/// What to print for an event, and whether the session is over.
fn describe(ev: &Event, names: &mut BTreeMap<String, String>) -> (Option<String>, bool) {
    match ev {
        Event::Status(s) => (Some(status_line(s)), matches!(s, Status::Left { .. })),
        Event::Participants(ps) => {
            *names = ps.iter().map(|p| (p.id.clone(), p.name.clone())).collect();
            (Some(roster_line(ps)), false)
        }
        Event::Lobby(s) => (Some(lobby_line(*s).into()), false),
        Event::LobbyQueue(q) if !q.is_empty() => {
            let list: Vec<String> = q
                .iter()
                .map(|k| format!("{} (/admit {})", k.name, k.id))
                .collect();
            (Some(format!("* knocking: {}", list.join(", "))), false)
        }
        Event::Message(m) => {
            let who = names
                .get(&m.from)
                .cloned()
                .unwrap_or_else(|| m.from.clone());
            let text = match &m.content {
                Content::Chat(c) if m.direct => format!("<{who} → you> {}", c.text),
                Content::Chat(c) => format!("<{who}> {}", c.text),
                Content::App { data } => format!("<{who}> [app data: {}]", kind_of(data)),
                other => format!("<{who}> [{}]", content_kind(other)),
            };
            (Some(text), false)
        }
        Event::Reset => (Some("* the host cleared the chat".into()), false),
        Event::Grants(_) => (Some("* the host changed what members may do".into()), false),
        Event::HostCommandRefused { reason } => {
            (Some(format!("* refused a host command: {reason}")), false)
        }
        Event::MediaConnected { voice_id, .. } => {
            let who = names
                .get(voice_id)
                .cloned()
                .unwrap_or_else(|| voice_id.clone());
            (Some(format!("* audio and video with {who}")), false)
        }
        Event::VideoSize {
            voice_id,
            lane,
            width,
            height,
        } if *width > 2 => {
            let who = names
                .get(voice_id)
                .cloned()
                .unwrap_or_else(|| voice_id.clone());
            (
                Some(format!("* {who}'s {} is {width}x{height}", lane.as_str())),
                false,
            )
        }
        _ => (None, false),
    }
}

fn kind_of(v: &kibitz_proto::binarypack::Value) -> &'static str {
    use kibitz_proto::binarypack::Value;
    match v {
        Value::Map(_) => "object",
        Value::Array(_) => "array",
        Value::Str(_) => "string",
        Value::Bin(_) => "binary",
        _ => "value",
    }
}

fn content_kind(c: &Content) -> String {
    kibitz_proto::binarypack::to_value(c)
        .ok()
        .and_then(|v| v.get("k").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "content".into())
}

async fn find(room: &RoomHandle, who: &str) -> Option<Participant> {
    let ps = room.participants().await.ok()?;
    let lower = who.to_lowercase();
    ps.into_iter()
        .find(|p| p.id == who || p.name.to_lowercase() == lower)
}

/// Runs one typed line: chat, or a `/command`. Returns what to print.
async fn command(room: &RoomHandle, line: &str) -> Option<String> {
    if line.is_empty() {
        return None;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return match room.chat(line, None).await {
            Ok(Ok(0)) => Some("* nobody received that (nobody else is connected yet)".into()),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("* not sent: {e}")),
            Err(e) => Some(format!("* {e}")),
        };
    };
    let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    let arg = arg.trim();
    let host = |r: Result<(), kibitz_join::HostActionError>| r.err().map(|e| format!("* {e}"));
    match cmd {
        "who" => Some(roster_line(&room.participants().await.unwrap_or_default())),
        "dm" => {
            let (who, text) = arg.split_once(' ').unwrap_or((arg, ""));
            let Some(p) = find(room, who).await else {
                return Some(format!("* nobody called {who}"));
            };
            match room.chat(text, Some(&p.id)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("* not sent: {e}")),
                Err(e) => Some(format!("* {e}")),
            }
        }
        "kick" => {
            let Some(p) = find(room, arg).await else {
                return Some(format!("* nobody called {arg}"));
            };
            host(room.host(HostAction::Remove(p.id)).await)
        }
        "lock" => host(room.host(HostAction::Lock(true)).await),
        "unlock" => host(room.host(HostAction::Lock(false)).await),
        "lobby" => host(room.host(HostAction::Lobby(arg != "off")).await),
        "admit" => host(room.host(HostAction::Admit(arg.to_owned())).await),
        "deny" => host(room.host(HostAction::Deny(arg.to_owned())).await),
        "reset" => host(room.host(HostAction::Reset).await),
        "mute" => {
            room.set_muted(true);
            Some("* muted (silence flows)".into())
        }
        "unmute" => {
            room.set_muted(false);
            Some("* unmuted".into())
        }
        "play" => match AudioSource::parse(arg) {
            Ok(src) => {
                room.play(src);
                room.set_muted(false);
                Some(format!("* playing {arg}"))
            }
            Err(e) => Some(format!("* cannot play {arg}: {e}")),
        },
        "quit" => {
            room.leave().await;
            None
        }
        _ => Some("* commands: /who /dm NAME TEXT /mute /unmute /play FILE.wav|tone:HZ /kick NAME /lock /unlock /lobby on|off /admit ID /deny ID /reset /quit".into()),
    }
}

/// `kibitz agent`.
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    if args.room.hub.is_some() {
        anyhow::bail!("kibitz agent does not support --hub yet; use kibitz join --hub");
    }
    let agent = AgentIdentity {
        key: None,
        backend: args.backend.clone(),
        egress: args.egress,
    };
    let (room, events, target) = connect(&args.room, "Agent", Some(agent)).await?;
    let mut out = tokio::io::stdout();
    emit(&mut out, json!({"event": "room", "room": target.room})).await?;
    session(
        &room,
        events,
        (),
        |ev, _| {
            let left = matches!(ev, Event::Status(Status::Left { .. }));
            (agent_event(ev).map(|v| v.to_string()), left)
        },
        async |room: &RoomHandle, line: &str| {
            (agent_op(room, line).await.map(|v| v.to_string()), false)
        },
    )
    .await
}

async fn emit(out: &mut tokio::io::Stdout, v: serde_json::Value) -> anyhow::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    out.write_all(s.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

fn participant_json(p: &Participant) -> serde_json::Value {
    json!({
        "id": p.id, "name": p.name, "self": p.is_self, "host": p.is_host,
        "agent": p.meta.as_ref().is_some_and(Meta::is_agent),
        "grant": serde_json::to_value(&p.grant).unwrap_or_default(),
    })
}

fn agent_event(ev: &Event) -> Option<serde_json::Value> {
    Some(match ev {
        Event::Status(s) => {
            let (status, reason) = match s {
                Status::Idle | Status::Claiming | Status::Connecting => ("connecting", None),
                Status::Connected | Status::Authority => ("connected", None),
                Status::Reconnecting { reason } => ("reconnecting", Some(reason.clone())),
                Status::Left { reason } => ("left", Some(reason.clone())),
            };
            json!({"event": "status", "status": status, "reason": reason})
        }
        Event::Participants(ps) => {
            json!({"event": "participants", "participants": ps.iter().map(participant_json).collect::<Vec<_>>()})
        }
        Event::Lobby(s) => json!({"event": "lobby", "status": s}),
        Event::Message(m) => {
            let mut v = json!({"event": "message", "from": m.from, "direct": m.direct});
            match &m.content {
                Content::Chat(c) => {
                    v["kind"] = "chat".into();
                    v["text"] = c.text.clone().into();
                }
                Content::App { data } => {
                    v["kind"] = "app".into();
                    v["data"] = serde_json::to_value(data).unwrap_or_default();
                }
                other => v["kind"] = content_kind(other).into(),
            }
            v
        }
        Event::Grants(_) => json!({"event": "grants"}),
        Event::Reset => json!({"event": "reset"}),
        Event::MediaConnected { voice_id, mode } => {
            json!({"event": "media", "with": voice_id, "connected": true, "mode": format!("{mode:?}").to_lowercase()})
        }
        Event::MediaDisconnected { voice_id } => {
            json!({"event": "media", "with": voice_id, "connected": false})
        }
        Event::Track { voice_id, lane } => {
            json!({"event": "track", "from": voice_id, "lane": lane.as_str(), "kind": if lane.is_audio() { "audio" } else { "video" }})
        }
        Event::VideoSize {
            voice_id,
            lane,
            width,
            height,
        } => {
            json!({"event": "video", "from": voice_id, "lane": lane.as_str(), "width": width, "height": height})
        }
        Event::Speaking {
            voice_id,
            speaking,
            level,
        } => {
            json!({"event": "speaking", "from": voice_id, "speaking": speaking, "level": (f64::from(*level) * 1000.0).round() / 1000.0})
        }
        _ => return None,
    })
}

async fn agent_op(room: &RoomHandle, line: &str) -> Option<serde_json::Value> {
    let err = |e: String| Some(json!({"event": "error", "error": e}));
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return err("not a JSON object".into());
    };
    let to = v.get("to").and_then(|t| t.as_str());
    let sent = |r: Result<Result<usize, kibitz_client::SendError>, kibitz_join::Stopped>| match r {
        Ok(Ok(n)) => Some(json!({"event": "sent", "recipients": n})),
        Ok(Err(e)) => err(e.to_string()),
        Err(e) => err(e.to_string()),
    };
    match v.get("op").and_then(|o| o.as_str()) {
        Some("chat") => {
            let Some(text) = v.get("text").and_then(|t| t.as_str()) else {
                return err("chat needs text".into());
            };
            sent(room.chat(text, to).await)
        }
        Some("app") => {
            let data = v.get("data").cloned().unwrap_or_default();
            let Ok(data) = serde_json::from_value(data) else {
                return err("app data must be JSON".into());
            };
            sent(room.app(data, to).await)
        }
        Some("who") => {
            let ps = room.participants().await.unwrap_or_default();
            Some(
                json!({"event": "participants", "participants": ps.iter().map(participant_json).collect::<Vec<_>>()}),
            )
        }
        Some("credit") => {
            room.set_agent_credit(v.get("jwt").and_then(|j| j.as_str()).map(str::to_owned));
            None
        }
        Some("leave") => {
            room.leave().await;
            None
        }
        Some("mute") => {
            room.set_muted(true);
            None
        }
        Some("unmute") => {
            room.set_muted(false);
            None
        }
        Some("play") => {
            let Some(file) = v.get("file").and_then(|f| f.as_str()) else {
                return err("play needs file (a WAV path, or tone:HZ)".into());
            };
            match AudioSource::parse(file) {
                Ok(src) => {
                    room.play(src);
                    room.set_muted(false);
                    None
                }
                Err(e) => err(format!("cannot play: {e}")),
            }
        }
        _ => err("unknown op: use chat, app, who, credit, mute, unmute, play or leave".into()),
    }
}
