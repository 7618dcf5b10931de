//! Retention without DELETE, against running clusters: the inbox is partitioned by time, the
//! worker keeps partitions ahead, rows no partition covers are accepted and moved, expired
//! partitions are dropped (or detached) whole, pending and dead events keep theirs, a late
//! event for a call whose history was dropped is not re-derived from the rest, and
//! de-duplication holds across partitions.

mod common;
use common::*;

fn text(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get::<_, Option<String>>(0).unwrap_or_default()
}

const RANGE_PARTITIONS: &str =
    "SELECT count(*) FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass AND NOT is_default";

/// One call's events (ringing, connected, hangup), received `days_ago` days ago.
fn backdated_call(c: &mut postgres::Client, call_id: i64, days_ago: i32) {
    c.batch_execute(&format!(
        "INSERT INTO dialpad.webhook_events (payload, received_at)
         SELECT jsonb_build_object('call_id', {call_id}, 'state', s, 'direction', 'inbound',
                                   'external_number', '+1555{call_id}', 'event_timestamp', 1700000000000 + n * 1000)
                  || CASE WHEN s IN ('connected', 'hangup') THEN jsonb_build_object('date_connected', 1700000001000) ELSE '{{}}' END,
                now() - make_interval(days => {days_ago}) + make_interval(secs => n)
           FROM unnest(ARRAY['ringing', 'connected', 'hangup']) WITH ORDINALITY AS t(s, n)"
    ))
    .unwrap();
}

#[test]
fn the_worker_keeps_partitions_ahead_and_backfills_are_accepted() {
    let cluster = Cluster::start("partitions-ahead", &["dialpad.workers = 1", "dialpad.maintenance_interval = 1"]);
    let mut c = cluster.ready();
    // Today and the three days ahead, made by the worker itself.
    wait_until(&mut c, &format!("SELECT ({RANGE_PARTITIONS}) >= 4"), 30);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass
              AND NOT is_default AND range_to > now() AND range_from < now() + interval '3 days'"
        ),
        4,
        "partitions cover today through three days ahead"
    );
    // A backfill of last year is stored (in the DEFAULT partition), processed, and then
    // moved into a partition of its own by the next maintenance.
    backdated_call(&mut c, 9_100_001, 365);
    drained(&mut c, 30);
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 9100001"), "ended");
    wait_until(&mut c, "SELECT count(*) = 0 FROM ONLY dialpad.webhook_events_default", 30);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.partitions p WHERE p.parent = 'dialpad.webhook_events'::regclass
              AND p.range_to <= now() - interval '300 days'"
        ),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 9100001"), 3);
    assert!(cluster.log().contains("maintenance: created webhook_events_p"), "the worker logs what it did");
}

#[test]
fn retention_holds_the_inbox_at_a_bounded_number_of_partitions() {
    let cluster = Cluster::start("retention-bounded", &["dialpad.workers = 1", "dialpad.maintenance_interval = 0"]);
    let mut c = cluster.ready();
    c.batch_execute("SET dialpad.retention = '3d'").unwrap();
    // Twenty days of traffic arrive, oldest first; maintenance runs after each day.
    let mut most = 0;
    for day in (0..20).rev() {
        for k in 0..20 {
            backdated_call(&mut c, 9_200_000 + i64::from(day) * 100 + k, day);
        }
        drained(&mut c, 60);
        c.batch_execute("SELECT count(*) FROM dialpad.run_maintenance()").unwrap();
        most = most.max(count(&mut c, RANGE_PARTITIONS));
    }
    // Kept: the days within retention (3 full days plus today's) and 3 ahead; everything
    // older was dropped whole, never deleted row by row.
    let now = count(&mut c, RANGE_PARTITIONS);
    assert!(now <= 8, "{now} partitions left");
    assert!(most <= 8, "at most {most} partitions at any time");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ONLY dialpad.webhook_events_default"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE received_at < now() - interval '5 days'"),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'webhook_events_p%'
              AND relid::regclass::text IN (SELECT partition::text FROM dialpad.partitions WHERE range_to <= now() - interval '4 days')"
        ),
        0
    );
    // The calls stay: retention is about the inbox and the rejections, not the call rows.
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id >= 9200000"), 400);
}

