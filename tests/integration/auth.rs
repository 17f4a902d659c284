//! NATS authentication and TLS: user and password, token, nkey, `.creds` (operator mode with
//! JWTs minted here) and TLS with a custom CA and a client certificate (made here with rcgen),
//! each against a nats-server configured for it. Secrets never reach logs or error messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use nearkv::config::{NatsConfig, Secret};
use serde_json::json;
use tempfile::TempDir;

use crate::harness::{bucket, free_port, NatsServer, Sidecar};

/// A nats-server with `config` (an auth or TLS block), and the directory its files live in.
async fn server_with(config: &str, dir: &Path) -> NatsServer {
    let file = dir.join("server.conf");
    std::fs::write(&file, config).unwrap();
    let port = free_port();
    let server = NatsServer::launch(port, vec!["-c".to_string(), file.display().to_string()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Starts a sidecar with `nats` settings and proves it works: synced, a write, a read.
async fn works_with(server: &NatsServer, nats: NatsConfig) {
    let sidecar = Sidecar::start_with(&server.url(), vec![bucket("auth")], |config| {
        config.nats = NatsConfig {
            servers: vec![server.url()],
            request_timeout: Duration::from_secs(2),
            ..nats
        };
    })
    .await;
    let client = sidecar.synced_client().await;
    let rev = client.put("auth", "k", b"v").await.unwrap();
    assert_eq!(
        client.get("auth", "k").await.unwrap().unwrap().revision,
        rev
    );
    sidecar.stop().await;
}

/// `nearkv serve` with bad credentials: it never syncs, and its log and its answers never
/// contain the secret.
async fn refused_without_leaking(server: &NatsServer, config_toml: &str, secret: &str) {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("nearkv.toml");
    std::fs::write(&config, config_toml).unwrap();
    let socket = dir.path().join("n.sock");
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--nats-url", &server.url(), "--bucket", "auth", "--socket"])
        .arg(&socket)
        .args(["--http-listen", "", "--log-level", "debug"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    crate::harness::eventually(Duration::from_secs(20), "the socket", || {
        let exists = socket.exists();
        async move { exists }
    })
    .await;
    let client = nearkv::Client::connect(&socket).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = client.get("auth", "k").await.unwrap_err().to_string();
    let status = client.status(None).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!status[0].synced && !status[0].connected, "{status:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("uthorization") || log.contains("auth"),
        "the log says why: {log}"
    );
    assert!(
        !log.contains(secret),
        "the secret leaked into the log:\n{log}"
    );
    assert!(
        !err.contains(secret),
        "the secret leaked into an error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_token_and_nkey_authentication() {
    let dir = TempDir::new().unwrap();
    let server = server_with(
        "authorization { user: nearkv, password: \"pa55-w0rd-xyz\" }",
        dir.path(),
    )
    .await;
    works_with(
        &server,
        NatsConfig {
            user: Some("nearkv".to_string()),
            password: Some(Secret::new("pa55-w0rd-xyz")),
            ..NatsConfig::default()
        },
    )
    .await;
    refused_without_leaking(
        &server,
        "[nats]\nuser = \"nearkv\"\npassword = \"wr0ng-pa55-abc\"\n",
        "wr0ng-pa55-abc",
    )
    .await;
    drop(server);

    let server = server_with("authorization { token: \"t0ken-s3cret-xyz\" }", dir.path()).await;
    works_with(
        &server,
        NatsConfig {
            token: Some(Secret::new("t0ken-s3cret-xyz")),
            ..NatsConfig::default()
        },
    )
    .await;
    refused_without_leaking(
        &server,
        "[nats]\ntoken = \"wr0ng-t0ken-abc\"\n",
        "wr0ng-t0ken-abc",
    )
    .await;
    drop(server);

    let user = nkeys::KeyPair::new_user();
    let server = server_with(
        &format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}",
            user.public_key()
        ),
        dir.path(),
    )
    .await;
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    works_with(
        &server,
        NatsConfig {
            nkey_seed_file: Some(seed_file),
            ..NatsConfig::default()
        },
    )
    .await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT: `claims` about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64(json!({"typ": "JWT", "alg": "ed25519-nkey"})
        .to_string()
        .as_bytes());
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{subject}{iat}").chars().take(52).collect::<String>(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = b64(claims.to_string().as_bytes());
    let signature = issuer
        .sign(format!("{header}.{payload}").as_bytes())
        .unwrap();
    format!("{header}.{payload}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_in_operator_mode() {
    let dir = TempDir::new().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "app",
        json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    // JetStream needs the server's system account.
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "nearkv",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let server = server_with(
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {account}: \"{account_jwt}\"\n  {system}: \"{system_jwt}\"\n}}\n",
            account = account.public_key(),
            system = system.public_key(),
        ),
        dir.path(),
    )
    .await;
    let seed = user.seed().unwrap();
    let creds = dir.path().join("nearkv.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    works_with(
        &server,
        NatsConfig {
            credentials_file: Some(creds),
            ..NatsConfig::default()
        },
    )
    .await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".to_string(), "localhost".to_string()]);
    let (client_cert, client_key) = leaf(vec!["nearkv".to_string()]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", &ca_cert.pem()),
        write("server.pem", &server_cert),
        write("server-key.pem", &server_key),
        write("client.pem", &client_cert),
        write("client-key.pem", &client_key),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_and_a_client_certificate() {
    let dir = TempDir::new().unwrap();
    let (ca, server_cert, server_key, client_cert, client_key) = certificates(dir.path());
    let server = server_with(
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            server_cert.display(),
            server_key.display(),
            ca.display()
        ),
        dir.path(),
    )
    .await;
    works_with(
        &server,
        NatsConfig {
            tls_ca_file: Some(ca.clone()),
            tls_cert_file: Some(client_cert),
            tls_key_file: Some(client_key),
            ..NatsConfig::default()
        },
    )
    .await;
    // Without a client certificate the server (verify: true) refuses the sidecar.
    refused_without_leaking(
        &server,
        &format!("[nats]\ntls_ca_file = \"{}\"\n", ca.display()),
        "BEGIN PRIVATE KEY",
    )
    .await;
}
