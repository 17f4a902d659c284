//! One mirrored value, its key and its metadata in a single allocation, behind a thin pointer:
//! the mirror's table is a set of these. A table slot is then one 8-byte pointer, and a read
//! touches the slot and one contiguous block (key compare, revision, value), with no separate key,
//! `Bytes` control block or value allocation.
//!
//! Layout (little-endian): a `u32` header, the length of the rest with a flag in its top bit
//! saying whether an expiry is stored; the key's length (one byte below 255; else 255 and a
//! `u16`); `u64` revision; `i64` created; `i64` expires, only if flagged; the key; the value to
//! the end. Every byte counts at a million keys, because glibc serves blocks in 16-byte size
//! classes: a 100-byte value with an 11-byte key and no expiry takes 132 bytes, the 144-byte
//! class, the same as a `Box<[u8]>` without the header took; a stored expiry of 0 (or a `u16` key
//! length) would have taken the 160-byte one. A table of thin pointers is half the size of one of
//! `Box<[u8]>`s (16 bytes each): about 16 MiB less at a million keys.

use std::alloc::{self, Layout};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;

use crate::protocol::types::EntryRef;
use crate::protocol::Operation;

/// The header's size, and its flag saying that an expiry follows the creation time.
const HEADER: usize = std::mem::size_of::<u32>();
const HAS_EXPIRY: u32 = 1 << 31;
/// Offsets after the key's length.
const REVISION: usize = 0;
const CREATED: usize = 8;
const EXPIRES: usize = 16;
/// A first byte saying that a `u16` length follows.
const LONG_KEY: u8 = 255;
const _: () = assert!(usize::BITS >= 64, "slot sizes assume a 64-bit target");

/// Owns one block: its header, then as many bytes as the header says.
pub struct Slot(NonNull<u8>);

// SAFETY: a slot owns its block outright and never writes it after making it, like a `Box<[u8]>`.
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: allocated in `Slot::new` with this very layout, and dropped once.
        unsafe { alloc::dealloc(self.0.as_ptr(), Self::layout(self.bytes().len())) }
    }
}

impl Slot {
    /// `expires`: Unix nanoseconds; 0 never. Keys are NATS subjects, far below 64 KiB; a longer
    /// one is cut to fit (the writes path refuses such keys long before), and so is a value past
    /// 1 GiB (NATS refuses those first: its largest payload is 64 MiB).
    pub fn new(key: &str, value: &[u8], revision: u64, created: i64, expires: i64) -> Slot {
        let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        let prefix: &[u8] = if key.len() < LONG_KEY as usize {
            &[key.len() as u8]
        } else {
            let [low, high] = (key.len() as u16).to_le_bytes();
            &[LONG_KEY, low, high]
        };
        let expiry: &[u8] = if expires == 0 {
            &[]
        } else {
            &expires.to_le_bytes()
        };
        let fixed = prefix.len() + 16 + expiry.len() + key.len();
        let value = &value[..value.len().min(Self::MAX_LEN - fixed)];
        let len = fixed + value.len();
        let flag = if expires == 0 { 0 } else { HAS_EXPIRY };
        let layout = Self::layout(len);
        // SAFETY: the layout is never zero-sized (HEADER > 0); on success the block has room for
        // exactly the `HEADER + len` bytes written here, before the slot is ever read.
        unsafe {
            let Some(block) = NonNull::new(alloc::alloc(layout)) else {
                alloc::handle_alloc_error(layout)
            };
            let mut at = block.as_ptr();
            for part in [
                &(len as u32 | flag).to_le_bytes()[..],
                prefix,
                &revision.to_le_bytes(),
                &created.to_le_bytes(),
                expiry,
                key,
                value,
            ] {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
            debug_assert_eq!(at, block.as_ptr().add(HEADER + len));
            Slot(block)
        }
    }

    /// The most bytes a block holds after its header.
    const MAX_LEN: usize = (HAS_EXPIRY - 1) as usize;

    fn layout(len: usize) -> Layout {
        // SAFETY: an alignment of 1 is a power of two, and `len` is at most `MAX_LEN`, so the
        // size stays far below `isize::MAX` on the 64-bit targets this builds for.
        unsafe { Layout::from_size_align_unchecked(HEADER + len, 1) }
    }

    fn header(&self) -> u32 {
        // SAFETY: every block starts with its header, initialised in `Slot::new`.
        u32::from_le_bytes(unsafe { self.0.as_ptr().cast::<[u8; HEADER]>().read_unaligned() })
    }

    /// The bytes after the header.
    fn bytes(&self) -> &[u8] {
        let len = (self.header() & !HAS_EXPIRY) as usize;
        // SAFETY: the header is followed by that many bytes, initialised in `Slot::new`, which
        // live and stay unchanged as long as the slot.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(HEADER), len) }
    }

    /// The bytes after the header, where its fields start and where its key starts and ends:
    /// read once for all the accessors a read needs.
    fn parts(&self) -> Parts<'_> {
        let bytes = self.bytes();
        let (fields, key_len) = match bytes[0] {
            LONG_KEY => (3, u16::from_le_bytes([bytes[1], bytes[2]]) as usize),
            short => (1, short as usize),
        };
        let expiry = self.header() & HAS_EXPIRY != 0;
        let key = fields + 16 + if expiry { 8 } else { 0 };
        Parts {
            bytes,
            fields,
            expiry,
            key,
            value: key + key_len,
        }
    }

