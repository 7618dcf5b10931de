//! The PGXN distribution metadata (META.json) agrees with the crate and the control file:
//! one version, the license Cargo.toml declares, the extension it provides.

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/META.json")).expect("META.json");
    serde_json::from_str(&text).expect("META.json is JSON")
}

#[test]
fn meta_json_matches_the_crate_and_the_control_file() {
    let m = meta();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(m["name"], "pg_dialpad");
    assert_eq!(m["version"], version);
    assert_eq!(m["provides"]["pg_dialpad"]["version"], version);
    // PGXN spells Cargo's "PostgreSQL" license "postgresql".
    assert_eq!(env!("CARGO_PKG_LICENSE"), "PostgreSQL");
    assert_eq!(m["license"], "postgresql");
    assert_eq!(m["abstract"], env!("CARGO_PKG_DESCRIPTION"));
    let control = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pg_dialpad.control")).unwrap();
    assert!(control.contains(&format!("comment = '{}'", env!("CARGO_PKG_DESCRIPTION"))), "{control}");
    assert_eq!(m["meta-spec"]["version"], "1.0.0");
    for key in ["file", "docfile"] {
        let path = m["provides"]["pg_dialpad"][key].as_str().unwrap();
        assert!(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(), "{key} {path}");
    }
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/LICENSE")).exists());
}

/// A released upgrade script is never edited: each `sql/pg_dialpad--A--B.sql` whose B is a
/// released version (scripts/released-versions) is byte for byte the file of B's release commit.
#[test]
fn released_upgrade_scripts_are_never_edited() {
    let root = env!("CARGO_MANIFEST_DIR");
    let released: Vec<(String, String)> = std::fs::read_to_string(format!("{root}/scripts/released-versions"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(v, c)| (v.to_string(), c.trim().to_string())))
        .collect();
    assert!(released.len() >= 2, "scripts/released-versions lists 0.1.0 and 0.2.0 at least");
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{root}/sql")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(pair) = name.strip_prefix("pg_dialpad--").and_then(|n| n.strip_suffix(".sql")) else { continue };
        let Some((_, to)) = pair.split_once("--") else { continue };
        let Some((_, commit)) = released.iter().find(|(v, _)| v == to) else { continue };
        let at_release = std::process::Command::new("git")
            .args(["-C", root, "show", &format!("{commit}:sql/{name}")])
            .output()
            .expect("git");
        if !at_release.status.success() {
            // A checkout without history (a source tarball): nothing to compare with.
            eprintln!("skipped: git cannot show {commit}:sql/{name}");
            continue;
        }
        let now = std::fs::read(format!("{root}/sql/{name}")).unwrap();
        assert!(now == at_release.stdout, "sql/{name} was released in {commit} and must never be edited");
        checked += 1;
    }
    assert!(
        checked >= 1
            || std::process::Command::new("git")
                .args(["-C", root, "rev-parse"])
                .status()
                .map_or(true, |s| !s.success())
    );
}

/// The unreleased upgrade script is generated: `sql/upgrade/<from>--<to>.sql` holds only the
/// change, and names with `-- @copy` what it repeats of the SQL files a fresh install runs;
/// `sql/pg_dialpad--<from>--<to>.sql` is that file with each `@copy` replaced by the
/// statements it names, copied from their file. Run `scripts/gen-upgrade` after editing
/// either: this test fails until the script is generated again. Once `<to>` is released
/// (scripts/released-versions), its script is frozen and its source goes.
///
/// `-- @copy maintenance.sql: PREFIX | PREFIX ...` copies, in the file's order, every
/// statement of sql/maintenance.sql that starts with one of the prefixes;
/// `-- @copy-or-replace` writes `CREATE OR REPLACE` for `CREATE` (a function or view that
/// the update replaces).
#[test]
fn the_unreleased_upgrade_script_is_generated() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let released = std::fs::read_to_string(root.join("scripts/released-versions")).unwrap();
    let is_released = |v: &str| released.lines().any(|l| l.split_whitespace().next() == Some(v));
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root.join("sql/upgrade")).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(pair) = name.strip_suffix(".sql") else { continue };
        let to = pair.split_once("--").map(|(_, to)| to).unwrap_or_default();
        assert!(!is_released(to), "sql/upgrade/{name}: {to} is released, its script frozen: delete the source");
        let target = root.join(format!("sql/pg_dialpad--{pair}.sql"));
        let generated = generate(root, &name, &std::fs::read_to_string(&path).unwrap());
        if std::env::var_os("DIALPAD_WRITE_UPGRADE").is_some() {
            std::fs::write(&target, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&target).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is not what sql/upgrade/{name} generates: run scripts/gen-upgrade",
            target.display()
        );
        sources.push(to.to_string());
    }
    // The version in development has its source (after a release, until the next version
    // starts, there is none).
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        is_released(version) || sources.iter().any(|v| v == version),
        "sql/upgrade/ has no source of the upgrade script to {version}"
    );
}

