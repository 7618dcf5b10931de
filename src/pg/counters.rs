//! Ingest counters in shared memory: deliveries accepted, duplicate and rejected (by reason),
//! per database and webhook source, aggregated here on the hot path (a hash probe and one
//! atomic add) and flushed now and then into `dialpad.ingest_counters` (pipeline/counters.rs).
//!
//! The table is fixed-size: a slot is claimed once per (database, source, outcome) and kept
//! for the server's life; when no slot is left, deliveries are counted under the source
//! `(overflow)`. Callers pass only configured source names (an unknown name is counted as
//! `(unknown)`), so a sender cannot make the table grow by naming sources.
//!
//! A flush reads the counts, writes them in its transaction, and subtracts what it wrote
//! when that transaction commits (nothing when it aborts): each delivery is flushed once,
//! while ingestion keeps adding. One flush at a time (`flushing`).

use pgrx::pg_sys;
use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Slots of the table: ~90 bytes each.
pub(crate) const SLOTS: usize = 2048;
/// Source names are at most 63 bytes (api/sources.rs check_name).
const NAME_WORDS: usize = 8;
const NAME_BYTES: usize = NAME_WORDS * 8;
/// Slots probed before a delivery is counted under `(overflow)`.
const MAX_PROBES: usize = 256;

const FREE: u32 = 0;
const FILLING: u32 = 1;
const READY: u32 = 2;

/// The source label of a delivery through no webhook source (none configured: plain JSON).
pub(crate) const NO_SOURCE: &str = "(none)";
/// The label of a delivery naming a source that is not configured.
pub(crate) const UNKNOWN_SOURCE: &str = "(unknown)";
/// The label of deliveries counted when the table was full.
pub(crate) const OVERFLOW_SOURCE: &str = "(overflow)";

/// What became of a delivery: its outcome and, for a refusal, the reason. The 28000 reasons
/// are the DETAIL texts of dialpad.ingest_webhook's refusals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub(crate) enum Outcome {
    Accepted,
    Duplicate,
    BadSignature,
    Expired,
    NotYetValid,
    UnsupportedCrit,
    UnsupportedAlgorithm,
    UnknownSource,
    DisabledSource,
    UnsignedBody,
    /// 22P02: not JSON, an empty body, a NUL byte, a malformed token.
    Malformed,
    /// 22023: older than dialpad.max_event_age, or from the future.
    Stale,
    /// 22023: several sources are configured and the delivery named none.
    NoSourceNamed,
    /// 54000: over dialpad.max_body_size.
    TooLarge,
    /// 22004: a NULL body.
    NullBody,
    /// XX000: the sources could not be read or the row not stored.
    InternalError,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 16] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::UnsupportedCrit,
        Outcome::UnsupportedAlgorithm,
        Outcome::UnknownSource,
        Outcome::DisabledSource,
        Outcome::UnsignedBody,
        Outcome::Malformed,
        Outcome::Stale,
        Outcome::NoSourceNamed,
        Outcome::TooLarge,
        Outcome::NullBody,
        Outcome::InternalError,
    ];

    /// (outcome, reason) as stored in dialpad.ingest_counters ('' for no reason).
    pub(crate) fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Accepted => ("accepted", ""),
            Outcome::Duplicate => ("duplicate", ""),
            Outcome::BadSignature => ("rejected", "bad signature"),
            Outcome::Expired => ("rejected", "expired"),
            Outcome::NotYetValid => ("rejected", "not yet valid"),
            Outcome::UnsupportedCrit => ("rejected", "unsupported crit"),
            Outcome::UnsupportedAlgorithm => ("rejected", "unsupported algorithm"),
            Outcome::UnknownSource => ("rejected", "unknown source"),
            Outcome::DisabledSource => ("rejected", "disabled source"),
            Outcome::UnsignedBody => ("rejected", "unsigned body"),
            Outcome::Malformed => ("rejected", "malformed"),
            Outcome::Stale => ("rejected", "stale event"),
            Outcome::NoSourceNamed => ("rejected", "no source named"),
            Outcome::TooLarge => ("rejected", "too large"),
            Outcome::NullBody => ("rejected", "null body"),
            Outcome::InternalError => ("rejected", "internal error"),
        }
    }

    /// The refusal whose 28000 DETAIL is `reason`.
    pub(crate) fn of_refusal(reason: &str) -> Outcome {
        Outcome::ALL
            .into_iter()
            .find(|o| o.labels() == ("rejected", reason))
            .unwrap_or(if reason == "malformed token" { Outcome::Malformed } else { Outcome::InternalError })
    }

    fn from_index(i: u32) -> Option<Outcome> {
        Outcome::ALL.get(i as usize).copied()
    }
}

