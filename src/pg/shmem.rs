//! Shared memory: one slot per worker (pid, latch, counters) and a one-minute ring of
//! processed-event counts. Everything is an atomic, so readers never block a worker.
//!
//! Exists only when pg_dialpad is in shared_preload_libraries; every accessor returns None
//! otherwise and callers degrade gracefully (no wake-ups, no counters).

use pgrx::pg_sys;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

pub(crate) const MAX_WORKERS: usize = 32;
const RING: usize = 64;

#[repr(C)]
pub(crate) struct WorkerSlot {
    pub pid: AtomicI32,
    /// `*mut pg_sys::Latch` of the worker's PGPROC (shared memory, valid in every process).
    latch: AtomicUsize,
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub dead: AtomicU64,
    pub rejected: AtomicU64,
    /// TimestampTz; 0 = never.
    pub last_batch_at: AtomicI64,
    pub started_at: AtomicI64,
    /// TimestampTz: when the worker last read its settings (at start, then at each reload).
    pub settings_read_at: AtomicI64,
    /// Whether the worker is inside a batch's transaction now.
    pub in_batch: AtomicBool,
    /// A [`WorkerState`].
    state: AtomicU8,
}

/// What a running worker is doing, for dialpad.worker_status().
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum WorkerState {
    Processing = 0,
    NoExtension = 1,
    VersionMismatch = 2,
    Paused = 3,
    /// The worker read dialpad.enabled = off: it claims nothing.
    Disabled = 4,
}

#[repr(C)]
pub(crate) struct Shared {
    pub launcher_pid: AtomicI32,
    pub slots: [WorkerSlot; MAX_WORKERS],
    ring_second: [AtomicI64; RING],
    ring_count: [AtomicU64; RING],
    /// Deliveries by database, source and outcome, until flushed (pg/counters.rs).
    pub ingest: super::counters::IngestCounters,
    /// pid of a backend running DROP EXTENSION pg_dialpad (0: none); the workers start no
    /// batch while it is set and that backend lives.
    drop_pid: AtomicI32,
    /// This server lifetime's generation, naming the in-flight files (pipeline/inflight.rs):
    /// 0 until the first processor sets it; every crash restart zeroes it again.
    pub inflight_generation: AtomicI64,
    /// The recovery of the batches a crash left in flight (pipeline/inflight.rs): the pid of
    /// the backend doing a recovery step now, minus that pid while it reads the files, or 0.
    pub inflight_recovery: AtomicI32,
    /// The databases (OIDs) with nothing left to recover in this server lifetime.
    pub inflight_clean: [std::sync::atomic::AtomicU32; 16],
    /// The inbox's queue of dialpad.database as the first worker last counted it.
    pub queue: QueueFigures,
}

/// dialpad.queue_stats of dialpad.database, counted by the first worker every few seconds
/// (bgworker/worker.rs) so that the HTTP listener's /metrics reads them without a query.
pub(crate) struct QueueFigures {
    pub pending: AtomicI64,
    pub due: AtomicI64,
    pub dead: AtomicI64,
    pub oldest_pending_age_seconds: AtomicI64,
    /// When they were counted (seconds since 2000-01-01; 0: never).
    counted_at: AtomicI64,
}

impl QueueFigures {
    pub(crate) fn set(&self, pending: i64, due: i64, dead: i64, oldest_pending_age_seconds: i64) {
        self.pending.store(pending, Ordering::Relaxed);
        self.due.store(due, Ordering::Relaxed);
        self.dead.store(dead, Ordering::Relaxed);
        self.oldest_pending_age_seconds.store(oldest_pending_age_seconds, Ordering::Relaxed);
        self.counted_at.store(now_seconds(), Ordering::Release);
    }

    /// Seconds since the figures were counted; None if they never were.
    pub(crate) fn age_seconds(&self) -> Option<i64> {
        let at = self.counted_at.load(Ordering::Acquire);
        (at != 0).then(|| (now_seconds() - at).max(0))
    }
}

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;

