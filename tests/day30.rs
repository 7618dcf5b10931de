//! Day 30 in production, against real running clusters: statistics and autovacuum see the
//! worker, a locked row delays only its call, redeliveries never fail a statement, batches
//! never fail for their size, history events are never marked failed, implausible events
//! are dead-lettered at once, and DROP EXTENSION succeeds while events flow.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn table_statistics_move_and_autovacuum_runs_while_the_worker_drains() {
    let cluster =
        Cluster::start("stats", &["dialpad.workers = 1", "autovacuum_naptime = 1", "dialpad.batch_size = 200"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
           SELECT payload FROM pg_temp.dialpad_sample_events(4000, 8000000, 0.3, false) ORDER BY call_id, seq",
    )
    .unwrap();
    drained(&mut c, 120);
    // The counters leave the worker within seconds of its commits.
    wait_until(
        &mut c,
        "SELECT n_tup_ins >= 4000 AND n_tup_upd > 0 FROM pg_stat_user_tables WHERE relid = 'dialpad.calls'::regclass",
        15,
    );
    wait_until(
        &mut c,
        // The inbox is partitioned: its statistics are its partitions'.
        "SELECT sum(n_tup_upd) >= 10000 FROM pg_stat_user_tables
          WHERE relid IN (SELECT partition FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass)",
        15,
    );
    // ...so autovacuum and autoanalyze run on both tables while the worker lives.
    wait_until(
        &mut c,
        "SELECT bool_and(autovacuum_count > 0 AND autoanalyze_count > 0) FROM pg_stat_user_tables
          WHERE relid = 'dialpad.calls'::regclass
             OR relid = (SELECT relid FROM pg_stat_user_tables
                          WHERE relid IN (SELECT partition FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass)
                          ORDER BY n_tup_upd DESC LIMIT 1)",
        90,
    );
    assert_eq!(worker_pids(&mut c).len(), 1, "the worker lived through it");
}

#[test]
fn a_locked_call_delays_only_that_call_and_sigterm_is_obeyed_at_once() {
    let cluster = Cluster::start("locked", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\", \"event_timestamp\": 1}')")
        .unwrap();
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.calls WHERE dialpad_call_id = 1", 30);
    let mut a = cluster.connect();
    a.batch_execute("BEGIN; SELECT dialpad_call_id FROM dialpad.calls WHERE dialpad_call_id = 1 FOR UPDATE").unwrap();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"connected\", \"event_timestamp\": 2, \"date_connected\": 2}');
         INSERT INTO dialpad.webhook_events (payload)
           SELECT jsonb_build_object('call_id', g, 'state', 'ringing', 'event_timestamp', 1) FROM generate_series(2, 301) g;",
    )
    .unwrap();
    // Every other call is applied while the row stays locked.
    wait_until(&mut c, "SELECT count(*) = 301 FROM dialpad.calls", 20);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 1 AND status = 'ringing'"), 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND attempts = 0"),
        1
    );

    // With a long lock timeout the worker does wait on the row: SIGTERM still ends it at once.
    set_and_reload(&mut c, "ALTER SYSTEM SET dialpad.lock_timeout = '10min'");
    wait_until(
        &mut c,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker' AND wait_event_type = 'Lock'",
        20,
    );
    let pid = worker_pids(&mut c)[0];
    let asked = Instant::now();
    c.batch_execute(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    wait_until(&mut c, &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"), 5);
    assert!(asked.elapsed() < Duration::from_secs(1), "the worker took {:?} to leave", asked.elapsed());

    // Once the lock is released, the call's event is applied.
    a.batch_execute("COMMIT").unwrap();
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.calls WHERE dialpad_call_id = 1 AND status = 'active'", 30);
}

#[test]
fn process_events_does_not_stall_on_a_locked_row_unless_asked_to_wait() {
    let cluster = Cluster::start("locked_fn", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\", \"event_timestamp\": 1}');
         SELECT dialpad.process_events();",
    )
    .unwrap();
    let mut a = cluster.connect();
    a.batch_execute("BEGIN; SELECT 1 FROM dialpad.calls WHERE dialpad_call_id = 1 FOR UPDATE").unwrap();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"hangup\", \"event_timestamp\": 3}'),
           ('{\"call_id\": 2, \"state\": \"ringing\", \"event_timestamp\": 1}')",
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 1, "call 2 applied, call 1 deferred");
    assert!(started.elapsed() < Duration::from_secs(5), "process_events stalled for {:?}", started.elapsed());
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND next_attempt_at IS NOT NULL AND attempts = 0"), 1);
    a.batch_execute("COMMIT").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 1 AND status = 'missed'"), 1);
}

