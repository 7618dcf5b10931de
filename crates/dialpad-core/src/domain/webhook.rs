//! What a webhook request body is, and whether to trust it.
//!
//! Dialpad sends either plain JSON or, when the subscription has a secret, a compact JWT
//! (`header.payload.signature`, base64url) signed with HMAC-SHA256; there is no signature
//! header, so a JWT is recognised by its shape. Only `alg: HS256` is accepted (never `none`),
//! and the signature is compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    Json(&'a str),
    Jwt { header: &'a str, payload: &'a str, signature: &'a str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not decodable: bad base64url, header not JSON, claims not UTF-8.
    Malformed(String),
    /// `alg` is not HS256 (e.g. `none`), or `typ` is not JWT.
    Algorithm(String),
    /// The header marks extensions critical (`crit`, RFC 7515 §4.1.11) that we do not
    /// implement: the token must then be refused.
    Critical(String),
    /// The signature matches none of the source's secrets.
    Signature,
    /// `exp` (seconds since the epoch) has passed, leeway included.
    Expired { exp: i64, now: i64 },
    /// `nbf` (seconds since the epoch) has not come yet, leeway included.
    NotYetValid { nbf: i64, now: i64 },
}

impl JwtError {
    /// The reason in a word or two, for a DETAIL line and for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed token",
            JwtError::Algorithm(_) => "unsupported algorithm",
            JwtError::Critical(_) => "unsupported crit",
            JwtError::Signature => "bad signature",
            JwtError::Expired { .. } => "expired",
            JwtError::NotYetValid { .. } => "not yet valid",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed JWT: {why}"),
            JwtError::Algorithm(alg) => write!(f, "JWT algorithm \"{alg}\" is not accepted (only HS256)"),
            JwtError::Critical(names) => {
                write!(f, "JWT header marks {names} critical, which pg_dialpad does not implement")
            }
            JwtError::Signature => f.write_str("JWT signature does not match the source's secret"),
            JwtError::Expired { exp, .. } => write!(f, "JWT expired at {exp} ({JWT_LEEWAY_S} s of leeway)"),
            JwtError::NotYetValid { nbf, .. } => {
                write!(f, "JWT is not valid before {nbf} ({JWT_LEEWAY_S} s of leeway)")
            }
        }
    }
}

/// Clock skew allowed on `exp` and `nbf`, in seconds (RFC 7519 §4.1.4: "some small leeway").
pub const JWT_LEEWAY_S: i64 = 60;

/// Whether `s` is made of base64url characters (and `=` padding). Every signed delivery is
/// read through once here before it is decoded: 64 bytes at a time without a branch per
/// byte, which the compiler turns into vector compares (12× faster than stopping at each
/// byte on a 6 KB body: 0.5 µs instead of 6, twice what the HMAC of the body costs).
fn is_base64url(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'=');
    !s.is_empty() && s.as_bytes().chunks(64).all(|c| c.iter().fold(true, |all, &b| all & ok(b)))
}

/// A body is a JWT when it is three dot-separated base64url parts (the signature may be
/// empty only in an unsigned token, which we then refuse for its algorithm).
pub fn classify(body: &str) -> Body<'_> {
    let t = body.trim();
    let mut parts = t.split('.');
    if let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) {
        if is_base64url(h) && is_base64url(p) && (s.is_empty() || is_base64url(s)) {
            return Body::Jwt { header: h, payload: p, signature: s };
        }
    }
    Body::Json(t)
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    decode_in_chunks(part, what, &mut || {})
}

/// How much of a body one step of [`verify_with`] reads between two calls of its callback
/// (the backend checks for interrupts there): about a millisecond of HMAC or base64.
const CHUNK: usize = 256 * 1024;

/// [`decode`] in chunks of [`CHUNK`] characters (whole base64 quads), `on_chunk` before each.
fn decode_in_chunks(part: &str, what: &str, on_chunk: &mut dyn FnMut()) -> Result<Vec<u8>, JwtError> {
    let part = part.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(part.len() / 4 * 3 + 3);
    for chunk in part.chunks(CHUNK) {
        on_chunk();
        URL_SAFE_NO_PAD
            .decode_vec(chunk, &mut out)
            .map_err(|e| JwtError::Malformed(format!("{what} is not base64url ({e})")))?;
    }
    Ok(out)
}

