//! Who may use the sidecar: socket mode and group, peer credentials (SO_PEERCRED), read-only
//! buckets. A second user is played by `nobody` when the tests run as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use tokio::net::UnixStream;

use crate::harness::{bucket, NatsServer, Sidecar};
use crate::raw_socket::{expect_closed, read_response};

const NOBODY: u32 = 65534;

fn own_ids() -> (u32, u32) {
    let dir = std::env::temp_dir();
    let probe = tempfile::NamedTempFile::new_in(dir).unwrap();
    let meta = probe.as_file().metadata().unwrap();
    (meta.uid(), meta.gid())
}

/// Runs `nearkv status` against `socket` as `nobody`; returns its exit code and stderr.
fn status_as_nobody(binary: &std::path::Path, socket: &std::path::Path) -> (i32, String) {
    let output = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(binary)
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .expect("setpriv runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_checked_by_credentials_and_read_only_buckets_refuse_writes() {
    let nats = NatsServer::start().await;
    let (uid, gid) = own_ids();
    let root = uid == 0;
    // As root the socket can go to another group; otherwise to our own.
    let group = if root { NOBODY } else { gid };
    let ro = nearkv::config::BucketConfig {
        read_only: true,
        ..bucket("ro")
    };
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("rw"), ro], |config| {
        config.socket.mode = "0640".to_string();
        config.socket.group = Some(group.to_string());
        config.socket.allow_uids = vec![uid];
    })
    .await;
    let meta = std::fs::metadata(&sidecar.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), group);

    // An allowed peer works; a read-only bucket refuses writes with `forbidden` but serves reads.
    let client = sidecar.synced_client().await;
    client.put("rw", "k", b"v").await.unwrap();
    let refused = client.put("ro", "k", b"v").await.unwrap_err();
    let refused = refused.server_error().unwrap();
    assert_eq!(refused.code, nearkv::ErrorCode::Forbidden);
    assert!(refused.message.contains("read-only"), "{}", refused.message);
    assert!(client.delete("ro", "k", Default::default()).await.is_err());
    assert_eq!(client.get("ro", "k").await.unwrap(), None);
    sidecar.stop().await;

    // A peer outside the allow lists is told `forbidden` and closed.
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("rw")], |config| {
        config.socket.allow_uids = vec![uid + 4242];
        config.socket.allow_gids = vec![gid + 4242];
    })
    .await;
    let mut stream = UnixStream::connect(&sidecar.socket).await.unwrap();
    let answer = read_response(&mut stream).await.expect("an error frame");
    assert_eq!(answer["id"], 0);
    assert_eq!(answer["error"]["code"], "forbidden");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("user {uid}")),
        "{answer}"
    );
    expect_closed(&mut stream).await;
    sidecar.stop().await;

    if !root {
        println!("not root: the check as a second user (nobody) needs root to switch users");
        return;
    }
    // A real second user: `nobody` may reach the socket file (mode 0666 in a 0755 directory), so
    // only the credential check stands between it and the sidecar.
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("nearkv");
    std::fs::copy(env!("CARGO_BIN_EXE_nearkv"), &binary).unwrap();
    let socket = dir.path().join("shared.sock");
    for (allowed, expect_ok) in [(vec![uid], false), (vec![uid, NOBODY], true)] {
        let socket = socket.clone();
        let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("rw")], |config| {
            config.socket.path = socket;
            config.socket.mode = "0666".to_string();
            config.socket.allow_uids = allowed;
        })
        .await;
        let binary = binary.clone();
        let path = sidecar.socket.clone();
        let (code, stderr) = tokio::task::spawn_blocking(move || status_as_nobody(&binary, &path))
            .await
            .unwrap();
        if expect_ok {
            assert_eq!(code, 0, "nobody is allowed: {stderr}");
        } else {
            assert_eq!(code, 2, "nobody is refused: {stderr}");
            assert!(stderr.contains("forbidden"), "{stderr}");
        }
        sidecar.stop().await;
    }
}
