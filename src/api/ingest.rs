//! `dialpad.ingest_webhook()`: one webhook delivery, verified and stored.

use crate::codec::{jsonb, numeric};
use crate::domain::webhook as ingest;
use crate::gucs;
use crate::pg::{self, datum, error, shmem};
use crate::pipeline::{batch, dedupe};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

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
    let payload = parse_payload(verified_json(body));
    let root = jsonb::Container::root(payload.body()).ok();
    if let Some(err) = root.and_then(|r| freshness_error(r, gucs::max_event_age())) {
        reject(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, err, Some("See dialpad.max_event_age."));
    }
    let key = root.and_then(ingest::dedupe_key);
    let stored = store(payload, key);
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

/// The event's JSON: the body itself, or the claims of a JWT verified with the secret.
fn verified_json(body: &str) -> String {
    let secret = gucs::webhook_secret();
    match (ingest::classify(body), &secret) {
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
    }
}

/// The JSON parsed by PostgreSQL's own parser into a jsonb datum.
fn parse_payload(json: String) -> datum::JsonbArg {
    use std::sync::atomic::Ordering;
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
    payload
}

/// Stores the delivery; returns (id of its first delivery, whether this was a redelivery).
fn store(payload: datum::JsonbArg, key: Option<String>) -> Result<(i64, bool), pgrx::spi::Error> {
    Spi::connect_mut(|client| -> Result<(i64, bool), pgrx::spi::Error> {
        if inbox_marks_duplicates() {
            if let Some(k) = key.as_deref() {
                if let Some(call_id) = k.split('/').next().and_then(|c| c.parse::<i64>().ok()) {
                    dedupe::lock_key(call_id, k);
                }
            }
            let row = batch::run_kept(client, INSERT_SQL, &[pg_sys::JSONBOID], None, &[payload.into()])?.first();
            let id = row.get::<i64>(1)?.unwrap_or(0);
            return Ok(match row.get::<i64>(2)? {
                Some(first) => (first, true),
                None => (id, false),
            });
        }
        let sql = if key.is_some() { INSERT_0_1_SQL } else { INSERT_PLAIN_0_1_SQL };
        let inserted = batch::run_kept(client, sql, &[pg_sys::JSONBOID], None, &[payload.into()])?
            .first()
            .get::<i64>(1)
            .ok()
            .flatten();
        if let Some(id) = inserted {
            return Ok((id, false));
        }
        let call_id = key.as_deref().and_then(|k| k.split('/').next()).and_then(|c| c.parse::<i64>().ok());
        let id = batch::replanned(|| {
            batch::run_kept(
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
    })
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
