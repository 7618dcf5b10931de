//! pg_dialpad on Citus (docs/citus.md): after `dialpad.distribute()`,
//! `calls`, `webhook_events` and `rejected_transitions` are distributed by call id and
//! colocated, so that the events of a call, its row and its rejections are in shards with the
//! same hash range, on the same node. Each node's workers process the shard groups that node
//! holds, on the shards themselves: every statement of the processor is the single-node one
//! with the shard names in place of the tables' (see [`Tables`]), so that claims, locks and
//! triggers are plain local PostgreSQL, as on one node.
//!
//! Nothing here runs on a database without Citus, and on one with Citus but not distributed
//! the processor works on the tables, as on one node.

use pgrx::prelude::*;

pub(crate) use crate::pipeline::tables::Tables;

pub(crate) mod logical;
pub(crate) mod routing;

/// The call id Citus routes an event by: the payload's `call_id`, or 0 when it has none
/// (src/citus/routing.rs adds it to INSERTs into the distributed inbox).
#[pg_extern(immutable, strict, parallel_safe)]
fn routing_call_id(payload: crate::pg::datum::JsonbArg) -> i64 {
    crate::codec::jsonb::Container::root(payload.body()).ok().and_then(crate::domain::webhook::call_id_of).unwrap_or(0)
}

/// Whether the Citus extension is installed in this database.
pub(crate) fn loaded() -> bool {
    crate::pg::backend::extension_installed(c"citus")
}

