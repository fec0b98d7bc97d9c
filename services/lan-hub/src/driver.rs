//! The hub's I/O: one UDP socket, one task, one str0m `Rtc` per browser.
//!
//! A browser is known by its ICE ufrag (from the USERNAME of its signed STUN); every source
//! address it has sent signed STUN from routes to its `Rtc`, so a multi-homed browser or a
//! pair switch stays one session (upstream keys by source address only and strands it).
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
use crate::gate::{self, Lifetimes, Quarantine};
use crate::{HubConfig, HubIdentity, SharedStats};

/// Bigger than any datagram a browser sends (MTU-sized) with room for jumbo frames.
const RECV_BUF: usize = 4096;
/// How long an ended browser's ufrag is refused, and how many are remembered.
const QUARANTINE: Duration = Duration::from_secs(60);
const QUARANTINE_CAP: usize = 4096;
/// Source addresses one browser may use (its host candidates × address families).
const MAX_SOURCES_PER_BROWSER: usize = 8;
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

/// A browser: its ufrag keys it; `key` is a cheap stand-in for maps and deadlines.
type PeerKey = u64;

struct Peer {
    rtc: Rtc,
    ufrag: String,
    sources: Vec<SocketAddr>,
    channel: Option<ChannelId>,
    session: Option<SessionId>,
    timeout: Instant,
    /// ICE nominated: str0m starts DTLS only then.
    ice_up: bool,
    /// DTLS datagrams that arrived before nomination, replayed once it comes. str0m ignores
    /// DTLS before it starts, and Chrome sends its ClientHello on the first successful check,
    /// often before the check carrying USE-CANDIDATE is answered: dropped, it cost the
    /// browser a ClientHello retransmit (1 s, then 3 s) before its `id`.
    early: Vec<(SocketAddr, Vec<u8>)>,
}

/// Early DTLS datagrams kept per browser (a ClientHello is one or two).
const EARLY_DTLS: usize = 4;

