//! NATS KV key and key-filter rules, checked here because async-nats lets some bad keys through
//! (`a..b`) and the server then fails with a message that does not name the key.

use crate::cache::error::{Error, ErrorKind, Result};

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'=' | b'.')
}

/// nats-server's default `max_control_line`: the longest protocol line (`HPUB <subject> <reply>
/// <sizes>`) it accepts before closing the connection. The server does not announce it in INFO.
pub const NATS_MAX_CONTROL_LINE: usize = 4096;

/// Room kept in a control line for the verb, the reply subject (a JetStream inbox) and the sizes.
const CONTROL_LINE_RESERVE: usize = 256;

/// The longest key whose subject, after a prefix of `prefix_len` bytes (`$KV.<bucket>.`), fits
/// in NATS's control line.
pub fn max_key_length(prefix_len: usize) -> usize {
    NATS_MAX_CONTROL_LINE.saturating_sub(CONTROL_LINE_RESERVE + prefix_len)
}

/// How much of a client's key, filter or name an error message repeats.
const QUOTE_MAX: usize = 64;

/// `input` for an error message: whole when short, else its first 64 bytes and its length, so
/// that a hostile client cannot make every error as large as its input.
pub fn quote(input: &str) -> std::borrow::Cow<'_, str> {
    if input.len() <= QUOTE_MAX {
        return std::borrow::Cow::Borrowed(input);
    }
    let mut end = QUOTE_MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &input[..end], input.len()))
}

/// A key is one or more `.`-separated tokens of `[-/_=a-zA-Z0-9]`.
pub fn validate_key(key: &str) -> Result<()> {
    // One pass: every byte a key character, and no empty token (no leading, trailing or
    // doubled `.`). Every read checks its key, so this is on the hot path.
    let mut after_dot = true;
    let mut ok = !key.is_empty();
    for &c in key.as_bytes() {
        if c == b'.' {
            ok &= !after_dot;
            after_dot = true;
        } else {
            ok &= is_key_char(c);
            after_dot = false;
        }
    }
    if ok && !after_dot {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "invalid key {:?}: a key is one or more `.`-separated tokens of letters, digits and `-/_=`, \
                 without a leading, trailing or doubled `.`",
                quote(key)
            ),
        ))
    }
}

/// A filter is a key whose tokens may also be `*` (one token) or, as the last token, `>` (the rest).
pub fn validate_filter(filter: &str) -> Result<()> {
    let tokens: Vec<&str> = filter.split('.').collect();
    let ok = tokens.iter().enumerate().all(|(i, token)| {
        *token == "*"
            || (*token == ">" && i + 1 == tokens.len())
            || (!token.is_empty() && token.bytes().all(is_key_char))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "invalid key filter {:?}: use key tokens, `*` for one token and a final `>` for the rest, \
                 e.g. `orders.>` or `orders.*.status`",
                quote(filter)
            ),
        ))
    }
}

/// Whether `key` is matched by `filter`, by NATS subject wildcard rules.
pub fn filter_matches(filter: &str, key: &str) -> bool {
    if filter == ">" {
        return true;
    }
    let mut keys = key.split('.');
    for token in filter.split('.') {
        match (token, keys.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(k)) if t == k => {}
            _ => return false,
        }
    }
    keys.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_nats_kv_rules() {
        for good in ["a", "order-1", "orders.eu.1", "a/b=c_d", "A9"] {
            assert!(validate_key(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ü", "a\0"] {
            let err = validate_key(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidKey, "{bad:?}");
        }
    }

    #[test]
    fn long_input_is_quoted_short() {
        assert_eq!(quote("order-1"), "order-1");
        let long = "L".repeat(5000);
        let quoted = quote(&long);
        assert!(quoted.starts_with(&"L".repeat(64)) && quoted.ends_with("(5000 bytes)"));
        assert!(quoted.len() < 100);
        let err = validate_key(&format!("{long} ")).unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message);
        // Never cut inside a character.
        assert!(quote(&"é".repeat(40)).ends_with("(80 bytes)"));
    }

    #[test]
    fn filters_allow_wildcards_in_their_places() {
        for good in [">", "*", "orders.>", "orders.*.status", "a"] {
            assert!(validate_filter(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "orders.>.x", "a..b", "a b", ".>"] {
            assert!(validate_filter(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn filters_match_like_nats_subjects() {
        assert!(filter_matches(">", "a.b"));
        assert!(filter_matches("orders.>", "orders.1"));
        assert!(filter_matches("orders.>", "orders.1.x"));
        assert!(!filter_matches("orders.>", "orders"));
        assert!(filter_matches("orders.*", "orders.1"));
        assert!(!filter_matches("orders.*", "orders.1.x"));
        assert!(filter_matches("a.*.c", "a.b.c"));
        assert!(!filter_matches("a.*.c", "a.b.d"));
        assert!(filter_matches("order-1", "order-1"));
        assert!(!filter_matches("order-1", "order-10"));
    }
}
