//! VP8: inspecting frames (no decoder), writing IVF files, and producing frames with libvpx.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::MediaError;

/// What a VP8 frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Info {
    /// A keyframe (intra frame).
    pub keyframe: bool,
    /// Picture width; 0 for interframes (only keyframes carry the size).
    pub width: u16,
    /// Picture height; 0 for interframes.
    pub height: u16,
}

/// Reads a whole depacketized VP8 frame's header (RFC 6386 §9.1): keyframe flag and, for
/// keyframes, the 14-bit width and height after the `9d 01 2a` start code. `None` for input
/// too short to be a frame or a keyframe without the start code. Never panics.
pub fn frame_info(frame: &[u8]) -> Option<Vp8Info> {
    let tag = frame.first()?;
    if frame.len() < 3 {
        return None;
    }
    // Bit 0 of the frame tag is 0 for a keyframe.
    if tag & 1 == 1 {
        return Some(Vp8Info {
            keyframe: false,
            width: 0,
            height: 0,
        });
    }
    let Some(&[s0, s1, s2, w0, w1, h0, h1]) = frame.get(3..10) else {
        return None;
    };
    if [s0, s1, s2] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    // The top two bits are the upscaling mode, not size.
    Some(Vp8Info {
        keyframe: true,
        width: u16::from_le_bytes([w0, w1]) & 0x3fff,
        height: u16::from_le_bytes([h0, h1]) & 0x3fff,
    })
}

/// IVF header length.
const IVF_HEADER: usize = 32;
/// Offset of the frame count in the IVF header.
const IVF_COUNT_AT: u64 = 24;

/// Writes VP8 frames to an IVF file (fourcc `VP80`, timebase 1/1000: `pts` in ms). The frame
/// count in the header is fixed on [`finish`](Self::finish) (best effort on drop).
#[derive(Debug)]
pub struct IvfWriter<W: Write + Seek = BufWriter<File>> {
    out: Option<W>,
    frames: u32,
}

impl IvfWriter {
    /// Creates (or truncates) `path` for a `width`×`height` stream.
    pub fn create(path: impl AsRef<Path>, width: u16, height: u16) -> Result<Self, MediaError> {
        Self::new(BufWriter::new(File::create(path)?), width, height)
    }
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Writes the header to `out`.
    pub fn new(mut out: W, width: u16, height: u16) -> Result<Self, MediaError> {
        let mut h = [0u8; IVF_HEADER];
        h[0..4].copy_from_slice(b"DKIF");
        h[4..6].copy_from_slice(&0u16.to_le_bytes()); // version
        h[6..8].copy_from_slice(&(IVF_HEADER as u16).to_le_bytes());
        h[8..12].copy_from_slice(b"VP80");
        h[12..14].copy_from_slice(&width.to_le_bytes());
        h[14..16].copy_from_slice(&height.to_le_bytes());
        h[16..20].copy_from_slice(&1000u32.to_le_bytes()); // timebase denominator (rate)
        h[20..24].copy_from_slice(&1u32.to_le_bytes()); // timebase numerator (scale)
        // 24..28 frame count, fixed at the end; 28..32 unused.
        out.write_all(&h)?;
        Ok(Self {
            out: Some(out),
            frames: 0,
        })
    }

    /// Appends one whole VP8 frame with its presentation time in ms.
    pub fn write_frame(&mut self, pts: u64, frame: &[u8]) -> Result<(), MediaError> {
        let Some(out) = self.out.as_mut() else {
            return Err(MediaError::BadInput("ivf writer already finished".into()));
        };
        let len = u32::try_from(frame.len())
            .map_err(|_| MediaError::BadInput("vp8 frame larger than 4 GiB".into()))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&pts.to_le_bytes())?;
        out.write_all(frame)?;
        self.frames = self.frames.saturating_add(1);
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Fixes the frame count in the header, flushes, and hands back the output.
    pub fn finish(mut self) -> Result<W, MediaError> {
        let frames = self.frames;
        match self.out.take() {
            Some(mut out) => {
                fix_count(&mut out, frames)?;
                Ok(out)
            }
            None => Err(MediaError::BadInput("ivf writer already finished".into())),
        }
    }
}

