//! A sidecar's own NATS node dies: the sidecar must be current and writable again as soon as the
//! cluster is, measured against a direct NATS client on the same cluster in the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nearkv::config::BucketConfig;
use nearkv::protocol::{ReadOptions, WriteOptions};

use crate::harness::{NatsCluster, Sidecar};

/// How far behind the direct client the sidecar may be back (the bound).
const ALLOWED_LAG: Duration = Duration::from_millis(1500);

/// Successful writes: (invoked, completed, key, revision, value).
type Acked = Arc<Mutex<Vec<(Instant, Instant, String, u64, String)>>>;

/// Failed writes: (invoked, completed, code, sent).
type Failed = Arc<Mutex<Vec<(Instant, Instant, String, Option<bool>)>>>;

struct Recovery {
    direct_back: Duration,
    sidecar_writable: Duration,
    sidecar_current: Duration,
    acknowledged: usize,
    /// Sidecar writes in flight at the kill that failed, and the longest any of them took to
    /// fail after the kill.
    in_flight_failed: usize,
    slowest_failure: Duration,
}

/// Which node the sidecar is connected to, and so which one dies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// A node that leads neither the stream nor the JetStream cluster (its meta layer).
    Follower,
    /// The stream's leader.
    StreamLeader,
    /// The meta leader, which the stream's leader is not: creating a consumer must wait for a
    /// new meta leader, while the stream stays writable.
    MetaLeader,
}

