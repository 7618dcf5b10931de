//! The seed's payload sanitizer: keeps `calls.raw_payload` small while the full event stays
//! in `webhook_events`. It reads jsonb's binary form and writes the result in one pass; a
//! subtree deeper than `max_depth` is never read at all.
//!
//! Rules (each limit overridable): transcript strings cut at 500 characters, other strings at
//! 2,000; binary keys and `data:…;base64,` strings dropped; arrays cut to 10 items plus a
//! marker; nested objects of more than 20 keys summarized; values deeper than 5 levels
//! replaced; keys longer than 256 characters cut like strings. The output is a fixed point:
//! sanitizing it again changes nothing.
//!
//! The result is bounded: at most `max_bytes` (64 kB) of jsonb for any input. The rules
//! above bound every value but not their number, so an event with 400,000 top-level keys,
//! or twenty nested 20-key objects of 2,000-character strings, still passes them large. As
//! a last resort only, such a result keeps the top-level pairs that fit (in jsonb's key
//! order: shortest keys first, which holds `call_id`, `state`, `direction`) and records the
//! rest as `"_truncated": true, "total_keys": N, "omitted_keys": [first few]` (a top-level
//! array keeps its first items and the array marker; a top-level scalar too large becomes
//! null). Normal events (about 40 keys, a few kB) never reach this.

use crate::codec::jsonb::{
    self, Container, JsonbError, Owned, Value, Writer, JB_FARRAY, JB_FOBJECT, JB_FSCALAR, JENTRY_ISNULL,
};

pub const TRUNCATION_MARKER: &str = "... [truncated]";
pub const DEPTH_MARKER: &str = "[max depth exceeded]";
const TRUNCATION_MARKER_CHARS: usize = 15;

/// Keys whose values are binary blobs and are dropped whatever they hold.
pub const BINARY_KEYS: [&str; 5] = ["audio_data", "file_data", "binary_data", "image_data", "attachment_data"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_transcript_length: usize,
    pub max_string_length: usize,
    pub max_array_items: usize,
    pub max_object_keys: usize,
    pub sample_keys: usize,
    pub max_depth: usize,
    pub max_key_length: usize,
    pub max_bytes: usize,
}

/// The smallest `max_bytes` accepted: room for the markers of a summarized object.
pub const MIN_MAX_BYTES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_transcript_length: 500,
            max_string_length: 2000,
            max_array_items: 10,
            max_object_keys: 20,
            sample_keys: 5,
            max_depth: 5,
            max_key_length: 256,
            max_bytes: 64 * 1024,
        }
    }
}

/// Sanitizes the jsonb datum body `input` (varlena header stripped) and returns a complete
/// jsonb datum. `on_container` runs before each container is entered, and every
/// [`ITEMS_PER_CALL`] items of a long one: the backend glue uses it for CHECK_FOR_INTERRUPTS
/// and the stack-depth check.
pub fn sanitize(input: &[u8], limits: &Limits, on_container: &mut dyn FnMut()) -> Result<Vec<u8>, JsonbError> {
    let out = sanitize_values(input, limits, on_container)?;
    if out.len() <= limits.max_bytes.max(MIN_MAX_BYTES) {
        return Ok(out);
    }
    bound_top_level(&out, limits, on_container)
}

/// How many items of one array or object are read between two calls of `on_container`
/// (well under a millisecond of work).
const ITEMS_PER_CALL: usize = 4096;

/// Every rule but the size bound.
fn sanitize_values(input: &[u8], limits: &Limits, on_container: &mut dyn FnMut()) -> Result<Vec<u8>, JsonbError> {
    let root = Container::root(input)?;
    let mut w = Writer::with_capacity(input.len() + 64);
    let mut s = Sanitizer { limits, on_container, items: 0 };
    match root {
        Value::Object(c) => {
            s.object(&mut w, c, 0)?;
        }
        Value::Array(c) => {
            s.array(&mut w, c, 0, false)?;
        }
        scalar => {
            let mut f = w.begin(JB_FARRAY | JB_FSCALAR, 1)?;
            let m = w.mark();
            // A top-level binary string has nowhere to be removed from: it becomes null.
            let ty = if is_binary_value(&scalar) { JENTRY_ISNULL } else { s.value(&mut w, scalar, 0, false)? };
            w.end_child(&mut f, m, ty)?;
            w.end(f)?;
        }
    }
    Ok(w.finish())
}

