//! The hub's own mDNS responder (LAN.md §6): answers A queries for `kbz-….local` with the
//! hub's IPv4 addresses, so a blob endpoint by that name resolves even where the OS has no
//! responder. [`answer`] is pure; [`serve`] runs it on a socket the caller bound (UDP 5353 in
//! `kibitz hub`, any port in tests).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// The mDNS group and port.
pub const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const TTL: u32 = 120;

/// A reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DNS message.
    pub bytes: Vec<u8>,
    /// Send to the querier (legacy or QU query) rather than the group.
    pub unicast: bool,
}

/// The reply to `query` if it asks for `name`'s A record (or ANY). `legacy` = the query came
/// from a port other than 5353 (a one-shot resolver, RFC 6762 §6.7): echo its id and question
/// and answer it directly.
pub fn answer(query: &[u8], name: &str, ips: &[Ipv4Addr], legacy: bool) -> Option<Reply> {
    if query.len() < 12 || ips.is_empty() {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let want = name.trim_end_matches('.').to_ascii_lowercase();
    let mut pos = 12;
    let mut hit: Option<(usize, bool)> = None;
    for _ in 0..qdcount.min(32) {
        let (qname, after) = read_name(query, pos)?;
        let qtype = u16::from_be_bytes([*query.get(after)?, *query.get(after + 1)?]);
        let qclass = u16::from_be_bytes([*query.get(after + 2)?, *query.get(after + 3)?]);
        pos = after + 4;
        if qname == want && (qtype == TYPE_A || qtype == TYPE_ANY) && qclass & 0x7fff == CLASS_IN {
            hit = Some((pos, qclass & 0x8000 != 0));
            break;
        }
    }
    let (qend, qu) = hit?;
    let mut out = Vec::with_capacity(64);
    let id = if legacy { [query[0], query[1]] } else { [0, 0] };
    out.extend_from_slice(&id);
    out.extend_from_slice(&0x8400u16.to_be_bytes()); // response, authoritative
    out.extend_from_slice(&u16::from(legacy).to_be_bytes());
    out.extend_from_slice(&(ips.len().min(16) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    if legacy {
        // The question as asked; pointers in it would dangle here, so rewrite the name.
        write_name(&mut out, &want);
        out.extend_from_slice(&query[qend - 4..qend]);
    }
    for ip in ips.iter().take(16) {
        write_name(&mut out, &want);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        // Cache-flush: these are the name's only addresses (not for legacy resolvers).
        let class = if legacy { CLASS_IN } else { CLASS_IN | 0x8000 };
        out.extend_from_slice(&class.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(Reply {
        bytes: out,
        unicast: legacy || qu,
    })
}

/// A (possibly compressed) name at `pos`, lower-cased, dot-joined; and the offset after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    None
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// Answers queries on `socket` until `stop` fires. Multicast replies go to `group`.
pub async fn serve(
    socket: UdpSocket,
    name: String,
    ips: Vec<Ipv4Addr>,
    group: SocketAddr,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 9000];
    loop {
        let (n, src) = tokio::select! {
            _ = &mut stop => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let legacy = src.port() != GROUP.port();
        if let Some(reply) = answer(&buf[..n], &name, &ips, legacy) {
            let to = if reply.unicast { src } else { group };
            if let Err(e) = socket.send_to(&reply.bytes, to).await {
                tracing::debug!(error = %e, "mdns reply");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16, qu: bool) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        write_name(&mut q, name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&(CLASS_IN | if qu { 0x8000 } else { 0 }).to_be_bytes());
        q
    }

    const NAME: &str = "kbz-wbxlanhu.local";

    #[test]
    fn answers_a_for_our_name_only() {
        let ips = [Ipv4Addr::new(192, 168, 1, 5), Ipv4Addr::new(10, 0, 0, 2)];
        let r = answer(
            &query(7, "KBZ-wbxlanhu.local", TYPE_A, false),
            NAME,
            &ips,
            false,
        )
        .unwrap();
        assert!(!r.unicast);
        assert_eq!(&r.bytes[..12], &[0, 0, 0x84, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        // First answer: name, A, IN|flush, TTL, 4 bytes.
        let name_len = NAME.len() + 2;
        let a = &r.bytes[12 + name_len..];
        assert_eq!(&a[..10], &[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        assert_eq!(&a[10..14], &[192, 168, 1, 5]);
        assert!(answer(&query(7, "other.local", TYPE_A, false), NAME, &ips, false).is_none());
        assert!(
            answer(&query(7, NAME, 28, false), NAME, &ips, false).is_none(),
            "AAAA"
        );
        assert!(answer(&query(7, NAME, TYPE_A, false), NAME, &[], false).is_none());
        assert!(answer(&[0; 5], NAME, &ips, false).is_none());
        let mut resp = query(7, NAME, TYPE_A, false);
        resp[2] = 0x84;
        assert!(
            answer(&resp, NAME, &ips, false).is_none(),
            "responses are ignored"
        );
        assert!(
            answer(&query(7, NAME, TYPE_ANY, true), NAME, &ips, false)
                .unwrap()
                .unicast
        );
    }

    #[test]
    fn legacy_queries_get_their_id_and_question_back() {
        let ips = [Ipv4Addr::new(192, 168, 1, 5)];
        let q = query(0xbeef, NAME, TYPE_A, false);
        let r = answer(&q, NAME, &ips, true).unwrap();
        assert!(r.unicast);
        assert_eq!(&r.bytes[..8], &[0xbe, 0xef, 0x84, 0, 0, 1, 0, 1]);
        assert_eq!(&r.bytes[12..q.len()], &q[12..]);
    }

    #[tokio::test]
    async fn a_responder_answers_a_query() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel();
        let ips = vec![Ipv4Addr::new(192, 168, 7, 9)];
        let task = tokio::spawn(serve(sock, NAME.into(), ips, addr, stop_rx));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query(1, NAME, TYPE_A, false), addr)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.recv_from(&mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&buf[n - 4..n], &[192, 168, 7, 9]);
        let _ = stop_tx.send(());
        task.await.unwrap();
    }
}
