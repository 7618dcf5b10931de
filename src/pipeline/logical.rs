//! Keeps `dialpad.logical_calls` in step with the legs a statement wrote, in the statement's
//! transaction: the row trigger on `dialpad.calls` notes the logical call of every leg it
//! sees (before and after the write), the statement trigger then refreshes those calls once.
//!
//! Two writers of legs of one call (two workers, each with its own leg) must not lose each
//! other's leg, so a refresh locks the calls' rows first (in id order) and reads the legs
//! after the locks are held: a fresh snapshot that sees every leg the previous holder
//! committed. A call seen for the first time has no row to lock: it is inserted with ON
//! CONFLICT DO NOTHING, which waits for a concurrent inserter of the same call; a call whose
//! insert found a row that way is done again, locked, from a snapshot taken after.

use crate::domain::logical::{compute, Leg, LogicalCall};
use crate::pg::spi::run_kept;
use crate::pipeline::rules;
use crate::pipeline::tables::{run_kept_on, LogicalShards, Target, Whole};
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::BTreeSet;

thread_local! {
    /// Logical calls whose legs the current statement wrote (noted by the row trigger).
    static TOUCHED: RefCell<BTreeSet<i64>> = const { RefCell::new(BTreeSet::new()) };
}

/// Notes that a leg of logical call `id` is being written.
pub(crate) fn touch(id: i64) {
    TOUCHED.with(|t| t.borrow_mut().insert(id));
}

/// The logical calls noted so far, forgotten here (a statement that failed after noting
/// some leaves them to the next refresh, which finds them as they are: no harm).
pub(crate) fn take_touched() -> Vec<i64> {
    TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut())).into_iter().collect()
}

const LOCK_SQL: &str = "SELECT logical_call_id FROM {logical_calls}
 WHERE logical_call_id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY logical_call_id FOR NO KEY UPDATE";

/// Declares the columns of a leg as [`legs_sql`] reads them, each once: its field of [`Leg`],
/// how it is read (`req`: NULL reads as the default; `opt`; `ts`/`ts_req`: a timestamptz as
/// microseconds) and the SQL expression selected. The statement and [`read_leg`] are made
/// from the one list, so a column cannot be read at another column's position.
macro_rules! leg_columns {
    ($($field:ident: $how:ident $sql:literal),* $(,)?) => {
        /// The expressions [`legs_sql`] selects, in [`read_leg`]'s order.
        const LEG_COLUMNS: &[&str] = &[$($sql),*];

        fn read_leg(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Leg, pgrx::spi::Error> {
            let mut at = 0;
            $(
                at += 1;
                let $field = leg_columns!(@read $how, row, at);
            )*
            Ok(Leg { $($field),* })
        }
    };
    (@read req, $row:ident, $at:ident) => { $row.get($at)?.unwrap_or_default() };
    (@read opt, $row:ident, $at:ident) => { $row.get($at)? };
    (@read ts, $row:ident, $at:ident) => { $row.get::<TimestampWithTimeZone>($at)?.map(|t| t.into_inner()) };
    (@read ts_req, $row:ident, $at:ident) => { leg_columns!(@read ts, $row, $at).unwrap_or_default() };
}

leg_columns! {
    id: req "dialpad_call_id",
    logical_call_id: req "logical_call_id",
    direction: opt "direction",
    status: req "status",
    end_state: opt "end_state",
    external_number: opt "external_number",
    internal_number: opt "internal_number",
    started_at: ts "started_at",
    queued_at: ts "queued_at",
    rang_at: ts "rang_at",
    connected_at: ts "connected_at",
    ended_at: ts "ended_at",
    last_event_at: ts "last_event_at",
    created_at: ts_req "created_at",
    talk_seconds: opt "talk_seconds::pg_catalog.float8",
    hold_seconds: opt "hold_seconds::pg_catalog.float8",
    is_transferred: opt "is_transferred",
    target_id: opt "target_id",
    target_type: opt "target_type",
    target_name: opt "target_name",
    contact_id: opt "contact_id",
    contact_name: opt "contact_name",
    recording_url: opt "recording_url",
    voicemail_link: opt "voicemail_link",
    voicemail_recording_url: opt "voicemail_recording_url",
    source: opt "source",
    transferred_from_id: opt "transferred_from_id",
}

/// The legs of the logical calls in `$1` (int8[]), read from the distributed table.
fn legs_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {} FROM dialpad.calls WHERE logical_call_id OPERATOR(pg_catalog.=) ANY ($1)",
            LEG_COLUMNS.join(", ")
        )
    })
}

