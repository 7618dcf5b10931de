//! The HTTP listener's main thread (docs/http.md). It connects to `dialpad.database` as
//! `dialpad.http_role` (never a superuser), starts the network threads (src/http), and
//! loops: obey signals, take what the network threads queued, store it as one group commit —
//! one transaction, each delivery in its own subtransaction so that one bad delivery never
//! fails the others — and only after the commit answer each request. Between groups it
//! waits on its latch, the network threads' wake-up socket and the postmaster's death, and
//! refreshes what /healthz and /metrics report. Only this thread calls into PostgreSQL.

use super::{report_activity, worker, LISTENER_TYPE};
use crate::http::{self, Answer, Delivery, Health};
use crate::{gucs, pg::shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries stored in one transaction at most.
const GROUP_MAX: usize = 256;
/// Group commit: how long a group waits for the deliveries still on their way (see `gather`),
/// and how often it looks for them meanwhile.
const GATHER_FOR: Duration = Duration::from_micros(500);
const GATHER_POLL: Duration = Duration::from_micros(50);
/// Longest wait between two looks at signals, health and counters.
const WAIT_MS: i64 = 500;
/// How often /healthz's verdict and /metrics' database figures are renewed when idle.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a group may reuse the last group's readiness verdict when no catalog change has
/// reached this backend since (see [`Readiness`]).
const READINESS_TTL: Duration = Duration::from_secs(1);
/// Refused requests are logged at most this often (a summary), never one line each.
const REFUSALS_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// After a crash or a failure to listen, the postmaster starts the listener again after this.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// Registers the listener when dialpad.http_listen is set; called from `_PG_init`.
pub(crate) fn register_listener() {
    if gucs::http_listen().is_none() {
        return;
    }
    BackgroundWorkerBuilder::new(LISTENER_TYPE)
        .set_type(LISTENER_TYPE)
        .set_library("pg_dialpad")
        .set_function("dialpad_http_main")
        .enable_spi_access()
        // From consistency on, so that a standby answers 503 (recovery) instead of nothing.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dialpad_http_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    crate::pg::backend::die_on_sigterm();
    let Some(mut listener) = Listener::start() else {
        // Exit code 0: a static worker that exits with 0 is not started again (a setting
        // must change first, which takes a restart).
        crate::pg::proc_exit(0);
    };
    loop {
        listener.step();
    }
}

struct Listener {
    shared: Arc<http::Shared>,
    wait: UnixDatagram,
    last_refresh: Option<Instant>,
    /// Deliveries in the last group stored.
    last_group: usize,
    /// The verdict the last group was stored under, reused while valid.
    readiness: Option<Readiness>,
    last_refusal_log: Instant,
    /// What was refused up to the last summary.
    refusals_logged: http::metrics::Refusals,
}

impl Listener {
    /// Settings checked, connected, listening; None (logged) when it must not run.
    fn start() -> Option<Listener> {
        let listen = gucs::http_listen()?;
        let Some(role) = gucs::http_role() else {
            log!("pg_dialpad http listener not started: dialpad.http_role is not set (a role in dialpad_ingest that is not a superuser, see docs/http.md)");
            return None;
        };
        let addresses = [("dialpad.http_listen", Some(listen)), ("dialpad.metrics_listen", gucs::metrics_listen())];
        let mut sockets = Vec::new();
        for (setting, value) in addresses {
            let Some(value) = value else { continue };
            let Some(addr) = resolve(&value) else {
                log!("pg_dialpad http listener not started: {setting} = '{value}' is not an address and port such as 127.0.0.1:8080");
                return None;
            };
            sockets.push((setting, addr));
        }
        let database = gucs::database();
        BackgroundWorker::connect_worker_to_spi(Some(&database), Some(&role));
        if let Some(why) = BackgroundWorker::transaction(refusal) {
            log!("pg_dialpad http listener not started: {why}");
            return None;
        }
        set_session_settings();
        let listeners = sockets.into_iter().map(|(setting, addr)| bind(setting, addr)).collect::<Vec<_>>();
        let limits = http::Limits {
            max_body: gucs::max_body_size().into(),
            read_timeout_ms: gucs::http_read_timeout_ms().into(),
            max_connections: gucs::http_max_connections(),
            queue_size: gucs::http_queue_size(),
            metrics: if gucs::metrics_listen().is_some() {
                http::metrics::Exposure::Elsewhere
            } else {
                http::metrics::Exposure::Loopback
            },
        };
        let (shared, wait) =
            http::Shared::new(limits).unwrap_or_else(|e| fail(&format!("cannot create a socket pair: {e}")));
        match tls_from_settings() {
            Ok(acceptor) => shared.tls.set(acceptor),
            Err(why) => fail(&why),
        }
        let scheme = if shared.tls.get().is_some() { "https" } else { "http" };
        let addrs: Vec<String> =
            listeners.iter().map(|(l, _)| l.local_addr().map(|a| a.to_string()).unwrap_or_default()).collect();
        if let Err(e) = http::spawn(listeners, shared.clone()) {
            fail(&format!("cannot start the network thread: {e}"));
        }
        log!(
            "pg_dialpad http listener ({scheme}) on {} for database \"{database}\" as role \"{role}\"",
            addrs.join(" and ")
        );
        Some(Listener {
            shared,
            wait,
            last_refresh: None,
            last_group: 0,
            readiness: None,
            last_refusal_log: Instant::now(),
            refusals_logged: http::metrics::Refusals::default(),
        })
    }

    /// One pass of the loop: signals, then a group if one is queued, else a wait.
    fn step(&mut self) {
        check_for_interrupts!();
        // Under load the loop never waits (where WL_EXIT_ON_PM_DEATH would see it): an
        // orphaned listener must not go on acknowledging deliveries.
        if crate::pg::backend::postmaster_gone() {
            crate::pg::proc_exit(1);
        }
        if BackgroundWorker::sighup_received() {
            crate::pg::backend::reload_config_file();
            self.shared.limits.max_body.store(gucs::max_body_size(), Ordering::Relaxed);
            self.shared.limits.read_timeout_ms.store(gucs::http_read_timeout_ms(), Ordering::Relaxed);
            worker::apply_lock_timeout();
            self.reload_tls();
        }
        // Under load too: /healthz must not go stale while groups keep coming.
        if self.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL) {
            self.refresh();
        }
        self.log_refusals();
        let mut group = self.shared.take(GROUP_MAX);
        if !group.is_empty() {
            self.gather(&mut group);
            self.last_group = group.len();
            self.serve(group);
            return;
        }
        report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for webhook deliveries");
        self.wait();
    }

    /// Group commit: clients answered together by the last commit send their next delivery
    /// together, a little apart. When at most half as many are queued as the last group held,
    /// the others are usually on their way: wait for them (at most GATHER_FOR) rather than
    /// pay a commit for the first few. Under heavier load the deliveries that came during the
    /// last commit make the group, with no wait. The size to wait for follows the load down
    /// within one group, and a single client (a group of one) never waits.
    fn gather(&self, group: &mut Vec<Delivery>) {
        let want = self.last_group.min(GROUP_MAX);
        if group.len() * 2 > want {
            return;
        }
        let deadline = Instant::now() + GATHER_FOR;
        while group.len() < want && Instant::now() < deadline {
            std::thread::sleep(GATHER_POLL);
            group.extend(self.shared.take(GROUP_MAX - group.len()));
        }
    }

    /// Reads the certificate and key again (after a reload): new connections use them.
    fn reload_tls(&self) {
        match tls_from_settings() {
            Ok(acceptor) => {
                if acceptor.is_some() {
                    log!("pg_dialpad http listener: TLS certificate and key read again");
                }
                self.shared.tls.set(acceptor);
            }
            // LOG, as PostgreSQL reports a configuration file it cannot apply on reload.
            Err(why) => log!("pg_dialpad http listener: {why}; the TLS configuration in use stays"),
        }
    }

    /// Sleeps until the latch is set (signal), a delivery is queued, or WAIT_MS passed;
    /// exits at once if the postmaster dies.
    fn wait(&self) {
        // The socket is ours and open for the process's life.
        crate::pg::backend::wait_latch_or_socket(self.wait.as_raw_fd(), WAIT_MS);
        http::drain_wakeups(&self.wait);
    }

    /// Stores a group in one transaction and answers each request after the commit.
    fn serve(&mut self, group: Vec<Delivery>) {
        // A client that gave up before its turn (disconnected, timed out) is not stored.
        let group: Vec<Delivery> = group.into_iter().filter(|d| !d.reply.is_closed()).collect();
        if group.is_empty() {
            return;
        }
        report_activity(pg_sys::BackendState::STATE_RUNNING, c"storing webhook deliveries");
        let items: Vec<(Option<String>, bytes::Bytes)> =
            group.iter().map(|d| (d.source.clone(), d.body.clone())).collect();
        let last = self.readiness.take();
        let checked = in_own_transaction(std::panic::AssertUnwindSafe(|| {
            let verdict = Readiness::check(last);
            let answers = match &verdict.reason {
                Some(reason) => Err(reason.clone()),
                None => Ok(store_group(&items)),
            };
            (verdict, answers)
        }));
        let answers = checked.map(|(verdict, answers)| {
            self.readiness = Some(verdict);
            answers
        });
        let dying = crate::pg::backend::die_pending();
        let answers = match answers {
            // Terminated while the commit waited for a synchronous standby: PostgreSQL
            // committed locally and tells no client (the standby may not have it). Neither do
            // we: 503, and Dialpad's retry is recognized as a redelivery.
            Ok(Ok(_)) if dying => {
                vec![Answer::Unavailable("the server is shutting down: retry".into()); group.len()]
            }
            Ok(Ok(answers)) => answers,
            Ok(Err(reason)) | Err(reason) => {
                self.shared.set_health(Health { ok: false, detail: reason.clone() });
                vec![Answer::Unavailable(reason); group.len()]
            }
        };
        for (d, answer) in group.into_iter().zip(answers) {
            let _ = d.reply.send(answer);
        }
    }

    /// Renews the health verdict and the database figures of /metrics.
    fn refresh(&mut self) {
        self.last_refresh = Some(Instant::now());
        let verdict = match in_own_transaction(readiness) {
            Ok(None) => workers_running(),
            Ok(Some(reason)) => Err(reason),
            Err(e) => Err(format!("cannot check the database: {e}")),
        };
        let ready = verdict.is_ok();
        self.shared.set_health(match verdict {
            Ok(detail) => Health { ok: true, detail },
            Err(detail) => Health { ok: false, detail },
        });
        self.shared.set_database_metrics(database_metrics(ready));
    }

    /// At most once an interval, one line summing up the requests refused since the last.
    fn log_refusals(&mut self) {
        if self.last_refusal_log.elapsed() < REFUSALS_LOG_INTERVAL {
            return;
        }
        self.last_refusal_log = Instant::now();
        let now = self.shared.metrics.refusals();
        if let Some(summary) = now.since(&self.refusals_logged) {
            log!(
                "pg_dialpad http listener: refused in the last {} s: {summary} (see GET /metrics)",
                REFUSALS_LOG_INTERVAL.as_secs()
            );
        }
        self.refusals_logged = now;
    }
}