/// A transcript cut as the sanitizer cuts it (for `calls.transcript`).
pub fn truncate_transcript(s: &str) -> String {
    match cut_point(s.as_bytes(), Limits::default().max_transcript_length) {
        None => s.to_string(),
        Some(at) => format!("{}{}", &s[..at], TRUNCATION_MARKER),
    }
}

struct Sanitizer<'a> {
    limits: &'a Limits,
    on_container: &'a mut dyn FnMut(),
    /// Items read so far: `on_container` runs every [`ITEMS_PER_CALL`] of them.
    items: usize,
}

impl Sanitizer<'_> {
    fn item(&mut self) {
        self.items += 1;
        if self.items.is_multiple_of(ITEMS_PER_CALL) {
            (self.on_container)();
        }
    }

    fn value(&mut self, w: &mut Writer, v: Value<'_>, level: usize, transcript: bool) -> Result<u32, JsonbError> {
        if level > self.limits.max_depth {
            return Ok(w.string(DEPTH_MARKER.as_bytes()));
        }
        match v {
            Value::String(s) => {
                let limit = if transcript { self.limits.max_transcript_length } else { self.limits.max_string_length };
                Ok(match cut_point(s, limit) {
                    None => w.string(s),
                    Some(at) => w.string_parts(&s[..at], TRUNCATION_MARKER.as_bytes()),
                })
            }
            Value::Array(c) => self.array(w, c, level, transcript),
            Value::Object(c) => self.object(w, c, level),
            other => Ok(w.value(&other)),
        }
    }

    fn array(&mut self, w: &mut Writer, c: Container<'_>, level: usize, transcript: bool) -> Result<u32, JsonbError> {
        (self.on_container)();
        let n = c.len();
        let max = self.limits.max_array_items;
        let mut items: Vec<Value<'_>> = Vec::with_capacity(n.min(max + 1));
        let mut kept = 0usize;
        let mut last = None;
        for v in c.values()? {
            self.item();
            let v = v?;
            if !is_binary_value(&v) {
                kept += 1;
                if items.len() <= max {
                    items.push(v);
                }
            }
            last = Some(v);
        }
        // An array we already cut ends with our marker: leave its length alone.
        let already_cut = n == max + 1 && last.is_some_and(|v| is_array_marker(&v));
        let cut = !already_cut && kept > max;
        if cut {
            items.truncate(max);
        }
        let mut f = w.begin(JB_FARRAY, items.len() + usize::from(cut))?;
        for v in items {
            let m = w.mark();
            let ty = self.value(w, v, level + 1, transcript)?;
            w.end_child(&mut f, m, ty)?;
        }
        if cut {
            let marker = Owned::Object(vec![
                (b"_truncated".to_vec(), Owned::Bool(true)),
                (b"total_items".to_vec(), Owned::uint(n as u64)),
            ])
            .encode()?;
            let marker = Container::root(jsonb::datum_body(&marker)?)?;
            let m = w.mark();
            let ty = self.value(w, marker, level + 1, false)?;
            w.end_child(&mut f, m, ty)?;
        }
        w.end(f)
    }

    fn object(&mut self, w: &mut Writer, c: Container<'_>, level: usize) -> Result<u32, JsonbError> {
        (self.on_container)();
        let n = c.len();
        let mut pairs: Vec<(std::borrow::Cow<'_, [u8]>, Value<'_>)> = Vec::with_capacity(n);
        let mut cut_keys = false;
        for (k, v) in c.keys()?.zip(c.values()?) {
            self.item();
            let (Value::String(k), v) = (k?, v?) else { return Err(JsonbError::Corrupt) };
            if keep_pair(k, &v) {
                // Our own markers keep their keys, so that a second pass recognizes them.
                let limit = if MARKER_KEYS.contains(&k) { usize::MAX } else { self.limits.max_key_length };
                let key = match cut_point(k, limit) {
                    None => std::borrow::Cow::Borrowed(k),
                    Some(at) => {
                        cut_keys = true;
                        std::borrow::Cow::Owned([&k[..at], TRUNCATION_MARKER.as_bytes()].concat())
                    }
                };
                pairs.push((key, v));
            }
        }
        if cut_keys {
            // Cut keys change places in jsonb's key order and may meet: first one wins.
            sort_and_dedupe(&mut pairs);
        }
        // The top-level object is never summarized: a real event has ~40 keys.
        if level > 0 && pairs.len() > self.limits.max_object_keys && !is_object_summary(&c)? {
            let sample = pairs.iter().take(self.limits.sample_keys).map(|(k, _)| Owned::String(k.to_vec())).collect();
            return self.summary(w, sample, n, level);
        }
        let mut f = w.begin(JB_FOBJECT, pairs.len())?;
        for (k, _) in &pairs {
            let m = w.mark();
            let ty = w.string(k);
            w.end_child(&mut f, m, ty)?;
        }
        for (k, v) in pairs {
            let m = w.mark();
            let ty = self.value(w, v, level + 1, contains_transcript(&k))?;
            w.end_child(&mut f, m, ty)?;
        }
        w.end(f)
    }

    /// `{"_truncated": true, "sample_keys": [...], "total_keys": N}`, itself sanitized at the
    /// object's level so that a second pass leaves it as it is.
    fn summary(&mut self, w: &mut Writer, sample: Vec<Owned>, total: usize, level: usize) -> Result<u32, JsonbError> {
        let summary = Owned::Object(vec![
            (b"_truncated".to_vec(), Owned::Bool(true)),
            (b"sample_keys".to_vec(), Owned::Array(sample)),
            (b"total_keys".to_vec(), Owned::uint(total as u64)),
        ])
        .encode()?;
        let summary = Container::root(jsonb::datum_body(&summary)?)?;
        self.value(w, summary, level, false)
    }
}

