//! Freshness promises: expiry without events, rebuilds after lost history, bounded staleness,
//! coalesced strong reads.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use nearkv::client::{Client, WatchEvent};
use nearkv::protocol::{Consistency, Operation, ReadOptions, WriteOptions};
use nearkv::ErrorCode;

use crate::harness::{bucket, eventually, http_get, metric, NatsServer, Sidecar};

const FETCHES: &str = "nearkv_strong_read_fetches_total{bucket=\"st\"}";

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Sleeps until `at` (Unix ns) has passed.
async fn sleep_past(at: i64) {
    let left = at - unix_nanos();
    if left > 0 {
        tokio::time::sleep(Duration::from_nanos(left as u64 + 5_000_000)).await;
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, nearkv::client::ClientError>) -> ErrorCode {
    result
        .expect_err("an error")
        .server_error()
        .expect("a server error")
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_expires_by_bucket_max_age_on_time_without_any_event() {
    let nats = NatsServer::start().await;
    let config = nearkv::config::BucketConfig {
        max_age: Duration::from_secs(2),
        ..bucket("ages")
    };
    let sidecar = Sidecar::start(&nats.url(), vec![config]).await;
    let client = sidecar.synced_client().await;
    let mut watch = client.watch("ages", None, false).await.unwrap();
    client.put("ages", "k", b"short-lived").await.unwrap();
    let entry = client
        .get("ages", "k")
        .await
        .unwrap()
        .expect("present at first");
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Entry(e))) if e.key == "k"));
    let expires = entry.created + 2_000_000_000;
    assert!(
        unix_nanos() < expires,
        "the read above came before the expiry"
    );

    sleep_past(expires).await;
    // No marker comes (the bucket has no limit markers): the mirror drops it by itself.
    assert_eq!(client.get("ages", "k").await.unwrap(), None);
    assert_eq!(
        client.keys("ages", None, false).await.unwrap(),
        Vec::<String>::new()
    );
    let expired = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an expiry event")
        .unwrap()
        .unwrap();
    match expired {
        WatchEvent::Entry(e) => {
            assert_eq!((e.key.as_str(), e.operation), ("k", Operation::Purge));
            assert_eq!(e.revision, entry.revision);
        }
        other => panic!("expected the expiry, got {other:?}"),
    }
    eventually(
        Duration::from_secs(5),
        "the swept key to leave status",
        || async { client.status(Some("ages")).await.unwrap()[0].keys == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_ttls_expire_values_whoever_wrote_them() {
    let nats = NatsServer::start().await;
    let ttl_bucket = nearkv::config::BucketConfig {
        limit_markers: Duration::from_secs(1),
        ..bucket("ttl")
    };
    let sidecar = Sidecar::start(&nats.url(), vec![ttl_bucket, bucket("plain")]).await;
    let client = sidecar.synced_client().await;

    let with_ttl = WriteOptions {
        ttl_ms: Some(1500),
        ..WriteOptions::default()
    };
    client
        .put_with("ttl", "mine", b"v", with_ttl)
        .await
        .unwrap();
    // Another NATS client writes with a TTL too; nearkv reads it from the message header.
    let other = nats.kv("ttl").await;
    other
        .create_with_ttl("theirs", "v".into(), Duration::from_secs(2))
        .await
        .unwrap();
    client.put("ttl", "forever", b"v").await.unwrap();
    let read = ReadOptions {
        consistency: Consistency::Strong,
        ..ReadOptions::default()
    };
    let mine = client.get_with("ttl", "mine", read).await.unwrap().unwrap();
    let theirs = client
        .get_with("ttl", "theirs", read)
        .await
        .unwrap()
        .unwrap();
    // NATS itself sees the TTL nearkv wrote.
    let header = nats
        .kv("ttl")
        .await
        .stream
        .get_last_raw_message_by_subject("$KV.ttl.mine")
        .await
        .unwrap()
        .headers;
    assert_eq!(header.get("Nats-TTL").map(|v| v.as_str()), Some("1500ms"));

    sleep_past(mine.created + 1_500_000_000).await;
    assert_eq!(client.get("ttl", "mine").await.unwrap(), None);
    sleep_past(theirs.created + 2_000_000_000).await;
    assert_eq!(client.get("ttl", "theirs").await.unwrap(), None);
    assert!(client.get("ttl", "forever").await.unwrap().is_some());

    // Refused where NATS would refuse it, with a message that says how to fix it.
    assert_eq!(
        code(client.put_with("plain", "k", b"v", with_ttl).await),
        ErrorCode::BadRequest
    );
    let too_short = WriteOptions {
        ttl_ms: Some(500),
        ..WriteOptions::default()
    };
    assert_eq!(
        code(client.put_with("ttl", "k", b"v", too_short).await),
        ErrorCode::BadRequest
    );
    assert_eq!(client.get("plain", "k").await.unwrap(), None);
}

/// Collects watch events until `done` says the picture is complete.
async fn changes_until(
    watch: &mut nearkv::client::WatchStream,
    mut done: impl FnMut(&[(String, Operation, Vec<u8>)]) -> bool,
) -> Vec<(String, Operation, Vec<u8>)> {
    let mut seen = Vec::new();
    while !done(&seen) {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {seen:?}"))
            .expect("watch open")
            .expect("watch event");
        if let WatchEvent::Entry(e) = event {
            seen.push((e.key.clone(), e.operation, e.value.to_vec()));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_deleted_and_recreated_is_rebuilt_and_watchers_see_deletes_then_new_values() {
    let nats = NatsServer::start().await;
    let other = nats.kv("re").await;
    for (key, value) in [("a", "old-a"), ("b", "old-b"), ("c", "old-c")] {
        other.put(key, value.into()).await.unwrap();
    }
    let sidecar =
        Sidecar::start(&nats.url(), vec![nearkv::config::BucketConfig::named("re")]).await;
    let client = sidecar.synced_client().await;
    let mut watch = client.watch("re", None, true).await.unwrap();
    let initial = changes_until(&mut watch, |seen| seen.len() == 3).await;
    assert_eq!(initial.len(), 3);

    // Meanwhile a reader checks it never sees a mix of the old and the new bucket.
    let reader = {
        let client = Client::connect(&sidecar.socket).await.unwrap();
        tokio::spawn(async move {
            let old = ["old-a", "old-b", "old-c"];
            let mut reads = 0u64;
            loop {
                let entries = client
                    .mget("re", &["a", "b", "c", "d"], ReadOptions::default())
                    .await
                    .unwrap();
                let values: Vec<Option<String>> = entries
                    .iter()
                    .map(|e| {
                        e.as_ref()
                            .map(|e| String::from_utf8_lossy(&e.value).to_string())
                    })
                    .collect();
                reads += 1;
                let is_old = values[..3]
                    .iter()
                    .zip(old)
                    .all(|(v, o)| v.as_deref() == Some(o))
                    && values[3].is_none();
                let is_new = values
                    == [
                        None,
                        Some("new-b".to_string()),
                        None,
                        Some("new-d".to_string()),
                    ];
                assert!(is_old || is_new, "a read saw a mix: {values:?}");
                if is_new {
                    return reads;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_key_value("re").await.unwrap();
    let again = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "re".to_string(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    again.put("b", "new-b".into()).await.unwrap();
    again.put("d", "new-d".into()).await.unwrap();

    let reads = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the mirror to show the new bucket")
        .unwrap();
    assert!(reads > 0);
    let status = &client.status(Some("re")).await.unwrap()[0];
    assert!(status.rebuilds >= 1, "{status:?}");
    assert_eq!(status.keys, 2);

    let changes = changes_until(&mut watch, |seen| {
        seen.iter().any(|(k, _, v)| k == "d" && v == b"new-d")
            && seen.iter().any(|(k, _, v)| k == "b" && v == b"new-b")
    })
    .await;
    let mut deletes: Vec<&str> = changes
        .iter()
        .filter(|(_, op, _)| *op == Operation::Delete)
        .map(|(k, _, _)| k.as_str())
        .collect();
    deletes.sort_unstable();
    assert_eq!(deletes, ["a", "c"], "{changes:?}");
    let last_delete = changes
        .iter()
        .rposition(|(_, op, _)| *op == Operation::Delete)
        .unwrap();
    let first_new = changes
        .iter()
        .position(|(_, _, v)| v.starts_with(b"new-"))
        .unwrap();
    assert!(last_delete < first_new, "deletes come first: {changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_purged_behind_the_sidecars_back_is_rebuilt() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("p")]).await;
    let client = sidecar.synced_client().await;
    for key in ["x", "y"] {
        client.put("p", key, b"v").await.unwrap();
    }
    // A stream purge removes the messages without leaving any marker for a watcher to see.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream("KV_p").await.unwrap().purge().await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the mirror to drop the purged keys",
        || async { client.keys("p", None, false).await.unwrap().is_empty() },
    )
    .await;
    assert!(client.status(Some("p")).await.unwrap()[0].rebuilds >= 1);
    // And it goes on following the bucket.
    client.put("p", "z", b"after").await.unwrap();
    assert_eq!(client.keys("p", None, false).await.unwrap(), ["z"]);
}

/// Messages removed below the mirror's oldest value while its feed was away, leaving as many
/// messages as the mirror has keys (so the periodic stream check sees nothing amiss): the resumed
/// feed compares the stream's keys with the mirror's, and reloads without the key that has no
/// message left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_messages_were_purged_while_the_feed_was_away_is_dropped() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("h")]).await;
    let client = sidecar.synced_client().await;
    let other = nats.kv("h").await;
    for (key, value) in [("a", "1"), ("b", "1"), ("a", "2"), ("a", "3")] {
        other.put(key, value.into()).await.unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "the mirror to apply the four writes",
        || async { client.status(Some("h")).await.unwrap()[0].revision >= 4 },
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("KV_h").await.unwrap();
    // Revisions 1 and 2 go: `b` has no message left; `a` keeps two.
    stream.purge().sequence(3).await.unwrap();
    // The feed's consumer is lost, so the feed resumes from its revision and checks the stream.
    let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    assert!(stream.delete_consumer(&names[0]).await.unwrap().success);
    other.put("c", "1".into()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the mirror to drop the key whose messages were purged",
        || async { client.keys("h", None, false).await.unwrap() == ["a", "c"] },
    )
    .await;
    assert!(client.status(Some("h")).await.unwrap()[0].rebuilds >= 1);
    assert_eq!(
        client.get("h", "a").await.unwrap().unwrap().value.as_ref(),
        b"3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_fail_past_max_staleness_unless_allowed() {
    let mut nats = NatsServer::start().await;
    let config = nearkv::config::BucketConfig {
        max_staleness: Some(Duration::from_millis(1500)),
        ..bucket("s")
    };
    let sidecar = Sidecar::start(&nats.url(), vec![config, bucket("relaxed")]).await;
    let client = sidecar.synced_client().await;
    client.put("s", "k", b"v").await.unwrap();
    client.put("relaxed", "k", b"v").await.unwrap();
    let (entry, fresh) = client
        .get_fresh("s", "k", ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(entry.unwrap().value.as_ref(), b"v");
    assert!(fresh.revision >= 1);
    // Confirmed at least every max_staleness / 4 while NATS is up: never stale meanwhile.
    for _ in 0..20 {
        assert!(client.get("s", "k").await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    nats.stop();
    eventually(
        Duration::from_secs(15),
        "the bucket to turn stale",
        || async { client.status(Some("s")).await.unwrap()[0].stale },
    )
    .await;
    assert_eq!(code(client.get("s", "k").await), ErrorCode::Stale);
    assert_eq!(
        code(client.mget("s", &["k"], ReadOptions::default()).await),
        ErrorCode::Stale
    );
    assert_eq!(code(client.keys("s", None, false).await), ErrorCode::Stale);
    let allow = ReadOptions {
        allow_stale: true,
        ..ReadOptions::default()
    };
    let (entry, fresh) = client.get_fresh("s", "k", allow).await.unwrap();
    assert_eq!(entry.unwrap().value.as_ref(), b"v");
    assert!(fresh.age_ms > 1500, "{fresh:?}");
    assert_eq!(client.keys("s", None, true).await.unwrap(), ["k"]);
    // A bucket without max_staleness stays fail-static.
    assert!(client.get("relaxed", "k").await.unwrap().is_some());
    let (code, body) = http_get(&sidecar.http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_staleness"), "{body}");

    nats.restart().await;
    eventually(Duration::from_secs(30), "fresh reads again", || async {
        client.get("s", "k").await.is_ok()
    })
    .await;
    assert!(!client.status(Some("s")).await.unwrap()[0].stale);
    eventually(Duration::from_secs(10), "/readyz 200 again", || async {
        http_get(&sidecar.http, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_strong_reads_share_their_nats_requests() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("st")]).await;
    let client = sidecar.synced_client().await;
    let other = nats.kv("st").await;
    let strong = ReadOptions {
        consistency: Consistency::Strong,
        ..ReadOptions::default()
    };
    let before = metric(&sidecar.http, FETCHES).await;
    const READS: usize = 200;
    let mut revisions = BTreeMap::new();
    for round in 0..3 {
        // Written by another client, so only a strong read is sure to see it.
        let written = other.put("k", format!("v{round}").into()).await.unwrap();
        let reads: Vec<_> = (0..READS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get_with("st", "k", strong).await })
            })
            .collect();
        for read in reads {
            let entry = read.await.unwrap().unwrap().unwrap();
            assert!(entry.revision >= written, "a strong read missed a write");
            *revisions.entry(entry.revision).or_insert(0) += 1;
        }
    }
    let fetches = metric(&sidecar.http, FETCHES).await - before;
    assert!(
        fetches < (3 * READS / 4) as u64,
        "{} strong reads made {fetches} NATS requests",
        3 * READS
    );
}
