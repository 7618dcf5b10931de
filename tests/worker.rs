//! The background workers against a real running cluster: draining, per-call order with
//! several workers, exactly-once, poison events, crashes, terminations, restarts, reloads.

mod common;
use common::*;

#[test]
fn one_worker_drains_events_into_the_expected_calls() {
    let cluster = Cluster::start("drain", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    c.batch_execute(AUDIT_SQL).unwrap();
    let delivered = deliver(&mut c, 300, 1_000_000, 3);
    drained(&mut c, 60);
    assert_calls_as_expected(&mut c);
    assert_exactly_once(&mut c, delivered);
    let handled = count(&mut c, "SELECT sum(events_handled)::int8 FROM dialpad.worker_stats");
    assert!(handled >= delivered, "worker_stats counted {handled} of {delivered}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.worker_status() WHERE running"), 2);
    assert!(count(&mut c, "SELECT processed_last_minute FROM dialpad.queue_stats") >= delivered);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker' AND query LIKE '%webhook events%'"),
        1
    );
    let log = cluster.log();
    assert!(!log.contains("FATAL") && !log.contains("exited with exit code"), "clean start:\n{log}");
}

#[test]
fn four_workers_keep_per_call_order_and_process_each_event_once() {
    let cluster = Cluster::start("four", &["dialpad.workers = 4", "dialpad.batch_size = 40"]);
    let mut c = cluster.ready();
    c.batch_execute(AUDIT_SQL).unwrap();
    wait_until(&mut c, "SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 30);
    let delivered = deliver(&mut c, 1500, 2_000_000, 20);
    drained(&mut c, 120);
    assert_calls_as_expected(&mut c);
    assert_exactly_once(&mut c, delivered);
    // several workers really shared the work
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.worker_stats WHERE events_handled > 0") >= 2);
}

#[test]
fn a_poison_event_is_dead_lettered_while_the_others_drain() {
    let cluster = Cluster::start("poison", &["dialpad.workers = 1", "dialpad.max_attempts = 2"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"state\": \"ringing\"}'), ('\"junk\"'),
           ('{\"call_id\": 77, \"state\": \"ringing\", \"date_started\": \"yesterday\"}');",
    )
    .unwrap();
    let delivered = deliver(&mut c, 50, 3_000_000, 1);
    // An event that cannot be read is dead-lettered at its first attempt, with the reason.
    wait_until(&mut c, "SELECT count(*) = 3 FROM dialpad.dead_events", 30);
    wait_until(&mut c, &format!("SELECT count(*) = {delivered} FROM dialpad.webhook_events WHERE processed_at IS NOT NULL AND duplicate_of IS NULL"), 30);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.dead_events WHERE last_error LIKE 'field date_started%' AND attempts = 1"
        ),
        1
    );
    assert_calls_as_expected(&mut c);
    assert!(worker_pids(&mut c).len() == 1, "the worker survived");
}

#[test]
fn a_worker_wakes_at_commit_not_at_the_next_poll() {
    let cluster = Cluster::start("wake", &["dialpad.workers = 1", "dialpad.poll_interval = '1h'"]);
    let mut c = cluster.ready();
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.worker_stats WHERE pid IS NOT NULL", 30);
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 5, \"state\": \"ringing\"}')")
        .unwrap();
    // with an hour between polls, only the commit-time wake-up can process it
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.calls WHERE dialpad_call_id = 5", 10);
}

#[test]
fn a_reload_changes_the_batch_size() {
    let cluster = Cluster::start("reload", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.worker_stats WHERE pid IS NOT NULL", 30);
    // The worker says when it read its settings: the reload is taken once that is later.
    set_and_reload(&mut c, "ALTER SYSTEM SET dialpad.batch_size = 7");
    let before = count(&mut c, "SELECT batches FROM dialpad.worker_stats WHERE worker = 0");
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
           SELECT jsonb_build_object('call_id', g, 'state', 'ringing') FROM generate_series(1, 70) g",
    )
    .unwrap();
    drained(&mut c, 30);
    let after = count(&mut c, "SELECT batches FROM dialpad.worker_stats WHERE worker = 0");
    assert_eq!(after - before, 10, "70 events in batches of 7");
}

#[test]
fn a_pause_is_what_the_workers_read_and_say() {
    let cluster = Cluster::start("pause", &["dialpad.workers = 2"]);
    let mut c = cluster.ready();
    wait_until(
        &mut c,
        "SELECT count(*) = 2 FROM dialpad.worker_stats() WHERE pid IS NOT NULL AND settings_read_at >= started_at",
        30,
    );
    set_and_reload(&mut c, "ALTER SYSTEM SET dialpad.enabled = off");
    // Each worker says it is paused because it read the setting, not because this session did.
    wait_until(
        &mut c,
        "SELECT count(*) = 2 FROM dialpad.worker_status() WHERE detail LIKE '%paused (dialpad.enabled = off)%'",
        10,
    );
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\"}')")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(count(&mut c, "SELECT pending FROM dialpad.queue_stats"), 1, "a paused worker claims nothing");
    set_and_reload(&mut c, "ALTER SYSTEM RESET dialpad.enabled");
    drained(&mut c, 30);
    wait_until(&mut c, "SELECT count(*) = 0 FROM dialpad.worker_status() WHERE detail LIKE '%paused%'", 10);
}

