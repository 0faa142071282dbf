//! Starting the proxy for a test: in-process through the library, or as the
//! real binary when a test needs a process (signals, memory, exit codes).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use plumeway::config::Config;
use plumeway::server::Server;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};

use crate::Client;

/// The proxy running inside the test process; shut down gracefully on drop.
#[derive(Debug)]
pub struct TestProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin listener is, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// Its first TLS listener, when the config has `[server.tls]`.
    pub tls: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestProxy {
    /// Serves `toml` (its listen address, and the admin listener's if
    /// any, are replaced by 127.0.0.1:0).
    pub async fn start(toml: &str) -> Self {
        let mut config = Config::parse(Path::new("test.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
        config.server.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        if let Some(admin) = &mut config.admin {
            admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        }
        if let Some(tls) = &mut config.server.tls {
            tls.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        }
        Self::serve(&config).await
    }

    /// Serves the config file at `path` as it is (so that it can be
    /// reloaded: it should listen on 127.0.0.1:0).
    pub async fn start_file(path: &Path) -> Self {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        Self::serve(&config).await
    }

    async fn serve(config: &Config) -> Self {
        let server = Server::bind(config).await.unwrap_or_else(|e| panic!("bind proxy: {e}"));
        let addr = server.local_addrs()[0];
        let admin = server.admin_addr();
        let tls = server.tls_addrs().first().copied();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            tls,
            stop: Some(stop),
        }
    }

    /// A client aimed at the admin listener.
    pub fn admin(&self) -> Client {
        Client::new(self.admin.expect("the config has no [admin]"))
    }

    /// A client aimed at the proxy.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real `plumeway` binary serving a config written to a temporary file.
#[derive(Debug)]
pub struct BinaryProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    logged: Arc<Notify>,
    /// Reads stderr into `logs` until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl BinaryProxy {
    /// The config file it serves (rewrite it, then signal `HUP`).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("plumeway.toml")
    }

    /// Runs `plumeway run` on `toml`, which must listen on `127.0.0.1:0`;
    /// returns once the proxy logged its listening address.
    pub async fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plumeway.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut child = Command::new(binary())
            .arg("run")
            .arg(&path)
            .arg("--log")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn plumeway");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Notify::new());
        let stderr = child.stderr.take().expect("stderr");
        let reader = {
            let logs = Arc::clone(&logs);
            let logged = Arc::clone(&logged);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().expect("logs").push(line);
                    logged.notify_waiters();
                }
                logged.notify_waiters();
            })
        };
        let mut proxy = Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            logs,
            logged,
            reader: Some(reader),
            _dir: dir,
        };
        let line = proxy.wait_for_log("listening").await;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        proxy.addr = addr;
        proxy
    }

    /// A client aimed at the proxy.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("plumeway still running")
    }

    /// Waits until a log line contains `needle`, and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        crate::within(&format!("log line containing {needle:?}"), async {
            loop {
                let notified = self.logged.notified();
                if let Some(line) = self.logs.lock().expect("logs").iter().find(|l| l.contains(needle)) {
                    return line.clone();
                }
                notified.await;
            }
        })
        .await
    }

    /// Everything logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Sends a signal (`"TERM"`, `"INT"`, …) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, and for everything it logged to be
    /// read (the last lines may still be in the pipe when it exits).
    pub async fn wait(&mut self) -> ExitStatus {
        let status = crate::within("plumeway exit", self.child.wait()).await.expect("wait");
        if let Some(reader) = self.reader.take() {
            let _ = crate::within("plumeway's stderr", reader).await;
        }
        status
    }

    /// A field of `/proc/PID/status` in KiB, e.g. `VmRSS` or `VmHWM` (peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

/// The `plumeway-e2e` binary. Cargo builds it before this package's
/// integration tests and names it in `CARGO_BIN_EXE_*` only for the test
/// crates themselves, so this library finds it beside the running test
/// (`target/<profile>/deps/test-HASH` → `target/<profile>/plumeway-e2e`).
fn binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_plumeway-e2e") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = profile_dir.join("plumeway-e2e");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test`",
        bin.display()
    );
    bin
}
