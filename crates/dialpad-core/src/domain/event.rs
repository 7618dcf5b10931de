//! One Dialpad event (the flat JSON object of ../shared/DIALPAD.md) read into typed fields.
//!
//! Times arrive as epoch milliseconds and durations as milliseconds; they leave as
//! PostgreSQL timestamptz microseconds and seconds. A field of the wrong type is an error
//! naming the field (the event is retried, then dead-lettered), never a guess.

use crate::codec::jsonb::{Container, Value};
use crate::codec::numeric::Decimal;
use crate::domain::recordings::Recording;

/// Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's timestamp epoch.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// timestamptz's valid range is 4713 BC .. 294276 AD; we accept 1900 .. 9999 as plausible.
const MIN_EPOCH_MS: i64 = -2_208_988_800_000;
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;
/// numeric(14,3) holds values below 10^11.
const MAX_DURATION_SECONDS: f64 = 99_999_999_999.0;

// Bounds on what is read from a payload (hostile input, issue 22): every value the processor
// derives is bounded, so one event costs memory and CPU in proportion to its size, never
// more. A value past a bound makes its field unreadable (the event is dead-lettered with the
// field named); the payload itself stays whole in the audit log.
/// The longest string read into a text column (ids, numbers, names, urls).
pub const MAX_TEXT_BYTES: usize = 2000;
/// The longest Dialpad state: a word such as "voicemail_uploaded".
pub const MAX_STATE_BYTES: usize = 64;
/// The most characters a JSON number may print as where a field reads it as text: jsonb
/// stores `1e131071` in a few bytes, which prints as 131,072 characters.
pub const MAX_NUMBER_CHARS: usize = 64;
/// `labels` and `recording_details`: the first items only, as the sanitizer keeps them.
pub const MAX_ARRAY_ITEMS: usize = 10;
/// How much of a payload value an error message quotes.
const QUOTED_CHARS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    NotAnObject,
    NoCallId,
    BadField { field: &'static str, why: String },
    Corrupt,
}

impl EventError {
    /// An event that can never be applied, whatever is retried: dead-lettered at once. The
    /// payload is immutable, so an event that cannot be read now never can be.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventError::NotAnObject => f.write_str("payload is not a JSON object"),
            EventError::NoCallId => f.write_str("payload has no call_id"),
            EventError::BadField { field, why } => write!(f, "field {field}: {why}"),
            EventError::Corrupt => f.write_str("malformed jsonb payload"),
        }
    }
}

/// What one event says about its call leg. `None` means "not in this event".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallEvent {
    pub call_id: i64,
    pub state: Option<String>,
    pub direction: Option<String>,
    /// Microseconds since 2000-01-01 (a timestamptz datum).
    pub event_at: Option<i64>,
    pub started_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_seconds: Option<f64>,
    pub external_number: Option<String>,
    pub internal_number: Option<String>,
    pub target_id: Option<String>,
    pub target_type: Option<String>,
    pub target_name: Option<String>,
    pub contact_id: Option<String>,
    pub contact_name: Option<String>,
    pub master_call_id: Option<i64>,
    pub entry_point_call_id: Option<i64>,
    pub operator_call_id: Option<i64>,
    pub voicemail_link: Option<String>,
    pub transcript: Option<String>,
    /// `talk_time`, `hold_time`, `total_duration` (milliseconds made seconds).
    pub talk_seconds: Option<f64>,
    pub hold_seconds: Option<f64>,
    pub total_duration_seconds: Option<f64>,
    /// `date_rang` (or `date_first_rang` when only that is sent) and `date_queued`.
    pub rang_at: Option<i64>,
    pub queued_at: Option<i64>,
    pub is_transferred: Option<bool>,
    /// `transferred_from.id`: the party the call was transferred from, present only on the
    /// leg a transfer created (Dialpad flags `is_transferred` on both legs of a transfer).
    pub transferred_from_id: Option<String>,
    pub group_id: Option<String>,
    /// `labels` as a JSON array of strings, printed as jsonb prints it.
    pub labels: Option<String>,
    /// `csat_score` when it is a number (or a string holding one); anything else stays in the
    /// audit log only.
    pub csat_score: Option<f64>,
    /// `recording_details`, every item with a url or an id.
    pub recordings: Vec<Recording>,
    /// The webhook source the event came through: the inbox's `source` column (set by
    /// dialpad.ingest_webhook from the verified source), not a field of the payload.
    pub source: Option<String>,
}

