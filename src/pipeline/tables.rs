//! The tables one processor works on ([`Tables`]): the extension's own, or one colocated
//! group of their Citus shards (built by src/citus). A statement run per set of tables names
//! them by placeholders ([`Target`]), which each set fills in with its own tables.

use crate::pg::spi::run_kept_as;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// The tables one processor works on: the extension's tables (one node, or Citus before
/// `dialpad.distribute()`), or one colocated group of their shards on a Citus node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tables {
    /// The shard id of the group's `calls` shard; 0 for the tables themselves.
    pub shard: i64,
    pub inbox: String,
    pub calls: String,
    pub rejected: String,
    /// The group's shards of `logical_calls` and `logical_calls_stale` (their ids), when the
    /// group has them.
    pub logical: Option<(i64, i64)>,
}

/// A table a statement run per set of tables names by a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholder {
    Inbox,
    Calls,
    Rejected,
    LogicalCalls,
    LogicalCallsStale,
}

impl Placeholder {
    const ALL: [Placeholder; 5] = [
        Placeholder::Inbox,
        Placeholder::Calls,
        Placeholder::Rejected,
        Placeholder::LogicalCalls,
        Placeholder::LogicalCallsStale,
    ];

    /// How a statement writes it.
    fn token(self) -> &'static str {
        match self {
            Placeholder::Inbox => "{inbox}",
            Placeholder::Calls => "{calls}",
            Placeholder::Rejected => "{rejected}",
            Placeholder::LogicalCalls => "{logical_calls}",
            Placeholder::LogicalCallsStale => "{logical_calls_stale}",
        }
    }

    /// The table it stands for on one node.
    fn whole(self) -> &'static str {
        match self {
            Placeholder::Inbox => "dialpad.webhook_events",
            Placeholder::Calls => "dialpad.calls",
            Placeholder::Rejected => "dialpad.rejected_transitions",
            Placeholder::LogicalCalls => "dialpad.logical_calls",
            Placeholder::LogicalCallsStale => "dialpad.logical_calls_stale",
        }
    }
}

/// Where statements run, for [`run_kept_on`]: the
/// tables a statement's placeholders stand for, and the kept plans' variant.
///
/// A statement run per set of tables is a template: it names each table it works on by a
/// placeholder (`{inbox}`, `{calls}`, `{rejected}`, `{logical_calls}`,
/// `{logical_calls_stale}`), never by the table's name, and a table named by its name is
/// that table on every set (the distributed `dialpad.calls` its legs are read from).
pub(crate) trait Target {
    /// The kept plans' variant: (0, 0) for the extension's tables; a different pair for
    /// each Citus shard group.
    fn variant(&self) -> (u8, i64);
    /// The table `placeholder` stands for.
    fn table(&self, placeholder: Placeholder) -> String;

    /// `template` with its placeholders named.
    fn render(&self, template: &str) -> String {
        let mut out = template.to_string();
        for p in Placeholder::ALL {
            if out.contains(p.token()) {
                out = out.replace(p.token(), &self.table(p));
            }
        }
        out
    }
}

/// [`run_kept`](crate::pg::spi::run_kept) of the template `sql` on `target`'s tables (see [`Target`]), with a kept
/// plan of its own per set of tables.
pub(crate) fn run_kept_on<'c>(
    client: &mut SpiClient<'c>,
    target: &impl Target,
    sql: &'static str,
    types: &[pg_sys::Oid],
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'c>, pgrx::spi::Error> {
    run_kept_as(client, sql, target.variant(), || target.render(sql), types, limit, args)
}

