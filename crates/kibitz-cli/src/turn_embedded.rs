//! `kibitz serve --turn-embedded`: the `kibitz-turn` relay in-process, checking the REST
//! credentials `/api/turn` mints with the same secrets, so a single box needs no coturn.

use anyhow::{Context as _, bail};
use kibitz_turn::{Secret, TurnAuth, TurnConfig, TurnLimits};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

/// Embedded TURN relay flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedTurnArgs {
    /// Run a TURN relay (UDP only) in this process that accepts /api/turn's credentials (same
    /// --turn-secret); /api/turn then lists only its turn:…?transport=udp URL. coturn remains
    /// the production choice (TCP/TLS, relay port ranges, quotas per user).
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED")]
    pub turn_embedded: bool,
    /// UDP port of the embedded relay (0 = any free port); defaults to --turn-port. /api/turn
    /// advertises the port actually bound.
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_PORT", requires = "turn_embedded")]
    pub turn_embedded_port: Option<u16>,
    /// IP the embedded relay listens on and binds relay sockets on.
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_BIND", default_value = "0.0.0.0")]
    pub turn_embedded_bind: IpAddr,
    /// Relayed address advertised to clients (XOR-RELAYED-ADDRESS): the IP peers reach this
    /// host on. Defaults to the first --turn-host (resolved if it is a name).
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_ADVERTISE")]
    pub turn_embedded_advertise: Option<IpAddr>,
    /// REALM of the embedded relay; defaults to the first --turn-host, as coturn's `realm=`
    /// is set in our deploy files. Clients read it from the relay's 401 challenge.
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_REALM")]
    pub turn_embedded_realm: Option<String>,
    /// Most allocations at once (each is one UDP socket).
    #[arg(
        long,
        env = "KIBITZ_TURN_EMBEDDED_MAX_ALLOCATIONS",
        default_value_t = 1024
    )]
    pub turn_embedded_max_allocations: usize,
    /// Relay to loopback peers (127.0.0.0/8). For tests and single-machine trials only: it
    /// lets relay clients reach this host's loopback services.
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_ALLOW_LOOPBACK")]
    pub turn_embedded_allow_loopback: bool,
    /// Relay to private and link-local peers (10/8, 172.16/12, 192.168/16, 169.254/16, …).
    /// Off: nobody reaches this host's LAN or a cloud metadata address through the relay
    /// (coturn's `denied-peer-ip` in deploy/coturn). Turn on when the callers are on a LAN.
    #[arg(long, env = "KIBITZ_TURN_EMBEDDED_ALLOW_PRIVATE")]
    pub turn_embedded_allow_private: bool,
}

impl EmbeddedTurnArgs {
    /// The relay's configuration, given `/api/turn`'s (validated); `None` when off.
    pub fn to_config(&self, api: &kibitz_turn_api::Config) -> anyhow::Result<Option<TurnConfig>> {
        if !self.turn_embedded {
            return Ok(None);
        }
        let kibitz_turn_api::Backend::Hmac(hmac) = &api.backend else {
            bail!(
                "--turn-embedded needs /api/turn's hmac backend (--turn-secret or --turn-secret-file, and --turn-host)"
            );
        };
        let Some(host) = hmac.hosts.first() else {
            bail!("--turn-embedded needs --turn-host");
        };
        let advertised = match self.turn_embedded_advertise {
            Some(ip) => ip,
            None => resolve(host)?,
        };
        if advertised.is_unspecified() {
            bail!("--turn-embedded-advertise must be an address peers can reach, not {advertised}");
        }
        let bind = match (self.turn_embedded_bind, advertised) {
            // One address family throughout: an IPv6 advertisement needs an IPv6 bind.
            (IpAddr::V4(b), IpAddr::V6(_)) if b.is_unspecified() => {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            }
            (b, a) if b.is_ipv4() != a.is_ipv4() => {
                bail!("--turn-embedded-bind {b} and the advertised {a} are different families")
            }
            (b, _) => b,
        };
        let port = self.turn_embedded_port.unwrap_or(hmac.port);
        Ok(Some(TurnConfig {
            listen: SocketAddr::new(bind, port),
            relay_ip: bind,
            advertised_ip: advertised,
            realm: self
                .turn_embedded_realm
                .clone()
                .unwrap_or_else(|| host.clone()),
            auth: TurnAuth::RestSecrets(
                hmac.secrets
                    .iter()
                    .map(|s| Secret::new(s.expose()))
                    .collect(),
            ),
            limits: TurnLimits {
                max_allocations: self.turn_embedded_max_allocations,
                allow_loopback_peers: self.turn_embedded_allow_loopback,
                allow_private_peers: self.turn_embedded_allow_private,
                ..TurnLimits::default()
            },
        }))
    }
}

