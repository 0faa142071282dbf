//! WebSocket proxying end to end: real tokio-tungstenite backends and
//! clients through the real proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use plumeway_tests::client::empty;
use plumeway_tests::{Backend, TestProxy, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A WebSocket echo backend: greets with its name, echoes data messages,
/// picks `chat` when offered, closes with 4001 on `/close-4001`, and drops
/// the TCP connection on `/die` after the greeting.
async fn echo_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut path = String::new();
                #[expect(
                    clippy::result_large_err,
                    reason = "the error type is tungstenite's callback signature"
                )]
                let callback = |req: &WsRequest, mut resp: WsResponse| {
                    path = req.uri().path().to_owned();
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok());
                    if offered.is_some_and(|o| o.split(',').any(|p| p.trim() == "chat")) {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let _ = ws.send(Message::text(name)).await;
                if path == "/die" {
                    return; // dropping the stream kills the connection mid-session
                }
                if path == "/close-4001" {
                    let frame = CloseFrame {
                        code: CloseCode::from(4001),
                        reason: "bye from backend".into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let Ok(()) = ws.send(msg).await else { return };
                        }
                        // tungstenite answers a close by itself; polling on
                        // flushes that answer and ends the stream.
                        Message::Close(_) => {}
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn config(targets: &[String], websocket: bool) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[upstreams.u]\ntargets = [{}]\n[[routes]]\nupstream = \"u\"\nwebsocket = {websocket}\n",
        list.join(", ")
    )
}

