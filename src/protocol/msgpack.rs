//! The few MessagePack encodings the protocol writes, appended to a `Vec<u8>`, and a reader for
//! the few forms the hot paths read.
//!
//! Written out rather than going through serde so that a response is encoded straight from the
//! mirror's entry into the connection's output buffer, with no intermediate struct, and so the
//! bytes on the wire are exactly the ones docs/PROTOCOL.md shows (smallest encoding of each value).

pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    #[inline]
    pub fn map(&mut self, len: u32) -> &mut Self {
        match len {
            0..=15 => self.0.push(0x80 | len as u8),
            16..=0xffff => {
                self.0.push(0xde);
                self.0.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.0.push(0xdf);
                self.0.extend_from_slice(&len.to_be_bytes());
            }
        }
        self
    }

    #[inline]
    pub fn array(&mut self, len: u32) -> &mut Self {
        match len {
            0..=15 => self.0.push(0x90 | len as u8),
            16..=0xffff => {
                self.0.push(0xdc);
                self.0.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.0.push(0xdd);
                self.0.extend_from_slice(&len.to_be_bytes());
            }
        }
        self
    }

    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        let len = s.len();
        match len {
            0..=31 => self.0.push(0xa0 | len as u8),
            32..=0xff => self.0.extend_from_slice(&[0xd9, len as u8]),
            0x100..=0xffff => {
                self.0.push(0xda);
                self.0.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.0.push(0xdb);
                self.0.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    #[inline]
    pub fn bin(&mut self, b: &[u8]) -> &mut Self {
        let len = b.len();
        match len {
            0..=0xff => self.0.extend_from_slice(&[0xc4, len as u8]),
            0x100..=0xffff => {
                self.0.push(0xc5);
                self.0.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.0.push(0xc6);
                self.0.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
        self.0.extend_from_slice(b);
        self
    }

    #[inline]
    pub fn uint(&mut self, v: u64) -> &mut Self {
        match v {
            0..=0x7f => self.0.push(v as u8),
            0x80..=0xff => self.0.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                self.0.push(0xcd);
                self.0.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(0xce);
                self.0.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                self.0.push(0xcf);
                self.0.extend_from_slice(&v.to_be_bytes());
            }
        }
        self
    }

    /// A signed integer: non-negative values use the unsigned encodings, as MessagePack prefers.
    #[inline]
    pub fn int(&mut self, v: i64) -> &mut Self {
        if v >= 0 {
            return self.uint(v as u64);
        }
        match v {
            -32..=-1 => self.0.push(v as i8 as u8),
            -128..=-33 => self.0.extend_from_slice(&[0xd0, v as i8 as u8]),
            -32768..=-129 => {
                self.0.push(0xd1);
                self.0.extend_from_slice(&(v as i16).to_be_bytes());
            }
            -2147483648..=-32769 => {
                self.0.push(0xd2);
                self.0.extend_from_slice(&(v as i32).to_be_bytes());
            }
            _ => {
                self.0.push(0xd3);
                self.0.extend_from_slice(&v.to_be_bytes());
            }
        }
        self
    }

    #[inline]
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.push(if v { 0xc3 } else { 0xc2 });
        self
    }

    #[inline]
    pub fn nil(&mut self) -> &mut Self {
        self.0.push(0xc0);
        self
    }
}

/// The MessagePack family of a value, as far as request checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bin,
    Nil,
    Int,
    Bool,
    Array,
    Map,
    Other,
}

/// Reads the few MessagePack forms the hot paths need (a plain `get`, a response's `id` and
/// `ok`), borrowing from the frame; `None` for anything else, so callers fall back to serde.
#[derive(Clone)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
        )
    }

    pub fn map_len(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x80..=0x8f => Some(u64::from(m & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }

    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// A `str`'s bytes, not checked for UTF-8: enough to compare it with a known field name.
    pub fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => u64::from(m & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(len).ok()?)
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The MessagePack family of the next value, without reading it.
    pub fn peek_kind(&self) -> Option<Kind> {
        Some(match *self.bytes.first()? {
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc4..=0xc6 => Kind::Bin,
            0xc0 => Kind::Nil,
            0x00..=0x7f | 0xcc..=0xcf | 0xd0..=0xd3 | 0xe0..=0xff => Kind::Int,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0xc2 | 0xc3 => Kind::Bool,
            _ => Kind::Other,
        })
    }

    /// The length of the array that comes next.
    pub fn array_len(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x90..=0x9f => Some(u64::from(m & 0x0f)),
            0xdc => self.be(2),
            0xdd => self.be(4),
            _ => None,
        }
    }

    /// Reads past one whole value of any type; `None` when the bytes end first or are not
    /// MessagePack. Nesting is bounded by the frame's length, since every level takes a byte.
    pub fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let marker = self.byte()?;
            let (skip, children): (u64, u64) = match marker {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
                0x90..=0x9f => (0, u64::from(marker & 0x0f)),
                0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
                0xc4 | 0xd9 => (self.be(1)?, 0),
                0xc5 | 0xda => (self.be(2)?, 0),
                0xc6 | 0xdb => (self.be(4)?, 0),
                0xc7 => (self.be(1)? + 1, 0),
                0xc8 => (self.be(2)? + 1, 0),
                0xc9 => (self.be(4)? + 1, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                0xdc => (0, self.be(2)?),
                0xdd => (0, self.be(4)?),
                0xde => (0, 2 * self.be(2)?),
                0xdf => (0, 2 * self.be(4)?),
                0xc1 => return None,
            };
            self.take(usize::try_from(skip).ok()?)?;
            pending = pending.checked_add(children)?;
            // Each child takes at least one byte: more than that cannot be in the frame.
            if pending > self.bytes.len() as u64 {
                return None;
            }
        }
        Some(())
    }

    pub fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x00..=0x7f => Some(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every encoding must decode to the same value through an independent decoder.
    #[test]
    fn encodings_round_trip_through_rmp_serde() {
        let ints = [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            4294967295,
            4294967296,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            -2147483648,
            -2147483649,
            i64::MIN,
        ];
        for v in ints {
            let mut buf = Vec::new();
            Writer(&mut buf).int(v);
            assert_eq!(rmp_serde::from_slice::<i64>(&buf).unwrap(), v, "{v}");
        }
        for len in [0usize, 31, 32, 255, 256, 65535, 65536] {
            let s = "x".repeat(len);
            let mut buf = Vec::new();
            Writer(&mut buf).str(&s);
            assert_eq!(rmp_serde::from_slice::<String>(&buf).unwrap(), s);
            let mut buf = Vec::new();
            Writer(&mut buf).bin(s.as_bytes());
            let back: serde_bytes::ByteBuf = rmp_serde::from_slice(&buf).unwrap();
            assert_eq!(back.as_ref(), s.as_bytes());
        }
        for len in [0u32, 15, 16, 65535, 65536] {
            let mut buf = Vec::new();
            let mut w = Writer(&mut buf);
            w.array(len);
            for _ in 0..len {
                w.nil();
            }
            assert_eq!(
                rmp_serde::from_slice::<Vec<()>>(&buf).unwrap().len(),
                len as usize
            );
        }
        let mut buf = Vec::new();
        Writer(&mut buf)
            .map(2)
            .str("a")
            .bool(true)
            .str("b")
            .bool(false);
        let map: std::collections::BTreeMap<String, bool> = rmp_serde::from_slice(&buf).unwrap();
        assert_eq!(map.len(), 2);
        assert!(map["a"] && !map["b"]);
    }
}
