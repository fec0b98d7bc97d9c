//! Opus encode/decode through libopus.

use std::sync::OnceLock;

use opus::{Application, Bitrate, Channels};

use crate::{FRAME_SAMPLES, Frame, MediaError, SAMPLE_RATE};

/// Largest Opus packet libopus produces for one frame (RFC 6716 §3.4: 1275 bytes + TOC slack).
const MAX_PACKET: usize = 1500;
/// 120 ms, the longest duration one Opus packet can carry.
const MAX_DECODED: usize = SAMPLE_RATE as usize * 120 / 1000;
/// Target bitrate: plenty for speech, well above the 1 kbps "no flow" line browsers use.
const BITRATE: i32 = 32_000;

/// A 48 kHz mono Opus encoder configured like a browser's voice lane: VOIP application,
/// in-band FEC on, DTX off (silence still flows as real frames), ~32 kbps.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: opus::Encoder,
}

impl OpusEncoder {
    /// A new encoder.
    pub fn new() -> Result<Self, MediaError> {
        let mut inner = opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::Bits(BITRATE))?;
        inner.set_inband_fec(true)?;
        // FEC is only emitted when the encoder expects some loss.
        inner.set_packet_loss_perc(5)?;
        inner.set_dtx(false)?;
        Ok(Self { inner })
    }

    /// Encodes one 20 ms frame into one Opus packet (the RTP payload).
    pub fn encode(&mut self, pcm: &Frame) -> Result<Vec<u8>, MediaError> {
        Ok(self.inner.encode_vec(pcm, MAX_PACKET)?)
    }
}

/// Bitrate of the silence stream: 35-byte packets, like Chrome's silent placeholder, so the
/// lane carries ~14 kbps, far above the 1 kbps browsers treat as "no media flowing".
const SILENCE_BITRATE: i32 = 14_000;

/// An encoder that only ever sees digital silence, for a muted or withheld lane: every packet
/// it yields decodes to exact zeros. [`silence_payload()`] is the cached equivalent.
///
/// It is CELT-only (low-delay application) at constant bitrate: CELT codes digital silence as
/// a silence flag (decoded as exact zeros) and CBR pads it to a steady size. A SILK (VOIP)
/// encoder fed zeros would emit frames that decode to ±1-2 LSB of noise instead.
#[derive(Debug)]
pub struct SilenceEncoder {
    inner: opus::Encoder,
}

impl SilenceEncoder {
    /// A new silence stream.
    pub fn new() -> Result<Self, MediaError> {
        let mut inner = opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::LowDelay)?;
        inner.set_bitrate(Bitrate::Bits(SILENCE_BITRATE))?;
        inner.set_vbr(false)?;
        inner.set_dtx(false)?;
        Ok(Self { inner })
    }

    /// The next 20 ms of silence as an Opus packet.
    pub fn next_payload(&mut self) -> Result<Vec<u8>, MediaError> {
        Ok(self.inner.encode_vec(&[0; FRAME_SAMPLES], MAX_PACKET)?)
    }
}

/// A libopus-encoded 20 ms frame of digital silence, as sent on a muted or withheld lane.
///
/// Produced once by a [`SilenceEncoder`] (a fresh encoder that has only seen zeros, so it
/// carries nothing of any real audio) and cached: 35 bytes, CELT, decoded as exact zeros, also
/// when repeated or after concealment.
pub fn silence_payload() -> Vec<u8> {
    static PAYLOAD: OnceLock<Vec<u8>> = OnceLock::new();
    PAYLOAD
        .get_or_init(|| {
            // Several frames in, so the cached one is a steady-state frame, not a stream start.
            let Ok(mut enc) = SilenceEncoder::new() else {
                return FALLBACK_SILENCE.to_vec();
            };
            let mut last = FALLBACK_SILENCE.to_vec();
            for _ in 0..5 {
                match enc.next_payload() {
                    Ok(p) => last = p,
                    Err(_) => return FALLBACK_SILENCE.to_vec(),
                }
            }
            last
        })
        .clone()
}

