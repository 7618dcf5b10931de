//! jsonb's binary format (`src/include/utils/jsonb.h`), read and written directly.
//!
//! Going through text and serde_json (what pgrx's `JsonB` does) fails past 128 levels of
//! nesting, rounds large numbers and costs a parse and a print per call. Reading the on-disk
//! form keeps numbers as the exact `numeric` bytes PostgreSQL stored, never descends deeper
//! than the caller asks, and lets the writer emit the final datum in one pass.
//!
//! Layout reminder: a container is `header (count | flags)`, then one 32-bit JEntry per child
//! (objects: all keys, then all values), then the children's data. A JEntry holds the child's
//! type and either its length or (every 32nd child) its end offset. Numerics and containers are
//! 4-byte aligned, the padding counting as part of the child. Object keys are sorted by length,
//! then bytes, with no duplicates.

use crate::codec::varlena;

pub const JB_CMASK: u32 = 0x0FFF_FFFF;
pub const JB_FSCALAR: u32 = 0x1000_0000;
pub const JB_FOBJECT: u32 = 0x2000_0000;
pub const JB_FARRAY: u32 = 0x4000_0000;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
pub const JENTRY_ISSTRING: u32 = 0x0000_0000;
pub const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
pub const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
pub const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
pub const JENTRY_ISNULL: u32 = 0x4000_0000;
pub const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
const JB_OFFSET_STRIDE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonbError {
    /// The bytes do not follow the jsonb format.
    Corrupt,
    /// A container would exceed jsonb's 256 MB limit.
    TooLarge,
}

impl std::fmt::Display for JsonbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonbError::Corrupt => f.write_str("malformed jsonb value"),
            JsonbError::TooLarge => f.write_str("jsonb value exceeds the maximum container size of 268435455 bytes"),
        }
    }
}

type Result<T> = std::result::Result<T, JsonbError>;

