//! The data is ordinary NATS KV: what nats-py writes, nearkv reads, and the other way round.

use std::process::Command;
use std::time::Duration;

use crate::harness::{bucket, eventually, NatsServer, Sidecar};

fn nats_py(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/nats_py_kv.py");
    let pythonpath = std::env::var("NEARKV_PYTHONPATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/python").to_string());
    let output = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "nats-py peer failed (run ./scripts/test.sh, which installs nats-py into .tools/python): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_and_nearkv_read_each_others_writes_byte_for_byte() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("interop")]).await;
    let client = sidecar.synced_client().await;
    let url = nats.url();

    // nats-py writes binary bytes; nearkv reads the same bytes and revision.
    let value: Vec<u8> = (0u8..=255).collect();
    let revision: u64 = nats_py(&[&url, "interop", "put", "from.python", &hex(&value)])
        .parse()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "nearkv to see the nats-py write",
        || async {
            client
                .get("interop", "from.python")
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    let entry = client.get("interop", "from.python").await.unwrap().unwrap();
    assert_eq!(entry.value.as_ref(), value.as_slice());
    assert_eq!(entry.revision, revision);

    // nearkv writes; nats-py reads the same bytes and revision.
    let ours = b"{\"order\":1,\"bytes\":\"\xc3\xa9\"}\x00\x01";
    let revision = client.put("interop", "from.nearkv", ours).await.unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(&nats_py(&[&url, "interop", "get", "from.nearkv"])).unwrap();
    assert_eq!(seen["value_hex"], hex(ours));
    assert_eq!(seen["revision"], revision);

    // A delete through nearkv is a delete to nats-py too.
    client
        .delete("interop", "from.nearkv", Default::default())
        .await
        .unwrap();
    assert_eq!(nats_py(&[&url, "interop", "get", "from.nearkv"]), "null");
    sidecar.stop().await;
}
