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

/// sql/maintenance.sql and sql/analytics.sql are part of a fresh install and, verbatim, of
/// the upgrade script from 0.1.0: an edit of one must reach the other.
#[test]
fn the_upgrade_script_carries_the_shared_sql_files_verbatim() {
    let upgrade = std::fs::read_to_string("sql/pg_dialpad--0.1.0--0.2.0.sql").unwrap();
    for file in ["sql/maintenance.sql", "sql/analytics.sql", "sql/citus.sql"] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(upgrade.contains(&text), "{file} is not in sql/pg_dialpad--0.1.0--0.2.0.sql verbatim");
    }
}
