//! The listener's own figures (atomics the network threads update), in Prometheus' text
//! format: requests by status, a latency histogram from request to answer, connections.
//! The database's figures (ingest counters, workers) are computed by the main thread
//! (bgworker/listener.rs) and appended as it last rendered them.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Who may read /metrics on the webhook listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exposure {
    /// Clients connecting from a loopback address (dialpad.metrics_listen empty).
    Loopback,
    /// Nobody: /metrics has a listener of its own (dialpad.metrics_listen set).
    Elsewhere,
}

/// The statuses counted one by one; any other is counted as "other".
const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 405, 408, 413, 500, 503, 0];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

#[derive(Default)]
pub(crate) struct Metrics {
    by_status: [AtomicU64; STATUSES.len()],
    /// Cumulative counts: bucket i counts requests at most BUCKETS[i] seconds long.
    latency: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    pub open_connections: AtomicI64,
    /// Connections closed at once because dialpad.http_max_connections were open.
    pub refused_connections: AtomicU64,
    /// Requests that asked a delivery to be stored (whatever came of it).
    pub deliveries: AtomicU64,
    /// TLS handshakes that failed or did not end within the read timeout.
    pub failed_handshakes: AtomicU64,
    /// Connections ended by a protocol error, a read timeout or a client gone mid-request.
    pub connection_errors: AtomicU64,
}

fn status_index(status: u16) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1)
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn observe(&self, status: u16, took: Duration) {
        self.by_status[status_index(status)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.latency) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// What was refused so far: requests by status (other than 200), and connections
    /// refused, broken or timed out.
    pub(crate) fn refusals(&self) -> Refusals {
        Refusals {
            by_status: STATUSES
                .iter()
                .zip(&self.by_status)
                .filter(|(s, _)| **s != 200)
                .map(|(s, c)| (*s, c.load(Ordering::Relaxed)))
                .collect(),
            connections: self.refused_connections.load(Ordering::Relaxed)
                + self.connection_errors.load(Ordering::Relaxed)
                + self.failed_handshakes.load(Ordering::Relaxed),
        }
    }

    /// The listener's figures in Prometheus' text format.
    pub(crate) fn render(&self, queued: usize, queue_size: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP dialpad_http_requests_total HTTP requests answered by the pg_dialpad listener, by status (\"other\" for any status not listed).");
        let _ = writeln!(out, "# TYPE dialpad_http_requests_total counter");
        for (s, c) in STATUSES.iter().zip(&self.by_status) {
            let label = if *s == 0 { "other".to_string() } else { s.to_string() };
            let _ = writeln!(out, "dialpad_http_requests_total{{status=\"{label}\"}} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP dialpad_http_request_duration_seconds Time from a request's headers to its answer (for a delivery: read, queued, committed).");
        let _ = writeln!(out, "# TYPE dialpad_http_request_duration_seconds histogram");
        for (bound, c) in BUCKETS.iter().zip(&self.latency) {
            let _ = writeln!(
                out,
                "dialpad_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "dialpad_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "dialpad_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "dialpad_http_request_duration_seconds_count {count}");
        gauge(
            &mut out,
            "dialpad_http_queue_length",
            "Deliveries read and waiting for the listener's transaction.",
            queued as i64,
        );
        gauge(
            &mut out,
            "dialpad_http_queue_capacity",
            "dialpad.http_queue_size: deliveries that may wait; more are answered 503.",
            queue_size as i64,
        );
        gauge(
            &mut out,
            "dialpad_http_open_connections",
            "Client connections open now.",
            self.open_connections.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP dialpad_http_refused_connections_total Connections closed at once because dialpad.http_max_connections were open.");
        let _ = writeln!(out, "# TYPE dialpad_http_refused_connections_total counter");
        let _ = writeln!(
            out,
            "dialpad_http_refused_connections_total {}",
            self.refused_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP dialpad_http_connection_errors_total Connections ended by a malformed or oversized request head, a read timeout, or a client gone mid-request.");
        let _ = writeln!(out, "# TYPE dialpad_http_connection_errors_total counter");
        let _ =
            writeln!(out, "dialpad_http_connection_errors_total {}", self.connection_errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP dialpad_http_failed_tls_handshakes_total TLS handshakes that failed or did not end within dialpad.http_read_timeout.");
        let _ = writeln!(out, "# TYPE dialpad_http_failed_tls_handshakes_total counter");
        let _ = writeln!(
            out,
            "dialpad_http_failed_tls_handshakes_total {}",
            self.failed_handshakes.load(Ordering::Relaxed)
        );
        out
    }
}

/// Refusal counts at one moment, for the log's periodic summary.
#[derive(Default, Debug, Clone)]
pub(crate) struct Refusals {
    by_status: Vec<(u16, u64)>,
    connections: u64,
}

impl Refusals {
    /// What was refused since `before`, in a few words; None when nothing was.
    pub(crate) fn since(&self, before: &Refusals) -> Option<String> {
        let earlier = |status: u16| before.by_status.iter().find(|(s, _)| *s == status).map_or(0, |b| b.1);
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, n)| (*status, n.saturating_sub(earlier(*status))))
            .filter(|(_, n)| *n > 0)
            .map(|(status, n)| if status == 0 { format!("{n} other") } else { format!("{n} × {status}") })
            .collect();
        let connections = self.connections.saturating_sub(before.connections);
        if connections > 0 {
            parts.push(format!("{connections} connection(s) over dialpad.http_max_connections, broken or timed out"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(crate) fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_statuses_and_latency_buckets() {
        let m = Metrics::default();
        m.observe(200, Duration::from_micros(1500));
        m.observe(503, Duration::from_millis(30));
        m.observe(299, Duration::from_secs(9));
        let text = m.render(3, 10);
        assert!(text.contains("dialpad_http_requests_total{status=\"200\"} 1\n"), "{text}");
        assert!(text.contains("dialpad_http_requests_total{status=\"503\"} 1\n"));
        assert!(text.contains("dialpad_http_requests_total{status=\"other\"} 1\n"));
        assert!(text.contains("dialpad_http_request_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("dialpad_http_request_duration_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("dialpad_http_request_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("dialpad_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("dialpad_http_queue_length 3\n"));
    }

    #[test]
    fn the_log_summary_says_only_what_is_new() {
        let m = Metrics::default();
        let start = m.refusals();
        assert_eq!(m.refusals().since(&start), None);
        m.observe(200, Duration::ZERO);
        assert_eq!(m.refusals().since(&start), None, "a 200 is no refusal");
        m.observe(401, Duration::ZERO);
        m.observe(401, Duration::ZERO);
        m.observe(503, Duration::ZERO);
        m.refused_connections.fetch_add(1, Ordering::Relaxed);
        let first = m.refusals();
        assert_eq!(
            first.since(&start).as_deref(),
            Some("2 × 401, 1 × 503, 1 connection(s) over dialpad.http_max_connections, broken or timed out")
        );
        m.observe(413, Duration::ZERO);
        assert_eq!(m.refusals().since(&first).as_deref(), Some("1 × 413"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