#[test]
fn redeliveries_never_fail_an_insert_or_a_copy_and_are_applied_once() {
    let cluster = Cluster::start("redeliver", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let ev = r#"{"call_id": 42, "state": "ringing", "event_timestamp": 1787158716092, "direction": "inbound"}"#;
    c.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[&ev]).unwrap();
    // A plain INSERT of a stored event.
    c.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[&ev]).unwrap();
    // 999 new events and one redelivery in one statement.
    c.execute(
        "INSERT INTO dialpad.webhook_events (payload)
           SELECT jsonb_build_object('call_id', 1000 + g, 'state', 'ringing', 'event_timestamp', 5) FROM generate_series(1, 999) g
           UNION ALL SELECT $1::text::jsonb",
        &[&ev],
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 1002);
    // COPY of three rows, one of them a redelivery.
    {
        use std::io::Write;
        let mut w = c.copy_in("COPY dialpad.webhook_events (payload) FROM STDIN").unwrap();
        let rows = format!(
            "{}\n{}\n{}\n",
            r#"{"call_id": 43, "state": "ringing", "event_timestamp": 7}"#,
            ev,
            r#"{"call_id": 44, "state": "ringing", "event_timestamp": 7}"#
        );
        w.write_all(rows.as_bytes()).unwrap();
        w.finish().unwrap();
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 1005);
    // Inside REPEATABLE READ, and with a fractional timestamp (two spellings of one number).
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ;
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{ev}');
         COMMIT;
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{{\"call_id\": 45, \"state\": \"ringing\", \"event_timestamp\": 12.5}}');
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{{\"call_id\": 45, \"state\": \"ringing\", \"event_timestamp\": 12.50}}');"
    ))
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE duplicate_of IS NOT NULL"), 5);
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT duplicate_of) FROM dialpad.webhook_events WHERE (payload->>'call_id')::int8 = 42 AND duplicate_of IS NOT NULL"),
        1
    );
    // ingest_webhook returns the first delivery's id for a redelivery.
    let first: i64 = c
        .query_one("SELECT min(id) FROM dialpad.webhook_events WHERE (payload->>'call_id')::int8 = 42", &[])
        .unwrap()
        .get(0);
    let again: i64 = c.query_one("SELECT dialpad.ingest_webhook($1)", &[&ev]).unwrap().get(0);
    assert_eq!(again, first);
    // Redeliveries in flight together (not visible to each other at insert) are caught by
    // the processor: applied once, marked duplicate_of.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES
           ('{\"call_id\": 46, \"state\": \"hangup\", \"event_timestamp\": 9}'),
           ('{\"call_id\": 46, \"state\": \"hangup\", \"event_timestamp\": 9}')",
    )
    .unwrap();
    while count(&mut c, "SELECT dialpad.process_events()::int8") > 0 {}
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE (payload->>'call_id')::int8 = 46 AND duplicate_of IS NOT NULL"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 1004);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions"), 0);
}

