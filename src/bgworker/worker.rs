//! A worker: connected to `dialpad.database`, it claims a shared-memory slot and loops over
//! batches (and, for worker 0, maintenance), sleeping on its latch between them.

use super::report_activity;
use crate::citus::{self, Tables};
use crate::{gucs, pg::shmem, pipeline::batch, pipeline::counters, pipeline::rules};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// # Safety
/// Called only by PostgreSQL at process exit (before_shmem_exit), with the slot index the
/// worker registered.
#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    if let Some(s) = shmem::get() {
        let i = arg.value();
        if i < shmem::MAX_WORKERS && s.slots[i].pid.load(Ordering::Acquire) == crate::pg::my_pid() {
            s.slots[i].release();
        }
    }
}

/// Whether this database has ingest counts to flush (read without a transaction).
fn counters_pending() -> bool {
    shmem::get().is_some_and(|s| !s.ingest.snapshot(crate::pg::my_database().into()).is_empty())
}

/// The last flush of the ingest counters, when the first worker stops (a fast or smart
/// shutdown, pg_terminate_backend): a clean stop loses no count. Not on postmaster death,
/// nor on a standby.
///
/// # Safety
/// Called only by PostgreSQL at process exit (before_shmem_exit), registered after the
/// connection so that it runs before InitPostgres's ShutdownPostgres.
#[pg_guard]
unsafe extern "C-unwind" fn flush_counters_at_exit(_code: i32, _arg: pg_sys::Datum) {
    if crate::pg::backend::postmaster_gone() || crate::pg::backend::in_recovery() || !counters_pending() {
        return;
    }
    let flushed =
        crate::pg::backend::in_exit_transaction(|| if writable().is_none() { counters::flush().ok() } else { None });
    if let Some(n) = flushed.filter(|n| *n > 0) {
        log!("pg_dialpad worker 0: flushed {n} ingest count(s) at exit");
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dialpad_worker_main(arg: pg_sys::Datum) {
    let Some(mut worker) = Worker::start(arg.value()) else { return };
    loop {
        check_for_interrupts!();
        worker.reload_settings_on_sighup();
        let full = worker.batch_step();
        worker.maintenance_step(full);
        worker.counters_step();
        worker.queue_step(full);
        let rederiving = worker.rederive_step(full);
        // The statistics the batches left pending (autovacuum reads them), as a backend
        // flushes them: at most once a second (PGSTAT_MIN_INTERVAL), busy or not; the
        // answer is how long until the rest may be flushed (0: nothing left).
        let flush_in = crate::pg::backend::report_stats();
        if full || rederiving {
            continue; // more is due: no sleep
        }
        // Idle: the wait ends when the statistics left pending may be flushed.
        let mut wait = gucs::poll_interval().min(COUNTERS_INTERVAL);
        if flush_in > 0 {
            wait = wait.min(Duration::from_millis(flush_in as u64));
        }
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break; // postmaster death
        }
    }
    worker.slot.release();
    // Exit code 0: the launcher, not the postmaster, decides whether to start it again.
}

/// A running worker: its slot, and what it has said, so that a state is logged once.
struct Worker {
    index: usize,
    shared: &'static shmem::Shared,
    slot: &'static shmem::WorkerSlot,
    database: String,
    said: Option<Idle>,
    said_capped: bool,
    last_error_log: Option<Instant>,
    last_maintenance: Option<Instant>,
    /// Since when a due maintenance pass has been put off because batches came back full.
    maintenance_deferred: Option<Instant>,
    /// When the Citus keeper of dialpad.logical_calls last ran (see run_batches).
    last_keeper: Option<Instant>,
    /// When this worker last looked for calls to re-derive, and whether it found some.
    last_rederive: Option<(Instant, bool)>,
    /// When the ingest counters were last flushed (worker 0).
    last_counters: Option<Instant>,
    /// When the queue figures were last counted (worker 0).
    last_queue: Option<Instant>,
}

/// How often the first worker writes the ingest counters of shared memory to
/// dialpad.ingest_counters: what a crash (or an immediate shutdown) can lose.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(5);

/// How often the first worker counts the queue for /metrics (see queue_step).
const QUEUE_INTERVAL: Duration = Duration::from_secs(5);
const QUEUE_INTERVAL_BUSY: Duration = Duration::from_secs(60);
const QUEUE_SQL: &str = "SELECT pending, due, dead,
       COALESCE(EXTRACT(epoch FROM oldest_pending_age), 0)::pg_catalog.int8 FROM dialpad.queue_stats";

/// How often the Citus keeper of dialpad.logical_calls runs at least while batches keep
/// coming back full.
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

impl Worker {
    /// Signal handlers, the shared-memory slot, the connection and the session settings;
    /// None when another live worker holds the slot (or there is no shared memory).
    fn start(index: usize) -> Option<Worker> {
        BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
        crate::pg::backend::die_on_sigterm();
        let shared = shmem::get()?;
        if index >= shmem::MAX_WORKERS || !shared.slots[index].claim() {
            return None; // another live worker holds this slot
        }
        // Run once when the process exits (normally, by FATAL or by die()).
        crate::pg::backend::before_shmem_exit(release_slot, pg_sys::Datum::from(index));
        let database = gucs::database();
        BackgroundWorker::connect_worker_to_spi(Some(&database), gucs::role().as_deref());
        set_session_settings();
        citus::allow_shard_writes();
        apply_lock_timeout();
        if index == 0 {
            // After InitPostgres's own exit callback, so that this one runs first, while the
            // backend can still run a transaction (as RemoveTempRelationsCallback does).
            crate::pg::backend::before_shmem_exit(flush_counters_at_exit, pg_sys::Datum::from(0));
        }
        log!("pg_dialpad worker {index} started in database \"{database}\"");
        Some(Worker {
            index,
            shared,
            slot: &shared.slots[index],
            database,
            said: None,
            said_capped: false,
            last_error_log: None,
            last_maintenance: None,
            maintenance_deferred: None,
            last_keeper: None,
            last_rederive: None,
            last_counters: None,
            last_queue: None,
        })
    }

    /// The first worker writes the ingest counters to their table every few seconds (not
    /// on a hot standby, where nothing may be written: the counts stay in memory).
    fn counters_step(&mut self) {
        if self.index != 0 || self.last_counters.is_some_and(|t| t.elapsed() < COUNTERS_INTERVAL) {
            return;
        }
        self.last_counters = Some(Instant::now());
        if self.said.is_some() || crate::pg::backend::in_recovery() || !counters_pending() {
            return;
        }
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"pg_dialpad: flushing ingest counters");
        if let Err(msg) = self.guarded_transaction(|| counters::flush().ok()) {
            warning!(
                "pg_dialpad worker {}: flushing the ingest counters failed and was rolled back: {msg}",
                self.index
            );
        }
        report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook events");
    }

    /// The first worker counts dialpad.queue_stats into shared memory for the HTTP
    /// listener's /metrics: every QUEUE_INTERVAL, every minute while a backlog drains (the
    /// count reads the partial indexes of pending and dead events, as large as the backlog).
    fn queue_step(&mut self, busy: bool) {
        let every = if busy { QUEUE_INTERVAL_BUSY } else { QUEUE_INTERVAL };
        if self.index != 0 || self.said.is_some() || self.last_queue.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_queue = Some(Instant::now());
        if gucs::http_listen().is_none() {
            return; // nobody reads them
        }
        let shared = self.shared;
        let counted = self.guarded_transaction(move || {
            Spi::connect(|c| {
                let row = c.select(QUEUE_SQL, Some(1), &[])?.first();
                let get = |i| row.get::<i64>(i).map(Option::unwrap_or_default);
                Ok::<_, pgrx::spi::Error>((get(1)?, get(2)?, get(3)?, get(4)?))
            })
            .map(|(pending, due, dead, age)| shared.queue.set(pending, due, dead, age))
            .map_err(|e| e.to_string())
        });
        if let Err(msg) | Ok(Some(Err(msg))) = counted {
            warning!("pg_dialpad worker {}: counting the queue failed: {msg}", self.index);
        }
    }

    /// Reads the configuration files again after a reload (SIGHUP), and says when in its
    /// slot (dialpad.worker_stats.settings_read_at): what a DBA, or a test, waits for.
    fn reload_settings_on_sighup(&self) {
        if BackgroundWorker::sighup_received() {
            crate::pg::backend::reload_config_file();
            apply_lock_timeout();
            self.slot.settings_read_at.store(crate::pg::now(), Ordering::Relaxed);
        }
    }

    /// One batch in its own transaction, if enabled; true when it came back full.
    fn batch_step(&mut self) -> bool {
        if !gucs::enabled() {
            // Published as the worker sees the setting (dialpad.worker_status()).
            self.slot.set_state(shmem::WorkerState::Disabled);
            return false;
        }
        if self.slot.state() == shmem::WorkerState::Disabled {
            // Enabled again: not "paused" even if the pass below fails.
            self.slot.set_state(shmem::WorkerState::Processing);
        }
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"processing webhook events");
        let full = match self.run_batches() {
            Ok(Ok(o)) => self.ran(&o),
            Ok(Err(idle)) => {
                self.idle(idle);
                false
            }
            Err(msg) => {
                self.failed(&msg);
                false
            }
        };
        report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook events");
        full
    }

    /// One batch on each set of tables this worker processes: the extension's tables, or on
    /// a Citus node after dialpad.distribute(), its share of the shard groups the node holds
    /// (listed again on every pass: shards move). Each batch is its own transaction; on one
    /// node the listing and the batch share it (see [`list_or_run`]), so that one node pays
    /// nothing for Citus. The outcome of the pass, or why it wrote nothing.
    fn run_batches(&mut self) -> Result<Result<batch::BatchOutcome, Idle>, String> {
        let index = self.index;
        let groups = match self.guarded_transaction(move || list_or_run(index))? {
            None => return Ok(Err(Idle::DropInProgress)),
            Some(Err(idle)) => return Ok(Err(idle)),
            Some(Ok(Listed::Ran(o))) => {
                self.count(&o);
                return Ok(Ok(o));
            }
            Some(Ok(Listed::Groups(groups))) => groups,
        };
        let mut total = batch::BatchOutcome::default();
        for group in &groups {
            let group = group.clone();
            let ran = self.guarded_transaction(move || match writable() {
                Some(idle) => Err(idle),
                None => Ok(batch_on(&group)),
            })?;
            match ran {
                None => return Ok(Err(Idle::DropInProgress)),
                Some(Err(idle)) => return Ok(Err(idle)),
                Some(Ok(o)) => {
                    // Counted per batch: a pass over many shard groups takes a while.
                    self.count(&o);
                    total.add(&o);
                }
            }
        }
        // dialpad.logical_calls on Citus: once the batches have drained what was due, or at
        // least every second while they have not (a distributed read of the legs per pass
        // would cost more than the pass).
        let keeper_due = !total.full || self.last_keeper.is_none_or(|t| t.elapsed() >= KEEPER_INTERVAL);
        if keeper_due && !groups.is_empty() {
            self.last_keeper = Some(Instant::now());
            total.full |= self.logical_calls_step(groups)?;
        }
        Ok(Ok(total))
    }

    /// `f` in its own transaction, one DROP EXTENSION waits for (a batch, a listing, the
    /// Citus keeper, maintenance, the counters); None when a drop is in progress.
    fn guarded_transaction<R>(
        &self,
        f: impl FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
    ) -> Result<Option<R>, String> {
        // Busy before the drop is checked, so that a DROP EXTENSION seen after this waits
        // for the transaction to end before it takes its locks.
        self.slot.in_batch.store(true, Ordering::SeqCst);
        let result = if self.shared.drop_in_progress() { Ok(None) } else { in_transaction(f).map(Some) };
        self.slot.in_batch.store(false, Ordering::Release);
        // After every transaction, as worker_spi does: without it the table statistics
        // (n_tup_upd, n_dead_tup, ...) never leave this process and autovacuum and
        // autoanalyze never see the worker's writes.
        crate::pg::backend::report_stats();
        result
    }

    /// Counts a batch in the worker's shared-memory slot.
    fn count(&self, o: &batch::BatchOutcome) {
        if o.handled > 0 || o.deferred > 0 {
            self.slot.record_batch(o.handled, o.failed, o.dead, o.rejected);
        }
    }

    /// On a Citus node: the first worker hands the logical calls this node's shards wrote on
    /// to their keepers, and every worker recomputes the stale ones its groups keep
    /// (citus/logical.rs). True when a slice came back full (more is waiting).
    fn logical_calls_step(&self, groups: Vec<Tables>) -> Result<bool, String> {
        let handed = if self.index == 0 { self.guarded_transaction(citus::logical::hand_on)? } else { None };
        let refreshed = self.guarded_transaction(move || citus::logical::refresh_stale(&groups))?;
        let mut more = false;
        for n in [handed, refreshed].into_iter().flatten() {
            more |= n.map_err(|e| format!("dialpad.logical_calls: {e}"))? >= citus::logical::SLICE;
        }
        Ok(more)
    }

    fn ran(&mut self, o: &batch::BatchOutcome) -> bool {
        self.said = None;
        self.slot.set_state(shmem::WorkerState::Processing);
        if let (Some(calls), false) = (o.capped_at_calls, self.said_capped) {
            log!(
                "pg_dialpad worker {}: a batch held more distinct calls than the lock table leaves room for; \
                 batches are limited to {calls} calls (raise max_locks_per_transaction or lower dialpad.batch_size)",
                self.index
            );
            self.said_capped = true;
        }
        o.full
    }

    /// Nothing this library may write to: records why, and says it once in the log.
    fn idle(&mut self, idle: Idle) {
        self.slot.set_state(match idle {
            Idle::NotInstalled => shmem::WorkerState::NoExtension,
            Idle::VersionMismatch { .. } => shmem::WorkerState::VersionMismatch,
            Idle::DropInProgress => shmem::WorkerState::Paused,
        });
        if self.said.as_ref() == Some(&idle) {
            return;
        }
        let (index, database) = (self.index, &self.database);
        match &idle {
            Idle::VersionMismatch { sql } => log!(
                "pg_dialpad worker {index}: the library is version {} but the extension in \"{database}\" is {sql}; \
                 writing nothing until ALTER EXTENSION pg_dialpad UPDATE is run",
                env!("CARGO_PKG_VERSION")
            ),
            Idle::DropInProgress => {
                log!("pg_dialpad worker {index}: DROP EXTENSION pg_dialpad is in progress; pausing")
            }
            Idle::NotInstalled => {
                log!("pg_dialpad worker {index}: extension pg_dialpad is not installed in \"{database}\"; waiting")
            }
        }
        self.said = Some(idle);
    }

    fn failed(&mut self, msg: &str) {
        self.slot.errors.fetch_add(1, Ordering::Relaxed);
        // At most one log line a minute for a recurring failure.
        if self.last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            warning!("pg_dialpad worker {}: batch failed and was rolled back: {msg}", self.index);
            self.last_error_log = Some(Instant::now());
        }
    }

    /// A slice of the calls dialpad.rederive_calls() listed (pipeline/rederive.rs); true
    /// when it re-derived some (more may be waiting: no sleep).
    ///
    /// The queue is looked at once a second at most, so that an idle or lightly loaded
    /// worker pays one probe a second for it. While there is work: back to back when the
    /// inbox is drained (`busy` false), one slice a second while a backlog drains, so that
    /// re-derivation goes on under any load without slowing the drain much.
    fn rederive_step(&mut self, busy: bool) -> bool {
        if !gucs::enabled() || self.said.is_some() {
            return false;
        }
        let found_last = self.last_rederive.is_some_and(|(_, found)| found);
        let recent = self.last_rederive.is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(1));
        if recent && (busy || !found_last) {
            return false;
        }
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"pg_dialpad: re-deriving calls");
        let result = self.guarded_transaction(|| {
            if writable().is_some() || !crate::pipeline::rederive::pending() {
                return 0;
            }
            let rules = rules::current_or_raise();
            crate::pipeline::rederive::step(crate::pipeline::rederive::SLICE, &rules)
        });
        report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook events");
        let done = match result {
            Ok(n) => n.unwrap_or(0),
            Err(msg) => {
                self.failed(&format!("re-deriving calls: {msg}"));
                0
            }
        };
        self.last_rederive = Some((Instant::now(), done > 0));
        done > 0
    }

    /// The first worker also keeps the partitions (dialpad.run_maintenance()), when due.
    ///
    /// Not while a backlog drains (`busy`: the last batch came back full), for at most one
    /// interval: a pass that finds the backlog in the DEFAULT partition (events received
    /// before the partitions existed, e.g. while dialpad.enabled was off after CREATE
    /// EXTENSION) moves every pending event into its day's partition under an ACCESS
    /// EXCLUSIVE lock, a copy of the whole backlog in WAL and buffer writes, in the middle of
    /// the drain: on a default-configuration cluster (128 MB shared_buffers) the worker
    /// drained at half the rate of dialpad.process_events(), which runs no maintenance
    /// (issue 23). Put off, the pass runs once the backlog is drained (and moves processed
    /// rows, out of the way), or after one interval at the latest: partitions are created
    /// days ahead, so the delay never lets new events land in DEFAULT.
    fn maintenance_step(&mut self, busy: bool) {
        if self.index != 0 || !gucs::enabled() || self.said.is_some() {
            return;
        }
        let Some(every) = gucs::maintenance_interval() else { return };
        if self.last_maintenance.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        if !busy {
            self.maintenance_deferred = None;
        } else if self.maintenance_deferred.get_or_insert_with(Instant::now).elapsed() < every {
            return;
        }
        self.maintenance_deferred = None;
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"pg_dialpad maintenance");
        let index = self.index;
        let more = match self.guarded_transaction(run_maintenance) {
            Ok(None) => false,
            Ok(Some(done)) => {
                for line in &done {
                    log!("pg_dialpad worker {index}: maintenance: {line}");
                }
                done.iter().any(|line| line.starts_with("backfilled "))
            }
            Err(msg) => {
                warning!("pg_dialpad worker {index}: maintenance failed and was rolled back: {msg}");
                false
            }
        };
        // Leg columns left to fill after an upgrade: the next pass comes at once, between
        // batches, until they are done.
        self.last_maintenance = (!more).then(Instant::now);
        report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook events");
    }
}

