//! Faults around the sidecar itself: restarted under load, watched by a client that never reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nearkv::client::{ClientError, ClientOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{eventually, metric, NatsServer, SidecarProcess};
use crate::raw_socket::{frame, read_response, send_raw};

/// What a writer saw of each of its writes.
#[derive(Default)]
struct Tally {
    acknowledged: HashMap<String, (u64, String)>,
    failed: HashMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_request_loses_no_acknowledged_write_and_clients_reconnect() {
    let nats = NatsServer::start().await;
    let mut sidecar = SidecarProcess::start(&nats.url(), &["r"], &[]).await;
    let options = ClientOptions {
        reconnect_attempts: 200,
        reconnect_backoff: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
    };
    let client = nearkv::client::Client::connect_with(&sidecar.socket, options)
        .await
        .unwrap();
    crate::harness::wait_synced(&client).await;
    let no_retry = nearkv::client::Client::connect_with(
        &sidecar.socket,
        ClientOptions {
            reconnect_attempts: 0,
            ..options
        },
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}-{n}");
                    let value = format!("value {n}");
                    match client.put("r", &key, value.as_bytes()).await {
                        Ok(rev) => {
                            tally.acknowledged.insert(key, (rev, value));
                        }
                        Err(err) => {
                            let kind = match err.server_error() {
                                Some(e) => e.code.as_str().to_string(),
                                None => format!("{err:?}")
                                    .split(['(', ' ', '{'])
                                    .next()
                                    .unwrap_or("?")
                                    .to_string(),
                            };
                            *tally.failed.entry(kind).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                tally
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        sidecar.terminate().await,
        "a clean exit on SIGTERM, mid-request"
    );
    assert!(!sidecar.socket.exists(), "the socket file is removed");
    // While it is away, a client told not to reconnect says so at once.
    match no_retry.ping().await {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.restart().await;
    // The shared client reconnects by itself: writes are acknowledged again.
    let before = client
        .status(Some("r"))
        .await
        .map(|s| s[0].revision)
        .unwrap_or(0);
    eventually(
        Duration::from_secs(20),
        "writes acknowledged after the restart",
        || async {
            client
                .status(Some("r"))
                .await
                .is_ok_and(|s| s[0].synced && s[0].revision > before + 10)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = HashMap::new();
    let mut failed: HashMap<String, usize> = HashMap::new();
    for writer in writers {
        let tally = writer.await.unwrap();
        acknowledged.extend(tally.acknowledged);
        for (kind, count) in tally.failed {
            *failed.entry(kind).or_default() += count;
        }
    }

    // Every acknowledged write is in NATS, at its revision, byte for byte.
    let kv = nats.kv("r").await;
    let mut lost = Vec::new();
    for (key, (rev, value)) in &acknowledged {
        match kv.entry(key).await.unwrap() {
            Some(entry) if entry.revision == *rev && entry.value == value.as_bytes() => {}
            other => lost.push(format!("{key}: acknowledged {rev}, NATS has {other:?}")),
        }
    }
    println!(
        "sidecar SIGTERM under load: {} writes acknowledged, failed by kind {failed:?}, lost {}",
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acknowledged.len() > 20);
    let after_restart = client.get("r", "w0-1").await.unwrap();
    assert!(
        after_restart.is_some(),
        "reads work through the reconnected client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_cannot_grow_the_sidecar_and_ends_slow_consumer() {
    const UPDATES: usize = 100_000;
    let nats = NatsServer::start().await;
    let (sidecar, client) = patient_sidecar(&nats, "slow").await;
    // The slow client: opens watches on its own connection, then reads nothing.
    let mut slow = tokio::net::UnixStream::connect(&sidecar.socket)
        .await
        .unwrap();
    for id in 1..=4 {
        let watch = json!({"id": id, "op": "watch", "bucket": "slow"});
        send_raw(&mut slow, &frame(&watch)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = sidecar.peak_rss();

    // 100,000 updates of 1 KiB, from another NATS client, 64 in flight at a time.
    let kv = nats.kv("slow").await;
    let value = bytes::Bytes::from(vec![b'x'; 1024]);
    futures::stream::iter(0..UPDATES)
        .map(|i| {
            let kv = kv.clone();
            let value = value.clone();
            async move { kv.put(format!("k{}", i % 1000), value).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    // Another client is unaffected meanwhile, and the mirror has everything.
    let last = kv.status().await.unwrap().info.state.last_sequence;
    let read = nearkv::protocol::ReadOptions {
        min_revision: Some(last),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    assert!(client.get_with("slow", "k1", read).await.unwrap().is_some());
    // 100,000 KiB went through; a sidecar that buffered them for the watcher would hold ~100 MiB
    // per watch. Bounded: the mirror (1000 keys), the event ring and the connection's queues.
    let what = format!("slow watcher: 4 unread watches, {UPDATES} updates of 1 KiB");
    assert_peak_rss_within(&sidecar, baseline, 64, &what);

    // When the slow client reads at last, each watch ends with slow_consumer, and the
    // connection still answers.
    let mut ended = Vec::new();
    let mut events = 0;
    while ended.len() < 4 {
        let message = read_response(&mut slow)
            .await
            .expect("the connection stays open");
        if message["end"] == true {
            ended.push((message["id"].clone(), message["error"]["code"].clone()));
        } else if message.get("event").is_some() {
            events += 1;
        }
    }
    println!("slow watcher: read {events} events before the ends: {ended:?}");
    for (_, code) in &ended {
        assert_eq!(code, "slow_consumer", "{ended:?}");
    }
    send_raw(&mut slow, &frame(&json!({"id": 99, "op": "ping"}))).await;
    assert_eq!(read_response(&mut slow).await.unwrap()["ok"], true);
}

/// A client that pipelines requests with large answers (reads of a 1 MB value, waiting or not,
/// listings of a 12,000-key bucket) and reads nothing: the sidecar stops reading its requests
/// once a write's worth of answers waits for it, makes a few waiting reads' answers at a time and
/// lists one request at a time for it, instead of answering everything into memory. Another client is served meanwhile, and the greedy one gets its
/// answers once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_large_answers_and_reads_none_cannot_grow_the_sidecar() {
    let nats = NatsServer::start().await;
    let (sidecar, client) = patient_sidecar(&nats, "greedy").await;
    let kv = nats.kv("greedy").await;
    futures::stream::iter(0..12_000)
        .map(|i| {
            let kv = kv.clone();
            async move { kv.put(format!("key.{i}"), "v".into()).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let huge = vec![b'x'; 1_000_000];
    let last = client.put("greedy", "huge", &huge).await.unwrap();
    let baseline = sidecar.peak_rss();

    // 300 reads of the 1 MB value that wait for its revision and 500 that do not (800 MB of
    // answers), then 200 listings (about 28 MB).
    let mut burst = Vec::new();
    for id in 1..=300 {
        let get = json!({"id": id, "op": "get", "bucket": "greedy", "key": "huge",
                         "min_revision": last});
        burst.extend(frame(&get));
    }
    for id in 301..=800 {
        let get = json!({"id": id, "op": "get", "bucket": "greedy", "key": "huge"});
        burst.extend(frame(&get));
    }
    for id in 801..=1000 {
        burst.extend(frame(&json!({"id": id, "op": "keys", "bucket": "greedy"})));
    }
    let greedy = tokio::net::UnixStream::connect(&sidecar.socket)
        .await
        .unwrap();
    let (mut reader, mut writer) = greedy.into_split();
    // Sent from a task of its own: the sidecar stops reading, so the send itself waits.
    let sending = tokio::spawn(async move {
        writer.write_all(&burst).await.unwrap();
        writer
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_peak_rss_within(&sidecar, baseline, 48, "greedy client");
    let read = nearkv::protocol::ReadOptions {
        min_revision: Some(last),
        ..Default::default()
    };
    let entry = client.get_with("greedy", "huge", read).await.unwrap();
    assert_eq!(
        entry.unwrap().value.len(),
        huge.len(),
        "another client is served"
    );

    // The greedy client reads at last: every answer arrives.
    let mut answered = 0;
    let mut len = [0u8; 4];
    while answered < 1000 {
        reader.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut body).await.unwrap();
        answered += 1;
    }
    sending.await.unwrap();
}

/// Waiting `mget`s of 64 MB each, unread: their answers are made a few at a time, weighed by the
/// size they could reach, so that they hold about 64 MiB (16 at a time held 1 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_of_waiting_mgets_are_made_by_size_not_only_by_count() {
    let nats = NatsServer::start().await;
    let (sidecar, client) = patient_sidecar(&nats, "large").await;
    let value = vec![b'x'; 1_000_000];
    let mut last = 0;
    for i in 0..64 {
        last = client.put("large", &format!("v{i}"), &value).await.unwrap();
    }
    let baseline = sidecar.peak_rss();
    let keys: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
    let mut burst = Vec::new();
    for id in 1..=20 {
        let mget = json!({"id": id, "op": "mget", "bucket": "large", "keys": keys,
                          "min_revision": last});
        burst.extend(frame(&mget));
    }
    let greedy = tokio::net::UnixStream::connect(&sidecar.socket)
        .await
        .unwrap();
    let (mut reader, mut writer) = greedy.into_split();
    writer.write_all(&burst).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_peak_rss_within(&sidecar, baseline, 192, "unread waiting mgets");

    // Read at last, every answer arrives whole.
    let mut len = [0u8; 4];
    for _ in 0..20 {
        reader.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut body).await.unwrap();
        assert!(body.len() > 64 * value.len(), "all 64 values");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_recreated_from_the_last_applied_revision() {
    let nats = NatsServer::start().await;
    let sidecar =
        crate::harness::Sidecar::start(&nats.url(), vec![crate::harness::bucket("c")]).await;
    let client = sidecar.synced_client().await;
    client.put("c", "before", b"1").await.unwrap();
    let restarts_before =
        metric(&sidecar.http, "nearkv_watcher_restarts_total{bucket=\"c\"}").await;

    // Delete the server-side consumer behind the sidecar's feed, as an operator might by mistake.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("KV_c").await.unwrap();
    let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names.len(), 1, "one consumer: the sidecar's feed");
    assert!(stream.delete_consumer(&names[0]).await.unwrap().success);

    // Writes by another client keep reaching the mirror, in order, none lost.
    let other = nats.kv("c").await;
    let mut last = 0;
    let deleted = std::time::Instant::now();
    for i in 0..5 {
        last = other.put(format!("after{i}"), "v".into()).await.unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "the mirror to catch up after the loss",
        || async { client.status(Some("c")).await.unwrap()[0].revision >= last },
    )
    .await;
    let caught_up = deleted.elapsed();
    let keys = client.keys("c", None, false).await.unwrap();
    assert_eq!(
        keys,
        ["after0", "after1", "after2", "after3", "after4", "before"]
    );
    let restarts = metric(&sidecar.http, "nearkv_watcher_restarts_total{bucket=\"c\"}").await;
    assert!(
        restarts > restarts_before,
        "the restart is counted ({restarts_before} -> {restarts})"
    );
    // The consumer's missed heartbeats would tell after 7.5 to 15 s; the stream checker notices
    // sooner that the stream moved on while the feed delivered nothing.
    println!(
        "consumer deleted: mirror caught up to revision {last} {} ms after the deletion; watcher \
         restarts {restarts}",
        caught_up.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_nats_connection_heals_without_a_restart_and_loses_no_change() {
    let nats = NatsServer::start().await;
    let proxy = crate::harness::Proxy::start(nats.port).await;
    let sidecar =
        crate::harness::Sidecar::start(&proxy.url(), vec![crate::harness::bucket("cut")]).await;
    let client = sidecar.synced_client().await;
    let first = client.put("cut", "k", b"0").await.unwrap();
    let mut watch = client.watch("cut", None, false).await.unwrap();

    // The network breaks: connections dropped, new ones refused, for a few seconds. Another
    // client goes on writing directly.
    proxy.cut(true);
    let other = nats.kv("cut").await;
    let mut written = Vec::new();
    // Each to its own key, so that NATS keeps every one of them for the mirror to catch up on.
    for i in 1..=20 {
        let rev = other
            .put(format!("k{i}"), format!("{i}").into())
            .await
            .unwrap();
        written.push((rev, format!("{i}")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reads are served from memory meanwhile (fail-static).
    assert_eq!(
        client.get("cut", "k").await.unwrap().unwrap().revision,
        first
    );
    proxy.heal();

    // The sidecar reconnects by itself; its watch sees every change, in order, none missing.
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let item = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("the mirror resumes after the network heals")
            .expect("watch open")
            .expect("watch item");
        if let nearkv::client::WatchEvent::Entry(e) = item {
            seen.push((e.revision, String::from_utf8_lossy(&e.value).to_string()));
        }
    }
    assert_eq!(seen, written);
    let reconnects = metric(&sidecar.http, "nearkv_nats_reconnects_total").await;
    assert!(reconnects >= 1, "the reconnect is counted");
    // Writes through the sidecar work again.
    eventually(Duration::from_secs(10), "writes to work again", || async {
        client.put("cut", "k2", b"back").await.is_ok()
    })
    .await;
    println!("network cut for 2 s: {} changes made meanwhile, all seen in order; {reconnects} reconnects", written.len());
}

/// A watcher that reads nothing while another client writes large values: its updates are taken
/// from the bucket's event ring at once (where they would pin every value written meanwhile) and
/// the watch ends with `slow_consumer` once 32 MiB of its messages wait for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reads_nothing_while_large_values_are_written_is_ended_not_held() {
    let nats = NatsServer::start().await;
    let (sidecar, client) = patient_sidecar(&nats, "flood").await;
    let mut watcher = tokio::net::UnixStream::connect(&sidecar.socket)
        .await
        .unwrap();
    let watch = json!({"id": 1, "op": "watch", "bucket": "flood", "initial": false});
    send_raw(&mut watcher, &frame(&watch)).await;
    assert_eq!(read_response(&mut watcher).await.unwrap()["ok"], true);
    let value = vec![b'x'; 1_000_000];
    client.put("flood", "big", &value).await.unwrap();
    let baseline = sidecar.peak_rss();

    // 200 MB written to one key while the watcher reads nothing.
    futures::stream::iter(0..200)
        .map(|_| client.put("flood", "big", &value))
        .buffer_unordered(8)
        .for_each(|put| async move {
            put.unwrap();
        })
        .await;
    assert_peak_rss_within(&sidecar, baseline, 96, "a watcher reading nothing");

    // It reads at last: what waited for it, then the end of the watch and why.
    let mut events = 0;
    let end = loop {
        let message = read_response(&mut watcher)
            .await
            .expect("the watch's messages");
        if message.get("end").is_some() {
            break message;
        }
        events += 1;
    };
    assert_eq!(end["error"]["code"], "slow_consumer", "{end}");
    assert!(
        (1..200).contains(&events),
        "{events} updates before the end"
    );
    assert_eq!(
        client
            .get("flood", "big")
            .await
            .unwrap()
            .unwrap()
            .value
            .len(),
        value.len(),
        "another client is served"
    );
}

/// A sidecar process mirroring `bucket`, and a client synced with it. Its write timeout outlasts
/// the test: a client that reads nothing must stay connected on a loaded machine, since what these
/// tests measure is what it costs the sidecar meanwhile (the timeout is tested elsewhere).
async fn patient_sidecar(nats: &NatsServer, bucket: &str) -> (SidecarProcess, nearkv::Client) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[socket]\nwrite_timeout = \"10m\"\n").unwrap();
    let config_path = config.path().to_str().unwrap();
    let sidecar = SidecarProcess::start(&nats.url(), &[bucket], &["--config", config_path]).await;
    let client = nearkv::Client::connect(&sidecar.socket).await.unwrap();
    crate::harness::wait_synced(&client).await;
    (sidecar, client)
}

/// Prints the sidecar's peak RSS against `baseline` (bytes), and asserts it grew by less than
/// `mib` MiB.
fn assert_peak_rss_within(sidecar: &SidecarProcess, baseline: u64, mib: u64, what: &str) {
    let peak = sidecar.peak_rss();
    println!(
        "{what}: peak RSS {:.1} MiB (before {:.1} MiB)",
        peak as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );
    assert!(
        peak < baseline + mib * 1024 * 1024,
        "{what}: peak RSS {peak} grew far beyond {baseline}"
    );
}
