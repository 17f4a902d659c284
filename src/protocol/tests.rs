use bytes::Bytes;

use super::request::{encode, parse, Request, WriteOptions};
use super::response::{
    encode_error, encode_ok, encode_watch, Body, EntriesBody, EntryBody, Head, KeysBody,
    RevisionBody, StatusBody, WatchMessage, WatchPush,
};
use super::types::{BucketStatus, Consistency, Entry, Freshness, Operation, ReadOptions};
use crate::error::{Error, ErrorCode};

fn body_of(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

fn all_requests() -> Vec<Request<'static>> {
    let read = ReadOptions {
        min_revision: Some(7),
        consistency: Consistency::Strong,
        timeout_ms: Some(250),
        allow_stale: true,
    };
    let write = WriteOptions {
        expect_revision: Some(0),
        timeout_ms: Some(1000),
        ttl_ms: None,
    };
    vec![
        Request::Ping,
        Request::Get {
            bucket: "b",
            key: "k",
            read: ReadOptions::default(),
        },
        Request::Get {
            bucket: "b",
            key: "k",
            read,
        },
        Request::Mget {
            bucket: "b",
            keys: vec!["a", "b.c"],
            read,
        },
        Request::Put {
            bucket: "b",
            key: "k",
            value: b"\x00\xffvalue",
            write,
        },
        Request::Put {
            bucket: "b",
            key: "k",
            value: b"",
            write: WriteOptions::default(),
        },
        Request::Put {
            bucket: "b",
            key: "k",
            value: b"v",
            write: WriteOptions {
                ttl_ms: Some(30_000),
                ..write
            },
        },
        Request::Delete {
            bucket: "b",
            key: "k",
            write,
        },
        Request::Purge {
            bucket: "b",
            key: "k",
            write: WriteOptions::default(),
        },
        Request::Keys {
            bucket: "b",
            filter: Some("a.>"),
            allow_stale: true,
        },
        Request::Keys {
            bucket: "b",
            filter: None,
            allow_stale: false,
        },
        Request::Status { bucket: None },
        Request::Status { bucket: Some("b") },
        Request::Watch {
            bucket: "b",
            filter: Some("*"),
            initial: false,
        },
        Request::Watch {
            bucket: "b",
            filter: None,
            initial: true,
        },
        Request::Unwatch { watch: 99 },
    ]
}

#[test]
fn every_request_round_trips() {
    for request in all_requests() {
        let mut buf = Vec::new();
        encode(42, &request, &mut buf);
        assert_eq!(
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
            buf.len() - 4
        );
        let (id, parsed) = parse(body_of(&buf)).unwrap_or_else(|e| panic!("{request:?}: {e:?}"));
        assert_eq!(id, 42);
        assert_eq!(parsed, request);
    }
}

fn msgpack(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec(value).unwrap()
}

fn parse_error(bytes: &[u8]) -> (u64, Error) {
    let err = parse(bytes).unwrap_err();
    (err.id, err.error)
}

#[test]
fn malformed_requests_get_typed_errors() {
    let (id, err) = parse_error(b"\xc1garbage");
    assert_eq!((id, err.code), (0, ErrorCode::BadRequest));
    let (id, err) = parse_error(&msgpack(&serde_json::json!([1, "get"])));
    assert_eq!((id, err.code), (0, ErrorCode::BadRequest));
    let (id, err) = parse_error(&msgpack(&serde_json::json!({"op": "ping"})));
    assert_eq!((id, err.code), (0, ErrorCode::BadRequest));
    let (id, err) = parse_error(&msgpack(&serde_json::json!({"id": 5})));
    assert_eq!((id, err.code), (5, ErrorCode::BadRequest));
    let (id, err) = parse_error(&msgpack(&serde_json::json!({"id": 6, "op": "fly"})));
    assert_eq!((id, err.code), (6, ErrorCode::UnknownOp));
    let (id, err) = parse_error(&msgpack(
        &serde_json::json!({"id": 7, "op": "get", "bucket": "b", "key": 3}),
    ));
    assert_eq!((id, err.code), (7, ErrorCode::BadRequest));
    assert!(err.message.contains("`key`"), "{}", err.message);
    let (id, err) = parse_error(&msgpack(
        &serde_json::json!({"id": 8, "op": "put", "bucket": "b", "key": "k"}),
    ));
    assert_eq!((id, err.code), (8, ErrorCode::BadRequest));
    assert!(err.message.contains("value"), "{}", err.message);
    let (_, err) = parse_error(&msgpack(
        &serde_json::json!({"id": 9, "op": "get", "bucket": "b", "key": "k", "consistency": "eventual"}),
    ));
    assert!(err.message.contains("consistency"), "{}", err.message);
    // A wrong `id` type still gets an answer, with id 0.
    let (id, err) = parse_error(&msgpack(&serde_json::json!({"id": "x", "op": "ping"})));
    assert_eq!((id, err.code), (0, ErrorCode::BadRequest));
}

