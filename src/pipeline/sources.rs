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
use std::cell::RefCell;
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
}

/// The current sources, loading them if an edit (or nothing yet) made the cache stale.
pub(crate) fn current() -> Result<Rc<Sources>, pgrx::spi::Error> {
    crate::pg::accept_invalidations();
    let table = crate::pg::dialpad_relation(c"sources");
    if table == pg_sys::InvalidOid {
        return Ok(Rc::new(Sources::Legacy));
    }
    let generation = crate::pg::relcache_generation(&[table]);
    let hit = CACHE.with(|c| {
        c.borrow().as_ref().filter(|c| c.generation == generation && c.table == table).map(|c| c.sources.clone())
    });
    if let Some(sources) = hit {
        return Ok(sources);
    }
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
