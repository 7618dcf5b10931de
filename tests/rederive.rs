//! Re-deriving calls after a rule change (issue 26, part 3), against running clusters: the
//! workers re-apply today's rules to old calls from the audit log, online (deliveries keep
//! arriving and being applied), idempotently, resumably across a restart; calls whose
//! history retention dropped are left as they are and counted.

mod common;
use common::*;
use postgres::Client;

fn text(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e)))
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

/// Everything a re-derivation may change, as one digest: the calls (but their updated_at),
/// the logical calls, and the rejected transitions the processor recorded (but their ids and
/// times).
const STATE_SQL: &str = "
SELECT md5(concat_ws('|',
    (SELECT string_agg((to_jsonb(c) - 'updated_at')::text, ',' ORDER BY c.dialpad_call_id) FROM dialpad.calls c),
    (SELECT string_agg(to_jsonb(l)::text, ',' ORDER BY l.logical_call_id) FROM dialpad.logical_calls l),
    (SELECT string_agg(concat_ws(' ', r.dialpad_call_id, r.event_id, r.from_status, r.to_status, r.reason), ','
                       ORDER BY r.dialpad_call_id, r.event_id, r.to_status) FROM dialpad.rejected_transitions r)))";

/// Lists the calls received in the last hour and waits for the workers to finish the job.
fn rederive_last_hour(c: &mut Client, secs: u64) -> i64 {
    let job = count(c, "SELECT dialpad.rederive_calls(now() - interval '1 hour')");
    wait_until(c, &format!("SELECT finished_at IS NOT NULL FROM dialpad.rederive_progress WHERE job_id = {job}"), secs);
    job
}

fn progress(c: &mut Client, job: i64) -> String {
    text(
        c,
        &format!(
            "SELECT concat_ws(' ', calls, rederived, left_as_they_are, failed, waiting) FROM dialpad.rederive_progress
              WHERE job_id = {job}"
        ),
    )
}

#[test]
fn a_rule_change_reaches_old_calls_online_and_unchanged_rules_change_nothing() {
    let cluster = Cluster::start("rederive-online", &["dialpad.workers = 2"]);
    let mut c = cluster.ready();
    deliver(&mut c, 400, 9_800_000, 4);
    drained(&mut c, 120);
    assert_calls_as_expected(&mut c);
    let calls = count(&mut c, "SELECT count(*) FROM dialpad.calls");
    let missed = count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE status = 'missed'");
    assert!(missed > 10, "the sample has missed inbound calls ({missed})");
    let before = text(&mut c, STATE_SQL);

    // Today's rules, re-applied: nothing changes (idempotent), every call is counted.
    let job = rederive_last_hour(&mut c, 120);
    assert_eq!(progress(&mut c, job), format!("{calls} {calls} 0 0 0"));
    assert_eq!(text(&mut c, STATE_SQL), before, "re-deriving with the same rules changed a call");

    // A rule that was wrong: Dialpad's "missed" state said 'rejected'. Re-derived while new
    // deliveries arrive and are applied beside it.
    c.batch_execute("UPDATE dialpad.state_mapping SET status = 'rejected' WHERE state = 'missed'").unwrap();
    let job = count(&mut c, "SELECT dialpad.rederive_calls(now() - interval '1 hour')");
    let mut other = cluster.connect();
    other.batch_execute(SAMPLE_EVENTS_SQL).unwrap();
    let delivering = std::thread::spawn(move || {
        deliver(&mut other, 300, 9_900_000, 30);
    });
    wait_until(
        &mut c,
        &format!("SELECT finished_at IS NOT NULL FROM dialpad.rederive_progress WHERE job_id = {job}"),
        120,
    );
    delivering.join().unwrap();
    drained(&mut c, 120);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id < 9900000 AND status = 'rejected'"),
        missed,
        "every missed call of before took the new rule"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE status = 'missed'"), 0);
    // logical_calls follow the legs they were re-derived into.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM ((TABLE dialpad.logical_calls EXCEPT TABLE dialpad.logical_calls_from_legs)
                                   UNION ALL (TABLE dialpad.logical_calls_from_legs EXCEPT TABLE dialpad.logical_calls)) d"
        ),
        0,
        "logical_calls follow"
    );

    // The rule put back and re-derived again: every call is as the sample says, and as it
    // was at first.
    c.batch_execute("UPDATE dialpad.state_mapping SET status = 'missed' WHERE state = 'missed'").unwrap();
    rederive_last_hour(&mut c, 120);
    assert_calls_as_expected(&mut c);
    c.batch_execute("DELETE FROM dialpad.calls WHERE dialpad_call_id >= 9900000").unwrap();
    assert_eq!(text(&mut c, STATE_SQL), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rederive_queue"), 0);
}

