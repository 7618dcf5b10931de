//! The batch processor: claims due events from `dialpad.webhook_events`, applies them to
//! `dialpad.calls` and marks them, all in the caller's transaction. Used by
//! `dialpad.process_events()` and by the background workers alike.
//!
//! A batch is set-based: one statement claims and marks the events (`FOR UPDATE SKIP LOCKED`),
//! one reads the affected calls, one upserts them. Events are grouped by call and folded in
//! event order in Rust (`domain/fold.rs`). A per-call advisory lock (tried, never waited for) keeps
//! two processors off the same call. Only if the upsert fails does the batch fall back to
//! one subtransaction per call, to isolate the bad one; a clean batch pays nothing for that.

use crate::codec::jsonb::Container;
use crate::domain::batch::{self as decide, AdaptiveLimit};
use crate::domain::event::{CallEvent, EventError};
use crate::domain::fold::{fold_events_by_call, Folded};
use crate::domain::sanitize::{self, Limits};
use crate::domain::scan_floor::{ScanFloor, Start};
use crate::domain::transitions::RuleSet;
use crate::pg::datum::JsonbArg;
use crate::pg::spi::{in_subtransaction, replanned, run_kept};
use crate::pipeline::call_row::{self, CallColumns, CallRow, CallRowSql};
use crate::pipeline::tables::{run_kept_on, Tables, Target};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::HashMap;

/// What one batch did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BatchOutcome {
    /// Events claimed and dealt with (applied, failed or dead-lettered).
    pub handled: u64,
    pub applied: u64,
    pub failed: u64,
    pub dead: u64,
    pub rejected: u64,
    /// Events left for later because another processor (or a lock) holds their call.
    pub deferred: u64,
    /// Redeliveries found while applying (marked duplicate_of, not applied again).
    pub duplicates: u64,
    /// Whether as many events were claimed as allowed (more may be waiting).
    pub full: bool,
    /// Set when the batch held more distinct calls than the lock table leaves room for:
    /// the calls it was limited to (the others were left for the next batch).
    pub capped_at_calls: Option<usize>,
}

impl BatchOutcome {
    /// Adds the counts of another batch (the worker's batches on several shard groups).
    pub(crate) fn add(&mut self, o: &BatchOutcome) {
        self.handled += o.handled;
        self.applied += o.applied;
        self.failed += o.failed;
        self.dead += o.dead;
        self.rejected += o.rejected;
        self.deferred += o.deferred;
        self.duplicates += o.duplicates;
        self.full |= o.full;
        self.capped_at_calls = self.capped_at_calls.or(o.capped_at_calls);
    }
}

/// The advisory lock namespace (`objsubid` in pg_locks): 'DP'.
const LOCK_NAMESPACE: u16 = 0x4450;

/// Claims due events in arrival order, with the partition of each. The inbox is partitioned
/// by received_at: the mark runs on each partition the batch came from, and the statements
/// for failures and deferrals name the events by (id, received_at range), so that only the
/// partitions the batch came from are locked and scanned. $2 and $3 are where the claim
/// starts (domain/scan_floor.rs): the lowest id, and the lowest received_at, which prunes
/// the older partitions when the plan starts (-infinity: none).
pub(crate) const CLAIM_SQL: &str = "\
SELECT p.id, p.received_at, p.payload, p.source, p.tableoid FROM {inbox} AS p
 WHERE p.processed_at IS NULL AND p.dead_at IS NULL
   AND p.id OPERATOR(pg_catalog.>=) $2 AND p.received_at OPERATOR(pg_catalog.>=) $3
   AND (p.next_attempt_at IS NULL OR p.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())
 ORDER BY p.id, p.received_at
 LIMIT $1
   FOR UPDATE SKIP LOCKED";

/// Claims one event, whether due or not (a suspect processed alone after a crash restart,
/// see pipeline/inflight.rs). $1 is the limit (1), $2 the id.
const CLAIM_ONE_SQL: &str = "\
SELECT p.id, p.received_at, p.payload, p.source, p.tableoid FROM {inbox} AS p
 WHERE p.id OPERATOR(pg_catalog.=) $2 AND p.processed_at IS NULL AND p.dead_at IS NULL
 LIMIT $1
   FOR UPDATE SKIP LOCKED";

/// The settings the claim is planned and run with: one generic plan, an ordered walk of
/// the partitions' pending indexes merged by id (those before the floor's received_at are
/// pruned when it starts). Planned for its arguments at each batch, the claim cost a plan
/// over every partition per batch (6.5 ms with 40 daily partitions: a full scan prunes
/// none, a pending event may be in any of them); and on statistics
/// that call the inbox empty (a new day's partition, or after a TRUNCATE and VACUUM) the
/// planner read every pending event and sorted them, spilling to disk, for each batch
/// (14k events/s instead of 24k). With sorts and sequential scans off, the only plan left
/// is the ordered one, whatever the statistics say; and as it orders by (id, received_at),
/// only the pending index gives that order (see sql/schema.sql), never the primary key.
///
/// The other statements a batch runs on every batch (the mark, reading the calls, reading
/// a late call's history) are planned once with the same settings, for the same reasons:
/// planned for their arguments, they cost a plan per batch (a third of the worker's time on
/// a steady stream of small batches; the mark plans the partition pruning each time), and
/// a generic plan made on statistics that call a table empty would scan it whole. Their
/// generic plans read the primary key or the call id index, and the mark's prunes the
/// partitions the batch did not come from when it starts (`Subplans Removed`).
pub(crate) const BATCH_PLAN_SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[
    (c"plan_cache_mode", c"force_generic_plan"),
    (c"enable_sort", c"off"),
    (c"enable_incremental_sort", c"off"),
    (c"enable_seqscan", c"off"),
];

