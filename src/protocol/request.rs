//! Requests: parsed by the server straight from the frame's bytes (keys and values are borrowed,
//! not copied), and encoded by the client.

use serde::Deserialize;

use super::msgpack::{Cursor, Kind, Writer};
pub use super::types::WriteOptions;
use super::types::{Consistency, ReadOptions};
use crate::error::{Error, ErrorCode};

/// A request of protocol v1, borrowing its strings and bytes from the frame it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Ping,
    Get {
        bucket: &'a str,
        key: &'a str,
        read: ReadOptions,
    },
    Mget {
        bucket: &'a str,
        keys: Vec<&'a str>,
        read: ReadOptions,
    },
    Put {
        bucket: &'a str,
        key: &'a str,
        value: &'a [u8],
        write: WriteOptions,
    },
    Delete {
        bucket: &'a str,
        key: &'a str,
        write: WriteOptions,
    },
    Purge {
        bucket: &'a str,
        key: &'a str,
        write: WriteOptions,
    },
    Keys {
        bucket: &'a str,
        filter: Option<&'a str>,
        allow_stale: bool,
    },
    Status {
        bucket: Option<&'a str>,
    },
    Watch {
        bucket: &'a str,
        filter: Option<&'a str>,
        initial: bool,
    },
    Unwatch {
        watch: u64,
    },
}

impl Request<'_> {
    /// The bucket the request names, if any.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            Request::Get { bucket, .. }
            | Request::Mget { bucket, .. }
            | Request::Put { bucket, .. }
            | Request::Delete { bucket, .. }
            | Request::Purge { bucket, .. }
            | Request::Keys { bucket, .. }
            | Request::Watch { bucket, .. } => Some(bucket),
            Request::Status { bucket } => *bucket,
            Request::Ping | Request::Unwatch { .. } => None,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Get { .. } => "get",
            Request::Mget { .. } => "mget",
            Request::Put { .. } => "put",
            Request::Delete { .. } => "delete",
            Request::Purge { .. } => "purge",
            Request::Keys { .. } => "keys",
            Request::Status { .. } => "status",
            Request::Watch { .. } => "watch",
            Request::Unwatch { .. } => "unwatch",
        }
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    id: u64,
    #[serde(borrow, default)]
    op: Option<&'a str>,
}

#[derive(Deserialize)]
struct Read {
    min_revision: Option<u64>,
    /// Optional fields may be absent or nil, so an `Option` rather than `serde(default)`.
    consistency: Option<Consistency>,
    timeout_ms: Option<u64>,
    allow_stale: Option<bool>,
}

impl From<Read> for ReadOptions {
    fn from(r: Read) -> Self {
        ReadOptions {
            min_revision: r.min_revision,
            consistency: r.consistency.unwrap_or_default(),
            timeout_ms: r.timeout_ms,
            allow_stale: r.allow_stale.unwrap_or(false),
        }
    }
}

/// `get` in one pass: it is the request nearkv serves most.
#[derive(Deserialize)]
struct GetFields<'a> {
    bucket: &'a str,
    key: &'a str,
    min_revision: Option<u64>,
    /// Optional fields may be absent or nil, so an `Option` rather than `serde(default)`.
    consistency: Option<Consistency>,
    timeout_ms: Option<u64>,
    allow_stale: Option<bool>,
}

#[derive(Deserialize)]
struct KeyFields<'a> {
    bucket: &'a str,
    key: &'a str,
}

#[derive(Deserialize)]
struct MgetFields<'a> {
    bucket: &'a str,
    #[serde(borrow)]
    keys: Vec<&'a str>,
}

#[derive(Deserialize)]
struct PutFields<'a> {
    bucket: &'a str,
    key: &'a str,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

#[derive(Deserialize)]
struct Write {
    expect_revision: Option<u64>,
    timeout_ms: Option<u64>,
    ttl_ms: Option<u64>,
}

impl From<Write> for WriteOptions {
    fn from(w: Write) -> Self {
        WriteOptions {
            expect_revision: w.expect_revision,
            timeout_ms: w.timeout_ms,
            ttl_ms: w.ttl_ms,
        }
    }
}

