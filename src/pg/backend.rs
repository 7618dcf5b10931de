//! This process as PostgreSQL runs it: its configuration file, statistics, activity report,
//! exit callbacks, signals and stack, and the server's state it reads (recovery, the
//! invalidation counter, settings fixed at start). Safe wrappers, each contract stated here.

use pgrx::pg_sys;

/// Whether the server is a hot standby (in recovery).
pub(crate) fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Re-reads the configuration file (after SIGHUP), as a backend's main loop does.
pub(crate) fn reload_config_file() {
    // SAFETY: called from a background worker's main loop, outside any transaction and
    // critical section, as PostgreSQL's own processes do on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// Flushes this process's table and function statistics if PostgreSQL's interval allows
/// (at most once a second); returns the milliseconds until the next flush is due, 0 if
/// nothing is pending.
pub(crate) fn report_stats() -> i64 {
    // SAFETY: outside a transaction, as PostgreSQL's own main loops call it.
    unsafe { pg_sys::pgstat_report_stat(false) }
}

/// How many invalidation messages this process has read so far: unchanged, no catalog
/// change (GRANT, REVOKE, DROP, ALTER) has reached it since.
pub(crate) fn invalidations_read() -> u64 {
    // SAFETY: a plain read of this process's counter, which only this process updates.
    unsafe { pg_sys::SharedInvalidMessageCounter }
}

/// Whether the postmaster that started this process is gone.
pub(crate) fn postmaster_gone() -> bool {
    // SAFETY: getppid(2) has no preconditions; PostmasterPid is fixed at fork.
    unsafe { libc::getppid() != pg_sys::PostmasterPid }
}

/// Whether a SIGTERM (or pg_terminate_backend) asked this process to end.
pub(crate) fn die_pending() -> bool {
    // SAFETY: a plain read of a flag the signal handler sets.
    unsafe { pg_sys::ProcDiePending != 0 }
}

/// Raises PostgreSQL's "stack depth limit exceeded" (54001) if the stack is over
/// max_stack_depth.
pub(crate) fn check_stack_depth() {
    // SAFETY: compares this stack's depth with max_stack_depth; raises an ERROR if over.
    unsafe { pg_sys::check_stack_depth() };
}

/// Whether a message at `level` (pg_sys::DEBUG1, ...) would reach the log or the client.
pub(crate) fn message_level_is_interesting(level: u32) -> bool {
    // SAFETY: reads log_min_messages and client_min_messages; no side effects.
    unsafe { pg_sys::message_level_is_interesting(level as i32) }
}

/// max_locks_per_transaction and the number of backend slots, fixed at server start.
pub(crate) fn lock_table_settings() -> (i32, i32) {
    // SAFETY: plain reads of integer settings fixed at server start.
    unsafe { (pg_sys::max_locks_per_xact, pg_sys::MaxBackends) }
}

/// Queues a relcache invalidation of `relid` for the end of the current transaction (every
/// backend's caches watching it are then rebuilt).
pub(crate) fn invalidate_relcache(relid: pg_sys::Oid) {
    // SAFETY: queues an invalidation of an existing relation (the caller's own table),
    // inside the transaction that changed it.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// Shows what this process does in pg_stat_activity (state and query text).
pub(crate) fn report_activity(state: pg_sys::BackendState::Type, what: &std::ffi::CStr) {
    // SAFETY: a valid C string for the duration of the call (PostgreSQL copies it into
    // this backend's shared activity slot).
    unsafe { pg_sys::pgstat_report_activity(state, what.as_ptr()) };
}

/// Sets the statement start time (what statement_timestamp() and pg_stat_activity show) to now.
pub(crate) fn start_statement_clock() {
    // SAFETY: sets a backend-local timestamp; no preconditions.
    unsafe { pg_sys::SetCurrentStatementStartTimestamp() };
}

/// Whether the library is being loaded by shared_preload_libraries (at server start).
pub(crate) fn preloading() -> bool {
    // SAFETY: a plain read of a flag PostgreSQL sets while it loads preloaded libraries.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Whether the server runs for pg_upgrade (binary upgrade mode).
pub(crate) fn binary_upgrade() -> bool {
    // SAFETY: a plain read of a flag PostgreSQL sets at start.
    unsafe { pg_sys::IsBinaryUpgrade }
}

/// A callback PostgreSQL calls as the process exits: (exit code, the argument given).
pub(crate) type ExitCallback = unsafe extern "C-unwind" fn(i32, pg_sys::Datum);

/// Registers `callback` to run, with `arg`, before this process detaches from shared memory
/// (on a normal exit and on a FATAL; not on a crash).
pub(crate) fn before_shmem_exit(callback: ExitCallback, arg: pg_sys::Datum) {
    // SAFETY: registers a static function; PostgreSQL keeps a fixed number of slots, and
    // each caller registers once per process.
    unsafe { pg_sys::before_shmem_exit(Some(callback), arg) };
}

/// The name of database `oid`, None if it was dropped meanwhile.
pub(crate) fn database_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: get_database_name returns NULL (database dropped meanwhile) or a palloc'd C
    // string, copied at once.
    unsafe {
        let p = pg_sys::get_database_name(oid);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Whether this backend is running `CREATE EXTENSION` or `ALTER EXTENSION ... UPDATE` of
/// pg_dialpad (a script of ours is executing).
pub(crate) fn running_our_script() -> bool {
    // SAFETY: backend globals, read inside a transaction; a catalog lookup by a valid C string.
    unsafe {
        pg_sys::creating_extension
            && pg_sys::CurrentExtensionObject != pg_sys::InvalidOid
            && pg_sys::CurrentExtensionObject == pg_sys::get_extension_oid(c"pg_dialpad".as_ptr(), true)
    }
}

unsafe extern "C-unwind" {
    /// PostgreSQL's SIGTERM handler for backends (tcop/postgres.c), the raw C symbol: the
    /// binding pgrx generates is a Rust wrapper, which cannot be a signal handler.
    #[link_name = "die"]
    fn postgres_die(postgres_signal_arg: std::ffi::c_int);
}

/// Installs PostgreSQL's own SIGTERM handler, as worker_spi does: die() only sets
/// ProcDiePending/InterruptPending and the latch, which CHECK_FOR_INTERRUPTS acts on (inside
/// lock waits too), so the process leaves promptly from wherever it is.
pub(crate) fn die_on_sigterm() {
    // SAFETY: installs a C signal handler PostgreSQL itself uses in backends.
    unsafe {
        // PostgreSQL 18 made pqsignal a macro over the backend's pqsignal_be.
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
}

/// Sleeps until this process's latch is set (a signal), `socket` is readable, or `ms`
/// passed; the process exits at once if the postmaster dies. The latch is reset.
pub(crate) fn wait_latch_or_socket(socket: std::os::fd::RawFd, ms: i64) {
    let events = pg_sys::WL_LATCH_SET | pg_sys::WL_SOCKET_READABLE | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    // SAFETY: MyLatch is this process's latch; the caller owns the socket and keeps it open
    // across the call; WaitLatchOrSocket is called outside any critical section.
    unsafe {
        let rc = pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, events as i32, socket, ms as _, pg_sys::PG_WAIT_EXTENSION);
        if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

/// After an ERROR caught in a main loop's own transaction: aborts that transaction and
/// puts memory back in TopMemoryContext, as PostgreSQL's own error recovery in a main loop
/// does. Nothing from the aborted transaction may be used after.
pub(crate) fn recover_from_error() {
    // SAFETY: the caller caught the ERROR outside any subtransaction of its own and uses
    // nothing allocated in the aborted transaction afterwards.
    unsafe {
        pg_sys::AbortCurrentTransaction();
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    }
}

/// Whether `name` is in pg_database. A heap scan, as the autovacuum launcher does: without
/// a database, the relcache may be unable to build the catalog's index (right after startup,
/// before the shared init file exists), so get_database_oid() could fail. Call it inside a
/// transaction.
pub(crate) fn database_exists(name: &str) -> bool {
    // SAFETY: called inside a transaction (the caller's contract); the catalog is
    // opened, scanned and closed here with matching locks; each tuple is read as the
    // pg_database row struct it is, only while the scan holds it.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        let mut found = false;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
            if datname.to_bytes() == name.as_bytes() {
                found = true;
                break;
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        found
    }
}

/// Runs `f` in a transaction of its own while the process exits (from a before_shmem_exit
/// callback), after ending whatever transaction the exit interrupted: what PostgreSQL's
/// RemoveTempRelationsCallback does in the same place. An ERROR inside becomes FATAL during
/// exit, and the exit goes on without `f`'s work.
pub(crate) fn in_exit_transaction<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: only from an exit callback registered after the connection (so it runs
    // before InitPostgres's ShutdownPostgres), outside any critical section.
    unsafe {
        pg_sys::AbortOutOfAnyTransaction();
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    // SAFETY: pops the snapshot pushed above and commits the transaction started above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// A callback PostgreSQL calls at each transaction event (commit, abort, prepare, ...).
pub(crate) type XactCallback = unsafe extern "C-unwind" fn(pg_sys::XactEvent::Type, *mut std::ffi::c_void);

/// Registers `callback` for every transaction event of this process, without argument.
pub(crate) fn on_xact_event(callback: XactCallback) {
    // SAFETY: registers a static function once per process (the caller's contract).
    unsafe { pg_sys::RegisterXactCallback(Some(callback), std::ptr::null_mut()) };
}

/// Whether the extension `name` is installed in this database.
pub(crate) fn extension_installed(name: &std::ffi::CStr) -> bool {
    // SAFETY: a catalog lookup by name; InvalidOid when absent.
    unsafe { pg_sys::get_extension_oid(name.as_ptr(), true) != pg_sys::InvalidOid }
}

/// The name of relation `rel` and the OID of its schema; None if it does not exist.
pub(crate) fn relation_name(rel: pg_sys::Oid) -> Option<(String, pg_sys::Oid)> {
    // SAFETY: syscache lookups of a relation's name and schema; the name is copied out
    // before the next lookup.
    unsafe {
        let name = pg_sys::get_rel_name(rel);
        if name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
        Some((name, pg_sys::get_rel_namespace(rel)))
    }
}

/// The relation named `name` in schema `namespace`, if there is one.
pub(crate) fn relation_in(name: &str, namespace: pg_sys::Oid) -> Option<pg_sys::Oid> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a syscache lookup by a valid C string; InvalidOid when absent.
    let rel = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    (rel != pg_sys::InvalidOid).then_some(rel)
}

/// Locks relation `rel` in `mode` (pg_sys::RowExclusiveLock, ...) to the end of the transaction.
pub(crate) fn lock_relation(rel: pg_sys::Oid, mode: u32) {
    // SAFETY: a regular relation lock, released by the transaction's end.
    unsafe { pg_sys::LockRelationOid(rel, mode as pg_sys::LOCKMODE) };
}

/// Whether relation `rel` has a column named `name` (not dropped).
pub(crate) fn has_column(rel: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    // SAFETY: a syscache lookup by a valid C string.
    unsafe { pg_sys::get_attnum(rel, name.as_ptr()) != pg_sys::InvalidAttrNumber as i16 }
}
