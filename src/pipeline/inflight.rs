//! No crash loop (issue 22): an event whose processing takes its backend down (the OOM
//! killer's SIGKILL, a segfault, an abort on a failed allocation: a bug we do not know yet)
//! must not be claimed again after every crash restart, forever.
//!
//! A batch claims and marks its events in one transaction: a crash rolls everything back, and
//! nothing in the database can record the attempt without a second commit per batch (which
//! would cost the drain rate). So the attempt is recorded OUTSIDE the transaction: before the
//! dangerous work, each processing backend writes the ids it claimed (and the tables: a Citus
//! shard group) to its own small file, `$PGDATA/pg_dialpad/inflight/<generation>-<database
//! oid>-<pid>`, and
//! voids it when its transaction ends (commit, abort or PREPARE: every byte of the record
//! overwritten) and removes it when it
//! exits (FATAL included). No fsync: a backend crash does not lose the OS page cache. Only a
//! real crash (or an immediate shutdown, or a power loss) leaves a file with ids in it.
//!
//! Shared memory is zeroed by every crash restart: its generation (set by the first processor
//! of a server lifetime) tells the files of the lifetime before ("stale") from those of live
//! backends. The first processor of a database after a restart (a worker or
//! `dialpad.process_events()`) reads its database's stale files: their ids are suspects
//! (the other processors wait the moment that takes, so that a process_events() never
//! returns 0 for it while events are due). Until every suspect is dealt with, one
//! transaction at a time (any backend's) does a recovery step and the other processors
//! skip their batch:
//! - a suspect that a file lists as `isolated` (the backend that crashed was processing it
//!   alone) is the culprit: it is dead-lettered (dead_at, attempts + 1, last_error
//!   [`CULPRIT_ERROR`]) in the step's transaction;
//! - any other suspect is processed ALONE (a claim of exactly that id), recorded first in the
//!   step's own file as `isolated`; one already processed or dead-lettered is skipped.
//!
//! So an event that ends its backend is dead-lettered after two crashes (one in a batch, one
//! alone) and every other event of the crashed batch flows. After each step the suspects left
//! are written to one compacted file (`0-<database>-<pid>-<time>`, always stale) and the files read are
//! removed; a crash at any point leaves files whose re-reading is idempotent (a processed or
//! dead event is skipped). Everything here is skipped without shared memory (the library not
//! in shared_preload_libraries): no generation, no recovery.

use crate::pg::shmem;
use crate::pipeline::batch::BatchOutcome;
use crate::pipeline::tables::{Tables, Target};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Where the in-flight files are, relative to the data directory (every backend's cwd).
pub(crate) const DIR: &str = "pg_dialpad/inflight";

/// The last_error of an event dead-lettered for ending its backend.
pub(crate) const CULPRIT_ERROR: &str = "processing this event ended its backend (crash or out of memory) twice, \
     in a batch and then alone; dead-lettered (dialpad.retry_event() re-drives it)";

const HEADER: &str = "pg_dialpad inflight 1";
/// Written over every byte of a record when its transaction ends: nothing in it reads.
const CLEARED: u8 = b'-';

/// An event that was in flight when a backend ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspect {
    pub tables: Tables,
    pub id: i64,
    /// The backend that ended was processing it alone.
    pub culprit: bool,
}

// ---------------------------------------------------------------------------------------
// The pure part: the file format, merging, naming.

fn push_tables(out: &mut String, t: &Tables) {
    use std::fmt::Write;
    let (l, s) = t.logical.map_or(("-".to_string(), "-".to_string()), |(l, s)| (l.to_string(), s.to_string()));
    let _ = writeln!(out, "tables\t{}\t{}\t{}\t{}\t{l}\t{s}", t.shard, t.inbox, t.calls, t.rejected);
}

fn push_ids(out: &mut String, ids: &[i64], isolated: bool) {
    use std::fmt::Write;
    let kind = if isolated { "isolated" } else { "batch" };
    for id in ids {
        let _ = writeln!(out, "{kind}\t{id}");
    }
}

