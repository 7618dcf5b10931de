//! Every `dialpad.*` setting, defined in one place with typed accessors.
//!
//! Read at server start (PGC_POSTMASTER): database, role, workers, and the HTTP listener's
//! http_listen, http_role, metrics_listen, http_max_connections, http_queue_size. Changed by
//! a reload (PGC_SIGHUP), which the worker applies in its loop: batch_size, poll_interval,
//! max_attempts, enabled, lock_timeout, http_read_timeout. Per session: invalid_transition.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum InvalidTransition {
    /// Keep the row as it was, warn, and record the attempt in dialpad.rejected_transitions.
    #[name = c"skip"]
    Skip,
    /// Raise check_violation.
    #[name = c"error"]
    Error,
}

pub(crate) static INVALID_TRANSITION: GucSetting<InvalidTransition> =
    GucSetting::<InvalidTransition>::new(InvalidTransition::Skip);
pub(crate) static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub(crate) static ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub(crate) static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
pub(crate) static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub(crate) static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub(crate) static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub(crate) static WEBHOOK_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static MAX_BODY_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024 * 1024);
pub(crate) static MAX_EVENT_AGE_S: GucSetting<i32> = GucSetting::<i32>::new(0);
pub(crate) static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(100);
pub(crate) static RETENTION_MIN: GucSetting<i32> = GucSetting::<i32>::new(0);
pub(crate) static RETENTION_MODE: GucSetting<RetentionMode> = GucSetting::<RetentionMode>::new(RetentionMode::Drop);
pub(crate) static PARTITION_INTERVAL_MIN: GucSetting<i32> = GucSetting::<i32>::new(24 * 60);
pub(crate) static PARTITIONS_AHEAD: GucSetting<i32> = GucSetting::<i32>::new(3);
pub(crate) static MAINTENANCE_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(600);
pub(crate) static HTTP_LISTEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static HTTP_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static METRICS_LISTEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static HTTP_MAX_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(256);
pub(crate) static HTTP_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub(crate) static HTTP_READ_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub(crate) static HTTP_TLS_CERT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub(crate) static HTTP_TLS_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// What dialpad.run_maintenance() does with a partition older than dialpad.retention.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RetentionMode {
    /// DROP TABLE: the data is gone.
    #[name = c"drop"]
    Drop,
    /// DETACH PARTITION: an ordinary table left in schema dialpad, to archive and drop.
    #[name = c"detach"]
    Detach,
}

pub(crate) fn init() {
    GucRegistry::define_enum_guc(
        c"dialpad.invalid_transition",
        c"What an invalid call status transition does: skip (keep the row, warn, record it) or error.",
        c"With skip, the write leaves the row as it was, raises a WARNING and records the attempt in dialpad.rejected_transitions. With error, it raises check_violation (SQLSTATE 23514).",
        &INVALID_TRANSITION,
        GucContext::Userset,
        GucFlags::default(),
    );
    // PGC_POSTMASTER settings can only be defined while the library is preloaded (a later
    // load would fail with "cannot create PGC_POSTMASTER variables after startup").
    if crate::pg::backend::preloading() {
        define_startup_settings();
    }
    define_reloadable_settings();
    crate::pg::reserve_setting_prefix(c"dialpad");
}