/// Logs why the listener cannot go on and exits with 1: started again after RESTART_AFTER.
fn fail(why: &str) -> ! {
    log!("pg_dialpad http listener: {why}; trying again in {} s", RESTART_AFTER.as_secs());
    crate::pg::proc_exit(1)
}

/// The TLS acceptor dialpad.http_tls_cert and dialpad.http_tls_key ask for (None: plain
/// HTTP), the files read now; or why they cannot be used.
fn tls_from_settings() -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    match gucs::http_tls() {
        Ok(None) => Ok(None),
        Ok(Some((cert, key))) => http::tls::load(cert.as_ref(), key.as_ref()).map(Some),
        Err(why) => Err(why.to_string()),
    }
}

/// `host:port` (or `[v6]:port`) as a socket address.
fn resolve(value: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    value.to_socket_addrs().ok()?.next()
}

fn bind(setting: &str, addr: std::net::SocketAddr) -> (std::net::TcpListener, http::Kind) {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .unwrap_or_else(|e| fail(&format!("cannot listen on {addr} ({setting}): {e}")));
    let kind = if setting == "dialpad.http_listen" { http::Kind::Webhooks } else { http::Kind::Metrics };
    (listener, kind)
}

/// search_path pinned as in the workers; lock_timeout bounded (a delivery whose key another
/// session holds is answered 503 rather than waited for). synchronous_commit is left as
/// the cluster has it: a 2xx means the delivery is as durable as the cluster promises.
fn set_session_settings() {
    crate::pg::set_session_setting(c"search_path", c"pg_catalog, pg_temp");
    worker::apply_lock_timeout();
}

