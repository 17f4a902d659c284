//! `mget`: several keys' entries, all read at one moment of the mirror.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::{mget_too_large, Bucket, Cache, MAX_MGET_BYTES};
use crate::protocol::{Entry, ReadOptions};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mget {
    pub bucket: Text,
    pub keys: Vec<Text>,
    pub read: ReadOptions,
}

impl Mget {
    pub fn is_immediate(&self) -> bool {
        Bucket::is_immediate(&self.read)
    }

    fn keys(&self) -> Vec<&str> {
        self.keys.iter().map(Text::as_str).collect()
    }

    /// Like `get`'s: each entry encoded straight from one table of the mirror, no owned copies.
    pub fn answer_now(&self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match cache.bucket(&self.bucket) {
            Ok(bucket) => Mget::read_now(bucket, &self.keys, self.read.allow_stale, reply),
            Err(err) => Outcome::failed(err, reply),
        }
    }

    /// An `mget` from the mirror of a bucket the face has already found.
    pub fn read_now<K: AsRef<str>>(
        bucket: &Bucket,
        keys: &[K],
        allow_stale: bool,
        reply: &mut impl Reply,
    ) -> Outcome {
        let fresh = match bucket.check_cached_reads(keys, allow_stale) {
            Ok(fresh) => fresh,
            Err(err) => return Outcome::failed(err, reply),
        };
        let mut hits = 0;
        let answered = bucket.mirror().with_table(|table| {
            let bytes = table.value_bytes(keys);
            if bytes > MAX_MGET_BYTES {
                return Err(mget_too_large(bytes, keys.len()));
            }
            reply.entries(keys.len(), fresh, |i, write| {
                table.read(keys[i].as_ref(), |entry| {
                    hits += u64::from(entry.is_some());
                    write(entry)
                })
            });
            Ok(())
        });
        if let Err(err) = answered {
            return Outcome::failed(err, reply);
        }
        Outcome::lookups(hits, keys.len() as u64 - hits)
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let keys = self.keys();
        let read = match cache.bucket(&self.bucket) {
            Ok(bucket) => bucket.mget(&keys, self.read).await,
            Err(err) => Err(err),
        };
        match read {
            Ok((entries, fresh)) => {
                reply.entries(entries.len(), fresh, |i, write| {
                    write(entries[i].as_ref().map(Entry::as_ref))
                });
                let hits = entries.iter().filter(|e| e.is_some()).count() as u64;
                Outcome::lookups(hits, entries.len() as u64 - hits)
            }
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
