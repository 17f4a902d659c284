//! The socket as a client in another language sees it: raw frames, malformed input, socket file
//! handling.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::harness::{bucket, NatsServer, Sidecar};

pub(crate) async fn send_raw(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

pub(crate) fn frame(value: &Value) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(value).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Reads one response frame as JSON (bin values become arrays of numbers).
pub(crate) async fn read_response(stream: &mut UnixStream) -> Option<Value> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len))
        .await
        .expect("a response in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    let value = rmpv::decode::read_value(&mut body.as_slice()).expect("responses are MessagePack");
    Some(to_json(value))
}

fn to_json(value: rmpv::Value) -> Value {
    match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => json!(b),
        rmpv::Value::Integer(i) => match i.as_u64() {
            Some(u) => json!(u),
            None => json!(i.as_i64()),
        },
        rmpv::Value::String(s) => json!(s.as_str().expect("UTF-8 strings")),
        rmpv::Value::Binary(b) => json!({ "bin": b }),
        rmpv::Value::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        rmpv::Value::Map(pairs) => Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
        other => panic!("unexpected MessagePack value {other:?}"),
    }
}

pub(crate) async fn expect_closed(stream: &mut UnixStream) {
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed");
}

fn error_code(response: &Value) -> &str {
    response["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_documented_errors_and_other_clients_keep_working() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("b")]).await;
    let client = sidecar.synced_client().await;
    client.put("b", "k", b"v").await.unwrap();

    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();

    // Garbage inside a well-formed frame: bad_request with id 0, connection stays open.
    send_raw(&mut raw, &[0, 0, 0, 3, 0xc1, 0xff, 0x00]).await;
    let response = read_response(&mut raw).await.unwrap();
    assert_eq!(response["id"], 0);
    assert_eq!(response["ok"], false);
    assert_eq!(error_code(&response), "bad_request");

    // Not a map.
    send_raw(&mut raw, &frame(&json!([1, "ping"]))).await;
    assert_eq!(
        error_code(&read_response(&mut raw).await.unwrap()),
        "bad_request"
    );

    // Wrong type for a field: answered with the request's id, naming the field.
    send_raw(
        &mut raw,
        &frame(&json!({"id": 7, "op": "get", "bucket": "b", "key": 12})),
    )
    .await;
    let response = read_response(&mut raw).await.unwrap();
    assert_eq!(response["id"], 7);
    assert_eq!(error_code(&response), "bad_request");
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("key"));

    // Unknown op, unknown extra fields ignored.
    send_raw(&mut raw, &frame(&json!({"id": 8, "op": "explode"}))).await;
    let response = read_response(&mut raw).await.unwrap();
    assert_eq!(
        (response["id"].clone(), error_code(&response)),
        (json!(8), "unknown_op")
    );
    send_raw(
        &mut raw,
        &frame(&json!({"id": 9, "op": "ping", "extra": {"x": 1}})),
    )
    .await;
    assert_eq!(
        read_response(&mut raw).await.unwrap(),
        json!({"id": 9, "ok": true})
    );

    // Pipelined requests on one connection: all answered, matched by id.
    let mut burst = Vec::new();
    for id in 100..150 {
        burst.extend(frame(
            &json!({"id": id, "op": "get", "bucket": "b", "key": "k"}),
        ));
    }
    send_raw(&mut raw, &burst).await;
    let mut ids = Vec::new();
    for _ in 100..150 {
        let response = read_response(&mut raw).await.unwrap();
        assert_eq!(response["entry"]["key"], "k");
        ids.push(response["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (100..150).collect::<Vec<u64>>());

    // Oversized length prefix: frame_too_large with id 0, then the connection is closed.
    send_raw(&mut raw, &(5u32 * 1024 * 1024).to_be_bytes()).await;
    let response = read_response(&mut raw).await.unwrap();
    assert_eq!(
        (response["id"].clone(), error_code(&response)),
        (json!(0), "frame_too_large")
    );
    expect_closed(&mut raw).await;

    // Truncated frame: the client hangs up mid-frame; nothing breaks.
    let mut truncated = UnixStream::connect(&sidecar.socket).await.unwrap();
    send_raw(&mut truncated, &[0, 0, 0, 50, 0x82, 0xa2]).await;
    drop(truncated);

    // The sidecar still serves other connections.
    assert_eq!(
        client.get("b", "k").await.unwrap().unwrap().value.as_ref(),
        b"v"
    );
    let mut another = UnixStream::connect(&sidecar.socket).await.unwrap();
    send_raw(&mut another, &frame(&json!({"id": 1, "op": "ping"}))).await;
    assert_eq!(read_response(&mut another).await.unwrap()["ok"], true);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_unwatch_over_raw_frames() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("b")]).await;
    let client = sidecar.synced_client().await;
    client.put("b", "k", b"v").await.unwrap();
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();
    send_raw(
        &mut raw,
        &frame(&json!({"id": 5, "op": "watch", "bucket": "b"})),
    )
    .await;
    assert_eq!(
        read_response(&mut raw).await.unwrap(),
        json!({"id": 5, "ok": true})
    );
    let event = read_response(&mut raw).await.unwrap();
    assert_eq!(event["id"], 5);
    assert!(event.get("ok").is_none(), "pushed messages carry no `ok`");
    assert_eq!(event["event"]["key"], "k");
    assert_eq!(event["event"]["operation"], "put");
    assert_eq!(
        event["event"]["value"],
        json!({ "bin": [b'v'] }),
        "values are bin"
    );
    assert_eq!(
        read_response(&mut raw).await.unwrap(),
        json!({"id": 5, "synced": true})
    );

    // A second watch with the same id is refused.
    send_raw(
        &mut raw,
        &frame(&json!({"id": 5, "op": "watch", "bucket": "b"})),
    )
    .await;
    assert_eq!(
        error_code(&read_response(&mut raw).await.unwrap()),
        "bad_request"
    );

    send_raw(
        &mut raw,
        &frame(&json!({"id": 6, "op": "unwatch", "watch": 5})),
    )
    .await;
    let mut seen = vec![
        read_response(&mut raw).await.unwrap(),
        read_response(&mut raw).await.unwrap(),
    ];
    seen.sort_by_key(|v| v["id"].as_u64());
    assert_eq!(
        seen,
        vec![json!({"id": 5, "end": true}), json!({"id": 6, "ok": true})]
    );
    send_raw(
        &mut raw,
        &frame(&json!({"id": 7, "op": "unwatch", "watch": 5})),
    )
    .await;
    assert_eq!(
        error_code(&read_response(&mut raw).await.unwrap()),
        "bad_request"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_file_is_0660_replaces_a_stale_one_and_is_removed_on_shutdown() {
    let nats = NatsServer::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("s.sock");
    // A stale socket file, as a crashed run leaves it: bound, then nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let socket_path = path.clone();
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("b")], move |c| {
        c.socket.path = socket_path
    })
    .await;
    // The stale file exists from the start, so wait until the sidecar answers on the path.
    crate::harness::eventually(
        Duration::from_secs(10),
        "the sidecar to replace the stale socket",
        || {
            let path = path.clone();
            async move {
                match nearkv::Client::connect(&path).await {
                    Ok(client) => client.ping().await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let client = nearkv::Client::connect(&path).await.unwrap();
    client.ping().await.unwrap();

    // A second sidecar on the same live socket refuses to start rather than steal it.
    let mut config = nearkv::config::Config::default();
    config.nats.servers = vec![nats.url()];
    config.socket.path = path.clone();
    config.buckets = vec![bucket("b")];
    let err = nearkv::serve(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");

    sidecar.stop().await;
    assert!(!path.exists(), "socket removed on clean shutdown");
}
