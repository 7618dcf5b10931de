//! pg_dialpad: Dialpad call webhooks turned into clean `dialpad.calls` rows inside PostgreSQL.
//!
//! This file is the SQL surface; each concept lives in its own module: the pure rules
//! (`direction`, `transitions`, `sanitize`, with the jsonb and numeric codecs they use) and
//! the thin glue around them (`rules` cache, `triggers`, `gucs`, `datum`).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

pub mod call_row;
pub mod datum;
pub mod dedupe;
pub mod direction;
pub mod drop_guard;
pub mod error;
pub mod event;
pub mod fold;
pub mod gucs;
pub mod ingest;
pub mod jsonb;
pub mod numeric;
pub mod pg;
pub mod processor;
pub mod rules;
pub mod sanitize;
pub mod scan_floor;
pub mod shmem;
pub mod stats;
pub mod transitions;
pub mod triggers;
pub mod varlena;
pub mod version;
pub mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires =
        ["schema", triggers::calls_before_write, triggers::rules_changed, triggers::webhook_events_before_insert]
);
extension_sql_file!(
    "../sql/processing.sql",
    name = "processing",
    requires = ["schema", triggers::wake_workers_on_insert, stats::processed_last_minute, stats::wake_workers]
);
extension_sql_file!("../sql/maintenance.sql", name = "maintenance", requires = ["processing", version_info]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    rules::init();
    // SAFETY: plain reads of flags PostgreSQL sets before loading libraries.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        // pg_upgrade starts the server with our library preloaded: start nothing then.
        if pg_sys::IsBinaryUpgrade {
            return;
        }
    }
    shmem::init();
    worker::register_launcher();
}

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
    let out = with_default_lock_timeout(|| {
        processor::process_batch(max_events, &rules, gucs::max_attempts(), processor::Scan::Full)
    });
    out.handled as i32
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

/// The seed's sanitizer over jsonb's binary form (see `sanitize.rs` for the rules).
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
        // SAFETY: compares this stack's depth with max_stack_depth; raises an ERROR if over.
        unsafe { pg_sys::check_stack_depth() };
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

fn reject(code: PgSqlErrorCode, message: String, hint: Option<&str>) -> ! {
    if let Some(s) = shmem::get() {
        s.ingest_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    error::raise(code, message, None, hint)
}

/// Every delivery is stored; the insert trigger marks a redelivery duplicate_of its first.
const INSERT_SQL: &str = "INSERT INTO dialpad.webhook_events (payload) VALUES ($1) RETURNING id, duplicate_of";
/// The 0.1.0 inbox (before ALTER EXTENSION ... UPDATE) still has its unique index.
const INSERT_0_1_SQL: &str = "\
INSERT INTO dialpad.webhook_events (payload) VALUES ($1)
ON CONFLICT (call_id, dedupe_key) DO NOTHING
RETURNING id";
const INSERT_PLAIN_0_1_SQL: &str = "INSERT INTO dialpad.webhook_events (payload) VALUES ($1) RETURNING id";
const FIND_DUPLICATE_0_1_SQL: &str = "SELECT id FROM dialpad.webhook_events
 WHERE call_id OPERATOR(pg_catalog.=) $1 AND dedupe_key OPERATOR(pg_catalog.=) $2";

/// Whether dialpad.webhook_events has the 0.2.0 shape (duplicate_of). The inbox is locked
/// first (RowExclusiveLock, which the INSERT takes anyway), so that an ALTER EXTENSION ...
/// UPDATE in progress is waited for and its result seen; then the syscache answers.
fn inbox_marks_duplicates() -> bool {
    // SAFETY: catalog lookups by name with valid C strings (InvalidOid when absent); the lock
    // is a regular relation lock held to the end of the transaction.
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"dialpad".as_ptr(), true);
        let rel = pg_sys::get_relname_relid(c"webhook_events".as_ptr(), ns);
        if rel == pg_sys::InvalidOid {
            return true;
        }
        pg_sys::LockRelationOid(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        pg_sys::get_attnum(rel, c"duplicate_of".as_ptr()) != pg_sys::InvalidAttrNumber as i16
    }
}