pub(crate) struct Driver {
    socket: UdpSocket,
    /// The address str0m knows as our host candidate; every datagram is fed as sent to it
    /// (we do not learn the real destination of a wildcard socket, and ICE-lite answers with
    /// the packet's source anyway).
    local: SocketAddr,
    identity: HubIdentity,
    max_sessions: usize,
    core: HubCore,
    next_key: PeerKey,
    peers: HashMap<PeerKey, Peer>,
    by_ufrag: HashMap<String, PeerKey>,
    by_source: HashMap<SocketAddr, PeerKey>,
    by_session: HashMap<SessionId, PeerKey>,
    lifetimes: Lifetimes<PeerKey>,
    quarantine: Quarantine,
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
            next_key: 1,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_source: HashMap::new(),
            by_session: HashMap::new(),
            lifetimes: Lifetimes::new(config.handshake, config.liveness),
            quarantine: Quarantine::new(QUARANTINE, QUARANTINE_CAP),
            stats,
            sends: Vec::new(),
            send_drops: 0,
        }
    }

    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        // The first Rtc of a process costs ~250 ms of one-time crypto setup. Paid inside the
        // first browser's first check, it delays that answer so Chrome nominates late; str0m
        // (ICE-lite) sends nothing before nomination, so the DTLS reply waits for Chrome's
        // ClientHello retransmit: `id` after 1.2-3 s instead of ~70 ms. Pay it here.
        drop(self.new_peer(now(), "warmup0".to_owned()));
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

    fn dropped(&self) {
        self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let key = match gate::admit_binding(data, self.identity.ufrag(), self.identity.pwd()) {
            Some(ufrag) => {
                let Some(key) = self.browser_for(now, src, ufrag) else {
                    self.dropped();
                    return;
                };
                self.lifetimes.stun(now, key);
                key
            }
            // Anything else only from a source a browser proved with signed STUN; Chrome
            // always sends STUN first, so the rest is junk, stale or spoofed.
            None => match self.by_source.get(&src) {
                Some(k) => *k,
                None => {
                    self.dropped();
                    return;
                }
            },
        };
        let Ok(recv) = Receive::new(Protocol::Udp, src, self.local, data) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        // DTLS content types are 20..=63 (RFC 7983 demux).
        if !peer.ice_up && matches!(data.first(), Some(20..=63)) && peer.early.len() < EARLY_DTLS {
            peer.early.push((src, data.to_vec()));
        }
        if let Err(e) = peer.rtc.handle_input(Input::Receive(now, recv)) {
            tracing::debug!(error = %e, "lan hub rtc input");
            self.end(now, key);
            return;
        }
        self.pump(now, [key].into());
    }

    /// The browser with `ufrag`, admitting it if new and allowed; remembers `src` for it.
    fn browser_for(&mut self, now: Instant, src: SocketAddr, ufrag: String) -> Option<PeerKey> {
        let key = match self.by_ufrag.get(&ufrag) {
            Some(k) => *k,
            None => {
                if self.quarantine.refuses(now, &ufrag) || self.peers.len() >= self.max_sessions {
                    return None;
                }
                let key = self.next_key;
                self.next_key += 1;
                let peer = self.new_peer(now, ufrag.clone())?;
                tracing::debug!(%src, "lan hub browser admitted");
                self.peers.insert(key, peer);
                self.by_ufrag.insert(ufrag, key);
                self.lifetimes.admit(now, key);
                self.stats.sources.fetch_add(1, Ordering::Relaxed);
                key
            }
        };
        match self.by_source.get(&src) {
            Some(k) if *k == key => {}
            other => {
                // A source moving to another browser (a reused port) leaves the old one.
                if let Some(p) = other.copied().and_then(|old| self.peers.get_mut(&old)) {
                    p.sources.retain(|s| *s != src);
                }
                let peer = self.peers.get_mut(&key)?;
                if peer.sources.len() >= MAX_SOURCES_PER_BROWSER {
                    return None;
                }
                peer.sources.push(src);
                self.by_source.insert(src, key);
            }
        }
        Some(key)
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
            ufrag: remote_ufrag,
            sources: Vec::new(),
            channel: None,
            session: None,
            ice_up: false,
            early: Vec::new(),
            timeout: now,
        })
    }

    fn timeouts(&mut self, now: Instant) {
        for (key, why) in self.lifetimes.expire(now) {
            tracing::debug!(?why, "lan hub browser expired");
            self.stats.sources_expired.fetch_add(1, Ordering::Relaxed);
            self.end(now, key);
        }
        let due: BTreeSet<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.timeout <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut dirty = BTreeSet::new();
        for key in due {
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.end(now, key);
            } else {
                dirty.insert(key);
            }
        }
        self.pump(now, dirty);
    }

    /// Drains every dirty `Rtc`, routes what the router emits, repeats until quiet.
    fn pump(&mut self, now: Instant, mut dirty: BTreeSet<PeerKey>) {
        while let Some(key) = dirty.pop_first() {
            self.drain(now, key);
            while let Some((to, text)) = self.core.poll_output() {
                if self.write(to, &text) {
                    if let Some(k) = self.by_session.get(&to) {
                        dirty.insert(*k);
                    }
                } else {
                    self.send_drops += 1;
                }
            }
            self.sync_core_stats();
        }
    }

    fn write(&mut self, to: SessionId, text: &str) -> bool {
        let Some(key) = self.by_session.get(&to) else {
            return false;
        };
        let Some(peer) = self.peers.get_mut(key) else {
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

    fn drain(&mut self, now: Instant, key: PeerKey) {
        let mut ended = false;
        let mut replay: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        loop {
            if !replay.is_empty() {
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                for (src, data) in replay.drain(..) {
                    let Ok(recv) = Receive::new(Protocol::Udp, src, self.local, &data) else {
                        continue;
                    };
                    if let Err(e) = peer.rtc.handle_input(Input::Receive(now, recv)) {
                        tracing::debug!(error = %e, "lan hub rtc replay");
                    }
                }
            }
            let Some(peer) = self.peers.get_mut(&key) else {
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
                        self.by_session.insert(id, key);
                        self.lifetimes.opened(key);
                        self.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = id, "lan hub session open");
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
                    // str0m's ICE-lite drops a pair after 15 s without a check; with no pair
                    // left the session cannot send.
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        ended = true;
                        break;
                    }
                    Event::IceConnectionStateChange(
                        IceConnectionState::Connected | IceConnectionState::Completed,
                    ) if !peer.ice_up => {
                        peer.ice_up = true;
                        replay = std::mem::take(&mut peer.early);
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(error = %e, "lan hub rtc");
                    ended = true;
                    break;
                }
            }
        }
        let alive = self.peers.get(&key).is_some_and(|p| p.rtc.is_alive());
        if ended || !alive {
            self.end(now, key);
        }
    }

    fn end(&mut self, now: Instant, key: PeerKey) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        peer.rtc.disconnect();
        self.lifetimes.remove(key);
        self.by_ufrag.remove(&peer.ufrag);
        for src in &peer.sources {
            if self.by_source.get(src) == Some(&key) {
                self.by_source.remove(src);
            }
        }
        self.quarantine.insert(now, peer.ufrag);
        self.stats.sources.fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = peer.session {
            self.core.close(id);
            self.by_session.remove(&id);
            tracing::debug!(session = id, "lan hub session closed");
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
        let now = now();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let Some(peer) = self.peers.get_mut(&key) else {
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
            self.end(now, key);
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