fn define_startup_settings() {
    GucRegistry::define_string_guc(
        c"dialpad.database",
        c"Database the pg_dialpad background workers process events in.",
        c"The workers wait quietly while it or the extension in it does not exist. Restart the server to change it.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dialpad.role",
        c"Role the pg_dialpad background workers connect as (default: the bootstrap superuser).",
        c"A dedicated role needs USAGE on schema dialpad and the privileges granted to dialpad_worker. Restart the server to change it.",
        &ROLE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.workers",
        c"Number of pg_dialpad background workers (0 disables them).",
        c"Each worker is a background worker process: max_worker_processes must leave room for them and their launcher. Restart the server to change it.",
        &WORKERS,
        0,
        crate::pg::shmem::MAX_WORKERS as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    define_http_startup_settings();
}

/// The HTTP listener (docs/http.md): where it listens, as whom, and its bounds.
fn define_http_startup_settings() {
    GucRegistry::define_string_guc(
        c"dialpad.http_listen",
        c"Address and port the pg_dialpad HTTP listener accepts webhook deliveries on, e.g. 127.0.0.1:8080 (empty: no listener).",
        c"A background worker serves POST /webhooks/{source} and GET /healthz there. Restart the server to change it.",
        &HTTP_LISTEN,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dialpad.http_role",
        c"Role the pg_dialpad HTTP listener connects as: a member of dialpad_ingest with no more rights than it.",
        c"The listener does not start while it is empty or names a role with more: SUPERUSER, CREATEROLE, BYPASSRLS or REPLICATION (its own or a role it is in), a predefined role reaching outside the extension (server files and programs, all data, signals, subscriptions, maintain), or ownership of the database or the extension objects. Restart the server to change it.",
        &HTTP_ROLE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dialpad.metrics_listen",
        c"Address and port of a listener serving only GET /metrics and GET /healthz (empty: /metrics on dialpad.http_listen, to loopback clients only).",
        c"Restart the server to change it.",
        &METRICS_LISTEN,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.http_max_connections",
        c"Client connections the pg_dialpad HTTP listener keeps open at once; more are answered 503 and closed.",
        c"Restart the server to change it.",
        &HTTP_MAX_CONNECTIONS,
        1,
        100_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.http_queue_size",
        c"Deliveries the pg_dialpad HTTP listener holds waiting for its transaction; more are answered 503.",
        c"Restart the server to change it.",
        &HTTP_QUEUE_SIZE,
        1,
        100_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_reloadable_settings() {
    define_ingest_settings();
    define_processing_settings();
    define_retention_settings();
}

/// dialpad.ingest_webhook's limits (and 0.1.0's retired secret), the HTTP listener's timeout.
fn define_ingest_settings() {
    GucRegistry::define_int_guc(
        c"dialpad.http_read_timeout",
        c"Longest the pg_dialpad HTTP listener waits for a request's headers, its body, or the next request on an idle connection.",
        c"A client slower than this is answered 408 or disconnected.",
        &HTTP_READ_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"dialpad.http_tls_cert",
        c"PEM file of the certificate chain the pg_dialpad HTTP listener serves HTTPS with (empty: plain HTTP).",
        c"Set with dialpad.http_tls_key. Read again on reload: new connections use the new files; if they do not load, the old ones stay.",
        &HTTP_TLS_CERT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dialpad.http_tls_key",
        c"PEM file of the private key of dialpad.http_tls_cert.",
        c"Readable by the server's operating system user only. Read again on reload.",
        &HTTP_TLS_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"dialpad.webhook_secret",
        c"Retired in 0.2.0: the secret of 0.1.0's single webhook subscription.",
        c"Read only until ALTER EXTENSION pg_dialpad UPDATE, which moves it into the webhook source \"default\"; then use dialpad.add_source() and reset this setting.",
        &WEBHOOK_SECRET,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"dialpad.max_body_size",
        c"Largest webhook body dialpad.ingest_webhook() accepts.",
        c"Larger bodies are refused with SQLSTATE 54000 and nothing is stored.",
        &MAX_BODY_SIZE,
        1,
        // A text value is at most 1 GB: no larger body can reach the function anyway.
        (1 << 30) - 1,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"dialpad.max_event_age",
        c"Oldest event_timestamp dialpad.ingest_webhook() accepts (0 = no freshness check).",
        c"When set, events older than this, or more than two minutes in the future, are refused (replay protection).",
        &MAX_EVENT_AGE_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}

/// The processors: batch size, waiting, retries, the on/off switch.
fn define_processing_settings() {
    GucRegistry::define_int_guc(
        c"dialpad.batch_size",
        c"Maximum number of events a worker handles in one transaction.",
        c"",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.poll_interval",
        c"How long an idle worker sleeps before looking for events without being woken.",
        c"Workers are woken at the commit of every insert into dialpad.webhook_events; this is the fallback (e.g. for events whose retry time has come).",
        &POLL_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dialpad.max_attempts",
        c"Failed attempts after which an event is dead-lettered.",
        c"Between attempts an event waits 2^attempts seconds (at most an hour).",
        &MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.lock_timeout",
        c"Longest a processor waits for a lock before it leaves that call for a later batch.",
        c"The workers never wait longer (PostgreSQL's lock_timeout is set to this in their sessions); dialpad.process_events() uses it unless the caller set lock_timeout. A call whose row another transaction holds is deferred by a second, the other calls of the batch are applied.",
        &LOCK_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"dialpad.enabled",
        c"Whether the pg_dialpad background workers process events.",
        c"When off, the workers stay connected but idle; dialpad.process_events() still works.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// Partitions and retention (sql/maintenance.sql).
fn define_retention_settings() {
    GucRegistry::define_int_guc(
        c"dialpad.retention",
        c"How long events and rejected transitions are kept (0 = forever).",
        c"dialpad.run_maintenance() drops (or detaches) the partitions whose whole range is older than this; their pending and dead-lettered events move to the holding partition dialpad.webhook_events_held first.",
        &RETENTION_MIN,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_enum_guc(
        c"dialpad.retention_mode",
        c"What retention does with an expired partition: drop it, or detach it (for archiving).",
        c"A detached partition is an ordinary table in schema dialpad; archive and drop it yourself.",
        &RETENTION_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.partition_interval",
        c"Width of the time partitions of dialpad.webhook_events and dialpad.rejected_transitions.",
        c"Applies to partitions created from then on; existing ones keep their range.",
        &PARTITION_INTERVAL_MIN,
        1,
        // At most a year (366 days): with dialpad.partitions_ahead (up to 1000) the partitions'
        // bounds stay within timestamptz's range, so maintenance can never fail on them.
        527_040,
        GucContext::Suset,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"dialpad.partitions_ahead",
        c"How many partitions dialpad.run_maintenance() keeps created ahead of the current one.",
        c"",
        &PARTITIONS_AHEAD,
        0,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dialpad.maintenance_interval",
        c"How often the first pg_dialpad worker runs dialpad.run_maintenance() (0 = never: schedule it yourself).",
        c"",
        &MAINTENANCE_INTERVAL_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

pub(crate) fn invalid_transition() -> InvalidTransition {
    INVALID_TRANSITION.get()
}

pub(crate) fn database() -> String {
    DATABASE.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".into())
}

pub(crate) fn role() -> Option<String> {
    ROLE.get().map(|c| c.to_string_lossy().into_owned()).filter(|r| !r.is_empty())
}

pub(crate) fn workers() -> usize {
    WORKERS.get().max(0) as usize
}

pub(crate) fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

pub(crate) fn poll_interval() -> std::time::Duration {
    std::time::Duration::from_millis(POLL_INTERVAL_MS.get().max(1) as u64)
}

pub(crate) fn max_attempts() -> i32 {
    MAX_ATTEMPTS.get()
}

pub(crate) fn lock_timeout_ms() -> i32 {
    LOCK_TIMEOUT_MS.get().max(1)
}

pub(crate) fn enabled() -> bool {
    ENABLED.get()
}

pub(crate) fn webhook_secret() -> Option<Vec<u8>> {
    WEBHOOK_SECRET.get().map(|c| c.into_bytes()).filter(|s| !s.is_empty())
}

pub(crate) fn max_body_size() -> usize {
    MAX_BODY_SIZE.get().max(1) as usize
}

/// Seconds; 0 means off.
pub(crate) fn max_event_age() -> i64 {
    MAX_EVENT_AGE_S.get().max(0) as i64
}

/// How often the first worker runs maintenance; None when it never does.
pub(crate) fn maintenance_interval() -> Option<std::time::Duration> {
    let s = MAINTENANCE_INTERVAL_S.get();
    (s > 0).then(|| std::time::Duration::from_secs(s as u64))
}

fn non_empty(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get().map(|c| c.to_string_lossy().trim().to_string()).filter(|v| !v.is_empty())
}

/// dialpad.http_listen; None when no listener is wanted.
pub(crate) fn http_listen() -> Option<String> {
    non_empty(&HTTP_LISTEN)
}

pub(crate) fn http_role() -> Option<String> {
    non_empty(&HTTP_ROLE)
}

pub(crate) fn metrics_listen() -> Option<String> {
    non_empty(&METRICS_LISTEN)
}

pub(crate) fn http_max_connections() -> usize {
    HTTP_MAX_CONNECTIONS.get().max(1) as usize
}

pub(crate) fn http_queue_size() -> usize {
    HTTP_QUEUE_SIZE.get().max(1) as usize
}

/// (certificate, key) files of HTTPS: both or neither, or which one is missing.
pub(crate) fn http_tls() -> Result<Option<(String, String)>, &'static str> {
    match (non_empty(&HTTP_TLS_CERT), non_empty(&HTTP_TLS_KEY)) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err("dialpad.http_tls_cert is set but dialpad.http_tls_key is not"),
        (None, Some(_)) => Err("dialpad.http_tls_key is set but dialpad.http_tls_cert is not"),
    }
}

pub(crate) fn http_read_timeout_ms() -> u64 {
    HTTP_READ_TIMEOUT_MS.get().max(1) as u64
}
