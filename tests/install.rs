//! Installation-level behaviour against a real cluster: dump and restore, rule edits seen by
//! other sessions, upgrade-safe script.

mod common;
use common::*;

#[test]
fn pg_dump_and_restore_keep_rules_events_and_calls() {
    let cluster = Cluster::start("dump", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.call_statuses VALUES ('spam', true, 'flagged');
         INSERT INTO dialpad.status_transitions VALUES ('ringing', 'spam');
         UPDATE dialpad.call_statuses SET description = 'edited default' WHERE status = 'missed';
         UPDATE dialpad.state_mapping SET status = NULL WHERE state = 'hold';
         INSERT INTO dialpad.webhook_events (payload)
           SELECT payload FROM pg_temp.dialpad_sample_events(20) ORDER BY call_id, seq;
         INSERT INTO dialpad.webhook_events (payload, received_at)
           SELECT payload, now() - make_interval(days => (call_id % 3)::int)
             FROM pg_temp.dialpad_sample_events(20, 5000) ORDER BY call_id, seq;
         SELECT count(*) FROM dialpad.run_maintenance();
         INSERT INTO dialpad.webhook_events (payload) SELECT payload FROM dialpad.webhook_events WHERE call_id = 5001;
         SELECT dialpad.process_events(1000);",
    )
    .unwrap();
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.partitions WHERE NOT is_default") >= 3);
    let snapshot = |c: &mut postgres::Client| -> Vec<String> {
        [
            "SELECT string_agg(status || is_terminal || coalesce(description, ''), ',' ORDER BY status) FROM dialpad.call_statuses",
            "SELECT string_agg(from_status || to_status, ',' ORDER BY 1) FROM dialpad.status_transitions",
            "SELECT string_agg(state || coalesce(status, '-'), ',' ORDER BY state) FROM dialpad.state_mapping",
            "SELECT count(*)::text || max(id)::text || count(processed_at) || count(duplicate_of) FROM dialpad.webhook_events",
            // every partition with its rows (the time partitions are dumped as tables)
            "SELECT string_agg(p, ',' ORDER BY p) FROM (SELECT tableoid::regclass || ':' || count(*) AS p
               FROM dialpad.webhook_events GROUP BY tableoid) x",
            "SELECT string_agg(dialpad_call_id || status, ',' ORDER BY 1) FROM dialpad.calls",
            // not dumped: rebuilt from the legs as the restore copies them in
            "SELECT count(*) || ' ' || string_agg(l::text, ',' ORDER BY logical_call_id) FROM dialpad.logical_calls l",
        ]
        .iter()
        .map(|q| c.query_one(*q, &[]).unwrap().get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
    };
    let before = snapshot(&mut c);
    let dump = cluster.dir.join("dump.sql");
    cluster.tool("pg_dump", &["-d", "postgres", "-f", dump.to_str().unwrap()]);
    c.batch_execute("CREATE DATABASE restored").unwrap();
    cluster.tool("psql", &["-v", "ON_ERROR_STOP=1", "-q", "-d", "restored", "-f", dump.to_str().unwrap()]);
    let mut r = cluster.connect_db("restored");
    assert_eq!(snapshot(&mut r), before);
    // the sequence continues after the restored ids
    r.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('{}')").unwrap();
    assert!(
        count(&mut r, "SELECT count(DISTINCT id) FROM dialpad.webhook_events")
            == count(&mut r, "SELECT count(*) FROM dialpad.webhook_events")
    );
}

