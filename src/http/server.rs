//! The network threads: accept connections (at most dialpad.http_max_connections), let hyper
//! parse each request (one at a time per connection, headers bounded, read timeout), read a
//! delivery's body within dialpad.max_body_size, queue it for the main thread and answer
//! with what the main thread says once its transaction has committed.

use super::framing::{self, Framing};
use super::metrics::Exposure;
use super::status::{self, Route};
use super::{Answer, Delivery, Shared};
use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Semaphore};

/// Largest request head (request line and headers) read: a larger one gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
pub(super) const MAX_HEADERS: usize = 64;
/// Longest a delivery waits for the main thread's answer before it is answered 503 (the
/// delivery may still be stored: Dialpad's retry is then recognized as a redelivery). Below
/// Dialpad's own 5-second timeout, so that the 503 reaches it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// Most frames a body may come in: 10 MB in 1-byte chunks would cost a frame each.
const MAX_BODY_FRAMES: usize = 65_536;
/// Seconds a 503 asks the client to wait.
const RETRY_AFTER: &str = "5";
/// Connections the /metrics listener (dialpad.metrics_listen) keeps open at once.
const METRICS_CONNECTIONS: usize = 16;
/// What a connection over the limit gets before it is closed (written once, never waited on).
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a listening socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Deliveries, /healthz and (to loopback clients, unless it has its own) /metrics.
    Webhooks,
    /// /metrics and /healthz only (dialpad.metrics_listen).
    Metrics,
}

/// Starts the network thread serving `listeners`. Every signal is blocked while it is
/// created, so it and any thread it starts inherit a mask that leaves signals to the main
/// thread (PostgreSQL's handlers must run there).
pub(crate) fn spawn(listeners: Vec<(std::net::TcpListener, Kind)>, shared: Arc<Shared>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    with_signals_blocked(|| {
        std::thread::Builder::new().name("dialpad-http".into()).spawn(move || {
            runtime.block_on(async move {
                for (listener, kind) in listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => drop(tokio::spawn(accept_loop(l, kind, shared.clone()))),
                        Err(e) => eprintln!("pg_dialpad http: cannot serve a listening socket: {e}"),
                    }
                }
                std::future::pending::<()>().await
            })
        })
    })?;
    Ok(())
}

fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t values initialized by sigfillset/pthread_sigmask before use; the
    // calling thread's mask is put back as it was once `f` has started the thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, kind: Kind, shared: Arc<Shared>) {
    let limit = if kind == Kind::Webhooks { shared.limits.max_connections } else { METRICS_CONNECTIONS };
    let permits = Arc::new(Semaphore::new(limit));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a little instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.try_write(BUSY);
            continue; // dropped: closed
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        // The metrics listener always speaks plain HTTP (keep it on loopback or a private network).
        let tls = if kind == Kind::Webhooks { shared.tls.get() } else { None };
        tokio::spawn(async move {
            shared.metrics.open_connections.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => serve_io(stream, peer, kind, &shared).await,
                // The handshake too must end within the read timeout.
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(shared.limits.read_timeout(), acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        serve_io(stream, peer, kind, &shared).await;
                    } else {
                        shared.metrics.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            shared.metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// One connection, plain or TLS, served by hyper: one request at a time, the head within
/// the read timeout (which also closes a connection idle for that long between requests).
pub(super) async fn serve_io<I>(io: I, peer: SocketAddr, kind: Kind, shared: &Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, heads) = framing::Watched::new(io, MAX_HEAD_BYTES);
    let for_service = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = for_service.clone();
        let framing = heads.next();
        async move { Ok::<_, Infallible>(handle(req, peer, kind, framing, &shared).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.read_timeout())
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    if builder.serve_connection(TokioIo::new(io), service).await.is_err() {
        // Malformed or oversized heads, read timeouts, clients gone mid-request: hyper ends
        // the connection (with 400, 408 or 431 when it can); counted, never logged one by one.
        shared.metrics.connection_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request; `framing` is what framing.rs read in its head.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    kind: Kind,
    framing: Framing,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let mut response = match status::route(req.method().as_str(), req.uri().path()) {
        // Two framings at once is how requests are smuggled past proxies (RFC 9112 6.1).
        _ if framing == Framing::Both => closing(text(
            StatusCode::BAD_REQUEST,
            "a request may not carry both Content-Length and Transfer-Encoding\n",
        )),
        Route::Deliver(source) if kind == Kind::Webhooks => deliver(req, source, shared).await,
        Route::Health => health(shared),
        Route::Metrics if metrics_allowed(kind, peer, shared) => metrics(shared),
        Route::Metrics if kind == Kind::Webhooks && shared.limits.metrics == Exposure::Loopback => {
            text(StatusCode::FORBIDDEN, "/metrics is served to loopback clients only (see dialpad.metrics_listen)\n")
        }
        Route::WrongMethod(allow) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: deliveries go to POST /webhooks/{source}\n"),
    };
    // The watcher cannot follow the connection past this request: it ends with the answer.
    if matches!(framing, Framing::Chunked | Framing::Unknown) {
        response = closing(response);
    }
    shared.metrics.observe(response.status().as_u16(), started.elapsed());
    response
}

fn metrics_allowed(kind: Kind, peer: SocketAddr, shared: &Shared) -> bool {
    match kind {
        Kind::Metrics => true,
        Kind::Webhooks => shared.limits.metrics == Exposure::Loopback && peer.ip().to_canonical().is_loopback(),
    }
}

/// Reads a delivery's body, queues it, and answers once the main thread has.
async fn deliver(req: Request<Incoming>, source: Option<String>, shared: &Shared) -> Response<Full<Bytes>> {
    shared.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
    // Both Content-Length and Transfer-Encoding: refused above (framing.rs).
    let headers = req.headers();
    let max = shared.limits.max_body();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        return closing(too_large(Some(n), max));
    }
    let read =
        tokio::time::timeout(shared.limits.read_timeout(), read_body(req.into_body(), max, declared, shared)).await;
    let (body, _budget) = match read {
        Err(_) => {
            return closing(text(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within dialpad.http_read_timeout\n",
            ))
        }
        Ok(Err(BodyError::TooLarge)) => return closing(too_large(None, max)),
        Ok(Err(BodyError::TooManyFrames)) => {
            return closing(text(StatusCode::BAD_REQUEST, "the body came in too many chunks\n"))
        }
        Ok(Err(BodyError::Budget)) => {
            return closing(unavailable("the listener holds as many bodies as it may at once: retry later"))
        }
        Ok(Err(BodyError::Unreadable)) => {
            return closing(text(StatusCode::BAD_REQUEST, "the body could not be read\n"))
        }
        Ok(Ok(read)) => read,
    };
    let (reply, answer) = oneshot::channel();
    if shared.push(Delivery { source, body, reply }).is_err() {
        return unavailable("the listener's queue is full (dialpad.http_queue_size): retry later");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answered(answer),
        _ => unavailable("the listener's database session did not answer in time"),
    }
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    TooManyFrames,
    /// The listener's byte budget for bodies in memory is spent (see `super::body_budget`).
    Budget,
    Unreadable,
}

/// Reads a body of at most `max` bytes into one buffer, frame by frame: a chunked body costs
/// its bytes, not a list of frames each holding a read buffer. Every byte is taken from the
/// listener's budget first; the permit returned holds it until the delivery is answered.
async fn read_body(
    mut body: Incoming,
    max: usize,
    declared: Option<u64>,
    shared: &Shared,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize).min(max).min(1 << 20));
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut frames = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else { continue }; // trailers
        frames += 1;
        if frames > MAX_BODY_FRAMES {
            return Err(BodyError::TooManyFrames);
        }
        if buf.len() + data.len() > max {
            return Err(BodyError::TooLarge);
        }
        if data.is_empty() {
            continue;
        }
        let n = u32::try_from(data.len()).map_err(|_| BodyError::TooLarge)?;
        let permit = shared.body_budget.clone().try_acquire_many_owned(n).map_err(|_| BodyError::Budget)?;
        match held.as_mut() {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

fn too_large(declared: Option<u64>, max: usize) -> Response<Full<Bytes>> {
    let size = declared.map(|n| format!("of {n} bytes ")).unwrap_or_default();
    text(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body {size}exceeds dialpad.max_body_size ({max} bytes)\n"))
}

fn answered(answer: Answer) -> Response<Full<Bytes>> {
    match answer {
        Answer::Stored(id) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("{{\"id\":{id}}}\n"))));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Answer::Refused { status, message } => {
            text(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), &format!("{message}\n"))
        }
        Answer::Unavailable(reason) => unavailable(&reason),
    }
}

fn health(shared: &Shared) -> Response<Full<Bytes>> {
    let h = shared.health();
    if h.ok {
        text(StatusCode::OK, &format!("{}\n", h.detail))
    } else {
        unavailable(&h.detail)
    }
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let mut body = shared.metrics.render(shared.queued(), shared.limits.queue_size);
    body.push_str(&shared.database_metrics());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// 503 with Retry-After: Dialpad retries.
fn unavailable(reason: &str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n"));
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    r
}

/// The connection is closed after this answer (its body may not have been read).
fn closing(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
