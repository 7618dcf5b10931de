//! The decisions a batch makes that need no database: how many calls it may lock, which
//! calls wait for the next batch, how its claim size adapts, which calls must be re-derived
//! from their history, and which events are redeliveries. The batch executor
//! (src/pipeline/batch.rs) reads the inputs from PostgreSQL and acts on the answers.

use crate::domain::event::CallEvent;
use crate::domain::fold::{conflicts_with_terminal, CallRow};
use crate::domain::transitions::RuleSet;
use std::collections::HashMap;
use std::hash::Hash;

/// How many distinct calls one batch may hold locks on: a quarter of the shared lock table
/// (`max_locks_per_transaction` × `max_connections`-ish backends), shared among the workers
/// and one more processor, so that a large batch never exhausts it (other sessions would
/// fail with "out of shared memory"). Never fewer than 16.
pub fn lock_cap(max_locks_per_xact: i32, max_backends: i32, workers: usize) -> usize {
    let table = (max_locks_per_xact.max(10) as usize) * (max_backends.max(1) as usize);
    (table / 4 / (workers + 1)).max(16)
}

/// The calls a batch keeps when it holds more than `cap`: the `cap` calls whose first claimed
/// event is oldest (`first_event`, an event id); the others are returned to wait.
pub fn keep_oldest_calls(mut calls: Vec<i64>, cap: usize, first_event: impl Fn(i64) -> i64) -> (Vec<i64>, Vec<i64>) {
    if calls.len() <= cap {
        return (calls, Vec::new());
    }
    calls.sort_unstable_by_key(|&c| first_event(c));
    let waiting = calls.split_off(cap);
    (calls, waiting)
}

/// The claim size a backend adapts to: after a batch capped by the lock table, the events
/// it kept; doubled back after each full batch that was not capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveLimit(i32);

impl Default for AdaptiveLimit {
    fn default() -> AdaptiveLimit {
        AdaptiveLimit(i32::MAX)
    }
}

impl AdaptiveLimit {
    /// The claim size for a batch that asks for `wanted` events.
    pub fn limit(self, wanted: i32) -> i32 {
        wanted.min(self.0)
    }

    /// After a batch: `capped_keeping` the events kept when the lock table capped it, else
    /// whether it came back full.
    pub fn after(self, capped_keeping: Option<usize>, full: bool) -> AdaptiveLimit {
        match capped_keeping {
            Some(kept) => AdaptiveLimit(kept.clamp(1, i32::MAX as usize) as i32),
            None if full => AdaptiveLimit(self.0.saturating_mul(2)),
            None => self,
        }
    }
}

/// Whether a call must be folded from its applied history rather than from its row: one of
/// its new events is no newer than the row's last event (late, or a redelivery the insert
/// trigger could not catch), or asks a call in a terminal status for another status (only
/// the history says whether that status was a default a later event may refine).
pub fn needs_history<'e>(rules: &RuleSet, row: &CallRow, events: impl IntoIterator<Item = &'e CallEvent>) -> bool {
    events.into_iter().any(|ev| {
        ev.event_at.zip(row.last_event_at).is_some_and(|(at, last)| at <= last)
            || conflicts_with_terminal(rules, ev, row)
    })
}

/// The redeliveries among a call's events (`idx`, in event order): an event of the batch
/// (index < `n_batch`) whose key an applied history event (index >= `n_batch`) or an earlier
/// batch event already has. Returns (index of the redelivery, id of the first delivery).
/// Events without a key (`key` None) are never redeliveries.
pub fn find_redeliveries<K: Hash + Eq>(
    idx: &[usize],
    n_batch: usize,
    id: impl Fn(usize) -> i64,
    key: impl Fn(usize) -> Option<K>,
) -> Vec<(usize, i64)> {
    let mut first: HashMap<K, i64> = HashMap::new();
    for &i in idx.iter().filter(|&&i| i >= n_batch) {
        if let Some(k) = key(i) {
            first.entry(k).or_insert(id(i));
        }
    }
    let mut dups = Vec::new();
    for &i in idx.iter().filter(|&&i| i < n_batch) {
        if let Some(k) = key(i) {
            match first.get(&k) {
                Some(&orig) => dups.push((i, orig)),
                None => {
                    first.insert(k, id(i));
                }
            }
        }
    }
    dups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_cap_is_a_quarter_of_the_table_per_processor() {
        // 64 locks × 100 backends = 6,400 entries; a quarter among 2 workers + 1: 533.
        assert_eq!(lock_cap(64, 100, 2), 533);
        // Tiny settings never go below 16, and nonsense is read as the minimum.
        assert_eq!(lock_cap(10, 1, 4), 16);
        assert_eq!(lock_cap(-5, 0, 0), 16);
    }

    #[test]
    fn the_oldest_calls_stay_and_the_rest_wait() {
        let first = |c: i64| [(7, 30), (8, 10), (9, 20)].iter().find(|(k, _)| *k == c).unwrap().1;
        assert_eq!(keep_oldest_calls(vec![7, 8, 9], 2, first), (vec![8, 9], vec![7]));
        assert_eq!(keep_oldest_calls(vec![7, 8, 9], 3, first), (vec![7, 8, 9], vec![]));
    }

    #[test]
    fn the_claim_size_follows_the_lock_table_down_and_doubles_back() {
        let a = AdaptiveLimit::default();
        assert_eq!(a.limit(500), 500);
        let a = a.after(Some(120), true);
        assert_eq!(a.limit(500), 120);
        let a = a.after(None, true);
        assert_eq!(a.limit(500), 240);
        assert_eq!(a.after(None, false), a, "a batch that was not full changes nothing");
        assert_eq!(a.after(Some(0), false).limit(500), 1, "never below one event");
        assert_eq!(AdaptiveLimit::default().after(None, true).limit(500), 500, "no overflow");
    }

    #[test]
    fn redeliveries_are_found_against_history_and_earlier_events() {
        // Indexes 0..3 are the batch, 3.. the applied history; keys by index.
        let keys = [Some("ringing@1"), Some("hangup@2"), Some("ringing@1"), Some("hangup@2"), None];
        let id = |i: usize| 100 + i as i64;
        let found = find_redeliveries(&[3, 0, 1, 2, 4], 3, id, |i| keys[i]);
        // 1 repeats the history's 3; 2 repeats the batch's own 0; 0 is the first of its key.
        assert_eq!(found, vec![(1, 103), (2, 100)]);
        assert!(find_redeliveries(&[4], 3, id, |i| keys[i]).is_empty());
    }
}
