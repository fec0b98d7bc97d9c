//! Reload without restart: on SIGHUP, re-read the files behind the TLS certificate and
//! `/api/turn` (TURN secrets, Cloudflare token, grant secret, issuer keys, static iceServers)
//! and swap them in. Each part either changes whole or, when its files fail to load, keeps what
//! it has and logs why (never a secret's value). Counted in
//! `kibitz_reloads_total{part, outcome}`.

use kibitz_turn_api::{TurnArgs, TurnState};
use std::net::SocketAddr;

/// What a reload re-reads, and where the results go.
#[derive(Debug, Default)]
pub struct Reloader {
    /// `--tls-cert`/`--tls-key`.
    pub tls: Option<kibitz_http::PemTls>,
    /// `/api/turn`'s flags and the running service.
    pub turn: Option<(TurnArgs, TurnState)>,
    /// The embedded relay, which must accept what `/api/turn` mints, and its bound address.
    pub relay: Option<(kibitz_turn::TurnHandle, SocketAddr)>,
}

impl Reloader {
    /// Re-reads everything once; returns how many parts failed.
    pub fn reload(&self) -> usize {
        let mut failed = 0;
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    count("tls", "ok");
                    tracing::info!("reload: TLS certificate and key re-read");
                }
                Err(error) => {
                    count("tls", "failed");
                    failed += 1;
                    tracing::warn!(%error, "reload failed: keeping the TLS certificate in use");
                }
            }
        }
        if let Some((args, state)) = &self.turn {
            match self.reload_turn(args, state) {
                Ok(()) => {
                    count("turn", "ok");
                    tracing::info!("reload: /api/turn configuration re-read");
                }
                Err(error) => {
                    count("turn", "failed");
                    failed += 1;
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "reload failed: keeping /api/turn's secrets and lists in use"
                    );
                }
            }
        }
        failed
    }

    fn reload_turn(&self, args: &TurnArgs, state: &TurnState) -> anyhow::Result<()> {
        let mut config = args.to_config()?;
        let mut relay_auth = None;
        if let Some((relay, bound)) = &self.relay {
            let kibitz_turn_api::Backend::Hmac(hmac) = &config.backend else {
                anyhow::bail!("the embedded relay needs TURN secrets");
            };
            relay_auth = Some((
                relay,
                kibitz_turn::TurnAuth::RestSecrets(
                    hmac.secrets
                        .iter()
                        .map(|s| kibitz_turn::Secret::new(s.expose()))
                        .collect(),
                ),
            ));
            crate::turn_embedded::point_api_at(&mut config, *bound);
        }
        state.reload(config)?;
        // The relay learns the new secrets right after /api/turn: a credential minted in
        // between is signed with a secret the relay still lists during a rotation (NEW, OLD).
        if let Some((relay, auth)) = relay_auth {
            relay.set_auth(auth);
        }
        Ok(())
    }
}

fn count(part: &'static str, outcome: &'static str) {
    metrics::counter!("kibitz_reloads_total", "part" => part, "outcome" => outcome).increment(1);
}

/// A stream of SIGHUPs, installed now so that one arriving before the loop runs is not fatal
/// (the default action of SIGHUP ends the process).
#[cfg(unix)]
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads on every SIGHUP until `stop` resolves; hands the reloader back (it owns the relay).
#[cfg(unix)]
pub async fn run(
    reloader: Reloader,
    mut hangups: tokio::signal::unix::Signal,
    stop: impl std::future::Future<Output = ()>,
) -> Reloader {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            got = hangups.recv() => {
                if got.is_none() {
                    break;
                }
                tracing::info!("SIGHUP: reloading");
                // A few small files: read in place.
                let failed = reloader.reload();
                tracing::info!(failed, "SIGHUP: reload done");
            }
            () = &mut stop => break,
        }
    }
    reloader
}
