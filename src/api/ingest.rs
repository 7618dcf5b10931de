//! `dialpad.ingest_webhook()`: one webhook delivery, verified and stored. The steps:
//! resolve the source → verify the body with its secrets → parse → check the times → store.

use super::compat;
use crate::codec::jsonb;
use crate::domain::webhook::{self as ingest, JwtError};
use crate::gucs;
use crate::pg::counters::{self, Outcome};
use crate::pg::{self, datum, error, spi};
use crate::pipeline::dedupe;
use crate::pipeline::sources::{self, Source, Sources};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

thread_local! {
    /// The source the delivery being ingested is counted under (see [`count_label`]): set
    /// once per call, read wherever the delivery is refused.
    static LABEL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Counts the delivery being ingested under its source.
fn count(outcome: Outcome) {
    LABEL.with(|l| counters::record(&l.borrow(), outcome));
}

pub(super) fn reject(outcome: Outcome, code: PgSqlErrorCode, message: String, hint: Option<&str>) -> ! {
    count(outcome);
    error::raise(code, message, None, hint)
}

/// A refusal to trust a delivery: SQLSTATE 28000, the reason in the DETAIL; counted by it.
pub(super) fn refuse(message: String, reason: &str, hint: Option<&str>) -> ! {
    count(Outcome::of_refusal(reason));
    error::raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, message, Some(reason.to_owned()), hint)
}

/// The source a delivery is counted under: a configured source's name, `(none)` when it
/// names none (and one cannot be told), `(unknown)` for a name not configured. Never a name
/// the sender made up: the counters' table must not grow with what senders send.
fn count_label(sources: Option<&Sources>, name: Option<&str>) -> String {
    let label = match (sources, name) {
        (Some(Sources::Table(all)), Some(n)) => all.iter().find(|s| s.name == n).map(|s| s.name.as_str()),
        (Some(Sources::Table(all)), None) if all.len() == 1 => Some(all[0].name.as_str()),
        (_, None) | (Some(Sources::Legacy), _) => Some(counters::NO_SOURCE),
        (None, Some(_)) => None,
    };
    label.unwrap_or(counters::UNKNOWN_SOURCE).to_string()
}

/// Seconds since the Unix epoch (GetCurrentTimestamp counts microseconds since 2000-01-01).
fn unix_now_ms() -> i64 {
    pg::now() / 1000 + 946_684_800_000
}

/// Every delivery is stored; the insert trigger marks a redelivery duplicate_of its first.
/// On Citus, the call id the row is routed by is added by the planner hook (citus/routing.rs).
const INSERT_SQL: &str = "INSERT INTO dialpad.webhook_events (payload) VALUES ($1) RETURNING id, duplicate_of";
/// Stores one webhook delivery (the raw request body: JSON, or a JWT when
/// dialpad.webhook_secret is set) and returns the id of its first delivery in
/// dialpad.webhook_events: a redelivery of the same (call_id, state, event_timestamp) is kept
/// in the audit log, marked duplicate_of that id, and never applied again.
#[pg_extern(volatile, parallel_unsafe, name = "ingest_webhook")]
fn ingest_webhook_with_source(body: Option<&str>, source: default!(Option<&str>, "NULL")) -> i64 {
    ingest_webhook(body, source)
}

/// The delivery stored (or refused, by raising) in the current transaction: the SQL
/// function's body, also called by the HTTP listener (bgworker/listener.rs).
pub(crate) fn ingest_webhook(body: Option<&str>, source: Option<&str>) -> i64 {
    // The sources first (cached per session): every outcome is counted under its source.
    let sources = sources::current();
    LABEL.with(|l| *l.borrow_mut() = count_label(sources.as_ref().ok().map(|s| s.as_ref()), source));
    let sources = sources.unwrap_or_else(|e| {
        reject(
            Outcome::InternalError,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not read dialpad.sources: {e}"),
            None,
        )
    });
    let Some(body) = body else {
        reject(Outcome::NullBody, PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "webhook body is NULL".into(), None)
    };
    let max = gucs::max_body_size();
    if body.len() > max {
        reject(
            Outcome::TooLarge,
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("webhook body of {} bytes exceeds dialpad.max_body_size ({max} bytes)", body.len()),
            None,
        );
    }
    let (json, via, signed) = match sources.as_ref() {
        Sources::Legacy => (compat::legacy_verified_json(body), None, false),
        Sources::Table(all) => {
            let via = resolve_source(all, source);
            let (json, signed) = verified_json(body, via);
            (json, via.map(|s| s.name.as_str()), signed)
        }
    };
    let payload = parse_payload(json);
    let root = jsonb::Container::root(payload.body()).ok();
    if let (true, Some(e)) = (signed, root.and_then(|r| ingest::time_claims_error(r, unix_now_ms() / 1000))) {
        refuse(e.to_string(), e.reason(), None);
    }
    if let Some(err) = root.and_then(|r| ingest::freshness_error(r, gucs::max_event_age(), unix_now_ms())) {
        reject(
            Outcome::Stale,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            err,
            Some("See dialpad.max_event_age."),
        );
    }
    let key = root.and_then(|r| ingest::dedupe_key(r, via));
    let stored = crate::flags::with_source(via, || store(payload, key));
    match stored {
        Ok((id, duplicate)) => {
            count(if duplicate { Outcome::Duplicate } else { Outcome::Accepted });
            id
        }
        Err(e) => reject(
            Outcome::InternalError,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not store the webhook: {e}"),
            None,
        ),
    }
}

