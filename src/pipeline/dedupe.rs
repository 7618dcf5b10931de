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
/// delivery: Dialpad retries a call event within seconds (2, 4 and 8 s apart, per ../shared/DIALPAD.md), and
/// two subscriptions deliver together. The window is bounded on both sides, so that only the
/// one or two partitions it overlaps are searched (the partitions made ahead and the DEFAULT
/// partition are pruned): a delivery costs the same with 30 or 3,000 partitions. A
/// redelivery outside it is still never applied twice: its event is no newer than the call's
/// last one, so the processor reads the call's history and marks it there (pipeline/batch.rs).
pub(crate) const WINDOW_US: i64 = 3600 * 1_000_000;

/// The lookup, run on one partition (or on 0.1.0's plain inbox) at a time: a plan on one
/// table has none of the per-execution cost of a plan over the partitioned table (an Append
/// of every partition, pruned at each execution), which was a third of an INSERT's time.
const FIND_SQL: &str = "SELECT id FROM {table}
 WHERE call_id OPERATOR(pg_catalog.=) $1 AND dedupe_key OPERATOR(pg_catalog.=) $2 AND duplicate_of IS NULL
   AND received_at OPERATOR(pg_catalog.>=) $3 AND received_at OPERATOR(pg_catalog.<=) $4";

/// The partitions of the inbox {inbox} (dialpad.webhook_events, or on a Citus node the
/// shard of it the row goes to), their ranges as TimestampTz (MINVALUE and MAXVALUE as the
/// extremes), as of the last relcache invalidation of the partitioned table. The bounds are
/// read as dialpad.partitions reads them.
const PARTITIONS_SQL: &str = "
SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), b.bounds IS NULL,
       CASE b.bounds[1] WHEN 'MINVALUE' THEN '-infinity' ELSE coalesce(b.bounds[1], '-infinity') END::pg_catalog.timestamptz,
       CASE b.bounds[2] WHEN 'MAXVALUE' THEN 'infinity' ELSE coalesce(b.bounds[2], 'infinity') END::pg_catalog.timestamptz
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  LEFT JOIN LATERAL pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
       'FROM \\(''?([^'')]+)''?\\) TO \\(''?([^'')]+)''?\\)') AS b(bounds) ON true
 WHERE i.inhparent OPERATOR(pg_catalog.=) {inbox}::pg_catalog.oid";

/// One table the lookup searches, with its kept plan (null until first used there).
struct Part {
    name: String,
    is_default: bool,
    from: pg_sys::TimestampTz,
    to: pg_sys::TimestampTz,
    plan: pg_sys::SPIPlanPtr,
}

thread_local! {
    /// The inbox's tables, for the inbox of this OID and relcache generation.
    static PARTS: std::cell::RefCell<Option<(pg_sys::Oid, u64, Vec<Part>)>> = const { std::cell::RefCell::new(None) };
}

unsafe extern "C-unwind" {
    /// catalog/partition.c (PostgreSQL 14 on), which pgrx does not bind: the partitioned
    /// table a partition is attached to.
    fn get_partition_parent(relid: pg_sys::Oid, even_if_detached: bool) -> pg_sys::Oid;
}

/// The OID and relkind of the inbox a row of `rel` (the insert trigger's relation) is in:
/// the partitioned table `rel` is a partition of (dialpad.webhook_events, or on a Citus node
/// the shard of it), or `rel` itself (0.1.0's plain inbox).
fn inbox(rel: pg_sys::Oid) -> (pg_sys::Oid, u8) {
    if rel == pg_sys::InvalidOid {
        return (rel, 0);
    }
    // SAFETY: catalog lookups of an existing relation (the trigger's own).
    let rel = unsafe {
        if pg_sys::get_rel_relispartition(rel) {
            get_partition_parent(rel, false)
        } else {
            rel
        }
    };
    // SAFETY: a syscache lookup of an existing relation's kind.
    (rel, unsafe { pg_sys::get_rel_relkind(rel) } as u8)
}

/// Frees the kept plans of a stale list.
fn forget(parts: Vec<Part>) {
    for p in parts {
        if !p.plan.is_null() {
            // SAFETY: a plan kept by SPI_keepplan and no longer referenced anywhere else.
            unsafe { pg_sys::SPI_freeplan(p.plan) };
        }
    }
}

