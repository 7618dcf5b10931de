//! A leg's recordings: every `recording_details` item any of its events carried, kept as one
//! list (`dialpad.calls.recordings`), and the call recording and the voicemail picked from it.
//!
//! Dialpad's `recording_type` is `callrecording`, `admincallrecording` or `voicemail`; a
//! voicemail's audio is not the call recording. An item without a type is taken as a call
//! recording (what 0.1.0 assumed of every item).
//!
//! The list is written as jsonb prints it (keys by length, then bytes; `", "` and `": "`), so
//! that a row read back compares equal to the one that was written.

use std::cmp::Ordering;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub id: Option<String>,
    pub url: Option<String>,
    /// `recording_type`.
    pub kind: Option<String>,
    /// `start_time`, epoch milliseconds as Dialpad sends it.
    pub start_time: Option<i64>,
    /// `duration`, milliseconds made seconds.
    pub duration_seconds: Option<f64>,
}

pub const CALL_RECORDING: &str = "callrecording";
pub const ADMIN_RECORDING: &str = "admincallrecording";
pub const VOICEMAIL: &str = "voicemail";

impl Recording {
    /// Fills what `self` lacks from `other` (the same recording seen in another event).
    fn fill_from(&mut self, other: &Recording) {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f.clone(); } )* };
        }
        fill!(id, url, kind, start_time, duration_seconds);
    }

    fn order(a: &Recording, b: &Recording) -> Ordering {
        let start = |r: &Recording| (r.start_time.is_none(), r.start_time);
        start(a).cmp(&start(b)).then_with(|| a.id.cmp(&b.id)).then_with(|| a.url.cmp(&b.url))
    }

    fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }

    fn to_json(&self) -> String {
        // jsonb's key order: by length, then bytes.
        let mut pairs: Vec<String> = Vec::with_capacity(5);
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        if let Some(id) = &self.id {
            pairs.push(format!("\"id\": {}", quoted(id)));
        }
        if let Some(url) = &self.url {
            pairs.push(format!("\"url\": {}", quoted(url)));
        }
        if let Some(kind) = &self.kind {
            pairs.push(format!("\"type\": {}", quoted(kind)));
        }
        if let Some(t) = self.start_time {
            pairs.push(format!("\"start_time\": {t}"));
        }
        if let Some(d) = self.duration_seconds {
            pairs.push(format!("\"duration_seconds\": {d}"));
        }
        format!("{{{}}}", pairs.join(", "))
    }

    fn from_json(v: &serde_json::Value) -> Option<Recording> {
        let o = v.as_object()?;
        let text = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Some(Recording {
            id: text("id"),
            url: text("url"),
            kind: text("type"),
            start_time: o.get("start_time").and_then(|v| v.as_i64()),
            duration_seconds: o.get("duration_seconds").and_then(|v| v.as_f64()),
        })
    }
}

/// The most recordings a leg keeps (the earliest started): a leg has one or two; the bound
/// keeps what a hostile event can add to `calls.recordings` small.
pub const MAX_RECORDINGS: usize = 50;

/// What makes two items the same recording: the same id, or (without ids) the same
/// url. An item with neither is never the same as another.
#[derive(Hash, PartialEq, Eq)]
enum Identity<'a> {
    Id(&'a str),
    Url(&'a str),
}

impl Recording {
    fn identity(&self) -> Option<Identity<'_>> {
        match (&self.id, &self.url) {
            (Some(id), _) => Some(Identity::Id(id)),
            (None, Some(url)) => Some(Identity::Url(url)),
            (None, None) => None,
        }
    }
}

/// The recordings of `stored` (the column's JSON text, if any) and `new`, each once, in the
/// order they started: the same list whatever order the events came in. Linear in the
/// number of items (a hash of identities), then sorted: n·log n for any input.
pub fn merge(stored: Option<&str>, new: &[Recording]) -> Vec<Recording> {
    let mut all: Vec<Recording> = stored.map(parse).unwrap_or_default();
    let mut fills: Vec<(usize, usize)> = Vec::new();
    let mut added: Vec<usize> = Vec::new();
    {
        let mut seen: std::collections::HashMap<Identity<'_>, usize> = std::collections::HashMap::new();
        for (i, r) in all.iter().enumerate() {
            if let Some(k) = r.identity() {
                seen.entry(k).or_insert(i);
            }
        }
        let base = all.len();
        for (j, r) in new.iter().enumerate() {
            match r.identity().and_then(|k| seen.get(&k).copied()) {
                Some(have) => fills.push((have, j)),
                None => {
                    if let Some(k) = r.identity() {
                        seen.insert(k, base + added.len());
                    }
                    added.push(j);
                }
            }
        }
    }
    // `fills` may name an item added from `new` itself (an index past the stored ones).
    all.extend(added.iter().map(|&j| new[j].clone()));
    for (have, j) in fills {
        all[have].fill_from(&new[j]);
    }
    all.sort_by(Recording::order);
    all.truncate(MAX_RECORDINGS);
    all
}