/// Called from `_PG_init` while preloading.
pub(crate) fn init() {
    // SAFETY: runs once, in the postmaster, while shared_preload_libraries are loaded
    // (the only time hooks may be chained); the previous hooks are kept and called first.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

/// # Safety
/// Called only by PostgreSQL, as the shmem_request_hook installed by [`init`].
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster at shmem_request time, the one moment
    // RequestAddinShmemSpace is allowed; PREV_SHMEM_REQUEST_HOOK was set by init().
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
    }
}

/// # Safety
/// Called only by PostgreSQL, as the shmem_startup_hook installed by [`init`].
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called in the postmaster (and in EXEC_BACKEND children) after shared memory
    // exists; AddinShmemInitLock serializes ShmemInitStruct, which returns memory of the
    // requested size; zero bytes are a valid `Shared` (atomics). SHARED is written here only.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        // AddinShmemInitLock is MainLWLockArray[21] (storage/lwlocknames.h, PG 13-18).
        let init_lock = std::ptr::addr_of_mut!((*pg_sys::MainLWLockArray.add(21)).lock);
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(c"pg_dialpad".as_ptr(), std::mem::size_of::<Shared>(), &mut found);
        if !found {
            // All-zero bytes are valid atomics: pid 0 = free slot, counters 0.
            std::ptr::write_bytes(p as *mut u8, 0, std::mem::size_of::<Shared>());
        }
        SHARED = p as *mut Shared;
        pg_sys::LWLockRelease(init_lock);
    }
}

pub(crate) fn get() -> Option<&'static Shared> {
    // SAFETY: SHARED is written once, in shmem_startup, before any backend or worker runs
    // extension code, and points to shared memory that lives as long as the server.
    unsafe {
        let p = SHARED;
        if p.is_null() {
            None
        } else {
            Some(&*p)
        }
    }
}

fn now_seconds() -> i64 {
    crate::pg::now().div_euclid(1_000_000)
}

