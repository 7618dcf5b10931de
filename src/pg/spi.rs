//! SPI as the extension uses it: statements run through plans kept per backend, and code
//! run in a subtransaction whose error comes back as a value.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::collections::HashMap;

/// Which kept plan of a statement: (0, 0) for the statement as written; each set of tables
/// it is filled in for has its own (see pipeline/tables.rs).
pub(crate) type Variant = (u8, i64);

thread_local! {
    /// Kept plans by statement and variant ((0, 0): the statement itself or on the
    /// extension's tables; each Citus shard group has a variant of its own).
    static PLANS: RefCell<HashMap<(&'static str, Variant), OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs `sql` through a plan prepared once per backend. The plan is out of the map while it
/// runs: a statement it fires (a trigger on dialpad.calls) may run kept plans of its own.
pub(crate) fn run_kept<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    types: &[pg_sys::Oid],
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'c>, pgrx::spi::Error> {
    run_kept_as(client, sql, (0, 0), || sql.to_string(), types, limit, args)
}

/// [`run_kept`] of the statement `rewrite` makes of `sql` (a template filled in for one
/// set of tables), with a kept plan of its own per `variant`; `rewrite` runs only to prepare.
pub(crate) fn run_kept_as<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    variant: Variant,
    rewrite: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'c>, pgrx::spi::Error> {
    let key = (sql, variant);
    let plan = match PLANS.with(|p| p.borrow_mut().remove(&key)) {
        Some(plan) => plan,
        None => {
            let types: Vec<_> = types.iter().map(|&t| t.into()).collect();
            client.prepare_mut(rewrite().as_str(), &types)?.keep()
        }
    };
    let result = client.update(&plan, limit, args);
    PLANS.with(|p| p.borrow_mut().insert(key, plan));
    result
}

/// Runs `run` (a [`run_kept`] of a statement that reads a table) with the statement planned
/// for its actual arguments. Left to the plan cache, such a plan settles on a generic plan made once, maybe
/// when the table was small (right after install or a TRUNCATE: a sequential scan of
/// dialpad.calls), and keeps it until the next ANALYZE; the worker measured 17k events/s with
/// that, 21.6k with re-planning. Used for the statements a batch runs only when something
/// went wrong (failures, deferrals, redeliveries); those it runs on every batch are planned
/// once, with sequential scans off (pipeline/batch.rs, `BATCH_PLAN_SETTINGS`). The upsert and the
/// rejection insert read no table and keep their generic plans. The setting is scoped like a function's SET clause: restored here, or
/// by the (sub)transaction abort on error.
pub(crate) fn replanned<T>(run: impl FnOnce() -> T) -> T {
    crate::pg::with_setting(c"plan_cache_mode", c"force_custom_plan", run)
}

/// Forgets the kept plan of `sql` for `variant` (one no longer wanted, or made for a table
/// that is gone).
pub(crate) fn forget_plan(sql: &'static str, variant: Variant) {
    PLANS.with(|p| p.borrow_mut().remove(&(sql, variant)));
}

/// Forgets the kept plans (after the extension was dropped and re-created).
pub(crate) fn forget_plans() {
    PLANS.with(|p| p.borrow_mut().clear());
}

/// An error caught in a subtransaction: its SQLSTATE and message.
pub(crate) struct CaughtSqlError {
    pub code: pgrx::PgSqlErrorCode,
    pub message: String,
    /// The error's DETAIL (also in `message`, in parentheses).
    pub detail: Option<String>,
}

impl CaughtSqlError {
    /// A lock we could not get in time (lock_timeout) or a deadlock: the call is busy, not bad.
    pub(crate) fn is_lock_conflict(&self) -> bool {
        matches!(
            self.code,
            pgrx::PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE | pgrx::PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
        )
    }
}

/// Runs `f` in a subtransaction: kept on success, rolled back on error (returned). The
/// caller's memory context and resource owner are restored either way.
pub(crate) fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtSqlError> {
    // SAFETY: the subtransaction is begun and ended here on every path (PgTryBuilder catches
    // the ERROR's longjmp); memory context and resource owner are put back as they were.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(move || Ok(f())))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        match result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        match result {
            Ok(r) => Ok(r),
            // A cancel, statement_timeout or shutdown is not the call's fault: it ends the
            // statement, as it would anywhere else (issue 22), never isolated and skipped.
            Err(e) if is_interrupt(caught_code(&e)) => (*e).rethrow(),
            Err(e) => {
                Err(CaughtSqlError { code: caught_code(&e), message: caught_message(&e), detail: caught_detail(&e) })
            }
        }
    }
}

/// SQLSTATE class 57 (operator intervention): query_canceled (cancel, statement_timeout),
/// admin_shutdown (terminate) and the like.
fn is_interrupt(code: pgrx::PgSqlErrorCode) -> bool {
    use pgrx::PgSqlErrorCode::*;
    matches!(
        code,
        ERRCODE_OPERATOR_INTERVENTION
            | ERRCODE_QUERY_CANCELED
            | ERRCODE_ADMIN_SHUTDOWN
            | ERRCODE_CRASH_SHUTDOWN
            | ERRCODE_CANNOT_CONNECT_NOW
            | ERRCODE_DATABASE_DROPPED
    )
}

fn caught_code(e: &pg_sys::panic::CaughtError) -> pgrx::PgSqlErrorCode {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.sql_error_code(),
    }
}

fn caught_detail(e: &pg_sys::panic::CaughtError) -> Option<String> {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.detail().map(str::to_string),
    }
}

pub(crate) fn caught_message(e: &pg_sys::panic::CaughtError) -> String {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => match r.detail() {
            Some(d) => format!("{} ({})", r.message(), d),
            None => r.message().to_string(),
        },
    }
}
