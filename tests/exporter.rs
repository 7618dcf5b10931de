//! Monitoring where DBAs look: Debian's Prometheus postgres exporter runs against a cluster
//! with pg_dialpad, with scripts/monitoring/postgres_exporter.yaml, and its /metrics (read
//! over loopback) carries the queue, the workers and ingestion (in all and by source, outcome
//! and reason) with the right values. The
//! example alert rules are unit-tested with promtool.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/monitoring")
}

struct Exporter {
    child: Child,
    port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    fn start(cluster: &Cluster) -> Exporter {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--extend.query-path={}", monitoring().join("postgres_exporter.yaml").display()))
            .arg("--disable-default-metrics")
            .arg("--disable-settings-metrics")
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "host={} port={} user=exporter dbname=postgres sslmode=disable",
                    cluster.dir.join("socket").display(),
                    cluster.port
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-postgres-exporter");
        Exporter { child, port }
    }

    /// GET /metrics over loopback: (series, value) of every pg_dialpad sample.
    fn scrape(&self) -> Vec<(String, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            match std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(mut s) => {
                    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
                    let mut text = String::new();
                    s.read_to_string(&mut text).unwrap();
                    if text.contains("pg_dialpad_queue_pending") || Instant::now() > deadline {
                        break text;
                    }
                }
                Err(_) if Instant::now() < deadline => {}
                Err(e) => panic!("exporter not listening: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        body.lines()
            .filter(|l| l.starts_with("pg_dialpad_"))
            .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
            .collect()
    }
}

/// The value of `series`: a metric name with, optionally, labels it must carry
/// (`name{worker="0"}`); the exporter adds labels of its own (`server`).
fn value(metrics: &[(String, f64)], series: &str) -> f64 {
    let (name, wanted) = match series.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}').split(',').collect::<Vec<_>>()),
        None => (series, Vec::new()),
    };
    metrics
        .iter()
        .find(|(k, _)| {
            let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && wanted.iter().all(|w| labels.contains(w))
        })
        .unwrap_or_else(|| panic!("{series} not in /metrics: {metrics:?}"))
        .1
}

#[test]
fn the_exporter_serves_the_queue_the_workers_and_ingestion() {
    if !std::path::Path::new(EXPORTER).exists() {
        panic!("{EXPORTER} is missing: scripts/lib.sh installs prometheus-postgres-exporter");
    }
    let cluster = Cluster::start("exporter", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    c.batch_execute("CREATE ROLE exporter LOGIN IN ROLE dialpad_reader").unwrap();
    set_and_reload(&mut c, "ALTER SYSTEM SET dialpad.enabled = off");

    for (call, state) in [(1, "ringing"), (1, "hangup"), (2, "ringing"), (3, "ringing")] {
        c.execute(
            "SELECT dialpad.ingest_webhook(jsonb_build_object('call_id', $1::int8, 'state', $2::text, 'event_timestamp', 1787158716000 + $1 * 10 + length($2))::text)",
            &[&(call as i64), &state],
        )
        .unwrap();
    }
    c.batch_execute(
        "SELECT dialpad.ingest_webhook('{\"call_id\": 2, \"state\": \"ringing\", \"event_timestamp\": 1787158716027}')",
    )
    .unwrap();
    assert!(c.batch_execute("SELECT dialpad.ingest_webhook('{\"call_id\": ')").is_err());
    c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, received_at) VALUES ('\"junk\"', now() - interval '90 seconds')",
    )
    .unwrap();

    let exporter = Exporter::start(&cluster);
    let m = exporter.scrape();
    assert_eq!(value(&m, "pg_dialpad_queue_pending"), 5.0, "{m:?}");
    assert_eq!(value(&m, "pg_dialpad_queue_due"), 5.0);
    assert_eq!(value(&m, "pg_dialpad_queue_dead"), 0.0);
    let age = value(&m, "pg_dialpad_queue_oldest_pending_age_seconds");
    assert!((89.0..600.0).contains(&age), "oldest pending age {age}");
    assert_eq!(value(&m, "pg_dialpad_ingest_accepted"), 4.0);
    assert_eq!(value(&m, "pg_dialpad_ingest_duplicates"), 1.0);
    assert_eq!(value(&m, "pg_dialpad_ingest_rejected"), 1.0);
    let by = |labels: &str| value(&m, &format!("pg_dialpad_ingest_deliveries_total{{{labels}}}"));
    assert_eq!(by(r#"source="(none)",outcome="accepted""#), 4.0);
    assert_eq!(by(r#"source="(none)",outcome="duplicate""#), 1.0);
    assert_eq!(by(r#"source="(none)",outcome="rejected",reason="malformed""#), 1.0);
    assert_eq!(value(&m, "pg_dialpad_worker_running{worker=\"0\"}"), 1.0);
    assert_eq!(value(&m, "pg_dialpad_launcher_running"), 1.0);
    assert_eq!(value(&m, "pg_dialpad_worker_events_handled{worker=\"0\"}"), 0.0);

    c.batch_execute("ALTER SYSTEM RESET dialpad.enabled").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(&mut c, "SELECT pending = 0 FROM dialpad.queue_stats", 60);
    let m = exporter.scrape();
    assert_eq!(value(&m, "pg_dialpad_queue_pending"), 0.0, "{m:?}");
    assert_eq!(value(&m, "pg_dialpad_queue_oldest_pending_age_seconds"), 0.0);
    assert_eq!(value(&m, "pg_dialpad_queue_dead"), 1.0);
    assert_eq!(value(&m, "pg_dialpad_worker_events_handled{worker=\"0\"}"), 5.0);
    assert_eq!(value(&m, "pg_dialpad_worker_dead_lettered{worker=\"0\"}"), 1.0);
    // How many, and why: the dead events by reason and source (dialpad.dead_event_reasons).
    assert_eq!(
        value(&m, "pg_dialpad_dead_events_events{reason=\"payload is not a JSON object\",source=\"\"}"),
        1.0,
        "{m:?}"
    );
    let age = value(&m, "pg_dialpad_worker_last_batch_age_seconds{worker=\"0\"}");
    assert!((0.0..60.0).contains(&age), "last batch age {age}");
}

#[test]
fn the_example_alert_rules_fire_as_documented() {
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(monitoring())
        .output()
        .expect("promtool (Debian's prometheus package; scripts/lib.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    let out =
        Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(monitoring()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
