//! A 3-node JetStream cluster loses the leader of the bucket's stream under write load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearkv::config::BucketConfig;
use nearkv::protocol::{ReadOptions, WriteOptions};

use crate::harness::{NatsCluster, Sidecar};

#[derive(Default)]
struct Writes {
    acknowledged: HashMap<String, (u64, String)>,
    failed: HashMap<String, usize>,
    /// When each acknowledgement arrived.
    acked_at: Vec<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_no_acknowledged_write_and_mirrors_match_nats() {
    let mut cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    let config = BucketConfig {
        replicas: 3,
        ..crate::harness::bucket("cl")
    };
    // Two sidecars, each given all three URLs, each preferring a different node.
    let mut sidecars = Vec::new();
    for first in 0..2 {
        let mut servers = urls.clone();
        servers.rotate_left(first);
        let sidecar = Sidecar::start_with(&urls[0], vec![config.clone()], |c| {
            c.nats.servers = servers;
            c.nats.retain_servers_order = true;
        })
        .await;
        sidecar.synced_client().await;
        sidecars.push(sidecar);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let read_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for (s, sidecar) in sidecars.iter().enumerate() {
        for w in 0..2 {
            let client = sidecar.client().await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut writes = Writes::default();
                let mut n = 0;
                let options = WriteOptions {
                    timeout_ms: Some(3000),
                    ..WriteOptions::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("s{s}w{w}-{n}");
                    let value = format!("{n}");
                    match client.put_with("cl", &key, value.as_bytes(), options).await {
                        Ok(rev) => {
                            writes.acknowledged.insert(key, (rev, value));
                            writes.acked_at.push(Instant::now());
                        }
                        Err(err) => {
                            let code = err
                                .server_error()
                                .map_or("client".to_string(), |e| e.code.as_str().to_string());
                            *writes.failed.entry(code).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                writes
            }));
        }
        // A reader per sidecar: cached reads never fail while at least one node is up.
        let client = sidecar.client().await;
        let (stop, failures) = (stop.clone(), read_failures.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if client.get("cl", "s0w0-1").await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Writes::default()
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let js = async_nats::jetstream::new(async_nats::connect(urls.as_slice()).await.unwrap());
    let leader = crate::harness::stream_leader(&js, "KV_cl").await;
    cluster.node(&leader).stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.node(&leader).restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acknowledged = HashMap::new();
    let mut failed: HashMap<String, usize> = HashMap::new();
    let mut acked_at = Vec::new();
    for writer in writers {
        let writes = writer.await.unwrap();
        acknowledged.extend(writes.acknowledged);
        acked_at.extend(writes.acked_at);
        for (code, count) in writes.failed {
            *failed.entry(code).or_default() += count;
        }
    }
    acked_at.sort();
    let longest_gap = acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();

    // Every acknowledged write is on the server (asked of any node, as a plain NATS client).
    // The checks below are this test's own NATS reads: the cluster may still be settling after the
    // restart, so each is retried for a while (the sidecars are not involved).
    let kv = settled(|| js.get_key_value("cl")).await;
    let mut lost = Vec::new();
    for (key, (rev, value)) in &acknowledged {
        match settled(|| kv.entry(key)).await {
            Some(e) if e.revision == *rev && e.value == value.as_bytes() => {}
            other => lost.push(format!("{key}@{rev}: NATS has {other:?}")),
        }
    }
    // Both mirrors equal the server's state, key for key.
    let server_last = settled(|| js.get_stream("KV_cl"))
        .await
        .cached_info()
        .state
        .last_sequence;
    let mut server_keys: Vec<String> = settled(|| async {
        use futures::TryStreamExt;
        let keys = kv.keys().await.map_err(|e| e.to_string())?;
        keys.try_collect().await.map_err(|e| e.to_string())
    })
    .await;
    server_keys.sort();
    let mut diverged = Vec::new();
    for (i, sidecar) in sidecars.iter().enumerate() {
        let client = sidecar.client().await;
        let read = ReadOptions {
            min_revision: Some(server_last),
            timeout_ms: Some(30_000),
            ..ReadOptions::default()
        };
        let keys: Vec<&str> = server_keys.iter().map(String::as_str).collect();
        let entries = client.mget("cl", &keys, read).await.unwrap();
        for (key, entry) in keys.iter().zip(entries) {
            let server = settled(|| kv.entry(*key)).await;
            let same = match (&entry, &server) {
                (Some(m), Some(s)) => m.revision == s.revision && m.value == s.value,
                _ => false,
            };
            if !same {
                diverged.push(format!("sidecar {i}: {key}: {entry:?} vs {server:?}"));
            }
        }
        let mirror_keys = client.keys("cl", None, false).await.unwrap();
        if mirror_keys != server_keys {
            diverged.push(format!(
                "sidecar {i}: {} keys, NATS {}",
                mirror_keys.len(),
                server_keys.len()
            ));
        }
    }
    println!(
        "3-node cluster, stream leader {leader} SIGKILLed 2 s into the load and restarted 4 s later: \
         {} writes acknowledged, failed by code {failed:?}, longest write unavailability {} ms, \
         acknowledged writes lost {}, mirrors diverged {}, cached reads failed {}",
        acknowledged.len(),
        longest_gap.as_millis(),
        lost.len(),
        diverged.len(),
        read_failures.load(Ordering::Relaxed)
    );
    assert!(lost.is_empty(), "{lost:?}");
    assert!(diverged.is_empty(), "{diverged:?}");
    assert_eq!(read_failures.load(Ordering::Relaxed), 0);
    assert!(acknowledged.len() > 100, "the load ran");
}

/// Retries one of the test's own NATS requests until it succeeds, for up to 30 s.
async fn settled<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut request: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match request().await {
            Ok(value) => return value,
            Err(err) if Instant::now() < deadline => {
                eprintln!("retrying a NATS request while the cluster settles: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("NATS did not answer within 30 s: {err:?}"),
        }
    }
}
