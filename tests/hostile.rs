//! Hostile input against a running cluster (issue 22): every hostile shape of payload is
//! stored by `ingest_webhook`, plain INSERT and COPY, then processed or dead-lettered with a
//! reason, with no backend lost and in time proportional to its size; one source cannot
//! touch another source's calls; a counter that an admin set absurdly high cannot stall a
//! batch. Each case reproduces a defect of 0.2.0.

mod common;
use common::*;
use postgres::Client;
use std::io::Write;
use std::time::{Duration, Instant};

fn text(c: &mut Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Processes everything due with `process_events()` under a statement timeout; returns how
/// long it took. A backend lost on the way fails here.
fn process_all(c: &mut Client) -> Duration {
    let started = Instant::now();
    c.batch_execute("SET statement_timeout = '60s'").unwrap();
    while count(c, "SELECT dialpad.process_events(500)::int8") > 0 {}
    c.batch_execute("RESET statement_timeout").unwrap();
    started.elapsed()
}

/// The hostile shapes: (name, payload). Each is a JSON object with a call id of its own, so
/// the outcome of each can be checked; sizes stay at a few MB to keep the test quick (the
/// benchmark measures 10 MB bodies).
fn hostile_payloads(first_call_id: i64) -> Vec<(String, String)> {
    let huge_number = "1e131071";
    let id = |i: i64| first_call_id + i;
    let mut out: Vec<(String, String)> = vec![
        (
            "labels of huge numbers".into(),
            format!(
                r#"{{"call_id": {}, "state": "ringing", "labels": [{}]}}"#,
                id(0),
                vec![huge_number; 200_000].join(",")
            ),
        ),
        (
            "recordings, 80,000 distinct".into(),
            format!(
                r#"{{"call_id": {}, "state": "recording", "recording_details": [{}]}}"#,
                id(1),
                (0..80_000).map(|i| format!(r#"{{"id": "r{i}", "url": "u{i}"}}"#)).collect::<Vec<_>>().join(",")
            ),
        ),
        (
            "deep".into(),
            format!(r#"{{"call_id": {}, "state": "ringing", "x": {}{}}}"#, id(2), "[".repeat(3000), "]".repeat(3000)),
        ),
        (
            "wide".into(),
            format!(
                r#"{{"call_id": {}, "state": "ringing", {}}}"#,
                id(3),
                (0..100_000).map(|i| format!(r#""k{i}": {i}"#)).collect::<Vec<_>>().join(",")
            ),
        ),
        ("long key".into(), format!(r#"{{"call_id": {}, "state": "ringing", "{}": 1}}"#, id(4), "k".repeat(1_000_000))),
        (
            "long strings".into(),
            format!(
                r#"{{"call_id": {}, "state": "ringing", "transcription_text": "{}", "contact": {{"name": "{}"}}}}"#,
                id(5),
                "t".repeat(2_000_000),
                "n".repeat(2_000_000)
            ),
        ),
        (
            "long state".into(),
            format!(r#"{{"call_id": {}, "state": "{}", "event_timestamp": 1}}"#, id(6), "s".repeat(12_800)),
        ),
        (
            "long timestamp".into(),
            format!(r#"{{"call_id": {}, "state": "ringing", "event_timestamp": {}}}"#, id(7), "9".repeat(9_001)),
        ),
        (
            "huge numbers everywhere".into(),
            format!(
                r#"{{"call_id": {}, "state": "hangup", "event_timestamp": {h}, "date_started": {h}, "duration": {h}, "talk_time": -{h}, "group_id": {h}, "csat_score": {h}, "master_call_id": {h}, "target": {{"id": {h}}}}}"#,
                id(8),
                h = huge_number
            ),
        ),
        (
            "unicode escapes".into(),
            format!(r#"{{"call_id": {}, "state": "ringing", "contact": {{"name": "\ud83d\ude00 \u00e9"}}}}"#, id(9)),
        ),
    ];
    // Every wrong type in every field the processor reads.
    let fields = [
        "state",
        "direction",
        "event_timestamp",
        "date_started",
        "date_connected",
        "date_ended",
        "duration",
        "external_number",
        "internal_number",
        "master_call_id",
        "entry_point_call_id",
        "operator_call_id",
        "voicemail_link",
        "transcription_text",
        "target",
        "contact",
        "recording_details",
        "talk_time",
        "hold_time",
        "total_duration",
        "date_rang",
        "date_first_rang",
        "date_queued",
        "is_transferred",
        "group_id",
        "labels",
        "csat_score",
    ];
    let values = ["[]", "{}", "true", "\"x\"", "-1", "1.5", "1e131071", "[[[1]]]", "{\"id\": {\"id\": []}}", "\"\""];
    let mut n = 10;
    for f in fields {
        for v in values {
            out.push((format!("{f} = {v}"), format!(r#"{{"call_id": {}, "state": "ringing", "{f}": {v}}}"#, id(n))));
            n += 1;
        }
    }
    out
}

/// Every shape through ingest_webhook, plain INSERT and COPY: stored, then each event
/// processed or dead-lettered with a reason, no backend lost, bounded results.
#[test]
fn every_hostile_shape_is_stored_then_processed_or_dead_lettered() {
    let cluster = Cluster::start("hostile-shapes", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let backend = count(&mut c, "SELECT pg_backend_pid()::int8");
    let mut stored = 0i64;
    for (path, first) in [("ingest", 1_000_000i64), ("insert", 2_000_000), ("copy", 3_000_000)] {
        let payloads = hostile_payloads(first);
        let n = payloads.len() as i64;
        match path {
            "ingest" => {
                for (name, p) in &payloads {
                    c.query_one("SELECT dialpad.ingest_webhook($1)", &[p]).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            "insert" => {
                // One multi-row INSERT: a payload that cannot be stored would take the others with it.
                let mut t = c.transaction().unwrap();
                for (name, p) in &payloads {
                    t.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[p])
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                t.commit().unwrap();
            }
            _ => {
                let mut w = c.copy_in("COPY dialpad.webhook_events (payload) FROM STDIN (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')").unwrap();
                for (_, p) in &payloads {
                    w.write_all(p.as_bytes()).unwrap();
                    w.write_all(b"\n").unwrap();
                }
                w.finish().unwrap_or_else(|e| panic!("COPY: {e}"));
            }
        }
        stored += n;
        assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), stored, "{path}: every row stored");
    }
    let took = process_all(&mut c);
    assert_eq!(count(&mut c, "SELECT pg_backend_pid()::int8"), backend, "the backend survived");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL"),
        0,
        "every event handled"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE dead_at IS NOT NULL AND coalesce(last_error, '') = ''"
        ),
        0,
        "every dead event says why"
    );
    // Outcomes the processor reads from the shapes, bounded.
    assert!(
        count(&mut c, "SELECT coalesce(max(octet_length(labels::text)), 0)::int8 FROM dialpad.calls") < 64 * 1024,
        "labels bounded"
    );
    assert!(count(&mut c, "SELECT coalesce(max(jsonb_array_length(recordings)), 0)::int8 FROM dialpad.calls") <= 50);
    assert!(count(&mut c, "SELECT coalesce(max(pg_column_size(c.*)), 0)::int8 FROM dialpad.calls c") < 256 * 1024);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id IN (1000001, 2000001, 3000001)"),
        3
    );
    let why = text(&mut c, "SELECT last_error FROM dialpad.webhook_events WHERE call_id = 1000006").unwrap_or_default();
    assert!(why.contains("state") && why.len() < 300, "{why}");
    let why = text(&mut c, "SELECT last_error FROM dialpad.webhook_events WHERE call_id = 1000008").unwrap_or_default();
    assert!(why.starts_with("field ") && why.len() < 300, "{why}");
}

/// 0.2.0: the 2^attempts back-off overflowed int4 at 31 attempts, raised outside the
/// per-call isolation, and every batch that claimed the event rolled back whole.
#[test]
fn an_absurd_attempt_count_cannot_stall_a_batch() {
    let cluster = Cluster::start("hostile-attempts", &["dialpad.workers = 0", "dialpad.max_attempts = 1000"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('\"poison\"');
         UPDATE dialpad.webhook_events SET attempts = 2147483647;
         INSERT INTO dialpad.webhook_events (payload)
              SELECT jsonb_build_object('call_id', 500 + g, 'state', 'ringing', 'event_timestamp', 1000 + g)
                FROM generate_series(1, 20) g;",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 21);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 20, "the good events were applied");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events"), 1);
    assert_eq!(count(&mut c, "SELECT max(attempts)::int8 FROM dialpad.webhook_events"), 2147483647, "saturated");
    // A failing, not yet dead event with many attempts waits at most an hour.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('\"poison again\"');
         UPDATE dialpad.webhook_events SET attempts = 40 WHERE payload = '\"poison again\"';",
    )
    .unwrap();
    c.batch_execute("SET dialpad.max_attempts = 1000").ok();
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 1);
}

/// Sources are tenants: a delivery through one source never pre-empts, modifies or re-owns a
/// call first seen through another.
#[test]
fn one_source_cannot_touch_another_sources_calls() {
    const ACME: &str = "acme-secret-0123456789";
    const EVIL: &str = "evil-secret-9876543210";
    let cluster = Cluster::start("hostile-sources", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.execute("SELECT dialpad.add_source('acme', $1)", &[&ACME]).unwrap();
    c.execute("SELECT dialpad.add_source('evil', $1)", &[&EVIL]).unwrap();
    let ingest = |c: &mut Client, claims: &str, secret: &str, source: &str| -> i64 {
        c.query_one("SELECT dialpad.ingest_webhook($1, $2)", &[&jwt(claims, secret), &source]).unwrap().get(0)
    };
    let ringing = r#"{"call_id": 77, "state": "ringing", "event_timestamp": 2000, "direction": "inbound", "external_number": "+15550001"}"#;
    // 1. Pre-emption: evil sends acme's next event first; acme's genuine delivery must not be
    //    taken for a redelivery of it.
    let first = ingest(&mut c, ringing, ACME, "acme");
    c.batch_execute("SELECT dialpad.process_events()").unwrap();
    let connected =
        r#"{"call_id": 77, "state": "connected", "event_timestamp": 3000, "date_connected": 1787158720114}"#;
    let evil_copy = ingest(&mut c, connected, EVIL, "evil");
    let genuine = ingest(&mut c, connected, ACME, "acme");
    assert_ne!(genuine, evil_copy, "acme's delivery is its own event, not a duplicate of evil's");
    assert_ne!(first, genuine);
    // 2. An older-timestamped event through evil: 0.2.0 re-derived the call from history with
    //    evil's fields first and gave it to evil.
    let older = r#"{"call_id": 77, "state": "ringing", "event_timestamp": 1000, "external_number": "+1666", "direction": "outbound"}"#;
    ingest(&mut c, older, EVIL, "evil");
    c.batch_execute("SELECT dialpad.process_events()").unwrap();
    assert_eq!(text(&mut c, "SELECT source FROM dialpad.calls WHERE dialpad_call_id = 77").as_deref(), Some("acme"));
    assert_eq!(
        text(&mut c, "SELECT external_number FROM dialpad.calls WHERE dialpad_call_id = 77").as_deref(),
        Some("+15550001")
    );
    assert_eq!(
        text(&mut c, "SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 77").as_deref(),
        Some("inbound")
    );
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 77").as_deref(), Some("active"));
    assert_eq!(count(&mut c, "SELECT events_applied::int8 FROM dialpad.calls WHERE dialpad_call_id = 77"), 2);
    // The foreign deliveries are kept, not applied, and say why.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE source = 'evil' AND dead_at IS NOT NULL
                AND last_error LIKE '%belongs to webhook source \"acme\"%'"
        ),
        2
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events WHERE id IN (SELECT id FROM dialpad.webhook_events WHERE source = 'evil')"), 2);
    // Re-driving them changes nothing: they are refused again.
    c.batch_execute("SELECT dialpad.retry_dead_events(); SELECT dialpad.process_events();").unwrap();
    assert_eq!(text(&mut c, "SELECT source FROM dialpad.calls WHERE dialpad_call_id = 77").as_deref(), Some("acme"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events WHERE id IN (SELECT id FROM dialpad.webhook_events WHERE source = 'evil')"), 2);
    // 3. Both in one batch for a new call: the first received owns it.
    ingest(&mut c, r#"{"call_id": 88, "state": "ringing", "event_timestamp": 5000}"#, ACME, "acme");
    ingest(&mut c, r#"{"call_id": 88, "state": "hangup", "event_timestamp": 4000}"#, EVIL, "evil");
    c.batch_execute("SELECT dialpad.process_events()").unwrap();
    assert_eq!(
        text(&mut c, "SELECT source || ' ' || status FROM dialpad.calls WHERE dialpad_call_id = 88").as_deref(),
        Some("acme ringing")
    );
}

/// The same shapes drained by the background worker: every event handled (applied or
/// dead-lettered with a reason) and the worker never lost.
#[test]
fn the_worker_drains_every_hostile_shape_and_lives_on() {
    let cluster = Cluster::start("hostile-worker", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    wait_until(&mut c, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 30);
    let worker = worker_pids(&mut c);
    for (name, p) in hostile_payloads(4_000_000) {
        c.query_one("SELECT dialpad.ingest_webhook($1)", &[&p]).unwrap_or_else(|e| panic!("{name}: {}", db_error(&e)));
    }
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
              SELECT jsonb_build_object('call_id', 900 + g, 'state', 'ringing', 'event_timestamp', 1000 + g)
                FROM generate_series(1, 50) g",
    )
    .unwrap();
    wait_until(
        &mut c,
        "SELECT count(*) = 0 FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL",
        120,
    );
    assert_eq!(worker_pids(&mut c), worker, "the worker was never restarted");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id BETWEEN 901 AND 950"), 50);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE dead_at IS NOT NULL AND coalesce(last_error, '') = ''"
        ),
        0
    );
    let log = cluster.log();
    assert!(!log.contains("terminated by signal") && !log.contains("exited with exit code"), "{log}");
}
