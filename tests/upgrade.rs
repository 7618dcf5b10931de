//! Upgrades as a DBA does them: a database of every released version, with the worker
//! running, events processed, pending and dead-lettered, rules, settings and (from 0.2.0 on)
//! webhook sources edited, is upgraded to this build (new binaries, restart, ALTER EXTENSION
//! ... UPDATE while events keep arriving) and must lose nothing and end with the catalogs,
//! the rules and the calls of a fresh install.
//!
//! What each version's DBA had differs (0.1.0: one secret in dialpad.webhook_secret, an
//! unpartitioned inbox; 0.2.0: webhook sources, partitions), so each released version has
//! its own setup and checks ([`Old`]); the rest is shared. A version released later is
//! upgraded as 0.2.0 is, until it needs checks of its own.

mod common;
use common::*;
use postgres::{Client, GenericClient};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const FINGERPRINT_SQL: &str = include_str!("catalog_fingerprint.sql");

/// The rows of a query of one text column.
fn rows(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

fn text(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get::<_, Option<String>>(0).unwrap_or_default()
}

/// "ok", or the SQLSTATE and DETAIL of a failed statement.
fn outcome<T>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.as_db_error() {
            Some(d) => format!("{} {}", d.code().code(), d.detail().unwrap_or("")).trim().to_string(),
            None => e.to_string(),
        },
    }
}

