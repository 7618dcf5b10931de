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

use crate::pg::partitions::{self, Bound};
use crate::pg::readonly::{self, Arg, KeptLookup};
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

/// The tables attached to the inbox {inbox} (dialpad.webhook_events, or on a Citus node the
/// shard of it the row goes to). Their bounds are read from the catalog (pg/partitions.rs),
/// as dialpad.partitions reads them.
const CHILDREN_SQL: &str =
    "SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent OPERATOR(pg_catalog.=) {inbox}::pg_catalog.oid";

/// One table the lookup searches, with its kept lookup.
struct Part {
    is_default: bool,
    from: pg_sys::TimestampTz,
    to: pg_sys::TimestampTz,
    lookup: KeptLookup,
}

thread_local! {
    /// The inbox's tables, for the inbox of this OID and relcache generation.
    static PARTS: std::cell::RefCell<Option<(pg_sys::Oid, u64, Vec<Part>)>> = const { std::cell::RefCell::new(None) };
}

/// The OID and relkind of the inbox a row of `rel` (the insert trigger's relation) is in:
/// the partitioned table `rel` is a partition of (dialpad.webhook_events, or on a Citus node
/// the shard of it), or `rel` itself (0.1.0's plain inbox).
fn inbox(rel: pg_sys::Oid) -> (pg_sys::Oid, u8) {
    if rel == pg_sys::InvalidOid {
        return (rel, 0);
    }
    let rel = crate::pg::partitions::parent_of(rel).unwrap_or(rel);
    (rel, crate::pg::partitions::relkind(rel))
}

/// The lookup on table `name` (quoted as needed).
fn part(name: &str, bound: Bound) -> Result<Part, crate::pg::error::Error> {
    let lookup = KeptLookup::new(
        &FIND_SQL.replace("{table}", name),
        &[pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID],
    )?;
    Ok(match bound {
        Bound::Default => Part { is_default: true, from: i64::MIN, to: i64::MAX, lookup },
        Bound::Range { from, to } => Part { is_default: false, from, to, lookup },
    })
}

/// The inbox's tables: its partitions, or 0.1.0's plain table (before ALTER EXTENSION).
fn load_parts(inbox: pg_sys::Oid, relkind: u8) -> Result<Vec<Part>, crate::pg::error::Error> {
    if relkind != pg_sys::RELKIND_PARTITIONED_TABLE {
        return Ok(vec![part("dialpad.webhook_events", Bound::Range { from: i64::MIN, to: i64::MAX })?]);
    }
    let children = readonly::read_only(|s| s.oids(&CHILDREN_SQL.replace("{inbox}", &inbox.to_u32().to_string())))??;
    let mut parts = Vec::with_capacity(children.len());
    for child in children {
        let (Some(name), Some(bound)) = (partitions::qualified_name(child), partitions::bound_of(child)) else {
            continue; // dropped meanwhile, or not a range partition
        };
        parts.push(part(&name, bound)?);
    }
    Ok(parts)
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
            old.into_iter().for_each(|mut p| p.lookup.forget());
        }
    }
    let (lo, hi) = (received_at.saturating_sub(WINDOW_US), received_at.saturating_add(WINDOW_US));
    // The lookup reads the inbox's tables as their owner: the inserting role (dialpad_ingest)
    // may read the partitioned table's key columns, not each partition.
    crate::pg::as_owner_of(inbox, || {
        PARTS.with(|p| {
            let mut guard = p.borrow_mut();
            let (_, _, parts) = guard.as_mut()?;
            let args = [Arg::Int8(call_id), Arg::Text(key), Arg::TimestampTz(lo), Arg::TimestampTz(hi)];
            readonly::read_only(|session| {
                let mut args = session.args(&args);
                tables_for(parts, lo, hi).into_iter().filter_map(|i| parts[i].lookup.min_i64(&mut args)).min()
            })
            .ok()
            .flatten()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from: i64, to: i64, is_default: bool) -> Part {
        Part { is_default, from, to, lookup: KeptLookup::new("SELECT 1", &[]).unwrap() }
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