/// Hand-built MessagePack: `{"id": 11, <name>: <raw value bytes>, ...}` after the given pairs.
fn map_with(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0x80 | pairs.len() as u8];
    for (name, raw) in pairs {
        out.push(0xa0 | name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(raw);
    }
    out
}

#[test]
fn string_fields_must_be_str_and_the_id_is_echoed_whenever_readable() {
    let str_of = |s: &str| {
        let mut v = vec![0xa0 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    let bin_of = |s: &str| {
        let mut v = vec![0xc4, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    let (get, b, k) = (str_of("get"), str_of("b"), str_of("k"));
    type Pairs<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: [(&str, Pairs); 5] = [
        (
            "op",
            vec![
                ("op", bin_of("get")),
                ("bucket", b.clone()),
                ("key", k.clone()),
            ],
        ),
        (
            "bucket",
            vec![
                ("op", get.clone()),
                ("bucket", bin_of("b")),
                ("key", k.clone()),
            ],
        ),
        (
            "key",
            vec![
                ("op", get.clone()),
                ("bucket", b.clone()),
                ("key", bin_of("k")),
            ],
        ),
        (
            "consistency",
            vec![
                ("op", get.clone()),
                ("bucket", b.clone()),
                ("key", k.clone()),
                ("consistency", vec![1]),
            ],
        ),
        (
            "filter",
            vec![
                ("op", str_of("keys")),
                ("bucket", b.clone()),
                ("filter", bin_of(">")),
            ],
        ),
    ];
    for (field, pairs) in cases {
        let mut all: Vec<(&str, &[u8])> = vec![("id", &[11])];
        all.extend(pairs.iter().map(|(n, v)| (*n, v.as_slice())));
        let (id, err) = parse_error(&map_with(&all));
        assert_eq!((id, err.code), (11, ErrorCode::BadRequest), "{field}");
        assert!(
            err.message.contains(&format!("`{field}`")),
            "{field}: {}",
            err.message
        );
    }
    // `keys` must hold strings.
    let keys = [vec![0x92], str_of("a"), bin_of("b")].concat();
    let (id, err) = parse_error(&map_with(&[
        ("id", &[12]),
        ("op", &str_of("mget")),
        ("bucket", &b),
        ("keys", &keys),
    ]));
    assert_eq!((id, err.code), (12, ErrorCode::BadRequest));
    // Bytes after the map are refused, on the fast path's shape too.
    let mut trailing = map_with(&[("id", &[13]), ("op", &get), ("bucket", &b), ("key", &k)]);
    trailing.push(0xc0);
    let (id, err) = parse_error(&trailing);
    assert_eq!((id, err.code), (13, ErrorCode::BadRequest));
    assert!(err.message.contains("bytes follow"), "{}", err.message);
    // A map cut short, or with an undecodable value, still echoes an id read before it.
    let cut = map_with(&[("id", &[14]), ("op", &get), ("bucket", &[0xa5, b'x'])]);
    assert_eq!(parse_error(&cut).0, 14);
    let undecodable = map_with(&[("id", &[15]), ("op", &[0xc1]), ("key", &k)]);
    assert_eq!(parse_error(&undecodable).0, 15);
    // `value` may still be a str.
    let put = map_with(&[
        ("id", &[16]),
        ("op", &str_of("put")),
        ("bucket", &b),
        ("key", &k),
        ("value", &str_of("v")),
    ]);
    assert!(parse(&put).is_ok());
}

#[test]
fn optional_fields_may_be_nil() {
    let bytes = msgpack(
        &serde_json::json!({"id": 1, "op": "get", "bucket": "b", "key": "k",
        "min_revision": null, "consistency": null, "timeout_ms": null}),
    );
    let (_, request) = parse(&bytes).unwrap();
    assert_eq!(
        request,
        Request::Get {
            bucket: "b",
            key: "k",
            read: ReadOptions::default()
        }
    );
    let bytes = msgpack(
        &serde_json::json!({"id": 1, "op": "mget", "bucket": "b", "keys": ["k"], "consistency": null}),
    );
    assert!(parse(&bytes).is_ok());
    let bytes = msgpack(
        &serde_json::json!({"id": 1, "op": "put", "bucket": "b", "key": "k", "value": "v",
        "expect_revision": null, "timeout_ms": null}),
    );
    assert!(matches!(
        parse(&bytes).unwrap().1,
        Request::Put {
            write: WriteOptions {
                expect_revision: None,
                ..
            },
            ..
        }
    ));
    let bytes = msgpack(
        &serde_json::json!({"id": 1, "op": "watch", "bucket": "b", "filter": null, "initial": null}),
    );
    assert!(matches!(
        parse(&bytes).unwrap().1,
        Request::Watch {
            filter: None,
            initial: true,
            ..
        }
    ));
    let bytes = msgpack(&serde_json::json!({"id": 1, "op": "status", "bucket": null}));
    assert!(matches!(
        parse(&bytes).unwrap().1,
        Request::Status { bucket: None }
    ));
}

#[test]
fn unknown_fields_are_ignored_and_values_may_be_strings() {
    let bytes = msgpack(
        &serde_json::json!({"id": 1, "op": "put", "bucket": "b", "key": "k", "value": "text", "x": [1]}),
    );
    let (_, request) = parse(&bytes).unwrap();
    assert!(matches!(request, Request::Put { value: b"text", .. }));
}

/// The fast lane for plain gets must agree with the general path on everything it accepts.
#[test]
fn plain_gets_parse_the_same_on_both_paths() {
    let long_key = "k".repeat(300);
    for (id, bucket, key) in [
        (0u64, "b", "k"),
        (200, "shop_orders", "order-1"),
        (70_000, "b", long_key.as_str()),
        (u64::MAX, "b", "a.b.c"),
    ] {
        let mut buf = Vec::new();
        let request = Request::Get {
            bucket,
            key,
            read: ReadOptions::default(),
        };
        encode(id, &request, &mut buf);
        assert_eq!(parse(body_of(&buf)).unwrap(), (id, request.clone()));
        // The same request with its fields in another order and str8/uint64 encodings.
        let reordered =
            msgpack(&serde_json::json!({"key": key, "bucket": bucket, "op": "get", "id": id}));
        assert_eq!(parse(&reordered).unwrap(), (id, request));
    }
    // Truncated or odd frames fall back to the general path's answers, never panic.
    let mut buf = Vec::new();
    let request = Request::Get {
        bucket: "b",
        key: "k",
        read: ReadOptions::default(),
    };
    encode(9, &request, &mut buf);
    for cut in 4..buf.len() {
        let err = parse(&buf[4..cut]).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::BadRequest);
    }
}

#[test]
fn random_bytes_never_panic_the_parser() {
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for len in 0..2000 {
        let bytes: Vec<u8> = (0..len % 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = parse(&bytes);
    }
}

const FRESH: Freshness = Freshness {
    revision: 5,
    age_ms: 120,
};

fn entry() -> Entry {
    Entry {
        key: "order-1".to_string(),
        value: Bytes::from_static(b"{\"id\":1}"),
        revision: 3,
        created: 1_700_000_000_000_000_000,
        operation: Operation::Put,
    }
}

#[test]
fn every_response_decodes_as_the_client_reads_it() {
    let e = entry();
    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Entry(Some(e.as_ref()), FRESH));
    let got: EntryBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.entry, Some(e.clone()));
    assert_eq!((got.revision, got.age_ms), (5, 120));

    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Entry(None, FRESH));
    let got: EntryBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.entry, None);

    let list = vec![Some(e.clone()), None];
    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Entries(&list, FRESH));
    let got: EntriesBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.entries, list);
    assert_eq!((got.revision, got.age_ms), (5, 120));

    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Revision(u64::MAX));
    let got: RevisionBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.revision, u64::MAX);

    let keys = vec!["a".to_string(), "b".to_string()];
    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Keys(&keys));
    let got: KeysBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.keys, keys);

    let status = vec![BucketStatus {
        bucket: "b".to_string(),
        synced: true,
        connected: false,
        keys: 2,
        bytes: 30,
        revision: 9,
        server_revision: 11,
        lag: 2,
        last_update: 1_700_000_000_000_000_000,
        age_ms: Some(350),
        stale: false,
        rebuilds: 1,
    }];
    let mut buf = Vec::new();
    encode_ok(&mut buf, 1, &Body::Status(&status));
    let got: StatusBody = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(got.buckets, status);

    let mut buf = Vec::new();
    encode_error(
        &mut buf,
        5,
        &crate::cache::Error::wrong_revision("k", 1, 2).into(),
    );
    let head: Head = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!((head.id, head.ok), (5, Some(false)));
    let error = head.error.unwrap();
    assert_eq!(
        (error.code, error.current_revision),
        (ErrorCode::WrongRevision, Some(2))
    );

    let mut buf = Vec::new();
    encode_watch(&mut buf, 8, WatchMessage::Event(&e));
    let push: WatchPush = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert_eq!(push.event, Some(e));
    let mut buf = Vec::new();
    encode_watch(&mut buf, 8, WatchMessage::Synced);
    let push: WatchPush = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert!(push.synced && !push.end);
    let mut buf = Vec::new();
    let slow = Error::new(ErrorCode::SlowConsumer, "behind");
    encode_watch(&mut buf, 8, WatchMessage::End(Some(&slow)));
    let push: WatchPush = rmp_serde::from_slice(body_of(&buf)).unwrap();
    assert!(push.end);
    assert_eq!(push.error.unwrap().code, ErrorCode::SlowConsumer);
}

