//! The client's address when Kibitz Edge runs behind reverse proxies or load balancers: the
//! one code path every service uses for per-IP limits and DEBUG logs.
//!
//! [`serve`](crate::serve) works out each connection's socket address (from the PROXY
//! protocol header with `--proxy-protocol`, else from the TCP peer) and, per request, the
//! [`ClientIp`]: for a request from a `--trusted-proxy` address, the right-most address in
//! the forwarding header that is not itself trusted; otherwise the socket address. Headers
//! from untrusted peers are ignored, so a client cannot choose its own address.
//!
//! Only one header is read (`--client-ip-header`, `X-Forwarded-For` by default): a proxy
//! passes headers it does not write through untouched, so reading the other one as well
//! would let clients pick their address through an honest proxy.

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderName, header};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The address per-IP limits and logs use for a request, set by [`serve`](crate::serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The client IP of a request: [`ClientIp`] when [`serve`](crate::serve) set it, else the
    /// address in `ConnectInfo` (a router served some other way), else `None`.
    pub fn of(ext: &Extensions) -> Option<IpAddr> {
        ext.get::<ClientIp>().map(|c| c.0).or_else(|| {
            ext.get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_canonical())
        })
    }
}

/// Which header trusted proxies write the client's address to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy `option forwardfor`, most load
    /// balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1;proto=https, …`.
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => header::FORWARDED,
        }
    }
}

/// Who may say where a request came from. The default trusts nobody: the client IP is the
/// socket address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts `nets`, reading `header` from them.
    pub fn new(nets: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self {
            nets: nets.into(),
            header,
        }
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client IP of a request that arrived from `peer` with `headers`. From a trusted
    /// peer: walking the header from the right, the first address that is not trusted; where
    /// an entry cannot be read (`unknown`, an obfuscated name, garbage) the walk stops at the
    /// trusted hop that wrote it; when every entry is trusted, the left-most. From anyone
    /// else, or without the header: `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut hop = peer;
        // Repeated header lines form one list, in order.
        for value in headers.get_all(self.header.name()).iter().rev() {
            let Ok(value) = value.to_str() else {
                return hop;
            };
            for entry in value.rsplit(',') {
                let parsed = match self.header {
                    ForwardedHeader::XForwardedFor => parse_addr(entry.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(entry),
                };
                let Some(ip) = parsed else {
                    return hop;
                };
                if !self.trusts(ip) {
                    return ip;
                }
                hop = ip;
            }
        }
        hop
    }
}

/// The `for=` address of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    parse_addr(value)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(ip.to_canonical())
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`127.0.0.1`, `::1`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR range (like 10.0.0.0/8)"))
}

/// Listener flags about proxies in front of Kibitz Edge, for every service on the listener.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// A reverse proxy or load balancer to trust (CIDR or address; repeat, or comma-separated
    /// in the env): for requests from it, the client IP is read from --client-ip-header.
    /// Requests from other addresses are judged by their own address, whatever they send.
    #[arg(
        long = "trusted-proxy",
        env = "KIBITZ_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_cidr
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies write the client address to; only this one is read.
    #[arg(
        long,
        env = "KIBITZ_CLIENT_IP_HEADER",
        value_enum,
        default_value_t = ForwardedHeader::XForwardedFor
    )]
    pub client_ip_header: ForwardedHeader,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy
    /// `send-proxy`, nginx `proxy_protocol on` and cloud load balancers send it); its source
    /// address is the connection's address. Connections without a valid header are closed.
    #[arg(long, env = "KIBITZ_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
}

