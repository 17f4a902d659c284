//! One mirrored value, its key and its metadata in a single allocation: the mirror's table is a
//! set of these. A table slot is then one 16-byte pointer, and a read touches the slot and one
//! contiguous block (key compare, revision, value), with no separate key, `Bytes` control block
//! or value allocation: at a million 100-byte values, about half the memory of a
//! `(key, Bytes, metadata)` slot in a table sized by power-of-two growth.
//!
//! Layout: the key's length (one byte below 255; else 255 and a `u16`), `u64` revision, `i64`
//! created, `i64` expires (little-endian), the key, then the value to the end. The one-byte length
//! matters: a 100-byte value with an 11-byte key then takes 136 bytes, which glibc serves from its
//! 144-byte size class; with a `u16` it took the 160-byte one.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::protocol::types::EntryRef;
use crate::protocol::Operation;

/// Offsets after the key's length.
const REVISION: usize = 0;
const CREATED: usize = 8;
const EXPIRES: usize = 16;
const FIELDS: usize = 24;
/// A first byte saying that a `u16` length follows.
const LONG_KEY: u8 = 255;

pub struct Slot(Box<[u8]>);

impl Slot {
    /// `expires`: Unix nanoseconds; 0 never. Keys are NATS subjects, far below 64 KiB; a longer
    /// one is cut to fit (the writes path refuses such keys long before).
    pub fn new(key: &str, value: &[u8], revision: u64, created: i64, expires: i64) -> Slot {
        let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        let prefix = if key.len() < LONG_KEY as usize { 1 } else { 3 };
        // Exactly: shrinking a larger allocation into the box would keep its size class.
        let mut bytes = Vec::with_capacity(prefix + FIELDS + key.len() + value.len());
        if prefix == 1 {
            bytes.push(key.len() as u8);
        } else {
            bytes.push(LONG_KEY);
            bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        }
        bytes.extend_from_slice(&revision.to_le_bytes());
        bytes.extend_from_slice(&created.to_le_bytes());
        bytes.extend_from_slice(&expires.to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Slot(bytes.into_boxed_slice())
    }

    /// Where the fixed fields start, and the key's length.
    fn prefix(&self) -> (usize, usize) {
        match self.0[0] {
            LONG_KEY => (3, u16::from_le_bytes([self.0[1], self.0[2]]) as usize),
            short => (1, short as usize),
        }
    }

    fn field<const N: usize>(&self, at: usize) -> [u8; N] {
        let at = self.prefix().0 + at;
        let mut field = [0; N];
        field.copy_from_slice(&self.0[at..at + N]);
        field
    }

    /// Where the key starts and ends.
    fn key_range(&self) -> (usize, usize) {
        let (fields, len) = self.prefix();
        (fields + FIELDS, fields + FIELDS + len)
    }

    pub fn key_bytes(&self) -> &[u8] {
        let (start, end) = self.key_range();
        &self.0[start..end]
    }

    /// The key. Slots are made from `&str` keys, so this never comes out empty for a real key.
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).unwrap_or_default()
    }

    pub fn value(&self) -> &[u8] {
        &self.0[self.key_range().1..]
    }

    pub fn revision(&self) -> u64 {
        u64::from_le_bytes(self.field(REVISION))
    }

    pub fn created(&self) -> i64 {
        i64::from_le_bytes(self.field(CREATED))
    }

    /// When the value expires, in Unix nanoseconds; 0: never.
    pub fn expires(&self) -> i64 {
        i64::from_le_bytes(self.field(EXPIRES))
    }

    /// Bytes of key and value, as the mirror counts them.
    pub fn size(&self) -> usize {
        self.0.len() - self.key_range().0
    }

    /// The value as an entry, borrowed; `key` is the key it was looked up by (the same bytes).
    pub fn entry_ref<'a>(&'a self, key: &'a str) -> EntryRef<'a> {
        EntryRef {
            key,
            value: self.value(),
            revision: self.revision(),
            created: self.created(),
            operation: Operation::Put,
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key())
            .field("revision", &self.revision())
            .field("value_len", &self.value().len())
            .finish()
    }
}

/// A slot is its key, to the table: hashed and compared as the key's bytes, so it is looked up
/// by `key.as_bytes()`.
impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_bytes().hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}

impl Eq for Slot {}

impl Borrow<[u8]> for Slot {
    fn borrow(&self) -> &[u8] {
        self.key_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_slot_holds_its_key_value_and_metadata() {
        let slot = Slot::new(
            "orders.1",
            b"\x00\xffvalue",
            42,
            -7,
            1_800_000_000_000_000_000,
        );
        assert_eq!(slot.key(), "orders.1");
        assert_eq!(slot.value(), b"\x00\xffvalue");
        assert_eq!(
            (slot.revision(), slot.created(), slot.expires()),
            (42, -7, 1_800_000_000_000_000_000)
        );
        assert_eq!(slot.size(), 8 + 7);
        let empty = Slot::new("k", b"", 1, 0, 0);
        assert_eq!((empty.key(), empty.value()), ("k", &b""[..]));
        for len in [254, 255, 256, 4000] {
            let key = "k".repeat(len);
            let slot = Slot::new(&key, b"v", 9, 8, 7);
            assert_eq!((slot.key(), slot.value()), (key.as_str(), &b"v"[..]));
            assert_eq!((slot.revision(), slot.created(), slot.expires()), (9, 8, 7));
            assert_eq!(slot.size(), len + 1);
        }
    }

    #[test]
    fn a_set_of_slots_is_looked_up_by_key_bytes() {
        let mut set = HashSet::new();
        set.insert(Slot::new("a", b"1", 1, 0, 0));
        set.insert(Slot::new("b", b"2", 2, 0, 0));
        assert!(!set.insert(Slot::new("a", b"other", 3, 0, 0)));
        assert_eq!(set.get(&b"a"[..]).map(Slot::revision), Some(1));
        assert!(!set.contains(&b"c"[..]));
    }
}
