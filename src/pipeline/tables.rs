//! The tables one processor works on ([`Tables`]): the extension's own, or one colocated
//! group of their Citus shards (built by src/citus). Every statement of the processor is
//! written for the extension's tables; [`Tables::sql`] names the group's shards instead.

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

impl Tables {
    /// The extension's own tables.
    pub(crate) fn whole() -> Tables {
        Tables {
            shard: 0,
            inbox: "dialpad.webhook_events".into(),
            calls: "dialpad.calls".into(),
            rejected: "dialpad.rejected_transitions".into(),
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

    /// `sql` (a statement naming the extension's tables) for these tables.
    pub(crate) fn sql(&self, sql: &str) -> String {
        if self.shard == 0 {
            return sql.to_string();
        }
        let s = replace_table(sql, "dialpad.webhook_events", &self.inbox);
        let s = replace_table(&s, "dialpad.calls", &self.calls);
        let s = replace_table(&s, "dialpad.rejected_transitions", &self.rejected);
        match self.logical {
            Some((logical, stale)) => {
                let s = replace_table(&s, "dialpad.logical_calls", &format!("dialpad.logical_calls_{logical}"));
                replace_table(&s, "dialpad.logical_calls_stale", &format!("dialpad.logical_calls_stale_{stale}"))
            }
            None => s,
        }
    }

    /// The group's `logical_calls` and `logical_calls_stale` shards, every other table as
    /// itself (the legs of a logical call are read from the distributed `dialpad.calls`).
    pub(crate) fn logical_only(&self) -> Option<Tables> {
        let (logical, _) = self.logical?;
        Some(Tables { shard: logical, logical: self.logical, ..Tables::whole() })
    }
}

/// `sql` with every reference to table `from` (not to a longer name it is the start of)
/// replaced by `to`.
fn replace_table(sql: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_shards_of_a_group() {
        let t = Tables::shards(102008, 102040, 102072, Some((102100, 102132)));
        assert_eq!(
            t.sql("UPDATE dialpad.webhook_events SET x = 1 FROM dialpad.calls c, dialpad.calls_x WHERE dialpad.rejected_transitions.id = 1"),
            "UPDATE dialpad.webhook_events_102040 SET x = 1 FROM dialpad.calls_102008 c, dialpad.calls_x WHERE dialpad.rejected_transitions_102072.id = 1"
        );
        assert_eq!(Tables::whole().sql("SELECT 1 FROM dialpad.calls"), "SELECT 1 FROM dialpad.calls");
        let l = t.logical_only().unwrap();
        assert_eq!(
            l.sql("DELETE FROM dialpad.logical_calls_stale; SELECT * FROM dialpad.calls, dialpad.logical_calls; SELECT 1 FROM dialpad.logical_calls_touched"),
            "DELETE FROM dialpad.logical_calls_stale_102132; SELECT * FROM dialpad.calls, dialpad.logical_calls_102100; SELECT 1 FROM dialpad.logical_calls_touched"
        );
    }
}
