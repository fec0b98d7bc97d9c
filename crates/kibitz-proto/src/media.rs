//! Media lanes and the grant rule that gates them (MEDIA.md §3–4, KIBITZ.md §4.8).
//!
//! A participant's media connection to a peer carries up to four lanes. The sender decides,
//! per peer and lane, whether the real source flows or a placeholder does (silence, a 2×2
//! black frame): the lane stays alive either way, so a grant change never renegotiates.

use serde::{Deserialize, Serialize};

use crate::grants::{Grant, Perceive};

/// One lane of a media connection. Lanes are told apart by their ordinal among the m-lines
/// of their kind (audio#1, video#1, video#2, audio#2), never by absolute position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MediaLane {
    /// audio#1: the microphone.
    Mic,
    /// video#1: the camera (legacy: camera or share, one lane).
    Camera,
    /// video#2 (owned only): the screen share.
    Share,
    /// audio#2 (owned only): a shared tab's or clip's sound.
    ShareAudio,
}

impl MediaLane {
    /// The lane of an m-line, from its kind and its ordinal among the m-lines of that kind.
    pub fn of(audio: bool, ordinal: u8) -> Option<Self> {
        match (audio, ordinal) {
            (true, 0) => Some(Self::Mic),
            (true, 1) => Some(Self::ShareAudio),
            (false, 0) => Some(Self::Camera),
            (false, 1) => Some(Self::Share),
            _ => None,
        }
    }

    /// Whether it carries audio.
    pub fn is_audio(self) -> bool {
        matches!(self, Self::Mic | Self::ShareAudio)
    }

    /// Its name in events and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mic => "mic",
            Self::Camera => "camera",
            Self::Share => "share",
            Self::ShareAudio => "share-audio",
        }
    }
}

/// Which lanes may carry their real source, to one peer (sending) or from all (receiving).
/// `true` = the real source may flow; `false` = the placeholder (or, receiving: not recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LaneGates {
    /// Microphone.
    pub mic: bool,
    /// Camera: never gated.
    pub camera: bool,
    /// Screen share.
    pub share: bool,
    /// Share sound.
    pub share_audio: bool,
}

impl LaneGates {
    /// Every lane open.
    pub const OPEN: Self = Self {
        mic: true,
        camera: true,
        share: true,
        share_audio: true,
    };

    /// The gates a grant implies: mic and share sound need `hear-audio`, the share lane needs
    /// `see-screen`, the camera is never gated.
    pub fn for_grant(grant: &Grant) -> Self {
        let hear = grant.perceives(Perceive::HearAudio);
        Self {
            mic: hear,
            camera: true,
            share: grant.perceives(Perceive::SeeScreen),
            share_audio: hear,
        }
    }

    /// Whether one lane is open.
    pub fn allows(&self, lane: MediaLane) -> bool {
        match lane {
            MediaLane::Mic => self.mic,
            MediaLane::Camera => self.camera,
            MediaLane::Share => self.share,
            MediaLane::ShareAudio => self.share_audio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_gate_lanes() {
        assert_eq!(LaneGates::for_grant(&Grant::full()), LaneGates::OPEN);
        let none = LaneGates::for_grant(&Grant::default());
        assert!(!none.mic && !none.share && !none.share_audio && none.camera);
        let mut g = Grant::default();
        g.perceive.push(Perceive::SeeScreen);
        let s = LaneGates::for_grant(&g);
        assert!(s.allows(MediaLane::Share) && !s.allows(MediaLane::Mic));
        g.perceive.push(Perceive::HearAudio);
        assert_eq!(LaneGates::for_grant(&g), LaneGates::OPEN);
    }
}