/// One backend's record: the events of `tables` it is processing (alone when `isolated`).
pub(crate) fn encode_batch(tables: &Tables, ids: &[i64], isolated: bool) -> String {
    let mut out = String::with_capacity(96 + ids.len() * 16);
    out.push_str(HEADER);
    out.push('\n');
    push_tables(&mut out, tables);
    push_ids(&mut out, ids, isolated);
    out.push_str("end\n");
    out
}

/// A list of suspects (the compacted file).
pub(crate) fn encode(suspects: &[Suspect]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let mut last: Option<&Tables> = None;
    for s in suspects {
        if last != Some(&s.tables) {
            push_tables(&mut out, &s.tables);
            last = Some(&s.tables);
        }
        push_ids(&mut out, &[s.id], s.culprit);
    }
    out.push_str("end\n");
    out
}

fn parse_tables<'a>(mut f: impl Iterator<Item = &'a str>) -> Option<Tables> {
    let shard = f.next()?.parse().ok()?;
    let (inbox, calls, rejected) = (f.next()?.to_string(), f.next()?.to_string(), f.next()?.to_string());
    let logical = match (f.next()?, f.next()?) {
        ("-", "-") => None,
        (l, s) => Some((l.parse().ok()?, s.parse().ok()?)),
    };
    Some(Tables { shard, inbox, calls, rejected, logical })
}

/// The suspects a file lists; None for a voided one (its backend's transaction ended) or one
/// that is not a whole record (it ends at its first `end` line: what follows is the tail of a
/// longer record overwritten in place).
pub(crate) fn decode(text: &str) -> Option<Vec<Suspect>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut tables: Option<Tables> = None;
    let mut out = Vec::new();
    for line in lines {
        let mut f = line.split('\t');
        match f.next()? {
            "end" => return Some(out),
            "tables" => tables = Some(parse_tables(f)?),
            kind @ ("batch" | "isolated") => {
                let id = f.next()?.parse().ok()?;
                out.push(Suspect { tables: tables.clone()?, id, culprit: kind == "isolated" });
            }
            _ => return None,
        }
    }
    None
}

/// The suspects of several files, each once (a culprit if any file says so): the culprits
/// first, then by tables and id.
pub(crate) fn merge(all: impl IntoIterator<Item = Suspect>) -> Vec<Suspect> {
    let mut by: BTreeMap<(i64, String, i64), Suspect> = BTreeMap::new();
    for s in all {
        by.entry((s.tables.shard, s.tables.inbox.clone(), s.id)).and_modify(|e| e.culprit |= s.culprit).or_insert(s);
    }
    let mut v: Vec<Suspect> = by.into_values().collect();
    v.sort_by_key(|s| (!s.culprit, s.tables.shard, s.id));
    v
}

/// Whether a file named `name` was left by a backend of `database` in another server
/// lifetime than `generation` (a compacted file, generation 0, always is).
pub(crate) fn is_stale(name: &str, generation: i64, database: u32) -> bool {
    let mut f = name.split('-');
    let g = f.next().and_then(|g| g.parse::<i64>().ok());
    let d = f.next().and_then(|d| d.parse::<u32>().ok());
    g.is_some_and(|g| g != generation) && d == Some(database)
}

// ---------------------------------------------------------------------------------------
// The backend's side: its own file, the recovery steps, the callbacks.

/// A recovery step's state in the backend that owns it (for the current transaction).
struct Recovery {
    /// The stale files read (removed once what is left is written elsewhere).
    files: Vec<PathBuf>,
    left: VecDeque<Suspect>,
    /// The suspects taken from `left` in this transaction: back to its front if the
    /// transaction aborts (a step that did not commit dealt with nothing).
    taken: Vec<Suspect>,
    /// A step was done in this transaction: one per transaction.
    stepped: bool,
}

