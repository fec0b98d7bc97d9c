//! Media helpers for the Kibitz reference client: Opus in and out, a jitter buffer, test audio
//! sources, WAV recording, speaking detection, and VP8 inspection/production (IVF files).
//!
//! # Model
//!
//! Everything here is synchronous and sans-IO: no sockets, no async runtime, and no clock
//! reads. Time comes in as arguments (`Instant` for the [`JitterBuffer`], milliseconds for the
//! [`SpeakingDetector`] and [`Vp8Source`]); the caller owns the timer. The only files touched
//! are the ones named by the caller ([`WavRecorder`], [`IvfWriter`], [`AudioSource::wav`]).
//!
//! Audio is always 48 kHz mono `i16`, in 20 ms frames of [`FRAME_SAMPLES`] samples ([`Frame`]),
//! which is what browsers send (opus/48000/2 carrying mono content; [`OpusDecoder`] downmixes).
//!
//! # Sending
//!
//! - A live lane: [`AudioSource::next_frame`] every 20 ms → [`OpusEncoder::encode`] → RTP
//!   (timestamp advances by [`FRAME_SAMPLES`]).
//! - A muted or withheld lane (MEDIA.md §3, §6d): send [`silence_payload()`] every 20 ms. It is
//!   a cached 35-byte frame from a CELT-only libopus encoder that has only ever seen zeros
//!   (~14 kbps, like Chrome's placeholder, well above the 1 kbps "no flow" line), so any
//!   decoder turns it into exact zeros (tested, also repeated), and it never carries residue
//!   of real audio. [`SilenceEncoder`] yields the same stream frame by frame. Never feed zeros
//!   to the encoder that carried real audio to make a "silent" lane: its first frames after
//!   the switch decode to audible residue, and SILK silence decodes to ±1-2 LSB, not zero.
//! - Video: [`Vp8Source::test_pattern`] or [`Vp8Source::placeholder`] (2×2 black, the gate
//!   placeholder), [`Vp8Source::next_frame`] with the frame's time in ms.
//!
//! # Receiving
//!
//! RTP payload → [`JitterBuffer::push`]; at [`JitterBuffer::next_due`] call
//! [`JitterBuffer::pop`] and feed each [`Playout`] to [`OpusDecoder::decode`]
//! (`Playout::Lost` → `decode(None)`, which conceals the gap) → [`WavRecorder::write`],
//! [`SpeakingDetector::push`], [`find_click`]. Checking that a browser's lane is silent: its
//! placeholder (~35 B frames) is probably SILK-coded, which libopus decodes to a [`peak`] of
//! 1-2 LSB ([`rms`] ≈ 0), so allow a few LSB rather than demanding exact zeros. VP8 frames: [`vp8::frame_info`] (no decoder
//! needed for the 2×2 no-leak check), [`IvfWriter`] to keep them.
//!
//! # Errors
//!
//! Bad input (garbage packets, unreadable files, odd sizes) returns [`MediaError`]; nothing
//! here panics on input. Payloads never appear in errors.
//!
//! # Threads
//!
//! All types are `Send`. libvpx's encoder context is not, so [`Vp8Source`] runs its encoder on
//! a small worker thread it owns; calls still block until the frame is encoded.

mod analysis;
mod error;
mod jitter;
mod opus_codec;
mod source;
pub mod vp8;
mod wav;

pub use analysis::{Speaking, SpeakingDetector, dominant_frequency, peak, rms, tone_power};
pub use error::MediaError;
pub use jitter::{JitterBuffer, JitterStats, Playout};
pub use opus_codec::{OpusDecoder, OpusEncoder, SilenceEncoder, silence_payload};
pub use source::{AudioSource, CLICK_THRESHOLD, find_click};
pub use vp8::{IvfWriter, Vp8Info, Vp8Source};
pub use wav::WavRecorder;

/// Audio sample rate everywhere in this crate (Opus's native rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of one audio frame.
pub const FRAME_MS: u32 = 20;
/// Samples in one mono 20 ms frame at 48 kHz (also the RTP timestamp step).
pub const FRAME_SAMPLES: usize = 960;
/// One 20 ms mono frame of 48 kHz PCM.
pub type Frame = [i16; FRAME_SAMPLES];

#[cfg(test)]
mod tests {
    /// The room driver moves these into tokio tasks.
    #[test]
    fn public_types_are_send() {
        fn send<T: Send>() {}
        send::<crate::OpusEncoder>();
        send::<crate::OpusDecoder>();
        send::<crate::SilenceEncoder>();
        send::<crate::JitterBuffer>();
        send::<crate::AudioSource>();
        send::<crate::WavRecorder>();
        send::<crate::SpeakingDetector>();
        send::<crate::IvfWriter>();
        send::<crate::Vp8Source>();
        send::<crate::MediaError>();
    }
}
