//! NATS goes away under a running sidecar and comes back.

use std::time::Duration;

use nearkv::ErrorCode;

use crate::harness::{bucket, eventually, NatsServer, Sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_nats_restart_and_the_mirror_converges_after_it() {
    let mut nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("o")]).await;
    let client = sidecar.synced_client().await;
    let before = client.put("o", "k", b"before").await.unwrap();

    nats.stop();
    // Reads keep being served from memory.
    for _ in 0..20 {
        let entry = client.get("o", "k").await.unwrap().unwrap();
        assert_eq!(
            (entry.value.as_ref(), entry.revision),
            (&b"before"[..], before)
        );
    }
    // Writes fail with `unavailable` once the sidecar knows NATS is gone.
    eventually(
        Duration::from_secs(10),
        "a write to fail with unavailable",
        || async {
            match client.put("o", "k", b"during").await {
                Err(err) => err.server_error().map(|e| e.code) == Some(ErrorCode::Unavailable),
                Ok(_) => panic!("a write succeeded while NATS was down"),
            }
        },
    )
    .await;
    let status = client.status(Some("o")).await.unwrap();
    assert!(!status[0].connected);
    assert!(status[0].synced, "fail-static: still serving");

    nats.restart().await;
    // Another client writes meanwhile; the sidecar's mirror picks it up without a restart.
    let other = nats.kv("o").await;
    let after = other.put("k", "from another client".into()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the mirror to show the other client's write",
        || async { matches!(client.get("o", "k").await, Ok(Some(e)) if e.revision == after) },
    )
    .await;
    let entry = client.get("o", "k").await.unwrap().unwrap();
    assert_eq!(entry.value.as_ref(), b"from another client");
    // A restarted server keeps the stream: the mirror resumes, it is not reloaded.
    assert_eq!(client.status(Some("o")).await.unwrap()[0].rebuilds, 0);
    // And writes through the sidecar work again.
    eventually(Duration::from_secs(10), "writes to work again", || async {
        client.put("o", "k2", b"back").await.is_ok()
    })
    .await;
    assert_eq!(
        client.get("o", "k2").await.unwrap().unwrap().value.as_ref(),
        b"back"
    );
    sidecar.stop().await;
}
