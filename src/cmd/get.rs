//! `get`: one key's entry. Answered now from the mirror unless it asks to wait for a revision
//! or for a strong read.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::{Bucket, Cache, Error};
use crate::protocol::ReadOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub bucket: Text,
    pub key: Text,
    pub read: ReadOptions,
}

impl Get {
    pub fn new(bucket: impl Into<Text>, key: impl Into<Text>, read: ReadOptions) -> Get {
        Get {
            bucket: bucket.into(),
            key: key.into(),
            read,
        }
    }

    pub fn is_immediate(&self) -> bool {
        Bucket::is_immediate(&self.read)
    }

    /// The hot path: the entry is encoded straight from the mirror into the reply.
    pub fn answer_now(&self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match cache.bucket(&self.bucket) {
            Ok(bucket) => Get::read_now(bucket, &self.key, self.read.allow_stale, reply),
            Err(err) => Outcome::failed(err, reply),
        }
    }

    /// A `get` from the mirror of a bucket the face has already found: what every face's
    /// cached `get` does.
    pub fn read_now(
        bucket: &Bucket,
        key: &str,
        allow_stale: bool,
        reply: &mut impl Reply,
    ) -> Outcome {
        let read = bucket.check_cached_reads(&[key], allow_stale).map(|fresh| {
            bucket.mirror().read(key, |entry| {
                reply.entry(entry, fresh);
                entry.is_some()
            })
        });
        match read {
            Ok(hit) => Outcome::lookups(u64::from(hit), u64::from(!hit)),
            Err(err) => Outcome::failed(err, reply),
        }
    }

    /// Waits until the mirror can answer (a revision, a strong read); the bucket to read then.
    pub async fn wait<'c>(&self, cache: &'c Cache) -> Result<&'c Bucket, Error> {
        let bucket = cache.bucket(&self.bucket)?;
        bucket.wait_to_read(&[&self.key], self.read).await?;
        Ok(bucket)
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match self.wait(cache).await {
            Ok(bucket) => Get::read_now(bucket, &self.key, self.read.allow_stale, reply),
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
