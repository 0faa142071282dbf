//! Shared pieces of the benchmarks: a tiny backend, a keep-alive load
//! generator, and CPU time of a process from `/proc`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts a backend answering every request with a 6-byte body.
pub async fn backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The result of one load run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests completed with status 200.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Sends `total` GET requests for `path` to `addr` over `connections`
/// keep-alive HTTP/1.1 connections.
pub async fn load(addr: SocketAddr, path: &str, connections: usize, total: u64) -> Run {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (ok, failed, next) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&next));
        // The origin form, as a browser or wrk sends it: an absolute URI
        // whose authority is not the Host is malformed to the proxy.
        let uri: http::Uri = path.parse().expect("uri");
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                return;
            };
            tokio::spawn(conn);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = http::Request::get(uri.clone())
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .expect("req");
                match sender.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = TokioExecutor::new();
    Run {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// User + system CPU time of process `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Clock ticks; 100 per second on Linux unless the kernel says otherwise.
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
        .unwrap_or(100);
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}
