//! Synthetic and file-backed audio sources, and the click marker for latency measurements.

use std::f64::consts::TAU;
use std::path::Path;

use crate::{FRAME_SAMPLES, Frame, MediaError, SAMPLE_RATE};

/// Tone amplitude: about 0.3 of full scale.
const TONE_AMPLITUDE: f64 = 0.3 * i16::MAX as f64;
/// Length of an injected click (5 ms): long enough to survive Opus at 32 kbps.
const CLICK_SAMPLES: usize = 240;
/// Half-period of the click's square wave (1 kHz), so it is not a DC step Opus would smear.
const CLICK_HALF_PERIOD: usize = 24;
/// [`find_click`]'s threshold: half of full scale, well above a 0.3 tone.
pub const CLICK_THRESHOLD: i16 = i16::MAX / 2;
/// Longest WAV file [`AudioSource::wav`] loads (10 minutes at 48 kHz), to bound memory.
const MAX_WAV_SAMPLES: usize = SAMPLE_RATE as usize * 600;

/// Where the next 20 ms of outgoing audio comes from.
#[derive(Debug, Clone)]
pub struct AudioSource {
    kind: Kind,
    click_pending: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Silence,
    Tone {
        step: f64,
        phase: f64,
    },
    Wav {
        samples: Vec<i16>,
        pos: usize,
        looping: bool,
    },
}

impl AudioSource {
    /// Digital silence.
    pub fn silence() -> Self {
        Self::of(Kind::Silence)
    }

    /// A sine at `hz`, amplitude ~0.3 of full scale, phase-continuous across frames.
    pub fn tone(hz: f32) -> Self {
        Self::of(Kind::Tone {
            step: TAU * f64::from(hz) / f64::from(SAMPLE_RATE),
            phase: 0.0,
        })
    }

    /// A WAV file (any rate and channel count hound reads), mixed to mono and resampled to
    /// 48 kHz. Plays once and then silence, or over and over when `looping`.
    pub fn wav(path: impl AsRef<Path>, looping: bool) -> Result<Self, MediaError> {
        let samples = read_wav_mono_48k(path.as_ref())?;
        Ok(Self::of(Kind::Wav {
            samples,
            pos: 0,
            looping,
        }))
    }

    /// Parses a command-line spec: `silence`, `tone` (440 Hz), `tone:HZ`, `loop:PATH`
    /// (a looping WAV), `wav:PATH` or any other text as a WAV path played once.
    pub fn parse(spec: &str) -> Result<Self, MediaError> {
        if spec == "silence" {
            return Ok(Self::silence());
        }
        if spec == "tone" {
            return Ok(Self::tone(440.0));
        }
        if let Some(hz) = spec.strip_prefix("tone:") {
            return match hz.trim().parse::<f32>() {
                Ok(hz) if hz > 0.0 && hz < SAMPLE_RATE as f32 / 2.0 => Ok(Self::tone(hz)),
                _ => Err(MediaError::BadInput(format!(
                    "tone frequency must be between 0 and 24000 Hz, got {hz:?}"
                ))),
            };
        }
        if let Some(path) = spec.strip_prefix("loop:") {
            return Self::wav(path, true);
        }
        Self::wav(spec.strip_prefix("wav:").unwrap_or(spec), false)
    }

    fn of(kind: Kind) -> Self {
        Self {
            kind,
            click_pending: false,
        }
    }

    /// Marks a moment: the next frame starts with a short full-scale click (a 5 ms 1 kHz
    /// square burst) that [`find_click`] finds on the far side, even through Opus.
    pub fn inject_click(&mut self) {
        self.click_pending = true;
    }

    /// The next 20 ms.
    pub fn next_frame(&mut self) -> Frame {
        let mut frame = [0i16; FRAME_SAMPLES];
        match &mut self.kind {
            Kind::Silence => {}
            Kind::Tone { step, phase } => {
                for s in frame.iter_mut() {
                    *s = (phase.sin() * TONE_AMPLITUDE) as i16;
                    *phase = (*phase + *step) % TAU;
                }
            }
            Kind::Wav {
                samples,
                pos,
                looping,
            } => {
                for s in frame.iter_mut() {
                    if *pos >= samples.len() {
                        if *looping && !samples.is_empty() {
                            *pos = 0;
                        } else {
                            break;
                        }
                    }
                    *s = samples[*pos];
                    *pos += 1;
                }
            }
        }
        if std::mem::take(&mut self.click_pending) {
            for (i, s) in frame.iter_mut().take(CLICK_SAMPLES).enumerate() {
                *s = if (i / CLICK_HALF_PERIOD).is_multiple_of(2) {
                    i16::MAX
                } else {
                    -i16::MAX
                };
            }
        }
        frame
    }
}

/// Index of the first sample whose magnitude exceeds [`CLICK_THRESHOLD`], if any.
pub fn find_click(pcm: &[i16]) -> Option<usize> {
    pcm.iter()
        .position(|&s| s.unsigned_abs() > CLICK_THRESHOLD.unsigned_abs())
}

