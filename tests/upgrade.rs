//! Upgrades as a DBA does them: a database of every released version, with the worker
//! running, events processed, pending and dead-lettered, rules and settings edited, is
//! upgraded to this build (new binaries, restart, ALTER EXTENSION ... UPDATE while events
//! keep arriving) and must lose nothing and end with the catalogs of a fresh install.

mod common;
use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const FINGERPRINT_SQL: &str = include_str!("catalog_fingerprint.sql");

fn fingerprint(c: &mut postgres::Client) -> Vec<String> {
    c.query(FINGERPRINT_SQL, &[])
        .expect("fingerprint")
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

fn sqlstate(c: &mut postgres::Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

/// 0.1.0's single webhook secret, in the setting dialpad.webhook_secret.
const LEGACY_SECRET: &str = "legacy-subscription-secret";

/// A compact HS256 JWT of `claims`, as Dialpad signs them.
fn signed(claims: &str, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn text(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get::<_, Option<String>>(0).unwrap_or_default()
}

#[test]
fn every_released_version_upgrades_to_this_build_losing_nothing() {
    let versions = released_versions();
    assert!(!versions.is_empty(), "scripts/released-versions lists no version");
    for (version, _commit) in versions {
        upgrade_from(&version);
    }
}

fn upgrade_from(old: &str) {
    let install = PgInstall::copy(&format!("upgrade-{old}"));
    install.remove_pg_dialpad_sql();
    install.install_pg_dialpad_from(&released_package(old));
    let cluster = Cluster::start_with(&format!("upgrade-{old}"), install.bin(), &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    assert_eq!(text(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad'"), old);

    // Events processed, one dead-lettered, then more left pending with the worker paused.
    let mut delivered = deliver(&mut c, 40, 7_000_000, 2);
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('\"junk\"')").unwrap();
    drained(&mut c, 60);
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.dead_events", 30);
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = off").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2)); // the worker reloads in its loop
    delivered += deliver(&mut c, 40, 7_100_000, 2);
    let pending = count(&mut c, "SELECT pending FROM dialpad.queue_stats");
    assert!(pending > 0, "events are pending before the upgrade");
    // Rule and setting edits a DBA made on the old version.
    c.batch_execute(
        "INSERT INTO dialpad.call_statuses VALUES ('spam', true, 'flagged');
         INSERT INTO dialpad.status_transitions VALUES ('ringing', 'spam');
         UPDATE dialpad.call_statuses SET description = 'edited default' WHERE status = 'missed';",
    )
    .unwrap();
    c.batch_execute("ALTER SYSTEM SET dialpad.batch_size = 77").unwrap();
    c.batch_execute(&format!("ALTER SYSTEM SET dialpad.webhook_secret = '{LEGACY_SECRET}'")).unwrap();
    let rules_before = text(
        &mut c,
        "SELECT (SELECT string_agg(status || is_terminal || coalesce(description, ''), ',' ORDER BY status) FROM dialpad.call_statuses)
             || (SELECT string_agg(from_status || to_status, ',' ORDER BY 1, 2) FROM dialpad.status_transitions)",
    );
    let events_before = count(&mut c, "SELECT count(*) FROM dialpad.webhook_events");
    drop(c);

    // New binaries, restart: the worker runs the new library against the old SQL objects.
    cluster.pg_ctl_stop("fast");
    install.install_pg_dialpad_from(Path::new("/"));
    cluster.pg_ctl_start();
    let mut c = reconnect(&cluster);
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(&mut c, "SELECT bool_or(detail LIKE '%writes nothing%' AND hint LIKE '%ALTER EXTENSION pg_dialpad UPDATE%') FROM dialpad.worker_status()", 30);
    assert_eq!(sqlstate(&mut c, "SELECT dialpad.process_events()"), "55000");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        count(&mut c, "SELECT pending FROM dialpad.queue_stats"),
        pending,
        "nothing is processed before ALTER EXTENSION"
    );
    assert!(cluster.log().contains("writing nothing until ALTER EXTENSION pg_dialpad UPDATE"), "{}", cluster.log());

    // Deliveries keep arriving, before, during and after ALTER EXTENSION ... UPDATE.
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let stop = stop.clone();
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || -> (i64, Vec<String>) {
            let mut i = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
            i.batch_execute(SAMPLE_EVENTS_SQL).expect("generator");
            i.batch_execute(
                "CREATE TEMP TABLE later AS SELECT call_id, kind, payload FROM pg_temp.dialpad_sample_events(30, 7200000, 0.7, false) ORDER BY random();
                 INSERT INTO public.expected SELECT DISTINCT call_id, kind FROM later;",
            )
            .expect("later events");
            let rows = i.query("SELECT payload::text FROM later", &[]).expect("later");
            let mut errors = Vec::new();
            let mut sent = 0;
            for r in rows {
                let body = signed(&r.get::<_, String>(0), LEGACY_SECRET);
                if let Err(e) = i.query_one("SELECT dialpad.ingest_webhook($1)", &[&body]) {
                    errors.push(
                        e.as_db_error()
                            .map(|d| format!("{} {} {:?}", d.code().code(), d.message(), d.detail()))
                            .unwrap_or_else(|| e.to_string()),
                    );
                }
                sent += 1;
                if !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            (sent, errors)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.batch_execute("ALTER EXTENSION pg_dialpad UPDATE").expect("ALTER EXTENSION pg_dialpad UPDATE");
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = ingest.join().expect("ingest thread");
    assert!(sent > 0 && errors.is_empty(), "deliveries refused during the upgrade: {errors:?}");
    assert_eq!(
        text(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad'"),
        env!("CARGO_PKG_VERSION")
    );

    // Everything is still there and the pending events are processed correctly.
    drained(&mut c, 60);
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events") > events_before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.dead_events"), 1, "the dead letter is kept");
    assert_eq!(
        text(
            &mut c,
            "SELECT (SELECT string_agg(status || is_terminal || coalesce(description, ''), ',' ORDER BY status) FROM dialpad.call_statuses)
                 || (SELECT string_agg(from_status || to_status, ',' ORDER BY 1, 2) FROM dialpad.status_transitions)"
        ),
        rules_before
    );
    assert_eq!(text(&mut c, "SHOW dialpad.batch_size"), "77");
    assert_calls_as_expected(&mut c);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NOT NULL AND duplicate_of IS NULL"
        ),
        count(&mut c, DISTINCT_EVENTS_SQL) - 1,
        "every event but the dead one applied once"
    );
    let _ = delivered;
    // The old inbox is the first partition, whole; the worker makes the next ones, and the
    // calls count the events applied to them (late events after retention rely on it).
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.partitions WHERE partition::text LIKE 'dialpad.webhook_events_before_%' AND range_from = '-infinity'"
        ),
        1
    );
    assert!(
        count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE tableoid::regclass::text LIKE '%before%'")
            >= events_before
    );
    wait_until(
        &mut c,
        "SELECT count(*) >= 3 FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass AND range_from > now()",
        30,
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.calls k WHERE events_applied <> (SELECT count(*) FROM dialpad.webhook_events e
               WHERE e.call_id = k.dialpad_call_id AND e.processed_at IS NOT NULL AND e.duplicate_of IS NULL)"
        ),
        0
    );

    // The old secret is now the webhook source "default": signed deliveries naming no source
    // are still accepted, and came through it.
    assert_eq!(text(&mut c, "SELECT string_agg(name, ',') FROM dialpad.source_list"), "default");
    assert!(cluster.log().contains("is now the webhook source \"default\""), "{}", cluster.log());
    let late = signed(r#"{"call_id": 7999999, "state": "ringing", "event_timestamp": 1}"#, LEGACY_SECRET);
    c.query_one("SELECT dialpad.ingest_webhook($1)", &[&late]).expect("a delivery signed with the old secret");
    assert_eq!(text(&mut c, "SELECT source FROM dialpad.webhook_events WHERE call_id = 7999999"), "default");

    // The catalogs are those of a fresh install of this version.
    c.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = cluster.connect_db("fresh");
    fresh.batch_execute("CREATE EXTENSION pg_dialpad").unwrap();
    let (upgraded, installed) = (fingerprint(&mut c), fingerprint(&mut fresh));
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|r| !installed.contains(r)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|r| !upgraded.contains(r)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgraded from {old} differs from a fresh install:\nonly after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    assert!(upgraded.len() > 50, "the fingerprint sees the catalogs ({} rows)", upgraded.len());

    // The leg columns of the calls 0.1.0 made, filled from the audit log after the upgrade by
    // the worker's maintenance (a slice at a time), and the logical calls, are what this
    // version's processor makes of the same events in the fresh database.
    wait_until(&mut c, "SELECT count(*) = 0 FROM dialpad.leg_backfill", 120);
    assert!(cluster.log().contains("maintenance: backfilled dialpad.calls"), "{}", cluster.log());
    let events: Vec<String> = c
        .query(
            "SELECT payload::text FROM dialpad.webhook_events WHERE duplicate_of IS NULL AND call_id IS NOT NULL ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for e in &events {
        fresh.execute("INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)", &[e]).unwrap();
    }
    while count(&mut fresh, "SELECT dialpad.process_events(1000)::int8") > 0 {}
    let legs = "SELECT string_agg(concat_ws(' ', dialpad_call_id, status, talk_seconds, hold_seconds, total_duration_seconds,
                    rang_at, queued_at, is_transferred, group_id, labels, csat_score, recordings, recording_url,
                    voicemail_recording_url, end_state, logical_call_id), E'\\n' ORDER BY dialpad_call_id) FROM dialpad.calls";
    let logical = "SELECT string_agg((l.*)::text, E'\\n' ORDER BY logical_call_id) FROM dialpad.logical_calls l";
    let (upgraded_legs, fresh_legs) = (text(&mut c, legs), text(&mut fresh, legs));
    assert!(upgraded_legs.contains("60.500") && upgraded_legs.contains("\"tier"), "{upgraded_legs}");
    assert!(upgraded_legs.contains("https://dialpad.example/recording/"), "{upgraded_legs}");
    assert_eq!(upgraded_legs, fresh_legs);
    let logical_sources = |s: String| s.replace(",default,", ",,");
    assert_eq!(logical_sources(text(&mut c, logical)), text(&mut fresh, logical));
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.logical_calls WHERE outcome = 'answered'") > 10);
}
