//! The HTTP/1.1 client towards backends, on the wire: how request bodies
//! are framed, and every way a backend may frame, interrupt or precede its
//! answer (chunks and trailers, read-until-close, interim 1xx heads, an
//! answer before the request body is read, connections closed while idle).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use plumeway_tests::backend::full;
use plumeway_tests::client::{ClientBody, body, empty};
use plumeway_tests::{Backend, TestProxy, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::hardening::{RawBackend, config};

/// A backend that runs its own script on every connection it accepts.
struct Scripted {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(stream));
            }
        });
        Self { addr, accepted, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (its body, if any, is left unread); `None` once
/// the peer closes.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A request body of `parts` chunks of `size` bytes, of unknown length (the
/// client sends it chunked); it never ends if `endless`.
fn streamed(parts: usize, size: usize, endless: bool) -> ClientBody {
    let chunks = (0..parts).map(move |i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))));
    let stream = futures_util::stream::iter(chunks);
    if endless {
        BodyExt::boxed(StreamBody::new(stream.chain(futures_util::stream::pending())))
    } else {
        BodyExt::boxed(StreamBody::new(stream))
    }
}

#[tokio::test]
async fn request_bodies_reach_the_backend_whole_and_framed_once() {
    // The backend says how the body was framed, how long it was and a sum
    // of its bytes.
    let backend = Backend::start(|req| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        };
        let (cl, te) = (h("content-length"), h("transfer-encoding"));
        let data = req.into_body().collect().await.unwrap().to_bytes();
        let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        Response::new(full(format!("cl={cl} te={te} len={} sum={sum}", data.len())))
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let client = proxy.client();
    let send = |method: &str, b: ClientBody| client.send(client.request(method, "/").body(b).unwrap());

    let reply = send("POST", body("hello")).await;
    assert_eq!(reply.text(), "cl=5 te=- len=5 sum=532");
    let reply = send("POST", empty()).await;
    assert_eq!(reply.text(), "cl=0 te=- len=0 sum=0", "an empty POST says so");
    let reply = send("GET", empty()).await;
    assert_eq!(reply.text(), "cl=- te=- len=0 sum=0");
    // Larger than one write: the body goes out in pieces.
    let reply = send("PUT", body(vec![b'z'; 1 << 20])).await;
    assert_eq!(
        reply.text(),
        format!("cl={} te=- len={} sum={}", 1 << 20, 1 << 20, 122u64 << 20)
    );
    // Unknown length: chunked on to the backend, every byte intact.
    let reply = send("POST", streamed(3, 50_000, false)).await;
    let sum = 50_000 * (97 + 98 + 99);
    assert_eq!(reply.text(), format!("cl=- te=chunked len=150000 sum={sum}"));
    assert_eq!(backend.accepted(), 1, "every one of them on one kept-alive connection");
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_relayed_at_once() {
    // The backend refuses the upload from its head and never reads the
    // body; the client is still sending it (its body never ends).
    let backend = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let refusal = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo big!";
            let _ = s.write_all(refusal).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let client = proxy.client();
    let request = client
        .request("POST", "/upload")
        .body(streamed(16, 256 * 1024, true))
        .unwrap();
    let resp = client.send_streaming(request).await;
    assert_eq!(resp.status(), 413);
    let text = within("the refusal's body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&text[..], b"too big!");

    // The connection is not used again: the backend is still waiting
    // for the rest of that body.
    let reply = client
        .send(client.request("POST", "/upload").body(body("small")).unwrap())
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(backend.accepted(), 2, "a connection left mid-body was reused");
}

#[tokio::test]
async fn a_plain_response_head_is_passed_on_as_the_backend_wrote_it() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nServer: raw/1\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\
          Set-Cookie: b=2\r\nX-Request-Id: backend-made\r\nContent-Length: 2\r\n\
          Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Spaced:  a  b\r\n\r\nok",
    )
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let text = crate::client_http1::exchange(
        proxy.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let second = text[1..].find("HTTP/1.1 ").map(|i| i + 1);
    let (get, head) = text.split_at(second.unwrap_or_else(|| panic!("two responses: {text}")));
    for response in [get, head] {
        // The fields as written, in order, the backend's own hop and
        // request id left out, with the proxy's `Via`, id and length.
        assert!(
            response.starts_with(
                "HTTP/1.1 200 OK\r\nServer: raw/1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
                 Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Spaced:  a  b\r\nvia: 1.1 plumeway\r\ncontent-length: 2\r\n"
            ),
            "{text}"
        );
        let count = |name: &str| {
            response
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .count()
        };
        assert_eq!(
            (count("date"), count("via"), count("content-length")),
            (1, 1, 1),
            "{text}"
        );
        assert!(!response.contains("backend-made"), "{text}");
        assert!(!response.to_ascii_lowercase().contains("keep-alive"), "{text}");
    }
    assert!(get.contains("\r\nx-request-id: mine-1\r\n\r\nok"), "{text}");
    assert!(head.ends_with("\r\n\r\n"), "a HEAD response has no body: {text}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped_for_the_final_one() {
    let backend = RawBackend::start(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    for _ in 0..3 {
        let reply = proxy.client().get("/").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn chunked_responses_with_extensions_and_trailers_arrive_whole() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    for _ in 0..3 {
        let reply = proxy.client().get("/").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "hello world"));
    }
    assert_eq!(backend.accepted(), 1, "the connection is reused after the last chunk");
}

#[tokio::test]
async fn a_body_that_runs_until_close_is_whole_and_its_connection_done() {
    let backend = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it, ").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = s.write_all(b"until the end").await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    for _ in 0..2 {
        let reply = proxy.client().get("/").await;
        assert_eq!(reply.text(), "all of it, until the end");
    }
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn idle_connections_the_backend_closed_are_not_errors() {
    // Like a server with a keep-alive timeout shorter than ours: each
    // connection is closed soon after its response, without a word.
    let backend = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let client = proxy.client();
    for i in 0..6 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(backend.accepted(), 6);
}

#[tokio::test]
async fn head_and_bodiless_statuses_keep_the_connection() {
    let backend = Backend::start(|req| async move {
        let status = if req.uri().path() == "/gone" { 204 } else { 200 };
        let mut resp = Response::new(full(if status == 200 { "body" } else { "" }));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        resp
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let client = proxy.client();
    let head = client.send(client.request("HEAD", "/").body(empty()).unwrap()).await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    assert_eq!(head.headers["content-length"], "4", "HEAD says what GET would send");
    assert_eq!(client.get("/gone").await.status, 204);
    assert_eq!(client.get("/").await.text(), "body");
    assert_eq!(backend.accepted(), 1);
}