#[test]
fn rejected_transitions_are_recomputed_with_the_call() {
    let cluster = Cluster::start("rederive-rejections", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    // connected, then queued (ringing): active -> ringing is not an allowed move.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES
           ('{\"call_id\": 9810001, \"state\": \"ringing\", \"direction\": \"inbound\", \"event_timestamp\": 1}'),
           ('{\"call_id\": 9810001, \"state\": \"connected\", \"event_timestamp\": 2, \"date_connected\": 2}'),
           ('{\"call_id\": 9810001, \"state\": \"queued\", \"event_timestamp\": 3}')",
    )
    .unwrap();
    drained(&mut c, 30);
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 9810001"), "active");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 9810001"), 1);
    c.batch_execute("INSERT INTO dialpad.status_transitions VALUES ('active', 'ringing')").unwrap();
    let job = rederive_last_hour(&mut c, 60);
    assert_eq!(progress(&mut c, job), "1 1 0 0 0");
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 9810001"), "ringing");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 9810001"), 0);
    // And back: the rejection is recorded again, once, however often the call is re-derived.
    c.batch_execute("DELETE FROM dialpad.status_transitions WHERE from_status = 'active' AND to_status = 'ringing'")
        .unwrap();
    rederive_last_hour(&mut c, 60);
    rederive_last_hour(&mut c, 60);
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 9810001"), "active");
    assert_eq!(
        text(&mut c, "SELECT string_agg(concat_ws(' ', from_status, to_status), ',') FROM dialpad.rejected_transitions WHERE dialpad_call_id = 9810001"),
        "active ringing"
    );
}

#[test]
fn filters_partial_histories_and_a_restart_midway() {
    let cluster = Cluster::start(
        "rederive-partial",
        &["dialpad.workers = 1", "dialpad.maintenance_interval = 0", "dialpad.enabled = off"],
    );
    let mut c = cluster.ready();
    // Call 1: ringing 10 days ago, hangup 8 days ago; retention drops the first day.
    // Calls 2 and 3: today, through two sources. 500 more calls, today.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at, source) VALUES
           ('{\"call_id\": 9820001, \"state\": \"ringing\", \"direction\": \"inbound\", \"event_timestamp\": 1}', now() - interval '10 days', NULL),
           ('{\"call_id\": 9820001, \"state\": \"hangup\", \"event_timestamp\": 2}', now() - interval '8 days', NULL),
           ('{\"call_id\": 9820002, \"state\": \"ringing\", \"direction\": \"inbound\", \"event_timestamp\": 1}', now(), 'acme'),
           ('{\"call_id\": 9820003, \"state\": \"ringing\", \"direction\": \"inbound\", \"event_timestamp\": 1}', now(), 'globex');
         INSERT INTO dialpad.webhook_events (payload)
         SELECT jsonb_build_object('call_id', 9830000 + i, 'state', s, 'direction', 'inbound', 'event_timestamp', n)
           FROM generate_series(1, 500) i, unnest(ARRAY['ringing', 'hangup']) WITH ORDINALITY AS t(s, n);",
    )
    .unwrap();
    while count(&mut c, "SELECT dialpad.process_events(1000)::bigint") > 0 {}
    c.batch_execute("SET dialpad.retention = '9d'; SELECT count(*) FROM dialpad.run_maintenance();").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 9820001"), 1);

    // By source, by call ids: only those are listed.
    let job = count(&mut c, "SELECT dialpad.rederive_calls(now() - interval '1 day', source => 'acme')");
    assert_eq!(count(&mut c, &format!("SELECT calls FROM dialpad.rederive_progress WHERE job_id = {job}")), 1);
    let job = count(&mut c, "SELECT dialpad.rederive_calls('-infinity', call_ids => ARRAY[9820001, 9820003, 42])");
    assert_eq!(count(&mut c, &format!("SELECT calls FROM dialpad.rederive_progress WHERE job_id = {job}")), 2);
    while count(&mut c, "SELECT dialpad.rederive_step()") > 0 {}
    // Call 1's history is partly gone: left as it is, and counted so.
    assert_eq!(progress(&mut c, job), "2 1 1 0 0");
    assert_eq!(
        text(
            &mut c,
            "SELECT concat_ws(' ', status, events_applied) FROM dialpad.calls WHERE dialpad_call_id = 9820001"
        ),
        "missed 2"
    );
    let err = c.batch_execute("SELECT dialpad.rederive_calls(now(), now() - interval '1 day')").unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("22023"), "{}", db_error(&err));

    // A job of 500 calls: two slices by hand, then an immediate shutdown. After the restart
    // the workers finish it where it stopped.
    let job = count(&mut c, "SELECT dialpad.rederive_calls(now() - interval '1 hour', call_ids => (SELECT array_agg(9830000 + i) FROM generate_series(1, 500) i))");
    c.batch_execute("SELECT dialpad.rederive_step(100); SELECT dialpad.rederive_step(100);").unwrap();
    assert_eq!(progress(&mut c, job), "500 200 0 0 300");
    drop(c);
    cluster.pg_ctl_stop("immediate");
    cluster.pg_ctl_start();
    let mut c = cluster.ready();
    assert_eq!(progress(&mut c, job), "500 200 0 0 300", "the job survives the restart");
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        &mut c,
        &format!("SELECT finished_at IS NOT NULL FROM dialpad.rederive_progress WHERE job_id = {job}"),
        60,
    );
    assert_eq!(progress(&mut c, job), "500 500 0 0 0");
}
