//! `dialpad.logical_calls` on Citus. The legs of one real call have different call ids, so
//! they may sit in shards on different nodes, and a trigger on one node's shard of
//! `dialpad.calls` sees only that node's legs. The row of a logical call therefore has one
//! keeper: the worker processing the shard group that holds it (`logical_calls` is
//! distributed by `logical_call_id`, colocated with `calls`). The way there:
//!
//! 1. the statement trigger on a shard of `calls` notes the logical calls of the legs it
//!    wrote in this node's `dialpad.logical_calls_touched`, in the writer's transaction;
//! 2. the node's first worker hands them to `dialpad.logical_calls_stale` (distributed like
//!    `logical_calls`), which puts each on the node that keeps its row;
//! 3. the keeper takes them from its group's shard of `logical_calls_stale` and recomputes
//!    each call from all its legs, read across the nodes, exactly as one node does
//!    (`pipeline/logical.rs`), into its shard of `logical_calls`.
//!
//! One keeper per call means no two refreshes of a call race; and since a call is taken
//! from `logical_calls_stale` before its legs are read, a leg committed after that read
//! marks the call stale again, so the last refresh of a call always sees its last leg.
//! `logical_calls` follows the legs within a worker's pass or two, not in their transaction.

use super::Tables;
use crate::pg::spi::run_kept;
use crate::pipeline::logical;
use crate::pipeline::tables::{run_kept_on, LogicalShards};
use pgrx::prelude::*;

/// Logical calls handed on, or refreshed, per transaction.
pub(crate) const SLICE: i64 = 5_000;

const NOTE_SQL: &str = "INSERT INTO dialpad.logical_calls_touched
SELECT pg_catalog.unnest($1::pg_catalog.int8[]) ON CONFLICT DO NOTHING";

const TAKE_TOUCHED_SQL: &str = "DELETE FROM dialpad.logical_calls_touched
 WHERE logical_call_id OPERATOR(pg_catalog.=) ANY (ARRAY(
     SELECT logical_call_id FROM dialpad.logical_calls_touched
      ORDER BY logical_call_id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING logical_call_id";

const MARK_STALE_SQL: &str = "INSERT INTO dialpad.logical_calls_stale
SELECT pg_catalog.unnest($1::pg_catalog.int8[]) ON CONFLICT DO NOTHING";

/// Run on the group's shard of `logical_calls_stale` (see [`Tables::logical_shards`]).
const TAKE_STALE_SQL: &str = "DELETE FROM {logical_calls_stale}
 WHERE logical_call_id OPERATOR(pg_catalog.=) ANY (ARRAY(
     SELECT logical_call_id FROM {logical_calls_stale}
      ORDER BY logical_call_id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING logical_call_id";

fn ids(table: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<i64>, pgrx::spi::Error> {
    let mut ids = Vec::with_capacity(table.len());
    for row in table {
        ids.extend(row.get::<i64>(1)?);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Step 1, in the trigger on a shard of `calls`: notes `touched` on this node.
pub(crate) fn note(touched: Vec<i64>) -> Result<(), pgrx::spi::Error> {
    if touched.is_empty() {
        return Ok(());
    }
    logical::as_refresh(|| {
        Spi::connect_mut(|client| {
            run_kept(client, NOTE_SQL, &[pg_sys::INT8ARRAYOID], None, &[touched.into()]).map(|_| ())
        })
    })
}

/// Step 2, in a worker's transaction: hands up to [`SLICE`] of this node's noted logical
/// calls to their keepers; how many.
pub(crate) fn hand_on() -> Result<i64, pgrx::spi::Error> {
    logical::as_refresh(|| {
        Spi::connect_mut(|client| {
            let taken = ids(run_kept(client, TAKE_TOUCHED_SQL, &[pg_sys::INT8OID], None, &[SLICE.into()])?)?;
            let n = taken.len() as i64;
            if n > 0 {
                run_kept(client, MARK_STALE_SQL, &[pg_sys::INT8ARRAYOID], None, &[taken.into()])?;
            }
            Ok(n)
        })
    })
}

/// Step 3, in a worker's transaction: recomputes the stale logical calls kept in `groups`
/// (up to [`SLICE`] per group), reading their legs in one distributed query; how many calls
/// were taken from the fullest group (a full slice: more is waiting).
pub(crate) fn refresh_stale(groups: &[Tables]) -> Result<i64, pgrx::spi::Error> {
    let groups: Vec<LogicalShards> = groups.iter().filter_map(Tables::logical_shards).collect();
    if groups.is_empty() {
        return Ok(0);
    }
    logical::as_refresh(|| {
        Spi::connect_mut(|client| {
            let mut stale = Vec::with_capacity(groups.len());
            for tables in &groups {
                let ids = ids(run_kept_on(client, tables, TAKE_STALE_SQL, &[pg_sys::INT8OID], None, &[SLICE.into()])?)?;
                stale.push(ids);
            }
            let most = stale.iter().map(|ids| ids.len() as i64).max().unwrap_or(0);
            let mut all: Vec<i64> = stale.iter().flatten().copied().collect();
            if all.is_empty() {
                return Ok(0);
            }
            all.sort_unstable();
            let calls = logical::compute_calls(client, &all)?;
            for (tables, ids) in groups.iter().zip(&stale) {
                if !ids.is_empty() {
                    logical::write_computed(client, tables, ids, &calls)?;
                }
            }
            Ok(most)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stale_calls_are_taken_from_the_group_shard() {
        assert_eq!(crate::pipeline::tables::names_a_table(TAKE_STALE_SQL), None);
    }
}
