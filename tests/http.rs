//! The HTTP listener (docs/http.md) against running clusters, with real clients: curl, a
//! Python sender signing events as Dialpad does (tests/http_client.py), and raw sockets for
//! the malformed and slow clients. Every status code with nothing stored or exactly one row
//! stored; redeliveries; every Content-Type; the upgrade window and a full queue (503);
//! request smuggling; slowloris; SIGTERM; kill -9 under load.

mod common;
use common::*;
use postgres::Client;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const ACME: &str = "acme-secret-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A cluster with the extension, the role `dialpad_http` (in dialpad_ingest), the source
/// `acme`, and the listener on a free port, started by a restart with `conf` set by ALTER
/// SYSTEM (the role exists before the listener connects).
fn http_cluster(name: &str, conf: &[(&str, &str)]) -> (Cluster, u16) {
    let cluster = Cluster::start(name, &["dialpad.workers = 1"]);
    let port = free_port();
    let mut c = cluster.ready();
    c.batch_execute("CREATE ROLE dialpad_http LOGIN IN ROLE dialpad_ingest").unwrap();
    c.execute("SELECT dialpad.add_source('acme', $1)", &[&ACME]).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut settings = vec![("dialpad.http_listen", listen.as_str()), ("dialpad.http_role", "dialpad_http")];
    settings.extend_from_slice(conf);
    for (name, value) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'")).unwrap();
    }
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    if conf.iter().any(|(name, _)| *name == "dialpad.http_tls_cert") {
        wait_until_ok(30, || curl(&["-k", &format!("https://127.0.0.1:{port}/healthz")], None));
    } else {
        wait_healthy(port, 30);
    }
    // The worker's first maintenance pass (today's partition and the next ones, in one
    // transaction) can hold the inbox's writers off for longer than dialpad.lock_timeout
    // (100 ms) on a busy machine: a delivery then is answered 503, as it should be, and
    // Dialpad would retry it (a CI run saw the first delivery of the TLS test answered so).
    // The tests start once that pass is done.
    let mut c = cluster.connect();
    wait_until(
        &mut c,
        "SELECT EXISTS (SELECT 1 FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass
                          AND NOT is_default AND now() >= range_from AND now() < range_to)",
        60,
    );
    (cluster, port)
}

fn wait_healthy(port: u16, secs: u64) {
    wait_until_ok(secs, || curl(&[&format!("http://127.0.0.1:{port}/healthz")], None));
}

/// Repeats an exchange until it is answered 200.
fn wait_until_ok(secs: u64, exchange: impl Fn() -> (u16, String, String)) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, _, body) = exchange();
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "listener not healthy after {secs}s: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP exchange by curl: (status, headers in lower case, body); status 0 if none came.
fn curl(args: &[&str], body: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "20"]).args(args);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]).stdin(std::process::Stdio::piped());
    }
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("curl");
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}{path}")], None);
    (status, body)
}

/// POSTs `body` with `content_type` (None: no Content-Type header at all).
fn post(port: u16, path: &str, body: &str, content_type: Option<&str>) -> (u16, String, String) {
    let header = format!("Content-Type: {}", content_type.unwrap_or(""));
    let header = if content_type.is_none() { "Content-Type:".to_string() } else { header };
    curl(&["-X", "POST", "-H", &header, &format!("http://127.0.0.1:{port}{path}")], Some(body))
}