/// Verifies an HS256 JWT against `secrets` (tried in order: the current secret first, then
/// one still valid after a rotation, so a rotation costs one HMAC more only for deliveries
/// signed with the old secret). Returns the claims (JSON text) and the index of the secret
/// that matched. `exp` and `nbf` are checked afterwards on the parsed claims
/// ([`time_claims_error`]), which spares a second JSON parse here.
#[cfg(test)]
pub fn verify(header: &str, payload: &str, signature: &str, secrets: &[&[u8]]) -> Result<(String, usize), JwtError> {
    verify_with(header, payload, signature, secrets, &mut || {})
}

/// [`verify`], calling `on_chunk` before each [`CHUNK`] of the body it hashes or decodes: a
/// 10 MB body is a few tens of milliseconds of HMAC per secret, and the backend checks for
/// interrupts in between (pure code here calls no PostgreSQL function).
pub fn verify_with(
    header: &str,
    payload: &str,
    signature: &str,
    secrets: &[&[u8]],
    on_chunk: &mut dyn FnMut(),
) -> Result<(String, usize), JwtError> {
    let h = decode(header, "header")?;
    let h: serde_json::Value =
        serde_json::from_slice(&h).map_err(|_| JwtError::Malformed("header is not JSON".into()))?;
    let alg = h.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    if alg != "HS256" {
        return Err(JwtError::Algorithm(if alg.is_empty() { "(missing)".into() } else { alg.to_string() }));
    }
    if let Some(typ) = h.get("typ") {
        if !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
            return Err(JwtError::Malformed(format!("typ {typ} is not JWT")));
        }
    }
    // RFC 7515 §4.1.11: crit lists header parameters the recipient must understand; it is a
    // non-empty array of names. We implement no extension, so any crit refuses the token.
    if let Some(crit) = h.get("crit") {
        return Err(match crit.as_array() {
            Some(names) if !names.is_empty() && names.iter().all(|n| n.is_string()) => {
                JwtError::Critical(crit.to_string())
            }
            _ => JwtError::Malformed(format!("crit {crit} is not a non-empty array of names")),
        });
    }
    // The signature is opaque: one that does not even decode cannot match.
    let sig = decode(signature, "signature").map_err(|_| JwtError::Signature)?;
    let matched = secrets.iter().position(|secret| {
        Hmac::<Sha256>::new_from_slice(secret).is_ok_and(|mut mac| {
            mac.update(header.as_bytes());
            mac.update(b".");
            for chunk in payload.as_bytes().chunks(CHUNK) {
                on_chunk();
                mac.update(chunk);
            }
            mac.verify_slice(&sig).is_ok() // constant time
        })
    });
    let Some(matched) = matched else { return Err(JwtError::Signature) };
    let claims = decode_in_chunks(payload, "payload", on_chunk)?;
    let claims = String::from_utf8(claims).map_err(|_| JwtError::Malformed("claims are not UTF-8".into()))?;
    Ok((claims, matched))
}

/// RFC 7519 §4.1.4 and §4.1.5 on verified claims: `exp` and `nbf`, when present, are
/// NumericDates (seconds since the epoch, possibly fractional) honoured with
/// [`JWT_LEEWAY_S`] of leeway. `now_s` is the current time in seconds since the epoch.
pub fn time_claims_error(root: crate::codec::jsonb::Value<'_>, now_s: i64) -> Option<JwtError> {
    use crate::codec::jsonb::Value;
    use crate::codec::numeric::Decimal;
    let Value::Object(o) = root else { return None };
    let date = |key: &[u8]| -> Result<Option<i64>, JwtError> {
        match o.get(key) {
            Ok(None) => Ok(None),
            Ok(Some(Value::Numeric(n))) => {
                Decimal::from_datum_bytes(n).ok().and_then(|d| d.trunc_to_i64()).map(Some).ok_or_else(|| {
                    JwtError::Malformed(format!("{} is not a NumericDate", String::from_utf8_lossy(key)))
                })
            }
            _ => Err(JwtError::Malformed(format!("{} is not a NumericDate", String::from_utf8_lossy(key)))),
        }
    };
    match (date(b"exp"), date(b"nbf")) {
        (Err(e), _) | (_, Err(e)) => Some(e),
        (Ok(Some(exp)), _) if now_s > exp.saturating_add(JWT_LEEWAY_S) => Some(JwtError::Expired { exp, now: now_s }),
        (_, Ok(Some(nbf))) if now_s.saturating_add(JWT_LEEWAY_S) < nbf => {
            Some(JwtError::NotYetValid { nbf, now: now_s })
        }
        _ => None,
    }
}

