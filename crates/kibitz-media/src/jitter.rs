//! Receive-side reordering and playout for one audio stream.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use crate::{FRAME_SAMPLES, SAMPLE_RATE};

/// Consecutive `Lost` slots emitted before the buffer decides the sender stopped (silence,
/// not loss) and waits for the next packet to resync.
const MAX_LOST_RUN: u32 = 5;
/// An RTP jump (either way) larger than this restarts the playout clock.
const MAX_JUMP: u64 = SAMPLE_RATE as u64; // 1 s
/// How many played timestamps are remembered to tell a duplicate from a late packet.
const PLAYED_MEMORY: usize = 64;
/// Buffered audio beyond the target delay that is tolerated before packets are skipped to
/// bring the delay back down (a fast sender clock, or the tail of a delay spike).
const EXCESS_DELAY: u64 = 3 * FRAME_SAMPLES as u64; // 60 ms

/// What to play for one slot, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The payload for this slot.
    Packet(Vec<u8>),
    /// Nothing arrived in time for this 20 ms slot: conceal it (`OpusDecoder::decode(None)`).
    Lost,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Every packet pushed.
    pub received: u64,
    /// Dropped: its slot had already been played.
    pub late: u64,
    /// Dropped: the same timestamp was already buffered or played.
    pub duplicate: u64,
    /// `Playout::Lost` slots emitted.
    pub lost: u64,
    /// Times the playout clock restarted (first packet excluded): after a long silence, a
    /// timestamp jump, or a run of losses.
    pub resyncs: u64,
    /// Dropped because `max_packets` were already buffered (the oldest goes).
    pub overflow: u64,
    /// Arrived just after their slot had been concealed and were played in the next slot
    /// instead (the playout delay grew by that much; this absorbs a slow sender clock).
    pub stretched: u64,
    /// Skipped at playout because more than the target delay + 60 ms was buffered (the delay
    /// shrinks back; this absorbs a fast sender clock).
    pub skipped: u64,
}

/// Playout clock: the RTP time `rtp` plays at `at`.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    rtp: u64,
}

/// A jitter buffer for one Opus stream keyed by extended RTP time (48 kHz units).
///
/// The playout clock starts at the first packet's arrival plus `target_delay`; from then on
/// each 20 ms slot is due at its RTP time on that clock. [`pop`](Self::pop) returns every due
/// slot, so call it at [`next_due`](Self::next_due) (or on any regular tick). Memory is
/// bounded by `max_packets`; a timestamp jump of more than 1 s, or a sender that went quiet
/// (after 5 `Lost` slots in a row), restarts the clock at the next packet instead of producing
/// a flood of `Lost`.
///
/// The delay adapts to clock drift and spikes: a packet arriving just after its slot was
/// concealed plays in the next slot (delay +20 ms, `stats().stretched`), and when more than
/// the target delay + 60 ms is queued, packets are skipped at playout until it is not
/// (`stats().skipped`).
#[derive(Debug)]
pub struct JitterBuffer {
    target_delay: Duration,
    max_packets: usize,
    packets: BTreeMap<u64, Vec<u8>>,
    /// `None` before the first packet and while waiting after a long gap.
    anchor: Option<Anchor>,
    /// RTP time of the next slot to play (meaningful once anything was anchored).
    next_rtp: u64,
    started: bool,
    lost_run: u32,
    /// Start of the slot just concealed, while nothing has played since.
    last_lost: Option<u64>,
    played: VecDeque<u64>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer that plays `target_delay` behind the first packet and holds at most
    /// `max_packets` (at least 1).
    pub fn new(target_delay: Duration, max_packets: usize) -> Self {
        Self {
            target_delay,
            max_packets: max_packets.max(1),
            packets: BTreeMap::new(),
            anchor: None,
            next_rtp: 0,
            started: false,
            lost_run: 0,
            last_lost: None,
            played: VecDeque::with_capacity(PLAYED_MEMORY),
            stats: JitterStats::default(),
        }
    }