/// Marks the claimed events of one partition handled, in the claim's transaction (failures
/// and deferrals are given back below): one statement per partition the batch claimed from
/// (the claim returns each event's tableoid), run on the partition itself through a plan
/// kept for it ([`mark`]). A plan over the partitioned inbox would either be made for every
/// batch (pruned to the batch's partitions) or, kept, lock and set up every partition at
/// each run, however many years of them retention keeps.
pub(crate) const MARK_SQL: &str =
    "UPDATE {partition} SET processed_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) ANY ($1)";

/// How many partitions' mark plans a backend keeps (the least recently used goes first): a
/// batch claims from today's partition, sometimes yesterday's or the DEFAULT partition.
const MARK_PLANS_KEPT: usize = 8;

pub(crate) const HISTORY_SQL: &str = "\
SELECT id, payload, source FROM {inbox}
 WHERE call_id OPERATOR(pg_catalog.=) ANY ($1) AND processed_at IS NOT NULL AND duplicate_of IS NULL
   AND NOT id OPERATOR(pg_catalog.=) ANY ($2)";

const REJECTIONS_SQL: &str = "\
INSERT INTO {rejected} (dialpad_call_id, event_id, from_status, to_status, reason)
SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]), pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.text[]))";

/// Counts a failed attempt. No arithmetic here can raise an error, whatever `attempts` holds
/// (dialpad_admin may set it): the count saturates, and the back-off (2^attempts seconds, at
/// most an hour) is computed from at most 12; an error here would fail the whole batch.
const FAIL_SQL: &str = "\
UPDATE {inbox} AS e
   SET processed_at = NULL,
       attempts = LEAST(e.attempts, 2147483646) OPERATOR(pg_catalog.+) 1,
       last_error = f.err,
       next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(
           secs => LEAST(3600, pg_catalog.power(2, LEAST(e.attempts, 12))::pg_catalog.int4)),
       dead_at = CASE WHEN f.permanent OR e.attempts OPERATOR(pg_catalog.>=) ($4 OPERATOR(pg_catalog.-) 1)
                      THEN pg_catalog.now() END
  FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.bool[])) AS f(id, err, permanent)
 WHERE e.id OPERATOR(pg_catalog.=) f.id
   AND e.received_at OPERATOR(pg_catalog.>=) $5 AND e.received_at OPERATOR(pg_catalog.<=) $6
RETURNING e.dead_at IS NOT NULL";

/// Returns events to the queue without counting an attempt; those in $2 (their call was
/// locked by another transaction) wait a second, so a long-held lock costs one try a second.
const DEFER_SQL: &str = "\
UPDATE {inbox}
   SET processed_at = NULL,
       next_attempt_at = CASE WHEN id OPERATOR(pg_catalog.=) ANY ($2)
                              THEN pg_catalog.now() OPERATOR(pg_catalog.+) '1 second'::pg_catalog.interval
                              ELSE next_attempt_at END
 WHERE id OPERATOR(pg_catalog.=) ANY ($1)
   AND received_at OPERATOR(pg_catalog.>=) $3 AND received_at OPERATOR(pg_catalog.<=) $4";

/// Redeliveries that reached the processor (not caught at insert): kept, marked, not applied.
const DUPLICATES_SQL: &str = "\
UPDATE {inbox} AS e SET duplicate_of = d.original
  FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[])) AS d(id, original)
 WHERE e.id OPERATOR(pg_catalog.=) d.id
   AND e.received_at OPERATOR(pg_catalog.>=) $3 AND e.received_at OPERATOR(pg_catalog.<=) $4";

thread_local! {
    /// Where this backend's claims start reading the pending index (see domain/scan_floor.rs),
    /// per set of tables (one, or each Citus shard group the backend processes).
    static SCAN_FLOOR: RefCell<HashMap<(u8, i64), ScanFloor>> = RefCell::new(HashMap::new());
    /// The claim size this backend adapted to after a batch was capped by the lock table
    /// (doubled back after each full batch that was not).
    static ADAPTED_LIMIT: std::cell::Cell<AdaptiveLimit> = std::cell::Cell::new(AdaptiveLimit::default());
}

/// This backend's scan floor on `tables`.
fn with_floor<R>(tables: &Tables, f: impl FnOnce(&mut ScanFloor) -> R) -> R {
    SCAN_FLOOR.with(|m| f(m.borrow_mut().entry(tables.variant()).or_insert_with(ScanFloor::new)))
}

struct Claimed {
    id: i64,
    payload: JsonbArg,
    parsed: Result<CallEvent, EventError>,
}

impl Claimed {
    fn parse(id: i64, payload: JsonbArg, source: Option<String>) -> Claimed {
        let parsed = Container::root(payload.body())
            .map_err(|_| EventError::Corrupt)
            .and_then(CallEvent::from_payload)
            .map(|e| CallEvent { source, ..e });
        Claimed { id, payload, parsed }
    }
}

/// Where a batch's claim starts reading the pending index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// From the lowest id: finds every due event (dialpad.process_events()).
    Full,
    /// From this backend's floor (the workers): stays fast while an old snapshot keeps
    /// processed entries from being cleaned up; what lies below the floor is found by the
    /// full scan done at least once a second (see domain/scan_floor.rs).
    FromFloor,
    /// This one event alone (a suspect after a crash restart, see pipeline/inflight.rs).
    Only(i64),
}

