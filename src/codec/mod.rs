//! PostgreSQL's binary formats, read and written in plain Rust (no backend needed, so they
//! are unit- and property-tested with `cargo test`).

pub(crate) mod jsonb;
pub(crate) mod numeric;
pub(crate) mod varlena;
