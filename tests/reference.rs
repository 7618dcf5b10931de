//! docs/reference.md cannot drift from the extension: it is compared with the catalog of a
//! fresh install. Every function of schema dialpad (pg_proc), every table and view (pg_class)
//! and every `dialpad.*` setting (pg_settings, and src/gucs.rs for the hidden ones) has an
//! entry `#### `name`` there, and every entry names an object that exists. Each entry quotes
//! the object's COMMENT ON (a setting: its descriptions) word for word in a `> ` block, and
//! states what the catalog says: a function's arguments, result, grantees and SECURITY
//! DEFINER; a relation's kind and columns; a setting's type, default, unit and context.
//! Every SQLSTATE the code raises (ERRCODE_* in src/, ERRCODE = '…' in the SQL a fresh
//! install runs) is in the SQLSTATE table, and each row of that table is raised somewhere,
//! with the code PostgreSQL gives its condition name.

mod common;
use common::*;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const REFERENCE: &str = include_str!("../docs/reference.md");

/// One `#### `name`` entry of docs/reference.md: its section (`## …`) and its lines.
struct Entry {
    section: String,
    lines: Vec<String>,
}

impl Entry {
    /// The first `> ` block, whitespace collapsed: the quoted comment.
    fn quote(&self) -> String {
        let quoted: Vec<&str> = self
            .lines
            .iter()
            .skip_while(|l| !l.starts_with('>'))
            .take_while(|l| l.starts_with('>'))
            .map(|l| l.trim_start_matches('>').trim())
            .collect();
        normalize(&quoted.join(" "))
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.trim() == line)
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The entries of the reference, by name (the text between the backquotes of the heading).
fn entries() -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    let mut current: Option<(String, Entry)> = None;
    for line in REFERENCE.lines() {
        let heading = line.starts_with('#');
        if heading {
            if let Some((name, e)) = current.take() {
                assert!(out.insert(name.clone(), e).is_none(), "docs/reference.md: {name} has two entries");
            }
        }
        if let Some(s) = line.strip_prefix("## ") {
            section = s.trim().to_string();
        } else if let Some(name) = line.strip_prefix("#### `").and_then(|l| l.strip_suffix('`')) {
            current = Some((name.to_string(), Entry { section: section.clone(), lines: Vec::new() }));
        } else if let Some((_, e)) = current.as_mut() {
            e.lines.push(line.to_string());
        }
    }
    if let Some((name, e)) = current {
        assert!(out.insert(name.clone(), e).is_none(), "docs/reference.md: {name} has two entries");
    }
    out
}

fn in_section<'a>(all: &'a BTreeMap<String, Entry>, section: &str) -> BTreeMap<&'a str, &'a Entry> {
    all.iter().filter(|(_, e)| e.section == section).map(|(n, e)| (n.as_str(), e)).collect()
}

/// Names only in one of the two sets, said the way a DBA fixes them.
fn same_names(section: &str, documented: BTreeSet<String>, catalog: BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for n in catalog.difference(&documented) {
        problems.push(format!("{section}: {n} exists but has no entry in docs/reference.md"));
    }
    for n in documented.difference(&catalog) {
        problems.push(format!("{section}: docs/reference.md has an entry for {n}, which does not exist"));
    }
    problems
}