#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// UTF-8 (database encoding) bytes, not NUL-terminated.
    String(&'a [u8]),
    /// A whole `numeric` datum, varlena header included.
    Numeric(&'a [u8]),
    Array(Container<'a>),
    Object(Container<'a>),
}

/// A borrowed array or object.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    bytes: &'a [u8],
    header: u32,
}

#[inline]
fn intalign(x: usize) -> usize {
    (x + 3) & !3
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or(JsonbError::Corrupt)
}

impl<'a> Container<'a> {
    /// `bytes` starts at the container header and covers at least the whole container.
    pub fn parse(bytes: &'a [u8]) -> Result<Container<'a>> {
        let header = read_u32(bytes, 0)?;
        let c = Container { bytes, header };
        let needed =
            4usize.checked_add(c.entries().checked_mul(4).ok_or(JsonbError::Corrupt)?).ok_or(JsonbError::Corrupt)?;
        if needed > bytes.len() || (header & (JB_FOBJECT | JB_FARRAY)) == 0 {
            return Err(JsonbError::Corrupt);
        }
        Ok(c)
    }

    /// The root value of a jsonb datum whose varlena header has been stripped.
    pub fn root(bytes: &'a [u8]) -> Result<Value<'a>> {
        let c = Container::parse(bytes)?;
        if c.is_scalar() {
            if c.len() != 1 {
                return Err(JsonbError::Corrupt);
            }
            c.child(0)
        } else if c.is_object() {
            Ok(Value::Object(c))
        } else {
            Ok(Value::Array(c))
        }
    }

    /// Elements of an array, pairs of an object.
    pub fn len(&self) -> usize {
        (self.header & JB_CMASK) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_object(&self) -> bool {
        self.header & JB_FOBJECT != 0
    }

    pub fn is_scalar(&self) -> bool {
        self.header & JB_FSCALAR != 0
    }

    /// The container's own bytes (header to end of data).
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    fn entries(&self) -> usize {
        if self.is_object() {
            self.len() * 2
        } else {
            self.len()
        }
    }

    fn jentry(&self, i: usize) -> Result<u32> {
        read_u32(self.bytes, 4 + 4 * i)
    }

    fn data_start(&self) -> usize {
        4 + 4 * self.entries()
    }

    /// Start offset (relative to the data area) of child `i`, as getJsonbOffset computes it.
    fn offset_of(&self, i: usize) -> Result<usize> {
        let mut off = 0usize;
        let mut j = i;
        while j > 0 {
            j -= 1;
            let je = self.jentry(j)?;
            off += (je & JENTRY_OFFLENMASK) as usize;
            if je & JENTRY_HAS_OFF != 0 {
                break;
            }
        }
        Ok(off)
    }

    /// Iterates over children `from..to` (entry indexes), computing offsets incrementally.
    fn iter_range(&self, from: usize, to: usize) -> Result<Children<'a>> {
        Ok(Children { c: *self, next: from, end: to, offset: self.offset_of(from)? })
    }

    /// Array elements, or object values.
    pub fn values(&self) -> Result<Children<'a>> {
        if self.is_object() {
            self.iter_range(self.len(), self.entries())
        } else {
            self.iter_range(0, self.len())
        }
    }

    /// Object keys, as strings, in storage order.
    pub fn keys(&self) -> Result<Children<'a>> {
        if self.is_object() {
            self.iter_range(0, self.len())
        } else {
            self.iter_range(0, 0)
        }
    }

    /// Child `i` (entry index) by random access.
    pub fn child(&self, i: usize) -> Result<Value<'a>> {
        let start = self.offset_of(i)?;
        let je = self.jentry(i)?;
        let end = if je & JENTRY_HAS_OFF != 0 {
            (je & JENTRY_OFFLENMASK) as usize
        } else {
            start + (je & JENTRY_OFFLENMASK) as usize
        };
        self.decode(je, start, end)
    }

    fn decode(&self, je: u32, start: usize, end: usize) -> Result<Value<'a>> {
        let base = self.data_start();
        let data = |s: usize| -> Result<&'a [u8]> {
            if s > end {
                return Err(JsonbError::Corrupt);
            }
            self.bytes.get(base + s..base + end).ok_or(JsonbError::Corrupt)
        };
        Ok(match je & JENTRY_TYPEMASK {
            JENTRY_ISSTRING => Value::String(data(start)?),
            JENTRY_ISNUMERIC => Value::Numeric(data(intalign(start))?),
            JENTRY_ISBOOL_FALSE => Value::Bool(false),
            JENTRY_ISBOOL_TRUE => Value::Bool(true),
            JENTRY_ISNULL => Value::Null,
            JENTRY_ISCONTAINER => {
                let c = Container::parse(data(intalign(start))?)?;
                if c.is_scalar() {
                    return Err(JsonbError::Corrupt);
                }
                if c.is_object() {
                    Value::Object(c)
                } else {
                    Value::Array(c)
                }
            }
            _ => return Err(JsonbError::Corrupt),
        })
    }

    /// Looks a key up in an object (binary search over jsonb's key order).
    pub fn get(&self, key: &[u8]) -> Result<Option<Value<'a>>> {
        if !self.is_object() {
            return Ok(None);
        }
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = match self.child(mid)? {
                Value::String(k) => k,
                _ => return Err(JsonbError::Corrupt),
            };
            match compare_keys(k, key) {
                std::cmp::Ordering::Equal => return self.child(mid + self.len()).map(Some),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

/// jsonb's key order: shorter keys first, then bytewise.
pub fn compare_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

pub struct Children<'a> {
    c: Container<'a>,
    next: usize,
    end: usize,
    offset: usize,
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Value<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let je = match self.c.jentry(self.next) {
            Ok(je) => je,
            Err(e) => return Some(Err(e)),
        };
        let start = self.offset;
        let end = if je & JENTRY_HAS_OFF != 0 {
            (je & JENTRY_OFFLENMASK) as usize
        } else {
            start + (je & JENTRY_OFFLENMASK) as usize
        };
        self.offset = end;
        self.next += 1;
        Some(self.c.decode(je, start, end))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

/// An open container in a [`Writer`].
pub struct Frame {
    jentries: usize,
    data_start: usize,
    start: usize,
    entries: usize,
    next: usize,
}

/// Builds a jsonb datum (varlena header included) in one pass.
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity.max(16));
        buf.extend_from_slice(&[0u8; varlena::VARHDRSZ]);
        Writer { buf }
    }

    #[inline]
    fn pad4(&mut self) {
        let n = intalign(self.buf.len()) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; 3][..n]);
    }

    /// Where the next child starts: pass it to [`Writer::end_child`].
    #[inline]
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Opens a container of `count` elements (or key/value pairs for an object).
    pub fn begin(&mut self, flags: u32, count: usize) -> Result<Frame> {
        if count > JB_CMASK as usize {
            return Err(JsonbError::TooLarge);
        }
        let start = self.buf.len();
        self.pad4();
        self.buf.extend_from_slice(&((count as u32) | flags).to_ne_bytes());
        let entries = if flags & JB_FOBJECT != 0 { count * 2 } else { count };
        let jentries = self.buf.len();
        self.buf.resize(jentries + 4 * entries, 0);
        let data_start = self.buf.len();
        Ok(Frame { jentries, data_start, start, entries, next: 0 })
    }

    /// Records the child written since `mark` with type bits `ty`.
    #[inline]
    pub fn end_child(&mut self, f: &mut Frame, mark: usize, ty: u32) -> Result<()> {
        let idx = f.next;
        if idx >= f.entries {
            return Err(JsonbError::Corrupt);
        }
        f.next += 1;
        let end = self.buf.len() - f.data_start;
        if end > JENTRY_OFFLENMASK as usize {
            return Err(JsonbError::TooLarge);
        }
        let meta = if idx.is_multiple_of(JB_OFFSET_STRIDE) {
            ty | JENTRY_HAS_OFF | end as u32
        } else {
            ty | (self.buf.len() - mark) as u32
        };
        let at = f.jentries + 4 * idx;
        self.buf[at..at + 4].copy_from_slice(&meta.to_ne_bytes());
        Ok(())
    }

    /// Closes a container; returns its type bits for the parent's JEntry.
    pub fn end(&mut self, f: Frame) -> Result<u32> {
        if f.next != f.entries {
            return Err(JsonbError::Corrupt);
        }
        if self.buf.len() - f.start > JENTRY_OFFLENMASK as usize {
            return Err(JsonbError::TooLarge);
        }
        Ok(JENTRY_ISCONTAINER)
    }

    #[inline]
    pub fn string(&mut self, s: &[u8]) -> u32 {
        self.buf.extend_from_slice(s);
        JENTRY_ISSTRING
    }

    #[inline]
    pub fn string_parts(&mut self, head: &[u8], tail: &[u8]) -> u32 {
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(tail);
        JENTRY_ISSTRING
    }

    #[inline]
    pub fn numeric(&mut self, datum: &[u8]) -> u32 {
        self.pad4();
        self.buf.extend_from_slice(datum);
        JENTRY_ISNUMERIC
    }

    /// Copies a whole container verbatim (valid because offsets inside are relative and
    /// the copy lands on a 4-byte boundary, as the original did).
    pub fn container_verbatim(&mut self, c: &Container<'_>) -> u32 {
        self.pad4();
        self.buf.extend_from_slice(c.raw());
        JENTRY_ISCONTAINER
    }

    /// Writes any value unchanged.
    pub fn value(&mut self, v: &Value<'_>) -> u32 {
        match v {
            Value::Null => JENTRY_ISNULL,
            Value::Bool(false) => JENTRY_ISBOOL_FALSE,
            Value::Bool(true) => JENTRY_ISBOOL_TRUE,
            Value::String(s) => self.string(s),
            Value::Numeric(n) => self.numeric(n),
            Value::Array(c) | Value::Object(c) => self.container_verbatim(c),
        }
    }

    /// The finished datum, varlena header set.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len();
        self.buf[..4].copy_from_slice(&varlena::header_4b(len));
        self.buf
    }
}

