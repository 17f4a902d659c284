//! Property tests: every message type survives an encode/decode round trip with arbitrary
//! contents, and no byte sequence makes the decoders panic.

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::{check, FrameCheck};
use super::request::{encode, parse, Request, WriteOptions};
use super::response::{
    encode_error, encode_ok, encode_watch, Body, EntriesBody, EntryBody, Head, KeysBody,
    RevisionBody, StatusBody, WatchMessage, WatchPush,
};
use super::types::{BucketStatus, Consistency, Entry, Freshness, Operation, ReadOptions};
use crate::error::{Error, ErrorCode};

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, empty included: the codec must not care whether it is a valid key.
    ".{0,24}"
}

fn read_options() -> impl Strategy<Value = ReadOptions> {
    (
        proptest::option::of(any::<u64>()),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(
            |(min_revision, strong, timeout_ms, allow_stale)| ReadOptions {
                min_revision,
                consistency: Consistency::strong_if(strong),
                timeout_ms,
                allow_stale,
            },
        )
}

fn write_options() -> impl Strategy<Value = WriteOptions> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(expect_revision, timeout_ms, ttl_ms)| WriteOptions {
            expect_revision,
            timeout_ms,
            ttl_ms,
        })
}

/// The owned parts of any request; `request` borrows them.
#[derive(Debug, Clone)]
struct Parts {
    op: u8,
    bucket: String,
    key: String,
    keys: Vec<String>,
    value: Vec<u8>,
    filter: Option<String>,
    flag: bool,
    number: u64,
    read: ReadOptions,
    write: WriteOptions,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        (
            0u8..10,
            text(),
            text(),
            proptest::collection::vec(text(), 0..5),
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::option::of(text()),
            any::<bool>(),
            any::<u64>(),
        ),
        read_options(),
        write_options(),
    )
        .prop_map(
            |((op, bucket, key, keys), (value, filter, flag, number), read, write)| Parts {
                op,
                bucket,
                key,
                keys,
                value,
                filter,
                flag,
                number,
                read,
                write,
            },
        )
}

fn request(p: &Parts) -> Request<'_> {
    let (bucket, key) = (p.bucket.as_str(), p.key.as_str());
    // `ttl_ms` exists on `put` only; the server refuses it elsewhere.
    let no_ttl = WriteOptions {
        ttl_ms: None,
        ..p.write
    };
    match p.op {
        0 => Request::Ping,
        1 => Request::Get {
            bucket,
            key,
            read: p.read,
        },
        2 => Request::Mget {
            bucket,
            keys: p.keys.iter().map(String::as_str).collect(),
            read: p.read,
        },
        3 => Request::Put {
            bucket,
            key,
            value: &p.value,
            write: p.write,
        },
        4 => Request::Delete {
            bucket,
            key,
            write: no_ttl,
        },
        5 => Request::Purge {
            bucket,
            key,
            write: no_ttl,
        },
        6 => Request::Keys {
            bucket,
            filter: p.filter.as_deref(),
            allow_stale: p.flag,
        },
        7 => Request::Status {
            bucket: p.filter.as_deref(),
        },
        8 => Request::Watch {
            bucket,
            filter: p.filter.as_deref(),
            initial: p.flag,
        },
        _ => Request::Unwatch { watch: p.number },
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        text(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<u64>(),
        any::<i64>(),
        0u8..3,
    )
        .prop_map(|(key, value, revision, created, op)| Entry {
            key,
            value: Bytes::from(value),
            revision,
            created,
            operation: [Operation::Put, Operation::Delete, Operation::Purge][op as usize],
        })
}

fn freshness() -> impl Strategy<Value = Freshness> {
    (any::<u64>(), any::<u64>()).prop_map(|(revision, age_ms)| Freshness { revision, age_ms })
}