/// Declares the columns of `dialpad.logical_calls` as the refresh writes them, each once:
/// (name, SQL type of its array argument, that array's OID, its value in a [`LogicalCall`]).
/// [`COLUMNS`] and [`args`] are made from the one list, in the same order.
macro_rules! logical_columns {
    ($(($name:literal, $ty:literal, $oid:ident, |$r:ident| $value:expr)),* $(,)?) => {
        const COLUMNS: &[(&str, &str, pg_sys::Oid)] = &[$(($name, $ty, pg_sys::$oid)),*];

        /// The rows as the arguments of [`update_sql`] and [`insert_sql`], column by
        /// column, in [`COLUMNS`]'s order.
        fn args<'a>(rows: &[&LogicalCall]) -> Vec<DatumWithOid<'a>> {
            vec![$(rows.iter().map(|$r| $value).collect::<Vec<_>>().into()),*]
        }
    };
}

logical_columns! {
    ("logical_call_id", "int8", INT8ARRAYOID, |r| r.logical_call_id),
    ("direction", "text", TEXTARRAYOID, |r| r.direction.clone()),
    ("outcome", "text", TEXTARRAYOID, |r| Some(r.outcome.to_string())),
    ("started_at", "timestamptz", TIMESTAMPTZARRAYOID, |r| ts(Some(r.started_at))),
    ("answered_at", "timestamptz", TIMESTAMPTZARRAYOID, |r| ts(r.answered_at)),
    ("ended_at", "timestamptz", TIMESTAMPTZARRAYOID, |r| ts(r.ended_at)),
    ("wait_seconds", "float8", FLOAT8ARRAYOID, |r| r.wait_seconds),
    ("talk_seconds", "float8", FLOAT8ARRAYOID, |r| r.talk_seconds),
    ("hold_seconds", "float8", FLOAT8ARRAYOID, |r| r.hold_seconds),
    ("legs", "int4", INT4ARRAYOID, |r| r.legs),
    ("transfers", "int4", INT4ARRAYOID, |r| r.transfers),
    ("answered_by_target_id", "text", TEXTARRAYOID, |r| r.answered_by_target_id.clone()),
    ("answered_by_name", "text", TEXTARRAYOID, |r| r.answered_by_name.clone()),
    ("external_number", "text", TEXTARRAYOID, |r| r.external_number.clone()),
    ("internal_number", "text", TEXTARRAYOID, |r| r.internal_number.clone()),
    ("contact_id", "text", TEXTARRAYOID, |r| r.contact_id.clone()),
    ("contact_name", "text", TEXTARRAYOID, |r| r.contact_name.clone()),
    ("recording_url", "text", TEXTARRAYOID, |r| r.recording_url.clone()),
    ("voicemail_link", "text", TEXTARRAYOID, |r| r.voicemail_link.clone()),
    ("source", "text", TEXTARRAYOID, |r| r.source.clone()),
    ("last_event_at", "timestamptz", TIMESTAMPTZARRAYOID, |r| ts(r.last_event_at)),
}

/// `ROWS FROM (unnest($1), ...) AS r(columns)`: the rows of [`args`].
fn rows_from() -> (String, String) {
    let unnests: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, t, _))| format!("pg_catalog.unnest(${}::pg_catalog.{t}[])", i + 1))
        .collect();
    let names: Vec<&str> = COLUMNS.iter().map(|(c, _, _)| *c).collect();
    (format!("ROWS FROM ({}) AS r({})", unnests.join(", "), names.join(", ")), names.join(", "))
}

fn update_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let (rows, _) = rows_from();
        let sets: Vec<String> = COLUMNS[1..].iter().map(|(c, _, _)| format!("{c} = r.{c}")).collect();
        format!(
            "UPDATE {{logical_calls}} l SET {} FROM {rows}
              WHERE l.logical_call_id OPERATOR(pg_catalog.=) r.logical_call_id
                AND (l.*) IS DISTINCT FROM (r.*)::{{logical_calls}}",
            sets.join(", ")
        )
    })
}

fn insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let (rows, names) = rows_from();
        format!(
            "INSERT INTO {{logical_calls}} ({names}) SELECT * FROM {rows}
             ON CONFLICT (logical_call_id) DO NOTHING RETURNING logical_call_id"
        )
    })
}

