//! A real DNS server for discovery tests: dnsmasq on 127.0.0.1 and a port
//! the OS picked, serving A records from a hosts file the test rewrites.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running dnsmasq; stopped (by its PID) when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    /// Where it answers.
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq serving `hosts` (lines of `IP NAME`), with a 1-second
    /// TTL so that changes are seen quickly. Installs Debian's dnsmasq-base
    /// first when the binary is missing (these machines run as root).
    pub fn start(hosts: &str) -> Self {
        Self::start_with(hosts, &[])
    }

    /// Like [`Dnsmasq::start`], with extra dnsmasq options (e.g.
    /// `--srv-host=…`, which only a restart changes).
    pub fn start_with(hosts: &str, options: &[String]) -> Self {
        crate::ensure_installed("dnsmasq", &["dnsmasq-base"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).expect("hosts file");
        // The port is found free and then bound by dnsmasq, so another test
        // may take it in between: try a few ports before giving up.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("free port")
                .port();
            let log = dir.path().join(format!("dnsmasq-{port}.log"));
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--user=root",
                    "--pid-file=",
                    "--local-ttl=1",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", path.display()))
                .args(options)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("start dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_until_listening(addr, &mut child) {
                Ok(()) => {
                    return Self {
                        addr,
                        hosts: path,
                        child,
                        _dir: dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!(
                        "port {port}: {why}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
            }
        }
        panic!("dnsmasq did not start: {failures:#?}");
    }

    /// Replaces the records and makes dnsmasq reload them (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("hosts file");
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "could not signal dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq's TCP listener answers once it is up; an early exit is a failure.
fn wait_until_listening(addr: SocketAddr, child: &mut Child) -> Result<(), String> {
    let deadline = std::time::Instant::now() + crate::STEP;
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if std::time::Instant::now() >= deadline {
            return Err("not listening in time".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
