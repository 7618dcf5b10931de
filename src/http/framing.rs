//! Requests that carry both `Content-Length` and `Transfer-Encoding` are answered 400, on
//! every request of a connection. hyper follows RFC 9112 6.3 with them (Transfer-Encoding
//! wins, the connection is closed after the answer) and hides the Content-Length from the
//! service, so each request's head is also read here, by httparse (hyper's own parser), as
//! the bytes go by: the service then refuses what hyper would have read one way and a proxy
//! in front of us perhaps the other.
//!
//! To find where the next head starts, the watcher skips a body framed by Content-Length (its
//! length is in the head). A chunked body's end is found only by reading its framing, which
//! is hyper's job and is not done twice here: after a chunked request the watcher stops, and
//! the service closes the connection after answering it. Whatever the watcher cannot follow
//! (a head httparse refuses, an upgrade, too many pipelined heads) stops it the same way, and
//! every request served after that is answered and its connection closed ([`Framing::Unknown`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads seen ahead of the service (pipelined requests) before the watcher gives up.
const MAX_AHEAD: usize = 1024;

/// What a request's head said about its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One framing (or none): served, and the connection may stay open.
    Plain,
    /// Chunked: served, and the connection is closed after the answer (the watcher stops).
    Chunked,
    /// Both Content-Length and Transfer-Encoding: refused with 400, the connection closed.
    Both,
    /// The watcher stopped before this head: served, and the connection closed after it.
    Unknown,
}

/// The verdicts on the heads of one connection, oldest first, shared between the watcher
/// (which pushes one per head as the bytes go by) and the service (which takes one per
/// request hyper hands it, in the same order).
#[derive(Clone, Default)]
pub(crate) struct Heads(Arc<Mutex<VecDeque<Framing>>>);

impl Heads {
    /// The verdict on the next request's head.
    pub(crate) fn next(&self) -> Framing {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front().unwrap_or(Framing::Unknown)
    }

    /// Records a head's verdict; false when too many are waiting (the watcher then stops).
    fn push(&self, f: Framing) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(f);
        q.len() <= MAX_AHEAD
    }
}

/// Where the next head starts, as far as a complete head tells.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// After a body of this many bytes.
    After(u64),
    /// Not known here (chunked, both framings, an upgrade, a Content-Length hyper refuses).
    Lost(Framing),
}

/// A complete head's length and what follows it; None while incomplete; Err when httparse
/// refuses it (hyper then refuses it too).
fn read_head(head: &[u8]) -> Result<Option<(usize, Next)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; super::server::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let named = |name: &'static str| req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    let chunked = named("transfer-encoding").next().is_some();
    let mut lengths = named("content-length").map(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok());
    let next = match (chunked, lengths.next()) {
        (true, Some(_)) => Next::Lost(Framing::Both),
        (true, None) => Next::Lost(Framing::Chunked),
        // hyper answers them (no upgrade is offered) and may keep the connection: it is
        // closed after the answer instead.
        _ if req.method == Some("CONNECT") || named("upgrade").next().is_some() => Next::Lost(Framing::Unknown),
        (false, None) => Next::After(0),
        (false, Some(Some(n))) if lengths.all(|l| l == Some(n)) => Next::After(n),
        // Unreadable or differing lengths: hyper answers 400 and closes.
        (false, Some(_)) => Next::Lost(Framing::Unknown),
    };
    Ok(Some((len, next)))
}

/// What the watcher is reading.
enum Watch {
    /// A head, gathered until complete.
    Head(Vec<u8>),
    /// A Content-Length body: this many bytes to go.
    Body(u64),
    /// Nothing: it lost the thread (see the module's comment).
    Off,
}

/// The connection's stream, its request heads watched as the bytes go by.
pub(crate) struct Watched<I> {
    inner: I,
    watch: Watch,
    limit: usize,
    heads: Heads,
}

impl<I> Watched<I> {
    pub(crate) fn new(inner: I, limit: usize) -> (Watched<I>, Heads) {
        let heads = Heads::default();
        (Watched { inner, watch: Watch::Head(Vec::new()), limit, heads: heads.clone() }, heads)
    }

    /// What follows a complete head, its verdict recorded.
    fn after(&self, next: Next) -> Watch {
        match next {
            Next::After(n) if self.heads.push(Framing::Plain) => {
                if n == 0 {
                    Watch::Head(Vec::new())
                } else {
                    Watch::Body(n)
                }
            }
            Next::After(_) => Watch::Off,
            Next::Lost(f) => {
                self.heads.push(f);
                Watch::Off
            }
        }
    }