/// The actions of one maintenance run other than 'created', as "action rows" in run order.
fn retention_actions(c: &mut postgres::Client) -> Vec<String> {
    c.query(
        "SELECT concat_ws(' ', action, partition, rows) FROM dialpad.run_maintenance() WHERE action <> 'created'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Issue 26, part 1: a day of 400 processed events and one dead event (a payload without
/// call_id), retention 7 days, run on day 10. 0.2.0 reported the partition `kept`, and all
/// 400 stayed: with a few such events a day no partition was ever dropped.
#[test]
fn a_dead_event_cannot_pin_its_partition() {
    let cluster = Cluster::start(
        "retention-held",
        &["dialpad.workers = 1", "dialpad.maintenance_interval = 0", "dialpad.enabled = off"],
    );
    let mut c = cluster.ready();
    for k in 0..133 {
        backdated_call(&mut c, 9_300_000 + k, 10);
    }
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at)
         VALUES ('{\"call_id\": 9300999, \"state\": \"hangup\", \"event_timestamp\": 1700000009000}', now() - interval '10 days'),
                ('{\"state\": \"hangup\", \"note\": \"a test request\"}', now() - interval '10 days');
         SELECT count(*) FROM dialpad.process_events(1000);",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NOT NULL"), 400);
    let dead_before =
        text(&mut c, "SELECT concat_ws(' ', id, payload, received_at, attempts, last_error) FROM dialpad.dead_events");
    assert!(dead_before.contains("payload has no call_id"), "{dead_before}");
    c.batch_execute("SET dialpad.retention = '7d'").unwrap();
    let done = retention_actions(&mut c);
    // The day goes whole; the dead event first moves, unchanged, to the holding partition.
    assert!(done.iter().any(|d| d.starts_with("dropped dialpad.webhook_events_p")), "{done:?}");
    assert!(done.contains(&"held dialpad.webhook_events_held 1".to_string()), "{done:?}");
    assert!(!done.iter().any(|d| d.starts_with("kept")), "{done:?}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 1, "the 400 processed events are gone");
    assert_eq!(
        text(&mut c, "SELECT concat_ws(' ', id, payload, received_at, attempts, last_error) FROM dialpad.dead_events"),
        dead_before,
        "the dead event is still listed, unchanged"
    );
    assert_eq!(
        text(&mut c, "SELECT tableoid::regclass::text FROM dialpad.webhook_events"),
        "dialpad.webhook_events_held"
    );
    assert_eq!(count(&mut c, "SELECT dead FROM dialpad.queue_stats"), 1);

    // Pending events of an expiring day are held too, and still claimed from there.
    backdated_call(&mut c, 9_300_500, 9);
    c.batch_execute("SET dialpad.retention = '8d'").unwrap();
    let done = retention_actions(&mut c);
    assert!(done.contains(&"held dialpad.webhook_events_held 3".to_string()), "{done:?}");
    assert_eq!(count(&mut c, "SELECT pending FROM dialpad.queue_stats"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 4, "the dead event is still held");
    assert_eq!(count(&mut c, "SELECT dialpad.process_events(100)::bigint"), 3);
    assert_eq!(text(&mut c, "SELECT status FROM dialpad.calls WHERE dialpad_call_id = 9300500"), "ended");
    // Re-drivable where it is held: retried, it fails again (it has no call id).
    let id = count(&mut c, "SELECT id FROM dialpad.dead_events");
    c.batch_execute(&format!("SELECT dialpad.retry_event({id}); SELECT count(*) FROM dialpad.process_events(10);"))
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events"), 1);
    // Discarded, it is no longer dead; the next expiry rebuilds the holding partition with
    // what is still unfinished only: the processed and the discarded events go with the old one.
    c.batch_execute(&format!("SELECT dialpad.discard_event({id}, 'a test request from the console')")).unwrap();
    assert_eq!(count(&mut c, "SELECT dead FROM dialpad.queue_stats"), 0);
    backdated_call(&mut c, 9_300_600, 7);
    c.batch_execute("SELECT count(*) FROM dialpad.process_events(100); SET dialpad.retention = '6d';").unwrap();
    let done = retention_actions(&mut c);
    assert!(done.contains(&"held dialpad.webhook_events_held 0".to_string()), "{done:?}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass
              AND range_from = '-infinity' AND range_to = dialpad.partition_start(now() - interval '6 days', '1 day')"
        ),
        1,
        "the holding partition covers everything before the oldest time partition"
    );
}

