//! RESP requests: a command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), as
//! every Redis client sends, or an inline line (`GET k\r\n`), as redis-cli and telnet send.
//!
//! As for protocol v1, parsing is split in two: [`check`] walks the buffer and says whether a
//! whole command is there (or why it never will be: a limit passed, a malformed header), then
//! [`take`] hands out its arguments as slices of the buffer, without copying them.
//!
//! No RESP codec crate is used: the ones published (redis-protocol, resp, ...) parse into owned
//! values or frames of every RESP type, where a server needs only arrays of bulk strings,
//! zero-copy, with its own limits checked before anything is buffered.

use bytes::{Buf, Bytes, BytesMut};

/// An inline command's longest line, as Redis's own limit.
pub const MAX_INLINE: usize = 64 * 1024;
/// Most arguments one command may carry.
pub const MAX_ARGS: usize = 1024 * 1024;

/// Why the input can never become a command. The connection answers it and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    ArrayLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: too big inline request (more than {MAX_INLINE} bytes)")]
    InlineTooLong,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error(
        "Protocol error: a command of more than {max} bytes (socket.max_frame_size); \
         split it into smaller ones"
    )]
    TooLarge { max: usize },
    #[error("Protocol error: expected CRLF after a bulk string")]
    MissingCrlf,
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Not yet a whole command; read more.
    Incomplete,
    /// A whole command in the first `len` bytes.
    Complete { len: usize },
    /// An empty inline line (Redis ignores it) of `len` bytes.
    Empty { len: usize },
}

/// Finds the end of a `\r\n`-terminated line starting at `from`: the index of `\r`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let at = buf.get(from..)?.iter().position(|&b| b == b'\n')? + from;
    Some(if at > from && buf[at - 1] == b'\r' {
        at - 1
    } else {
        at
    })
}

fn after_line(buf: &[u8], end: usize) -> usize {
    if buf.get(end) == Some(&b'\r') {
        end + 2
    } else {
        end + 1
    }
}

fn number(digits: &[u8]) -> Option<i64> {
    // What `str::parse::<i64>` accepts, without its UTF-8 check: every command has a few.
    let (negative, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// Says whether `buf` starts with a whole command. `max_bytes` bounds a command's size.
pub fn check(buf: &[u8], max_bytes: usize) -> Result<Check, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(Check::Incomplete);
    };
    if first != b'*' {
        return match line_end(buf, 0) {
            Some(end) if end > MAX_INLINE => Err(ProtocolError::InlineTooLong),
            Some(end) => {
                let len = after_line(buf, end);
                if buf[..end].iter().all(u8::is_ascii_whitespace) {
                    Ok(Check::Empty { len })
                } else {
                    split_inline(&buf[..end])?;
                    Ok(Check::Complete { len })
                }
            }
            None if buf.len() > MAX_INLINE => Err(ProtocolError::InlineTooLong),
            None => Ok(Check::Incomplete),
        };
    }
    let Some(end) = line_end(buf, 1) else {
        return if buf.len() > 32 {
            Err(ProtocolError::ArrayLength)
        } else {
            Ok(Check::Incomplete)
        };
    };
    let count = number(&buf[1..end]).ok_or(ProtocolError::ArrayLength)?;
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError::ArrayLength);
    }
    let mut at = after_line(buf, end);
    if count <= 0 {
        return Ok(Check::Empty { len: at });
    }
    for _ in 0..count {
        let Some(&marker) = buf.get(at) else {
            return Ok(Check::Incomplete);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker as char));
        }
        let Some(end) = line_end(buf, at + 1) else {
            return if buf.len() - at > 32 {
                Err(ProtocolError::BulkLength)
            } else {
                Ok(Check::Incomplete)
            };
        };
        let len = number(&buf[at + 1..end]).ok_or(ProtocolError::BulkLength)?;
        if len < 0 {
            return Err(ProtocolError::BulkLength);
        }
        let body = after_line(buf, end);
        // Checked against the announced length, so an oversized command is refused before its
        // bytes are buffered.
        if body + len as usize > max_bytes {
            return Err(ProtocolError::TooLarge { max: max_bytes });
        }
        let next = body + len as usize + 2;
        if buf.len() < next {
            return Ok(Check::Incomplete);
        }
        if &buf[next - 2..next] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        at = next;
    }
    Ok(Check::Complete { len: at })
}

