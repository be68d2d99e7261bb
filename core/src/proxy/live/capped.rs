//! The client's connection with a cap on what is read before the setup: until then a client
//! has proven nothing, so it may not make the gateway buffer more than `live.max_setup_bytes`
//! (the message limit for sessions, `live.max_message_bytes`, is far larger).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Room for frame headers and a few pings besides the setup itself.
const SLACK: usize = 4096;

/// What the error says when the cap is reached, so the setup reader can tell it apart.
pub const OVER_CAP: &str = "read over the setup cap";

pub struct Capped<S> {
    inner: S,
    /// Bytes that may still be read; `None` once the setup is read.
    left: Option<usize>,
}

impl<S> Capped<S> {
    /// `already` bytes of the setup were read with the upgrade request.
    pub fn new(inner: S, max_setup_bytes: usize, already: usize) -> Capped<S> {
        Capped {
            inner,
            left: Some((max_setup_bytes + SLACK).saturating_sub(already)),
        }
    }

    pub fn lift(&mut self) {
        self.left = None;
    }
}

/// Whether a read error is the cap being reached.
pub fn is_over_cap(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.to_string() == OVER_CAP
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(left) = this.left else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, OVER_CAP)));
        }
        if buf.remaining() <= left {
            let before = buf.filled().len();
            let res = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.left = Some(left - (buf.filled().len() - before));
            return res;
        }
        // Only near the cap: read no more than is left, through a buffer of that size.
        let mut room = vec![0; left];
        let mut part = ReadBuf::new(&mut room);
        let res = Pin::new(&mut this.inner).poll_read(cx, &mut part);
        let n = part.filled().len();
        buf.put_slice(&room[..n]);
        this.left = Some(left - n);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_cap_until_it_is_lifted() {
        let (mut far, near) = tokio::io::duplex(64 * 1024);
        far.write_all(&vec![7; 3 * SLACK]).await.unwrap();
        let mut capped = Capped::new(near, 10, 6);
        let mut got = vec![0; 3 * SLACK];
        let mut read = 0;
        let err = loop {
            match capped.read(&mut got[read..]).await {
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert!(is_over_cap(&err));
        assert_eq!(read, SLACK + 4);
        capped.lift();
        capped.read_exact(&mut got[read..]).await.unwrap();
    }
}
