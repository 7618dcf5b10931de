//! pg_dialpad on Citus (BENCH_ONLY=citus), with the CPU accounting it reports figures in.

use super::*;

/// CPU seconds (user + system) a process has used so far (/proc/<pid>/stat, clock ticks).
pub(crate) fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the ")".
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc_sysconf_clk_tck() };
    (ticks(11) + ticks(12)) / hz
}

unsafe extern "C" {
    fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK); _SC_CLK_TCK is 2 on Linux).
unsafe fn libc_sysconf_clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { sysconf(2) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// CPU seconds used by a whole server: every live process of its postmaster (backends,
/// background workers, auxiliary processes) and those that have exited (the postmaster's
/// cutime and cstime).
pub(crate) fn server_cpu(cluster: &Cluster) -> f64 {
    let pid: i32 = std::fs::read_to_string(cluster.data().join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    let fields = |p: i32| -> Vec<String> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc_sysconf_clk_tck() };
    let num = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let own = fields(pid);
    // utime, stime, cutime, cstime: fields 14 to 17 of stat(5), 11 to 14 after the ")".
    let mut ticks = num(&own, 11) + num(&own, 12) + num(&own, 13) + num(&own, 14);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let f = fields(child);
        // ppid is field 4: 1 after the ")".
        if num(&f, 1) as i32 == pid {
            ticks += num(&f, 11) + num(&f, 12);
        }
    }
    ticks / hz
}

pub(crate) fn worker_cpu(c: &mut Client) -> f64 {
    worker_pids(c).into_iter().map(cpu_seconds).sum()
}

/// The one-node worker on `n` loaded events: (events/s, events per CPU-second of the worker).
/// The one-node worker on `n` loaded events: (events/s, events per CPU-second of the worker,
/// events per CPU-second of the whole server).
fn one_node_run(cluster: &Cluster, c: &mut Client, n: usize) -> (f64, f64, f64) {
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    load_events(c, n);
    let (cpu, server) = (worker_cpu(c), server_cpu(cluster));
    let rate = drain_loaded(c, n);
    (rate, n as f64 / (worker_cpu(c) - cpu), n as f64 / (server_cpu(cluster) - server))
}

/// One drain of `n` events on the Citus cluster: per worker node (events, events/s, events
/// per CPU-second of its worker), the rate of both together, and the events per CPU-second
/// of all three servers.
fn citus_run(citus: &Citus, c: &mut Client, n: usize) -> (Vec<(i64, f64, f64)>, f64, f64) {
    let mut nodes: Vec<Client> = citus.workers.iter().map(|w| w.connect()).collect();
    for w in nodes.iter_mut() {
        set_worker_enabled(w, false);
    }
    std::thread::sleep(Duration::from_millis(300));
    exec(c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions");
    exec(
        c,
        &format!(
            "INSERT INTO dialpad.webhook_events (payload) SELECT payload FROM public.bench_events ORDER BY delivery LIMIT {n}"
        ),
    );
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "VACUUM ANALYZE dialpad.calls");
    let local = "SELECT coalesce(sum(events_handled), 0)::int8 FROM dialpad.worker_stats WHERE node = 'local'";
    let before: Vec<(i64, f64)> = nodes
        .iter_mut()
        .map(|w| {
            exec(w, "CHECKPOINT");
            (count(w, local), worker_cpu(w))
        })
        .collect();
    let all_cpu = || -> f64 { citus.nodes().map(server_cpu).sum() };
    let cluster_cpu = all_cpu();
    let start: f64 = c.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[]).unwrap().get(0);
    for w in nodes.iter_mut() {
        set_worker_enabled(w, true);
    }
    let t = Instant::now();
    // Every event handled, as the nodes count them (each batch is counted after its commit).
    loop {
        let handled: i64 = nodes.iter_mut().zip(&before).map(|(w, (h0, _))| count(w, local) - h0).sum();
        if handled >= n as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.elapsed() < Duration::from_secs(600), "drain took too long");
    }
    let cluster_cpu = all_cpu() - cluster_cpu;
    assert_eq!(count(c, "SELECT pending FROM dialpad.queue_stats"), 0);
    let mut out = Vec::new();
    let mut last = start;
    for (w, (handled0, cpu0)) in nodes.iter_mut().zip(before) {
        let handled = count(w, local) - handled0;
        let done: f64 = w
            .query_one(
                "SELECT extract(epoch FROM max(last_batch_at))::float8 FROM dialpad.worker_stats WHERE node = 'local'",
                &[],
            )
            .unwrap()
            .get(0);
        last = last.max(done);
        out.push((handled, handled as f64 / (done - start), handled as f64 / (worker_cpu(w) - cpu0)));
    }
    (out, n as f64 / (last - start), n as f64 / cluster_cpu)
}

