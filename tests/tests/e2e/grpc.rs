//! gRPC through plumeway: real tonic servers and clients, HTTP/2 to the
//! upstreams (h2c), every kind of streaming, trailers and statuses intact,
//! and the proxy's own failures told the gRPC way.

use std::time::Duration;

use plumeway_tests::TestProxy;
use plumeway_tests::grpc::proto::Msg;
use plumeway_tests::grpc::{GrpcServer, client};
use tonic::Code;

fn config(targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[upstreams.grpc]\ntargets = [{}]\nprotocol = \"h2c\"\n{extra}\n[[routes]]\nmatch = {{ path_prefix = \"/plumeway.test.Echo/\" }}\nupstream = \"grpc\"\n",
        targets.join(", ")
    )
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.to_owned(),
        server: String::new(),
    }
}

#[tokio::test]
async fn unary_calls_are_balanced_and_statuses_pass_through() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let proxy = TestProxy::start(&config(&[a.url(), b.url()], "")).await;
    let mut c = client(proxy.addr).await;
    let mut seen = Vec::new();
    for i in 0..4 {
        let reply = c.unary(msg(&format!("hi {i}"))).await.unwrap().into_inner();
        assert_eq!(reply.text, format!("hi {i}"));
        seen.push(reply.server);
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
    // A status from the server, carried in trailers, reaches the client.
    let err = c.unary(msg("fail:no such thing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
}

#[tokio::test]
async fn streaming_calls_flow_both_ways() {
    let server = GrpcServer::start("s").await;
    let proxy = TestProxy::start(&config(&[server.url()], "")).await;
    let mut c = client(proxy.addr).await;

    let mut stream = c.server_stream(msg("50")).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.text, n.to_string());
        n += 1;
    }
    assert_eq!(n, 50);

    let outbound = futures_util::stream::iter((0..5).map(|i| msg(&i.to_string())));
    let joined = c.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!(joined.text, "0,1,2,3,4");

    // Bidirectional: each answer comes back before the next message is
    // sent, so nothing is buffered whole on the way.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(msg(word)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("the answer streamed back")
            .unwrap()
            .unwrap();
        assert_eq!(answer.text, word.to_uppercase());
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
}

#[tokio::test]
async fn proxy_failures_are_grpc_statuses() {
    let server = GrpcServer::start("s").await;
    let proxy = TestProxy::start(&config(&[server.url()], "retry = { attempts = 1 }")).await;
    let mut c = client(proxy.addr).await;

    // The client's deadline (grpc-timeout) is the proxy's: DEADLINE_EXCEEDED
    // from the proxy itself. tonic's client would also give up by itself,
    // so this call is made with hyper, to see what the proxy answers.
    let (status, headers) = raw_unary(proxy.addr, "sleep:2000", "200m").await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert_eq!(headers["grpc-message"], "plumeway: http_response_timeout");
    assert_eq!(headers["content-type"], "application/grpc");

    // The server is gone: UNAVAILABLE, not an HTML/JSON 502.
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = c.unary(msg("anyone?")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("plumeway: "), "{err:?}");

    // No route for this service: UNIMPLEMENTED.
    let other = TestProxy::start(
        "[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n[[routes]]\nmatch = { path_prefix = \"/other.Service/\" }\nupstream = \"u\"\n",
    )
    .await;
    let err = client(other.addr).await.unary(msg("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn a_thousand_concurrent_streams_on_one_client_connection() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let proxy = TestProxy::start(&config(&[a.url(), b.url()], "")).await;
    let c = client(proxy.addr).await;
    let calls = (0..1000).map(|i| {
        let mut c = c.clone();
        async move { c.unary(msg(&i.to_string())).await.map(|r| r.into_inner()) }
    });
    let replies = futures_util::future::join_all(calls).await;
    let mut per_server = std::collections::BTreeMap::new();
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert_eq!(reply.text, i.to_string());
        *per_server.entry(reply.server).or_insert(0) += 1;
    }
    assert_eq!(per_server.values().sum::<i32>(), 1000);
    assert_eq!(per_server.len(), 2, "{per_server:?}");
}

/// One unary call over plain HTTP/2 with `grpc-timeout`, returning the
/// HTTP status and the headers merged with the trailers.
async fn raw_unary(addr: std::net::SocketAddr, text: &str, timeout: &str) -> (u16, http::HeaderMap) {
    use http_body_util::BodyExt;
    use prost::Message as _;
    let payload = msg(text).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&payload);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/plumeway.test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    let collected = body.collect().await.unwrap();
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    (status, headers)
}

