//! Safe wrappers for the PostgreSQL globals and calls used all over the extension, so that
//! each `unsafe` contract is stated once, here.

pub(crate) mod backend;
pub(crate) mod counters;
pub(crate) mod datum;
pub(crate) mod error;
pub(crate) mod partitions;
pub(crate) mod readonly;
pub(crate) mod shmem;
pub(crate) mod spi;

use pgrx::pg_sys;

/// This process's pid.
pub(crate) fn my_pid() -> i32 {
    // SAFETY: MyProcPid is set by the postmaster before any extension code runs in a process
    // and never changes afterwards; a plain read of an integer.
    unsafe { pg_sys::MyProcPid }
}

/// The current time as a TimestampTz (microseconds since 2000-01-01).
pub(crate) fn now() -> pg_sys::TimestampTz {
    // SAFETY: GetCurrentTimestamp reads the clock; no preconditions, no side effects.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The start of the current transaction as a TimestampTz (what SQL's now() returns).
pub(crate) fn transaction_start() -> pg_sys::TimestampTz {
    // SAFETY: valid inside a transaction, which every caller (triggers, SQL functions) is.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

/// The OID of the database this backend is connected to (InvalidOid before connecting).
pub(crate) fn my_database() -> pg_sys::Oid {
    // SAFETY: MyDatabaseId is set once when the backend connects; a plain read.
    unsafe { pg_sys::MyDatabaseId }
}

/// Whether a process with this pid exists (kill with signal 0 sends nothing).
pub(crate) fn process_alive(pid: i32) -> bool {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists and may be signaled.
    pid > 0 && unsafe { kill(pid, 0) } == 0
}

/// Runs `f` with the setting `name` = `value` for its duration, scoped like a function's
/// SET clause: restored when `f` returns, or by the (sub)transaction's abort if it raises.
pub(crate) fn with_setting<R>(name: &std::ffi::CStr, value: &std::ffi::CStr, f: impl FnOnce() -> R) -> R {
    with_settings(&[(name, value)], f)
}

/// [`with_setting`] for several settings at once (one nest level).
pub(crate) fn with_settings<R>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level is opened and closed around `f` exactly as fmgr does for a
    // function's SET clause; set_config_option gets valid C strings and GUC_ACTION_SAVE, so
    // AtEOXact_GUC (here, or the abort's) restores the previous values.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        // SAFETY: valid C strings; GUC_ACTION_SAVE within the nest level opened just above.
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let out = f();
    // SAFETY: closes the nest level opened above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    out
}

/// The current value of a setting, if it exists.
pub(crate) fn setting(name: &std::ffi::CStr) -> Option<String> {
    // SAFETY: GetConfigOption returns NULL or a C string owned by the GUC machinery, valid
    // until the setting changes; it is copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Takes a transaction-level exclusive advisory lock on the 64-bit `key` in `namespace`
/// (shown as `objsubid` in pg_locks), in this database. With `wait`, waits as any lock
/// does (lock_timeout and interrupts apply); without, returns at once. Returns false when
/// the lock is held elsewhere (without `wait`) or the shared lock table is full: it never
/// raises "out of shared memory", which would fail the caller's whole transaction.
pub(crate) fn advisory_xact_lock(namespace: u16, key: u64, wait: bool) -> bool {
    // SAFETY: a fully initialized advisory LOCKTAG, as pg_advisory_xact_lock builds it;
    // LockAcquireExtended with reportMemoryError = false returns NOT_AVAIL instead of
    // raising when the lock table is full. The lock is released at transaction end.
    unsafe {
        let mut tag: pg_sys::LOCKTAG = std::mem::zeroed();
        tag.locktag_field1 = my_database().into();
        tag.locktag_field2 = (key >> 32) as u32;
        tag.locktag_field3 = key as u32;
        tag.locktag_field4 = namespace;
        tag.locktag_type = pg_sys::LockTagType::LOCKTAG_ADVISORY as u8;
        tag.locktag_lockmethodid = pg_sys::USER_LOCKMETHOD as u8;
        let r = pg_sys::LockAcquireExtended(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            !wait,
            false,
            std::ptr::null_mut(),
            // PostgreSQL 18 added logLockFailure (log_lock_failures): a tried lock that is
            // busy is normal here, not worth a log line.
            #[cfg(feature = "pg18")]
            false,
        );
        r != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

/// Runs `f` as the owner of relation `rel` (SECURITY_LOCAL_USERID_CHANGE, as fmgr does for a
/// SECURITY DEFINER function); the caller's user is restored after, or by the abort.
pub(crate) fn as_owner_of<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: a syscache lookup of an existing relation's pg_class row (locked by nobody: a
    // concurrent DROP makes the lookup fail, then we run as ourselves and the read fails
    // with a permission error). The user switch is undone on return; on an ERROR, the
    // (sub)transaction abort restores the user and security context it saved.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, pg_sys::Datum::from(rel));
        if tuple.is_null() {
            return f();
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        let (mut user, mut context) = (pg_sys::InvalidOid, 0i32);
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
        let out = f();
        pg_sys::SetUserIdAndSecContext(user, context);
        out
    }
}

/// The OID of relation `dialpad.<name>`, or InvalidOid when it (or the schema) is missing.
pub(crate) fn dialpad_relation(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: catalog lookups by name with valid C strings; InvalidOid when absent.
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"dialpad".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(name.as_ptr(), ns)
    }
}

thread_local! {
    /// Relcache invalidations seen per watched relation, and for "every relation".
    static RELCACHE_SEEN: std::cell::RefCell<std::collections::HashMap<pg_sys::Oid, u64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static RELCACHE_SEEN_ALL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// # Safety
/// Called only by PostgreSQL's invalidation machinery, as registered in
/// [`watch_relcache`]; counts in thread-locals only.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn count_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid {
        RELCACHE_SEEN_ALL.with(|n| n.set(n.get().wrapping_add(1)));
    } else {
        RELCACHE_SEEN.with(|m| {
            if let Some(n) = m.borrow_mut().get_mut(&relid) {
                *n = n.wrapping_add(1);
            }
        });
    }
}

/// Called once from `_PG_init`: one relcache callback serves every backend-local cache
/// (the rules, the webhook sources, the inbox's partitions).
pub(crate) fn watch_relcache() {
    // SAFETY: registers a static callback once per process; PostgreSQL keeps a fixed number
    // of callback slots, and we take one.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(count_relcache_invalidation), pg_sys::Datum::from(0)) };
}

/// A number that changes whenever one of `rels` is invalidated in the relcache (an edit
/// committed, a partition attached, ...): a cache built while it had some value is stale
/// once it has another. Read it before building the cache. Watching starts at the first
/// call for a relation.
pub(crate) fn relcache_generation(rels: &[pg_sys::Oid]) -> u64 {
    let mut g = RELCACHE_SEEN_ALL.with(|n| n.get());
    RELCACHE_SEEN.with(|m| {
        let mut m = m.borrow_mut();
        for rel in rels.iter().filter(|r| **r != pg_sys::InvalidOid) {
            g = g.wrapping_add(*m.entry(*rel).or_insert(0));
        }
    });
    g
}

/// Ends this process through PostgreSQL's exit path (the shared-memory exit callbacks run).
#[allow(unreachable_code)] // proc_exit is `!` in the bindings of some versions only
pub(crate) fn proc_exit(code: i32) -> ! {
    // SAFETY: called from a background worker's main loop, outside any critical section.
    unsafe { pg_sys::proc_exit(code) };
    unreachable!("proc_exit returned")
}

/// Sets a setting for the rest of this session (as the superuser's SET would, but above
/// any later SET: PGC_S_OVERRIDE), outside any transaction: the background workers' own
/// session settings.
pub(crate) fn set_session_setting(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: a plain GUC assignment with valid C strings.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Reserves the settings' prefix `prefix`: an unknown `prefix.x` is then an error (call
/// after defining the prefix's settings, from `_PG_init`).
pub(crate) fn reserve_setting_prefix(prefix: &std::ffi::CStr) {
    // SAFETY: called from _PG_init after our settings are defined, with a valid C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) };
}

/// Processes the invalidation messages queued for this backend (catalog edits committed by
/// other sessions since its last lock acquisition), so that caches checked next see them.
pub(crate) fn accept_invalidations() {
    // SAFETY: allowed anywhere inside a transaction, as PostgreSQL's own lock manager does.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}
