//! Micro-benchmarks of what a cached `get` costs the sidecar: parsing the frame, reading the
//! mirror, encoding the response. `cargo bench --bench read_path`; CI runs it in test mode.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nearkv::cache::Mirror;
use nearkv::protocol::frame::{check, FrameCheck};
use nearkv::protocol::request::{encode, parse, Request};
use nearkv::protocol::response::{encode_ok, Body};
use nearkv::protocol::{Entry, Freshness, Operation, ReadOptions};

const KEYS: usize = 100_000;

fn mirror() -> Mirror {
    Mirror::loaded((0..KEYS).map(|i| Entry {
        key: format!("key-{i:07}"),
        value: Bytes::from(vec![b'x'; 100]),
        revision: i as u64 + 1,
        created: 1_700_000_000_000_000_000,
        operation: Operation::Put,
    }))
}

/// What the server reads of the mirror's freshness for every read.
fn freshness(mirror: &Mirror) -> Freshness {
    Freshness {
        revision: mirror.applied(),
        age_ms: mirror.age().map_or(0, |age| age.as_millis() as u64),
    }
}

fn get_frame(key: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    let request = Request::Get {
        bucket: "shop_orders",
        key,
        read: ReadOptions::default(),
    };
    encode(42, &request, &mut frame);
    frame
}

fn benches(c: &mut Criterion) {
    let mirror = mirror();
    let mut group = c.benchmark_group("read_path");
    group.throughput(Throughput::Elements(1));

    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:07}")).collect();
    group.bench_function("mirror_get_bytes_clone_random_key", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(mirror.get(black_box(&keys[i])).map(|e| e.value))
        })
    });
    group.bench_function("mirror_read_random_key", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(mirror.read(black_box(&keys[i]), |e| e.map(|e| e.value.len())))
        })
    });

    let frame = get_frame("key-0012345");
    group.bench_function("frame_check_and_parse_get", |b| {
        b.iter(|| {
            let FrameCheck::Complete(len) = check(black_box(&frame), 4 << 20) else {
                unreachable!("a whole frame")
            };
            black_box(parse(&frame[4..4 + len]).is_ok())
        })
    });

    let mut out = Vec::with_capacity(4096);
    group.bench_function("encode_get_response_from_mirror", |b| {
        b.iter(|| {
            out.clear();
            mirror.read(black_box("key-0012345"), |entry| {
                encode_ok(&mut out, 42, &Body::Entry(entry, freshness(&mirror)))
            });
            black_box(out.len())
        })
    });

    group.bench_function("dispatch_get_parse_read_encode", |b| {
        b.iter(|| {
            out.clear();
            if let Ok((id, Request::Get { key, .. })) = parse(black_box(&frame[4..])) {
                let fresh = freshness(&mirror);
                mirror.read(key, |entry| {
                    encode_ok(&mut out, id, &Body::Entry(entry, fresh))
                });
            }
            black_box(out.len())
        })
    });

    group.bench_function("encode_get_request", |b| {
        b.iter(|| {
            out.clear();
            let request = Request::Get {
                bucket: "shop_orders",
                key: black_box("key-0012345"),
                read: ReadOptions::default(),
            };
            encode(7, &request, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(read_path, benches);
criterion_main!(read_path);
