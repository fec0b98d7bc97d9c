//! The media half of a peer task: media ops carried out on a `kibitz-rtc` peer by the
//! engine's connection names, and the conversions between the engine's and kibitz-rtc's
//! media vocabulary.

use std::collections::BTreeMap;

use kibitz_client::{ConnId, MediaLane, MediaSignal, PeerKey};
use kibitz_proto::mesh::IceCandidateInit;
use kibitz_rtc::{
    CandidateInit, LaneRef, MediaKind, MediaOptions, MediaSignal as RtcSignal, PeerHandle,
};
use tokio::sync::mpsc;
use tracing::debug;

use super::PeerMsg;

/// Media work for a peer task, by the engine's connection name; the task keeps the name →
/// rtc id map, so an op that follows a dial finds the connection the dial made.
pub(super) enum MediaOp {
    Call {
        conn: ConnId,
        remote: String,
    },
    Offer {
        conn: ConnId,
        remote: String,
        relay: bool,
    },
    Adopt {
        conn: ConnId,
        rtc: kibitz_rtc::ConnId,
    },
    Answer {
        conn: ConnId,
    },
    Signal {
        conn: ConnId,
        remote: String,
        signal: RtcSignal,
        relay: bool,
    },
    RestartIce {
        conn: ConnId,
    },
    Keyframe {
        conn: ConnId,
        lane: LaneRef,
    },
    Close {
        conn: ConnId,
    },
    Write {
        conn: ConnId,
        lane: LaneRef,
        rtp_time: u64,
        data: Vec<u8>,
    },
}

/// Carries out one media op; returns false when the room is gone.
pub(super) async fn run_media_op(
    peer: &PeerHandle,
    key: PeerKey,
    op: MediaOp,
    media: &mut BTreeMap<ConnId, kibitz_rtc::ConnId>,
    out: &mpsc::UnboundedSender<(PeerKey, PeerMsg)>,
) -> bool {
    let dialled = |conn,
                   r: Result<kibitz_rtc::ConnId, kibitz_rtc::MediaError>,
                   media: &mut BTreeMap<_, _>| {
        let rtc = match r {
            Ok(rtc) => {
                media.insert(conn, rtc);
                Some(rtc)
            }
            Err(e) => {
                debug!(error = %e, "media connection not made");
                None
            }
        };
        out.send((key, PeerMsg::MediaDialled(conn, rtc))).is_ok()
    };
    match op {
        MediaOp::Call { conn, remote } => {
            let r = peer.call(&remote, MediaOptions::LEGACY).await;
            dialled(conn, r, media)
        }
        MediaOp::Offer {
            conn,
            remote,
            relay,
        } => {
            let r = peer.media_offer(&remote, MediaOptions::OWNED, relay).await;
            dialled(conn, r, media)
        }
        MediaOp::Adopt { conn, rtc } => {
            media.insert(conn, rtc);
            true
        }
        MediaOp::Answer { conn } => {
            let Some(&rtc) = media.get(&conn) else {
                return true;
            };
            if let Err(e) = peer.answer_call(rtc, MediaOptions::LEGACY).await {
                debug!(error = %e, "call not answered");
                media.remove(&conn);
                peer.close(rtc);
                return out.send((key, PeerMsg::MediaDialled(conn, None))).is_ok();
            }
            true
        }
        MediaOp::Signal {
            conn,
            remote,
            signal,
            relay,
        } => {
            let known = media.get(&conn).copied();
            let r = peer
                .media_signal(known, &remote, signal, MediaOptions::OWNED, relay)
                .await;
            match (known, r) {
                (None, r) => dialled(conn, r, media),
                (Some(_), Ok(_)) => true,
                (Some(_), Err(e)) => {
                    // Glare on the initiator, a stale candidate: the engine's rules decide.
                    debug!(error = %e, "media signal not applied");
                    true
                }
            }
        }
        MediaOp::RestartIce { conn } => {
            if let Some(&rtc) = media.get(&conn)
                && let Err(e) = peer.media_restart_ice(rtc).await
            {
                debug!(error = %e, "ICE restart refused");
            }
            true
        }
        MediaOp::Keyframe { conn, lane } => {
            if let Some(&rtc) = media.get(&conn) {
                let _ = peer.request_keyframe(rtc, lane).await;
            }
            true
        }
        MediaOp::Close { conn } => {
            if let Some(rtc) = media.remove(&conn) {
                peer.close(rtc);
            }
            true
        }
        MediaOp::Write {
            conn,
            lane,
            rtp_time,
            data,
        } => {
            if let Some(&rtc) = media.get(&conn) {
                peer.write_media_nowait(rtc, lane, rtp_time, data);
            }
            true
        }
    }
}

pub(super) fn media_lane(l: LaneRef) -> Option<MediaLane> {
    MediaLane::of(l.kind == MediaKind::Audio, l.ordinal)
}

pub(super) fn lane_ref(l: MediaLane) -> LaneRef {
    match l {
        MediaLane::Mic => LaneRef::MIC,
        MediaLane::Camera => LaneRef::CAMERA,
        MediaLane::Share => LaneRef::SHARE,
        MediaLane::ShareAudio => LaneRef::SHARE_AUDIO,
    }
}

pub(super) fn to_rtc_signal(s: MediaSignal) -> RtcSignal {
    match s {
        MediaSignal::Sdp { offer, sdp } => RtcSignal::Sdp { offer, sdp },
        MediaSignal::Candidate(c) => RtcSignal::Candidate(CandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_m_line_index: c.sdp_m_line_index.map(u32::from),
            username_fragment: c.username_fragment,
        }),
    }
}

pub(super) fn from_rtc_signal(s: RtcSignal) -> MediaSignal {
    match s {
        RtcSignal::Sdp { offer, sdp } => MediaSignal::Sdp { offer, sdp },
        RtcSignal::Candidate(c) => MediaSignal::Candidate(IceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_m_line_index: c.sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
            username_fragment: c.username_fragment,
        }),
    }
}
