//! A private PostgreSQL cluster per test, with pg_dialpad preloaded: own data directory and
//! socket directory under target/, run as the `postgres` OS user when the tests run as root.
//! The extension must be installed (scripts/test does `cargo pgrx install` first).
#![allow(dead_code)]

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SAMPLE_EVENTS_SQL: &str = include_str!("../../scripts/sample_events.sql");

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("DIALPAD_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a command as the postgres OS user when we are root.
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    as_postgres_with_env(program, args, &[])
}

/// [`as_postgres`] with these variables in the command's environment (sudo resets it).
fn as_postgres_with_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    if is_root() {
        let mut c = Command::new("sudo");
        c.arg("-u").arg("postgres").arg("--");
        if !env.is_empty() {
            c.arg("env").args(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        c.arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.envs(env.iter().copied()).args(args);
        c
    }
}

fn check(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).expect("mkdir");
    check(
        {
            let mut c = Command::new("cp");
            c.arg("-a").arg(from).arg(to);
            c
        },
        "cp -a",
    );
}

/// The directories of a PostgreSQL installation, as its `pg_config` reports them (Debian's
/// split layout, or a relocatable tree such as the PyPI wheels' PostgreSQL 16 and 18).
#[derive(Clone)]
pub struct PgLayout {
    pub bindir: PathBuf,
    pub pkglibdir: PathBuf,
    pub sharedir: PathBuf,
    pub major: u32,
}

impl PgLayout {
    /// Whether Citus is installed in this PostgreSQL (tests/citus.rs).
    pub fn has_citus(&self) -> bool {
        self.pkglibdir.join("citus.so").exists()
    }

    pub fn of(bin: &Path) -> PgLayout {
        let out = check(
            {
                let mut c = Command::new(bin.join("pg_config"));
                c.args(["--bindir", "--pkglibdir", "--sharedir", "--version"]);
                c
            },
            "pg_config",
        );
        let lines: Vec<&str> = out.lines().collect();
        let version = lines[3].trim_start_matches("PostgreSQL ");
        PgLayout {
            bindir: PathBuf::from(lines[0]),
            pkglibdir: PathBuf::from(lines[1]),
            sharedir: PathBuf::from(lines[2]),
            major: version.split(['.', ' ']).next().and_then(|m| m.parse().ok()).expect("major version"),
        }
    }

    /// The installation the tests run against (`DIALPAD_PG_BIN`).
    pub fn current() -> PgLayout {
        PgLayout::of(&pg_bin())
    }

    /// The same layout mirrored under `root` (a package tree, or a copy).
    fn under(&self, root: &Path) -> PgLayout {
        let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        PgLayout {
            bindir: at(&self.bindir),
            pkglibdir: at(&self.pkglibdir),
            sharedir: at(&self.sharedir),
            major: self.major,
        }
    }
}

/// A private copy of the PostgreSQL installation (bin, lib, share), relocatable as Debian's
/// and the wheels' are: a test can install another pg_dialpad version into it without
/// touching the installation that other tests use.
pub struct PgInstall {
    pub root: PathBuf,
    layout: PgLayout,
}

impl PgInstall {
    /// Copies the installation of `DIALPAD_PG_BIN` (which holds the current pg_dialpad).
    pub fn copy(name: &str) -> PgInstall {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("it-pg")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let system = PgLayout::current();
        let layout = system.under(&root);
        // The directory holding bin/ (and lib/, and share/ in a relocatable tree), and the
        // share directory when it lives elsewhere (Debian: /usr/share/postgresql/15).
        let top = system.bindir.parent().unwrap();
        copy_tree(top, layout.bindir.parent().unwrap());
        if !system.sharedir.starts_with(top) {
            copy_tree(&system.sharedir, &layout.sharedir);
        }
        // The shared libraries a wheel's tree finds beside its package ($ORIGIN/../../../
        // <package>.libs from bin/).
        if let Some(outer) = top.parent().and_then(Path::parent) {
            for entry in std::fs::read_dir(outer).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().ends_with(".libs") && entry.path().is_dir() {
                    copy_tree(&entry.path(), &root.join(entry.path().strip_prefix("/").unwrap()));
                }
            }
        }
        PgInstall { root, layout }
    }

    pub fn bin(&self) -> PathBuf {
        self.layout.bindir.clone()
    }

    /// Installs pg_dialpad's files from `from`, a `cargo pgrx package` tree or another
    /// installation root ("/"): the library, the control file and every SQL script.
    pub fn install_pg_dialpad_from(&self, from: &Path) {
        let source = PgLayout::current().under(from);
        std::fs::copy(source.pkglibdir.join("pg_dialpad.so"), self.layout.pkglibdir.join("pg_dialpad.so"))
            .expect("copy library");
        for entry in std::fs::read_dir(source.sharedir.join("extension")).expect("extension dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("pg_dialpad") {
                std::fs::copy(&path, self.layout.sharedir.join("extension").join(&name)).expect("copy extension file");
            }
        }
    }

    /// Removes every pg_dialpad SQL script and the control file (before installing another version).
    pub fn remove_pg_dialpad_sql(&self) {
        let ext = self.layout.sharedir.join("extension");
        for entry in std::fs::read_dir(&ext).expect("extension dir") {
            let path = entry.expect("entry").path();
            if path.file_name().unwrap().to_string_lossy().starts_with("pg_dialpad") {
                std::fs::remove_file(path).expect("remove");
            }
        }
    }
}