#[repr(C)]
struct Slot {
    /// FREE, FILLING (its claimer is writing the key) or READY (the key never changes again).
    state: AtomicU32,
    database: AtomicU32,
    outcome: AtomicU32,
    name_len: AtomicU32,
    /// The source label, little-endian bytes, zero-padded.
    name: [AtomicU64; NAME_WORDS],
    count: AtomicU64,
    /// Everything counted since the server started (never taken away by a flush): what
    /// the HTTP listener's /metrics reports.
    total: AtomicU64,
}

#[repr(C)]
pub(crate) struct IngestCounters {
    slots: [Slot; SLOTS],
    /// By outcome: deliveries counted while the table was full (any database).
    overflow: [AtomicU64; Outcome::ALL.len()],
    overflow_total: [AtomicU64; Outcome::ALL.len()],
    /// pid of the backend flushing now (0: none).
    flushing: AtomicI32,
}

/// A source label as the words a slot stores; None when longer than a slot holds.
fn name_words(name: &str) -> Option<[u64; NAME_WORDS]> {
    if name.len() > NAME_BYTES {
        return None;
    }
    let mut bytes = [0u8; NAME_BYTES];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    let mut words = [0u64; NAME_WORDS];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    Some(words)
}

fn key_hash(database: u32, outcome: Outcome, words: &[u64; NAME_WORDS]) -> usize {
    // FNV-1a over the key's words.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in [database as u64, outcome as u64].iter().chain(words.iter()) {
        h ^= w;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SLOTS as u64) as usize
}

impl Slot {
    fn holds(&self, database: u32, outcome: Outcome, len: usize, words: &[u64; NAME_WORDS]) -> bool {
        self.database.load(Ordering::Relaxed) == database
            && self.outcome.load(Ordering::Relaxed) == outcome as u32
            && self.name_len.load(Ordering::Relaxed) as usize == len
            && self.name.iter().zip(words).all(|(a, b)| a.load(Ordering::Relaxed) == *b)
    }

