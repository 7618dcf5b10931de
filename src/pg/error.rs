//! The extension's errors: [`Error`], each failure of its own with the SQLSTATE it is raised
//! with (pg_graphql's src/error.rs is the model), and [`raise`] for a SQLSTATE, a message,
//! and a detail and hint where useful. PostgreSQL's own errors (a constraint, a lock
//! timeout) are raised by PostgreSQL and never pass through here.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR; never returns.
pub(crate) fn raise(code: PgSqlErrorCode, message: String, detail: Option<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message, "pg_dialpad");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

/// A failure of the extension's own code.
#[derive(Debug)]
pub(crate) enum Error {
    /// An SPI call failed (not the statement: SPI itself, e.g. a row without the column asked for).
    Spi(pgrx::spi::Error),
    /// SPI could not be connected (SPI_connect's return code).
    SpiConnect(i32),
    /// A stored payload the processor cannot read back into a sanitized copy.
    Payload { event: i64, why: String },
    /// SQL text the extension built holds a NUL byte.
    NulInSql,
    /// A row a trigger was given does not read as its table says.
    Row(String),
}

impl Error {
    /// The SQLSTATE the error is raised with.
    pub(crate) fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            Error::Payload { .. } => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            Error::Spi(_) | Error::SpiConnect(_) | Error::NulInSql | Error::Row(_) => {
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR
            }
        }
    }

    /// Raises it as an ERROR with its SQLSTATE, `context` first ("could not write calls").
    pub(crate) fn raise(self, context: &str) -> ! {
        raise(self.sqlstate(), format!("{context}: {self}"), None, None)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Spi(e) => write!(f, "{e}"),
            Error::SpiConnect(rc) => write!(f, "SPI_connect failed ({rc})"),
            Error::Payload { event, why } => write!(f, "the stored payload of event {event} cannot be read: {why}"),
            Error::NulInSql => write!(f, "a statement holds a NUL byte"),
            Error::Row(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<pgrx::spi::Error> for Error {
    fn from(e: pgrx::spi::Error) -> Error {
        Error::Spi(e)
    }
}