#[test]
fn a_rule_edit_is_seen_by_other_sessions_from_their_next_statement() {
    let cluster = Cluster::start("rules", &["dialpad.workers = 0"]);
    let mut a = cluster.ready();
    let mut b = cluster.connect();
    let q = "SELECT dialpad.is_valid_status_transition('active', 'missed')";
    a.batch_execute("BEGIN").unwrap();
    assert!(!a.query_one(q, &[]).unwrap().get::<_, bool>(0));
    b.batch_execute("INSERT INTO dialpad.status_transitions VALUES ('active', 'missed')").unwrap();
    // same transaction of session a (READ COMMITTED), next statement
    assert!(a.query_one(q, &[]).unwrap().get::<_, bool>(0));
    a.batch_execute("COMMIT").unwrap();
    b.batch_execute("DELETE FROM dialpad.status_transitions WHERE from_status = 'active' AND to_status = 'missed'")
        .unwrap();
    assert!(!a.query_one(q, &[]).unwrap().get::<_, bool>(0));
    // a trigger in session a follows the edit too
    a.batch_execute("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (1, 'active')").unwrap();
    b.batch_execute("INSERT INTO dialpad.status_transitions VALUES ('active', 'missed')").unwrap();
    a.batch_execute("UPDATE dialpad.calls SET status = 'missed' WHERE dialpad_call_id = 1").unwrap();
    assert_eq!(count(&mut a, "SELECT count(*) FROM dialpad.calls WHERE status = 'missed'"), 1);
}

#[test]
fn drop_and_recreate_the_extension_in_a_session() {
    let cluster = Cluster::start("recreate", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 1, \"state\": \"ringing\"}');
         SELECT dialpad.process_events();
         DROP EXTENSION pg_dialpad;
         CREATE EXTENSION pg_dialpad;
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 2, \"state\": \"ringing\"}');",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT dialpad.process_events()::int8"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 1);
    assert!(c
        .query_one("SELECT dialpad.is_valid_status_transition('ringing', 'active')", &[])
        .unwrap()
        .get::<_, bool>(0));
}

#[test]
fn dump_and_restore_keep_deleted_default_rules_deleted() {
    let cluster = Cluster::start("dumpdel", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    c.batch_execute(
        "DELETE FROM dialpad.status_transitions WHERE from_status = 'active' AND to_status = 'voicemail';
         DELETE FROM dialpad.state_mapping WHERE state = 'csat';
         INSERT INTO dialpad.state_mapping (state, status) VALUES ('my_state', 'ringing');
         DELETE FROM dialpad.state_mapping WHERE state = 'my_state';",
    )
    .unwrap();
    let rules = |c: &mut postgres::Client| -> String {
        c.query_one(
            "SELECT (SELECT string_agg(from_status || '>' || to_status, ',' ORDER BY 1) FROM dialpad.status_transitions)
                 || ' | ' || (SELECT string_agg(state, ',' ORDER BY state) FROM dialpad.state_mapping)",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = rules(&mut c);
    assert!(!before.contains("active>voicemail") && !before.contains(",csat,"), "{before}");
    let dump = cluster.dir.join("dump.sql");
    cluster.tool("pg_dump", &["-d", "postgres", "-f", dump.to_str().unwrap()]);
    c.batch_execute("CREATE DATABASE restored").unwrap();
    cluster.tool("psql", &["-v", "ON_ERROR_STOP=1", "-q", "-d", "restored", "-f", dump.to_str().unwrap()]);
    let mut r = cluster.connect_db("restored");
    assert_eq!(rules(&mut r), before, "the rules after a restore are the rules before it");
    // The same pending event gives the same status in both databases.
    let event = r#"{"call_id": 5, "state": "voicemail", "event_timestamp": 2}"#;
    for db in [&mut c, &mut r] {
        db.batch_execute(
            "INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"call_id\": 5, \"state\": \"connected\", \"event_timestamp\": 1, \"date_connected\": 1}');
             SELECT dialpad.process_events();",
        )
        .unwrap();
        db.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[&event]).unwrap();
        db.batch_execute("SELECT dialpad.process_events()").unwrap();
    }
    let status = |db: &mut postgres::Client| -> String {
        db.query_one("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 5", &[]).unwrap().get(0)
    };
    assert_eq!(status(&mut c), "active");
    assert_eq!(status(&mut r), "active");
    // Inserting a deleted rule again brings it back for good.
    r.batch_execute("INSERT INTO dialpad.state_mapping (state, status) VALUES ('csat', NULL)").unwrap();
    assert_eq!(count(&mut r, "SELECT count(*) FROM dialpad.deleted_rules WHERE rule_key = '{csat}'"), 0);
}