/// Processes up to `max_events` due events of `tables` in the current transaction.
pub(crate) fn process_batch(
    tables: &Tables,
    max_events: i32,
    rules: &RuleSet,
    max_attempts: i32,
    scan: Scan,
) -> BatchOutcome {
    Spi::connect_mut(|client| match process_batch_in(client, tables, max_events, rules, max_attempts, scan) {
        Ok(o) => o,
        Err(e) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad processing failed: {e}"),
            None,
            None,
        ),
    })
}

fn process_batch_in(
    client: &mut SpiClient<'_>,
    tables: &Tables,
    max_events: i32,
    rules: &RuleSet,
    max_attempts: i32,
    scan: Scan,
) -> Result<BatchOutcome, pgrx::spi::Error> {
    if max_events <= 0 {
        return Ok(BatchOutcome::default());
    }
    if !matches!(scan, Scan::Only(_)) {
        // After a crash restart: the events the crash left in flight first, each alone.
        let alone =
            |c: &mut SpiClient<'_>, t: &Tables, id| process_batch_in(c, t, 1, rules, max_attempts, Scan::Only(id));
        if let Some(out) = super::inflight::recovery_step(client, alone)? {
            return Ok(out);
        }
    }
    let mut timer = StepTimer::new();
    let max_events = ADAPTED_LIMIT.with(|a| a.get().limit(max_events));
    let Some(mut batch) = Batch::claim(client, tables, max_events, scan)? else { return Ok(BatchOutcome::default()) };
    timer.step("claim");
    batch.group_by_call();
    batch.lock_calls();
    timer.step("lock");
    batch.read_calls(client)?;
    batch.set_aside_foreign_events();
    timer.step("read calls");
    batch.read_history_of_late_calls(client, rules)?;
    timer.step("history");
    batch.fold_calls(rules);
    timer.step("fold");
    batch.write_calls(client);
    timer.step("write");
    batch.record_outcome(client, max_attempts)?;
    timer.step("mark failures");
    timer.report(&batch.out, batch.late.len());
    Ok(batch.out)
}

/// What re-deriving a slice of calls came to (see pipeline/rederive.rs).
#[derive(Default, Debug)]
pub(crate) struct Rederived {
    /// Re-derived from their whole history with the current rules.
    pub done: Vec<i64>,
    /// Left as they are: retention dropped part of their history, or none of it is left.
    pub partial: Vec<i64>,
    /// Another processor holds them: to be tried again.
    pub busy: Vec<i64>,
    /// Their write failed (the error): left as they were.
    pub failed: Vec<(i64, String)>,
}

/// Re-applies the current rules to `calls` from their whole applied history in the audit
/// log, in the current transaction: each call is folded from its first event as if it were
/// new, its row rewritten, and the rejected transitions the processor recorded for its events
/// replaced by those of the new fold. A call another processor holds is `busy`; one whose
/// history retention has partly dropped is left as it is (`partial`): re-deriving from what
/// is left would lose what was dropped.
pub(crate) fn rederive(calls: &[i64], rules: &RuleSet) -> Rederived {
    Spi::connect_mut(|client| rederive_in(client, calls, rules)).unwrap_or_else(|e| {
        crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad re-derivation failed: {e}"),
            None,
            None,
        )
    })
}

/// Deletes the processor's rejections of calls recorded before this transaction (the fold
/// just recorded their replacements).
const OLD_REJECTIONS_SQL: &str = "\
DELETE FROM dialpad.rejected_transitions
 WHERE dialpad_call_id OPERATOR(pg_catalog.=) ANY ($1) AND event_id IS NOT NULL
   AND rejected_at OPERATOR(pg_catalog.<) pg_catalog.now()";

fn rederive_in(client: &mut SpiClient<'_>, calls: &[i64], rules: &RuleSet) -> Result<Rederived, pgrx::spi::Error> {
    let mut out = Rederived::default();
    let mut batch = Batch::new(&Tables::whole(), true);
    for &call_id in calls {
        if try_lock_call(call_id) {
            batch.calls.push(call_id);
            batch.by_call.insert(call_id, Vec::new());
        } else {
            out.busy.push(call_id);
        }
    }
    batch.read_calls(client)?;
    batch.late = batch.calls.clone();
    batch.read_history(client)?;
    let (keep, left): (Vec<i64>, Vec<i64>) = batch
        .calls
        .iter()
        .partition(|c| !batch.partial.contains(c) && batch.by_call.get(c).is_some_and(|e| !e.is_empty()));
    out.partial = left;
    batch.calls = keep;
    batch.fold_calls(rules);
    batch.write_calls(client);
    let failed: std::collections::HashSet<i64> = batch.failed_calls.iter().map(|(c, _)| *c).collect();
    out.done = batch.calls.iter().copied().filter(|c| !failed.contains(c)).collect();
    out.failed = std::mem::take(&mut batch.failed_calls);
    if !out.done.is_empty() {
        run_kept(client, OLD_REJECTIONS_SQL, &[pg_sys::INT8ARRAYOID], None, &[out.done.clone().into()])?;
    }
    Ok(out)
}

/// An event that could not be applied: retried later, or dead-lettered when `permanent`.
struct Failure {
    id: i64,
    error: String,
    permanent: bool,
}

/// One call's events folded onto its row. `events` index [`Batch::events`], in event order.
struct CallFold {
    call_id: i64,
    folded: Folded,
    events: Vec<usize>,
}

