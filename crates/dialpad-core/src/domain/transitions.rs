//! The call status machine, as data: which statuses exist, which are terminal, which moves
//! are allowed, and how a Dialpad `state` maps onto a status. Loaded from the
//! `dialpad.call_statuses`, `dialpad.status_transitions` and `dialpad.state_mapping` tables
//! (see `pipeline/rules.rs`); the decisions here are pure.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Default)]
pub struct StateRule {
    /// None: an enrichment event, no status change.
    pub status: Option<String>,
    /// Used instead of `status` when the event has no `date_connected`.
    pub unanswered_inbound: Option<String>,
    pub unanswered_outbound: Option<String>,
    /// A call already in a terminal status keeps it: the event (hangup) confirms the end.
    pub keep_terminal: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// status → is terminal
    pub statuses: HashMap<String, bool>,
    pub transitions: HashSet<(String, String)>,
    pub states: HashMap<String, StateRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownCurrent,
    UnknownNext,
    MissingNext,
    Terminal,
    NotAllowed,
}

/// Why a transition was refused, naming both statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionError {
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Reason,
}

impl TransitionError {
    /// `<from> to <to>`, NULL shown as NULL: the part every message starts with.
    pub fn headline(&self) -> String {
        format!(
            "Invalid status transition from {} to {}",
            self.from.as_deref().unwrap_or("NULL"),
            self.to.as_deref().unwrap_or("NULL")
        )
    }

    pub fn reason_text(&self) -> String {
        let name = |s: &Option<String>| s.clone().unwrap_or_else(|| "NULL".into());
        match self.reason {
            Reason::UnknownCurrent => format!("{} is not a known status", name(&self.from)),
            Reason::UnknownNext => format!("{} is not a known status", name(&self.to)),
            Reason::MissingNext => "the next status is NULL".into(),
            Reason::Terminal => format!("{} is a terminal status", name(&self.from)),
            Reason::NotAllowed => "not an allowed transition".into(),
        }
    }
}

impl std::fmt::Display for TransitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.headline(), self.reason_text())
    }
}

impl RuleSet {
    #[cfg(test)]
    /// The seed's machine, used by unit tests (the SQL script inserts the same rows).
    pub fn seed_default() -> RuleSet {
        let mut r = RuleSet::default();
        for (s, terminal) in [
            ("ringing", false),
            ("active", false),
            ("ended", true),
            ("missed", true),
            ("rejected", true),
            ("voicemail", true),
        ] {
            r.statuses.insert(s.into(), terminal);
        }
        for (a, b) in [
            ("ringing", "active"),
            ("ringing", "ended"),
            ("ringing", "missed"),
            ("ringing", "rejected"),
            ("ringing", "voicemail"),
            ("active", "ended"),
            ("active", "voicemail"),
        ] {
            r.transitions.insert((a.into(), b.into()));
        }
        r
    }

    pub fn is_terminal(&self, status: &str) -> bool {
        self.statuses.get(status).copied().unwrap_or(false)
    }

    pub fn is_known(&self, status: &str) -> bool {
        self.statuses.contains_key(status)
    }

    /// NULL current (a new call) may go to any known status; the same status is always fine
    /// (idempotent retries); nothing leaves a terminal status, whatever the transitions table
    /// says.
    pub fn check(&self, current: Option<&str>, next: Option<&str>) -> Result<(), TransitionError> {
        let fail =
            |reason| Err(TransitionError { from: current.map(str::to_string), to: next.map(str::to_string), reason });
        let Some(next) = next else { return fail(Reason::MissingNext) };
        if !self.is_known(next) {
            return fail(Reason::UnknownNext);
        }
        let Some(current) = current else { return Ok(()) };
        let Some(&terminal) = self.statuses.get(current) else {
            return fail(Reason::UnknownCurrent);
        };
        if current == next {
            return Ok(());
        }
        if terminal {
            return fail(Reason::Terminal);
        }
        if self.transitions.contains(&(current.to_string(), next.to_string())) {
            Ok(())
        } else {
            fail(Reason::NotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples() {
        let r = RuleSet::seed_default();
        let ok = |a: Option<&str>, b: &str| r.check(a, Some(b)).is_ok();
        assert!(ok(Some("ringing"), "active"));
        assert!(ok(Some("active"), "ended"));
        assert!(!ok(Some("ended"), "active"));
        assert!(!ok(Some("missed"), "active"));
        assert!(ok(Some("active"), "active"));
        assert!(ok(Some("ended"), "ended"));
        for t in ["active", "ended", "missed", "rejected", "voicemail"] {
            assert!(ok(Some("ringing"), t));
        }
        assert!(ok(Some("active"), "voicemail"));
        assert!(!ok(Some("active"), "ringing"));
        assert!(!ok(Some("active"), "missed"));
        for terminal in ["ended", "missed", "rejected", "voicemail"] {
            for t in ["ringing", "active", "ended", "missed", "rejected", "voicemail"] {
                assert_eq!(ok(Some(terminal), t), terminal == t, "{terminal} -> {t}");
            }
        }
        assert!(ok(None, "ringing"));
        assert!(ok(None, "ended"));
    }

    #[test]
    fn unknown_and_null_statuses() {
        let r = RuleSet::seed_default();
        assert_eq!(r.check(None, Some("bogus")).unwrap_err().reason, Reason::UnknownNext);
        assert_eq!(r.check(Some("bogus"), Some("ended")).unwrap_err().reason, Reason::UnknownCurrent);
        assert_eq!(r.check(Some("ringing"), None).unwrap_err().reason, Reason::MissingNext);
        assert_eq!(
            r.check(Some("bogus"), Some("ended")).unwrap_err().to_string(),
            "Invalid status transition from bogus to ended: bogus is not a known status"
        );
    }

    #[test]
    fn messages_name_both_statuses_and_the_reason() {
        let r = RuleSet::seed_default();
        let msg = r.check(Some("ended"), Some("ringing")).unwrap_err().to_string();
        assert_eq!(msg, "Invalid status transition from ended to ringing: ended is a terminal status");
        let msg = r.check(Some("active"), Some("ringing")).unwrap_err().to_string();
        assert_eq!(msg, "Invalid status transition from active to ringing: not an allowed transition");
    }

    #[test]
    fn terminal_wins_over_a_transition_row() {
        let mut r = RuleSet::seed_default();
        r.transitions.insert(("ended".into(), "active".into()));
        assert!(r.check(Some("ended"), Some("active")).is_err());
    }
}
