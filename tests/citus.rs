//! pg_dialpad on a real Citus cluster (docs/citus.md): a coordinator and
//! two worker nodes on 127.0.0.1, `shared_preload_libraries = 'citus,pg_dialpad'`. The same
//! deliveries go to the cluster (through the coordinator) and to one plain node; the calls
//! must come out the same. Skipped (saying so) where Citus is not installed: scripts/test
//! installs it for every PostgreSQL it supports.

mod common;
use common::*;
use postgres::Client;

/// The nodes' pg_dialpad settings here: two workers each, quick to notice a reload.
const CONF: &[&str] = &["dialpad.workers = 2", "dialpad.poll_interval = 200", "citus.shard_count = 8"];

/// Deliveries: the sample generator's events of `n` calls from `first`, ~10% redelivered,
/// shuffled; the same list goes to every database compared.
fn deliveries(c: &mut Client, n: i32, first: i64) -> Vec<String> {
    c.query(
        &format!(
            "WITH e AS (SELECT payload FROM pg_temp.dialpad_sample_events({n}, {first}, 0.7, false)),
                  d AS (SELECT payload FROM e UNION ALL SELECT payload FROM e WHERE random() < 0.1)
             SELECT payload::text FROM d ORDER BY random()"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Delivers through dialpad.ingest_webhook, 500 a transaction.
fn ingest(c: &mut Client, payloads: &[String]) {
    for chunk in payloads.chunks(500) {
        c.execute("SELECT count(dialpad.ingest_webhook(p)) FROM unnest($1::text[]) p", &[&chunk]).unwrap();
    }
}

/// Every call row, without the times of its writes: what must be the same on both.
fn calls(c: &mut Client) -> Vec<(i64, String)> {
    c.query(
        "SELECT dialpad_call_id, (to_jsonb(k) - 'created_at' - 'updated_at')::text FROM dialpad.calls k ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The rejected transitions, without ids and times.
fn rejections(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT concat_ws(' ', dialpad_call_id, from_status, to_status, reason) FROM dialpad.rejected_transitions ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Every real call (dialpad.logical_calls), as text.
fn logical_calls(c: &mut Client) -> Vec<String> {
    c.query("SELECT to_jsonb(l)::text FROM dialpad.logical_calls l ORDER BY logical_call_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until every node has handed on the logical calls its shards wrote and their keepers
/// have recomputed them.
fn logical_calls_kept(citus: &Citus, c: &mut Client) {
    for w in &citus.workers {
        wait_until(&mut w.connect(), "SELECT count(*) = 0 FROM dialpad.logical_calls_touched", 120);
    }
    // (count, not NOT EXISTS (SELECT FROM ...): Citus cannot plan a subquery of no columns)
    wait_until(c, "SELECT count(*) = 0 FROM dialpad.logical_calls_stale", 120);
}

fn assert_same_logical_calls(citus: &Citus, cluster: &mut Client, single: &mut Client) {
    logical_calls_kept(citus, cluster);
    let (a, b) = (logical_calls(cluster), logical_calls(single));
    assert_eq!(a.len(), b.len(), "as many real calls on Citus as on one node");
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("a real call differs:\n  Citus:    {x}\n  one node: {y}");
    }
}

fn assert_same_calls(cluster: &mut Client, single: &mut Client) {
    let (a, b) = (calls(cluster), calls(single));
    assert_eq!(a.len(), b.len(), "as many calls on Citus as on one node");
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("a call differs:\n  Citus:    {x:?}\n  one node: {y:?}");
    }
    assert_eq!(rejections(cluster), rejections(single), "the same rejected transitions");
}

/// Every applied event counted once on its call: no event applied twice, none lost.
fn assert_exactly_once_effects(c: &mut Client) {
    let wrong = count(
        c,
        "SELECT count(*) FROM dialpad.calls k
           FULL JOIN (SELECT call_id, count(*) AS n FROM dialpad.webhook_events
                       WHERE processed_at IS NOT NULL AND duplicate_of IS NULL AND dead_at IS NULL AND call_id <> 0
                       GROUP BY call_id) e ON e.call_id = k.dialpad_call_id
          WHERE k.events_applied IS DISTINCT FROM e.n",
    );
    assert_eq!(wrong, 0, "calls whose applied events are not their processed events");
}

fn drained_everywhere(c: &mut Client, secs: u64) {
    wait_until(c, "SELECT pending = 0 FROM dialpad.queue_stats", secs);
}

fn handled_on(node: &Cluster) -> i64 {
    count(&mut node.connect(), "SELECT coalesce(sum(events_handled), 0)::bigint FROM dialpad.worker_stats")
}

#[test]
fn pg_dialpad_on_citus_gives_the_calls_of_one_node() {
    let layout = PgLayout::current();
    if !layout.has_citus() {
        eprintln!("skipped: Citus not installed for PostgreSQL {}", layout.major);
        return;
    }
    let single = Cluster::start("citus-reference", &["dialpad.workers = 2", "dialpad.poll_interval = 200"]);
    let mut one = single.ready();
    // Without Citus, dialpad.distribute() says what to do.
    let err = one.batch_execute("SELECT * FROM dialpad.distribute()").unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("0A000"), "{err}");

    let citus = Citus::start("citus", 0, CONF);
    let mut c = citus.coordinator.ready();

    // A database with calls before it is distributed: the coordinator processes them alone.
    let before = deliveries(&mut c, 300, 7_000_000);
    ingest(&mut c, &before);
    ingest(&mut one, &before);
    drained_everywhere(&mut c, 120);
    let rows = c
        .query("SELECT relation::text, distribution FROM dialpad.distribute()", &[])
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect::<Vec<_>>();
    assert!(rows.contains(&"dialpad.webhook_events distributed by call_id".to_string()), "{rows:?}");
    // Idempotent.
    c.batch_execute("SELECT * FROM dialpad.distribute()").unwrap();
    drained_everywhere(&mut one, 120);
    assert_same_calls(&mut c, &mut one);
    assert_same_logical_calls(&citus, &mut c, &mut one);

    // Through the coordinator: shuffled, redelivered, and poison (no call id, a call id that
    // is not a number); every worker node drains the shards it holds.
    let after = deliveries(&mut c, 700, 7_100_000);
    let poison = vec![r#"{"state": "ringing"}"#.to_string(), r#"{"call_id": "abc", "state": "hangup"}"#.to_string()];
    for db in [&mut c, &mut one] {
        ingest(db, &after);
        ingest(db, &poison);
    }
    drained_everywhere(&mut c, 180);
    drained_everywhere(&mut one, 180);
    assert_same_calls(&mut c, &mut one);
    // Poison is dead-lettered as on one node, where a DBA finds it.
    let dead = |db: &mut Client| -> Vec<String> {
        db.query("SELECT coalesce(last_error, '') FROM dialpad.dead_events ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let dead_on_citus = dead(&mut c);
    assert_eq!(dead_on_citus.len(), 2, "{dead_on_citus:?}");
    assert_eq!(dead_on_citus, dead(&mut one));
    for w in &citus.workers {
        assert!(handled_on(w) > 0, "worker node {} processed its shards", w.port);
        // The coordinator's monitoring tells about every node.
        let node = format!("127.0.0.1:{}", w.port);
        let on_coordinator = count(
            &mut c,
            &format!("SELECT coalesce(sum(events_handled), 0)::bigint FROM dialpad.worker_stats WHERE node = '{node}'"),
        );
        assert_eq!(on_coordinator, handled_on(w), "dialpad.worker_stats on the coordinator shows {node}");
        assert_eq!(
            count(
                &mut c,
                &format!("SELECT count(*) FROM dialpad.worker_status() WHERE component LIKE 'worker % on {node}' AND running")
            ),
            2,
            "dialpad.worker_status() on the coordinator shows the workers of {node}"
        );
    }
    assert!(count(&mut c, "SELECT processed_last_minute FROM dialpad.queue_stats") > 0, "the worker nodes' rate");
    assert_exactly_once_effects(&mut c);

    // Plain INSERTs through the coordinator, naming no call id (the planner hook gives
    // Citus the payload's, 0 when it has none), one row, several, INSERT ... SELECT, a
    // prepared one, and one naming it.
    for db in [&mut c, &mut one] {
        db.batch_execute(
            r#"INSERT INTO dialpad.webhook_events (payload) VALUES
                 ('{"call_id": 7200001, "state": "calling", "direction": "outbound", "event_timestamp": 1787158716000}');
               INSERT INTO dialpad.webhook_events (payload) VALUES
                 ('{"call_id": 7200002, "state": "calling", "direction": "inbound", "event_timestamp": 1787158716000}'),
                 ('{"call_id": "7200003", "state": "ringing", "direction": "inbound", "event_timestamp": 1787158716000}'),
                 ('{"state": "hangup"}');
               INSERT INTO dialpad.webhook_events (event_type, payload)
                 SELECT 'calling', jsonb_build_object('call_id', g, 'state', 'calling', 'direction', 'inbound',
                                                      'event_timestamp', 1787158716000)
                   FROM generate_series(7200010, 7200029) g ORDER BY g;
               PREPARE deliver(jsonb) AS INSERT INTO dialpad.webhook_events (payload) VALUES ($1);
               EXECUTE deliver('{"call_id": 7200040, "state": "calling", "event_timestamp": 1}');
               EXECUTE deliver('{"call_id": 7200041, "state": "calling", "event_timestamp": 1}');
               EXECUTE deliver('{"call_id": 7200042, "state": "calling", "event_timestamp": 1}');
               EXECUTE deliver('{"call_id": 7200043, "state": "calling", "event_timestamp": 1}');
               EXECUTE deliver('{"call_id": 7200044, "state": "calling", "event_timestamp": 1}');
               EXECUTE deliver('{"call_id": 7200045, "state": "calling", "event_timestamp": 1}');
               DEALLOCATE deliver;
               INSERT INTO dialpad.webhook_events (call_id, payload) VALUES
                 (7200050, '{"call_id": 7200050, "state": "calling", "event_timestamp": 1}');"#,
        )
        .unwrap();
    }
    drained_everywhere(&mut c, 60);
    drained_everywhere(&mut one, 60);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id BETWEEN 7200001 AND 7200050"),
        30
    );
    assert_same_calls(&mut c, &mut one);
    assert_eq!(dead(&mut c), dead(&mut one));

    // Crashes mid-drain: kill -9 a worker node's pg_dialpad worker, stop the other node
    // with -m immediate. Nothing is lost, nothing applied twice.
    for w in &citus.workers {
        let mut n = w.connect();
        set_and_reload(&mut n, "ALTER SYSTEM SET dialpad.enabled = off");
    }
    let crash = deliveries(&mut c, 1500, 7_300_000);
    ingest(&mut c, &crash);
    ingest(&mut one, &crash);
    for w in &citus.workers {
        let mut n = w.connect();
        set_and_reload(&mut n, "ALTER SYSTEM RESET dialpad.enabled");
    }
    let mut first = citus.workers[0].connect();
    let pids = worker_pids(&mut first);
    assert!(!pids.is_empty(), "worker node 1 runs pg_dialpad workers");
    let _ = std::process::Command::new("kill").arg("-9").arg(pids[0].to_string()).status();
    citus.workers[1].pg_ctl_stop("immediate");
    citus.workers[1].pg_ctl_start();
    drained_everywhere(&mut c, 300);
    drained_everywhere(&mut one, 300);
    assert_same_calls(&mut c, &mut one);
    assert_exactly_once_effects(&mut c);
    assert_same_logical_calls(&citus, &mut c, &mut one);
    // The killed worker took its node through a crash restart; its workers are back.
    drop(first);
    let mut first = citus.workers[0].connect();
    wait_until(&mut first, "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 60);
    assert!(citus.workers[0].log().contains("terminated by signal 9"), "the kill -9 reached a worker");

    // Shards move (a rebalance) while the workers drain: two shard groups, one from each
    // worker node to the other. The workers list their groups on every pass and follow.
    for w in &citus.workers {
        set_and_reload(&mut w.connect(), "ALTER SYSTEM SET dialpad.enabled = off");
    }
    let moving = deliveries(&mut c, 600, 7_400_000);
    ingest(&mut c, &moving);
    ingest(&mut one, &moving);
    for w in &citus.workers {
        set_and_reload(&mut w.connect(), "ALTER SYSTEM RESET dialpad.enabled");
    }
    let pending = count(&mut c, "SELECT pending FROM dialpad.queue_stats");
    let moved = c
        .query(
            "WITH g AS (SELECT DISTINCT ON (n.nodeport) p.shardid, n.nodeport
                          FROM generate_series(7400000, 7400599) id
                          JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('dialpad.calls', id)
                          JOIN pg_dist_node n ON n.groupid = p.groupid
                         ORDER BY n.nodeport, p.shardid)
             SELECT citus_move_shard_placement(g.shardid, '127.0.0.1', g.nodeport, '127.0.0.1', o.nodeport,
                                               shard_transfer_mode => 'block_writes')
               FROM g JOIN pg_dist_node o ON o.nodeport <> g.nodeport AND o.groupid > 0",
            &[],
        )
        .unwrap()
        .len();
    assert_eq!(moved, 2, "a shard group moved each way");
    assert!(pending > 0, "the shards moved while events were pending");
    drained_everywhere(&mut c, 300);
    drained_everywhere(&mut one, 300);
    assert_same_calls(&mut c, &mut one);
    assert_exactly_once_effects(&mut c);
    assert_same_logical_calls(&citus, &mut c, &mut one);

    // A rule edit on the coordinator is seen at once by every node's (running) workers.
    let rule_edit = "INSERT INTO dialpad.call_statuses (status, is_terminal) VALUES ('screened', true);
         INSERT INTO dialpad.status_transitions VALUES ('ringing', 'screened');
         INSERT INTO dialpad.state_mapping (state, status) VALUES ('screening', 'screened');";
    c.batch_execute(&format!("BEGIN; {rule_edit} COMMIT;")).unwrap();
    one.batch_execute(rule_edit).unwrap();
    let screened: Vec<String> = (0..40)
        .flat_map(|i| {
            let id = 7_500_000 + i;
            [
                format!(r#"{{"call_id": {id}, "state": "ringing", "direction": "inbound", "event_timestamp": 1787158716000}}"#),
                format!(r#"{{"call_id": {id}, "state": "screening", "direction": "inbound", "event_timestamp": 1787158717000}}"#),
            ]
        })
        .collect();
    ingest(&mut c, &screened);
    ingest(&mut one, &screened);
    drained_everywhere(&mut c, 60);
    drained_everywhere(&mut one, 60);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id >= 7500000 AND status = 'screened'"),
        40
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT n.nodeport) FROM generate_series(7500000, 7500039) g
               JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('dialpad.calls', g)
               JOIN pg_dist_node n ON n.groupid = p.groupid"
        ),
        2,
        "the screened calls are on both worker nodes"
    );
    assert_same_calls(&mut c, &mut one);
    assert_same_logical_calls(&citus, &mut c, &mut one);
}

#[test]
fn an_empty_database_is_distributed_and_processed_through_the_coordinator() {
    let layout = PgLayout::current();
    if !layout.has_citus() {
        eprintln!("skipped: Citus not installed for PostgreSQL {}", layout.major);
        return;
    }
    let citus = Citus::start("citus-empty", 1, CONF);
    let mut c = citus.coordinator.ready();
    c.batch_execute("SELECT * FROM dialpad.distribute()").unwrap();
    // The workers of every node are paused: dialpad.process_events() on the coordinator
    // processes every worker node's shards.
    for node in citus.nodes() {
        set_and_reload(&mut node.connect(), "ALTER SYSTEM SET dialpad.enabled = off");
    }
    let events = deliveries(&mut c, 200, 9_000_000);
    ingest(&mut c, &events);
    let pending = count(&mut c, "SELECT pending FROM dialpad.queue_stats");
    assert!(pending > 0);
    let mut handled = 0;
    while count(&mut c, "SELECT pending FROM dialpad.queue_stats") > 0 {
        handled += count(&mut c, "SELECT dialpad.process_events(1000)::bigint");
    }
    assert_eq!(handled, pending);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 200);
    assert_exactly_once_effects(&mut c);

    // A DBA's writes through the coordinator meet the triggers on the shards: the direction
    // is normalized, an invalid transition is skipped and recorded (the default)...
    let ended: Vec<i64> = c
        .query("SELECT dialpad_call_id FROM dialpad.calls WHERE status = 'ended' ORDER BY 1 LIMIT 6", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ended.len(), 6);
    c.execute("UPDATE dialpad.calls SET direction = 'Incoming' WHERE dialpad_call_id = ANY($1)", &[&ended]).unwrap();
    c.execute("UPDATE dialpad.calls SET status = 'ringing' WHERE dialpad_call_id = ANY($1)", &[&ended]).unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.calls WHERE status = 'ended' AND direction = 'inbound'
                AND dialpad_call_id IN (SELECT dialpad_call_id FROM dialpad.rejected_transitions WHERE to_status = 'ringing')"
        ),
        6,
        "the rows stayed ended, their direction normalized, each attempt recorded"
    );
    // ...or refused with 23514 once the database says so (ALTER DATABASE reaches every node).
    c.batch_execute("ALTER DATABASE postgres SET dialpad.invalid_transition = error").unwrap();
    let mut fresh = citus.coordinator.connect();
    let err = fresh
        .execute("UPDATE dialpad.calls SET status = 'ringing' WHERE dialpad_call_id = $1", &[&ended[0]])
        .unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("23514"), "{err}");
    // The analysts' view computes the real calls across the nodes; the table is filled on demand.
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.logical_calls_from_legs"), 100);
    assert_eq!(count(&mut c, "SELECT dialpad.rebuild_logical_calls()"), 100);
    // A TRUNCATE of the legs empties the real calls too (each shard its colocated shards).
    c.batch_execute("TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.logical_calls"), 0);
}