/// How a delivery reaches dialpad.ingest_webhook.
#[derive(Clone, Debug)]
enum Via {
    /// Plain JSON, no source (0.1.0 without a secret).
    Unsigned,
    /// Signed with 0.1.0's dialpad.webhook_secret, through its one-argument function.
    Legacy(&'static str),
    /// Signed with `secret`, naming the webhook source `name` (0.2.0 on).
    Source { name: &'static str, secret: &'static str },
}

impl Via {
    fn ingest(&self, c: &mut impl GenericClient, claims: &str) -> Result<i64, postgres::Error> {
        let row = match self {
            Via::Unsigned => c.query_one("SELECT dialpad.ingest_webhook($1)", &[&claims])?,
            Via::Legacy(secret) => c.query_one("SELECT dialpad.ingest_webhook($1)", &[&jwt(claims, secret)])?,
            Via::Source { name, secret } => {
                c.query_one("SELECT dialpad.ingest_webhook($1, $2)", &[&jwt(claims, secret), name])?
            }
        };
        Ok(row.get(0))
    }
}

/// [`deliver`] (the events of `n` calls, shuffled, ~10% redelivered, in `chunks`
/// transactions, remembered in public.expected) through `via`. Returns how many distinct
/// events were stored.
fn deliver_via(c: &mut Client, via: &Via, n: i32, first_call_id: i64, chunks: i32) -> i64 {
    if let Via::Unsigned = via {
        return deliver(c, n, first_call_id, chunks);
    }
    let before = count(c, DISTINCT_EVENTS_SQL);
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS public.expected (call_id bigint PRIMARY KEY, kind text);
         CREATE TEMP TABLE deliveries AS
           SELECT e.call_id, e.kind, e.payload, random() AS r
             FROM pg_temp.dialpad_sample_events({n}, {first_call_id}, 0.7, false) e;
         INSERT INTO deliveries SELECT call_id, kind, payload, random() FROM deliveries WHERE random() < 0.1;
         INSERT INTO public.expected SELECT DISTINCT call_id, kind FROM deliveries ON CONFLICT DO NOTHING;"
    ))
    .expect("prepare deliveries");
    for chunk in 0..chunks {
        let bodies: Vec<String> = c
            .query(&format!("SELECT payload::text FROM deliveries WHERE floor(r * {chunks}) = {chunk} ORDER BY r"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut t = c.transaction().unwrap();
        for body in &bodies {
            via.ingest(&mut t, body).unwrap_or_else(|e| panic!("deliver through {via:?}: {}", outcome::<()>(Err(e))));
        }
        t.commit().unwrap();
    }
    c.batch_execute("DROP TABLE deliveries").expect("drop deliveries");
    count(c, DISTINCT_EVENTS_SQL) - before
}

/// Rule edits a DBA made on the old version: a status and a move to it, an edited default,
/// a state of their own and a deleted default state (one the sample events never use).
const RULE_EDITS_SQL: &str = "
    INSERT INTO dialpad.call_statuses (status, is_terminal, description) VALUES ('spam', true, 'flagged');
    INSERT INTO dialpad.status_transitions (from_status, to_status) VALUES ('ringing', 'spam');
    UPDATE dialpad.call_statuses SET description = 'edited default' WHERE status = 'missed';
    INSERT INTO dialpad.state_mapping (state, status, description) VALUES ('spam_detected', 'spam', 'a DBA''s state');
    DELETE FROM dialpad.state_mapping WHERE state = 'parked';";

/// The rules, in the columns every released version has (rows ordered by their key).
const RULES_SQL: &str = "
    SELECT concat_ws(E'\\n',
        (SELECT string_agg(format('%L %L %L', status, is_terminal, description), ', ' ORDER BY status) FROM dialpad.call_statuses),
        (SELECT string_agg(from_status || '>' || to_status, ', ' ORDER BY from_status, to_status) FROM dialpad.status_transitions),
        (SELECT string_agg(format('%L %L %L %L %L', state, status, status_if_unanswered_inbound, status_if_unanswered_outbound,
                                  description), ', ' ORDER BY state) FROM dialpad.state_mapping))";

/// Every row of every rule table, whole, one a line (to compare with a fresh install of the
/// same version).
const ALL_RULES_SQL: &str = "
    SELECT 'call_statuses ' || r::text FROM dialpad.call_statuses r
    UNION ALL SELECT 'status_transitions ' || r::text FROM dialpad.status_transitions r
    UNION ALL SELECT 'state_mapping ' || r::text FROM dialpad.state_mapping r
    ORDER BY 1";

/// Settings a DBA changed on the old version (ALTER SYSTEM), and what SHOW says of them.
const SETTINGS: &[(&str, &str, &str)] =
    &[("dialpad.batch_size", "77", "77"), ("dialpad.max_body_size", "'512kB'", "512kB")];

/// 0.1.0's single webhook secret, in the setting dialpad.webhook_secret.
const LEGACY_SECRET: &str = "legacy-subscription-secret";

/// 0.2.0's webhook sources: acme's secret rotated (the old one still verifies for a week),
/// globex as added, initech disabled.
const ACME_OLD: &str = "acme-secret-before-rotation";
const ACME_NEW: &str = "acme-secret-after-rotation";
const GLOBEX: &str = "globex-secret-0123456789";
const INITECH: &str = "initech-secret-9876543210";

/// What a DBA of a released version set up, and what of it must survive the upgrade.
enum Old {
    /// 0.1.0: unsigned deliveries, then dialpad.webhook_secret set; one unpartitioned inbox.
    V0_1,
    /// 0.2.0 (and later): signed deliveries through webhook sources; a partitioned inbox.
    Sources { snapshot: String, partitions: String },
}

/// The webhook sources whole, secrets (concealed) included.
const SOURCES_SQL: &str = "
    SELECT string_agg(concat_ws(' ', name, encode(secret, 'hex'), encode(previous_secret, 'hex'), previous_valid_until,
                                enabled, labels, created_at, rotated_at), E'\\n' ORDER BY name) FROM dialpad.sources";

/// The time partitions of the inbox and of the rejected transitions.
const PARTITIONS_SQL: &str =
    "SELECT string_agg(format('%s %s %s', partition, range_from, range_to), E'\\n' ORDER BY partition::text)
       FROM dialpad.partitions WHERE NOT is_default";

impl Old {
    fn of(version: &str) -> Old {
        match version {
            "0.1.0" => Old::V0_1,
            _ => Old::Sources { snapshot: String::new(), partitions: String::new() },
        }
    }

    /// Sources set up before any delivery.
    fn setup(&self, c: &mut Client) {
        if let Old::Sources { .. } = self {
            for (name, secret, labels) in [
                ("acme", ACME_OLD, r#"{"company": "Acme"}"#),
                ("globex", GLOBEX, r#"{"company": "Globex"}"#),
                ("initech", INITECH, "{}"),
            ] {
                c.execute("SELECT dialpad.add_source($1, $2, $3::text::jsonb)", &[&name, &secret, &labels])
                    .expect("add_source");
            }
        }
    }

    /// How the events processed before the upgrade, then those left pending, were delivered.
    fn before(&self) -> (Via, Via) {
        match self {
            Old::V0_1 => (Via::Unsigned, Via::Unsigned),
            Old::Sources { .. } => {
                (Via::Source { name: "acme", secret: ACME_OLD }, Via::Source { name: "globex", secret: GLOBEX })
            }
        }
    }

    /// How deliveries are made while the new binaries run and ALTER EXTENSION ... UPDATE runs:
    /// with the old secret (0.1.0's setting; acme's rotated-out secret, in its overlap).
    fn during(&self) -> Via {
        match self {
            Old::V0_1 => Via::Legacy(LEGACY_SECRET),
            Old::Sources { .. } => Via::Source { name: "acme", secret: ACME_OLD },
        }
    }

    /// The DBA's last edits before the upgrade, and what to compare after it.
    fn finish(&mut self, c: &mut Client) {
        match self {
            Old::V0_1 => {
                c.batch_execute(&format!("ALTER SYSTEM SET dialpad.webhook_secret = '{LEGACY_SECRET}'")).unwrap()
            }
            Old::Sources { snapshot, partitions } => {
                c.execute("SELECT dialpad.rotate_secret('acme', $1, '7 days')", &[&ACME_NEW]).expect("rotate_secret");
                c.batch_execute("SELECT dialpad.disable_source('initech')").unwrap();
                *snapshot = text(c, SOURCES_SQL);
                *partitions = text(c, PARTITIONS_SQL);
                assert!(!partitions.is_empty(), "0.2.0's worker made time partitions");
            }
        }
    }

    /// Checks of what this version's DBA had, after ALTER EXTENSION ... UPDATE.
    fn check_after(&self, cluster: &Cluster, c: &mut Client, events_before: i64) {
        match self {
            Old::V0_1 => {
                // The old inbox is the first partition, whole; the calls count the events
                // applied to them (late events after retention rely on it).
                assert_eq!(
                    count(
                        c,
                        "SELECT count(*) FROM dialpad.partitions WHERE partition::text LIKE 'dialpad.webhook_events_before_%' AND range_from = '-infinity'"
                    ),
                    1
                );
                assert!(
                    count(
                        c,
                        "SELECT count(*) FROM dialpad.webhook_events WHERE tableoid::regclass::text LIKE '%before%'"
                    ) >= events_before
                );
                // The old secret is now the webhook source "default": signed deliveries naming
                // no source are still accepted, and came through it.
                assert_eq!(text(c, "SELECT string_agg(name, ',') FROM dialpad.source_list"), "default");
                assert!(cluster.log().contains("is now the webhook source \"default\""), "{}", cluster.log());
                let late = r#"{"call_id": 7999999, "state": "ringing", "event_timestamp": 1}"#;
                Via::Legacy(LEGACY_SECRET).ingest(c, late).expect("a delivery signed with the old secret");
                assert_eq!(text(c, "SELECT source FROM dialpad.webhook_events WHERE call_id = 7999999"), "default");
            }
            Old::Sources { snapshot, partitions } => {
                // The sources, their secrets, the rotation's overlap and the disabled one, as
                // they were; the partitions made by 0.2.0's worker are all there.
                assert_eq!(&text(c, SOURCES_SQL), snapshot, "the webhook sources changed");
                let now = text(c, PARTITIONS_SQL);
                for p in partitions.lines() {
                    assert!(now.lines().any(|l| l == p), "partition {p} is gone:\n{now}");
                }
                assert_eq!(
                    count(
                        c,
                        "SELECT count(*) FROM dialpad.calls WHERE source IS NULL OR source NOT IN ('acme', 'globex')"
                    ),
                    0,
                    "every call keeps the source it came through"
                );
                let late =
                    |call_id: i64| format!(r#"{{"call_id": {call_id}, "state": "ringing", "event_timestamp": 1}}"#);
                let acme_old = Via::Source { name: "acme", secret: ACME_OLD };
                let acme_new = Via::Source { name: "acme", secret: ACME_NEW };
                let globex = Via::Source { name: "globex", secret: GLOBEX };
                let acme_wrong = Via::Source { name: "acme", secret: GLOBEX };
                let initech = Via::Source { name: "initech", secret: INITECH };
                assert_eq!(
                    outcome(acme_old.ingest(c, &late(7_999_991))),
                    "ok",
                    "acme's previous secret, in its overlap"
                );
                assert_eq!(outcome(acme_new.ingest(c, &late(7_999_992))), "ok", "acme's current secret");
                assert_eq!(outcome(globex.ingest(c, &late(7_999_993))), "ok", "globex's secret");
                assert_eq!(outcome(acme_wrong.ingest(c, &late(7_999_994))), "28000 bad signature");
                assert_eq!(outcome(initech.ingest(c, &late(7_999_995))), "28000 disabled source");
                assert_eq!(
                    outcome(Via::Unsigned.ingest(c, &late(7_999_996))),
                    "22023",
                    "three sources: a delivery must name one"
                );
                assert_eq!(
                    text(
                        c,
                        "SELECT string_agg(call_id || ' ' || source, ',' ORDER BY call_id) FROM dialpad.webhook_events WHERE call_id > 7999990"
                    ),
                    "7999991 acme,7999992 acme,7999993 globex"
                );
                assert_eq!(
                    text(c, "SELECT string_agg(rule_table || ' ' || rule_key::text, ',') FROM dialpad.deleted_rules"),
                    "state_mapping {parked}",
                    "the deleted default is remembered (pg_dump/restore)"
                );
            }
        }
    }
}

#[test]
fn every_released_version_upgrades_to_this_build_losing_nothing() {
    let versions = released_versions();
    assert!(versions.iter().any(|(v, _)| v == "0.1.0"), "scripts/released-versions lists 0.1.0");
    assert!(versions.len() >= 2, "scripts/released-versions lists 0.2.0 too");
    // Every version is upgraded even when one fails, and the failures are reported together.
    let failed: Vec<String> = versions
        .iter()
        .filter(|(version, _)| std::panic::catch_unwind(|| upgrade_from(version)).is_err())
        .map(|(version, _)| version.clone())
        .collect();
    assert!(failed.is_empty(), "the upgrade from {failed:?} failed (see above)");
}

fn upgrade_from(old: &str) {
    eprintln!("upgrading from {old}");
    let mut setup = Old::of(old);
    let install = PgInstall::copy(&format!("upgrade-{old}"));
    install.remove_pg_dialpad_sql();
    install.install_pg_dialpad_from(&released_package(old));
    let cluster = Cluster::start_with(&format!("upgrade-{old}"), install.bin(), &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    assert_eq!(text(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad'"), old);
    setup.setup(&mut c);

    // Events processed, one dead-lettered, then more left pending with the worker paused.
    let (processed_via, pending_via) = setup.before();
    deliver_via(&mut c, &processed_via, 40, 7_000_000, 2);
    c.batch_execute("INSERT INTO dialpad.webhook_events (payload) VALUES ('\"junk\"')").unwrap();
    drained(&mut c, 60);
    wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.dead_events", 30);
    c.batch_execute("ALTER SYSTEM SET dialpad.enabled = off").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the worker reloads in its loop
    deliver_via(&mut c, &pending_via, 40, 7_100_000, 2);
    let pending = count(&mut c, "SELECT pending FROM dialpad.queue_stats");
    assert!(pending > 0, "events are pending before the upgrade");
    // Rule and setting edits a DBA made on the old version.
    c.batch_execute(RULE_EDITS_SQL).unwrap();
    for (name, value, _) in SETTINGS {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = {value}")).unwrap();
    }
    setup.finish(&mut c);
    let rules_before = text(&mut c, RULES_SQL);
    let events_before = count(&mut c, "SELECT count(*) FROM dialpad.webhook_events");
    let dead_before = text(&mut c, "SELECT string_agg(id || ' ' || payload::text, ',') FROM dialpad.dead_events");
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
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(&mut c, "SELECT pending FROM dialpad.queue_stats"),
        pending,
        "nothing is processed before ALTER EXTENSION"
    );
    assert!(cluster.log().contains("writing nothing until ALTER EXTENSION pg_dialpad UPDATE"), "{}", cluster.log());

    // Deliveries keep arriving, before, during and after ALTER EXTENSION ... UPDATE.
    let (sent, errors) = ingest_during(&cluster, setup.during(), || {
        c.batch_execute("ALTER EXTENSION pg_dialpad UPDATE").expect("ALTER EXTENSION pg_dialpad UPDATE")
    });
    assert!(sent > 0 && errors.is_empty(), "deliveries refused during the upgrade: {errors:?}");
    assert_eq!(
        text(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad'"),
        env!("CARGO_PKG_VERSION")
    );

    // Everything is still there and the pending events are processed, each once.
    drained(&mut c, 60);
    assert!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events") > events_before);
    assert_eq!(
        text(&mut c, "SELECT string_agg(id || ' ' || payload::text, ',') FROM dialpad.dead_events"),
        dead_before,
        "the dead letter is kept"
    );
    assert_eq!(text(&mut c, RULES_SQL), rules_before, "the rules changed");
    for (name, _, shown) in SETTINGS {
        assert_eq!(&text(&mut c, &format!("SHOW {name}")), shown, "{name}");
    }
    assert_calls_as_expected(&mut c);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NOT NULL AND duplicate_of IS NULL"
        ),
        count(&mut c, DISTINCT_EVENTS_SQL) - 1,
        "every event but the dead one applied once"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dialpad.calls k WHERE events_applied <> (SELECT count(*) FROM dialpad.webhook_events e
               WHERE e.call_id = k.dialpad_call_id AND e.processed_at IS NOT NULL AND e.duplicate_of IS NULL)"
        ),
        0,
        "a call counts each of its events once"
    );
    // The worker makes the partitions ahead.
    wait_until(
        &mut c,
        "SELECT count(*) >= 3 FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass AND range_from > now()",
        30,
    );
    setup.check_after(&cluster, &mut c, events_before);

    // The catalogs and the rules (with the same edits) are those of a fresh install.
    c.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = cluster.connect_db("fresh");
    fresh.batch_execute("CREATE EXTENSION pg_dialpad").unwrap();
    let (upgraded, installed) = (rows(&mut c, FINGERPRINT_SQL), rows(&mut fresh, FINGERPRINT_SQL));
    assert_same_rows(&format!("the catalogs upgraded from {old}"), &upgraded, &installed);
    assert!(upgraded.len() > 50, "the fingerprint sees the catalogs ({} rows)", upgraded.len());
    fresh.batch_execute(RULE_EDITS_SQL).unwrap();
    let (upgraded, installed) = (rows(&mut c, ALL_RULES_SQL), rows(&mut fresh, ALL_RULES_SQL));
    assert_same_rows(&format!("the rules upgraded from {old}"), &upgraded, &installed);

    // The calls made before the upgrade (0.1.0's leg columns filled from the audit log after
    // it by the worker's maintenance, a slice at a time) and the logical calls are what this
    // version's processor makes of the same events in the fresh database.
    wait_until(&mut c, "SELECT count(*) = 0 FROM dialpad.leg_backfill", 120);
    if let Old::V0_1 = setup {
        assert!(cluster.log().contains("maintenance: backfilled dialpad.calls"), "{}", cluster.log());
    }
    drained(&mut c, 60);
    assert_same_calls(&mut c, &mut fresh);
}

/// Delivers the events of 30 more calls through `via` from another session while `upgrade`
/// runs (from 300 ms after the first): how many were sent, and the refusals.
fn ingest_during(cluster: &Cluster, via: Via, upgrade: impl FnOnce()) -> (i64, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let stop = stop.clone();
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || -> (i64, Vec<String>) {
            let mut i = Client::connect(&conninfo, postgres::NoTls).expect("connect");
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
                if let Err(e) = via.ingest(&mut i, &r.get::<_, String>(0)) {
                    errors.push(
                        e.as_db_error()
                            .map(|d| format!("{} {} {:?}", d.code().code(), d.message(), d.detail()))
                            .unwrap_or_else(|| e.to_string()),
                    );
                }
                sent += 1;
                if !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            (sent, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    upgrade();
    stop.store(true, Ordering::Relaxed);
    ingest.join().expect("ingest thread")
}

/// The rows (catalog facts, rules) of the upgraded database are those of a fresh install,
/// each as many times; the difference is shown, not the whole.
fn assert_same_rows(what: &str, upgraded: &[String], installed: &[String]) {
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|r| !installed.contains(r)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|r| !upgraded.contains(r)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "{what} differ from a fresh install's:\nonly after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    assert_eq!(upgraded.len(), installed.len(), "{what}: a row appears a different number of times");
}

/// Replays the upgraded database's events into the fresh one and compares the calls (every
/// leg column) and the logical calls (but the source: the replay names none).
fn assert_same_calls(upgraded: &mut Client, fresh: &mut Client) {
    let events: Vec<String> = upgraded
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
    while count(fresh, "SELECT dialpad.process_events(1000)::int8") > 0 {}
    let legs = "SELECT string_agg(concat_ws(' ', dialpad_call_id, status, talk_seconds, hold_seconds, total_duration_seconds,
                    rang_at, queued_at, is_transferred, group_id, labels, csat_score, recordings, recording_url,
                    voicemail_recording_url, end_state, logical_call_id), E'\\n' ORDER BY dialpad_call_id) FROM dialpad.calls";
    let logical = "SELECT string_agg((to_jsonb(l) - 'source')::text, E'\\n' ORDER BY logical_call_id) FROM dialpad.logical_calls l";
    let (upgraded_legs, fresh_legs) = (text(upgraded, legs), text(fresh, legs));
    assert!(upgraded_legs.contains("60.500") && upgraded_legs.contains("\"tier"), "{upgraded_legs}");
    assert!(upgraded_legs.contains("https://dialpad.example/recording/"), "{upgraded_legs}");
    assert_eq!(upgraded_legs, fresh_legs);
    assert_eq!(text(upgraded, logical), text(fresh, logical));
    assert!(count(upgraded, "SELECT count(*) FROM dialpad.logical_calls WHERE outcome = 'answered'") > 10);
}
