//! The launcher: connects to no database, waits until `dialpad.database` exists, then keeps
//! `dialpad.workers` workers running (starting any that stop).

use super::{report_activity, LAUNCHER_TYPE, WORKER_TYPE};
use crate::{gucs, pg::shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Registers the launcher; called from `_PG_init` while preloading.
pub(crate) fn register_launcher() {
    if gucs::workers() == 0 {
        return;
    }
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("pg_dialpad")
        .set_function("dialpad_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dialpad_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    if let Some(s) = shmem::get() {
        s.launcher_pid.store(crate::pg::my_pid(), Ordering::Release);
    }
    let database = gucs::database();
    let n = gucs::workers().min(shmem::MAX_WORKERS);
    let mut handles: Vec<Option<(DynamicBackgroundWorker, Instant)>> = (0..n).map(|_| None).collect();
    let mut said_missing = false;
    log!("pg_dialpad launcher started: {n} worker(s) for database \"{database}\"");

    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reads the configuration files outside any transaction, as a
            // backend's main loop does after SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let exists = BackgroundWorker::transaction(|| database_exists(&database));
        if !exists {
            if !said_missing {
                log!("pg_dialpad: database \"{database}\" does not exist yet; waiting for it (dialpad.database)");
                said_missing = true;
            }
            report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for database");
            if !BackgroundWorker::wait_latch(Some(Duration::from_secs(5))) {
                break;
            }
            continue;
        }
        said_missing = false;
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"supervising workers");
        for (i, h) in handles.iter_mut().enumerate() {
            let running = match h {
                Some((w, _)) => !matches!(w.pid(), Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)),
                None => slot_alive(i),
            };
            // At most one start a second per slot: a worker that dies at once never spins.
            let recently = h.as_ref().is_some_and(|(_, t)| t.elapsed() < Duration::from_secs(1));
            if !running && !recently {
                *h = start_worker(i).map(|w| (w, Instant::now()));
            }
        }
        report_activity(pg_sys::BackendState::STATE_IDLE, c"supervising workers");
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
    }
    if let Some(s) = shmem::get() {
        s.launcher_pid.store(0, Ordering::Release);
    }
    // Exit code 1: restarted after bgw_restart_time unless the server is shutting down
    // (so pg_terminate_backend on the launcher does not stop pg_dialpad for good).
    crate::pg::proc_exit(1);
}

fn slot_alive(i: usize) -> bool {
    shmem::get().is_some_and(|s| s.slots[i].pid.load(Ordering::Acquire) != 0)
}

/// Whether `name` is in pg_database. A heap scan, as the autovacuum launcher does: without
/// a database, the relcache may be unable to build the catalog's index (right after startup,
/// before the shared init file exists), so get_database_oid() could fail.
fn database_exists(name: &str) -> bool {
    // SAFETY: called inside a transaction (BackgroundWorker::transaction); the catalog is
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

fn start_worker(i: usize) -> Option<DynamicBackgroundWorker> {
    let r = BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {i}"))
        .set_type(WORKER_TYPE)
        .set_library("pg_dialpad")
        .set_function("dialpad_worker_main")
        .set_argument(Some(pg_sys::Datum::from(i)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(crate::pg::my_pid())
        .load_dynamic();
    match r {
        Ok(w) => Some(w),
        Err(_) => {
            warning!(
                "pg_dialpad: could not start worker {i}: no free background worker slot (raise max_worker_processes)"
            );
            None
        }
    }
}