/// The keys of the markers the sanitizer writes (never cut, never kept from the input in
/// the size bound's summary).
const MARKER_KEYS: [&[u8]; 5] = [b"_truncated", b"total_items", b"sample_keys", b"total_keys", b"omitted_keys"];

/// jsonb's key order (shorter first, then bytewise), keeping the first of equal keys.
fn sort_and_dedupe<K: AsRef<[u8]>, V>(pairs: &mut Vec<(K, V)>) {
    pairs.sort_by(|(a, _), (b, _)| {
        let (a, b) = (a.as_ref(), b.as_ref());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    });
    pairs.dedup_by(|(a, _), (b, _)| a.as_ref() == b.as_ref());
}

/// Bytes a value takes in a container (alignment padding counted at its worst).
fn encoded_size(v: &Value<'_>) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Numeric(n) => n.len() + 3,
        Value::Array(c) | Value::Object(c) => c.raw().len() + 3,
        Value::Null | Value::Bool(_) => 0,
    }
}

/// The last resort of the size bound, applied to an already sanitized datum whose values
/// all passed the other rules (see the module doc).
fn bound_top_level(out: &[u8], limits: &Limits, on_container: &mut dyn FnMut()) -> Result<Vec<u8>, JsonbError> {
    let max_bytes = limits.max_bytes.max(MIN_MAX_BYTES);
    let root = Container::root(jsonb::datum_body(out)?)?;
    let mut budget = max_bytes;
    loop {
        let raw = match root {
            Value::Object(c) => bounded_object(&c, limits, budget, on_container)?,
            Value::Array(c) if !c.is_scalar() => bounded_array(&c, budget, on_container)?,
            _ => Owned::Null.encode()?,
        };
        // The markers go through the same rules as everything else (depth, string length),
        // so that a second pass finds nothing to change; the kept values are fixed points.
        let bounded = sanitize_values(jsonb::datum_body(&raw)?, limits, &mut || {})?;
        if bounded.len() <= max_bytes || budget < 64 {
            return Ok(bounded);
        }
        // Padding estimated high, never low: only a key-heavy object can overshoot, by a little.
        budget -= (bounded.len() - max_bytes).max(budget / 16);
    }
}

