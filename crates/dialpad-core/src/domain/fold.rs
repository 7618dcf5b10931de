//! Applying a call's events, in order, to its row: the pure heart of the processor.
//!
//! Dialpad delivers out of order and more than once, so the result must not depend on
//! arrival order more than it has to: an event older than the row's last event only fills
//! columns that are still empty; the status moves only along the transition rules (a stale
//! or invalid move is rejected and recorded); a duplicate changes nothing at all.
//!
//! Terminal statuses, in event order:
//! - an event whose mapping has `keep_terminal` (hangup) confirms a terminal status the call
//!   already has: no change, no rejection (voicemail → hangup, blocked → hangup are normal);
//! - a status concluded from `status_if_unanswered_*` (a hangup without `date_connected`:
//!   missed, or rejected for outbound) is a default: a later event of the call that maps to
//!   another terminal status (`voicemail_uploaded` after the hangup) refines it;
//! - every other terminal status is final; a move out of it is rejected and recorded.
//!
//! The processor re-derives a call from its whole history in event order whenever an event
//! is late or conflicts with a terminal status, so the outcome is the same whatever order
//! the events arrived in.

use crate::domain::direction;
use crate::domain::event::CallEvent;
use crate::domain::recordings;
use crate::domain::transitions::RuleSet;

/// The status a call gets when its first event carries none (e.g. a recording event that
/// overtook the ringing one).
pub const INITIAL_STATUS: &str = "ringing";

pub use crate::domain::call_row::CallRow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the event (in the caller's slice) that asked for the move.
    pub event: usize,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub row: CallRow,
    pub rejections: Vec<Rejection>,
    /// The event whose sanitized payload becomes `raw_payload` (the newest applied), if any.
    pub raw_payload_from: Option<usize>,
    /// Whether anything must be written.
    pub changed: bool,
}

/// What an event asks of a call's status, per `state_mapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub status: String,
    /// Concluded from status_if_unanswered_* (a default a later event may refine).
    pub by_default: bool,
    pub keep_terminal: bool,
}

/// Whether applying `ev` to a row in a terminal status needs the call's history: it asks
/// for another status and does not merely confirm the end.
pub fn conflicts_with_terminal(rules: &RuleSet, ev: &CallEvent, row: &CallRow) -> bool {
    rules.is_terminal(&row.status)
        && target(rules, ev, Some(row)).is_some_and(|t| !t.keep_terminal && t.status != row.status)
}

fn target(rules: &RuleSet, ev: &CallEvent, row: Option<&CallRow>) -> Option<Target> {
    let rule = rules.states.get(ev.state.as_deref()?)?;
    let status = rule.status.clone()?;
    let keep_terminal = rule.keep_terminal;
    let connected = ev.connected_at.is_some() || row.is_some_and(|r| r.connected_at.is_some());
    if connected {
        return Some(Target { status, by_default: false, keep_terminal });
    }
    let dir = ev
        .direction
        .as_deref()
        .and_then(direction::normalize)
        .map(|d| d.as_str())
        .or_else(|| row.and_then(|r| r.direction.as_deref()));
    let unanswered =
        if dir == Some("outbound") { rule.unanswered_outbound.clone() } else { rule.unanswered_inbound.clone() };
    Some(match unanswered {
        Some(s) => Target { status: s, by_default: true, keep_terminal },
        None => Target { status, by_default: false, keep_terminal },
    })
}

macro_rules! merge {
    ($row:ident, $ev:ident, $newer:ident, $($field:ident),*) => {
        $(
            if $ev.$field.is_some() && ($newer || $row.$field.is_none()) {
                $row.$field = $ev.$field.clone();
            }
        )*
    };
}

/// The status part of a fold: the current status, whether it is a default conclusion (see
/// the module doc; unknown for a row read back from the table, so taken as final there: the
/// processor re-derives from history whenever that matters), and the refused moves.
struct StatusFold {
    has_status: bool,
    by_default: bool,
    rejections: Vec<Rejection>,
}