const DELETE_SQL: &str = "DELETE FROM {logical_calls} WHERE logical_call_id OPERATOR(pg_catalog.=) ANY ($1)";

fn types() -> Vec<pg_sys::Oid> {
    COLUMNS.iter().map(|(_, _, oid)| *oid).collect()
}

/// The logical call ids a statement returned (its first column).
fn ids_of(table: pgrx::spi::SpiTupleTable<'_>) -> Result<BTreeSet<i64>, pgrx::spi::Error> {
    let mut ids = BTreeSet::new();
    for row in table {
        check_for_interrupts!();
        ids.insert(row.get::<i64>(1)?.unwrap_or_default());
    }
    Ok(ids)
}

fn ts(us: Option<i64>) -> Option<TimestampWithTimeZone> {
    us.and_then(|us| TimestampWithTimeZone::try_from(us).ok())
}

/// The calls of `ids` computed from their legs as they are now; ids without legs are absent.
pub(crate) fn compute_calls(client: &mut SpiClient<'_>, ids: &[i64]) -> Result<Vec<LogicalCall>, pgrx::spi::Error> {
    let rules = rules::current()?;
    let table = run_kept(client, legs_sql(), &[pg_sys::INT8ARRAYOID], None, &[ids.to_vec().into()])?;
    let mut legs: Vec<Leg> = Vec::with_capacity(table.len());
    // A logical call has as many legs as whoever inserts into the inbox gave it.
    for row in table {
        check_for_interrupts!();
        legs.push(read_leg(&row)?);
    }
    legs.sort_by_key(|l| (l.logical_call_id, l.id));
    Ok(legs
        .chunk_by(|a, b| a.logical_call_id == b.logical_call_id)
        .map(|g| {
            check_for_interrupts!();
            compute(g, |s| rules.is_terminal(s))
        })
        .collect())
}

/// Brings the rows of `ids` (sorted, distinct) up to date with their legs.
pub(crate) fn refresh(client: &mut SpiClient<'_>, ids: &[i64]) -> Result<(), pgrx::spi::Error> {
    refresh_on(client, &Whole, ids)
}