/// `f` in a transaction of its own (statement time renewed, so received_at is now), then
/// the table statistics reported as every worker does.
fn in_own_transaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> Result<R, String> {
    // Outside any transaction: the timestamp the next transaction starts with.
    crate::pg::backend::start_statement_clock();
    let result = worker::in_transaction(f);
    crate::pg::backend::report_stats();
    result
}

/// The group, in the current transaction (found ready): an answer for each.
fn store_group(items: &[(Option<String>, bytes::Bytes)]) -> Vec<Answer> {
    items.iter().map(|(source, body)| store_one(source.as_deref(), body)).collect()
}

/// The readiness verdict a group was stored under ([`readiness`]).
///
/// The full check is catalog queries parsed and planned each time, a seventh of the
/// listener's work per group under load. A group checks recovery (shared memory) and the
/// installed version (a kept plan) every time, and reuses the rest of the last verdict (the
/// role's privilege on ingest_webhook) while no invalidation message has reached this
/// backend since it was taken (a GRANT, a REVOKE or a DROP sends some, and every
/// transaction start reads them), for at most [`READINESS_TTL`].
#[derive(Clone)]
struct Readiness {
    taken: Instant,
    /// `SharedInvalidMessageCounter` when the verdict was taken.
    invalidations: u64,
    reason: Option<String>,
}

