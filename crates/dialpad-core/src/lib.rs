//! The pure core of pg_dialpad: the rules and PostgreSQL's binary formats in plain Rust.
//!
//! Nothing here depends on pgrx or calls into PostgreSQL, so all of it is unit- and
//! property-tested with `cargo test -p dialpad-core`, without a server:
//! - `codec`: PostgreSQL's binary formats (jsonb, numeric, varlena), read and written;
//! - `domain`: the rules: events, the fold of a call's events into its row, the status
//!   machine, directions, the sanitizer, webhook bodies and JWTs, logical calls, the scan
//!   floor.
//!
//! The extension (the crate at the repository's root) depends on this crate, never the
//! other way; tests/layers.rs holds the direction.

#![warn(unreachable_pub, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod codec;
pub mod domain;
