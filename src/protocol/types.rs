//! Values that travel in both directions: what an entry is, what a bucket's status is.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What produced an entry. A mirror only holds `Put` entries; watches also see the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Put,
    Delete,
    Purge,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Delete => "delete",
            Operation::Purge => "purge",
        }
    }
}

/// One key's value at one revision, as NATS KV stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// The bucket stream's sequence number of the message that holds this value.
    pub revision: u64,
    /// When NATS stored the message, in nanoseconds since the Unix epoch.
    pub created: i64,
    pub operation: Operation,
}

/// An entry borrowed from where it is stored, so a response can be encoded straight from the
/// mirror without building an owned [`Entry`].
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub revision: u64,
    pub created: i64,
    pub operation: Operation,
}

impl Entry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            key: &self.key,
            value: &self.value,
            revision: self.revision,
            created: self.created,
            operation: self.operation,
        }
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Answer from the mirror at once.
    #[default]
    Cached,
    /// Reflect every write NATS acknowledged before the request arrived.
    Strong,
}

impl Consistency {
    /// `Strong` when `strong`, else `Cached`: for flags such as the CLI's `--strong`.
    pub fn strong_if(strong: bool) -> Self {
        if strong {
            Consistency::Strong
        } else {
            Consistency::Cached
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Cached => "cached",
            Consistency::Strong => "strong",
        }
    }
}

/// Freshness requirements of a `get` or `mget`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Wait until the mirror has applied at least this revision.
    pub min_revision: Option<u64>,
    pub consistency: Consistency,
    /// How long to wait for `min_revision` or a strong read; the server's default when `None`.
    pub timeout_ms: Option<u64>,
    /// Answer even when the mirror is older than the bucket's `max_staleness`.
    pub allow_stale: bool,
}

/// How fresh the mirror was when a read was answered; sent with every `get` and `mget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The mirror had applied this revision (and so every update up to it) when the read began.
    pub revision: u64,
    /// Milliseconds since NATS last confirmed the mirror current.
    pub age_ms: u64,
}

/// A mirror's state, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketStatus {
    pub bucket: String,
    /// The initial snapshot has been applied; reads are served.
    pub synced: bool,
    /// The sidecar's NATS connection is up.
    pub connected: bool,
    /// Live keys in the mirror.
    pub keys: u64,
    /// Bytes of keys and values in the mirror.
    pub bytes: u64,
    /// The highest revision the mirror has applied.
    pub revision: u64,
    /// The bucket stream's latest revision, as last learned from NATS (polled every few seconds).
    pub server_revision: u64,
    /// `server_revision - revision`, 0 when the mirror is current.
    pub lag: u64,
    /// When the last update the mirror applied was stored by NATS, in Unix nanoseconds; 0 if none.
    pub last_update: i64,
    /// Milliseconds since NATS last confirmed the mirror current; `None` before the first sync.
    pub age_ms: Option<u64>,
    /// `age_ms` exceeds the bucket's `max_staleness`: cached reads fail with `stale`.
    pub stale: bool,
    /// Times the mirror was reloaded from a fresh snapshot after its initial sync.
    pub rebuilds: u64,
}

/// Conditions and deadline of a `put`, `delete` or `purge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// 0: the key must be absent or deleted; N: the key's latest revision must be N.
    pub expect_revision: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// `put` only: the value expires this long after it is stored (at least 1000 ms).
    pub ttl_ms: Option<u64>,
}

impl WriteOptions {
    /// A write with this condition and the server's default deadline.
    pub fn expecting(expect_revision: Option<u64>) -> Self {
        WriteOptions {
            expect_revision,
            ..WriteOptions::default()
        }
    }
}
