//! Triggers that make `dialpad.calls` enforce its rules whoever writes it: the direction is
//! stored normalized and a status may only move along `dialpad.status_transitions`.

use crate::gucs::{self, InvalidTransition};
use crate::{domain::direction, pg::error, pipeline::logical, pipeline::rules};
use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, AllocatedByRust, PgSqlErrorCode};

/// A trigger's failure: a row that does not read as its table says (pgrx raises it as an ERROR).
type TriggerError = crate::pg::error::Error;

fn err<E: std::fmt::Display>(e: E) -> TriggerError {
    crate::pg::error::Error::Row(e.to_string())
}

/// Emits the WARNING of an unknown direction; shared with `normalize_call_direction`.
pub(crate) fn warn_unknown_direction(raw: &str) {
    ereport!(
        WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("Unknown call direction: \"{raw}\""),
        "Known spellings: inbound, incoming, in, outbound, outgoing, out (any case). The direction is stored as NULL."
    );
}

/// The logical call of a leg (what the generated column `logical_call_id` holds once the
/// row is written): master_call_id, else entry_point_call_id, else the leg's own id.
fn logical_call_of<A: pgrx::WhoAllocated>(leg: &PgHeapTuple<'_, A>) -> Result<Option<i64>, TriggerError> {
    let master: Option<i64> = leg.get_by_name("master_call_id").map_err(err)?;
    let entry: Option<i64> = leg.get_by_name("entry_point_call_id").map_err(err)?;
    let own: Option<i64> = leg.get_by_name("dialpad_call_id").map_err(err)?;
    Ok(master.or(entry).or(own))
}

/// BEFORE INSERT OR UPDATE OR DELETE ON dialpad.calls, FOR EACH ROW. Also notes the logical
/// call of the leg before and after the write, for the statement trigger
/// [`calls_after_write`] to refresh.
#[pg_trigger]
fn calls_before_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, TriggerError> {
    if let Some(old) = trigger.old() {
        if let Some(id) = logical_call_of(&old)? {
            logical::touch(id);
        }
    }
    let Some(new) = trigger.new() else {
        // DELETE: the row goes as it is.
        return Ok(trigger.old().map(|old| old.into_owned()));
    };
    let mut new = new.into_owned();
    if let Some(id) = logical_call_of(&new)? {
        logical::touch(id);
    }

    if let Some(raw) = new.get_by_name::<String>("direction").map_err(err)? {
        match direction::normalize(&raw) {
            Some(d) if d.as_str() == raw => {}
            Some(d) => new.set_by_name("direction", d.as_str()).map_err(err)?,
            None => {
                warn_unknown_direction(&raw);
                new.set_by_name::<Option<&str>>("direction", None).map_err(err)?;
            }
        }
    }

    if let Some(old) = trigger.old().filter(|_| !crate::flags::processor_writing()) {
        let from: Option<String> = old.get_by_name("status").map_err(err)?;
        let to: Option<String> = new.get_by_name("status").map_err(err)?;
        if from != to {
            let rules = rules::current().map_err(err)?;
            if let Err(e) = rules.check(from.as_deref(), to.as_deref()) {
                let call_id: Option<i64> = old.get_by_name("dialpad_call_id").map_err(err)?;
                return match gucs::invalid_transition() {
                    InvalidTransition::Error => error::raise(
                        PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
                        e.headline(),
                        Some(format!(
                            "Call {}: {}.",
                            call_id.map(|c| c.to_string()).unwrap_or_default(),
                            e.reason_text()
                        )),
                        Some("Allowed moves are the rows of dialpad.status_transitions; set dialpad.invalid_transition = skip to keep the row and record the attempt instead."),
                    ),
                    InvalidTransition::Skip => {
                        ereport!(
                            WARNING,
                            PgSqlErrorCode::ERRCODE_WARNING,
                            e.headline(),
                            format!(
                                "Call {}: {}. The row was left as it was and the attempt recorded in dialpad.rejected_transitions.",
                                call_id.map(|c| c.to_string()).unwrap_or_default(),
                                e.reason_text()
                            )
                        );
                        record_rejection(call_id, &from, &to, &e.reason_text()).map_err(err)?;
                        Ok(None)
                    }
                };
            }
        }
    }
    Ok(Some(new))
}

/// AFTER INSERT OR UPDATE OR DELETE ON dialpad.calls, FOR EACH STATEMENT: brings the rows of
/// dialpad.logical_calls of the legs the statement wrote up to date (pipeline/logical.rs).
#[pg_trigger]
fn calls_after_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let relid = trigger.relid().map_err(err)?;
    if relid != crate::pg::dialpad_relation(c"calls") && crate::citus::shell_of(relid) != relid {
        // A Citus shard (dialpad.distribute()): the other legs of its logical calls may be
        // in shards on other nodes; the keeper of each call's row recomputes it
        // (citus/logical.rs).
        crate::citus::logical::note(logical::take_touched()).map_err(err)?;
        return Ok(None);
    }
    // Without Citus in the database, the refresh plans its statements once; with it, Citus
    // plans those on its distributed tables for their arguments.
    logical::refresh_touched(relid, !crate::citus::loaded());
    Ok(None)
}

