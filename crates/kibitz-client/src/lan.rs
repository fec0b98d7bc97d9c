//! The LAN room of Kibitz's offline mode (LAN.md §7) as a sans-IO engine: presence over a
//! `kibitz hub`, the roster built from beacons, and which peer connections to make.
//!
//! No authority and no broker: each participant broadcasts `present` every 2.5 s and builds
//! the roster from what it hears, reaping members silent for 8 s. Broadcast is the hub's
//! `peers` then one `to` per other id. Per pair the member whose hub id sorts first as a
//! string dials; an incoming offer replaces any link. Content never rides the hub.
//!
//! # Run loop
//! [`LanRoom::start`], [`LanRoom::handle_input`] and the commands take `now`; after any of
//! them drain [`LanRoom::poll_output`] until [`LanOutput::Timeout`], carrying out each
//! output (hub frames, hub (re)connects, link commands), then feed [`LanInput::Timeout`] at
//! the time given. The engine never reads a clock or touches a socket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use kibitz_proto::lan::{self, CandidateInit, Description, HubFrame, LanMsg, SigPayload};

/// Tunables of a [`LanRoom`] (defaults are the web client's).
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// The room key as sent in `join` (already normalised).
    pub room: String,
    /// Display name in `present`.
    pub name: String,
    /// Avatar in `present`.
    pub avatar: String,
    /// `meta` in `present`, if any.
    pub meta: Option<serde_json::Value>,
    /// Presence beacon interval (2500 ms).
    pub beacon: Duration,
    /// Members silent this long are reaped (8000 ms).
    pub reap: Duration,
    /// A `peers` request unanswered this long counts as `[]` (3 s).
    pub peers_timeout: Duration,
    /// Reconnect delay after the hub was lost (2 s).
    pub retry: Duration,
    /// Reconnect delay after a connect attempt failed (3 s).
    pub retry_failed: Duration,
}

impl LanConfig {
    /// The web client's timings for `room` (normalised here) and `name`.
    pub fn new(room: &str, name: &str) -> Self {
        LanConfig {
            room: kibitz_proto::room::normalize_room(room),
            name: name.to_owned(),
            avatar: String::new(),
            meta: None,
            beacon: Duration::from_millis(2500),
            reap: Duration::from_millis(8000),
            peers_timeout: Duration::from_secs(3),
            retry: Duration::from_secs(2),
            retry_failed: Duration::from_secs(3),
        }
    }
}

/// Input to [`LanRoom::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanInput<'a> {
    /// The time given by the last [`LanOutput::Timeout`] has come.
    Timeout,
    /// The hub channel is open and sent `id`.
    HubUp {
        /// Our hub id.
        id: u64,
    },
    /// A text frame from the hub (`id` included; it is ignored here, see `HubUp`).
    HubFrame(&'a str),
    /// The hub connection was lost.
    HubDown,
    /// A connect attempt failed (no `id` in time, handshake failed).
    HubFailed,
    /// The link with `peer` ended (failed, closed by the remote).
    LinkClosed {
        /// The member id.
        peer: &'a str,
    },
}

/// A roster member other than us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanMember {
    /// The hub id as a decimal string.
    pub id: String,
    /// Display name (`Guest` when empty).
    pub name: String,
    /// Camera on.
    pub cam: bool,
}

/// What happened in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LanEvent {
    /// On the hub with this id, joined the room.
    Connected {
        /// Our hub id as a decimal string.
        id: String,
    },
    /// The hub is lost; reconnecting.
    Reconnecting,
    /// Someone appeared.
    Joined(LanMember),
    /// Someone left (`bye`) or went silent (reaped).
    Left {
        /// Who.
        member: LanMember,
        /// `true` when reaped for silence, `false` on `bye`.
        silent: bool,
    },
    /// We left: `bye` went out (or could not), nothing more follows.
    Done,
}