/// The table a shard's name belongs to: `calls` for `calls_102008` (Citus names a shard
/// `<table>_<shard id>`); None when the name has no such suffix.
pub(crate) fn shard_base_name(name: &str) -> Option<&str> {
    let (base, id) = name.rsplit_once('_')?;
    (!base.is_empty() && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// The table a Citus shard belongs to (`dialpad.calls` for `dialpad.calls_102008`): the
/// relation whose name is this one's without the `_<shard id>` suffix, in the same schema,
/// when Citus is loaded and such a relation exists; otherwise `rel` itself.
pub(crate) fn shell_of(rel: pg_sys::Oid) -> pg_sys::Oid {
    if !loaded() {
        return rel;
    }
    let Some((name, schema)) = crate::pg::backend::relation_name(rel) else { return rel };
    shard_base_name(&name).and_then(|base| crate::pg::backend::relation_in(base, schema)).unwrap_or(rel)
}

/// Whether `dialpad.calls` is a Citus distributed table in this database (`dialpad.distribute()`
/// was run).
pub(crate) fn distributed(client: &pgrx::spi::SpiClient<'_>) -> Result<bool, pgrx::spi::Error> {
    if !loaded() {
        return Ok(false);
    }
    Ok(client
        .select(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition \
              WHERE logicalrelid OPERATOR(pg_catalog.=) 'dialpad.calls'::pg_catalog.regclass)",
            Some(1),
            &[],
        )?
        .first()
        .get::<bool>(1)?
        .unwrap_or(false))
}

thread_local! {
    /// Whether the inbox is distributed, for the inbox of this OID and relcache generation.
    static INBOX_DISTRIBUTED: std::cell::Cell<Option<(pg_sys::Oid, u64, bool)>> = const { std::cell::Cell::new(None) };
}

/// Whether `dialpad.webhook_events` is a Citus distributed table (cached until the table's
/// relcache entry is invalidated, as Citus does when it distributes it).
pub(crate) fn inbox_distributed() -> bool {
    let inbox = crate::pg::dialpad_relation(c"webhook_events");
    if inbox == pg_sys::InvalidOid {
        return false;
    }
    let generation = crate::pg::relcache_generation(&[inbox]);
    if let Some((oid, g, d)) = INBOX_DISTRIBUTED.with(|c| c.get()) {
        if oid == inbox && g == generation {
            return d;
        }
    }
    let distributed = loaded()
        && Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid OPERATOR(pg_catalog.=) $1)",
            &[inbox.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
    INBOX_DISTRIBUTED.with(|c| c.set(Some((inbox, generation, distributed))));
    distributed
}

/// The colocated shard groups this node holds, in hash order: the shards of `calls`,
/// `webhook_events` and `rejected_transitions` with the same hash range (colocated shards
/// share `shardminvalue`) whose placement is in this node's group.
const LOCAL_GROUPS_SQL: &str = "
WITH here AS (
    SELECT s.logicalrelid, s.shardid, s.shardminvalue
      FROM pg_catalog.pg_dist_shard s
      JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
     WHERE p.groupid OPERATOR(pg_catalog.=) (SELECT groupid FROM pg_catalog.pg_dist_local_group)
)
SELECT c.shardid, e.shardid, r.shardid, l.shardid, st.shardid
  FROM here c
  JOIN here e ON e.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
             AND e.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.webhook_events'::pg_catalog.regclass
  JOIN here r ON r.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
             AND r.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.rejected_transitions'::pg_catalog.regclass
  LEFT JOIN here l ON l.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
             AND l.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.logical_calls'::pg_catalog.regclass
  LEFT JOIN here st ON st.shardminvalue OPERATOR(pg_catalog.=) c.shardminvalue
             AND st.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.logical_calls_stale'::pg_catalog.regclass
 WHERE c.logicalrelid OPERATOR(pg_catalog.=) 'dialpad.calls'::pg_catalog.regclass
 ORDER BY c.shardminvalue::pg_catalog.int8";

/// The shard groups this node holds (empty on a node that holds none, such as a coordinator
/// without shards).
pub(crate) fn local_groups(client: &pgrx::spi::SpiClient<'_>) -> Result<Vec<Tables>, pgrx::spi::Error> {
    let mut groups = Vec::new();
    for row in client.select(LOCAL_GROUPS_SQL, None, &[])? {
        let (Some(c), Some(e), Some(r)) = (row.get::<i64>(1)?, row.get::<i64>(2)?, row.get::<i64>(3)?) else {
            continue;
        };
        let logical = row.get::<i64>(4)?.zip(row.get::<i64>(5)?);
        groups.push(Tables::shards(c, e, r, logical));
    }
    Ok(groups)
}

/// Whether Citus's setting `name` exists (Citus is loaded in this process).
fn has_setting(name: &std::ffi::CStr) -> bool {
    crate::pg::setting(name).is_some()
}

/// Runs `f` with Citus's setting `name` at `value`, scoped like a function's SET clause; as
/// it is where Citus is not loaded (the setting does not exist).
fn with_citus_setting<R>(name: &std::ffi::CStr, value: &std::ffi::CStr, f: impl FnOnce() -> R) -> R {
    if has_setting(name) {
        crate::pg::with_setting(name, value, f)
    } else {
        f()
    }
}

/// Lets this session write shards directly (Citus refuses that to sessions that are not
/// its own unless `citus.enable_manual_changes_to_shards` is on). Only where Citus is
/// loaded: elsewhere the setting does not exist.
pub(crate) fn allow_shard_writes() {
    let name = c"citus.enable_manual_changes_to_shards";
    if !has_setting(name) {
        return;
    }
    crate::pg::set_session_setting(name, c"on");
}

/// Runs `f` allowed to write shards directly (see [`allow_shard_writes`]).
pub(crate) fn with_shard_writes<R>(f: impl FnOnce() -> R) -> R {
    with_citus_setting(c"citus.enable_manual_changes_to_shards", c"on", f)
}

/// What `dialpad.process_events()` processes here.
pub(crate) struct ProcessingTargets {
    /// The tables (or shard groups) of this node.
    pub local: Vec<Tables>,
    /// Whether this is the coordinator of a cluster whose tables are distributed: the worker
    /// nodes hold the shards.
    pub coordinator: bool,
}

/// The extension's tables, or on a Citus node after dialpad.distribute(), the shard groups
/// this node holds (and whether it is the coordinator).
pub(crate) fn processing_targets() -> Result<ProcessingTargets, pgrx::spi::Error> {
    let one_node = || ProcessingTargets { local: vec![Tables::whole()], coordinator: false };
    if !loaded() {
        return Ok(one_node());
    }
    Spi::connect(|client| {
        if !distributed(client)? {
            return Ok(one_node());
        }
        let group = client
            .select("SELECT groupid FROM pg_catalog.pg_dist_local_group", Some(1), &[])?
            .first()
            .get::<i32>(1)?
            .unwrap_or(0);
        Ok(ProcessingTargets { local: local_groups(client)?, coordinator: group == 0 })
    })
}

/// `dialpad.process_events(max_events)` on every worker node (each in its own transaction,
/// committed there); how many events they handled in all.
pub(crate) fn process_on_workers(max_events: i32) -> i64 {
    let sql = format!(
        "SELECT coalesce(sum(result::pg_catalog.int8) FILTER (WHERE success), 0)::pg_catalog.int8, \
                pg_catalog.string_agg(nodename || ':' || nodeport || ': ' || result, '; ') FILTER (WHERE NOT success) \
           FROM pg_catalog.run_command_on_workers('SELECT dialpad.process_events({max_events})')"
    );
    let row = Spi::get_two::<i64, String>(&sql);
    match row {
        Ok((n, None)) => n.unwrap_or(0),
        Ok((_, Some(failed))) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!("dialpad.process_events() failed on worker nodes: {failed}"),
            None,
            None,
        ),
        Err(e) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("dialpad.process_events() could not reach the worker nodes: {e}"),
            None,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_name_is_its_table_and_an_id() {
        assert_eq!(shard_base_name("calls_102008"), Some("calls"));
        assert_eq!(shard_base_name("webhook_events_default_102072"), Some("webhook_events_default"));
        assert_eq!(shard_base_name("webhook_events_p20261122"), None);
        assert_eq!(shard_base_name("calls"), None);
        assert_eq!(shard_base_name("_12"), None);
    }
}
