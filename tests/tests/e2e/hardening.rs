//! Hostile clients and backends, over raw sockets: smuggling vectors,
//! slow and oversized requests, traversal, spoofed forwarding headers,
//! connection floods, rate limits and garbage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plumeway_tests::{Backend, BinaryProxy, TestProxy, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What came back on a raw connection.
#[derive(Debug)]
struct Raw {
    text: String,
    /// The proxy closed the connection (rather than the read timing out).
    closed: bool,
}

impl Raw {
    fn status(&self) -> u16 {
        self.text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

/// Sends `bytes` and reads until the proxy closes or `wait` passes.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, wait).await
}

async fn read_all(s: &mut TcpStream, wait: Duration) -> Raw {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Raw {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: true,
                };
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Raw {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: false,
                };
            }
        }
    }
}

/// A backend that answers every request head with `answer` and records
/// the heads it received.
pub(crate) struct RawBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    /// Answers every request (head and body read) with `answer`.
    pub(crate) async fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, a) = (heads.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Heads, each followed by its body (by length, or
                        // chunked up to the last chunk), which is skipped.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                            let lower = head.to_ascii_lowercase();
                            let body_end = if lower.contains("transfer-encoding: chunked") {
                                let rest = &buf[end + 4..];
                                let last = if rest.starts_with(b"0\r\n\r\n") {
                                    Some(5)
                                } else {
                                    rest.windows(7).position(|w| w == b"\r\n0\r\n\r\n").map(|p| p + 7)
                                };
                                last.map(|l| end + 4 + l)
                            } else {
                                let length = lower
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                (buf.len() >= end + 4 + length).then_some(end + 4 + length)
                            };
                            let Some(body_end) = body_end else { break };
                            buf.drain(..body_end);
                            h.lock().unwrap().push(head);
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            heads,
            accepted,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

pub(crate) fn config(backend: &str, extra: &str) -> String {
    format!("{extra}\n[upstreams.u]\ntargets = [\"{backend}\"]\n[[routes]]\nupstream = \"u\"\n")
}

#[tokio::test]
async fn smuggling_vectors_get_400_close_and_never_reach_the_upstream() {
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let vectors: &[(&str, &[u8])] = &[
        (
            "two different CLs",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "CL list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        (
            "CL with sign",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "TE gzip",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ),
        (
            "TE chunked, gzip",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE twice",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n"),
        ("NUL in a header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"),
        ("no Host on HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        (
            "absolute form against Host",
            b"GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n",
        ),
    ];
    for (name, bytes) in vectors {
        let reply = raw(proxy.addr, bytes, Duration::from_secs(5)).await;
        assert_eq!(reply.status(), 400, "{name}: {}", reply.text);
        assert!(reply.closed, "{name}: the connection stayed open");
    }
    assert!(
        backend.heads().is_empty(),
        "reached the upstream: {:?}",
        backend.heads()
    );

    // Two vectors hyper resolves itself before plumeway sees the head: with
    // both Content-Length and Transfer-Encoding it drops the length, reads
    // the chunked body and closes the connection after answering; an equal
    // second Content-Length is one length. Either way the request the
    // upstream gets has one framing, and what a front-end reading the
    // other framing would take for a second request never reaches it.
    let resolved: &[(&str, &[u8])] = &[
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "TE and CL",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "two equal CLs",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ),
    ];
    for (name, bytes) in resolved {
        let reply = raw(proxy.addr, bytes, Duration::from_secs(5)).await;
        assert!(reply.closed, "{name}: the connection stayed open");
        assert!(matches!(reply.status(), 200 | 400), "{name}: {}", reply.text);
    }
    for head in backend.heads() {
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("/smuggled"),
            "a smuggled request reached the upstream: {head}"
        );
        let framings = lower.matches("content-length:").count() + lower.matches("transfer-encoding:").count();
        assert_eq!(framings, 1, "the upstream got an ambiguous head: {head}");
    }
    let before = backend.heads().len();

    // A good request still goes through, and reaches the upstream once,
    // framed the one way.
    let reply = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), 200, "{}", reply.text);
    let heads = backend.heads();
    assert_eq!(heads.len(), before + 1);
    let head = heads[before].to_ascii_lowercase();
    assert!(
        !(head.contains("content-length") && head.contains("transfer-encoding")),
        "{head}"
    );
}