#[test]
fn detach_keeps_the_expired_table_whole_and_holds_its_unfinished_events() {
    let cluster = Cluster::start(
        "retention-detach",
        &["dialpad.workers = 1", "dialpad.maintenance_interval = 0", "dialpad.enabled = off"],
    );
    let mut c = cluster.ready();
    backdated_call(&mut c, 9_310_001, 10);
    backdated_call(&mut c, 9_310_002, 10);
    c.batch_execute(
        "SELECT count(*) FROM dialpad.process_events(3);
         SET dialpad.retention = '2d'; SET dialpad.retention_mode = detach;",
    )
    .unwrap();
    let done = retention_actions(&mut c);
    let detached = done.iter().find_map(|d| d.strip_prefix("detached ")).unwrap_or_else(|| panic!("{done:?}"));
    let detached = detached.split(' ').next().unwrap_or_default().to_string();
    assert!(done.contains(&"held dialpad.webhook_events_held 3".to_string()), "{done:?}");
    assert_eq!(count(&mut c, &format!("SELECT count(*) FROM {detached}")), 6, "the detached table keeps every row");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 3);
    assert_eq!(count(&mut c, "SELECT dialpad.process_events(100)::bigint"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE status = 'ended'"), 2);
}

#[test]
fn a_late_event_after_retention_is_applied_to_the_row_as_it_stands() {
    let cluster = Cluster::start("retention-late", &["dialpad.workers = 1", "dialpad.maintenance_interval = 0"]);
    let mut c = cluster.ready();
    backdated_call(&mut c, 9_400_001, 10);
    drained(&mut c, 30);
    assert_eq!(count(&mut c, "SELECT events_applied::bigint FROM dialpad.calls WHERE dialpad_call_id = 9400001"), 3);
    c.batch_execute("SET dialpad.retention = '2d'; SELECT count(*) FROM dialpad.run_maintenance();").unwrap();
    c.batch_execute("SELECT count(*) FROM dialpad.run_maintenance()").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 9400001"), 0);
    // A recording event stamped between connected and hangup arrives now: it is late (older
    // than the hangup), but the events to re-derive from are gone. Re-deriving from what is
    // left (this event alone) would lose the status, the number and the times.
    c.batch_execute(
        "SELECT dialpad.ingest_webhook(jsonb_build_object('call_id', 9400001, 'state', 'recording',
                 'event_timestamp', 1700000002500,
                 'recording_details', jsonb_build_array(jsonb_build_object('url', 'https://rec/9400001')))::text)",
    )
    .unwrap();
    drained(&mut c, 30);
    assert_eq!(
        text(
            &mut c,
            "SELECT concat_ws(' ', status, external_number, connected_at IS NOT NULL, recording_url, events_applied, last_state)
               FROM dialpad.calls WHERE dialpad_call_id = 9400001"
        ),
        "ended +15559400001 t https://rec/9400001 4 hangup"
    );
}

#[test]
fn redeliveries_are_caught_across_partitions() {
    let cluster = Cluster::start("retention-dedupe", &["dialpad.workers = 1", "dialpad.maintenance_interval = 0"]);
    let mut c = cluster.ready();
    c.batch_execute("SELECT count(*) FROM dialpad.run_maintenance()").unwrap();
    // The first delivery a second before midnight UTC, the redelivery a second after:
    // another partition, found by the insert trigger.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at) VALUES
           ('{\"call_id\": 9500001, \"state\": \"ringing\", \"event_timestamp\": 1700000000000}',
            date_trunc('day', now(), 'UTC') - interval '1 second');
         SELECT count(*) FROM dialpad.run_maintenance();",
    )
    .unwrap();
    drained(&mut c, 30);
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at) VALUES
           ('{\"call_id\": 9500001, \"state\": \"ringing\", \"event_timestamp\": 1700000000000}',
            date_trunc('day', now(), 'UTC') + interval '1 second')",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(DISTINCT tableoid) FROM dialpad.webhook_events WHERE call_id = 9500001"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 9500001 AND duplicate_of IS NOT NULL"
        ),
        1
    );
    // A redelivery of an event first received three days ago (past the trigger's one-hour
    // window): the processor finds the first delivery in the call's history.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at) VALUES
           ('{\"call_id\": 9500002, \"state\": \"ringing\", \"event_timestamp\": 1700000000000}', now() - interval '3 days'),
           ('{\"call_id\": 9500002, \"state\": \"hangup\", \"event_timestamp\": 1700000005000}', now() - interval '3 days');
         SELECT count(*) FROM dialpad.run_maintenance();",
    )
    .unwrap();
    drained(&mut c, 30);
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES
           ('{\"call_id\": 9500002, \"state\": \"ringing\", \"event_timestamp\": 1700000000000}')",
    )
    .unwrap();
    drained(&mut c, 30);
    assert_eq!(
        text(
            &mut c,
            "SELECT concat_ws(' ', status, events_applied, (SELECT count(*) FROM dialpad.webhook_events
                     WHERE call_id = 9500002 AND duplicate_of IS NOT NULL))
               FROM dialpad.calls WHERE dialpad_call_id = 9500002"
        ),
        "missed 2 1"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 9500002"), 0);
}

