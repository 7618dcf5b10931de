//! Steady state on a default-configuration cluster (issue 23, part 3): deliveries received
//! through `dialpad.ingest_webhook`, one per transaction, by 4 sessions as fast as they go,
//! with the worker off (receiving alone: the reference) and on (receiving while processing);
//! and the latency from a delivery to its call row's commit at 1,000 deliveries/s offered.
//!
//! The cluster has PostgreSQL's defaults (shared_buffers 128 MB, autovacuum on, fsync on) and
//! `track_commit_timestamp = on`, which the latency figure reads (the commit of the
//! processing transaction). The payloads are the data set's, sent as JSON text; each pass
//! over them shifts every call id, so that no delivery is a redelivery of another.
//!
//! Each round also says what a delivery cost, received alone and while processed: the
//! server's CPU (every process of its postmaster, read from /proc), the worker's share, the
//! WAL written, and how busy the whole machine was; the notes give their medians.
//!
//! BENCH_ONLY=steady runs only this. BENCH_STEADY_SECONDS (default 20) per figure,
//! BENCH_STEADY_CALLS (default 5000: about 20,000 distinct payloads).

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SESSIONS: usize = 4;
/// The data set's call ids start at 66123456789_00000 (the 5 last digits are the call's
/// number): a pass over the payloads replaces that prefix, in every place it occurs.
const PREFIX: u64 = 66_123_456_789;
// The deliveries are the sample calls' (sample_bodies), whose call ids start with PREFIX.
const _: () = assert!(PREFIX * 100_000 == SAMPLE_FIRST_CALL);

/// The `k`th delivery: payload k modulo the set, its call ids shifted by the pass.
fn body(bodies: &[String], k: usize) -> String {
    let pass = (k / bodies.len()) as u64;
    bodies[k % bodies.len()].replace(&PREFIX.to_string(), &(PREFIX + 1 + pass).to_string())
}

