//! The library's version against the version of the extension's SQL objects.
//!
//! After new binaries are installed and the server restarted, the library is already the
//! new version while the SQL objects stay the old one until `ALTER EXTENSION pg_dialpad
//! UPDATE`. In that window the worker writes nothing and the functions that write refuse
//! with SQLSTATE 55000 and a hint, instead of running new code against an old schema.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// This library's version (the crate's).
pub(crate) const LIBRARY: &str = env!("CARGO_PKG_VERSION");

const INSTALLED_SQL: &str =
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_dialpad'";

/// `pg_extension.extversion` of pg_dialpad in this database, if it is installed. A kept
/// plan: the workers ask before every pass, the HTTP listener before every group.
pub(crate) fn installed_version() -> Option<String> {
    Spi::connect_mut(|client| {
        crate::pg::spi::run_kept(client, INSTALLED_SQL, &[], None, &[])?.first().get_one::<String>()
    })
    .ok()
    .flatten()
}

/// Raises 55000 unless the SQL objects are this library's version.
pub(crate) fn require_current() {
    let installed = installed_version();
    if installed.as_deref() == Some(LIBRARY) {
        return;
    }
    let (message, hint) = match installed {
        Some(sql) => (
            format!("pg_dialpad's library is version {LIBRARY} but its SQL objects in this database are version {sql}"),
            "Run ALTER EXTENSION pg_dialpad UPDATE; (see README, \"Upgrading\").",
        ),
        None => {
            ("extension pg_dialpad is not installed in this database".to_string(), "Run CREATE EXTENSION pg_dialpad;")
        }
    };
    crate::pg::error::raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message, None, Some(hint))
}

/// The released versions (scripts/released-versions): this library runs against their SQL
/// objects until `ALTER EXTENSION pg_dialpad UPDATE`, and serves their update scripts.
const RELEASED: &str = include_str!("../scripts/released-versions");

/// The released version, older than this library, whose update script pg_dialpad's own
/// `ALTER EXTENSION ... UPDATE` is running in this backend right now, if any.
///
/// A released update script may check that the library is its own version's: 0.1.0 -> 0.2.0
/// refuses unless `dialpad.version_info()` says 0.2.0 (it must not run with the 0.1.0 library
/// still loaded). An update from 0.1.0 to a later release goes through that script with the
/// later library loaded, which serves 0.2.0's SQL (it runs against it until the update
/// ends): `version_info()` then names the step's version. PostgreSQL sets the extension's
/// version in pg_extension before it runs each step's script.
pub(crate) fn update_step() -> Option<String> {
    if !crate::pg::backend::running_our_script() {
        return None;
    }
    let step = installed_version()?;
    let released =
        RELEASED.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().next()).any(|v| v == step);
    (released && step != LIBRARY).then_some(step)
}
