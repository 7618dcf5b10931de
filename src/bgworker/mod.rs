//! The background processes that drain `dialpad.webhook_events` into `dialpad.calls`.
//!
//! Design (after contrib's worker_spi and pg_cron):
//! - A *launcher*, registered at server start, connects to no database. It waits (quietly,
//!   re-checking every few seconds) until `dialpad.database` exists, then starts
//!   `dialpad.workers` dynamic *workers* and starts any that stop again (crash,
//!   pg_terminate_backend). It is itself restarted by the postmaster if it dies.
//! - A worker connects to the database as `dialpad.role`, claims a shared-memory slot
//!   (pid, latch, counters), and loops: reload settings on SIGHUP (in the loop, not in the
//!   handler), run one batch in its own short transaction, report what it does in
//!   pg_stat_activity, and sleep on its latch, which every committed insert into
//!   webhook_events sets. While a batch comes back full it loops without sleeping.
//! - An error in a batch is logged, the transaction aborted, and the worker lives on.
//! - Like a good backend it never waits on a lock without a timeout (`dialpad.lock_timeout`:
//!   a call whose row someone else holds is deferred, see pipeline/batch.rs), reports its table
//!   statistics after every transaction (without that, autovacuum never sees its writes),
//!   and SIGTERM goes through PostgreSQL's own `die()`, so it leaves within a second even
//!   while it waits on a lock or runs a long statement.
//! - It writes nothing while its library and the extension's SQL objects disagree on the
//!   version (new library loaded, `ALTER EXTENSION pg_dialpad UPDATE` not run yet), nor
//!   while a `DROP EXTENSION pg_dialpad` is waiting for it to get out of the way.
//! - The HTTP *listener* (listener.rs, docs/http.md), registered at server start when
//!   `dialpad.http_listen` is set, stores webhook deliveries received over HTTP(S).

mod launcher;
mod listener;
mod worker;

pub(crate) use launcher::register_launcher;
pub(crate) use listener::register_listener;

pub(crate) const LAUNCHER_TYPE: &str = "pg_dialpad launcher";
pub(crate) const WORKER_TYPE: &str = "pg_dialpad worker";
pub(crate) const LISTENER_TYPE: &str = "pg_dialpad http listener";

use crate::pg::backend::report_activity;
