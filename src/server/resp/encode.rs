//! RESP replies, in the version the connection speaks: RESP2 by default, RESP3 after `HELLO 3`.
//! RESP3's maps, nulls, doubles and pushes fall back to what RESP2 clients expect (flat arrays,
//! null bulk strings, bulk strings, arrays).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Resp2,
    Resp3,
}

/// Appends replies to a connection's output buffer.
pub struct Out<'a> {
    pub buf: &'a mut Vec<u8>,
    pub version: Version,
}

impl Out<'_> {
    fn header(&mut self, marker: u8, len: usize) {
        self.buf.push(marker);
        self.decimal(len as u64);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Writes `n` in decimal; `write!` costs more than the rest of a `GET`'s reply.
    fn decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[at..]);
    }

    pub fn simple(&mut self, text: &str) {
        self.buf.push(b'+');
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// An error reply: `prefix` is its first word (`ERR`, `WRONGTYPE`, `WRONG_REVISION`, ...).
    /// Line breaks in the message become spaces: an error reply is one line.
    pub fn error(&mut self, prefix: &str, message: &str) {
        self.buf.push(b'-');
        self.buf.extend_from_slice(prefix.as_bytes());
        self.buf.push(b' ');
        for &b in message.as_bytes() {
            self.buf
                .push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.buf.push(b':');
        if n < 0 {
            self.buf.push(b'-');
        }
        self.decimal(n.unsigned_abs());
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn bulk(&mut self, bytes: &[u8]) {
        self.header(b'$', bytes.len());
        self.buf.extend_from_slice(bytes);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// One bulk string made of `parts` in order, with no joined copy of them first.
    pub fn bulk_of(&mut self, parts: &[&[u8]]) {
        self.header(b'$', parts.iter().map(|part| part.len()).sum());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn null(&mut self) {
        match self.version {
            Version::Resp2 => self.buf.extend_from_slice(b"$-1\r\n"),
            Version::Resp3 => self.buf.extend_from_slice(b"_\r\n"),
        }
    }

    /// A null where RESP2 has a null array (`*-1`).
    pub fn null_array(&mut self) {
        match self.version {
            Version::Resp2 => self.buf.extend_from_slice(b"*-1\r\n"),
            Version::Resp3 => self.buf.extend_from_slice(b"_\r\n"),
        }
    }

    pub fn boolean(&mut self, value: bool) {
        match self.version {
            Version::Resp2 => self.int(i64::from(value)),
            Version::Resp3 => self
                .buf
                .extend_from_slice(if value { b"#t\r\n" } else { b"#f\r\n" }),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    /// A map of `len` pairs; in RESP2 a flat array of `2 * len` elements.
    pub fn map(&mut self, len: usize) {
        match self.version {
            Version::Resp2 => self.header(b'*', len * 2),
            Version::Resp3 => self.header(b'%', len),
        }
    }

    /// An out-of-band message (pub/sub); in RESP2 an array.
    pub fn push(&mut self, len: usize) {
        match self.version {
            Version::Resp2 => self.header(b'*', len),
            Version::Resp3 => self.header(b'>', len),
        }
    }

    /// A verbatim text (`INFO`, `CLIENT INFO`): a bulk string in both versions, which every
    /// client reads as text.
    pub fn text(&mut self, text: &str) {
        self.bulk(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_each_version() {
        let mut buf = Vec::new();
        let mut out = Out {
            buf: &mut buf,
            version: Version::Resp2,
        };
        out.map(1);
        out.bulk(b"revision");
        out.int(5);
        out.null();
        out.error("WRONG_REVISION", "current_revision=5\nretry");
        out.bulk_of(&[b"shop", b":", b"order-1"]);
        assert_eq!(
            buf,
            b"*2\r\n$8\r\nrevision\r\n:5\r\n$-1\r\n-WRONG_REVISION current_revision=5 retry\r\n$12\r\nshop:order-1\r\n"
        );
        let mut buf = Vec::new();
        let mut out = Out {
            buf: &mut buf,
            version: Version::Resp3,
        };
        out.map(1);
        out.push(0);
        out.null();
        out.boolean(true);
        assert_eq!(buf, b"%1\r\n>0\r\n_\r\n#t\r\n");
    }
}
