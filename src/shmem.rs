//! Shared memory: one slot per worker (pid, latch, counters) and a one-minute ring of
//! processed-event counts. Everything is an atomic, so readers never block a worker.
//!
//! Exists only when pg_dialpad is in shared_preload_libraries; every accessor returns None
//! otherwise and callers degrade gracefully (no wake-ups, no counters).

use pgrx::pg_sys;
use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

pub const MAX_WORKERS: usize = 32;
const RING: usize = 64;

#[repr(C)]
pub struct WorkerSlot {
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
}

#[repr(C)]
pub struct Shared {
    pub launcher_pid: AtomicI32,
    pub slots: [WorkerSlot; MAX_WORKERS],
    ring_second: [AtomicI64; RING],
    ring_count: [AtomicU64; RING],
    pub ingest_accepted: AtomicU64,
    pub ingest_duplicate: AtomicU64,
    pub ingest_rejected: AtomicU64,
}

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;

/// Called from `_PG_init` while preloading.
pub fn init() {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
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

pub fn get() -> Option<&'static Shared> {
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
    unsafe { pg_sys::GetCurrentTimestamp() }.div_euclid(1_000_000)
}

impl WorkerSlot {
    /// Claims this slot for the calling process; false if a live process holds it.
    pub fn claim(&self) -> bool {
        let me = unsafe { pg_sys::MyProcPid };
        let held = self.pid.load(Ordering::Acquire);
        if held != 0 && held != me && unsafe { libc_kill_alive(held) } {
            return false;
        }
        self.pid.store(me, Ordering::Release);
        unsafe {
            let latch = std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch);
            self.latch.store(latch as usize, Ordering::Release);
        }
        self.started_at.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
        true
    }

    pub fn release(&self) {
        self.latch.store(0, Ordering::Release);
        self.pid.store(0, Ordering::Release);
    }

    pub fn record_batch(&self, events: u64, errors: u64, dead: u64, rejected: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
        self.dead.fetch_add(dead, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.last_batch_at.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
    }
}

/// Whether a process exists (signal 0).
unsafe fn libc_kill_alive(pid: i32) -> bool {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid, 0) == 0 }
}

impl Shared {
    /// Counts events handled now, for the processed-in-the-last-minute figure.
    pub fn note_processed(&self, n: u64) {
        if n == 0 {
            return;
        }
        let sec = now_seconds();
        let i = sec.rem_euclid(RING as i64) as usize;
        let old = self.ring_second[i].load(Ordering::Acquire);
        if old != sec
            && self.ring_second[i].compare_exchange(old, sec, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.ring_count[i].store(0, Ordering::Release);
        }
        self.ring_count[i].fetch_add(n, Ordering::AcqRel);
    }

    pub fn processed_last_minute(&self) -> u64 {
        let now = now_seconds();
        (0..RING)
            .filter(|&i| {
                let s = self.ring_second[i].load(Ordering::Acquire);
                s > now - 60 && s <= now
            })
            .map(|i| self.ring_count[i].load(Ordering::Acquire))
            .sum()
    }

    /// Sets the latch of every running worker.
    pub fn wake_workers(&self) {
        for slot in &self.slots {
            let latch = slot.latch.load(Ordering::Acquire);
            if latch != 0 {
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        }
    }
}

thread_local! {
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if WAKE_AT_COMMIT.with(|w| w.replace(false)) {
                if let Some(s) = get() {
                    s.wake_workers();
                }
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => WAKE_AT_COMMIT.with(|w| w.set(false)),
        _ => {}
    }
}

/// Asks for the workers to be woken when the current transaction commits (so they see the
/// new rows at once, without polling).
pub fn wake_workers_at_commit() {
    if get().is_none() {
        return;
    }
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
    }
    WAKE_AT_COMMIT.with(|w| w.set(true));
}
