//! The rules of pg_dialpad, in plain Rust: nothing here calls PostgreSQL, so all of it is
//! unit-tested outside a backend.

pub(crate) mod direction;
pub(crate) mod event;
pub(crate) mod fold;
#[cfg(test)]
mod fuzz;
pub(crate) mod logical;
pub(crate) mod recordings;
pub(crate) mod sanitize;
pub(crate) mod scan_floor;
pub(crate) mod transitions;
pub(crate) mod webhook;
