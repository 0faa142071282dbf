//! A real etcd for discovery tests: Debian's `etcd-server` on 127.0.0.1
//! ports the OS picked, with a temporary data dir, driven with Debian's
//! `etcdctl` (a client that is not ours, so the tests check our client
//! against etcd's own idea of the data).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd; stopped (by its PID) when dropped.
#[derive(Debug)]
pub struct Etcd {
    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd, installing `etcd-server` and `etcd-client` first when
    /// they are missing.
    pub fn start() -> Self {
        crate::ensure_installed("etcd", &["etcd-server", "etcd-client"]);
        let mut failures = Vec::new();
        // The ports are found free and then bound by etcd, so another test
        // may take one in between: try a few before giving up.
        for _ in 0..5 {
            let mut etcd = Self {
                url: String::new(),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            etcd.url = format!("http://127.0.0.1:{}", etcd.client_port);
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(why) => failures.push(why),
            }
        }
        panic!("etcd did not start: {failures:#?}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .spawn()
            .map_err(|e| format!("cannot run etcd: {e}"))?;
        let deadline = Instant::now() + crate::STEP;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if self.ctl(&["endpoint", "health"]).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("etcd not healthy in time".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Runs `etcdctl` against this etcd and returns what it printed.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
            .arg("--dial-timeout=1s")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Puts `key` = `value`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]).expect("etcdctl put");
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.ctl(&["del", key]).expect("etcdctl del");
    }

    /// The keys under `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .expect("etcdctl get")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Compacts the history up to the current revision, so a watch that
    /// asks for an older revision is refused.
    pub fn compact(&self) {
        let status = self.ctl(&["endpoint", "status", "--write-out=json"]).expect("status");
        let json: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        let revision = json[0]["Status"]["header"]["revision"].as_i64().expect("revision");
        self.ctl(&["compact", &revision.to_string()]).expect("etcdctl compact");
    }

    /// Stops etcd (SIGKILL: a crash, not a goodbye).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.launch() {
            panic!("etcd did not restart: {why}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
