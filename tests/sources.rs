//! Webhook sources against running clusters: two sources side by side, rotation with an
//! overlap, refusals with SQLSTATE 28000 and the reason in the DETAIL (and nothing stored),
//! JWT `exp`/`nbf`/`crit`, secrets that no other role can read (with or without preload,
//! in the table, in a dump), and row-level security per company on the calls' source.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use postgres::Client;

const ACME: &str = "acme-secret-0123456789";
const GLOBEX: &str = "globex-secret-9876543210";

fn event(call_id: i64, state: &str, ts: i64) -> String {
    format!(r#"{{"call_id": {call_id}, "state": "{state}", "event_timestamp": {ts}, "direction": "inbound"}}"#)
}

/// "ok", or the SQLSTATE and DETAIL of the error of `ingest_webhook(body, source)`.
fn ingest(c: &mut Client, body: &str, source: Option<&str>) -> String {
    match c.query_one("SELECT dialpad.ingest_webhook($1, $2)", &[&body, &source]) {
        Ok(_) => "ok".into(),
        Err(e) => match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.detail().unwrap_or("")).trim().to_string(),
            None => format!("{e}"),
        },
    }
}

fn add_sources(c: &mut Client) {
    c.execute("SELECT dialpad.add_source('acme', $1, '{\"company\": \"Acme\"}')", &[&ACME]).unwrap();
    c.execute("SELECT dialpad.add_source('globex', $1, '{\"company\": \"Globex\"}')", &[&GLOBEX]).unwrap();
}

