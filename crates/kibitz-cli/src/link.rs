//! `kibitz link`: make room links the Kibitz app opens, and read pasted ones.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kibitz_proto::gate::{GateDescriptor, GateMode, UrlParams, with_gate_fragment};
use kibitz_proto::link::{NewHost, commit_host_password, parse_room_target, room_link, share_link};
use kibitz_proto::room::{fresh_room, normalize_room};
use kibitz_proto::token::SigningKey;
use rand_core::OsRng;

/// Make or read Kibitz room links.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    #[command(subcommand)]
    cmd: LinkCmd,
}

#[derive(Debug, clap::Subcommand)]
enum LinkCmd {
    /// Print a new room link (the room exists once someone opens it).
    New(NewArgs),
    /// Print what a pasted link or room code opens, as JSON {room, signalingId, gate}.
    Parse(ParseArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// Room name, normalised (lowercase, [a-z0-9-], 40 characters); default: a fresh
    /// unguessable id such as ember-a3f9k2mq7p.
    #[arg(long)]
    room: Option<String>,
    /// Origin of the Kibitz app that opens the link.
    #[arg(
        long,
        env = "KIBITZ_LINK_ORIGIN",
        default_value = "https://kibitz.chat"
    )]
    origin: String,
    /// Host by name: whoever joins under this name moderates (no proof; spoofable).
    #[arg(long, group = "host")]
    host_name: Option<String>,
    /// Host by verified email: whoever signs in as this email moderates (needs --oauth-client-id).
    #[arg(long, group = "host", requires = "oauth_client_id")]
    host_email: Option<String>,
    /// OAuth client id for sign-ins (public; rides the link).
    #[arg(long)]
    oauth_client_id: Option<String>,
    /// Host by password: a file (or - for stdin) holding the host password, trimmed. The link
    /// carries a fresh host public key and its private key sealed under the password.
    #[arg(long, group = "host")]
    host_password_file: Option<PathBuf>,
    /// Start the room with the waiting room on.
    #[arg(long)]
    lobby: bool,
    /// Names gate: joiners pick one of these names (comma-separated).
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// Names an open room offers to "declare who you are" (comma-separated; display only).
    #[arg(long, value_delimiter = ',')]
    declare: Vec<String>,
    /// Room description shown to joiners (at most 80 characters are kept).
    #[arg(long)]
    description: Option<String>,
    /// Print the /j/<room> share link instead (only for a room without gate, host or description).
    #[arg(long)]
    share: bool,
}

#[derive(Debug, clap::Args)]
struct ParseArgs {
    /// A room link (…/#room, …/j/room, …?room=room) or a bare room code.
    link: String,
    /// Origin the link is opened on (its query is kept only when the link is from this origin).
    #[arg(
        long,
        env = "KIBITZ_LINK_ORIGIN",
        default_value = "https://kibitz.chat"
    )]
    origin: String,
}

/// Runs `kibitz link …`, printing to stdout.
pub fn run(args: LinkArgs) -> anyhow::Result<()> {
    let out = match args.cmd {
        LinkCmd::New(new) => new_link(new)?,
        LinkCmd::Parse(p) => {
            let target = parse_room_target(&p.link, &p.origin)?;
            serde_json::to_string_pretty(&target)?
        }
    };
    println!("{out}");
    Ok(())
}

fn new_link(args: NewArgs) -> anyhow::Result<String> {
    let room = match &args.room {
        Some(name) => {
            let room = normalize_room(name);
            if room.is_empty() {
                bail!("--room {name:?} has no letters or digits");
            }
            room
        }
        None => fresh_room(&mut OsRng),
    };

    let mut gate = GateDescriptor::default();
    let names: Vec<String> = trimmed(&args.names);
    if !names.is_empty() {
        gate.mode = GateMode::Names;
        gate.names = names;
    }
    gate.declare = trimmed(&args.declare);
    gate.lobby_on_start = args.lobby;
    if let Some(id) = &args.oauth_client_id {
        gate.client_id = Some(id.trim().to_owned()).filter(|id| !id.is_empty());
    }
    if let Some(name) = &args.host_name {
        NewHost::Name(non_empty(name, "--host-name")?).commit(&mut gate);
    }
    if let Some(email) = &args.host_email {
        let Some(client_id) = gate.client_id.clone() else {
            bail!("--host-email needs a non-empty --oauth-client-id");
        };
        NewHost::Oidc {
            email: non_empty(email, "--host-email")?,
            client_id,
        }
        .commit(&mut gate);
    }
    if let Some(file) = &args.host_password_file {
        let password = read_password(file)?;
        let key = SigningKey::random(&mut OsRng);
        commit_host_password(&mut gate, &key, &password, &mut OsRng)?;
    }

    let description = args
        .description
        .as_deref()
        .map(description)
        .unwrap_or_default();
    if args.share {
        if gate != GateDescriptor::default() || !description.is_empty() {
            bail!(
                "--share makes a bare /j/<room> link: it cannot carry a gate, host or description"
            );
        }
        return Ok(share_link(&args.origin, &room)?);
    }
    let link = room_link(&args.origin, &room, &gate)?;
    if description.is_empty() {
        return Ok(link);
    }
    let mut d = UrlParams::default();
    d.push("d", &description);
    Ok(with_gate_fragment(&link, &d.encode()))
}

fn trimmed(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn non_empty(value: &str, flag: &str) -> anyhow::Result<String> {
    let value = value.trim();
    if value.is_empty() {
        bail!("{flag} is empty");
    }
    Ok(value.to_owned())
}

/// The description as the create page keeps it: trimmed, at most 80 UTF-16 units.
fn description(text: &str) -> String {
    let mut units = 0;
    text.trim()
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= 80
        })
        .collect()
}

fn read_password(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the host password from stdin")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the host password from {}", file.display()))?;
    }
    let password = text.trim();
    if password.is_empty() {
        bail!("the host password is empty");
    }
    Ok(password.to_owned())
}
