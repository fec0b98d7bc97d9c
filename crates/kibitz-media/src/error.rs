/// Everything that can go wrong in this crate. Messages never contain media payloads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// libopus refused (bad packet, bad configuration).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// libvpx refused.
    #[error("vp8 encoder: {0}")]
    Vpx(#[from] vpx_encode::Error),
    /// A WAV file could not be read or written.
    #[error("wav: {0}")]
    Wav(#[from] hound::Error),
    /// A file could not be opened or written.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The caller passed something this crate cannot use.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The VP8 encoder thread is gone (it panicked or could not start).
    #[error("vp8 encoder thread stopped")]
    WorkerGone,
}
