//! NATS KV key and key-filter rules, checked here because async-nats lets some bad keys through
//! (`a..b`) and the server then fails with a message that does not name the key.

use crate::error::{Error, ErrorCode, Result};

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'=' | b'.')
}

/// A key is one or more `.`-separated tokens of `[-/_=a-zA-Z0-9]`.
pub fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.bytes().all(is_key_char)
        && key.split('.').all(|token| !token.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidKey,
            format!(
                "invalid key {key:?}: a key is one or more `.`-separated tokens of letters, digits and `-/_=`, \
                 without a leading, trailing or doubled `.`"
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
            ErrorCode::InvalidKey,
            format!(
                "invalid key filter {filter:?}: use key tokens, `*` for one token and a final `>` for the rest, \
                 e.g. `orders.>` or `orders.*.status`"
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
            assert_eq!(err.code, ErrorCode::InvalidKey, "{bad:?}");
        }
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