#[test]
fn drop_extension_during_a_maintenance_pass_succeeds_at_once() {
    let cluster = Cluster::start(
        "drop-maintenance",
        &["dialpad.workers = 1", "dialpad.enabled = off", "dialpad.maintenance_interval = 1"],
    );
    let mut c = cluster.ready();
    // Sixty days of processed events in the DEFAULT partition: the next maintenance pass
    // makes a partition for each day and moves that day's rows into it, for seconds.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at, processed_at)
         SELECT jsonb_build_object('call_id', 9300000 + g % 5000, 'state', 'ringing'),
                now() - interval '100 days' + make_interval(secs => g * 17), now()
           FROM generate_series(1, 300000) g",
    )
    .unwrap();
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        &mut c,
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'pg_dialpad worker%' AND query = 'pg_dialpad maintenance'",
        30,
    );
    let result = match c.batch_execute("DROP EXTENSION pg_dialpad CASCADE") {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    assert_eq!(result, "ok", "DROP EXTENSION on the first try:\n{}", cluster.log());
    c.batch_execute("CREATE EXTENSION pg_dialpad").unwrap();
}

#[test]
fn the_redelivery_lookup_never_scans_a_partition() {
    let cluster = Cluster::start(
        "lookup-plan",
        &["dialpad.workers = 1", "dialpad.enabled = off", "dialpad.maintenance_interval = 0"],
    );
    let mut c = cluster.ready();
    c.batch_execute("SELECT count(*) FROM dialpad.run_maintenance()").unwrap();
    // Yesterday's partition too, as a cluster older than today has: within an hour after
    // midnight UTC the lookup's window reaches into yesterday, and without it that gap is
    // DEFAULT's (searched, rightly), which the last check below would count.
    c.batch_execute(
        "SELECT dialpad.add_partition('dialpad.webhook_events', now() - interval '1 day', interval '1 day')",
    )
    .unwrap();
    // Sequential scans of the inbox's partitions so far, flushed to the statistics.
    c.batch_execute("SET stats_fetch_consistency = none").unwrap();
    let scans = |c: &mut postgres::Client| {
        c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
        count(
            c,
            "SELECT coalesce(sum(s.seq_scan), 0)::int8 FROM pg_stat_user_tables s
               JOIN dialpad.partitions p ON p.partition = s.relid
              WHERE p.parent = 'dialpad.webhook_events'::regclass",
        )
    };
    // A long INSERT into today's empty partition; then one after ANALYZE saw that partition
    // with a handful of rows (a sequential scan is the cheapest plan for one page, and would
    // stay the plan while the INSERT adds thousands); then one after a new partition (the
    // plan cache makes the plan again): each row's lookup is an index scan.
    let insert = |c: &mut postgres::Client, from: i64, n: i64| {
        c.batch_execute(&format!(
            "INSERT INTO dialpad.webhook_events (payload)
             SELECT jsonb_build_object('call_id', g, 'state', 'ringing', 'event_timestamp', 1700000000000 + g)
               FROM generate_series({from}, {from} + {n} - 1) g"
        ))
        .unwrap();
    };
    let long_insert_scans = |c: &mut postgres::Client, from: i64| {
        let before = scans(c);
        insert(c, from, 2000);
        scans(c) - before
    };
    assert_eq!(long_insert_scans(&mut c, 1), 0, "sequential scans during an INSERT into an empty partition");
    c.batch_execute("TRUNCATE dialpad.webhook_events").unwrap();
    insert(&mut c, 10_000, 5);
    c.batch_execute("ANALYZE dialpad.webhook_events").unwrap();
    assert_eq!(long_insert_scans(&mut c, 20_000), 0, "sequential scans during an INSERT after ANALYZE of 5 rows");
    c.batch_execute(
        "SELECT dialpad.add_partition('dialpad.webhook_events', now() + interval '20 days', interval '1 day')",
    )
    .unwrap();
    assert_eq!(long_insert_scans(&mut c, 30_000), 0, "sequential scans during an INSERT after a new partition");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), 4005);
    // Only the partition the window overlaps is searched: never the DEFAULT partition nor
    // the partitions ahead (today's partition and the window are well inside each other
    // except within an hour of midnight UTC, when tomorrow's is searched too).
    let idx_scans = |c: &mut postgres::Client, which: &str| {
        c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
        count(
            c,
            &format!(
                "SELECT coalesce(sum(s.idx_scan), 0)::int8 FROM pg_stat_user_tables s
                   JOIN dialpad.partitions p ON p.partition = s.relid
                  WHERE p.parent = 'dialpad.webhook_events'::regclass AND {which}"
            ),
        )
    };
    let far = "(p.is_default OR p.range_from > now() + interval '1 day 1 hour')";
    let before = idx_scans(&mut c, far);
    insert(&mut c, 40_000, 500);
    assert_eq!(idx_scans(&mut c, far) - before, 0, "the lookup searched DEFAULT or a partition far ahead");
}