#[derive(Deserialize)]
struct KeysFields<'a> {
    bucket: &'a str,
    #[serde(borrow, default)]
    filter: Option<&'a str>,
    allow_stale: Option<bool>,
}

#[derive(Deserialize)]
struct StatusFields<'a> {
    #[serde(borrow, default)]
    bucket: Option<&'a str>,
}

#[derive(Deserialize)]
struct WatchFields<'a> {
    bucket: &'a str,
    #[serde(borrow, default)]
    filter: Option<&'a str>,
    initial: Option<bool>,
}

#[derive(Deserialize)]
struct UnwatchFields {
    watch: u64,
}

/// A request that could not be parsed: the id to answer with (0 when none could be read) and why.
#[derive(Debug)]
pub struct ParseError {
    pub id: u64,
    pub error: Error,
}

fn bad_request(id: u64, message: String) -> ParseError {
    ParseError {
        id,
        error: Error::new(ErrorCode::BadRequest, message),
    }
}

/// Decodes one part of a request. Only when that fails is it decoded again with path tracking,
/// which costs too much to pay on every request, to name the field that is wrong.
fn body<'a, T: Deserialize<'a>>(frame: &'a [u8], id: u64, op: &str) -> Result<T, ParseError> {
    if let Ok(parsed) = rmp_serde::from_slice(frame) {
        return Ok(parsed);
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path == "." {
            format!("invalid `{op}` request: {inner}")
        } else {
            format!("invalid `{op}` request: field `{path}`: {inner}")
        };
        bad_request(id, message)
    })
}

/// The read path's fast lane: a `get` with only `id`, `op`, `bucket` and `key`, decoded in one
/// pass without serde: `(id, bucket, key)`. Anything else (options, unknown fields, errors)
/// returns `None` and takes the general path, which also produces the error messages.
pub fn plain_get(frame: &[u8]) -> Option<(u64, &str, &str)> {
    let mut cursor = Cursor::new(frame);
    let (mut id, mut is_get, mut bucket, mut key) = (None, false, None, None);
    for _ in 0..cursor.map_len()? {
        match cursor.str_bytes()? {
            b"id" => id = Some(cursor.uint()?),
            b"op" => is_get = cursor.str_bytes()? == b"get",
            b"bucket" => bucket = Some(cursor.str()?),
            b"key" => key = Some(cursor.str()?),
            _ => return None,
        }
    }
    if !is_get || !cursor.is_empty() {
        return None;
    }
    Some((id?, bucket?, key?))
}

/// Fields whose value must be a MessagePack `str` (or nil where optional). serde would also take
/// a `bin` for a string, and a variant's index for `consistency`; the protocol says `str`.
const STR_FIELDS: [&str; 5] = ["op", "bucket", "key", "filter", "consistency"];

/// What a first pass over a request map finds: its `id` when one can be read, and what breaks
/// the protocol's shape (a non-string key, a string field of another type, bytes after the map).
fn check_shape(frame: &[u8]) -> (Option<u64>, Option<String>) {
    let mut cursor = Cursor::new(frame);
    let mut id = None;
    let mut problem = None;
    let Some(len) = cursor.map_len() else {
        return (
            None,
            Some("the request is not a MessagePack map".to_string()),
        );
    };
    for _ in 0..len {
        let Some(name) = cursor.str() else {
            problem.get_or_insert_with(|| "every key of the request map must be a str".to_string());
            return (id, problem);
        };
        let kind = cursor.peek_kind();
        if name == "id" {
            // `None` for a negative integer or another type: not an id.
            id = id.or(cursor.clone().uint());
        }
        let wrong = if STR_FIELDS.contains(&name) {
            !matches!(kind, Some(Kind::Str | Kind::Nil))
        } else if name == "keys" && kind == Some(Kind::Array) {
            let mut items = cursor.clone();
            let count = items.array_len().unwrap_or(0);
            (0..count).any(|_| {
                let is_str = items.peek_kind() == Some(Kind::Str);
                items.skip();
                !is_str
            })
        } else {
            false
        };
        if wrong {
            problem.get_or_insert_with(|| {
                format!("field `{name}` must be a MessagePack str (a string, not bin or a number)")
            });
        }
        if cursor.skip().is_none() {
            return (
                id,
                Some(
                    "the request map is cut short or holds bytes that are not MessagePack"
                        .to_string(),
                ),
            );
        }
    }
    if !cursor.is_empty() {
        problem.get_or_insert_with(|| {
            "bytes follow the request map; a frame holds exactly one map".to_string()
        });
    }
    (id, problem)
}

