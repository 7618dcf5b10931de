//! Monitoring functions over shared memory, behind the dialpad.worker_stats and
//! dialpad.queue_stats views, and dialpad.worker_status() for "is it running, and if not why".

use crate::{gucs, pg::shmem, pipeline};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;

fn ts(v: i64) -> Option<TimestampWithTimeZone> {
    (v != 0).then(|| TimestampWithTimeZone::try_from(v).ok()).flatten()
}

/// Events handled by any processor in the last 60 seconds (NULL without shared memory).
#[pg_extern(volatile, parallel_safe)]
fn processed_last_minute() -> Option<i64> {
    let here = shmem::get().map(|s| s.processed_last_minute() as i64);
    if !crate::citus::loaded() {
        return here;
    }
    // A Citus coordinator: its worker nodes process the shards.
    let nodes = Spi::get_one::<i64>("SELECT dialpad.worker_node_processed_last_minute()").ok().flatten();
    match (here, nodes) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// Wakes the workers when the current transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn wake_workers() {
    shmem::wake_workers_at_commit();
}

// The row type is written out as pgrx reads it to generate the SQL signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn worker_stats() -> TableIterator<
    'static,
    (
        name!(worker, i32),
        name!(pid, Option<i32>),
        name!(events_handled, i64),
        name!(batches, i64),
        name!(errors, i64),
        name!(dead_lettered, i64),
        name!(rejected_transitions, i64),
        name!(last_batch_at, Option<TimestampWithTimeZone>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(settings_read_at, Option<TimestampWithTimeZone>),
    ),
> {
    let rows: Vec<_> = match shmem::get() {
        None => Vec::new(),
        Some(s) => s
            .slots
            .iter()
            .enumerate()
            .take(gucs::workers().max(1))
            .map(|(i, slot)| {
                let pid = slot.pid.load(Ordering::Acquire);
                (
                    i as i32,
                    (pid != 0).then_some(pid),
                    slot.events.load(Ordering::Relaxed) as i64,
                    slot.batches.load(Ordering::Relaxed) as i64,
                    slot.errors.load(Ordering::Relaxed) as i64,
                    slot.dead.load(Ordering::Relaxed) as i64,
                    slot.rejected.load(Ordering::Relaxed) as i64,
                    ts(slot.last_batch_at.load(Ordering::Relaxed)),
                    ts(slot.started_at.load(Ordering::Relaxed)),
                    ts(slot.settings_read_at.load(Ordering::Relaxed)),
                )
            })
            .collect(),
    };
    TableIterator::new(rows)
}

/// What worker `i` does, and what to do about it (None when nothing is to be done).
fn worker_detail(
    i: usize,
    running: bool,
    state: shmem::WorkerState,
    database: &str,
    here: &str,
) -> (String, Option<String>) {
    let detail = if !running {
        format!("worker {i} is not running")
    } else {
        match state {
            shmem::WorkerState::Disabled => format!("worker {i} is running but paused (dialpad.enabled = off)"),
            shmem::WorkerState::Processing => format!("worker {i} is processing events in database \"{database}\""),
            shmem::WorkerState::NoExtension => {
                format!("worker {i} is waiting: extension pg_dialpad is not installed in database \"{database}\"")
            }
            shmem::WorkerState::VersionMismatch => format!(
                "worker {i} writes nothing: its library is version {} but the extension's SQL objects are another version",
                crate::version::LIBRARY
            ),
            shmem::WorkerState::Paused => format!("worker {i} is paused while DROP EXTENSION pg_dialpad runs"),
        }
    };
    let hint = if !running {
        Some(format!(
            "The launcher starts it within a second once database \"{database}\" exists; check the server log and max_worker_processes."
        ))
    } else if state == shmem::WorkerState::VersionMismatch {
        Some(format!("Run ALTER EXTENSION pg_dialpad UPDATE; in database \"{database}\" (see README, \"Upgrading\")."))
    } else if state == shmem::WorkerState::NoExtension {
        Some(format!("Run CREATE EXTENSION pg_dialpad; in database \"{database}\"."))
    } else if here != database {
        Some(format!(
            "The workers process database \"{database}\", not this one (\"{here}\"): set dialpad.database and restart."
        ))
    } else {
        None
    };
    (detail, hint)
}

/// One row of dialpad.worker_status().
type StatusRow = (String, Option<i32>, bool, String, Option<String>);

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(component, String),
        name!(pid, Option<i32>),
        name!(running, bool),
        name!(detail, String),
        name!(hint, Option<String>),
    ),
> {
    let mut rows = local_worker_status();
    if crate::citus::loaded() {
        rows.extend(worker_node_status());
    }
    TableIterator::new(rows)
}

/// The rows of the worker nodes of a Citus cluster, on its coordinator (none elsewhere):
/// each component named with its node ("worker 0 on 10.0.0.2:5432").
fn worker_node_status() -> Vec<StatusRow> {
    let rows = Spi::connect(|client| -> Result<Vec<StatusRow>, pgrx::spi::Error> {
        let mut rows = Vec::new();
        for r in client.select(
            "SELECT node, component, pid, running, detail, hint FROM dialpad.worker_node_status()",
            None,
            &[],
        )? {
            let node: String = r.get(1)?.unwrap_or_default();
            let component: String = r.get(2)?.unwrap_or_default();
            rows.push((
                format!("{component} on {node}"),
                r.get(3)?,
                r.get(4)?.unwrap_or(false),
                r.get(5)?.unwrap_or_default(),
                r.get(6)?,
            ));
        }
        Ok(rows)
    });
    rows.unwrap_or_else(|e| {
        vec![(
            "nodes".to_string(),
            None,
            false,
            format!("could not ask the worker nodes: {e}"),
            Some("Run SELECT * FROM dialpad.worker_node_status() to see why.".to_string()),
        )]
    })
}