/// pg_dialpad on Citus (BENCH_ONLY=citus): the events per CPU-second of a worker node's
/// pg_dialpad worker processing the shards it holds, next to the one-node worker on the same
/// events in the same run; the drain rate of each of two worker nodes and of both; and the
/// one-node worker of this build next to the build before Citus support (no Citus-only cost
/// on one node).
pub(super) fn citus_bench(
    cluster: &Cluster,
    c: &mut Client,
    report: &mut Report,
    runs: usize,
    n_events: usize,
    calls: usize,
) {
    let layout = PgLayout::current();
    if !layout.has_citus() {
        report.notes.push(format!("Citus figures: skipped (Citus is not installed for PostgreSQL {}).", layout.major));
        return;
    }
    let conf = [
        "dialpad.workers = 1",
        "dialpad.enabled = off",
        "dialpad.maintenance_interval = 0",
        "dialpad.poll_interval = 100",
        "shared_buffers = '1GB'",
        "max_wal_size = '20GB'",
        "checkpoint_timeout = '30min'",
        "fsync = on",
    ];
    let citus = Citus::start("bench-citus", 5, &conf);
    let mut coordinator = citus.coordinator.ready();
    exec(&mut coordinator, "SET client_min_messages = warning; SELECT * FROM dialpad.distribute()");
    exec(
        &mut coordinator,
        &format!(
            "SET client_min_messages = warning;
             SET default_toast_compression = lz4;
             CREATE TABLE public.bench_events AS
               SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery,
                      payload
                 FROM pg_temp.dialpad_sample_events({}, 6612345678900000, 0.42, true);",
            calls
        ),
    );
    // The build before Citus support, on one node, beside this one.
    let mut baseline_cluster = baseline_one_node(calls);
    let (mut one_rate, mut one_cpu, mut node_cpu, mut both, mut base_rate) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut one_server, mut all_servers) = (vec![], vec![]);
    let mut node_rates: Vec<Vec<f64>> = vec![vec![], vec![]];
    let mut shares: Vec<i64> = vec![0, 0];
    for _ in 0..runs {
        let (rate, per_cpu, server) = one_node_run(cluster, c, n_events);
        one_rate.push(rate);
        one_cpu.push(per_cpu);
        one_server.push(server);
        if let Some((_, bc, b)) = baseline_cluster.as_mut() {
            base_rate.push(one_node_run(bc, b, n_events).0);
        }
        let (nodes, total, servers) = citus_run(&citus, &mut coordinator, n_events);
        all_servers.push(servers);
        for (i, (handled, rate, per_cpu)) in nodes.into_iter().enumerate() {
            node_rates[i].push(rate);
            node_cpu.push(per_cpu);
            shares[i] = handled;
        }
        both.push(total);
    }
    let figures =
        CitusFigures { one_rate, one_cpu, node_cpu, both, one_server, all_servers, node_rates, shares, base_rate };
    figures.report(report, n_events);
}

