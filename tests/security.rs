//! Ingestion and security against a real cluster: signed bodies, refusals with their
//! SQLSTATE (and nothing stored), de-duplication under concurrency, the roles, the worker as
//! a non-superuser, and hostile objects on the search_path.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use postgres::Client;
use sha2::Sha256;

const SECRET: &str = "dialpad-test-secret";

fn jwt(header: &str, claims: &str, secret: &str) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn signed(claims: &str) -> String {
    jwt(r#"{"alg":"HS256","typ":"JWT"}"#, claims, SECRET)
}

/// The SQLSTATE of `sql` run with `body` as $1, or "" on success.
fn sqlstate(c: &mut Client, sql: &str, body: &str) -> String {
    match c.query(sql, &[&body]) {
        Ok(_) => String::new(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| format!("{e}")),
    }
}

fn ingest_state(c: &mut Client, body: &str) -> String {
    sqlstate(c, "SELECT dialpad.ingest_webhook($1)", body)
}

/// One webhook source with this secret, or none.
fn set_secret(c: &mut Client, secret: Option<&str>) {
    c.batch_execute("SELECT dialpad.drop_source(name) FROM dialpad.source_list").unwrap();
    if let Some(s) = secret {
        c.execute("SELECT dialpad.add_source('default', $1)", &[&s]).unwrap();
    }
}

#[test]
fn signed_bodies_are_verified_and_bad_ones_store_nothing() {
    let cluster = Cluster::start("jwt", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let event = r#"{"call_id": 6612345678901234, "state": "ringing", "event_timestamp": 1787158716300, "direction": "inbound"}"#;

    // without a secret: plain JSON in, a JWT refused with a hint
    let id: i64 = c.query_one("SELECT dialpad.ingest_webhook($1)", &[&event]).unwrap().get(0);
    assert!(id > 0);
    assert_eq!(ingest_state(&mut c, &signed(event)), "28000");

    set_secret(&mut c, Some(SECRET));
    let other = r#"{"call_id": 7, "state": "hangup", "event_timestamp": 1787158716999}"#;
    let id2: i64 = c.query_one("SELECT dialpad.ingest_webhook($1)", &[&signed(other)]).unwrap().get(0);
    let stored: String =
        c.query_one("SELECT payload::text FROM dialpad.webhook_events WHERE id = $1", &[&id2]).unwrap().get(0);
    assert_eq!(stored, r#"{"state": "hangup", "call_id": 7, "event_timestamp": 1787158716999}"#);

    let before = count(&mut c, "SELECT count(*) FROM dialpad.webhook_events");
    let good = signed(other);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(r#"{"call_id": 8, "state": "hangup", "event_timestamp": 1}"#);
    parts[1] = &forged_claims;
    let tampered = parts.join(".");
    let none =
        format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(other));
    let truncated = &good[..good.len() - 10];
    let cases: Vec<(&str, String, &str)> = vec![
        ("tampered payload", tampered, "28000"),
        ("wrong secret", jwt(r#"{"alg":"HS256","typ":"JWT"}"#, other, "not-the-secret"), "28000"),
        ("alg none", none, "28000"),
        ("alg HS512", jwt(r#"{"alg":"HS512","typ":"JWT"}"#, other, SECRET), "28000"),
        ("truncated token", truncated.to_string(), "28000"),
        ("plain JSON while a secret is set", other.to_string(), "28000"),
        ("signed non-JSON", signed("not json"), "22P02"),
        (
            "header not JSON",
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("xx"), URL_SAFE_NO_PAD.encode(other), "abc"),
            "22P02",
        ),
    ];
    for (what, body, state) in &cases {
        assert_eq!(&ingest_state(&mut c, body), state, "{what}");
    }
    set_secret(&mut c, None);
    for (what, body, state) in [
        ("non-JSON", "hello".to_string(), "22P02"),
        ("empty body", "".to_string(), "22P02"),
        ("truncated JSON", r#"{"call_id": 1"#.to_string(), "22P02"),
        ("oversized", format!(r#"{{"x": "{}"}}"#, "a".repeat(11 * 1024 * 1024)), "54000"),
    ] {
        assert_eq!(ingest_state(&mut c, &body), state, "{what}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), before, "nothing stored");
    let rejected = count(&mut c, "SELECT rejected FROM dialpad.ingest_stats");
    assert_eq!(rejected, (cases.len() + 4 + 1) as i64);

    // freshness, when asked for
    c.batch_execute("SET dialpad.max_event_age = '1min'").unwrap();
    assert_eq!(ingest_state(&mut c, r#"{"call_id": 9, "state": "ringing", "event_timestamp": 1000}"#), "22023");
    let future = r#"{"call_id": 9, "state": "ringing", "event_timestamp": 99999999999999}"#;
    assert_eq!(ingest_state(&mut c, future), "22023");
    let now: i64 = c.query_one("SELECT (extract(epoch FROM now()) * 1000)::int8", &[]).unwrap().get(0);
    assert_eq!(ingest_state(&mut c, &format!(r#"{{"call_id": 9, "state": "ringing", "event_timestamp": {now}}}"#)), "");
}

#[test]
fn a_redelivered_event_is_applied_once_and_answered_with_one_id_even_from_8_sessions_at_once() {
    let cluster = Cluster::start("dedupe", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    let event = r#"{"call_id": 42, "state": "hangup", "event_timestamp": 1787158781250}"#;
    let first: i64 = c.query_one("SELECT dialpad.ingest_webhook($1)", &[&event]).unwrap().get(0);
    let again: i64 = c
        .query_one(
            "SELECT dialpad.ingest_webhook($1)",
            &[&r#"{"event_timestamp": 1787158781250, "call_id": "42", "state": "hangup"}"#],
        )
        .unwrap()
        .get(0);
    assert_eq!(first, again);
    let racing = r#"{"call_id": 43, "state": "connected", "event_timestamp": 1787158790000}"#;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let conninfo = cluster.conninfo("postgres");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = Client::connect(&conninfo, postgres::NoTls).unwrap();
                s.batch_execute("BEGIN").unwrap();
                barrier.wait();
                let id: i64 = s.query_one("SELECT dialpad.ingest_webhook($1)", &[&racing]).unwrap().get(0);
                s.batch_execute("COMMIT").unwrap();
                id
            })
        })
        .collect();
    let ids: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    // every delivery is in the audit log, one of them the event
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 43"), 8);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 43 AND duplicate_of IS NULL"),
        1
    );
    assert_eq!(count(&mut c, "SELECT duplicates FROM dialpad.ingest_stats"), 8);
    // events without the three fields are never lost, and never de-duplicated
    for _ in 0..2 {
        c.query_one("SELECT dialpad.ingest_webhook($1)", &[&r#"{"state": "ringing"}"#]).unwrap();
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id IS NULL"), 2);
    // a plain INSERT still works, and so does a redelivered one: kept, marked duplicate_of
    c.batch_execute(r#"INSERT INTO dialpad.webhook_events (payload) VALUES ('{"call_id": 44, "state": "ringing", "event_timestamp": 1}')"#).unwrap();
    assert_eq!(
        sqlstate(
            &mut c,
            "INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)",
            r#"{"call_id": 44, "state": "ringing", "event_timestamp": 1}"#
        ),
        ""
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 44 AND duplicate_of IS NOT NULL"),
        1
    );
}

fn setup_roles(c: &mut Client) {
    c.batch_execute(
        "CREATE ROLE web LOGIN IN ROLE dialpad_ingest;
         CREATE ROLE analyst LOGIN IN ROLE dialpad_reader;
         CREATE ROLE dba LOGIN IN ROLE dialpad_admin;
         CREATE ROLE app LOGIN;
         CREATE ROLE bg LOGIN IN ROLE dialpad_worker;",
    )
    .unwrap();
}

fn as_role(c: &mut Client, role: &str, sql: &str) -> String {
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let r = match c.batch_execute(sql) {
        Ok(()) => String::new(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| format!("{e}")),
    };
    c.batch_execute("RESET ROLE").unwrap();
    r
}

#[test]
fn every_role_can_do_its_job_and_nothing_more() {
    let cluster = Cluster::start("roles", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    setup_roles(&mut c);
    c.batch_execute(
        r#"INSERT INTO dialpad.webhook_events (payload) VALUES ('{"call_id": 1, "state": "ringing", "direction": "in"}');
           SELECT dialpad.process_events();
           INSERT INTO dialpad.webhook_events (payload) VALUES ('{"state": "no call id"}');
           SELECT dialpad.process_events();"#,
    )
    .unwrap();
    let denied = "42501";
    // dialpad_ingest
    assert_eq!(
        as_role(
            &mut c,
            "web",
            r#"SELECT dialpad.ingest_webhook('{"call_id": 2, "state": "ringing", "event_timestamp": 5}')"#
        ),
        ""
    );
    assert_eq!(as_role(&mut c, "web", r#"INSERT INTO dialpad.webhook_events (payload) VALUES ('{"call_id": 3}')"#), "");
    assert_eq!(as_role(&mut c, "web", "SELECT payload FROM dialpad.webhook_events"), denied);
    assert_eq!(as_role(&mut c, "web", "UPDATE dialpad.webhook_events SET payload = '{}'"), denied);
    assert_eq!(as_role(&mut c, "web", "DELETE FROM dialpad.webhook_events"), denied);
    assert_eq!(as_role(&mut c, "web", "SELECT * FROM dialpad.calls"), denied);
    assert_eq!(as_role(&mut c, "web", "SELECT dialpad.process_events()"), denied);
    // dialpad_reader
    for sql in [
        "SELECT * FROM dialpad.calls",
        "SELECT * FROM dialpad.queue_stats",
        "SELECT * FROM dialpad.worker_stats",
        "SELECT * FROM dialpad.dead_events",
        "SELECT * FROM dialpad.ingest_stats",
        "SELECT * FROM dialpad.payload_stats",
        "SELECT * FROM dialpad.rejected_transitions",
        "SELECT * FROM dialpad.worker_status()",
    ] {
        assert_eq!(as_role(&mut c, "analyst", sql), "", "{sql}");
    }
    assert_eq!(as_role(&mut c, "analyst", r#"INSERT INTO dialpad.webhook_events (payload) VALUES ('{}')"#), denied);
    assert_eq!(as_role(&mut c, "analyst", "UPDATE dialpad.calls SET status = 'ended'"), denied);
    assert_eq!(as_role(&mut c, "analyst", "DELETE FROM dialpad.status_transitions"), denied);
    assert_eq!(as_role(&mut c, "analyst", "SELECT dialpad.retry_dead_events()"), denied);
    // dialpad_admin
    assert_eq!(as_role(&mut c, "dba", "INSERT INTO dialpad.call_statuses VALUES ('spam', true, NULL)"), "");
    assert_eq!(as_role(&mut c, "dba", "INSERT INTO dialpad.status_transitions VALUES ('ringing', 'spam')"), "");
    assert_eq!(as_role(&mut c, "dba", "UPDATE dialpad.state_mapping SET status = NULL WHERE state = 'hold'"), "");
    assert_eq!(as_role(&mut c, "dba", "SELECT dialpad.retry_dead_events()"), "");
    assert_eq!(as_role(&mut c, "dba", "UPDATE dialpad.webhook_events SET payload = '{}'"), denied);
    assert_eq!(as_role(&mut c, "dba", "DELETE FROM dialpad.webhook_events"), denied);
    assert_eq!(as_role(&mut c, "dba", "SELECT * FROM dialpad.calls"), "");
    // nobody but the owner can switch the rules off
    for role in ["web", "analyst", "dba", "app", "bg"] {
        assert_eq!(
            as_role(&mut c, role, "ALTER TABLE dialpad.calls DISABLE TRIGGER calls_before_write"),
            denied,
            "{role}"
        );
        assert_eq!(as_role(&mut c, role, "ALTER TABLE dialpad.webhook_events DISABLE TRIGGER ALL"), denied, "{role}");
        assert_eq!(as_role(&mut c, role, "SET session_replication_role = replica"), denied, "{role}");
        assert_eq!(as_role(&mut c, role, "TRUNCATE dialpad.webhook_events"), denied, "{role}");
    }
    // a role allowed to write calls still cannot write an invalid transition: UPDATE,
    // INSERT ... ON CONFLICT, COPY
    c.batch_execute("UPDATE dialpad.calls SET status = 'missed' WHERE dialpad_call_id = 1").unwrap();
    assert_eq!(as_role(&mut c, "bg", "UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 1"), "");
    assert_eq!(as_role(&mut c, "bg", "INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (1, 'ringing') ON CONFLICT (dialpad_call_id) DO UPDATE SET status = EXCLUDED.status"), "");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 1 AND status = 'missed'"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 1"), 2);
    assert_eq!(as_role(&mut c, "bg", "SET dialpad.invalid_transition = error; UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 1"), "23514");
    c.batch_execute("RESET dialpad.invalid_transition").unwrap();
    let mut bg =
        Client::connect(&cluster.conninfo("postgres").replace("user=postgres", "user=bg"), postgres::NoTls).unwrap();
    let mut w = bg.copy_in("COPY dialpad.calls (dialpad_call_id, direction, status) FROM STDIN").unwrap();
    std::io::Write::write_all(&mut w, b"77\tINCOMING\tringing\n").unwrap();
    w.finish().unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 77 AND direction = 'inbound'"),
        1
    );
    // the tables belong to the extension's owner
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'dialpad' AND tableowner <> 'postgres'"),
        0
    );
}

#[test]
fn the_worker_runs_as_a_dedicated_non_superuser_role() {
    let cluster = Cluster::start("workerrole", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    c.batch_execute("CREATE ROLE dialpad_bg LOGIN NOSUPERUSER IN ROLE dialpad_worker").unwrap();
    c.batch_execute("ALTER SYSTEM SET dialpad.role = 'dialpad_bg'").unwrap();
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut c = reconnect(&cluster);
    wait_until(
        &mut c,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker' AND usename = 'dialpad_bg'",
        30,
    );
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload)
           SELECT payload FROM pg_temp.dialpad_sample_events(50) ORDER BY call_id, seq;
         INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"state\": \"no call id\"}');",
    )
    .unwrap();
    wait_until(&mut c, "SELECT pending = 0 FROM dialpad.queue_stats", 60);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls"), 50);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events"), 1);
    assert!(!cluster.log().contains("permission denied"), "{}", cluster.log());
}

#[test]
fn hostile_objects_on_the_search_path_change_nothing() {
    let cluster = Cluster::start("hostile", &["dialpad.workers = 1"]);
    let mut c = cluster.connect();
    // Functions and operators that shadow pg_catalog's, in public, with public searched first.
    c.batch_execute(
        "CREATE FUNCTION public.hijacked() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
         CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked now'; END $$;
         CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked lower'; END $$;
         CREATE FUNCTION public.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked typeof'; END $$;
         CREATE FUNCTION public.count(anyelement) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked count'; END $$;
         CREATE FUNCTION public.evil_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked ='; END $$;
         CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.evil_eq);
         CREATE FUNCTION public.evil_text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked text ='; END $$;
         CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_text_eq);
         CREATE FUNCTION public.evil_arrow(jsonb, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked ->>'; END $$;
         CREATE OPERATOR public.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = public.evil_arrow);
         ALTER DATABASE postgres SET search_path = public, pg_catalog;",
    )
    .unwrap();
    drop(c);
    let mut c = cluster.connect();
    c.batch_execute("SET search_path = public, pg_catalog; CREATE EXTENSION pg_dialpad;").unwrap();
    c.batch_execute(
        r#"SELECT dialpad.ingest_webhook('{"call_id": 1, "state": "ringing", "direction": "Incoming", "event_timestamp": 1000}');
           SELECT dialpad.ingest_webhook('{"call_id": 1, "state": "hangup", "event_timestamp": 2000}');
           INSERT INTO dialpad.webhook_events (payload) VALUES ('{"state": "no call id"}');
           SELECT dialpad.process_events();
           SELECT * FROM dialpad.queue_stats; SELECT * FROM dialpad.payload_stats; SELECT * FROM dialpad.dead_events;
           SELECT dialpad.sanitize_call_payload('{"a": [1,2,3,4,5,6,7,8,9,10,11]}');
           SELECT dialpad.normalize_call_direction('OUT'), dialpad.is_valid_status_transition('ringing', 'active');
           UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id OPERATOR(pg_catalog.=) 1;
           SELECT dialpad.retry_dead_events();"#,
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE status OPERATOR(pg_catalog.=) 'missed' AND direction OPERATOR(pg_catalog.=) 'inbound'"), 1);
    // the worker lives with the same database default search_path
    c.batch_execute(r#"SELECT dialpad.ingest_webhook('{"call_id": 2, "state": "ringing", "event_timestamp": 1000}')"#)
        .unwrap();
    wait_until(&mut c, "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 2 FROM dialpad.calls", 30);
    assert!(!cluster.log().contains("hijacked"), "{}", cluster.log());
}