/// The inbox's tables: its partitions, or 0.1.0's plain table (before ALTER EXTENSION).
fn load_parts(inbox: pg_sys::Oid, relkind: u8) -> Result<Vec<Part>, crate::pg::error::Error> {
    let whole = |name: &str| Part {
        name: name.to_string(),
        is_default: false,
        from: i64::MIN,
        to: i64::MAX,
        plan: std::ptr::null_mut(),
    };
    if relkind != pg_sys::RELKIND_PARTITIONED_TABLE {
        return Ok(vec![whole("dialpad.webhook_events")]);
    }
    let sql = PARTITIONS_SQL.replace("{inbox}", &inbox.to_u32().to_string());
    // dialpad.partitions is for the extension's owner and readers: read it as the owner.
    // Read-only SPI (pgrx's client would run it read-write, whose CommandCounterIncrement
    // in the middle of the INSERT would make the statement's own rows visible to it).
    let sql = std::ffi::CString::new(sql).map_err(|_| crate::pg::error::Error::NulInSql)?;
    crate::pg::as_owner_of(inbox, || {
        // SAFETY: a complete SPI session, connected and finished here (an ERROR aborts the
        // (sub)transaction, which cleans up SPI); each value is copied out of the result
        // (text into a String, the others by value) before SPI_finish.
        unsafe {
            let rc = pg_sys::SPI_connect();
            if rc != pg_sys::SPI_OK_CONNECT as i32 {
                return Err(crate::pg::error::Error::SpiConnect(rc));
            }
            // On a Citus node, shards are hidden from pg_class unless asked for.
            let rc = crate::citus::with_shards_visible(|| pg_sys::SPI_execute(sql.as_ptr(), true, 0));
            let mut parts = Vec::new();
            if rc == pg_sys::SPI_OK_SELECT as i32 && !pg_sys::SPI_tuptable.is_null() {
                let table = &*pg_sys::SPI_tuptable;
                for i in 0..pg_sys::SPI_processed as usize {
                    let row = *table.vals.add(i);
                    let value = |col: i32| {
                        let mut isnull = false;
                        let d = pg_sys::SPI_getbinval(row, table.tupdesc, col, &mut isnull);
                        (!isnull).then_some(d)
                    };
                    let name = value(2).map(|d| {
                        let p = pg_sys::text_to_cstring(d.cast_mut_ptr());
                        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                    });
                    parts.push(Part {
                        name: name.unwrap_or_default(),
                        is_default: value(3).is_some_and(|d| d.value() != 0),
                        from: value(4).map_or(i64::MIN, |d| d.value() as i64),
                        to: value(5).map_or(i64::MAX, |d| d.value() as i64),
                        plan: std::ptr::null_mut(),
                    });
                }
            }
            pg_sys::SPI_finish();
            Ok(parts)
        }
    })
}

