//! Responses and pushed watch messages: encoded by the server, decoded by the client.

use serde::Deserialize;

use super::frame;
use super::msgpack::{Cursor, Writer};
use super::types::{BucketStatus, Entry, EntryRef, Freshness};
use crate::error::{Error, ErrorCode};

/// The success payload of each op.
pub enum Body<'a> {
    /// `ping`, `watch`, `unwatch`.
    Empty,
    /// `get`.
    Entry(Option<EntryRef<'a>>, Freshness),
    /// `mget`.
    Entries(&'a [Option<Entry>], Freshness),
    /// `put`, `delete`, `purge`.
    Revision(u64),
    /// `keys`.
    Keys(&'a [String]),
    /// `status`.
    Status(&'a [BucketStatus]),
}

fn entry(w: &mut Writer<'_>, e: EntryRef<'_>) {
    w.map(5)
        .str("key")
        .str(e.key)
        .str("value")
        .bin(e.value)
        .str("revision")
        .uint(e.revision)
        .str("created")
        .int(e.created)
        .str("operation")
        .str(e.operation.as_str());
}

fn optional_entry(w: &mut Writer<'_>, e: Option<EntryRef<'_>>) {
    match e {
        Some(e) => entry(w, e),
        None => {
            w.nil();
        }
    }
}

fn freshness(w: &mut Writer<'_>, f: Freshness) {
    w.str("revision")
        .uint(f.revision)
        .str("age_ms")
        .uint(f.age_ms);
}

/// Appends an `mget` success response of `len` entries, asking `entry_at` for each one in
/// order, so the entries can be encoded from where they are stored rather than from copies.
pub fn encode_ok_entries(
    buf: &mut Vec<u8>,
    id: u64,
    len: usize,
    fresh: Freshness,
    mut entry_at: impl FnMut(usize, &mut dyn FnMut(Option<EntryRef<'_>>)),
) {
    let start = frame::begin(buf);
    let mut w = Writer(buf);
    w.map(5).str("id").uint(id).str("ok").bool(true);
    freshness(&mut w, fresh);
    w.str("entries").array(len as u32);
    for i in 0..len {
        entry_at(i, &mut |e| optional_entry(&mut w, e));
    }
    frame::end(buf, start);
}

/// Appends a success response frame.
pub fn encode_ok(buf: &mut Vec<u8>, id: u64, body: &Body<'_>) {
    if let Body::Entries(list, fresh) = body {
        return encode_ok_entries(buf, id, list.len(), *fresh, |i, write| {
            write(list[i].as_ref().map(Entry::as_ref))
        });
    }
    let start = frame::begin(buf);
    let mut w = Writer(buf);
    let fields = match body {
        Body::Empty => 2,
        Body::Entry(..) => 5,
        _ => 3,
    };
    w.map(fields).str("id").uint(id).str("ok").bool(true);
    match body {
        Body::Empty => {}
        Body::Entry(e, fresh) => {
            freshness(&mut w, *fresh);
            optional_entry(w.str("entry"), *e);
        }
        // Written by `encode_ok_entries`, above.
        Body::Entries(..) => {}
        Body::Revision(rev) => {
            w.str("revision").uint(*rev);
        }
        Body::Keys(keys) => {
            w.str("keys").array(keys.len() as u32);
            for k in keys.iter() {
                w.str(k);
            }
        }
        Body::Status(list) => {
            w.str("buckets").array(list.len() as u32);
            for s in list.iter() {
                w.map(12)
                    .str("bucket")
                    .str(&s.bucket)
                    .str("synced")
                    .bool(s.synced)
                    .str("connected")
                    .bool(s.connected)
                    .str("keys")
                    .uint(s.keys)
                    .str("bytes")
                    .uint(s.bytes)
                    .str("revision")
                    .uint(s.revision)
                    .str("server_revision")
                    .uint(s.server_revision)
                    .str("lag")
                    .uint(s.lag)
                    .str("last_update")
                    .int(s.last_update)
                    .str("age_ms");
                match s.age_ms {
                    Some(ms) => w.uint(ms),
                    None => w.nil(),
                };
                w.str("stale")
                    .bool(s.stale)
                    .str("rebuilds")
                    .uint(s.rebuilds);
            }
        }
    }
    frame::end(buf, start);
}

fn error_map(w: &mut Writer<'_>, error: &Error) {
    let details = error.current_revision.is_some() as u32
        + error.revision.is_some() as u32
        + error.sent.is_some() as u32;
    w.map(2 + details)
        .str("code")
        .str(error.code.as_str())
        .str("message")
        .str(&error.message);
    if let Some(rev) = error.current_revision {
        w.str("current_revision").uint(rev);
    }
    if let Some(rev) = error.revision {
        w.str("revision").uint(rev);
    }
    if let Some(sent) = error.sent {
        w.str("sent").bool(sent);
    }
}

/// Appends an error response frame.
pub fn encode_error(buf: &mut Vec<u8>, id: u64, error: &Error) {
    let start = frame::begin(buf);
    let mut w = Writer(buf);
    w.map(3)
        .str("id")
        .uint(id)
        .str("ok")
        .bool(false)
        .str("error");
    error_map(&mut w, error);
    frame::end(buf, start);
}

/// Appends a pushed watch message: an event, the end of the initial values, or the watch's end.
pub fn encode_watch(buf: &mut Vec<u8>, id: u64, message: WatchMessage<'_>) {
    let start = frame::begin(buf);
    let mut w = Writer(buf);
    match message {
        WatchMessage::Event(e) => {
            w.map(2).str("id").uint(id).str("event");
            entry(&mut w, e.as_ref());
        }
        WatchMessage::Synced => {
            w.map(2).str("id").uint(id).str("synced").bool(true);
        }
        WatchMessage::End(None) => {
            w.map(2).str("id").uint(id).str("end").bool(true);
        }
        WatchMessage::End(Some(error)) => {
            w.map(3)
                .str("id")
                .uint(id)
                .str("end")
                .bool(true)
                .str("error");
            error_map(&mut w, error);
        }
    }
    frame::end(buf, start);
}

pub enum WatchMessage<'a> {
    Event(&'a Entry),
    Synced,
    End(Option<&'a Error>),
}

/// A response's `id` and `ok`, read without serde when they come first, as nearkv writes them;
/// `None` otherwise (decode a [`Head`] then).
pub fn peek_id_ok(frame: &[u8]) -> Option<(u64, Option<bool>)> {
    let mut cursor = Cursor::new(frame);
    cursor.map_len()?;
    if cursor.str()? != "id" {
        return None;
    }
    let id = cursor.uint()?;
    let ok = match cursor.str() {
        Some("ok") => cursor.bool(),
        _ => None,
    };
    Some((id, ok))
}

/// The part of every server message the client reads first: whose it is and whether it failed.
#[derive(Debug, Deserialize)]
pub struct Head {
    pub id: u64,
    pub ok: Option<bool>,
    pub error: Option<WireError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    pub current_revision: Option<u64>,
    pub revision: Option<u64>,
    pub sent: Option<bool>,
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error {
            code: e.code,
            message: e.message,
            current_revision: e.current_revision,
            revision: e.revision,
            sent: e.sent,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct EntryBody {
    pub entry: Option<Entry>,
    pub revision: u64,
    pub age_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct EntriesBody {
    pub entries: Vec<Option<Entry>>,
    pub revision: u64,
    pub age_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct RevisionBody {
    pub revision: u64,
}

#[derive(Debug, Deserialize)]
pub struct KeysBody {
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct StatusBody {
    pub buckets: Vec<BucketStatus>,
}

/// A pushed watch message as the client decodes it.
#[derive(Debug, Deserialize)]
pub struct WatchPush {
    pub event: Option<Entry>,
    #[serde(default)]
    pub synced: bool,
    #[serde(default)]
    pub end: bool,
    pub error: Option<WireError>,
}