impl Readiness {
    /// The verdict for a group, in the current transaction: `last`'s if still valid, else new.
    fn check(last: Option<Readiness>) -> Readiness {
        // Read before the queries: a change they see is checked again next time.
        let invalidations = crate::pg::backend::invalidations_read();
        let fresh = || Readiness { taken: Instant::now(), invalidations, reason: readiness() };
        let Some(last) = last
            .filter(|v| v.reason.is_none() && v.invalidations == invalidations && v.taken.elapsed() < READINESS_TTL)
        else {
            return fresh();
        };
        if crate::pg::backend::in_recovery() {
            return fresh();
        }
        let version = crate::version::installed_version();
        // The query's lock on pg_extension read the invalidations that came since the
        // transaction started: one of them (a REVOKE just committed) means checking again.
        let unchanged = crate::pg::backend::invalidations_read() == invalidations;
        match version {
            Some(v) if v == crate::version::LIBRARY && unchanged => last,
            _ => fresh(),
        }
    }
}

/// One delivery in its own subtransaction, exactly as dialpad.ingest_webhook(body, source).
fn store_one(source: Option<&str>, body: &[u8]) -> Answer {
    let Ok(text) = std::str::from_utf8(body) else {
        return Answer::Refused { status: 400, message: "the body is not valid UTF-8".into() };
    };
    match crate::pg::spi::in_subtransaction(|| crate::api::ingest::ingest_webhook(Some(text), source)) {
        Ok(id) => Answer::Stored(id),
        Err(e) => {
            let sqlstate = http::status::unpack_sqlstate(e.code as i32);
            match http::status::refusal_status(&sqlstate, e.detail.as_deref()) {
                Some(status) => Answer::Refused { status, message: e.message },
                None => Answer::Unavailable(format!("cannot store the delivery now ({sqlstate}: {})", e.message)),
            }
        }
    }
}

