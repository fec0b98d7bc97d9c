//! Level, speaking state and tone measurement.

use crate::SAMPLE_RATE;

/// Root-mean-square level of `pcm`, normalized so full scale is 1.0 (0 for an empty slice).
pub fn rms(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    ((sum / pcm.len() as f64).sqrt() / 32768.0) as f32
}

/// Largest sample magnitude in `pcm` (0 for an empty slice). SILK-coded silence (a VOIP
/// encoder's, likely a browser's) decodes to a peak of 1-2, not 0; CELT silence (ours, see
/// `silence_payload`) decodes to exactly 0.
pub fn peak(pcm: &[i16]) -> u16 {
    pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0)
}

/// Level above which the web client shows a participant as speaking.
const SPEAKING_RMS: f32 = 0.045;
/// How long the level must stay below [`SPEAKING_RMS`] before speaking ends.
const SPEAKING_HOLD_MS: u64 = 350;

/// A change of speaking state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speaking {
    /// Speaking now.
    pub speaking: bool,
    /// RMS level of the chunk that caused the change (0..1).
    pub level: f32,
}

/// The web client's speaking rule on received audio: speaking while RMS > 0.045, and it stays
/// speaking until the level has been below that for 350 ms.
#[derive(Debug, Default)]
pub struct SpeakingDetector {
    speaking: bool,
    last_loud_ms: u64,
}

impl SpeakingDetector {
    /// Not speaking.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the participant counts as speaking.
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds a chunk of PCM that starts at `at_ms`; returns the new state if it changed.
    pub fn push(&mut self, at_ms: u64, pcm: &[i16]) -> Option<Speaking> {
        let level = rms(pcm);
        if level > SPEAKING_RMS {
            self.last_loud_ms = at_ms;
            if !self.speaking {
                self.speaking = true;
                return Some(Speaking {
                    speaking: true,
                    level,
                });
            }
        } else if self.speaking && at_ms.saturating_sub(self.last_loud_ms) >= SPEAKING_HOLD_MS {
            self.speaking = false;
            return Some(Speaking {
                speaking: false,
                level,
            });
        }
        None
    }
}

/// Power of the `hz` component of `pcm` (Goertzel), normalized so a full-scale sine gives
/// 1.0 and a sine of amplitude `a` (of full scale) gives about `a²`.
pub fn tone_power(pcm: &[i16], hz: f32) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let w = std::f64::consts::TAU * f64::from(hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = pcm.len() as f64;
    (4.0 * power / (n * n)) as f32
}

/// The strongest frequency in `pcm` between 50 Hz and 8 kHz, to about 1 Hz (0 for silence).
/// Looks at the first second at most.
pub fn dominant_frequency(pcm: &[i16]) -> f32 {
    let pcm = &pcm[..pcm.len().min(SAMPLE_RATE as usize)];
    let best = |from: f32, to: f32, step: f32| -> (f32, f32) {
        let mut best = (0.0f32, 0.0f32);
        let mut hz = from;
        while hz <= to {
            let p = tone_power(pcm, hz);
            if p > best.1 {
                best = (hz, p);
            }
            hz += step;
        }
        best
    };
    let (coarse, _) = best(50.0, 8000.0, 10.0);
    if coarse == 0.0 {
        return 0.0;
    }
    best(coarse - 10.0, coarse + 10.0, 0.5).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AudioSource;

    #[test]
    fn rms_is_normalized() {
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(rms(&[0; 960]), 0.0);
        assert!((rms(&[i16::MIN; 960]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn speaking_detector_timing() {
        let loud = AudioSource::tone(440.0).next_frame();
        let quiet = [0i16; 960];
        let mut d = SpeakingDetector::new();
        assert_eq!(d.push(0, &quiet), None);
        let on = d.push(20, &loud).unwrap();
        assert!(on.speaking && on.level > 0.2);
        assert_eq!(d.push(40, &loud), None);
        // Quiet from 60 ms: still speaking until 40 + 350 ms.
        let mut t = 60;
        while t < 390 {
            assert_eq!(d.push(t, &quiet), None, "at {t}");
            t += 20;
        }
        let off = d.push(400, &quiet).unwrap();
        assert!(!off.speaking);
        assert_eq!(d.push(420, &quiet), None);
        // A short blip inside the hold does not end it early.
        d.push(500, &loud);
        d.push(700, &quiet);
        assert_eq!(d.push(800, &loud), None);
        assert!(d.is_speaking());
    }

    #[test]
    fn tone_power_and_dominant_frequency() {
        let mut src = AudioSource::tone(440.0);
        let pcm: Vec<i16> = (0..10).flat_map(|_| src.next_frame()).collect();
        let p = tone_power(&pcm, 440.0);
        assert!((p - 0.09).abs() < 0.005, "power {p}");
        assert!(tone_power(&pcm, 880.0) < 1e-4);
        assert!((dominant_frequency(&pcm) - 440.0).abs() < 1.0);
        assert_eq!(dominant_frequency(&[0; 960]), 0.0);
        assert_eq!(tone_power(&[], 440.0), 0.0);
    }
}