fn event(call_id: i64, state: &str) -> String {
    format!(r#"{{"call_id": {call_id}, "state": "{state}", "event_timestamp": 1000, "direction": "inbound"}}"#)
}

fn rows(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM dialpad.webhook_events")
}

/// Sends raw bytes, then reads what comes back until the server closes (or `wait` passes).
fn raw(port: u16, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn deliveries_are_stored_once_and_refusals_store_nothing() {
    let (cluster, port) = http_cluster("http-status", &[]);
    let mut c = cluster.connect();
    c.execute("SELECT dialpad.add_source('globex', 'globex-secret-0123')", &[]).unwrap();
    c.execute("SELECT dialpad.disable_source('globex')", &[]).unwrap();

    let body = jwt(&event(1, "ringing"), ACME);
    let (status, _, answer) = post(port, "/webhooks/acme", &body, Some("application/jwt"));
    assert_eq!(status, 200, "{answer}");
    let id = count(&mut c, "SELECT max(id) FROM dialpad.webhook_events");
    assert_eq!(answer.trim(), format!("{{\"id\":{id}}}"));
    assert_eq!(rows(&mut c), 1);
    // A redelivery: acknowledged with the first delivery's id, kept as a duplicate of it.
    let (status, _, again) = post(port, "/webhooks/acme", &body, Some("application/jwt"));
    assert_eq!((status, again.trim()), (200, answer.trim()));
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE duplicate_of IS NOT NULL"), 1);

    // Whatever the Content-Type (or none), the body is what is stored.
    for (i, ct) in [Some("text/plain"), Some("application/json"), Some("application/x-www-form-urlencoded"), None]
        .into_iter()
        .enumerate()
    {
        let (status, _, answer) = post(port, "/webhooks/acme", &jwt(&event(10 + i as i64, "ringing"), ACME), ct);
        assert_eq!(status, 200, "{ct:?}: {answer}");
    }
    assert_eq!(rows(&mut c), 6);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE source = 'acme'"), 6);
    // The listener's commits wake the workers, which apply the events at once.
    drained(&mut c, 10);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 5);

    let refusals: [(&str, String, u16, &str); 7] = [
        ("/webhooks/acme", jwt(&event(2, "ringing"), "wrong-secret"), 401, "bad signature"),
        ("/webhooks/acme", event(2, "ringing"), 401, "unsigned body"),
        ("/webhooks/nosuch", jwt(&event(2, "ringing"), ACME), 404, "unknown webhook source"),
        ("/webhooks/globex", jwt(&event(2, "ringing"), "globex-secret-0123"), 403, "disabled"),
        ("/webhooks/acme", "bm90anNvbg.bm90anNvbg.c2ln".into(), 400, "malformed"),
        ("/webhooks/acme", jwt("not json", ACME), 400, "json"),
        // Two sources: a delivery must say which.
        ("/webhooks", jwt(&event(2, "ringing"), ACME), 400, "say which one"),
    ];
    for (path, body, want, says) in refusals {
        let (status, head, answer) = post(port, path, &body, Some("application/jwt"));
        assert_eq!(status, want, "{path} {body}: {answer}");
        assert!(answer.contains(says), "{path}: {answer}");
        assert!(!head.contains("retry-after"), "a 4xx asks for no retry");
    }
    let (status, head, _) = curl(&[&format!("http://127.0.0.1:{port}/webhooks/acme")], None);
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");
    assert_eq!(get(port, "/nothing").0, 404);
    assert_eq!(rows(&mut c), 6, "no refused delivery is stored");
    // Refusals are counted, not logged one by one (a summary once a minute at most).
    assert!(!cluster.log().contains("JWT signature does not match"), "{}", cluster.log());

    // Over dialpad.max_body_size, declared or streamed (chunked): 413, nothing read further.
    c.batch_execute("ALTER SYSTEM SET dialpad.max_body_size = '1kB'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let big = jwt(&format!(r#"{{"call_id": 3, "state": "ringing", "pad": "{}"}}"#, "x".repeat(2000)), ACME);
    assert_eq!(post(port, "/webhooks/acme", &big, Some("application/jwt")).0, 413);
    let chunked = curl(
        &["-X", "POST", "-H", "Transfer-Encoding: chunked", &format!("http://127.0.0.1:{port}/webhooks/acme")],
        Some(&big),
    );
    assert_eq!(chunked.0, 413, "{}", chunked.2);
    // Both framings at once (request smuggling): 400, and the connection closed, so what
    // the Content-Length would have framed as a second request is never read as one.
    let smuggled = jwt(&event(4, "ringing"), ACME);
    let inner =
        format!("POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    let outer = format!(
        "POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}",
        5 + inner.len()
    );
    let answer = raw(port, outer.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    // The same as the third request of a kept-alive connection (after one with no body and
    // one with a Content-Length body): 400 as well, and nothing after it read.
    let second = jwt(&event(5, "ringing"), "wrong secret");
    let kept = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{second}{outer}",
        second.len()
    );
    let answer = raw(port, kept.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 3, "{answer}");
    assert!(answer.contains("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 400") && answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    // A chunked request is answered and its connection closed: what follows is not read.
    let chunked = format!(
        "POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{second}\r\n0\r\n\r\n{inner}",
        second.len()
    );
    let answer = raw(port, chunked.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 401") && answer.contains("connection: close"), "{answer}");
    // So is a request the watcher cannot follow (an upgrade, which hyper answers without
    // upgrading and would keep the connection after).
    let upgrade = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\n\r\n{outer}");
    let answer = raw(port, upgrade.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(rows(&mut c), 6);
    // A lock not obtained within dialpad.lock_timeout (100 ms): 503, so Dialpad retries.
    c.batch_execute("BEGIN; LOCK TABLE dialpad.webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    let (status, head, answer) = post(port, "/webhooks/acme", &jwt(&event(40, "ringing"), ACME), None);
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(head.contains("retry-after:") && answer.contains("55P03"), "{answer}");
    assert_eq!(rows(&mut c), 6);
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(40, "ringing"), ACME), None).0, 200);
    // The refusals were counted where ingest counts them.
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.ingest_stats_by_source WHERE reason = 'bad signature'") >= 1);
}

#[test]
fn the_upgrade_window_and_a_full_queue_answer_503() {
    let (cluster, port) =
        http_cluster("http-503", &[("dialpad.http_queue_size", "1"), ("dialpad.lock_timeout", "20s")]);
    let mut c = cluster.connect();
    // A delivery stored: the next group may reuse what was checked for this one.
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(2, "ringing"), ACME), None).0, 200);
    // The SQL objects at an older version than the library (as after installing new
    // binaries, before ALTER EXTENSION ... UPDATE): 503, nothing stored, from the very next
    // delivery (this catalog update sends no invalidation the listener could wait for).
    c.batch_execute("UPDATE pg_extension SET extversion = '0.2.1' WHERE extname = 'pg_dialpad'").unwrap();
    let (status, head, answer) = post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), ACME), None);
    assert_eq!(status, 503, "{answer}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(answer.contains("ALTER EXTENSION pg_dialpad UPDATE"), "{answer}");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, health) = get(port, "/healthz");
    assert_eq!(status, 503);
    assert!(health.contains("version"), "{health}");
    assert_eq!(rows(&mut c), 1);
    c.batch_execute("UPDATE pg_extension SET extversion = '0.3.0' WHERE extname = 'pg_dialpad'").unwrap();
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), ACME), None).0, 200);
    wait_healthy(port, 5);
    // The listener's role loses dialpad_ingest: the very next delivery is refused with 503
    // (not stored under rights the role no longer has), and served again once it is back.
    c.batch_execute("REVOKE dialpad_ingest FROM dialpad_http").unwrap();
    let (status, _, answer) = post(port, "/webhooks/acme", &jwt(&event(3, "ringing"), ACME), None);
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("GRANT dialpad_ingest"), "{answer}");
    c.batch_execute("GRANT dialpad_ingest TO dialpad_http").unwrap();
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(3, "ringing"), ACME), None).0, 200);
    assert_eq!(rows(&mut c), 3);

    // The listener's transaction waits on a lock held here: one delivery in its
    // transaction, one queued (dialpad.http_queue_size = 1), the next one refused with 503.
    c.batch_execute("BEGIN; LOCK TABLE dialpad.webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    let senders: Vec<_> = (0..2)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(300));
            std::thread::spawn(move || post(port, "/webhooks/acme", &jwt(&event(20 + i, "ringing"), ACME), None).0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, head, answer) = post(port, "/webhooks/acme", &jwt(&event(30, "ringing"), ACME), None);
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("queue is full") && head.contains("retry-after:"), "{answer}");
    c.batch_execute("COMMIT").unwrap();
    for s in senders {
        assert_eq!(s.join().unwrap(), 200);
    }
    assert_eq!(rows(&mut c), 5);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE payload->>'call_id' = '30'"), 0);
}

