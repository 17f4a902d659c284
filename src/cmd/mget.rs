//! `mget`: several keys' entries, all read at one moment of the mirror.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::{mget_too_large, Bucket, Cache, Error, MAX_MGET_BYTES};
use crate::protocol::ReadOptions;

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
        let may_exceed = bucket
            .mirror()
            .values_may_exceed(keys.len(), MAX_MGET_BYTES);
        let answered = bucket.mirror().with_table(|table| {
            let bytes = if may_exceed {
                table.value_bytes(keys)
            } else {
                0
            };
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

    /// Waits until the mirror can answer (a revision, a strong read); the bucket to read then.
    pub async fn wait<'c>(&self, cache: &'c Cache) -> Result<&'c Bucket, Error> {
        let bucket = cache.bucket(&self.bucket)?;
        bucket.wait_to_read(&self.keys, self.read).await?;
        Ok(bucket)
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match self.wait(cache).await {
            Ok(bucket) => Mget::read_now(bucket, &self.keys, self.read.allow_stale, reply),
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