/// Parses a request frame's body (the bytes after the length prefix).
pub fn parse(frame: &[u8]) -> Result<(u64, Request<'_>), ParseError> {
    if let Some((id, bucket, key)) = plain_get(frame) {
        let read = ReadOptions::default();
        return Ok((id, Request::Get { bucket, key, read }));
    }
    // rmp-serde would also accept a struct encoded as an array; the protocol allows maps only.
    let is_map = matches!(frame.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    if !is_map {
        return Err(bad_request(
            0,
            "a request must be a MessagePack map with string keys, such as {\"id\": 1, \"op\": \"ping\"}".to_string(),
        ));
    }
    let (readable_id, problem) = check_shape(frame);
    if let Some(problem) = problem {
        return Err(bad_request(readable_id.unwrap_or(0), problem));
    }
    let header: Header = match rmp_serde::from_slice(frame) {
        Ok(header) => header,
        Err(err) => {
            let id = readable_id.unwrap_or(0);
            return Err(bad_request(
                id,
                format!(
                    "a request must be a MessagePack map with an unsigned integer `id` and a string `op` ({err})"
                ),
            ));
        }
    };
    let id = header.id;
    let Some(op) = header.op else {
        return Err(bad_request(id, "the request has no `op` field".to_string()));
    };
    let request = match op {
        "ping" => Request::Ping,
        "get" => {
            let b: GetFields = body(frame, id, op)?;
            Request::Get {
                bucket: b.bucket,
                key: b.key,
                read: ReadOptions {
                    min_revision: b.min_revision,
                    consistency: b.consistency.unwrap_or_default(),
                    timeout_ms: b.timeout_ms,
                    allow_stale: b.allow_stale.unwrap_or(false),
                },
            }
        }
        "mget" => {
            let b: MgetFields = body(frame, id, op)?;
            let read: Read = body(frame, id, op)?;
            Request::Mget {
                bucket: b.bucket,
                keys: b.keys,
                read: read.into(),
            }
        }
        "put" => {
            let b: PutFields = body(frame, id, op)?;
            let write: Write = body(frame, id, op)?;
            Request::Put {
                bucket: b.bucket,
                key: b.key,
                value: b.value,
                write: write.into(),
            }
        }
        "delete" | "purge" => {
            let b: KeyFields = body(frame, id, op)?;
            let write: WriteOptions = body::<Write>(frame, id, op)?.into();
            if write.ttl_ms.is_some() {
                return Err(bad_request(
                    id,
                    format!("`ttl_ms` applies to `put` only, not to `{op}`"),
                ));
            }
            if op == "delete" {
                Request::Delete {
                    bucket: b.bucket,
                    key: b.key,
                    write,
                }
            } else {
                Request::Purge {
                    bucket: b.bucket,
                    key: b.key,
                    write,
                }
            }
        }
        "keys" => {
            let b: KeysFields = body(frame, id, op)?;
            Request::Keys {
                bucket: b.bucket,
                filter: b.filter,
                allow_stale: b.allow_stale.unwrap_or(false),
            }
        }
        "status" => {
            let b: StatusFields = body(frame, id, op)?;
            Request::Status { bucket: b.bucket }
        }
        "watch" => {
            let b: WatchFields = body(frame, id, op)?;
            Request::Watch {
                bucket: b.bucket,
                filter: b.filter,
                initial: b.initial.unwrap_or(true),
            }
        }
        "unwatch" => {
            let b: UnwatchFields = body(frame, id, op)?;
            Request::Unwatch { watch: b.watch }
        }
        other => {
            return Err(ParseError {
                id,
                error: Error::new(
                    ErrorCode::UnknownOp,
                    format!(
                        "unknown op {other:?}; protocol v1 ops are ping, get, mget, put, delete, purge, keys, \
                         status, watch, unwatch"
                    ),
                ),
            })
        }
    };
    Ok((id, request))
}

/// Appends the request as one frame (length prefix included) to `buf`. Optional fields that are
/// `None` are left out, so the bytes match docs/PROTOCOL.md's test vectors.
pub fn encode(id: u64, request: &Request<'_>, buf: &mut Vec<u8>) {
    let start = super::frame::begin(buf);
    let mut fields: Vec<(&str, Field<'_>)> = Vec::with_capacity(8);
    fields.push(("id", Field::Uint(id)));
    fields.push(("op", Field::Str(request.op())));
    let read_fields = |fields: &mut Vec<(&str, Field<'_>)>, read: &ReadOptions| {
        if let Some(rev) = read.min_revision {
            fields.push(("min_revision", Field::Uint(rev)));
        }
        if read.consistency != Consistency::Cached {
            fields.push(("consistency", Field::Str(read.consistency.as_str())));
        }
        if let Some(ms) = read.timeout_ms {
            fields.push(("timeout_ms", Field::Uint(ms)));
        }
        if read.allow_stale {
            fields.push(("allow_stale", Field::Bool(true)));
        }
    };
    let write_fields = |fields: &mut Vec<(&str, Field<'_>)>, write: &WriteOptions| {
        if let Some(rev) = write.expect_revision {
            fields.push(("expect_revision", Field::Uint(rev)));
        }
        if let Some(ms) = write.timeout_ms {
            fields.push(("timeout_ms", Field::Uint(ms)));
        }
        if let Some(ms) = write.ttl_ms {
            fields.push(("ttl_ms", Field::Uint(ms)));
        }
    };
    match request {
        Request::Ping => {}
        Request::Get { bucket, key, read } => {
            fields.push(("bucket", Field::Str(bucket)));
            fields.push(("key", Field::Str(key)));
            read_fields(&mut fields, read);
        }
        Request::Mget { bucket, keys, read } => {
            fields.push(("bucket", Field::Str(bucket)));
            fields.push(("keys", Field::Strs(keys)));
            read_fields(&mut fields, read);
        }
        Request::Put {
            bucket,
            key,
            value,
            write,
        } => {
            fields.push(("bucket", Field::Str(bucket)));
            fields.push(("key", Field::Str(key)));
            fields.push(("value", Field::Bin(value)));
            write_fields(&mut fields, write);
        }
        Request::Delete { bucket, key, write } | Request::Purge { bucket, key, write } => {
            fields.push(("bucket", Field::Str(bucket)));
            fields.push(("key", Field::Str(key)));
            write_fields(&mut fields, write);
        }
        Request::Keys {
            bucket,
            filter,
            allow_stale,
        } => {
            fields.push(("bucket", Field::Str(bucket)));
            if let Some(filter) = filter {
                fields.push(("filter", Field::Str(filter)));
            }
            if *allow_stale {
                fields.push(("allow_stale", Field::Bool(true)));
            }
        }
        Request::Status { bucket } => {
            if let Some(bucket) = bucket {
                fields.push(("bucket", Field::Str(bucket)));
            }
        }
        Request::Watch {
            bucket,
            filter,
            initial,
        } => {
            fields.push(("bucket", Field::Str(bucket)));
            if let Some(filter) = filter {
                fields.push(("filter", Field::Str(filter)));
            }
            if !initial {
                fields.push(("initial", Field::Bool(false)));
            }
        }
        Request::Unwatch { watch } => fields.push(("watch", Field::Uint(*watch))),
    }
    let mut w = Writer(buf);
    w.map(fields.len() as u32);
    for (name, field) in &fields {
        w.str(name);
        match field {
            Field::Uint(v) => w.uint(*v),
            Field::Str(s) => w.str(s),
            Field::Bin(b) => w.bin(b),
            Field::Bool(b) => w.bool(*b),
            Field::Strs(list) => {
                w.array(list.len() as u32);
                for s in list.iter() {
                    w.str(s);
                }
                &mut w
            }
        };
    }
    super::frame::end(buf, start);
}

enum Field<'a> {
    Uint(u64),
    Str(&'a str),
    Bin(&'a [u8]),
    Bool(bool),
    Strs(&'a [&'a str]),
}
