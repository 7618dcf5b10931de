//! The webhook sources (`dialpad.sources`), cached per backend.
//!
//! `dialpad.ingest_webhook` needs a source's secrets for every delivery; reading them from
//! the table each time would cost a query per delivery, so the backend keeps them and drops
//! them when the table changes (a statement trigger queues a relcache invalidation, as for
//! the rules: see `rules.rs`). The table is readable only by the extension's owner: the
//! load runs as that owner, the way a SECURITY DEFINER function would, and only this fixed
//! query does.

use crate::domain::webhook::conceal;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One source, its secrets revealed.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) secret: Vec<u8>,
    /// The secret before the last rotation and until when it still verifies (a timestamptz).
    pub(crate) previous: Option<(Vec<u8>, pg_sys::TimestampTz)>,
    pub(crate) enabled: bool,
}

impl Source {
    /// The secrets that verify at `now`: the current one, then the previous one while its
    /// overlap lasts.
    pub(crate) fn secrets_at(&self, now: pg_sys::TimestampTz) -> Vec<&[u8]> {
        let mut out = vec![self.secret.as_slice()];
        if let Some((old, until)) = &self.previous {
            if now < *until {
                out.push(old.as_slice());
            }
        }
        out
    }
}

/// What the database holds.
pub(crate) enum Sources {
    /// The extension's SQL is 0.1.0 (library upgraded, `ALTER EXTENSION ... UPDATE` not run
    /// yet): no sources table; the 0.1.0 setting `dialpad.webhook_secret` still applies.
    Legacy,
    /// The rows of `dialpad.sources`, by name.
    Table(Vec<Source>),
}

struct Cached {
    generation: u64,
    table: pg_sys::Oid,
    sources: Rc<Sources>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static TABLE_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// # Safety
/// Called only by PostgreSQL's invalidation machinery, as registered in [`init`]; reads and
/// bumps thread-local counters only.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == TABLE_OID.with(|t| t.get()) {
        GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

/// Called from `_PG_init`.
pub(crate) fn init() {
    // SAFETY: registers a static callback once per process (from _PG_init); PostgreSQL keeps
    // a fixed number of callback slots, and we take one.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0));
    }
}

/// The OID of `dialpad.sources`, or InvalidOid when the extension's SQL predates it.
fn table_oid() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name with valid C strings; InvalidOid when absent.
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"dialpad".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(c"sources".as_ptr(), ns)
    }
}

/// The current sources, loading them if an edit (or nothing yet) made the cache stale.
pub(crate) fn current() -> Result<Rc<Sources>, pgrx::spi::Error> {
    // SAFETY: processes queued invalidations; allowed anywhere inside a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let table = table_oid();
    if table == pg_sys::InvalidOid {
        return Ok(Rc::new(Sources::Legacy));
    }
    let generation = GENERATION.with(|g| g.get());
    let hit = CACHE.with(|c| {
        c.borrow().as_ref().filter(|c| c.generation == generation && c.table == table).map(|c| c.sources.clone())
    });
    if let Some(sources) = hit {
        return Ok(sources);
    }
    TABLE_OID.with(|t| t.set(table));
    let sources = Rc::new(Sources::Table(crate::pg::as_owner_of(table, load)?));
    CACHE.with(|c| *c.borrow_mut() = Some(Cached { generation, table, sources: sources.clone() }));
    Ok(sources)
}

fn load() -> Result<Vec<Source>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        let rows = client.select(
            "SELECT name, secret, previous_secret, previous_valid_until, enabled FROM dialpad.sources ORDER BY name",
            None,
            &[],
        )?;
        for row in rows {
            let Some(name) = row.get::<String>(1)? else { continue };
            let secret = conceal(&name, &row.get::<Vec<u8>>(2)?.unwrap_or_default());
            let previous = match (row.get::<Vec<u8>>(3)?, row.get::<pgrx::datum::TimestampWithTimeZone>(4)?) {
                (Some(old), Some(until)) => Some((conceal(&name, &old), until.into_inner())),
                _ => None,
            };
            out.push(Source { secret, previous, enabled: row.get(5)?.unwrap_or(false), name });
        }
        Ok(out)
    })
}