/// The source a delivery came through: the one named, or the only one there is; None when
/// no source is configured (plain JSON is then accepted, as before there were sources).
fn resolve_source<'a>(all: &'a [Source], name: Option<&str>) -> Option<&'a Source> {
    let found = match name {
        Some(name) => match all.iter().find(|s| s.name == name) {
            Some(s) => Some(s),
            None => refuse(
                format!("unknown webhook source \"{name}\""),
                "unknown source",
                Some("See SELECT name FROM dialpad.source_list; a superuser adds one with dialpad.add_source()."),
            ),
        },
        None if all.len() <= 1 => all.first(),
        None => reject(
            Outcome::NoSourceNamed,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{} webhook sources are configured: say which one this delivery came through", all.len()),
            Some("Call dialpad.ingest_webhook(body, source => 'name'), e.g. with the name in the webhook URL."),
        ),
    };
    if let Some(s) = found.filter(|s| !s.enabled) {
        refuse(
            format!("webhook source \"{}\" is disabled", s.name),
            "disabled source",
            Some("A superuser enables it again with dialpad.enable_source()."),
        );
    }
    found
}

/// The event's JSON: the claims of a JWT verified with the source's secrets, or the body
/// itself when no source is configured; and whether it was signed.
fn verified_json(body: &str, via: Option<&Source>) -> (String, bool) {
    match (ingest::classify(body), via) {
        (ingest::Body::Jwt { .. }, None) => refuse(
            "received a signed (JWT) webhook body, but no webhook source is configured".into(),
            "unknown source",
            Some("A superuser adds the subscription's secret with dialpad.add_source(name, secret)."),
        ),
        (ingest::Body::Jwt { header, payload, signature }, Some(src)) => {
            match ingest::verify_with(header, payload, signature, &src.secrets_at(pg::now()), &mut || {
                check_for_interrupts!();
            }) {
                Ok((claims, _)) => (claims, true),
                Err(e @ JwtError::Malformed(_)) => {
                    reject(Outcome::Malformed, PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, e.to_string(), None)
                }
                Err(e) => refuse(format!("{e} (source \"{}\")", src.name), e.reason(), None),
            }
        }
        (ingest::Body::Json(_), Some(src)) => refuse(
            format!("webhook source \"{}\" has a secret: the body must be an HS256-signed JWT", src.name),
            "unsigned body",
            Some("Configure the Dialpad subscription with the source's secret."),
        ),
        (ingest::Body::Json(t), None) => (t.to_string(), false),
    }
}

/// The JSON parsed by PostgreSQL's own parser into a jsonb datum.
fn parse_payload(json: String) -> datum::JsonbArg {
    if json.trim().is_empty() {
        reject(
            Outcome::Malformed,
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "webhook body is empty".into(),
            None,
        );
    }
    let Ok(cjson) = std::ffi::CString::new(json) else {
        reject(
            Outcome::Malformed,
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "webhook body contains a NUL byte".into(),
            None,
        )
    };
    // PostgreSQL's own JSON parser; its ERROR (22P02) is counted, then raised as it is.
    let payload = PgTryBuilder::new(|| datum::JsonbArg::parse(&cjson))
        .catch_others(|e| {
            count(Outcome::Malformed);
            e.rethrow()
        })
        .execute();
    let Some(payload) = payload else {
        reject(
            Outcome::Malformed,
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "webhook body is not JSON".into(),
            None,
        )
    };
    payload
}

/// Stores the delivery; returns (id of its first delivery, whether this was a redelivery).
/// `key` is its de-duplication key (None for an event the insert trigger cannot de-duplicate).
fn store(payload: datum::JsonbArg, key: Option<String>) -> Result<(i64, bool), pgrx::spi::Error> {
    Spi::connect_mut(|client| -> Result<(i64, bool), pgrx::spi::Error> {
        if compat::inbox_is_0_1() {
            return compat::store_in_0_1_inbox(client, payload, key);
        }
        if let Some((k, call_id)) = key.as_deref().and_then(|k| Some((k, ingest::key_call_id(k)?))) {
            dedupe::lock_key(call_id, k);
        }
        let row = spi::run_kept(client, INSERT_SQL, &[pg_sys::JSONBOID], None, &[payload.into()])?.first();
        let id = row.get::<i64>(1)?.unwrap_or(0);
        Ok(match row.get::<i64>(2)? {
            Some(first) => (first, true),
            None => (id, false),
        })
    })
}