#[test]
fn slow_and_broken_clients_are_dropped() {
    let (cluster, port) =
        http_cluster("http-slow", &[("dialpad.http_read_timeout", "1s"), ("dialpad.http_max_connections", "3")]);
    let mut c = cluster.connect();
    // dialpad.http_max_connections open (idle): one more is answered 503 and closed at once;
    // once the idle ones are dropped (read timeout), connections are served again.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After"), "{answer}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(port, "/healthz").0, 200);
    drop(idle);
    // Slowloris: a header line a byte at a time. Dropped once the read timeout passes.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut dropped = false;
    for b in b"POST /webhooks/acme HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !dropped {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 512];
        dropped =
            matches!(s.read(&mut buf), Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408");
    }
    assert!(dropped && started.elapsed() < Duration::from_secs(4), "slowloris not dropped: {:?}", started.elapsed());

    // A body trickling in: 408 within the read timeout, nothing stored.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Headers larger than the listener reads: refused (431), connection closed.
    let huge = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    let answer = raw(port, huge.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 431") || answer.is_empty(), "{answer}");

    // Gone before the end of the body: nothing stored.
    let body = jwt(&event(5, "ringing"), ACME);
    let head = format!("POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    drop(s);
    // A pipelined pair: answered one after the other, both stored.
    let request =
        |b: &str| format!("POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    let pair = request(&jwt(&event(6, "ringing"), ACME)) + &request(&jwt(&event(7, "ringing"), ACME));
    let answer = raw(port, pair.as_bytes(), Duration::from_secs(3));
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rows(&mut c), 2, "the half-sent body is not stored");
    // The slowloris, the oversized head and the half-sent body were counted.
    let (_, metrics) = get(port, "/metrics");
    let broken: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dialpad_http_connection_errors_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(broken >= 2, "{metrics}");
    wait_healthy(port, 5);
}

fn listener_pid(c: &mut Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialpad http listener'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn sigterm_is_obeyed_within_a_second_and_the_listener_comes_back() {
    let (cluster, port) = http_cluster("http-sigterm", &[("dialpad.lock_timeout", "30s")]);
    let mut c = cluster.connect();
    let pid = listener_pid(&mut c).expect("listener running");
    // Even while its transaction waits on a lock.
    c.batch_execute("BEGIN; LOCK TABLE dialpad.webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    let sender = std::thread::spawn(move || post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), ACME), None).0);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "listener took {:?} to leave", started.elapsed());
    assert_ne!(sender.join().unwrap(), 200, "no acknowledgement of what was not committed");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(rows(&mut c), 0);
    // Started again by the postmaster.
    wait_healthy(port, 30);
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), ACME), None).0, 200);

    // A fast shutdown of the whole server is not held up by the listener.
    let started = Instant::now();
    cluster.pg_ctl_stop("fast");
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_delivery() {
    let (cluster, port) = http_cluster("http-kill9", &[]);
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http_client.py");
    let url = format!("http://127.0.0.1:{port}/webhooks/acme");
    let load = Command::new("python3")
        .args([client, &url, ACME, "1000", "3000", "8"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut c = cluster.connect();
    // Wait until deliveries are being stored, then kill the listener.
    wait_until(&mut c, "SELECT count(*) > 200 FROM dialpad.webhook_events", 60);
    let pid = listener_pid(&mut c).expect("listener running");
    Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    let out = load.wait_with_output().unwrap();
    let results: Vec<(i64, u16)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())))
        .collect();
    assert_eq!(results.len(), 3000);
    let acknowledged: Vec<i64> = results.iter().filter(|r| r.1 == 200).map(|r| r.0).collect();
    let failed = results.len() - acknowledged.len();
    assert!(failed > 0, "the kill was not noticed by any client");
    let mut c = reconnect(&cluster);
    let stored: std::collections::HashMap<i64, i64> = c
        .query("SELECT (payload->>'call_id')::int8, count(*) FROM dialpad.webhook_events GROUP BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for id in &acknowledged {
        assert_eq!(stored.get(id), Some(&1), "call {id} got a 2xx but is stored {:?} times", stored.get(id));
    }
    assert!(stored.values().all(|n| *n == 1), "a delivery sent once was stored twice");
    eprintln!(
        "kill -9 under load: {} acknowledged, {failed} refused or unanswered, {} stored",
        acknowledged.len(),
        stored.len()
    );
}

