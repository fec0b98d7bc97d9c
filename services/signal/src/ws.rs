//! A minimal server-side WebSocket (RFC 6455) codec, sized for many idle connections.
//!
//! Why not tungstenite: it keeps a read buffer per connection and zero-fills it on every
//! read, so 10,000 idle sockets cost 10,000 buffers. This decoder works on whatever bytes one
//! read returned (a stack buffer in the I/O layer) and keeps only an incomplete frame's tail,
//! which an idle connection does not have. No extensions are negotiated, so frames are plain.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// The client is closing, with its status code if it gave one.
    Close(Option<u16>),
}

/// A protocol violation; the connection must be closed with this status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// RFC 6455 status code (1002 protocol, 1007 bad UTF-8, 1009 too big).
    pub code: u16,
    /// Short reason for the close frame and logs (never includes client data).
    pub reason: &'static str,
}

const PROTOCOL: Violation = Violation {
    code: 1002,
    reason: "protocol error",
};
const TOO_BIG: Violation = Violation {
    code: 1009,
    reason: "message too big",
};
const BAD_UTF8: Violation = Violation {
    code: 1007,
    reason: "invalid utf-8",
};

/// Per-connection decoder state: empty (no heap) between messages.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a frame that has not fully arrived yet.
    partial: Vec<u8>,
    /// A fragmented message being assembled, and whether it is text.
    fragments: Vec<u8>,
    fragment_text: Option<bool>,
    /// How much of a fragmented text message is known to be valid UTF-8 so far.
    fragments_checked: usize,
    max_message: usize,
    /// The client's close frame arrived: nothing after it is read (RFC 6455 §5.5.1).
    closed: bool,
}

impl Decoder {
    /// A decoder that refuses messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            ..Self::default()
        }
    }

    /// Heap bytes held between reads (an incomplete frame, a fragmented message): zero for an
    /// idle socket, and bounded by the message limit (the fuzz targets check it).
    pub fn buffered(&self) -> usize {
        self.partial.capacity() + self.fragments.capacity()
    }

    /// Decodes everything complete in `input` (just read from the socket; unmasked in place),
    /// calling `on_event` for each message. Keeps an incomplete tail for the next call.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        if self.closed {
            return Ok(());
        }
        if self.partial.is_empty() {
            let used = self.decode(input, &mut on_event)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.decode(&mut buf, &mut on_event)?;
            buf.drain(..used);
            self.partial = buf;
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        Ok(())
    }

    fn decode(
        &mut self,
        data: &mut [u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<usize, Violation> {
        let mut pos = 0;
        loop {
            if self.closed {
                // Whatever follows the close frame is dropped, not kept for later.
                return Ok(data.len());
            }
            let rest = &mut data[pos..];
            let Some((header, len)) = parse_header(rest, self.max_message)? else {
                return Ok(pos);
            };
            let total = header.len + len;
            if rest.len() < total {
                return Ok(pos);
            }
            let payload = &mut rest[header.len..total];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= header.mask[i & 3];
            }
            self.frame(header.fin, header.opcode, payload, on_event)?;
            pos += total;
        }
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        match opcode {
            0x8 => {
                let code = match payload {
                    [] => None,
                    [_] => return Err(PROTOCOL),
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        if !close_code_allowed(code) {
                            return Err(PROTOCOL);
                        }
                        std::str::from_utf8(reason).map_err(|_| BAD_UTF8)?;
                        Some(code)
                    }
                };
                self.closed = true;
                on_event(Event::Close(code));
            }
            0x9 => on_event(Event::Ping(payload)),
            0xA => {}
            0x1 | 0x2 if self.fragment_text.is_some() => return Err(PROTOCOL),
            0x1 | 0x2 if fin => emit(opcode == 0x1, payload, on_event)?,
            0x1 | 0x2 => {
                self.fragment_text = Some(opcode == 0x1);
                self.fragments.extend_from_slice(payload);
                self.fragments_checked = 0;
                if opcode == 0x1 {
                    self.check_fragments()?;
                }
            }
            0x0 => {
                let Some(text) = self.fragment_text else {
                    return Err(PROTOCOL);
                };
                if self.fragments.len() + payload.len() > self.max_message {
                    return Err(TOO_BIG);
                }
                self.fragments.extend_from_slice(payload);
                if text {
                    self.check_fragments()?;
                }
                if fin {
                    let msg = std::mem::take(&mut self.fragments);
                    self.fragment_text = None;
                    emit(text, &msg, on_event)?;
                }
            }
            _ => return Err(PROTOCOL),
        }
        Ok(())
    }

    /// Fails a fragmented text message as soon as its bytes so far cannot be the start of
    /// valid UTF-8, not only at its last fragment. Checks each byte once.
    fn check_fragments(&mut self) -> Result<(), Violation> {
        let new = &self.fragments[self.fragments_checked..];
        match std::str::from_utf8(new) {
            Ok(_) => self.fragments_checked = self.fragments.len(),
            // Cut inside a code point: fine until the next fragment says otherwise.
            Err(e) if e.error_len().is_none() => self.fragments_checked += e.valid_up_to(),
            Err(_) => return Err(BAD_UTF8),
        }
        Ok(())
    }
}