/// Asynchronous commit is safe here and saves a WAL flush per batch: the events were made
/// durable by their inserters, and a batch's call writes commit atomically with its processed
/// marks, so a crash can only lose whole batches, which are simply claimed again. Whatever the
/// database's default search_path, the worker resolves nothing through it.
fn set_session_settings() {
    crate::pg::set_session_setting(c"search_path", c"pg_catalog, pg_temp");
    crate::pg::set_session_setting(c"synchronous_commit", c"off");
}

/// Sets the session's lock_timeout to dialpad.lock_timeout: no statement of the worker ever
/// waits on a lock for longer (PostgreSQL's default, 0, would wait forever).
pub(super) fn apply_lock_timeout() {
    let value = std::ffi::CString::new(gucs::lock_timeout_ms().to_string()).unwrap_or_default();
    crate::pg::set_session_setting(c"lock_timeout", &value);
}

/// Why a pass of the worker loop wrote nothing (each logged once, not on every loop).
#[derive(Clone, PartialEq, Eq, Debug)]
enum Idle {
    NotInstalled,
    VersionMismatch { sql: String },
    DropInProgress,
}

/// dialpad.run_maintenance(), in the current transaction: what it did, a line each.
fn run_maintenance() -> Vec<String> {
    Spi::connect(|client| {
        let mut done = Vec::new();
        let rows = client.select(
            "SELECT action, partition, range_from::pg_catalog.text, rows FROM dialpad.run_maintenance()",
            None,
            &[],
        )?;
        for r in rows {
            let action: String = r.get(1)?.unwrap_or_default();
            let partition: String = r.get(2)?.unwrap_or_default();
            let from: String = r.get(3)?.unwrap_or_default();
            let n: Option<i64> = r.get(4)?;
            done.push(format!("{action} {partition} (from {from}, rows {})", n.unwrap_or(0)));
        }
        Ok::<_, pgrx::spi::Error>(done)
    })
    .unwrap_or_else(|e| vec![format!("failed: {e}")])
}

