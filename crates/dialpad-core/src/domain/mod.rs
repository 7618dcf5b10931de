//! The rules of pg_dialpad, in plain Rust: nothing here calls PostgreSQL, so all of it is
//! unit-tested outside a backend.

pub mod batch;
pub mod call_row;
pub mod direction;
pub mod event;
pub mod fold;
#[cfg(test)]
mod fuzz;
pub mod logical;
pub mod recordings;
pub mod sanitize;
pub mod scan_floor;
pub mod transitions;
pub mod webhook;