/// Puts the arguments of the whole command that [`check`] found in the first `len` bytes of
/// `buf` into `args` (emptied first; reused, so a command costs no allocation), and consumes them.
pub fn take(buf: &mut BytesMut, len: usize, args: &mut Vec<Bytes>) {
    args.clear();
    let frame = buf.split_to(len).freeze();
    if frame.first() != Some(&b'*') {
        let end = line_end(&frame, 0).unwrap_or(frame.len());
        args.extend(
            split_inline(&frame[..end])
                .unwrap_or_default()
                .into_iter()
                .map(Bytes::from),
        );
        return;
    }
    let mut at = 0;
    let Some(end) = line_end(&frame, 0) else {
        return;
    };
    let count = number(&frame[1..end]).unwrap_or(0).max(0) as usize;
    at = after_line(&frame, end).max(at);
    args.reserve(count);
    for _ in 0..count {
        let Some(end) = line_end(&frame, at + 1) else {
            break;
        };
        let len = number(&frame[at + 1..end]).unwrap_or(0).max(0) as usize;
        let body = after_line(&frame, end);
        args.push(frame.slice(body..body + len));
        at = body + len + 2;
    }
}

/// Splits an inline command as Redis does: words separated by spaces, "double quotes" with
/// backslash escapes (\n, \r, \t, \", \\, \xHH) and 'single quotes'.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let word = match line[i] {
            quote @ (b'"' | b'\'') => {
                let (word, after) = quoted(line, i + 1, quote)?;
                i = after;
                word
            }
            _ => {
                let start = i;
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    i += 1;
                }
                line[start..i].to_vec()
            }
        };
        words.push(word);
    }
    Ok(words)
}

/// The word in quotes that starts at `i`, after its opening `quote`, and where the line goes on
/// after the closing one. In "double quotes" backslash escapes apply; in 'single quotes' only \'.
fn quoted(line: &[u8], mut i: usize, quote: u8) -> Result<(Vec<u8>, usize), ProtocolError> {
    let mut word = Vec::new();
    loop {
        let Some(&c) = line.get(i) else {
            return Err(ProtocolError::UnbalancedQuotes);
        };
        i += 1;
        if c == quote {
            closed_quote_ends_word(line, i)?;
            return Ok((word, i));
        }
        match (c, quote, line.get(i)) {
            (b'\\', b'"', None) => return Err(ProtocolError::UnbalancedQuotes),
            (b'\\', b'"', Some(&escape)) => {
                i += 1;
                word.push(unescape(escape, line, &mut i));
            }
            (b'\\', _, Some(b'\'')) => {
                word.push(b'\'');
                i += 1;
            }
            _ => word.push(c),
        }
    }
}

/// The byte a backslash escape in double quotes stands for; `\xHH` also takes the two digits
/// after `i`.
fn unescape(escape: u8, line: &[u8], i: &mut usize) -> u8 {
    match escape {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 8,
        b'a' => 7,
        b'x' if line.len() >= *i + 2
            && line[*i].is_ascii_hexdigit()
            && line[*i + 1].is_ascii_hexdigit() =>
        {
            let hex = std::str::from_utf8(&line[*i..*i + 2]).unwrap_or("0");
            *i += 2;
            u8::from_str_radix(hex, 16).unwrap_or(0)
        }
        other => other,
    }
}

/// A closing quote must end its word, as in Redis (`"a"b` is an error).
fn closed_quote_ends_word(line: &[u8], after: usize) -> Result<(), ProtocolError> {
    match line.get(after) {
        Some(c) if !c.is_ascii_whitespace() => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(()),
    }
}