fn bad(field: &'static str, why: impl Into<String>) -> EventError {
    EventError::BadField { field, why: why.into() }
}

/// A payload value as an error message quotes it: at most [`QUOTED_CHARS`] characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// A number's text, when it has at most [`MAX_NUMBER_CHARS`] characters.
fn number_text(d: &Decimal, key: &'static str) -> Result<String, EventError> {
    d.to_string_bounded(MAX_NUMBER_CHARS)
        .ok_or_else(|| bad(key, format!("a number of about {} digits is not a plausible value", d.printed_len())))
}

/// A string field's bytes, when at most `max` long.
fn bounded<'a>(s: &'a [u8], max: usize, key: &'static str) -> Result<&'a [u8], EventError> {
    if s.len() > max {
        return Err(bad(key, format!("a string of {} bytes is longer than the {max} allowed", s.len())));
    }
    Ok(s)
}

/// The value, with JSON null treated as absent.
fn present(v: Value<'_>) -> Option<Value<'_>> {
    match v {
        Value::Null => None,
        v => Some(v),
    }
}

fn text(v: Value<'_>, key: &'static str) -> Result<Option<String>, EventError> {
    Ok(match present(v) {
        None => None,
        Some(Value::String(s)) => Some(String::from_utf8_lossy(bounded(s, MAX_TEXT_BYTES, key)?).into_owned()),
        Some(Value::Numeric(n)) => {
            Some(number_text(&Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?, key)?)
        }
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(_) => return Err(bad(key, "expected a string")),
    })
}

/// A long free text (the transcript): only its first `max_chars` characters are read.
fn text_prefix(v: Value<'_>, key: &'static str, max_chars: usize) -> Result<Option<String>, EventError> {
    match present(v) {
        // A character is at most 4 bytes in UTF-8: the prefix holds `max_chars` characters.
        Some(Value::String(s)) => Ok(Some(String::from_utf8_lossy(&s[..s.len().min(max_chars * 4 + 4)]).into_owned())),
        _ => text(v, key),
    }
}

/// An integer given as a JSON number or a string of digits.
fn integer(v: Value<'_>, key: &'static str) -> Result<Option<i64>, EventError> {
    Ok(match present(v) {
        None => None,
        Some(Value::Numeric(n)) => {
            let d = Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?;
            Some(d.to_i64().ok_or_else(|| {
                let shown = d.to_string_bounded(QUOTED_CHARS).unwrap_or_else(|| "a number that large".into());
                bad(key, format!("{shown} is not a 64-bit integer"))
            })?)
        }
        Some(Value::String(s)) => {
            let s = String::from_utf8_lossy(bounded(s, MAX_NUMBER_CHARS, key)?);
            let t = s.trim();
            if t.is_empty() {
                None
            } else {
                Some(t.parse::<i64>().map_err(|_| bad(key, format!("\"{}\" is not an integer", quoted(&s))))?)
            }
        }
        Some(_) => return Err(bad(key, "expected an integer")),
    })
}

fn epoch_ms(v: Value<'_>, key: &'static str) -> Result<Option<i64>, EventError> {
    let implausible = |ms: f64| bad(key, format!("{ms} is not a plausible epoch time in milliseconds"));
    match integer(v, key) {
        Ok(None) => Ok(None),
        Ok(Some(ms)) if (MIN_EPOCH_MS..=MAX_EPOCH_MS).contains(&ms) => Ok(Some(ms * 1000 - PG_EPOCH_OFFSET_US)),
        Ok(Some(ms)) => Err(implausible(ms as f64)),
        // Fractional milliseconds: keep the microseconds.
        Err(EventError::BadField { .. }) => {
            let Value::Numeric(n) = v else { return Err(bad(key, "expected epoch milliseconds")) };
            let ms = Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?.to_f64();
            if !(MIN_EPOCH_MS as f64..=MAX_EPOCH_MS as f64).contains(&ms) {
                return Err(implausible(ms));
            }
            Ok(Some((ms * 1000.0).round() as i64 - PG_EPOCH_OFFSET_US))
        }
        Err(e) => Err(e),
    }
}

fn milliseconds_as_seconds(v: Value<'_>, key: &'static str) -> Result<Option<f64>, EventError> {
    let ms = match present(v) {
        None => return Ok(None),
        Some(Value::Numeric(n)) => Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?.to_f64(),
        Some(Value::String(s)) => String::from_utf8_lossy(bounded(s, MAX_NUMBER_CHARS, key)?)
            .trim()
            .parse::<f64>()
            .map_err(|_| bad(key, "expected milliseconds"))?,
        Some(_) => return Err(bad(key, "expected milliseconds")),
    };
    let s = (ms / 1000.0 * 1000.0).round() / 1000.0;
    if !s.is_finite() || s.abs() > MAX_DURATION_SECONDS {
        return Err(bad(key, format!("{ms} ms is out of range")));
    }
    if s < 0.0 {
        return Err(bad(key, format!("{ms} ms is negative")));
    }
    Ok(Some(s))
}

fn boolean(v: Value<'_>, key: &'static str) -> Result<Option<bool>, EventError> {
    match present(v) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(b"true")) => Ok(Some(true)),
        Some(Value::String(b"false")) => Ok(Some(false)),
        Some(Value::Numeric(n)) => match Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?.to_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(bad(key, "expected true or false")),
        },
        Some(_) => Err(bad(key, "expected true or false")),
    }
}