fn status() -> impl Strategy<Value = BucketStatus> {
    (
        (
            text(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<i64>()),
        (
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (bucket, synced, connected, keys, bytes),
                (revision, server_revision, lag, last_update),
                (age_ms, stale, rebuilds),
            )| BucketStatus {
                bucket,
                synced,
                connected,
                keys,
                bytes,
                revision,
                server_revision,
                lag,
                last_update,
                age_ms,
                stale,
                rebuilds,
            },
        )
}

fn body(frame: &[u8]) -> &[u8] {
    match check(frame, u32::MAX) {
        FrameCheck::Complete(len) => &frame[4..4 + len],
        other => panic!("an encoder wrote an incomplete frame: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_round_trips(parts in parts(), id in any::<u64>()) {
        let request = request(&parts);
        let mut frame = Vec::new();
        encode(id, &request, &mut frame);
        let parsed = parse(body(&frame));
        prop_assert!(parsed.is_ok(), "{:?} did not parse: {:?}", request, parsed.err());
        if let Ok(parsed) = parsed {
            prop_assert_eq!(parsed, (id, request));
        }
    }

    #[test]
    fn every_response_round_trips(
        id in any::<u64>(),
        entry in entry(),
        missing in any::<bool>(),
        fresh in freshness(),
        list in proptest::collection::vec(proptest::option::of(entry()), 0..4),
        keys in proptest::collection::vec(text(), 0..4),
        statuses in proptest::collection::vec(status(), 0..3),
        message in text(),
        revision in any::<u64>(),
    ) {
        // Entries as `get` returns them: live values, operation `put`.
        let entry = Entry { operation: Operation::Put, ..entry };
        let list: Vec<Option<Entry>> = list
            .into_iter()
            .map(|e| e.map(|e| Entry { operation: Operation::Put, ..e }))
            .collect();
        let got = (!missing).then_some(&entry);
        let mut frame = Vec::new();
        encode_ok(&mut frame, id, &Body::Entry(got.map(Entry::as_ref), fresh));
        let decoded: EntryBody = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(decoded.entry.as_ref(), got);
        prop_assert_eq!((decoded.revision, decoded.age_ms), (fresh.revision, fresh.age_ms));

        let mut frame = Vec::new();
        encode_ok(&mut frame, id, &Body::Entries(&list, fresh));
        let decoded: EntriesBody = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(&decoded.entries, &list);

        let mut frame = Vec::new();
        encode_ok(&mut frame, id, &Body::Revision(revision));
        let decoded: RevisionBody = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(decoded.revision, revision);

        let mut frame = Vec::new();
        encode_ok(&mut frame, id, &Body::Keys(&keys));
        let decoded: KeysBody = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(&decoded.keys, &keys);

        let mut frame = Vec::new();
        encode_ok(&mut frame, id, &Body::Status(&statuses));
        let decoded: StatusBody = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(&decoded.buckets, &statuses);

        let error = Error {
            current_revision: Some(revision),
            ..Error::new(ErrorCode::WrongRevision, message.clone())
        };
        let mut frame = Vec::new();
        encode_error(&mut frame, id, &error);
        let head: Head = rmp_serde::from_slice(body(&frame)).unwrap();
        let wire = head.error.unwrap();
        prop_assert_eq!((head.id, wire.message, wire.current_revision), (id, message, Some(revision)));
    }

    #[test]
    fn every_watch_message_round_trips(id in any::<u64>(), entry in entry()) {
        let mut frame = Vec::new();
        encode_watch(&mut frame, id, WatchMessage::Event(&entry));
        let push: WatchPush = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(push.event, Some(entry));
        let mut frame = Vec::new();
        let error = Error::new(ErrorCode::SlowConsumer, "behind");
        encode_watch(&mut frame, id, WatchMessage::End(Some(&error)));
        let push: WatchPush = rmp_serde::from_slice(body(&frame)).unwrap();
        prop_assert!(push.end);
        prop_assert_eq!(push.error.map(|e| e.code), Some(ErrorCode::SlowConsumer));
    }

    /// Any bytes: the frame check and the request parser answer, they never panic.
    #[test]
    fn random_bytes_never_crash_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(&bytes, 1024);
        let _ = parse(&bytes);
        // Valid framing around garbage, too.
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        prop_assert!(matches!(check(&framed, 1024), FrameCheck::Complete(_)));
        let _ = parse(body(&framed));
    }

    /// A valid request with one byte changed: still no panic, and an error names an id.
    #[test]
    fn corrupted_requests_get_errors_not_crashes(parts in parts(), at in any::<usize>(), byte in any::<u8>()) {
        let request = request(&parts);
        let mut frame = Vec::new();
        encode(7, &request, &mut frame);
        let mut damaged = body(&frame).to_vec();
        let at = at % damaged.len();
        damaged[at] = byte;
        if let Err(err) = parse(&damaged) {
            prop_assert!(!err.error.message.is_empty());
        }
    }
}
