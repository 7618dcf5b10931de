//! Ingest counters a DBA can use: deliveries accepted, duplicate and rejected by source and
//! reason, in dialpad.ingest_stats_by_source and dialpad.ingest_stats, surviving a fast
//! shutdown whole (the first worker flushes when it stops) and an immediate one up to the
//! last periodic flush, each delivery counted once; a flood of made-up source names adds
//! one row, not one per name.

mod common;
use common::*;
use postgres::Client;
use std::collections::BTreeMap;

const ACME: &str = "acme-secret-0123456789";
const GLOBEX: &str = "globex-secret-9876543210";

type Counts = BTreeMap<(String, String, String), i64>;

fn event(call_id: i64, state: &str, ts: i64) -> String {
    format!(r#"{{"call_id": {call_id}, "state": "{state}", "event_timestamp": {ts}, "direction": "inbound"}}"#)
}

fn ingest(c: &mut Client, body: &str, source: Option<&str>) -> bool {
    c.query_one("SELECT dialpad.ingest_webhook($1, $2)", &[&body, &source]).is_ok()
}

/// The rows of `view` (or table): (source, outcome, reason) → count.
fn counts(c: &mut Client, relation: &str) -> Counts {
    c.query(&format!("SELECT source, outcome, reason, count::int8 FROM {relation}"), &[])
        .unwrap_or_else(|e| panic!("{relation}: {}", db_error(&e)))
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect()
}

fn key(source: &str, outcome: &str, reason: &str) -> (String, String, String) {
    (source.to_string(), outcome.to_string(), reason.to_string())
}

/// Delivers, through acme and globex, accepted events, redeliveries and refusals of several
/// reasons; returns what must be counted.
fn deliver_mix(c: &mut Client, first_call: i64) -> Counts {
    let mut want = Counts::new();
    let mut add = |k: (String, String, String), n: i64| *want.entry(k).or_default() += n;
    for i in 0..5 {
        assert!(ingest(c, &jwt(&event(first_call + i, "ringing", 1000), ACME), Some("acme")));
    }
    add(key("acme", "accepted", ""), 5);
    for i in 0..2 {
        assert!(ingest(c, &jwt(&event(first_call + i, "ringing", 1000), ACME), Some("acme")));
    }
    add(key("acme", "duplicate", ""), 2);
    for i in 0..3 {
        assert!(ingest(c, &jwt(&event(first_call + 100 + i, "ringing", 1000), GLOBEX), Some("globex")));
    }
    add(key("globex", "accepted", ""), 3);
    // refusals: a wrong secret, an unsigned body, malformed tokens, no source named
    for _ in 0..2 {
        assert!(!ingest(c, &jwt(&event(first_call + 200, "ringing", 1), GLOBEX), Some("acme")));
    }
    add(key("acme", "rejected", "bad signature"), 2);
    assert!(!ingest(c, &event(first_call + 201, "ringing", 1), Some("globex")));
    add(key("globex", "rejected", "unsigned body"), 1);
    assert!(!ingest(c, "bm90IGpzb24.bm90IGpzb24.eA", Some("globex")));
    add(key("globex", "rejected", "malformed"), 1);
    assert!(!ingest(c, &jwt(&event(first_call + 202, "ringing", 1), ACME), None));
    add(key("(none)", "rejected", "no source named"), 1);
    want
}

fn add_sources(c: &mut Client) {
    c.execute("SELECT dialpad.add_source('acme', $1)", &[&ACME]).unwrap();
    c.execute("SELECT dialpad.add_source('globex', $1)", &[&GLOBEX]).unwrap();
}

fn totals(c: &mut Client) -> (i64, i64, i64) {
    let r = c.query_one("SELECT accepted, duplicates, rejected FROM dialpad.ingest_stats", &[]).unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn sum(want: &Counts, outcome: &str) -> i64 {
    want.iter().filter(|(k, _)| k.1 == outcome).map(|(_, n)| n).sum()
}

#[test]
fn counts_by_source_and_reason_survive_a_clean_shutdown_whole() {
    let cluster = Cluster::start("counters_fast", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    let want = deliver_mix(&mut c, 1);
    // Read at once: not flushed yet, or flushed; the views add both.
    assert_eq!(counts(&mut c, "dialpad.ingest_stats_by_source"), want);
    assert_eq!(totals(&mut c), (sum(&want, "accepted"), sum(&want, "duplicate"), sum(&want, "rejected")));

    // A fast shutdown right away: the first worker writes what is left as it stops.
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut c = reconnect(&cluster);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.ingest_counters_unflushed()"), 0);
    assert_eq!(counts(&mut c, "dialpad.ingest_counters"), want, "after a fast shutdown");
    assert_eq!(counts(&mut c, "dialpad.ingest_stats_by_source"), want);

    // Counting goes on from there; a second round adds up.
    let again = deliver_mix(&mut c, 1001);
    let mut both = want.clone();
    for (k, n) in again {
        *both.entry(k).or_default() += n;
    }
    // The worker flushes every few seconds without a shutdown.
    wait_until(&mut c, "SELECT count(*) = 0 FROM dialpad.ingest_counters_unflushed()", 30);
    assert_eq!(counts(&mut c, "dialpad.ingest_counters"), both, "flushed by the worker");
    assert_eq!(totals(&mut c), (sum(&both, "accepted"), sum(&both, "duplicate"), sum(&both, "rejected")));
    let since_kept = count(
        &mut c,
        "SELECT count(*) FROM dialpad.ingest_counters WHERE since < updated_at AND source = 'acme' AND outcome = 'accepted'",
    );
    assert_eq!(since_kept, 1, "since is the first flush, updated_at the last");
}

#[test]
fn an_immediate_shutdown_keeps_what_was_flushed_and_counts_nothing_twice() {
    let cluster = Cluster::start("counters_immediate", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    let flushed = deliver_mix(&mut c, 1);
    assert_eq!(count(&mut c, "SELECT dialpad.flush_ingest_counters()"), flushed.values().sum::<i64>());
    assert_eq!(count(&mut c, "SELECT dialpad.flush_ingest_counters()"), 0, "nothing left to flush");
    assert_eq!(counts(&mut c, "dialpad.ingest_counters"), flushed);
    let more = deliver_mix(&mut c, 1001);
    drop(c);
    cluster.pg_ctl_stop("immediate");
    cluster.pg_ctl_start();
    let mut c = reconnect(&cluster);
    // What was flushed is there; what was not may be lost (at most 5 seconds of it), never
    // counted twice.
    let after = counts(&mut c, "dialpad.ingest_counters");
    for (k, n) in &flushed {
        let got = after.get(k).copied().unwrap_or(0);
        let most = n + more.get(k).copied().unwrap_or(0);
        assert!((*n..=most).contains(&got), "{k:?}: {got} not in {n}..={most}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.ingest_counters_unflushed()"), 0);
}

#[test]
fn a_flood_of_made_up_source_names_adds_one_row() {
    let cluster = Cluster::start("counters_flood", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    let body = jwt(&event(1, "ringing", 1000), ACME);
    for i in 0..3000 {
        assert!(!ingest(&mut c, &body, Some(&format!("made-up-{i}"))));
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.ingest_counters_unflushed()"), 1);
    assert_eq!(count(&mut c, "SELECT dialpad.flush_ingest_counters()"), 3000);
    assert_eq!(
        counts(&mut c, "dialpad.ingest_counters"),
        Counts::from([(key("(unknown)", "rejected", "unknown source"), 3000)])
    );
    assert_eq!(totals(&mut c), (0, 0, 3000));
}