/// A number, or a string holding one; anything else is not a score (None).
fn score(v: Value<'_>) -> Result<Option<f64>, EventError> {
    Ok(match present(v) {
        Some(Value::Numeric(n)) => Some(Decimal::from_datum_bytes(n).map_err(|_| EventError::Corrupt)?.to_f64()),
        Some(Value::String(s)) if s.len() <= MAX_NUMBER_CHARS => String::from_utf8_lossy(s).trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite() && f.abs() < 1e9))
}

/// Labels: an array of strings (numbers taken as their text), or one string. The first
/// [`MAX_ARRAY_ITEMS`] items are read; an item that cannot be read as text is left out.
fn labels(v: Value<'_>) -> Result<Option<String>, EventError> {
    let mut out: Vec<String> = Vec::new();
    match present(v) {
        None => return Ok(None),
        Some(Value::Array(a)) => {
            for item in a.values().map_err(|_| EventError::Corrupt)?.take(MAX_ARRAY_ITEMS) {
                if let Some(t) = text(item.map_err(|_| EventError::Corrupt)?, "labels").ok().flatten() {
                    out.push(t);
                }
            }
        }
        Some(Value::String(s)) => out.push(String::from_utf8_lossy(bounded(s, MAX_TEXT_BYTES, "labels")?).into_owned()),
        Some(_) => return Err(bad("labels", "expected an array of strings")),
    }
    let quoted: Vec<String> = out.iter().map(|l| serde_json::Value::from(l.as_str()).to_string()).collect();
    Ok(Some(format!("[{}]", quoted.join(", "))))
}