/// What the role has beyond dialpad_ingest's rights, by name: anything a delivery's sender
/// could reach through a flaw in the listener must be no more than a member of
/// dialpad_ingest may do. Its own attributes and those of every role it is a member of
/// (directly or not), the predefined roles that reach outside the extension's tables, and
/// ownership of the database or of the extension's schema or objects. NULL or empty: none.
const ROLE_RIGHTS_SQL: &str = "SELECT CASE WHEN r.rolsuper THEN 'SUPERUSER' ELSE (
  SELECT pg_catalog.string_agg(w.what, ', ' ORDER BY w.what) FROM (
    SELECT CASE WHEN m.oid OPERATOR(pg_catalog.=) r.oid THEN v.a
                WHEN v.a IS NULL THEN 'member of ' OPERATOR(pg_catalog.||) m.rolname
                ELSE 'member of ' OPERATOR(pg_catalog.||) m.rolname OPERATOR(pg_catalog.||) ' ('
                     OPERATOR(pg_catalog.||) v.a OPERATOR(pg_catalog.||) ')' END AS what
      FROM pg_catalog.pg_roles m,
           LATERAL (VALUES (m.rolsuper, 'SUPERUSER'), (m.rolcreaterole, 'CREATEROLE'),
                           (m.rolbypassrls, 'BYPASSRLS'), (m.rolreplication, 'REPLICATION'),
                           (m.rolname OPERATOR(pg_catalog.=) ANY (ARRAY['pg_read_server_files',
                               'pg_write_server_files', 'pg_execute_server_program', 'pg_read_all_data',
                               'pg_write_all_data', 'pg_signal_backend', 'pg_create_subscription',
                               'pg_maintain']), NULL)) AS v(has, a)
     WHERE v.has AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')
    UNION
    SELECT 'owner of database ' OPERATOR(pg_catalog.||) d.datname FROM pg_catalog.pg_database d
     WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
       AND pg_catalog.pg_has_role(r.oid, d.datdba, 'MEMBER')
    UNION
    SELECT 'owner of schema dialpad or of objects in it' FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'dialpad'
       AND (pg_catalog.pg_has_role(r.oid, n.nspowner, 'MEMBER')
            OR EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid
                          AND pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER'))
            OR EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace OPERATOR(pg_catalog.=) n.oid
                          AND pg_catalog.pg_has_role(r.oid, p.proowner, 'MEMBER')))) AS w) END
 FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER";

/// Why the listener must not run as this role in this database, or None.
fn refusal() -> Option<String> {
    let role = gucs::http_role().unwrap_or_default();
    match Spi::get_one::<String>(ROLE_RIGHTS_SQL) {
        Ok(Some(rights)) if !rights.is_empty() => {
            return Some(format!("dialpad.http_role \"{role}\" has more rights than dialpad_ingest ({rights}); use a role with dialpad_ingest's rights only (CREATE ROLE dialpad_http LOGIN IN ROLE dialpad_ingest)"));
        }
        Ok(_) => {}
        Err(e) => return Some(format!("cannot read dialpad.http_role's rights: {e}")),
    }
    // Bodies arrive as UTF-8 and are stored as they are (as a client with client_encoding
    // UTF8 would, without the conversion): only a UTF-8 (or SQL_ASCII) database keeps them.
    let encoding = crate::pg::setting(c"server_encoding").unwrap_or_default();
    (encoding != "UTF8" && encoding != "SQL_ASCII").then(|| {
        format!("database \"{}\" has encoding {encoding}; deliveries arrive as UTF-8 and the listener stores them only in a UTF8 database", gucs::database())
    })
}

const READINESS_SQL: &str = "SELECT e.extversion, COALESCE(pg_catalog.has_function_privilege(\
 pg_catalog.to_regprocedure('dialpad.ingest_webhook(text,text)'), 'EXECUTE'), false)
 FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_dialpad'";

/// Why deliveries cannot be stored now (in the current transaction), or None.
fn readiness() -> Option<String> {
    if crate::pg::backend::in_recovery() {
        return Some("the server is in recovery (a standby): deliveries go to the primary".into());
    }
    let row = Spi::get_two::<String, bool>(READINESS_SQL);
    let (version, may_ingest) = match row {
        Ok((Some(v), Some(p))) => (v, p),
        Ok(_) | Err(pgrx::spi::Error::InvalidPosition) => {
            return Some(format!("extension pg_dialpad is not installed in database \"{}\"", gucs::database()))
        }
        Err(e) => return Some(format!("cannot read pg_extension: {e}")),
    };
    if version != crate::version::LIBRARY {
        return Some(format!(
            "pg_dialpad's library is version {} but its SQL objects are version {version}: run ALTER EXTENSION pg_dialpad UPDATE",
            crate::version::LIBRARY
        ));
    }
    if !may_ingest {
        return Some("dialpad.http_role may not call dialpad.ingest_webhook: GRANT dialpad_ingest to it".into());
    }
    None
}

