//! The first message's size limit (PROTOCOL.md: a `join` of at most
//! 16 KiB), checked on the frame headers as the bytes arrive.
//!
//! tungstenite's own limit (`max_message_size`) is fixed when the stream
//! is built, and a connection needs MAX_MESSAGE_BYTES once joined; with it
//! tungstenite would read (and reserve) a whole 1 MiB first frame before
//! the transport could look at it. So the socket is wrapped: until the
//! first data message has ended, [`FirstFrameLimit`] follows the frame
//! boundaries of what the client sends and fails the read as soon as a
//! header declares more than the limit. After that it only passes bytes
//! through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest first message: a `join` with an 8 KiB token and room to
/// spare.
pub(crate) const FIRST_MESSAGE_BYTES: u64 = 16 << 10;

/// The error a read fails with when the first message is too big.
#[derive(Debug)]
pub(crate) struct FirstMessageTooBig;

impl std::fmt::Display for FirstMessageTooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the first message is larger than {FIRST_MESSAGE_BYTES} bytes"
        )
    }
}

impl std::error::Error for FirstMessageTooBig {}

/// Whether a read error is [`FirstMessageTooBig`].
pub(crate) fn is_too_big(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<FirstMessageTooBig>())
}

/// Where the scan is in the client's byte stream.
#[derive(Debug)]
struct Scan {
    limit: u64,
    /// The frame header read so far (at most 14 bytes).
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// Payload bytes of the current data message so far.
    message: u64,
}

impl Scan {
    /// Follows `bytes`; `false` when a header declares more than the limit.
    /// `Ok(true)` once the first data message has ended (nothing more to
    /// check).
    fn feed(&mut self, mut bytes: &[u8]) -> Result<bool, FirstMessageTooBig> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let short = self.head[1] & 0x7f;
            let extended = match short {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + mask {
                continue;
            }
            let len = match extended {
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.head[2..10]);
                    u64::from_be_bytes(b)
                }
                _ => u64::from(short),
            };
            let fin = self.head[0] & 0x80 != 0;
            let opcode = self.head[0] & 0x0f;
            self.have = 0;
            self.skip = len;
            // Control frames (8 and up) are tungstenite's to bound (125
            // bytes) and do not end a message.
            if opcode < 8 {
                self.message = self.message.saturating_add(len);
                if self.message > self.limit {
                    return Err(FirstMessageTooBig);
                }
                if fin {
                    // The rest of this frame's payload may still arrive;
                    // it was counted. Later messages are not limited.
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// A socket whose reads check the first message's size until it ends or
/// [`FirstFrameLimit::lift`] is called.
#[derive(Debug)]
pub(crate) struct FirstFrameLimit<S> {
    inner: S,
    scan: Option<Box<Scan>>,
}

impl<S> FirstFrameLimit<S> {
    pub(crate) fn new(inner: S, limit: u64) -> Self {
        FirstFrameLimit {
            inner,
            scan: Some(Box::new(Scan {
                limit,
                head: [0; 14],
                have: 0,
                skip: 0,
                message: 0,
            })),
        }
    }

    /// No more checks (the connection joined).
    pub(crate) fn lift(&mut self) {
        self.scan = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstFrameLimit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(scan)) = (&read, this.scan.as_mut()) {
            match scan.feed(&buf.filled()[before..]) {
                Ok(false) => {}
                Ok(true) => this.scan = None,
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstFrameLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame header (masked) for a payload of `len`.
    fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut h = vec![opcode | if fin { 0x80 } else { 0 }];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= 0xffff {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn scan(limit: u64) -> Scan {
        Scan {
            limit,
            head: [0; 14],
            have: 0,
            skip: 0,
            message: 0,
        }
    }

    #[test]
    fn a_first_message_at_the_limit_passes_and_ends_the_checks() {
        let mut bytes = header(1, true, 16 << 10);
        bytes.extend(std::iter::repeat_n(b'a', 16 << 10));
        // Fed one byte at a time: headers split across reads are followed.
        let mut s = scan(16 << 10);
        let mut ended = false;
        for b in &bytes {
            ended |= s.feed(std::slice::from_ref(b)).unwrap();
            if ended {
                break;
            }
        }
        assert!(ended);
    }

    #[test]
    fn a_header_declaring_more_fails_before_its_payload() {
        let mut s = scan(16 << 10);
        assert!(s.feed(&header(1, true, (16 << 10) + 1)).is_err());
        let mut s = scan(16 << 10);
        assert!(s.feed(&header(1, true, 1 << 20)).is_err());
    }

    #[test]
    fn fragments_add_up_and_control_frames_do_not_count() {
        let mut s = scan(100);
        let mut bytes = header(9, true, 125); // a ping
        bytes.extend([0u8; 125]);
        bytes.extend(header(1, false, 60));
        bytes.extend([b'a'; 60]);
        bytes.extend(header(0, false, 40));
        bytes.extend([b'a'; 40]);
        assert!(!s.feed(&bytes).unwrap());
        // 101 bytes in all.
        assert!(s.feed(&header(0, true, 1)).is_err());
    }
}