/// The launcher and workers of this server.
fn local_worker_status() -> Vec<StatusRow> {
    let mut rows = Vec::new();
    let Some(s) = shmem::get() else {
        rows.push((
            "worker".to_string(),
            None,
            false,
            "pg_dialpad is not in shared_preload_libraries, so no background worker runs.".to_string(),
            Some("Add pg_dialpad to shared_preload_libraries in postgresql.conf and restart the server; until then, call dialpad.process_events() (e.g. from pg_cron).".to_string()),
        ));
        return rows;
    };
    let n = gucs::workers();
    if n == 0 {
        rows.push((
            "worker".to_string(),
            None,
            false,
            "dialpad.workers is 0.".to_string(),
            Some("Set dialpad.workers to 1 or more and restart the server.".to_string()),
        ));
        return rows;
    }
    let database = gucs::database();
    let launcher = s.launcher_pid.load(Ordering::Acquire);
    rows.push((
        "launcher".to_string(),
        (launcher != 0).then_some(launcher),
        launcher != 0,
        format!("supervises {n} worker(s) for database \"{database}\""),
        (launcher == 0).then(|| "The postmaster restarts the launcher within a second; see the server log if it stays down (max_worker_processes?).".to_string()),
    ));
    let here = crate::pg::backend::database_name(crate::pg::my_database()).unwrap_or_default();
    for (i, slot) in s.slots.iter().enumerate().take(n) {
        let pid = slot.pid.load(Ordering::Acquire);
        let (detail, hint) = worker_detail(i, pid != 0, slot.state(), &database, &here);
        rows.push((format!("worker {i}"), (pid != 0).then_some(pid), pid != 0, detail, hint));
    }
    rows
}

/// Deliveries accepted, duplicate and rejected in this database: those flushed to
/// dialpad.ingest_counters plus those still in shared memory.
#[pg_extern(volatile, parallel_safe)]
fn ingest_stats(
) -> TableIterator<'static, (name!(accepted, Option<i64>), name!(duplicates, Option<i64>), name!(rejected, Option<i64>))>
{
    let mut totals = [0i64; 3];
    let mut add = |outcome: &str, n: i64| {
        let i = match outcome {
            "accepted" => 0,
            "duplicate" => 1,
            _ => 2,
        };
        totals[i] += n;
    };
    for (_, outcome, _, n) in pipeline::counters::unflushed() {
        add(&outcome, n);
    }
    // Before ALTER EXTENSION ... UPDATE to 0.3.0 there is no table: memory only.
    if crate::pg::dialpad_relation(c"ingest_counters") != pg_sys::InvalidOid {
        let flushed = Spi::connect(|client| -> Result<Vec<(String, i64)>, pgrx::spi::Error> {
            let mut rows = Vec::new();
            for r in client.select(
                "SELECT outcome, pg_catalog.sum(count)::pg_catalog.int8 FROM dialpad.ingest_counters GROUP BY outcome",
                None,
                &[],
            )? {
                rows.push((r.get(1)?.unwrap_or_default(), r.get(2)?.unwrap_or_default()));
            }
            Ok(rows)
        });
        match flushed {
            Ok(rows) => rows.into_iter().for_each(|(o, n)| add(&o, n)),
            Err(e) => crate::pg::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not read dialpad.ingest_counters: {e}"),
                None,
                None,
            ),
        }
    }
    TableIterator::new(vec![(Some(totals[0]), Some(totals[1]), Some(totals[2]))])
}

/// The ingest counts of this database not yet flushed to dialpad.ingest_counters.
#[pg_extern(volatile, parallel_safe)]
fn ingest_counters_unflushed(
) -> TableIterator<'static, (name!(source, String), name!(outcome, String), name!(reason, String), name!(count, i64))> {
    let rows = pipeline::counters::unflushed();
    // Under row-level security on dialpad.ingest_counters (docs/security.md), the caller sees
    // the unflushed counts of the sources it may see there, and no other company's.
    const RLS_SQL: &str = "SELECT c.relrowsecurity FROM pg_catalog.pg_class c
                            WHERE c.oid OPERATOR(pg_catalog.=) 'dialpad.ingest_counters'::pg_catalog.regclass";
    const VISIBLE_SQL: &str = "SELECT DISTINCT source FROM dialpad.ingest_counters";
    if !Spi::get_one::<bool>(RLS_SQL).ok().flatten().unwrap_or(false) {
        return TableIterator::new(rows);
    }
    let visible: std::collections::HashSet<String> =
        Spi::connect(|c| c.select(VISIBLE_SQL, None, &[])?.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>())
            .map(|v| v.into_iter().flatten().collect())
            .unwrap_or_default();
    TableIterator::new(rows.into_iter().filter(move |r| visible.contains(&r.0)).collect::<Vec<_>>())
}

/// Writes this database's ingest counts to dialpad.ingest_counters now (the first worker
/// does it every few seconds); returns how many deliveries it wrote.
#[pg_extern(volatile, parallel_unsafe)]
fn flush_ingest_counters() -> i64 {
    use pipeline::counters::NotFlushed;
    match pipeline::counters::flush() {
        Ok(n) => n,
        Err(NotFlushed::Busy | NotFlushed::NoSharedMemory) => 0,
        Err(NotFlushed::Recovery) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot flush the ingest counters on a hot standby".into(),
            None,
            Some("A standby counts its own deliveries in memory only (dialpad.ingest_counters_unflushed())."),
        ),
        Err(NotFlushed::NoTable) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "dialpad.ingest_counters does not exist".into(),
            None,
            Some("Run ALTER EXTENSION pg_dialpad UPDATE."),
        ),
    }
}