/// What [`LanRoom::poll_output`] gives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LanOutput {
    /// A text frame for the hub channel.
    Hub(String),
    /// (Re)connect to the hub now; answer with [`LanInput::HubUp`] or [`LanInput::HubFailed`].
    ConnectHub,
    /// Drop the hub connection (we left).
    DisconnectHub,
    /// Make a link to `peer` and offer (data channel `content`); hand the offer and every
    /// trickled candidate to [`LanRoom::signal`].
    Dial {
        /// The member id.
        peer: String,
    },
    /// `peer` offered: close any link with it, answer on a new one via [`LanRoom::signal`].
    Accept {
        /// The member id.
        peer: String,
        /// The offer SDP.
        sdp: String,
    },
    /// `peer` answered our offer.
    Answer {
        /// The member id.
        peer: String,
        /// The answer SDP.
        sdp: String,
    },
    /// A trickled candidate from `peer` for the current link.
    Candidate {
        /// The member id.
        peer: String,
        /// The candidate.
        candidate: CandidateInit,
    },
    /// Close the link with `peer` (it left the roster).
    CloseLink {
        /// The member id.
        peer: String,
    },
    /// Something for the application.
    Event(LanEvent),
    /// Nothing more now: feed [`LanInput::Timeout`] at this time (`None`: only input).
    Timeout(Option<Instant>),
}

#[derive(Debug)]
struct Entry {
    member: LanMember,
    seen: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hub {
    /// Not started.
    Idle,
    /// Waiting to (re)connect at this time.
    Waiting(Instant),
    /// A connect attempt is under way.
    Connecting,
    /// On the hub with this id.
    Up(u64),
    /// Left the room.
    Gone,
}

/// One participant of a LAN room, sans-IO.
#[derive(Debug)]
pub struct LanRoom {
    cfg: LanConfig,
    hub: Hub,
    others: BTreeMap<String, Entry>,
    links: BTreeSet<String>,
    /// Broadcast payloads waiting for their `peers` answer, with the time they give up.
    pending: VecDeque<(Instant, serde_json::Value)>,
    beacon_at: Option<Instant>,
    leaving: bool,
    out: VecDeque<LanOutput>,
}

impl LanRoom {
    /// A room not started yet.
    pub fn new(cfg: LanConfig) -> Self {
        LanRoom {
            cfg,
            hub: Hub::Idle,
            others: BTreeMap::new(),
            links: BTreeSet::new(),
            pending: VecDeque::new(),
            beacon_at: None,
            leaving: false,
            out: VecDeque::new(),
        }
    }

    /// Connects to the hub and starts the beacon.
    pub fn start(&mut self, now: Instant) {
        if self.hub == Hub::Idle {
            self.hub = Hub::Connecting;
            self.out.push_back(LanOutput::ConnectHub);
            self.beacon_at = Some(now + self.cfg.beacon);
        }
    }

    /// Our id (the hub id as a decimal string) while on the hub.
    pub fn id(&self) -> Option<String> {
        match self.hub {
            Hub::Up(id) => Some(id.to_string()),
            _ => None,
        }
    }

    /// The members we hear, in id order (us excluded).
    pub fn members(&self) -> Vec<LanMember> {
        self.others.values().map(|e| e.member.clone()).collect()
    }

    /// The member ids with a link, as the engine knows them.
    pub fn links(&self) -> Vec<String> {
        self.links.iter().cloned().collect()
    }

    /// Sends `sig` to `peer` over the hub (offer, answer, trickled candidate). Dropped while
    /// the hub is down, as the web client does.
    pub fn signal(&mut self, peer: &str, payload: SigPayload) {
        let Hub::Up(_) = self.hub else { return };
        let Ok(id) = peer.parse::<u64>() else { return };
        let msg = LanMsg::Sig { payload };
        if let Ok(v) = serde_json::to_value(&msg) {
            self.out.push_back(LanOutput::Hub(lan::to_frame(id, &v)));
        }
    }

    /// Changes our name; announced at once.
    pub fn set_name(&mut self, now: Instant, name: &str) {
        self.cfg.name = name.to_owned();
        self.announce(now);
    }