impl ProxyArgs {
    /// The trusted proxies these flags name.
    pub fn trusted(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.clone(), self.client_ip_header)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trusting(nets: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter().map(|n| parse_cidr(n).unwrap()).collect(),
            header,
        )
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_peer() {
        let t = trusting(&["127.0.0.1", "10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let peer = ip("127.0.0.1");
        let h = headers("x-forwarded-for", &["203.0.113.9, 198.51.100.7, 10.1.2.3"]);
        assert_eq!(
            t.client_ip(peer, &h),
            ip("198.51.100.7"),
            "right-most untrusted"
        );
        let h = headers("x-forwarded-for", &["203.0.113.9", "198.51.100.7:4711"]);
        assert_eq!(
            t.client_ip(peer, &h),
            ip("198.51.100.7"),
            "lines join, port cut"
        );
        let h = headers("x-forwarded-for", &["[2001:db8::7]:443"]);
        assert_eq!(t.client_ip(peer, &h), ip("2001:db8::7"));
        let h = headers("x-forwarded-for", &["10.9.9.9, 10.1.2.3"]);
        assert_eq!(
            t.client_ip(peer, &h),
            ip("10.9.9.9"),
            "all trusted: left-most"
        );
        let h = headers("x-forwarded-for", &["198.51.100.7, garbage, 10.1.2.3"]);
        assert_eq!(
            t.client_ip(peer, &h),
            ip("10.1.2.3"),
            "stops at the hop that wrote it"
        );
        let h = headers("x-forwarded-for", &["garbage, 198.51.100.7"]);
        assert_eq!(t.client_ip(peer, &h), ip("198.51.100.7"));
        let h = headers("x-forwarded-for", &[""]);
        assert_eq!(t.client_ip(peer, &h), peer);
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer, "no header");
        let h = headers("x-forwarded-for", &["::ffff:198.51.100.7"]);
        assert_eq!(t.client_ip(peer, &h), ip("198.51.100.7"), "v4-mapped");
        let h = headers("forwarded", &["for=198.51.100.7"]);
        assert_eq!(t.client_ip(peer, &h), peer, "the other header is not read");
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let h = headers("x-forwarded-for", &["198.51.100.7"]);
        let peer = ip("192.0.2.1");
        let t = trusting(&["127.0.0.1/32"], ForwardedHeader::XForwardedFor);
        assert_eq!(t.client_ip(peer, &h), peer);
        assert_eq!(TrustedProxies::default().client_ip(peer, &h), peer);
        let mapped = ip("::ffff:192.0.2.1");
        assert_eq!(t.client_ip(mapped, &h), peer, "v4-mapped peers are v4");
    }

    #[test]
    fn forwarded_rfc7239() {
        let t = trusting(&["127.0.0.0/8"], ForwardedHeader::Forwarded);
        let peer = ip("127.0.0.1");
        let h = headers(
            "forwarded",
            &[r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#],
        );
        assert_eq!(t.client_ip(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers(
            "forwarded",
            &["for=198.51.100.7, for=127.0.0.5;proto=https"],
        );
        assert_eq!(t.client_ip(peer, &h), ip("198.51.100.7"));
        let h = headers("forwarded", &["for=198.51.100.7, for=unknown"]);
        assert_eq!(t.client_ip(peer, &h), peer, "unknown stops the walk");
        let h = headers(
            "forwarded",
            &["for=198.51.100.7, for=_hidden, for=127.0.0.9"],
        );
        assert_eq!(t.client_ip(peer, &h), ip("127.0.0.9"));
        let h = headers("forwarded", &["proto=https"]);
        assert_eq!(t.client_ip(peer, &h), peer, "an element without for=");
        let h = headers("forwarded", &[r#"for="198.51.100.7"#]);
        assert_eq!(t.client_ip(peer, &h), peer, "unbalanced quote");
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr(" 127.0.0.1 ").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nginx").is_err());
    }

    #[test]
    fn client_ip_of_prefers_the_resolved_address() {
        let mut ext = Extensions::new();
        assert_eq!(ClientIp::of(&ext), None);
        ext.insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5))));
        assert_eq!(ClientIp::of(&ext), Some(ip("127.0.0.1")));
        ext.insert(ClientIp(ip("198.51.100.7")));
        assert_eq!(ClientIp::of(&ext), Some(ip("198.51.100.7")));
    }
}