fn recording(r: Container<'_>) -> Result<Recording, EventError> {
    let mut out = Recording::default();
    for_each_pair(&r, |k, v| {
        match k {
            b"id" => out.id = text(v, "recording_details.id")?,
            b"url" => out.url = text(v, "recording_details.url")?,
            b"recording_type" => out.kind = text(v, "recording_details.recording_type")?,
            b"start_time" => out.start_time = integer(v, "recording_details.start_time").ok().flatten(),
            b"duration" => out.duration_seconds = milliseconds_as_seconds(v, "recording_details.duration")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}

fn recordings(v: Value<'_>) -> Result<Vec<Recording>, EventError> {
    match present(v) {
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for item in a.values().map_err(|_| EventError::Corrupt)?.take(MAX_ARRAY_ITEMS) {
                if let Value::Object(r) = item.map_err(|_| EventError::Corrupt)? {
                    let r = recording(r)?;
                    if r.url.is_some() || r.id.is_some() {
                        out.push(r);
                    }
                }
            }
            Ok(out)
        }
        None => Ok(Vec::new()),
        Some(_) => Err(bad("recording_details", "expected an array")),
    }
}

/// A Dialpad state is a word; a number or anything else there is not a state we can map.
fn state(v: Value<'_>) -> Result<Option<String>, EventError> {
    match present(v) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(String::from_utf8_lossy(bounded(s, MAX_STATE_BYTES, "state")?).into_owned())),
        Some(_) => Err(bad("state", "expected a string such as \"hangup\"")),
    }
}

fn object<'a>(v: Value<'a>, key: &'static str) -> Result<Option<Container<'a>>, EventError> {
    match present(v) {
        None => Ok(None),
        Some(Value::Object(c)) => Ok(Some(c)),
        Some(_) => Err(bad(key, "expected an object")),
    }
}

/// Calls `f(key, value)` for every pair of an object, in one pass.
fn for_each_pair<'a>(
    o: &Container<'a>,
    mut f: impl FnMut(&[u8], Value<'a>) -> Result<(), EventError>,
) -> Result<(), EventError> {
    let keys = o.keys().map_err(|_| EventError::Corrupt)?;
    let values = o.values().map_err(|_| EventError::Corrupt)?;
    for (k, v) in keys.zip(values) {
        let (Value::String(k), v) = (k.map_err(|_| EventError::Corrupt)?, v.map_err(|_| EventError::Corrupt)?) else {
            return Err(EventError::Corrupt);
        };
        f(k, v)?;
    }
    Ok(())
}