#[test]
fn a_batch_never_fails_for_its_own_size() {
    let cluster =
        Cluster::start("bigbatch", &["dialpad.workers = 1", "dialpad.batch_size = 50000", "dialpad.enabled = off"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
           SELECT jsonb_build_object('call_id', g, 'state', 'ringing', 'event_timestamp', 1) FROM generate_series(1, 30000) g",
    )
    .unwrap();
    set_and_reload(&mut c, "ALTER SYSTEM SET dialpad.enabled = on");
    drained(&mut c, 120);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 30000);
    let log = cluster.log();
    assert!(!log.contains("out of shared memory") && !log.contains("batch failed"), "{log}");
    assert_eq!(log.matches("batches are limited to").count(), 1, "said once:\n{log}");
}

#[test]
fn only_the_batch_events_are_marked_failed_and_unreadable_events_die_at_once() {
    let cluster = Cluster::start("history", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "ALTER TABLE dialpad.calls ADD CONSTRAINT no_poison CHECK (voicemail_link IS DISTINCT FROM 'poison');
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 5, \"state\": \"ringing\", \"event_timestamp\": 2}');
         SELECT dialpad.process_events();
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 5, \"state\": \"calling\", \"event_timestamp\": 1, \"voicemail_link\": \"poison\"}');
         SELECT dialpad.process_events();",
    )
    .unwrap();
    // The late event failed; the applied one (read as history) kept its state.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE payload->>'state' = 'ringing' AND processed_at IS NOT NULL AND attempts = 0"),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE payload->>'state' = 'calling' AND attempts = 1"
        ),
        1
    );

    // Fields that can never be read are dead-lettered at the first attempt, with the reason.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES
           ('{\"call_id\": 6, \"state\": \"hangup\", \"duration\": -5}'),
           ('{\"call_id\": 7, \"state\": 3}'),
           ('{\"call_id\": 8, \"state\": \"hangup\", \"date_started\": 1787158716092, \"date_ended\": 1787158716000}'),
           ('{\"call_id\": \"x9\", \"state\": \"ringing\"}'),
           ('{\"call_id\": 10, \"date_started\": 99999999999999999}');
         SELECT dialpad.process_events();",
    )
    .unwrap();
    let dead: Vec<String> = c
        .query("SELECT last_error FROM dialpad.dead_events WHERE attempts = 1 ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead.len(), 5, "{dead:?}");
    assert!(dead[0].contains("duration") && dead[0].contains("negative"), "{dead:?}");
    assert!(dead[1].contains("state"), "{dead:?}");
    assert!(dead[2].contains("before date_started"), "{dead:?}");
}

