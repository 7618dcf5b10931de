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
            crate::pg::backend::reload_config_file();
        }
        let exists = BackgroundWorker::transaction(|| crate::pg::backend::database_exists(&database));
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
