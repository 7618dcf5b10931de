//! SQL-level tests, run inside a backend by `cargo pgrx test`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
}
