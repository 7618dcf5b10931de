//! pg_dialpad benchmarks: every figure next to a reference measured in the same run, as a
//! ratio; medians of several runs. Run with `./scripts/bench` (release build, private
//! cluster); writes scripts/bench-results.md and scripts/bench-results.json.
//!
//! Options (environment): BENCH_EVENTS (events per processing run, default 60000),
//! BENCH_RUNS (runs per figure, default 3), BENCH_BACKLOG (large backlog, default 5000000),
//! BENCH_MEMORY_EVENTS (events for the worker memory figure, default 2000000),
//! BENCH_HOLD_SECONDS (how long the held-snapshot benchmark holds it, default 600),
//! BENCH_ONLY=drain, steady, http, rederive, ingest-default, ingest, backlog, partitions, processing, analysts, citus, hostile or held-snapshot (only
//! those figures, printed and
//! not written); BENCH_AUTOVACUUM=off (to attribute a figure to autovacuum).

#[path = "bench_citus.rs"]
mod citus_fig;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "bench_drain.rs"]
mod drain;
#[path = "bench_hostile.rs"]
mod hostile;
#[path = "bench_http.rs"]
mod http_bench;
#[path = "bench_ingest.rs"]
mod ingest_default;
#[path = "bench_rederive.rs"]
mod rederive;
#[path = "bench_retention.rs"]
mod retention;
#[path = "bench_steady.rs"]
mod steady;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const REFERENCE_SQL: &str = include_str!("bench_reference.sql");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    name: String,
    value: String,
    reference: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// The rows and notes as plain lines, and into their section of docs/benchmarks.md (the
    /// BENCH_ONLY runs, which write no results file).
    fn print_rows(&self) {
        for r in &self.rows {
            println!("{} | {} | {} | {} | {}", r.name, r.value, r.reference, r.ratio, r.target);
        }
        for n in &self.notes {
            println!("- {n}");
        }
        if let Ok(only) = std::env::var("BENCH_ONLY") {
            write_docs_section(
                &only,
                &format!("Measured {} by `BENCH_ONLY={only} ./scripts/bench`.\n\n{}", now_utc(), self.markdown()),
            );
        }
    }

    /// The table and its notes, in Markdown.
    fn markdown(&self) -> String {
        let mut md = String::from(
            "| figure | pg_dialpad | reference (same run) | ratio | target | |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.name,
                r.value,
                r.reference,
                r.ratio,
                r.target,
                match r.pass {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "",
                }
            ));
        }
        md.push('\n');
        for n in &self.notes {
            md.push_str(&format!("- {n}\n"));
        }
        md
    }

    fn add(&mut self, name: &str, value: String, reference: String, ratio: String, target: &str, pass: Option<bool>) {
        println!(
            "{name:<52} {value:>22} {reference:>30} {ratio:>10} {target:>14} {}",
            match pass {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            }
        );
        self.rows.push(Row { name: name.into(), value, reference, ratio, target: target.into(), pass });
    }
}

fn exec(c: &mut Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

fn secs(c: &mut Client, sql: &str) -> f64 {
    let t = Instant::now();
    exec(c, sql);
    t.elapsed().as_secs_f64()
}

fn set_worker_enabled(c: &mut Client, on: bool) {
    exec(c, &format!("ALTER SYSTEM SET dialpad.enabled = {}", if on { "on" } else { "off" }));
    exec(c, "SELECT pg_reload_conf()");
}

/// Empties the inbox and calls and loads `n` events from bench.events in delivery order.
fn load_events(c: &mut Client, n: usize) {
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    exec(
        c,
        &format!(
            "INSERT INTO dialpad.webhook_events (payload)
           SELECT payload FROM bench.events ORDER BY delivery LIMIT {n}"
        ),
    );
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "VACUUM ANALYZE dialpad.calls");
    exec(c, "CHECKPOINT");
}

fn pending(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL")
}

fn handled_by_workers(c: &mut Client) -> i64 {
    count(c, "SELECT coalesce(sum(events_handled), 0)::int8 FROM dialpad.worker_stats")
}

/// Events per second of the background worker(s) draining `n` loaded events.
fn worker_drain_rate(c: &mut Client, n: usize) -> f64 {
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    load_events(c, n);
    drain_loaded(c, n)
}

/// Events per second of the background worker(s) draining the `n` pending events loaded.
fn drain_loaded(c: &mut Client, n: usize) -> f64 {
    let before = handled_by_workers(c);
    let t = Instant::now();
    set_worker_enabled(c, true);
    loop {
        if handled_by_workers(c) - before >= n as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.elapsed() < Duration::from_secs(600), "drain took too long");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(pending(c), 0);
    rate
}