/// The received_at range of a batch's events: what prunes the inbox's partitions in the
/// statements that name them by id.
#[derive(Clone, Copy)]
struct Received {
    from: i64,
    to: i64,
}

impl Received {
    fn lower_arg<'a>(self) -> DatumWithOid<'a> {
        TimestampWithTimeZone::try_from(self.from).ok().into()
    }
    fn upper_arg<'a>(self) -> DatumWithOid<'a> {
        TimestampWithTimeZone::try_from(self.to).ok().into()
    }
}

/// One batch, going through its steps in [`process_batch_in`].
struct Batch {
    tables: Tables,
    received: Received,
    /// The claimed events, then the history events read for late calls (index >= `n_claimed`).
    events: Vec<Claimed>,
    n_claimed: usize,
    by_call: HashMap<i64, Vec<usize>>,
    /// The calls this batch holds (their advisory locks are taken).
    calls: Vec<i64>,
    rows: HashMap<i64, CallRow>,
    /// Calls re-derived from their whole history.
    late: Vec<i64>,
    /// Late calls whose history retention has partly dropped: their events are applied to
    /// the row as it stands (re-deriving from what is left would lose what was dropped).
    partial: std::collections::HashSet<i64>,
    folds: Vec<CallFold>,
    failures: Vec<Failure>,
    /// Events given back to the queue; those in `lock_waits` wait a second.
    deferred: Vec<i64>,
    lock_waits: Vec<i64>,
    /// (redelivery, first delivery) found while folding.
    duplicates: Vec<(i64, i64)>,
    /// Calls whose write failed, with the error (a re-derivation reports them).
    failed_calls: Vec<(i64, String)>,
    /// Re-deriving calls from their history (no claimed events): every rejection is recorded.
    rederiving: bool,
    out: BatchOutcome,
}