    /// Leaves: broadcasts `bye`, then [`LanEvent::Done`] and [`LanOutput::DisconnectHub`] once
    /// it went out (or at once when the hub is down).
    pub fn leave(&mut self, now: Instant) {
        if self.leaving || self.hub == Hub::Gone {
            return;
        }
        self.leaving = true;
        for peer in std::mem::take(&mut self.links) {
            self.out.push_back(LanOutput::CloseLink { peer });
        }
        if matches!(self.hub, Hub::Up(_)) {
            self.broadcast(now, &LanMsg::Bye);
        }
        self.maybe_done();
    }

    fn maybe_done(&mut self) {
        if self.leaving && self.pending.is_empty() && self.hub != Hub::Gone {
            self.hub = Hub::Gone;
            self.beacon_at = None;
            self.out.push_back(LanOutput::DisconnectHub);
            self.out.push_back(LanOutput::Event(LanEvent::Done));
        }
    }

    /// Feeds time and one input; drain [`LanRoom::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Instant, input: LanInput<'_>) {
        match input {
            LanInput::Timeout => self.on_timeout(now),
            LanInput::HubUp { id } => self.on_hub_up(now, id),
            LanInput::HubFrame(text) => self.on_frame(now, text),
            LanInput::HubDown => self.on_hub_lost(now, self.cfg.retry),
            LanInput::HubFailed => self.on_hub_lost(now, self.cfg.retry_failed),
            LanInput::LinkClosed { peer } => {
                self.links.remove(peer);
            }
        }
    }

    fn on_hub_up(&mut self, now: Instant, id: u64) {
        if matches!(self.hub, Hub::Gone | Hub::Idle) {
            return;
        }
        self.hub = Hub::Up(id);
        // Links were made under our old id; peers redial or wait for us by the new one.
        for peer in std::mem::take(&mut self.links) {
            self.out.push_back(LanOutput::CloseLink { peer });
        }
        // Scope the session to the room before any `peers`/`to`.
        self.out
            .push_back(LanOutput::Hub(lan::join_frame(&self.cfg.room)));
        self.out
            .push_back(LanOutput::Event(LanEvent::Connected { id: id.to_string() }));
        self.broadcast(now, &LanMsg::Hi);
        self.announce(now);
        self.reconcile();
    }

