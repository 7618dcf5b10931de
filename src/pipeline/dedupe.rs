//! Finding the first delivery of a redelivered event, for the insert trigger on the inbox.
//!
//! Dialpad delivers at least once: retries, and two identical subscriptions deliver every
//! event twice. Every delivery is kept in the audit log; a redelivery is stored marked
//! `duplicate_of` its first delivery (and as handled, so it is never claimed). There is no
//! unique index to lean on — a plain INSERT or COPY must succeed for every row, and a unique
//! index on a time-partitioned inbox would have to include the partition key — so the
//! trigger looks the key up with the latest snapshot (as PostgreSQL's foreign-key checks
//! do), which sees every committed delivery whatever the inserter's isolation level.
//! Deliveries of the same event in flight at the same moment cannot see each other; the
//! processor, which holds one call at a time, catches those (see pipeline/batch.rs).

use pgrx::pg_sys;
use std::cell::Cell;
use std::hash::{Hash, Hasher};

/// The advisory lock namespace of de-duplication keys (`objsubid` in pg_locks): 'DQ'.
const KEY_LOCK_NAMESPACE: u16 = 0x4451;

/// Serializes deliveries of one event by `dialpad.ingest_webhook`: waits (as an INSERT
/// into a unique index would) until another transaction delivering the same key ends, so
/// that the lookup then sees its row. One lock-table entry per call, held to the end of the
/// transaction; if the lock table is full, it goes on without (the processor still applies
/// the event once). Plain INSERT and COPY take no such lock: a COPY of a million rows would
/// need a million entries.
pub(crate) fn lock_key(call_id: i64, key: &str) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let hash = h.finish();
    crate::pg::advisory_xact_lock(KEY_LOCK_NAMESPACE, hash ^ call_id as u64, true);
}

/// How far around the new delivery's received_at the insert trigger looks for a first
/// delivery: Dialpad retries a call event within seconds (2, 4 and 8 s apart, DIALPAD.md), and
/// two subscriptions deliver together. The window is bounded on both sides, so that only the
/// one or two partitions it overlaps are searched (the partitions made ahead and the DEFAULT
/// partition are pruned): a delivery costs the same with 30 or 3,000 partitions. A
/// redelivery outside it is still never applied twice: its event is no newer than the call's
/// last one, so the processor reads the call's history and marks it there (pipeline/batch.rs).
pub(crate) const WINDOW_US: i64 = 3600 * 1_000_000;

const FIND_SQL: &std::ffi::CStr = c"SELECT id FROM dialpad.webhook_events
 WHERE call_id OPERATOR(pg_catalog.=) $1 AND dedupe_key OPERATOR(pg_catalog.=) $2 AND duplicate_of IS NULL
   AND received_at OPERATOR(pg_catalog.>=) $3 AND received_at OPERATOR(pg_catalog.<=) $4";

