//! The hostile shapes of issue 22 at a given size (the interrupt test, tests/interrupts.rs,
//! and the benchmark's hostile figure, scripts/bench_hostile.rs): one JSON event of about
//! `size` bytes for each, with a call id and a state so that the processor reads all of it.
#![allow(dead_code)]

/// A JSON array of `item(i)` for i = 0.. until the text reaches about `size` bytes.
fn fill(size: usize, item: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(size + 64);
    let mut i = 0;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item(i));
        i += 1;
    }
    out
}

/// The hostile shapes: (name, event). `size` is the approximate length of the JSON; the
/// i-th shape has call id `first_call_id + i`.
pub fn hostile_events(first_call_id: i64, size: usize) -> Vec<(&'static str, String)> {
    let next = std::cell::Cell::new(first_call_id);
    let head = |state: &str| {
        let call_id = next.get();
        next.set(call_id + 1);
        format!(r#""call_id": {call_id}, "state": "{state}", "event_timestamp": 1787158716092"#)
    };
    let huge = "1e131071";
    vec![
        (
            // jsonb stores 1e131071 in a few bytes; printed, 131,072 characters.
            "huge numbers in text fields",
            format!(
                r#"{{{}, "group_id": {huge}, "external_number": {huge}, "target": {{"id": {huge}}}, "labels": [{}]}}"#,
                head("ringing"),
                fill(size, |_| huge.to_string())
            ),
        ),
        ("1M labels", format!(r#"{{{}, "labels": [{}]}}"#, head("ringing"), fill(size, |i| format!(r#""l{i}""#)))),
        (
            "many recordings",
            format!(
                r#"{{{}, "recording_details": [{}]}}"#,
                head("recording"),
                fill(size, |i| format!(r#"{{"id": "r{i}", "url": "u{i}"}}"#))
            ),
        ),
        (
            // As deep as PostgreSQL's JSON parser takes (its stack), many times over.
            "deep",
            format!(
                r#"{{{}, "x": [{}]}}"#,
                head("ringing"),
                fill(size, |_| format!("{}{}", "[".repeat(1000), "]".repeat(1000)))
            ),
        ),
        ("wide", format!(r#"{{{}, "x": 0, {}}}"#, head("ringing"), &fill(size, |i| format!(r#""k{i}": {i}"#)))),
        (
            "long keys",
            format!(r#"{{{}, {}}}"#, head("ringing"), fill(size, |i| format!(r#""{}{i}": 1"#, "k".repeat(size / 8)))),
        ),
        (
            "long strings",
            format!(
                r#"{{{}, "transcription_text": "{}", "contact": {{"name": "{}"}}}}"#,
                head("hangup"),
                "t".repeat(size / 2),
                "n".repeat(size / 2)
            ),
        ),
    ]
}

/// A normal event (about 700 bytes, as Dialpad sends them).
pub fn normal_event(call_id: i64) -> String {
    format!(
        r#"{{"call_id": {call_id}, "state": "hangup", "event_timestamp": 1787158716092, "direction": "inbound",
            "date_started": 1787158700000, "date_connected": 1787158705000, "date_ended": 1787158716000,
            "duration": 11000, "talk_time": 10000, "external_number": "+15550001234", "internal_number": "+15550009876",
            "target": {{"id": 5081, "type": "user", "name": "Ada Lovelace"}}, "contact": {{"id": "c-77", "name": "Grace Hopper"}},
            "group_id": "sales", "labels": ["vip", "callback"], "csat_score": 4,
            "recording_details": [{{"id": "r1", "url": "https://example.com/r1.mp3", "recording_type": "call", "start_time": 1787158706000, "duration": 9000}}],
            "entry_point_call_id": {call_id}, "is_transferred": false}}"#
    )
}