/// Whether the workers that apply stored deliveries run (from shared memory).
fn workers_running() -> Result<String, String> {
    let n = gucs::workers();
    if n == 0 {
        return Ok("deliveries are stored; dialpad.workers is 0, so something else must process them".into());
    }
    let Some(s) = shmem::get() else { return Err("pg_dialpad's shared memory is missing".into()) };
    let running = s.slots.iter().take(n).filter(|w| w.pid.load(Ordering::Acquire) != 0).count();
    if running == 0 {
        return Err(format!("no pg_dialpad worker runs (0 of {n}): see SELECT * FROM dialpad.worker_status()"));
    }
    Ok(format!("ok: deliveries are stored, {running} of {n} worker(s) run"))
}

/// The database's figures for /metrics, from shared memory only (no table is read): the
/// ingest counters of this database since the server started, the workers, readiness.
fn database_metrics(ready: bool) -> String {
    use http::metrics::label_value;
    use std::fmt::Write;
    let mut out = String::new();
    let Some(s) = shmem::get() else { return out };
    let _ = writeln!(out, "# HELP dialpad_ingest_deliveries_total Deliveries dialpad.ingest_webhook handled in this database since the server started (over HTTP and SQL), by source, outcome and rejection reason.");
    let _ = writeln!(out, "# TYPE dialpad_ingest_deliveries_total counter");
    let mut totals = s.ingest.totals(crate::pg::my_database().into());
    totals.sort_by(|a, b| (&a.0, a.1.labels()).cmp(&(&b.0, b.1.labels())));
    for (source, outcome, n) in totals {
        let (outcome, reason) = outcome.labels();
        let _ = writeln!(
            out,
            "dialpad_ingest_deliveries_total{{source=\"{}\",outcome=\"{outcome}\",reason=\"{reason}\"}} {n}",
            label_value(&source)
        );
    }
    let n = gucs::workers().min(shmem::MAX_WORKERS);
    let running = s.slots.iter().take(n).filter(|w| w.pid.load(Ordering::Acquire) != 0).count();
    let events: u64 = s.slots.iter().take(n).map(|w| w.events.load(Ordering::Relaxed)).sum();
    let gauges = [
        ("dialpad_workers_configured", "dialpad.workers.", n as u64),
        ("dialpad_workers_running", "pg_dialpad workers running now.", running as u64),
        (
            "dialpad_events_processed_last_minute",
            "Events the workers handled in the last minute.",
            s.processed_last_minute(),
        ),
        (
            "dialpad_http_ready",
            "1 when deliveries can be committed and the workers run (as GET /healthz says).",
            ready as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    // The inbox's queue, as the first worker last counted it (every 5 s; every minute while a
    // backlog drains): dialpad.queue_stats without a query here.
    if let Some(age) = s.queue.age_seconds() {
        let q = &s.queue;
        let queue = [
            (
                "dialpad_queue_pending",
                "Events stored and not yet applied or dead-lettered.",
                q.pending.load(Ordering::Relaxed),
            ),
            ("dialpad_queue_due", "Pending events that may be processed now.", q.due.load(Ordering::Relaxed)),
            ("dialpad_queue_dead", "Dead-lettered events (dialpad.dead_events).", q.dead.load(Ordering::Relaxed)),
            (
                "dialpad_queue_oldest_pending_age_seconds",
                "Age of the oldest pending event.",
                q.oldest_pending_age_seconds.load(Ordering::Relaxed),
            ),
            ("dialpad_queue_counted_seconds_ago", "How old the dialpad_queue_* figures are.", age),
        ];
        for (name, help, value) in queue {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
    }
    let _ = writeln!(out, "# HELP dialpad_worker_events_total Events handled by the running workers since each started.\n# TYPE dialpad_worker_events_total counter\ndialpad_worker_events_total {events}");
    out
}
