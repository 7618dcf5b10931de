//! The layers of the code, from its own imports (docs/development.md, "Repository layout"): a lower layer
//! never imports a higher one, and the pure core has no pgrx.
//!
//! The extension's modules, lowest first (a module may use the core and any module of a
//! lower rank, never one of its own rank or higher):
//! - 0: `pg` (every call into PostgreSQL), `flags` (per-backend flags), `http` (the
//!   listener's network threads, which never call into PostgreSQL);
//! - 1: `gucs`, `version`;
//! - 2: `pipeline` (storage and the batch);
//! - 3: `citus` (the adapter: builds the shard groups a batch works on, routing, keeper);
//! - 4: `api` (the SQL surface);
//! - 5: `bgworker` (the launcher, the workers, the listener's main thread).
//!
//! `crates/dialpad-core` (`codec`, `domain`) sits under all of them.

mod common;
use common::rust_files;
use std::collections::BTreeSet;
use std::path::Path;

const RANKS: &[(&str, u32)] = &[
    ("pg", 0),
    ("flags", 0),
    ("http", 0),
    ("gucs", 1),
    ("version", 1),
    ("pipeline", 2),
    ("citus", 3),
    ("api", 4),
    ("bgworker", 5),
];

/// The pure core, re-exported at the crate's root under these names.
const CORE: &[&str] = &["codec", "domain"];

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The code of a file as the import reader reads it: comments and strings blanked out
/// ([`blanked`]), and `super::` paths that reach the crate's root written `crate::` (a
/// module `depth` levels down reaches it through `depth` of them).
fn code(text: &str, depth: usize) -> String {
    let code = blanked(text);
    if depth == 0 {
        return code;
    }
    code.replace(&"super::".repeat(depth), "crate::")
}

/// How many modules down a file under src/ is: 1 for `x.rs` and `x/mod.rs`, 2 for `x/y.rs`.
fn depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    if relative.file_name().is_some_and(|f| f == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The top-level modules of the crate a file's code names: `crate::x`, `crate::{x, y::z}`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items of the group at its first level: `a`, `b::c`, `d::{e, f}`.
            let (mut depth, mut start) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn no_layer_imports_a_higher_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        // The crate's root wires the modules together; the SQL tests sit above everything.
        if module == "lib" || module == "pg_tests" {
            continue;
        }
        let own = rank(&module).unwrap_or_else(|| panic!("src/{first}: a module with no layer: add it to RANKS"));
        for used in imported(&code(&std::fs::read_to_string(file).unwrap(), depth(relative))) {
            if used == module || CORE.contains(&used.as_str()) {
                continue;
            }
            let theirs = rank(&used).unwrap_or_else(|| panic!("{}: crate::{used} has no layer", file.display()));
            if theirs < own {
                continue;
            }
            wrong.push(format!("src/{} (layer {own}) imports crate::{used} (layer {theirs})", relative.display()));
        }
    }
    assert!(wrong.is_empty(), "imports against the layers (tests/layers.rs):\n{}", wrong.join("\n"));
}

#[test]
fn the_core_has_no_pgrx() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/dialpad-core");
    let manifest = std::fs::read_to_string(core.join("Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("[dependencies]"))
        .take_while(|l| !l.starts_with("[dev-dependencies]"))
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!deps.iter().any(|l| l.contains("pgrx")), "crates/dialpad-core depends on pgrx:\n{}", deps.join("\n"));
    let mut files = Vec::new();
    rust_files(&core.join("src"), &mut files);
    for file in files {
        let text = blanked(&std::fs::read_to_string(&file).unwrap());
        for word in ["pgrx", "pg_sys", "pg_dialpad::"] {
            assert!(!text.contains(word), "{} names {word}: the core calls no PostgreSQL", file.display());
        }
    }
}

