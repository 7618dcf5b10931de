//! Compatibility with older releases' SQL objects, in one place.
//!
//! After new binaries are installed and the server restarted, this library runs against
//! the SQL objects of the release the database was at until `ALTER EXTENSION pg_dialpad
//! UPDATE`. Deliveries must keep being accepted in that window (docs/upgrading.md); the
//! workers write nothing (version.rs). Each piece below says which release lets it go: a
//! piece for 0.1.0 goes in the first release that no longer updates from 0.1.0 directly
//! (scripts/released-versions, tests/upgrade.rs), whose CHANGELOG then says to update
//! through an intermediate release first.
//!
//! Here (the ingest path of a 0.1.0 database):
//! - [`ingest_webhook_wrapper`]: the C symbol of 0.1.0's one-argument `ingest_webhook(text)`;
//! - [`legacy_verified_json`]: 0.1.0's one secret, `dialpad.webhook_secret` (gucs.rs keeps
//!   the setting registered, retired, for it);
//! - [`inbox_is_0_1`] and [`store_in_0_1_inbox`]: 0.1.0's inbox, a plain table de-duplicated
//!   by a unique index rather than by the insert trigger.
//!
//! Elsewhere, where the code must read either shape (each marked "0.1.0" at the spot):
//! `pipeline/sources.rs` (`Sources::Legacy`: no sources table), `pipeline/dedupe.rs` (the
//! plain inbox), `pipeline/rules.rs` (`keep_terminal` read through to_jsonb),
//! `api/triggers.rs` (the unconverted inbox keeps its own de-duplication), `version.rs`
//! (the 0.1.0 -> 0.2.0 script's library check). All go with 0.1.0.

use super::ingest::{ingest_webhook, refuse, reject};
use crate::domain::webhook::{self as ingest, JwtError};
use crate::gucs;
use crate::pg::counters::Outcome;
use crate::pg::{datum, spi};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

/// Goes with 0.1.0.
#[unsafe(no_mangle)]
pub(crate) extern "C" fn pg_finfo_ingest_webhook_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The C symbol of 0.1.0's `dialpad.ingest_webhook(text)`: between a restart with this
/// library and `ALTER EXTENSION pg_dialpad UPDATE`, the 0.1.0 SQL function still calls it
/// with one argument, and deliveries must keep being accepted. Goes with 0.1.0.
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo` of one text argument.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn ingest_webhook_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid (fmgr contract) and its first argument is text (0.1.0's
    // declaration); a NULL argument reads as None.
    let body = unsafe { pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 0) };
    pg_sys::Datum::from(ingest_webhook(body, None))
}

/// Before `ALTER EXTENSION pg_dialpad UPDATE` to 0.2.0 (no sources table yet): 0.1.0's rule,
/// the secret of the setting dialpad.webhook_secret. Goes with 0.1.0.
pub(super) fn legacy_verified_json(body: &str) -> String {
    let secret = gucs::webhook_secret();
    match (ingest::classify(body), &secret) {
        (ingest::Body::Jwt { .. }, None) => refuse(
            "received a signed (JWT) webhook body, but dialpad.webhook_secret is not set".into(),
            "unknown source",
            Some("Run ALTER EXTENSION pg_dialpad UPDATE, then add the secret with dialpad.add_source()."),
        ),
        (ingest::Body::Jwt { header, payload, signature }, Some(secret)) => {
            match ingest::verify_with(header, payload, signature, &[secret.as_slice()], &mut || {
                check_for_interrupts!();
            }) {
                Ok((claims, _)) => claims,
                Err(e @ JwtError::Malformed(_)) => {
                    reject(Outcome::Malformed, PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, e.to_string(), None)
                }
                Err(e) => refuse(e.to_string(), e.reason(), None),
            }
        }
        (ingest::Body::Json(_), Some(_)) => refuse(
            "dialpad.webhook_secret is set: the webhook body must be an HS256-signed JWT".into(),
            "unsigned body",
            None,
        ),
        (ingest::Body::Json(t), None) => t.to_string(),
    }
}

/// Whether dialpad.webhook_events has 0.1.0's shape (no duplicate_of). The inbox is locked
/// first (RowExclusiveLock, which the INSERT takes anyway), so that an ALTER EXTENSION ...
/// UPDATE in progress is waited for and its result seen; then the syscache answers. Goes
/// with 0.1.0.
pub(super) fn inbox_is_0_1() -> bool {
    let rel = crate::pg::dialpad_relation(c"webhook_events");
    if rel == pg_sys::InvalidOid {
        return false;
    }
    crate::pg::backend::lock_relation(rel, pg_sys::RowExclusiveLock);
    !crate::pg::backend::has_column(rel, c"duplicate_of")
}

/// The 0.1.0 inbox still has its unique index on (call_id, dedupe_key).
const INSERT_0_1_SQL: &str = "\
INSERT INTO dialpad.webhook_events (payload) VALUES ($1)
ON CONFLICT (call_id, dedupe_key) DO NOTHING
RETURNING id";
const INSERT_PLAIN_0_1_SQL: &str = "INSERT INTO dialpad.webhook_events (payload) VALUES ($1) RETURNING id";
const FIND_DUPLICATE_0_1_SQL: &str = "SELECT id FROM dialpad.webhook_events
 WHERE call_id OPERATOR(pg_catalog.=) $1 AND dedupe_key OPERATOR(pg_catalog.=) $2";

/// Stores a delivery in 0.1.0's inbox: (id of its first delivery, whether this was a
/// redelivery), found through the unique index. Goes with 0.1.0.
pub(super) fn store_in_0_1_inbox(
    client: &mut SpiClient<'_>,
    payload: datum::JsonbArg,
    key: Option<String>,
) -> Result<(i64, bool), pgrx::spi::Error> {
    let sql = if key.is_some() { INSERT_0_1_SQL } else { INSERT_PLAIN_0_1_SQL };
    let inserted =
        spi::run_kept(client, sql, &[pg_sys::JSONBOID], None, &[payload.into()])?.first().get::<i64>(1).ok().flatten();
    if let Some(id) = inserted {
        return Ok((id, false));
    }
    let call_id = key.as_deref().and_then(ingest::key_call_id);
    let id = spi::replanned(|| {
        spi::run_kept(
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
}