    /// Adds a packet that arrived at `now` with extended RTP time `rtp_time`.
    pub fn push(&mut self, now: Instant, rtp_time: u64, payload: Vec<u8>) {
        self.stats.received += 1;
        if self.played.contains(&rtp_time) || self.packets.contains_key(&rtp_time) {
            self.stats.duplicate += 1;
            return;
        }
        if self.started {
            let jumped = rtp_time.abs_diff(self.next_rtp) > MAX_JUMP;
            if self.anchor.is_none() || jumped {
                self.resync(now, rtp_time);
                self.stats.resyncs += 1;
            } else if rtp_time < self.next_rtp {
                if self.last_lost != Some(rtp_time) {
                    self.stats.late += 1;
                    return;
                }
                // Its slot was just concealed: play it next, growing the delay by one slot
                // rather than losing the packet too.
                let shift = samples_to_duration(self.next_rtp - rtp_time);
                if let Some(anchor) = self.anchor.as_mut() {
                    anchor.at += shift;
                }
                self.next_rtp = rtp_time;
                self.last_lost = None;
                self.lost_run = 0;
                self.stats.stretched += 1;
            }
        } else {
            self.started = true;
            self.resync(now, rtp_time);
        }
        if self.packets.len() >= self.max_packets {
            self.packets.pop_first();
            self.stats.overflow += 1;
        }
        self.packets.insert(rtp_time, payload);
    }

    /// Every slot due at `now`, in order.
    pub fn pop(&mut self, now: Instant) -> Vec<Playout> {
        let mut out = Vec::new();
        while let Some(due) = self.next_due() {
            if due > now {
                break;
            }
            let Some((&key, _)) = self.packets.first_key_value() else {
                if self.lost_run >= MAX_LOST_RUN {
                    // The sender stopped: wait for its next packet and resync there.
                    self.anchor = None;
                    break;
                }
                self.emit_lost(&mut out, FRAME_SAMPLES as u64);
                continue;
            };
            if key <= self.next_rtp {
                // Audio queued behind this packet, summed by packet so a hole does not look
                // like a backlog.
                let queued: u64 = self
                    .packets
                    .range((Bound::Excluded(key), Bound::Unbounded))
                    .map(|(_, p)| packet_samples(p))
                    .sum();
                if let Some(payload) = self.packets.remove(&key) {
                    self.remember(key);
                    let samples = packet_samples(&payload);
                    self.next_rtp = key.saturating_add(samples);
                    self.lost_run = 0;
                    self.last_lost = None;
                    let excess = queued > self.target_samples() + EXCESS_DELAY;
                    let earlier = self
                        .anchor
                        .and_then(|a| a.at.checked_sub(samples_to_duration(samples)));
                    match (excess, earlier) {
                        (true, Some(at)) => {
                            // Too much queued: skip this one and play the next in its slot.
                            if let Some(anchor) = self.anchor.as_mut() {
                                anchor.at = at;
                            }
                            self.stats.skipped += 1;
                        }
                        _ => out.push(Playout::Packet(payload)),
                    }
                }
            } else if self.lost_run >= MAX_LOST_RUN {
                // A long hole before buffered packets: jump to them, playing the first now.
                self.lost_run = 0;
                self.stats.resyncs += 1;
                self.anchor = Some(Anchor { at: now, rtp: key });
                self.next_rtp = key;
            } else {
                let gap = (key - self.next_rtp).min(FRAME_SAMPLES as u64);
                self.emit_lost(&mut out, gap);
            }
        }
        out
    }

    /// When the next slot is due (`None` before the first packet or while waiting for a
    /// sender that went quiet).
    pub fn next_due(&self) -> Option<Instant> {
        let anchor = self.anchor?;
        Some(anchor.at + samples_to_duration(self.next_rtp.saturating_sub(anchor.rtp)))
    }

    /// Counters since creation.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn target_samples(&self) -> u64 {
        let micros = u64::try_from(self.target_delay.as_micros()).unwrap_or(u64::MAX);
        micros.saturating_mul(u64::from(SAMPLE_RATE)) / 1_000_000
    }

    fn resync(&mut self, now: Instant, rtp_time: u64) {
        self.packets.clear();
        self.played.clear();
        self.lost_run = 0;
        self.last_lost = None;
        self.anchor = Some(Anchor {
            at: now + self.target_delay,
            rtp: rtp_time,
        });
        self.next_rtp = rtp_time;
    }

    fn emit_lost(&mut self, out: &mut Vec<Playout>, samples: u64) {
        self.last_lost = Some(self.next_rtp);
        self.lost_run += 1;
        self.stats.lost += 1;
        self.next_rtp = self.next_rtp.saturating_add(samples.max(1));
        out.push(Playout::Lost);
    }

    fn remember(&mut self, rtp: u64) {
        if self.played.len() == PLAYED_MEMORY {
            self.played.pop_front();
        }
        self.played.push_back(rtp);
    }
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_micros(samples.saturating_mul(1_000_000) / u64::from(SAMPLE_RATE))
}

