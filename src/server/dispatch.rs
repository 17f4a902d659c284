//! Executes one parsed request against the cache and encodes its response.
//!
//! Requests that can be answered from memory at once are answered inline by the connection's
//! reader, so pipelined reads cost no task spawn; requests that wait (writes, `min_revision`,
//! strong reads) run in their own task so they never hold up the requests behind them.

use bytes::Bytes;

use crate::cache::{Bucket, Cache};
use crate::error::{ErrorCode, Result};
use crate::metrics::Metrics;
use crate::protocol::request::{self, Request};
use crate::protocol::response::{encode_error, encode_ok, encode_ok_entries, Body};
use crate::protocol::Entry;

/// How the connection must run a request.
pub enum Route {
    /// Answer now, inline.
    Immediate,
    /// Spawn a task; it may wait on NATS or the mirror.
    Waiting,
    /// Start or stop a watch.
    Watch,
}

pub fn route(request: &Request<'_>) -> Route {
    match request {
        Request::Get { read, .. } | Request::Mget { read, .. } if !Bucket::is_immediate(read) => {
            Route::Waiting
        }
        Request::Put { .. } | Request::Delete { .. } | Request::Purge { .. } => Route::Waiting,
        Request::Watch { .. } | Request::Unwatch { .. } => Route::Watch,
        _ => Route::Immediate,
    }
}

/// What the server shares with every connection.
pub struct Context {
    pub cache: std::sync::Arc<Cache>,
    pub metrics: std::sync::Arc<Metrics>,
}

impl Context {
    /// The `bucket` label for a request: its bucket when configured, else "" so that clients
    /// cannot create label values at will.
    pub fn bucket_label(&self, request: &Request<'_>) -> &str {
        match request.bucket() {
            Some(name) => self.cache.bucket(name).map_or("", Bucket::name),
            None => "",
        }
    }
}

/// Encodes the result; returns its error code, if it failed.
fn respond<T>(
    out: &mut Vec<u8>,
    id: u64,
    result: Result<T>,
    body: impl FnOnce(&T) -> Body<'_>,
) -> Option<ErrorCode> {
    match result {
        Ok(value) => {
            encode_ok(out, id, &body(&value));
            None
        }
        Err(err) => {
            encode_error(out, id, &err);
            Some(err.code)
        }
    }
}

fn count_lookups<'a>(
    metrics: &Metrics,
    bucket: &str,
    entries: impl Iterator<Item = &'a Option<crate::protocol::Entry>>,
) {
    let (mut hits, mut misses) = (0, 0);
    for entry in entries {
        if entry.is_some() {
            hits += 1;
        } else {
            misses += 1;
        }
    }
    metrics.lookups(bucket, hits, misses);
}