impl<W: Write + Seek> Drop for IvfWriter<W> {
    fn drop(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = fix_count(&mut out, self.frames);
        }
    }
}

fn fix_count<W: Write + Seek>(out: &mut W, frames: u32) -> Result<(), MediaError> {
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(IVF_COUNT_AT))?;
    out.write_all(&frames.to_le_bytes())?;
    out.seek(SeekFrom::Start(end))?;
    out.flush()?;
    Ok(())
}

/// A keyframe at least this often (and at start and on request).
const KEYFRAME_INTERVAL_MS: u64 = 2000;
/// Nominal frame rate the encoder's rate control assumes (the browser fake camera's).
const NOMINAL_FPS: u64 = 20;
/// Test pattern bitrate, kbps.
const PATTERN_KBPS: u32 = 300;
/// Placeholder bitrate, kbps (a 2×2 black frame needs almost nothing).
const PLACEHOLDER_KBPS: u32 = 30;

/// Encoded frames of one `next_frame` call: `(frame, keyframe)`.
type Frames = Vec<(Vec<u8>, bool)>;

/// Produces VP8 frames from a synthetic picture, encoded by libvpx.
///
/// Keyframes come at the start, at least every 2 s, and after
/// [`request_keyframe`](Self::request_keyframe) (answer RTCP PLI/FIR with it). The libvpx
/// context is not `Send`, so the encoder lives on a worker thread owned by this value;
/// `next_frame` blocks until the frame is encoded (a few ms at 320×240).
#[derive(Debug)]
pub struct Vp8Source {
    requests: Option<mpsc::Sender<Request>>,
    replies: mpsc::Receiver<Result<Frames, MediaError>>,
    worker: Option<JoinHandle<()>>,
    keyframe_requested: bool,
    width: u16,
    height: u16,
}

#[derive(Debug)]
struct Request {
    pts_ms: u64,
    keyframe: bool,
}

#[derive(Debug, Clone, Copy)]
enum Picture {
    /// Colour bars with a moving block.
    Pattern,
    /// All black.
    Black,
}

impl Vp8Source {
    /// A moving test pattern (colour bars and a sliding block) at `width`×`height`, ~300 kbps.
    /// Width and height must be even and 2..=16382.
    pub fn test_pattern(width: u16, height: u16) -> Result<Self, MediaError> {
        Self::start(width, height, PATTERN_KBPS, Picture::Pattern)
    }

    /// The gate placeholder: a 2×2 black picture. Every frame parses as at most 2×2.
    pub fn placeholder() -> Result<Self, MediaError> {
        Self::start(2, 2, PLACEHOLDER_KBPS, Picture::Black)
    }

    /// Picture size.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Makes the next frame a keyframe.
    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    /// Encodes the picture at `pts_ms` (milliseconds on the caller's clock, increasing).
    /// Usually one frame; libvpx may yield none (rate control dropped it).
    pub fn next_frame(&mut self, pts_ms: u64) -> Result<Frames, MediaError> {
        let requests = self.requests.as_ref().ok_or(MediaError::WorkerGone)?;
        let keyframe = std::mem::take(&mut self.keyframe_requested);
        requests
            .send(Request { pts_ms, keyframe })
            .map_err(|_| MediaError::WorkerGone)?;
        self.replies.recv().map_err(|_| MediaError::WorkerGone)?
    }