thread_local! {
    /// This backend's file and its path (opened at its first batch).
    static OWN: RefCell<Option<(std::fs::File, PathBuf)>> = const { RefCell::new(None) };
    /// How many bytes of records the file holds (to be voided at the transaction's end).
    static DIRTY: Cell<usize> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static RECOVERY: RefCell<Option<Recovery>> = const { RefCell::new(None) };
    static SAID_IO_ERROR: Cell<bool> = const { Cell::new(false) };
}

fn database() -> u32 {
    crate::pg::my_database().to_u32()
}

fn clean(s: &shmem::Shared, db: u32) -> bool {
    s.inflight_clean.iter().any(|d| d.load(Ordering::Acquire) == db)
}

/// Notes that `db` has nothing left to recover (when the list is full, its processors just
/// look at the directory before each batch).
fn set_clean(s: &shmem::Shared, db: u32) {
    for d in &s.inflight_clean {
        match d.compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(other) if other == db => return,
            Err(_) => {}
        }
    }
}

fn generation(s: &shmem::Shared) -> i64 {
    let g = s.inflight_generation.load(Ordering::Acquire);
    if g != 0 {
        return g;
    }
    let now = crate::pg::now().max(1);
    match s.inflight_generation.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => now,
        Err(g) => g,
    }
}

fn io_warning(what: &str, e: &std::io::Error) {
    if !SAID_IO_ERROR.with(|s| s.replace(true)) {
        warning!("pg_dialpad: could not {what} in {DIR}: {e}; a crash while processing is not recorded");
    }
}

fn ensure_registered() {
    if !REGISTERED.with(|r| r.replace(true)) {
        // Registered once per backend; both only touch this backend's thread-locals, its
        // own files and shared-memory atomics.
        crate::pg::backend::on_xact_event(on_xact_event);
        crate::pg::backend::before_shmem_exit(on_exit, pg_sys::Datum::from(0usize));
    }
}

/// Writes this backend's record: it is processing `ids` of `tables` (alone: `isolated`).
fn record(tables: &Tables, ids: &[i64], isolated: bool) {
    let Some(s) = shmem::get() else { return };
    ensure_registered();
    let text = encode_batch(tables, ids, isolated);
    OWN.with(|own| {
        let mut own = own.borrow_mut();
        if own.is_none() {
            let name = format!("{}-{}-{}", generation(s), database(), crate::pg::my_pid());
            let path = PathBuf::from(DIR).join(name);
            let opened = std::fs::create_dir_all(DIR).and_then(|_| {
                std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)
            });
            match opened {
                Ok(f) => *own = Some((f, path)),
                Err(e) => return io_warning("create a file", &e),
            }
        }
        if let Some((f, _)) = own.as_ref() {
            // Over the previous record (if the transaction had one): decode() stops at the
            // first `end`, so a longer tail left behind is never read.
            match f.write_all_at(text.as_bytes(), 0) {
                Ok(()) => DIRTY.with(|d| d.set(d.get().max(text.len()))),
                Err(e) => io_warning("write", &e),
            }
        }
    });
}

/// Records the events a batch claimed, before it folds and writes them.
pub(crate) fn record_batch(tables: &Tables, ids: &[i64]) {
    record(tables, ids, false);
}

/// What the next batch of this backend does.
enum Step {
    Normal,
    /// Another backend is doing a recovery step.
    Wait,
    Isolate(Tables, i64),
    DeadLetter(Tables, i64),
}

