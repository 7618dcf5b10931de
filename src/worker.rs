//! The background workers that drain `dialpad.webhook_events` into `dialpad.calls`.
//!
//! Design (after contrib's worker_spi and pg_cron):
//! - A *launcher*, registered at server start, connects to no database. It waits (quietly,
//!   re-checking every few seconds) until `dialpad.database` exists, then starts
//!   `dialpad.workers` dynamic *workers* and starts any that stop again (crash,
//!   pg_terminate_backend). It is itself restarted by the postmaster if it dies.
//! - A worker connects to the database as `dialpad.role`, claims a shared-memory slot
//!   (pid, latch, counters), and loops: reload settings on SIGHUP (in the loop, not in the
//!   handler), run one batch in its own short transaction, report what it does in
//!   pg_stat_activity, and sleep on its latch, which every committed insert into
//!   webhook_events sets. While a batch comes back full it loops without sleeping.
//! - An error in a batch is logged, the transaction aborted, and the worker lives on.

use crate::{gucs, processor, rules, shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const LAUNCHER_TYPE: &str = "pg_dialpad launcher";
pub const WORKER_TYPE: &str = "pg_dialpad worker";

/// Registers the launcher; called from `_PG_init` while preloading.
pub fn register_launcher() {
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

fn report_activity(state: pg_sys::BackendState::Type, what: &std::ffi::CStr) {
    unsafe { pg_sys::pgstat_report_activity(state, what.as_ptr()) };
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dialpad_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    if let Some(s) = shmem::get() {
        s.launcher_pid.store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
    }
    let database = gucs::database();
    let n = gucs::workers().min(shmem::MAX_WORKERS);
    let mut handles: Vec<Option<(DynamicBackgroundWorker, Instant)>> = (0..n).map(|_| None).collect();
    let mut said_missing = false;
    log!("pg_dialpad launcher started: {n} worker(s) for database \"{database}\"");

    loop {
        if BackgroundWorker::sighup_received() {
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
                Some((w, _)) => !matches!(
                    w.pid(),
                    Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
                ),
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
    unsafe { pg_sys::proc_exit(1) };
}

fn slot_alive(i: usize) -> bool {
    shmem::get().is_some_and(|s| s.slots[i].pid.load(Ordering::Acquire) != 0)
}

/// Whether `name` is in pg_database. A heap scan, as the autovacuum launcher does: without
/// a database, the relcache may be unable to build the catalog's index (right after startup,
/// before the shared init file exists), so get_database_oid() could fail.
fn database_exists(name: &str) -> bool {
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
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
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

#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    if let Some(s) = shmem::get() {
        let i = arg.value();
        if i < shmem::MAX_WORKERS && s.slots[i].pid.load(Ordering::Acquire) == unsafe { pg_sys::MyProcPid } {
            s.slots[i].release();
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dialpad_worker_main(arg: pg_sys::Datum) {
    let index = arg.value();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(shared) = shmem::get() else { return };
    if index >= shmem::MAX_WORKERS || !shared.slots[index].claim() {
        return; // another live worker holds this slot
    }
    let slot = &shared.slots[index];
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(index)) };

    let database = gucs::database();
    let role = gucs::role();
    BackgroundWorker::connect_worker_to_spi(Some(&database), role.as_deref());
    // Asynchronous commit is safe here and saves a WAL flush per batch: the events were made
    // durable by their inserters, and a batch's call writes commit atomically with its
    // processed marks, so a crash can only lose whole batches, which are simply claimed again.
    // Whatever the database's default search_path, the worker resolves nothing through it.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    log!("pg_dialpad worker {index} started in database \"{database}\"");

    let mut said_no_extension = false;
    let mut last_error_log: Option<Instant> = None;
    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let mut full = false;
        if gucs::enabled() {
            report_activity(pg_sys::BackendState::STATE_RUNNING, c"processing webhook events");
            match run_one_batch() {
                Ok(Some(o)) => {
                    said_no_extension = false;
                    if o.handled > 0 || o.deferred > 0 {
                        slot.record_batch(o.handled, o.failed, o.dead, o.rejected);
                    }
                    full = o.full;
                }
                Ok(None) => {
                    if !said_no_extension {
                        log!("pg_dialpad worker {index}: extension pg_dialpad is not installed in \"{database}\"; waiting");
                        said_no_extension = true;
                    }
                }
                Err(msg) => {
                    slot.errors.fetch_add(1, Ordering::Relaxed);
                    // At most one log line a minute for a recurring failure.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warning!("pg_dialpad worker {index}: batch failed and was rolled back: {msg}");
                        last_error_log = Some(Instant::now());
                    }
                }
            }
            report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook events");
        }
        if full {
            check_for_interrupts!();
            continue;
        }
        if !BackgroundWorker::wait_latch(Some(gucs::poll_interval())) {
            break;
        }
    }
    slot.release();
    // Exit code 0: the launcher, not the postmaster, decides whether to start it again.
}

/// One batch in its own transaction. Ok(None) when the extension is not installed.
fn run_one_batch() -> Result<Option<processor::BatchOutcome>, String> {
    let result: Result<Option<processor::BatchOutcome>, String> = PgTryBuilder::new(|| {
        Ok(BackgroundWorker::transaction(|| {
            if !extension_installed() {
                return None;
            }
            let rules = rules::current_or_raise();
            Some(processor::process_batch(gucs::batch_size(), &rules, gucs::max_attempts(), processor::Scan::FromFloor))
        }))
    })
    .catch_others(|e| Err(processor::caught_message(&e)))
    .execute();
    if result.is_err() {
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        }
        processor::forget_plans();
    }
    result
}

fn extension_installed() -> bool {
    let oid = unsafe { pg_sys::get_extension_oid(c"pg_dialpad".as_ptr(), true) };
    oid != pg_sys::InvalidOid
}
