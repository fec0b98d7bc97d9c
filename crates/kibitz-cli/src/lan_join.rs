//! `kibitz join --hub`: a terminal participant of an offline (LAN) room on a `kibitz hub`.

use anyhow::Context as _;
use kibitz_join::lan::{LanHandle, LanOptions, LanRoomEvent};
use kibitz_proto::lan::{blob_from_input, room_from_link};
use kibitz_proto::room::normalize_room;
use kibitz_rtc::Identity;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Joins the room `room` (or the link's fragment) through the hub `hub` as `name`, until
/// `/quit` or the end of stdin.
pub async fn run(hub: &str, room: Option<&str>, name: &str) -> anyhow::Result<()> {
    let blob = blob_from_input(hub).context("reading the --hub link or blob")?;
    let room = match room {
        Some(r) => normalize_room(r),
        None => room_from_link(hub).context("no ROOM given and the hub link names none (#room)")?,
    };
    let identity = Identity::generate().context("making a DTLS certificate")?;
    let (lan, mut events) = kibitz_join::lan::start(LanOptions::new(blob, &room, name, identity));
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    print(&mut out, &format!("* room {room} (offline, via the hub)")).await?;
    print(&mut out, "* connecting to the hub…").await?;
    let mut stdin_open = true;
    let mut view = View::default();
    loop {
        let text = tokio::select! {
            ev = events.recv() => match ev {
                Some(LanRoomEvent::Done) | None => break,
                Some(ev) => describe(&ev, &mut view),
            },
            line = lines.next_line(), if stdin_open => match line? {
                None => {
                    stdin_open = false;
                    lan.leave().await;
                    None
                }
                Some(l) => command(&lan, l.trim()).await,
            },
        };
        if let Some(t) = text {
            print(&mut out, &t).await?;
        }
    }
    print(&mut out, "* left the room").await?;
    Ok(())
}

async fn print(out: &mut tokio::io::Stdout, line: &str) -> anyhow::Result<()> {
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// What the printed lines depend on.
#[derive(Debug, Default)]
struct View {
    names: std::collections::BTreeMap<String, String>,
    was_connected: bool,
}

fn describe(ev: &LanRoomEvent, view: &mut View) -> Option<String> {
    let names = &mut view.names;
    Some(match ev {
        LanRoomEvent::Connected { id } if view.was_connected => {
            format!("* reconnected (id {id})")
        }
        LanRoomEvent::Connected { id } => {
            view.was_connected = true;
            format!("* connected (id {id})")
        }
        LanRoomEvent::Joined(m) => {
            names.insert(m.id.clone(), m.name.clone());
            format!("* {} joined", m.name)
        }
        LanRoomEvent::LinkOpen { peer } => {
            let who = names.get(peer).unwrap_or(peer);
            format!("* chat open with {who}")
        }
        LanRoomEvent::Reconnecting => "* reconnecting (lost the hub)…".into(),
        LanRoomEvent::Left { member, silent } if *silent => {
            format!("* {} left (gone silent)", member.name)
        }
        LanRoomEvent::Left { member, .. } => format!("* {} left", member.name),
        LanRoomEvent::Chat { name, text, .. } => format!("<{name}> {text}"),
        _ => return None,
    })
}

async fn command(lan: &LanHandle, line: &str) -> Option<String> {
    match line {
        "" => None,
        "/quit" => {
            lan.leave().await;
            None
        }
        "/who" => {
            let names: Vec<String> = lan
                .members()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.name)
                .collect();
            Some(format!("* in the room: you, {}", names.join(", ")))
        }
        l if l.starts_with('/') => Some("* commands: /who /quit".into()),
        text => match lan.chat(text).await {
            Ok(0) => Some("* nobody received that (nobody else is connected yet)".into()),
            Ok(_) => None,
            Err(e) => Some(format!("* {e}")),
        },
    }
}
