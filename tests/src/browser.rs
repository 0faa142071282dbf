//! A real headless browser for dashboard tests: Debian's Chromium driven
//! by Debian's ChromeDriver over the W3C WebDriver protocol (plain JSON
//! over HTTP, so no driver crate is needed for the few calls we make).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Client;

/// A ChromeDriver process with one headless Chromium session; both are
/// stopped (by PID) when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Client,
    session: String,
    child: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium, installing Debian's
    /// `chromium` and `chromium-driver` first when they are missing.
    pub async fn start() -> Self {
        crate::ensure_installed("chromedriver", &["chromium", "chromium-driver"]);
        let profile = tempfile::tempdir().expect("tempdir");
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = crate::free_port();
            let mut child = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + crate::STEP;
            while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push(format!("port {port}: chromedriver exited with {status}"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if std::net::TcpStream::connect(addr).is_err() {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            let driver = Client::new(addr);
            // The flags the machine notes ask for: no sandbox as root, and
            // nothing that reaches for the (closed) network by itself.
            let capabilities = json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }}});
            let reply = post(&driver, "/session", &capabilities).await;
            let Some(session) = reply["value"]["sessionId"].as_str() else {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!("port {port}: no session: {reply}"));
                continue;
            };
            return Self {
                driver,
                session: session.to_owned(),
                child,
                _profile: profile,
            };
        }
        panic!("could not start headless Chromium: {failures:#?}");
    }

    /// Opens `url` and waits for it to load.
    pub async fn open(&self, url: &str) {
        let reply = post(
            &self.driver,
            &format!("/session/{}/url", self.session),
            &json!({ "url": url }),
        )
        .await;
        assert!(reply["value"].is_null(), "navigation to {url} failed: {reply}");
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        let reply = post(
            &self.driver,
            &format!("/session/{}/execute/sync", self.session),
            &json!({ "script": script, "args": [] }),
        )
        .await;
        assert!(reply["value"].get("error").is_none(), "script failed: {reply}");
        reply["value"].clone()
    }

    /// Evaluates `script` until it returns `want`, within the test's bound.
    pub async fn wait_for(&self, what: &str, script: &str, want: &Value) {
        let deadline = tokio::time::Instant::now() + crate::STEP;
        loop {
            let got = self.eval(script).await;
            if &got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still {got} after {:?}",
                crate::STEP
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; killing the driver then
        // cannot leave a browser behind. Best effort, off the runtime.
        let addr = self.driver.addr();
        let path = format!("/session/{}", self.session);
        let _ = std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(s, "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
        })
        .join();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &Client, path: &str, body: &Value) -> Value {
    let request = client
        .request("POST", path)
        .header("content-type", "application/json")
        .body(crate::client::body(body.to_string()))
        .expect("request");
    let reply = client.send(request).await;
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("WebDriver {path}: {e}: {}", reply.text()))
}
