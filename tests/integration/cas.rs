//! Compare-and-set under concurrency: creates on deleted keys while others delete them, the
//! `current_revision` a refusal reports, read-your-writes right after NATS restarts, and what a
//! failed write says about whether it was sent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nearkv::protocol::{Consistency, ReadOptions, WriteOptions};
use nearkv::{Client, ErrorCode};

use crate::harness::{bucket, NatsServer, Sidecar};

const ROUNDS: usize = 300;

/// A NATS server and two sidecars mirroring bucket `cas`, with a synced client of each.
async fn two_sidecars() -> (NatsServer, [Sidecar; 2], Client, Client) {
    let nats = NatsServer::start().await;
    let a = Sidecar::start(&nats.url(), vec![bucket("cas")]).await;
    let b = Sidecar::start(&nats.url(), vec![bucket("cas")]).await;
    let (client_a, client_b) = (a.synced_client().await, b.synced_client().await);
    (nats, [a, b], client_a, client_b)
}

/// A create (`expect_revision: 0`) on a key that stays deleted must succeed, however often
/// another client deletes the key meanwhile. Before the fix about half were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_on_a_deleted_key_succeeds_while_another_sidecar_keeps_deleting_it() {
    let (_nats, _sidecars, creator, deleter) = two_sidecars().await;
    creator
        .delete("cas", "k", WriteOptions::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deletes = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                deleter
                    .delete("cas", "k", WriteOptions::default())
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let mut refused = Vec::new();
    for round in 0..ROUNDS {
        // Only this loop ever gives `k` a value, and it deletes the value again right after, so
        // the key has no value whenever a create starts.
        match creator
            .put_with("cas", "k", b"v", WriteOptions::expecting(Some(0)))
            .await
        {
            Ok(_) => {}
            Err(err) => refused.push((round, err.to_string())),
        }
        creator
            .delete("cas", "k", WriteOptions::default())
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let concurrent_deletes = deletes.await.unwrap();
    println!(
        "creates on a deleted key: {} of {ROUNDS} refused while another sidecar deleted it \
         {concurrent_deletes} times",
        refused.len()
    );
    assert!(
        concurrent_deletes > 50,
        "the deleter ran {concurrent_deletes} times only"
    );
    assert!(
        refused.is_empty(),
        "{} of {ROUNDS} creates on a deleted key were refused while another client deleted it \
         ({concurrent_deletes} deletes); first: {:?}",
        refused.len(),
        refused.first()
    );
}

/// A refused compare-and-set reports in `current_revision` a revision the key really had while
/// the request ran: a put's revision when the key had a value, 0 only when it had none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_reports_a_revision_the_key_had() {
    let (_nats, _sidecars, checker, writer) = two_sidecars().await;
    // Every revision at which `k` got a value, as the writer's acknowledgements tell them;
    // the reports are checked against them at the end.
    let puts = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = {
        let (puts, stop) = (puts.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let rev = writer.put("cas", "k", b"v").await.unwrap();
                puts.lock().unwrap().insert(rev);
                writer
                    .delete("cas", "k", WriteOptions::default())
                    .await
                    .unwrap();
            }
        })
    };
    let mut reports = Vec::new();
    let mut stale = 1;
    for round in 0..ROUNDS {
        // Alternate creates with compare-and-sets against a revision that is surely outdated.
        let expect = if round % 2 == 0 { 0 } else { stale };
        match checker
            .put_with("cas", "k", b"mine", WriteOptions::expecting(Some(expect)))
            .await
        {
            Ok(rev) => {
                // Give the key back to the writer's loop.
                stale = rev;
                checker
                    .delete("cas", "k", WriteOptions::default())
                    .await
                    .unwrap();
            }
            Err(err) => {
                let err = err.server_error().expect("a server error").clone();
                assert_eq!(err.code, ErrorCode::WrongRevision, "{err}");
                reports.push((expect, err.current_revision.expect("current_revision")));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    let puts = puts.lock().unwrap();
    assert!(reports.len() > 20, "only {} refusals", reports.len());
    for (expect, current) in reports {
        assert_ne!(
            current, expect,
            "refused although the key was at the expected revision"
        );
        if expect == 0 {
            // A create is refused only when the key has a value: a revision of one of the puts.
            assert!(
                puts.contains(&current),
                "a refused create reported current_revision {current}, which is not a revision \
                 at which the key had a value"
            );
        } else {
            assert!(
                current == 0 || puts.contains(&current),
                "current_revision {current} was never the key's revision"
            );
        }
    }
}

/// Right after NATS comes back, a sidecar's own acknowledged writes (deletes included) are what
/// its reads return, on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_nats_restarts_see_this_sidecars_own_writes() {
    let mut nats = NatsServer::start().await;
    let a = Sidecar::start(&nats.url(), vec![bucket("ryw")]).await;
    let b = Sidecar::start(&nats.url(), vec![bucket("ryw")]).await;
    let writer = a.synced_client().await;
    let reader = a.client().await;
    let other = b.synced_client().await;
    let mut checked = 0;
    for restart in 0..3 {
        nats.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        nats.restart().await;
        // The first seconds after the restart: feeds resuming, checkers reloading.
        let until = Instant::now() + Duration::from_secs(3);
        let mut n = 0;
        while Instant::now() < until {
            n += 1;
            let value = format!("r{restart}-{n}");
            let write = WriteOptions {
                timeout_ms: Some(3000),
                ..WriteOptions::default()
            };
            // Another sidecar's writes to the same key keep its revisions moving.
            let _ = other.put_with("ryw", "k", b"other", write).await;
            let Ok(rev) = writer.put_with("ryw", "k", value.as_bytes(), write).await else {
                continue;
            };
            let entry = reader.get("ryw", "k").await.unwrap();
            let seen = entry.map(|e| e.revision).unwrap_or(0);
            assert!(
                seen >= rev,
                "after a put at {rev} the read saw revision {seen}"
            );
            let Ok(deleted) = writer.delete("ryw", "k", write).await else {
                continue;
            };
            let (entry, fresh) = reader
                .get_fresh("ryw", "k", ReadOptions::default())
                .await
                .unwrap();
            if let Some(entry) = entry {
                assert!(
                    entry.revision > deleted,
                    "the delete at {deleted} was acknowledged, but the read (mirror at {}) \
                     returned the value of revision {}",
                    fresh.revision,
                    entry.revision
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} rounds completed");
}

/// With NATS down, a write says it was not sent and a strong read fails at once, without
/// waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_writes_say_not_sent_and_strong_reads_fail_at_once() {
    let mut nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("down")]).await;
    let client = sidecar.synced_client().await;
    client.put("down", "k", b"v").await.unwrap();
    nats.stop();
    crate::harness::eventually(Duration::from_secs(10), "the sidecar notices", || async {
        !client.status(None).await.unwrap()[0].connected
    })
    .await;
    let err = client.put("down", "k", b"w").await.unwrap_err();
    let err = err.server_error().unwrap();
    assert_eq!((err.code, err.sent), (ErrorCode::Unavailable, Some(false)));
    let started = Instant::now();
    let strong = ReadOptions {
        consistency: Consistency::Strong,
        timeout_ms: Some(10_000),
        ..ReadOptions::default()
    };
    let err = client.get_with("down", "k", strong).await.unwrap_err();
    assert_eq!(err.server_error().unwrap().code, ErrorCode::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the strong read waited {:?} with NATS known to be down",
        started.elapsed()
    );
    // Cached reads go on (fail-static).
    assert!(client.get("down", "k").await.unwrap().is_some());
}