impl StatusFold {
    /// Applies what event `i` asks of the status, along the rules.
    fn apply(&mut self, rules: &RuleSet, row: &mut CallRow, i: usize, ev: &CallEvent) {
        let known_before = self.has_status;
        let Some(t) = target(rules, ev, known_before.then_some(&*row)) else { return };
        let current = known_before.then_some(row.status.as_str());
        let terminal_now = current.is_some_and(|c| rules.is_terminal(c));
        if terminal_now && t.keep_terminal {
            // confirms the end the call already reached
        } else if terminal_now && self.by_default && rules.is_terminal(&t.status) && rules.is_known(&t.status) {
            if current != Some(t.status.as_str()) {
                row.status = t.status;
                row.end_state = ev.state.clone();
                self.by_default = t.by_default;
            }
        } else {
            match rules.check(current, Some(&t.status)) {
                Ok(()) => {
                    if current != Some(t.status.as_str()) {
                        self.by_default = t.by_default;
                        if rules.is_terminal(&t.status) {
                            row.end_state = ev.state.clone();
                        }
                    }
                    row.status = t.status;
                    self.has_status = true;
                }
                Err(e) => self.rejections.push(Rejection {
                    event: i,
                    from: current.unwrap_or("").to_string(),
                    to: t.status,
                    reason: e.reason_text(),
                }),
            }
        }
    }
}

/// Fills the row's columns from `ev`: a newer event overwrites, an older one only fills
/// what is still empty; the source is the first event's and never changes.
fn merge_fields(row: &mut CallRow, ev: &CallEvent, newer: bool) {
    let dir = ev.direction.as_deref().and_then(direction::normalize);
    if dir.is_some() && (newer || row.direction.is_none()) {
        row.direction = dir.map(|d| d.as_str().to_string());
    }
    merge!(
        row,
        ev,
        newer,
        external_number,
        internal_number,
        started_at,
        connected_at,
        ended_at,
        duration_seconds,
        target_id,
        target_type,
        target_name,
        contact_id,
        contact_name,
        master_call_id,
        entry_point_call_id,
        operator_call_id,
        voicemail_link,
        transcript,
        talk_seconds,
        hold_seconds,
        total_duration_seconds,
        rang_at,
        queued_at,
        is_transferred,
        transferred_from_id,
        group_id,
        labels,
        csat_score
    );
    if !ev.recordings.is_empty() {
        let list = recordings::merge(row.recordings.as_deref(), &ev.recordings);
        if let Some(url) = recordings::call_recording_url(&list) {
            row.recording_url = Some(url.to_string());
        }
        if let Some(url) = recordings::voicemail_url(&list) {
            row.voicemail_recording_url = Some(url.to_string());
        }
        row.recordings = recordings::to_json(&list);
    }
    if row.source.is_none() && ev.source.is_some() {
        row.source = ev.source.clone();
    }
    if newer {
        if ev.state.is_some() {
            row.last_state = ev.state.clone();
        }
        if ev.event_at.is_some() {
            row.last_event_at = ev.event_at;
        }
    }
}

