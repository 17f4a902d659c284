//! The protocol v1 face (docs/PROTOCOL.md): a frame becomes a [`Command`], and what the command
//! answers becomes a response frame. Nothing here knows what an operation does.

use bytes::Bytes;

use crate::cache::{Bucket, Cache};
use crate::cmd::{append, Command, KeysEncoder, Reply};
use crate::error::Error;
use crate::protocol::request::{self, ParseError};
use crate::protocol::response::{encode_error, encode_ok, encode_ok_entries, Body};
use crate::protocol::types::EntryRef;
use crate::protocol::{BucketStatus, Freshness};

/// Parses a frame into its request id and command.
pub fn parse(frame: &Bytes) -> Result<(u64, Command), ParseError> {
    let (id, request) = request::parse(frame)?;
    Ok((id, Command::from_request(request, frame)))
}

/// The read path's fast lane: a plain `get` (no options) of a configured bucket, found without
/// building a [`Command`]: `(id, bucket, key)`. Anything else takes [`parse`].
pub fn plain_get<'f, 'c>(frame: &'f [u8], cache: &'c Cache) -> Option<(u64, &'c Bucket, &'f str)> {
    let (id, bucket, key) = request::plain_get(frame)?;
    Some((id, cache.bucket(bucket).ok()?, key))
}

/// Encodes a command's answers as response frames with the request's id.
pub struct V1Reply<'a> {
    pub out: &'a mut Vec<u8>,
    pub id: u64,
}

impl Reply for V1Reply<'_> {
    fn done(&mut self) {
        encode_ok(self.out, self.id, &Body::Empty);
    }

    fn entry(&mut self, entry: Option<EntryRef<'_>>, fresh: Freshness) {
        encode_ok(self.out, self.id, &Body::Entry(entry, fresh));
    }

    fn entries(
        &mut self,
        count: usize,
        fresh: Freshness,
        entry_at: impl FnMut(usize, &mut dyn FnMut(Option<EntryRef<'_>>)),
    ) {
        encode_ok_entries(self.out, self.id, count, fresh, entry_at);
    }

    fn revision(&mut self, revision: u64) {
        encode_ok(self.out, self.id, &Body::Revision(revision));
    }

    fn keys_encoder(&self) -> KeysEncoder {
        let id = self.id;
        Box::new(move |keys| {
            let mut out = Vec::new();
            encode_ok(&mut out, id, &Body::Keys(&keys));
            out
        })
    }

    fn encoded(&mut self, bytes: Vec<u8>) {
        append(self.out, bytes);
    }

    fn statuses(&mut self, buckets: &[BucketStatus]) {
        encode_ok(self.out, self.id, &Body::Status(buckets));
    }

    fn error(&mut self, error: &Error) {
        encode_error(self.out, self.id, error);
    }
}