/// `host` as an IP: itself if it is one, else its first IPv4 address (then any).
fn resolve(host: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .with_context(|| {
            format!("resolving --turn-host {host} for the embedded relay (or set --turn-embedded-advertise)")
        })?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("--turn-host {host} has no address"))
}

/// `/api/turn` points at the embedded relay: its bound port, UDP only.
pub fn point_api_at(api: &mut kibitz_turn_api::Config, bound: SocketAddr) {
    if let kibitz_turn_api::Backend::Hmac(h) = &mut api.backend {
        h.port = bound.port();
        h.tcp = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> EmbeddedTurnArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: EmbeddedTurnArgs,
        }
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        <P as clap::Parser>::parse_from(v).a
    }

    fn api(host: &str) -> kibitz_turn_api::Config {
        kibitz_turn_api::Config::hmac(vec!["s1".into(), "s2".into()], host, 3478)
    }

    #[test]
    fn off_unless_asked() {
        assert!(args(&[]).to_config(&api("1.2.3.4")).unwrap().is_none());
    }

    #[test]
    fn defaults_follow_turn_host_and_port() {
        let c = args(&["--turn-embedded"])
            .to_config(&api("203.0.113.7"))
            .unwrap()
            .unwrap();
        assert_eq!(c.listen, "0.0.0.0:3478".parse().unwrap());
        assert_eq!(c.advertised_ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.realm, "203.0.113.7");
        assert!(!c.limits.allow_loopback_peers);
        assert!(!c.limits.allow_private_peers);
        let TurnAuth::RestSecrets(s) = c.auth else {
            panic!()
        };
        assert_eq!(s.len(), 2);
        assert!(!format!("{s:?}").contains("s1"));
    }

    #[test]
    fn explicit_flags_and_errors() {
        let c = args(&[
            "--turn-embedded",
            "--turn-embedded-port",
            "0",
            "--turn-embedded-bind",
            "127.0.0.1",
            "--turn-embedded-advertise",
            "127.0.0.1",
            "--turn-embedded-realm",
            "kibitz.test",
            "--turn-embedded-allow-loopback",
        ])
        .to_config(&api("turn.example.org"))
        .unwrap()
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.realm, "kibitz.test");
        assert!(c.limits.allow_loopback_peers);
        // Not the hmac backend.
        let none = kibitz_turn_api::Config::default();
        assert!(args(&["--turn-embedded"]).to_config(&none).is_err());
        // Unspecified advertisement, mixed families.
        let e = args(&["--turn-embedded", "--turn-embedded-advertise", "0.0.0.0"]);
        assert!(e.to_config(&api("x")).is_err());
        let e = args(&[
            "--turn-embedded",
            "--turn-embedded-bind",
            "127.0.0.1",
            "--turn-embedded-advertise",
            "::1",
        ]);
        assert!(e.to_config(&api("x")).is_err());
    }

    #[test]
    fn point_api_lists_the_bound_udp_port() {
        let mut a = api("127.0.0.1");
        point_api_at(&mut a, "127.0.0.1:40000".parse().unwrap());
        let kibitz_turn_api::Backend::Hmac(h) = &a.backend else {
            panic!()
        };
        assert_eq!((h.port, h.tcp), (40000, false));
    }
}