/// Why this library may not write to the installed extension, if it may not.
fn writable() -> Option<Idle> {
    let Some(sql) = crate::version::installed_version() else { return Some(Idle::NotInstalled) };
    (sql != env!("CARGO_PKG_VERSION")).then_some(Idle::VersionMismatch { sql })
}

/// What the first transaction of a pass came to.
enum Listed {
    /// One node: the batch already ran on the extension's tables, in the same transaction.
    Ran(batch::BatchOutcome),
    /// A Citus node's shard groups, one batch each to come.
    Groups(Vec<Tables>),
}

/// The first transaction of a pass: the tables worker `index` processes, and when they are
/// the extension's own (one node, or Citus before dialpad.distribute()), their batch too.
fn list_or_run(index: usize) -> Result<Listed, Idle> {
    let tables = targets(index)?;
    if tables.iter().all(|t| t.shard == 0) {
        return Ok(Listed::Ran(tables.first().map(batch_on).unwrap_or_default()));
    }
    Ok(Listed::Groups(tables))
}

/// The tables worker `index` processes: the extension's own, or on a Citus node where the
/// tables are distributed, every `workers`-th of the shard groups the node holds (none on a
/// coordinator without shards). Several workers never share a group.
fn targets(index: usize) -> Result<Vec<Tables>, Idle> {
    if let Some(idle) = writable() {
        return Err(idle);
    }
    let workers = gucs::workers().max(1);
    let listed = citus::processing_targets().map(|t| {
        if t.local.iter().all(|g| g.shard == 0) {
            return t.local; // one set of tables: every worker claims from it
        }
        t.local.into_iter().enumerate().filter(|(i, _)| i % workers == index).map(|(_, t)| t).collect()
    });
    match listed {
        Ok(t) => Ok(t),
        Err(e) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad could not list the tables to process: {e}"),
            None,
            None,
        ),
    }
}

/// `f` in its own transaction; an ERROR is caught, the transaction rolled back and the
/// message returned.
pub(super) fn in_transaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> Result<R, String> {
    let result: Result<R, String> = PgTryBuilder::new(move || Ok(BackgroundWorker::transaction(f)))
        .catch_others(|e| Err(crate::pg::spi::caught_message(&e)))
        .execute();
    if result.is_err() {
        crate::pg::backend::recover_from_error();
        crate::pg::spi::forget_plans();
    }
    result
}

/// One batch on `tables`, in the current transaction.
fn batch_on(tables: &Tables) -> batch::BatchOutcome {
    let rules = rules::current_or_raise();
    batch::process_batch(tables, gucs::batch_size(), &rules, gucs::max_attempts(), batch::Scan::FromFloor)
}
