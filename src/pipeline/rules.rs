//! The rule tables (`call_statuses`, `status_transitions`, `state_mapping`) cached per backend.
//!
//! Reading three tables on every trigger call would dominate the cost of a write, so the
//! backend keeps a `RuleSet` and drops it when any of the tables changes: a statement trigger
//! on each table queues a relcache invalidation for it, which PostgreSQL delivers to every
//! backend at commit (and to this one at the next command), and our relcache callback bumps a
//! generation counter. An edit is therefore seen from the next statement on.

use crate::domain::transitions::{RuleSet, StateRule};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

struct Cached {
    generation: u64,
    rules: Rc<RuleSet>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static TABLE_OIDS: Cell<[pg_sys::Oid; 3]> = const { Cell::new([pg_sys::InvalidOid; 3]) };
}

/// Called by the statement triggers on the rule tables.
pub(crate) fn invalidate(relid: pg_sys::Oid) {
    // The trigger's own table, inside the transaction that changed it.
    crate::pg::backend::invalidate_relcache(relid);
}

/// The current rules, loading them if an edit (or nothing yet) made the cache stale.
pub(crate) fn current() -> Result<Rc<RuleSet>, pgrx::spi::Error> {
    // Pick up edits committed by other sessions since our last lock acquisition, so that a
    // long transaction in READ COMMITTED also sees them from its next statement.
    crate::pg::accept_invalidations();
    let generation = crate::pg::relcache_generation(&TABLE_OIDS.with(|t| t.get()));
    if let Some(rules) =
        CACHE.with(|c| c.borrow().as_ref().filter(|c| c.generation == generation).map(|c| c.rules.clone()))
    {
        return Ok(rules);
    }
    let (rules, oids) = load()?;
    let oids_changed = TABLE_OIDS.with(|t| t.get()) != oids;
    let rules = Rc::new(rules);
    TABLE_OIDS.with(|t| t.set(oids));
    // The tables' OIDs are known only now: start watching them, and date the cache from here
    // when they changed (first load, or the extension re-created).
    let watched = crate::pg::relcache_generation(&oids);
    let generation = if oids_changed { watched } else { generation };
    CACHE.with(|c| *c.borrow_mut() = Some(Cached { generation, rules: rules.clone() }));
    Ok(rules)
}

/// The current rules, or an ERROR (42P01) saying the extension's tables cannot be read.
pub(crate) fn current_or_raise() -> Rc<RuleSet> {
    match current() {
        Ok(r) => r,
        Err(e) => crate::pg::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("pg_dialpad could not read its rule tables: {e}"),
            None,
            Some("Is the extension installed in this database (CREATE EXTENSION pg_dialpad)?"),
        ),
    }
}

fn load() -> Result<(RuleSet, [pg_sys::Oid; 3]), pgrx::spi::Error> {
    Spi::connect(|client| {
        let mut rules = RuleSet::default();
        for row in client.select("SELECT status, is_terminal FROM dialpad.call_statuses", None, &[])? {
            let status: Option<String> = row.get(1)?;
            let terminal: Option<bool> = row.get(2)?;
            if let Some(s) = status {
                rules.statuses.insert(s, terminal.unwrap_or(false));
            }
        }
        for row in client.select("SELECT from_status, to_status FROM dialpad.status_transitions", None, &[])? {
            if let (Some(a), Some(b)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                rules.transitions.insert((a, b));
            }
        }
        // keep_terminal is read through to_jsonb so that a 0.1.0 table (before ALTER
        // EXTENSION ... UPDATE, which adds the column) still loads.
        for row in client.select(
            "SELECT state, status, status_if_unanswered_inbound, status_if_unanswered_outbound, \
                    coalesce((pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.->>) 'keep_terminal')::boolean, false) \
             FROM dialpad.state_mapping m",
            None,
            &[],
        )? {
            if let Some(state) = row.get::<String>(1)? {
                rules.states.insert(
                    state,
                    StateRule {
                        status: row.get(2)?,
                        unanswered_inbound: row.get(3)?,
                        unanswered_outbound: row.get(4)?,
                        keep_terminal: row.get(5)?.unwrap_or(false),
                    },
                );
            }
        }
        let oids = client
            .select(
                "SELECT 'dialpad.call_statuses'::pg_catalog.regclass::pg_catalog.oid, \
                        'dialpad.status_transitions'::pg_catalog.regclass::pg_catalog.oid, \
                        'dialpad.state_mapping'::pg_catalog.regclass::pg_catalog.oid",
                Some(1),
                &[],
            )?
            .first();
        let oids = [
            oids.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            oids.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
            oids.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
        ];
        Ok((rules, oids))
    })
}
