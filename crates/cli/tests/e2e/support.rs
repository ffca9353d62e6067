//! Starts the real `logicore` binary on port 0 and talks to it over HTTP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a process may take to start listening or to stop.
const STARTUP: Duration = Duration::from_secs(60);

/// Which database a test platform runs on.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default under the data dir.
    Sqlite,
    /// A fresh PostgreSQL schema (URL with its search_path).
    Postgres(String),
}

impl Database {
    /// SQLite always; PostgreSQL too when `LOGICORE_TEST_POSTGRES_URL` is set.
    pub async fn all() -> Vec<Database> {
        let mut databases = vec![Database::Sqlite];
        if let Some(url) = logicore_platform::testing::postgres_url() {
            databases.push(Database::Postgres(
                logicore_platform::testing::fresh_schema_url(&url).await,
            ));
        }
        databases
    }

    pub fn label(&self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }
}

/// The bootstrap admin every `up` of the suite gets unless a test sets its own.
pub const ADMIN_EMAIL: &str = "e2e-admin@example.com";
pub const ADMIN_PASSWORD: &str = "e2e admin password";

/// A data directory plus the settings a platform is started with.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub database: Database,
    pub env: Vec<(String, String)>,
    pub config_file: Option<PathBuf>,
}

impl Setup {
    pub fn new(database: Database) -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("temporary directory"),
            database,
            // The first admin of `up`, for tests that write the catalog (tests may override).
            env: vec![
                ("LOGICORE_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
                ("LOGICORE_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            ],
            config_file: None,
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn config(mut self, toml: &str) -> Setup {
        let path = self.dir.path().join("logicore.toml");
        std::fs::write(&path, toml).expect("write config");
        self.config_file = Some(path);
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Builds a `logicore` command with this setup's data dir, config and environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_logicore"));
        command.current_dir(self.dir.path());
        command.arg("--data-dir").arg(self.data_dir());
        if let Some(file) = &self.config_file {
            command.arg("--config").arg(file);
        }
        command.args(args);
        // Only what the test sets: never a developer's own keys.
        command.env_remove("LOGICORE_ENCRYPTION_KEYS");
        command.env("LOGICORE_GATEWAY__LISTEN", "127.0.0.1:0");
        command.env("LOGICORE_ADMIN__LISTEN", "127.0.0.1:0");
        command.env("LOGICORE_SERVICES__CATALOG__LISTEN", "127.0.0.1:0");
        command.env("LOGICORE_SERVICES__USERS__LISTEN", "127.0.0.1:0");
        command.env("LOGICORE_SERVICES__ORDERS__LISTEN", "127.0.0.1:0");
        command.env("LOGICORE_SERVICES__WEBHOOKS__LISTEN", "127.0.0.1:0");
        if let Database::Postgres(url) = &self.database {
            command.env("LOGICORE_DATABASE__URL", url);
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts `logicore up` and waits until both listeners are bound.
    pub fn start(&self) -> Platform {
        self.start_roles(&["up"], &["gateway", "admin"])
    }

    /// Starts `logicore <args>` and waits until a `listening` line came for each role.
    pub fn start_roles(&self, args: &[&str], roles: &[&str]) -> Platform {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn logicore");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = mpsc::channel();
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line.clone());
                collected.lock().expect("lines").push(line);
            }
        });
        let mut addrs = BTreeMap::new();
        let deadline = Instant::now() + STARTUP;
        while roles.iter().any(|role| !addrs.contains_key(*role)) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = receiver.recv_timeout(remaining).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "logicore did not start listening; output: {:?}",
                    lines.lock().expect("lines")
                )
            });
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                let addr: SocketAddr = event["addr"]
                    .as_str()
                    .expect("addr")
                    .parse()
                    .expect("socket address");
                addrs.insert(event["role"].as_str().expect("role").to_owned(), addr);
            }
        }
        Platform {
            child,
            addrs,
            events: receiver,
            client: reqwest::Client::new(),
            admin_token: tokio::sync::OnceCell::new(),
        }
    }
}

/// A running `logicore up`.
pub struct Platform {
    pub child: Child,
    addrs: BTreeMap<String, SocketAddr>,
    events: mpsc::Receiver<String>,
    pub client: reqwest::Client,
    /// The bootstrap admin's access token (None without a users service).
    admin_token: tokio::sync::OnceCell<Option<String>>,
}