    fn on_hub_lost(&mut self, now: Instant, delay: Duration) {
        if matches!(self.hub, Hub::Gone | Hub::Idle) {
            return;
        }
        let was_up = matches!(self.hub, Hub::Up(_));
        self.pending.clear();
        if self.leaving {
            self.maybe_done();
            return;
        }
        self.hub = Hub::Waiting(now + delay);
        if was_up {
            self.out.push_back(LanOutput::Event(LanEvent::Reconnecting));
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Hub::Waiting(at) = self.hub
            && now >= at
        {
            self.hub = Hub::Connecting;
            self.out.push_back(LanOutput::ConnectHub);
        }
        // Unanswered `peers` requests resolve as `[]`.
        while self.pending.front().is_some_and(|(at, _)| now >= *at) {
            self.pending.pop_front();
        }
        if let Some(at) = self.beacon_at
            && now >= at
        {
            self.beacon_at = Some(now + self.cfg.beacon);
            self.announce(now);
            self.reap(now);
        }
        self.maybe_done();
    }

    fn reap(&mut self, now: Instant) {
        let silent: Vec<String> = self
            .others
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) > self.cfg.reap)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            self.remove(&id, true);
        }
    }

    fn remove(&mut self, id: &str, silent: bool) {
        if let Some(e) = self.others.remove(id) {
            if self.links.remove(id) {
                self.out.push_back(LanOutput::CloseLink {
                    peer: id.to_owned(),
                });
            }
            self.out.push_back(LanOutput::Event(LanEvent::Left {
                member: e.member,
                silent,
            }));
        }
    }

    fn announce(&mut self, now: Instant) {
        if self.leaving || !matches!(self.hub, Hub::Up(_)) {
            return;
        }
        let name = if self.cfg.name.is_empty() {
            "Guest".to_owned()
        } else {
            self.cfg.name.clone()
        };
        let msg = LanMsg::Present {
            name,
            cam: false,
            avatar: self.cfg.avatar.clone(),
            meta: self.cfg.meta.clone(),
        };
        self.broadcast(now, &msg);
    }

    /// `peers`, then one `to` per other id when the answer comes.
    fn broadcast(&mut self, now: Instant, msg: &LanMsg) {
        let Ok(v) = serde_json::to_value(msg) else {
            return;
        };
        self.pending.push_back((now + self.cfg.peers_timeout, v));
        self.out
            .push_back(LanOutput::Hub(r#"{"t":"peers"}"#.to_owned()));
    }

    /// Dials every member we should and have no link with (the smaller id string dials).
    fn reconcile(&mut self) {
        let Hub::Up(me) = self.hub else { return };
        if self.leaving {
            return;
        }
        let me = me.to_string();
        let dial: Vec<String> = self
            .others
            .keys()
            .filter(|id| !self.links.contains(*id) && me.as_str() < id.as_str())
            .cloned()
            .collect();
        for peer in dial {
            self.links.insert(peer.clone());
            self.out.push_back(LanOutput::Dial { peer });
        }
    }

    fn on_frame(&mut self, now: Instant, text: &str) {
        let Hub::Up(me) = self.hub else { return };
        let Ok(frame) = serde_json::from_str::<HubFrame>(text) else {
            return;
        };
        match frame {
            HubFrame::Peers { ids } => {
                let Some((_, payload)) = self.pending.pop_front() else {
                    return;
                };
                for id in ids.into_iter().filter(|id| *id != me) {
                    self.out
                        .push_back(LanOutput::Hub(lan::to_frame(id, &payload)));
                }
                self.maybe_done();
            }
            HubFrame::From { id, payload } if id != me => self.on_payload(now, id, payload),
            _ => {}
        }
    }

    fn on_payload(&mut self, now: Instant, from: u64, payload: serde_json::Value) {
        if self.leaving {
            return;
        }
        let Ok(msg) = serde_json::from_value::<LanMsg>(payload) else {
            return;
        };
        let fid = from.to_string();
        match msg {
            LanMsg::Hi => self.announce(now),
            LanMsg::Present { name, cam, .. } => {
                let member = LanMember {
                    id: fid.clone(),
                    name: if name.is_empty() {
                        "Guest".into()
                    } else {
                        name
                    },
                    cam,
                };
                let fresh = match self.others.get_mut(&fid) {
                    Some(e) => {
                        e.seen = now;
                        e.member = member.clone();
                        false
                    }
                    None => {
                        self.others.insert(
                            fid,
                            Entry {
                                member: member.clone(),
                                seen: now,
                            },
                        );
                        true
                    }
                };
                if fresh {
                    self.out
                        .push_back(LanOutput::Event(LanEvent::Joined(member)));
                }
                self.reconcile();
            }
            LanMsg::Bye => self.remove(&fid, false),
            LanMsg::Sig { payload } => self.on_sig(fid, payload),
            _ => {}
        }
    }

    fn on_sig(&mut self, peer: String, payload: SigPayload) {
        match payload {
            SigPayload::Description {
                d: Description { kind, sdp },
            } => match kind.as_str() {
                // A fresh offer replaces any link, whoever should have dialled.
                "offer" => {
                    self.links.insert(peer.clone());
                    self.out.push_back(LanOutput::Accept { peer, sdp });
                }
                "answer" => self.out.push_back(LanOutput::Answer { peer, sdp }),
                _ => {}
            },
            SigPayload::Candidate { c } => self
                .out
                .push_back(LanOutput::Candidate { peer, candidate: c }),
        }
    }

    /// The next output; [`LanOutput::Timeout`] once drained.
    pub fn poll_output(&mut self) -> LanOutput {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let at = [
            match self.hub {
                Hub::Waiting(at) => Some(at),
                _ => None,
            },
            self.pending.front().map(|(at, _)| *at),
            self.beacon_at,
        ];
        LanOutput::Timeout(at.into_iter().flatten().min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The virtual clock's origin: any instant will do, time only moves by what tests add.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn drain(room: &mut LanRoom) -> Vec<LanOutput> {
        let mut v = Vec::new();
        loop {
            match room.poll_output() {
                LanOutput::Timeout(_) => return v,
                o => v.push(o),
            }
        }
    }

    fn next_timeout(room: &mut LanRoom) -> Option<Instant> {
        match room.poll_output() {
            LanOutput::Timeout(t) => t,
            o => panic!("undrained output {o:?}"),
        }
    }

    /// Feeds every timeout up to `until`; returns (time, output) for each output on the way.
    fn run_until(room: &mut LanRoom, until: Instant) -> Vec<(Instant, LanOutput)> {
        let mut v = Vec::new();
        while let Some(at) = next_timeout(room).filter(|at| *at <= until) {
            room.handle_input(at, LanInput::Timeout);
            v.extend(drain(room).into_iter().map(|o| (at, o)));
        }
        v
    }

    fn hub_frames(out: &[LanOutput]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|o| match o {
                LanOutput::Hub(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn from(room: &mut LanRoom, now: Instant, id: u64, payload: serde_json::Value) {
        let f = json!({"t": "from", "id": id, "payload": payload}).to_string();
        room.handle_input(now, LanInput::HubFrame(&f));
    }

    fn peers(room: &mut LanRoom, now: Instant, ids: &[u64]) {
        let f = json!({"t": "peers", "ids": ids}).to_string();
        room.handle_input(now, LanInput::HubFrame(&f));
    }

    /// A room on the hub as `id`, with the connect-time broadcasts answered by `others`.
    fn up(t0: Instant, id: u64, others: &[u64]) -> LanRoom {
        let mut room = LanRoom::new(LanConfig::new("Ember LAN!", "Terminal"));
        room.start(t0);
        assert_eq!(drain(&mut room), vec![LanOutput::ConnectHub]);
        room.handle_input(t0, LanInput::HubUp { id });
        drain(&mut room);
        let mut ids = others.to_vec();
        ids.push(id);
        peers(&mut room, t0, &ids);
        peers(&mut room, t0, &ids);
        drain(&mut room);
        room
    }

    #[test]
    fn connect_joins_the_normalised_room_then_broadcasts_hi_and_present() {
        let t0 = epoch();
        let mut room = LanRoom::new(LanConfig::new("Ember LAN!", "Terminal"));
        room.start(t0);
        assert_eq!(drain(&mut room), vec![LanOutput::ConnectHub]);
        room.handle_input(t0, LanInput::HubUp { id: 2 });
        let out = drain(&mut room);
        let frames = hub_frames(&out);
        assert_eq!(frames[0], json!({"t": "join", "room": "ember-lan"}));
        assert_eq!(frames[1..], [json!({"t": "peers"}), json!({"t": "peers"})]);
        assert!(out.contains(&LanOutput::Event(LanEvent::Connected { id: "2".into() })));
        // Broadcast = one `to` per other id the `peers` answer lists, in request order.
        peers(&mut room, t0, &[1, 2, 3]);
        let hi = hub_frames(&drain(&mut room));
        assert_eq!(
            hi,
            [
                json!({"t": "to", "id": 1, "payload": {"k": "hi"}}),
                json!({"t": "to", "id": 3, "payload": {"k": "hi"}}),
            ]
        );
        peers(&mut room, t0, &[2, 3]);
        let present = hub_frames(&drain(&mut room));
        assert_eq!(
            present,
            [json!({"t": "to", "id": 3, "payload":
                {"k": "present", "name": "Terminal", "cam": false, "avatar": ""}})]
        );
    }

    #[test]
    fn the_smaller_id_string_dials() {
        let t0 = epoch();
        // "10" < "9": 10 dials 9.
        let mut room = up(t0, 10, &[9]);
        from(&mut room, t0, 9, json!({"k": "present", "name": "Nine"}));
        let out = drain(&mut room);
        assert!(
            out.contains(&LanOutput::Dial { peer: "9".into() }),
            "{out:?}"
        );
        // Only once while the link lives; again after it closed.
        from(&mut room, t0, 9, json!({"k": "present", "name": "Nine"}));
        assert!(
            !drain(&mut room)
                .iter()
                .any(|o| matches!(o, LanOutput::Dial { .. }))
        );
        room.handle_input(t0, LanInput::LinkClosed { peer: "9" });
        from(&mut room, t0, 9, json!({"k": "present", "name": "Nine"}));
        assert!(drain(&mut room).contains(&LanOutput::Dial { peer: "9".into() }));
        // 9 never dials 10: it waits for the offer.
        let mut room = up(t0, 9, &[10]);
        from(&mut room, t0, 10, json!({"k": "present", "name": "Ten"}));
        let out = drain(&mut room);
        assert!(out.contains(&LanOutput::Event(LanEvent::Joined(LanMember {
            id: "10".into(),
            name: "Ten".into(),
            cam: false
        }))));
        assert!(
            !out.iter().any(|o| matches!(o, LanOutput::Dial { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn an_offer_replaces_the_link_and_signals_route_by_sender() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[2]);
        from(&mut room, t0, 2, json!({"k": "present", "name": "Two"}));
        assert!(drain(&mut room).contains(&LanOutput::Dial { peer: "2".into() }));
        // The other side offers anyway (glare, a reload): its offer wins, every time.
        for sdp in ["v=0 a", "v=0 b"] {
            from(
                &mut room,
                t0,
                2,
                json!({"k": "sig", "payload": {"d": {"type": "offer", "sdp": sdp}}}),
            );
            assert_eq!(
                drain(&mut room),
                vec![LanOutput::Accept {
                    peer: "2".into(),
                    sdp: sdp.into()
                }]
            );
        }
        from(
            &mut room,
            t0,
            2,
            json!({"k": "sig", "payload": {"d": {"type": "answer", "sdp": "v=0 c"}}}),
        );
        assert_eq!(
            drain(&mut room),
            vec![LanOutput::Answer {
                peer: "2".into(),
                sdp: "v=0 c".into()
            }]
        );
        let c = json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0",
            "sdpMLineIndex": 0, "usernameFragment": "u"});
        from(&mut room, t0, 2, json!({"k": "sig", "payload": {"c": c}}));
        let out = drain(&mut room);
        assert!(
            matches!(&out[..], [LanOutput::Candidate { peer, candidate }]
            if peer == "2" && candidate.sdp_mline_index == Some(0))
        );
        // Our signals go to one id, never broadcast.
        room.signal(
            "2",
            SigPayload::Description {
                d: Description {
                    kind: "answer".into(),
                    sdp: "x".into(),
                },
            },
        );
        assert_eq!(
            hub_frames(&drain(&mut room)),
            [
                json!({"t": "to", "id": 2, "payload": {"k": "sig", "payload": {"d": {"type": "answer", "sdp": "x"}}}})
            ]
        );
    }

    #[test]
    fn hi_makes_us_announce_and_bye_removes_at_once() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[]);
        from(&mut room, t0, 2, json!({"k": "hi"}));
        assert_eq!(hub_frames(&drain(&mut room)), [json!({"t": "peers"})]);
        peers(&mut room, t0, &[1, 2]);
        assert_eq!(
            hub_frames(&drain(&mut room))[0]["payload"]["k"],
            json!("present")
        );
        from(&mut room, t0, 2, json!({"k": "present", "name": ""}));
        drain(&mut room);
        assert_eq!(room.members()[0].name, "Guest");
        from(&mut room, t0, 2, json!({"k": "bye"}));
        let out = drain(&mut room);
        assert!(out.contains(&LanOutput::CloseLink { peer: "2".into() }));
        assert!(out.contains(&LanOutput::Event(LanEvent::Left {
            member: LanMember {
                id: "2".into(),
                name: "Guest".into(),
                cam: false
            },
            silent: false
        })));
        assert!(room.members().is_empty());
    }

    #[test]
    fn silent_members_are_reaped_after_8_s_and_beacons_every_2500_ms() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[]);
        from(&mut room, t0, 2, json!({"k": "present", "name": "Two"}));
        drain(&mut room);
        let mut t = t0;
        let mut beacons = 0;
        loop {
            let at = next_timeout(&mut room).unwrap();
            assert!(at > t);
            t = at;
            room.handle_input(t, LanInput::Timeout);
            let out = drain(&mut room);
            beacons += hub_frames(&out)
                .iter()
                .filter(|f| f["t"] == "peers")
                .count();
            // Nobody answers `peers`: each broadcast gives up after 3 s.
            if let Some(LanOutput::Event(LanEvent::Left { member, silent })) = out
                .iter()
                .find(|o| matches!(o, LanOutput::Event(LanEvent::Left { .. })))
            {
                assert_eq!(member.id, "2");
                assert!(*silent);
                break;
            }
            assert!(t - t0 <= Duration::from_millis(10_000), "not reaped");
        }
        // Reaped at the first beacon tick past 8 s of silence: 10 s (ticks at 2.5 s).
        assert_eq!(t - t0, Duration::from_millis(10_000));
        assert_eq!(beacons, 4);
    }

    #[test]
    fn a_lost_hub_is_retried_after_2_s_a_failed_attempt_after_3_s() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[]);
        room.handle_input(t0, LanInput::HubDown);
        assert_eq!(
            drain(&mut room),
            vec![LanOutput::Event(LanEvent::Reconnecting)]
        );
        let t1 = t0 + Duration::from_secs(2);
        let connects = |v: Vec<(Instant, LanOutput)>| -> Vec<Instant> {
            v.into_iter()
                .filter(|(_, o)| *o == LanOutput::ConnectHub)
                .map(|(t, _)| t)
                .collect()
        };
        assert_eq!(
            connects(run_until(&mut room, t1 + Duration::from_millis(10))),
            [t1]
        );
        room.handle_input(t1, LanInput::HubFailed);
        assert!(drain(&mut room).is_empty());
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(
            connects(run_until(&mut room, t2 + Duration::from_millis(10))),
            [t2]
        );
        // A new id: `join` again, first.
        room.handle_input(t2, LanInput::HubUp { id: 7 });
        let frames = hub_frames(&drain(&mut room));
        assert_eq!(frames[0], json!({"t": "join", "room": "ember-lan"}));
        assert_eq!(room.id().as_deref(), Some("7"));
    }

    #[test]
    fn leaving_says_bye_to_everyone_then_disconnects() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[]);
        from(&mut room, t0, 2, json!({"k": "present", "name": "Two"}));
        drain(&mut room);
        room.leave(t0);
        let out = drain(&mut room);
        assert!(out.contains(&LanOutput::CloseLink { peer: "2".into() }));
        assert_eq!(hub_frames(&out), [json!({"t": "peers"})]);
        assert!(!out.contains(&LanOutput::Event(LanEvent::Done)));
        peers(&mut room, t0, &[1, 2, 3]);
        let out = drain(&mut room);
        assert_eq!(
            hub_frames(&out),
            [
                json!({"t": "to", "id": 2, "payload": {"k": "bye"}}),
                json!({"t": "to", "id": 3, "payload": {"k": "bye"}}),
            ]
        );
        assert_eq!(
            out[2..],
            [LanOutput::DisconnectHub, LanOutput::Event(LanEvent::Done)]
        );
        assert_eq!(next_timeout(&mut room), None);
    }

    #[test]
    fn leaving_with_no_answer_to_peers_gives_up_after_3_s() {
        let t0 = epoch();
        let mut room = up(t0, 1, &[]);
        room.leave(t0);
        drain(&mut room);
        let t1 = t0 + Duration::from_secs(3);
        // Leaving, no more beacons: the only timer is the `peers` give-up.
        assert_eq!(
            run_until(&mut room, t1 + Duration::from_secs(60)),
            [
                (t1, LanOutput::DisconnectHub),
                (t1, LanOutput::Event(LanEvent::Done))
            ]
        );
    }
}
