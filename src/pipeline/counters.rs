//! Flushes the ingest counters of shared memory (pg/counters.rs) into
//! `dialpad.ingest_counters`: the first worker every few seconds and when it stops, or a DBA
//! with `dialpad.flush_ingest_counters()`. What a flush writes is taken out of shared
//! memory only when its transaction commits, so each delivery is counted once.

use crate::pg::counters::{self, Counted};
use pgrx::prelude::*;
use std::collections::BTreeMap;

const UPSERT_SQL: &str = "\
INSERT INTO dialpad.ingest_counters AS c (source, outcome, reason, count)
SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]),
                        pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.int8[]))
ON CONFLICT (source, outcome, reason) DO UPDATE
   SET count = c.count OPERATOR(pg_catalog.+) EXCLUDED.count, updated_at = pg_catalog.now()";

/// Why nothing was flushed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotFlushed {
    /// No shared memory (pg_dialpad not in shared_preload_libraries): nothing is counted.
    NoSharedMemory,
    /// A hot standby: nothing may be written; the counts stay in its memory.
    Recovery,
    /// Another backend is flushing.
    Busy,
    /// The extension's SQL is not 0.3.0 or later (no dialpad.ingest_counters yet).
    NoTable,
}

/// Writes this database's counts to dialpad.ingest_counters in the current transaction;
/// returns the deliveries written (taken out of shared memory when the transaction commits).
pub(crate) fn flush() -> Result<i64, NotFlushed> {
    let shared = crate::pg::shmem::get().ok_or(NotFlushed::NoSharedMemory)?;
    if crate::pg::backend::in_recovery() {
        return Err(NotFlushed::Recovery);
    }
    if crate::pg::dialpad_relation(c"ingest_counters") == pg_sys::InvalidOid {
        return Err(NotFlushed::NoTable);
    }
    if !shared.ingest.begin_flush() {
        return Err(NotFlushed::Busy);
    }
    let counted = shared.ingest.snapshot(crate::pg::my_database().into());
    if counted.is_empty() {
        return Ok(0);
    }
    // One row per key: a key can sit in two slots (see pg/counters.rs record), and one
    // INSERT ... ON CONFLICT may not update a row twice.
    let mut rows: BTreeMap<(String, &str, &str), i64> = BTreeMap::new();
    for c in &counted {
        let (outcome, reason) = c.outcome.labels();
        *rows.entry((c.source.clone(), outcome, reason)).or_default() += c.count as i64;
    }
    let total = rows.values().sum();
    let (mut sources, mut outcomes, mut reasons, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((s, o, r), n) in rows {
        sources.push(s);
        outcomes.push(o.to_string());
        reasons.push(r.to_string());
        counts.push(n);
    }
    let written = Spi::connect_mut(|client| {
        client.update(UPSERT_SQL, None, &[sources.into(), outcomes.into(), reasons.into(), counts.into()]).map(|_| ())
    });
    if let Err(e) = written {
        crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not write dialpad.ingest_counters: {e}"),
            None,
            None,
        );
    }
    counters::flushed_at_commit(counted);
    Ok(total)
}

/// The counts not flushed yet in this database: (source, outcome, reason, count).
pub(crate) fn unflushed() -> Vec<(String, String, String, i64)> {
    let Some(shared) = crate::pg::shmem::get() else { return Vec::new() };
    shared
        .ingest
        .snapshot(crate::pg::my_database().into())
        .into_iter()
        .map(|Counted { source, outcome, count, .. }| {
            let (o, r) = outcome.labels();
            (source, o.to_string(), r.to_string(), count as i64)
        })
        .collect()
}
