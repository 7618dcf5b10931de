//! The drain figure on a DEFAULT-configuration cluster (issue 23): one preloaded worker
//! draining a backlog of Dialpad-shaped events, against `dialpad.process_events()` called in a
//! loop from a session on the same cluster and events, against the set-based write-only
//! reference of scripts/bench_reference.sql (this build only), and against the 0.1.0 worker
//! (its release package) on the same events, in the same run.
//!
//! Each build gets a fresh cluster with nothing but what pg_dialpad needs to run:
//! shared_preload_libraries = 'pg_dialpad', dialpad.workers = 1, dialpad.enabled = off until
//! the backlog is loaded (shared_buffers 128 MB, autovacuum on, fsync on: PostgreSQL's
//! defaults). The tuned cluster of the other figures (2 GB shared_buffers) hid the halving of
//! the worker's rate between 0.1.0 and 0.2.0.
//!
//! BENCH_ONLY=drain runs only this. BENCH_DRAIN_CALLS (default 20000: 84,000 events),
//! BENCH_DRAIN_RELEASE_PACKAGE (the 0.1.0 release package; scripts/bench builds it),
//! BENCH_DRAIN_LAST_RELEASE=version=dir (the last released version's package, release build;
//! scripts/bench builds it: a drain below it is a regression the README says out loud),
//! BENCH_DRAIN_PACKAGES=name=dir,... (more builds measured beside them, e.g. to bisect),
//! BENCH_DRAIN_THIS=0 (only the packages), BENCH_DRAIN_DEBUG=1 (log_min_messages = debug1:
//! the worker's per-step timings in the server log, kept).

use super::*;
use std::path::PathBuf;

/// Tables a drain run empties first (every build has them; a TRUNCATE of the calls empties
/// dialpad.logical_calls too, in the builds that keep it).
const TRUNCATE_SQL: &str = "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions";

const PENDING_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL)";

/// One build on its own default-configuration cluster, its events generated once.
struct Build {
    name: String,
    _install: Option<PgInstall>,
    cluster: Cluster,
    c: Client,
    events: i64,
}

impl Build {
    /// `package`: a `cargo pgrx package` tree installed into a private copy of PostgreSQL;
    /// None: the build installed in DIALPAD_PG_BIN.
    fn start(name: &str, package: Option<&std::path::Path>, calls: usize) -> Build {
        let tag = format!("drain-{}", name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "-"));
        let mut conf = vec!["fsync = on", "dialpad.workers = 1", "dialpad.enabled = off"];
        if std::env::var("BENCH_DRAIN_DEBUG").as_deref() == Ok("1") {
            conf.push("log_min_messages = debug1");
        }
        let (install, cluster) = cluster_of(&tag, package, &conf);
        let mut c = cluster.ready();
        exec(
            &mut c,
            &format!(
                "-- Compressed as the inbox compresses them (lz4 where PostgreSQL has it).
                 DO $$ BEGIN SET default_toast_compression = lz4; EXCEPTION WHEN invalid_parameter_value THEN END $$;
                 CREATE TABLE public.drain_events AS
                   SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery,
                          payload
                     FROM pg_temp.dialpad_sample_events({calls}, 6612345678900000, 0.42, true);
                 CREATE INDEX ON public.drain_events (delivery);
                 ANALYZE public.drain_events;"
            ),
        );
        if package.is_none() {
            // The set-based write-only reference (scripts/bench_reference.sql), for this build.
            exec(&mut c, REFERENCE_SQL);
        }
        let events = count(&mut c, "SELECT count(*) FROM public.drain_events");
        Build { name: name.into(), _install: install, cluster, c, events }
    }

    /// Empties the inbox and the calls and loads the events pending, in delivery order.
    fn load(&mut self) {
        exec(&mut self.c, TRUNCATE_SQL);
        exec(
            &mut self.c,
            "INSERT INTO dialpad.webhook_events (payload) SELECT payload FROM public.drain_events ORDER BY delivery",
        );
        exec(&mut self.c, "VACUUM ANALYZE dialpad.webhook_events");
        exec(&mut self.c, "VACUUM ANALYZE dialpad.calls");
        exec(&mut self.c, "CHECKPOINT");
    }

    fn set_enabled(&mut self, on: bool) {
        set_worker_enabled(&mut self.c, on);
    }

    /// Events per second of the worker draining the loaded backlog, timed from outside: from
    /// the reload that enables it to the first poll that finds nothing pending.
    fn worker_rate(&mut self) -> f64 {
        self.set_enabled(false);
        std::thread::sleep(Duration::from_millis(300));
        self.load();
        let t = Instant::now();
        self.set_enabled(true);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let pending: bool = self.c.query_one(PENDING_SQL, &[]).unwrap().get(0);
            if !pending {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(900), "{}: the worker's drain took too long", self.name);
        }
        let rate = self.events as f64 / t.elapsed().as_secs_f64();
        self.set_enabled(false);
        rate
    }

    /// Events per second of `dialpad.process_events()` (its default batch, the worker's)
    /// called in a loop from this session, one transaction each, the worker off.
    fn function_rate(&mut self) -> f64 {
        self.sql_rate("dialpad.process_events()")
    }

    /// Events per second of the set-based write-only reference (the same claim, the newest
    /// event of each call upserted into dialpad.calls, no rules, no sanitizing), 500 events
    /// a statement as the worker's batches, called in a loop, the worker off.
    fn reference_rate(&mut self) -> f64 {
        self.sql_rate("bench.process_events_ceiling(500)")
    }

    fn sql_rate(&mut self, call: &str) -> f64 {
        self.set_enabled(false);
        std::thread::sleep(Duration::from_millis(300));
        self.load();
        let sql = format!("SELECT {call}");
        let t = Instant::now();
        while self.c.query_one(&sql, &[]).unwrap().get::<_, i32>(0) > 0 {}
        let rate = self.events as f64 / t.elapsed().as_secs_f64();
        let pending: bool = self.c.query_one(PENDING_SQL, &[]).unwrap().get(0);
        assert!(!pending, "{}: {call} left events pending", self.name);
        rate
    }
}

