//! Adversarial property tests of the pure code that reads untrusted bytes (issue 22): webhook
//! bodies and JWTs, event reading, the fold, the sanitizer, the redelivery key and the jsonb
//! and numeric codecs. The generators make what an attacker sends: huge and tiny numbers in
//! a few bytes, long strings and keys, deep and wide containers, every wrong type in every
//! field. Every case must end in a value or an error, never a panic, and what is derived
//! must stay within the stated bounds. `./scripts/test` runs them (a bounded number of cases
//! each); proptest keeps any failing case in proptest-regressions/ and replays it first.

use crate::codec::jsonb::{datum_body, testing::jsonb, Container};
use crate::domain::event::{CallEvent, MAX_ARRAY_ITEMS, MAX_STATE_BYTES, MAX_TEXT_BYTES};
use crate::domain::recordings::MAX_RECORDINGS;
use crate::domain::sanitize::{sanitize, Limits};
use crate::domain::transitions::RuleSet;
use crate::domain::webhook::{classify, dedupe_key, verify, Body, MAX_DEDUPE_KEY_BYTES};
use proptest::prelude::*;

/// The fields the processor reads.
const FIELDS: &[&str] = &[
    "call_id",
    "state",
    "direction",
    "event_timestamp",
    "date_started",
    "date_connected",
    "date_ended",
    "duration",
    "external_number",
    "internal_number",
    "master_call_id",
    "entry_point_call_id",
    "operator_call_id",
    "voicemail_link",
    "transcription_text",
    "target",
    "contact",
    "recording_details",
    "talk_time",
    "hold_time",
    "total_duration",
    "date_rang",
    "date_first_rang",
    "date_queued",
    "is_transferred",
    "transferred_from",
    "group_id",
    "labels",
    "csat_score",
];

/// A hostile scalar, as JSON text.
fn arb_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (1u32..131_071).prop_map(|e| format!("1e{e}")),
        (1u32..16_383).prop_map(|e| format!("-1e-{e}")),
        (0usize..5_000).prop_map(|n| "9".repeat(n.max(1))),
        (0usize..3_000, prop::sample::select(vec!["a", "é", "😀", "\\u0000", "\\\"", "\\ud83d\\ude00"]))
            .prop_map(|(n, c)| format!("\"{}\"", c.repeat(n))),
        Just("\"1787158716092\"".to_string()),
        Just("1787158716092.5".to_string()),
    ]
}

/// One hostile JSON value, as text: scalars, long arrays of one scalar, and small nested
/// containers (sizes stay bounded: the point is the shape, the benchmark does the volume).
fn arb_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => arb_scalar(),
        1 => (0usize..2_000, arb_scalar()).prop_map(|(n, v)| format!("[{}]", vec![v; n].join(","))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (prop::sample::select(vec!["id", "url", "name", "type", "duration", "x"]), inner),
                0..8
            )
            .prop_map(|pairs| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// A Dialpad-shaped event with hostile values in some of its fields.
fn arb_event() -> impl Strategy<Value = String> {
    (prop::collection::vec((prop::sample::select(FIELDS.to_vec()), arb_value()), 0..12), prop::option::of(0i64..10))
        .prop_map(|(pairs, call_id)| {
            let mut body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            if let Some(id) = call_id {
                body.push(format!("\"call_id\": {id}"));
            }
            format!("{{{}}}", body.join(","))
        })
}

fn assert_bounded(e: &CallEvent) {
    let texts = [
        &e.direction,
        &e.external_number,
        &e.internal_number,
        &e.target_id,
        &e.target_type,
        &e.target_name,
        &e.contact_id,
        &e.contact_name,
        &e.voicemail_link,
        &e.group_id,
    ];
    for t in texts.into_iter().flatten() {
        assert!(t.len() <= 3 * MAX_TEXT_BYTES, "a text field of {} bytes", t.len());
    }
    assert!(e.state.as_ref().is_none_or(|s| s.len() <= 3 * MAX_STATE_BYTES));
    assert!(e.transcript.as_ref().is_none_or(|t| t.chars().count() <= 515));
    assert!(e.labels.as_ref().is_none_or(|l| l.len() <= MAX_ARRAY_ITEMS * (6 * MAX_TEXT_BYTES + 4) + 2));
    assert!(e.recordings.len() <= MAX_ARRAY_ITEMS);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn events_read_fold_and_sanitize_within_bounds(texts in prop::collection::vec(arb_event(), 1..4)) {
        let rules = RuleSet::seed_default();
        let datums: Vec<Vec<u8>> = texts.iter().map(|t| jsonb(t)).collect();
        let mut events = Vec::new();
        for d in &datums {
            let root = Container::root(datum_body(d).unwrap()).unwrap();
            let key = dedupe_key(root, Some("source"));
            prop_assert!(key.as_ref().is_none_or(|k| k.len() <= MAX_DEDUPE_KEY_BYTES));
            if let Ok(e) = CallEvent::from_payload(root) {
                assert_bounded(&e);
                events.push(e);
            } else if let Err(err) = CallEvent::from_payload(root) {
                prop_assert!(err.to_string().len() < 400, "error of {} bytes", err.to_string().len());
            }
            let raw = sanitize(datum_body(d).unwrap(), &Limits::default(), &mut || {}).unwrap();
            prop_assert!(raw.len() <= Limits::default().max_bytes);
        }
        let refs: Vec<&CallEvent> = events.iter().collect();
        let folded = crate::domain::fold::fold_events_by_call(None, &refs, &rules, &mut || {});
        prop_assert!(crate::domain::recordings::parse(folded.row.recordings.as_deref().unwrap_or("[]")).len() <= MAX_RECORDINGS);
    }

    #[test]
    fn any_bytes_are_a_body_a_token_or_an_error(body in prop_oneof![
        "\\PC{0,300}",
        "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,60}",
        "eyJ[A-Za-z0-9_-]{0,120}\\.eyJ[A-Za-z0-9_-]{0,300}\\.[A-Za-z0-9_-]{43}",
    ]) {
        if let Body::Jwt { header, payload, signature } = classify(&body) {
            let _ = verify(header, payload, signature, &[b"secret".as_slice()]);
        }
    }

    #[test]
    fn any_bytes_are_a_jsonb_or_numeric_datum_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut datum = ((bytes.len() as u32 + 4) << 2).to_le_bytes().to_vec();
        datum.extend_from_slice(&bytes);
        if let Ok(root) = Container::root(&bytes) {
            let _ = CallEvent::from_payload(root);
            let _ = dedupe_key(root, None);
        }
        let _ = sanitize(&bytes, &Limits::default(), &mut || {});
        if let Ok(d) = crate::codec::numeric::Decimal::from_datum_bytes(&datum) {
            let _ = (d.to_f64(), d.to_i64(), d.trunc_to_i64(), d.to_string_bounded(64));
        }
    }
}
