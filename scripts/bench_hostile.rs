//! Hostile input (issue 22; BENCH_ONLY=hostile runs only this): for each hostile shape, one
//! event of about 10 MB (dialpad.max_body_size's default): the time of `ingest_webhook`, the
//! time of `process_events()` of that one event, and the peak memory of the backend that
//! processed it (VmHWM from /proc, less the shared memory it touched), next to a normal
//! event's; and the normal drain rate of this build against the 0.2.0 release (before the
//! bounds and interrupt checks) on default-configuration clusters, in the same run.
//!
//! The 0.2.0 package comes from BENCH_RELEASED_0_2_0 (scripts/bench builds it in release
//! mode with package_commit); without it, the drain comparison is skipped.

use super::*;

#[path = "../tests/common/shapes.rs"]
mod shapes;

/// A hostile body: under the 10 MiB of dialpad.max_body_size's default.
const BODY: usize = 9_500_000;

fn bench_events_sql(calls: usize) -> String {
    format!(
        "-- lz4 as the inbox stores them, where PostgreSQL has it (the PyPI builds have not).
         SELECT set_config('default_toast_compression',
                           CASE WHEN 'lz4' = ANY (enumvals) THEN 'lz4' ELSE 'pglz' END, false)
           FROM pg_settings WHERE name = 'default_toast_compression';
         CREATE TABLE bench.events AS
           SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery,
                  call_id, kind, seq, payload
             FROM pg_temp.dialpad_sample_events({calls}, 6612345678900000, 0.42, true);
         CREATE INDEX ON bench.events (delivery);
         ANALYZE bench.events;"
    )
}

/// A cluster with nothing but pg_dialpad preloaded and the bench data set (the worker off).
fn default_cluster(name: &str, bin: Option<std::path::PathBuf>, calls: usize) -> (Cluster, Client) {
    let conf = ["dialpad.enabled = off"];
    let cluster = match bin {
        Some(bin) => Cluster::start_with(name, bin, &conf),
        None => Cluster::start(name, &conf),
    };
    let mut c = cluster.ready();
    exec(&mut c, REFERENCE_SQL);
    exec(&mut c, &bench_events_sql(calls));
    (cluster, c)
}

/// Milliseconds of `f`.
fn ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1000.0
}

struct One {
    ingest_ms: f64,
    process_ms: f64,
    peak_mb: f64,
}

/// Ingests `body` from `c`, then processes it with process_events(1) in a session of its own
/// (warmed by one normal event first, so that its caches are not counted): the times, and the
/// growth of that backend's peak memory (VmHWM less the shared memory it touched).
fn one_event(cluster: &Cluster, c: &mut Client, body: &str, warm_call_id: i64) -> One {
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    let mut s = cluster.connect();
    let pid: i32 = s.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.execute("SELECT dialpad.ingest_webhook($1)", &[&shapes::normal_event(warm_call_id)]).unwrap();
    exec(&mut s, "SELECT dialpad.process_events(1)");
    let (hwm0, shm0) = (status_kb(pid, "VmHWM:"), status_kb(pid, "RssShmem:"));
    let ingest_ms = ms(|| {
        c.execute("SELECT dialpad.ingest_webhook($1)", &[&body]).unwrap_or_else(|e| panic!("ingest: {}", db_error(&e)));
    });
    let mut handled = 0;
    let process_ms = ms(|| handled = s.query_one("SELECT dialpad.process_events(1)", &[]).unwrap().get::<_, i32>(0));
    assert_eq!(handled, 1, "the event was processed");
    let (hwm1, shm1) = (status_kb(pid, "VmHWM:"), status_kb(pid, "RssShmem:"));
    One { ingest_ms, process_ms, peak_mb: ((hwm1 - hwm0) - (shm1 - shm0)).max(0) as f64 / 1024.0 }
}