#[test]
fn metrics_count_requests_and_deliveries_without_reading_tables() {
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let (cluster, port) = http_cluster("http-metrics", &[]);
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), ACME), None).0, 200);
    assert_eq!(post(port, "/webhooks/acme", &jwt(&event(1, "ringing"), "bad"), None).0, 401);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    for line in [
        "dialpad_http_requests_total{status=\"401\"} 1",
        "dialpad_ingest_deliveries_total{source=\"acme\",outcome=\"accepted\",reason=\"\"} 1",
        "dialpad_ingest_deliveries_total{source=\"acme\",outcome=\"rejected\",reason=\"bad signature\"} 1",
        "dialpad_http_queue_length 0",
        "dialpad_workers_running 1",
        "dialpad_http_ready 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in:\n{text}");
    }
    assert!(text.contains("dialpad_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
    // The inbox's queue, counted by the first worker (every 5 s), so that the exporter's
    // query file is not needed: a delivery without a call id is stored, then dead-lettered.
    let dead = jwt(r#"{"state": "ringing", "event_timestamp": 1000}"#, ACME);
    assert_eq!(post(port, "/webhooks/acme", &dead, None).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = get(port, "/metrics");
        if text.lines().any(|l| l == "dialpad_queue_dead 1") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for line in ["dialpad_queue_dead 1", "dialpad_queue_pending 0"] {
        assert!(text.lines().any(|l| l == line), "missing {line} in:\n{text}");
    }
    assert!(text.contains("dialpad_queue_oldest_pending_age_seconds "), "{text}");
    // Well-formed for Prometheus (promtool: Debian's prometheus package, scripts/lib.sh).
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With a listener of its own, /metrics is served there, and no longer on the webhooks'.
    let mut c = cluster.connect();
    c.batch_execute(&format!("ALTER SYSTEM SET dialpad.metrics_listen = '{listen}'")).unwrap();
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    wait_healthy(port, 30);
    assert_eq!(get(port, "/metrics").0, 404);
    let (status, text) = get(metrics_port, "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("dialpad_http_requests_total"), "{text}");
    assert_eq!(post(metrics_port, "/webhooks/acme", &jwt(&event(2, "ringing"), ACME), None).0, 404);
}

/// Restarts the cluster and waits for the listener's refusal `says` in the log.
fn refused_after_restart(cluster: &Cluster, port: u16, says: &str) {
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.log().contains(says) {
        assert!(Instant::now() < deadline, "no refusal \"{says}\" in the log:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/healthz").0, 0, "nothing listens");
    let mut c = cluster.ready();
    assert_eq!(listener_pid(&mut c), None);
}

#[test]
fn roles_with_more_rights_and_other_encodings_are_refused() {
    let port = free_port();
    let listen = format!("dialpad.http_listen = '127.0.0.1:{port}'");
    let cluster = Cluster::start("http-refusals", &[&listen, "dialpad.http_role = 'postgres'"]);
    refused_after_restart(&cluster, port, "\"postgres\" has more rights than dialpad_ingest (SUPERUSER)");
    let mut c = cluster.ready();
    c.batch_execute("CREATE ROLE h LOGIN CREATEROLE BYPASSRLS IN ROLE dialpad_ingest").unwrap();
    c.batch_execute("ALTER SYSTEM SET dialpad.http_role = 'h'").unwrap();
    refused_after_restart(&cluster, port, "\"h\" has more rights than dialpad_ingest (BYPASSRLS, CREATEROLE)");
    let mut c = cluster.ready();
    c.batch_execute(
        "ALTER ROLE h NOCREATEROLE NOBYPASSRLS; CREATE ROLE files IN ROLE pg_write_server_files; GRANT files TO h",
    )
    .unwrap();
    refused_after_restart(&cluster, port, "(member of pg_write_server_files)");
    // Rights held through another role, and ownership of the extension's objects.
    let mut c = cluster.ready();
    c.batch_execute("REVOKE files FROM h; CREATE ROLE admin CREATEROLE; GRANT admin TO h").unwrap();
    refused_after_restart(&cluster, port, "(member of admin (CREATEROLE))");
    let mut c = cluster.ready();
    c.batch_execute("REVOKE admin FROM h; ALTER TABLE dialpad.sources OWNER TO h").unwrap();
    refused_after_restart(&cluster, port, "(owner of schema dialpad or of objects in it)");
    // A database whose encoding is not UTF-8 would store UTF-8 bodies as they are.
    let mut c = cluster.ready();
    c.batch_execute("ALTER TABLE dialpad.sources OWNER TO postgres").unwrap();
    c.batch_execute("CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").unwrap();
    c.batch_execute("ALTER SYSTEM SET dialpad.database = 'latin'").unwrap();
    refused_after_restart(&cluster, port, "database \"latin\" has encoding LATIN1");
    // The same role, with dialpad_ingest's rights only, in a UTF-8 database: it listens, and
    // a source's name is taken percent-decoded from the path.
    let mut c = cluster.ready();
    c.batch_execute("ALTER SYSTEM RESET dialpad.database").unwrap();
    c.execute("SELECT dialpad.add_source('acme:eu', $1)", &[&ACME]).unwrap();
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    wait_healthy(port, 30);
    let (status, _, answer) = post(port, "/webhooks/acme%3Aeu", &jwt(&event(1, "ringing"), ACME), None);
    assert_eq!(status, 200, "{answer}");
    let mut c = cluster.connect();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE source = 'acme:eu'"), 1);
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA `name` in `dir`, and a certificate it signs for 127.0.0.1 written to
/// `cert`/`key` (overwritten in place, as a DBA renewing a certificate does).
fn ca_and_server_cert(dir: &std::path::Path, name: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    let p = |f: &str| dir.join(format!("{name}-{f}")).to_string_lossy().into_owned();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "2", "-subj", &format!("/CN={name} test CA")],
        ]
        .concat(),
    );
    openssl(
        &[&["req"][..], &ec, &["-keyout", &p("server.key"), "-out", &p("server.csr"), "-subj", "/CN=127.0.0.1"]]
            .concat(),
    );
    std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext"),
    ]);
    std::fs::copy(p("server.pem"), cert).unwrap();
    std::fs::copy(p("server.key"), key).unwrap();
    p("ca.pem")
}