/// Reads a WAV file as mono 48 kHz `i16`: channels averaged, linear resampling.
fn read_wav_mono_48k(path: &Path) -> Result<Vec<i16>, MediaError> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate == 0 {
        return Err(MediaError::BadInput(
            "wav header has no channels or rate".into(),
        ));
    }
    let frames = reader.duration() as usize;
    let out_len = (frames as u64 * u64::from(SAMPLE_RATE) / u64::from(spec.sample_rate)) as usize;
    if out_len > MAX_WAV_SAMPLES {
        return Err(MediaError::BadInput(
            "wav file longer than 10 minutes".into(),
        ));
    }
    // Every sample as f32 in -1..1.
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << spec.bits_per_sample.clamp(1, 32).saturating_sub(1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok(resample_linear(&mono, spec.sample_rate)
        .into_iter()
        .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16)
        .collect())
}

/// Linear interpolation from `rate` to 48 kHz.
fn resample_linear(input: &[f32], rate: u32) -> Vec<f32> {
    if rate == SAMPLE_RATE || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(rate) / f64::from(SAMPLE_RATE);
    let out_len = (input.len() as f64 / ratio) as usize;
    (0..out_len)
        .map(|i| {
            let x = i as f64 * ratio;
            let i0 = x as usize;
            let frac = (x - i0 as f64) as f32;
            let a = input.get(i0).copied().unwrap_or(0.0);
            let b = input.get(i0 + 1).copied().unwrap_or(a);
            a + (b - a) * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OpusDecoder, OpusEncoder, dominant_frequency, rms};

    #[test]
    fn tone_is_phase_continuous_and_scaled() {
        let mut src = AudioSource::parse("tone:660").unwrap();
        let a = src.next_frame();
        let b = src.next_frame();
        let joined: Vec<i16> = a.iter().chain(b.iter()).copied().collect();
        // No jump at the frame border larger than one sample step of the sine.
        let max_step = (TAU * 660.0 / 48_000.0 * TONE_AMPLITUDE) as i32 + 2;
        for w in joined.windows(2) {
            assert!((i32::from(w[1]) - i32::from(w[0])).abs() <= max_step);
        }
        let level = rms(&joined);
        assert!((level - 0.3 / 2f32.sqrt()).abs() < 0.01, "rms {level}");
        assert!((dominant_frequency(&joined) - 660.0).abs() < 5.0);
    }

    #[test]
    fn parse_specs() {
        assert!(
            AudioSource::parse("silence")
                .unwrap()
                .next_frame()
                .iter()
                .all(|&s| s == 0)
        );
        assert!(rms(&AudioSource::parse("tone").unwrap().next_frame()) > 0.1);
        assert!(AudioSource::parse("tone:abc").is_err());
        assert!(AudioSource::parse("tone:0").is_err());
        assert!(AudioSource::parse("/nonexistent/file.wav").is_err());
    }

    fn write_wav(path: &Path, rate: u32, channels: u16, secs: f32, hz: f32) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..(rate as f32 * secs) as usize {
            let v = ((TAU * f64::from(hz) * i as f64 / f64::from(rate)).sin() * 10_000.0) as i16;
            for _ in 0..channels {
                w.write_sample(v).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn wav_is_resampled_mixed_and_played_once() {
        let dir = std::env::temp_dir().join(format!("kibitz-media-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s16k.wav");
        write_wav(&path, 16_000, 2, 0.1, 500.0);
        let mut src = AudioSource::wav(&path, false).unwrap();
        let frames: Vec<Frame> = (0..7).map(|_| src.next_frame()).collect();
        let pcm: Vec<i16> = frames[..5].iter().flatten().copied().collect();
        assert!((dominant_frequency(&pcm) - 500.0).abs() < 5.0);
        // 100 ms = 5 frames, then silence.
        assert!(rms(&frames[4]) > 0.1);
        assert!(frames[5].iter().chain(frames[6].iter()).all(|&s| s == 0));

        let mut looped = AudioSource::parse(&format!("loop:{}", path.display())).unwrap();
        for _ in 0..20 {
            assert!(rms(&looped.next_frame()) > 0.1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_wav_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kibitz-media-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.wav");
        std::fs::write(&path, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk").unwrap();
        assert!(AudioSource::wav(&path, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn click_survives_opus_and_is_found() {
        let mut src = AudioSource::tone(440.0);
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        for i in 0..20 {
            if i == 10 {
                src.inject_click();
            }
            let f = src.next_frame();
            if i == 10 {
                assert_eq!(find_click(&f), Some(0));
            } else {
                assert_eq!(find_click(&f), None);
            }
            pcm.extend(dec.decode(Some(&enc.encode(&f).unwrap())).unwrap());
        }
        let at = find_click(&pcm).expect("click after decode");
        // The codec delays by its look-ahead (~6.5 ms); the click starts at sample 9600.
        let start = 10 * FRAME_SAMPLES;
        assert!(at >= start && at < start + 960, "click at {at}");
    }
}
