//! Re-deriving calls after a rule change (issue 26, part 3), on a default-configuration
//! cluster: how many calls one worker re-derives per second from their history in the audit
//! log, next to how many it processed per second when their events first arrived (the same
//! calls, the same run); and what a running re-derivation costs a drain of new events beside
//! it (the drain alone as the reference).
//!
//! BENCH_ONLY=rederive runs only this. BENCH_REDERIVE_CALLS (default 20000: 84,000 events).

use super::*;

/// The first set of calls; the second (the concurrent drain) starts at `SECOND`.
const FIRST: i64 = 6_612_345_678_900_000;
const SECOND: i64 = 6_612_345_679_900_000;

const PENDING_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL)";

/// Seconds until `sql` (a boolean) is true, polled every 20 ms.
fn until(c: &mut Client, sql: &str, what: &str) -> f64 {
    let t = Instant::now();
    loop {
        if c.query_one(sql, &[]).unwrap().get::<_, bool>(0) {
            return t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(900), "{what} took too long");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load(c: &mut Client, table: &str) {
    exec(
        c,
        &format!("INSERT INTO dialpad.webhook_events (payload) SELECT payload FROM public.{table} ORDER BY delivery"),
    );
    exec(c, "VACUUM ANALYZE dialpad.webhook_events");
    exec(c, "CHECKPOINT");
}

/// Seconds the worker takes to drain what is pending, from enabling it.
fn drain(c: &mut Client) -> f64 {
    set_worker_enabled(c, true);
    let t = until(c, &format!("SELECT NOT ({PENDING_SQL})"), "the drain");
    set_worker_enabled(c, false);
    std::thread::sleep(Duration::from_millis(300));
    t
}

/// The second set of calls gone again, so that it can be drained anew.
fn forget_second(c: &mut Client) {
    exec(
        c,
        &format!(
            "DELETE FROM dialpad.webhook_events WHERE call_id >= {SECOND};
             DELETE FROM dialpad.calls WHERE dialpad_call_id >= {SECOND};
             VACUUM ANALYZE dialpad.webhook_events;
             VACUUM ANALYZE dialpad.calls;"
        ),
    );
}

pub(crate) fn rederive_bench(report: &mut Report, runs: usize) {
    let calls = env_usize("BENCH_REDERIVE_CALLS", 20_000);
    let cluster = Cluster::start("rederive", &["fsync = on", "dialpad.workers = 1", "dialpad.enabled = off"]);
    let mut c = cluster.ready();
    exec(
        &mut c,
        &format!(
            "DO $$ BEGIN SET default_toast_compression = lz4; EXCEPTION WHEN invalid_parameter_value THEN END $$;
             CREATE TABLE public.first AS
               SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery, payload
                 FROM pg_temp.dialpad_sample_events({calls}, {FIRST}, 0.42, true);
             CREATE TABLE public.second AS
               SELECT row_number() OVER (ORDER BY (payload->>'event_timestamp')::bigint + (hashint8(call_id * 10 + seq) % 3000)) AS delivery, payload
                 FROM pg_temp.dialpad_sample_events({calls}, {SECOND}, 0.42, true);
             ANALYZE public.first; ANALYZE public.second;"
        ),
    );
    let events = count(&mut c, "SELECT count(*) FROM public.first");
    let (mut process, mut rederive, mut alone, mut beside) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        exec(&mut c, "TRUNCATE dialpad.webhook_events, dialpad.calls, dialpad.rejected_transitions, dialpad.rederive_jobs CASCADE");
        load(&mut c, "first");
        let t_process = drain(&mut c);
        // Every call of the first set, re-derived by the worker with nothing else to do.
        let job = count(&mut c, "SELECT dialpad.rederive_calls('-infinity')");
        set_worker_enabled(&mut c, true);
        let t_rederive = until(
            &mut c,
            &format!("SELECT finished_at IS NOT NULL FROM dialpad.rederive_progress WHERE job_id = {job}"),
            "the re-derivation",
        );
        set_worker_enabled(&mut c, false);
        std::thread::sleep(Duration::from_millis(300));
        let done = count(&mut c, &format!("SELECT rederived FROM dialpad.rederive_progress WHERE job_id = {job}"));
        assert_eq!(done as usize, calls, "every call re-derived");
        // The second set drained alone, then again while the first is being re-derived.
        load(&mut c, "second");
        let t_alone = drain(&mut c);
        forget_second(&mut c);
        load(&mut c, "second");
        let job = count(&mut c, &format!("SELECT dialpad.rederive_calls('-infinity', call_ids => (SELECT array_agg(dialpad_call_id) FROM dialpad.calls WHERE dialpad_call_id < {SECOND}))"));
        let t_beside = drain(&mut c);
        set_worker_enabled(&mut c, true);
        until(
            &mut c,
            &format!("SELECT finished_at IS NOT NULL FROM dialpad.rederive_progress WHERE job_id = {job}"),
            "the re-derivation",
        );
        set_worker_enabled(&mut c, false);
        forget_second(&mut c);
        println!(
            "rederive round {round}: processed {:.0} calls/s, re-derived {:.0} calls/s; drain alone {:.0} events/s, beside a re-derivation {:.0} events/s",
            calls as f64 / t_process,
            calls as f64 / t_rederive,
            events as f64 / t_alone,
            events as f64 / t_beside
        );
        process.push(calls as f64 / t_process);
        rederive.push(calls as f64 / t_rederive);
        alone.push(events as f64 / t_alone);
        beside.push(events as f64 / t_beside);
    }
    let (p, r, a, b) = (median(process), median(rederive), median(alone), median(beside));
    report.add(
        "default config: calls re-derived per second (1 worker)",
        format!("{r:.0} calls/s"),
        format!("first processing {p:.0} calls/s"),
        format!("{:.2}×", r / p),
        "",
        None,
    );
    report.add(
        "default config: drain beside a re-derivation vs alone",
        eps(b),
        format!("alone {}", eps(a)),
        format!("{:.2}×", b / a),
        "≥ 0.85×",
        Some(b / a >= 0.85),
    );
    report.notes.push(format!(
        "Re-derivation on a default-configuration cluster (one worker): {calls} calls ({events} events) processed, then \
         every one re-derived from the audit log by dialpad.rederive_calls() (timed from enabling the worker to the job's \
         finished_at); then {calls} other calls drained alone, and again while the first {calls} are re-derived (one slice \
         of 200 calls a second while the backlog drains). Medians of {runs} runs."
    ));
}