fn bounded_object(
    c: &Container<'_>,
    limits: &Limits,
    budget: usize,
    on_container: &mut dyn FnMut(),
) -> Result<Vec<u8>, JsonbError> {
    let mut pairs: Vec<(&[u8], Value<'_>)> = Vec::with_capacity(c.len());
    for (i, (k, v)) in c.keys()?.zip(c.values()?).enumerate() {
        if i.is_multiple_of(ITEMS_PER_CALL) {
            on_container();
        }
        let (Value::String(k), v) = (k?, v?) else { return Err(JsonbError::Corrupt) };
        pairs.push((k, v));
    }
    let total = pairs.len();
    // Room for the markers: the sample holds at most `sample_len` keys, none longer than
    // the longest keys of this object, so their lengths bound it (jsonb orders keys by
    // length: the longest are last).
    let sample_len = limits.sample_keys.min(limits.max_array_items);
    let longest: usize = pairs.iter().rev().take(sample_len).map(|(k, _)| k.len() + 8).sum();
    let mut used = 32 + 96 + longest;
    let mut kept: Vec<(&[u8], Value<'_>)> = Vec::new();
    let mut omitted: Vec<Owned> = Vec::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i.is_multiple_of(ITEMS_PER_CALL) {
            on_container();
        }
        let cost = k.len() + encoded_size(&v) + 8;
        if !MARKER_KEYS[2..].contains(&k) && k != b"_truncated" && used + cost <= budget {
            used += cost;
            kept.push((k, v));
        } else if omitted.len() < sample_len {
            let name = match cut_point(k, limits.max_string_length) {
                None => k.to_vec(),
                Some(at) => [&k[..at], TRUNCATION_MARKER.as_bytes()].concat(),
            };
            omitted.push(Owned::String(name));
        }
    }
    let markers = Owned::Object(vec![
        (b"_truncated".to_vec(), Owned::Bool(true)),
        (b"total_keys".to_vec(), Owned::uint(total as u64)),
        (b"omitted_keys".to_vec(), Owned::Array(omitted)),
    ])
    .encode()?;
    let markers = Container::root(jsonb::datum_body(&markers)?)?;
    let Value::Object(mc) = markers else { return Err(JsonbError::Corrupt) };
    for (k, v) in mc.keys()?.zip(mc.values()?) {
        let (Value::String(k), v) = (k?, v?) else { return Err(JsonbError::Corrupt) };
        kept.push((k, v));
    }
    sort_and_dedupe(&mut kept);
    let mut w = Writer::with_capacity(budget + 64);
    let mut f = w.begin(JB_FOBJECT, kept.len())?;
    for (k, _) in &kept {
        let m = w.mark();
        let ty = w.string(k);
        w.end_child(&mut f, m, ty)?;
    }
    for (_, v) in &kept {
        let m = w.mark();
        let ty = w.value(v);
        w.end_child(&mut f, m, ty)?;
    }
    w.end(f)?;
    Ok(w.finish())
}

fn bounded_array(c: &Container<'_>, budget: usize, on_container: &mut dyn FnMut()) -> Result<Vec<u8>, JsonbError> {
    let mut items: Vec<Value<'_>> = Vec::with_capacity(c.len());
    for (i, v) in c.values()?.enumerate() {
        if i.is_multiple_of(ITEMS_PER_CALL) {
            on_container();
        }
        items.push(v?);
    }
    let total = match items.last() {
        Some(Value::Object(m)) if is_array_marker(&items[items.len() - 1]) => {
            let t = m.get(b"total_items")?;
            items.pop();
            match t {
                Some(Value::Numeric(n)) => crate::codec::numeric::Decimal::from_datum_bytes(n)
                    .ok()
                    .and_then(|d| d.to_i64())
                    .map(|t| t as usize)
                    .unwrap_or(items.len()),
                _ => items.len(),
            }
        }
        _ => items.len(),
    };
    let mut used = 96;
    let mut kept = Vec::new();
    for v in items {
        let cost = encoded_size(&v) + 4;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(v);
    }
    let marker = Owned::Object(vec![
        (b"_truncated".to_vec(), Owned::Bool(true)),
        (b"total_items".to_vec(), Owned::uint(total as u64)),
    ])
    .encode()?;
    let marker = Container::root(jsonb::datum_body(&marker)?)?;
    let mut w = Writer::with_capacity(budget + 64);
    let mut f = w.begin(JB_FARRAY, kept.len() + 1)?;
    for v in kept.iter().chain(std::iter::once(&marker)) {
        let m = w.mark();
        let ty = w.value(v);
        w.end_child(&mut f, m, ty)?;
    }
    w.end(f)?;
    Ok(w.finish())
}

fn keep_pair(k: &[u8], v: &Value<'_>) -> bool {
    let binary_key = k.len() >= 9 && k.len() <= 15 && BINARY_KEYS.iter().any(|b| k.eq_ignore_ascii_case(b.as_bytes()));
    !binary_key && !is_binary_value(v)
}

/// A `data:[<mediatype>][;params];base64,<data>` URI.
fn is_binary_value(v: &Value<'_>) -> bool {
    let Value::String(s) = v else { return false };
    if s.len() < 13 || !s[..5].eq_ignore_ascii_case(b"data:") {
        return false;
    }
    match s.iter().position(|&b| b == b',') {
        Some(comma) if comma >= 12 => s[comma - 7..comma].eq_ignore_ascii_case(b";base64"),
        _ => false,
    }
}

fn contains_transcript(key: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"transcript";
    key.len() >= NEEDLE.len() && key.windows(NEEDLE.len()).any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// Byte index at which to cut `s` so that `limit` characters remain, or None to keep it.
/// A string that already ends with our marker within `limit` + marker characters was cut
/// by an earlier pass and is kept, which makes sanitizing idempotent.
fn cut_point(s: &[u8], limit: usize) -> Option<usize> {
    if s.len() <= limit {
        return None; // fewer bytes than the limit: fewer characters too
    }
    let was_cut = s.ends_with(TRUNCATION_MARKER.as_bytes());
    let allowed = if was_cut { limit + TRUNCATION_MARKER_CHARS } else { limit };
    let mut chars = 0usize;
    let mut cut = None;
    for (i, &b) in s.iter().enumerate() {
        if b & 0xC0 != 0x80 {
            if chars == limit && cut.is_none() {
                cut = Some(i);
            }
            if chars == allowed {
                return cut; // more characters than allowed: cut at `limit`
            }
            chars += 1;
        }
    }
    None
}

fn is_array_marker(v: &Value<'_>) -> bool {
    match v {
        Value::Object(c) if c.len() == 2 => {
            matches!(c.get(b"_truncated"), Ok(Some(_))) && matches!(c.get(b"total_items"), Ok(Some(_)))
        }
        _ => false,
    }
}

fn is_object_summary(c: &Container<'_>) -> Result<bool, JsonbError> {
    Ok(c.len() == 3
        && c.get(b"_truncated")?.is_some()
        && c.get(b"sample_keys")?.is_some()
        && c.get(b"total_keys")?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::jsonb::testing::{decode, jsonb};
    use serde_json::{json, Value as J};

    fn run(v: &J, limits: &Limits) -> J {
        let datum = crate::codec::jsonb::testing::from_serde(v).encode().unwrap();
        let out = sanitize(jsonb::datum_body(&datum).unwrap(), limits, &mut || {}).unwrap();
        decode(&out)
    }

    fn san(v: J) -> J {
        run(&v, &Limits::default())
    }

    #[test]
    fn transcripts_are_cut_at_500_characters() {
        let long = "x".repeat(10_000);
        let out = san(json!({"transcription_text": long, "Voicemail_Transcript": long, "note": long}));
        let expected = format!("{}{}", "x".repeat(500), TRUNCATION_MARKER);
        assert_eq!(out["transcription_text"], J::String(expected.clone()));
        assert_eq!(out["Voicemail_Transcript"], J::String(expected));
        assert_eq!(out["note"], J::String(format!("{}{}", "x".repeat(2000), TRUNCATION_MARKER)));
        let short = "y".repeat(500);
        assert_eq!(san(json!({"transcript": short}))["transcript"], J::String(short));
    }

    #[test]
    fn cuts_never_split_characters() {
        let s = "é".repeat(600); // 2 bytes each
        let out = san(json!({ "transcript": s }));
        let t = out["transcript"].as_str().unwrap();
        assert_eq!(t.chars().count(), 500 + TRUNCATION_MARKER_CHARS);
        assert!(t.starts_with(&"é".repeat(500)));
        // 499 ASCII then a 4-byte emoji at the cut point
        let s = format!("{}{}{}", "a".repeat(499), "😀", "b".repeat(10));
        let out = san(json!({ "transcript": s }));
        assert_eq!(out["transcript"], J::String(format!("{}😀{}", "a".repeat(499), TRUNCATION_MARKER)));
        // exactly 500 multi-byte characters: more than 500 bytes, but not cut
        let s = "ü".repeat(500);
        assert_eq!(san(json!({ "transcript": s.clone() }))["transcript"], J::String(s));
    }

    #[test]
    fn binary_data_is_removed() {
        let out = san(json!({
            "audio_data": "AAAA", "File_Data": {"x": 1}, "binary_data": 1, "image_data": null,
            "attachment_data": [1], "keep": "data: not base64, really",
            "avatar": "data:image/png;base64,iVBORw0KGgo=",
            "list": ["a", "data:audio/wav;base64,UklGRg==", "b"],
        }));
        assert_eq!(out, json!({"keep": "data: not base64, really", "list": ["a", "b"]}));
        assert_eq!(san(json!("data:text/plain;base64,SGk=")), J::Null);
    }

    #[test]
    fn long_arrays_keep_ten_items_and_a_marker() {
        let arr: Vec<J> = (0..25).map(|i| json!(i)).collect();
        let out = san(json!({ "labels": arr }));
        let mut expected: Vec<J> = (0..10).map(|i| json!(i)).collect();
        expected.push(json!({"_truncated": true, "total_items": 25}));
        assert_eq!(out["labels"], J::Array(expected));
        let ten: Vec<J> = (0..10).map(|i| json!(i)).collect();
        assert_eq!(san(json!({ "labels": ten.clone() }))["labels"], J::Array(ten));
    }

    #[test]
    fn big_nested_objects_are_summarized_but_not_the_top_level() {
        let mut big = serde_json::Map::new();
        for i in 0..60 {
            big.insert(format!("key{i:02}"), json!(i));
        }
        let top = J::Object(big.clone());
        assert_eq!(san(top.clone()), top);
        let out = san(json!({ "integrations": J::Object(big) }));
        assert_eq!(
            out["integrations"],
            json!({"_truncated": true, "sample_keys": ["key00", "key01", "key02", "key03", "key04"], "total_keys": 60})
        );
        let mut twenty = serde_json::Map::new();
        for i in 0..20 {
            twenty.insert(format!("k{i}"), json!(i));
        }
        let o = json!({ "m": J::Object(twenty) });
        assert_eq!(san(o.clone()), o);
    }

    #[test]
    fn deep_values_are_replaced_at_level_six() {
        let out = san(json!({"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}));
        assert_eq!(out, json!({"a":{"b":{"c":{"d":{"e":{"f":"[max depth exceeded]"}}}}}}));
        // array items count as a level: a's value is level 1, the innermost 1 is level 6
        let out = san(json!({"a":[[[[[1]]]]]}));
        assert_eq!(out, json!({"a":[[[[["[max depth exceeded]"]]]]]}));
        let out = san(json!({"a":[[[[2]]]]}));
        assert_eq!(out, json!({"a":[[[[2]]]]}));
        // a top-level array is level 0: its 7th nested array is level 6
        let out = san(json!([[[[[[[1]]]]]]]));
        assert_eq!(out, json!([[[[[["[max depth exceeded]"]]]]]]));
    }

    #[test]
    fn limits_can_be_overridden() {
        let limits = Limits { max_array_items: 2, max_depth: 1, max_string_length: 3, ..Limits::default() };
        let out = run(&json!({"a": [1, 2, 3], "s": "abcdef", "o": {"x": 1}}), &limits);
        assert_eq!(
            out,
            json!({"a": ["[max depth exceeded]", "[max depth exceeded]", "[max depth exceeded]"],
                   "s": format!("abc{}", TRUNCATION_MARKER), "o": {"x": "[max depth exceeded]"}})
        );
    }

    #[test]
    fn scalars_at_top_level_are_sanitized_too() {
        assert_eq!(san(json!(null)), J::Null);
        assert_eq!(san(json!(42)), json!(42));
        let long = "z".repeat(3000);
        assert_eq!(san(J::String(long)), J::String(format!("{}{}", "z".repeat(2000), TRUNCATION_MARKER)));
    }

    #[test]
    fn numbers_keep_their_exact_value() {
        let d = jsonb(r#"{"n":123456789012345678901234567890,"f":11989.972,"neg":-0.000001}"#);
        let out = sanitize(jsonb::datum_body(&d).unwrap(), &Limits::default(), &mut || {}).unwrap();
        assert_eq!(out, d, "untouched documents come out byte for byte");
    }

    #[test]
    fn every_output_is_a_fixed_point() {
        let mut big = serde_json::Map::new();
        for i in 0..30 {
            big.insert(format!("{}{i}", "k".repeat(2500)), json!([1, 2, 3]));
        }
        let doc = json!({
            "t": "x".repeat(3000), "transcript": "y".repeat(600),
            "arr": (0..40).map(|i| json!({"i": i})).collect::<Vec<_>>(),
            "big": J::Object(big),
            "deep": [[[[{"arr": (0..20).collect::<Vec<_>>()}]]]],
        });
        for limits in [
            Limits::default(),
            Limits { max_object_keys: 1, max_array_items: 0, sample_keys: 3, ..Limits::default() },
            Limits { max_depth: 2, max_array_items: 1, ..Limits::default() },
            Limits { max_depth: 0, ..Limits::default() },
        ] {
            let once = run(&doc, &limits);
            assert_eq!(run(&once, &limits), once, "{limits:?}");
        }
    }

    fn sanitized_size(v: &J) -> usize {
        let datum = crate::codec::jsonb::testing::from_serde(v).encode().unwrap();
        sanitize(jsonb::datum_body(&datum).unwrap(), &Limits::default(), &mut || {}).unwrap().len()
    }

    #[test]
    fn the_result_is_bounded_whatever_the_input() {
        // one 1 MB key (the SQL tests take 9 MB)
        let key = "k".repeat(1024 * 1024);
        let doc = json!({ "call_id": 1, key.clone(): 1 });
        let out = san(doc.clone());
        assert!(sanitized_size(&doc) <= 64 * 1024);
        let cut = format!("{}{}", "k".repeat(256), TRUNCATION_MARKER);
        assert_eq!(out[&cut], json!(1));
        assert_eq!(out["call_id"], json!(1));
        // 20,000 top-level keys (the SQL tests take 400,000): the shortest kept, the rest counted
        let mut m = serde_json::Map::new();
        m.insert("call_id".into(), json!(6612345678901234u64));
        m.insert("state".into(), json!("hangup"));
        for i in 0..20_000 {
            m.insert(format!("key_{i:06}"), json!(i));
        }
        let doc = J::Object(m);
        assert!(sanitized_size(&doc) <= 64 * 1024);
        let out = san(doc);
        assert_eq!(out["call_id"], json!(6612345678901234u64));
        assert_eq!(out["state"], json!("hangup"));
        assert_eq!(out["_truncated"], json!(true));
        assert_eq!(out["total_keys"], json!(20_002));
        assert_eq!(out["omitted_keys"].as_array().unwrap().len(), 5);
        assert_eq!(san(out.clone()), out, "idempotent");
        // a nested bomb that every other rule lets through: 20 x 20 x 2000 characters
        let inner: serde_json::Map<String, J> =
            (0..20).map(|i| (format!("f{i:02}"), J::String("x".repeat(2000)))).collect();
        let outer: serde_json::Map<String, J> =
            (0..20).map(|i| (format!("g{i:02}"), J::Object(inner.clone()))).collect();
        let doc = json!({ "call_id": 1, "state": "hangup", "integrations": { "a": J::Object(outer.clone()), "b": J::Object(outer) } });
        let out = san(doc.clone());
        assert!(sanitized_size(&doc) <= 64 * 1024);
        assert_eq!((out["call_id"].clone(), out["state"].clone()), (json!(1), json!("hangup")));
        assert_eq!(out["omitted_keys"], json!(["integrations"]));
        assert_eq!(san(out.clone()), out, "idempotent");
    }

    #[test]
    fn a_small_bound_keeps_the_short_keys() {
        let mut m = serde_json::Map::new();
        m.insert("call_id".into(), json!(7));
        for i in 0..200 {
            m.insert(format!("key_{i:04}"), J::String("v".repeat(50)));
        }
        let limits = Limits { max_bytes: 2048, ..Limits::default() };
        let out = run(&J::Object(m), &limits);
        assert_eq!(out["call_id"], json!(7));
        assert_eq!(out["total_keys"], json!(201));
        assert!(out.as_object().unwrap().len() > 10, "as many pairs as fit: {}", out.as_object().unwrap().len());
    }

    #[test]
    fn a_normal_event_is_untouched_by_the_bound() {
        let doc = json!({"call_id": 6612345678901234u64, "state": "hangup", "direction": "inbound",
            "external_number": "+14155550123", "internal_number": "+16505550199", "date_started": 1787158716092u64,
            "contact": {"id": "c-1", "type": "contact", "name": "Ada", "phone": "+14155550123"},
            "target": {"id": 5001, "type": "user", "name": "Agent Smith", "office_id": 42},
            "labels": ["support"], "routing_breadcrumbs": [], "integrations": {}});
        assert_eq!(san(doc.clone()), doc);
    }

    #[test]
    fn cut_point_handles_edges() {
        assert_eq!(cut_point(b"abc", 3), None);
        assert_eq!(cut_point(b"abcd", 3), Some(3));
        assert_eq!(cut_point(b"", 0), None);
        assert_eq!(cut_point(b"a", 0), Some(0));
        let cut = format!("abc{TRUNCATION_MARKER}");
        assert_eq!(cut_point(cut.as_bytes(), 3), None);
        assert_eq!(cut_point(cut.as_bytes(), 2), Some(2));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = J> {
            let leaf = prop_oneof![
                Just(J::Null),
                any::<bool>().prop_map(J::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "-?[1-9][0-9]{0,29}(\\.[0-9]{1,5})?".prop_map(|d| serde_json::from_str::<J>(&d).unwrap()),
                "\\PC{0,40}".prop_map(J::String),
                (0usize..700, prop::sample::select(vec!["é", "a", "😀", "\u{0}"]))
                    .prop_map(|(n, c)| J::String(c.repeat(n))),
                Just(J::String("data:image/png;base64,AAAA".into())),
            ];
            leaf.prop_recursive(10, 400, 30, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..30).prop_map(J::Array),
                    prop::collection::vec(
                        (
                            prop::sample::select(vec![
                                "a",
                                "transcript",
                                "call_transcript_x",
                                "audio_data",
                                "k1",
                                "k2",
                                "k3",
                                "name",
                                "x",
                                "y",
                                "z",
                                "_truncated",
                                "total_items",
                            ])
                            .prop_flat_map(|k| (Just(k), 0u8..40)),
                            inner
                        ),
                        0..40,
                    )
                    .prop_map(|pairs| {
                        let mut m = serde_json::Map::new();
                        for ((k, i), v) in pairs {
                            m.insert(format!("{k}{i}"), v);
                        }
                        J::Object(m)
                    }),
                ]
            })
        }

        fn arb_limits() -> impl Strategy<Value = Limits> {
            (
                (0usize..600, 0usize..2100, 0usize..12, 0usize..22, 0usize..7, 0usize..7),
                (0usize..40, prop_oneof![Just(64 * 1024), 1024usize..4096]),
            )
                .prop_map(|((t, s, a, o, k, d), (kl, b))| Limits {
                    max_transcript_length: t,
                    max_string_length: s,
                    max_array_items: a,
                    max_object_keys: o,
                    sample_keys: k,
                    max_depth: d,
                    max_key_length: kl,
                    max_bytes: b,
                })
        }

        /// Checks every limit on the output, returning the deepest level seen.
        fn check(v: &J, l: &Limits, level: usize, transcript: bool, top: bool) {
            if level > l.max_depth {
                assert_eq!(v, &J::String(DEPTH_MARKER.into()), "level {level}");
                return;
            }
            match v {
                J::String(s) => {
                    let max = if transcript { l.max_transcript_length } else { l.max_string_length };
                    assert!(s.chars().count() <= max + TRUNCATION_MARKER_CHARS, "string too long");
                    assert!(!(s.starts_with("data:") && s.contains(";base64,")), "binary kept");
                }
                J::Array(items) => {
                    assert!(items.len() <= l.max_array_items + 1, "array too long");
                    for it in items {
                        check(it, l, level + 1, transcript, false);
                    }
                }
                J::Object(m) => {
                    if !top {
                        assert!(m.len() <= l.max_object_keys.max(3), "object of {} keys", m.len());
                    }
                    for (k, v) in m {
                        assert!(k.chars().count() <= l.max_key_length + TRUNCATION_MARKER_CHARS, "key too long");
                        assert!(!BINARY_KEYS.contains(&k.to_ascii_lowercase().as_str()));
                        check(v, l, level + 1, k.to_ascii_lowercase().contains("transcript"), false);
                    }
                }
                _ => {}
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn limits_hold_and_sanitizing_is_idempotent(doc in arb_json(), limits in arb_limits()) {
                let datum = crate::codec::jsonb::testing::from_serde(&doc).encode().unwrap();
                let raw = sanitize(jsonb::datum_body(&datum).unwrap(), &limits, &mut || {}).unwrap();
                prop_assert!(raw.len() <= limits.max_bytes, "{} bytes over {}", raw.len(), limits.max_bytes);
                let once = run(&doc, &limits);
                check(&once, &limits, 0, false, true);
                let twice = run(&once, &limits);
                prop_assert_eq!(twice, once);
            }
        }
    }
}