/// Writes one row of dialpad.rejected_transitions.
pub(crate) fn record_rejection(
    call_id: Option<i64>,
    from: &Option<String>,
    to: &Option<String>,
    reason: &str,
) -> Result<(), pgrx::spi::Error> {
    Spi::run_with_args(
        "INSERT INTO dialpad.rejected_transitions (dialpad_call_id, from_status, to_status, reason) \
         VALUES ($1, $2, $3, $4)",
        &[call_id.into(), from.clone().into(), to.clone().into(), reason.into()],
    )
}

/// AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON each rule table, FOR EACH STATEMENT:
/// tells every backend (at commit) and this one (at the next command) to reload the rules.
#[pg_trigger]
fn rules_changed<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    // On a Citus shard of a rule table, the sessions of this node watch the table it is a
    // shard of: that is the one invalidated.
    rules::invalidate(crate::citus::shell_of(trigger.relid().map_err(err)?));
    Ok(None)
}

/// AFTER INSERT ON dialpad.webhook_events, FOR EACH STATEMENT: wake the workers at commit.
#[pg_trigger]
fn wake_workers_on_insert<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    crate::pg::shmem::wake_workers_at_commit();
    Ok(None)
}

/// BEFORE INSERT ON dialpad.webhook_events, FOR EACH ROW: fills event_type (when not given),
/// call_id and dedupe_key from the payload, reading jsonb's binary form, and marks a
/// redelivery `duplicate_of` its first delivery (handled at once: it is never applied
/// again). Never rejects a payload: every INSERT and COPY stores every row it carries.
#[pg_trigger]
fn webhook_events_before_insert<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, TriggerError> {
    let Some(new) = trigger.new() else { return Ok(None) };
    let mut new = new.into_owned();
    // Everything is read from the payload before the tuple is modified: the payload may
    // point into the tuple, which set_by_name replaces.
    // The source the delivery came through (dialpad.ingest_webhook's verified one, or what
    // the inserter wrote): part of the redelivery key, since sources are tenants.
    let source: Option<String> = match crate::flags::ingest_source() {
        Some(s) => Some(s),
        None if new.get_attribute_by_name("source").is_some() => new.get_by_name("source").map_err(err)?,
        None => None,
    };
    let (key, state, call_id) = {
        let payload: Option<crate::pg::datum::JsonbArg> = new.get_by_name("payload").map_err(err)?;
        match payload.as_ref().map(|p| crate::codec::jsonb::Container::root(p.body())) {
            Some(Ok(root)) => {
                let key = crate::domain::webhook::dedupe_key(root, source.as_deref());
                let state = match root {
                    crate::codec::jsonb::Value::Object(o) => match o.get(b"state") {
                        Ok(Some(crate::codec::jsonb::Value::String(s))) => {
                            Some(String::from_utf8_lossy(s).into_owned())
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let call_id = crate::domain::webhook::call_id_of(root);
                (key, state, call_id)
            }
            _ => (None, None, None),
        }
    };
    let event_type: Option<String> = new.get_by_name("event_type").map_err(err)?;
    if event_type.is_none() {
        if let Some(state) = state {
            new.set_by_name("event_type", state).map_err(err)?;
        }
    }
    // The key is always computed here, whatever the inserter wrote. A table without duplicate_of is a
    // 0.1.0 schema that ALTER EXTENSION ... UPDATE has not converted yet: it keeps its
    // unique index, and this library must go on storing into it meanwhile.
    let first = match (&key, call_id) {
        (Some(k), Some(c)) if new.get_attribute_by_name("duplicate_of").is_some() => {
            let received = new
                .get_by_name::<TimestampWithTimeZone>("received_at")
                .map_err(err)?
                .map(|t| t.into_inner())
                .unwrap_or_else(crate::pg::now);
            crate::pipeline::dedupe::first_delivery(trigger.relid().map_err(err)?, c, k, received)
        }
        _ => None,
    };
    if let Some(source) = crate::flags::ingest_source() {
        new.set_by_name("source", source).map_err(err)?;
    }
    new.set_by_name("dedupe_key", key).map_err(err)?;
    // On Citus the inbox is distributed by call_id, so an INSERT names it before the row is
    // routed (docs/citus.md); an event without a call id is routed with 0, which is kept.
    let routed_without_call_id = call_id.is_none() && new.get_by_name::<i64>("call_id").map_err(err)? == Some(0);
    if !routed_without_call_id {
        new.set_by_name("call_id", call_id).map_err(err)?;
    }
    if let Some(first) = first {
        new.set_by_name("duplicate_of", first).map_err(err)?;
        let now = TimestampWithTimeZone::try_from(crate::pg::transaction_start()).ok();
        new.set_by_name("processed_at", now).map_err(err)?;
    }
    // Otherwise duplicate_of stays as the inserter wrote it: only the table's owner can
    // (dialpad_ingest may insert event_type and payload only), and a restore from pg_dump
    // must keep the marks of redeliveries whose first delivery it has not loaded yet.
    Ok(Some(new))
}