/// POSTs a delivery over HTTPS, trusting only `ca`.
fn post_https(port: u16, ca: &str, body: &str) -> u16 {
    curl(&["--cacert", ca, "-X", "POST", &format!("https://127.0.0.1:{port}/webhooks/acme")], Some(body)).0
}

#[test]
fn https_with_a_test_ca_and_a_certificate_renewed_by_reload() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("it-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let first_ca = ca_and_server_cert(&dir, "first", &cert, &key);
    // The server runs as another OS user in these tests: let it read the key.
    Command::new("chmod").args(["-R", "a+rX"]).arg(&dir).status().unwrap();
    let (cert_s, key_s) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let (cluster, port) =
        http_cluster("http-tls", &[("dialpad.http_tls_cert", &cert_s), ("dialpad.http_tls_key", &key_s)]);
    let mut c = cluster.connect();
    assert_eq!(post_https(port, &first_ca, &jwt(&event(1, "ringing"), ACME)), 200);
    // Plain HTTP on the HTTPS port gets no answer, and stores nothing.
    assert_ne!(post(port, "/webhooks/acme", &jwt(&event(2, "ringing"), ACME), None).0, 200);
    assert_eq!(rows(&mut c), 1);

    // A new certificate from another CA, put in place of the old files, then a reload.
    let second_ca = ca_and_server_cert(&dir, "second", &cert, &key);
    Command::new("chmod").args(["-R", "a+rX"]).arg(&dir).status().unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(post_https(port, &second_ca, &jwt(&event(3, "ringing"), ACME)), 200);
    assert_eq!(
        post_https(port, &first_ca, &jwt(&event(4, "ringing"), ACME)),
        0,
        "the old certificate is no longer served"
    );

    // Files that do not load at a reload: the configuration in use stays, and says why.
    std::fs::write(&cert, "not a certificate").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(post_https(port, &second_ca, &jwt(&event(5, "ringing"), ACME)), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log().contains("the TLS configuration in use stays") {
        assert!(Instant::now() < deadline, "no warning:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rows(&mut c), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// scripts/nginx/dialpad.conf with the test's ports and files in place of the examples.
fn nginx_site(listener: u16, port: u16, cert: &str, key: &str) -> String {
    let shipped = include_str!("../scripts/nginx/dialpad.conf");
    let mut site = shipped.to_string();
    for (from, to) in [
        ("server 127.0.0.1:8080;", format!("server 127.0.0.1:{listener};")),
        ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("/etc/letsencrypt/live/db.example.com/fullchain.pem", cert.to_string()),
        ("/etc/letsencrypt/live/db.example.com/privkey.pem", key.to_string()),
    ] {
        assert!(site.contains(from), "scripts/nginx/dialpad.conf no longer has {from}");
        site = site.replace(from, &to);
    }
    site
}

#[test]
fn nginx_terminates_tls_in_front_of_the_plain_listener() {
    let nginx = std::path::Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        eprintln!("nginx is not installed (apt-get install nginx-light): test skipped");
        return;
    }
    let (cluster, listener) = http_cluster("http-nginx", &[]);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("it-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let ca = ca_and_server_cert(&dir, "nginx", &cert, &key);
    let port = free_port();
    std::fs::write(
        dir.join("dialpad.conf"),
        nginx_site(listener, port, &cert.to_string_lossy(), &key.to_string_lossy()),
    )
    .unwrap();
    let temp = dir.to_string_lossy();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "pid {temp}/nginx.pid;\nerror_log {temp}/logs/error.log;\nevents {{}}\nhttp {{\n access_log off;\n client_body_temp_path {temp}/body;\n proxy_temp_path {temp}/proxy;\n include {temp}/dialpad.conf;\n}}\n"
        ),
    )
    .unwrap();
    Command::new("chmod").args(["-R", "a+rwX"]).arg(&dir).status().unwrap();
    let conf = dir.join("nginx.conf");
    // In the foreground, as the test's child: stopped (and reaped) however the test ends.
    let child =
        Command::new(nginx).arg("-p").arg(&dir).arg("-c").arg(&conf).args(["-g", "daemon off;"]).spawn().unwrap();
    let _stop = Nginx { child, dir: dir.clone() };
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    wait_until_ok(10, || curl(&["--cacert", &ca, &url("/healthz")], None));

    let mut c = cluster.connect();
    let (status, _, answer) = curl(
        &["--cacert", &ca, "-X", "POST", "-H", "Content-Type: application/jwt", &url("/webhooks/acme")],
        Some(&jwt(&event(1, "ringing"), ACME)),
    );
    assert_eq!((status, rows(&mut c)), (200, 1), "{answer}");
    // The listener's refusals pass through as they are.
    let post_nginx = |body: &str| curl(&["--cacert", &ca, "-X", "POST", &url("/webhooks/acme")], Some(body));
    assert_eq!(post_nginx(&jwt(&event(2, "ringing"), "wrong")).0, 401);
    // /metrics stays off the public side (the listener would serve it to nginx, a loopback client).
    assert_eq!(curl(&["--cacert", &ca, &url("/metrics")], None).0, 404);
    // nginx itself refuses a request with both framings.
    let (status, _, _) = curl(
        &[
            "--cacert",
            &ca,
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Length: 5",
            &url("/webhooks/acme"),
        ],
        Some("hello"),
    );
    assert_eq!(status, 400);
    // The upgrade window: the listener's 503 and its Retry-After reach Dialpad.
    c.batch_execute("UPDATE pg_extension SET extversion = '0.2.1' WHERE extname = 'pg_dialpad'").unwrap();
    let (status, head, _) = post_nginx(&jwt(&event(3, "ringing"), ACME));
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 5"), "{head}");
    c.batch_execute("UPDATE pg_extension SET extversion = '0.3.0' WHERE extname = 'pg_dialpad'").unwrap();
    // The listener down: nginx answers 502, a 5xx, so Dialpad retries.
    cluster.pg_ctl_stop("fast");
    assert_eq!(post_nginx(&jwt(&event(4, "ringing"), ACME)).0, 502);
}

/// Stops the test's nginx however the test ends.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, its workers with it.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn healthz_stays_up_under_continuous_load() {
    let (cluster, port) = http_cluster("http-load", &[]);
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http_client.py");
    let url = format!("http://127.0.0.1:{port}/webhooks/acme");
    let mut load = Command::new("python3")
        .args([client, &url, ACME, "1000", "100000", "8"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut c = cluster.connect();
    wait_until(&mut c, "SELECT count(*) > 100 FROM dialpad.webhook_events", 30);
    // Longer than a health verdict stays fresh (10 s) without being renewed.
    std::thread::sleep(Duration::from_secs(12));
    let before = rows(&mut c);
    let (status, body) = get(port, "/healthz");
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(status, 200, "{body}");
    assert!(before > 1000, "the load did not keep the listener busy: {before} rows");
}

#[test]
fn the_listener_leaves_within_a_second_of_the_postmasters_death() {
    let (cluster, _port) = http_cluster("http-pmdeath", &[]);
    let mut c = cluster.connect();
    let pid = listener_pid(&mut c).expect("listener running");
    let pidfile = std::fs::read_to_string(cluster.data().join("postmaster.pid")).unwrap();
    let postmaster = pidfile.lines().next().unwrap().trim().to_string();
    let started = Instant::now();
    Command::new("kill").args(["-9", &postmaster]).status().unwrap();
    // Gone, not a zombie: the process entry goes once init reaps it, so read its state.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    };
    while alive() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the listener outlived the postmaster by {:?}",
        started.elapsed()
    );
    // The dead server's System V segment (its id is on line 7 of postmaster.pid): nobody
    // is attached to it any more, and a zombie postmaster here keeps a restart from
    // reclaiming it.
    if let Some(id) = pidfile.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)) {
        let _ = Command::new("ipcrm").args(["-m", id]).status();
    }
}

