//! Limits that keep one client from taking the sidecar down: connections, requests in flight,
//! watches, idle connections. Each answers with its documented error code.

use std::time::Duration;

use serde_json::json;
use tokio::net::UnixStream;

use crate::harness::{bucket, NatsServer, Sidecar};
use crate::raw_socket::{expect_closed, frame, read_response, send_raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_answers_with_its_error_and_spares_the_other_clients() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("l")], |config| {
        config.socket.max_connections = 2;
        config.socket.max_in_flight = 2;
        config.socket.max_watches = 2;
        config.socket.idle_timeout = Duration::from_millis(800);
    })
    .await;
    let client = sidecar.synced_client().await;
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();

    // A third connection is told why, then closed; the two others go on.
    let mut third = UnixStream::connect(&sidecar.socket).await.unwrap();
    let refused = read_response(&mut third).await.expect("an error frame");
    assert_eq!(refused["id"], 0);
    assert_eq!(refused["error"]["code"], "too_many_connections");
    expect_closed(&mut third).await;

    // Two waiting requests fill the connection's in-flight slots; the third is refused at once.
    let waiting = |id: u64| {
        frame(&json!({"id": id, "op": "get", "bucket": "l", "key": "k",
                      "min_revision": 1_000_000, "timeout_ms": 1000}))
    };
    let mut burst = Vec::new();
    for id in 1..=3 {
        burst.extend(waiting(id));
    }
    send_raw(&mut raw, &burst).await;
    let first = read_response(&mut raw).await.unwrap();
    assert_eq!(
        (first["id"].clone(), first["error"]["code"].clone()),
        (json!(3), json!("too_many_requests"))
    );
    for _ in 0..2 {
        let answer = read_response(&mut raw).await.unwrap();
        assert_eq!(answer["error"]["code"], "timeout");
    }
    // Reads from memory never count against the limit.
    send_raw(
        &mut raw,
        &frame(&json!({"id": 4, "op": "get", "bucket": "l", "key": "k"})),
    )
    .await;
    assert_eq!(read_response(&mut raw).await.unwrap()["ok"], true);

    // Two watches at most per connection.
    for id in 10..=12 {
        send_raw(
            &mut raw,
            &frame(&json!({"id": id, "op": "watch", "bucket": "l"})),
        )
        .await;
    }
    let mut codes = Vec::new();
    while codes.len() < 3 {
        let message = read_response(&mut raw).await.unwrap();
        if message.get("ok").is_some() {
            codes.push((message["id"].clone(), message["error"]["code"].clone()));
        }
    }
    assert!(
        codes.contains(&(json!(12), json!("too_many_watches"))),
        "{codes:?}"
    );

    // A connection with watches is not idle; an idle one is told so and closed.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    send_raw(&mut raw, &frame(&json!({"id": 20, "op": "ping"}))).await;
    loop {
        let message = read_response(&mut raw).await.expect("still open");
        if message["id"] == 20 {
            assert_eq!(message["ok"], true);
            break;
        }
    }
    // The Rust client sent nothing since the start: the idle timeout has closed it, which frees
    // the slot this idle connection takes.
    let mut idle = UnixStream::connect(&sidecar.socket).await.unwrap();
    let closed = read_response(&mut idle).await.expect("an error frame");
    assert_eq!(
        (closed["id"].clone(), closed["error"]["code"].clone()),
        (json!(0), json!("idle_timeout"))
    );
    expect_closed(&mut idle).await;
    // Each refusal is counted for operators.
    for code in ["too_many_connections", "idle_timeout"] {
        let series = format!("nearkv_connections_refused_total{{code=\"{code}\"}}");
        assert!(
            crate::harness::metric(&sidecar.http, &series).await >= 1,
            "{series}"
        );
    }
    // The connection kept busy by its watches was never disturbed: it still answers.
    send_raw(&mut raw, &frame(&json!({"id": 21, "op": "ping"}))).await;
    loop {
        let message = read_response(&mut raw).await.expect("still open");
        if message["id"] == 21 {
            assert_eq!(message["ok"], true);
            break;
        }
    }
    // And the idle Rust client reconnects by itself on its next call.
    client.ping().await.unwrap();
}
