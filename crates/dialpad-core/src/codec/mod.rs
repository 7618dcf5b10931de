//! PostgreSQL's binary formats, read and written in plain Rust (no backend needed, so they
//! are unit- and property-tested with `cargo test`).

pub mod jsonb;
pub mod numeric;
pub mod varlena;