/// Stores one webhook delivery (the raw request body: JSON, or a JWT when
/// dialpad.webhook_secret is set) and returns the id of its first delivery in
/// dialpad.webhook_events: a redelivery of the same (call_id, state, event_timestamp) is kept
/// in the audit log, marked duplicate_of that id, and never applied again.
#[pg_extern(volatile, parallel_unsafe)]
fn ingest_webhook(body: &str) -> i64 {
    use std::sync::atomic::Ordering;
    let max = gucs::max_body_size();
    if body.len() > max {
        reject(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("webhook body of {} bytes exceeds dialpad.max_body_size ({max} bytes)", body.len()),
            None,
        );
    }
    let secret = gucs::webhook_secret();
    let json = match (ingest::classify(body), &secret) {
        (ingest::Body::Jwt { .. }, None) => reject(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "received a signed (JWT) webhook body, but dialpad.webhook_secret is not set".into(),
            Some("Set dialpad.webhook_secret to the secret of the Dialpad subscription (ALTER SYSTEM SET dialpad.webhook_secret = '...'; SELECT pg_reload_conf();)."),
        ),
        (ingest::Body::Jwt { header, payload, signature }, Some(secret)) => {
            match ingest::verify(header, payload, signature, secret) {
                Ok(claims) => claims,
                Err(e @ ingest::JwtError::Malformed(_)) => {
                    reject(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, e.to_string(), None)
                }
                Err(e) => reject(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, e.to_string(), None),
            }
        }
        (ingest::Body::Json(_), Some(_)) => reject(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "dialpad.webhook_secret is set: the webhook body must be an HS256-signed JWT".into(),
            Some("Configure the Dialpad subscription with the same secret, or reset dialpad.webhook_secret to accept plain JSON."),
        ),
        (ingest::Body::Json(t), None) => t.to_string(),
    };
    if json.trim().is_empty() {
        reject(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, "webhook body is empty".into(), None);
    }
    let Ok(cjson) = std::ffi::CString::new(json) else {
        reject(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, "webhook body contains a NUL byte".into(), None)
    };
    // PostgreSQL's own JSON parser: exact numbers, its limits, its error messages (22P02).
    // SAFETY: jsonb_in takes a NUL-terminated C string (cjson outlives the call) and returns
    // a palloc'd jsonb datum or raises an ERROR, which the builder catches.
    let datum = PgTryBuilder::new(|| unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(cjson.as_ptr()))])
    })
    .catch_others(|e| {
        if let Some(s) = shmem::get() {
            s.ingest_rejected.fetch_add(1, Ordering::Relaxed);
        }
        e.rethrow()
    })
    .execute();
    // SAFETY: the datum is the jsonb jsonb_in just returned, valid in this memory context.
    let Some(payload) = datum.map(|d| unsafe { datum::JsonbArg::from_raw(d) }) else {
        reject(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, "webhook body is not JSON".into(), None)
    };
    let root = jsonb::Container::root(payload.body()).ok();
    if let Some(err) = root.and_then(|r| freshness_error(r, gucs::max_event_age())) {
        reject(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, err, Some("See dialpad.max_event_age."));
    }
    let key = root.and_then(ingest::dedupe_key);
    let stored = Spi::connect_mut(|client| -> Result<(i64, bool), pgrx::spi::Error> {
        if inbox_marks_duplicates() {
            if let Some(k) = key.as_deref() {
                if let Some(call_id) = k.split('/').next().and_then(|c| c.parse::<i64>().ok()) {
                    dedupe::lock_key(call_id, k);
                }
            }
            let row = processor::run_kept(client, INSERT_SQL, &[pg_sys::JSONBOID], None, &[payload.into()])?.first();
            let id = row.get::<i64>(1)?.unwrap_or(0);
            return Ok(match row.get::<i64>(2)? {
                Some(first) => (first, true),
                None => (id, false),
            });
        }
        let sql = if key.is_some() { INSERT_0_1_SQL } else { INSERT_PLAIN_0_1_SQL };
        let inserted = processor::run_kept(client, sql, &[pg_sys::JSONBOID], None, &[payload.into()])?
            .first()
            .get::<i64>(1)
            .ok()
            .flatten();
        if let Some(id) = inserted {
            return Ok((id, false));
        }
        let call_id = key.as_deref().and_then(|k| k.split('/').next()).and_then(|c| c.parse::<i64>().ok());
        let id = processor::replanned(|| {
            processor::run_kept(
                client,
                FIND_DUPLICATE_0_1_SQL,
                &[pg_sys::INT8OID, pg_sys::TEXTOID],
                None,
                &[call_id.into(), key.clone().into()],
            )
        })?
        .first()
        .get::<i64>(1)?
        .unwrap_or(0);
        Ok((id, true))
    });
    match stored {
        Ok((id, duplicate)) => {
            if let Some(s) = shmem::get() {
                if duplicate { &s.ingest_duplicate } else { &s.ingest_accepted }.fetch_add(1, Ordering::Relaxed);
            }
            id
        }
        Err(e) => error::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not store the webhook: {e}"),
            None,
            None,
        ),
    }
}

/// Why an event is too old or too far in the future, if it is.
fn freshness_error(root: jsonb::Value<'_>, max_age_s: i64) -> Option<String> {
    if max_age_s == 0 {
        return None;
    }
    let jsonb::Value::Object(o) = root else { return None };
    let Ok(Some(jsonb::Value::Numeric(n))) = o.get(b"event_timestamp") else { return None };
    let ts_ms = numeric::Decimal::from_datum_bytes(n).ok()?.to_i64()?;
    // GetCurrentTimestamp is microseconds since 2000-01-01.
    let now_ms = pg::now() / 1000 + 946_684_800_000;
    if ts_ms < now_ms - max_age_s * 1000 {
        Some(format!("event_timestamp {ts_ms} is older than dialpad.max_event_age ({max_age_s} s)"))
    } else if ts_ms > now_ms + 120_000 {
        Some(format!("event_timestamp {ts_ms} is more than two minutes in the future"))
    } else {
        None
    }
}

/// The extension's version and the PostgreSQL it was built for.
#[pg_extern(immutable, parallel_safe)]
fn version_info() -> String {
    format!(
        "pg_dialpad {} (pgrx {}, built for PostgreSQL {})",
        env!("CARGO_PKG_VERSION"),
        "0.18.1",
        pg_sys::PG_MAJORVERSION_NUM
    )
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// This module is required by `cargo pgrx test` invocations.
/// It must be visible at the root of your extension crate.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_dialpad'"]
    }
}