/// [`refresh`] writing the rows into `tables`' dialpad.logical_calls (a Citus group's
/// shard of it, or the table itself); the legs are read from dialpad.calls either way.
pub(crate) fn refresh_on(
    client: &mut SpiClient<'_>,
    tables: &impl Target,
    ids: &[i64],
) -> Result<(), pgrx::spi::Error> {
    let mut ids = ids.to_vec();
    // A call raced by a concurrent first insert is done again; each round settles every
    // call it locked, so this ends (a second round is rare, a third rarer still).
    while !ids.is_empty() {
        let locked = lock(client, tables, &ids)?;
        let calls = compute_calls(client, &ids)?;
        ids = write_rows(client, tables, &locked, &calls.iter().collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Writes the rows of `ids` (sorted, distinct), already computed among `calls` by their
/// only keeper (Citus: citus/logical.rs), into `tables`' shard of dialpad.logical_calls; a
/// call raced by another writer (a DBA's rebuild) is done again by [`refresh_on`].
pub(crate) fn write_computed(
    client: &mut SpiClient<'_>,
    tables: &LogicalShards,
    ids: &[i64],
    calls: &[LogicalCall],
) -> Result<(), pgrx::spi::Error> {
    let locked = lock(client, tables, ids)?;
    let wanted: BTreeSet<i64> = ids.iter().copied().collect();
    let mine: Vec<&LogicalCall> = calls.iter().filter(|c| wanted.contains(&c.logical_call_id)).collect();
    let raced = write_rows(client, tables, &locked, &mine)?;
    refresh_on(client, tables, &raced)
}

/// Locks the existing rows of `ids`, in id order; returns their ids.
fn lock(client: &mut SpiClient<'_>, tables: &impl Target, ids: &[i64]) -> Result<BTreeSet<i64>, pgrx::spi::Error> {
    ids_of(run_kept_on(client, tables, LOCK_SQL, &[pg_sys::INT8ARRAYOID], None, &[ids.to_vec().into()])?)
}

/// Writes `calls`, computed for calls whose existing rows are `locked`: updates those,
/// deletes those left without legs, inserts the others; returns the ids whose insert a
/// concurrent first insert won (to do again).
fn write_rows(
    client: &mut SpiClient<'_>,
    tables: &impl Target,
    locked: &BTreeSet<i64>,
    calls: &[&LogicalCall],
) -> Result<Vec<i64>, pgrx::spi::Error> {
    let (known, new): (Vec<&LogicalCall>, Vec<&LogicalCall>) =
        calls.iter().copied().partition(|c| locked.contains(&c.logical_call_id));
    if !known.is_empty() {
        run_kept_on(client, tables, update_sql(), &types(), None, &args(&known))?;
    }
    let computed: BTreeSet<i64> = calls.iter().map(|c| c.logical_call_id).collect();
    let gone: Vec<i64> = locked.difference(&computed).copied().collect();
    if !gone.is_empty() {
        run_kept_on(client, tables, DELETE_SQL, &[pg_sys::INT8ARRAYOID], None, &[gone.into()])?;
    }
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let inserted = ids_of(run_kept_on(client, tables, insert_sql(), &types(), None, &args(&new))?)?;
    Ok(new.iter().map(|c| c.logical_call_id).filter(|id| !inserted.contains(id)).collect())
}

/// Runs `f` as the refresh runs: with [`SETTINGS`] and as the owner of dialpad.calls.
pub(crate) fn as_refresh<R>(f: impl FnOnce() -> R) -> R {
    let calls = crate::pg::dialpad_relation(c"calls");
    crate::pg::with_settings(SETTINGS, || crate::pg::as_owner_of(calls, f))
}

/// Logical calls refreshed per round of statements.
const REFRESH_SLICE: usize = 5_000;

/// A pinned search_path, and plans that reach each call's row and legs by their index
/// whatever the statistics say: the plans are kept for the backend's life, and one made
/// while dialpad.logical_calls was small (a hash join over the whole table) would cost a
/// scan of the table per statement once it has grown.
const SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"enable_seqscan", c"off"),
    (c"enable_hashjoin", c"off"),
    (c"enable_mergejoin", c"off"),
    (c"enable_bitmapscan", c"off"),
];

/// Refreshes the logical calls the current statement's legs belong to, as the owner of
/// `calls` (a writer of legs needs no privilege on dialpad.logical_calls, as with a SECURITY
/// DEFINER function) and with a pinned search_path; `plan_once` where the tables are plain
/// PostgreSQL tables (not where Citus plans them).
pub(crate) fn refresh_touched(calls: pg_sys::Oid, plan_once: bool) {
    let ids = take_touched();
    if ids.is_empty() {
        return;
    }
    // In slices, in id order (the lock order): a statement that wrote millions of legs (a
    // restore's COPY, a backfill) holds one slice of legs in memory at a time.
    // `plan_once`: each statement is also planned once (generic, on the indexes SETTINGS
    // leave); left to the plan cache, a statement given an array of one or two ids is
    // planned again for every batch, as a custom plan looks cheaper than the generic one.
    let once: &[(&std::ffi::CStr, &std::ffi::CStr)] =
        if plan_once { &[(c"plan_cache_mode", c"force_generic_plan")] } else { &[] };
    let result = crate::pg::with_settings(SETTINGS, || {
        crate::pg::with_settings(once, || {
            crate::pg::as_owner_of(calls, || {
                Spi::connect_mut(|client| ids.chunks(REFRESH_SLICE).try_for_each(|slice| refresh(client, slice)))
            })
        })
    });
    if let Err(e) = result {
        crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not bring dialpad.logical_calls up to date: {e}"),
            None,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tables::names_a_table;

    #[test]
    fn the_statements_run_per_set_of_tables_name_them_by_placeholders() {
        for sql in [LOCK_SQL, update_sql(), insert_sql(), DELETE_SQL] {
            assert_eq!(names_a_table(sql), None, "{sql}");
        }
        // The legs are read from the distributed table, whatever the set.
        assert_eq!(names_a_table(legs_sql()), Some("dialpad.calls"));
    }

    #[test]
    fn each_column_is_read_and_written_once() {
        let legs: BTreeSet<&str> = LEG_COLUMNS.iter().map(|c| c.split("::").next().unwrap_or(c)).collect();
        assert_eq!(legs.len(), LEG_COLUMNS.len());
        let names: BTreeSet<&str> = COLUMNS.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(names.len(), COLUMNS.len());
    }
}