/// Events per second of a SQL processor function called in a loop, one transaction each.
fn sql_drain_rate(c: &mut Client, n: usize, function: &str) -> f64 {
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    load_events(c, n);
    let t = Instant::now();
    loop {
        let k: i32 = c.query_one(&format!("SELECT {function}(500)"), &[]).unwrap().get(0);
        if k == 0 {
            break;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn restart_with(cluster: &Cluster, c: Client, settings: &[(&str, &str)]) -> Client {
    let mut c = c;
    for (k, v) in settings {
        exec(&mut c, &format!("ALTER SYSTEM SET {k} = '{v}'"));
    }
    drop(c);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut c = reconnect(cluster);
    wait_until(&mut c, "SELECT count(*) >= 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 60);
    c
}

/// Events per second through `sql` ($1 = one body as text) from `sessions` sessions, each
/// sending its share in transactions of 100 (one round trip per event, as a web tier would).
fn ingest_rate(cluster: &Cluster, bodies: &[String], sessions: usize, sql: &str) -> f64 {
    let t = Instant::now();
    let chunk = bodies.len().div_ceil(sessions);
    std::thread::scope(|scope| {
        for part in bodies.chunks(chunk) {
            let conninfo = cluster.conninfo("postgres");
            scope.spawn(move || {
                let mut s = Client::connect(&conninfo, postgres::NoTls).unwrap();
                let stmt = s.prepare(sql).unwrap();
                for tx in part.chunks(100) {
                    let mut t = s.transaction().unwrap();
                    for b in tx {
                        t.execute(&stmt, &[b]).unwrap();
                    }
                    t.commit().unwrap();
                }
            });
        }
    });
    bodies.len() as f64 / t.elapsed().as_secs_f64()
}

/// The first call id of the sample calls the default-configuration figures deliver.
const SAMPLE_FIRST_CALL: u64 = 6_612_345_678_900_000;

/// The deliveries of `calls` sample calls from [`SAMPLE_FIRST_CALL`], as JSON text, in the
/// order of their events.
fn sample_bodies(c: &mut Client, calls: usize) -> Vec<String> {
    c.query(
        &format!(
            "SELECT payload::text FROM pg_temp.dialpad_sample_events({calls}, {SAMPLE_FIRST_CALL}, 0.42, true)
              ORDER BY (payload->>'event_timestamp')::bigint"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A cluster `tag` (settings `conf`) of `package`, a `cargo pgrx package` tree installed into
/// a private copy of PostgreSQL; None: of the build installed in DIALPAD_PG_BIN.
fn cluster_of(tag: &str, package: Option<&std::path::Path>, conf: &[&str]) -> (Option<PgInstall>, Cluster) {
    let install = package.map(|p| {
        let install = PgInstall::copy(tag);
        install.remove_pg_dialpad_sql();
        install.install_pg_dialpad_from(p);
        install
    });
    let cluster = match &install {
        Some(i) => Cluster::start_with(tag, i.bin(), conf),
        None => Cluster::start(tag, conf),
    };
    (install, cluster)
}

/// The last release's package (BENCH_DRAIN_LAST_RELEASE=version=dir, which ./scripts/bench
/// sets), for the figures that compare this build with it.
fn last_release() -> Option<(String, std::path::PathBuf)> {
    let s = std::env::var("BENCH_DRAIN_LAST_RELEASE").ok()?;
    let (version, dir) = s.split_once('=')?;
    Some((version.trim().to_string(), std::path::PathBuf::from(dir.trim())))
}

/// `n` events of the data set as JWTs signed with "bench-secret".
fn bench_jwts(c: &mut Client, n: usize) -> Vec<String> {
    c.query(&format!("SELECT payload::text FROM bench.events ORDER BY delivery LIMIT {n}"), &[])
        .unwrap()
        .iter()
        .map(|r| sign(r.get(0), b"bench-secret"))
        .collect()
}

fn sign(claims: &str, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// dialpad.ingest_webhook: JWT-verified bodies from two sessions, and plain JSON against a
/// plain INSERT of the same payloads.
fn ingest_bench(cluster: &Cluster, c: &mut Client, report: &mut Report, runs: usize, n: usize) {
    set_worker_enabled(c, false);
    let bodies: Vec<String> = c
        .query(&format!("SELECT payload::text FROM bench.events ORDER BY delivery LIMIT {n}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let jwts: Vec<String> = bodies.iter().map(|b| sign(b, b"bench-secret")).collect();
    let (mut jwt_rates, mut named_rates, mut old_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut plain_rates = Vec::new();
    let mut insert_rates = Vec::new();
    for _ in 0..runs {
        // One source: deliveries need not name it.
        exec(c, "TRUNCATE dialpad.webhook_events; SELECT dialpad.add_source('bench', 'bench-secret')");
        jwt_rates.push(ingest_rate(cluster, &jwts, 2, "SELECT dialpad.ingest_webhook($1)"));
        // Two sources, the delivery names its own.
        exec(c, "TRUNCATE dialpad.webhook_events; SELECT dialpad.add_source('other', 'other-secret')");
        named_rates.push(ingest_rate(cluster, &jwts, 2, "SELECT dialpad.ingest_webhook($1, 'bench')"));
        // A rotation in progress, deliveries still signed with the old secret: two HMACs.
        exec(
            c,
            "TRUNCATE dialpad.webhook_events; SELECT dialpad.rotate_secret('bench', 'bench-new', interval '1 hour')",
        );
        old_rates.push(ingest_rate(cluster, &jwts, 2, "SELECT dialpad.ingest_webhook($1, 'bench')"));
        exec(c, "SELECT dialpad.drop_source(name) FROM dialpad.source_list");
        exec(c, "TRUNCATE dialpad.webhook_events");
        plain_rates.push(ingest_rate(cluster, &bodies, 2, "SELECT dialpad.ingest_webhook($1)"));
        exec(c, "TRUNCATE dialpad.webhook_events");
        insert_rates.push(ingest_rate(
            cluster,
            &bodies,
            2,
            "INSERT INTO dialpad.webhook_events (payload) VALUES ($1::text::jsonb)",
        ));
    }
    exec(c, "TRUNCATE dialpad.webhook_events");
    let (j, p, i) = (median(jwt_rates), median(plain_rates), median(insert_rates));
    let (named, old) = (median(named_rates), median(old_rates));
    report.add(
        "ingest_webhook, JWT-verified through its source, 2 sessions",
        eps(j),
        String::new(),
        String::new(),
        "≥ 10,000/s",
        Some(j >= 10_000.0),
    );
    report.add(
        "JWT naming one of two sources vs the only source",
        eps(named),
        format!("only source {}", eps(j)),
        format!("{:.2}×", named / j),
        "",
        None,
    );
    report.add(
        "JWT signed with the old secret during a rotation (2 HMACs)",
        eps(old),
        format!("current secret {}", eps(named)),
        format!("{:.2}×", old / named),
        "one HMAC more",
        None,
    );
    report.add(
        "ingest_webhook, plain JSON vs plain INSERT",
        eps(p),
        format!("INSERT {}", eps(i)),
        format!("{:.2}×", p / i),
        "≥ 0.8×",
        Some(p / i >= 0.8),
    );
}

fn rss_anon_kb(pid: i32) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn status_kb(pid: i32, key: &str) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// Inserts `n` events at `rate` per second from 4 sessions, one delivery per transaction,
/// replicating the data set with new call ids when it runs out (`round` offsets them).
fn offer_load(cluster: &Cluster, total: usize, rate: usize, seconds: usize, round: i64) -> f64 {
    let producers = 4usize;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let conninfo = cluster.conninfo("postgres");
            std::thread::spawn(move || {
                let mut pc = Client::connect(&conninfo, postgres::NoTls).unwrap();
                pc.batch_execute("SET synchronous_commit = on").unwrap();
                let stmt = pc
                    .prepare(
                        "INSERT INTO dialpad.webhook_events (payload)
                     SELECT CASE WHEN $2::int8 = 0 THEN payload
                                 ELSE payload || jsonb_build_object('call_id', call_id + $2::int8 * 1000000000) END
                       FROM bench.events WHERE delivery = $1",
                    )
                    .unwrap();
                let per = rate / producers;
                let interval = Duration::from_secs_f64(1.0 / per as f64);
                let begin = Instant::now();
                for i in 0..(per * seconds) {
                    let due = begin + interval * i as u32;
                    if let Some(d) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let k = i * producers + p;
                    let delivery = (k % total + 1) as i64;
                    let copy = round + (k / total) as i64;
                    pc.execute(&stmt, &[&delivery, &copy]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (rate * seconds) as f64 / t0.elapsed().as_secs_f64()
}

/// Drain rate of the worker over `n` events added on top of what the inbox holds (no
/// TRUNCATE, no VACUUM: the table as it is).
fn drain_rate_as_is(c: &mut Client, n: usize, round: i64) -> f64 {
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    exec(
        c,
        &format!(
            "INSERT INTO dialpad.webhook_events (payload)
           SELECT payload || jsonb_build_object('call_id', call_id + {round}::int8 * 1000000000)
             FROM bench.events ORDER BY delivery LIMIT {n}"
        ),
    );
    let before = handled_by_workers(c);
    let t = Instant::now();
    set_worker_enabled(c, true);
    while handled_by_workers(c) - before < n as i64 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.elapsed() < Duration::from_secs(600), "drain took too long");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Another session holds a snapshot for `hold` seconds (vacuum can remove nothing processed
/// since) while 1,000 events/s arrive; then the drain rate right after it ends.
fn held_snapshot_bench(cluster: &Cluster, c: &mut Client, report: &mut Report, total: usize, hold: usize) {
    let n = 50_000usize.min(total);
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "VACUUM ANALYZE dialpad.calls");
    let normal = median((0..3).map(|r| drain_rate_as_is(c, n, 100 + r)).collect());
    set_worker_enabled(c, true);

    let mut holder = cluster.connect();
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM dialpad.calls").unwrap();
    let held = count(
        c,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND state = 'idle in transaction'",
    );
    assert!(held >= 1, "the snapshot is not held");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let conninfo = cluster.conninfo("postgres");
        std::thread::spawn(move || {
            let mut sc = Client::connect(&conninfo, postgres::NoTls).unwrap();
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(5));
                samples.push(count(&mut sc, "SELECT pending FROM dialpad.queue_stats"));
            }
            samples
        })
    };
    let before = handled_by_workers(c);
    let offered = offer_load(cluster, total, 1000, hold, 200);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let pending_end = count(c, "SELECT pending FROM dialpad.queue_stats");
    let handled = handled_by_workers(c) - before;
    // The statistics of a partitioned table are its partitions'.
    let dead_rows = count(
        c,
        "SELECT coalesce(sum(s.n_dead_tup), 0)::int8 FROM pg_stat_user_tables s
           JOIN dialpad.partitions p ON p.partition = s.relid WHERE p.parent = 'dialpad.webhook_events'::regclass",
    );
    holder.batch_execute("COMMIT").unwrap();
    let released = Instant::now();
    let after = drain_rate_as_is(c, n, 300);
    let after_at = released.elapsed().as_secs_f64();
    let max_pending = samples.iter().copied().max().unwrap_or(0).max(pending_end);
    let minutes = hold as f64 / 60.0;
    report.add(
        &format!("snapshot held {minutes:.0} min at 1000 events/s offered: largest backlog"),
        format!("{max_pending} events"),
        format!("offered {offered:.0} events/s, {handled} handled"),
        String::new(),
        "backlog does not grow (< 1 s of traffic)",
        Some(max_pending < 1000),
    );
    report.add(
        "drain rate right after the snapshot is released",
        eps(after),
        format!("before the hold {}", eps(normal)),
        format!("{:.2}×", after / normal),
        "≥ 0.9× within a minute",
        Some(after / normal >= 0.9 && after_at <= 60.0),
    );
    report.notes.push(format!(
        "Held snapshot: {hold} s; backlog sampled every 5 s ({} samples, largest {max_pending}); {dead_rows} dead inbox rows \
         vacuum could not remove by the end; the drain after release ({n} events added on top of the inbox as it was, \
         no VACUUM) finished {after_at:.0} s after the snapshot was released.",
        samples.len()
    ));
    set_worker_enabled(c, false);
}

fn eps(r: f64) -> String {
    format!("{r:.0} events/s")
}

/// A figure that starts clusters of its own: it adds its rows to the report, `runs` each.
type Standalone = fn(&mut Report, usize);

/// The figures that start clusters of their own (default configuration), by BENCH_ONLY name.
const STANDALONE: &[(&str, Standalone)] = &[
    ("drain", drain::drain_bench),
    ("http", http_bench::http_bench),
    ("steady", steady::steady_bench),
    ("rederive", rederive::rederive_bench),
    ("ingest-default", ingest_default::ingest_default_bench),
];

fn main() {
    let settings = Settings::from_env();
    let machine = machine();
    println!("pg_dialpad benchmarks on {machine}");
    let mut report = Report { rows: Vec::new(), notes: Vec::new() };
    let only = std::env::var("BENCH_ONLY").ok();
    // The default-configuration figures run first, each on its own clusters.
    for (name, bench) in STANDALONE {
        if only.is_none() || only.as_deref() == Some(name) {
            bench(&mut report, settings.runs);
            if only.is_some() {
                report.print_rows();
                return;
            }
        }
    }
    let cluster = tuned_cluster();
    let mut c = cluster.ready();
    exec(&mut c, REFERENCE_SQL);
    let calls = (settings.n_events / 4).max(100);
    if only.as_deref() == Some("hostile") {
        hostile::hostile_bench(&mut report, settings.runs, settings.n_events, calls);
        report.print_rows();
        return;
    }
    let total = load_data_set(&mut c, &mut report, calls);
    let settings = Settings { n_events: settings.n_events.min(total), ..settings };
    if let Some(name) = only.as_deref() {
        run_one(name, &cluster, c, &mut report, &settings, total, calls);
        return;
    }
    run_all(&cluster, c, &mut report, &settings, total, calls);
    write_results(&report, &machine, &settings);
}

/// The sizes and durations the figures run with (environment variables, see the header).
#[derive(Clone, Copy)]
struct Settings {
    n_events: usize,
    runs: usize,
    backlog: usize,
    memory_events: usize,
    hold: usize,
    legs: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            n_events: env_usize("BENCH_EVENTS", 60_000),
            runs: env_usize("BENCH_RUNS", 3),
            backlog: env_usize("BENCH_BACKLOG", 5_000_000),
            memory_events: env_usize("BENCH_MEMORY_EVENTS", 2_000_000),
            hold: env_usize("BENCH_HOLD_SECONDS", 600),
            legs: env_usize("BENCH_LEGS", 10_000_000),
        }
    }
}

/// Cores, CPU model, memory and the PostgreSQL version, as the results name the machine.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .unwrap_or(0)
        / 1024
        / 1024;
    let bin = std::env::var("DIALPAD_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let version = std::process::Command::new(std::path::Path::new(&bin).join("pg_config"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().trim_start_matches("PostgreSQL ").to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu}), {memory_gb} GB RAM, PostgreSQL {version}")
}

/// The tuned cluster most figures share (2 GB shared_buffers, no maintenance unless asked).
fn tuned_cluster() -> Cluster {
    // BENCH_AUTOVACUUM=off: for attributing a figure to autovacuum (never in the published run).
    let autovacuum = format!("autovacuum = {}", std::env::var("BENCH_AUTOVACUUM").unwrap_or_else(|_| "on".into()));
    Cluster::start(
        "bench",
        &[
            &autovacuum,
            "dialpad.workers = 1",
            "dialpad.enabled = off",
            // Maintenance runs only where a figure asks for it (partitions_bench), never in
            // the middle of another measurement.
            "dialpad.maintenance_interval = 0",
            "shared_buffers = '2GB'",
            "max_wal_size = '20GB'",
            "checkpoint_timeout = '30min'",
            "track_commit_timestamp = on",
            "fsync = on",
            "synchronous_commit = on",
            "autovacuum_naptime = '10s'",
        ],
    )
}

/// bench.events: `calls` calls' events, stored as the inbox stores them; returns how many.
fn load_data_set(c: &mut Client, report: &mut Report, calls: usize) -> usize {
    exec(c, &format!(
        "-- Stored as the inbox stores them (lz4, see sql/schema.sql): the backlog is copied from
         -- here, compressed datums as they are.
         SET default_toast_compression = lz4;
         CREATE TABLE bench.events AS
           SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery,
                  call_id, kind, seq, payload
             FROM pg_temp.dialpad_sample_events({calls}, 6612345678900000, 0.42, true);
         CREATE INDEX ON bench.events (delivery);
         ANALYZE bench.events;"
    ));
    let (total, avg_text, avg_bin): (i64, i32, i32) = {
        let r = c.query_one("SELECT count(*), avg(length(payload::text))::int4, avg(pg_column_size(payload))::int4 FROM bench.events", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    report.notes.push(format!(
        "Data set: {total} events of {calls} calls (answered, missed, voicemail, outbound; 3-5 events each), \
         {avg_text} bytes of JSON on average ({avg_bin} bytes as jsonb), delivered slightly out of order."
    ));
    println!("{}", report.notes.last().unwrap());
    total as usize
}

/// One figure of the tuned cluster by its BENCH_ONLY name.
fn run_one(
    name: &str,
    cluster: &Cluster,
    mut c: Client,
    report: &mut Report,
    s: &Settings,
    total: usize,
    calls: usize,
) {
    match name {
        "ingest" => ingest_bench(cluster, &mut c, report, s.runs, s.n_events.min(40_000)),
        "backlog" => backlog_bench(&mut c, report, total, s.backlog, s.memory_events),
        "partitions" => {
            retention::partitions_bench(cluster, &mut c, report, s.runs, s.n_events);
            retention::upgrade_bench(report, 1_000_000, &bench_jwts(&mut c, 20_000));
        }
        "processing" => drop(processing_bench(cluster, c, report, s.runs, s.n_events)),
        "analysts" => analysts_bench(&mut c, report, s.runs, s.n_events, s.legs),
        "citus" => citus_fig::citus_bench(cluster, &mut c, report, s.runs, s.n_events, calls),
        "held-snapshot" => held_snapshot_bench(cluster, &mut c, report, total, s.hold),
        other => panic!("BENCH_ONLY={other}: not a figure (see the header of scripts/bench.rs)"),
    }
    report.print_rows();
}

/// Every figure of the tuned cluster, in an order where none disturbs the next.
fn run_all(cluster: &Cluster, mut c: Client, report: &mut Report, s: &Settings, total: usize, calls: usize) {
    sanitizer_bench(&mut c, report, s.runs, total);
    ingest_bench(cluster, &mut c, report, s.runs, s.n_events.min(40_000));
    c = processing_bench(cluster, c, report, s.runs, s.n_events);
    latency_bench(cluster, &mut c, report, total);
    retention::partitions_bench(cluster, &mut c, report, s.runs, s.n_events);
    retention::upgrade_bench(report, 1_000_000, &bench_jwts(&mut c, 20_000));
    backlog_bench(&mut c, report, total, s.backlog, s.memory_events);
    held_snapshot_bench(cluster, &mut c, report, total, s.hold);
    analysts_bench(&mut c, report, s.runs, s.n_events, s.legs);
    huge_payload_bench(cluster, &mut c, report);
    hostile::hostile_bench(report, s.runs, s.n_events, calls);
}

/// dialpad.sanitize_call_payload against the PL/pgSQL sanitizer and jsonb_strip_nulls.
fn sanitizer_bench(c: &mut Client, report: &mut Report, runs: usize, total: usize) {
    let same = count(c, "SELECT count(*) FROM bench.events WHERE dialpad.sanitize_call_payload(payload) <> bench.sanitize_plpgsql(payload)");
    report.notes.push(format!(
        "The PL/pgSQL sanitizer gives the same result as dialpad.sanitize_call_payload on {} of {total} events.",
        total as i64 - same
    ));
    let time_of = |c: &mut Client, expr: &str| -> f64 {
        let mut v = Vec::new();
        for _ in 0..runs.max(3) {
            v.push(secs(c, &format!("SELECT count({expr}) FROM bench.events")));
        }
        median(v)
    };
    exec(c, "SELECT count(payload) FROM bench.events"); // warm the cache
    let base = time_of(c, "payload");
    let rust = time_of(c, "dialpad.sanitize_call_payload(payload)") - base;
    let strip = time_of(c, "jsonb_strip_nulls(payload)") - base;
    let plpgsql = {
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(secs(c, "SELECT count(bench.sanitize_plpgsql(payload)) FROM bench.events") - base);
        }
        median(v)
    };
    let us = |t: f64| format!("{:.2} µs/event", t * 1e6 / total as f64);
    report.add(
        "sanitize_call_payload vs PL/pgSQL",
        us(rust),
        format!("PL/pgSQL {}", us(plpgsql)),
        format!("{:.1}×", plpgsql / rust),
        "≥ 10× faster",
        Some(plpgsql / rust >= 10.0),
    );
    report.add(
        "sanitize_call_payload vs jsonb_strip_nulls",
        us(rust),
        format!("strip_nulls {}", us(strip)),
        format!("{:.2}×", rust / strip),
        "≤ 2× the time",
        Some(rust / strip <= 2.0),
    );
}

/// Commit → call row latency at 1,000 events/s offered, on the tuned cluster.
fn latency_bench(cluster: &Cluster, c: &mut Client, report: &mut Report, total: usize) {
    set_worker_enabled(c, true);
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    let achieved = offer_load(cluster, total, 1000, 20, 0);
    wait_until(c, "SELECT pending = 0 FROM dialpad.queue_stats", 60);
    let (p50, p99, max) = processing_latency_ms(c);
    report.add(
        "latency commit→call row commit, p50",
        format!("{p50:.2} ms"),
        format!("offered {achieved:.0} events/s"),
        String::new(),
        "≤ 5 ms",
        Some(p50 <= 5.0),
    );
    report.add(
        "latency commit→call row commit, p99",
        format!("{p99:.2} ms"),
        format!("max {max:.1} ms"),
        String::new(),
        "≤ 50 ms",
        Some(p99 <= 50.0),
    );
}

/// The peak memory of sanitizing one 50 MB payload.
fn huge_payload_bench(cluster: &Cluster, c: &mut Client, report: &mut Report) {
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls");
    exec(c,
        "CREATE TABLE bench.huge AS SELECT jsonb_build_object(
             'call_id', 1, 'transcription_text', repeat('word ', 6 * 1024 * 1024),
             'integrations', (SELECT jsonb_object_agg('k' || g, repeat('v', 100)) FROM generate_series(1, 100000) g),
             'routing_breadcrumbs', (SELECT jsonb_agg(jsonb_build_object('i', g, 's', 'step')) FROM generate_series(1, 200000) g)) AS p;
         ALTER TABLE bench.huge ALTER COLUMN p SET STORAGE EXTERNAL;");
    let size_mb: f64 =
        c.query_one("SELECT pg_column_size(p || '{}'::jsonb)::float8 / 1048576 FROM bench.huge", &[]).unwrap().get(0);
    let mut s = cluster.connect();
    let spid: i32 = s.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    s.batch_execute("SELECT 1").unwrap();
    let hwm0 = status_kb(spid, "VmHWM:");
    let shm0 = status_kb(spid, "RssShmem:");
    s.batch_execute("SELECT pg_column_size(dialpad.sanitize_call_payload(p)) FROM bench.huge").unwrap();
    let hwm1 = status_kb(spid, "VmHWM:");
    let shm1 = status_kb(spid, "RssShmem:");
    let peak_mb = ((hwm1 - hwm0) - (shm1 - shm0)).max(0) as f64 / 1024.0;
    report.add(
        &format!("sanitize a {size_mb:.0} MB payload: peak memory"),
        format!("{peak_mb:.0} MB"),
        format!("payload {size_mb:.0} MB"),
        format!("{:.2}×", peak_mb / size_mb),
        "≤ 4×",
        Some(peak_mb / size_mb <= 4.0),
    );
}

/// scripts/bench-results.md and .json, and the full run's section of docs/benchmarks.md.
fn write_results(report: &Report, machine: &str, s: &Settings) {
    let (runs, n_events) = (s.runs, s.n_events);
    let date = now_utc();
    let mut md = format!("## Benchmark results\n\nMeasured {date} on {machine} by `./scripts/bench` (medians of {runs} runs; {n_events} events per processing run).\n\n");
    md.push_str(&report.markdown());
    let json_rows: Vec<String> = report.rows.iter().map(|r| format!(
        "    {{\"figure\": {:?}, \"value\": {:?}, \"reference\": {:?}, \"ratio\": {:?}, \"target\": {:?}, \"met\": {}}}",
        r.name, r.value, r.reference, r.ratio, r.target, match r.pass { Some(b) => b.to_string(), None => "null".into() })).collect();
    let json = format!("{{\n  \"date\": {date:?},\n  \"machine\": {machine:?},\n  \"runs\": {runs},\n  \"results\": [\n{}\n  ],\n  \"notes\": {:?}\n}}\n", json_rows.join(",\n"), report.notes);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    std::fs::write(dir.join("bench-results.md"), &md).unwrap();
    std::fs::write(dir.join("bench-results.json"), &json).unwrap();
    write_docs_section(
        "full",
        &format!("Measured {date} on {machine} by `./scripts/bench` (medians of {runs} runs; {n_events} events per processing run).\n\n{}", report.markdown()),
    );
    println!("\n{md}");
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces what docs/benchmarks.md holds between `<!-- bench:KEY -->` and
/// `<!-- /bench:KEY -->` with `body`: the user documentation quotes the figures of the last
/// run as `./scripts/bench` wrote them (history stays in git). Nothing when the markers are
/// not there.
fn write_docs_section(key: &str, body: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join("benchmarks.md");
    let Ok(doc) = std::fs::read_to_string(&path) else { return };
    let (open, close) = (format!("<!-- bench:{key} -->\n"), format!("<!-- /bench:{key} -->"));
    let (Some(a), Some(b)) = (doc.find(&open), doc.find(&close)) else { return };
    if b < a {
        return;
    }
    let updated = format!("{}{open}{body}{}", &doc[..a], &doc[b..]);
    if std::fs::write(&path, updated).is_ok() {
        println!("docs/benchmarks.md: section {key} updated");
    }
}

/// Drain rate with a large backlog against a small one, and the worker's memory over
/// `memory_events` events (BENCH_ONLY=backlog runs only this).
fn backlog_bench(c: &mut Client, report: &mut Report, total: usize, backlog: usize, memory_events: usize) {
    let small = 50_000usize.min(total);
    let rate_small = worker_drain_rate(c, small);
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    let copies = backlog.div_ceil(total);
    let t = Instant::now();
    // One copy of the data set after the other, with new call ids: the same mix of calls per
    // batch as in the small backlog. (A single INSERT ... SELECT over generate_series lets the
    // planner interleave the copies, which would give every event of a batch its own call
    // and measure a different workload.)
    exec(
        c,
        &format!(
            "DO $$ BEGIN
           FOR k IN 0 .. {copies} - 1 LOOP
             INSERT INTO dialpad.webhook_events (payload)
               SELECT CASE WHEN k = 0 THEN payload
                           ELSE payload || jsonb_build_object('call_id', call_id + k::int8 * 1000000000) END
                 FROM bench.events ORDER BY delivery
                LIMIT greatest(0, {backlog} - k * {total});
           END LOOP;
         END $$"
        ),
    );
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "CHECKPOINT");
    report.notes.push(format!("Loading the {backlog}-event backlog took {:.0} s.", t.elapsed().as_secs_f64()));
    let pid: i32 =
        c.query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", &[]).unwrap().get(0);
    let measure = small.min(backlog);
    let before = handled_by_workers(c);
    let t = Instant::now();
    set_worker_enabled(c, true);
    while handled_by_workers(c) - before < measure as i64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate_large = measure as f64 / t.elapsed().as_secs_f64();
    // Growth is measured from here, once the worker is warm (its caches, plans and the
    // allocator's arenas at their working size): a leak grows with the events, warm-up does not.
    let rss_before = rss_anon_kb(pid);
    let warm_at = handled_by_workers(c) - before;
    report.add(
        &format!("drain rate with {backlog} pending"),
        eps(rate_large),
        format!("{small} pending: {}", eps(rate_small)),
        format!("{:.2}×", rate_large / rate_small),
        "≥ 0.9×",
        Some(rate_large / rate_small >= 0.9),
    );
    let target_mem = memory_events.min(backlog) as i64;
    while handled_by_workers(c) - before < warm_at + target_mem {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_after = rss_anon_kb(pid);
    set_worker_enabled(c, false);
    report.add(
        &format!("worker RssAnon growth over {target_mem} events"),
        format!("{:.1} MB", (rss_after - rss_before) as f64 / 1024.0),
        format!("from {:.1} MB", rss_before as f64 / 1024.0),
        String::new(),
        "≤ 10 MB",
        Some(rss_after - rss_before <= 10 * 1024),
    );
}

/// The drain rates: one worker against the PL/pgSQL processor and the set-based ceiling,
/// process_events() from a session, two workers (BENCH_ONLY=processing runs only this).
fn processing_bench(cluster: &Cluster, mut c: Client, report: &mut Report, runs: usize, n_events: usize) -> Client {
    let mut worker1 = Vec::new();
    let mut plp = Vec::new();
    let mut ceil = Vec::new();
    let mut sqlfn = Vec::new();
    for _ in 0..runs {
        worker1.push(worker_drain_rate(&mut c, n_events));
        ceil.push(sql_drain_rate(&mut c, n_events, "bench.process_events_ceiling"));
        sqlfn.push(sql_drain_rate(&mut c, n_events, "dialpad.process_events"));
    }
    let plp_events = (n_events / 4).max(1000);
    for _ in 0..runs {
        plp.push(sql_drain_rate(&mut c, plp_events, "bench.process_events_plpgsql"));
    }
    let (w1, p, ce, sf) = (median(worker1), median(plp), median(ceil), median(sqlfn));
    report.add("1 worker drain rate", eps(w1), String::new(), String::new(), "≥ 20,000/s", Some(w1 >= 20_000.0));
    report.add(
        "1 worker vs PL/pgSQL processor",
        eps(w1),
        format!("PL/pgSQL {}", eps(p)),
        format!("{:.1}×", w1 / p),
        "≥ 3×",
        Some(w1 / p >= 3.0),
    );
    report.add(
        "1 worker vs set-based write-only ceiling",
        eps(w1),
        format!("ceiling {}", eps(ce)),
        format!("{:.2}×", w1 / ce),
        "≥ 0.8×",
        Some(w1 / ce >= 0.8),
    );
    report.add(
        "dialpad.process_events() from one session",
        eps(sf),
        format!("ceiling {}", eps(ce)),
        format!("{:.2}×", sf / ce),
        "",
        None,
    );

    c = restart_with(cluster, c, &[("dialpad.workers", "2")]);
    wait_until(&mut c, "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker'", 60);
    let mut worker2 = Vec::new();
    for _ in 0..runs {
        worker2.push(worker_drain_rate(&mut c, n_events));
    }
    let w2 = median(worker2);
    report.add("2 workers drain rate", eps(w2), format!("1 worker {}", eps(w1)), format!("{:.2}×", w2 / w1), "", None);
    c = restart_with(cluster, c, &[("dialpad.workers", "1")]);
    c
}

/// dialpad.logical_calls: what keeping it costs the worker (its triggers on and off, same
/// run), how long rebuilding it from `legs` legs takes, and a day of calls read from it
/// (BENCH_ONLY=analysts runs only this).
fn analysts_bench(c: &mut Client, report: &mut Report, runs: usize, n_events: usize, legs: usize) {
    let logical_triggers = |c: &mut Client, on: bool| {
        let how = if on { "ENABLE ALWAYS" } else { "DISABLE" };
        exec(c, &format!("ALTER TABLE dialpad.calls {how} TRIGGER calls_after_write"));
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..runs {
        exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
        with.push(worker_drain_rate(c, n_events));
        exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
        logical_triggers(c, false);
        without.push(worker_drain_rate(c, n_events));
        logical_triggers(c, true);
    }
    let (w, wo) = (median(with), median(without));
    report.add(
        "1 worker drain keeping logical_calls",
        eps(w),
        format!("its triggers off {}", eps(wo)),
        format!("{:.2}×", w / wo),
        "≥ 0.8×",
        Some(w / wo >= 0.8),
    );

    // `legs` legs over 100 days, two or three per call, as the triggers would have left them.
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    exec(c, "ALTER TABLE dialpad.calls DISABLE TRIGGER calls_before_write, DISABLE TRIGGER calls_after_write");
    let t = Instant::now();
    exec(c, &format!(
        "INSERT INTO dialpad.calls (dialpad_call_id, master_call_id, direction, status, last_state, end_state,
                external_number, internal_number, started_at, rang_at, connected_at, ended_at, duration_seconds,
                talk_seconds, hold_seconds, target_id, target_type, target_name, last_event_at, events_applied)
         SELECT 7000000000000000 + i, 7000000000000000 + i - (i % 5 % 3),
                CASE WHEN i % 7 = 0 THEN 'outbound' ELSE 'inbound' END,
                CASE WHEN i % 10 < 7 THEN 'ended' ELSE 'missed' END, 'hangup', 'hangup',
                '+1415' || lpad((i % 10000000)::text, 7, '0'), '+16505550199', t, t + interval '1 second',
                CASE WHEN i % 10 < 7 THEN t + interval '8 seconds' END, t + interval '70 seconds', 70,
                CASE WHEN i % 10 < 7 THEN 62 END, 0, (5000 + i % 300)::text, CASE WHEN i % 5 % 3 = 0 THEN 'department' ELSE 'user' END,
                'Agent ' || (i % 300), t + interval '70 seconds', 3
           FROM generate_series(1, {legs}) i,
                LATERAL (SELECT now() - interval '100 days' + (i::float8 * 8640000 / {legs}) * interval '1 second' AS t) x"
    ));
    let load = t.elapsed().as_secs_f64();
    exec(
        c,
        "ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_before_write, ENABLE ALWAYS TRIGGER calls_after_write",
    );
    let t = Instant::now();
    let n_logical: i64 = c.query_one("SELECT dialpad.rebuild_logical_calls()", &[]).unwrap().get(0);
    let rebuild = t.elapsed().as_secs_f64();
    exec(c, "VACUUM ANALYZE dialpad.calls");
    exec(c, "VACUUM ANALYZE dialpad.logical_calls");
    let fetch = |c: &mut Client, sql: &str| -> (f64, usize) {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..runs.max(5) {
            let t = Instant::now();
            rows = c.query(sql, &[]).unwrap().len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (median(times), rows)
    };
    let (day, day_rows) = fetch(c, "SELECT * FROM dialpad.logical_calls WHERE started_at >= now() - interval '1 day'");
    let (day_legs, leg_rows) = fetch(c, "SELECT * FROM dialpad.calls WHERE started_at >= now() - interval '1 day'");
    report.add(
        &format!("a day of logical_calls ({day_rows} rows) out of {legs} legs"),
        format!("{day:.1} ms"),
        format!("that day's {leg_rows} legs {day_legs:.1} ms"),
        format!("{:.2}×", day / day_legs),
        "< 100 ms",
        Some(day < 100.0),
    );
    report.add(
        &format!("rebuild_logical_calls() over {legs} legs"),
        format!("{rebuild:.1} s"),
        format!("loading the legs {load:.1} s"),
        format!("{:.2}×", rebuild / load),
        "",
        None,
    );
    report.notes.push(format!(
        "logical_calls: {legs} legs over 100 days ({} per day) make {n_logical} calls; the day is fetched whole by the client (median of {} runs).",
        legs / 100,
        runs.max(5)
    ));
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
}

/// p50, p99 and max, in ms, of every processed event's latency from its ingest (received_at,
/// the start of its one-statement transaction) to the commit of the transaction that
/// processed it (track_commit_timestamp must be on).
pub(crate) fn processing_latency_ms(c: &mut Client) -> (f64, f64, f64) {
    let r = c
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l)
               FROM (SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin) - received_at) * 1000)::float8 AS l
                       FROM dialpad.webhook_events WHERE processed_at IS NOT NULL) x",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}