/// Drops `len` bytes of the buffer (an empty command).
pub fn skip(buf: &mut BytesMut, len: usize) {
    buf.advance(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_str_parse_reads_them() {
        for text in [
            "0",
            "7",
            "-1",
            "+42",
            "0012",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "-9223372036854775809",
            "",
            "-",
            "+",
            "1a",
            " 1",
            "1 ",
            "--1",
            "+-1",
            "١",
        ] {
            assert_eq!(
                number(text.as_bytes()),
                text.parse::<i64>().ok(),
                "{text:?}"
            );
        }
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut commands = Vec::new();
        loop {
            match check(&buf, 1 << 20)? {
                Check::Incomplete => return Ok(commands),
                Check::Empty { len } => skip(&mut buf, len),
                Check::Complete { len } => {
                    let mut args = Vec::new();
                    take(&mut buf, len, &mut args);
                    commands.push(args);
                }
            }
        }
    }

    #[test]
    fn arrays_of_bulk_strings_and_inline_lines() {
        let commands =
            parse_all(b"*2\r\n$3\r\nGET\r\n$5\r\nb:k 1\r\nSET k \"a b\\x41\"\r\n\r\nPING\n")
                .unwrap();
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[0], vec![Bytes::from("GET"), Bytes::from("b:k 1")]);
        assert_eq!(
            commands[1],
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("a bA")]
        );
        assert_eq!(commands[2], vec![Bytes::from("PING")]);
    }

    #[test]
    fn a_partial_command_waits_for_more() {
        let whole = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for cut in 0..whole.len() {
            assert_eq!(
                check(&whole[..cut], 1 << 20),
                Ok(Check::Incomplete),
                "cut at {cut}"
            );
        }
        assert_eq!(
            check(whole, 1 << 20),
            Ok(Check::Complete { len: whole.len() })
        );
    }

    #[test]
    fn limits_and_malformed_headers_are_refused() {
        assert_eq!(check(b"*x\r\n", 1 << 20), Err(ProtocolError::ArrayLength));
        assert_eq!(
            check(b"*1\r\n:1\r\n", 1 << 20),
            Err(ProtocolError::ExpectedBulk(':'))
        );
        assert_eq!(
            check(b"*1\r\n$-3\r\n", 1 << 20),
            Err(ProtocolError::BulkLength)
        );
        // Refused from the header alone, before the value is sent.
        assert_eq!(
            check(b"*2\r\n$3\r\nSET\r\n$2000\r\n", 1024),
            Err(ProtocolError::TooLarge { max: 1024 })
        );
        assert_eq!(
            check(&vec![b'a'; MAX_INLINE + 10], 1 << 20),
            Err(ProtocolError::InlineTooLong)
        );
        assert_eq!(
            check(b"GET \"k\r\n", 1 << 20),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(
            check(b"*1\r\n$1\r\nkXX", 1 << 20),
            Err(ProtocolError::MissingCrlf)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn encode(args: &[Vec<u8>]) -> Vec<u8> {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
            out
        }

        proptest! {
            /// Any bytes: the parser answers, never panics, and never hands out more than it has.
            #[test]
            fn random_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_all(&input);
            }

            /// A valid command, cut anywhere, waits for the rest; whole, it gives its arguments
            /// back; with one byte changed, it still never panics.
            #[test]
            fn commands_survive_cuts_and_corruption(
                args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let wire = encode(&args);
                let at = cut.index(wire.len());
                prop_assert_eq!(check(&wire[..at], 1 << 20), Ok(Check::Incomplete));
                let parsed = parse_all(&wire).unwrap();
                let expected: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.clone())).collect();
                prop_assert_eq!(parsed, vec![expected]);
                let mut corrupted = wire.clone();
                let i = flip.index(corrupted.len());
                corrupted[i] = byte;
                let _ = parse_all(&corrupted);
            }
        }
    }

    #[test]
    fn inline_words_in_quotes_as_redis_splits_them() {
        let words = |line: &[u8]| {
            split_inline(line).map(|w| {
                w.iter()
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            words(b"SET k 'it\\'s' \"a\\nb\\t\\x41\\x4g\\\\\\\"\"").unwrap(),
            ["SET", "k", "it's", "a\nb\tAx4g\\\""]
        );
        assert_eq!(
            words(b"  ECHO 'a\\b'  ''  \"\"").unwrap(),
            ["ECHO", "a\\b", "", ""]
        );
        for unbalanced in [
            &b"GET \"k"[..],
            b"GET 'k",
            b"GET \"k\\",
            b"GET \"a\"b",
            b"GET 'a'b",
        ] {
            assert!(
                matches!(
                    split_inline(unbalanced),
                    Err(ProtocolError::UnbalancedQuotes)
                ),
                "{:?}",
                String::from_utf8_lossy(unbalanced)
            );
        }
    }
}
