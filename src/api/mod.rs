//! The SQL surface: every `#[pg_extern]` function and trigger. Each validates its
//! arguments, calls into `domain` (pure rules) or `pipeline` (the batch), and turns what
//! goes wrong into an error with a SQLSTATE (`pg::error`).

pub(crate) mod compat;
pub(crate) mod drop_guard;
pub(crate) mod ingest;
pub(crate) mod monitoring;
pub(crate) mod sources;
pub(crate) mod triggers;

use crate::codec::jsonb;
use crate::domain::{direction, sanitize};
use crate::pg::{self, datum, error};
use crate::pipeline::{batch, rules};
use crate::{gucs, version};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Handles up to `max_events` due events in the caller's transaction; returns how many.
#[pg_extern(volatile, parallel_unsafe)]
fn process_events(max_events: default!(i32, 500)) -> i32 {
    if max_events < 0 {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_events must be zero or more, not {max_events}"),
            None,
            None,
        );
    }
    version::require_current();
    let rules = rules::current_or_raise();
    let targets = match crate::citus::processing_targets() {
        Ok(t) => t,
        Err(e) => error::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_dialpad could not list the tables to process: {e}"),
            None,
            None,
        ),
    };
    let mut handled = 0i64;
    let mut left = max_events;
    for tables in &targets.local {
        if left <= 0 {
            break;
        }
        let out = crate::citus::with_shard_writes(|| {
            with_default_lock_timeout(|| {
                batch::process_batch(tables, left, &rules, gucs::max_attempts(), batch::Scan::Full)
            })
        });
        handled += out.handled as i64;
        left -= out.handled as i32;
    }
    if targets.coordinator && left > 0 {
        handled += crate::citus::process_on_workers(left);
    }
    handled.min(i32::MAX as i64) as i32
}

/// Re-derives up to `max_calls` of the calls dialpad.rederive_calls() listed, in the
/// caller's transaction; returns how many left the list (0: nothing is left).
#[pg_extern(volatile, parallel_unsafe)]
fn rederive_step(max_calls: default!(i32, 200)) -> i64 {
    if max_calls < 0 {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_calls must be zero or more, not {max_calls}"),
            None,
            None,
        );
    }
    version::require_current();
    let rules = rules::current_or_raise();
    with_default_lock_timeout(|| crate::pipeline::rederive::step(max_calls, &rules))
}

/// Runs `f` with lock_timeout = dialpad.lock_timeout unless the caller set a lock_timeout
/// of their own (a caller may choose to wait; the default never stalls). Scoped like a
/// function's SET clause: restored here, or by the transaction's abort.
fn with_default_lock_timeout<R>(f: impl FnOnce() -> R) -> R {
    if pg::setting(c"lock_timeout").is_some_and(|v| v != "0") {
        return f();
    }
    let value = std::ffi::CString::new(gucs::lock_timeout_ms().to_string()).unwrap_or_default();
    pg::with_setting(c"lock_timeout", &value, f)
}

/// `inbound`, `outbound`, or NULL (with a WARNING for a spelling we do not know).
#[pg_extern(immutable, strict, parallel_safe)]
fn normalize_call_direction(direction: &str) -> Option<&'static str> {
    match direction::normalize(direction) {
        Some(d) => Some(d.as_str()),
        None => {
            triggers::warn_unknown_direction(direction);
            None
        }
    }
}

/// The bound of `partition` (behind the dialpad.partitions view), read from the catalog:
/// DEFAULT, or a range of timestamps (MINVALUE and MAXVALUE as -infinity and infinity). No
/// row when it is not a partition of a range on one timestamptz column.
#[pg_extern(stable, strict, parallel_safe)]
fn partition_bounds(
    partition: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(is_default, bool),
        name!(range_from, Option<TimestampWithTimeZone>),
        name!(range_to, Option<TimestampWithTimeZone>),
    ),