/// The attacker's review of issue 27: a body sent in 1-byte chunks cost a list entry (and a
/// read buffer) per chunk, and nothing bounded the bodies all connections held at once. Now
/// a body is read into one buffer, comes in at most 65,536 chunks, and all bodies share one
/// byte budget (four times dialpad.max_body_size, at least 64 MB): past it, 503.
#[test]
fn chunk_floods_and_many_large_bodies_cost_bounded_memory() {
    let (cluster, port) = http_cluster(
        "http-memory",
        &[
            ("dialpad.max_body_size", "4MB"),
            ("dialpad.http_read_timeout", "20s"),
            ("dialpad.http_max_connections", "64"),
        ],
    );
    let mut c = cluster.connect();
    let pid = listener_pid(&mut c).expect("listener running");
    let rss = || -> i64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
            .unwrap_or(0)
    };
    let before = rss();
    // 100,000 one-byte chunks: refused after 65,536, nothing stored.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunks = b"1\r\nA\r\n".repeat(100_000);
    let _ = s.write_all(&chunks);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("too many chunks"), "{answer}");
    // 24 connections each sending 3.5 MB and holding back the last byte: 84 MB wanted, the
    // budget is 64 MB: the ones past it are answered 503 at once, the others wait.
    let body_len = 3_500_000usize;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let head = format!("POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(&vec![b' '; body_len - 1]);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) if n > 0 && String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503") => refused += 1,
            _ => held.push(s),
        }
    }
    assert!(refused >= 4, "past the byte budget bodies are refused with 503 ({refused} of 24)");
    assert!(held.len() >= 16, "within it they are read ({} held)", held.len());
    let grown_mb = (rss() - before) / 1024;
    assert!(grown_mb < 160, "the listener grew by {grown_mb} MB");
    drop(held);
    // Served again once those connections are gone; nothing of them was stored.
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, answer) =
        post(port, "/webhooks/acme", &jwt(&event(9_900_001, "ringing"), ACME), Some("application/jwt"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rows(&mut c), 1);
}

