//! The TOML config file: every flag of a command may also be a key in the file (`listen =
//! "0.0.0.0:443"`, `turn-secret-file = "/etc/kibitz/turn-secret"`). Flags win over the
//! environment, which wins over the file; unknown keys are errors.
//!
//! How: the file's values become extra command-line flags for the ones neither given on the
//! command line nor set in the environment, and the command line is parsed again, so every
//! value goes through clap's own parsing and validation.

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

/// The parsed command line plus the flags the config file supplied.
#[derive(Debug)]
pub struct Loaded {
    /// The full command line after the file's values were added.
    pub args: Vec<OsString>,
    /// Long names of the flags whose values came from the file.
    pub from_file: BTreeSet<String>,
}

/// The deepest subcommand chosen, with its matches.
fn leaf<'a>(cmd: &'a Command, m: &'a ArgMatches) -> (&'a Command, &'a ArgMatches) {
    match m.subcommand() {
        Some((name, sub)) => match cmd.find_subcommand(name) {
            Some(c) => leaf(c, sub),
            None => (cmd, m),
        },
        None => (cmd, m),
    }
}

/// Adds the config file's values (`--config` or `KIBITZ_CONFIG`) to `args`.
pub fn load(cmd: &Command, args: Vec<OsString>) -> anyhow::Result<Loaded> {
    // On a usage error, --help or --version, the real parse reports it.
    let Ok(matches) = cmd.clone().try_get_matches_from(&args) else {
        return Ok(Loaded {
            args,
            from_file: BTreeSet::new(),
        });
    };
    let (leaf_cmd, leaf_m) = leaf(cmd, &matches);
    let path = leaf_m
        .try_get_one::<std::path::PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let Some(path) = path else {
        return Ok(Loaded {
            args,
            from_file: BTreeSet::new(),
        });
    };
    let extra = file_args(leaf_cmd, leaf_m, &path)?;
    let from_file = extra.iter().map(|(k, _)| k.clone()).collect();
    let mut args = args;
    for (key, value) in extra {
        args.push(format!("--{key}").into());
        if let Some(v) = value {
            args.push(v.into());
        }
    }
    Ok(Loaded { args, from_file })
}

/// `(long name, value)` pairs for the file's keys that the command line and environment leave
/// unset; `None` for a boolean flag that is on.
fn file_args(
    cmd: &Command,
    m: &ArgMatches,
    path: &Path,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            bail!(
                "{}: unknown key `{key}` for `{}` (see --help)",
                path.display(),
                cmd.get_name()
            );
        };
        let given = matches!(
            m.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        match value {
            toml::Value::Boolean(on) if !takes_value => {
                if on {
                    out.push((long, None));
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    out.push((long.clone(), Some(scalar(&key, item)?)));
                }
            }
            other => out.push((long, Some(scalar(&key, other)?))),
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("`{key}`: expected a string, number, boolean or a list of them"),
    })
}

/// Whether a flag holds a secret (its value is never printed).
fn is_secret(arg: &clap::Arg) -> bool {
    arg.is_hide_env_values_set()
        || arg
            .get_long()
            .is_some_and(|l| (l.contains("secret") || l.contains("token")) && !l.ends_with("-file"))
}

/// The effective configuration of the chosen command, one `key = value  # source` per line,
/// secrets masked.
pub fn describe(cmd: &Command, m: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let (leaf_cmd, leaf_m) = leaf(cmd, m);
    let mut out = String::new();
    for arg in leaf_cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let id = arg.get_id().as_str();
        let Ok(Some(raw)) = leaf_m.try_get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let shown = if is_secret(arg) && !values.is_empty() {
            "\"***\"".to_owned()
        } else if values.len() == 1 {
            format!("{:?}", values[0])
        } else {
            format!("{values:?}")
        };
        let source = if from_file.contains(long) {
            "file"
        } else {
            match leaf_m.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                _ => "default",
            }
        };
        out.push_str(&format!("{long} = {shown}  # {source}\n"));
    }
    out
}