/// Why an event is too old or too far in the future (dialpad.max_event_age), if it is.
/// `now_ms` is the current time in milliseconds since the epoch; 0 `max_age_s` is off.
pub fn freshness_error(root: crate::codec::jsonb::Value<'_>, max_age_s: i64, now_ms: i64) -> Option<String> {
    use crate::codec::jsonb::Value;
    use crate::codec::numeric::Decimal;
    if max_age_s == 0 {
        return None;
    }
    let Value::Object(o) = root else { return None };
    let Ok(Some(Value::Numeric(n))) = o.get(b"event_timestamp") else { return None };
    let ts_ms = Decimal::from_datum_bytes(n).ok()?.to_i64()?;
    if ts_ms < now_ms - max_age_s * 1000 {
        Some(format!("event_timestamp {ts_ms} is older than dialpad.max_event_age ({max_age_s} s)"))
    } else if ts_ms > now_ms + 120_000 {
        Some(format!("event_timestamp {ts_ms} is more than two minutes in the future"))
    } else {
        None
    }
}

/// A source's secret as stored in `dialpad.sources`: XORed with a keystream derived from the
/// source's name (SHA-256 of a fixed key, the name and a block counter), so it is not in
/// plain sight in the table, a dump or a copy of the data files. This is concealment, not
/// encryption: the key is in this code. The same call reveals it again.
pub fn conceal(name: &str, secret: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(secret.len());
    for (block, chunk) in secret.chunks(32).enumerate() {
        let pad = Sha256::new()
            .chain_update(b"pg_dialpad source secret v1")
            .chain_update((name.len() as u64).to_be_bytes())
            .chain_update(name.as_bytes())
            .chain_update((block as u64).to_be_bytes())
            .finalize();
        out.extend(chunk.iter().zip(pad.iter()).map(|(a, b)| a ^ b));
    }
    out
}

#[cfg(test)]
/// Signs claims as a compact HS256 JWT (for tests, benchmarks and documentation).
pub fn sign(claims_json: &str, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims_json.as_bytes());
    let signing_input = format!("{header}.{payload}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return signing_input + ".",
    };
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// A decimal number written the one canonical way: no sign for zero, no leading zeros, no
/// trailing fractional zeros (`"017.50"` and `17.5` agree). None if it is not a number.
pub fn canonical_decimal(text: &str) -> Option<String> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.is_empty();
    let sign = if negative && !zero { "-" } else { "" };
    Some(if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") })
}

/// The event's call id: `call_id` as an integer (a JSON number, or a string of one); None
/// when it is missing or not an integer.
pub fn call_id_of(root: crate::codec::jsonb::Value<'_>) -> Option<i64> {
    use crate::codec::jsonb::Value;
    let Value::Object(o) = root else { return None };
    match o.get(b"call_id") {
        Ok(Some(Value::Numeric(n))) => {
            crate::codec::numeric::Decimal::from_datum_bytes(n).ok().and_then(|d| d.to_i64())
        }
        Ok(Some(Value::String(s))) => std::str::from_utf8(s).ok().and_then(|s| s.trim().parse().ok()),
        _ => None,
    }
}

/// The longest de-duplication key: the key is indexed with the call id, and a btree entry
/// must stay far below PostgreSQL's limit (about 2.7 kB) for any payload.
pub const MAX_DEDUPE_KEY_BYTES: usize = 200;