/// What libopus's CELT encoder emits for digital silence in VBR mode (fullband, 20 ms, mono),
/// used only if libopus could not be initialised at all.
const FALLBACK_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// A 48 kHz mono Opus decoder. Stereo packets (what Chrome sends) are downmixed by libopus.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: opus::Decoder,
    /// Duration of the last decoded packet, so concealment covers the same span.
    last_samples: usize,
}

impl OpusDecoder {
    /// A new decoder.
    pub fn new() -> Result<Self, MediaError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, Channels::Mono)?,
            last_samples: FRAME_SAMPLES,
        })
    }

    /// Decodes one packet to mono PCM; `None` (or an empty payload) means the packet was lost
    /// and libopus conceals it (one packet's worth, normally 20 ms). Packets of other
    /// durations (10/40/60 ms…) return however many samples they hold.
    pub fn decode(&mut self, payload: Option<&[u8]>) -> Result<Vec<i16>, MediaError> {
        let mut out = vec![0i16; MAX_DECODED];
        let n = match payload {
            Some(p) if !p.is_empty() => {
                let n = self.inner.decode(p, &mut out, false)?;
                if n > 0 {
                    self.last_samples = n;
                }
                n
            }
            _ => {
                let span = self.last_samples.min(MAX_DECODED);
                self.inner.decode(&[], &mut out[..span], false)?
            }
        };
        out.truncate(n);
        Ok(out)
    }

    /// Recovers a lost packet from the in-band FEC carried by the packet after it (`next`).
    /// Call it for the gap instead of `decode(None)` when the following packet is at hand,
    /// then decode `next` normally.
    pub fn decode_fec(&mut self, next: &[u8]) -> Result<Vec<i16>, MediaError> {
        if next.is_empty() {
            return self.decode(None);
        }
        let span = self.last_samples.min(MAX_DECODED);
        let mut out = vec![0i16; span];
        let n = self.inner.decode(next, &mut out, true)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AudioSource, tone_power};

    fn tone_frames(hz: f32, n: usize) -> Vec<Frame> {
        let mut src = AudioSource::tone(hz);
        (0..n).map(|_| src.next_frame()).collect()
    }

    #[test]
    fn tone_round_trip_keeps_440_hz() {
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        let mut bytes = 0;
        for f in tone_frames(440.0, 50) {
            let p = enc.encode(&f).unwrap();
            bytes += p.len();
            let out = dec.decode(Some(&p)).unwrap();
            assert_eq!(out.len(), FRAME_SAMPLES);
            pcm.extend(out);
        }
        // Skip the codec's start-up; measure the steady state.
        let tail = &pcm[FRAME_SAMPLES * 10..];
        let at = tone_power(tail, 440.0);
        let off = tone_power(tail, 1000.0);
        assert!(at > 0.05, "440 Hz power {at}");
        assert!(off < at / 100.0, "1000 Hz power {off} vs {at}");
        let dom = crate::dominant_frequency(tail);
        assert!((dom - 440.0).abs() < 5.0, "dominant {dom}");
        // ~32 kbps = 80 bytes per frame; allow VBR slack.
        assert!(bytes / 50 < 200, "mean payload {}", bytes / 50);
    }

    #[test]
    fn silence_payload_decodes_to_exact_zeros() {
        let p = silence_payload();
        assert_eq!(p.len(), 35);
        let mut dec = OpusDecoder::new().unwrap();
        for _ in 0..100 {
            let out = dec.decode(Some(&p)).unwrap();
            assert_eq!(out.len(), FRAME_SAMPLES);
            assert!(out.iter().all(|&s| s == 0));
        }
        // Concealment after silence is silence too.
        assert!(dec.decode(None).unwrap().iter().all(|&s| s == 0));
    }

    #[test]
    fn silence_encoder_stream_decodes_to_exact_zeros() {
        let mut enc = SilenceEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        for _ in 0..200 {
            let p = enc.next_payload().unwrap();
            let out = dec.decode(Some(&p)).unwrap();
            assert_eq!(out.len(), FRAME_SAMPLES);
            assert!(out.iter().all(|&s| s == 0));
        }
    }

    /// Why withheld lanes use a separate silence stream: the live encoder fed zeros after
    /// speech first decodes to residue; and a VOIP encoder that only saw zeros codes them as
    /// SILK, which decodes to ±1-2 LSB, not exact zeros.
    #[test]
    fn live_encoder_fed_zeros_is_not_exact_silence() {
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        for f in tone_frames(440.0, 20) {
            dec.decode(Some(&enc.encode(&f).unwrap())).unwrap();
        }
        let p = enc.encode(&[0; FRAME_SAMPLES]).unwrap();
        assert!(crate::peak(&dec.decode(Some(&p)).unwrap()) > 100);

        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let peaks: Vec<u16> = (0..20)
            .map(|_| {
                let p = enc.encode(&[0; FRAME_SAMPLES]).unwrap();
                crate::peak(&dec.decode(Some(&p)).unwrap())
            })
            .collect();
        assert!(peaks.iter().all(|&p| p <= 4), "{peaks:?}");
        assert!(peaks.iter().any(|&p| p > 0), "{peaks:?}");
    }

    #[test]
    fn fallback_silence_decodes_to_zeros() {
        let mut dec = OpusDecoder::new().unwrap();
        let out = dec.decode(Some(&FALLBACK_SILENCE)).unwrap();
        assert_eq!(out.len(), FRAME_SAMPLES);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn loss_is_concealed_with_one_frame() {
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let frames = tone_frames(440.0, 3);
        dec.decode(Some(&enc.encode(&frames[0]).unwrap())).unwrap();
        let _lost = enc.encode(&frames[1]).unwrap();
        let plc = dec.decode(None).unwrap();
        assert_eq!(plc.len(), FRAME_SAMPLES);
        let next = enc.encode(&frames[2]).unwrap();
        let fec = dec.decode_fec(&next).unwrap();
        assert_eq!(fec.len(), FRAME_SAMPLES);
        assert_eq!(dec.decode(Some(&next)).unwrap().len(), FRAME_SAMPLES);
    }

    #[test]
    fn stereo_packets_decode_to_mono() {
        let mut enc = opus::Encoder::new(SAMPLE_RATE, Channels::Stereo, Application::Voip).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        for f in tone_frames(440.0, 30) {
            let stereo: Vec<i16> = f.iter().flat_map(|&s| [s, s]).collect();
            let p = enc.encode_vec(&stereo, MAX_PACKET).unwrap();
            let out = dec.decode(Some(&p)).unwrap();
            assert_eq!(out.len(), FRAME_SAMPLES);
            pcm.extend(out);
        }
        let tail = &pcm[FRAME_SAMPLES * 10..];
        assert!((crate::dominant_frequency(tail) - 440.0).abs() < 5.0);
    }

    #[test]
    fn other_frame_durations_return_their_sample_count() {
        let mut dec = OpusDecoder::new().unwrap();
        for ms in [10usize, 20, 40, 60] {
            let mut enc =
                opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip).unwrap();
            let n = SAMPLE_RATE as usize * ms / 1000;
            let pcm = vec![1000i16; n];
            let p = enc.encode_vec(&pcm, MAX_PACKET).unwrap();
            assert_eq!(dec.decode(Some(&p)).unwrap().len(), n, "{ms} ms");
            // Concealment follows the last packet's duration.
            assert_eq!(dec.decode(None).unwrap().len(), n, "{ms} ms plc");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new().unwrap();
        for bad in [
            &[0xffu8, 0xff, 0xff, 0xff][..],
            &[0x03][..],
            &[0x0b, 0xff][..],
        ] {
            let _ = dec.decode(Some(bad));
        }
        assert!(dec.decode(Some(&[0x03])).is_err());
        // Still usable afterwards.
        assert!(dec.decode(Some(&silence_payload())).is_ok());
    }
}