impl WorkerSlot {
    /// Claims this slot for the calling process; false if a live process holds it.
    pub(crate) fn claim(&self) -> bool {
        let me = crate::pg::my_pid();
        let held = self.pid.load(Ordering::Acquire);
        if held != 0 && held != me && crate::pg::process_alive(held) {
            return false;
        }
        self.pid.store(me, Ordering::Release);
        // SAFETY: MyProc is this backend's PGPROC in shared memory, set before any worker
        // code runs; its latch lives as long as the process, and the slot is released
        // (latch cleared) before the process exits (before_shmem_exit in the worker).
        unsafe {
            let latch = std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch);
            self.latch.store(latch as usize, Ordering::Release);
        }
        self.started_at.store(crate::pg::now(), Ordering::Relaxed);
        self.settings_read_at.store(crate::pg::now(), Ordering::Relaxed);
        self.in_batch.store(false, Ordering::Release);
        self.set_state(WorkerState::Processing);
        true
    }

    pub(crate) fn release(&self) {
        self.in_batch.store(false, Ordering::Release);
        self.latch.store(0, Ordering::Release);
        self.pid.store(0, Ordering::Release);
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> WorkerState {
        match self.state.load(Ordering::Relaxed) {
            1 => WorkerState::NoExtension,
            2 => WorkerState::VersionMismatch,
            3 => WorkerState::Paused,
            4 => WorkerState::Disabled,
            _ => WorkerState::Processing,
        }
    }

    pub(crate) fn record_batch(&self, events: u64, errors: u64, dead: u64, rejected: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
        self.dead.fetch_add(dead, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.last_batch_at.store(crate::pg::now(), Ordering::Relaxed);
    }
}

impl Shared {
    /// Counts events handled now, for the processed-in-the-last-minute figure.
    pub(crate) fn note_processed(&self, n: u64) {
        if n == 0 {
            return;
        }
        let sec = now_seconds();
        let i = sec.rem_euclid(RING as i64) as usize;
        let old = self.ring_second[i].load(Ordering::Acquire);
        if old != sec && self.ring_second[i].compare_exchange(old, sec, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.ring_count[i].store(0, Ordering::Release);
        }
        self.ring_count[i].fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn processed_last_minute(&self) -> u64 {
        let now = now_seconds();
        (0..RING)
            .filter(|&i| {
                let s = self.ring_second[i].load(Ordering::Acquire);
                s > now - 60 && s <= now
            })
            .map(|i| self.ring_count[i].load(Ordering::Acquire))
            .sum()
    }

    /// Marks a DROP EXTENSION in progress in the calling backend. The mark is cleared when
    /// the (sub)transaction that set it rolls back ([`on_subxact_event`]: `ROLLBACK TO` a
    /// savepoint taken before the DROP) or when the transaction ends ([`on_xact_event`]).
    ///
    /// The caller must have checked that the current user may drop the extension (its
    /// owner, or a superuser): the mark pauses every worker of the cluster.
    pub(crate) fn begin_drop(&self) {
        register_xact_callback();
        if !DROP_AT_XACT_END.with(|d| d.replace(true)) {
            // A mark already set in this transaction belongs to this subtransaction or to one
            // of its parents: it is kept where it is.
            // SAFETY: plain read of the current subtransaction's id, inside a transaction.
            DROP_SUBXACT.with(|d| d.set(unsafe { pg_sys::GetCurrentSubTransactionId() }));
        }
        // SeqCst with the workers' `in_batch` store and drop check: either the worker sees the
        // drop, or this backend sees the worker busy and waits (a store-load pair).
        self.drop_pid.store(crate::pg::my_pid(), Ordering::SeqCst);
    }

    /// Whether a live backend is dropping the extension.
    pub(crate) fn drop_in_progress(&self) -> bool {
        let pid = self.drop_pid.load(Ordering::SeqCst);
        pid != 0 && crate::pg::process_alive(pid)
    }

    /// Waits (at most `timeout`) until no worker is inside a batch.
    pub(crate) fn wait_for_workers_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.slots.iter().all(|s| !s.in_batch.load(Ordering::SeqCst) || s.pid.load(Ordering::Acquire) == 0) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            pgrx::check_for_interrupts!();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Sets the latch of every running worker.
    pub(crate) fn wake_workers(&self) {
        for slot in &self.slots {
            let latch = slot.latch.load(Ordering::Acquire);
            if latch != 0 {
                // SAFETY: a latch pointer stored by claim(): a PGPROC latch in shared memory,
                // valid in every process; SetLatch on a latch whose owner has exited is harmless.
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        }
    }
}

thread_local! {
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static DROP_AT_XACT_END: Cell<bool> = const { Cell::new(false) };
    /// The subtransaction whose rollback clears the DROP EXTENSION mark.
    static DROP_SUBXACT: Cell<pg_sys::SubTransactionId> = const { Cell::new(0) };
}

fn register_xact_callback() {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // SAFETY: static callbacks with no argument, registered once per backend.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
        }
    }
}

/// Clears this backend's DROP EXTENSION mark at the end of its transaction.
fn end_drop() {
    if DROP_AT_XACT_END.with(|d| d.replace(false)) {
        if let Some(s) = get() {
            let me = crate::pg::my_pid();
            let _ = s.drop_pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
            s.wake_workers();
        }
    }
}

/// # Safety
/// Called only by PostgreSQL, as the transaction callback registered here; touches only
/// this backend's thread-locals and shared memory atomics.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            end_drop();
            if WAKE_AT_COMMIT.with(|w| w.replace(false)) {
                if let Some(s) = get() {
                    s.wake_workers();
                }
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            end_drop();
            WAKE_AT_COMMIT.with(|w| w.set(false))
        }
        _ => {}
    }
}

/// # Safety
/// Called only by PostgreSQL, as the subtransaction callback registered here; touches only
/// this backend's thread-locals and shared memory atomics.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    if !DROP_AT_XACT_END.with(|d| d.get()) || DROP_SUBXACT.with(|d| d.get()) != my_subid {
        return;
    }
    match event {
        // The DROP was undone (ROLLBACK TO a savepoint before it, or an error inside it).
        SUBXACT_EVENT_ABORT_SUB => end_drop(),
        // RELEASE SAVEPOINT: the DROP now belongs to the parent.
        SUBXACT_EVENT_COMMIT_SUB => DROP_SUBXACT.with(|d| d.set(parent_subid)),
        _ => {}
    }
}

/// Asks for the workers to be woken when the current transaction commits (so they see the
/// new rows at once, without polling).
pub(crate) fn wake_workers_at_commit() {
    if get().is_none() {
        return;
    }
    register_xact_callback();
    WAKE_AT_COMMIT.with(|w| w.set(true));
}
