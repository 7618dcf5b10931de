//! Re-deriving calls after a rule change (sql/rederive.sql): a slice of the calls that
//! `dialpad.rederive_calls()` listed, each re-derived from its history by the batch
//! ([`batch::rederive`]), in the caller's transaction. The queue rows of a slice are locked
//! (SKIP LOCKED) so that any number of workers and sessions share the work; a row goes when
//! its call is done, so a job survives restarts and resumes where it stopped.

use super::batch;
use crate::domain::transitions::RuleSet;
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// Calls per slice: about the events of a processing batch (a call has a few events), short
/// enough that the calls it holds wait only briefly.
pub(crate) const SLICE: i32 = 200;

const CLAIM_SQL: &str = "\
SELECT job_id, call_id FROM dialpad.rederive_queue
 ORDER BY job_id, call_id
 LIMIT $1
   FOR UPDATE SKIP LOCKED";

const PENDING_SQL: &str = "SELECT EXISTS (SELECT FROM dialpad.rederive_queue)";

const DONE_SQL: &str = "\
DELETE FROM dialpad.rederive_queue AS q
 USING ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[])) AS d(job_id, call_id)
 WHERE q.job_id OPERATOR(pg_catalog.=) d.job_id AND q.call_id OPERATOR(pg_catalog.=) d.call_id";

const COUNT_SQL: &str = "\
UPDATE dialpad.rederive_jobs AS j
   SET rederived = j.rederived OPERATOR(pg_catalog.+) d.rederived,
       left_as_they_are = j.left_as_they_are OPERATOR(pg_catalog.+) d.left_as_they_are,
       failed = j.failed OPERATOR(pg_catalog.+) d.failed,
       last_error = COALESCE(d.last_error, j.last_error)
  FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                  pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.int8[]),
                  pg_catalog.unnest($5::pg_catalog.text[])) AS d(job_id, rederived, left_as_they_are, failed, last_error)
 WHERE j.id OPERATOR(pg_catalog.=) d.job_id";

const FINISH_SQL: &str = "\
UPDATE dialpad.rederive_jobs AS j SET finished_at = pg_catalog.now()
 WHERE j.id OPERATOR(pg_catalog.=) ANY ($1) AND j.finished_at IS NULL
   AND NOT EXISTS (SELECT FROM dialpad.rederive_queue q WHERE q.job_id OPERATOR(pg_catalog.=) j.id)";

/// Whether any job has calls left (one probe of the queue's primary key).
pub(crate) fn pending() -> bool {
    Spi::get_one::<bool>(PENDING_SQL).ok().flatten().unwrap_or(false)
}

/// What one job's share of a slice came to.
#[derive(Default)]
struct JobCounts {
    rederived: i64,
    left_as_they_are: i64,
    failed: i64,
    last_error: Option<String>,
}

/// Re-derives up to `max_calls` listed calls; returns how many left the queue (re-derived,
/// left as they are, or failed). Calls another processor holds stay listed for a later slice.
pub(crate) fn step(max_calls: i32, rules: &RuleSet) -> i64 {
    Spi::connect_mut(|client| step_in(client, max_calls, rules)).unwrap_or_else(|e| {
        crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad re-derivation failed: {e}"),
            None,
            None,
        )
    })
}

fn step_in(client: &mut pgrx::spi::SpiClient<'_>, max_calls: i32, rules: &RuleSet) -> Result<i64, pgrx::spi::Error> {
    // A call listed by two jobs is re-derived once, and counted in both.
    let mut jobs_of: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in crate::pg::spi::run_kept(client, CLAIM_SQL, &[pg_sys::INT4OID], None, &[max_calls.into()])? {
        check_for_interrupts!();
        let (Some(job), Some(call)) = (row.get::<i64>(1)?, row.get::<i64>(2)?) else { continue };
        jobs_of.entry(call).or_default().push(job);
    }
    if jobs_of.is_empty() {
        return Ok(0);
    }
    let calls: Vec<i64> = jobs_of.keys().copied().collect();
    let out = batch::rederive(&calls, rules);
    let mut counts: BTreeMap<i64, JobCounts> = BTreeMap::new();
    let mut gone: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut count = |call: i64, f: &dyn Fn(&mut JobCounts)| {
        for &job in &jobs_of[&call] {
            f(counts.entry(job).or_default());
            gone.0.push(job);
            gone.1.push(call);
        }
    };
    for &c in &out.done {
        count(c, &|j| j.rederived += 1);
    }
    for &c in &out.partial {
        count(c, &|j| j.left_as_they_are += 1);
    }
    for (c, e) in &out.failed {
        let error = format!("call {c}: {e}");
        count(*c, &|j| {
            j.failed += 1;
            j.last_error = Some(error.clone());
        });
    }
    let handled = (out.done.len() + out.partial.len() + out.failed.len()) as i64;
    if gone.0.is_empty() {
        return Ok(0);
    }
    let (jobs, calls) = gone;
    crate::pg::spi::run_kept(
        client,
        DONE_SQL,
        &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
        None,
        &[jobs.into(), calls.into()],
    )?;
    let ids: Vec<i64> = counts.keys().copied().collect();
    let mut args: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Option<String>>) = Default::default();
    for c in counts.values() {
        args.0.push(c.rederived);
        args.1.push(c.left_as_they_are);
        args.2.push(c.failed);
        args.3.push(c.last_error.clone());
    }
    crate::pg::spi::run_kept(
        client,
        COUNT_SQL,
        &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID],
        None,
        &[ids.clone().into(), args.0.into(), args.1.into(), args.2.into(), args.3.into()],
    )?;
    crate::pg::spi::run_kept(client, FINISH_SQL, &[pg_sys::INT8ARRAYOID], None, &[ids.into()])?;
    Ok(handled)
}
