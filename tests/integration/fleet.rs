//! What one client can do to the others (nothing), and the limits the spec states exactly:
//! hostile keys, filters and values; the largest value and key NATS accepts; slow readers;
//! shutdown with a client that never reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use nearkv::client::WatchEvent;
use nearkv::protocol::WriteOptions;
use nearkv::ErrorCode;

use crate::harness::{bucket, http_get, metric, NatsServer, Sidecar, SidecarProcess};
use crate::raw_socket::{frame, read_response, send_raw};

/// `$KV.<bucket>.` takes 4 + len(bucket) + 1 bytes of NATS's 4096-byte control line, and 256
/// are kept for the rest of the line (docs/PROTOCOL.md, "Keys").
fn max_key_length(bucket: &str) -> usize {
    4096 - 256 - (4 + bucket.len() + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_fail_another_clients_writes() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("h")]).await;
    let good = sidecar.synced_client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (good, stop) = (good.clone(), stop.clone());
        let (acked, failed) = (acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{w}.{}", n % 50);
                match good.put("h", &key, b"fine").await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        eprintln!("a good write failed: {err}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // The hostile client: keys and filters far past what NATS accepts, values past max_payload,
    // all pipelined in a loop (its watches match nothing, so they stay silent).
    let mut hostile = UnixStream::connect(&sidecar.socket).await.unwrap();
    let long = "L".repeat(5000);
    let too_long_key = "k".repeat(max_key_length("h") + 1);
    let huge = vec![b'x'; 1024 * 1024 + 1];
    let mut answers = 0;
    for round in 0..100u64 {
        let base = round * 10;
        let burst = [
            frame(&json!({"id": base + 1, "op": "put", "bucket": "h", "key": long, "value": "v"})),
            frame(&json!({"id": base + 2, "op": "put", "bucket": "h", "key": too_long_key,
                          "value": "v", "expect_revision": 0})),
            frame(&json!({"id": base + 3, "op": "delete", "bucket": "h", "key": long})),
            frame(&json!({"id": base + 4, "op": "purge", "bucket": "h", "key": too_long_key})),
            frame(&json!({"id": base + 5, "op": "keys", "bucket": "h", "filter": long})),
            frame(&json!({"id": base + 6, "op": "get", "bucket": "h", "key": long,
                          "consistency": "strong"})),
            frame(&json!({"id": base + 7, "op": "watch", "bucket": "h", "filter": format!("{long}.>")})),
            frame(&put_with_str_value(base + 8, "h", "big", &huge)),
        ]
        .concat();
        send_raw(&mut hostile, &burst).await;
        for _ in 0..8 {
            let answer = read_response(&mut hostile).await.expect("an answer");
            let id = answer["id"].as_u64().unwrap();
            let code = answer["error"]["code"].as_str().unwrap_or("ok").to_string();
            let message = answer["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            // Writes reach NATS and are refused before; reads, `keys` and `watch` are answered
            // from memory, where a long key or filter is only a miss.
            let expected = match id % 10 {
                8 => "value_too_large",
                5..=7 => "ok",
                _ => "invalid_key",
            };
            assert_eq!(code, expected, "request {id}: {answer}");
            assert!(
                message.len() < 400,
                "the error repeats the client's input: {} bytes",
                message.len()
            );
            if id % 10 == 2 {
                assert!(
                    message.contains(&max_key_length("h").to_string()),
                    "the message names the limit: {message}"
                );
            }
            answers += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let reconnects = metric(&sidecar.http, "nearkv_nats_reconnects_total").await;
    println!(
        "hostile client: {answers} oversized keys, filters and values refused or answered from \
         memory; the other client's writes: {} acknowledged, {} failed; NATS reconnects {reconnects}",
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(answers, 800);
    assert!(acked.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "another client's writes failed"
    );
    assert_eq!(
        metric(&sidecar.http, "nearkv_nats_reconnects_total").await,
        0,
        "the shared NATS connection was dropped"
    );
}

/// A put whose value travels as a str (JSON has no bytes; the spec allows a str value).
fn put_with_str_value(id: u64, bucket: &str, key: &str, value: &[u8]) -> serde_json::Value {
    json!({"id": id, "op": "put", "bucket": bucket, "key": key,
           "value": String::from_utf8(value.to_vec()).unwrap()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_key_and_value_nats_accepts_are_accepted_and_no_more() {
    let nats = NatsServer::start().await;
    let mut markers = bucket("big");
    markers.limit_markers = Duration::from_secs(1);
    let sidecar = Sidecar::start(&nats.url(), vec![markers]).await;
    let client = sidecar.synced_client().await;
    // Exactly max_payload (1 MiB by default) without headers: stored, and read back whole.
    let value = vec![7u8; 1024 * 1024];
    let rev = client.put("big", "v", &value).await.unwrap();
    let entry = client.get("big", "v").await.unwrap().unwrap();
    assert_eq!((entry.revision, entry.value.len()), (rev, value.len()));
    let nats_view = nats.kv("big").await.get("v").await.unwrap().unwrap();
    assert_eq!(nats_view.len(), value.len());
    // One byte more: refused with the exact limit.
    let err = client
        .put("big", "v", &vec![7u8; 1024 * 1024 + 1])
        .await
        .unwrap_err();
    let err = err.server_error().unwrap();
    assert_eq!(err.code, ErrorCode::ValueTooLarge);
    assert!(err.message.contains("at most 1048576"), "{}", err.message);
    // A compare-and-set carries a header, which counts against the same limit.
    let err = client
        .put_with("big", "v", &value, WriteOptions::expecting(Some(rev)))
        .await
        .unwrap_err();
    let err = err.server_error().unwrap();
    assert_eq!(err.code, ErrorCode::ValueTooLarge, "{}", err.message);
    assert!(err.message.contains("bytes of headers"), "{}", err.message);

    // The longest key: written, mirrored through the feed, read back; one byte more is refused.
    let key = "k".repeat(max_key_length("big"));
    let rev = client.put("big", &key, b"long").await.unwrap();
    assert_eq!(
        client.get("big", &key).await.unwrap().unwrap().revision,
        rev
    );
    let err = client
        .put("big", &format!("{key}k"), b"long")
        .await
        .unwrap_err();
    assert_eq!(err.server_error().unwrap().code, ErrorCode::InvalidKey);
    assert_eq!(
        metric(&sidecar.http, "nearkv_nats_reconnects_total").await,
        0
    );
}

/// A watch sees every surviving change of a key in order; values NATS discarded before the
/// sidecar read them are skipped, and counted for operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_revisions_are_counted_and_watches_converge_on_the_latest_value() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("sk")]).await;
    let client = sidecar.synced_client().await;
    let first = client.put("sk", "k", b"0").await.unwrap();
    let mut watch = client.watch("sk", None, false).await.unwrap();
    // 50 puts from another NATS client, as fast as it can, on a bucket keeping 5 per key.
    let kv = nats.kv("sk").await;
    let mut last = 0;
    for i in 1..=50u32 {
        last = kv.put("k", i.to_string().into()).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the latest value arrives")
            .unwrap()
            .unwrap();
        if let WatchEvent::Entry(entry) = item {
            seen.push(entry.revision);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {seen:?}"
    );
    let skipped = metric(
        &sidecar.http,
        "nearkv_mirror_revisions_skipped_total{bucket=\"sk\"}",
    )
    .await;
    assert_eq!(
        seen.len() as u64 + skipped,
        last - first,
        "every revision is either seen or counted as skipped"
    );
}

/// Stores a 256 KiB value in `bucket`, then asks for it 400 times on a new connection that never
/// reads an answer: 100 MB of responses, far more than the socket buffers hold.
async fn a_client_that_never_reads(
    client: &nearkv::Client,
    socket: &std::path::Path,
    bucket: &str,
) -> UnixStream {
    client
        .put(bucket, "big", &vec![1u8; 256 * 1024])
        .await
        .unwrap();
    let mut sleeper = UnixStream::connect(socket).await.unwrap();
    let ask: Vec<u8> = (1..=400u64)
        .flat_map(|id| frame(&json!({"id": id, "op": "get", "bucket": bucket, "key": "big"})))
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), sleeper.write_all(&ask)).await;
    sleeper
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_and_spares_the_others() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("slow")], |config| {
        config.socket.write_timeout = Duration::from_secs(1);
    })
    .await;
    let client = sidecar.synced_client().await;
    let _sleeper = a_client_that_never_reads(&client, &sidecar.socket, "slow").await;
    crate::harness::eventually(
        Duration::from_secs(10),
        "the sleeper to be cut off",
        || async { metric(&sidecar.http, "nearkv_slow_clients_disconnected_total").await == 1 },
    )
    .await;
    // The others were served throughout.
    for _ in 0..100 {
        assert!(client.get("slow", "big").await.unwrap().is_some());
    }
    assert_eq!(
        metric(&sidecar.http, "nearkv_socket_connections").await,
        1,
        "the sleeper's connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_despite_a_client_that_never_reads() {
    let nats = NatsServer::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("nearkv.toml");
    // A write timeout far longer than the grace period: only the grace period can end it.
    std::fs::write(
        &config,
        "[socket]\nwrite_timeout = \"120s\"\nshutdown_grace = \"2s\"\n",
    )
    .unwrap();
    let config = config.to_string_lossy().to_string();
    let mut sidecar = SidecarProcess::start(&nats.url(), &["grace"], &["--config", &config]).await;
    let client = nearkv::Client::connect(&sidecar.socket).await.unwrap();
    crate::harness::wait_synced(&client).await;
    let sleeper = a_client_that_never_reads(&client, &sidecar.socket, "grace").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let clean = tokio::time::timeout(Duration::from_secs(30), sidecar.terminate())
        .await
        .expect("the sidecar exits");
    let took = started.elapsed();
    println!(
        "shutdown with a client that never reads: exit 0 = {clean} after {took:?} (grace 2 s)"
    );
    assert!(clean, "exit status 0 after the grace period");
    assert!(
        took < Duration::from_secs(12),
        "SIGTERM took {took:?} with a 2 s grace period"
    );
    drop(sleeper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_is_forbidden_before_the_bucket_opens_and_healthz_needs_an_ok() {
    let nats = NatsServer::start().await;
    let mut missing = bucket("absent");
    missing.create = false;
    missing.read_only = true;
    let sidecar = Sidecar::start_with(&nats.url(), vec![missing], |config| {
        // Nobody may connect, the health probe included: it must say so, not report healthy.
        config.socket.allow_uids = vec![u32::MAX - 7];
    })
    .await;
    let (status, body) = http_get(&sidecar.http, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    sidecar.stop().await;

    let mut missing = bucket("absent");
    missing.create = false;
    missing.read_only = true;
    let sidecar = Sidecar::start(&nats.url(), vec![missing]).await;
    let client = sidecar.client().await;
    let err = client.put("absent", "k", b"v").await.unwrap_err();
    assert_eq!(err.server_error().unwrap().code, ErrorCode::Forbidden);
    let err = client
        .delete("absent", "k", WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.server_error().unwrap().code, ErrorCode::Forbidden);
}

/// What the spec now says about edge cases, checked against the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_cases_the_spec_names_behave_as_it_says() {
    let nats = NatsServer::start().await;
    let mut filtered = bucket("f");
    filtered.filter = "orders.>".to_string();
    let sidecar = Sidecar::start(&nats.url(), vec![filtered]).await;
    let client = sidecar.synced_client().await;
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();
    // A put outside the mirror's filter is stored (and not waited for); a read of it is refused.
    let bytes = frame(&json!({"id": 1, "op": "put", "bucket": "f", "key": "other", "value": "v"}));
    send_raw(&mut raw, &bytes).await;
    let answer = read_response(&mut raw).await.unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(nats.kv("f").await.get("other").await.unwrap().is_some());
    let bytes = frame(&json!({"id": 2, "op": "get", "bucket": "f", "key": "other"}));
    send_raw(&mut raw, &bytes).await;
    assert_eq!(
        read_response(&mut raw).await.unwrap()["error"]["code"],
        "bad_request"
    );
    // `keys` and `watch` with filter "" are invalid_key; nil means every key.
    for (id, op) in [(3, "keys"), (4, "watch")] {
        let bytes = frame(&json!({"id": id, "op": op, "bucket": "f", "filter": ""}));
        send_raw(&mut raw, &bytes).await;
        assert_eq!(
            read_response(&mut raw).await.unwrap()["error"]["code"],
            "invalid_key"
        );
    }
    let bytes = frame(&json!({"id": 5, "op": "keys", "bucket": "f", "filter": null}));
    send_raw(&mut raw, &bytes).await;
    assert_eq!(read_response(&mut raw).await.unwrap()["ok"], true);
    // timeout_ms 0: a write is still stored; a wait that is not already satisfied is `timeout`.
    let bytes = frame(
        &json!({"id": 6, "op": "get", "bucket": "f", "key": "orders.1",
                           "min_revision": 1_000_000, "timeout_ms": 0}),
    );
    send_raw(&mut raw, &bytes).await;
    assert_eq!(
        read_response(&mut raw).await.unwrap()["error"]["code"],
        "timeout"
    );
    let bytes = frame(
        &json!({"id": 7, "op": "put", "bucket": "f", "key": "orders.1",
                           "value": "v", "timeout_ms": 0}),
    );
    send_raw(&mut raw, &bytes).await;
    let answer = read_response(&mut raw).await.unwrap();
    let stored = match answer["ok"].as_bool() {
        Some(true) => answer["revision"].as_u64().unwrap(),
        _ => {
            assert_eq!(answer["error"]["code"], "timeout", "{answer}");
            assert_eq!(answer["error"]["sent"], true, "{answer}");
            answer["error"]["revision"].as_u64().unwrap()
        }
    };
    let entry = nats.kv("f").await.entry("orders.1").await.unwrap().unwrap();
    assert_eq!(entry.revision, stored);
    drop(client);
}