impl Platform {
    /// Signs `request` with the bootstrap admin's token, when the platform has accounts.
    pub async fn as_admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.admin_token().await {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The `Authorization` header line of the bootstrap admin, for raw HTTP requests.
    pub async fn admin_header(&self) -> String {
        let token = self
            .admin_token()
            .await
            .expect("an admin token (is this `up`?)");
        format!("Authorization: Bearer {token}\r\n")
    }

    /// The bootstrap admin's access token (signed in once), when the platform has accounts.
    pub async fn admin_token(&self) -> Option<String> {
        self.admin_token
            .get_or_init(|| async {
                let reply = self
                    .client
                    .post(self.url("/api/v1/auth/login"))
                    .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
                    .send()
                    .await
                    .ok()?;
                let tokens: Value = reply.json().await.ok()?;
                tokens["access_token"].as_str().map(str::to_owned)
            })
            .await
            .clone()
    }

    /// Returns the bound address of a role's listener (`gateway`, `admin`, `catalog`).
    pub fn addr(&self, role: &str) -> SocketAddr {
        self.addrs[role]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("gateway"))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("admin"))
    }

    /// POSTs JSON through the gateway; returns the status and the JSON answer.
    /// POSTs JSON; writes outside `/api/v1/auth` are made as the bootstrap admin.
    pub async fn post_json(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(body);
        if !path.starts_with("/api/v1/auth") {
            request = self.as_admin(request).await;
        }
        let reply = request.send().await.expect("POST");
        let status = reply.status();
        (status, reply.json().await.expect("JSON answer"))
    }

    /// GETs JSON through the gateway; returns the status and the JSON answer.
    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let reply = self.client.get(self.url(path)).send().await.expect("GET");
        let status = reply.status();
        (status, reply.json().await.expect("JSON answer"))
    }

    /// Returns the log lines at WARN or ERROR received since the last look (for messages).
    pub fn recent_problems(&self) -> Vec<String> {
        self.events
            .try_iter()
            .filter(|line| {
                line.contains("\"level\":\"ERROR\"") || line.contains("\"level\":\"WARN\"")
            })
            .collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for a log line whose `message` is `message`.
    pub fn wait_for_message(&self, message: &str) -> Value {
        let deadline = Instant::now() + STARTUP;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = self
                .events
                .recv_timeout(remaining)
                .unwrap_or_else(|_| panic!("no `{message}` log line"));
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == message
            {
                return event;
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "logicore did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A product body with the given SKU.
pub fn product(sku: &str) -> Value {
    serde_json::json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "price_cents": 2500,
        "currency": "EUR",
        "stock": 7,
    })
}

/// Reads every JSON line of the log files under `dir`.
pub fn file_log_events(dir: &Path) -> Vec<Value> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir).expect("log dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "log") {
            let text = std::fs::read_to_string(&path).expect("log file");
            events.extend(
                text.lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok()),
            );
        }
    }
    events
}

/// Sends raw bytes to `addr` and returns everything the server answers until it closes.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (413) and close before the whole body is written.
    let _ = stream.write_all(request).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(STARTUP, stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// A real SMTP server (Python's aiosmtpd, Debian package `python3-aiosmtpd`) on a free port,
/// keeping every message it accepts in a Maildir.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: tempfile::TempDir,
}

/// An aiosmtpd Maildir handler that waits `delay` seconds before accepting each message.
const SLOW_MAILBOX: &str = r#"
import asyncio
from aiosmtpd.handlers import Mailbox

class SlowMailbox(Mailbox):
    @classmethod
    def from_cli(cls, parser, *args):
        box = cls(args[0])
        box.delay = float(args[1])
        return box

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)
"#;

impl SmtpServer {
    pub fn start() -> SmtpServer {
        SmtpServer::start_slow(Duration::ZERO)
    }

    /// A server that takes `delay` to accept each message.
    pub fn start_slow(delay: Duration) -> SmtpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let maildir = tempfile::tempdir().expect("maildir");
        std::fs::write(maildir.path().join("slowbox.py"), SLOW_MAILBOX).expect("handler");
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "slowbox.SlowMailbox"])
            .arg(maildir.path().join("mail"))
            .arg(delay.as_secs_f64().to_string())
            .env("PYTHONPATH", maildir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (apt-get install python3-aiosmtpd)");
        let server = SmtpServer {
            child,
            port,
            maildir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("aiosmtpd did not listen on {port} (is python3-aiosmtpd installed?)");
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far (raw RFC 5322 text).
    pub fn messages(&self) -> Vec<String> {
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.path().join("mail").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                messages.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        messages
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of header `name` in a raw message.
pub fn header_value(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|line| !line.is_empty())
        .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .map(|line| line[prefix.len()..].trim().to_owned())
}

/// Registers and signs in a customer; returns their access token.
pub async fn customer_token(platform: &Platform, email: &str) -> String {
    let account =
        serde_json::json!({"email": email, "password": "customer password", "name": "Customer"});
    let (status, body) = platform.post_json("/api/v1/auth/register", &account).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let (status, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &serde_json::json!({"email": email, "password": "customer password"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().expect("token").to_owned()
}

/// Polls `check` every 50 ms for up to `seconds`; panics saying `what` when it never holds.
pub async fn eventually<T>(
    what: &str,
    seconds: u64,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Held by tests whose platforms consume RabbitMQ queues: the consumers' queues have fixed
/// names on the shared broker, so two such platforms at once would take each other's
/// messages.
pub async fn rabbitmq_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
