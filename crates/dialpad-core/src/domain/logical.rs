//! One real call computed from its legs: what the view `dialpad.logical_calls_from_legs`
//! defines in SQL (sql/analytics.sql, the definition a DBA reads), in Rust for the triggers
//! that keep `dialpad.logical_calls`, which run on every write of `dialpad.calls`. The two
//! give the same rows: tests/regress/sql/analysts.sql compares them after every scenario,
//! tests/upgrade.rs compares a table rebuilt by the view with one kept by the triggers.

/// What the computation reads of a leg (a row of `dialpad.calls`). Times are microseconds
/// since 2000-01-01 (timestamptz), durations seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leg {
    pub id: i64,
    pub logical_call_id: i64,
    pub direction: Option<String>,
    pub status: String,
    pub end_state: Option<String>,
    pub external_number: Option<String>,
    pub internal_number: Option<String>,
    pub started_at: Option<i64>,
    pub queued_at: Option<i64>,
    pub rang_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub last_event_at: Option<i64>,
    pub created_at: i64,
    pub talk_seconds: Option<f64>,
    pub hold_seconds: Option<f64>,
    pub is_transferred: Option<bool>,
    /// Set on the leg a transfer created: each such leg is one transfer.
    pub transferred_from_id: Option<String>,
    pub target_id: Option<String>,
    pub target_type: Option<String>,
    pub target_name: Option<String>,
    pub contact_id: Option<String>,
    pub contact_name: Option<String>,
    pub recording_url: Option<String>,
    pub voicemail_link: Option<String>,
    pub voicemail_recording_url: Option<String>,
    pub source: Option<String>,
}

/// A row of `dialpad.logical_calls`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogicalCall {
    pub logical_call_id: i64,
    pub direction: Option<String>,
    pub outcome: &'static str,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub wait_seconds: Option<f64>,
    pub talk_seconds: Option<f64>,
    pub hold_seconds: Option<f64>,
    pub legs: i32,
    pub transfers: i32,
    pub answered_by_target_id: Option<String>,
    pub answered_by_name: Option<String>,
    pub external_number: Option<String>,
    pub internal_number: Option<String>,
    pub contact_id: Option<String>,
    pub contact_name: Option<String>,
    pub recording_url: Option<String>,
    pub voicemail_link: Option<String>,
    pub source: Option<String>,
    pub last_event_at: Option<i64>,
}

fn is_voicemail_state(s: Option<&str>) -> bool {
    matches!(s, Some("voicemail") | Some("voicemail_uploaded"))
}

/// Per leg: the view's `leg0` .. `leg3` columns.
struct Role {
    is_root: bool,
    answered: bool,
    counted: bool,
    answers: bool,
}

/// The first value of `field` among `legs` in `order`, skipping NULLs.
fn first<'a, T: ?Sized>(
    legs: impl Iterator<Item = &'a Leg>,
    field: impl Fn(&'a Leg) -> Option<&'a T>,
    key: impl Fn(&Leg) -> (Option<i64>, i64),
) -> Option<&'a T> {
    legs.filter_map(|l| field(l).map(|v| (key(l), v)))
        .min_by(|a, b| nulls_last(a.0 .0, b.0 .0).then(a.0 .1.cmp(&b.0 .1)))
        .map(|(_, v)| v)
}