/// Medians of `runs` measurements of each field.
fn medians(v: Vec<One>) -> One {
    One {
        ingest_ms: median(v.iter().map(|o| o.ingest_ms).collect()),
        process_ms: median(v.iter().map(|o| o.process_ms).collect()),
        peak_mb: median(v.iter().map(|o| o.peak_mb).collect()),
    }
}

pub(crate) fn hostile_bench(report: &mut Report, runs: usize, n_events: usize, calls: usize) {
    let (cluster, mut c) = default_cluster("bench-hostile", None, calls);
    set_worker_enabled(&mut c, false);

    // ---- one 10 MB event of each hostile shape, next to a normal event -------------------------
    let mut normal = Vec::new();
    for r in 0..runs {
        normal.push(one_event(&cluster, &mut c, &shapes::normal_event(10_000 + r as i64), 20_000 + r as i64));
    }
    let normal = medians(normal);
    let names: Vec<&str> = shapes::hostile_events(0, 16).into_iter().map(|(n, _)| n).collect();
    for (i, name) in names.iter().enumerate() {
        let mut v = Vec::new();
        let mut size = 0;
        for r in 0..runs {
            let first = 1_000_000 * (r as i64 + 1);
            let body = shapes::hostile_events(first, BODY).swap_remove(i).1;
            size = body.len();
            v.push(one_event(&cluster, &mut c, &body, 30_000 + r as i64));
        }
        let m = medians(v);
        let mb = size as f64 / 1_048_576.0;
        report.add(
            &format!("hostile {mb:.1} MB event, {name}: ingest / process / peak memory"),
            format!("{:.0} ms / {:.0} ms / +{:.0} MB", m.ingest_ms, m.process_ms, m.peak_mb),
            format!("normal: {:.2} ms / {:.2} ms / +{:.1} MB", normal.ingest_ms, normal.process_ms, normal.peak_mb),
            format!("{:.1}× body", m.peak_mb / mb),
            "memory ≤ 4× body",
            Some(m.peak_mb <= 4.0 * mb),
        );
    }
    report.notes.push(format!(
        "Hostile input: one event of each shape (tests/common/shapes.rs) of about {:.1} MB, plain JSON through \
         ingest_webhook, then process_events(1) in a session already warmed by a normal event; peak memory is the \
         growth of that backend's VmHWM less the shared memory it touched. Medians of {runs}.",
        BODY as f64 / 1_048_576.0
    ));

    // ---- the normal drain rate: this build vs 0.2.0, same run ----------------------------------
    let Some(package) = std::env::var("BENCH_RELEASED_0_2_0").ok().map(std::path::PathBuf::from) else {
        report.notes.push("Drain rate vs 0.2.0: skipped (BENCH_RELEASED_0_2_0 is not set).".into());
        return;
    };
    let install = PgInstall::copy("bench-0.2.0");
    install.install_pg_dialpad_from(&package);
    let (_old_cluster, mut old) = default_cluster("bench-0.2.0", Some(install.bin()), calls);
    let version: String =
        old.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_dialpad'", &[]).unwrap().get(0);
    assert_eq!(version, "0.2.0");
    let n = n_events.min(calls * 3);
    let (mut this, mut before) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        this.push(worker_drain_rate(&mut c, n));
        set_worker_enabled(&mut c, false);
        before.push(worker_drain_rate(&mut old, n));
        set_worker_enabled(&mut old, false);
    }
    let (this, before) = (median(this), median(before));
    report.add(
        "normal drain rate, this build vs 0.2.0 (default configuration)",
        eps(this),
        format!("0.2.0 {}", eps(before)),
        format!("{:.2}×", this / before),
        "≥ 0.97×",
        Some(this / before >= 0.97),
    );
    report.notes.push(format!(
        "Drain rate vs 0.2.0: {n} events of the data set drained by the worker of a default-configuration cluster of \
         each build (0.2.0 built in release mode from 847c29e), alternating, medians of {runs}."
    ));
}