thread_local! {
    /// The lookup's plan, kept for the life of the backend (SPI_keepplan); null until first use.
    static PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// The lookup's cached plan source, and whether it holds a valid generic plan.
///
/// # Safety
/// `plan` is a valid SPI plan made from one statement (FIND_SQL), inside an SPI session.
unsafe fn generic_plan_state(plan: pg_sys::SPIPlanPtr) -> (bool, i32) {
    // SAFETY: the caller's contract; the list holds one CachedPlanSource (one statement),
    // whose generic plan, if any, is a valid CachedPlan while the source is valid.
    unsafe {
        let sources = pgrx::PgList::<pg_sys::CachedPlanSource>::from_pg(pg_sys::SPI_plan_get_plan_sources(plan));
        match sources.get_ptr(0) {
            Some(src) if !src.is_null() => {
                let src = &*src;
                (src.is_valid && !src.gplan.is_null() && (*src.gplan).is_valid, src.generation)
            }
            _ => (false, 0),
        }
    }
}

/// The lookup's plan: kept for the life of the backend, prepared on first use.
///
/// # Safety
/// Inside an SPI session (between SPI_connect and SPI_finish).
unsafe fn kept_plan() -> Option<pg_sys::SPIPlanPtr> {
    let plan = PLAN.with(|p| p.get());
    if !plan.is_null() {
        return Some(plan);
    }
    let mut types = [pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID];
    // SAFETY: the caller's SPI session; a valid statement and argument types. One generic
    // plan (pruned to the window's partitions when it runs): a custom plan per insert would
    // cost more than the insert. SPI_keepplan moves it to TopMemoryContext.
    unsafe {
        let p = pg_sys::SPI_prepare_cursor(
            FIND_SQL.as_ptr(),
            4,
            types.as_mut_ptr(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        );
        if p.is_null() || pg_sys::SPI_keepplan(p) != 0 {
            return None;
        }
        PLAN.with(|c| c.set(p));
        Some(p)
    }
}

/// The smallest id in the first column of the last SPI result.
///
/// # Safety
/// Inside the SPI session that produced the result, before SPI_finish.
unsafe fn min_id_of_result() -> Option<i64> {
    // SAFETY: the caller's contract: SPI_tuptable and SPI_processed describe the result of
    // the last SELECT, whose first column is int8.
    unsafe {
        if pg_sys::SPI_tuptable.is_null() {
            return None;
        }
        let table = &*pg_sys::SPI_tuptable;
        let mut found: Option<i64> = None;
        for i in 0..pg_sys::SPI_processed as usize {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*table.vals.add(i), table.tupdesc, 1, &mut isnull);
            if !isnull {
                let id = d.value() as i64;
                found = Some(found.map_or(id, |f| f.min(id)));
            }
        }
        found
    }
}

/// The id of the first stored delivery of (call_id, dedupe_key), if any is committed (or
/// was stored earlier in this transaction).
pub(crate) fn first_delivery(call_id: i64, key: &str, received_at: pg_sys::TimestampTz) -> Option<i64> {
    // SAFETY: a complete SPI session: connected and finished here on the normal path; on an
    // ERROR, PostgreSQL's (sub)transaction abort cleans up the SPI stack. The plan is kept
    // in TopMemoryContext by SPI_keepplan and is revalidated by the plan cache if the table
    // is dropped and re-created. The text datum is palloc'd in the SPI procedure context
    // and only used within it; the result is copied out as an int8 before SPI_finish.
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            return None;
        }
        let Some(plan) = kept_plan() else {
            pg_sys::SPI_finish();
            return None;
        };
        let text = pg_sys::cstring_to_text_with_len(key.as_ptr() as *const std::ffi::c_char, key.len() as i32);
        let mut values = [
            pg_sys::Datum::from(call_id),
            pg_sys::Datum::from(text),
            pg_sys::Datum::from(received_at.saturating_sub(WINDOW_US)),
            pg_sys::Datum::from(received_at.saturating_add(WINDOW_US)),
        ];
        let nulls = [b' ' as std::ffi::c_char; 4];
        // Every match, not ORDER BY id LIMIT 1: with that, the planner may walk a partition's
        // primary key in id order filtering for the key (a LIMIT 1 favours an ordered scan),
        // which costs a scan of the partition per insert. The matches of one key are a few.
        let mut execute = || {
            pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                0,
            )
        };
        // The generic plan is made without sequential scans: a plan made while a partition
        // was empty (a new day, the DEFAULT partition before a backfill) would otherwise scan
        // that partition for every row a long INSERT or COPY adds to it. The setting costs
        // a GUC nest level, so it is set only when the plan is to be (re)made; if the plan
        // cache remade it during a run without it (an invalidation arriving in between), that
        // plan is thrown away and the next lookup prepares and plans afresh.
        let (ready, generation) = generic_plan_state(plan);
        let rc = if ready {
            let rc = execute();
            if generic_plan_state(plan).1 != generation {
                pg_sys::SPI_freeplan(plan);
                PLAN.with(|c| c.set(std::ptr::null_mut()));
            }
            rc
        } else {
            crate::pg::with_setting(c"enable_seqscan", c"off", execute)
        };
        let found = if rc == pg_sys::SPI_OK_SELECT as i32 { min_id_of_result() } else { None };
        pg_sys::SPI_finish();
        found
    }
}