/// The build before Citus support (BENCH_BASELINE_PACKAGE), on one node of its own, with the
/// same events; None when no package is given.
fn baseline_one_node(calls: usize) -> Option<(PgInstall, Cluster, Client)> {
    let baseline = std::env::var("BENCH_BASELINE_PACKAGE").ok().map(std::path::PathBuf::from);
    baseline.as_ref().map(|package| {
        let install = PgInstall::copy("bench-baseline");
        install.install_pg_dialpad_from(package);
        let cluster = Cluster::start_with(
            "bench-baseline",
            install.bin(),
            &["dialpad.workers = 1", "dialpad.enabled = off", "dialpad.maintenance_interval = 0", "shared_buffers = '1GB'", "max_wal_size = '20GB'", "fsync = on"],
        );
        let mut b = cluster.ready();
        exec(&mut b, REFERENCE_SQL);
        exec(
            &mut b,
            &format!(
                "SET default_toast_compression = lz4;
                 CREATE TABLE bench.events AS
                   SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery,
                          call_id, kind, seq, payload
                     FROM pg_temp.dialpad_sample_events({}, 6612345678900000, 0.42, true);
                 CREATE INDEX ON bench.events (delivery);",
                calls
            ),
        );
        (install, cluster, b)
    })
}

/// What the Citus rounds measured (one value per round).
struct CitusFigures {
    one_rate: Vec<f64>,
    one_cpu: Vec<f64>,
    node_cpu: Vec<f64>,
    both: Vec<f64>,
    one_server: Vec<f64>,
    all_servers: Vec<f64>,
    node_rates: Vec<Vec<f64>>,
    shares: Vec<i64>,
    base_rate: Vec<f64>,
}

impl CitusFigures {
    /// The figures' medians, as rows of the report.
    fn report(self, report: &mut Report, n_events: usize) {
        let CitusFigures { one_rate, one_cpu, node_cpu, both, one_server, all_servers, node_rates, shares, base_rate } =
            self;
        let (one_rate, one_cpu, node_cpu, both) = (median(one_rate), median(one_cpu), median(node_cpu), median(both));
        let per_cpu = |v: f64| format!("{} per CPU-s", eps(v).trim_end_matches("/s"));
        report.add(
            "Citus: events per CPU-second of a worker node's worker (its shards) vs one node",
            per_cpu(node_cpu),
            format!("one node {}", per_cpu(one_cpu)),
            format!("{:.2}×", node_cpu / one_cpu),
            "≥ 0.9×",
            Some(node_cpu / one_cpu >= 0.9),
        );
        let (one_server, all_servers) = (median(one_server), median(all_servers));
        report.add(
            "Citus: events per CPU-second of all three servers vs the one-node server",
            per_cpu(all_servers),
            format!("one node {}", per_cpu(one_server)),
            format!("{:.2}×", all_servers / one_server),
            "",
            None,
        );
        for (i, rates) in node_rates.into_iter().enumerate() {
            let r = median(rates);
            report.add(
                &format!("Citus: drain rate of worker node {} ({} events)", i + 1, shares[i]),
                eps(r),
                format!("one node {}", eps(one_rate)),
                format!("{:.2}×", r / one_rate),
                "",
                None,
            );
        }
        report.add(
            "Citus: drain rate of both worker nodes",
            eps(both),
            format!("one node {}", eps(one_rate)),
            format!("{:.2}×", both / one_rate),
            "",
            None,
        );
        report.notes.push(format!(
            "Citus: a coordinator and two worker nodes on this machine, one pg_dialpad worker each, {n_events} events \
             delivered through the coordinator then drained; all three servers share this machine's {} cores, so the total \
             cannot show the speed-up of nodes on their own machines.",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        ));
        if !base_rate.is_empty() {
            let b = median(base_rate);
            report.add(
                &format!(
                    "one node: worker drain rate, this build vs before Citus support ({})",
                    std::env::var("BENCH_BASELINE_COMMIT").unwrap_or_default()
                ),
                eps(one_rate),
                format!("before {}", eps(b)),
                format!("{:.2}×", one_rate / b),
                "≥ 0.95×",
                Some(one_rate / b >= 0.95),
            );
        }
    }
}