/// An owned JSON value, encoded to jsonb by [`Owned::encode`]: used for the small objects
/// the sanitizer makes itself, and by tests to build inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    Null,
    Bool(bool),
    String(Vec<u8>),
    /// A numeric datum (see [`crate::codec::numeric::Decimal::to_datum_bytes`]).
    Numeric(Vec<u8>),
    Array(Vec<Owned>),
    Object(Vec<(Vec<u8>, Owned)>),
}

impl Owned {
    #[cfg(test)]
    pub fn str(s: &str) -> Owned {
        Owned::String(s.as_bytes().to_vec())
    }

    pub fn uint(n: u64) -> Owned {
        Owned::Numeric(crate::codec::numeric::Decimal::from_u64(n).to_datum_bytes())
    }

    /// Encodes as a complete jsonb datum. Object keys are put in jsonb order and
    /// de-duplicated (last one wins), as jsonb_in does.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(64);
        match self {
            Owned::Array(_) | Owned::Object(_) => {
                self.write(&mut w)?;
            }
            scalar => {
                let mut f = w.begin(JB_FARRAY | JB_FSCALAR, 1)?;
                let m = w.mark();
                let ty = scalar.write(&mut w)?;
                w.end_child(&mut f, m, ty)?;
                w.end(f)?;
            }
        }
        Ok(w.finish())
    }

    fn write(&self, w: &mut Writer) -> Result<u32> {
        Ok(match self {
            Owned::Null => JENTRY_ISNULL,
            Owned::Bool(false) => JENTRY_ISBOOL_FALSE,
            Owned::Bool(true) => JENTRY_ISBOOL_TRUE,
            Owned::String(s) => w.string(s),
            Owned::Numeric(n) => w.numeric(n),
            Owned::Array(items) => {
                let mut f = w.begin(JB_FARRAY, items.len())?;
                for it in items {
                    let m = w.mark();
                    let ty = it.write(w)?;
                    w.end_child(&mut f, m, ty)?;
                }
                w.end(f)?
            }
            Owned::Object(pairs) => {
                let mut sorted: Vec<&(Vec<u8>, Owned)> = Vec::with_capacity(pairs.len());
                for p in pairs {
                    if let Some(pos) = sorted.iter().position(|q| q.0 == p.0) {
                        sorted[pos] = p;
                    } else {
                        sorted.push(p);
                    }
                }
                sorted.sort_by(|a, b| compare_keys(&a.0, &b.0));
                let mut f = w.begin(JB_FOBJECT, sorted.len())?;
                for (k, _) in &sorted {
                    let m = w.mark();
                    let ty = w.string(k);
                    w.end_child(&mut f, m, ty)?;
                }
                for (_, v) in &sorted {
                    let m = w.mark();
                    let ty = v.write(w)?;
                    w.end_child(&mut f, m, ty)?;
                }
                w.end(f)?
            }
        })
    }
}