/// Issue 27's upgrade window, for real: the released version's database under the new
/// library (installed, server restarted, ALTER EXTENSION not run yet) answers 503 with
/// Retry-After and stores nothing, and the same delivery is stored once the update has run.
#[test]
fn a_real_upgrade_window_answers_503_then_the_update_lets_deliveries_in() {
    let (old, _) = released_versions().last().cloned().expect("a released version");
    let install = PgInstall::copy("http-upgrade");
    install.remove_pg_dialpad_sql();
    install.install_pg_dialpad_from(&released_package(&old));
    let port = free_port();
    let listen = format!("dialpad.http_listen = '127.0.0.1:{port}'");
    let cluster = Cluster::start_with(
        "http-upgrade",
        install.bin(),
        &["dialpad.workers = 1", &listen, "dialpad.http_role = 'dialpad_http'"],
    );
    let mut c = cluster.ready();
    assert_eq!(count(&mut c, &format!("SELECT count(*) FROM pg_extension WHERE extversion = '{old}'")), 1);
    c.batch_execute("CREATE ROLE dialpad_http LOGIN IN ROLE dialpad_ingest").unwrap();
    drop(c);
    // New binaries, restart: the listener runs the new library against the old SQL objects.
    cluster.pg_ctl_stop("fast");
    install.install_pg_dialpad_from(std::path::Path::new("/"));
    cluster.pg_ctl_start();
    let mut c = cluster.connect();
    let body = event(9_700_001, "ringing");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, head, answer) = loop {
        let answer = post(port, "/webhooks", &body, Some("application/json"));
        if answer.0 != 0 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 503, "{answer}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(answer.contains("ALTER EXTENSION pg_dialpad UPDATE"), "{answer}");
    assert_eq!(get(port, "/healthz").0, 503);
    assert_eq!(rows(&mut c), 0, "nothing stored in the window");
    c.batch_execute("ALTER EXTENSION pg_dialpad UPDATE").unwrap();
    wait_healthy(port, 30);
    let (status, _, answer) = post(port, "/webhooks", &body, Some("application/json"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rows(&mut c), 1);
}