/// The upgrade script `source` (sql/upgrade/`name`) with its `@copy` lines expanded.
fn generate(root: &std::path::Path, name: &str, source: &str) -> String {
    let mut out = format!(
        "-- Generated from sql/upgrade/{name} by scripts/gen-upgrade: edit that file (and the SQL files it\n\
         -- copies from), then run scripts/gen-upgrade. Do not edit this file by hand.\n"
    );
    for line in source.lines() {
        if line.starts_with("-- @") || line.starts_with("--@") {
            assert!(
                line.starts_with("-- @copy ") || line.starts_with("-- @copy-or-replace "),
                "{name}: `{line}`: not a directive (-- @copy or -- @copy-or-replace)"
            );
        }
        let directive = line
            .strip_prefix("-- @copy-or-replace ")
            .map(|d| (d, true))
            .or_else(|| line.strip_prefix("-- @copy ").map(|d| (d, false)));
        let Some((directive, replace)) = directive else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (file, prefixes) =
            directive.split_once(": ").unwrap_or_else(|| panic!("{name}: `{line}`: no `file: prefix`"));
        let text =
            std::fs::read_to_string(root.join("sql").join(file)).unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        let prefixes: Vec<String> = prefixes.split(" | ").map(normalized).collect();
        let copied: Vec<String> = sql_statements(&text)
            .into_iter()
            .filter(|s| prefixes.iter().any(|p| normalized(s).starts_with(p)))
            .collect();
        for p in &prefixes {
            let n = copied.iter().filter(|s| normalized(s).starts_with(p)).count();
            assert!(n == 1, "{name}: {n} statements of sql/{file} start with `{p}` (one wanted)");
        }
        for statement in copied {
            let statement = match (replace, statement.strip_prefix("CREATE ")) {
                (true, Some(rest)) if rest.starts_with("FUNCTION") || rest.starts_with("VIEW") => {
                    format!("CREATE OR REPLACE {rest}")
                }
                _ => statement,
            };
            out.push_str(&statement);
            out.push('\n');
        }
    }
    out
}

/// `s` with every run of whitespace one space.
fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The statements of `sql`, each as written from its first word to its `;` (comments and
/// blank lines between statements dropped; strings, quoted names, comments and
/// dollar-quoted bodies inside a statement kept as they are).
fn sql_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), None::<usize>, 0);
    while i < b.len() {
        let rest = &sql[i..];
        let skip = if rest.starts_with("--") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |p| p + 2)
        } else if b[i] == b'\'' || b[i] == b'"' {
            let q = b[i] as char;
            let mut j = 1;
            loop {
                match rest[j..].find(q) {
                    Some(p) if rest[j + p + 1..].starts_with(q) => j += p + 2,
                    Some(p) => break j + p + 1,
                    None => break rest.len(),
                }
            }
        } else if b[i] == b'$' && !sql[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            // `$tag$` or `$$` opens a dollar-quoted string; `$1` is a parameter.
            let tag_len =
                rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(rest.len(), |p| p + 1);
            if rest[tag_len..].starts_with('$') && !rest[1..tag_len].starts_with(|c: char| c.is_ascii_digit()) {
                let tag = &rest[..tag_len + 1];
                rest[tag.len()..].find(tag).map_or(rest.len(), |p| tag.len() + p + tag.len())
            } else {
                1
            }
        } else {
            1
        };
        let comment = rest.starts_with("--") || rest.starts_with("/*");
        if start.is_none() && !comment && !b[i].is_ascii_whitespace() {
            start = Some(i);
        }
        if b[i] == b';' && skip == 1 {
            if let Some(s) = start.take() {
                out.push(sql[s..=i].to_string());
            }
        }
        i += skip;
    }
    out
}

#[test]
fn the_statement_reader_keeps_bodies_strings_and_names_whole() {
    let sql = "-- a; comment\nCREATE FUNCTION f() AS $x$ SELECT ';' ; $x$;\n/* ; */ COMMENT ON FUNCTION f() IS 'it''s; fine';\nSELECT \"a;b\", $1;\nSELECT a$b$ FROM t; $";
    assert_eq!(
        sql_statements(sql),
        vec![
            "CREATE FUNCTION f() AS $x$ SELECT ';' ; $x$;",
            "COMMENT ON FUNCTION f() IS 'it''s; fine';",
            "SELECT \"a;b\", $1;",
            "SELECT a$b$ FROM t;"
        ]
    );
}
