//! How the command layer's answers and errors read in RESP.

use super::encode::{Out, Version};
use crate::cmd::{append, KeysEncoder, Reply};
use crate::error::{Error, ErrorCode};
use crate::protocol::types::EntryRef;
use crate::protocol::{BucketStatus, Freshness};

/// Which shape a command's answers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Redis's own commands: a value is a bulk string (or null), a write is `+OK`.
    Redis,
    /// `NEARKV.*`: an entry is a map with its revision and the mirror's freshness, a write
    /// answers its revision.
    Nearkv,
}

pub struct RespReply<'o, 'b> {
    pub out: &'o mut Out<'b>,
    pub style: Style,
}

/// The error as a RESP error line: Redis's prefix where clients depend on one (`ERR` for a bad
/// request, `READONLY` for a read-only bucket), else the protocol v1 code in upper case, so a
/// client can branch on the first word as on the v1 `code`.
pub fn error(out: &mut Out<'_>, error: &Error) {
    let prefix = match error.code {
        ErrorCode::BadRequest | ErrorCode::UnknownOp => "ERR".to_string(),
        ErrorCode::Forbidden => "READONLY".to_string(),
        code => code.as_str().to_ascii_uppercase(),
    };
    let mut details = String::new();
    if let Some(current) = error.current_revision {
        details.push_str(&format!("current_revision={current} "));
    }
    if let Some(revision) = error.revision {
        details.push_str(&format!("revision={revision} "));
    }
    if let Some(sent) = error.sent {
        details.push_str(&format!("sent={sent} "));
    }
    out.error(&prefix, &format!("{details}{}", error.message));
}

fn entry_map(out: &mut Out<'_>, entry: EntryRef<'_>, fresh: Freshness) {
    out.map(6);
    out.bulk(b"value");
    out.bulk(entry.value);
    out.bulk(b"revision");
    out.int(entry.revision as i64);
    out.bulk(b"created");
    out.int(entry.created);
    out.bulk(b"operation");
    out.bulk(entry.operation.as_str().as_bytes());
    out.bulk(b"mirror_revision");
    out.int(fresh.revision as i64);
    out.bulk(b"age_ms");
    out.int(fresh.age_ms.min(i64::MAX as u64) as i64);
}

pub fn status_map(out: &mut Out<'_>, s: &BucketStatus) {
    out.map(12);
    out.bulk(b"bucket");
    out.bulk(s.bucket.as_bytes());
    out.bulk(b"synced");
    out.boolean(s.synced);
    out.bulk(b"connected");
    out.boolean(s.connected);
    out.bulk(b"keys");
    out.int(s.keys as i64);
    out.bulk(b"bytes");
    out.int(s.bytes as i64);
    out.bulk(b"revision");
    out.int(s.revision as i64);
    out.bulk(b"server_revision");
    out.int(s.server_revision as i64);
    out.bulk(b"lag");
    out.int(s.lag as i64);
    out.bulk(b"last_update");
    out.int(s.last_update);
    out.bulk(b"age_ms");
    match s.age_ms {
        Some(ms) => out.int(ms as i64),
        None => out.null(),
    }
    out.bulk(b"stale");
    out.boolean(s.stale);
    out.bulk(b"rebuilds");
    out.int(s.rebuilds as i64);
}

/// An array of keys as `GET` takes them: `bucket:key` for a `bucket` other than the selected one.
pub fn keys_reply(version: Version, bucket: Option<&str>, keys: &[String]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut out = Out {
        buf: &mut buf,
        version,
    };
    out.array(keys.len());
    for key in keys {
        write_key(&mut out, bucket, key);
    }
    buf
}

/// A key as `GET` takes it: `bucket:key` when it is not in the selected database.
pub fn write_key(out: &mut Out<'_>, bucket: Option<&str>, key: &str) {
    match bucket {
        Some(bucket) => out.bulk_of(&[bucket.as_bytes(), b":", key.as_bytes()]),
        None => out.bulk(key.as_bytes()),
    }
}

impl Reply for RespReply<'_, '_> {
    fn done(&mut self) {
        self.out.ok();
    }

    fn entry(&mut self, entry: Option<EntryRef<'_>>, fresh: Freshness) {
        match (entry, self.style) {
            (None, _) => self.out.null(),
            (Some(entry), Style::Redis) => self.out.bulk(entry.value),
            (Some(entry), Style::Nearkv) => entry_map(self.out, entry, fresh),
        }
    }

    fn entries(
        &mut self,
        count: usize,
        _fresh: Freshness,
        mut entry_at: impl FnMut(usize, &mut dyn FnMut(Option<EntryRef<'_>>)),
    ) {
        self.out.array(count);
        for i in 0..count {
            entry_at(i, &mut |entry| match entry {
                Some(entry) => self.out.bulk(entry.value),
                None => self.out.null(),
            });
        }
    }

    fn revision(&mut self, revision: u64) {
        match self.style {
            Style::Redis => self.out.ok(),
            Style::Nearkv => self.out.int(revision as i64),
        }
    }

    fn keys_encoder(&self) -> KeysEncoder {
        let version = self.out.version;
        Box::new(move |keys| keys_reply(version, None, &keys))
    }

    fn encoded(&mut self, bytes: Vec<u8>) {
        append(self.out.buf, bytes);
    }

    fn statuses(&mut self, buckets: &[BucketStatus]) {
        self.out.array(buckets.len());
        for status in buckets {
            status_map(self.out, status);
        }
    }

    fn error(&mut self, err: &Error) {
        error(self.out, err);
    }
}
