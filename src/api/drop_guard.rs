//! `DROP EXTENSION pg_dialpad` while events flow, on the first try.
//!
//! DROP EXTENSION takes its table locks one by one as it walks the dependency graph, in an
//! order unrelated to the order the workers and ingesting sessions take them; with both at
//! work a deadlock was the rule. An event trigger at `ddl_command_start` (which fires before
//! the drop takes any lock) pauses the workers, waits for a running batch to end, and takes
//! every table's lock up front in the order every writer takes them (rules, inbox, calls,
//! rejections). From there the drop waits for nobody who waits for it.
//!
//! The pause is cluster-wide, so only a role that may drop the extension can cause it: the
//! guard does nothing for anybody else (who then gets PostgreSQL's own 42501 from the
//! DROP), and the mark goes away with the (sub)transaction that set it, a `ROLLBACK TO
//! SAVEPOINT` included (src/pg/shmem.rs).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::Duration;

/// The tables, in the order their locks are taken.
const LOCK_IN_ORDER_SQL: &str = "DO $guard$
DECLARE t pg_catalog.regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY(
        SELECT pg_catalog.to_regclass(n) FROM pg_catalog.unnest(ARRAY[
            'dialpad.call_statuses', 'dialpad.status_transitions', 'dialpad.state_mapping',
            'dialpad.webhook_events', 'dialpad.calls', 'dialpad.rejected_transitions']) WITH ORDINALITY AS u(n, i)
         WHERE pg_catalog.to_regclass(n) IS NOT NULL ORDER BY i)
    LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t);
    END LOOP;
END
$guard$";

/// What a DROP statement drops of ours.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dropped {
    Extension,
    Schema,
}

/// Whether the current user may drop it: has the privileges of its owner (PostgreSQL's own
/// ownership check; a superuser always has). False when it does not exist.
fn may_drop(what: Dropped) -> bool {
    let sql = match what {
        Dropped::Extension => {
            "SELECT pg_catalog.pg_has_role(e.extowner, 'USAGE') FROM pg_catalog.pg_extension e
              WHERE e.extname OPERATOR(pg_catalog.=) 'pg_dialpad'"
        }
        Dropped::Schema => {
            "SELECT pg_catalog.pg_has_role(n.nspowner, 'USAGE') FROM pg_catalog.pg_namespace n
              WHERE n.nspname OPERATOR(pg_catalog.=) 'dialpad'"
        }
    };
    Spi::get_one::<bool>(sql).ok().flatten().unwrap_or(false)
}

/// Whether a DROP statement names this extension (or its schema), and which.
///
/// # Safety
/// `tree` must be a valid parse tree node (or null).
unsafe fn drops_pg_dialpad(tree: *mut pg_sys::Node) -> Option<Dropped> {
    // SAFETY: the caller's contract; node tags are checked before each cast.
    unsafe {
        if tree.is_null() || !pgrx::is_a(tree, pg_sys::NodeTag::T_DropStmt) {
            return None;
        }
        let stmt = &*(tree as *mut pg_sys::DropStmt);
        let (what, ours) = match stmt.removeType {
            pg_sys::ObjectType::OBJECT_EXTENSION => (Dropped::Extension, "pg_dialpad"),
            pg_sys::ObjectType::OBJECT_SCHEMA => (Dropped::Schema, "dialpad"),
            _ => return None,
        };
        let objects = pgrx::PgList::<pg_sys::Node>::from_pg(stmt.objects);
        let named = objects.iter_ptr().any(|n| {
            !n.is_null()
                && pgrx::is_a(n, pg_sys::NodeTag::T_String)
                && std::ffi::CStr::from_ptr((*(n as *mut pg_sys::String)).sval).to_bytes() == ours.as_bytes()
        });
        named.then_some(what)
    }
}

#[unsafe(no_mangle)]
pub(crate) extern "C" fn pg_finfo_dialpad_before_drop() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The event trigger function (`dialpad.before_drop()`, ON ddl_command_start).
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dialpad_before_drop(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid (fmgr contract); context is checked to be EventTriggerData
    // before it is read.
    let tree = unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || !pgrx::is_a(ctx, pg_sys::NodeTag::T_EventTriggerData) {
            crate::pg::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED,
                "dialpad.before_drop() can only be called as an event trigger".into(),
                None,
                None,
            );
        }
        (*(ctx as *mut pg_sys::EventTriggerData)).parsetree
    };
    // SAFETY: the parse tree of the statement the event trigger fires for.
    let Some(what) = (unsafe { drops_pg_dialpad(tree) }) else {
        return pg_sys::Datum::from(0);
    };
    // Before anything is paused or locked: a role that may not drop it gets PostgreSQL's own
    // 42501 from the DROP itself, and has changed nothing on the way.
    if may_drop(what) {
        if let Some(shared) = crate::pg::shmem::get() {
            shared.begin_drop();
            shared.wake_workers();
            if !shared.wait_for_workers_idle(Duration::from_secs(10)) {
                warning!("pg_dialpad: a worker is still inside a batch after 10 s; DROP EXTENSION goes on and may wait for it");
            }
        }
        Spi::run(LOCK_IN_ORDER_SQL).unwrap_or_else(|e| {
            crate::pg::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("pg_dialpad could not prepare the drop: {e}"),
                None,
                None,
            )
        });
    }
    pg_sys::Datum::from(0)
}
