//! Interrupts on hostile input (issue 22): every loop over user data checks for interrupts,
//! so that statement_timeout, pg_cancel_backend and pg_terminate_backend act promptly in
//! ingest (plain JSON, and a signed JWT through a source), the inbox's insert trigger, the
//! sanitizer and the processor, with bodies of about dialpad.max_body_size (10 MB) of every
//! hostile shape. The bound asserted here is loose (a shared machine, a debug build): the
//! benchmark (scripts/bench_hostile.rs) gives the real figures. On 0.2.0, process_events()
//! ran for seconds to minutes on such a body whatever the timeout (issue 22, item 2).

mod common;
#[path = "common/shapes.rs"]
mod shapes;

use common::*;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// How long a statement may run past its statement_timeout, or past a cancel or terminate.
const BOUND: Duration = Duration::from_secs(1);
/// A plain JSON body: under dialpad.max_body_size's default of 10 MiB.
const BODY: usize = 9_500_000;
/// A JWT's claims: base64 makes them 4/3 as long, so the token stays under 10 MiB.
const CLAIMS: usize = 7_300_000;
const SECRET: &str = "interrupts-secret-0123456789";

fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// How long PostgreSQL's own JSON input (jsonb_in, which checks for no interrupt) takes to
/// parse `body`: every path that stores a body runs it once, uninterruptibly, before any
/// pg_dialpad code (1.2 s for the deep shape on a shared machine). The bounds below are
/// counted on top of it.
fn jsonb_in_floor(c: &mut Client, body: &str) -> Duration {
    c.batch_execute("SET statement_timeout = 0").unwrap();
    let started = Instant::now();
    c.query_one("SELECT pg_column_size($1::text::jsonb)", &[&body]).unwrap();
    started.elapsed()
}

