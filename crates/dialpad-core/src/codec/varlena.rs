//! The varlena length header, read and written without PostgreSQL's macros so that the pure
//! jsonb and numeric code can be unit-tested outside a backend. Both byte orders are handled.

pub const VARHDRSZ: usize = 4;

/// A 4-byte header for a datum of `len` bytes (header included), like SET_VARSIZE.
pub fn header_4b(len: usize) -> [u8; 4] {
    #[cfg(target_endian = "little")]
    {
        ((len as u32) << 2).to_le_bytes()
    }
    #[cfg(target_endian = "big")]
    {
        ((len as u32) & 0x3FFF_FFFF).to_be_bytes()
    }
}

/// (header size, total size) of an in-line, uncompressed datum; None for anything else.
pub fn header(bytes: &[u8]) -> Option<(usize, usize)> {
    let b0 = *bytes.first()?;
    #[cfg(target_endian = "little")]
    let (is_1b, len_1b) = (b0 & 0x01 == 0x01, (b0 >> 1) as usize);
    #[cfg(target_endian = "big")]
    let (is_1b, len_1b) = (b0 & 0x80 == 0x80, (b0 & 0x7F) as usize);
    if is_1b {
        // 0x01 alone (length 0) marks a TOAST pointer, never found inside jsonb.
        return if len_1b >= 1 { Some((1, len_1b)) } else { None };
    }
    let raw = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    #[cfg(target_endian = "little")]
    let (compressed, len) = (raw & 0x03 == 0x02, (raw >> 2) as usize);
    #[cfg(target_endian = "big")]
    let (compressed, len) = (raw & 0x4000_0000 != 0, (raw & 0x3FFF_FFFF) as usize);
    if compressed || len < 4 {
        return None;
    }
    Some((4, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_byte_headers_round_trip() {
        let h = header_4b(123);
        let mut buf = h.to_vec();
        buf.resize(123, 0);
        assert_eq!(header(&buf), Some((4, 123)));
    }

    #[test]
    fn short_headers_are_read() {
        #[cfg(target_endian = "little")]
        let buf = [(5u8 << 1) | 1, 0, 0, 0, 0];
        #[cfg(target_endian = "big")]
        let buf = [0x80 | 5u8, 0, 0, 0, 0];
        assert_eq!(header(&buf), Some((1, 5)));
        assert_eq!(header(&[]), None);
    }
}
