//! The data is ordinary NATS KV: what nats-py writes, nearkv reads, and the other way round.

use std::process::Command;
use std::time::Duration;

use crate::harness::{bucket, eventually, NatsServer, Sidecar};

fn nats_py(args: &[&str]) -> String {
    python("nats_py_kv.py", args)
}

/// Runs a Python peer from tests/peers with the packages ./scripts/test.sh installs.
fn python(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let pythonpath = std::env::var("NEARKV_PYTHONPATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/python").to_string());
    let output = Command::new("python3")
        .arg(&path)
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python peer {script} failed (run ./scripts/test.sh, which installs nats-py and msgpack into .tools/python): {}",
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

/// A client written in Python from docs/PROTOCOL.md alone (tests/peers/protocol_client.py) runs a
/// whole session: framing, every common op, errors, pipelining, watch and unwatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_protocol_doc_works() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("py")]).await;
    sidecar.synced_client().await;
    let socket = sidecar.socket.to_string_lossy().to_string();
    let output =
        tokio::task::spawn_blocking(move || python("protocol_client.py", &[&socket, "py"]))
            .await
            .unwrap();
    let steps: std::collections::HashMap<String, serde_json::Value> = output
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["step"].as_str().unwrap().to_string(), v["value"].clone())
        })
        .collect();
    let put_revision = steps["put"]["revision"].as_u64().unwrap();
    assert_eq!(steps["ping"], serde_json::json!({"id": 1, "ok": true}));
    assert_eq!(steps["get"]["value_hex"], "0068656c6c6f");
    assert_eq!(steps["get"]["revision"], put_revision);
    assert_eq!(steps["get"]["operation"], "put");
    // The mirror's revision and age travel with every read.
    assert!(steps["get"]["mirror_revision"].as_u64().unwrap() >= put_revision);
    assert!(steps["get"]["age_ms"].is_u64());
    assert!(steps["strong"]["mirror_revision"].as_u64().unwrap() >= put_revision);
    assert_eq!(steps["strong"]["value_hex"], "0068656c6c6f");
    assert_eq!(steps["ttl_on_delete"], "bad_request");
    assert_eq!(steps["get_absent"]["entry"], serde_json::Value::Null);
    assert_eq!(steps["cas_conflict"]["code"], "wrong_revision");
    assert_eq!(steps["cas_conflict"]["current_revision"], put_revision);
    assert!(steps["cas_ok"]["revision"].as_u64().unwrap() > put_revision);
    assert_eq!(steps["unknown_bucket"], "unknown_bucket");
    assert_eq!(steps["invalid_key"], "invalid_key");
    assert_eq!(steps["unknown_op"], "unknown_op");
    assert_eq!(steps["pipelined"], serde_json::json!(["y", "y", "y"]));
    assert_eq!(steps["watch"]["ok"], true);
    assert_eq!(
        steps["watch_initial"],
        serde_json::json!({"key": "py.1", "operation": "put"})
    );
    assert_eq!(steps["watch_synced"]["synced"], true);
    assert_eq!(
        steps["watch_delete"],
        serde_json::json!({"operation": "delete", "revision_matches": true})
    );
    assert_eq!(steps["unwatch"]["ok"], true);
    assert_eq!(steps["watch_end"]["end"], true);
    assert_eq!(steps["keys"]["keys"], serde_json::json!([]));
    assert_eq!(
        steps["status"],
        serde_json::json!({"bucket": "py", "synced": true})
    );
    sidecar.stop().await;
}