fn functions(c: &mut Client, all: &BTreeMap<String, Entry>) -> Vec<String> {
    let rows = c
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text, pg_catalog.pg_get_function_arguments(p.oid),
                    pg_catalog.pg_get_function_result(p.oid), p.prosecdef,
                    pg_catalog.obj_description(p.oid, 'pg_proc'),
                    (SELECT pg_catalog.string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                                                  ', ' ORDER BY 1)
                       FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                      WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner)
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'dialpad'::regnamespace",
            &[],
        )
        .unwrap();
    let documented = in_section(all, "Functions");
    let mut problems = same_names(
        "function",
        documented.keys().map(|s| s.to_string()).collect(),
        rows.iter().map(|r| r.get::<_, String>(0)).collect(),
    );
    for r in &rows {
        let (sig, name, args, result, secdef): (String, String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let comment: Option<String> = r.get(5);
        let grantees: Option<String> = r.get(6);
        let Some(e) = documented.get(sig.as_str()) else { continue };
        let Some(comment) = comment else {
            problems.push(format!("function {sig} has no COMMENT ON"));
            continue;
        };
        if e.quote() != normalize(&comment) {
            problems.push(format!(
                "function {sig}: the reference quotes\n  {}\nbut its comment is\n  {comment}",
                e.quote()
            ));
        }
        let call = format!("`dialpad.{name}({args}) → {result}`");
        if !e.has_line(&call) {
            problems.push(format!("function {sig}: the reference lacks the line {call}"));
        }
        let who = match grantees {
            None => "the owner only".to_string(),
            Some(g) => g.split(", ").map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", "),
        };
        let executable = format!("Executable by: {who}{}", if secdef { " · security definer" } else { "" });
        if !e.has_line(&executable) {
            problems.push(format!("function {sig}: the reference lacks the line {executable}"));
        }
    }
    problems
}

