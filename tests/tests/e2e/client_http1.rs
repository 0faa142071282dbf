//! HTTP/1.1 from clients, on the wire: plumeway's own server path
//! (pipelining, bodies told apart from the requests behind them, response
//! framing, clients that leave) and its hand-over to hyper for what it
//! leaves to it (chunked bodies, HTTP/1.0, upgrades) in the middle of a
//! connection.

use std::sync::Arc;

use http::Response;
use http_body_util::BodyExt;
use plumeway_tests::backend::full;
use plumeway_tests::{Backend, TestProxy, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hardening::config;

/// Sends `bytes` on a new connection and reads until the proxy closes it
/// (or resets it: what came before still counts).
pub(crate) async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    within("the proxy closes the connection", async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A backend that answers `METHOD PATH BODY` for every request.
async fn describing() -> Backend {
    Backend::start(|req| async move {
        let line = format!("{} {} ", req.method(), req.uri());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("{line}{}", String::from_utf8_lossy(&body))))
    })
    .await
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    // An HTTP/1.0 request is answered as HTTP/1.0.
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = describing().await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let text = exchange(
        proxy.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200, 200, 200], "{text}");
    let (a, b, c) = (
        text.find("GET /a ").unwrap(),
        text.find("GET /b ").unwrap(),
        text.find("GET /c ").unwrap(),
    );
    assert!(a < b && b < c, "out of order: {text}");
    // The client asked to close: the last answer says so.
    let last = &text[text.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.to_ascii_lowercase().contains("connection: close"), "{last}");
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn a_body_and_the_request_behind_it_are_told_apart() {
    let backend = describing().await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    // The body in the same write as its head and the next request.
    let text = exchange(
        proxy.addr,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
          GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200, 200], "{text}");
    assert!(text.contains("POST /up hello world"), "{text}");
    assert!(text.contains("GET /next "), "{text}");

    // A body that comes after its head, in pieces, then a second request
    // on the same connection.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PUT /late HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
        .await
        .unwrap();
    for part in [b'a', b'b', b'c'] {
        tokio::task::yield_now().await;
        s.write_all(&[part; 10_000]).await.unwrap();
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within("both answers", s.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&text), [200, 200], "{text}");
    let body = format!(
        "PUT /late {}{}{}",
        "a".repeat(10_000),
        "b".repeat(10_000),
        "c".repeat(10_000)
    );
    assert!(text.contains(&body), "the body did not arrive whole");
    assert!(text.contains("GET /after "), "{text}");
}

#[tokio::test]
async fn an_unread_body_never_becomes_a_request() {
    let backend = describing().await;
    // Only /api is routed: anything else is answered 404 without its body
    // being read.
    let toml = format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nmatch = {{ path_prefix = \"/api\" }}\nupstream = \"u\"\n",
        backend.url()
    );
    let proxy = TestProxy::start(&toml).await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let text = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(statuses(&text), [404], "{text}");
    assert_eq!(backend.hits(), 0, "the body was taken for a request");

    // A body declared larger than `max_body`: 413, and the rest of the
    // connection is not read as requests either.
    let proxy = TestProxy::start(&format!("[server]\nlimits = {{ max_body = \"16B\" }}\n{toml}")).await;
    let request = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let text = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(statuses(&text), [413], "{text}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn a_connection_changes_hands_mid_stream() {
    let backend = describing().await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    // Served here, then a chunked body and an HTTP/1.0 request that hyper
    // takes, on one connection, in one write.
    let text = exchange(
        proxy.addr,
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /old HTTP/1.0\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text).len(), 3, "{text}");
    assert!(text.contains("GET /first "), "{text}");
    assert!(text.contains("POST /chunked hello"), "{text}");
    assert!(text.contains("GET /old "), "{text}");
    assert_eq!(backend.hits(), 3);

    // Garbage after a good request: the good one is answered, the garbage
    // gets hyper's 400.
    let text = exchange(
        proxy.addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200, 400], "{text}");
}

