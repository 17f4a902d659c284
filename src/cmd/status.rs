//! `status`: each mirrored bucket's state (or one bucket's), as `nearkv status` shows it.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::{Bucket, Cache};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `None`: every bucket, in configuration order.
    pub bucket: Option<Text>,
}

impl Status {
    pub fn new(bucket: Option<&str>) -> Status {
        Status {
            bucket: bucket.map(Text::from),
        }
    }

    pub fn answer(&self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let listed = match &self.bucket {
            Some(name) => cache.bucket(name).map(|bucket| vec![bucket.status()]),
            None => Ok(cache.buckets().map(Bucket::status).collect()),
        };
        match listed {
            Ok(list) => {
                reply.statuses(&list);
                Outcome::OK
            }
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