async fn connect(
    proxy: &TestProxy,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, resp) = within(
        "ws connect",
        tokio_tungstenite::connect_async(format!("ws://{}{path}", proxy.addr)),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn next_data(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Message {
    loop {
        match within("ws message", ws.next()).await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)))) => return m,
            Some(Ok(_)) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_binary_fragmented_and_16_mib_messages_round_trip() {
    let (addr, _) = echo_backend("b1").await;
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let mut ws = connect(&proxy, "/chat").await;
    assert_eq!(next_data(&mut ws).await, Message::text("b1"));

    ws.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("héllo"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    // A message in three frames arrives whole.
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    ws.send(Message::Frame(Frame::message(
        b"frag".to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        b"men".to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        b"ted".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("fragmented"));

    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(got) => assert!(got.len() == big.len() && got[..] == big[..], "16 MiB came back intact"),
        other => panic!("expected the big message, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_pong_and_close_codes_pass_both_ways() {
    let (addr, _) = echo_backend("b1").await;
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let mut ws = connect(&proxy, "/").await;
    next_data(&mut ws).await;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    loop {
        match within("pong", ws.next()).await {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // Client closes with 1000: the backend's echoed close comes back.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected the close echo, got {other:?}"),
    }

    // Backend closes with 4001: the client sees that code and reason.
    let mut ws = connect(&proxy, "/close-4001").await;
    next_data(&mut ws).await;
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::from(4001));
            assert_eq!(f.reason.as_str(), "bye from backend");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
}

#[tokio::test]
async fn subprotocols_are_negotiated_end_to_end() {
    let (addr, _) = echo_backend("b1").await;
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let mut req = format!("ws://{}/", proxy.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "superchat, chat".parse().unwrap());
    let (_ws, resp) = within("ws connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
}

#[tokio::test]
async fn connections_are_balanced_across_backends() {
    let (a, hits_a) = echo_backend("a").await;
    let (b, hits_b) = echo_backend("b").await;
    let proxy = TestProxy::start(&config(&[format!("http://{a}"), format!("http://{b}")], true)).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let mut ws = connect(&proxy, "/").await;
        names.push(next_data(&mut ws).await);
    }
    assert_eq!(names.iter().filter(|m| **m == Message::text("a")).count(), 2);
    assert_eq!((hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst)), (2, 2));
}

#[tokio::test]
async fn a_backend_that_refuses_the_upgrade_is_relayed_as_http() {
    let refuses = Backend::start(|_req| async {
        http::Response::builder()
            .status(403)
            .body(plumeway_tests::backend::full("no sockets here"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(&config(&[refuses.url()], true)).await;
    match within(
        "ws connect",
        tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr)),
    )
    .await
    {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected the backend's 403, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_accept_key_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n")
                .await;
        }
    });
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    match within(
        "ws connect",
        tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr)),
    )
    .await
    {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected 502, got {other:?}"),
    }
}

#[tokio::test]
async fn an_invalid_handshake_is_400_and_a_plain_route_strips_upgrades() {
    let (addr, accepted) = echo_backend("b").await;
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let client = proxy.client();
    let bad = client
        .request("GET", "/")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let reply = client.send(bad).await;
    assert_eq!(reply.status, 400);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the backend never saw it");

    // On a route without websocket = true an upgrade is an ordinary request.
    let http_backend = Backend::echo("plain").await;
    let proxy = TestProxy::start(&config(&[http_backend.url()], false)).await;
    let client = proxy.client();
    let req = client
        .request("GET", "/")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let seen = client.send(req).await.echo();
    assert_eq!(seen.header("upgrade"), None);
    assert_ne!(seen.header("connection"), Some("upgrade"));
}

#[tokio::test]
async fn a_backend_dying_mid_session_closes_the_client() {
    let (addr, _) = echo_backend("b").await;
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let mut ws = connect(&proxy, "/die").await;
    assert_eq!(next_data(&mut ws).await, Message::text("b"));
    // The backend is gone: the client's stream ends (cleanly or with an
    // error), it does not hang.
    let end = within("client sees the end", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end);
}

#[tokio::test]
async fn a_thousand_concurrent_connections_exchange_messages_without_crossing() {
    let (a, _) = echo_backend("a").await;
    let (b, _) = echo_backend("b").await;
    let proxy = TestProxy::start(&config(&[format!("http://{a}"), format!("http://{b}")], true)).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
                .await
                .expect("connect");
            let _greeting = ws.next().await;
            for round in 0..3 {
                let text = format!("conn-{i}-msg-{round}");
                ws.send(Message::text(text.clone())).await.expect("send");
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(got))) => {
                            assert_eq!(got.as_str(), text, "a message crossed connections");
                            break;
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("connection {i}: {other:?}"),
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    for t in tasks {
        within("a websocket client", t).await.expect("client task");
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_on_both_sides() {
    let (addr, _) = echo_backend("b").await;
    let toml = format!(
        "[upstreams.u]\ntargets = [\"http://{addr}\"]\ntimeouts = {{ idle = \"300ms\" }}\n[[routes]]\nupstream = \"u\"\nwebsocket = true\n"
    );
    let proxy = TestProxy::start(&toml).await;
    let mut ws = connect(&proxy, "/").await;
    next_data(&mut ws).await;
    let started = std::time::Instant::now();
    let ended = within("idle close", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return started.elapsed(),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended >= std::time::Duration::from_millis(250),
        "closed after {ended:?}, before the idle timeout"
    );
}

#[tokio::test]
async fn bytes_pipelined_after_the_handshake_wait_for_the_101() {
    // A raw backend: after the handshake it checks that nothing else
    // arrived, only then answers 101, and reports what came next.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, mut reported) = tokio::sync::mpsc::unbounded_channel::<(bool, Vec<u8>)>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        // Header names are case-insensitive, the key's value is not.
        let text = String::from_utf8_lossy(&head).into_owned();
        let key = text
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
            })
            .map(|(_, k)| k.trim().to_owned())
            .unwrap();
        let early = head.len() > head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
            || tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut buf))
                .await
                .is_ok();
        let accept = {
            use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
            derive_accept_key(key.as_bytes())
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        let _ = report.send((early, buf[..n].to_vec()));
    });
    let proxy = TestProxy::start(&config(&[format!("http://{addr}")], true)).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // The handshake and a masked text frame "hi" in one write.
    let mut bytes = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    let frame = [0x81u8, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    bytes.extend_from_slice(&frame);
    client.write_all(&bytes).await.unwrap();
    let (early, after) = within("backend report", reported.recv()).await.unwrap();
    assert!(!early, "pipelined bytes reached the backend before its 101");
    assert_eq!(after, frame, "the pipelined frame arrives after the 101, intact");
}

#[tokio::test]
async fn graceful_shutdown_sends_close_to_both_sides() {
    // A backend that reports the close code it receives.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, mut reported) = tokio::sync::mpsc::unbounded_channel::<Option<u16>>();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                let _ = report.send(frame.map(|f| u16::from(f.code)));
            }
        }
    });
    let mut proxy = plumeway_tests::BinaryProxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"http://{addr}\"]\n[[routes]]\nupstream = \"u\"\nwebsocket = true\n"
    ))
    .await;
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr)),
    )
    .await
    .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));

    proxy.signal("TERM");
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away, "the client is told the proxy is going away"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(within("backend's close", reported.recv()).await, Some(Some(1001)));
    let status = proxy.wait().await;
    assert!(status.success(), "{status:?}");
    assert!(
        proxy.logs().iter().any(|l| l.contains("closing open WebSockets")),
        "{:#?}",
        proxy.logs()
    );
}