#[tokio::test]
async fn ambiguous_backend_responses_are_502_and_their_connection_is_not_reused() {
    let bad = RawBackend::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&config(&bad.url(), "")).await;
    for _ in 0..3 {
        let reply = proxy.client().get("/").await;
        assert_eq!(reply.status, 502, "{}", reply.text());
    }
    assert_eq!(
        bad.accepted(),
        3,
        "a connection that sent an ambiguous response was reused"
    );

    let twice = RawBackend::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = TestProxy::start(&config(&twice.url(), "")).await;
    assert_eq!(proxy.client().get("/").await.status, 502);
}

#[tokio::test]
async fn oversized_requests_get_414_and_431() {
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    assert_eq!(
        raw(proxy.addr, long_uri.as_bytes(), Duration::from_secs(5))
            .await
            .status(),
        414
    );
    let many: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(
        raw(proxy.addr, many.as_bytes(), Duration::from_secs(5)).await.status(),
        431
    );
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000));
    assert_eq!(
        raw(proxy.addr, big.as_bytes(), Duration::from_secs(5)).await.status(),
        431
    );
    assert!(backend.heads().is_empty());
}

#[tokio::test]
async fn slowloris_gets_408_and_its_slot_back() {
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::start(&config(
        &backend.url(),
        "[server]\ntimeouts = { header_read = \"1s\" }\nlimits = { max_connections = 1 }",
    ))
    .await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    // One byte every 300ms: never a complete head.
    let reply = within("the slow client is cut off", async {
        loop {
            tokio::select! {
                r = read_all(&mut slow, Duration::from_millis(300)) => {
                    if r.closed {
                        return r;
                    }
                    let _ = slow.write_all(b"X").await;
                }
            }
        }
    })
    .await;
    assert_eq!(reply.status(), 408, "{}", reply.text);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "cut off after {took:?}");
    // The only slot is free again.
    let ok = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ok.status(), 200, "{}", ok.text);
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    // A backend that reads the whole body before it answers.
    let backend = Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        http::Response::new(plumeway_tests::backend::full(body))
    })
    .await;
    let proxy = TestProxy::start(&config(
        &backend.url(),
        "[server]\ntimeouts = { body_idle = \"500ms\" }",
    ))
    .await;
    let reply = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), 408, "{}", reply.text);
    assert!(reply.closed);
}