/// The hex test vectors in docs/PROTOCOL.md, produced by the encoders and checked against the doc.
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let e = entry();
    let mut out = Vec::new();
    let mut add = |name: &'static str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut buf = Vec::new();
        f(&mut buf);
        out.push((name, buf));
    };
    add("ping request", &|b| encode(1, &Request::Ping, b));
    add("ping response", &|b| encode_ok(b, 1, &Body::Empty));
    add("get request", &|b| {
        encode(
            2,
            &Request::Get {
                bucket: "shop_orders",
                key: "order-1",
                read: ReadOptions::default(),
            },
            b,
        )
    });
    add("get response", &|b| {
        encode_ok(b, 2, &Body::Entry(Some(e.as_ref()), FRESH))
    });
    add("get response, key absent", &|b| {
        encode_ok(b, 2, &Body::Entry(None, FRESH))
    });
    add("put request with expect_revision", &|b| {
        encode(
            3,
            &Request::Put {
                bucket: "shop_orders",
                key: "order-1",
                value: b"{\"id\":1}",
                write: WriteOptions::expecting(Some(0)),
            },
            b,
        )
    });
    add("put response", &|b| encode_ok(b, 3, &Body::Revision(3)));
    add("wrong_revision error", &|b| {
        let error = Error::new(ErrorCode::WrongRevision, "conflict");
        encode_error(
            b,
            3,
            &Error {
                current_revision: Some(3),
                ..error
            },
        )
    });
    add("watch event", &|b| {
        encode_watch(b, 4, WatchMessage::Event(&e))
    });
    add("watch synced", &|b| {
        encode_watch(b, 4, WatchMessage::Synced)
    });
    add("watch end", &|b| {
        encode_watch(b, 4, WatchMessage::End(None))
    });
    out
}

/// The vector as docs/PROTOCOL.md lays it out: 16 bytes a line.
fn doc_block(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|chunk| {
            chunk
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_protocol_doc_holds_the_current_test_vectors() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    for (name, bytes) in vectors() {
        let block = doc_block(&bytes);
        // On failure the message holds the block to paste into the doc.
        assert!(
            doc.contains(&format!("```\n{block}\n```")),
            "docs/PROTOCOL.md lacks the vector for {name}; it is now:\n```\n{block}\n```"
        );
    }
}
