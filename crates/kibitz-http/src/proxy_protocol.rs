//! `--proxy-protocol`: the PROXY protocol header (v1 text or v2 binary, parsed by `ppp`) that
//! HAProxy, nginx `stream` and cloud load balancers put before a connection's first byte.
//!
//! Each connection reads its own header in its own task, with a deadline, so a slow or broken
//! one never holds up the accept loop or another connection. A connection whose header is
//! malformed, truncated or late is closed without an answer, counted in
//! `kibitz_proxy_protocol_rejected_total{reason}` and logged at DEBUG.

use ppp::{HeaderResult, PartialResult, v1, v2};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest legal header: v2's 16 fixed bytes and a 16-bit length (v1 is at most 107 bytes).
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The connection ended before a whole header arrived.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// What arrived is not a PROXY header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// No whole header within the deadline.
    #[error("no PROXY header within {0:?}")]
    TimedOut(Duration),
}

impl HeaderError {
    /// The `reason` label this refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Malformed(_) => "malformed",
            Self::Io(_) => "io",
            Self::TimedOut(_) => "timeout",
        }
    }
}

/// A parsed header: the client's address, or `None` for a proxy's own connection (v2
/// `LOCAL`, v1 `UNKNOWN`, or an address family without one), which keeps its socket address.
fn source(header: &HeaderResult<'_>) -> Option<SocketAddr> {
    match header {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(h)) if h.command == v2::Command::Proxy => match h.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        },
        _ => None,
    }
}

/// Reads the PROXY header at the start of `io`, within `deadline`. Returns the stream (bytes
/// read past the header are replayed first) and the client address it names, if any.
pub async fn read_header<S>(
    io: S,
    deadline: Duration,
) -> Result<(Prefixed<S>, Option<SocketAddr>), HeaderError>
where
    S: AsyncRead + Unpin,
{
    tokio::time::timeout(deadline, read_header_inner(io))
        .await
        .map_err(|_| HeaderError::TimedOut(deadline))?
}

async fn read_header_inner<S>(mut io: S) -> Result<(Prefixed<S>, Option<SocketAddr>), HeaderError>
where
    S: AsyncRead + Unpin,
{
    // Proxies send the header at once; most arrive in the first read with the request.
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() >= MAX_HEADER {
            return Err(HeaderError::Malformed("header too long".into()));
        }
        buf.reserve(512.min(MAX_HEADER - buf.len()));
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HeaderError::Truncated);
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            continue;
        }
        let len = match &parsed {
            HeaderResult::V1(Ok(h)) => h.header.len(),
            HeaderResult::V2(Ok(h)) => h.len(),
            HeaderResult::V1(Err(e)) => return Err(HeaderError::Malformed(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(HeaderError::Malformed(e.to_string())),
        };
        let addr = source(&parsed);
        buf.drain(..len);
        return Ok((
            Prefixed {
                prefix: buf,
                pos: 0,
                inner: io,
            },
            addr,
        ));
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    const WAIT: Duration = Duration::from_secs(5);

    /// Feeds `chunks` to `read_header` through an in-memory pipe, one write per chunk.
    async fn feed(chunks: &[&[u8]]) -> Result<(Option<SocketAddr>, Vec<u8>), HeaderError> {
        let (mut client, server) = tokio::io::duplex(1 << 17);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        drop(client);
        let (mut s, addr) = read_header(server, WAIT).await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        Ok((addr, rest))
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend((addrs.len() as u16).to_be_bytes());
        h.extend(addrs);
        h
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_keep_what_follows() {
        let (addr, rest) =
            feed(&[b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\nGET / HTTP/1.1\r\n"])
                .await
                .unwrap();
        assert_eq!(addr, Some("198.51.100.7:4711".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (addr, _) = feed(&[b"PROXY TCP6 2001:db8::7 ::1 4711 443\r\n"])
            .await
            .unwrap();
        assert_eq!(addr, Some("[2001:db8::7]:4711".parse().unwrap()));

        let (addr, rest) = feed(&[b"PROXY UNKNOWN\r\nrest"]).await.unwrap();
        assert_eq!((addr, rest.as_slice()), (None, &b"rest"[..]));

        let mut h = v2(
            1,
            0x11,
            &[198, 51, 100, 7, 127, 0, 0, 1, 0x12, 0x67, 1, 187],
        );
        h.extend(b"tail");
        // Byte by byte: a header split across reads is put together.
        let chunks: Vec<&[u8]> = h.chunks(1).collect();
        let (addr, rest) = feed(&chunks).await.unwrap();
        assert_eq!(addr, Some("198.51.100.7:4711".parse().unwrap()));
        assert_eq!(rest, b"tail");

        let (addr, _) = feed(&[&v2(0, 0x00, &[])]).await.unwrap();
        assert_eq!(addr, None, "LOCAL keeps the socket address");
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_a_reason() {
        for (input, reason) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "malformed"),
            (b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n", "malformed"),
            (b"PROXY TCP4 198.51.100.7 127.0.0.1 4711", "truncated"),
            (b"\r\n\r\n\0\r\nQU", "truncated"),
            (&[0x16, 0x03, 0x01, 0x00, 0x05][..], "malformed"),
            (b"", "truncated"),
        ] {
            let err = feed(&[input]).await.unwrap_err();
            assert_eq!(err.reason(), reason, "{input:?}: {err}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(feed(&[&long]).await.unwrap_err().reason(), "malformed");
        let short = v2(1, 0x11, &[198, 51, 100, 7]);
        assert_eq!(feed(&[&short]).await.unwrap_err().reason(), "malformed");
    }

    #[tokio::test]
    async fn a_header_that_never_ends_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let err = read_header(server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "timeout");
        drop(client);
    }
}