fn next_step() -> Step {
    let Some(s) = shmem::get() else { return Step::Normal };
    let me = crate::pg::my_pid();
    if clean(s, database()) {
        return Step::Normal;
    }
    loop {
        match s.inflight_recovery.load(Ordering::Acquire) {
            r if r == me => break,
            0 => {
                // Owned while the files are read, as -pid: see below.
                if s.inflight_recovery.compare_exchange(0, -me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    break;
                }
            }
            r if r < 0 && r != -me && crate::pg::process_alive(-r) => {
                // Another processor is reading the files, which most often hold nothing
                // (every first batch of a server lifetime): a moment, waited out as a lock
                // is (interrupts and statement_timeout apply). Sent away meanwhile, a
                // process_events() would return 0 with events due, and end a drain loop
                // early.
                check_for_interrupts!();
                std::thread::sleep(SCAN_POLL);
                if clean(s, database()) {
                    return Step::Normal;
                }
            }
            r if crate::pg::process_alive(r.abs()) && r != -me => return Step::Wait,
            r => {
                let _ = s.inflight_recovery.compare_exchange(r, 0, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }
    ensure_registered();
    let step = RECOVERY.with(|rc| {
        let mut rc = rc.borrow_mut();
        let rec = rc.get_or_insert_with(|| scan(generation(s), database()));
        let step = if rec.stepped {
            Step::Wait
        } else {
            let x = rec.left.pop_front()?;
            rec.taken.push(x.clone());
            if x.culprit {
                Step::DeadLetter(x.tables, x.id)
            } else {
                Step::Isolate(x.tables, x.id)
            }
        };
        // A step to do: owned as pid until this transaction ends (finish).
        let _ = s.inflight_recovery.compare_exchange(-me, me, Ordering::AcqRel, Ordering::Acquire);
        Some(step)
    });
    step.unwrap_or_else(|| {
        // Nothing (left) to recover: the database is clean from now on, and the other
        // processors must not wait for the end of this transaction (a process_events() that
        // returned 0 while events are due would end a drain loop early).
        if let Some(rec) = RECOVERY.with(|rc| rc.borrow_mut().take()) {
            finish(rec);
        }
        Step::Normal
    })
}

/// How often a processor looks again while another reads the in-flight files.
const SCAN_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// Reads the stale files of `database`.
fn scan(generation: i64, database: u32) -> Recovery {
    let mut files = Vec::new();
    let mut all = Vec::new();
    // Files of backends that ended, not only the suspects left by the previous step.
    let mut fresh = false;
    if let Ok(dir) = std::fs::read_dir(DIR) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_stale(&name, generation, database) {
                continue;
            }
            fresh |= !name.starts_with("0-");
            let path = entry.path();
            if let Some(found) = std::fs::read_to_string(&path).ok().as_deref().and_then(decode) {
                all.extend(found);
            }
            files.push(path);
        }
    }
    let left = merge(all);
    if fresh && !left.is_empty() {
        log!(
            "pg_dialpad: {} events were being processed when a backend ended (crash, out of memory or immediate \
             shutdown); each is now processed alone before any other batch",
            left.len()
        );
    }
    Recovery { files, left: left.into(), taken: Vec::new(), stepped: false }
}

fn mark_stepped() {
    RECOVERY.with(|rc| {
        if let Some(rec) = rc.borrow_mut().as_mut() {
            rec.stepped = true;
        }
    });
}

/// The culprit's dead-lettering: an event not already processed or dead.
const DEAD_SQL: &str = "\
UPDATE {inbox}
   SET dead_at = pg_catalog.now(), attempts = attempts OPERATOR(pg_catalog.+) 1, last_error = $2
 WHERE id OPERATOR(pg_catalog.=) $1 AND processed_at IS NULL AND dead_at IS NULL
RETURNING id";

fn dead_letter(client: &mut SpiClient<'_>, tables: &Tables, id: i64) -> Result<u64, pgrx::spi::Error> {
    let n = client.update(tables.render(DEAD_SQL).as_str(), None, &[id.into(), CULPRIT_ERROR.into()])?.len() as u64;
    if n > 0 {
        log!(
            "pg_dialpad: event {id} ended its backend (crash or out of memory) in a batch and then alone; \
             dead-lettered (dialpad.retry_event({id}) re-drives it)"
        );
    }
    Ok(n)
}

/// Before a batch: after a crash restart, a recovery step instead of the batch (Some: its
/// outcome, `full` so that a worker goes on at once), or nothing while another backend does
/// one (Some, empty). None: the batch runs as usual. `alone` processes exactly one event of
/// the given tables (a batch claiming only it).
pub(crate) fn recovery_step<'c>(
    client: &mut SpiClient<'c>,
    mut alone: impl FnMut(&mut SpiClient<'c>, &Tables, i64) -> Result<BatchOutcome, pgrx::spi::Error>,
) -> Result<Option<BatchOutcome>, pgrx::spi::Error> {
    loop {
        match next_step() {
            Step::Normal => return Ok(None),
            Step::Wait => return Ok(Some(BatchOutcome::default())),
            Step::DeadLetter(tables, id) => {
                let n = dead_letter(client, &tables, id)?;
                if n > 0 {
                    mark_stepped();
                    return Ok(Some(BatchOutcome { handled: n, dead: n, full: true, ..BatchOutcome::default() }));
                }
            }
            Step::Isolate(tables, id) => {
                record(&tables, &[id], true);
                let out = alone(client, &tables, id)?;
                if out.handled + out.deferred > 0 {
                    mark_stepped();
                    return Ok(Some(BatchOutcome { full: true, ..out }));
                }
            }
        }
    }
}

/// The end of a recovery step's transaction: what is left goes to one compacted file, the
/// files read are removed, and the next transaction (any backend's) goes on.
fn finish(rec: Recovery) {
    let Some(s) = shmem::get() else { return };
    let me = crate::pg::my_pid();
    let done = rec.left.is_empty();
    if !done {
        let left: Vec<Suspect> = rec.left.into();
        let name = format!("0-{}-{me}-{}", database(), crate::pg::now());
        let tmp = PathBuf::from(DIR).join(format!("{name}.tmp"));
        let written =
            std::fs::write(&tmp, encode(&left)).and_then(|_| std::fs::rename(&tmp, PathBuf::from(DIR).join(&name)));
        if let Err(e) = written {
            // The files read stay: re-reading them is idempotent.
            io_warning("write the suspects left", &e);
            release(s, me);
            return;
        }
    }
    for f in &rec.files {
        let _ = std::fs::remove_file(f);
    }
    if done {
        set_clean(s, database());
    }
    release(s, me);
}

/// Gives the recovery up, whether this backend was reading the files (-pid) or stepping.
fn release(s: &shmem::Shared, me: i32) {
    for owner in [me, -me] {
        let _ = s.inflight_recovery.compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// # Safety
/// Called only by PostgreSQL, as the transaction callback registered in [`ensure_registered`];
/// raises no error (this runs after the commit record): file errors are ignored.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if !matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        return;
    }
    let written = DIRTY.with(|d| d.replace(0));
    if written > 0 {
        OWN.with(|own| {
            if let Some((f, _)) = own.borrow().as_ref() {
                // Every byte of the record overwritten: decode() reads nothing from it, and
                // a later record torn by a crash mid-write has no `end` after it, as in an
                // empty file. A write to the page cache, where truncating the file cost a
                // metadata change per batch (ftruncate).
                let _ = f.write_all_at(&vec![CLEARED; written], 0);
            }
        });
    }
    if let Some(mut rec) = RECOVERY.with(|rc| rc.borrow_mut().take()) {
        if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
            for x in rec.taken.drain(..).rev() {
                rec.left.push_front(x);
            }
        }
        finish(rec);
    }
    // Whatever happened in between (an error while the files were read: a cancel acted on
    // at the LOG line of scan()), the recovery is not this backend's after its transaction.
    if let Some(s) = shmem::get() {
        release(s, crate::pg::my_pid());
    }
}