/// SQL's ascending order of a nullable value: NULLs last.
fn nulls_last(a: Option<i64>, b: Option<i64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// The root leg's value, else that of the leg with the smallest id having one.
fn root_else_first<'a>(
    legs: &'a [Leg],
    roles: &[Role],
    field: impl Fn(&'a Leg) -> Option<&'a String>,
) -> Option<String> {
    legs.iter()
        .zip(roles)
        .find(|(l, r)| r.is_root && field(l).is_some())
        .and_then(|(l, _)| field(l))
        .or_else(|| first(legs.iter(), &field, |l| (Some(l.id), 0)))
        .cloned()
}

fn roles(legs: &[Leg]) -> Vec<Role> {
    let answered = |l: &Leg| {
        l.connected_at.is_some()
            && l.talk_seconds.is_none_or(|t| t > 0.0)
            && !is_voicemail_state(l.end_state.as_deref())
    };
    let is_root = |l: &Leg| l.id == l.logical_call_id;
    let end_or_open = |l: &Leg| l.ended_at.unwrap_or(i64::MAX);
    let root_connected = legs.iter().filter(|l| is_root(l) && answered(l)).filter_map(|l| l.connected_at).max();
    let root_end = legs.iter().filter(|l| is_root(l)).map(end_or_open).max();
    let root_type = legs.iter().filter(|l| is_root(l)).filter_map(|l| l.target_type.as_deref()).max();
    let others_connected = legs.iter().filter(|l| !is_root(l) && answered(l)).filter_map(|l| l.connected_at).min();
    let carrier = match (root_connected, others_connected) {
        (Some(rc), Some(oc)) => match root_type {
            Some(t) => t != "user" && t != "contact",
            None => rc >= oc,
        },
        _ => false,
    };
    legs.iter()
        .map(|l| {
            let (root, ans) = (is_root(l), answered(l));
            let within_root = match (root_connected, root_end, l.connected_at) {
                (Some(rc), Some(re), Some(c)) => c >= rc && end_or_open(l) <= re,
                _ => false,
            };
            let counted = ans && !(root && carrier) && (root || carrier || root_connected.is_none() || !within_root);
            Role { is_root: root, answered: ans, counted, answers: ans && !(root && carrier) }
        })
        .collect()
}

/// The call of `legs` (all of one logical call, at least one). `is_terminal` says which
/// statuses are terminal (dialpad.call_statuses).
pub fn compute(legs: &[Leg], is_terminal: impl Fn(&str) -> bool) -> LogicalCall {
    let roles = roles(legs);
    let both = || legs.iter().zip(roles.iter());
    let ended = legs.iter().all(|l| is_terminal(&l.status));
    let answered = roles.iter().any(|r| r.answered);
    let blocked = legs.iter().any(|l| l.end_state.as_deref() == Some("blocked"));
    let voicemail = legs.iter().any(|l| {
        l.status == "voicemail"
            || is_voicemail_state(l.end_state.as_deref())
            || l.voicemail_link.is_some()
            || l.voicemail_recording_url.is_some()
    });
    let rang = legs.iter().any(|l| l.rang_at.is_some());
    let direction = root_else_first(legs, &roles, |l| l.direction.as_ref());
    let outcome = if !ended {
        "in_progress"
    } else if answered {
        "answered"
    } else if blocked {
        "blocked"
    } else if voicemail {
        "voicemail"
    } else if direction.as_deref() == Some("outbound") {
        "no_answer"
    } else if !rang {
        "abandoned"
    } else {
        "missed"
    };
    let started_at = legs
        .iter()
        .map(|l| {
            l.started_at
                .or(l.queued_at)
                .or(l.rang_at)
                .or(l.connected_at)
                .or(l.ended_at)
                .or(l.last_event_at)
                .unwrap_or(l.created_at)
        })
        .min()
        .unwrap_or_default();
    let answering = || both().filter(|(_, r)| r.answers).map(|(l, _)| l);
    let agent = answering().min_by(|a, b| nulls_last(a.connected_at, b.connected_at).then(a.id.cmp(&b.id)));
    let answered_at = answering().filter_map(|l| l.connected_at).min();
    let sum = |f: fn(&Leg) -> Option<f64>| {
        let values: Vec<f64> = both().filter(|(_, r)| r.counted).filter_map(|(l, _)| f(l)).collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    let counted_recording = first(
        both().filter(|(_, r)| r.counted).map(|(l, _)| l),
        |l| l.recording_url.as_ref(),
        |l| (l.connected_at, l.id),
    );
    let by_id = |l: &Leg| (Some(l.id), 0);
    LogicalCall {
        logical_call_id: legs.first().map(|l| l.logical_call_id).unwrap_or_default(),
        outcome,
        started_at,
        answered_at,
        ended_at: if ended { legs.iter().filter_map(|l| l.ended_at).max() } else { None },
        // milliseconds rounded half away from zero, as round(numeric, 3) does
        wait_seconds: answered_at.map(|a| {
            let us = a - started_at;
            let ms = if us >= 0 { (us + 500) / 1000 } else { -((-us + 500) / 1000) };
            ms as f64 / 1000.0
        }),
        talk_seconds: sum(|l| l.talk_seconds),
        hold_seconds: sum(|l| l.hold_seconds),
        legs: legs.len() as i32,
        // One per leg a transfer created: Dialpad flags is_transferred on the leg transferred
        // away and on the new leg both, so counting that flag counts each transfer twice.
        transfers: legs.iter().filter(|l| l.transferred_from_id.is_some()).count() as i32,
        answered_by_target_id: agent.and_then(|l| l.target_id.clone()),
        answered_by_name: agent.and_then(|l| l.target_name.clone()),
        external_number: root_else_first(legs, &roles, |l| l.external_number.as_ref()),
        internal_number: root_else_first(legs, &roles, |l| l.internal_number.as_ref()),
        contact_id: root_else_first(legs, &roles, |l| l.contact_id.as_ref()),
        contact_name: root_else_first(legs, &roles, |l| l.contact_name.as_ref()),
        recording_url: counted_recording.or_else(|| first(legs.iter(), |l| l.recording_url.as_ref(), by_id)).cloned(),
        voicemail_link: first(legs.iter(), |l| l.voicemail_link.as_ref(), by_id)
            .or_else(|| first(legs.iter(), |l| l.voicemail_recording_url.as_ref(), by_id))
            .cloned(),
        source: root_else_first(legs, &roles, |l| l.source.as_ref()),
        last_event_at: legs.iter().filter_map(|l| l.last_event_at).max(),
        direction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(s: &str) -> bool {
        matches!(s, "ended" | "missed" | "rejected" | "voicemail")
    }

    fn leg(id: i64, root: i64, status: &str) -> Leg {
        Leg { id, logical_call_id: root, status: status.into(), ..Default::default() }
    }

    fn answered(mut l: Leg, connected: i64, ended: i64, talk: f64, kind: &str, name: &str) -> Leg {
        l.connected_at = Some(connected * 1_000_000);
        l.ended_at = Some(ended * 1_000_000);
        l.talk_seconds = Some(talk);
        l.target_type = Some(kind.into());
        l.target_name = Some(name.into());
        l
    }

    #[test]
    fn a_call_center_caller_counts_once_with_the_agents_talk_time() {
        let mut entry = answered(leg(1, 1, "ended"), 15, 85, 70.0, "callcenter", "Support");
        entry.started_at = Some(0);
        let mut operator = leg(2, 1, "missed");
        operator.rang_at = Some(3_000_000);
        operator.talk_seconds = Some(0.0);
        let agent = answered(leg(3, 1, "ended"), 15, 85, 70.0, "user", "Cid");
        let c = compute(&[entry, operator, agent], terminal);
        assert_eq!((c.outcome, c.talk_seconds, c.legs), ("answered", Some(70.0), 3));
        assert_eq!((c.answered_by_name.as_deref(), c.wait_seconds), (Some("Cid"), Some(15.0)));
    }

    #[test]
    fn transfers_add_up_and_a_conference_counts_each_moment_once() {
        let mut ada = answered(leg(1, 1, "ended"), 3, 33, 30.0, "user", "Ada");
        ada.started_at = Some(0);
        let bob = answered(leg(2, 1, "ended"), 35, 95, 60.0, "user", "Bob");
        let c = compute(&[ada.clone(), bob], terminal);
        assert_eq!((c.talk_seconds, c.answered_by_name.as_deref()), (Some(90.0), Some("Ada")));
        ada.ended_at = Some(100_000_000);
        ada.talk_seconds = Some(97.0);
        let merged = answered(leg(2, 1, "ended"), 32, 90, 58.0, "user", "Ada");
        assert_eq!(compute(&[ada, merged], terminal).talk_seconds, Some(97.0));
    }

    #[test]
    fn a_transfer_counts_once_though_dialpad_flags_both_legs() {
        let mut ada = answered(leg(1, 1, "ended"), 3, 33, 30.0, "user", "Ada");
        ada.is_transferred = Some(true);
        let mut bob = answered(leg(2, 1, "ended"), 35, 95, 60.0, "user", "Bob");
        bob.is_transferred = Some(true);
        bob.transferred_from_id = Some("5001".into());
        assert_eq!(compute(&[ada.clone(), bob.clone()], terminal).transfers, 1);
        let mut cid = answered(leg(3, 1, "ended"), 96, 120, 24.0, "user", "Cid");
        cid.is_transferred = Some(true);
        cid.transferred_from_id = Some("5002".into());
        assert_eq!(compute(&[ada.clone(), bob, cid], terminal).transfers, 2);
        assert_eq!(compute(&[ada], terminal).transfers, 0);
    }

    #[test]
    fn outcomes_of_calls_nobody_answered() {
        let mut l = leg(1, 1, "missed");
        l.direction = Some("inbound".into());
        assert_eq!(compute(&[l.clone()], terminal).outcome, "abandoned");
        l.rang_at = Some(1);
        assert_eq!(compute(&[l.clone()], terminal).outcome, "missed");
        l.end_state = Some("blocked".into());
        assert_eq!(compute(&[l.clone()], terminal).outcome, "blocked");
        let mut o = leg(1, 1, "rejected");
        o.direction = Some("outbound".into());
        assert_eq!(compute(&[o], terminal).outcome, "no_answer");
        let mut v = leg(1, 1, "voicemail");
        v.connected_at = Some(5);
        v.end_state = Some("voicemail".into());
        assert_eq!(compute(&[v], terminal).outcome, "voicemail");
        assert_eq!(compute(&[leg(1, 1, "ringing")], terminal).outcome, "in_progress");
    }
}