#[tokio::test]
async fn only_rpcs_marked_safe_are_retried() {
    let a = GrpcServer::start("a").await;
    let gone = GrpcServer::start("gone").await;
    let gone_url = gone.url();
    drop(gone);
    let targets = [a.url(), gone_url];
    // Passive ejection off, so every other call meets the dead endpoint.
    let passive = "passive = { failures = 0 }";

    let unsafe_proxy = TestProxy::start(&config(&targets, passive)).await;
    let mut c = client(unsafe_proxy.addr).await;
    let mut failed = 0;
    for i in 0..6 {
        match c.unary(msg(&i.to_string())).await {
            Ok(reply) => assert_eq!(reply.into_inner().server, "a"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                failed += 1;
            }
        }
    }
    assert_eq!(
        failed, 3,
        "a call not marked safe was retried (or never met the dead endpoint)"
    );

    let safe = format!("{passive}\nretry = {{ attempts = 2, safe_paths = [\"/plumeway.test.Echo/Unary\"] }}");
    let safe_proxy = TestProxy::start(&config(&targets, &safe)).await;
    let mut c = client(safe_proxy.addr).await;
    for i in 0..6 {
        let reply = c.unary(msg(&i.to_string())).await.unwrap().into_inner();
        assert_eq!((reply.text, reply.server), (i.to_string(), "a".to_owned()));
    }
}

#[tokio::test]
async fn small_upstream_flow_control_windows_still_carry_large_streams() {
    let server = GrpcServer::start("s").await;
    let proxy = TestProxy::start(&config(
        &[server.url()],
        "http2 = { initial_stream_window = \"64KiB\", initial_connection_window = \"64KiB\" }",
    ))
    .await;
    let mut c = client(proxy.addr).await;
    // 100 messages of 4 KiB up, 400 KiB joined back down: several windows
    // each way.
    let chunk = "x".repeat(4096);
    let outbound = futures_util::stream::iter((0..100).map(move |_| msg(&chunk)));
    let joined = c.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!(joined.text.len(), 100 * 4096 + 99);
}

#[tokio::test]
async fn streams_past_the_per_connection_cap_open_more_upstream_connections() {
    let server = GrpcServer::start("s").await;
    let proxy = TestProxy::start(&config(
        &[server.url()],
        "http2 = { max_concurrent_streams = 10 }\npool = { idle_timeout = \"500ms\" }",
    ))
    .await;
    let c = client(proxy.addr).await;
    let batch = |n: usize| {
        let calls = (0..n).map(|i| {
            let mut c = c.clone();
            async move { c.unary(msg("sleep:300")).await.map_err(|e| format!("call {i}: {e:?}")) }
        });
        futures_util::future::join_all(calls)
    };
    // 100 calls held 300 ms each, at most 10 per upstream connection.
    for reply in batch(100).await {
        reply.unwrap();
    }
    assert_eq!(server.connections(), 10, "100 streams at 10 per connection");
    // The connections stay open for the next calls.
    for reply in batch(25).await {
        reply.unwrap();
    }
    assert_eq!(server.connections(), 10, "the open connections were reused");
    // Idle past the pool's timeout, they close; the next calls open anew.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for reply in batch(5).await {
        reply.unwrap();
    }
    assert_eq!(
        server.connections(),
        11,
        "idle connections were closed, then one opened"
    );
}
