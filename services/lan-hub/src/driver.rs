//! The hub's I/O: one UDP socket, one task, one str0m `Rtc` per browser source address.
//!
//! Every input (a datagram, a timeout) goes to one `Rtc`, which is then drained until it
//! reports its next timeout; frames the router emits are written to their channels and those
//! `Rtc`s drained in turn. Sends are collected and flushed before the next receive.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::CryptoProvider;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::core::{HubCore, SessionId};
use crate::gate::{self, Lifetimes};
use crate::{HubConfig, HubIdentity, SharedStats};

/// Bigger than any datagram a browser sends (MTU-sized) with room for jumbo frames.
const RECV_BUF: usize = 4096;
/// Room for a 256 KiB echo or `from` plus queued presence; a peer that cannot keep up loses
/// frames (counted), it is not buffered without limit.
const SCTP_SEND_BUFFER: usize = 1 << 20;

/// The one clock read of this crate: the driver passes it into the sans-IO parts and str0m.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();

fn provider() -> Arc<CryptoProvider> {
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

struct Peer {
    rtc: Rtc,
    channel: Option<ChannelId>,
    session: Option<SessionId>,
    timeout: Instant,
}

pub(crate) struct Driver {
    socket: UdpSocket,
    /// The address str0m knows as our host candidate; every datagram is fed as sent to it
    /// (we do not learn the real destination of a wildcard socket, and ICE-lite answers with
    /// the packet's source anyway).
    local: SocketAddr,
    identity: HubIdentity,
    max_sessions: usize,
    core: HubCore,
    peers: HashMap<SocketAddr, Peer>,
    by_session: HashMap<SessionId, SocketAddr>,
    lifetimes: Lifetimes,
    stats: Arc<SharedStats>,
    sends: Vec<(SocketAddr, Vec<u8>)>,
    /// Frames lost to a full send queue.
    send_drops: u64,
}

impl Driver {
    pub(crate) fn new(
        socket: UdpSocket,
        bound: SocketAddr,
        config: &HubConfig,
        stats: Arc<SharedStats>,
    ) -> Self {
        let local = if bound.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
        } else {
            bound
        };
        Driver {
            socket,
            local,
            identity: config.identity.clone(),
            max_sessions: config.max_sessions.max(1),
            core: HubCore::new(),
            peers: HashMap::new(),
            by_session: HashMap::new(),
            lifetimes: Lifetimes::new(config.handshake, config.liveness),
            stats,
            sends: Vec::new(),
            send_drops: 0,
        }
    }

    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                _ = &mut stop => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, src)) => {
                        let now = now();
                        self.datagram(now, src, &buf[..n]);
                    }
                    // ICMP port-unreachable from a vanished browser surfaces here on some
                    // platforms; the socket itself is fine.
                    Err(e) => tracing::debug!(error = %e, "lan hub recv"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.timeouts(now());
                }
            }
            self.flush().await;
        }
        self.close_all();
        self.flush().await;
    }

    fn next_deadline(&self) -> Instant {
        let far = now() + Duration::from_secs(3600);
        let rtc = self.peers.values().map(|p| p.timeout).min().unwrap_or(far);
        let life = self.lifetimes.next_deadline().unwrap_or(far);
        rtc.min(life)
    }

    fn datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let admitted = gate::admit_binding(data, self.identity.ufrag(), self.identity.pwd());
        if self.peers.contains_key(&src) {
            if admitted.is_some() {
                self.lifetimes.stun(now, src);
            }
        } else {
            // Only a signed Binding Request for our ufrag earns state; Chrome always sends
            // STUN before DTLS, so anything else from an unknown source is junk or stale.
            let Some(remote_ufrag) = admitted else {
                self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if self.peers.len() >= self.max_sessions {
                self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match self.new_peer(now, remote_ufrag) {
                Some(peer) => {
                    tracing::debug!(%src, "lan hub source admitted");
                    self.peers.insert(src, peer);
                    self.lifetimes.admit(now, src);
                    self.stats.sources.fetch_add(1, Ordering::Relaxed);
                }
                None => return,
            }
        }
        let Ok(recv) = Receive::new(Protocol::Udp, src, self.local, data) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&src) else {
            return;
        };
        if let Err(e) = peer.rtc.handle_input(Input::Receive(now, recv)) {
            tracing::debug!(%src, error = %e, "lan hub rtc input");
            self.end(src);
            return;
        }
        self.pump([src].into());
    }

    fn new_peer(&self, now: Instant, remote_ufrag: String) -> Option<Peer> {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(provider())
            .set_ice_lite(true)
            .set_local_ice_credentials(IceCreds {
                ufrag: self.identity.ufrag().to_owned(),
                pass: self.identity.pwd().to_owned(),
            })
            .set_dtls_cert(self.identity.dtls_cert())
            // The client's certificate is required but never verified (LAN.md §3).
            .set_fingerprint_verification(false)
            .set_sctp_max_message_size(kibitz_proto::lan::MAX_MESSAGE_SIZE as u32)
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER)
            .build(now);
        let Ok(host) = Candidate::host(self.local, "udp") else {
            return None;
        };
        rtc.add_local_candidate(host);
        // The browser never sends us its offer, so we accept the one it would have sent:
        // its ufrag (from the STUN USERNAME; str0m answers checks only once it knows it), a
        // pwd for checks ICE-lite never sends, any fingerprint (verification is off: the
        // client certificate is required, never verified), `setup:active` (we are the DTLS
        // server) and Chrome's max-message-size, which str0m's direct API cannot set (it
        // would cap what we send at 64 KiB).
        let offer = browser_offer(&remote_ufrag);
        let offer = match SdpOffer::from_sdp_string(&offer) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "lan hub could not build the browser's offer");
                return None;
            }
        };
        if let Err(e) = rtc.sdp_api().accept_offer(offer) {
            tracing::warn!(error = %e, "lan hub could not start a session");
            return None;
        }
        Some(Peer {
            rtc,
            channel: None,
            session: None,
            timeout: now,
        })
    }

    fn timeouts(&mut self, now: Instant) {
        for (src, why) in self.lifetimes.expire(now) {
            tracing::debug!(%src, ?why, "lan hub source expired");
            self.stats.sources_expired.fetch_add(1, Ordering::Relaxed);
            self.end(src);
        }
        let due: BTreeSet<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.timeout <= now)
            .map(|(a, _)| *a)
            .collect();
        let mut dirty = BTreeSet::new();
        for src in due {
            let Some(peer) = self.peers.get_mut(&src) else {
                continue;
            };
            if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.end(src);
            } else {
                dirty.insert(src);
            }
        }
        self.pump(dirty);
    }

    /// Drains every dirty `Rtc`, routes what the router emits, repeats until quiet.
    fn pump(&mut self, mut dirty: BTreeSet<SocketAddr>) {
        while let Some(src) = dirty.pop_first() {
            self.drain(src);
            while let Some((to, text)) = self.core.poll_output() {
                if self.write(to, &text) {
                    if let Some(addr) = self.by_session.get(&to) {
                        dirty.insert(*addr);
                    }
                } else {
                    self.send_drops += 1;
                }
            }
            self.sync_core_stats();
        }
    }

    fn write(&mut self, to: SessionId, text: &str) -> bool {
        let Some(addr) = self.by_session.get(&to) else {
            return false;
        };
        let Some(peer) = self.peers.get_mut(addr) else {
            return false;
        };
        let Some(cid) = peer.channel else {
            return false;
        };
        let Some(mut ch) = peer.rtc.channel(cid) else {
            return false;
        };
        matches!(ch.write(false, text.as_bytes()), Ok(true))
    }

    fn drain(&mut self, src: SocketAddr) {
        let mut ended = false;
        loop {
            let Some(peer) = self.peers.get_mut(&src) else {
                return;
            };
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => self.sends.push((t.destination, t.contents.to_vec())),
                Ok(Output::Event(ev)) => match ev {
                    // One channel per browser: the first, label unchecked.
                    Event::ChannelOpen(cid, _label) if peer.channel.is_none() => {
                        let id = self.core.open();
                        peer.channel = Some(cid);
                        peer.session = Some(id);
                        self.by_session.insert(id, src);
                        self.lifetimes.opened(src);
                        self.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%src, session = id, "lan hub session open");
                    }
                    Event::ChannelData(d) => {
                        if Some(d.id) != peer.channel {
                            continue;
                        }
                        let Some(s) = peer.session else { continue };
                        match (d.binary, std::str::from_utf8(&d.data)) {
                            (false, Ok(text)) => self.core.text(s, text),
                            _ => self.core.binary(s),
                        }
                    }
                    Event::ChannelClose(cid) if Some(cid) == peer.channel => {
                        ended = true;
                        break;
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        ended = true;
                        break;
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(%src, error = %e, "lan hub rtc");
                    ended = true;
                    break;
                }
            }
        }
        let alive = self.peers.get(&src).is_some_and(|p| p.rtc.is_alive());
        if ended || !alive {
            self.end(src);
        }
    }

    fn end(&mut self, src: SocketAddr) {
        let Some(mut peer) = self.peers.remove(&src) else {
            return;
        };
        peer.rtc.disconnect();
        self.lifetimes.remove(src);
        self.stats.sources.fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = peer.session {
            self.core.close(id);
            self.by_session.remove(&id);
            tracing::debug!(%src, session = id, "lan hub session closed");
        }
        self.sync_core_stats();
    }

    fn sync_core_stats(&self) {
        let c = self.core.stats();
        let s = &self.stats;
        s.sessions
            .store(self.core.sessions() as u64, Ordering::Relaxed);
        s.frames_routed.store(c.routed, Ordering::Relaxed);
        s.bad_frames.store(c.bad, Ordering::Relaxed);
        s.frames_dropped
            .store(c.dropped + self.send_drops, Ordering::Relaxed);
    }

    /// Shutdown: tell every browser (SCTP abort / DTLS close_notify) before the socket goes.
    fn close_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for src in addrs {
            let Some(peer) = self.peers.get_mut(&src) else {
                continue;
            };
            if peer.rtc.close().is_ok() {
                while let Ok(out) = peer.rtc.poll_output() {
                    match out {
                        Output::Transmit(t) => {
                            self.sends.push((t.destination, t.contents.to_vec()))
                        }
                        Output::Timeout(_) => break,
                        Output::Event(_) => {}
                    }
                }
            }
            self.end(src);
        }
    }

    async fn flush(&mut self) {
        for (dst, data) in std::mem::take(&mut self.sends) {
            if let Err(e) = self.socket.send_to(&data, dst).await {
                tracing::debug!(%dst, error = %e, "lan hub send");
            }
        }
    }
}

/// The offer a browser makes for one `hub` data channel, as far as the hub needs it.
fn browser_offer(ufrag: &str) -> String {
    let fp = vec!["00"; 32].join(":");
    let max = kibitz_proto::lan::MAX_MESSAGE_SIZE;
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        &format!("a=ice-ufrag:{ufrag}"),
        "a=ice-pwd:unusedbyicelitehubxxxxx",
        "a=ice-options:trickle",
        &format!("a=fingerprint:sha-256 {fp}"),
        "a=setup:active",
        "a=mid:0",
        "a=sctp-port:5000",
        &format!("a=max-message-size:{max}"),
        "",
    ]
    .join("\r\n")
}