/// # Safety
/// Called only by PostgreSQL at process exit (before_shmem_exit), FATAL included: the
/// backend's file goes, and a recovery step it owned is left to the next processor.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    OWN.with(|own| {
        if let Some((_, path)) = own.borrow_mut().take() {
            let _ = std::fs::remove_file(path);
        }
    });
    RECOVERY.with(|rc| rc.borrow_mut().take());
    if let Some(s) = shmem::get() {
        release(s, crate::pg::my_pid());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(n: i64) -> Tables {
        Tables::shards(n, n + 1, n + 2, Some((n + 3, n + 4)))
    }

    #[test]
    fn a_batch_record_reads_back() {
        let text = encode_batch(&Tables::whole(), &[3, 1, 2], false);
        let got = decode(&text).unwrap();
        assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 1, 2]);
        assert!(got.iter().all(|s| !s.culprit && s.tables == Tables::whole()));
        let iso = decode(&encode_batch(&shard(100), &[7], true)).unwrap();
        assert_eq!(iso, vec![Suspect { tables: shard(100), id: 7, culprit: true }]);
    }

    #[test]
    fn empty_torn_or_foreign_files_list_nothing() {
        assert_eq!(decode(""), None);
        let text = encode_batch(&Tables::whole(), &[1, 2, 3], false);
        let cleared = String::from_utf8(vec![CLEARED; text.len()]).unwrap();
        assert_eq!(decode(&cleared), None, "a voided record is void");
        // a record torn by a crash over a voided one: no `end`
        let torn = format!("{}{}", &text[..text.len() / 2], &cleared[text.len() / 2..]);
        assert_eq!(decode(&torn), None, "a torn record over a voided one");
        // no `end`: a record not wholly written
        assert_eq!(decode(&text[..text.len() - 4]), None);
        assert_eq!(decode("something else\nbatch\t1\nend\n"), None);
        assert_eq!(decode(&text.replace("batch\t2", "batch\tx")), None);
        // ids before any tables line
        assert_eq!(decode(&format!("{HEADER}\nbatch\t1\nend\n")), None);
    }

    #[test]
    fn a_shorter_record_over_a_longer_one_reads_as_the_shorter() {
        let long = encode_batch(&Tables::whole(), &(1..100).collect::<Vec<_>>(), false);
        let short = encode_batch(&Tables::whole(), &[500], true);
        let mut bytes = long.into_bytes();
        bytes[..short.len()].copy_from_slice(short.as_bytes());
        let got = decode(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert_eq!(got, vec![Suspect { tables: Tables::whole(), id: 500, culprit: true }]);
    }

    #[test]
    fn merge_keeps_each_event_once_culprits_first() {
        let w = Tables::whole();
        let batch = decode(&encode_batch(&w, &[5, 6, 7], false)).unwrap();
        let alone = decode(&encode_batch(&w, &[6], true)).unwrap();
        let other = decode(&encode_batch(&shard(9), &[5], false)).unwrap();
        let got = merge(batch.into_iter().chain(alone).chain(other));
        let ids: Vec<(i64, i64, bool)> = got.iter().map(|s| (s.tables.shard, s.id, s.culprit)).collect();
        assert_eq!(ids, vec![(0, 6, true), (0, 5, false), (0, 7, false), (9, 5, false)]);
    }

    #[test]
    fn the_compacted_list_reads_back_whole() {
        let list = vec![
            Suspect { tables: Tables::whole(), id: 1, culprit: true },
            Suspect { tables: Tables::whole(), id: 2, culprit: false },
            Suspect { tables: shard(40), id: 3, culprit: false },
            Suspect { tables: Tables::whole(), id: 4, culprit: false },
        ];
        assert_eq!(decode(&encode(&list)).unwrap(), list);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn files_of_other_lifetimes_of_the_same_database_are_stale() {
        assert!(is_stale("123-5-456", 124, 5));
        assert!(!is_stale("124-5-456", 124, 5));
        assert!(!is_stale("123-6-456", 124, 5), "another database's");
        assert!(is_stale("0-5-456-789", 124, 5));
        assert!(is_stale("0-5-456-789.tmp", 124, 5));
        assert!(!is_stale("0-6-456-789", 124, 5));
        assert!(!is_stale("junk", 124, 5));
        assert!(!is_stale(".hidden", 124, 5));
    }
}