    fn saw(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.watch {
                Watch::Off => return,
                Watch::Body(left) => {
                    let n = bytes.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.watch = Watch::Head(Vec::new());
                    }
                }
                // A head that starts in these bytes is read where it lies (pipelined heads
                // are not copied); only an incomplete one is kept.
                Watch::Head(head) if head.is_empty() => match read_head(bytes) {
                    Ok(Some((len, next))) => {
                        bytes = &bytes[len.min(bytes.len())..];
                        self.watch = self.after(next);
                    }
                    Ok(None) if bytes.len() <= self.limit => {
                        head.extend_from_slice(bytes);
                        return;
                    }
                    // Too long (hyper answers 431) or refused (hyper answers 400).
                    Ok(None) | Err(()) => self.watch = Watch::Off,
                },
                Watch::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    // A head ends with an empty line: it is parsed again only when the new
                    // bytes (with the three before them) may hold one, so a head trickling in
                    // byte by byte costs one parse, not one per byte.
                    let ended = head[before.saturating_sub(3)..].windows(2).any(|w| w == b"\n\n")
                        || head[before.saturating_sub(3)..].windows(3).any(|w| w == b"\n\r\n");
                    let parsed = if ended { read_head(head) } else { Ok(None) };
                    match parsed {
                        Ok(None) if head.len() <= self.limit => return,
                        Ok(None) | Err(()) => self.watch = Watch::Off,
                        Ok(Some((len, next))) => {
                            // The head ends in the new bytes (it was incomplete before them).
                            bytes = &bytes[len.saturating_sub(before).min(bytes.len())..];
                            self.watch = self.after(next);
                        }
                    }
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && !matches!(self.watch, Watch::Off) {
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

    fn watch(pieces: &[&[u8]]) -> (Watched<()>, Heads) {
        let (mut w, heads) = Watched::new((), 1024);
        for p in pieces {
            w.saw(p);
        }
        (w, heads)
    }

    fn verdicts(heads: &Heads) -> Vec<Framing> {
        std::iter::from_fn(|| Some(heads.next()).filter(|f| *f != Framing::Unknown)).collect()
    }

    #[test]
    fn both_framings_are_seen_in_a_head_read_in_pieces() {
        let (w, heads) = watch(&[b"POST /webhooks HTTP/1.1\r\nContent-Length: 4\r\n"]);
        assert!(matches!(w.watch, Watch::Head(_)), "incomplete head: still watching");
        let (w, heads2) = watch(&[
            b"POST /webhooks HTTP/1.1\r\nContent-Length: 4\r\n",
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert!(matches!(w.watch, Watch::Off));
        assert_eq!(verdicts(&heads), []);
        assert_eq!(verdicts(&heads2), [Framing::Both]);
        assert_eq!(heads2.next(), Framing::Unknown, "nothing is known past it");
    }

    #[test]
    fn heads_are_followed_across_content_length_bodies() {
        let smuggling = b"POST /webhooks HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        // Three requests in one read, the third with both framings; then the same split anyhow.
        let mut all = b"GET /healthz HTTP/1.1\r\n\r\nPOST /webhooks HTTP/1.1\r\nContent-Length: 9\r\n\r\n".to_vec();
        all.extend_from_slice(b"GET / x\r\n\r\n"); // a body that looks like a head is skipped
        all.extend_from_slice(smuggling);
        let (_, heads) = watch(&[&all]);
        assert_eq!(verdicts(&heads), [Framing::Plain, Framing::Plain, Framing::Both]);
        for cut in 1..all.len() {
            let (_, heads) = watch(&[&all[..cut], &all[cut..]]);
            assert_eq!(verdicts(&heads), [Framing::Plain, Framing::Plain, Framing::Both], "cut at {cut}");
        }
        // Byte by byte, and with heads ended by bare line feeds (httparse takes both).
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        let (_, heads) = watch(&bytes);
        assert_eq!(verdicts(&heads), [Framing::Plain, Framing::Plain, Framing::Both]);
        let bare = b"GET /healthz HTTP/1.1\n\nPOST /x HTTP/1.1\nContent-Length: 2\nTransfer-Encoding: chunked\n\n";
        let bytes: Vec<&[u8]> = bare.chunks(1).collect();
        let (_, heads) = watch(&bytes);
        assert_eq!(verdicts(&heads), [Framing::Plain, Framing::Both]);
    }

    #[test]
    fn what_cannot_be_followed_stops_the_watcher() {
        for (head, want) in [
            (&b"POST /webhooks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..], vec![Framing::Chunked]),
            (b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", vec![]),
            (b"POST /x HTTP/1.1\r\nContent-Length: four\r\n\r\n", vec![]),
            (b"GET /x HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", vec![]),
            (b"\x00garbage\r\n\r\n", vec![]),
        ] {
            let (w, heads) = watch(&[head, b"GET /healthz HTTP/1.1\r\n\r\n"]);
            assert!(matches!(w.watch, Watch::Off), "{head:?}");
            assert_eq!(verdicts(&heads), want, "{head:?}");
        }
        let (mut w, _) = Watched::new((), 16);
        w.saw(b"POST /webhooks HTTP/1.1\r\nX-Long: aaaaaaaa");
        assert!(matches!(w.watch, Watch::Off), "stops watching past the head limit");
        let flood = b"GET /healthz HTTP/1.1\r\n\r\n".repeat(MAX_AHEAD + 5);
        let (w, heads) = watch(&[&flood]);
        assert!(matches!(w.watch, Watch::Off), "too many heads ahead");
        assert_eq!(verdicts(&heads).len(), MAX_AHEAD + 1);
    }
}