#[test]
fn readers_never_miss_rows_moved_out_of_the_default_partition() {
    let cluster = Cluster::start(
        "move-readers",
        &["dialpad.workers = 1", "dialpad.enabled = off", "dialpad.maintenance_interval = 0"],
    );
    let mut c = cluster.ready();
    // A backfill of twenty days lands in the DEFAULT partition.
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at, processed_at)
         SELECT jsonb_build_object('call_id', 9600000 + g % 5000, 'state', 'ringing'),
                now() - interval '30 days' + make_interval(secs => g * 8), now()
           FROM generate_series(1, 200000) g",
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || {
            let mut r = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(count(&mut r, "SELECT count(*) FROM dialpad.webhook_events"));
            }
            seen
        })
    };
    // Maintenance moves each day into a partition of its own while the reader counts.
    let made = count(&mut c, "SELECT count(*) FROM dialpad.run_maintenance() WHERE action = 'created'");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(made >= 20, "{made} partitions made");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ONLY dialpad.webhook_events_default"), 0);
    let wrong: Vec<_> = seen.iter().filter(|&&n| n != 200_000).collect();
    assert!(wrong.is_empty(), "counts while rows moved ({} reads): {wrong:?}", seen.len());
}

/// Issue 26, part 1, over a year: twelve months of daily traffic with two unreadable
/// deliveries a day (another event type sent to the same URL), retention 30 days, maintenance
/// after each month. The inbox stays at about 30 daily partitions, every dead event stays
/// listed and re-drivable, and once discarded they go with the next expiry.
#[test]
fn a_year_of_dead_events_never_stops_retention() {
    let cluster = Cluster::start("retention-year", &["dialpad.workers = 1", "dialpad.maintenance_interval = 0"]);
    let mut c = cluster.ready();
    c.batch_execute("SET dialpad.retention = '30d'").unwrap();
    let mut most = 0;
    for month in 0..12 {
        let first_day = 365 - 30 * month;
        c.batch_execute(&format!(
            "INSERT INTO dialpad.webhook_events (payload, received_at)
             SELECT CASE WHEN k < 20
                         THEN jsonb_build_object('call_id', 9600000000 + d * 100 + k / 2, 'state', (ARRAY['ringing', 'hangup'])[k % 2 + 1],
                                                 'direction', 'inbound', 'event_timestamp', 1700000000000 + k)
                         ELSE jsonb_build_object('event', 'sms', 'day', d) END,
                    now() - make_interval(days => d) + make_interval(secs => k)
               FROM generate_series({}, {first_day}) d, generate_series(0, 21) k",
            first_day - 29
        ))
        .unwrap();
        drained(&mut c, 120);
        c.batch_execute("SELECT count(*) FROM dialpad.run_maintenance()").unwrap();
        most = most.max(count(&mut c, RANGE_PARTITIONS));
    }
    // About 30 days kept, 3 ahead, and the holding partition; never a year of partitions.
    assert!(most <= 40, "at most {most} partitions at any time");
    assert_eq!(count(&mut c, "SELECT count(*) FROM ONLY dialpad.webhook_events_default"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NOT NULL AND received_at < now() - interval '32 days'"),
        0,
        "no processed event outlives retention"
    );
    // Every dead event of the year is still there, listed and grouped.
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events"), 12 * 30 * 2);
    assert_eq!(
        text(&mut c, "SELECT concat_ws(' ', reason, events) FROM dialpad.dead_event_reasons"),
        "payload has no call_id 720"
    );
    // Acknowledged, they leave with the next expiry; the holding partition is empty again.
    assert_eq!(count(&mut c, "SELECT dialpad.discard_dead_events('SMS events sent to the call URL', error_like => 'payload has no call_id')"), 720);
    c.batch_execute("SET dialpad.retention = '20d'; SELECT count(*) FROM dialpad.run_maintenance();").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events_held"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE received_at < now() - interval '22 days'"),
        0
    );
}