#[test]
fn kill_9_of_a_worker_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let cluster =
        Cluster::start("kill9", &["dialpad.workers = 1", "dialpad.batch_size = 200", "restart_after_crash = on"]);
    let mut c = cluster.ready();
    c.batch_execute(AUDIT_SQL).unwrap();
    let delivered = deliver(&mut c, 3000, 4_000_000, 1);
    wait_until(&mut c, "SELECT count(*) > 0 FROM dialpad.webhook_events WHERE processed_at IS NOT NULL", 30);
    let pid = worker_pids(&mut c)[0];
    let status = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    drop(c);
    // the postmaster now resets every backend: wait until it has begun before reconnecting
    wait_for_reset(&cluster);
    let mut c = reconnect(&cluster);
    drained(&mut c, 120);
    assert!(worker_pids(&mut c).iter().all(|&p| p != pid), "a new worker took over");
    assert_calls_as_expected(&mut c);
    assert_exactly_once(&mut c, delivered);
}

#[test]
fn pg_terminate_backend_of_a_worker_brings_a_new_one() {
    let cluster = Cluster::start("terminate", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    wait_until(&mut c, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 30);
    let pid = worker_pids(&mut c)[0];
    c.batch_execute(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    wait_until(
        &mut c,
        &format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker' AND pid <> {pid}"),
        30,
    );
    c.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_dialpad launcher'",
    )
    .unwrap();
    wait_until(&mut c, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad launcher'", 30);
    c.batch_execute(AUDIT_SQL).unwrap();
    let delivered = deliver(&mut c, 100, 5_000_000, 2);
    drained(&mut c, 60);
    assert_exactly_once(&mut c, delivered);
    assert_eq!(worker_pids(&mut c).len(), 1, "no duplicate worker after the launcher restarted");
}

#[test]
fn immediate_shutdown_and_start_loses_nothing() {
    let cluster = Cluster::start("immediate", &["dialpad.workers = 2", "dialpad.batch_size = 100"]);
    let mut c = cluster.ready();
    c.batch_execute(AUDIT_SQL).unwrap();
    let delivered = deliver(&mut c, 3000, 6_000_000, 1);
    wait_until(&mut c, "SELECT count(*) > 0 FROM dialpad.webhook_events WHERE processed_at IS NOT NULL", 30);
    drop(c);
    cluster.pg_ctl_stop("immediate");
    cluster.pg_ctl_start();
    let mut c = reconnect(&cluster);
    drained(&mut c, 120);
    assert_calls_as_expected(&mut c);
    assert_exactly_once(&mut c, delivered);
}

#[test]
fn workers_wait_quietly_for_a_missing_database_and_extension() {
    let cluster = Cluster::start("missing", &["dialpad.workers = 1", "dialpad.database = 'calls_db'"]);
    let mut c = cluster.connect();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_dialpad launcher'"), 1);
    assert_eq!(worker_pids(&mut c).len(), 0);
    c.batch_execute("CREATE DATABASE calls_db").unwrap();
    wait_until(&mut c, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 30);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut db = cluster.connect_db("calls_db");
    db.batch_execute("CREATE EXTENSION pg_dialpad; INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\"}')")
        .unwrap();
    wait_until(&mut db, "SELECT count(*) = 1 FROM dialpad.calls", 30);
    let log = cluster.log();
    assert_eq!(log.matches("does not exist yet").count(), 1, "said once, not in a loop:\n{log}");
    assert_eq!(log.matches("is not installed in").count(), 1, "said once, not in a loop:\n{log}");
    assert!(!log.contains("terminated by signal"), "no crash:\n{log}");
    let pid = worker_pids(&mut c)[0];
    let restarts = log.matches("pg_dialpad worker 0 started").count();
    assert_eq!(restarts, 1, "the worker started once:\n{log}");
    let _ = pid;
}

#[test]
fn without_preload_the_functions_work_and_worker_status_says_why() {
    let cluster = Cluster::start("nopreload", &["shared_preload_libraries = ''"]);
    let mut c = cluster.ready();
    let row = c.query_one("SELECT running, detail, hint FROM dialpad.worker_status()", &[]).unwrap();
    assert!(!row.get::<_, bool>(0));
    assert!(row.get::<_, String>(1).contains("shared_preload_libraries"));
    assert!(row.get::<_, Option<String>>(2).unwrap().contains("process_events"));
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 9, \"state\": \"ringing\"}')")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 1);
}

/// Issue 23: the first maintenance pass of a worker moved a whole backlog out of the DEFAULT
/// partition (under an ACCESS EXCLUSIVE lock, a copy of every row) in the middle of its drain,
/// halving the drain rate on a default-configuration cluster. The pass now waits until the
/// backlog is drained (at most one dialpad.maintenance_interval).
#[test]
fn a_backlog_is_drained_before_maintenance_moves_it() {
    let cluster = Cluster::start("backlog-maintenance", &["dialpad.workers = 1", "dialpad.enabled = off"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
              SELECT payload FROM pg_temp.dialpad_sample_events(3000, 9000000, 0.7, false)",
    )
    .unwrap();
    let backlog = count(&mut c, "SELECT count(*) FROM dialpad.webhook_events_default");
    assert!(backlog > 5000, "the backlog is in the DEFAULT partition ({backlog})");
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    drained(&mut c, 120);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pass_at = loop {
        let log = cluster.log();
        if let Some(line) = log.lines().find(|l| l.contains("maintenance: created")) {
            break line.split(" [").next().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no maintenance pass:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let after_drain: bool = c
        .query_one("SELECT max(processed_at) <= $1::text::timestamptz FROM dialpad.webhook_events", &[&pass_at])
        .unwrap()
        .get(0);
    assert!(after_drain, "the first maintenance pass ({pass_at}) ran while the backlog drained:\n{}", cluster.log());
}
