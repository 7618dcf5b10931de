//! The Debian package (`scripts/package`): installed with `dpkg -i` on this machine, the
//! extension created and working in a fresh cluster, then removed with `dpkg -r`. The files
//! `cargo pgrx install` had put in Debian's PostgreSQL 15 are set aside first and put back
//! after, so the other test binaries find the build they test.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "postgresql-15-pg-dialpad";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

/// pg_dialpad's files in an installation, moved aside and put back on drop.
struct SetAside {
    moved: Vec<(PathBuf, PathBuf)>,
}

impl SetAside {
    fn new(layout: &PgLayout, to: &Path) -> SetAside {
        std::fs::create_dir_all(to).unwrap();
        let mut moved = Vec::new();
        let mut take = |path: PathBuf| {
            let aside = to.join(path.file_name().unwrap());
            std::fs::rename(&path, &aside).unwrap();
            moved.push((path, aside));
        };
        take(layout.pkglibdir.join("pg_dialpad.so"));
        for entry in std::fs::read_dir(layout.sharedir.join("extension")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("pg_dialpad") {
                take(path);
            }
        }
        SetAside { moved }
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-r", PACKAGE]).output();
        for (path, aside) in &self.moved {
            let _ = std::fs::rename(aside, path);
        }
    }
}

#[test]
fn the_debian_package_installs_works_and_removes_cleanly() {
    let layout = PgLayout::current();
    if layout.bindir != Path::new("/usr/lib/postgresql/15/bin") {
        eprintln!("skipped: the package is for Debian's PostgreSQL 15 (testing {})", layout.bindir.display());
        return;
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = run("dpkg", &["--print-architecture"]).trim().to_string();
    let deb = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/package")
        .join(format!("{PACKAGE}_{version}_{arch}.deb"));
    assert!(deb.exists(), "{} is missing: scripts/test builds it with scripts/package", deb.display());

    let contents = run("dpkg-deb", &["--contents", deb.to_str().unwrap()]);
    // Every upgrade script of the repository (sql/pg_dialpad--A--B.sql): the chain from any
    // released version to this one.
    let upgrades: Vec<String> = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("pg_dialpad--") && n.matches("--").count() == 2)
        .map(|n| format!("./usr/share/postgresql/15/extension/{n}"))
        .collect();
    assert!(upgrades.len() >= 2, "{upgrades:?}");
    for file in [
        "./usr/lib/postgresql/15/lib/pg_dialpad.so".to_string(),
        "./usr/share/postgresql/15/extension/pg_dialpad.control".to_string(),
        format!("./usr/share/postgresql/15/extension/pg_dialpad--{version}.sql"),
    ]
    .into_iter()
    .chain(upgrades)
    {
        assert!(contents.contains(&file), "{file} is not in the package:\n{contents}");
    }
    let info = run("dpkg-deb", &["--field", deb.to_str().unwrap(), "Package", "Version", "Depends"]);
    assert!(info.contains(&format!("Version: {version}")) && info.contains("Depends: postgresql-15"), "{info}");

    let aside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/package/set-aside");
    let guard = SetAside::new(&layout, &aside);
    assert!(!layout.pkglibdir.join("pg_dialpad.so").exists());
    run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(run("dpkg", &["-s", PACKAGE]).contains("Status: install ok installed"));
    assert!(run("dpkg", &["-L", PACKAGE]).contains("pg_dialpad.so"));
    {
        let cluster = Cluster::start("package", &["dialpad.workers = 1"]);
        let mut c = cluster.ready();
        let info: String = c.query_one("SELECT dialpad.version_info()", &[]).unwrap().get(0);
        assert!(info.starts_with(&format!("pg_dialpad {version}")), "{info}");
        let id: i64 = c
            .query_one(
                "SELECT dialpad.ingest_webhook('{\"call_id\": 1, \"state\": \"ringing\", \"event_timestamp\": 1787158716000}')",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(id > 0);
        wait_until(&mut c, "SELECT count(*) = 1 FROM dialpad.calls", 30);
    }
    run("dpkg", &["-r", PACKAGE]);
    assert!(!layout.pkglibdir.join("pg_dialpad.so").exists(), "dpkg -r left the library behind");
    assert!(!layout.sharedir.join("extension/pg_dialpad.control").exists());
    drop(guard);
    assert!(layout.pkglibdir.join("pg_dialpad.so").exists(), "the tested build is back in place");
}