#[test]
fn two_sources_ingest_side_by_side_and_refusals_say_why_and_store_nothing() {
    let cluster = Cluster::start("sources", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    assert_eq!(ingest(&mut c, &jwt(&event(1, "ringing", 1000), ACME), Some("acme")), "ok");
    assert_eq!(ingest(&mut c, &jwt(&event(2, "ringing", 1000), GLOBEX), Some("globex")), "ok");
    assert_eq!(ingest(&mut c, &jwt(&event(1, "hangup", 2000), ACME), Some("acme")), "ok");
    let stored = count(&mut c, "SELECT count(*) FROM dialpad.webhook_events");
    let now = count(&mut c, "SELECT extract(epoch FROM now())::int8");
    let refusals = [
        (
            "signed with the other source's secret",
            jwt(&event(3, "ringing", 1), GLOBEX),
            Some("acme"),
            "28000 bad signature",
        ),
        ("unknown source", jwt(&event(3, "ringing", 1), ACME), Some("initech"), "28000 unknown source"),
        ("two sources, none named", jwt(&event(3, "ringing", 1), ACME), None, "22023"),
        ("plain JSON through a source", event(3, "ringing", 1), Some("acme"), "28000 unsigned body"),
        (
            "expired an hour ago",
            jwt(&format!(r#"{{"call_id": 3, "state": "ringing", "exp": {}}}"#, now - 3600), ACME),
            Some("acme"),
            "28000 expired",
        ),
        (
            "not valid before tomorrow",
            jwt(&format!(r#"{{"call_id": 3, "state": "ringing", "nbf": {}}}"#, now + 86400), ACME),
            Some("acme"),
            "28000 not yet valid",
        ),
        (
            "critical header extension",
            jwt_with_header(r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#, &event(3, "ringing", 1), ACME),
            Some("acme"),
            "28000 unsupported crit",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(event(3, "ringing", 1))
            ),
            Some("acme"),
            "28000 unsupported algorithm",
        ),
    ];
    for (what, body, source, expected) in &refusals {
        assert_eq!(&ingest(&mut c, body, *source), expected, "{what}");
    }
    // exp and nbf within the leeway, and in the future / past as they should be, pass.
    let fresh = format!(r#"{{"call_id": 4, "state": "ringing", "exp": {}, "nbf": {}}}"#, now + 600, now - 10);
    assert_eq!(ingest(&mut c, &jwt(&fresh, ACME), Some("acme")), "ok");
    c.batch_execute("SELECT dialpad.disable_source('globex')").unwrap();
    assert_eq!(ingest(&mut c, &jwt(&event(2, "hangup", 2000), GLOBEX), Some("globex")), "28000 disabled source");
    c.batch_execute("SELECT dialpad.enable_source('globex')").unwrap();
    assert_eq!(ingest(&mut c, &jwt(&event(2, "hangup", 2000), GLOBEX), Some("globex")), "ok");
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events"), stored + 2, "refusals stored nothing");

    drained(&mut c, 30);
    let sources: Vec<String> = c
        .query("SELECT dialpad_call_id || ' ' || source || ' ' || status FROM dialpad.calls ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sources, ["1 acme missed", "2 globex missed", "4 acme ringing"]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE source IS NULL"), 0);

    // Management errors.
    let state = |c: &mut Client, sql: &str| match c.batch_execute(sql) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_default(),
    };
    assert_eq!(state(&mut c, "SELECT dialpad.add_source('acme', 'x')"), "42710");
    assert_eq!(state(&mut c, "SELECT dialpad.add_source('bad name', 'x')"), "22023");
    assert_eq!(state(&mut c, "SELECT dialpad.add_source('x', '')"), "22023");
    assert_eq!(state(&mut c, "SELECT dialpad.add_source('x', 'y', '[1]')"), "22023");
    assert_eq!(state(&mut c, "SELECT dialpad.rotate_secret('nope', 'x')"), "42704");
    assert_eq!(state(&mut c, "SELECT dialpad.rotate_secret('acme', 'x', interval '-1 hour')"), "22023");
    assert_eq!(state(&mut c, "SELECT dialpad.drop_source('nope')"), "42704");
    // With one source left, a delivery need not name it.
    c.batch_execute("SELECT dialpad.drop_source('globex')").unwrap();
    assert_eq!(ingest(&mut c, &jwt(&event(5, "ringing", 1), ACME), None), "ok");
}

#[test]
fn a_rotation_accepts_the_old_secret_for_the_overlap_and_refuses_it_after() {
    let cluster = Cluster::start("rotation", &["dialpad.workers = 0"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    let new = "acme-new-secret-after-rotation";
    c.execute("SELECT dialpad.rotate_secret('acme', $1, interval '2 seconds')", &[&new]).unwrap();
    // Another session (its own cache of the sources) sees the rotation at once.
    let mut other = cluster.connect();
    assert_eq!(ingest(&mut other, &jwt(&event(10, "ringing", 1), new), Some("acme")), "ok");
    assert_eq!(
        ingest(&mut other, &jwt(&event(11, "ringing", 1), ACME), Some("acme")),
        "ok",
        "old secret, in the overlap"
    );
    let until = count(
        &mut c,
        "SELECT (extract(epoch FROM previous_secret_valid_until - now()) * 1000)::int8 FROM dialpad.source_list WHERE name = 'acme'",
    );
    assert!(until > 0 && until <= 2000, "{until} ms of overlap left");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(ingest(&mut other, &jwt(&event(12, "ringing", 1), ACME), Some("acme")), "28000 bad signature");
    assert_eq!(ingest(&mut other, &jwt(&event(13, "ringing", 1), new), Some("acme")), "ok");
    // No overlap: the old secret stops at once.
    c.execute("SELECT dialpad.rotate_secret('globex', 'globex-2', interval '0')", &[]).unwrap();
    assert_eq!(ingest(&mut other, &jwt(&event(14, "ringing", 1), GLOBEX), Some("globex")), "28000 bad signature");
    assert_eq!(ingest(&mut other, &jwt(&event(15, "ringing", 1), "globex-2"), Some("globex")), "ok");
}

/// What `role` gets from `sql`: "ok", or the SQLSTATE.
fn as_role(c: &mut Client, role: &str, sql: &str) -> String {
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let out = match c.batch_execute(sql) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| format!("{e}")),
    };
    c.batch_execute("RESET ROLE").unwrap();
    out
}

fn secrets_stay_hidden(cluster: &Cluster) {
    let mut c = cluster.ready();
    add_sources(&mut c);
    c.batch_execute(
        "CREATE ROLE nobody LOGIN; CREATE ROLE web LOGIN IN ROLE dialpad_ingest;
         CREATE ROLE analyst LOGIN IN ROLE dialpad_reader; CREATE ROLE dba LOGIN IN ROLE dialpad_admin;",
    )
    .unwrap();
    for role in ["nobody", "web", "analyst", "dba"] {
        assert_eq!(as_role(&mut c, role, "SELECT * FROM dialpad.sources"), "42501", "{role} reads dialpad.sources");
        assert_eq!(as_role(&mut c, role, "SELECT dialpad.add_source('evil', 'x')"), "42501", "{role} adds a source");
        assert_eq!(as_role(&mut c, role, "SELECT dialpad.rotate_secret('acme', 'x')"), "42501", "{role} rotates");
    }
    assert_eq!(as_role(&mut c, "analyst", "SELECT name, labels FROM dialpad.source_list"), "ok");
    // The web tier ingests through a source, and cannot name one by a plain INSERT.
    let body = jwt(&event(20, "ringing", 1), ACME);
    c.batch_execute("SET ROLE web").unwrap();
    assert!(c.query_one("SELECT dialpad.ingest_webhook($1, 'acme')", &[&body]).is_ok());
    let spoof = c.batch_execute(
        "INSERT INTO dialpad.webhook_events (payload, source) VALUES ('{\"call_id\": 21, \"state\": \"ringing\"}', 'globex')",
    );
    assert_eq!(spoof.unwrap_err().code().map(|s| s.code()), Some("42501"));
    c.batch_execute("RESET ROLE").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.webhook_events WHERE call_id = 20 AND source = 'acme'"), 1);
    // Not in plain sight in the table, nor in a dump; no setting holds it.
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM dialpad.sources WHERE position('\\x{}'::bytea IN secret) > 0", hex(ACME))
        ),
        0
    );
    let dump = cluster.tool("pg_dump", &["-d", "postgres"]);
    assert!(dump.contains("COPY dialpad.sources"), "the sources are dumped (a config table)");
    assert!(!dump.contains(ACME) && !dump.contains(&hex(ACME)), "the dump shows the secret");
    let without = cluster.tool("pg_dump", &["-d", "postgres", "--exclude-table-data=dialpad.sources"]);
    assert!(!without.contains("COPY dialpad.sources"), "docs/security.md's way to leave the sources out of a dump");
    // A failing call with the secret as a bind parameter: at the default log levels the
    // server logs the error and its statement, which holds $1, not the secret.
    let e = c.execute("SELECT dialpad.add_source('acme', $1)", &[&ACME]).unwrap_err();
    assert_eq!(e.code().map(|s| s.code()), Some("42710"), "{e:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(cluster.log().contains("already exists"), "the failure is logged:\n{}", cluster.log());
    assert!(!cluster.log().contains(ACME), "the secret is in the server log");
    let settings = count(
        &mut c,
        &format!("SELECT count(*) FROM pg_settings WHERE setting LIKE '%{ACME}%' OR reset_val LIKE '%{ACME}%'"),
    );
    assert_eq!(settings, 0);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn no_other_role_can_read_a_secret_with_preload() {
    let cluster = Cluster::start("secrets-preload", &["dialpad.workers = 0", "log_min_messages = warning"]);
    secrets_stay_hidden(&cluster);
}

#[test]
fn no_other_role_can_read_a_secret_without_preload() {
    let cluster = Cluster::start("secrets-nopreload", &["shared_preload_libraries = ''", "log_min_messages = warning"]);
    secrets_stay_hidden(&cluster);
}

#[test]
fn row_level_security_per_company_as_in_the_readme() {
    let cluster = Cluster::start("rls", &["dialpad.workers = 1"]);
    let mut c = cluster.ready();
    add_sources(&mut c);
    for (id, secret, source) in [(31, ACME, "acme"), (32, ACME, "acme"), (33, GLOBEX, "globex")] {
        assert_eq!(ingest(&mut c, &jwt(&event(id, "ringing", 1), secret), Some(source)), "ok");
    }
    drained(&mut c, 30);
    // The recipe of docs/security.md, as written there.
    let doc = include_str!("../docs/security.md");
    let at = doc.find("CREATE ROLE acme_analyst").expect("docs/security.md has the recipe");
    let start = doc[..at].rfind("```sql").expect("recipe block start") + "```sql".len();
    let end = at + doc[at..].find("```").expect("recipe block end");
    c.batch_execute(&doc[start..end]).unwrap();
    let seen = |c: &mut Client, role: &str| -> Vec<i64> {
        c.batch_execute(&format!("SET ROLE {role}")).unwrap();
        let ids = c
            .query("SELECT dialpad_call_id FROM dialpad.calls ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        c.batch_execute("RESET ROLE").unwrap();
        ids
    };
    assert_eq!(seen(&mut c, "acme_analyst"), [31, 32]);
    assert_eq!(seen(&mut c, "globex_analyst"), [33]);
    // The worker (the table's owner) still writes every company's calls.
    assert_eq!(ingest(&mut c, &jwt(&event(33, "hangup", 2), GLOBEX), Some("globex")), "ok");
    drained(&mut c, 30);
    assert_eq!(count(&mut c, "SELECT count(*) FROM dialpad.calls WHERE status = 'missed'"), 1);
}