/// Strips the varlena header of a datum built by [`Writer`] or [`Owned::encode`].
pub fn datum_body(datum: &[u8]) -> Result<&[u8]> {
    let (hdr, total) = varlena::header(datum).ok_or(JsonbError::Corrupt)?;
    datum.get(hdr..total).ok_or(JsonbError::Corrupt)
}

/// Test helpers: conversion to and from serde_json with exact numbers.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::codec::numeric::Decimal;

    pub fn from_serde(v: &serde_json::Value) -> Owned {
        match v {
            serde_json::Value::Null => Owned::Null,
            serde_json::Value::Bool(b) => Owned::Bool(*b),
            serde_json::Value::String(s) => Owned::str(s),
            serde_json::Value::Number(n) => Owned::Numeric(Decimal::parse(&n.to_string()).unwrap().to_datum_bytes()),
            serde_json::Value::Array(a) => Owned::Array(a.iter().map(from_serde).collect()),
            serde_json::Value::Object(o) => {
                Owned::Object(o.iter().map(|(k, v)| (k.as_bytes().to_vec(), from_serde(v))).collect())
            }
        }
    }

    pub fn to_serde(v: &Value<'_>) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::String(s) => serde_json::Value::String(String::from_utf8(s.to_vec()).unwrap()),
            Value::Numeric(n) => {
                let text = Decimal::from_datum_bytes(n).unwrap().to_string();
                serde_json::from_str(&text).unwrap()
            }
            Value::Array(c) => serde_json::Value::Array(c.values().unwrap().map(|v| to_serde(&v.unwrap())).collect()),
            Value::Object(c) => {
                let mut m = serde_json::Map::new();
                for (k, v) in c.keys().unwrap().zip(c.values().unwrap()) {
                    let k = match k.unwrap() {
                        Value::String(k) => String::from_utf8(k.to_vec()).unwrap(),
                        _ => panic!("non-string key"),
                    };
                    m.insert(k, to_serde(&v.unwrap()));
                }
                serde_json::Value::Object(m)
            }
        }
    }

    /// JSON text → jsonb datum.
    pub fn jsonb(text: &str) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        from_serde(&v).encode().unwrap()
    }

    /// jsonb datum → serde_json value.
    pub fn decode(datum: &[u8]) -> serde_json::Value {
        to_serde(&Container::root(datum_body(datum).unwrap()).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn round_trips_documents() {
        for text in [
            r#"{"a":1,"bb":[true,false,null,"x"],"c":{"d":-2.5}}"#,
            r#"[]"#,
            r#"{}"#,
            r#""just a string""#,
            r#"123456789012345678901234567890"#,
            r#"null"#,
            r#"[1,[2,[3,[4]]]]"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(decode(&jsonb(text)), v, "{text}");
        }
    }

    #[test]
    fn many_children_use_offset_strides() {
        let items: Vec<String> = (0..100).map(|i| format!("\"item{i}\"")).collect();
        let text = format!("[{}]", items.join(","));
        let datum = jsonb(&text);
        let root = Container::root(datum_body(&datum).unwrap()).unwrap();
        let Value::Array(c) = root else { panic!() };
        for i in [0usize, 31, 32, 33, 64, 99] {
            match c.child(i).unwrap() {
                Value::String(s) => assert_eq!(s, format!("item{i}").as_bytes()),
                other => panic!("{other:?}"),
            }
        }
        let keys: Vec<String> = (0..70).map(|i| format!("\"k{i:03}\":{i}")).collect();
        let obj = jsonb(&format!("{{{}}}", keys.join(",")));
        let Value::Object(o) = Container::root(datum_body(&obj).unwrap()).unwrap() else { panic!() };
        for i in [0, 5, 33, 69] {
            let v = o.get(format!("k{i:03}").as_bytes()).unwrap().unwrap();
            let Value::Numeric(n) = v else { panic!() };
            assert_eq!(crate::codec::numeric::Decimal::from_datum_bytes(n).unwrap().to_i64(), Some(i));
        }
        assert!(o.get(b"nope").unwrap().is_none());
    }

    #[test]
    fn keys_are_sorted_and_deduplicated() {
        let d = Owned::Object(vec![
            (b"bbb".to_vec(), Owned::uint(1)),
            (b"a".to_vec(), Owned::uint(2)),
            (b"bbb".to_vec(), Owned::uint(3)),
        ])
        .encode()
        .unwrap();
        assert_eq!(decode(&d), serde_json::json!({"a": 2, "bbb": 3}));
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        assert_eq!(Container::root(&[]).unwrap_err(), JsonbError::Corrupt);
        assert_eq!(Container::root(&[5, 0, 0, 0x40]).unwrap_err(), JsonbError::Corrupt);
        let mut d = jsonb(r#"{"a":"hello","b":[1,2,3]}"#);
        let n = d.len();
        d.truncate(n - 6);
        let body = &d[4..];
        let walk = |c: Container<'_>| -> Result<()> {
            for v in c.values()? {
                if let Value::Array(a) = v? {
                    for x in a.values()? {
                        x?;
                    }
                }
            }
            Ok(())
        };
        match Container::root(body) {
            Ok(Value::Object(c)) => assert!(walk(c).is_err()),
            Ok(_) => panic!(),
            Err(_) => {}
        }
    }
}
