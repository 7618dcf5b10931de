//! Managing webhook sources: `dialpad.add_source`, `rotate_secret`, `disable_source`,
//! `enable_source`, `drop_source`. They run as their caller: only the extension's owner
//! (and superusers) can read or write `dialpad.sources`. Secrets are passed as arguments:
//! call them with bind parameters (docs/security.md, "Webhook sources and their secrets")
//! so that the secret is not in the statement text that pg_stat_activity shows and the
//! server may log.

use crate::domain::webhook::conceal;
use crate::pg::error;
use pgrx::datum::{DatumWithOid, Interval};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Source names: what Dialpad subscription or company a delivery came through, used in
/// row-level security policies; a plain identifier keeps them easy to type and to log.
fn check_name(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid webhook source name \"{name}\""),
            None,
            Some("A source name is 1 to 63 letters, digits, '_', '.', ':' or '-', starting with a letter or digit."),
        );
    }
}

fn check_secret(secret: &str) {
    if secret.is_empty() {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a webhook source's secret cannot be empty".into(),
            None,
            Some("Use the secret configured on the Dialpad event subscription."),
        );
    }
}

/// Runs one statement on dialpad.sources; raises 42704 when it touched no row.
fn update_source(name: &str, sql: &str, args: &[DatumWithOid]) {
    let n = Spi::connect_mut(|client| client.update(sql, None, args).map(|t| t.len())).unwrap_or_else(|e| {
        error::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not update webhook source: {e}"),
            None,
            None,
        )
    });
    if n == 0 {
        error::raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("webhook source \"{name}\" does not exist"),
            None,
            Some("See SELECT name FROM dialpad.source_list."),
        );
    }
}

/// Adds a webhook source: deliveries through it are verified with `secret`.
#[pg_extern(volatile, parallel_unsafe)]
fn add_source(name: &str, secret: &str, labels: default!(pgrx::JsonB, "'{}'")) {
    check_name(name);
    check_secret(secret);
    if !labels.0.is_object() {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "labels must be a JSON object".into(),
            None,
            Some("For example '{\"company\": \"Acme\"}'."),
        );
    }
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM dialpad.sources WHERE name OPERATOR(pg_catalog.=) $1)",
        &[name.into()],
    );
    if exists.ok().flatten() == Some(true) {
        error::raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("webhook source \"{name}\" already exists"),
            None,
            Some("Change its secret with dialpad.rotate_secret()."),
        );
    }
    update_source(
        name,
        "INSERT INTO dialpad.sources (name, secret, labels) VALUES ($1, $2, $3) RETURNING name",
        &[name.into(), conceal(name, secret.as_bytes()).into(), labels.into()],
    );
}

/// Gives a source a new secret; the old one keeps verifying for `overlap` (so deliveries
/// Dialpad signed before the subscription was updated are not lost), then stops.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_secret(name: &str, new_secret: &str, overlap: default!(Interval, "'24 hours'")) {
    check_secret(new_secret);
    let negative = Spi::get_one_with_args::<bool>("SELECT $1 OPERATOR(pg_catalog.<) interval '0'", &[overlap.into()]);
    if negative.ok().flatten() == Some(true) {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "overlap cannot be negative".into(),
            None,
            Some("Use interval '0' to stop accepting the old secret at once."),
        );
    }
    update_source(
        name,
        "UPDATE dialpad.sources
            SET previous_secret = CASE WHEN $3 OPERATOR(pg_catalog.>) interval '0' THEN secret END,
                previous_valid_until = CASE WHEN $3 OPERATOR(pg_catalog.>) interval '0'
                                            THEN pg_catalog.now() OPERATOR(pg_catalog.+) $3 END,
                secret = $2, rotated_at = pg_catalog.now()
          WHERE name OPERATOR(pg_catalog.=) $1 RETURNING name",
        &[name.into(), conceal(name, new_secret.as_bytes()).into(), overlap.into()],
    );
}

fn set_enabled(name: &str, enabled: bool) {
    update_source(
        name,
        "UPDATE dialpad.sources SET enabled = $2 WHERE name OPERATOR(pg_catalog.=) $1 RETURNING name",
        &[name.into(), enabled.into()],
    );
}

/// Refuses deliveries through a source until it is enabled again.
#[pg_extern(volatile, parallel_unsafe)]
fn disable_source(name: &str) {
    set_enabled(name, false);
}

/// Accepts deliveries through a disabled source again.
#[pg_extern(volatile, parallel_unsafe)]
fn enable_source(name: &str) {
    set_enabled(name, true);
}

/// Removes a source (the events and calls that came through it keep its name).
#[pg_extern(volatile, parallel_unsafe)]
fn drop_source(name: &str) {
    update_source(
        name,
        "DELETE FROM dialpad.sources WHERE name OPERATOR(pg_catalog.=) $1 RETURNING name",
        &[name.into()],
    );
}