#[tokio::test]
async fn responses_are_framed_as_their_request_and_status_need() {
    let backend = Backend::start(|req| async move {
        let (status, body): (u16, &str) = match req.uri().path() {
            "/empty" => (204, ""),
            _ => (200, "six b!"),
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        resp
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let text = exchange(
        proxy.addr,
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /empty HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = text.to_ascii_lowercase();
    let heads: Vec<&str> = lower.split("http/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 3, "{text}");
    // HEAD: the length a GET would get, and no body (else the 204 would
    // not parse right after it).
    assert!(heads[0].starts_with("200 ok\r\n"), "{}", heads[0]);
    assert!(heads[0].contains("content-length: 6\r\n"), "{}", heads[0]);
    assert!(heads[0].ends_with("\r\n\r\n"), "a body after HEAD: {}", heads[0]);
    // 204: no length at all.
    assert!(heads[1].starts_with("204 no content\r\n"), "{}", heads[1]);
    assert!(!heads[1].contains("content-length"), "{}", heads[1]);
    // Every answer has a Date.
    assert!(heads.iter().all(|h| h.contains("\r\ndate: ")), "{text}");
    assert!(heads[2].ends_with("\r\n\r\nsix b!"), "{}", heads[2]);
}

#[tokio::test]
async fn responses_of_unknown_length_go_in_chunks() {
    let backend = Backend::start(|_req| async move {
        let chunks = ["one ", "two ", "three"]
            .map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(bytes::Bytes::from(c))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        Response::new(BodyExt::boxed(body))
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;
    let text = exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    // Decode the chunks: the body arrives whole, and ends with the last chunk.
    let mut rest = body;
    let mut whole = String::new();
    loop {
        let line_end = rest.find("\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(&rest[..line_end], 16).expect("a chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            assert_eq!(rest, "\r\n", "after the last chunk");
            break;
        }
        whole.push_str(&rest[..size]);
        rest = &rest[size + 2..];
    }
    assert_eq!(whole, "one two three");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    // The backend never answers; it notes when the proxy gives the
    // request up by closing the connection.
    let (heard, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signals = Arc::new((heard, closed));
    let backend = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let signals = Arc::clone(&signals);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(1..) = s.read(&mut buf).await {
                    let _ = signals.0.send(());
                }
                let _ = signals.1.send(());
            });
        }
    });
    let proxy = TestProxy::start(&config(&format!("http://{addr}"), "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    within("the request reaches the backend", heard_rx.recv()).await;
    drop(client);
    within(
        "the proxy drops the upstream request once its client has gone",
        closed_rx.recv(),
    )
    .await;
    backend.abort();
}

/// The `X-Request-Id` lines of each response in `text`, with its body.
fn request_ids(text: &str) -> Vec<(Vec<String>, String)> {
    text.split("HTTP/1.")
        .skip(1)
        .map(|response| {
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
            let ids = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(name, _)| name.eq_ignore_ascii_case("x-request-id"))
                .map(|(_, value)| value.trim().to_owned())
                .collect();
            (ids, body.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_response_carries_its_request_id_once_in_place_of_the_upstreams() {
    // The backend sends an id of its own and says which one it was sent.
    let backend = Backend::start(|req| async move {
        let sent = req
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut resp = Response::new(full(format!("saw {}", sent.unwrap_or_default())));
        resp.headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("backend-made"));
        resp
    })
    .await;
    let proxy = TestProxy::start(&config(&backend.url(), "")).await;

    // The server's own path: the client's id, then one the proxy made.
    let text = exchange(
        proxy.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: client-7\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = request_ids(&text);
    assert_eq!(got.len(), 2, "{text}");
    assert_eq!(
        got[0],
        (vec!["client-7".to_owned()], "saw client-7".to_owned()),
        "{text}"
    );
    let (ids, body) = &got[1];
    assert_eq!(ids.len(), 1, "{text}");
    assert!(!ids[0].is_empty() && ids[0] != "backend-made", "{text}");
    assert_eq!(*body, format!("saw {}", ids[0]), "{text}");

    // HTTP/1.0 goes through hyper's server: the same.
    let text = exchange(proxy.addr, b"GET /c HTTP/1.0\r\nHost: x\r\nX-Request-Id: old-1\r\n\r\n").await;
    assert_eq!(
        request_ids(&text),
        vec![(vec!["old-1".to_owned()], "saw old-1".to_owned())],
        "{text}"
    );

    // A response the proxy makes itself (the upstream refuses) has it too.
    let refused = TestProxy::start(&config("http://127.0.0.1:1", "")).await;
    let text = exchange(
        refused.addr,
        b"GET /d HTTP/1.1\r\nHost: x\r\nX-Request-Id: err-3\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = request_ids(&text);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert_eq!(got.len(), 1, "{text}");
    assert_eq!(got[0].0, vec!["err-3".to_owned()], "{text}");
}

/// Reads one response with a `Content-Length` off `s`: its head, and its
/// body.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    within("a response", async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .unwrap_or_else(|| panic!("no content-length: {head}"))
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + length {
                    assert_eq!(got.len(), end + 4 + length, "more than one response: {head}");
                    return (head, got[end + 4..].to_vec());
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// Between its requests a connection gives its buffers back, and the next
/// connection to read takes them: nothing of one connection's request or
/// response may show in another's.
#[tokio::test]
async fn connections_taking_turns_see_only_their_own_requests() {
    let backend = Backend::echo("b").await;
    // A response filter's edit is in the response's header map, which goes
    // back with the buffers.
    let proxy = TestProxy::start(&format!(
        "[plugins.resp]\nbuiltin = \"headers\"\nconfig = {{ set = {{ \"x-edited\" = \"yes\" }} }}\n\
         [upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\nresponse = [\"resp\"]\n",
        backend.url()
    ))
    .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Connection 0 sends many fields, 1 none of its own, 2 one long one.
    let extra = |i: usize| match i {
        0 => (0..24).map(|k| format!("x-many-{k}: {k}\r\n")).collect::<String>(),
        1 => String::new(),
        _ => format!("x-long: {}\r\n", "v".repeat(3000)),
    };
    for round in 0..4 {
        for (i, s) in conns.iter_mut().enumerate() {
            let path = format!("/c{i}/r{round}");
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-conn: {i}\r\n{}\r\n", extra(i));
            s.write_all(request.as_bytes()).await.unwrap();
            let (head, body) = read_response(s).await;
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            let echo = plumeway_tests::Echo::parse(&body);
            assert_eq!(echo.path, path, "{head}");
            assert_eq!(echo.header("x-conn"), Some(i.to_string().as_str()), "{path}");
            let many = echo.headers.keys().filter(|k| k.starts_with("x-many-")).count();
            assert_eq!(many, if i == 0 { 24 } else { 0 }, "{path}: {:?}", echo.headers);
            assert_eq!(echo.header("x-long").map(str::len), (i == 2).then_some(3000), "{path}");
            assert_eq!(echo.header("x-edited"), None, "{path}: {:?}", echo.headers);
            // Each of the backend's fields once, and no other's.
            let lower = head.to_ascii_lowercase();
            for field in [
                "x-backend: b",
                "content-type: application/json",
                "date: ",
                "via: ",
                "x-edited: yes",
            ] {
                assert_eq!(lower.matches(field).count(), 1, "{field} in {head}");
            }
        }
    }
    assert_eq!(backend.hits(), 12);
}
