//! Compare-and-set races, read-your-writes, and two sidecars on one bucket.

use std::time::Duration;

use futures::StreamExt;
use nearkv::client::WatchEvent;
use nearkv::protocol::{Operation, WriteOptions};
use nearkv::ErrorCode;

use crate::harness::{bucket, NatsServer, Sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compare_and_set_writers_win_exactly_once_per_revision() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("cas")]).await;
    let a = sidecar.synced_client().await;
    let b = sidecar.client().await;
    let mut revision = a.put("cas", "counter", b"0").await.unwrap();
    let mut wins = [0u32; 2];
    for round in 0..50 {
        let expect = WriteOptions::expecting(Some(revision));
        let value_a = format!("a{round}");
        let value_b = format!("b{round}");
        let (ra, rb) = tokio::join!(
            a.put_with("cas", "counter", value_a.as_bytes(), expect),
            b.put_with("cas", "counter", value_b.as_bytes(), expect),
        );
        let (winner, new_revision, loser) = match (ra, rb) {
            (Ok(r), Err(e)) => (0, r, e),
            (Err(e), Ok(r)) => (1, r, e),
            other => panic!("round {round}: exactly one CAS must win, got {other:?}"),
        };
        wins[winner] += 1;
        let loser = loser.server_error().expect("a server error").clone();
        assert_eq!(loser.code, ErrorCode::WrongRevision);
        assert_eq!(
            loser.current_revision,
            Some(new_revision),
            "the loser learns the winner's revision"
        );
        let stored = a.get("cas", "counter").await.unwrap().unwrap();
        assert_eq!(stored.revision, new_revision);
        let expected_value = if winner == 0 { &value_a } else { &value_b };
        assert_eq!(stored.value.as_ref(), expected_value.as_bytes());
        revision = new_revision;
    }
    assert_eq!(wins[0] + wins[1], 50);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_put_then_get_never_read_an_older_revision() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("ryw")]).await;
    let writer = sidecar.synced_client().await;
    let reader = sidecar.client().await;
    let mut last = 0;
    for i in 0..1000u32 {
        let key = format!("k{}", i % 7);
        let value = i.to_be_bytes();
        let revision = writer.put("ryw", &key, &value).await.unwrap();
        assert!(revision > last);
        last = revision;
        // Read on another connection of the same sidecar: it must already show the write.
        let entry = reader
            .get("ryw", &key)
            .await
            .unwrap()
            .expect("the write is visible");
        assert_eq!(
            entry.revision, revision,
            "put {i} returned {revision} but get saw {}",
            entry.revision
        );
        assert_eq!(entry.value.as_ref(), &value);
    }
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_see_each_others_writes_in_order() {
    let nats = NatsServer::start().await;
    let one = Sidecar::start(&nats.url(), vec![bucket("shared")]).await;
    let two = Sidecar::start(&nats.url(), vec![bucket("shared")]).await;
    let c1 = one.synced_client().await;
    let c2 = two.synced_client().await;
    let mut watch = c2.watch("shared", None, false).await.unwrap();

    let mut expected = Vec::new();
    for i in 0..20u32 {
        let r = c1
            .put("shared", &format!("k{}", i % 3), format!("v{i}").as_bytes())
            .await
            .unwrap();
        expected.push((format!("k{}", i % 3), r, Operation::Put));
    }
    let d = c1
        .delete("shared", "k0", WriteOptions::default())
        .await
        .unwrap();
    expected.push(("k0".to_string(), d, Operation::Delete));
    let p = c1
        .purge("shared", "k1", WriteOptions::default())
        .await
        .unwrap();
    expected.push(("k1".to_string(), p, Operation::Purge));

    for (key, revision, operation) in &expected {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("event in time")
            .expect("watch open")
            .expect("no error");
        match item {
            WatchEvent::Entry(e) => assert_eq!(
                (&e.key, e.revision, e.operation),
                (key, *revision, *operation)
            ),
            WatchEvent::Synced => panic!("no synced marker without initial values"),
        }
    }
    // And the other sidecar's reads show the final state.
    let read = nearkv::protocol::ReadOptions {
        min_revision: Some(p),
        ..Default::default()
    };
    assert_eq!(c2.get_with("shared", "k0", read).await.unwrap(), None);
    assert_eq!(c2.get("shared", "k1").await.unwrap(), None);
    let k2 = c2.get("shared", "k2").await.unwrap().unwrap();
    assert_eq!(k2.value.as_ref(), b"v17");
    assert_eq!(c2.keys("shared", None, false).await.unwrap(), vec!["k2"]);
    one.stop().await;
    two.stop().await;
}
