//! Requests that carry both `Content-Length` and `Transfer-Encoding` are answered 400.
//! hyper follows RFC 9112 6.3 with them (Transfer-Encoding wins, the connection is closed
//! after the answer) and hides the Content-Length from the service, so the head of the first
//! request of each connection is also read here, by httparse (hyper's own parser), as the
//! bytes go by: the service then refuses what hyper would have read one way and a proxy in
//! front of us perhaps the other. A later request on a kept-alive connection is left to
//! hyper's rule (its end cannot be found without reading the framing, which is hyper's job).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// 0 (the default): the head is not complete yet.
const PLAIN: u8 = 1;
const BOTH: u8 = 2;

/// What the first request's head said, shared between the connection and its service.
#[derive(Clone, Default)]
pub(crate) struct FirstHead(Arc<AtomicU8>);

impl FirstHead {
    /// Whether the first request of the connection carried both framings (once: true for
    /// the first call only, so a later request is never refused for the first one's head).
    pub(crate) fn take_both_framings(&self) -> bool {
        self.0.swap(PLAIN, Ordering::AcqRel) == BOTH
    }
}

/// Whether a complete request head has both headers; None while the head is incomplete.
fn both_framings(head: &[u8]) -> Option<bool> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let has = |name: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
            Some(has("content-length") && has("transfer-encoding"))
        }
        Ok(httparse::Status::Partial) => None,
        // hyper refuses it on its own.
        Err(_) => Some(false),
    }
}

/// The connection's stream, watched until the first request's head is complete.
pub(crate) struct Watched<I> {
    inner: I,
    head: Option<Vec<u8>>,
    limit: usize,
    first: FirstHead,
}

impl<I> Watched<I> {
    pub(crate) fn new(inner: I, limit: usize) -> (Watched<I>, FirstHead) {
        let first = FirstHead::default();
        (Watched { inner, head: Some(Vec::new()), limit, first: first.clone() }, first)
    }

    fn saw(&mut self, bytes: &[u8]) {
        let Some(head) = self.head.as_mut() else { return };
        head.extend_from_slice(bytes);
        let verdict = match both_framings(head) {
            Some(v) => Some(v),
            None if head.len() > self.limit => Some(false), // hyper answers 431
            None => None,
        };
        if let Some(both) = verdict {
            self.first.0.store(if both { BOTH } else { PLAIN }, Ordering::Release);
            self.head = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && self.head.is_some() {
            self.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_framings_are_seen_in_a_head_read_in_pieces() {
        let (mut w, first) = Watched::new((), 1024);
        w.saw(b"POST /webhooks HTTP/1.1\r\nContent-Length: 4\r\n");
        assert!(w.head.is_some(), "incomplete head: still watching");
        w.saw(b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(w.head.is_none());
        assert!(first.take_both_framings());
        assert!(!first.take_both_framings(), "the first request only");
    }

    #[test]
    fn one_framing_or_a_broken_head_is_left_to_hyper() {
        for head in [
            &b"POST /webhooks HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"[..],
            b"POST /webhooks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x00garbage\r\n\r\n",
        ] {
            let (mut w, first) = Watched::new((), 1024);
            w.saw(head);
            assert!(w.head.is_none());
            assert!(!first.take_both_framings());
        }
        let (mut w, first) = Watched::new((), 16);
        w.saw(b"POST /webhooks HTTP/1.1\r\nX-Long: aaaaaaaa");
        assert!(w.head.is_none(), "stops watching past the head limit");
        assert!(!first.take_both_framings());
    }
}
