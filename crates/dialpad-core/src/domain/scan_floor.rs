//! Where the claim starts reading the pending index: pure logic, kept per processor.
//!
//! A processed event leaves an index entry in `webhook_events_pending` (its old row version
//! had `processed_at IS NULL`). Normally the first scan that meets it finds the version dead
//! and marks the entry, and later scans skip it for free. But while any transaction holds an
//! old snapshot (a long report, a forgotten `BEGIN`, a replica with hot_standby_feedback),
//! nothing processed since can be marked or vacuumed, and a claim that starts at the lowest
//! id reads through every one of them: after ten minutes at 1,000 events/s, 600,000 heap
//! visits per claim.
//!
//! So each processor remembers a floor: an id below which it has already seen everything.
//! The claim reads `id >= floor` and starts past the dead prefix. The floor is only a hint,
//! and it is kept conservative:
//! - it trails the highest id claimed by [`LAG`], so an event whose inserting transaction
//!   committed after a higher id (concurrent ingest sessions) is still in range;
//! - every [`FULL_SCAN_EVERY`] the claim starts from the lowest id again, which picks up
//!   whatever the floor passed: an event whose backoff has expired, an event another
//!   processor had locked and then released, a very slow inserter.
//!
//! Nothing is ever skipped for good; at worst an event waits for the next full scan.
//!
//! The floor also bounds the partitions a claim visits. The inbox is partitioned by
//! `received_at`, and a claim's plan sets up an index scan on every partition it cannot
//! prune: with retention at its default (forever), a year of daily partitions cost the
//! worker a third more CPU per event on a stream. Alongside the id floor goes the oldest
//! `received_at` among the events of the claim that set it, less [`RECEIVED_MARGIN`]: a
//! claim from the floor reads only partitions from there on (pruned when its plan starts).
//! `received_at` is the clock at insert, as the id is: an event with an id above the floor
//! was received after those events, unless its inserter set `received_at` itself (the table
//! owner backfilling old events) or the server's clock stepped back by more than the
//! margin. The full scan finds such an event, as it finds everything else, and its claim
//! takes the floor's `received_at` back with it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far the floor trails the highest id claimed.
pub const LAG: Duration = Duration::from_secs(1);
/// How often a claim starts from the lowest id.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);
/// How far before the floor's oldest `received_at` a claim from the floor still reads, in
/// microseconds (PostgreSQL's timestamptz unit).
pub const RECEIVED_MARGIN: i64 = 3_600_000_000;

/// Where a claim starts: the lowest id it reads, and the lowest `received_at` (`None`: from
/// the first partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub id: i64,
    pub received_at: Option<i64>,
}

impl Start {
    /// Every due event: from the lowest id, in every partition.
    pub const FULL: Start = Start { id: 0, received_at: None };
}

#[derive(Debug)]
pub struct ScanFloor {
    floor: i64,
    /// The oldest `received_at` of the claim that set `floor` (None while `floor` is 0).
    received_floor: Option<i64>,
    /// (when, highest claimed id + 1, oldest received_at claimed), oldest first; entries
    /// older than LAG are folded into `floor` and `received_floor`.
    recent: VecDeque<(Instant, i64, i64)>,
    last_full_scan: Option<Instant>,
}

impl Default for ScanFloor {
    fn default() -> Self {
        ScanFloor::new()
    }
}

impl ScanFloor {
    pub fn new() -> ScanFloor {
        ScanFloor { floor: 0, received_floor: None, recent: VecDeque::new(), last_full_scan: None }
    }

    /// Where the next claim starts ([`Start::FULL`]: a full scan, which is then recorded).
    pub fn start(&mut self, now: Instant) -> Start {
        self.advance(now);
        if self.last_full_scan.is_none_or(|t| now.duration_since(t) >= FULL_SCAN_EVERY) {
            self.last_full_scan = Some(now);
            return Start::FULL;
        }
        // received_floor is None while floor is 0: then this is Start::FULL.
        Start { id: self.floor, received_at: self.received_floor.map(|r| r.saturating_sub(RECEIVED_MARGIN)) }
    }

