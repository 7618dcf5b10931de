//! PostgreSQL's `numeric` varlena format, read and written in plain Rust.
//!
//! jsonb stores every JSON number as a complete `numeric` datum. We copy those bytes untouched
//! (so a 30-digit number stays exact) and only need to *make* numerics for our own markers
//! (`total_items`, `total_keys`) and to *read* them when the processor converts call ids and
//! epoch milliseconds. The layout mirrors `src/backend/utils/adt/numeric.c` (PG 13–18).

use crate::codec::varlena;

const NBASE: i64 = 10_000;
#[cfg(test)]
const DEC_DIGITS: usize = 4;

const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SPECIAL: u16 = 0xC000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_MASK: u16 = 0x1F80;
const NUMERIC_SHORT_DSCALE_SHIFT: u16 = 7;
const NUMERIC_SHORT_DSCALE_MAX: i32 = (NUMERIC_SHORT_DSCALE_MASK >> NUMERIC_SHORT_DSCALE_SHIFT) as i32;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_SHORT_WEIGHT_MAX: i32 = NUMERIC_SHORT_WEIGHT_MASK as i32;
const NUMERIC_SHORT_WEIGHT_MIN: i32 = -(NUMERIC_SHORT_WEIGHT_MASK as i32 + 1);
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;

/// A decoded numeric: `value = sign * sum(digits[i] * 10000^(weight - i))`, shown with
/// `dscale` decimal places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub weight: i32,
    pub dscale: i32,
    pub digits: Vec<i16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumericError {
    Malformed,
    Special,
    #[cfg_attr(not(test), allow(dead_code))]
    Syntax(String),
}

impl Decimal {
    pub fn from_u64(mut n: u64) -> Decimal {
        let mut digits = Vec::new();
        while n > 0 {
            digits.push((n % NBASE as u64) as i16);
            n /= NBASE as u64;
        }
        digits.reverse();
        let weight = digits.len() as i32 - 1;
        let mut d = Decimal { negative: false, weight, dscale: 0, digits };
        d.strip();
        d
    }