/// Duration of an Opus packet in samples; 20 ms when it cannot be parsed.
fn packet_samples(payload: &[u8]) -> u64 {
    match opus::packet::get_nb_samples(payload, SAMPLE_RATE) {
        Ok(n) if n > 0 => n as u64,
        _ => FRAME_SAMPLES as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = FRAME_SAMPLES as u64;
    const MS20: Duration = Duration::from_millis(20);

    /// Any fixed origin: the buffer only compares instants it was given.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn pkt(i: u64) -> Vec<u8> {
        // Not Opus: the buffer falls back to 20 ms per packet, and the byte tags the packet.
        vec![0xff, 0xff, 0xff, i as u8]
    }

    fn tags(out: &[Playout]) -> Vec<i32> {
        out.iter()
            .map(|p| match p {
                Playout::Packet(p) => i32::from(p[3]),
                Playout::Lost => -1,
            })
            .collect()
    }

    #[test]
    fn in_order_stream_plays_after_target_delay() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(60), 50);
        assert_eq!(jb.next_due(), None);
        jb.push(t0, 1000, pkt(0));
        assert_eq!(jb.next_due(), Some(t0 + Duration::from_millis(60)));
        assert!(jb.pop(t0 + Duration::from_millis(59)).is_empty());
        let mut played = Vec::new();
        for i in 1..10u64 {
            let now = t0 + MS20 * i as u32;
            jb.push(now, 1000 + i * F, pkt(i));
            played.extend(tags(&jb.pop(now)));
        }
        // At t0+180 ms the slots up to rtp+6F (due at 60+120) are due.
        assert_eq!(played, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn reordering_is_undone() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(60), 50);
        let order = [0u64, 2, 1, 4, 3, 5];
        for (k, i) in order.iter().enumerate() {
            jb.push(t0 + MS20 * k as u32, i * F, pkt(*i));
        }
        let out = jb.pop(t0 + Duration::from_millis(60) + MS20 * 5);
        assert_eq!(tags(&out), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn loss_gives_lost_and_late_packets_are_dropped() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(40), 50);
        jb.push(t0, 0, pkt(0));
        jb.push(t0 + MS20, F, pkt(1));
        jb.push(t0 + MS20 * 3, 3 * F, pkt(3));
        let out = jb.pop(t0 + Duration::from_millis(40) + MS20 * 3);
        assert_eq!(tags(&out), vec![0, 1, -1, 3]);
        // Packet 2 finally arrives: its slot is gone.
        jb.push(t0 + MS20 * 4, 2 * F, pkt(2));
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.duplicate), (1, 1, 0));
    }

    #[test]
    fn a_packet_just_after_its_concealed_slot_plays_next() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(40), 50);
        jb.push(t0, 0, pkt(0));
        jb.push(t0 + MS20, F, pkt(1));
        let d = Duration::from_millis(40);
        assert_eq!(tags(&jb.pop(t0 + d + MS20 * 2)), vec![0, 1, -1]);
        // Packet 2 arrives 5 ms after its slot was concealed; 3 is on time.
        jb.push(t0 + d + MS20 * 2 + Duration::from_millis(5), 2 * F, pkt(2));
        jb.push(t0 + MS20 * 3, 3 * F, pkt(3));
        assert_eq!(tags(&jb.pop(t0 + d + MS20 * 3)), vec![2]);
        assert_eq!(tags(&jb.pop(t0 + d + MS20 * 4)), vec![3]);
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.stretched), (1, 0, 1));
    }

    #[test]
    fn duplicates_are_dropped_buffered_or_played() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 50);
        jb.push(t0, 0, pkt(0));
        jb.push(t0, 0, pkt(0));
        jb.push(t0, F, pkt(1));
        assert_eq!(tags(&jb.pop(t0 + MS20)), vec![0]);
        jb.push(t0 + MS20, 0, pkt(0));
        jb.push(t0 + MS20, F, pkt(1));
        assert_eq!(tags(&jb.pop(t0 + MS20 * 2)), vec![1]);
        let s = jb.stats();
        assert_eq!((s.received, s.duplicate, s.late), (5, 3, 0));
    }

    #[test]
    fn silence_of_the_sender_caps_lost_then_resyncs() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(40), 50);
        jb.push(t0, 0, pkt(0));
        // Nothing more for 3 s; poll late and rarely.
        let out = jb.pop(t0 + Duration::from_secs(3));
        assert_eq!(tags(&out), vec![0, -1, -1, -1, -1, -1]);
        assert_eq!(jb.next_due(), None);
        assert!(jb.pop(t0 + Duration::from_secs(4)).is_empty());
        // The sender resumes with timestamps continuing in wall time.
        let t1 = t0 + Duration::from_secs(5);
        jb.push(t1, 250 * F, pkt(7));
        assert_eq!(jb.next_due(), Some(t1 + Duration::from_millis(40)));
        assert_eq!(tags(&jb.pop(t1 + Duration::from_millis(40))), vec![7]);
        let s = jb.stats();
        assert_eq!((s.lost, s.resyncs), (5, 1));
    }

    #[test]
    fn huge_jump_resyncs_instead_of_flooding() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 50);
        jb.push(t0, 0, pkt(0));
        assert_eq!(tags(&jb.pop(t0 + MS20)), vec![0]);
        let far = 1u64 << 40;
        jb.push(t0 + MS20 * 2, far, pkt(1));
        jb.push(t0 + MS20 * 3, far + F, pkt(2));
        let out = jb.pop(t0 + MS20 * 4);
        assert_eq!(tags(&out), vec![1, 2]);
        // And back down again.
        jb.push(t0 + MS20 * 5, 5 * F, pkt(3));
        assert_eq!(tags(&jb.pop(t0 + MS20 * 6)), vec![3]);
        assert_eq!(jb.stats().resyncs, 2);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn a_hole_before_buffered_packets_is_jumped() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 50);
        jb.push(t0, 0, pkt(0));
        // 500 ms ahead (under the 1 s jump limit), already buffered.
        jb.push(t0, 25 * F, pkt(1));
        let out = jb.pop(t0 + Duration::from_secs(1));
        assert_eq!(tags(&out), vec![0, -1, -1, -1, -1, -1, 1]);
        assert_eq!(jb.stats().resyncs, 1);
    }

    #[test]
    fn excess_delay_is_shed() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(40), 50);
        // A burst of 10 packets (200 ms) at once, target 40 ms.
        for i in 0..10u64 {
            jb.push(t0, i * F, pkt(i));
        }
        let out = tags(&jb.pop(t0 + Duration::from_millis(40)));
        // Skips until at most 40 + 60 ms is queued, then plays.
        assert_eq!(out, vec![4]);
        assert_eq!(jb.stats().skipped, 4);
    }

    #[test]
    fn extreme_timestamps_do_not_panic() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 8);
        for rtp in [u64::MAX, u64::MAX - 1, 0, u64::MAX / 2, u64::MAX] {
            jb.push(t0, rtp, pkt(1));
            let _ = jb.pop(t0 + Duration::from_secs(5));
        }
        let _ = jb.pop(t0 + Duration::from_secs(3600));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 8);
        for i in 0..40u64 {
            jb.push(t0, i * F, pkt(i));
        }
        assert_eq!(jb.len(), 8);
        assert_eq!(jb.stats().overflow, 32);
        // Never more than max_packets + a capped Lost run per pop.
        assert!(jb.pop(t0 + Duration::from_secs(60)).len() <= 8 + 2 * MAX_LOST_RUN as usize);
    }

    /// A sender whose clock runs slow or fast against ours, polled every 20 ms.
    fn drift(period_us: u64) -> (JitterStats, usize) {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(60), 50);
        let mut played = 0;
        let mut next_send = 0u64;
        let mut i = 0u64;
        for tick in 0..3000u64 {
            let now_us = tick * 20_000;
            while next_send <= now_us {
                jb.push(t0 + Duration::from_micros(next_send), i * F, pkt(i));
                i += 1;
                next_send += period_us;
            }
            let out = jb.pop(t0 + Duration::from_micros(now_us));
            played += out
                .iter()
                .filter(|p| matches!(p, Playout::Packet(_)))
                .count();
            assert!(jb.len() <= 50);
        }
        (jb.stats(), played)
    }

    #[test]
    fn clock_drift_either_way_stays_bounded() {
        // 1 % slow sender over 60 s: 600 ms of drift, absorbed by ~30 concealed slots.
        let (s, played) = drift(20_200);
        assert!(played as u64 + 3 >= s.received, "{s:?}");
        assert!(s.lost <= 31 && s.late == 0 && s.resyncs == 0, "{s:?}");
        // 1 % fast sender: the surplus is skipped, the delay stays bounded.
        let (s, played) = drift(19_800);
        assert!(played > 2950 && s.lost == 0, "{s:?} played {played}");
        assert!(s.skipped <= 31 && s.overflow == 0, "{s:?}");
    }

    #[test]
    fn opus_durations_advance_the_clock() {
        let t0 = t0();
        let mut jb = JitterBuffer::new(Duration::from_millis(20), 50);
        // TOC config 3 = SILK NB 60 ms, code 0: a 60 ms packet.
        let p60 = vec![0x18, 0x00];
        assert_eq!(packet_samples(&p60), 3 * F);
        jb.push(t0, 0, p60.clone());
        jb.push(t0, 3 * F, pkt(9));
        let out = jb.pop(t0 + Duration::from_millis(80));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Playout::Packet(p60));
        assert_eq!(jb.stats().lost, 0);
    }
}
