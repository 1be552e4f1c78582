//! Test harness: real `chorus serve` processes in temporary data dirs on free loopback ports,
//! over TLS as the README starts them (the first node makes the cluster CA, the others join
//! with `--ca-pin`; clients trust the CA in the data dir). Helpers that assert are named
//! `must_*`; waits poll a condition until a deadline.
#![allow(dead_code)]

use client::{Client, Credentials};
use model::{Job, JobId};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub(crate) struct TestNode {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) client: Client,
    pub(crate) addr: String,
    slots: u32,
    child: Option<Child>,
    /// `--join` target and the admin key to join with.
    join: Option<(String, Credentials)>,
    /// More `chorus serve` arguments, e.g. a short `--drain-timeout-s`.
    args: Vec<String>,
    /// More environment variables of the process, e.g. an S3 endpoint's.
    env: Vec<(String, String)>,
}

/// The `chorus` binary the nodes run: the one cargo built for these tests, or `CHORUS_BIN`
/// (a copy that a rebuild during a long run does not replace).
fn binary() -> std::ffi::OsString {
    std::env::var_os("CHORUS_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_chorus").into())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestNode {
    pub(crate) async fn start() -> TestNode {
        TestNode::start_with_slots(2).await
    }

    pub(crate) async fn start_with_slots(slots: u32) -> TestNode {
        TestNode::start_in_with(tempfile::tempdir().unwrap(), slots, &[]).await
    }

    /// A node whose data dir is in `dir` (e.g. a small file system of a test's own).
    pub(crate) async fn start_in(dir: tempfile::TempDir, slots: u32) -> TestNode {
        TestNode::start_in_with(dir, slots, &[]).await
    }

    /// A founding node started with more `chorus serve` arguments.
    pub(crate) async fn start_with(slots: u32, args: &[&str]) -> TestNode {
        TestNode::start_in_with(tempfile::tempdir().unwrap(), slots, args).await
    }

    /// A founding node started with more `chorus serve` arguments and environment variables.
    pub(crate) async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestNode {
        let mut node = TestNode::unstarted(tempfile::tempdir().unwrap(), 2, args);
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.spawn().await;
        node
    }

    async fn start_in_with(dir: tempfile::TempDir, slots: u32, args: &[&str]) -> TestNode {
        let mut node = TestNode::unstarted(dir, slots, args);
        node.spawn().await;
        node
    }

    fn unstarted(dir: tempfile::TempDir, slots: u32, args: &[&str]) -> TestNode {
        let addr = format!("127.0.0.1:{}", free_port());
        let placeholder = Client::with_transport(
            &addr,
            Credentials {
                key_id: String::new(),
                secret: String::new(),
            },
            &client::Transport::InsecureHttp,
        );
        TestNode {
            dir,
            client: placeholder,
            addr,
            slots,
            child: None,
            join: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// A node that joins the cluster `member` belongs to.
    pub(crate) async fn join(member: &TestNode) -> TestNode {
        let mut node = TestNode::joining(member, member.credentials());
        node.spawn().await;
        node
    }

    /// A node that joins the cluster `member` belongs to, started with more `chorus serve`
    /// arguments (e.g. `--label`).
    pub(crate) async fn join_with(member: &TestNode, args: &[&str]) -> TestNode {
        let mut node = TestNode::joining(member, member.credentials());
        node.args.extend(args.iter().map(|a| a.to_string()));
        node.spawn().await;
        node
    }

    /// A node that will join the cluster of `member` when it is launched, pinning the
    /// member's CA (`--ca-pin`, as the README says); not started yet.
    pub(crate) fn joining(member: &TestNode, credentials: Credentials) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        TestNode {
            dir,
            client: member.client_at(&addr, credentials.clone()),
            addr,
            slots: 2,
            child: None,
            join: Some((member.addr.clone(), credentials)),
            args: vec!["--ca-pin".into(), member.ca_pin()],
            env: Vec::new(),
        }
    }

    /// Replaces the extra `chorus serve` arguments (a joining node's `--ca-pin` among them).
    pub(crate) fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// The cluster CA's certificate file in this node's data dir.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join("data").join(node::tls::CA_CERT_FILE)
    }

    /// The cluster CA's fingerprint, as the first node prints it (`sha256:<hex>`).
    pub(crate) fn ca_pin(&self) -> String {
        ca_pin_of(&self.ca_file())
    }

    /// How clients reach this node: TLS trusting the cluster CA in its data dir.
    pub(crate) fn transport(&self) -> client::Transport {
        transport_of(&self.ca_file())
    }

    /// A client of the node at `addr` (of this node's cluster) with `credentials`.
    pub(crate) fn client_at(&self, addr: &str, credentials: Credentials) -> Client {
        Client::with_transport(addr, credentials, &self.transport())
    }

    /// A bare HTTP client that trusts the cluster CA, for requests the typed client would
    /// not send (forged, replayed, unsigned).
    pub(crate) fn http(&self) -> reqwest::Client {
        self.transport()
            .configure(reqwest::Client::builder())
            .build()
            .unwrap()
    }

    /// The CLI arguments that reach this node: its HTTPS address and the CA to trust.
    pub(crate) fn cli_server_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--server".into(),
            self.client.base_url().into(),
            "--ca".into(),
            self.ca_file().into(),
        ]
    }

    /// Runs the CLI against this node with its admin key; answers stdout, failing on an error.
    pub(crate) async fn must_cli(&self, args: &[&str]) -> String {
        let server = self.cli_server_args();
        let credentials = self.credentials();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let shown = args.join(" ");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
                .args(&args)
                .args(&server)
                .env("CHORUS_KEY_ID", &credentials.key_id)
                .env("CHORUS_KEY_SECRET", &credentials.secret)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "chorus {shown}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn credentials(&self) -> Credentials {
        let text = std::fs::read_to_string(self.dir.path().join("data").join(node::ADMIN_KEY_FILE))
            .unwrap();
        let key: node::KeyFile = serde_json::from_str(&text).unwrap();
        Credentials {
            key_id: key.id,
            secret: key.secret,
        }
    }

    /// The node's id, as it wrote it in its data dir.
    pub(crate) fn id(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("data/node.id"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process without waiting for it (see [`TestNode::probe_ready`]).
    pub(crate) fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .unwrap();
        let mut command = Command::new(binary());
        command
            .args([
                "serve",
                "--fault-injection",
                // Snapshots every 200 entries: every test crosses some (the default is 5,000).
                "--snapshot-logs",
                "200",
                "--listen",
                &self.addr,
                "--slots",
                &self.slots.to_string(),
                "--data-dir",
            ])
            .arg(self.dir.path().join("data"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some((member, credentials)) = &self.join {
            command
                .args(["--join", member])
                .env("CHORUS_KEY_ID", &credentials.key_id)
                .env("CHORUS_KEY_SECRET", &credentials.secret);
        }
        let child = command
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    async fn spawn(&mut self) {
        self.launch();
        let key_file = self.dir.path().join("data").join(node::ADMIN_KEY_FILE);
        let addr = self.addr.clone();
        wait_until("the node is ready", || {
            let key_file = key_file.clone();
            let addr = addr.clone();
            async move { ready_client(&key_file, &addr).await.is_some() }
        })
        .await;
        let key_file = self.dir.path().join("data").join(node::ADMIN_KEY_FILE);
        self.client = ready_client(&key_file, &self.addr).await.unwrap();
    }

    /// Whether the launched node answers `/readyz` with 200 now; once it does, `client`
    /// carries the node's own admin key.
    pub(crate) async fn probe_ready(&mut self) -> bool {
        let key_file = self.dir.path().join("data").join(node::ADMIN_KEY_FILE);
        match ready_client(&key_file, &self.addr).await {
            Some(client) => {
                self.client = client;
                true
            }
            None => false,
        }
    }

    /// The process id, while the process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`, ...) to the process, if it runs.
    pub(crate) fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args(["-s", name, &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -s {name} {pid}: {status}");
        }
    }

    /// Whether the process has exited (it is reaped then); true if it was never started.
    pub(crate) fn has_exited(&mut self) -> bool {
        let exited = match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_some(),
            None => true,
        };
        if exited {
            self.child = None;
        }
        exited
    }

    pub(crate) fn client_with(&self, key_id: &str, secret: &str) -> Client {
        self.client_at(
            &self.addr,
            Credentials {
                key_id: key_id.into(),
                secret: secret.into(),
            },
        )
    }

    /// A client that presents this node's own certificate (mutual TLS), as its peers do; for
    /// calls signed with the cluster key.
    pub(crate) fn node_client_with(&self, key_id: &str, secret: &str) -> Client {
        let data = self.dir.path().join("data");
        let identity = client::tls::Identity::from_pem(
            &std::fs::read(data.join(node::tls::NODE_CERT_FILE)).unwrap(),
            &std::fs::read(data.join(node::tls::NODE_KEY_FILE)).unwrap(),
        )
        .unwrap();
        let ca = std::fs::read(self.ca_file()).unwrap();
        let transport = client::Transport::trusting(&ca, Some(&identity)).unwrap();
        Client::with_transport(
            &self.addr,
            Credentials {
                key_id: key_id.into(),
                secret: secret.into(),
            },
            &transport,
        )
    }

    pub(crate) fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    /// `kill -9`, then the same `chorus serve` again at once, as systemd would.
    pub(crate) async fn restart(&mut self) {
        self.kill_9();
        self.spawn().await;
    }

    /// Sends SIGTERM and waits for the process to exit, at most `limit`; returns how long it
    /// took and whether it exited with success.
    pub(crate) async fn must_stop_by_sigterm(&mut self, limit: Duration) -> (Duration, bool) {
        let sent = Instant::now();
        self.signal("TERM");
        let mut child = self.child.take().expect("the node runs");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (sent.elapsed(), status.success());
            }
            if sent.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the node did not exit within {limit:?} of SIGTERM\n--- node log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts the node again on its data dir after it stopped, and waits until it is ready.
    pub(crate) async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the node still runs");
        self.spawn().await;
    }

    pub(crate) async fn metrics(&self) -> String {
        let (status, body) = self.client.get_public("/metrics").await.unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// The fingerprint of the CA certificate in `ca_file`.
pub(crate) fn ca_pin_of(ca_file: &std::path::Path) -> String {
    let pem = std::fs::read(ca_file).unwrap();
    let ca = client::tls::certificates(&pem, "CA").unwrap();
    client::tls::fingerprint(&ca[0])
}

/// TLS trusting the CA in `ca_file` (or plain HTTP for a node started with
/// `--insecure-http`, which writes none).
fn transport_of(ca_file: &std::path::Path) -> client::Transport {
    match std::fs::read(ca_file) {
        Ok(pem) => client::Transport::trusting(&pem, None).unwrap(),
        Err(_) => client::Transport::InsecureHttp,
    }
}

/// A bare HTTP client for plain-HTTP servers of the tests (webhook receivers, S3).
pub(crate) fn plain_http() -> reqwest::Client {
    client::Transport::InsecureHttp
        .configure(reqwest::Client::builder())
        .build()
        .unwrap()
}

/// A client with the node's admin key, if its key file is written and it answers `/readyz`
/// with 200 (over TLS trusting the CA next to the key, if there is one).
async fn ready_client(key_file: &std::path::Path, addr: &str) -> Option<Client> {
    let text = std::fs::read_to_string(key_file).ok()?;
    let key: node::KeyFile = serde_json::from_str(&text).ok()?;
    let ca_file = key_file.with_file_name(node::tls::CA_CERT_FILE);
    let client = Client::with_transport(
        addr,
        Credentials {
            key_id: key.id,
            secret: key.secret,
        },
        &transport_of(&ca_file),
    );
    matches!(client.get_public("/readyz").await, Ok((200, _))).then_some(client)
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- node log ---\n{}", self.log());
        }
    }
}

/// Polls `probe` until it finds a value; panics with `what` at the deadline. The only wait in
/// the tests: the poll interval is short and the deadline bounds it, so no test sleeps and
/// hopes.
pub(crate) async fn must_find<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How often a wait looks at its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; panics with `what` at the deadline.
pub(crate) async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    must_find(what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Waits until the job is finished and returns it; panics at the deadline. A read the
/// cluster refuses for now (`unavailable`, e.g. while a node joins) is asked again, as any
/// client would; every other error fails the test.
pub(crate) async fn must_finish(client: &Client, id: JobId) -> Job {
    let started = Instant::now();
    loop {
        let answer = client.wait(id, Duration::from_secs(5)).await;
        let last = match answer {
            Ok(job) if job.state.is_terminal() => return job,
            Ok(job) => format!("{job:?}"),
            Err(e) if e.code() == Some(model::ErrorCode::Unavailable) => e.to_string(),
            Err(e) => panic!("waiting for job {id}: {e}"),
        };
        assert!(
            started.elapsed() < DEADLINE,
            "job {id} did not finish: {last}"
        );
    }
}

/// The value of one sample in a Prometheus text exposition.
pub(crate) fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

/// Milliseconds since the epoch, as the nodes stamp times.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The cluster's events (`GET /v1/events`) as the node answers them.
pub(crate) async fn must_read_events(node: &TestNode) -> Vec<serde_json::Value> {
    let (code, body) = node
        .client
        .raw("GET", "/v1/events", Vec::new())
        .await
        .unwrap();
    assert_eq!(code, 200);
    let events: serde_json::Value = serde_json::from_slice(&body).unwrap();
    events["events"].as_array().cloned().unwrap_or_default()
}
