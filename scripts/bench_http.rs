//! The HTTP listener (issue 27, docs/http.md) on a cluster with fsync and synchronous_commit
//! on: deliveries per second through HTTP with 8 and 64 concurrent clients, next to as many
//! libpq sessions each calling dialpad.ingest_webhook once per transaction (the reference,
//! same run); latency from request to acknowledgement at 1,000 deliveries/s; the listener's
//! memory with 1,000 idle connections. The workers are paused: only ingestion is measured.
//!
//! BENCH_ONLY=http runs only this. BENCH_HTTP_SECONDS (default 10) per throughput figure.
//! The clients send plain JSON with distinct call ids (no source configured), one request at
//! a time per keep-alive connection. The throughput figures are driven by wrk (Debian's
//! package, which ./scripts/bench installs); the paced latency by the client in this file.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

fn body(call_id: i64) -> String {
    format!(r#"{{"call_id": {call_id}, "state": "ringing", "direction": "inbound", "event_timestamp": 1000}}"#)
}

/// One delivery on a keep-alive connection; true on a 200.
fn deliver(s: &mut TcpStream, call_id: i64) -> bool {
    let b = body(call_id);
    let request = format!("POST /webhooks HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The answer: its head, then Content-Length bytes of body.
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 256];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    head.starts_with("http/1.1 200")
}

/// Deliveries per second over `secs` with `clients` keep-alive connections driven by wrk
/// (Debian's package), each sending its next delivery as soon as the last is answered.
/// Every delivery has a call id of its own; any answer but a 2xx fails the figure.
fn http_rate(port: u16, clients: usize, secs: f64, next: &Arc<AtomicI64>) -> f64 {
    let first = next.fetch_add(1_000_000_000, Ordering::Relaxed);
    let script = std::env::temp_dir().join(format!("dialpad-bench-wrk-{}.lua", std::process::id()));
    let lua = format!(
        r#"local threads = 0
function setup(thread) thread:set("first", {first} + threads * 100000000); threads = threads + 1 end
local n = 0
function request()
  n = n + 1
  local body = string.format('{{"call_id": %.0f, "state": "ringing", "direction": "inbound", "event_timestamp": 1000}}', first + n)
  return wrk.format("POST", "/webhooks", nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("dialpad-wrk: %.0f %.0f\n", summary.requests, e.status + e.connect + e.read + e.write + e.timeout))
end
"#
    );
    std::fs::write(&script, lua).expect("write the wrk script");
    let out = std::process::Command::new("wrk")
        .args(["-t", "1", "-c", &clients.to_string(), "-d", &format!("{}s", secs as u64)])
        .args(["--timeout", "10s", "-s", script.to_str().unwrap(), &format!("http://127.0.0.1:{port}/webhooks")])
        .output()
        .expect("wrk (Debian's package wrk; ./scripts/bench installs it)");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok());
    let errors = text
        .lines()
        .find_map(|l| l.strip_prefix("dialpad-wrk: "))
        .and_then(|v| v.split(' ').nth(1)?.parse::<f64>().ok());
    assert_eq!(errors, Some(0.0), "wrk saw deliveries that were not acknowledged:\n{text}");
    rate.unwrap_or_else(|| panic!("no rate in wrk's output:\n{text}"))
}

/// The reference: `sessions` libpq sessions, each calling ingest_webhook once per transaction.
fn sql_rate(cluster: &Cluster, sessions: usize, secs: f64, next: &Arc<AtomicI64>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..sessions)
        .map(|_| {
            let next = next.clone();
            let mut c = cluster.connect();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while Instant::now() < deadline {
                    let b = body(next.fetch_add(1, Ordering::Relaxed));
                    c.query_one("SELECT dialpad.ingest_webhook($1)", &[&b]).unwrap();
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let t = Instant::now();
    let n: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    n as f64 / t.elapsed().as_secs_f64().max(secs)
}

/// (p50, p99) in ms of request-to-acknowledgement at `rate` deliveries/s for `secs`,
/// spread over 16 paced clients.
fn paced_latency(port: u16, rate: f64, secs: f64, next: &Arc<AtomicI64>) -> (f64, f64) {
    let clients = 16;
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let start = Instant::now() + interval.mul_f64(k as f64 / clients as f64);
                let mut out = Vec::new();
                for i in 0.. {
                    let due = start + interval * i;
                    if due.duration_since(start).as_secs_f64() > secs {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let t = Instant::now();
                    assert!(deliver(&mut s, next.fetch_add(1, Ordering::Relaxed)));
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                out
            })
        })
        .collect();
    let mut all: Vec<f64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (at(0.50), at(0.99))
}

/// Resident memory (kB, private + shared pages this process touched: Pss) of `pid`.
fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn listener_cluster() -> (Cluster, u16) {
    let cluster = Cluster::start(
        "bench-http",
        &[
            "fsync = on",
            "synchronous_commit = on",
            "dialpad.workers = 1",
            "dialpad.enabled = off",
            "max_connections = 200",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = cluster.ready();
    exec(&mut c, "CREATE ROLE dialpad_http LOGIN IN ROLE dialpad_ingest");
    for (name, value) in [
        ("dialpad.http_listen", format!("127.0.0.1:{port}")),
        ("dialpad.http_role", "dialpad_http".into()),
        ("dialpad.http_max_connections", "2000".into()),
    ] {
        exec(&mut c, &format!("ALTER SYSTEM SET {name} = '{value}'"));
    }
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the listener did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (cluster, port)
}

pub(crate) fn http_bench(report: &mut Report, runs: usize) {
    let secs = env_usize("BENCH_HTTP_SECONDS", 10) as f64;
    let (cluster, port) = listener_cluster();
    let next = Arc::new(AtomicI64::new(7_000_000_000_000_000));
    for clients in [8, 64] {
        let http: Vec<f64> = (0..runs).map(|_| http_rate(port, clients, secs, &next)).collect();
        let sql: Vec<f64> = (0..runs).map(|_| sql_rate(&cluster, clients, secs, &next)).collect();
        let (h, s) = (median(http), median(sql));
        report.add(
            &format!("deliveries/s over HTTP, {clients} clients"),
            format!("{h:.0}/s"),
            format!("{s:.0}/s ({clients} libpq sessions)"),
            format!("{:.2}x", h / s),
            ">= 1.5x",
            Some(h / s >= 1.5),
        );
    }
    let (p50, p99) = paced_latency(port, 1000.0, secs, &next);
    report.add(
        "request to acknowledgement at 1,000/s (p50 / p99)",
        format!("{p50:.2} / {p99:.2} ms"),
        String::new(),
        String::new(),
        "p99 <= 10 ms",
        Some(p99 <= 10.0),
    );
    let mut c = cluster.connect();
    let pid: i32 = c
        .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialpad http listener'", &[])
        .unwrap()
        .get(0);
    let before = pss_kb(pid);
    let idle: Vec<TcpStream> = (0..1000).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = pss_kb(pid);
    report.add(
        "listener memory with 1,000 idle connections",
        format!("{:.1} MB (+{:.1} MB)", after as f64 / 1024.0, after.saturating_sub(before) as f64 / 1024.0),
        format!("{:.1} MB idle, {} connections open", before as f64 / 1024.0, idle.len()),
        String::new(),
        "",
        None,
    );
}
