//! Recording 48 kHz mono PCM to a WAV file.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::{MediaError, SAMPLE_RATE};

/// Samples between header updates: ~1 s, so a killed process leaves a playable file.
const FLUSH_EVERY: usize = SAMPLE_RATE as usize;

/// Writes 48 kHz mono 16-bit PCM to a WAV file. The header is rewritten about every second
/// of audio, and on [`finish`](Self::finish) or drop.
pub struct WavRecorder {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    since_flush: usize,
}

impl WavRecorder {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, MediaError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec)?;
        // A valid (empty) file from the start.
        writer.flush()?;
        Ok(Self {
            writer: Some(writer),
            since_flush: 0,
        })
    }

    /// Appends samples.
    pub fn write(&mut self, pcm: &[i16]) -> Result<(), MediaError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(MediaError::BadInput("wav recorder already finished".into()));
        };
        for &s in pcm {
            writer.write_sample(s)?;
        }
        self.since_flush += pcm.len();
        if self.since_flush >= FLUSH_EVERY {
            writer.flush()?;
            self.since_flush = 0;
        }
        Ok(())
    }

    /// Samples written so far.
    pub fn len(&self) -> u32 {
        self.writer.as_ref().map_or(0, |w| w.len())
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the final header and closes the file.
    pub fn finish(mut self) -> Result<(), MediaError> {
        match self.writer.take() {
            Some(w) => Ok(w.finalize()?),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for WavRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavRecorder")
            .field("samples", &self.len())
            .finish_non_exhaustive()
    }
}

// hound's own Drop finalizes the header when a recorder is dropped without `finish`.

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kibitz-media-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn written_then_read_back() {
        let path = tmp("rt.wav");
        let mut rec = WavRecorder::create(&path).unwrap();
        let pcm: Vec<i16> = (0..5000).map(|i| (i % 300) as i16 - 150).collect();
        rec.write(&pcm[..1234]).unwrap();
        rec.write(&pcm[1234..]).unwrap();
        assert_eq!(rec.len(), 5000);
        rec.finish().unwrap();
        let mut r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec().sample_rate, 48_000);
        assert_eq!(r.spec().channels, 1);
        let back: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, pcm);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn header_is_valid_while_still_recording() {
        let path = tmp("live.wav");
        let mut rec = WavRecorder::create(&path).unwrap();
        // Empty but valid right away.
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 0);
        rec.write(&vec![7i16; 60_000]).unwrap();
        // Not finished, as if the process were killed now: the first second is readable.
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.duration(), 60_000);
        std::mem::forget(rec);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn drop_finalizes() {
        let path = tmp("drop.wav");
        {
            let mut rec = WavRecorder::create(&path).unwrap();
            rec.write(&[1, 2, 3]).unwrap();
        }
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 3);
        std::fs::remove_file(&path).unwrap();
    }
}