    fn start(width: u16, height: u16, kbps: u32, picture: Picture) -> Result<Self, MediaError> {
        if width < 2
            || height < 2
            || width % 2 == 1
            || height % 2 == 1
            || width > 16382
            || height > 16382
        {
            return Err(MediaError::BadInput(format!(
                "vp8 size must be even and 2..=16382, got {width}x{height}"
            )));
        }
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let (rep_tx, rep_rx) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("vp8-encoder".into())
            .spawn(move || {
                let mut engine = match Engine::new(width, height, kbps, picture) {
                    Ok(e) => {
                        let _ = rep_tx.send(Ok(Vec::new()));
                        e
                    }
                    Err(e) => {
                        let _ = rep_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(req) = req_rx.recv() {
                    if rep_tx.send(engine.frame(req.pts_ms, req.keyframe)).is_err() {
                        return;
                    }
                }
            })?;
        // The worker reports whether libvpx accepted the configuration.
        rep_rx.recv().map_err(|_| MediaError::WorkerGone)??;
        Ok(Self {
            requests: Some(req_tx),
            replies: rep_rx,
            worker: Some(worker),
            keyframe_requested: false,
            width,
            height,
        })
    }
}

impl Drop for Vp8Source {
    fn drop(&mut self) {
        // Closing the request channel ends the worker's loop.
        self.requests = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The encoder side, living on the worker thread.
struct Engine {
    width: u16,
    height: u16,
    kbps: u32,
    picture: Picture,
    encoder: vpx_encode::Encoder,
    image: Vec<u8>,
    background: Vec<u8>,
    /// xorshift32 state for the noise strip (deterministic).
    noise: u32,
    /// When the last keyframe came out, in the caller's ms.
    last_key_ms: Option<u64>,
    /// Last pts handed to libvpx (frame units), which must increase.
    last_pts: Option<i64>,
}

impl Engine {
    fn new(width: u16, height: u16, kbps: u32, picture: Picture) -> Result<Self, MediaError> {
        let background = background(width, height, picture);
        Ok(Self {
            width,
            height,
            kbps,
            picture,
            encoder: new_encoder(width, height, kbps)?,
            image: background.clone(),
            background,
            noise: 0x9e37_79b9,
            last_key_ms: None,
            last_pts: None,
        })
    }

    fn frame(&mut self, pts_ms: u64, force_key: bool) -> Result<Frames, MediaError> {
        // vpx-encode cannot pass libvpx's force-keyframe flag; a fresh encoder starts with one.
        let due = self
            .last_key_ms
            .is_some_and(|k| pts_ms < k || pts_ms - k >= KEYFRAME_INTERVAL_MS);
        if force_key || due {
            self.encoder = new_encoder(self.width, self.height, self.kbps)?;
            self.last_pts = None;
        }
        self.paint(pts_ms);
        let mut pts =
            i64::try_from(pts_ms.saturating_mul(NOMINAL_FPS) / 1000).unwrap_or(i64::MAX / 2);
        if let Some(last) = self.last_pts {
            pts = pts.max(last + 1);
        }
        self.last_pts = Some(pts);
        let frames: Frames = self
            .encoder
            .encode(pts, &self.image)?
            .map(|f| (f.data.to_vec(), f.key))
            .collect();
        if frames.iter().any(|(_, key)| *key) {
            self.last_key_ms = Some(pts_ms);
        }
        Ok(frames)
    }

    /// Fills the I420 image for `pts_ms`: the still background, then what moves.
    fn paint(&mut self, pts_ms: u64) {
        self.image.copy_from_slice(&self.background);
        let Picture::Pattern = self.picture else {
            return;
        };
        let (w, h) = (usize::from(self.width), usize::from(self.height));
        let (cw, ch) = (w / 2, h / 2);
        let (y_plane, chroma) = self.image.split_at_mut(w * h);
        let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
        // A black square sliding right at 100 px/s through the middle.
        let size = ((h / 4).max(2) & !1).min(w);
        let span = (w - size).max(1) as u64;
        let bx = ((pts_ms / 10) % span) as usize & !1;
        let by = (h / 2).saturating_sub(size / 2) & !1;
        for row in y_plane.chunks_exact_mut(w).skip(by).take(size) {
            row[bx..bx + size].fill(16);
        }
        for plane in [&mut *u_plane, &mut *v_plane] {
            for row in plane.chunks_exact_mut(cw).skip(by / 2).take(size / 2) {
                row[bx / 2..(bx + size) / 2].fill(128);
            }
        }
        // A strip of fresh noise along the bottom, so the stream costs real bits like a camera.
        let strip = (h / 8) & !1;
        for px in y_plane[(h - strip) * w..].iter_mut() {
            self.noise ^= self.noise << 13;
            self.noise ^= self.noise >> 17;
            self.noise ^= self.noise << 5;
            *px = 16 + (self.noise % 220) as u8;
        }
    }
}

/// The still part of the picture: BT.601 colour bars, or black.
fn background(width: u16, height: u16, picture: Picture) -> Vec<u8> {
    let (w, h) = (usize::from(width), usize::from(height));
    let (cw, ch) = (w / 2, h / 2);
    let mut image = vec![0u8; w * h + 2 * cw * ch];
    let (y_plane, chroma) = image.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    match picture {
        Picture::Black => {
            y_plane.fill(16);
            u_plane.fill(128);
            v_plane.fill(128);
        }
        Picture::Pattern => {
            // White, yellow, cyan, green, magenta, red, blue, black.
            const BARS: [(u8, u8, u8); 8] = [
                (235, 128, 128),
                (210, 16, 146),
                (170, 166, 16),
                (145, 54, 34),
                (106, 202, 222),
                (81, 90, 240),
                (41, 240, 110),
                (16, 128, 128),
            ];
            let bar = |x: usize, across: usize| BARS[(x * BARS.len() / across).min(BARS.len() - 1)];
            for row in y_plane.chunks_exact_mut(w) {
                for (x, px) in row.iter_mut().enumerate() {
                    *px = bar(x, w).0;
                }
            }
            for (urow, vrow) in u_plane
                .chunks_exact_mut(cw)
                .zip(v_plane.chunks_exact_mut(cw))
            {
                for (x, (u, v)) in urow.iter_mut().zip(vrow.iter_mut()).enumerate() {
                    (_, *u, *v) = bar(x, cw);
                }
            }
        }
    }
    image
}

fn new_encoder(width: u16, height: u16, kbps: u32) -> Result<vpx_encode::Encoder, MediaError> {
    Ok(vpx_encode::Encoder::new(vpx_encode::Config {
        width: u32::from(width),
        height: u32::from(height),
        timebase: [1, NOMINAL_FPS as i32],
        bitrate: kbps,
        codec: vpx_encode::VideoCodecId::VP8,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn frame_info_reads_the_known_keyframe_header() {
        let key = [
            0x90, 0x12, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0x00,
        ];
        assert_eq!(
            frame_info(&key),
            Some(Vp8Info {
                keyframe: true,
                width: 320,
                height: 240
            })
        );
        // Scaling bits are masked off.
        let mut scaled = key;
        scaled[7] |= 0xc0;
        assert_eq!(frame_info(&scaled).map(|i| i.width), Some(320));
        let inter = [0x31, 0x02, 0x00, 0x12];
        assert_eq!(
            frame_info(&inter),
            Some(Vp8Info {
                keyframe: false,
                width: 0,
                height: 0
            })
        );
    }

    #[test]
    fn frame_info_never_panics_on_garbage() {
        assert_eq!(frame_info(&[]), None);
        assert_eq!(frame_info(&[0x90]), None);
        assert_eq!(frame_info(&[0x90, 0x12]), None);
        assert_eq!(frame_info(&[0x90, 0x12, 0x00]), None);
        assert_eq!(
            frame_info(&[0x90, 0x12, 0x00, 0x9d, 0x01, 0x2a, 0x40]),
            None
        );
        assert_eq!(
            frame_info(&[0x90, 0x12, 0x00, 0x00, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]),
            None
        );
        // Every short prefix of a pseudo-random stream, and every single byte value.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for n in 0..noise.len() {
            let _ = frame_info(&noise[..n]);
        }
        for b in 0..=255u8 {
            let _ = frame_info(&[b; 12]);
        }
    }

    #[test]
    fn ivf_header_and_frames() {
        let mut w = IvfWriter::new(Cursor::new(Vec::new()), 320, 240).unwrap();
        w.write_frame(0, &[1, 2, 3]).unwrap();
        w.write_frame(50, &[4, 5]).unwrap();
        assert_eq!(w.frames(), 2);
        let out = w.finish().unwrap().into_inner();
        assert_eq!(&out[0..4], b"DKIF");
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 32);
        assert_eq!(&out[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([out[12], out[13]]), 320);
        assert_eq!(u16::from_le_bytes([out[14], out[15]]), 240);
        assert_eq!(u32::from_le_bytes(out[16..20].try_into().unwrap()), 1000);
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(out[24..28].try_into().unwrap()), 2);
        assert_eq!(out.len(), 32 + 12 + 3 + 12 + 2);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(out[36..44].try_into().unwrap()), 0);
        assert_eq!(&out[44..47], &[1, 2, 3]);
        assert_eq!(u64::from_le_bytes(out[51..59].try_into().unwrap()), 50);
    }

    #[test]
    fn ivf_file_count_fixed_on_drop() {
        let path = std::env::temp_dir().join(format!("kibitz-media-{}.ivf", std::process::id()));
        {
            let mut w = IvfWriter::create(&path, 2, 2).unwrap();
            w.write_frame(0, &[9; 10]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 1);
        assert_eq!(bytes.len(), 32 + 12 + 10);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn test_pattern_keyframes_parse_to_the_configured_size() {
        let mut src = Vp8Source::test_pattern(320, 240).unwrap();
        let mut keys = Vec::new();
        let mut bytes = 0;
        let mut count = 0;
        // 5 s at 20 fps.
        for i in 0..100u64 {
            let pts = i * 50;
            if i == 30 {
                src.request_keyframe();
            }
            for (frame, key) in src.next_frame(pts).unwrap() {
                let info = frame_info(&frame).expect("parses");
                assert_eq!(info.keyframe, key);
                if key {
                    assert_eq!((info.width, info.height), (320, 240));
                    keys.push(pts);
                }
                bytes += frame.len();
                count += 1;
            }
        }
        assert!(count >= 95, "frames {count}");
        assert_eq!(keys.first(), Some(&0));
        assert!(keys.contains(&1500), "requested keyframe: {keys:?}");
        // Periodic: no gap over 2 s (+ one frame).
        for w in keys.windows(2) {
            assert!(w[1] - w[0] <= 2050, "keys {keys:?}");
        }
        assert!(keys.len() <= 5, "keys {keys:?}");
        // ~300 kbps over 5 s is ~190 KB; allow for keyframes and start-up.
        assert!(bytes > 20_000 && bytes < 400_000, "bytes {bytes}");
    }

    #[test]
    fn placeholder_frames_are_2x2() {
        let mut src = Vp8Source::placeholder().unwrap();
        assert_eq!(src.size(), (2, 2));
        let mut keys = 0;
        for i in 0..10u64 {
            for (frame, key) in src.next_frame(i * 1000).unwrap() {
                let info = frame_info(&frame).expect("parses");
                assert!(info.width <= 2 && info.height <= 2);
                if key {
                    assert_eq!((info.width, info.height), (2, 2));
                    keys += 1;
                }
            }
        }
        assert!(keys >= 1);
    }

    #[test]
    fn odd_timestamps_do_not_panic() {
        let mut src = Vp8Source::placeholder().unwrap();
        for pts in [u64::MAX, 0, 5, 5, u64::MAX / 2, 1] {
            for (frame, _) in src.next_frame(pts).unwrap() {
                assert!(frame_info(&frame).is_some());
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(Vp8Source::test_pattern(321, 240).is_err());
        assert!(Vp8Source::test_pattern(0, 0).is_err());
        assert!(Vp8Source::test_pattern(320, 16384).is_err());
    }
}
