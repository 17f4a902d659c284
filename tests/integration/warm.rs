//! Warm starts: a sidecar with `[cache] state_dir` saves each mirror and, restarted, resumes from
//! the saved one when the stream still holds every revision after it; otherwise (a recreated
//! bucket, lost history, a damaged file) it starts cold. Either way it serves exactly what NATS
//! holds.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use nearkv::Client;
use tempfile::TempDir;

use crate::harness::{bucket, metric, NatsServer, Sidecar, SidecarProcess};

async fn start(nats: &NatsServer, name: &str, state: &Path) -> Sidecar {
    let state = state.to_path_buf();
    Sidecar::start_with(&nats.url(), vec![bucket(name)], move |config| {
        config.cache.state_dir = Some(state);
    })
    .await
}

/// Every key NATS holds, with its value and revision, is what the sidecar serves, and nothing else.
async fn assert_same_as_nats(client: &Client, kv: &async_nats::jetstream::kv::Store, name: &str) {
    let mut in_nats: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    in_nats.sort();
    let served = client.keys(name, None, false).await.unwrap();
    assert_eq!(served, in_nats, "the sidecar's keys differ from NATS's");
    for key in &in_nats {
        let want = kv.entry(key).await.unwrap().unwrap();
        let got = client.get(name, key).await.unwrap().unwrap();
        assert_eq!(
            (got.value.as_ref(), got.revision),
            (want.value.as_ref(), want.revision),
            "key {key}"
        );
    }
}

/// A bucket of `keys` values (`k0`, `k1`, ...) written by a plain NATS client, mirrored by a
/// sidecar that saved it in `state` when it stopped.
async fn saved_bucket(
    nats: &NatsServer,
    name: &str,
    keys: usize,
    state: &Path,
) -> async_nats::jetstream::kv::Store {
    let kv = nats.kv(name).await;
    for i in 0..keys {
        kv.put(format!("k{i}"), "saved".into()).await.unwrap();
    }
    let sidecar = start(nats, name, state).await;
    sidecar.synced_client().await;
    sidecar.stop().await;
    kv
}

async fn warm_starts(sidecar: &Sidecar, name: &str) -> (u64, u64) {
    let series = |metric_name: &str| format!("{metric_name}{{bucket=\"{name}\"}}");
    (
        metric(&sidecar.http, &series("nearkv_mirror_warm_starts_total")).await,
        metric(&sidecar.http, &series("nearkv_mirror_saved_rejected_total")).await,
    )
}

/// Starts a sidecar on the saved state in `state` and checks how it started (warm starts, saved
/// mirrors rejected, as its metrics count them) and that it serves exactly what NATS holds.
async fn restart_serving_nats(
    nats: &NatsServer,
    name: &str,
    state: &Path,
    kv: &async_nats::jetstream::kv::Store,
    started: (u64, u64),
) -> (Sidecar, Client) {
    let sidecar = start(nats, name, state).await;
    let client = sidecar.synced_client().await;
    let how = if started.0 == 1 {
        "a warm start"
    } else {
        "a cold start"
    };
    assert_eq!(warm_starts(&sidecar, name).await, started, "{how}");
    assert_same_as_nats(&client, kv, name).await;
    (sidecar, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_starts_warm_and_serves_every_write_made_while_it_was_down() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    let kv = nats.kv("warm").await;
    for i in 0..500 {
        kv.put(format!("k{i}"), format!("value {i}").into())
            .await
            .unwrap();
    }
    let sidecar = start(&nats, "warm", state.path()).await;
    let client = sidecar.synced_client().await;
    client
        .put("warm", "through.sidecar", b"mine")
        .await
        .unwrap();
    assert_eq!(
        warm_starts(&sidecar, "warm").await,
        (0, 0),
        "no saved mirror yet"
    );
    sidecar.stop().await;
    assert!(
        state.path().join("warm.mirror").exists(),
        "saved on shutdown"
    );

    // While the sidecar is down, another NATS client changes the bucket in every way.
    kv.put("k1", "changed".into()).await.unwrap();
    kv.delete("k2").await.unwrap();
    kv.purge("k3").await.unwrap();
    kv.put("new.key", "new".into()).await.unwrap();
    kv.create("k2", "again".into()).await.unwrap();

    let (sidecar, client) = restart_serving_nats(&nats, "warm", state.path(), &kv, (1, 0)).await;
    assert_eq!(
        client
            .get("warm", "k1")
            .await
            .unwrap()
            .unwrap()
            .value
            .as_ref(),
        b"changed"
    );
    assert!(client.get("warm", "k3").await.unwrap().is_none());
    // It follows the bucket from there on.
    let revision = kv.put("after", "restart".into()).await.unwrap();
    let options = nearkv::protocol::ReadOptions {
        min_revision: Some(revision),
        ..Default::default()
    };
    let entry = client
        .get_with("warm", "after", options)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value.as_ref(), b"restart");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_mirror_of_a_deleted_and_recreated_bucket_is_never_served() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    saved_bucket(&nats, "reborn", 20, state.path()).await;

    // Same name, same keys, more revisions than before: only the stream's identity differs.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_key_value("reborn").await.unwrap();
    let kv = nats.kv("reborn").await;
    for i in 0..30 {
        kv.put(format!("k{i}"), "new".into()).await.unwrap();
    }

    let (sidecar, _) = restart_serving_nats(&nats, "reborn", state.path(), &kv, (0, 1)).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_mirror_older_than_the_streams_history_falls_back_to_a_cold_start() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    let kv = saved_bucket(&nats, "aged", 20, state.path()).await;

    // The revisions after the saved one are gone (an operator purged the stream: to the mirror,
    // the same as a retention limit it did not see), and some keys were written since.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream("KV_aged")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    kv.put("k1", "after".into()).await.unwrap();
    kv.put("fresh", "after".into()).await.unwrap();

    let (sidecar, client) = restart_serving_nats(&nats, "aged", state.path(), &kv, (0, 1)).await;
    assert!(client.get("aged", "k2").await.unwrap().is_none());
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_saved_mirror_is_ignored_and_the_start_is_cold() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    let kv = saved_bucket(&nats, "damaged", 50, state.path()).await;
    let file = state.path().join("damaged.mirror");
    let bytes = std::fs::read(&file).unwrap();
    kv.put("k0", "later".into()).await.unwrap();

    // Cut in half, then one flipped bit: each is a cold start, and the data is NATS's.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    for damaged in [bytes[..bytes.len() / 2].to_vec(), flipped] {
        std::fs::write(&file, damaged).unwrap();
        let (sidecar, _) = restart_serving_nats(&nats, "damaged", state.path(), &kv, (0, 1)).await;
        sidecar.stop().await;
    }
}