#[tokio::test]
async fn a_stalled_body_read_whole_before_forwarding_gets_408() {
    // A path marked safe to retry has its body read whole first, so that a
    // retry can send it again: that read is held to the idle timeout too.
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::start(&format!(
        "[server]\ntimeouts = {{ body_idle = \"500ms\" }}\n\
         [upstreams.u]\ntargets = [\"{}\"]\nretry = {{ attempts = 2, safe_paths = [\"/upload\"] }}\n\
         [[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let started = std::time::Instant::now();
    let reply = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), 408, "{}", reply.text);
    assert!(reply.closed);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "cut off after {took:?}");
    assert!(
        backend.heads().is_empty(),
        "the body was never whole, so nothing went upstream"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_at_once() {
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::start(&config(&backend.url(), "[server]\nlimits = { max_connections = 2 }")).await;
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let _second = TcpStream::connect(proxy.addr).await.unwrap();
    // Both are served first, so the proxy has counted them.
    first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(2)).await;
    assert!(third.closed && third.text.is_empty(), "{third:?}");
    drop(first);
    let again = within("a slot frees up", async {
        loop {
            let r = raw(
                proxy.addr,
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Duration::from_secs(2),
            )
            .await;
            if r.status() == 200 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn traversal_vectors_are_normalised_or_refused_and_routing_agrees() {
    let public = RawBackend::start(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\npublic").await;
    let admin = RawBackend::start(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nadmin").await;
    let proxy = TestProxy::start(&format!(
        r#"
[plugins.rx]
builtin = "regex-rewrite"
config = {{ pattern = "^/r/(.*)$", replacement = "/x/$1" }}
[upstreams.public]
targets = ["{}"]
[upstreams.admin]
targets = ["{}"]
[[routes]]
match = {{ path_prefix = "/public" }}
upstream = "public"
[[routes]]
match = {{ path_prefix = "/admin" }}
upstream = "admin"
[[routes]]
match = {{ path_prefix = "/r" }}
upstream = "public"
rewrite = "rx"
"#,
        public.url(),
        admin.url()
    ))
    .await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let cases: &[(&str, u16, &str)] = &[
        ("/public/../admin/x", 200, "admin"),
        ("/public/%2e%2e/admin/x", 200, "admin"),
        ("/public/./a//b", 200, "public"),
        ("/public/..%2fadmin", 200, "public"),
        ("/../etc/passwd", 400, ""),
        ("/public/%2e%2e/%2e%2e/etc/passwd", 400, ""),
        ("/public/a%00b", 400, ""),
        ("/public/a%zzb", 400, ""),
        ("/r/..%2f..%2fadmin", 400, ""),
    ];
    for (path, status, body) in cases {
        let reply = raw(proxy.addr, get(path).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(reply.status(), *status, "{path}: {}", reply.text);
        assert!(reply.text.ends_with(body), "{path}: {}", reply.text);
    }
    // What each upstream saw is what routed it there.
    let seen = |b: &RawBackend| -> Vec<String> {
        b.heads()
            .iter()
            .map(|h| h.split(' ').nth(1).unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(seen(&admin), ["/admin/x", "/admin/x"]);
    assert_eq!(seen(&public), ["/public/a/b", "/public/..%2Fadmin"]);

    // Encoded slashes refused when configured so.
    let strict = TestProxy::start(&config(
        &public.url(),
        "[server]\npaths = { encoded_slash = \"reject\" }",
    ))
    .await;
    let reply = raw(strict.addr, get("/a%2Fb").as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(reply.status(), 400);
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_clients_are_replaced() {
    let backend = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\nstrip_headers = [\"authorization\", \"cookie\"]\n",
        backend.url()
    ))
    .await;
    let client = proxy.client();
    let reply = client
        .send(
            client
                .request("GET", "/")
                .header("host", "shop.example")
                .header("x-forwarded-for", "1.2.3.4")
                .header("forwarded", "for=1.2.3.4;proto=https")
                .header("x-real-ip", "1.2.3.4")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "evil.example")
                .header("x-plumeway-internal", "forged")
                .header("authorization", "Bearer secret")
                .header("cookie", "session=secret")
                .body(plumeway_tests::client::empty())
                .unwrap(),
        )
        .await;
    let seen = reply.echo();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=shop.example")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example"));
    for gone in ["x-plumeway-internal", "authorization", "cookie"] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let backend = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
[[routes]]
match = {{ path_prefix = "/limited" }}
upstream = "u"
rate_limit = {{ rate = 0.5, burst = 2, by = "header:x-api-key" }}
[[routes]]
upstream = "u"
"#,
        backend.url()
    ))
    .await;
    let client = proxy.client();
    let get = |key: &str| {
        client
            .request("GET", "/limited")
            .header("x-api-key", key)
            .body(plumeway_tests::client::empty())
            .unwrap()
    };
    assert_eq!(client.send(get("a")).await.status, 200);
    assert_eq!(client.send(get("a")).await.status, 200);
    let limited = client.send(get("a")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "2");
    // Another key has its own bucket; another route has no limit.
    assert_eq!(client.send(get("b")).await.status, 200);
    for _ in 0..5 {
        assert_eq!(client.get("/open").await.status, 200);
    }
}

/// 10,000 connections with random heads: the proxy answers or closes each
/// one, never hangs or crashes, and serves normally afterwards.
#[tokio::test]
async fn ten_thousand_garbage_heads_leave_the_proxy_serving() {
    let backend = Backend::echo("b").await;
    let mut proxy = BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntimeouts = {{ header_read = \"2s\" }}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            // xorshift64*, seeded per worker: reproducible garbage.
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (worker + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut next = move || {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D)
            };
            let prefixes: [&[u8]; 5] = [
                b"",
                b"GET ",
                b"GET / HTTP/1.1\r\n",
                b"POST /x HTTP/1.1\r\nHost: a\r\n",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            ];
            for _ in 0..1250 {
                let mut bytes = prefixes[(next() % 5) as usize].to_vec();
                let len = (next() % 300) as usize;
                for _ in 0..len {
                    let r = next();
                    // Mostly printable, with CR/LF/NUL and high bytes mixed in.
                    bytes.push(match r % 16 {
                        0 => b'\r',
                        1 => b'\n',
                        2 => 0,
                        3 => (r >> 8) as u8,
                        _ => b' ' + ((r >> 8) % 95) as u8,
                    });
                }
                let mut s = TcpStream::connect(addr).await.expect("the proxy stopped accepting");
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                let reply = read_all(&mut s, Duration::from_secs(5)).await;
                assert!(reply.closed, "the proxy hung on {:?}", String::from_utf8_lossy(&bytes));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(proxy.client().get("/").await.status, 200);
    proxy.signal("TERM");
    assert!(proxy.wait().await.success(), "the proxy did not exit cleanly");
    let logs = proxy.logs().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}