#[test]
fn the_import_reader_reads_groups_and_paths() {
    let found = imported("use crate::{gucs, pg::shmem, pipeline::{batch, rules}};\nlet x = crate::api::ingest::f();");
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["api", "gucs", "pg", "pipeline"]);
    assert!(!code("let a = 1; // crate::api\n", 0).contains("crate::api"));
    assert!(!code("let u = \"http://x\"; let s = \"crate::api\";", 0).contains("crate::api"));
    // In src/flags.rs, super:: is the crate's root; in src/pg/spi.rs, super::super:: is.
    assert!(imported(&code("use super::api::x;", depth(Path::new("flags.rs")))).contains("api"));
    assert!(imported(&code("use super::super::api;", depth(Path::new("pg/spi.rs")))).contains("api"));
    assert!(!imported(&code("use super::datum;", depth(Path::new("pg/spi.rs")))).contains("datum"));
}

/// The code with comments, strings and character literals blanked out (newlines kept), so
/// that braces can be counted: `"{"`, `'{'`, `r#"{"#` and `// {` are not braces.
fn blanked(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Copies newlines of chars[from..to] (line numbers stay right) and nothing else.
    let keep_lines = |out: &mut String, from: usize, to: usize| {
        out.extend(chars[from..to.min(chars.len())].iter().filter(|c| **c == '\n'));
    };
    while i < chars.len() {
        let rest = &chars[i..];
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|c| *c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            i + 2 + rest[2..].windows(2).position(|w| w == ['*', '/']).map_or(rest.len() - 2, |p| p + 2)
        } else if rest[0] == 'r' && (rest.get(1) == Some(&'"') || rest.get(1) == Some(&'#')) {
            let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
            if rest.get(1 + hashes) != Some(&'"') {
                out.push(rest[0]);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body = 2 + hashes;
            i + body + rest[body..].windows(close.len()).position(|w| w == close.as_slice()).unwrap_or(0) + close.len()
        } else if rest[0] == '"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            i + j + 1
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') && rest.len() > 3 {
            // An escape: '\n', '\'', '\u{..}'; the closing quote comes after the escaped character.
            i + 3 + rest[3..].iter().position(|c| *c == '\'').unwrap_or(0) + 1
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            i + 3
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        keep_lines(&mut out, i, end);
        out.push(' ');
        i = end;
    }
    out
}

