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

/// `pg_extension.extversion` of pg_dialpad in this database, if it is installed.
pub(crate) fn installed_version() -> Option<String> {
    Spi::get_one::<String>(INSTALLED_SQL).ok().flatten()
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