impl CallEvent {
    /// Reads an event from the root of a jsonb payload, in one pass over its keys.
    pub fn from_payload(root: Value<'_>) -> Result<CallEvent, EventError> {
        let Value::Object(o) = root else { return Err(EventError::NotAnObject) };
        let mut e = CallEvent::default();
        let mut call_id = None;
        let mut first_rang = None;
        for_each_pair(&o, |k, v| {
            match k {
                b"call_id" => call_id = integer(v, "call_id")?,
                b"state" => e.state = state(v)?,
                b"direction" => e.direction = text(v, "direction")?,
                b"event_timestamp" => e.event_at = epoch_ms(v, "event_timestamp")?,
                b"date_started" => e.started_at = epoch_ms(v, "date_started")?,
                b"date_connected" => e.connected_at = epoch_ms(v, "date_connected")?,
                b"date_ended" => e.ended_at = epoch_ms(v, "date_ended")?,
                b"duration" => e.duration_seconds = milliseconds_as_seconds(v, "duration")?,
                b"external_number" => e.external_number = text(v, "external_number")?,
                b"internal_number" => e.internal_number = text(v, "internal_number")?,
                b"master_call_id" => e.master_call_id = integer(v, "master_call_id")?,
                b"entry_point_call_id" => e.entry_point_call_id = integer(v, "entry_point_call_id")?,
                b"operator_call_id" => e.operator_call_id = integer(v, "operator_call_id")?,
                b"voicemail_link" => e.voicemail_link = text(v, "voicemail_link")?,
                b"transcription_text" => {
                    e.transcript = text_prefix(
                        v,
                        "transcription_text",
                        crate::domain::sanitize::Limits::default().max_transcript_length,
                    )?
                    .map(|t| crate::domain::sanitize::truncate_transcript(&t))
                }
                b"target" => {
                    if let Some(t) = object(v, "target")? {
                        for_each_pair(&t, |k, v| {
                            match k {
                                b"id" => e.target_id = text(v, "target.id")?,
                                b"type" => e.target_type = text(v, "target.type")?,
                                b"name" => e.target_name = text(v, "target.name")?,
                                _ => {}
                            }
                            Ok(())
                        })?;
                    }
                }
                b"contact" => {
                    if let Some(c) = object(v, "contact")? {
                        for_each_pair(&c, |k, v| {
                            match k {
                                b"id" => e.contact_id = text(v, "contact.id")?,
                                b"name" => e.contact_name = text(v, "contact.name")?,
                                _ => {}
                            }
                            Ok(())
                        })?;
                    }
                }
                b"recording_details" => e.recordings = recordings(v)?,
                b"talk_time" => e.talk_seconds = milliseconds_as_seconds(v, "talk_time")?,
                b"hold_time" => e.hold_seconds = milliseconds_as_seconds(v, "hold_time")?,
                b"total_duration" => e.total_duration_seconds = milliseconds_as_seconds(v, "total_duration")?,
                b"date_rang" => e.rang_at = epoch_ms(v, "date_rang")?,
                b"date_first_rang" => first_rang = epoch_ms(v, "date_first_rang")?,
                b"date_queued" => e.queued_at = epoch_ms(v, "date_queued")?,
                b"is_transferred" => e.is_transferred = boolean(v, "is_transferred")?,
                b"transferred_from" => {
                    if let Some(t) = object(v, "transferred_from")? {
                        for_each_pair(&t, |k, v| {
                            if k == b"id" {
                                e.transferred_from_id = text(v, "transferred_from.id")?;
                            }
                            Ok(())
                        })?;
                    }
                }
                b"group_id" => e.group_id = text(v, "group_id")?,
                b"labels" => e.labels = labels(v)?,
                b"csat_score" => e.csat_score = score(v)?,
                _ => {}
            }
            Ok(())
        })?;
        e.call_id = call_id.ok_or(EventError::NoCallId)?;
        e.rang_at = e.rang_at.or(first_rang);
        if let (Some(start), Some(end)) = (e.started_at, e.ended_at) {
            if end < start {
                return Err(bad("date_ended", "is before date_started"));
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::jsonb::testing::jsonb;
    use crate::codec::jsonb::{datum_body, Container};

    fn parse(text: &str) -> Result<CallEvent, EventError> {
        let d = jsonb(text);
        CallEvent::from_payload(Container::root(datum_body(&d).unwrap()).unwrap())
    }

    #[test]
    fn reads_the_documented_example() {
        let e = parse(
            r#"{"call_id": 6612345678901234, "state": "hangup", "direction": "inbound",
             "external_number": "+14155550123", "internal_number": "+16505550199",
             "date_started": 1787158716092, "date_rang": 1787158716300, "date_connected": 1787158720114,
             "date_ended": 1787158781000, "duration": 60886.0, "talk_time": 60500.25,
             "event_timestamp": 1787158781250, "master_call_id": 6612345678901234,
             "entry_point_call_id": 6612345678901234, "is_transferred": false,
             "contact": {"id": "c-1", "type": "contact", "name": "Ada", "phone": "+14155550123"},
             "target": {"id": 5001, "type": "user", "name": "Agent Smith", "office_id": 42},
             "labels": ["support"], "routing_breadcrumbs": [], "integrations": {}}"#,
        )
        .unwrap();
        assert_eq!(e.call_id, 6612345678901234);
        assert_eq!(e.state.as_deref(), Some("hangup"));
        assert_eq!(e.started_at, Some(1787158716092 * 1000 - PG_EPOCH_OFFSET_US));
        assert_eq!(e.duration_seconds, Some(60.886));
        assert_eq!(e.target_id.as_deref(), Some("5001"));
        assert_eq!(e.target_name.as_deref(), Some("Agent Smith"));
        assert_eq!(e.contact_name.as_deref(), Some("Ada"));
        assert_eq!(e.master_call_id, Some(6612345678901234));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse("[1]"), Err(EventError::NotAnObject));
        assert_eq!(parse(r#"{"state": "ringing"}"#), Err(EventError::NoCallId));
        assert_eq!(parse(r#"{"call_id": null}"#), Err(EventError::NoCallId));
        let e = parse(r#"{"call_id": "abc"}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "call_id", .. }), "{e}");
        let e = parse(r#"{"call_id": 1.5}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "call_id", .. }), "{e}");
        let e = parse(r#"{"call_id": 1, "date_started": 1e30}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "date_started", .. }), "{e}");
        let e = parse(r#"{"call_id": 1, "target": "x"}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "target", .. }), "{e}");
        let e = parse(r#"{"call_id": 1, "target": {"name": [1]}}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "target.name", .. }), "{e}");
        assert!(parse(r#"{"call_id": "x"}"#).unwrap_err().is_permanent());
        assert!(parse(r#"{"x": 1}"#).unwrap_err().is_permanent());
    }

    #[test]
    fn implausible_values_are_refused_with_the_field_named() {
        let e = parse(r#"{"call_id": 1, "duration": -5}"#).unwrap_err();
        assert_eq!(e.to_string(), "field duration: -5 ms is negative");
        let e = parse(r#"{"call_id": 1, "state": 7}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "state", .. }), "{e}");
        let e = parse(r#"{"call_id": 1, "date_started": 1787158716092, "date_ended": 1787158716000}"#).unwrap_err();
        assert_eq!(e.to_string(), "field date_ended: is before date_started");
        assert!(parse(r#"{"call_id": 1, "duration": 0, "date_started": 5, "date_ended": 5}"#).is_ok());
    }

    #[test]
    fn tolerant_where_dialpad_varies() {
        let e = parse(r#"{"call_id": "42", "date_ended": 1787158781000.5, "duration": "1500"}"#).unwrap();
        assert_eq!(e.call_id, 42);
        assert_eq!(e.ended_at, Some(1787158781000500 - PG_EPOCH_OFFSET_US));
        assert_eq!(e.duration_seconds, Some(1.5));
        let e = parse(r#"{"call_id": 7, "recording_details": [{"id": 1}, {"url": "https://r/2"}, {"x": 1}]}"#).unwrap();
        assert_eq!(e.recordings.len(), 2);
        assert_eq!(e.recordings[1].url.as_deref(), Some("https://r/2"));
        let e = parse(
            r#"{"call_id": 7, "talk_time": 60500.25, "hold_time": "1000", "total_duration": 70000,
                "date_first_rang": 1787158716300, "date_queued": 1787158716100, "is_transferred": "true",
                "group_id": 99, "labels": ["a", "b\"c", 3, null], "csat_score": "4.5"}"#,
        )
        .unwrap();
        assert_eq!((e.talk_seconds, e.hold_seconds, e.total_duration_seconds), (Some(60.5), Some(1.0), Some(70.0)));
        assert_eq!(e.rang_at, Some(1787158716300 * 1000 - PG_EPOCH_OFFSET_US));
        assert!(e.queued_at.is_some());
        assert_eq!((e.is_transferred, e.group_id.as_deref()), (Some(true), Some("99")));
        assert_eq!(e.labels.as_deref(), Some(r#"["a", "b\"c", "3"]"#));
        assert_eq!(e.csat_score, Some(4.5));
        let e = parse(r#"{"call_id": 7, "csat_score": "great", "labels": "vip"}"#).unwrap();
        assert_eq!((e.csat_score, e.labels.as_deref()), (None, Some(r#"["vip"]"#)));
        let e = parse(r#"{"call_id": 7, "is_transferred": "maybe"}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "is_transferred", .. }), "{e}");
        let long = "w".repeat(900);
        let e = parse(&format!(r#"{{"call_id": 7, "transcription_text": "{long}"}}"#)).unwrap();
        assert_eq!(e.transcript.unwrap().chars().count(), 515);
    }

    #[test]
    fn the_leg_a_transfer_created_names_where_it_came_from() {
        let e = parse(r#"{"call_id": 7, "is_transferred": true, "transferred_from": {"id": 5001, "name": "Ada"}}"#)
            .unwrap();
        assert_eq!((e.is_transferred, e.transferred_from_id.as_deref()), (Some(true), Some("5001")));
        let e = parse(r#"{"call_id": 7, "is_transferred": true, "transferred_from": null}"#).unwrap();
        assert_eq!(e.transferred_from_id, None);
        let e = parse(r#"{"call_id": 7, "transferred_from": "5001"}"#).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "transferred_from", .. }), "{e}");
        let long = "9".repeat(MAX_TEXT_BYTES + 1);
        let e = parse(&format!(r#"{{"call_id": 7, "transferred_from": {{"id": "{long}"}}}}"#)).unwrap_err();
        assert!(matches!(e, EventError::BadField { field: "transferred_from.id", .. }), "{e}");
    }

    /// Issue 22: a 674-byte event became 5,243,040 bytes of `labels` in 0.2.0's processor.
    #[test]
    fn what_an_event_yields_is_bounded_by_construction() {
        let huge = "1e131071";
        let e = parse(&format!(r#"{{"call_id": 7, "labels": [{}]}}"#, [huge; 40].join(", "))).unwrap();
        assert_eq!(e.labels.as_deref(), Some("[]"), "numbers past 64 characters are no label");
        for field in ["group_id", "external_number", "voicemail_link"] {
            let err = parse(&format!(r#"{{"call_id": 7, "{field}": {huge}}}"#)).unwrap_err();
            assert!(matches!(err, EventError::BadField { .. }), "{field}: {err}");
            assert!(err.to_string().len() < 200, "{err}");
        }
        let err = parse(&format!(r#"{{"call_id": 7, "target": {{"id": {huge}}}}}"#)).unwrap_err();
        assert!(matches!(err, EventError::BadField { field: "target.id", .. }), "{err}");
        let err = parse(&format!(r#"{{"call_id": {huge}}}"#)).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        let err = parse(&format!(r#"{{"call_id": "{}"}}"#, "9".repeat(100_000))).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        for field in ["duration", "talk_time", "date_started", "csat_score"] {
            let _ = parse(&format!(r#"{{"call_id": 7, "{field}": {huge}}}"#));
            let _ = parse(&format!(r#"{{"call_id": 7, "{field}": -1e-16383}}"#));
        }
        // Arrays: the first ten items, as the sanitizer keeps them.
        let labels: Vec<String> = (0..100_000).map(|i| format!("\"l{i}\"")).collect();
        let e = parse(&format!(r#"{{"call_id": 7, "labels": [{}]}}"#, labels.join(","))).unwrap();
        assert_eq!(e.labels.as_deref().unwrap().matches('"').count(), 2 * MAX_ARRAY_ITEMS);
        let recs: Vec<String> = (0..100_000).map(|i| format!(r#"{{"id": "r{i}", "url": "https://r/{i}"}}"#)).collect();
        let e = parse(&format!(r#"{{"call_id": 7, "recording_details": [{}]}}"#, recs.join(","))).unwrap();
        assert_eq!(e.recordings.len(), MAX_ARRAY_ITEMS);
        // Strings: a text column takes at most MAX_TEXT_BYTES, a state MAX_STATE_BYTES.
        let err = parse(&format!(r#"{{"call_id": 7, "contact": {{"name": "{}"}}}}"#, "n".repeat(MAX_TEXT_BYTES + 1)))
            .unwrap_err();
        assert!(matches!(err, EventError::BadField { field: "contact.name", .. }), "{err}");
        let err = parse(&format!(r#"{{"call_id": 7, "state": "{}"}}"#, "s".repeat(12_800))).unwrap_err();
        assert!(matches!(err, EventError::BadField { field: "state", .. }), "{err}");
        let e = parse(&format!(r#"{{"call_id": 7, "transcription_text": "{}"}}"#, "t".repeat(5_000_000))).unwrap();
        assert_eq!(e.transcript.unwrap().chars().count(), 515);
    }
}
