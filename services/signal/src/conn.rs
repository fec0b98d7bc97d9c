//! One broker WebSocket: reads frames in batches, feeds them to the hub under one lock, and
//! writes everything queued for the socket in one write.
//!
//! The loop is generic over its [`App`] so the conformance echo (`echo`) runs the very same
//! codec and loop as the broker, with only the application step swapped.

use crate::core::ConnId;
use crate::fair::{Bucket, Gate};
use crate::metrics::Metrics;
use crate::outbox::{Attention, Closing, Outbox};
use crate::ws::{self, Decoder, Event};
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::PollSemaphore;

/// Bytes read per wake-up. Lives on the stack during one poll only, so idle sockets hold none.
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing socket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A complete data message from the client.
#[derive(Debug)]
pub(crate) enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What a socket's messages go to: the broker's [`crate::hub::Hub`], or the echo.
pub(crate) trait App: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    /// Largest message accepted (`--max-frame-bytes`).
    fn max_message(&self) -> usize;
    /// The gate heavy sockets take turns at (`fair`); `None`: every read is made at once.
    fn gate(&self) -> Option<&Gate> {
        None
    }
    /// Runs `f` with a handler for one read batch's messages (the hub takes its lock once).
    fn messages<R>(
        &self,
        conn: ConnId,
        outbox: &Outbox,
        f: impl FnOnce(&mut dyn FnMut(Message<'_>)) -> R,
    ) -> R;
    /// The socket is gone.
    fn closed(&self, conn: ConnId);
}

enum ReadOutcome {
    /// Keep going.
    More,
    /// EOF, an I/O error, or the client's close frame.
    Ended(Option<u16>),
    /// Protocol violation: close with this code.
    Violation(ws::Violation),
}

/// A socket's standing at the gate (see `fair`).
struct Turn<'g> {
    gate: &'g Gate,
    bucket: Bucket,
    /// Its place in the gate's queue, made the first time it is heavy (light sockets never
    /// pay for one).
    queue: Option<PollSemaphore>,
    /// Queued at the gate: keep waiting even if the bucket refilled meanwhile, so a permit
    /// granted to this socket is never left unused.
    waiting: bool,
}

/// Reads one batch: at once while the socket is light, with a permit of the gate while it is
/// heavy (the permit is held for this one read and its processing only).
fn poll_read_fair<R: AsyncRead + Unpin, A: App>(
    cx: &mut std::task::Context<'_>,
    turn: Option<&mut Turn<'_>>,
    io: &mut R,
    decoder: &mut Decoder,
    app: &A,
    conn: ConnId,
    outbox: &Outbox,
) -> Poll<ReadOutcome> {
    let Some(t) = turn else {
        return poll_read_batch(cx, io, decoder, app, conn, outbox).map(|(o, _)| o);
    };
    let now = crate::hub::now();
    if !t.waiting && !t.bucket.heavy(t.gate, now) {
        return poll_read_batch(cx, io, decoder, app, conn, outbox).map(|(o, n)| {
            t.bucket.spent(t.gate, n);
            o
        });
    }
    let queue = t
        .queue
        .get_or_insert_with(|| PollSemaphore::new(t.gate.permits.clone()));
    // `None` (the gate closed) cannot happen: the hub never closes it; read anyway.
    let permit = match queue.poll_acquire(cx) {
        Poll::Pending => {
            t.waiting = true;
            return Poll::Pending;
        }
        Poll::Ready(p) => p,
    };
    t.waiting = false;
    let r = poll_read_batch(cx, io, decoder, app, conn, outbox);
    drop(permit);
    match r {
        Poll::Ready((o, n)) => {
            t.gate.throttled.increment(1);
            t.bucket.spent(t.gate, n);
            Poll::Ready(o)
        }
        Poll::Pending => {
            t.bucket.drained(t.gate, now);
            Poll::Pending
        }
    }
}