> {
    let ts = |t: pg_sys::TimestampTz| TimestampWithTimeZone::try_from(t).ok();
    let row = match pg::partitions::bound_of(partition) {
        Some(pg::partitions::Bound::Default) => Some((true, None, None)),
        Some(pg::partitions::Bound::Range { from, to }) => Some((false, ts(from), ts(to))),
        None => None,
    };
    TableIterator::new(row)
}

/// Whether `current → next` is allowed by dialpad.status_transitions.
#[pg_extern(stable, parallel_safe)]
fn is_valid_status_transition(current: Option<&str>, next: Option<&str>) -> bool {
    rules::current_or_raise().check(current, next).is_ok()
}

/// NULL when `current → next` is valid, otherwise why not.
#[pg_extern(stable, parallel_safe)]
fn status_transition_error(current: Option<&str>, next: Option<&str>) -> Option<String> {
    rules::current_or_raise().check(current, next).err().map(|e| e.to_string())
}

fn limit_arg(name: &str, value: i32) -> usize {
    if value < 0 {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be zero or more, not {value}"),
            None,
            None,
        );
    }
    value as usize
}

/// The seed's sanitizer over jsonb's binary form (see `domain/sanitize.rs` for the rules).
#[pg_extern(immutable, strict, parallel_safe)]
#[allow(clippy::too_many_arguments)]
fn sanitize_call_payload(
    payload: datum::JsonbArg,
    max_transcript_length: default!(i32, 500),
    max_string_length: default!(i32, 2000),
    max_array_items: default!(i32, 10),
    max_object_keys: default!(i32, 20),
    sample_keys: default!(i32, 5),
    max_depth: default!(i32, 5),
    max_key_length: default!(i32, 256),
    max_bytes: default!(i32, 65536),
) -> datum::JsonbOut {
    if (max_bytes as i64) < sanitize::MIN_MAX_BYTES as i64 {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_bytes must be at least {}, not {max_bytes}", sanitize::MIN_MAX_BYTES),
            None,
            Some("The bound must leave room for the markers of a summarized object."),
        );
    }
    let limits = sanitize::Limits {
        max_transcript_length: limit_arg("max_transcript_length", max_transcript_length),
        max_string_length: limit_arg("max_string_length", max_string_length),
        max_array_items: limit_arg("max_array_items", max_array_items),
        max_object_keys: limit_arg("max_object_keys", max_object_keys),
        sample_keys: limit_arg("sample_keys", sample_keys),
        max_depth: limit_arg("max_depth", max_depth),
        max_key_length: limit_arg("max_key_length", max_key_length),
        max_bytes: limit_arg("max_bytes", max_bytes),
    };
    let mut on_container = || {
        check_for_interrupts!();
        crate::pg::backend::check_stack_depth();
    };
    match sanitize::sanitize(payload.body(), &limits, &mut on_container) {
        Ok(out) => datum::JsonbOut(out),
        Err(e) => {
            let code = match e {
                jsonb::JsonbError::Corrupt => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                jsonb::JsonbError::TooLarge => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            };
            error::raise(code, format!("cannot sanitize payload: {e}"), None, None)
        }
    }
}

/// The extension's version and the PostgreSQL it was built for. Inside an `ALTER EXTENSION
/// pg_dialpad UPDATE` that goes through an older released version (0.1.0 -> 0.2.0 -> ...),
/// it names the version whose update script is running, which this library serves: that
/// script checks it was given its own version's library (see `version::update_step`).
#[pg_extern(immutable, parallel_safe)]
fn version_info() -> String {
    let build = format!("pgrx {}, built for PostgreSQL {}", env!("DIALPAD_PGRX_VERSION"), pg_sys::PG_MAJORVERSION_NUM);
    match version::update_step() {
        Some(step) => format!("pg_dialpad {step} (update step run by the {} library; {build})", version::LIBRARY),
        None => format!("pg_dialpad {} ({build})", version::LIBRARY),
    }
}
