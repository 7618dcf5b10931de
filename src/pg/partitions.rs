//! A partition's bound and name, read from the catalog (relpartbound, the node PostgreSQL
//! itself keeps) rather than from the text `pg_get_expr` prints: one reader for
//! `dialpad.partitions` and for the redelivery lookup (pipeline/dedupe.rs).

use pgrx::pg_sys;

/// Where a partition of a table partitioned by range on one timestamptz column sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The DEFAULT partition.
    Default,
    /// [from, to) as TimestampTz; MINVALUE is `i64::MIN` and MAXVALUE `i64::MAX`.
    Range { from: pg_sys::TimestampTz, to: pg_sys::TimestampTz },
}

/// The bound of partition `rel`; None when `rel` is not a partition, or not one of a range
/// on a single timestamptz column.
pub(crate) fn bound_of(rel: pg_sys::Oid) -> Option<Bound> {
    // SAFETY: a syscache lookup released before returning; relpartbound is the text of a
    // PartitionBoundSpec node (nodeToString), read back by stringToNode into palloc'd
    // memory; every node is checked for its tag before its fields are read.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, pg_sys::Datum::from(rel));
        if tuple.is_null() {
            return None;
        }
        let mut isnull = false;
        let text = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            tuple,
            pg_sys::Anum_pg_class_relpartbound as pg_sys::AttrNumber,
            &mut isnull,
        );
        let node = if isnull {
            std::ptr::null_mut()
        } else {
            pg_sys::stringToNode(pg_sys::text_to_cstring(text.cast_mut_ptr())) as *mut pg_sys::Node
        };
        pg_sys::ReleaseSysCache(tuple);
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_PartitionBoundSpec {
            return None;
        }
        let spec = &*(node as *const pg_sys::PartitionBoundSpec);
        if spec.is_default {
            return Some(Bound::Default);
        }
        if spec.strategy as u8 != b'r' {
            return None;
        }
        Some(Bound::Range { from: range_datum(spec.lowerdatums)?, to: range_datum(spec.upperdatums)? })
    }
}

/// The one value of a range bound's list of PartitionRangeDatum.
///
/// # Safety
/// `list` is a List of PartitionRangeDatum nodes (a PartitionBoundSpec's lower or upper datums).
unsafe fn range_datum(list: *mut pg_sys::List) -> Option<pg_sys::TimestampTz> {
    // SAFETY: the caller's contract; each node's tag is checked before its fields are read.
    unsafe {
        let items = pgrx::PgList::<pg_sys::PartitionRangeDatum>::from_pg(list);
        if items.len() != 1 {
            return None;
        }
        let datum = items.get_ptr(0)?;
        if datum.is_null() || (*datum).type_ != pg_sys::NodeTag::T_PartitionRangeDatum {
            return None;
        }
        let datum = &*datum;
        use pg_sys::PartitionRangeDatumKind::*;
        match datum.kind {
            PARTITION_RANGE_DATUM_MINVALUE => Some(i64::MIN),
            PARTITION_RANGE_DATUM_MAXVALUE => Some(i64::MAX),
            _ => {
                let value = datum.value;
                if value.is_null() || (*value).type_ != pg_sys::NodeTag::T_Const {
                    return None;
                }
                let c = &*(value as *const pg_sys::Const);
                (c.consttype == pg_sys::TIMESTAMPTZOID && !c.constisnull).then(|| c.constvalue.value() as i64)
            }
        }
    }
}

/// `schema.table` of relation `rel`, quoted where needed (as `regclass` prints it with the
/// schema always written); None if it does not exist.
pub(crate) fn qualified_name(rel: pg_sys::Oid) -> Option<String> {
    // SAFETY: syscache lookups returning palloc'd C strings (or NULL), copied at once.
    unsafe {
        let name = pg_sys::get_rel_name(rel);
        if name.is_null() {
            return None;
        }
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(rel));
        if schema.is_null() {
            return None;
        }
        let q = pg_sys::quote_qualified_identifier(schema, name);
        Some(std::ffi::CStr::from_ptr(q).to_string_lossy().into_owned())
    }
}

unsafe extern "C-unwind" {
    /// catalog/partition.c (PostgreSQL 14 on), which pgrx does not bind: the partitioned
    /// table a partition is attached to.
    fn get_partition_parent(relid: pg_sys::Oid, even_if_detached: bool) -> pg_sys::Oid;
}

/// The partitioned table `rel` is attached to; None if `rel` is not a partition.
pub(crate) fn parent_of(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups of an existing relation (the caller's, locked by its statement);
    // an ERROR of get_partition_parent (a partition being detached concurrently) is turned
    // into a Rust panic at the boundary, as pgrx's own bindings do, and raised again.
    unsafe {
        pg_sys::get_rel_relispartition(rel)
            .then(|| pg_sys::ffi::pg_guard_ffi_boundary(|| get_partition_parent(rel, false)))
    }
}

/// The relkind of relation `rel` (pg_sys::RELKIND_*), 0 if it does not exist.
pub(crate) fn relkind(rel: pg_sys::Oid) -> u8 {
    // SAFETY: a syscache lookup of a relation's kind ('\0' when absent).
    unsafe { pg_sys::get_rel_relkind(rel) as u8 }
}