/// The builds measured beside this one: BENCH_DRAIN_PACKAGES=name=dir,...
fn extra_packages() -> Vec<(String, PathBuf)> {
    std::env::var("BENCH_DRAIN_PACKAGES")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (name, dir) = s.split_once('=').expect("BENCH_DRAIN_PACKAGES: name=dir,...");
            (name.trim().to_string(), PathBuf::from(dir.trim()))
        })
        .collect()
}

/// The drain figure: for every build, the worker's and process_events()'s rates, `runs`
/// times each, alternating, on its own default-configuration cluster.
pub(crate) fn drain_bench(report: &mut Report, runs: usize) {
    let calls = env_usize("BENCH_DRAIN_CALLS", 20_000);
    let mut builds: Vec<(String, Option<PathBuf>)> = Vec::new();
    if std::env::var("BENCH_DRAIN_THIS").as_deref() != Ok("0") {
        builds.push(("this build".into(), None));
    }
    let release = std::env::var("BENCH_DRAIN_RELEASE_PACKAGE").ok().map(PathBuf::from);
    if let Some(p) = &release {
        builds.push(("0.1.0".into(), Some(p.clone())));
    }
    let last = last_release();
    if let Some((version, dir)) = &last {
        builds.push((version.clone(), Some(dir.clone())));
    }
    builds.extend(extra_packages().into_iter().map(|(n, p)| (n, Some(p))));
    // One cluster at a time (two idle clusters would only share the machine's memory), each
    // build measured `runs` times; the builds in turn, so that a slow spell of the machine
    // touches all of them.
    let mut worker: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    let mut function: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    let mut reference = Vec::new();
    let mut events = 0;
    for round in 0..runs {
        for (i, (name, package)) in builds.iter().enumerate() {
            let mut b = Build::start(name, package.as_deref(), calls);
            events = b.events;
            let w = b.worker_rate();
            let f = b.function_rate();
            println!("drain round {round}: {name:<12} worker {w:>8.0} events/s   process_events() {f:>8.0} events/s   ({:.2}×)", w / f);
            if package.is_none() {
                let r = b.reference_rate();
                println!("drain round {round}: {name:<12} set-based write-only reference {r:>8.0} events/s   (worker {:.2}×)", w / r);
                reference.push(r);
            }
            worker[i].push(w);
            function[i].push(f);
            if std::env::var("BENCH_DRAIN_DEBUG").as_deref() == Ok("1") {
                let log = b.cluster.dir.join("server.log");
                let keep = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join(format!("drain-{}-{round}.log", name.replace(' ', "-")));
                let _ = std::fs::copy(&log, &keep);
            }
        }
    }
    let w: Vec<f64> = worker.into_iter().map(median).collect();
    let f: Vec<f64> = function.into_iter().map(median).collect();
    let this = builds.iter().position(|(_, p)| p.is_none());
    let old = builds.iter().position(|(n, _)| n == "0.1.0");
    for (i, (name, _)) in builds.iter().enumerate() {
        let label = if Some(i) == this { String::new() } else { format!(" ({name})") };
        report.add(
            &format!("default config: 1 worker drain{label} vs process_events()"),
            eps(w[i]),
            format!("process_events() {}", eps(f[i])),
            format!("{:.2}×", w[i] / f[i]),
            if Some(i) == this { "≥ 1.0×" } else { "" },
            (Some(i) == this).then_some(w[i] / f[i] >= 1.0),
        );
    }
    if let (Some(t), false) = (this, reference.is_empty()) {
        let r = median(reference);
        report.add(
            "default config: 1 worker drain vs the set-based write-only reference",
            eps(w[t]),
            format!("reference {}", eps(r)),
            format!("{:.2}×", w[t] / r),
            "≥ 1.2×",
            Some(w[t] / r >= 1.2),
        );
    }
    let last_at = last.as_ref().and_then(|(v, _)| builds.iter().position(|(n, _)| n == v));
    if let (Some(t), Some(l), Some((version, _))) = (this, last_at, &last) {
        report.add(
            &format!("default config: 1 worker drain vs the last release's worker ({version})"),
            eps(w[t]),
            format!("{version} worker {}", eps(w[l])),
            format!("{:.2}×", w[t] / w[l]),
            "≥ 0.95×",
            Some(w[t] / w[l] >= 0.95),
        );
    }
    if let (Some(t), Some(o)) = (this, old) {
        report.add(
            "default config: 1 worker drain vs the 0.1.0 worker",
            eps(w[t]),
            format!("0.1.0 worker {}", eps(w[o])),
            format!("{:.2}×", w[t] / w[o]),
            "≥ 0.95×",
            Some(w[t] / w[o] >= 0.95),
        );
    }
    report.notes.push(format!(
        "Drain on a default-configuration cluster (shared_buffers 128 MB, autovacuum on, fsync on; only \
         shared_preload_libraries, dialpad.workers = 1): {events} events of {calls} calls loaded pending, then drained by \
         one worker (timed from outside, from enabling it to nothing pending) or by dialpad.process_events() in a loop \
         from a session; for this build also by the set-based write-only reference of scripts/bench_reference.sql \
         (the same claim, the newest event of each call upserted, no rules, no sanitizing; 500 events a statement); \
         each build on a fresh cluster; medians of {runs} runs."
    ));
}
