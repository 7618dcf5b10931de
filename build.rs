//! Build facts the library reports (`dialpad.version_info()`): the pgrx version it was built
//! with, read from Cargo.lock so that it can never disagree with the build.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut version = "unknown".to_string();
    let mut in_pgrx = false;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            in_pgrx = false;
        } else if line == "name = \"pgrx\"" {
            in_pgrx = true;
        } else if in_pgrx {
            if let Some(v) = line.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')) {
                version = v.to_string();
                break;
            }
        }
    }
    println!("cargo:rustc-env=DIALPAD_PGRX_VERSION={version}");
}
