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
    if is_root() {
        let mut c = Command::new("sudo");
        c.arg("-u").arg("postgres").arg("--").arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn check(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

impl Cluster {
    /// initdb + start, with extra postgresql.conf lines.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
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
        let bin = pg_bin();
        let data = dir.join("data");
        check(
            as_postgres(
                &bin.join("initdb"),
                &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
            ),
            "initdb",
        );
        let mut settings = format!(
            "port = 5432\nlisten_addresses = ''\nunix_socket_directories = '{}'\nshared_preload_libraries = 'pg_dialpad'\n\
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
        let c = Cluster { dir, port: 5432, bin };
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
        check(
            as_postgres(
                &self.bin.join("pg_ctl"),
                &["-D", self.data().to_str().unwrap(), "-l", self.dir.join("server.log").to_str().unwrap(), "-w", "-t", "60", "start"],
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
        let _ = as_postgres(&self.bin.join("pg_ctl"), &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]).output();
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

pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
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