/// Whether the template `sql` names one of the tables a placeholder stands for by its
/// name (it would then work on that table whatever the set).
#[cfg(test)]
pub(crate) fn names_a_table(sql: &str) -> Option<&'static str> {
    Placeholder::ALL.iter().map(|p| p.whole()).find(|table| {
        sql.match_indices(table)
            .any(|(at, _)| !sql[at + table.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    })
}

impl Tables {
    /// The extension's own tables.
    pub(crate) fn whole() -> Tables {
        Tables {
            shard: 0,
            inbox: Placeholder::Inbox.whole().into(),
            calls: Placeholder::Calls.whole().into(),
            rejected: Placeholder::Rejected.whole().into(),
            logical: None,
        }
    }

    /// The colocated shards with these ids.
    pub(crate) fn shards(calls: i64, inbox: i64, rejected: i64, logical: Option<(i64, i64)>) -> Tables {
        Tables {
            shard: calls,
            inbox: format!("dialpad.webhook_events_{inbox}"),
            calls: format!("dialpad.calls_{calls}"),
            rejected: format!("dialpad.rejected_transitions_{rejected}"),
            logical,
        }
    }

    /// The group's `logical_calls` and `logical_calls_stale` shards, when it has them.
    pub(crate) fn logical_shards(&self) -> Option<LogicalShards> {
        let (logical, stale) = self.logical?;
        Some(LogicalShards { logical, stale })
    }
}

impl Target for Tables {
    fn variant(&self) -> (u8, i64) {
        (if self.shard == 0 { 0 } else { 1 }, self.shard)
    }

    fn table(&self, placeholder: Placeholder) -> String {
        match placeholder {
            Placeholder::Inbox => self.inbox.clone(),
            Placeholder::Calls => self.calls.clone(),
            Placeholder::Rejected => self.rejected.clone(),
            Placeholder::LogicalCalls | Placeholder::LogicalCallsStale => match self.logical_shards() {
                Some(l) => l.table(placeholder),
                None => placeholder.whole().to_string(),
            },
        }
    }
}

/// The extension's own tables, as a [`Target`] that needs no names of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Whole;

impl Target for Whole {
    fn variant(&self) -> (u8, i64) {
        (0, 0)
    }

    fn table(&self, placeholder: Placeholder) -> String {
        placeholder.whole().to_string()
    }
}

/// One colocated group's shards of `logical_calls` and `logical_calls_stale` (their ids),
/// where the Citus keeper writes the group's logical calls; every other placeholder stands
/// for the table itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogicalShards {
    pub logical: i64,
    pub stale: i64,
}

impl Target for LogicalShards {
    fn variant(&self) -> (u8, i64) {
        (2, self.logical)
    }

    fn table(&self, placeholder: Placeholder) -> String {
        match placeholder {
            Placeholder::LogicalCalls => format!("dialpad.logical_calls_{}", self.logical),
            Placeholder::LogicalCallsStale => format!("dialpad.logical_calls_stale_{}", self.stale),
            _ => placeholder.whole().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_the_tables_of_a_set() {
        let t = Tables::shards(102008, 102040, 102072, Some((102100, 102132)));
        assert_eq!(
            t.render("UPDATE {inbox} SET x = 1 FROM {calls} c, dialpad.calls d WHERE {rejected}.id = 1"),
            "UPDATE dialpad.webhook_events_102040 SET x = 1 FROM dialpad.calls_102008 c, dialpad.calls d WHERE dialpad.rejected_transitions_102072.id = 1"
        );
        assert_eq!(
            Tables::whole().render("SELECT 1 FROM {calls}, {logical_calls_stale} WHERE '{a}' = '{inbox_x}'"),
            "SELECT 1 FROM dialpad.calls, dialpad.logical_calls_stale WHERE '{a}' = '{inbox_x}'"
        );
        let l = t.logical_shards().unwrap();
        assert_eq!(
            l.render("DELETE FROM {logical_calls_stale}; SELECT * FROM {calls}, {logical_calls}; SELECT 1 FROM dialpad.logical_calls_touched"),
            "DELETE FROM dialpad.logical_calls_stale_102132; SELECT * FROM dialpad.calls, dialpad.logical_calls_102100; SELECT 1 FROM dialpad.logical_calls_touched"
        );
        assert_eq!(Tables::shards(7, 8, 9, None).render("{logical_calls}"), "dialpad.logical_calls");
    }

    #[test]
    fn every_set_of_tables_has_its_own_plans() {
        let group = Tables::shards(102008, 102040, 102072, Some((102100, 102132)));
        let variants = [Tables::whole().variant(), group.variant(), group.logical_shards().unwrap().variant()];
        assert_eq!(variants, [(0, 0), (1, 102008), (2, 102100)]);
    }
}