/// Kills the node the sidecar is connected to and measures, from the kill, when a direct client
/// and the sidecar can write again and when the sidecar's mirror is confirmed current again.
///
/// `direct_gets`: whether the bucket's stream allows direct gets, as every client but nats-py
/// creates it; without them the mirror catches up through the stream leader.
async fn kill_the_sidecars_node(victim: Victim, direct_gets: bool) -> Recovery {
    let mut cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    let js = async_nats::jetstream::new(async_nats::connect(urls.as_slice()).await.unwrap());
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "fo".to_string(),
        history: 1,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    if !direct_gets {
        let mut config = js
            .get_stream("KV_fo")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        config.allow_direct = false;
        js.update_stream(config).await.unwrap();
    }
    let index = |name: String| -> usize { name.trim_start_matches('n').parse().unwrap() };
    let mut stream_leader = index(crate::harness::stream_leader(&js, "KV_fo").await);
    let mut meta_leader = index(cluster.meta_leader().await);
    // Move the stream's leadership off the meta leader when the two must differ.
    while victim != Victim::StreamLeader && stream_leader == meta_leader {
        let _ = js
            .request::<_, _, serde_json::Value>(
                "STREAM.LEADER.STEPDOWN.KV_fo",
                &serde_json::json!({}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream_leader = index(crate::harness::stream_leader(&js, "KV_fo").await);
        meta_leader = index(cluster.meta_leader().await);
    }
    let target = match victim {
        Victim::StreamLeader => stream_leader,
        Victim::MetaLeader => meta_leader,
        Victim::Follower => (0..3)
            .find(|&i| i != stream_leader && i != meta_leader)
            .expect("a node that leads nothing"),
    };
    let others: Vec<String> = (0..3)
        .filter(|&i| i != target)
        .map(|i| urls[i].clone())
        .collect();
    // The sidecar is given only its node's URL, as a pod given its local node would be; it
    // learns the others from the cluster.
    let config = BucketConfig {
        replicas: 3,
        history: 1,
        ..crate::harness::bucket("fo")
    };
    let sidecar = Sidecar::start_with(&urls[target], vec![config], |c| {
        c.nats.request_timeout = Duration::from_secs(2);
    })
    .await;
    let client = sidecar.synced_client().await;
    let direct = async_nats::jetstream::new(async_nats::connect(others.as_slice()).await.unwrap());
    let direct_kv = direct.get_key_value("fo").await.unwrap();

    // Each writer starts a write every 20 ms without waiting for the previous one, so a write
    // stuck until its timeout during the failover does not hide when writing works again.
    let stop = Arc::new(AtomicBool::new(false));
    let (direct_acks, sidecar_acks): (Acked, Acked) = Default::default();
    let direct_writer = {
        let (stop, acks) = (stop.clone(), direct_acks.clone());
        tokio::spawn(every_20_ms(stop, move |n| {
            let (acks, kv) = (acks.clone(), direct_kv.clone());
            async move {
                let (key, value) = (format!("d{}", n % 20), format!("d{n}"));
                let invoked = Instant::now();
                let put = tokio::time::timeout(
                    Duration::from_secs(3),
                    kv.put(&key, value.clone().into()),
                );
                if let Ok(Ok(rev)) = put.await {
                    acks.lock()
                        .unwrap()
                        .push((invoked, Instant::now(), key, rev, value));
                }
            }
        }))
    };
    let sidecar_failures: Failed = Default::default();
    let sidecar_writer = {
        let (stop, acks, client) = (stop.clone(), sidecar_acks.clone(), client.clone());
        let failures = sidecar_failures.clone();
        tokio::spawn(every_20_ms(stop, move |n| {
            let (acks, client, failures) = (acks.clone(), client.clone(), failures.clone());
            async move {
                let (key, value) = (format!("s{}", n % 20), format!("s{n}"));
                let write = WriteOptions {
                    timeout_ms: Some(3000),
                    ..WriteOptions::default()
                };
                let invoked = Instant::now();
                match client.put_with("fo", &key, value.as_bytes(), write).await {
                    Ok(rev) => {
                        acks.lock()
                            .unwrap()
                            .push((invoked, Instant::now(), key, rev, value))
                    }
                    Err(err) => failures.lock().unwrap().push((
                        invoked,
                        Instant::now(),
                        err.code().to_string(),
                        err.server_error().and_then(|e| e.sent),
                    )),
                }
            }
        }))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    cluster.nodes[target].stop();
    // The mirror's age, polled: when it is back under one check interval (1 s) for good.
    let mut current_since: Option<Instant> = None;
    let watch_until = killed + Duration::from_secs(15);
    while Instant::now() < watch_until {
        let status = client.status(Some("fo")).await.unwrap();
        let fresh = status[0].age_ms.is_some_and(|age| age < 1000);
        match (fresh, current_since) {
            (true, None) => current_since = Some(Instant::now()),
            (false, Some(_)) => current_since = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    direct_writer.await.unwrap();
    sidecar_writer.await.unwrap();
    // The writes still in flight end within their 3 s timeouts.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let back = |acks: &Acked| {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|(invoked, ..)| *invoked > killed)
            .map(|(_, completed, ..)| *completed - killed)
            .min()
            .expect("writes succeeded after the kill")
    };
    // A write in flight when the sidecar's connection dropped fails at once, saying whether it
    // may have been stored; it does not wait for its 3 s timeout.
    let in_flight: Vec<_> = sidecar_failures
        .lock()
        .unwrap()
        .iter()
        .filter(|(invoked, completed, ..)| *invoked < killed && *completed > killed)
        .cloned()
        .collect();
    // (`sent: false` for one that reached the sidecar after the connection was already gone.)
    for (_, completed, code, sent) in &in_flight {
        assert!(
            code == "unavailable" && sent.is_some(),
            "a write in flight at the kill failed with {code}, sent {sent:?}"
        );
        assert!(
            *completed - killed < Duration::from_millis(1000),
            "a write in flight at the kill took {:?} to fail",
            *completed - killed
        );
    }
    let slowest_failure = in_flight
        .iter()
        .map(|(_, completed, ..)| *completed - killed)
        .max()
        .unwrap_or_default();
    let direct_back = back(&direct_acks);
    let sidecar_writable = back(&sidecar_acks);
    let sidecar_current = current_since.expect("the mirror became current again") - killed;

    // Nothing acknowledged is lost, and the mirror equals NATS.
    let kv = direct.get_key_value("fo").await.unwrap();
    let last = direct
        .get_stream("KV_fo")
        .await
        .unwrap()
        .cached_info()
        .state
        .last_sequence;
    let mut latest = std::collections::HashMap::new();
    let acks: Vec<_> = direct_acks
        .lock()
        .unwrap()
        .iter()
        .chain(sidecar_acks.lock().unwrap().iter())
        .cloned()
        .collect();
    for (_, _, key, rev, value) in &acks {
        let slot = latest.entry(key.clone()).or_insert((0, String::new()));
        if *rev > slot.0 {
            *slot = (*rev, value.clone());
        }
    }
    let read = ReadOptions {
        min_revision: Some(last),
        timeout_ms: Some(20_000),
        ..ReadOptions::default()
    };
    for (key, (rev, value)) in &latest {
        let server = kv.entry(key).await.unwrap().expect("the key is in NATS");
        assert!(
            server.revision >= *rev,
            "{key}: acknowledged at {rev}, NATS has {}",
            server.revision
        );
        if server.revision == *rev {
            assert_eq!(server.value, value.as_bytes(), "{key}");
        }
        let mirrored = client
            .get_with("fo", key, read)
            .await
            .unwrap()
            .expect("mirrored");
        assert_eq!(
            (mirrored.revision, &mirrored.value),
            (server.revision, &server.value),
            "{key}: the mirror differs from NATS"
        );
    }
    Recovery {
        direct_back,
        sidecar_writable,
        sidecar_current,
        acknowledged: acks.len(),
        in_flight_failed: in_flight.len(),
        slowest_failure,
    }
}

/// Starts `write(n)` every 20 ms until `stop`, each in its own task.
async fn every_20_ms<F, Fut>(stop: Arc<AtomicBool>, write: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        n += 1;
        tokio::spawn(write(n));
    }
}

fn report(what: &str, r: &Recovery) {
    println!(
        "failover, {what}: after the kill a direct client wrote again at {} ms, the sidecar at {} \
         ms, and its mirror was current again at {} ms; {} sidecar writes in flight at the kill \
         failed unavailable within {} ms; {} writes acknowledged, none lost, \
         mirror equal to NATS",
        r.direct_back.as_millis(),
        r.sidecar_writable.as_millis(),
        r.sidecar_current.as_millis(),
        r.in_flight_failed,
        r.slowest_failure.as_millis(),
        r.acknowledged
    );
    assert!(
        r.sidecar_writable <= r.direct_back + ALLOWED_LAG,
        "{what}: the sidecar was writable {} ms after the direct client",
        (r.sidecar_writable - r.direct_back).as_millis()
    );
    assert!(
        r.sidecar_current <= r.direct_back + ALLOWED_LAG,
        "{what}: the mirror was current {} ms after the direct client could write",
        r.sidecar_current.saturating_sub(r.direct_back).as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_node_dies_while_another_leads_the_stream() {
    let recovery = kill_the_sidecars_node(Victim::Follower, true).await;
    report("the sidecar's node (leading nothing)", &recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_node_dies_and_it_led_the_jetstream_cluster_but_not_the_stream() {
    let recovery = kill_the_sidecars_node(Victim::MetaLeader, true).await;
    report(
        "the sidecar's node (the meta leader, not the stream's)",
        &recovery,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_node_dies_and_it_led_the_jetstream_cluster_and_the_bucket_has_no_direct_gets()
{
    let recovery = kill_the_sidecars_node(Victim::MetaLeader, false).await;
    report(
        "the sidecar's node (the meta leader, not the stream's), a bucket without direct gets",
        &recovery,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_node_dies_and_it_led_the_stream() {
    let recovery = kill_the_sidecars_node(Victim::StreamLeader, true).await;
    report("the sidecar's node, which led the stream", &recovery);
}