    /// Waits (briefly) for a slot another process is filling; false if it stays unfilled.
    fn wait_ready(&self) -> bool {
        for _ in 0..10_000 {
            if self.state.load(Ordering::Acquire) == READY {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    fn name(&self) -> String {
        let len = (self.name_len.load(Ordering::Relaxed) as usize).min(NAME_BYTES);
        let bytes: Vec<u8> = self.name.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }
}

/// One counter read by [`IngestCounters::snapshot`]: where it lives, its key and value.
#[derive(Clone, Debug)]
pub(crate) struct Counted {
    /// The slot index, or None for an overflow counter.
    slot: Option<usize>,
    pub source: String,
    pub outcome: Outcome,
    pub count: u64,
}

impl IngestCounters {
    /// Counts one delivery of `database` through `source` (a configured source's name or
    /// one of the labels above).
    pub(crate) fn record(&self, database: u32, source: &str, outcome: Outcome) {
        let Some(words) = name_words(source) else {
            self.overflow[outcome as usize].fetch_add(1, Ordering::Relaxed);
            self.overflow_total[outcome as usize].fetch_add(1, Ordering::Relaxed);
            return;
        };
        let start = key_hash(database, outcome, &words);
        for probe in 0..MAX_PROBES {
            let slot = &self.slots[(start + probe) % SLOTS];
            let mut state = slot.state.load(Ordering::Acquire);
            if state == FREE {
                match slot.state.compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        slot.database.store(database, Ordering::Relaxed);
                        slot.outcome.store(outcome as u32, Ordering::Relaxed);
                        slot.name_len.store(source.len() as u32, Ordering::Relaxed);
                        for (a, w) in slot.name.iter().zip(&words) {
                            a.store(*w, Ordering::Relaxed);
                        }
                        slot.count.fetch_add(1, Ordering::Relaxed);
                        slot.total.fetch_add(1, Ordering::Relaxed);
                        // Release: whoever sees READY sees the key written above.
                        slot.state.store(READY, Ordering::Release);
                        return;
                    }
                    Err(now) => state = now,
                }
            }
            if state == FILLING && !slot.wait_ready() {
                continue;
            }
            if slot.holds(database, outcome, source.len(), &words) {
                slot.count.fetch_add(1, Ordering::Relaxed);
                slot.total.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.overflow[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.overflow_total[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every delivery of `database` counted since the server started, by source and
    /// outcome (the overflow counters included, as in [`IngestCounters::snapshot`]).
    pub(crate) fn totals(&self, database: u32) -> Vec<(String, Outcome, u64)> {
        let mut out = Vec::new();
        for slot in &self.slots {
            if slot.state.load(Ordering::Acquire) != READY || slot.database.load(Ordering::Relaxed) != database {
                continue;
            }
            if let Some(outcome) = Outcome::from_index(slot.outcome.load(Ordering::Relaxed)) {
                out.push((slot.name(), outcome, slot.total.load(Ordering::Relaxed)));
            }
        }
        for (outcome, c) in Outcome::ALL.into_iter().zip(&self.overflow_total) {
            let total = c.load(Ordering::Relaxed);
            if total > 0 {
                out.push((OVERFLOW_SOURCE.to_string(), outcome, total));
            }
        }
        out
    }

    /// Every non-zero counter of `database`, and the overflow counters (which belong to no
    /// database: they go with whichever database reads them).
    pub(crate) fn snapshot(&self, database: u32) -> Vec<Counted> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.state.load(Ordering::Acquire) != READY || slot.database.load(Ordering::Relaxed) != database {
                continue;
            }
            let count = slot.count.load(Ordering::Relaxed);
            let outcome = Outcome::from_index(slot.outcome.load(Ordering::Relaxed));
            if let (true, Some(outcome)) = (count > 0, outcome) {
                out.push(Counted { slot: Some(i), source: slot.name(), outcome, count });
            }
        }
        for (outcome, c) in Outcome::ALL.into_iter().zip(&self.overflow) {
            let count = c.load(Ordering::Relaxed);
            if count > 0 {
                out.push(Counted { slot: None, source: OVERFLOW_SOURCE.to_string(), outcome, count });
            }
        }
        out
    }

    /// Takes away what a committed flush wrote (counts added since stay).
    fn subtract(&self, flushed: &[Counted]) {
        for c in flushed {
            let counter = match c.slot {
                Some(i) => &self.slots[i].count,
                None => &self.overflow[c.outcome as usize],
            };
            counter.fetch_sub(c.count, Ordering::Relaxed);
        }
    }

    /// Claims the right to flush for the current transaction: false while another live
    /// backend flushes. Released when the transaction ends, the counts written taken away
    /// if it commits ([`flushed_at_commit`]).
    /// Once per transaction: a second flush in it would read again the counts the first
    /// wrote, which are taken away only at commit.
    pub(crate) fn begin_flush(&'static self) -> bool {
        if FLUSH.with(|f| f.borrow().is_some()) {
            return false;
        }
        let me = crate::pg::my_pid();
        let held = self.flushing.load(Ordering::Acquire);
        if held != me && held != 0 && crate::pg::process_alive(held) {
            return false;
        }
        if self.flushing.compare_exchange(held, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        register_xact_callback();
        FLUSH.with(|f| *f.borrow_mut() = Some(Vec::new()));
        true
    }
}

thread_local! {
    /// What this backend's flush wrote in the current transaction (Some while it holds the
    /// flush).
    static FLUSH: RefCell<Option<Vec<Counted>>> = const { RefCell::new(None) };
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes counters the current transaction wrote to the table: taken away from shared
/// memory when it commits.
pub(crate) fn flushed_at_commit(counted: Vec<Counted>) {
    FLUSH.with(|f| {
        if let Some(list) = f.borrow_mut().as_mut() {
            list.extend(counted);
        }
    });
}

fn register_xact_callback() {
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: a static callback with no argument, registered once per backend.
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
    }
}

/// # Safety
/// Called only by PostgreSQL, as the transaction callback registered here; touches only
/// this backend's thread-locals and shared-memory atomics.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    let committed = match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => true,
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => false,
        _ => return,
    };
    let Some(flushed) = FLUSH.with(|f| f.borrow_mut().take()) else { return };
    if let Some(c) = super::shmem::get().map(|s| &s.ingest) {
        if committed {
            c.subtract(&flushed);
        }
        let _ = c.flushing.compare_exchange(crate::pg::my_pid(), 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Counts a delivery in this database (nothing without shared memory).
pub(crate) fn record(source: &str, outcome: Outcome) {
    if let Some(s) = super::shmem::get() {
        s.ingest.record(crate::pg::my_database().into(), source, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static IngestCounters {
        // SAFETY: all-zero bytes are valid atomics (as in shared memory); leaked for 'static.
        Box::leak(unsafe { Box::new_zeroed().assume_init() })
    }

    fn total(c: &IngestCounters, db: u32, source: &str, outcome: Outcome) -> u64 {
        c.snapshot(db).iter().filter(|x| x.source == source && x.outcome == outcome).map(|x| x.count).sum()
    }

    #[test]
    fn counts_by_database_source_and_outcome() {
        let c = table();
        for _ in 0..3 {
            c.record(5, "acme", Outcome::Accepted);
        }
        c.record(5, "acme", Outcome::BadSignature);
        c.record(5, "other", Outcome::Accepted);
        c.record(6, "acme", Outcome::Accepted);
        assert_eq!(total(c, 5, "acme", Outcome::Accepted), 3);
        assert_eq!(total(c, 5, "acme", Outcome::BadSignature), 1);
        assert_eq!(total(c, 5, "other", Outcome::Accepted), 1);
        assert_eq!(total(c, 6, "acme", Outcome::Accepted), 1);
        assert_eq!(c.snapshot(5).len(), 3);
    }

    #[test]
    fn a_full_table_counts_under_overflow_and_never_grows() {
        let c = table();
        for i in 0..SLOTS + 100 {
            c.record(1, &format!("s{i}"), Outcome::Accepted);
        }
        let snap = c.snapshot(1);
        assert!(snap.len() <= SLOTS + Outcome::ALL.len());
        assert_eq!(snap.iter().map(|x| x.count).sum::<u64>(), (SLOTS + 100) as u64);
        assert!(total(c, 1, OVERFLOW_SOURCE, Outcome::Accepted) >= 100);
    }

    #[test]
    fn a_flush_takes_away_what_it_wrote_only() {
        let c = table();
        c.record(1, "a", Outcome::Duplicate);
        c.record(1, "a", Outcome::Duplicate);
        let snap = c.snapshot(1);
        c.record(1, "a", Outcome::Duplicate); // while the flush writes
        c.subtract(&snap);
        assert_eq!(total(c, 1, "a", Outcome::Duplicate), 1);
        // The totals since start are never taken away.
        assert_eq!(c.totals(1), vec![("a".to_string(), Outcome::Duplicate, 3)]);
    }

    #[test]
    fn every_refusal_reason_has_its_outcome() {
        for reason in [
            "bad signature",
            "expired",
            "not yet valid",
            "unsupported crit",
            "unsupported algorithm",
            "unknown source",
            "disabled source",
            "unsigned body",
        ] {
            assert_eq!(Outcome::of_refusal(reason).labels(), ("rejected", reason));
        }
        assert_eq!(Outcome::of_refusal("malformed token"), Outcome::Malformed);
        assert!(name_words(&"x".repeat(65)).is_none());
    }
}