    #[cfg(test)]
    /// Parses JSON number syntax (`-?digits(.digits)?([eE][+-]?digits)?`) the way
    /// `numeric_in` does, so the result is byte-identical to what PostgreSQL stores.
    pub fn parse(s: &str) -> Result<Decimal, NumericError> {
        let err = || NumericError::Syntax(s.to_string());
        let bytes = s.trim().as_bytes();
        let mut i = 0;
        let mut negative = false;
        if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
            negative = bytes[i] == b'-';
            i += 1;
        }
        let mut dec: Vec<u8> = Vec::new();
        let mut dweight: i64 = -1; // decimal weight of first digit
        let mut dscale: i64 = 0;
        let mut have_dp = false;
        let mut any = false;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_digit() {
                dec.push(c - b'0');
                any = true;
                if have_dp {
                    dscale += 1;
                } else {
                    dweight += 1;
                }
            } else if c == b'.' && !have_dp {
                have_dp = true;
            } else {
                break;
            }
            i += 1;
        }
        if !any {
            return Err(err());
        }
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            let mut eneg = false;
            if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
                eneg = bytes[i] == b'-';
                i += 1;
            }
            let start = i;
            let mut exp: i64 = 0;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                exp = exp.saturating_mul(10).saturating_add((bytes[i] - b'0') as i64);
                i += 1;
            }
            if i == start || exp > 2_000_000 {
                return Err(err());
            }
            let exp = if eneg { -exp } else { exp };
            dweight += exp;
            dscale = (dscale - exp).max(0);
        }
        if i != bytes.len() {
            return Err(err());
        }
        // Group decimal digits into base-10000 digits aligned on the decimal point, as
        // set_var_from_str does: dec[k] has decimal exponent dweight - k, and the base-10000
        // digit of weight w covers exponents 4w+3 down to 4w.
        let weight = dweight.div_euclid(DEC_DIGITS as i64);
        let offset = (weight * DEC_DIGITS as i64 + DEC_DIGITS as i64 - 1 - dweight) as usize;
        let mut padded = vec![0u8; offset];
        padded.extend_from_slice(&dec);
        while !padded.len().is_multiple_of(DEC_DIGITS) {
            padded.push(0);
        }
        let digits: Vec<i16> =
            padded.chunks(DEC_DIGITS).map(|c| c.iter().fold(0i16, |acc, &d| acc * 10 + d as i16)).collect();
        let mut d = Decimal { negative, weight: weight as i32, dscale: dscale as i32, digits };
        d.strip();
        Ok(d)
    }

    /// Removes leading and trailing zero digits, as make_result does.
    fn strip(&mut self) {
        let lead = self.digits.iter().take_while(|&&d| d == 0).count();
        self.digits.drain(..lead);
        self.weight -= lead as i32;
        while self.digits.last() == Some(&0) {
            self.digits.pop();
        }
        if self.digits.is_empty() {
            self.weight = 0;
            self.negative = false;
        }
    }

    /// Encodes as a numeric datum with a 4-byte varlena header.
    pub fn to_datum_bytes(&self) -> Vec<u8> {
        let short = self.dscale <= NUMERIC_SHORT_DSCALE_MAX
            && self.weight <= NUMERIC_SHORT_WEIGHT_MAX
            && self.weight >= NUMERIC_SHORT_WEIGHT_MIN;
        let hdr = if short { 2 } else { 4 };
        let len = varlena::VARHDRSZ + hdr + 2 * self.digits.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&varlena::header_4b(len));
        if short {
            let mut h = NUMERIC_SHORT;
            if self.negative {
                h |= NUMERIC_SHORT_SIGN_MASK;
            }
            h |= ((self.dscale as u16) << NUMERIC_SHORT_DSCALE_SHIFT) & NUMERIC_SHORT_DSCALE_MASK;
            if self.weight < 0 {
                h |= NUMERIC_SHORT_WEIGHT_SIGN_MASK;
            }
            h |= (self.weight as u16) & NUMERIC_SHORT_WEIGHT_MASK;
            out.extend_from_slice(&h.to_ne_bytes());
        } else {
            let sign = if self.negative { NUMERIC_NEG } else { 0 };
            let h = sign | (self.dscale as u16 & NUMERIC_DSCALE_MASK);
            out.extend_from_slice(&h.to_ne_bytes());
            out.extend_from_slice(&(self.weight as i16).to_ne_bytes());
        }
        for d in &self.digits {
            out.extend_from_slice(&d.to_ne_bytes());
        }
        out
    }

    /// Decodes a numeric datum (either varlena header form).
    pub fn from_datum_bytes(bytes: &[u8]) -> Result<Decimal, NumericError> {
        let (hdr, total) = varlena::header(bytes).ok_or(NumericError::Malformed)?;
        let body = bytes.get(hdr..total).ok_or(NumericError::Malformed)?;
        if body.len() < 2 {
            return Err(NumericError::Malformed);
        }
        let h = u16::from_ne_bytes([body[0], body[1]]);
        let (negative, weight, dscale, rest) = match h & NUMERIC_SIGN_MASK {
            NUMERIC_SPECIAL => return Err(NumericError::Special),
            NUMERIC_SHORT => {
                let neg = h & NUMERIC_SHORT_SIGN_MASK != 0;
                let dscale = ((h & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT) as i32;
                let mut w = (h & NUMERIC_SHORT_WEIGHT_MASK) as i32;
                if h & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
                    w |= !(NUMERIC_SHORT_WEIGHT_MASK as i32);
                }
                (neg, w, dscale, &body[2..])
            }
            sign => {
                if body.len() < 4 {
                    return Err(NumericError::Malformed);
                }
                let w = i16::from_ne_bytes([body[2], body[3]]) as i32;
                (sign == NUMERIC_NEG, w, (h & NUMERIC_DSCALE_MASK) as i32, &body[4..])
            }
        };
        if rest.len() % 2 != 0 {
            return Err(NumericError::Malformed);
        }
        let digits = rest.chunks(2).map(|c| i16::from_ne_bytes([c[0], c[1]])).collect();
        Ok(Decimal { negative, weight, dscale, digits })
    }

    /// The exact value as an i64, if it is an integer that fits.
    pub fn to_i64(&self) -> Option<i64> {
        let mut acc: i64 = 0;
        for (i, &d) in self.digits.iter().enumerate() {
            if self.weight - (i as i32) < 0 {
                if d != 0 {
                    return None; // has a fractional part
                }
                continue;
            }
            acc = acc.checked_mul(NBASE)?.checked_add(d as i64)?;
        }
        let trailing = self.weight + 1 - self.digits.len() as i32;
        for _ in 0..trailing.max(0) {
            acc = acc.checked_mul(NBASE)?;
        }
        Some(if self.negative { -acc } else { acc })
    }

    /// The integer part (the fraction dropped, as `trunc`), if it fits an i64. Never prints
    /// the number: a jsonb numeric of two bytes (`1e131071`) has 131,072 digits.
    pub fn trunc_to_i64(&self) -> Option<i64> {
        let whole = Decimal {
            negative: self.negative,
            weight: self.weight,
            dscale: 0,
            digits: self.digits.iter().take((self.weight + 1).max(0) as usize).copied().collect(),
        };
        if self.weight < 0 {
            return Some(0);
        }
        whole.to_i64()
    }

    /// At most 3 more than the characters [`Display`](std::fmt::Display) prints, computed
    /// without printing.
    pub fn printed_len(&self) -> usize {
        let int = if self.weight < 0 { 1 } else { (self.weight as usize + 1) * 4 };
        let frac = if self.dscale > 0 { self.dscale as usize + 1 } else { 0 };
        int + frac + usize::from(self.negative)
    }

    /// The text, when it is at most `max` characters long (None otherwise): a bounded
    /// alternative to `to_string()` for numbers read from untrusted payloads.
    pub fn to_string_bounded(&self, max: usize) -> Option<String> {
        (self.printed_len() <= max).then(|| self.to_string())
    }

    /// The nearest f64 (±infinity beyond its range). Reads at most the first 12 base-10000
    /// digits (48 significant decimal digits, far more than an f64 holds), so its cost is
    /// bounded whatever the number's exponent or scale.
    pub fn to_f64(&self) -> f64 {
        const F64_WEIGHT_MAX: i32 = 78; // 10000^78 = 1e312 > f64::MAX
        const F64_WEIGHT_MIN: i32 = -83; // 10000^-83 = 1e-332 < the smallest subnormal
        let sign = if self.negative { -1.0 } else { 1.0 };
        if self.digits.iter().all(|&d| d == 0) {
            return 0.0 * sign;
        }
        if self.weight > F64_WEIGHT_MAX {
            return f64::INFINITY * sign;
        }
        if self.weight < F64_WEIGHT_MIN {
            return 0.0 * sign;
        }
        let digits: Vec<i16> = self.digits.iter().take(12).copied().collect();
        let kept_frac = ((digits.len() as i32 - self.weight - 1).max(0) * 4).min(self.dscale.max(0));
        let head = Decimal { negative: self.negative, weight: self.weight, dscale: kept_frac, digits };
        head.to_string().parse().unwrap_or(f64::NAN)
    }
}