impl Drop for PgInstall {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Released versions and their commits (scripts/released-versions).
pub fn released_versions() -> Vec<(String, String)> {
    include_str!("../../scripts/released-versions")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(v, c)| (v.to_string(), c.trim().to_string())))
        .collect()
}

/// The `cargo pgrx package` tree of a released version for the PostgreSQL under test (built
/// by scripts/test).
pub fn released_package(version: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("released")
        .join(format!("pg{}", PgLayout::current().major))
        .join(version);
    assert!(p.join(".complete").exists(), "{} is missing: scripts/test packages the released versions", p.display());
    p
}

impl Cluster {
    /// initdb + start, with extra postgresql.conf lines.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        Cluster::start_with(name, pg_bin(), conf)
    }

    /// Like [`Cluster::start`], with the binaries of another installation.
    pub fn start_with(name: &str, bin: PathBuf, conf: &[&str]) -> Cluster {
        Cluster::start_on(name, bin, 5432, conf)
    }

    /// Like [`Cluster::start_with`], listening on `port` (also on 127.0.0.1 when the
    /// configuration says so: the nodes of a Citus cluster connect to each other by TCP).
    pub fn start_on(name: &str, bin: PathBuf, port: u16, conf: &[&str]) -> Cluster {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("it-clusters");
        let dir = root.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("socket")).expect("create cluster dir");
        if is_root() {
            // the postgres user must reach the directory
            let mut p = dir.clone();
            while p.pop() {
                let _ = Command::new("chmod").arg("o+x").arg(&p).status();
                if p == Path::new("/") {
                    break;
                }
            }
            check(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        check(
            as_postgres(
                &bin.join("initdb"),
                &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
            ),
            "initdb",
        );
        let mut settings = format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nshared_preload_libraries = 'pg_dialpad'\n\
             max_worker_processes = 16\nlog_min_messages = log\nfsync = off\n",
            dir.join("socket").display()
        );
        for line in conf {
            settings.push_str(line);
            settings.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&settings);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        let c = Cluster { dir, port, bin };
        c.pg_ctl_start();
        c
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn pg_ctl_start(&self) {
        self.pg_ctl_start_with_env(&[]);
    }

    /// Starts the server with these variables in its environment.
    pub fn pg_ctl_start_with_env(&self, env: &[(&str, &str)]) {
        check(
            as_postgres_with_env(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data().to_str().unwrap(),
                    "-l",
                    self.dir.join("server.log").to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                env,
            ),
            "pg_ctl start",
        );
    }

    pub fn pg_ctl_stop(&self, mode: &str) {
        check(
            as_postgres(&self.bin.join("pg_ctl"), &["-D", self.data().to_str().unwrap(), "-m", mode, "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.dir.join("socket").display(), self.port)
    }

    pub fn connect_db(&self, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&self.conninfo(db), NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
    }

    pub fn connect(&self) -> Client {
        self.connect_db("postgres")
    }

    /// Runs a client program of the cluster's bin directory (psql, pg_dump, ...).
    pub fn tool(&self, program: &str, args: &[&str]) -> String {
        let socket = self.dir.join("socket");
        let port = self.port.to_string();
        let mut full = vec!["-h", socket.to_str().unwrap(), "-p", &port, "-U", "postgres"];
        full.extend_from_slice(args);
        check(as_postgres(&self.bin.join(program), &full), program)
    }

    /// A client with the extension created and the sample generator loaded.
    pub fn ready(&self) -> Client {
        let mut c = self.connect();
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_dialpad").expect("create extension");
        c.batch_execute(SAMPLE_EVENTS_SQL).expect("load sample generator");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"],
        )
        .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `sql` (returning one bool) until true, or panics after `secs`.
pub fn wait_until(c: &mut Client, sql: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(row) = c.query_one(sql, &[]) {
            if row.get::<_, bool>(0) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for: {sql}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sql` (an ALTER SYSTEM), reloads the configuration, and waits until every running
/// worker of this server has read it again: each publishes when it last read its settings
/// (dialpad.worker_stats().settings_read_at), and after that never starts a batch under the
/// old ones.
pub fn set_and_reload(c: &mut Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e)));
    let before: String = c.query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0);
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        c,
        &format!(
            "SELECT COALESCE(bool_and(settings_read_at >= '{before}'), true) FROM dialpad.worker_stats() WHERE pid IS NOT NULL"
        ),
        20,
    );
}

/// The JOSE header Dialpad signs with.
pub const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// A body signed as Dialpad signs it: an HS256 JWT of `claims` with the source's `secret`.
pub fn jwt(claims: &str, secret: &str) -> String {
    jwt_with_header(HS256_HEADER, claims, secret)
}

/// A compact JWT of `claims` under any `header`, signed with HMAC-SHA256 whatever the header
/// says (the tests forge headers: alg none, HS512, crit).
pub fn jwt_with_header(header: &str, claims: &str, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// "ok", or the SQLSTATE of the failed statement (its text when it has none: a lost
/// connection).
pub fn sqlstate_of<T>(result: Result<T, postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

/// [`sqlstate_of`] the statements in `sql`.
pub fn sqlstate(c: &mut Client, sql: &str) -> String {
    sqlstate_of(c.batch_execute(sql))
}

/// An error as a test report shows it: SQLSTATE, message, detail.
pub fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {} {}", d.code().code(), d.message(), d.detail().unwrap_or("")),
        None => e.to_string(),
    }
}

pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e))).get(0)
}

/// Worker pids from pg_stat_activity.
pub fn worker_pids(c: &mut Client) -> Vec<i32> {
    c.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialpad worker' ORDER BY pid", &[])
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Reconnects until the server accepts connections again (after a crash restart).
pub fn reconnect(cluster: &Cluster) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The old server may still be going down, or the new one recovering: retry the
        // whole sequence until a session survives it.
        if let Ok(mut c) = Client::connect(&cluster.conninfo("postgres"), NoTls) {
            if c.simple_query("SELECT 1").is_ok() && c.batch_execute(SAMPLE_EVENTS_SQL).is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "server did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records, per event, how many committed transactions marked it processed: exactly once
/// means every count is 1 in the end.
pub const AUDIT_SQL: &str = "
CREATE TABLE public.processed_marks (event_id bigint PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION public.count_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.processed_at IS NULL AND NEW.processed_at IS NOT NULL THEN
        INSERT INTO public.processed_marks VALUES (NEW.id, 1)
        ON CONFLICT (event_id) DO UPDATE SET n = processed_marks.n + 1;
    ELSIF OLD.processed_at IS NOT NULL AND NEW.processed_at IS NULL THEN
        UPDATE public.processed_marks SET n = n - 1 WHERE event_id = NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER count_mark AFTER UPDATE OF processed_at ON dialpad.webhook_events
    FOR EACH ROW EXECUTE FUNCTION public.count_mark();";

/// Delivers the events of `n` calls through dialpad.ingest_webhook in shuffled order, with
/// ~10% redelivered, in `chunks` transactions; remembers each call's kind in public.expected.
/// Returns how many distinct events were stored (a redelivery is the same event).
pub fn deliver(c: &mut Client, n: i32, first_call_id: i64, chunks: i32) -> i64 {
    let before = count(c, DISTINCT_EVENTS_SQL);
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS public.expected (call_id bigint PRIMARY KEY, kind text);
         CREATE TEMP TABLE deliveries AS
           SELECT e.call_id, e.kind, e.payload, random() AS r
             FROM pg_temp.dialpad_sample_events({n}, {first_call_id}, 0.7, false) e;
         INSERT INTO deliveries SELECT call_id, kind, payload, random() FROM deliveries WHERE random() < 0.1;
         INSERT INTO public.expected SELECT DISTINCT call_id, kind FROM deliveries ON CONFLICT DO NOTHING;"
    ))
    .expect("prepare deliveries");
    for chunk in 0..chunks {
        c.batch_execute(&format!(
            "SELECT count(dialpad.ingest_webhook(payload::text))
               FROM (SELECT payload FROM deliveries WHERE floor(r * {chunks}) = {chunk} ORDER BY r) d"
        ))
        .expect("deliver");
    }
    c.batch_execute("DROP TABLE deliveries").expect("drop deliveries");
    count(c, DISTINCT_EVENTS_SQL) - before
}

pub fn assert_calls_as_expected(c: &mut Client) {
    let wrong = count(
        c,
        "SELECT count(*) FROM public.expected x LEFT JOIN dialpad.calls k ON k.dialpad_call_id = x.call_id
          WHERE k.status IS DISTINCT FROM pg_temp.dialpad_expected_status(x.kind)
             OR k.direction IS DISTINCT FROM CASE WHEN x.kind = 'outbound_answered' THEN 'outbound' ELSE 'inbound' END",
    );
    let detail: Vec<String> = c
        .query(
            "SELECT x.call_id || ' ' || x.kind || ' -> ' || coalesce(k.status, 'NO ROW') FROM public.expected x
               LEFT JOIN dialpad.calls k ON k.dialpad_call_id = x.call_id
              WHERE k.status IS DISTINCT FROM pg_temp.dialpad_expected_status(x.kind) LIMIT 5",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(wrong, 0, "calls not as expected: {detail:?}");
    assert_eq!(count(c, "SELECT count(*) FROM dialpad.calls"), count(c, "SELECT count(*) FROM public.expected"));
}

/// Distinct events in the inbox, in any version's schema: deliveries with the same
/// de-duplication key are one event.
pub const DISTINCT_EVENTS_SQL: &str =
    "SELECT count(DISTINCT coalesce(dedupe_key, 'id ' || id)) FROM dialpad.webhook_events";

/// Every event applied once: one applied (not duplicate) delivery per key, each marked
/// processed by exactly one committed transaction.
pub fn assert_exactly_once(c: &mut Client, delivered: i64) {
    assert_eq!(
        count(c, "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NOT NULL AND duplicate_of IS NULL"),
        delivered
    );
    assert_eq!(
        count(c, "SELECT count(*) FROM (SELECT dedupe_key FROM dialpad.webhook_events WHERE dedupe_key IS NOT NULL AND duplicate_of IS NULL GROUP BY 1 HAVING count(*) > 1) d"),
        0,
        "a redelivery was applied as a second event"
    );
    assert_eq!(count(c, "SELECT count(*) FROM public.processed_marks WHERE n <> 1"), 0, "an event was marked twice");
    assert_eq!(
        count(c, "SELECT count(*) FROM public.processed_marks m JOIN dialpad.webhook_events e ON e.id = m.event_id WHERE e.duplicate_of IS NULL"),
        delivered
    );
}

/// Waits until the server has gone through its crash reset (the log says so).
pub fn wait_for_reset(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cluster.log().contains("all server processes terminated; reinitializing") {
        assert!(std::time::Instant::now() < deadline, "no crash reset:\n{}", cluster.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn drained(c: &mut Client, secs: u64) {
    wait_until(c, "SELECT pending = 0 FROM dialpad.queue_stats", secs);
}

/// A Citus cluster of private nodes on 127.0.0.1 (tests/citus.rs, the Citus benchmarks).
pub struct Citus {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
}

/// Every node's settings: reachable on 127.0.0.1, Citus loaded before pg_dialpad.
pub const CITUS_NODE_CONF: &[&str] = &[
    "listen_addresses = '127.0.0.1'",
    "shared_preload_libraries = 'citus,pg_dialpad'",
    "max_prepared_transactions = 20",
];

impl Citus {
    /// A coordinator and two worker nodes, with `conf` after [`CITUS_NODE_CONF`], Citus
    /// joined in database postgres. Ports from a range of this process's own; `slot` tells
    /// the clusters of one process apart.
    pub fn start(tag: &str, slot: u16, conf: &[&str]) -> Citus {
        let base = 29_400 + (std::process::id() % 100) as u16 * 8 + slot * 4;
        let bin = PgLayout::current().bindir;
        let conf: Vec<&str> = CITUS_NODE_CONF.iter().chain(conf).copied().collect();
        let coordinator = Cluster::start_on(&format!("{tag}-coordinator"), bin.clone(), base, &conf);
        let workers: Vec<Cluster> =
            (1..=2).map(|i| Cluster::start_on(&format!("{tag}-worker{i}"), bin.clone(), base + i, &conf)).collect();
        let citus = Citus { coordinator, workers };
        citus.join("postgres");
        citus
    }

    /// Citus in `db` on every node, the workers added to the coordinator's metadata.
    pub fn join(&self, db: &str) {
        for node in self.nodes() {
            if db != "postgres" {
                node.connect().batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
            }
            node.connect_db(db).batch_execute("CREATE EXTENSION citus").unwrap();
        }
        let mut c = self.coordinator.connect_db(db);
        c.batch_execute(&format!("SELECT citus_set_coordinator_host('127.0.0.1', {})", self.coordinator.port)).unwrap();
        for w in &self.workers {
            c.batch_execute(&format!("SELECT citus_add_node('127.0.0.1', {})", w.port)).unwrap();
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.coordinator).chain(self.workers.iter())
    }
}

/// Every `.rs` file under `dir`, recursively.
pub fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