    /// Records what a claim that started at `from` returned: the highest id, and the oldest
    /// `received_at` of its events. A full scan that finds only ids below the floor means
    /// the floor is too high (ids started again after the extension was re-created, or many
    /// stragglers): it starts over from 0.
    pub fn claimed(&mut self, now: Instant, from: i64, claimed: Option<(i64, i64)>) {
        if from == 0 && claimed.is_some_and(|(id, _)| id < self.floor) {
            self.floor = 0;
            self.received_floor = None;
            self.recent.clear();
        }
        if let Some((id, oldest)) = claimed {
            let next = id.saturating_add(1);
            if self.recent.back().is_none_or(|&(_, last, _)| next > last) {
                self.recent.push_back((now, next, oldest));
            }
        }
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) {
        while let Some(&(at, next, oldest)) = self.recent.front() {
            if now.duration_since(at) < LAG {
                break;
            }
            if next >= self.floor {
                self.floor = next;
                self.received_floor = Some(oldest);
            }
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A received_at (microseconds).
    const AT: i64 = 800_000_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_claim_is_a_full_scan() {
        let mut f = ScanFloor::new();
        assert_eq!(f.start(Instant::now()).id, 0);
    }

    #[test]
    fn floor_trails_the_claims_by_the_lag() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        assert_eq!(f.start(t0).id, 0);
        f.claimed(t0, 0, Some((500, AT)));
        // Within the lag the floor has not moved.
        assert_eq!(f.start(t0 + ms(100)).id, 0);
        assert_eq!(f.floor, 0);
        f.claimed(t0 + ms(100), 0, Some((1000, AT)));
        // After the lag, the floor passes what was claimed a lag ago, not what came since.
        assert_eq!(f.start(t0 + ms(1050)).id, 0, "a full scan is due after FULL_SCAN_EVERY");
        assert_eq!(f.floor, 501);
        assert_eq!(f.start(t0 + ms(1200)).id, 1001);
    }

    #[test]
    fn full_scan_comes_back_periodically() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        assert_eq!(f.start(t0).id, 0);
        f.claimed(t0, 0, Some((10, AT)));
        assert_eq!(f.start(t0 + ms(1500)).id, 0);
        assert_eq!(f.start(t0 + ms(1600)).id, 11);
        assert_eq!(f.start(t0 + ms(2600)).id, 0);
    }

    #[test]
    fn empty_claims_and_lower_ids_never_move_the_floor_back() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        f.start(t0);
        f.claimed(t0, 0, Some((100, AT)));
        f.claimed(t0 + ms(10), 101, None);
        f.claimed(t0 + ms(20), 0, Some((50, AT))); // a full scan found an old straggler
        f.start(t0 + ms(2000));
        assert_eq!(f.floor, 101);
        // A full scan that finds a straggler above the floor keeps the floor.
        f.claimed(t0 + ms(2100), 0, Some((150, AT)));
        f.start(t0 + ms(3200));
        assert_eq!(f.floor, 151);
    }

    #[test]
    fn a_full_scan_below_the_floor_starts_over() {
        // The extension was re-created: ids start again from 1.
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        f.start(t0);
        f.claimed(t0, 0, Some((100_000, AT)));
        f.start(t0 + ms(1100));
        assert_eq!(f.start(t0 + ms(1200)).id, 100_001);
        f.claimed(t0 + ms(1200), 100_001, None);
        assert_eq!(f.start(t0 + ms(2200)).id, 0);
        f.claimed(t0 + ms(2200), 0, Some((500, AT)));
        assert_eq!(f.floor, 0);
        assert_eq!(f.start(t0 + ms(2300)).id, 0);
        f.claimed(t0 + ms(2300), 0, Some((1000, AT)));
        f.start(t0 + ms(3250));
        assert_eq!(f.floor, 501);
    }

    #[test]
    fn a_claim_from_the_floor_reads_partitions_from_its_oldest_event_less_the_margin() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        assert_eq!(f.start(t0), Start::FULL);
        f.claimed(t0, 0, Some((100, AT)));
        f.claimed(t0 + ms(500), 0, Some((200, AT + 5)));
        // No floor yet: every partition.
        assert_eq!(f.start(t0 + ms(600)), Start::FULL);
        assert_eq!(f.start(t0 + ms(1100)), Start::FULL, "the periodic full scan");
        assert_eq!(f.start(t0 + ms(1200)), Start { id: 101, received_at: Some(AT - RECEIVED_MARGIN) });
        assert_eq!(f.start(t0 + ms(1600)), Start { id: 201, received_at: Some(AT + 5 - RECEIVED_MARGIN) });
        // A full scan that finds an old straggler (a retry come due) within the ids claimed
        // since: the floor it sets reads from that straggler's partition on.
        assert_eq!(f.start(t0 + ms(2200)), Start::FULL);
        f.claimed(t0 + ms(2200), 0, Some((300, AT - 86_400_000_000)));
        assert_eq!(f.start(t0 + ms(3250)), Start::FULL);
        assert_eq!(f.start(t0 + ms(3300)), Start { id: 301, received_at: Some(AT - 86_400_000_000 - RECEIVED_MARGIN) });
        // Starting over (a full scan finds only ids below the floor): every partition again.
        f.claimed(t0 + ms(3350), 0, Some((5, AT)));
        assert_eq!(f.start(t0 + ms(3400)), Start::FULL);
    }
}