impl Batch {
    /// Claims and marks up to `max_events` due events in one statement (None: nothing due).
    fn claim(
        client: &mut SpiClient<'_>,
        tables: &Tables,
        max_events: i32,
        scan: Scan,
    ) -> Result<Option<Batch>, pgrx::spi::Error> {
        let (claim_sql, start) = match scan {
            Scan::Full => (CLAIM_SQL, Start::FULL),
            Scan::FromFloor => (CLAIM_SQL, with_floor(tables, |f| f.start(std::time::Instant::now()))),
            Scan::Only(id) => (CLAIM_ONE_SQL, Start { id, received_at: None }),
        };
        let from = start.id;
        let received_from = start
            .received_at
            .and_then(|us| TimestampWithTimeZone::try_from(us).ok())
            .unwrap_or_else(TimestampWithTimeZone::negative_infinity);
        // CLAIM_ONE_SQL takes the first two.
        let params = if matches!(scan, Scan::Only(_)) { 2 } else { 3 };
        let mut events = Vec::new();
        let mut received = (i64::MAX, i64::MIN);
        let mut by_partition: Vec<(pg_sys::Oid, Vec<i64>)> = Vec::new();
        let table = crate::pg::with_settings(BATCH_PLAN_SETTINGS, || {
            run_kept_on(
                client,
                tables,
                claim_sql,
                &[pg_sys::INT4OID, pg_sys::INT8OID, pg_sys::TIMESTAMPTZOID][..params],
                None,
                &[max_events.into(), from.into(), received_from.into()][..params],
            )
        })?;
        for row in table {
            check_for_interrupts!();
            let id: i64 = row.get(1)?.unwrap_or_default();
            let at = row.get::<TimestampWithTimeZone>(2)?.map(|t| t.into_inner()).unwrap_or_default();
            let Some(payload) = row.get::<JsonbArg>(3)? else { continue };
            received = (received.0.min(at), received.1.max(at));
            let partition = row.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid);
            match by_partition.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, ids)) => ids.push(id),
                None => by_partition.push((partition, vec![id])),
            }
            events.push(Claimed::parse(id, payload, row.get(4)?));
        }
        let claimed = events.iter().map(|c| c.id).max().map(|id| (id, received.0));
        if !matches!(scan, Scan::Only(_)) {
            with_floor(tables, |f| f.claimed(std::time::Instant::now(), from, claimed));
        }
        if events.is_empty() {
            return Ok(None);
        }
        let received = Received { from: received.0, to: received.1 };
        let ids: Vec<i64> = events.iter().map(|c| c.id).collect();
        if !matches!(scan, Scan::Only(_)) {
            // Before the dangerous work: a crash from here on leaves these ids on disk.
            super::inflight::record_batch(tables, &ids);
        }
        for (partition, ids) in by_partition {
            mark(client, partition, ids)?;
        }
        let out = BatchOutcome { full: events.len() as i64 >= max_events as i64, ..BatchOutcome::default() };
        Ok(Some(Batch { n_claimed: events.len(), events, received, out, ..Batch::new(tables, false) }))
    }

    /// A batch of no events yet: [`Batch::claim`] fills in what it claimed; a re-derivation
    /// (`rederiving`) reads only calls' histories.
    fn new(tables: &Tables, rederiving: bool) -> Batch {
        Batch {
            tables: tables.clone(),
            received: Received { from: 0, to: 0 },
            events: Vec::new(),
            n_claimed: 0,
            by_call: HashMap::new(),
            calls: Vec::new(),
            rows: HashMap::new(),
            late: Vec::new(),
            partial: Default::default(),
            folds: Vec::new(),
            failures: Vec::new(),
            deferred: Vec::new(),
            lock_waits: Vec::new(),
            duplicates: Vec::new(),
            failed_calls: Vec::new(),
            rederiving,
            out: BatchOutcome::default(),
        }
    }

    /// Groups the events by call; an event that cannot be read fails for good.
    fn group_by_call(&mut self) {
        for (i, c) in self.events.iter().enumerate() {
            match &c.parsed {
                Ok(ev) => self.by_call.entry(ev.call_id).or_default().push(i),
                Err(e) => self.failures.push(Failure { id: c.id, error: e.to_string(), permanent: e.is_permanent() }),
            }
        }
        self.calls = self.by_call.keys().copied().collect();
        self.calls.sort_unstable();
    }

    /// The ids of the claimed events of `call_id`.
    fn event_ids_of(&self, call_id: i64) -> impl Iterator<Item = i64> + '_ {
        self.by_call[&call_id].iter().map(|&i| self.events[i].id)
    }

    /// One processor per call at a time, and no more calls than the shared lock table has
    /// room for (one entry per call): the oldest calls first, the rest next batch.
    fn lock_calls(&mut self) {
        let cap = max_calls_per_batch();
        let calls = std::mem::take(&mut self.calls);
        let (kept, waiting) = decide::keep_oldest_calls(calls, cap, |c| self.event_ids_of(c).min().unwrap_or(i64::MAX));
        let mut capped_keeping = None;
        if !waiting.is_empty() {
            for call_id in waiting {
                let ids: Vec<i64> = self.event_ids_of(call_id).collect();
                self.deferred.extend(ids);
            }
            self.out.capped_at_calls = Some(cap);
            capped_keeping = Some(kept.iter().map(|c| self.by_call[c].len()).sum());
        }
        ADAPTED_LIMIT.with(|a| a.set(a.get().after(capped_keeping, self.out.full)));
        self.calls = kept;
        let mut held = Vec::with_capacity(self.calls.len());
        for call_id in std::mem::take(&mut self.calls) {
            if try_lock_call(call_id) {
                held.push(call_id);
            } else {
                let ids: Vec<i64> = self.event_ids_of(call_id).collect();
                self.deferred.extend(ids);
            }
        }
        self.calls = held;
    }

    /// The current rows of the calls held.
    fn read_calls(&mut self, client: &mut SpiClient<'_>) -> Result<(), pgrx::spi::Error> {
        if self.calls.is_empty() {
            return Ok(());
        }
        let table = crate::pg::with_settings(BATCH_PLAN_SETTINGS, || {
            run_kept_on(
                client,
                &self.tables,
                call_row::read_sql(),
                &[pg_sys::INT8ARRAYOID],
                None,
                &[self.calls.clone().into()],
            )
        })?;
        for row in table {
            let r = CallRow::read(&row)?;
            self.rows.insert(r.dialpad_call_id, r);
        }
        Ok(())
    }

    /// Sources are tenants: a call belongs to the webhook source it was first seen through
    /// (`calls.source`; for a new call, the source of its first-received event that has one),
    /// and a delivery through another source never modifies, pre-empts or re-owns it. Such
    /// an event is kept in the audit log and dead-lettered with the reason, never applied. A
    /// call without a source (plain INSERTs, or made before sources existed) is taken by the
    /// first source that delivers to it; an event without a source is applied only to calls
    /// without one.
    fn set_aside_foreign_events(&mut self) {
        let mut emptied = Vec::new();
        for &call_id in &self.calls {
            let Some(idx) = self.by_call.get_mut(&call_id) else { continue };
            let row_owner = self.rows.get(&call_id).and_then(|r| r.source.clone());
            let owner = row_owner.clone().or_else(|| {
                let mut by_arrival: Vec<usize> = idx.clone();
                by_arrival.sort_by_key(|&i| self.events[i].id);
                by_arrival.iter().find_map(|&i| self.events[i].parsed.as_ref().ok().and_then(|e| e.source.clone()))
            });
            let Some(owner) = owner else { continue };
            let events = &self.events;
            let failures = &mut self.failures;
            idx.retain(|&i| {
                let Ok(ev) = events[i].parsed.as_ref() else { return true };
                let foreign = match &ev.source {
                    Some(s) => *s != owner,
                    None => row_owner.is_some(),
                };
                if foreign {
                    let via = ev.source.as_deref().map_or("no source".to_string(), |s| format!("source \"{s}\""));
                    failures.push(Failure {
                        id: events[i].id,
                        error: format!(
                            "call {call_id} belongs to webhook source \"{owner}\"; this delivery came through {via} and is not applied (sources are tenants)"
                        ),
                        permanent: true,
                    });
                }
                !foreign
            });
            if idx.is_empty() {
                emptied.push(call_id);
            }
        }
        self.calls.retain(|c| !emptied.contains(c));
    }

    /// A call that receives an event older than its last applied one is re-derived from its
    /// whole history in event order: a late "voicemail" must not lose to an earlier processed
    /// "hangup". An event as old as the last applied one may be a redelivery that the insert
    /// trigger could not catch (delivered concurrently): its history tells. So does an event
    /// that asks a call in a terminal status for another status: whether that status was a
    /// default conclusion a later event may refine (a hangup's "missed" before
    /// "voicemail_uploaded", see domain/fold.rs) only the history says. Only such calls pay for
    /// reading their history.
    fn read_history_of_late_calls(
        &mut self,
        client: &mut SpiClient<'_>,
        rules: &RuleSet,
    ) -> Result<(), pgrx::spi::Error> {
        self.late = self
            .calls
            .iter()
            .copied()
            .filter(|call_id| {
                let Some(row) = self.rows.get(call_id) else { return false };
                let events = self.by_call[call_id].iter().filter_map(|&i| self.events[i].parsed.as_ref().ok());
                decide::needs_history(rules, row, events)
            })
            .collect();
        self.read_history(client)
    }

    /// Reads the applied history of the calls in `late` into the batch. A call whose history
    /// holds fewer events than it counts applied (retention dropped some) is `partial`: its
    /// row stays the base of its fold; the others are folded from their history alone.
    fn read_history(&mut self, client: &mut SpiClient<'_>) -> Result<(), pgrx::spi::Error> {
        if self.late.is_empty() {
            return Ok(());
        }
        let batch_ids: Vec<i64> = self.events.iter().map(|c| c.id).collect();
        let table = crate::pg::with_settings(BATCH_PLAN_SETTINGS, || {
            run_kept_on(
                client,
                &self.tables,
                HISTORY_SQL,
                &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
                None,
                &[self.late.clone().into(), batch_ids.into()],
            )
        })?;
        let mut found: HashMap<i64, i32> = HashMap::new();
        for row in table {
            // A call's history is as long as whoever inserts into the inbox made it.
            check_for_interrupts!();
            let id: i64 = row.get(1)?.unwrap_or_default();
            let Some(payload) = row.get::<JsonbArg>(2)? else { continue };
            let event = Claimed::parse(id, payload, row.get(3)?);
            let Ok(call_id) = event.parsed.as_ref().map(|e| e.call_id) else { continue };
            if let Some(g) = self.by_call.get_mut(&call_id) {
                g.push(self.events.len());
                self.events.push(event);
                *found.entry(call_id).or_default() += 1;
            }
        }
        for call_id in &self.late {
            let applied = self.rows.get(call_id).map_or(0, |r| r.events_applied);
            if found.get(call_id).copied().unwrap_or(0) < applied {
                self.partial.insert(*call_id);
            } else {
                self.rows.remove(call_id);
            }
        }
        Ok(())
    }

    /// Folds each call's events in event order (event_timestamp, then arrival), each
    /// redelivery once.
    fn fold_calls(&mut self, rules: &RuleSet) {
        let n = self.n_claimed;
        for &call_id in &self.calls {
            check_for_interrupts!();
            let mut idx = self.by_call.remove(&call_id).unwrap_or_default();
            idx.sort_by_key(|&i| {
                let ev = self.events[i].parsed.as_ref().ok();
                (ev.and_then(|e| e.event_at).unwrap_or(i64::MAX), self.events[i].id)
            });
            let dups = find_redeliveries(&self.events, &idx, n);
            let dup_set: std::collections::HashSet<usize> = dups.iter().map(|&(d, _)| d).collect();
            idx.retain(|i| !dup_set.contains(i));
            self.duplicates.extend(dups.iter().map(|&(d, orig)| (self.events[d].id, orig)));
            let base = self.rows.get(&call_id);
            if base.is_some() {
                // Applied to the row as it stands (an in-order call, or one whose history
                // is partly gone): the history events only served to find redeliveries.
                idx.retain(|&i| i < n);
            }
            let events: Vec<&CallEvent> = idx.iter().filter_map(|&i| self.events[i].parsed.as_ref().ok()).collect();
            let mut folded = fold_events_by_call(base, &events, rules, &mut || {
                check_for_interrupts!();
            });
            // Rejections of history events were recorded when they were first applied (a
            // re-derivation records them all again, see `rederive`).
            if !self.rederiving {
                folded.rejections.retain(|r| idx[r.event] < n);
            }
            // The count of applied events moves with every event, so it is always written.
            let own = idx.iter().filter(|&&i| i < n).count() as i32;
            let history = idx.len() as i32 - own;
            folded.row.events_applied = base.map_or(history, |r| r.events_applied).saturating_add(own);
            folded.changed |= own > 0;
            self.folds.push(CallFold { call_id, folded, events: idx });
        }
    }

    /// The whole batch at once; on error, call by call to isolate the bad one. A call whose
    /// row another transaction has locked (lock_timeout) is deferred, not failed; only the
    /// batch's own events are ever marked failed, never its history.
    fn write_calls(&mut self, client: &mut SpiClient<'_>) {
        let all: Vec<usize> = (0..self.folds.len()).collect();
        if in_subtransaction(|| write_calls_or_raise(client, &self.tables, &self.events, &self.folds, &all)).is_ok() {
            return;
        }
        for i in 0..self.folds.len() {
            check_for_interrupts!();
            let Err(e) =
                in_subtransaction(|| write_calls_or_raise(client, &self.tables, &self.events, &self.folds, &[i]))
            else {
                continue;
            };
            let own: Vec<i64> = self.folds[i]
                .events
                .iter()
                .copied()
                .filter(|&e| e < self.n_claimed)
                .map(|e| self.events[e].id)
                .collect();
            if !e.is_lock_conflict() {
                self.failed_calls.push((self.folds[i].call_id, e.message.clone()));
            }
            if e.is_lock_conflict() {
                self.deferred.extend(&own);
                self.lock_waits.extend(own);
            } else {
                self.failures.extend(own.into_iter().map(|id| Failure {
                    id,
                    error: e.message.clone(),
                    permanent: false,
                }));
            }
            self.folds[i].folded.changed = false;
            self.folds[i].folded.rejections.clear();
        }
    }

    /// Marks redeliveries, counts failed attempts (retry later or dead-letter), gives
    /// deferred events back to the queue, and fills the outcome.
    fn record_outcome(&mut self, client: &mut SpiClient<'_>, max_attempts: i32) -> Result<(), pgrx::spi::Error> {
        let failed: std::collections::HashSet<i64> = self.failures.iter().map(|f| f.id).collect();
        let waiting: std::collections::HashSet<i64> = self.lock_waits.iter().copied().collect();
        for f in &self.folds {
            self.out.rejected += f.folded.rejections.len() as u64;
            self.out.applied += f
                .events
                .iter()
                .filter(|&&i| i < self.n_claimed)
                .filter(|&&i| !failed.contains(&self.events[i].id) && !waiting.contains(&self.events[i].id))
                .count() as u64;
        }
        if !self.duplicates.is_empty() {
            self.out.duplicates = self.duplicates.len() as u64;
            let (ids, originals): (Vec<i64>, Vec<i64>) = self.duplicates.iter().copied().unzip();
            replanned(|| {
                run_kept_on(
                    client,
                    &self.tables,
                    DUPLICATES_SQL,
                    &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID],
                    None,
                    &[ids.into(), originals.into(), self.received.lower_arg(), self.received.upper_arg()],
                )
            })?;
        }
        if !self.failures.is_empty() {
            let ids: Vec<i64> = self.failures.iter().map(|f| f.id).collect();
            let errs: Vec<String> = self.failures.iter().map(|f| f.error.clone()).collect();
            let perm: Vec<bool> = self.failures.iter().map(|f| f.permanent).collect();
            let table = replanned(|| {
                run_kept_on(
                    client,
                    &self.tables,
                    FAIL_SQL,
                    &[
                        pg_sys::INT8ARRAYOID,
                        pg_sys::TEXTARRAYOID,
                        pg_sys::BOOLARRAYOID,
                        pg_sys::INT4OID,
                        pg_sys::TIMESTAMPTZOID,
                        pg_sys::TIMESTAMPTZOID,
                    ],
                    None,
                    &[
                        ids.into(),
                        errs.into(),
                        perm.into(),
                        max_attempts.into(),
                        self.received.lower_arg(),
                        self.received.upper_arg(),
                    ],
                )
            })?;
            for row in table {
                if row.get::<bool>(1)?.unwrap_or(false) {
                    self.out.dead += 1;
                }
            }
            self.out.failed = self.failures.len() as u64 - self.out.dead;
        }
        if !self.deferred.is_empty() {
            self.out.deferred = self.deferred.len() as u64;
            let (deferred, waits) = (self.deferred.clone(), self.lock_waits.clone());
            replanned(|| {
                run_kept_on(
                    client,
                    &self.tables,
                    DEFER_SQL,
                    &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID],
                    None,
                    &[deferred.into(), waits.into(), self.received.lower_arg(), self.received.upper_arg()],
                )
            })?;
        }
        self.out.handled = self.n_claimed as u64 - self.out.deferred;
        if let Some(s) = crate::pg::shmem::get() {
            s.note_processed(self.out.handled);
        }
        Ok(())
    }
}