#[test]
fn drop_extension_succeeds_at_once_while_events_flow_and_the_worker_resumes_after() {
    let cluster = Cluster::start("dropflow", &["dialpad.workers = 2", "dialpad.batch_size = 50"]);
    let mut c = cluster.ready();
    let stop = Arc::new(AtomicBool::new(false));
    let ingesters: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            let conninfo = cluster.conninfo("postgres");
            std::thread::spawn(move || {
                let mut i = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
                let mut n: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!(
                        r#"{{"call_id": {}, "state": "ringing", "event_timestamp": {n}}}"#,
                        1_000_000 * (t + 1) + n % 500
                    );
                    let _ = i.query_one("SELECT dialpad.ingest_webhook($1)", &[&body]);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.calls") > 0, "the worker is applying events");
    let result = sqlstate(&mut c, "DROP EXTENSION pg_dialpad CASCADE");
    stop.store(true, Ordering::Relaxed);
    for t in ingesters {
        t.join().unwrap();
    }
    assert_eq!(result, "ok", "DROP EXTENSION on the first try:\n{}", cluster.log());
    assert!(cluster.log().contains("DROP EXTENSION pg_dialpad is in progress"), "{}", cluster.log());
    c.batch_execute("CREATE EXTENSION pg_dialpad").unwrap();
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\"}')")
        .unwrap();
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.calls", 30);
}

#[test]
fn normal_lifecycles_record_no_rejection_and_terminal_statuses_do_not_flip() {
    let cluster = Cluster::start("terminal", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    // Every kind of the sample generator, shuffled and redelivered, plus a blocked call.
    deliver(&mut c, 300, 9_000_000, 3);
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES
           ('{\"call_id\": 1, \"state\": \"blocked\", \"direction\": \"inbound\", \"event_timestamp\": 1}'),
           ('{\"call_id\": 1, \"state\": \"hangup\", \"direction\": \"inbound\", \"event_timestamp\": 2}')",
    )
    .unwrap();
    while count(&mut c, "SELECT dialpad.process_events(100)::int8") > 0 {}
    assert_calls_as_expected_or_blocked(&mut c);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions"),
        0,
        "normal lifecycles are not anomalies"
    );

    // A voicemail call whose events arrive newest first: voicemail as soon as it is known,
    // and never missed after that.
    let ev = |state: &str, ts: i64| {
        format!(r#"{{"call_id": 2, "state": "{state}", "direction": "inbound", "event_timestamp": {ts}}}"#)
    };
    let mut statuses = Vec::new();
    for (state, ts) in [("voicemail_uploaded", 4), ("hangup", 3), ("voicemail", 2), ("ringing", 1)] {
        c.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[&ev(state, ts)]).unwrap();
        c.batch_execute("SELECT dialpad.process_events()").unwrap();
        statuses.push(
            c.query_one("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 2", &[]).unwrap().get::<_, String>(0),
        );
    }
    assert_eq!(statuses, ["voicemail"; 4], "no voicemail -> missed -> voicemail");
    // A hangup first (missed, by default) is refined by the voicemail that arrives after it.
    let ev3 = |state: &str, ts: i64| {
        format!(r#"{{"call_id": 3, "state": "{state}", "direction": "inbound", "event_timestamp": {ts}}}"#)
    };
    for (state, ts) in [("hangup", 3), ("voicemail", 2)] {
        c.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[&ev3(state, ts)]).unwrap();
        c.batch_execute("SELECT dialpad.process_events()").unwrap();
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 3 AND status = 'voicemail'"),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions"), 0);
    // ...while any other writer still cannot move a call out of a terminal status.
    c.batch_execute("UPDATE dialpad.calls SET status = 'missed' WHERE dialpad_call_id = 3").unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 3 AND status = 'voicemail'"),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 3 AND to_status = 'missed'"
        ),
        1
    );
}

/// The sample calls as expected, and call 1 (blocked) rejected.
fn assert_calls_as_expected_or_blocked(c: &mut postgres::Client) {
    assert_eq!(count(c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 1 AND status = 'rejected'"), 1);
    c.batch_execute("DELETE FROM dialpad.calls WHERE dialpad_call_id = 1").unwrap();
    assert_calls_as_expected(c);
}

#[test]
fn a_rule_row_that_can_never_take_effect_is_refused() {
    let cluster = Cluster::start("rulecheck", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let err = c.batch_execute("INSERT INTO dialpad.status_transitions VALUES ('ended', 'active')").unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23514");
    assert_eq!(db.message(), "transition ended -> active can never take effect: ended is a terminal status");
    assert!(db.hint().unwrap().contains("SET is_terminal = false WHERE status = 'ended'"), "{:?}", db.hint());
    assert_eq!(
        sqlstate(&mut c, "UPDATE dialpad.call_statuses SET is_terminal = true WHERE status = 'active'"),
        "23514"
    );
    // The way the hint shows works.
    c.batch_execute(
        "UPDATE dialpad.call_statuses SET is_terminal = false WHERE status = 'ended';
         INSERT INTO dialpad.status_transitions VALUES ('ended', 'active');",
    )
    .unwrap();
    assert!(c
        .query_one("SELECT dialpad.is_valid_status_transition('ended', 'active')", &[])
        .unwrap()
        .get::<_, bool>(0));
}
