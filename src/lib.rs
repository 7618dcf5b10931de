//! pg_dialpad: Dialpad call webhooks turned into clean `dialpad.calls` rows inside PostgreSQL.
//!
//! The tree is the architecture (docs/development.md, "Repository layout"):
//! - `domain`: the rules, in plain Rust (events, the fold of a call's events, the status
//!   machine, directions, the sanitizer, webhook bodies and JWTs, the scan floor);
//! - `codec`: PostgreSQL's binary formats (jsonb, numeric, varlena) read and written in
//!   plain Rust, so `domain` works on them without a backend;
//! - `pipeline`: the batch that claims events and writes calls, with the rules cache, the
//!   call-row codec and the redelivery lookup;
//! - `api`: the SQL surface (functions, triggers, monitoring, the drop guard);
//! - `bgworker`: the launcher, the workers and the HTTP listener's main thread;
//! - `http`: the HTTP listener's network threads (hyper on tokio), which never call into
//!   PostgreSQL;
//! - `pg`: every call into PostgreSQL, as safe wrappers; shared memory, errors;
//! - `gucs` and `version`: the settings, and the library's version against the SQL's.

#![warn(unreachable_pub, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
// Inside an `unsafe fn` (a callback PostgreSQL calls), each unsafe operation still needs its
// own block and SAFETY comment: tests/layers.rs counts those blocks.
#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::prelude::*;

mod api;
mod bgworker;
mod citus;
mod flags;
mod gucs;
mod http;
mod pg;
mod pipeline;
mod version;

/// The pure core (crates/dialpad-core), under the names the rest of the crate uses.
use dialpad_core::{codec, domain};

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = [
        "schema",
        api::triggers::calls_before_write,
        api::triggers::calls_after_write,
        api::triggers::rules_changed,
        api::triggers::webhook_events_before_insert
    ]
);
extension_sql_file!(
    "../sql/processing.sql",
    name = "processing",
    requires = [
        "schema",
        api::triggers::wake_workers_on_insert,
        api::monitoring::processed_last_minute,
        api::monitoring::wake_workers
    ]
);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = ["processing", api::version_info, api::partition_bounds]
);
extension_sql_file!("../sql/analytics.sql", name = "analytics", requires = ["maintenance"]);
extension_sql_file!("../sql/rederive.sql", name = "rederive", requires = ["analytics"]);
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["analytics", citus::routing_call_id]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    no_backtraces_in_errors();
    gucs::init();
    pg::watch_relcache();
    // pg_upgrade starts the server with our library preloaded: start nothing then.
    if !pg::backend::preloading() || pg::backend::binary_upgrade() {
        return;
    }
    pg::shmem::init();
    bgworker::register_launcher();
    bgworker::register_listener();
    citus::routing::install();
}

/// With `RUST_BACKTRACE` in the server's environment (a container image or a shell that sets
/// it), pgrx captures and symbolizes a Rust backtrace for every ERROR that passes through
/// Rust code (the planner hook is on every query) and appends it to the error's DETAIL: the
/// client sees our frames and build paths, and each error costs milliseconds instead of
/// microseconds (a bad jsonb parameter planned through the hook, release build: 41 ms against
/// 9 µs). The standard library reads `RUST_LIB_BACKTRACE` first: unless the DBA set it (to
/// anything, even empty), it is "0" here, so errors are as PostgreSQL makes them; child
/// processes (archive_command, COPY PROGRAM) inherit it. A panic in one of our own threads
/// (the HTTP listener's) still prints its backtrace to the server log under
/// `RUST_BACKTRACE`, and `RUST_LIB_BACKTRACE=1` brings them back into DETAIL.
fn no_backtraces_in_errors() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // _PG_init runs in the postmaster (preloaded) or in a backend loading the library:
        // PostgreSQL's processes are single-threaded (our listener's threads start later, in
        // a worker), so nothing reads the environment meanwhile, unless another preloaded
        // library started threads of its own.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// This module is required by `cargo pgrx test` invocations.
/// It must be visible at the root of your extension crate.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_dialpad'"]
    }
}