/// Reads whatever is available and hands every complete message to the app; also returns
/// the bytes read.
fn poll_read_batch<R: AsyncRead + Unpin, A: App>(
    cx: &mut std::task::Context<'_>,
    io: &mut R,
    decoder: &mut Decoder,
    app: &A,
    conn: ConnId,
    outbox: &Outbox,
) -> Poll<(ReadOutcome, usize)> {
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut stack);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(_)) => Poll::Ready((ReadOutcome::Ended(None), 0)),
        Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready((ReadOutcome::Ended(None), 0)),
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            app.metrics().bytes_in.increment(n as u64);
            let mut ended = None;
            let mut ponged = false;
            let res = app.messages(conn, outbox, |handle| {
                decoder.feed(rb.filled_mut(), |ev| match ev {
                    Event::Text(t) => handle(Message::Text(t)),
                    Event::Binary(b) => handle(Message::Binary(b)),
                    Event::Ping(p) => {
                        ponged = true;
                        if !outbox.push(|b| ws::encode_pong(b, p)) {
                            app.metrics().rejected("slow_reader");
                        }
                    }
                    Event::Close(code) => ended = Some(code),
                })
            });
            if ponged {
                outbox.flush();
            }
            let outcome = match (res, ended) {
                (Err(v), _) => ReadOutcome::Violation(v),
                (Ok(()), Some(code)) => ReadOutcome::Ended(code),
                (Ok(()), None) => ReadOutcome::More,
            };
            Poll::Ready((outcome, n))
        }
    }
}

/// Runs one upgraded socket to the end.
pub(crate) async fn run<S, A>(io: S, app: Arc<A>, conn: ConnId, outbox: Arc<Outbox>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    A: App,
{
    let (mut rd, wr) = tokio::io::split(io);
    // Writes are made by whoever queues a frame (see `outbox`); this task only reads,
    // takes over stalled writes, and closes.
    outbox.install(Box::new(wr));
    let mut decoder = Decoder::new(app.max_message());
    let mut turn = app.gate().map(|gate| Turn {
        gate,
        bucket: gate.bucket(crate::hub::now()),
        queue: None,
        waiting: false,
    });
    let ending = loop {
        tokio::select! {
            biased;
            r = poll_fn(|cx| poll_read_fair(cx, turn.as_mut(), &mut rd, &mut decoder, &*app, conn, &outbox)) => {
                match r {
                    ReadOutcome::More => {}
                    // Answer the client's close, echoing its code.
                    ReadOutcome::Ended(code) => break Ending::Close(code, "", false),
                    ReadOutcome::Violation(v) => {
                        app.metrics().rejected(if v.code == 1009 { "oversized" } else { "protocol" });
                        tracing::debug!(conn = conn.0, code = v.code, reason = v.reason, "protocol violation");
                        break Ending::Close(Some(v.code), v.reason, false);
                    }
                }
            }
            Attention::Close(how) = poll_fn(|cx| outbox.poll_attention(cx)) => match how {
                Closing::Abort => break Ending::Abort,
                Closing::Graceful(code, reason) => break Ending::Close(code, reason, true),
            },
        }
    };
    if let (Ending::Close(code, reason, wait_for_client), Some(mut wr)) =
        (ending, outbox.take_writer())
    {
        // Boxed: this rare path's buffers and timers stay out of every idle socket's task.
        Box::pin(say_goodbye(
            &mut rd,
            &mut wr,
            code,
            reason,
            wait_for_client,
            app.metrics(),
        ))
        .await;
    }
    app.closed(conn);
}

/// How a socket's loop ended.
enum Ending {
    /// Drop the connection without another byte.
    Abort,
    /// Send a close frame (code, reason); then wait for the client's close if we started it.
    Close(Option<u16>, &'static str, bool),
}

async fn say_goodbye<R, W>(
    rd: &mut R,
    wr: &mut W,
    code: Option<u16>,
    reason: &str,
    wait_for_client: bool,
    metrics: &Metrics,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut bye = Vec::new();
    ws::encode_close(&mut bye, code, reason);
    if tokio::time::timeout(CLOSE_LINGER, wr.write_all(&bye))
        .await
        .is_ok()
    {
        metrics.bytes_out.increment(bye.len() as u64);
    }
    if wait_for_client {
        let _ = wr.shutdown().await;
        linger(rd).await;
    }
}

/// After our close frame, waits briefly for the client's, discarding anything else.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let drain = async {
        let mut buf = [0u8; 512];
        loop {
            match tokio::io::AsyncReadExt::read(rd, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}