/// The de-duplication key of an event: `call_id/state/event_timestamp`, when all three are
/// there (Dialpad has no event id), followed by `@source` for a delivery through a webhook
/// source: deliveries through different sources are never redeliveries of each other
/// (sources are tenants). Numbers are normalized so `42`, `"42"` and `42.0` agree, and a
/// fractional timestamp keeps its fraction. A key that would be longer than
/// [`MAX_DEDUPE_KEY_BYTES`] (a state of 12,800 characters) is `call_id/#` and the SHA-256 of
/// its parts instead: bounded for any payload, so that no delivery fails to be stored.
pub fn dedupe_key(root: crate::codec::jsonb::Value<'_>, source: Option<&str>) -> Option<String> {
    use crate::codec::jsonb::Value;
    use crate::codec::numeric::Decimal;
    use sha2::Digest;
    /// A number longer than this is no timestamp: no key (the processor dead-letters it).
    const MAX_NUMBER_CHARS: usize = 64;
    let Value::Object(o) = root else { return None };
    let number = |v: Option<Value<'_>>| -> Option<String> {
        match v? {
            Value::Numeric(n) => {
                canonical_decimal(&Decimal::from_datum_bytes(n).ok()?.to_string_bounded(MAX_NUMBER_CHARS)?)
            }
            Value::String(s) if s.len() <= MAX_NUMBER_CHARS => canonical_decimal(std::str::from_utf8(s).ok()?),
            _ => None,
        }
    };
    let call_id = number(o.get(b"call_id").ok()?)?.parse::<i64>().ok()?;
    let Some(Value::String(state)) = o.get(b"state").ok()? else { return None };
    let ts = number(o.get(b"event_timestamp").ok()?)?;
    let source_len = source.map_or(0, |s| s.len() + 1);
    if 20 + 1 + state.len() + 1 + ts.len() + source_len <= MAX_DEDUPE_KEY_BYTES {
        let mut key = format!("{call_id}/{}/{ts}", String::from_utf8_lossy(state));
        if let Some(src) = source {
            key.push('@');
            key.push_str(src);
        }
        if key.len() <= MAX_DEDUPE_KEY_BYTES {
            return Some(key);
        }
    }
    // Each part with its length first, so that no two different triples hash alike.
    let mut h = sha2::Sha256::new();
    for part in [state, ts.as_bytes(), source.unwrap_or("").as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update([u8::from(source.is_some())]);
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{call_id}/#{hex}"))
}