/// (name, first line, lines) of every function with a body in `code` (from [`blanked`]).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("fn ") {
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let name: String = code[at + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.is_empty() {
            continue;
        }
        // The body: the first `{` outside the signature's parentheses, unless a `;` ends it.
        let (mut parens, mut open) = (0i32, None);
        for (i, c) in code[at..].char_indices() {
            match c {
                '(' | '[' => parens += 1,
                ')' | ']' => parens -= 1,
                ';' if parens == 0 => break,
                '{' if parens == 0 => {
                    open = Some(at + i);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let mut depth = 0;
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        let first = code[..at].matches('\n').count() + 1;
                        let last = code[..open + i].matches('\n').count() + 1;
                        found.push((name.clone(), first, last - first + 1));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn no_function_is_longer_than_100_lines() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&here.join("src"), &mut files);
    rust_files(&here.join("crates/dialpad-core/src"), &mut files);
    let mut long = Vec::new();
    for file in files {
        for (name, line, lines) in functions(&blanked(&std::fs::read_to_string(&file).unwrap())) {
            if lines > 100 {
                long.push(format!("{}:{line} fn {name}: {lines} lines", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over 100 lines (split them into named steps):\n{}", long.join("\n"));
}

#[test]
fn the_function_reader_skips_strings_comments_and_characters() {
    let src = "fn a() {\n  let s = \"}}\"; // }\n  let c = '}';\n  let r = r#\"}\"#;\n}\nfn b(x: [u8; 2]) -> u8 { x[0] }\nfn c();\n";
    let found = functions(&blanked(src));
    assert_eq!(found, [("a".to_string(), 1, 5), ("b".to_string(), 6, 1)]);
    assert!(blanked("fn f<'a>(x: &'a str) { '\\'' }").contains("fn f<'a>(x: &'a str) {"));
    assert_eq!(functions(&blanked("fn g() { let q = '\\''; let b = '{'; }")), [("g".to_string(), 1, 1)]);
}

/// Files outside src/pg/ that may hold `unsafe` code, each with its reason. Everything else
/// calls PostgreSQL through the safe wrappers of src/pg/; a callback PostgreSQL calls may be
/// declared `unsafe extern "C-unwind" fn` anywhere, its body safe (the crate denies
/// `unsafe_op_in_unsafe_fn`, so an unsafe call in it needs a block, which is counted). The
/// SQL tests (src/pg_tests.rs) are not the extension. The test fails when a listed file no
/// longer needs its entry, so that the list only shrinks.
const UNSAFE_OUTSIDE_PG: &[(&str, &str)] = &[
    ("api/compat.rs", "0.1.0's C symbol reads its own fcinfo (a function PostgreSQL calls by name)"),
    ("api/drop_guard.rs", "the DROP EXTENSION event trigger reads its fcinfo and the DROP's parse tree"),
    ("citus/routing.rs", "the Citus adapter's planner hook rewrites the query tree of inbox INSERTs"),
    ("http/server.rs", "the listener's network threads block signals with libc (no PostgreSQL call)"),
];

/// The `unsafe` code in `code` (from [`blanked`]): blocks, functions and extern blocks (with
/// or without the keyword), but not the `unsafe extern "C-unwind" fn` of a callback nor
/// `#[unsafe(no_mangle)]`.
fn unsafe_code(code: &str) -> usize {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // `extern "C" {` (the ABI string blanked out): declarations of foreign functions.
    let extern_blocks = code
        .match_indices("extern")
        .filter(|(at, _)| !code[..*at].ends_with(ident) && code[at + "extern".len()..].trim_start().starts_with('{'))
        .filter(|(at, _)| !code[..*at].trim_end().ends_with("unsafe"))
        .count();
    extern_blocks
        + code
            .match_indices("unsafe")
            .filter(|(at, _)| {
                let after = &code[at + "unsafe".len()..];
                let word = !code[..*at].ends_with(ident) && !after.starts_with(|c: char| ident(c) || c == '(');
                // `extern "C-unwind" fn` (the ABI string blanked out): a callback's signature.
                let callback =
                    after.trim_start().strip_prefix("extern").is_some_and(|r| r.trim_start().starts_with("fn "));
                word && !callback
            })
            .count()
}

#[test]
fn postgres_is_called_through_pg() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let (mut wrong, mut seen) = (Vec::new(), BTreeSet::new());
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        if relative.starts_with("pg/") || relative == "pg_tests.rs" {
            continue;
        }
        // Strings hold `unsafe` in #[pg_extern(parallel_unsafe)]: blanked with the rest.
        let n = unsafe_code(&blanked(&std::fs::read_to_string(file).unwrap()).replace("parallel_unsafe", ""));
        if n == 0 {
            continue;
        }
        if UNSAFE_OUTSIDE_PG.iter().any(|(f, _)| *f == relative) {
            seen.insert(relative);
        } else {
            wrong.push(format!("src/{relative}: {n} unsafe block(s) or function(s): wrap the call in src/pg/"));
        }
    }
    assert!(wrong.is_empty(), "PostgreSQL called outside src/pg/ (tests/layers.rs):\n{}", wrong.join("\n"));
    for (file, why) in UNSAFE_OUTSIDE_PG {
        assert!(seen.contains(*file), "src/{file} has no unsafe code left ({why}): remove it from UNSAFE_OUTSIDE_PG");
    }
}

#[test]
fn the_unsafe_reader_skips_callbacks_and_attributes() {
    let src = "#[unsafe(no_mangle)]\nunsafe extern \"C-unwind\" fn f() { g() }\nfn h() { unsafe { x() } }\nunsafe fn i() {}\nunsafe extern \"C-unwind\" {\n fn j();\n}\nfn parallel_unsafe_k() {}\nextern \"C\" { fn l(); }";
    assert_eq!(unsafe_code(&blanked(src)), 4);
}
