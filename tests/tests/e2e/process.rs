//! Tests of the real `plumeway` binary as a process: memory while streaming,
//! and graceful shutdown on SIGTERM.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use plumeway_tests::backend::{BackendBody, full};
use plumeway_tests::client::ClientBody;
use plumeway_tests::{Backend, BinaryProxy, within};
use tokio::sync::{Notify, mpsc};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 800; // 800 × 64 KiB = 50 MiB
const TOTAL: usize = CHUNK * CHUNKS;

fn chunks() -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> {
    stream::iter((0..CHUNKS).map(|i| Ok(Frame::data(Bytes::from(vec![(i % 251) as u8; CHUNK])))))
}

/// Reads a body to the end without keeping it, returning its length.
async fn drain<B>(mut body: B) -> usize
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len();
        }
    }
    n
}

#[tokio::test]
async fn streams_50_mib_each_way_without_buffering() {
    // Uploads are counted as they arrive; downloads are generated as sent.
    let backend = Backend::start(|req| async move {
        if req.method() == http::Method::POST {
            let n = drain(req.into_body()).await;
            http::Response::new(full(n.to_string()))
        } else {
            let body: BackendBody = StreamBody::new(chunks()).boxed();
            http::Response::new(body)
        }
    })
    .await;
    let proxy = BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlimits = {{ max_body = \"100MiB\" }}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let client = proxy.client();
    // Warm up (pools, allocator arenas) before taking the baseline.
    assert_eq!(client.get("/warm").await.status, 200);
    let baseline = proxy.memory_kib("VmRSS");

    let upload: ClientBody = StreamBody::new(chunks()).boxed();
    let req = client.request("POST", "/upload").body(upload).unwrap();
    let reply = within("upload", client.send(req)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), TOTAL.to_string(), "the backend got every byte");

    let resp = client
        .send_streaming(
            client
                .request("GET", "/download")
                .body(plumeway_tests::client::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(within("download", drain(resp.into_body())).await, TOTAL);

    // 100 MiB went through; a proxy that buffered either body would have
    // grown by at least 50 MiB at its peak.
    let peak = proxy.memory_kib("VmHWM");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("streaming 100 MiB: RSS baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        growth_mib < 16,
        "peak RSS grew by {growth_mib} MiB while streaming (baseline {baseline} KiB, peak {peak} KiB)"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let backend = Backend::start(move |_req| {
        let arrived_tx = arrived_tx.clone();
        let gate = Arc::clone(&gate);
        async move {
            let _ = arrived_tx.send(());
            gate.notified().await;
            http::Response::new(full("finished"))
        }
    })
    .await;
    let mut proxy = BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let client = proxy.client();
    let in_flight = tokio::spawn(async move { client.get("/slow").await });
    within("request reaches the backend", arrived.recv()).await;

    proxy.signal("TERM");
    proxy.wait_for_log("draining open connections").await;
    // The listener is closed: new clients are turned away at once.
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting after SIGTERM"
    );

    release.notify_one();
    let reply = within("in-flight response", in_flight).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "finished");
    let status = proxy.wait().await;
    assert!(status.success(), "exit status {status:?}; logs: {:#?}", proxy.logs());
    assert!(
        proxy.logs().iter().any(|l| l.contains("shutdown complete")),
        "{:#?}",
        proxy.logs()
    );
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start(|_req| async { http::Response::new(full("ok")) }).await;
    // Timeouts far past the test's own: neither the wait for the next
    // head nor the shutdown's may be what ends the idle connection.
    let mut proxy = BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntimeouts = {{ shutdown = \"60s\", header_read = \"60s\" }}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    // Two requests, so the connection has gone idle and come back once
    // before the idle wait the stop must end.
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let before = got.len();
        within("a response", async {
            while !String::from_utf8_lossy(&got[before..]).ends_with("\r\n\r\nok") {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
    }
    proxy.signal("TERM");
    within("the idle connection is closed", async {
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "nothing more is sent");
    })
    .await;
    let status = proxy.wait().await;
    assert!(status.success(), "exit status {status:?}; logs: {:#?}", proxy.logs());
}

#[tokio::test]
async fn one_and_two_worker_threads_serve_many_connections_plugins_included() {
    let backend = Backend::start(|_req| async { http::Response::new(full("ok")) }).await;
    let config = |workers: usize| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n[upstreams.u]\ntargets = [\"{}\"]\n[plugins.h]\nbuiltin = \"headers\"\nconfig = {{ set = {{ \"x-chain\" = \"yes\" }} }}\n[[routes]]\nupstream = \"u\"\nresponse = [\"h\"]\n",
            backend.url()
        )
    };
    // `workers = 1` is a current-thread runtime: everything on one thread.
    // Two is a multi-thread one, where the upstream write waits behind the
    // woken tasks differently (`requeue` in the keep-alive pool).
    for workers in [1, 2] {
        let proxy = BinaryProxy::start(&config(workers)).await;
        let calls = (0..200).map(|i| {
            let client = proxy.client();
            async move { (i, client.get(&format!("/{i}")).await) }
        });
        for (i, reply) in futures_util::future::join_all(calls).await {
            assert_eq!(reply.status, 200, "workers = {workers}, request {i}");
            assert_eq!(reply.headers["x-chain"], "yes", "workers = {workers}, request {i}");
        }
    }
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").count()
}

#[tokio::test]
async fn a_client_connection_costs_one_file_descriptor() {
    let backend = Backend::start(|_req| async { http::Response::new(full("ok")) }).await;
    let proxy = BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let before = open_fds(proxy.pid());
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(tokio::net::TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    // Accepted in the background: wait until all are in.
    let mut now = open_fds(proxy.pid());
    for _ in 0..100 {
        if now >= before + 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        now = open_fds(proxy.pid());
    }
    // The 408 for a stalled head is written through the same descriptor
    // hyper uses, not a duplicate (which would halve the connections a
    // file-descriptor limit allows).
    assert_eq!(now - before, 100, "descriptors for 100 idle client connections");
    drop(clients);
}