/// The call id a [`dedupe_key`] starts with.
pub fn key_call_id(key: &str) -> Option<i64> {
    key.split_once('/')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn parts(t: &str) -> (&str, &str, &str) {
        match classify(t) {
            Body::Jwt { header, payload, signature } => (header, payload, signature),
            Body::Json(_) => panic!("not a JWT: {t}"),
        }
    }

    #[test]
    fn signed_tokens_verify_and_return_the_claims() {
        let t = sign(r#"{"call_id": 1, "state": "ringing"}"#, SECRET);
        let (h, p, s) = parts(&t);
        assert_eq!(verify(h, p, s, &[SECRET]).unwrap(), (r#"{"call_id": 1, "state": "ringing"}"#.to_string(), 0));
        // During a rotation: the new secret first, the old one second.
        assert_eq!(verify(h, p, s, &[b"new one", SECRET]).unwrap().1, 1);
    }

    #[test]
    fn tampering_wrong_secrets_and_other_algorithms_are_refused() {
        let t = sign(r#"{"call_id": 1}"#, SECRET);
        let (h, _, s) = parts(&t);
        let forged = URL_SAFE_NO_PAD.encode(br#"{"call_id": 2}"#);
        assert_eq!(verify(h, &forged, s, &[SECRET]), Err(JwtError::Signature));
        let (h, p, s) = parts(&t);
        assert_eq!(verify(h, p, s, &[b"other"]), Err(JwtError::Signature));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(verify(&none, p, "", &[SECRET]), Err(JwtError::Algorithm("none".into())));
        let hs512 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#);
        assert!(matches!(verify(&hs512, p, s, &[SECRET]), Err(JwtError::Algorithm(_))));
        assert!(matches!(verify("!!", p, s, &[SECRET]), Err(JwtError::Malformed(_))));
        let truncated = &s[..s.len() - 4];
        assert_eq!(verify(h, p, truncated, &[SECRET]), Err(JwtError::Signature));
    }

    fn signed_with_header(header: &str, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.as_bytes());
        let p = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let t = signed_with_header(r#"{"alg":"HS256","typ":"JWT","crit":["b64"],"b64":false}"#, "{}");
        let (h, p, s) = parts(&t);
        assert_eq!(verify(h, p, s, &[SECRET]), Err(JwtError::Critical(r#"["b64"]"#.into())));
        let t = signed_with_header(r#"{"alg":"HS256","crit":[]}"#, "{}");
        let (h, p, s) = parts(&t);
        assert!(matches!(verify(h, p, s, &[SECRET]), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn exp_and_nbf_are_honoured_with_leeway() {
        use crate::codec::jsonb::testing::jsonb;
        use crate::codec::jsonb::{datum_body, Container};
        let check = |claims: &str, now: i64| {
            let d = jsonb(claims);
            time_claims_error(Container::root(datum_body(&d).unwrap()).unwrap(), now)
        };
        let now = 1_700_000_000;
        assert_eq!(check(r#"{"call_id": 1}"#, now), None);
        assert_eq!(check(&format!(r#"{{"exp": {}}}"#, now + 10), now), None);
        assert_eq!(check(&format!(r#"{{"exp": {}}}"#, now - 30), now), None, "within the leeway");
        assert_eq!(
            check(&format!(r#"{{"exp": {}}}"#, now - 3600), now),
            Some(JwtError::Expired { exp: now - 3600, now })
        );
        assert_eq!(
            check(&format!(r#"{{"exp": {}.5}}"#, now - 3600), now),
            Some(JwtError::Expired { exp: now - 3600, now })
        );
        assert_eq!(check(&format!(r#"{{"nbf": {}}}"#, now + 30), now), None, "within the leeway");
        assert_eq!(
            check(&format!(r#"{{"nbf": {}}}"#, now + 86400), now),
            Some(JwtError::NotYetValid { nbf: now + 86400, now })
        );
        assert!(matches!(check(r#"{"exp": "tomorrow"}"#, now), Some(JwtError::Malformed(_))));
    }

    #[test]
    fn concealed_secrets_are_revealed_by_the_same_call_and_differ_by_source() {
        let secret = b"a secret of more than thirty-two bytes, to cross a block";
        let stored = conceal("acme", secret);
        assert_ne!(&stored[..], &secret[..]);
        assert!(!stored.windows(6).any(|w| w == b"secret"));
        assert_eq!(conceal("acme", &stored), secret.to_vec());
        assert_ne!(conceal("globex", secret), stored);
    }

    #[test]
    fn json_and_jwt_are_told_apart() {
        assert!(matches!(classify(r#"{"a": 1}"#), Body::Json(_)));
        assert!(matches!(classify("  [1,2] "), Body::Json(_)));
        assert!(matches!(classify("a.b.c"), Body::Jwt { .. }));
        assert!(matches!(classify("a.b."), Body::Jwt { .. }));
        assert!(matches!(classify("a.b"), Body::Json(_)));
        assert!(matches!(classify("1.5"), Body::Json(_)));
        assert!(matches!(classify(""), Body::Json(_)));
    }

    #[test]
    fn every_byte_of_a_part_is_checked() {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let long: String = alphabet.repeat(10) + "==";
        assert!(is_base64url(&long));
        assert!(!is_base64url(""));
        // one byte outside the alphabet anywhere (first, inside a later chunk of 64, last)
        for at in [0, 1, 63, 64, 65, 200, long.len() - 1] {
            for bad in ["+", "/", " ", "{", "\"", "\u{e9}"] {
                let mut s = long.clone();
                s.replace_range(at..at + 1, bad);
                assert!(!is_base64url(&s), "{bad:?} at {at}");
                assert!(matches!(classify(&format!("{long}.{s}.{long}")), Body::Json(_)));
            }
        }
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-_=".contains(&b);
            if let Ok(s) = std::str::from_utf8(&[b]) {
                assert_eq!(is_base64url(&s.repeat(100)), expected, "byte {b}");
            }
        }
    }

    #[test]
    fn decimals_have_one_canonical_spelling() {
        for (a, b) in [
            ("17", "17"),
            ("017", "17"),
            ("17.50", "17.5"),
            ("17.0", "17"),
            ("-0.0", "0"),
            (".5", "0.5"),
            ("-3.10", "-3.1"),
        ] {
            assert_eq!(canonical_decimal(a).as_deref(), Some(b), "{a}");
        }
        for bad in ["", ".", "1e5", "abc", "1.2.3", "--1"] {
            assert_eq!(canonical_decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn dedupe_keys_normalize_numbers() {
        use crate::codec::jsonb::testing::jsonb;
        use crate::codec::jsonb::{datum_body, Container};
        let key = |t: &str| {
            let d = jsonb(t);
            dedupe_key(Container::root(datum_body(&d).unwrap()).unwrap(), None)
        };
        assert_eq!(
            key(r#"{"call_id": 42, "state": "hangup", "event_timestamp": 17}"#).as_deref(),
            Some("42/hangup/17")
        );
        assert_eq!(
            key(r#"{"call_id": "42", "state": "hangup", "event_timestamp": "17"}"#).as_deref(),
            Some("42/hangup/17")
        );
        assert_eq!(key(r#"{"call_id": 42, "state": "hangup"}"#), None);
        assert_eq!(
            key(r#"{"call_id": 42.0, "state": "hangup", "event_timestamp": 17.250}"#).as_deref(),
            Some("42/hangup/17.25")
        );
        assert_eq!(
            key(r#"{"call_id": 42, "state": "hangup", "event_timestamp": "0017.25"}"#).as_deref(),
            Some("42/hangup/17.25")
        );
        assert_eq!(key(r#"{"call_id": 42.5, "state": "hangup", "event_timestamp": 1}"#), None);
        assert_eq!(key(r#"[1]"#), None);
        // The call id reads back from every shape of key, hashed and with a source too.
        let long = format!(r#"{{"call_id": -7, "state": "{}", "event_timestamp": 1}}"#, "s".repeat(500));
        for k in [key(r#"{"call_id": "42", "state": "a/b", "event_timestamp": 1}"#), key(&long)] {
            let k = k.unwrap();
            assert_eq!(key_call_id(&k), Some(if k.starts_with('-') { -7 } else { 42 }), "{k}");
        }
        assert_eq!(key_call_id("no slash"), None);
    }

    #[test]
    fn dedupe_keys_are_bounded_and_name_the_source() {
        use crate::codec::jsonb::testing::jsonb;
        use crate::codec::jsonb::{datum_body, Container};
        let key = |t: &str, source: Option<&str>| {
            let d = jsonb(t);
            dedupe_key(Container::root(datum_body(&d).unwrap()).unwrap(), source)
        };
        let normal = r#"{"call_id": 42, "state": "hangup", "event_timestamp": 17}"#;
        assert_eq!(key(normal, Some("acme")).as_deref(), Some("42/hangup/17@acme"));
        assert_ne!(key(normal, Some("acme")), key(normal, Some("other")));
        assert_ne!(key(normal, Some("acme")), key(normal, None));
        // 0.2.0 copied state and timestamp whole: a 12,800-character state made the insert fail (54000).
        let long_state = format!(r#"{{"call_id": 42, "state": "{}", "event_timestamp": 17}}"#, "s".repeat(12_800));
        let k = key(&long_state, Some("acme")).unwrap();
        assert!(k.starts_with("42/#") && k.len() <= MAX_DEDUPE_KEY_BYTES, "{k}");
        assert_eq!(key(&long_state, Some("acme")), Some(k.clone()), "the same delivery, the same key");
        assert_ne!(key(&long_state, None), Some(k));
        // A 9,001-digit timestamp, or one jsonb keeps in two bytes: no key at all.
        let long_ts = format!(r#"{{"call_id": 42, "state": "hangup", "event_timestamp": {}}}"#, "9".repeat(9001));
        assert_eq!(key(&long_ts, None), None);
        assert_eq!(key(r#"{"call_id": 42, "state": "hangup", "event_timestamp": 1e131071}"#, None), None);
        assert_eq!(
            key(&long_ts.replace("\"event_timestamp\": 9", "\"event_timestamp\": \"9").replace("}", "\"}"), None),
            None
        );
    }
}
