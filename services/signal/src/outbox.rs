//! One socket's outgoing side: encoded frames waiting to be written, bounded in bytes, and
//! the socket's write half.
//!
//! Whoever queues a frame also writes it, at once and without blocking (a relay costs the
//! receiving socket's task no wake-up). Only when the socket would block does its own task
//! take over, waiting for writability with its real waker; frames queued meanwhile just
//! accumulate, up to the bound. A socket whose queue passes the bound is aborted.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::AsyncWrite;

/// The write half of a socket.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How a socket ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Send what is queued, then a close frame with this status (None = no status).
    Graceful(Option<u16>, &'static str),
    /// Drop the connection without another byte (too slow, or the socket failed).
    Abort,
}

/// See the module docs.
pub(crate) struct Outbox {
    state: Mutex<State>,
    limit: usize,
    bytes_out: metrics::Counter,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Encoded frames not yet written.
    buf: Vec<u8>,
    /// Set once; the owner acts on it.
    close: Option<Closing>,
    /// Installed by the owner once the socket is upgraded.
    writer: Option<Writer>,
    /// The socket would block: only the owner writes until it drains.
    stalled: bool,
    /// The owning task, woken when it has something to do.
    owner: Option<Waker>,
}

impl State {
    fn wake_owner(&mut self) {
        if let Some(w) = self.owner.take() {
            w.wake();
        }
    }

    /// Writes as much of `buf` as the socket takes now. Ready(true) once it is all written.
    fn write_some(&mut self, cx: &mut Context<'_>, bytes_out: &metrics::Counter) -> Poll<bool> {
        let Some(w) = self.writer.as_mut() else {
            return Poll::Ready(false);
        };
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Poll::Ready(true);
            }
            match Pin::new(&mut *w).poll_write(cx, &self.buf[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.close = Some(Closing::Abort);
                    break Poll::Ready(false);
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break Poll::Pending,
            }
        };
        bytes_out.increment(written as u64);
        if written == self.buf.len() {
            self.buf.clear();
            // Keep a small buffer for reuse; release one a burst grew.
            if self.buf.capacity() > 4096 {
                self.buf = Vec::new();
            }
        } else {
            self.buf.drain(..written);
        }
        result
    }
}

/// What the owner must do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attention {
    /// Close: send a close frame (everything queued before it is written), or abort.
    Close(Closing),
}

impl Outbox {
    /// An outbox that aborts its socket past `limit` queued bytes.
    pub(crate) fn new(limit: usize, bytes_out: metrics::Counter) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limit,
            bytes_out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here can leave the state half-updated across a panic that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one encoded frame. Returns false if that passed the bound (socket aborted).
    pub(crate) fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut st = self.lock();
        if st.close.is_some() {
            return true;
        }
        encode(&mut st.buf);
        if st.buf.len() > self.limit {
            st.buf = Vec::new();
            st.close = Some(Closing::Abort);
            st.wake_owner();
            return false;
        }
        true
    }

    /// Writes what is queued if the socket takes it now; otherwise leaves it to the owner.
    pub(crate) fn flush(&self) {
        let mut st = self.lock();
        if st.stalled || st.buf.is_empty() || st.close == Some(Closing::Abort) {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match st.write_some(&mut cx, &self.bytes_out) {
            Poll::Ready(true) => {}
            Poll::Ready(false) => st.wake_owner(),
            Poll::Pending => {
                st.stalled = true;
                st.wake_owner();
            }
        }
    }

    /// Asks the owner to close the socket.
    pub(crate) fn close(&self, how: Closing) {
        let mut st = self.lock();
        if st.close.is_none() {
            st.close = Some(how);
        }
        st.wake_owner();
    }

    /// The owner installs the socket's write half and writes anything queued before.
    pub(crate) fn install(&self, writer: Writer) {
        self.lock().writer = Some(writer);
        self.flush();
    }

    /// The owner takes the write half back to say goodbye.
    pub(crate) fn take_writer(&self) -> Option<Writer> {
        self.lock().writer.take()
    }

    /// The owner's poll: drives a stalled write with the owner's waker and reports a close
    /// once everything queued before it is written.
    pub(crate) fn poll_attention(&self, cx: &mut Context<'_>) -> Poll<Attention> {
        let mut st = self.lock();
        if st.close == Some(Closing::Abort) {
            return Poll::Ready(Attention::Close(Closing::Abort));
        }
        if st.stalled || (st.close.is_some() && !st.buf.is_empty()) {
            match st.write_some(cx, &self.bytes_out) {
                Poll::Ready(true) => st.stalled = false,
                Poll::Ready(false) => return Poll::Ready(Attention::Close(Closing::Abort)),
                Poll::Pending => {
                    st.stalled = true;
                }
            }
        }
        if let Some(c) = st.close
            && st.buf.is_empty()
        {
            return Poll::Ready(Attention::Close(c));
        }
        if !st.owner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.owner = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