/// Answers a request routed `Immediate`; returns its error code, if it failed.
pub fn immediate(
    ctx: &Context,
    id: u64,
    request: &Request<'_>,
    out: &mut Vec<u8>,
) -> Option<ErrorCode> {
    let cache = &ctx.cache;
    match request {
        Request::Ping => {
            encode_ok(out, id, &Body::Empty);
            None
        }
        Request::Get { bucket, key, read } => {
            // The hot path: encoded straight from the mirror's entry into the output buffer.
            let result = cache.bucket(bucket).and_then(|b| {
                let fresh = b.check_cached_reads(&[key], read.allow_stale)?;
                Ok(b.mirror().read(key, |entry| {
                    encode_ok(out, id, &Body::Entry(entry, fresh));
                    entry.is_some()
                }))
            });
            match result {
                Ok(hit) => {
                    ctx.metrics.lookups(bucket, u64::from(hit), u64::from(!hit));
                    None
                }
                Err(err) => {
                    encode_error(out, id, &err);
                    Some(err.code)
                }
            }
        }
        Request::Mget { bucket, keys, read } => {
            // Like `get`: each entry encoded straight from the mirror, no owned copies.
            let checked = cache.bucket(bucket).and_then(|b| {
                b.check_cached_reads(keys, read.allow_stale)
                    .map(|fresh| (b, fresh))
            });
            match checked {
                Ok((b, fresh)) => {
                    let mut hits = 0;
                    b.mirror().with_table(|table| {
                        encode_ok_entries(out, id, keys.len(), fresh, |i, write| {
                            table.read(keys[i], |entry| {
                                hits += u64::from(entry.is_some());
                                write(entry)
                            })
                        })
                    });
                    ctx.metrics.lookups(bucket, hits, keys.len() as u64 - hits);
                    None
                }
                Err(err) => {
                    encode_error(out, id, &err);
                    Some(err.code)
                }
            }
        }
        Request::Keys {
            bucket,
            filter,
            allow_stale,
        } => {
            let result = cache
                .bucket(bucket)
                .and_then(|b| b.keys(*filter, *allow_stale));
            respond(out, id, result, |keys| Body::Keys(keys))
        }
        Request::Status { bucket } => {
            let result = match bucket {
                Some(name) => cache.bucket(name).map(|b| vec![b.status()]),
                None => Ok(cache.buckets().map(Bucket::status).collect()),
            };
            respond(out, id, result, |list| Body::Status(list))
        }
        // Routed elsewhere; answering them here would be a bug in `route`.
        Request::Put { .. }
        | Request::Delete { .. }
        | Request::Purge { .. }
        | Request::Watch { .. }
        | Request::Unwatch { .. } => {
            let error = crate::error::Error::new(
                ErrorCode::Internal,
                format!("op `{}` was routed to the inline path", request.op()),
            );
            encode_error(out, id, &error);
            Some(error.code)
        }
    }
}

/// Answers a request routed `Waiting`. Takes the whole frame so that the task owns what the
/// request borrows; the value of a put is handed to NATS as a slice of the frame, not a copy.
pub async fn waiting(ctx: &Context, frame: &Bytes, out: &mut Vec<u8>) -> Option<ErrorCode> {
    let cache = &ctx.cache;
    let (id, request) = match request::parse(frame) {
        Ok(parsed) => parsed,
        Err(err) => {
            encode_error(out, err.id, &err.error);
            return Some(err.error.code);
        }
    };
    match request {
        Request::Get { bucket, key, read } => {
            let result = match cache.bucket(bucket) {
                Ok(b) => b.get(key, read).await,
                Err(err) => Err(err),
            };
            if let Ok((entry, _)) = &result {
                count_lookups(&ctx.metrics, bucket, std::iter::once(entry));
            }
            respond(out, id, result, |(entry, fresh)| {
                Body::Entry(entry.as_ref().map(Entry::as_ref), *fresh)
            })
        }
        Request::Mget { bucket, keys, read } => {
            let result = match cache.bucket(bucket) {
                Ok(b) => b.mget(&keys, read).await,
                Err(err) => Err(err),
            };
            if let Ok((entries, _)) = &result {
                count_lookups(&ctx.metrics, bucket, entries.iter());
            }
            respond(out, id, result, |(entries, fresh)| {
                Body::Entries(entries, *fresh)
            })
        }
        Request::Put {
            bucket,
            key,
            value,
            write,
        } => {
            let result = match cache.bucket(bucket) {
                Ok(b) => b.put(key, share(frame, value), write).await,
                Err(err) => Err(err),
            };
            respond(out, id, result, |rev| Body::Revision(*rev))
        }
        Request::Delete { bucket, key, write } => {
            let result = match cache.bucket(bucket) {
                Ok(b) => b.delete(key, write).await,
                Err(err) => Err(err),
            };
            respond(out, id, result, |rev| Body::Revision(*rev))
        }
        Request::Purge { bucket, key, write } => {
            let result = match cache.bucket(bucket) {
                Ok(b) => b.purge(key, write).await,
                Err(err) => Err(err),
            };
            respond(out, id, result, |rev| Body::Revision(*rev))
        }
        other => immediate(ctx, id, &other, out),
    }
}

/// The part of `frame` that `part` points at, shared rather than copied; a copy if `part` is not
/// inside `frame` (it always is when it was decoded from it).
fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    let start = frame.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    if part.is_empty() || at < start || at + part.len() > start + frame.len() {
        Bytes::copy_from_slice(part)
    } else {
        frame.slice_ref(part)
    }
}