impl std::fmt::Display for Decimal {
    /// Same text as `numeric_out`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        if self.negative {
            s.push('-');
        }
        let digit_at = |i: i32| -> i16 {
            if i < 0 || i as usize >= self.digits.len() {
                0
            } else {
                self.digits[i as usize]
            }
        };
        if self.weight < 0 {
            s.push('0');
        } else {
            for w in 0..=self.weight {
                let d = digit_at(w);
                if w == 0 {
                    s.push_str(&d.to_string());
                } else {
                    s.push_str(&format!("{d:04}"));
                }
            }
        }
        if self.dscale > 0 {
            s.push('.');
            let mut frac = String::new();
            let mut idx = self.weight + 1;
            while (frac.len() as i32) < self.dscale {
                frac.push_str(&format!("{:04}", digit_at(idx)));
                idx += 1;
            }
            frac.truncate(self.dscale as usize);
            s.push_str(&frac);
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_exponents_cost_nothing_to_read() {
        for text in ["1e131071", "-1e131071", "1e-16383", "123456789e100000"] {
            let d = Decimal::parse(
                &text
                    .replace("e131071", &"0".repeat(131071))
                    .replace("e100000", &"0".repeat(100000))
                    .replace("1e-16383", &format!("0.{}1", "0".repeat(16382))),
            )
            .unwrap();
            assert!(d.printed_len() >= 16_000, "{text}");
            assert_eq!(d.to_string_bounded(64), None);
            assert!(d.printed_len() >= d.to_string().len() && d.printed_len() <= d.to_string().len() + 3, "{text}");
            let f = d.to_f64();
            assert!(f.is_infinite() || f == 0.0, "{text}: {f}");
            assert!(d.trunc_to_i64().is_none() || d.weight < 0);
        }
        for text in ["0", "-0.5", "42", "1787158716092.25", "123456789012345678.5", "0.000123", "-99999.00001"] {
            let d = Decimal::parse(text).unwrap();
            assert!(d.printed_len() >= d.to_string().len() && d.printed_len() <= d.to_string().len() + 3, "{text}");
            assert_eq!(d.to_f64(), text.parse::<f64>().unwrap(), "{text}");
            assert_eq!(d.to_string_bounded(64).as_deref(), Some(d.to_string().as_str()));
        }
        assert_eq!(Decimal::parse("1787158716092.75").unwrap().trunc_to_i64(), Some(1787158716092));
        assert_eq!(Decimal::parse("-3.9").unwrap().trunc_to_i64(), Some(-3));
        assert_eq!(Decimal::parse("0.9").unwrap().trunc_to_i64(), Some(0));
    }

    fn roundtrip(s: &str) -> String {
        let d = Decimal::parse(s).unwrap();
        let bytes = d.to_datum_bytes();
        Decimal::from_datum_bytes(&bytes).unwrap().to_string()
    }

    #[test]
    fn integers_and_decimals_round_trip_like_numeric_out() {
        assert_eq!(roundtrip("0"), "0");
        assert_eq!(roundtrip("-0"), "0");
        assert_eq!(roundtrip("1"), "1");
        assert_eq!(roundtrip("10000"), "10000");
        assert_eq!(roundtrip("6612345678901234"), "6612345678901234");
        assert_eq!(roundtrip("123456789012345678901234567890"), "123456789012345678901234567890");
        assert_eq!(roundtrip("-42.50"), "-42.50");
        assert_eq!(roundtrip("11989.972"), "11989.972");
        assert_eq!(roundtrip("0.0001"), "0.0001");
        assert_eq!(roundtrip("0.00001234"), "0.00001234");
        assert_eq!(roundtrip("1e3"), "1000");
        assert_eq!(roundtrip("1.5E+1"), "15");
        assert_eq!(roundtrip("1.50e1"), "15.0");
        assert_eq!(roundtrip("25e-3"), "0.025");
    }

    #[test]
    fn to_i64_is_exact_or_none() {
        assert_eq!(Decimal::parse("6612345678901234").unwrap().to_i64(), Some(6612345678901234));
        assert_eq!(Decimal::parse("-7").unwrap().to_i64(), Some(-7));
        assert_eq!(Decimal::parse("1787158716092").unwrap().to_i64(), Some(1787158716092));
        assert_eq!(Decimal::parse("1e4").unwrap().to_i64(), Some(10000));
        assert_eq!(Decimal::parse("2.5").unwrap().to_i64(), None);
        assert_eq!(Decimal::parse("2.000").unwrap().to_i64(), Some(2));
        assert_eq!(Decimal::parse("123456789012345678901234567890").unwrap().to_i64(), None);
        assert_eq!(Decimal::from_u64(0).to_i64(), Some(0));
        assert_eq!(Decimal::from_u64(120000).to_string(), "120000");
    }

    #[test]
    fn bad_syntax_and_bad_bytes_are_errors() {
        assert!(Decimal::parse("").is_err());
        assert!(Decimal::parse("abc").is_err());
        assert!(Decimal::parse("1e").is_err());
        assert!(Decimal::from_datum_bytes(&[1, 2]).is_err());
        assert!(Decimal::from_datum_bytes(&[]).is_err());
    }
}