/// Per-step timings of a batch, logged at DEBUG1 (SET client_min_messages = debug1, or
/// log_min_messages for the workers) to see where a batch spends its time.
struct StepTimer {
    enabled: bool,
    last: std::time::Instant,
    steps: Vec<(&'static str, f64)>,
}

impl StepTimer {
    fn new() -> StepTimer {
        // SAFETY: reads the client/server log levels; no preconditions.
        let enabled = crate::pg::backend::message_level_is_interesting(pg_sys::DEBUG1);
        StepTimer { enabled, last: std::time::Instant::now(), steps: Vec::new() }
    }

    fn step(&mut self, name: &'static str) {
        if self.enabled {
            let now = std::time::Instant::now();
            self.steps.push((name, (now - self.last).as_secs_f64() * 1000.0));
            self.last = now;
        }
    }

    fn report(&self, out: &BatchOutcome, late_calls: usize) {
        if self.enabled {
            let steps: Vec<String> = self.steps.iter().map(|(n, ms)| format!("{n} {ms:.2} ms")).collect();
            pgrx::debug1!(
                "pg_dialpad batch: {} events ({} late calls re-derived, {} deferred): {}",
                out.handled,
                late_calls,
                out.deferred,
                steps.join(", ")
            );
        }
    }
}

/// [`write_calls`] as the processor, with any error raised, so that the enclosing
/// subtransaction rolls back whatever part of the write was done.
fn write_calls_or_raise(
    client: &mut SpiClient<'_>,
    tables: &Tables,
    claimed: &[Claimed],
    folds: &[CallFold],
    which: &[usize],
) {
    if let Err(e) = crate::flags::as_processor(|| write_calls(client, tables, claimed, folds, which)) {
        e.raise("could not write calls");
    }
}

/// The redeliveries among a call's events (`idx`, in event order): an event of the batch
/// (index < `n_batch`) whose (state, event_timestamp, source) an applied history event or an
/// earlier batch event already has. Returns (index of the redelivery, id of the first delivery).
fn find_redeliveries(claimed: &[Claimed], idx: &[usize], n_batch: usize) -> Vec<(usize, i64)> {
    decide::find_redeliveries(
        idx,
        n_batch,
        |i| claimed[i].id,
        |i| {
            let ev = claimed[i].parsed.as_ref().ok()?;
            Some((ev.state.as_deref()?, ev.event_at?, ev.source.as_deref()))
        },
    )
}

/// Upserts the changed calls among `which` and records their rejected transitions.
fn write_calls(
    client: &mut SpiClient<'_>,
    tables: &Tables,
    claimed: &[Claimed],
    folds: &[CallFold],
    which: &[usize],
) -> Result<(), crate::pg::error::Error> {
    let mut cols = CallColumns::default();
    let mut rej = Rejections::default();
    for &w in which {
        let CallFold { call_id, folded: f, events: idx } = &folds[w];
        for r in &f.rejections {
            rej.call.push(*call_id);
            rej.event.push(claimed[idx[r.event]].id);
            rej.from.push(Some(r.from.clone()).filter(|s| !s.is_empty()));
            rej.to.push(r.to.clone());
            rej.reason.push(r.reason.clone());
        }
        if !f.changed {
            continue;
        }
        let raw = match f.raw_payload_from {
            Some(i) => {
                let event = &claimed[idx[i]];
                let mut check = || {
                    check_for_interrupts!();
                };
                Some(
                    sanitize::sanitize(event.payload.body(), &Limits::default(), &mut check)
                        .map_err(|e| crate::pg::error::Error::Payload { event: event.id, why: e.to_string() })?,
                )
            }
            None => None,
        };
        cols.push(&f.row, raw);
    }
    if !cols.is_empty() {
        run_kept_on(client, tables, call_row::upsert_sql(), &CallColumns::types(), None, &cols.into_args())?;
    }
    if !rej.call.is_empty() {
        run_kept_on(
            client,
            tables,
            REJECTIONS_SQL,
            &[
                pg_sys::INT8ARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
            ],
            None,
            &[rej.call.into(), rej.event.into(), rej.from.into(), rej.to.into(), rej.reason.into()],
        )?;
    }
    Ok(())
}

#[derive(Default)]
struct Rejections {
    call: Vec<i64>,
    event: Vec<i64>,
    from: Vec<Option<String>>,
    to: Vec<String>,
    reason: Vec<String>,
}

thread_local! {
    /// The partitions this backend keeps a mark plan for: (OID, qualified name, last use),
    /// most recent last.
    static MARK_PLANS: RefCell<Vec<(pg_sys::Oid, String)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the claimed events `ids` of `partition` handled ([`MARK_SQL`]), through the plan
/// kept for it: planned once, on its primary key whatever its statistics say. A plan is
/// keyed by the partition's OID and kept with its name: should the OID name another table
/// later (the partition dropped, the OID used again), the plan is made again.
fn mark(client: &mut SpiClient<'_>, partition: pg_sys::Oid, ids: Vec<i64>) -> Result<(), pgrx::spi::Error> {
    let Some(name) = crate::pg::partitions::qualified_name(partition) else {
        // Cannot happen: the claim's row locks keep the partition from being dropped.
        crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad: the partition (OID {}) of claimed events is gone", partition.to_u32()),
            None,
            None,
        )
    };
    let variant = (0, i64::from(partition.to_u32()));
    MARK_PLANS.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some(i) = kept.iter().position(|(oid, _)| *oid == partition) {
            let (_, was) = kept.remove(i);
            if was != name {
                crate::pg::spi::forget_plan(MARK_SQL, variant);
            }
        } else if kept.len() >= MARK_PLANS_KEPT {
            let (oldest, _) = kept.remove(0);
            crate::pg::spi::forget_plan(MARK_SQL, (0, i64::from(oldest.to_u32())));
        }
        kept.push((partition, name.clone()));
    });
    // As the partition's owner: the processor's role (dialpad_worker) is granted UPDATE on
    // the inbox, which covers its partitions only when they are reached through it. The
    // rows are those the claim locked as that role through the inbox, and the statement
    // names everything it uses by schema.
    crate::pg::with_settings(BATCH_PLAN_SETTINGS, || {
        crate::pg::as_owner_of(partition, || {
            crate::pg::spi::run_kept_as(
                client,
                MARK_SQL,
                variant,
                || MARK_SQL.replace("{partition}", &name),
                &[pg_sys::INT8ARRAYOID],
                None,
                &[ids.into()],
            )
        })
    })?;
    Ok(())
}

/// How many distinct calls one batch may hold locks on: a quarter of the shared lock table
/// shared among the workers and one more processor, so that a large dialpad.batch_size never
/// exhausts it (other sessions would fail with "out of shared memory").
fn max_calls_per_batch() -> usize {
    let (per_xact, backends) = crate::pg::backend::lock_table_settings();
    decide::lock_cap(per_xact, backends, crate::gucs::workers())
}

/// Tries the call's advisory lock (held until the transaction ends); never waits, and
/// reports a full lock table as "not available" instead of raising an error.
fn try_lock_call(call_id: i64) -> bool {
    crate::pg::advisory_xact_lock(LOCK_NAMESPACE, call_id as u64, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tables::names_a_table;

    #[test]
    fn the_statements_run_per_set_of_tables_name_them_by_placeholders() {
        let per_set = [
            CLAIM_SQL,
            CLAIM_ONE_SQL,
            HISTORY_SQL,
            REJECTIONS_SQL,
            FAIL_SQL,
            DEFER_SQL,
            DUPLICATES_SQL,
            call_row::read_sql(),
            call_row::upsert_sql(),
        ];
        for sql in per_set {
            assert_eq!(names_a_table(sql), None, "{sql}");
        }
    }
}