/// The indexes (into `parts`) of the tables that can hold a delivery received in
/// [lo, hi]: the ranges that overlap it, and the DEFAULT partition unless they cover it all.
fn tables_for(parts: &[Part], lo: i64, hi: i64) -> Vec<usize> {
    let mut hits: Vec<usize> =
        (0..parts.len()).filter(|&i| !parts[i].is_default && parts[i].from <= hi && parts[i].to > lo).collect();
    hits.sort_by_key(|&i| parts[i].from);
    let mut covered_to = lo;
    let mut gap = false;
    for &i in &hits {
        gap |= parts[i].from > covered_to;
        covered_to = covered_to.max(parts[i].to);
    }
    if gap || covered_to <= hi {
        hits.extend((0..parts.len()).filter(|&i| parts[i].is_default));
    }
    hits
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

/// The lookup's plan on `part`: kept for the life of the list, prepared on first use.
///
/// # Safety
/// Inside an SPI session (between SPI_connect and SPI_finish).
unsafe fn kept_plan(part: &mut Part) -> Option<pg_sys::SPIPlanPtr> {
    if !part.plan.is_null() {
        return Some(part.plan);
    }
    let sql = std::ffi::CString::new(FIND_SQL.replace("{table}", &part.name)).ok()?;
    let mut types = [pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID];
    // SAFETY: the caller's SPI session; a valid statement and argument types. One generic
    // plan: a custom plan per insert would cost more than the insert. SPI_keepplan moves it
    // to TopMemoryContext.
    unsafe {
        let p = pg_sys::SPI_prepare_cursor(sql.as_ptr(), 4, types.as_mut_ptr(), pg_sys::CURSOR_OPT_GENERIC_PLAN as i32);
        if p.is_null() || pg_sys::SPI_keepplan(p) != 0 {
            return None;
        }
        part.plan = p;
        Some(p)
    }
}

/// Runs the lookup on one table; the smallest id found.
///
/// # Safety
/// Inside an SPI session; `values` are the four arguments of FIND_SQL.
unsafe fn find_in(part: &mut Part, values: &mut [pg_sys::Datum; 4]) -> Option<i64> {
    // SAFETY: the caller's contract; the plan is valid (kept, revalidated by the plan cache).
    unsafe {
        let plan = kept_plan(part)?;
        let nulls = [b' ' as std::ffi::c_char; 4];
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
        // The generic plan is made without sequential scans: a plan made while the table was
        // empty or tiny (a new day, the DEFAULT partition before a backfill, statistics of a
        // handful of rows) would otherwise scan it for every row a long INSERT or COPY adds.
        // The setting costs a GUC nest level, so it is set only when the plan is to be
        // (re)made; if the plan cache remade it during a run without it (an invalidation
        // arriving in between), that plan is thrown away and made afresh next time.
        let (ready, generation) = generic_plan_state(plan);
        let rc = if ready {
            let rc = execute();
            if generic_plan_state(plan).1 != generation {
                pg_sys::SPI_freeplan(plan);
                part.plan = std::ptr::null_mut();
            }
            rc
        } else {
            crate::pg::with_setting(c"enable_seqscan", c"off", execute)
        };
        if rc == pg_sys::SPI_OK_SELECT as i32 {
            min_id_of_result()
        } else {
            None
        }
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
pub(crate) fn first_delivery(
    rel: pg_sys::Oid,
    call_id: i64,
    key: &str,
    received_at: pg_sys::TimestampTz,
) -> Option<i64> {
    // A partition attached or dropped since.
    crate::pg::accept_invalidations();
    let (inbox, relkind) = inbox(rel);
    if inbox == pg_sys::InvalidOid {
        return None;
    }
    // Attaching, detaching, creating or dropping a partition invalidates the inbox.
    let generation = crate::pg::relcache_generation(&[inbox]);
    let fresh = PARTS.with(|p| p.borrow().as_ref().is_some_and(|(oid, g, _)| *oid == inbox && *g == generation));
    if !fresh {
        let parts = load_parts(inbox, relkind).ok()?;
        if let Some((_, _, old)) = PARTS.with(|p| p.borrow_mut().replace((inbox, generation, parts))) {
            forget(old);
        }
    }
    let (lo, hi) = (received_at.saturating_sub(WINDOW_US), received_at.saturating_add(WINDOW_US));
    // The lookup reads the inbox's tables as their owner: the inserting role (dialpad_ingest)
    // may read the partitioned table's key columns, not each partition.
    crate::pg::as_owner_of(inbox, || {
        PARTS.with(|p| {
            let mut guard = p.borrow_mut();
            let (_, _, parts) = guard.as_mut()?;
            // SAFETY: a complete SPI session: connected and finished here on the normal path;
            // on an ERROR, the (sub)transaction abort cleans up the SPI stack. The text datum
            // is palloc'd in the SPI procedure context and only used within it; ids are copied
            // out as int8 before SPI_finish.
            unsafe {
                if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                    return None;
                }
                let text = pg_sys::cstring_to_text_with_len(key.as_ptr() as *const std::ffi::c_char, key.len() as i32);
                let mut values = [
                    pg_sys::Datum::from(call_id),
                    pg_sys::Datum::from(text),
                    pg_sys::Datum::from(lo),
                    pg_sys::Datum::from(hi),
                ];
                let mut found: Option<i64> = None;
                for i in tables_for(parts, lo, hi) {
                    if let Some(id) = find_in(&mut parts[i], &mut values) {
                        found = Some(found.map_or(id, |f| f.min(id)));
                    }
                }
                pg_sys::SPI_finish();
                found
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from: i64, to: i64, is_default: bool) -> Part {
        Part { name: String::new(), is_default, from, to, plan: std::ptr::null_mut() }
    }

    #[test]
    fn the_window_searches_the_overlapping_partitions_and_default_only_for_gaps() {
        let day = 86_400_000_000i64;
        let parts =
            vec![part(0, day, false), part(day, 2 * day, false), part(0, 0, true), part(3 * day, 4 * day, false)];
        // inside one day
        assert_eq!(tables_for(&parts, 10, 20), vec![0]);
        // across midnight
        assert_eq!(tables_for(&parts, day - 10, day + 10), vec![0, 1]);
        // reaching into the gap between day 2 and day 3: DEFAULT too
        assert_eq!(tables_for(&parts, 2 * day - 10, 2 * day + 10), vec![1, 2]);
        // nothing covers it
        assert_eq!(tables_for(&parts, 10 * day, 10 * day + 5), vec![2]);
        // 0.1.0's plain table covers everything
        assert_eq!(tables_for(&[part(i64::MIN, i64::MAX, false)], 5, 6), vec![0]);
    }
}
