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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far the floor trails the highest id claimed.
pub const LAG: Duration = Duration::from_secs(1);
/// How often a claim starts from the lowest id.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ScanFloor {
    floor: i64,
    /// (when, highest claimed id + 1), oldest first; entries older than LAG are folded into
    /// `floor`.
    recent: VecDeque<(Instant, i64)>,
    last_full_scan: Option<Instant>,
}

impl Default for ScanFloor {
    fn default() -> Self {
        ScanFloor::new()
    }
}

impl ScanFloor {
    pub fn new() -> ScanFloor {
        ScanFloor { floor: 0, recent: VecDeque::new(), last_full_scan: None }
    }

    /// The id the next claim starts at (0 = a full scan, which is then recorded).
    pub fn start(&mut self, now: Instant) -> i64 {
        self.advance(now);
        if self.last_full_scan.is_none_or(|t| now.duration_since(t) >= FULL_SCAN_EVERY) {
            self.last_full_scan = Some(now);
            return 0;
        }
        self.floor
    }

    /// Records what a claim that started at `from` returned. A full scan that finds only
    /// ids below the floor means the floor is too high (ids started again after the
    /// extension was re-created, or many stragglers): it starts over from 0.
    pub fn claimed(&mut self, now: Instant, from: i64, max_id: Option<i64>) {
        if from == 0 && max_id.is_some_and(|id| id < self.floor) {
            self.floor = 0;
            self.recent.clear();
        }
        if let Some(id) = max_id {
            let next = id.saturating_add(1);
            if self.recent.back().is_none_or(|&(_, last)| next > last) {
                self.recent.push_back((now, next));
            }
        }
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) {
        while let Some(&(at, next)) = self.recent.front() {
            if now.duration_since(at) < LAG {
                break;
            }
            self.floor = self.floor.max(next);
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_claim_is_a_full_scan() {
        let mut f = ScanFloor::new();
        assert_eq!(f.start(Instant::now()), 0);
    }

    #[test]
    fn floor_trails_the_claims_by_the_lag() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        assert_eq!(f.start(t0), 0);
        f.claimed(t0, 0, Some(500));
        // Within the lag the floor has not moved.
        assert_eq!(f.start(t0 + ms(100)), 0);
        assert_eq!(f.floor, 0);
        f.claimed(t0 + ms(100), 0, Some(1000));
        // After the lag, the floor passes what was claimed a lag ago, not what came since.
        assert_eq!(f.start(t0 + ms(1050)), 0, "a full scan is due after FULL_SCAN_EVERY");
        assert_eq!(f.floor, 501);
        assert_eq!(f.start(t0 + ms(1200)), 1001);
    }

    #[test]
    fn full_scan_comes_back_periodically() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        assert_eq!(f.start(t0), 0);
        f.claimed(t0, 0, Some(10));
        assert_eq!(f.start(t0 + ms(1500)), 0);
        assert_eq!(f.start(t0 + ms(1600)), 11);
        assert_eq!(f.start(t0 + ms(2600)), 0);
    }

    #[test]
    fn empty_claims_and_lower_ids_never_move_the_floor_back() {
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        f.start(t0);
        f.claimed(t0, 0, Some(100));
        f.claimed(t0 + ms(10), 101, None);
        f.claimed(t0 + ms(20), 0, Some(50)); // a full scan found an old straggler
        f.start(t0 + ms(2000));
        assert_eq!(f.floor, 101);
        // A full scan that finds a straggler above the floor keeps the floor.
        f.claimed(t0 + ms(2100), 0, Some(150));
        f.start(t0 + ms(3200));
        assert_eq!(f.floor, 151);
    }

    #[test]
    fn a_full_scan_below_the_floor_starts_over() {
        // The extension was re-created: ids start again from 1.
        let t0 = Instant::now();
        let mut f = ScanFloor::new();
        f.start(t0);
        f.claimed(t0, 0, Some(100_000));
        f.start(t0 + ms(1100));
        assert_eq!(f.start(t0 + ms(1200)), 100_001);
        f.claimed(t0 + ms(1200), 100_001, None);
        assert_eq!(f.start(t0 + ms(2200)), 0);
        f.claimed(t0 + ms(2200), 0, Some(500));
        assert_eq!(f.floor, 0);
        assert_eq!(f.start(t0 + ms(2300)), 0);
        f.claimed(t0 + ms(2300), 0, Some(1000));
        f.start(t0 + ms(3250));
        assert_eq!(f.floor, 501);
    }
}