/// Runs `sql` under statement_timeout = 100ms: it must finish (successfully) or be cancelled
/// with 57014, within [`BOUND`] past `floor` (PostgreSQL's own parse of the body it takes).
/// A run over the bound is run once more, and judged by the second run: on a shared machine
/// a stall of the whole machine (seconds, now and then) can land in one run, while code that
/// cannot be interrupted is over the bound every time.
fn finishes_or_times_out(
    c: &mut Client,
    what: &str,
    floor: Duration,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> bool {
    let (mut result, mut took) = timed_run(c, what, floor, sql, params);
    if took >= floor + BOUND {
        eprintln!("{what}: {took:?} is over the bound; once more");
        (result, took) = timed_run(c, what, floor, sql, params);
    }
    if let Err(e) = &result {
        assert_eq!(sqlstate(e), Some("57014"), "{what}: {}", db_error(e));
    }
    assert!(took < floor + BOUND, "{what}: {took:?} under statement_timeout = 100ms (jsonb_in {floor:?})");
    result.is_ok()
}

/// One run of `sql` under statement_timeout = 100ms: its result and how long it took.
fn timed_run(
    c: &mut Client,
    what: &str,
    floor: Duration,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> (Result<Vec<postgres::Row>, postgres::Error>, Duration) {
    c.batch_execute("SET statement_timeout = '100ms'").unwrap();
    let started = Instant::now();
    let result = c.query(sql, params);
    let took = started.elapsed();
    c.batch_execute("RESET statement_timeout").unwrap();
    eprintln!(
        "{what}: {took:?} (jsonb_in {floor:?}) {}",
        result.as_ref().err().map(db_error).unwrap_or_else(|| "finished".into())
    );
    (result, took)
}

enum Signal {
    Cancel,
    Terminate,
}

/// Starts `sql` in a session of its own, waits until it has been running for 300 ms, then
/// cancels or terminates it: the session must stop within [`BOUND`] of the signal (past
/// `floor`, one parse of its body by PostgreSQL), with 57014 (cancel) or its connection
/// closed (terminate).
///
/// `sql` runs as one simple-protocol query, with `body` (if any) in place of `$1` as a
/// literal. Through the extended protocol, `$1::text::jsonb` is parsed at Bind (a custom
/// plan folds it into a constant), and PostgreSQL drops a cancel that arrives after Bind's
/// last interrupt check: it reads the Execute message as "no query in progress", although
/// pg_stat_activity shows the session active, and the query then ran to its end (seen
/// once, a 14-minute run on PostgreSQL 16; reproduced with a raw Parse/Bind, a cancel, then
/// Execute). One message has no such gap.
fn stops_when_signalled(
    cluster: &Cluster,
    what: &str,
    signal: Signal,
    floor: Duration,
    sql: &'static str,
    body: Option<String>,
) {
    let mut c = cluster.connect();
    let mut s = Client::connect(&cluster.conninfo("postgres"), NoTls).unwrap();
    let pid: i32 = s.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // Not the 10 MB statement in the server log with every cancel.
    s.batch_execute("SET log_min_error_statement = panic").unwrap();
    let sql = match body {
        Some(body) => sql.replace("$1", &format!("'{}'", body.replace('\'', "''"))),
        None => sql.to_string(),
    };
    let worker = std::thread::spawn(move || {
        let r = s.simple_query(&sql);
        (Instant::now(), r.map(|_| ()))
    });
    // Running, in the work (not still receiving its parameters), for a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active: bool = c
            .query_one(
                "SELECT coalesce(bool_or(state = 'active' AND now() - query_start > interval '300 ms'), false)
                   FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if active {
            break;
        }
        assert!(!worker.is_finished(), "{what}: the work ended before it could be signalled");
        assert!(Instant::now() < deadline, "{what}: never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    let function = match signal {
        Signal::Cancel => "pg_cancel_backend",
        Signal::Terminate => "pg_terminate_backend",
    };
    let delivered: bool = c.query_one(&format!("SELECT {function}($1)"), &[&pid]).unwrap().get(0);
    assert!(delivered, "{what}: {function} found the backend");
    let (ended, result) = worker.join().unwrap();
    let took = ended.saturating_duration_since(sent);
    eprintln!("{what}, {function}: stopped {took:?} after the signal");
    let err = result.expect_err(&format!("{what}: the work finished instead of stopping"));
    match signal {
        Signal::Cancel => assert_eq!(sqlstate(&err), Some("57014"), "{what}: {}", db_error(&err)),
        // 57P01 when the client reads the backend's FATAL; a closed connection otherwise.
        Signal::Terminate => assert!(sqlstate(&err).is_none_or(|s| s == "57P01"), "{what}: {}", db_error(&err)),
    }
    assert!(took < floor + BOUND, "{what}: {function} took {took:?} (jsonb_in {floor:?})");
    if let Signal::Terminate = signal {
        wait_until(&mut c, &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"), 10);
    }
}

#[test]
fn statement_timeout_cancel_and_terminate_act_promptly_on_hostile_bodies() {
    let cluster = Cluster::start("interrupts", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let backend = count(&mut c, "SELECT pg_backend_pid()::int8");

    // statement_timeout: each shape through ingest_webhook (plain JSON), a plain INSERT and
    // the sanitizer.
    let shapes = shapes::hostile_events(1_000_000, BODY);
    let mut floors = std::collections::HashMap::new();
    for (name, body) in &shapes {
        assert!(body.len() < 10 * 1024 * 1024, "{name}: {} bytes", body.len());
        let floor = jsonb_in_floor(&mut c, body);
        floors.insert(*name, floor);
        finishes_or_times_out(
            &mut c,
            &format!("ingest_webhook, {name}"),
            floor,
            "SELECT dialpad.ingest_webhook($1)",
            &[body],
        );
        finishes_or_times_out(
            &mut c,
            &format!("INSERT, {name}"),
            floor,
            "INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)",
            &[body],
        );
        finishes_or_times_out(
            &mut c,
            &format!("sanitize_call_payload, {name}"),
            floor,
            "SELECT octet_length(dialpad.sanitize_call_payload($1::text::jsonb)::text)",
            &[body],
        );
    }
    // Every shape stored at least once, so that the processor meets each.
    c.batch_execute("SET statement_timeout = 0").unwrap();
    for (name, body) in &shapes {
        let call_id: i64 = body[12..19].parse().unwrap();
        if count(&mut c, &format!("SELECT count(*) FROM dialpad.webhook_events WHERE call_id = {call_id}")) == 0 {
            c.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[body])
                .unwrap_or_else(|e| panic!("{name}: {}", db_error(&e)));
        }
    }

    // Cancel and terminate, with no timeout, of a session stuck in each kind of work.
    let wide = shapes.iter().find(|(n, _)| *n == "wide").unwrap().1.clone();
    let labels = shapes.iter().find(|(n, _)| *n == "1M labels").unwrap().1.clone();
    for signal in [Signal::Cancel, Signal::Terminate] {
        stops_when_signalled(
            &cluster,
            "ingest_webhook of a 10 MB body, many times",
            signal,
            floors["1M labels"],
            "SELECT count(dialpad.ingest_webhook($1)) FROM generate_series(1, 100000)",
            Some(labels.clone()),
        );
    }
    for signal in [Signal::Cancel, Signal::Terminate] {
        stops_when_signalled(
            &cluster,
            "INSERT of a 10 MB body, many rows",
            signal,
            floors["wide"],
            "INSERT INTO dialpad.webhook_events (payload) SELECT $1::text::jsonb FROM generate_series(1, 100000)",
            Some(wide.clone()),
        );
    }
    for signal in [Signal::Cancel, Signal::Terminate] {
        stops_when_signalled(
            &cluster,
            "sanitize_call_payload of a 10 MB body, many times",
            signal,
            floors["wide"],
            "SELECT count(dialpad.sanitize_call_payload(p)) FROM (SELECT $1::text::jsonb AS p OFFSET 0) b, generate_series(1, 100000)",
            Some(wide.clone()),
        );
    }

    // The processor: process_events() of each stored shape under the timeout, one at a time
    // (an event it cannot finish within the timeout is claimed again: a few rounds).
    for round in 0..3 {
        let pending =
            count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL");
        if pending == 0 {
            break;
        }
        for _ in 0..pending {
            finishes_or_times_out(
                &mut c,
                &format!("process_events(1), round {round}"),
                Duration::ZERO,
                "SELECT dialpad.process_events(1)",
                &[],
            );
        }
    }
    // A session stuck processing many such events: cancel, then terminate.
    c.batch_execute(
        "SET statement_timeout = 0;
         INSERT INTO dialpad.webhook_events (payload)
              SELECT jsonb_set(p, '{call_id}', to_jsonb(2000000 + g))
                FROM (SELECT DISTINCT ON (call_id) payload AS p FROM dialpad.webhook_events WHERE call_id IN (1000002, 1000004)) s,
                     generate_series(1, 40) g;",
    )
    .unwrap();
    // Cancelled several times: 0.2.1's first cut swallowed a cancel that came while a call was
    // being written (its per-call isolation caught the 57014 and went on for seconds).
    let signals = [Signal::Cancel, Signal::Cancel, Signal::Cancel, Signal::Cancel, Signal::Cancel, Signal::Terminate];
    for signal in signals {
        stops_when_signalled(
            &cluster,
            "process_events(1), event after event",
            signal,
            Duration::ZERO,
            "SELECT count(dialpad.process_events(1)) FROM generate_series(1, 1000)",
            None,
        );
    }
    assert_eq!(count(&mut c, "SELECT pg_backend_pid()::int8"), backend, "no backend lost");

    // A signed JWT through a source: verified (HMAC and base64 over the whole token) and
    // stored under the timeout, then cancelled and terminated while stuck in it.
    c.execute("SELECT dialpad.add_source('src', $1)", &[&SECRET]).unwrap();
    let signed: Vec<(&str, String, Duration)> = shapes::hostile_events(3_000_000, CLAIMS)
        .into_iter()
        .map(|(n, claims)| (n, jwt(&claims, SECRET), jsonb_in_floor(&mut c, &claims)))
        .collect();
    for (name, token, floor) in &signed {
        assert!(token.len() < 10 * 1024 * 1024, "{name}: {} bytes", token.len());
        finishes_or_times_out(
            &mut c,
            &format!("ingest_webhook, signed, {name}"),
            *floor,
            "SELECT dialpad.ingest_webhook($1, 'src')",
            &[token],
        );
    }
    let (_, token, floor) = signed.iter().find(|(n, _, _)| *n == "long strings").unwrap().clone();
    for signal in [Signal::Cancel, Signal::Terminate] {
        stops_when_signalled(
            &cluster,
            "ingest_webhook of a signed 10 MB JWT, many times",
            signal,
            floor,
            "SELECT count(dialpad.ingest_webhook($1, 'src')) FROM generate_series(1, 100000)",
            Some(token.clone()),
        );
    }
    assert_eq!(count(&mut c, "SELECT pg_backend_pid()::int8"), backend, "no backend lost");
}