    pub fn key_bytes(&self) -> &[u8] {
        let parts = self.parts();
        &parts.bytes[parts.key..parts.value]
    }

    /// The key. Slots are made from `&str` keys, so this never comes out empty for a real key.
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).unwrap_or_default()
    }

    pub fn value(&self) -> &[u8] {
        self.parts().value()
    }

    pub fn revision(&self) -> u64 {
        self.parts().revision()
    }

    pub fn created(&self) -> i64 {
        self.parts().created()
    }

    /// When the value expires, in Unix nanoseconds; 0: never.
    pub fn expires(&self) -> i64 {
        let parts = self.parts();
        if !parts.expiry {
            return 0;
        }
        i64::from_le_bytes(parts.field(EXPIRES))
    }

    /// Bytes of key and value, as the mirror counts them.
    pub fn size(&self) -> usize {
        let parts = self.parts();
        parts.bytes.len() - parts.key
    }

    /// The value as an entry, borrowed; `key` is the key it was looked up by (the same bytes).
    pub fn entry_ref<'a>(&'a self, key: &'a str) -> EntryRef<'a> {
        let parts = self.parts();
        EntryRef {
            key,
            value: parts.value(),
            revision: parts.revision(),
            created: parts.created(),
            operation: Operation::Put,
        }
    }
}

/// A slot's bytes after the header, with the offsets of its fields, key and value.
struct Parts<'a> {
    bytes: &'a [u8],
    fields: usize,
    expiry: bool,
    key: usize,
    value: usize,
}

impl<'a> Parts<'a> {
    fn field<const N: usize>(&self, at: usize) -> [u8; N] {
        let at = self.fields + at;
        let mut field = [0; N];
        field.copy_from_slice(&self.bytes[at..at + N]);
        field
    }

    fn value(&self) -> &'a [u8] {
        &self.bytes[self.value..]
    }

    fn revision(&self) -> u64 {
        u64::from_le_bytes(self.field(REVISION))
    }

    fn created(&self) -> i64 {
        i64::from_le_bytes(self.field(CREATED))
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
        for len in [1, 254, 255, 256, 4000] {
            let key = "k".repeat(len);
            for expires in [0, 7, -1, i64::MAX] {
                let slot = Slot::new(&key, b"v", 9, 8, expires);
                assert_eq!((slot.key(), slot.value()), (key.as_str(), &b"v"[..]));
                assert_eq!(
                    (slot.revision(), slot.created(), slot.expires()),
                    (9, 8, expires)
                );
                assert_eq!(slot.size(), len + 1);
            }
        }
    }

    #[test]
    fn a_slot_without_expiry_stores_none() {
        // An 11-byte key and a 100-byte value in 132 bytes: glibc's 144-byte size class.
        let plain = Slot::new("key00000001", &[7; 100], 1, 2, 0);
        assert_eq!(HEADER + plain.bytes().len(), 132);
        let expiring = Slot::new("key00000001", &[7; 100], 1, 2, 3);
        assert_eq!(expiring.bytes().len(), plain.bytes().len() + 8);
        assert_eq!(
            (plain.value(), expiring.value()),
            (&[7; 100][..], &[7; 100][..])
        );
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