/// Whether a client may send this close status (RFC 6455 §7.4; 1012–1014 are registered
/// with IANA since). 1005 and 1006 are never sent; 1015 is TLS-only, reported locally.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn emit(text: bool, payload: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<(), Violation> {
    if text {
        let s = std::str::from_utf8(payload).map_err(|_| BAD_UTF8)?;
        on_event(Event::Text(s));
    } else {
        on_event(Event::Binary(payload));
    }
    Ok(())
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
}

/// Reads a client frame header: `None` until it has fully arrived.
fn parse_header(data: &[u8], max: usize) -> Result<Option<(Header, usize)>, Violation> {
    let [b0, b1, ..] = *data else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        // Reserved bits need an extension we did not negotiate; clients must mask.
        return Err(PROTOCOL);
    }
    let opcode = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    let (len, ext) = match b1 & 0x7f {
        126 => match data.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match data.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if opcode >= 0x8 && (!fin || len > 125) {
        return Err(PROTOCOL);
    }
    let len = usize::try_from(len).map_err(|_| TOO_BIG)?;
    if len > max {
        return Err(TOO_BIG);
    }
    let Some(m) = data.get(2 + ext..6 + ext) else {
        return Ok(None);
    };
    let mask = [m[0], m[1], m[2], m[3]];
    Ok(Some((
        Header {
            fin,
            opcode,
            mask,
            len: 6 + ext,
        },
        len,
    )))
}

fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends an unmasked text frame.
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    push_header(out, 0x1, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends an unmasked binary frame.
pub fn encode_binary(out: &mut Vec<u8>, payload: &[u8]) {
    push_header(out, 0x2, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a pong answering a ping.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    push_header(out, 0xA, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame; `None` sends no status, which clients report as 1005.
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    match code {
        None => push_header(out, 0x8, 0),
        Some(code) => {
            // A control frame carries at most 125 bytes; cut the reason at a char boundary
            // so it stays UTF-8 (a client fails the connection over a reason that is not).
            let mut n = reason.len().min(123);
            while !reason.is_char_boundary(n) {
                n -= 1;
            }
            let reason = &reason.as_bytes()[..n];
            push_header(out, 0x8, 2 + reason.len());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn collect(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<String>, Violation> {
        let mut got = Vec::new();
        let mut buf = bytes.to_vec();
        d.feed(&mut buf, |e| got.push(format!("{e:?}")))?;
        Ok(got)
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let big = "x".repeat(70_000);
        let mut wire = client_frame(true, 1, b"hello");
        wire.extend(client_frame(true, 2, &[0xff, 0]));
        wire.extend(client_frame(true, 9, b"p"));
        wire.extend(client_frame(false, 1, b"frag"));
        wire.extend(client_frame(true, 0, b"ment"));
        wire.extend(client_frame(true, 1, big.as_bytes()));
        wire.extend(client_frame(true, 8, &1000u16.to_be_bytes()));
        let whole = collect(&mut Decoder::new(1 << 20), &wire).unwrap();
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[0], "Text(\"hello\")");
        assert_eq!(whole[3], "Text(\"fragment\")");
        assert_eq!(whole[5], "Close(Some(1000))");
        for split in [1, 2, 3, 7, 13, 1000, 40_000] {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                got.extend(collect(&mut d, chunk).unwrap());
            }
            assert_eq!(got, whole, "split {split}");
            assert!(d.partial.is_empty() && d.partial.capacity() == 0);
        }
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], 1002), // unmasked
            (client_frame(true, 0x3, b""), 1002),                   // reserved opcode
            (client_frame(true, 0, b"x"), 1002),                    // stray continuation
            (client_frame(false, 9, b"x"), 1002),                   // fragmented control
            (client_frame(true, 1, &[0xc3, 0x28]), 1007),           // bad utf-8
            (client_frame(true, 1, &[b'a'; 101]), 1009),            // over the limit
            (
                {
                    let mut f = client_frame(true, 1, b"a");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ), // rsv1
        ];
        for (wire, code) in cases {
            let err = collect(&mut Decoder::new(100), &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}");
        }
        // The size check fires on the header alone: no need to buffer a huge frame first.
        let mut header = client_frame(true, 2, &vec![0; 70_000]);
        header.truncate(14);
        assert_eq!(
            collect(&mut Decoder::new(1000), &header).unwrap_err().code,
            1009
        );
    }

    #[test]
    fn close_codes_no_endpoint_may_send_fail_with_1002() {
        // RFC 6455 §7.4 (Autobahn 7.7.x / 7.9.x).
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let err = collect(
                &mut Decoder::new(100),
                &client_frame(true, 8, &code.to_be_bytes()),
            );
            assert_eq!(err.unwrap_err().code, 1002, "code {code}");
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 3999, 4000, 4999,
        ] {
            let got = collect(
                &mut Decoder::new(100),
                &client_frame(true, 8, &code.to_be_bytes()),
            );
            assert_eq!(
                got.unwrap(),
                [format!("Close(Some({code}))")],
                "code {code}"
            );
        }
        // A reason that is not UTF-8 (Autobahn 7.5.1).
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0xce, 0xba, 0xff]);
        let err = collect(&mut Decoder::new(100), &client_frame(true, 8, &bad));
        assert_eq!(err.unwrap_err().code, 1007);
    }

    #[test]
    fn nothing_after_the_close_frame_is_read() {
        let mut wire = client_frame(true, 8, &1000u16.to_be_bytes());
        wire.extend(client_frame(true, 9, b"late ping"));
        wire.extend(client_frame(true, 0x3, b"")); // would be a violation
        let mut d = Decoder::new(100);
        assert_eq!(collect(&mut d, &wire).unwrap(), ["Close(Some(1000))"]);
        assert_eq!(
            collect(&mut d, &client_frame(true, 1, b"x")).unwrap().len(),
            0
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn fragmented_text_fails_at_the_first_bad_fragment() {
        // Autobahn 6.4.1: the bad bytes are in fragment 2 of 3; the last never comes.
        let mut d = Decoder::new(1000);
        let mut wire = client_frame(false, 1, "κόσμε".as_bytes());
        wire.extend(client_frame(false, 0, &[0xf4, 0x90, 0x80, 0x80]));
        assert_eq!(collect(&mut d, &wire).unwrap_err().code, 1007);
        // A code point cut across fragments is fine.
        let mut d = Decoder::new(1000);
        let e = "€".as_bytes();
        let mut wire = client_frame(false, 1, &e[..1]);
        wire.extend(client_frame(false, 0, &e[1..2]));
        wire.extend(client_frame(true, 0, &e[2..]));
        assert_eq!(collect(&mut d, &wire).unwrap(), ["Text(\"€\")"]);
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, Some(1000), &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 4 <= 123);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn encodes_server_frames() {
        let mut out = Vec::new();
        encode_text(&mut out, "hi");
        encode_binary(&mut out, &[0xff]);
        encode_close(&mut out, None, "");
        encode_close(&mut out, Some(1008), "rate");
        assert_eq!(
            out,
            [
                0x81, 2, b'h', b'i', 0x82, 1, 0xff, 0x88, 0, 0x88, 6, 0x03, 0xf0, b'r', b'a', b't',
                b'e'
            ]
        );
        let mut long = Vec::new();
        encode_text(&mut long, &"y".repeat(300));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
    }
}