fn relations(c: &mut Client, all: &BTreeMap<String, Entry>) -> Vec<String> {
    let rows = c
        .query(
            "SELECT 'dialpad.' || c.relname, c.relkind::text, c.relispartition,
                    pg_catalog.obj_description(c.oid, 'pg_class'),
                    (SELECT pg_catalog.string_agg('`' || a.attname || '`', ', ' ORDER BY a.attnum)
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
               FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'dialpad'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[],
        )
        .unwrap();
    let documented = in_section(all, "Tables and views");
    let mut problems = same_names(
        "relation",
        documented.keys().map(|s| s.to_string()).collect(),
        rows.iter().map(|r| r.get::<_, String>(0)).collect(),
    );
    for r in &rows {
        let (name, kind, partition): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        let comment: Option<String> = r.get(3);
        let columns: String = r.get(4);
        let Some(e) = documented.get(name.as_str()) else { continue };
        let Some(comment) = comment else {
            problems.push(format!("relation {name} has no COMMENT ON"));
            continue;
        };
        if e.quote() != normalize(&comment) {
            problems.push(format!(
                "relation {name}: the reference quotes\n  {}\nbut its comment is\n  {comment}",
                e.quote()
            ));
        }
        let kind = match kind.as_str() {
            "r" => "table",
            "p" => "partitioned table",
            "v" => "view",
            "m" => "materialized view",
            _ => "foreign table",
        };
        let kind = format!("Kind: {kind}{}", if partition { " (a partition)" } else { "" });
        if !e.has_line(&kind) {
            problems.push(format!("relation {name}: the reference lacks the line {kind}"));
        }
        let columns = format!("Columns: {columns}");
        if !e.has_line(&columns) {
            problems.push(format!("relation {name}: the reference lacks the line {columns}"));
        }
    }
    problems
}

/// The settings src/gucs.rs defines (pg_settings hides those marked NO_SHOW_ALL).
fn settings_in_source() -> BTreeSet<String> {
    let source = include_str!("../src/gucs.rs");
    source
        .split("c\"dialpad.")
        .skip(1)
        .filter_map(|rest| {
            // A setting's name, not a description that starts with a function's name.
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            rest[name.len()..].starts_with('"').then(|| format!("dialpad.{name}"))
        })
        .collect()
}

fn settings(c: &mut Client, all: &BTreeMap<String, Entry>) -> Vec<String> {
    let rows = c
        .query(
            "SELECT name, vartype, boot_val, coalesce(unit, ''), context, short_desc, coalesce(extra_desc, '')
               FROM pg_catalog.pg_settings WHERE name LIKE 'dialpad.%'",
            &[],
        )
        .unwrap();
    let documented = in_section(all, "Settings");
    let mut catalog: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert!(catalog.contains("dialpad.workers"), "the cluster preloads pg_dialpad: {catalog:?}");
    catalog.extend(settings_in_source());
    let mut problems = same_names("setting", documented.keys().map(|s| s.to_string()).collect(), catalog);
    for r in &rows {
        let (name, vartype, boot, unit, context, short, extra): (
            String,
            String,
            Option<String>,
            String,
            String,
            String,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        let Some(e) = documented.get(name.as_str()) else { continue };
        let described = normalize(&format!("{short} {extra}"));
        if e.quote() != described {
            problems.push(format!(
                "setting {name}: the reference quotes\n  {}\nbut pg_settings says\n  {described}",
                e.quote()
            ));
        }
        let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
        let default = boot.map_or("default none".to_string(), |b| format!("default `{b}`{unit}"));
        let line = format!("Type `{vartype}` · {default} · context `{context}`");
        if !e.has_line(&line) {
            problems.push(format!("setting {name}: the reference lacks the line {line}"));
        }
    }
    problems
}

/// Condition names of the SQLSTATEs the code raises: PgSqlErrorCode::ERRCODE_* in src/ (the
/// C macro names, whose class prefixes T_R_ and E_R_I_E_ PL/pgSQL's names lack) and
/// ERRCODE = '…' in the SQL files of a fresh install and of the current upgrade script.
fn raised_conditions() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let sources: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let mut names = BTreeSet::new();
    for text in &sources {
        for rest in text.split("ERRCODE_").skip(1) {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            let name = name.to_lowercase();
            let name = name.strip_prefix("t_r_").or_else(|| name.strip_prefix("e_r_i_e_")).unwrap_or(&name);
            names.insert(name.to_string());
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    for entry in std::fs::read_dir(root.join("sql")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        // sql/upgrade/ holds the current upgrade script's source (the script itself is read).
        if path.is_dir() {
            continue;
        }
        // Released upgrade scripts are history; the current one is what an upgrade runs now.
        if file.starts_with("pg_dialpad--") && !file.ends_with(&format!("--{version}.sql")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for rest in text.split("ERRCODE = '").skip(1) {
            names.insert(rest[..rest.find('\'').unwrap()].to_lowercase());
        }
    }
    names
}

fn sqlstates(c: &mut Client) -> Vec<String> {
    let section = REFERENCE.split("\n## SQLSTATEs\n").nth(1).expect("docs/reference.md has a section ## SQLSTATEs");
    let section = section.split("\n## ").next().unwrap();
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
        table.insert(cells[2].to_string(), cells[1].to_string());
    }
    let mut problems = same_names("SQLSTATE", table.keys().cloned().collect(), raised_conditions());
    for (name, code) in &table {
        // PL/pgSQL knows error conditions only; a WARNING's class is 01000.
        let actual: String = if name == "warning" {
            "01000".into()
        } else {
            c.query_one("SELECT pg_temp.dialpad_reference_sqlstate($1)", &[name]).unwrap().get(0)
        };
        if &actual != code {
            problems.push(format!("SQLSTATE: the reference gives {name} the code {code}, PostgreSQL {actual}"));
        }
    }
    problems
}

#[test]
fn the_reference_lists_every_object_setting_and_sqlstate_as_the_catalog_has_them() {
    let cluster = Cluster::start("reference", &["dialpad.workers = 0"]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION pg_dialpad;
         CREATE FUNCTION pg_temp.dialpad_reference_sqlstate(name text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION USING ERRCODE = name;
         EXCEPTION WHEN OTHERS OR query_canceled THEN  -- OTHERS leaves query_canceled out
             RETURN CASE WHEN SQLERRM LIKE 'unrecognized exception condition%' THEN 'unknown' ELSE SQLSTATE END;
         END $$;",
    )
    .unwrap();
    let all = entries();
    let mut problems = Vec::new();
    for (name, e) in &all {
        if !["Functions", "Tables and views", "Settings"].contains(&e.section.as_str()) {
            problems.push(format!("docs/reference.md: entry {name} is under \"## {}\"", e.section));
        }
    }
    problems.extend(functions(&mut c, &all));
    problems.extend(relations(&mut c, &all));
    problems.extend(settings(&mut c, &all));
    problems.extend(sqlstates(&mut c));
    assert!(problems.is_empty(), "docs/reference.md differs from the catalog:\n{}", problems.join("\n"));
}
