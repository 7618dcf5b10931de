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
