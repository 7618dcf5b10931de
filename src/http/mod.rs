//! The network side of the HTTP listener (docs/http.md): hyper on a tokio runtime that runs
//! on threads of its own, with every signal blocked, so that SIGTERM, SIGHUP and the
//! postmaster's death stay with the worker's main thread. Nothing here calls into
//! PostgreSQL: a request's body is queued for the main thread (bgworker/listener.rs), which
//! stores the queued bodies in one transaction and answers each through its channel once
//! that transaction has committed.

mod framing;
pub(crate) mod metrics;
mod server;
pub(crate) mod status;
pub(crate) mod tls;

pub(crate) use server::{spawn, Kind};

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One delivery waiting for the main thread.
pub(crate) struct Delivery {
    /// The source named in the path (`/webhooks/{source}`), or None (`/webhooks`).
    pub source: Option<String>,
    pub body: bytes::Bytes,
    pub reply: oneshot::Sender<Answer>,
}

/// What the main thread says about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Committed: the id of its first delivery in dialpad.webhook_events.
    Stored(i64),
    /// Refused for good (4xx): a retry can never succeed.
    Refused { status: u16, message: String },
    /// Not now (503 with Retry-After): Dialpad retries.
    Unavailable(String),
}

/// Whether deliveries can be committed now, as the main thread last found it.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    pub ok: bool,
    pub detail: String,
}

/// Settings the main thread reads from PostgreSQL and the network threads obey.
pub(crate) struct Limits {
    pub max_body: AtomicUsize,
    pub read_timeout_ms: AtomicU64,
    pub max_connections: usize,
    pub queue_size: usize,
    /// Who may read /metrics on the webhook listener (see [`metrics::Exposure`]).
    pub metrics: metrics::Exposure,
}

impl Limits {
    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms.load(Ordering::Relaxed).max(1))
    }

    pub(crate) fn max_body(&self) -> usize {
        self.max_body.load(Ordering::Relaxed)
    }
}

/// What the network threads and the main thread share.
pub(crate) struct Shared {
    queue: Mutex<VecDeque<Delivery>>,
    /// Written (one byte, never blocking) when a delivery is queued; the main thread waits
    /// on the other end with WaitLatchOrSocket.
    wake: UnixDatagram,
    pub limits: Limits,
    health: Mutex<(Health, Instant)>,
    /// What the main thread last computed for /metrics (the ingest counters of shared memory).
    database_metrics: Mutex<String>,
    pub metrics: metrics::Metrics,
    /// The TLS configuration of new connections on dialpad.http_listen (None: plain HTTP).
    pub tls: tls::TlsSlot,
    /// Bytes that the bodies being read or queued may hold at once, all connections together
    /// (a permit per byte, given back when the delivery is answered): see [`body_budget`].
    pub body_budget: Arc<tokio::sync::Semaphore>,
}

/// The byte budget of the bodies in memory at once: four bodies of dialpad.max_body_size
/// (as set at start), at least 64 MB, at most 1 GB. A body that would pass it is answered
/// 503, so that however many connections send at once, the listener's memory stays bounded.
pub(crate) fn body_budget(max_body: usize) -> usize {
    max_body.saturating_mul(4).clamp(64 << 20, 1 << 30)
}

/// How long a health verdict stays true without the main thread renewing it: longer means
/// the main thread is stuck (a long transaction), and deliveries would wait.
const HEALTH_STALE_AFTER: Duration = Duration::from_secs(10);

impl Shared {
    /// The shared state, and the socket the main thread waits on.
    pub(crate) fn new(limits: Limits) -> std::io::Result<(Arc<Shared>, UnixDatagram)> {
        let (wake, wait) = UnixDatagram::pair()?;
        wake.set_nonblocking(true)?;
        wait.set_nonblocking(true)?;
        let starting = Health { ok: false, detail: "the listener is starting".into() };
        let budget = body_budget(limits.max_body());
        let shared = Shared {
            queue: Mutex::new(VecDeque::with_capacity(limits.queue_size)),
            wake,
            limits,
            health: Mutex::new((starting, Instant::now())),
            database_metrics: Mutex::new(String::new()),
            metrics: metrics::Metrics::default(),
            tls: tls::TlsSlot::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
        };
        Ok((Arc::new(shared), wait))
    }

    /// Queues a delivery and wakes the main thread; gives it back when the queue is full.
    pub(crate) fn push(&self, d: Delivery) -> Result<(), Delivery> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.limits.queue_size {
                return Err(d);
            }
            q.push_back(d);
        }
        // A full socket buffer means a wake-up is pending already: nothing is lost.
        let _ = self.wake.send(&[1]);
        Ok(())
    }

    /// Up to `max` queued deliveries, oldest first.
    pub(crate) fn take(&self, max: usize) -> Vec<Delivery> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = (health, Instant::now());
    }

    /// The main thread's last verdict, unless it is too old to trust.
    pub(crate) fn health(&self) -> Health {
        let (h, at) = self.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if at.elapsed() > HEALTH_STALE_AFTER {
            let secs = at.elapsed().as_secs();
            return Health { ok: false, detail: format!("the listener's database session has been busy for {secs} s") };
        }
        h
    }

    pub(crate) fn set_database_metrics(&self, text: String) {
        *self.database_metrics.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    pub(crate) fn database_metrics(&self) -> String {
        self.database_metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Empties the wake-up socket (the main thread, after a wait).
pub(crate) fn drain_wakeups(wait: &UnixDatagram) {
    let mut buf = [0u8; 64];
    while wait.recv(&mut buf).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(queue_size: usize) -> Limits {
        Limits {
            max_body: AtomicUsize::new(100),
            read_timeout_ms: AtomicU64::new(1000),
            max_connections: 4,
            queue_size,
            metrics: metrics::Exposure::Loopback,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_wakes_the_waiter() {
        let (shared, wait) = Shared::new(limits(2)).unwrap();
        let mut receivers = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let d = Delivery { source: Some(format!("s{i}")), body: bytes::Bytes::from_static(b"{}"), reply: tx };
            assert_eq!(shared.push(d).is_ok(), i < 2, "delivery {i}");
        }
        let mut buf = [0u8; 8];
        assert!(wait.recv(&mut buf).is_ok(), "a queued delivery wakes the main thread");
        drain_wakeups(&wait);
        assert!(wait.recv(&mut buf).is_err());
        let taken = shared.take(10);
        assert_eq!(taken.iter().map(|d| d.source.clone().unwrap()).collect::<Vec<_>>(), ["s0", "s1"]);
        assert_eq!(shared.queued(), 0);
    }

    #[test]
    fn health_goes_stale() {
        let (shared, _wait) = Shared::new(limits(1)).unwrap();
        shared.set_health(Health { ok: true, detail: "ok".into() });
        assert!(shared.health().ok);
        shared.health.lock().unwrap().1 = Instant::now() - HEALTH_STALE_AFTER - Duration::from_secs(1);
        assert!(!shared.health().ok);
    }
}