/// SIGKILL at random moments of a sidecar that saves every 20 ms while the bucket changes: the
/// file it leaves is the previous complete one (or none), never a part, so each restart is
/// correct, and warm when a file was complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sidecar_in_the_middle_of_saves_never_leaves_a_file_that_is_served_wrong() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    let kv = nats.kv("killed").await;
    let value = vec![b'x'; 4096];
    for i in 0..4000 {
        kv.put(format!("k{i}"), value.clone().into()).await.unwrap();
    }
    let state_dir = state.path().to_str().unwrap().to_string();
    let mut sidecar = SidecarProcess::start(
        &nats.url(),
        &["killed"],
        &["--state-dir", &state_dir, "--save-interval", "20ms"],
    )
    .await;
    let mut warm = 0;
    let mut killed_mid_write = 0;
    for round in 0..6u64 {
        let client = Client::connect(&sidecar.socket).await.unwrap();
        crate::harness::wait_synced(&client).await;
        assert_same_as_nats(&client, &kv, "killed").await;
        warm += metric(
            &sidecar.http,
            "nearkv_mirror_warm_starts_total{bucket=\"killed\"}",
        )
        .await;
        // Writes go on until the kill, at a different moment each round.
        for i in 0..(20 + round * 37) {
            kv.put(
                format!("k{}", (i * 101 + round) % 4000),
                format!("r{round}").into(),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(3 + round * 11)).await;
        sidecar.kill();
        let leftover = std::fs::read_dir(state.path()).unwrap().any(|entry| {
            let name = entry.unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with(".killed.mirror.") && name.ends_with(".tmp")
        });
        killed_mid_write += u32::from(leftover);
        kv.delete(format!("k{round}")).await.unwrap();
        sidecar.restart().await;
    }
    let client = Client::connect(&sidecar.socket).await.unwrap();
    crate::harness::wait_synced(&client).await;
    assert_same_as_nats(&client, &kv, "killed").await;
    assert!(warm >= 1, "no restart was warm");
    // The restarts removed what the killed processes left half-written.
    let own = format!(".{}.tmp", sidecar.pid());
    let files: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp") && !name.ends_with(&own))
        .collect();
    assert!(files.is_empty(), "leftover temporary files: {files:?}");
    println!("{killed_mid_write} of 6 kills left a partly written file; {warm} warm starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_mirror_is_not_restored_after_the_buckets_max_age_changed() {
    let nats = NatsServer::start().await;
    let state = TempDir::new().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "aging".to_string(),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("k", "v".into()).await.unwrap();
    let sidecar = start(&nats, "aging", state.path()).await;
    sidecar.synced_client().await;
    sidecar.stop().await;

    // The saved expiry of `k` was computed with an hour; the stream now keeps values for two.
    let mut stream = js.get_stream("KV_aging").await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_age = Duration::from_secs(7200);
    js.update_stream(config).await.unwrap();

    let (sidecar, _) = restart_serving_nats(&nats, "aging", state.path(), &kv, (0, 1)).await;
    sidecar.stop().await;

    // Saved again under the new max_age, the next restart is warm.
    let sidecar = start(&nats, "aging", state.path()).await;
    sidecar.synced_client().await;
    assert_eq!(warm_starts(&sidecar, "aging").await, (1, 0), "a warm start");
    sidecar.stop().await;
}