/// Applies `events` (already in event order) to `existing` (None for a new call).
/// `on_event` runs before each event: the backend glue checks for interrupts there (a call's
/// history is as long as the inbox holds), pure code here calls no PostgreSQL function.
pub fn fold_events_by_call(
    existing: Option<&CallRow>,
    events: &[&CallEvent],
    rules: &RuleSet,
    on_event: &mut dyn FnMut(),
) -> Folded {
    let mut row = existing.cloned().unwrap_or_else(|| CallRow {
        dialpad_call_id: events.first().map(|e| e.call_id).unwrap_or_default(),
        ..CallRow::default()
    });
    let mut status = StatusFold { has_status: existing.is_some(), by_default: false, rejections: Vec::new() };
    let mut raw_payload_from = None;
    for (i, ev) in events.iter().enumerate() {
        on_event();
        // An event without a timestamp cannot be placed: treat it as the newest.
        let newer = match (row.last_event_at, ev.event_at) {
            (Some(last), Some(at)) => at > last,
            (None, _) | (_, None) => true,
        };
        status.apply(rules, &mut row, i, ev);
        merge_fields(&mut row, ev, newer);
        if newer {
            raw_payload_from = Some(i);
        }
    }
    if !status.has_status {
        row.status = INITIAL_STATUS.to_string();
    }
    let changed = raw_payload_from.is_some() || existing != Some(&row);
    Folded { row, rejections: status.rejections, raw_payload_from, changed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transitions::StateRule;

    fn rules() -> RuleSet {
        let mut r = RuleSet::seed_default();
        let mut map = |s: &str, st: Option<&str>, inb: Option<&str>, outb: Option<&str>| {
            r.states.insert(
                s.into(),
                StateRule {
                    status: st.map(Into::into),
                    unanswered_inbound: inb.map(Into::into),
                    unanswered_outbound: outb.map(Into::into),
                    keep_terminal: false,
                },
            );
        };
        for s in ["calling", "preanswer", "ringing", "queued"] {
            map(s, Some("ringing"), None, None);
        }
        for s in ["connected", "hold"] {
            map(s, Some("active"), None, None);
        }
        map("hangup", Some("ended"), Some("missed"), Some("rejected"));
        map("missed", Some("missed"), None, None);
        map("voicemail", Some("voicemail"), None, None);
        map("voicemail_uploaded", Some("voicemail"), None, None);
        map("blocked", Some("rejected"), None, None);
        map("recording", None, None, None);
        if let Some(h) = r.states.get_mut("hangup") {
            h.keep_terminal = true;
        }
        r
    }

    fn ev(state: &str, at: i64) -> CallEvent {
        CallEvent { call_id: 1, state: Some(state.into()), event_at: Some(at), ..Default::default() }
    }

    fn fold(existing: Option<&CallRow>, evs: &[CallEvent]) -> Folded {
        let refs: Vec<&CallEvent> = evs.iter().collect();
        fold_events_by_call(existing, &refs, &rules(), &mut || {})
    }

    #[test]
    fn answered_inbound_call_ends() {
        let mut connected = ev("connected", 2);
        connected.connected_at = Some(2);
        connected.direction = Some("Incoming".into());
        let mut hangup = ev("hangup", 3);
        hangup.connected_at = Some(2);
        let f = fold(None, &[ev("ringing", 1), connected, hangup]);
        assert_eq!(f.row.status, "ended");
        assert_eq!(f.row.direction.as_deref(), Some("inbound"));
        assert_eq!(f.row.last_state.as_deref(), Some("hangup"));
        assert!(f.rejections.is_empty());
        assert_eq!(f.raw_payload_from, Some(2));
    }

    #[test]
    fn unanswered_hangup_is_missed_inbound_and_rejected_outbound() {
        let mut h = ev("hangup", 2);
        h.direction = Some("inbound".into());
        assert_eq!(fold(None, &[ev("ringing", 1), h.clone()]).row.status, "missed");
        h.direction = Some("outbound".into());
        assert_eq!(fold(None, &[ev("calling", 1), h]).row.status, "rejected");
    }

    #[test]
    fn out_of_order_events_do_not_regress_the_row() {
        let mut hangup = ev("hangup", 3);
        hangup.connected_at = Some(2);
        hangup.ended_at = Some(3);
        let first = fold(None, &[hangup]);
        assert_eq!(first.row.status, "ended");
        let mut late = ev("ringing", 1);
        late.ended_at = Some(999);
        late.external_number = Some("+1".into());
        let second = fold(Some(&first.row), &[late]);
        assert_eq!(second.row.status, "ended");
        assert_eq!(second.row.ended_at, Some(3), "older events never overwrite");
        assert_eq!(second.row.external_number.as_deref(), Some("+1"), "but they fill gaps");
        assert_eq!(second.row.last_state.as_deref(), Some("hangup"));
        assert_eq!(second.raw_payload_from, None);
        assert_eq!(second.rejections.len(), 1);
        assert_eq!((second.rejections[0].from.as_str(), second.rejections[0].to.as_str()), ("ended", "ringing"));
    }

    #[test]
    fn transferred_from_is_kept_like_the_other_leg_columns() {
        let mut ringing = ev("ringing", 1);
        ringing.transferred_from_id = Some("5001".into());
        let hangup = ev("hangup", 2);
        // the newer event without it erases nothing
        assert_eq!(fold(None, &[ringing.clone(), hangup.clone()]).row.transferred_from_id.as_deref(), Some("5001"));
        // an older event fills it when empty, whatever the arrival order
        let done = fold(None, &[hangup]);
        assert_eq!(fold(Some(&done.row), &[ringing]).row.transferred_from_id.as_deref(), Some("5001"));
    }

    #[test]
    fn duplicates_change_nothing() {
        let first = fold(None, &[ev("ringing", 1)]);
        let again = fold(Some(&first.row), &[ev("ringing", 1)]);
        assert!(!again.changed);
        assert!(again.rejections.is_empty());
    }

    #[test]
    fn enrichment_first_starts_as_ringing_and_keeps_status() {
        let mut rec = ev("recording", 5);
        rec.recordings =
            vec![crate::domain::recordings::Recording { url: Some("https://r".into()), ..Default::default() }];
        let f = fold(None, &[rec]);
        assert_eq!(f.row.status, "ringing");
        assert_eq!(f.row.recording_url.as_deref(), Some("https://r"));
        let mut unknown = ev("some_new_state", 6);
        unknown.transcript = Some("hi".into());
        let g = fold(Some(&f.row), &[unknown]);
        assert_eq!(g.row.status, "ringing");
        assert_eq!(g.row.transcript.as_deref(), Some("hi"));
    }

    #[test]
    fn normal_lifecycles_reject_nothing() {
        let f = fold(None, &[ev("ringing", 1), ev("voicemail", 2), ev("hangup", 3), ev("voicemail_uploaded", 4)]);
        assert_eq!((f.row.status.as_str(), f.rejections.len()), ("voicemail", 0));
        let f = fold(None, &[ev("blocked", 1), ev("hangup", 2)]);
        assert_eq!((f.row.status.as_str(), f.rejections.len()), ("rejected", 0));
        let f = fold(None, &[ev("ringing", 1), ev("missed", 2), ev("hangup", 3)]);
        assert_eq!((f.row.status.as_str(), f.rejections.len()), ("missed", 0));
    }

    #[test]
    fn a_default_conclusion_is_refined_and_never_flips_back() {
        // Every arrival order of a voicemail call gives voicemail, when all events are there,
        // re-derived in event order as the processor does.
        let events = [ev("ringing", 1), ev("voicemail", 2), ev("hangup", 3), ev("voicemail_uploaded", 4)];
        let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1], [3, 2, 0, 1]];
        for order in orders {
            let mut seen: Vec<CallEvent> = Vec::new();
            let mut statuses = Vec::new();
            for &i in &order {
                seen.push(events[i].clone());
                seen.sort_by_key(|e| e.event_at);
                let f = fold(None, &seen);
                assert!(f.rejections.is_empty(), "{order:?}: {:?}", f.rejections);
                statuses.push(f.row.status.clone());
            }
            assert_eq!(statuses.last().map(String::as_str), Some("voicemail"), "{order:?}");
            // once voicemail, always voicemail: no voicemail -> missed -> voicemail
            let first_vm = statuses.iter().position(|s| s == "voicemail").unwrap();
            assert!(statuses[first_vm..].iter().all(|s| s == "voicemail"), "{order:?}: {statuses:?}");
        }
        // An explicit terminal status is final: missed (a missed event) is not refined.
        let f = fold(None, &[ev("missed", 1), ev("voicemail", 2)]);
        assert_eq!((f.row.status.as_str(), f.rejections.len()), ("missed", 1));
    }
}