/// Deliveries per second from SESSIONS sessions over `secs`, as fast as they are answered,
/// each in its own transaction; `next` numbers the deliveries across calls.
fn receive_rate(cluster: &Cluster, bodies: &Arc<Vec<String>>, secs: f64, next: &Arc<AtomicUsize>) -> f64 {
    let t = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|_| {
                let conninfo = cluster.conninfo("postgres");
                let (bodies, next) = (bodies.clone(), next.clone());
                scope.spawn(move || {
                    let mut s = Client::connect(&conninfo, postgres::NoTls).unwrap();
                    let stmt = s.prepare("SELECT dialpad.ingest_webhook($1)").unwrap();
                    let mut n = 0;
                    while t.elapsed().as_secs_f64() < secs {
                        let b = body(&bodies, next.fetch_add(1, Ordering::Relaxed));
                        s.execute(&stmt, &[&b]).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    done as f64 / t.elapsed().as_secs_f64()
}

/// `rate` deliveries a second for `secs` from SESSIONS paced sessions; returns the rate achieved.
fn offer(cluster: &Cluster, bodies: &Arc<Vec<String>>, rate: f64, secs: f64, next: &Arc<AtomicUsize>) -> f64 {
    let interval = Duration::from_secs_f64(SESSIONS as f64 / rate);
    let per = (rate * secs) as usize / SESSIONS;
    let t = Instant::now();
    std::thread::scope(|scope| {
        for p in 0..SESSIONS {
            let conninfo = cluster.conninfo("postgres");
            let (bodies, next) = (bodies.clone(), next.clone());
            scope.spawn(move || {
                let mut s = Client::connect(&conninfo, postgres::NoTls).unwrap();
                let stmt = s.prepare("SELECT dialpad.ingest_webhook($1)").unwrap();
                let begin = Instant::now() + interval.mul_f64(p as f64 / SESSIONS as f64);
                for i in 0..per {
                    if let Some(d) = (begin + interval * i as u32).checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let b = body(&bodies, next.fetch_add(1, Ordering::Relaxed));
                    s.execute(&stmt, &[&b]).unwrap();
                }
            });
        }
    });
    (per * SESSIONS) as f64 / t.elapsed().as_secs_f64()
}

/// What the server, its worker, the machine and WAL had used at a moment.
struct Meter {
    server: f64,
    worker: f64,
    busy_ticks: f64,
    total_ticks: f64,
    wal: f64,
}

/// A phase's cost per delivery.
struct PerDelivery {
    server_us: f64,
    worker_us: f64,
    machine_busy: f64,
    wal_bytes: f64,
}

impl std::fmt::Display for PerDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {:.0} µs CPU (worker {:.0}), {:.0} bytes of WAL, machine {:.0}% busy",
            self.server_us,
            self.worker_us,
            self.wal_bytes,
            self.machine_busy * 100.0
        )
    }
}

impl Meter {
    fn read(cluster: &Cluster, c: &mut Client) -> Meter {
        // /proc/stat's first line: the machine's clock ticks by kind; idle and iowait are
        // the 4th and 5th.
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<f64> =
            stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total_ticks: f64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
        Meter {
            server: citus_fig::server_cpu(cluster),
            worker: citus_fig::worker_cpu(c),
            busy_ticks: total_ticks - idle,
            total_ticks,
            wal: c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::float8", &[]).unwrap().get(0),
        }
    }

    /// What was used since `before`, per delivery of the `deliveries` made in between.
    fn since(&self, before: &Meter, deliveries: f64) -> PerDelivery {
        let n = deliveries.max(1.0);
        PerDelivery {
            server_us: (self.server - before.server) * 1e6 / n,
            worker_us: (self.worker - before.worker) * 1e6 / n,
            machine_busy: (self.busy_ticks - before.busy_ticks) / (self.total_ticks - before.total_ticks).max(1.0),
            wal_bytes: (self.wal - before.wal) / n,
        }
    }
}

/// The inbox and calls emptied, the worker off (or on), before a measurement.
fn fresh(c: &mut Client, worker: bool) {
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "CHECKPOINT");
    if worker {
        set_worker_enabled(c, true);
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn steady_bench(report: &mut Report, runs: usize) {
    let secs = env_usize("BENCH_STEADY_SECONDS", 20) as f64;
    let calls = env_usize("BENCH_STEADY_CALLS", 5000);
    let cluster = Cluster::start(
        "steady",
        &["fsync = on", "track_commit_timestamp = on", "dialpad.workers = 1", "dialpad.enabled = off"],
    );
    let mut c = cluster.ready();
    let bodies = sample_bodies(&mut c, calls);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let (mut alone, mut beside, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    // A fresh inbox, then deliveries for `secs`: their rate and what each cost.
    let measured = |c: &mut Client, worker: bool, during: &mut dyn FnMut(&mut Client)| -> (f64, PerDelivery) {
        fresh(c, worker);
        let m = Meter::read(&cluster, c);
        during(c);
        let rate = receive_rate(&cluster, &bodies, secs, &next);
        during(c);
        (rate, Meter::read(&cluster, c).since(&m, rate * secs))
    };
    for round in 0..runs {
        let (a, ma) = measured(&mut c, false, &mut |_| {});
        let batches = |c: &mut Client| -> (i64, i64) {
            let r = c
                .query_one("SELECT sum(events_handled)::int8, sum(batches)::int8 FROM dialpad.worker_stats()", &[])
                .unwrap();
            (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get::<_, Option<i64>>(1).unwrap_or(0))
        };
        let mut counts = Vec::new();
        let (b, mb) = measured(&mut c, true, &mut |c| counts.push(batches(c)));
        let ((e0, b0), (e1, b1)) = (counts[0], counts[1]);
        println!("steady round {round}: per delivery alone: {ma}; while processing: {mb}");
        costs.push((ma, mb));
        let left =
            count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL");
        println!(
            "steady round {round}: receiving alone {a:.0}/s, while processing {b:.0}/s ({:.2}×), {:.1} events per batch, {left} pending at the end",
            b / a,
            (e1 - e0) as f64 / (b1 - b0).max(1) as f64
        );
        alone.push(a);
        beside.push(b);
    }
    let (a, b) = (median(alone), median(beside));
    let of = |f: fn(&(PerDelivery, PerDelivery)) -> f64| median(costs.iter().map(f).collect());
    report.notes.push(format!(
        "What a delivery cost (medians of the rounds): {:.0} µs of the server's CPU and {:.0} bytes of WAL received \
         alone; {:.0} µs ({:.0} of them the worker's) and {:.0} bytes while the worker processes (the machine {:.0}% \
         busy, against {:.0}% alone).",
        of(|c| c.0.server_us),
        of(|c| c.0.wal_bytes),
        of(|c| c.1.server_us),
        of(|c| c.1.worker_us),
        of(|c| c.1.wal_bytes),
        of(|c| c.1.machine_busy) * 100.0,
        of(|c| c.0.machine_busy) * 100.0,
    ));
    report.add(
        "default config: receiving while processing vs receiving alone",
        eps(b),
        format!("alone {}", eps(a)),
        format!("{:.2}×", b / a),
        "≥ 0.85×",
        Some(b / a >= 0.85),
    );

    // Latency: every delivery of the paced run, from its ingest (received_at, the start of
    // its one-statement transaction) to the commit of the transaction that processed it.
    fresh(&mut c, true);
    let achieved = offer(&cluster, &bodies, 1000.0, secs, &next);
    wait_until(
        &mut c,
        "SELECT NOT EXISTS (SELECT 1 FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL)",
        120,
    );
    let (p50, p99, max) = processing_latency_ms(&mut c);
    set_worker_enabled(&mut c, false);
    report.add(
        "default config: delivery → call row commit at 1,000/s (p50 / p99)",
        format!("{p50:.2} / {p99:.2} ms"),
        format!("offered {achieved:.0}/s, max {max:.1} ms"),
        String::new(),
        "p50 ≤ 5 ms, p99 ≤ 20 ms",
        Some(p50 <= 5.0 && p99 <= 20.0),
    );
    // A year of daily partitions (retention keeps everything by default): the worker's
    // CPU per delivery while receiving, against the rounds above (5 partitions).
    count(
        &mut c,
        "SELECT count(*) FROM generate_series(1, 360) i,
                dialpad.add_partition('dialpad.webhook_events', now() - i * interval '1 day', '1 day')",
    );
    let mut year = Vec::new();
    for round in 0..runs {
        let (r, cost) = measured(&mut c, true, &mut |_| {});
        println!("steady round {round}, 365 inbox partitions: {r:.0}/s while processing; per delivery: {cost}");
        year.push(cost.worker_us);
    }
    set_worker_enabled(&mut c, false);
    let (year, few) = (median(year), of(|c| c.1.worker_us));
    report.add(
        "default config: worker CPU per delivery with a year of daily inbox partitions",
        format!("{year:.0} µs"),
        format!("5 partitions {few:.0} µs"),
        format!("{:.2}×", year / few),
        "",
        None,
    );
    report.notes.push(format!(
        "Steady state on a default-configuration cluster (shared_buffers 128 MB, autovacuum on, fsync on, \
         track_commit_timestamp on for the latency; dialpad.workers = 1): {SESSIONS} sessions each calling \
         dialpad.ingest_webhook with one JSON delivery per transaction as fast as answered, {secs:.0} s with the worker \
         off and {secs:.0} s with it on, alternating, medians of {runs} rounds; then {SESSIONS} paced sessions offering \
         1,000 deliveries/s for {secs:.0} s with the worker on; then, with 360 more daily partitions in the inbox (a \
         year of them, as retention's default keeps), {runs} rounds of receiving while processing, for the worker's \
         CPU per delivery."
    ));
}