/// The column's JSON text back into items (what is not an item is left out).
pub fn parse(text: &str) -> Vec<Recording> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items.iter().filter_map(Recording::from_json).collect(),
        _ => Vec::new(),
    }
}

/// The list as the column stores it; None for no recordings.
pub fn to_json(list: &[Recording]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    Some(format!("[{}]", list.iter().map(Recording::to_json).collect::<Vec<_>>().join(", ")))
}

/// The call recording: the first `callrecording` (or untyped item) with a url, else the first
/// `admincallrecording`.
pub fn call_recording_url(list: &[Recording]) -> Option<&str> {
    let first = |pred: &dyn Fn(&Recording) -> bool| list.iter().find(|r| r.url.is_some() && pred(r));
    first(&|r| r.kind.is_none() || r.is(CALL_RECORDING))
        .or_else(|| first(&|r| r.is(ADMIN_RECORDING)))
        .and_then(|r| r.url.as_deref())
}

/// The voicemail's audio: the first `voicemail` item with a url.
pub fn voicemail_url(list: &[Recording]) -> Option<&str> {
    list.iter().find(|r| r.url.is_some() && r.is(VOICEMAIL)).and_then(|r| r.url.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, kind: &str, start: i64) -> Recording {
        Recording {
            id: Some(id.into()),
            url: Some(format!("https://r/{id}.mp3")),
            kind: Some(kind.into()),
            start_time: Some(start),
            duration_seconds: Some(12.5),
        }
    }

    #[test]
    fn voicemail_audio_is_not_the_call_recording() {
        let list = merge(None, &[rec("vm", VOICEMAIL, 1), rec("c", CALL_RECORDING, 2)]);
        assert_eq!(call_recording_url(&list), Some("https://r/c.mp3"));
        assert_eq!(voicemail_url(&list), Some("https://r/vm.mp3"));
        let only_vm = merge(None, &[rec("vm", VOICEMAIL, 1)]);
        assert_eq!(call_recording_url(&only_vm), None);
        let admin = merge(None, &[rec("a", ADMIN_RECORDING, 1)]);
        assert_eq!(call_recording_url(&admin), Some("https://r/a.mp3"));
    }

    #[test]
    fn the_list_is_the_same_whatever_the_order_and_keeps_every_recording() {
        let a = rec("a", CALL_RECORDING, 1);
        let b = rec("b", ADMIN_RECORDING, 2);
        let mut partial = rec("a", CALL_RECORDING, 1);
        partial.duration_seconds = None;
        let one = to_json(&merge(to_json(&merge(None, &[partial.clone()])).as_deref(), &[b.clone(), a.clone()]));
        let two = to_json(&merge(to_json(&merge(None, &[b, a])).as_deref(), &[partial]));
        assert_eq!(one, two);
        assert_eq!(parse(one.as_deref().unwrap()).len(), 2);
        assert_eq!(
            one.as_deref(),
            Some(
                "[{\"id\": \"a\", \"url\": \"https://r/a.mp3\", \"type\": \"callrecording\", \"start_time\": 1, \"duration_seconds\": 12.5}, \
                 {\"id\": \"b\", \"url\": \"https://r/b.mp3\", \"type\": \"admincallrecording\", \"start_time\": 2, \"duration_seconds\": 12.5}]"
            )
        );
    }

    #[test]
    fn merging_is_n_log_n_and_bounded_whatever_the_input() {
        // 0.2.0 compared every new item with every kept one: 80,000 items took 10 s.
        let many: Vec<Recording> = (0..80_000).map(|i| rec(&i.to_string(), CALL_RECORDING, 80_000 - i)).collect();
        let started = std::time::Instant::now();
        let list = merge(None, &many);
        assert_eq!(list.len(), MAX_RECORDINGS);
        assert_eq!(list[0].start_time, Some(1), "the earliest started are kept");
        let again = merge(to_json(&list).as_deref(), &many);
        assert_eq!(again, list);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // The same recording in one event twice: kept once, filled from both.
        let mut a = rec("x", CALL_RECORDING, 5);
        a.duration_seconds = None;
        let list = merge(None, &[a, rec("x", CALL_RECORDING, 5)]);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].duration_seconds, Some(12.5));
    }
}
