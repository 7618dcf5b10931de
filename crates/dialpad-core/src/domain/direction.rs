//! Call direction normalization: Dialpad and older integrations spell it several ways; the
//! calls table holds only `inbound`, `outbound` or NULL.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Case and surrounding whitespace are ignored. Anything that is not a known spelling
/// (the empty string included) is `None`; the caller decides how loudly to say so.
pub fn normalize(raw: &str) -> Option<Direction> {
    let t = raw.trim();
    const INBOUND: [&str; 3] = ["inbound", "incoming", "in"];
    const OUTBOUND: [&str; 3] = ["outbound", "outgoing", "out"];
    if INBOUND.iter().any(|s| t.eq_ignore_ascii_case(s)) {
        Some(Direction::Inbound)
    } else if OUTBOUND.iter().any(|s| t.eq_ignore_ascii_case(s)) {
        Some(Direction::Outbound)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_spellings() {
        for s in ["inbound", "incoming", "in", "INBOUND", " Incoming\t", "In"] {
            assert_eq!(normalize(s), Some(Direction::Inbound), "{s}");
        }
        for s in ["outbound", "outgoing", "out", "OUTGOING", "  out  "] {
            assert_eq!(normalize(s), Some(Direction::Outbound), "{s}");
        }
        for s in ["", " ", "xyz", "inn", "internal", "in bound", "outboundx"] {
            assert_eq!(normalize(s), None, "{s}");
        }
    }
}
