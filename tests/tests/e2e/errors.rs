//! What the client gets when the proxy cannot deliver: the error taxonomy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use plumeway_tests::client::{ClientBody, body};
use plumeway_tests::{Backend, TestProxy};

fn single(url: &str, extra: &str) -> String {
    format!("[upstreams.u]\ntargets = [\"{url}\"]\n{extra}\n[[routes]]\nupstream = \"u\"\n")
}

#[tokio::test]
async fn refused_connection_is_502() {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let proxy = TestProxy::start(&single(&url, "")).await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "502 Bad Gateway: the upstream refused the connection\n");
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=connection_refused");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn no_available_endpoint_is_503_and_down_targets_get_nothing() {
    let backend = Backend::echo("down").await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [{{ url = \"{}\", down = true }}]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "503 Service Unavailable: no upstream endpoint is available\n"
    );
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=destination_unavailable");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn down_target_is_skipped_while_others_serve() {
    let (up, down) = (Backend::echo("up").await, Backend::echo("down").await);
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\", {{ url = \"{}\", down = true }}]\n[[routes]]\nupstream = \"u\"\n",
        up.url(),
        down.url()
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(proxy.client().get("/").await.echo().backend, "up");
    }
    assert_eq!(down.hits(), 0);
}

#[tokio::test]
async fn hung_backend_is_504_at_the_deadline() {
    let hung = Backend::start(|_req| async { std::future::pending().await }).await;
    let proxy = TestProxy::start(&single(&hung.url(), "timeouts = { response_header = \"300ms\" }")).await;
    let started = Instant::now();
    let reply = proxy.client().get("/slow").await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(
        reply.text(),
        "504 Gateway Timeout: the upstream did not answer in time\n"
    );
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=http_response_timeout");
    assert!(
        waited >= Duration::from_millis(300),
        "answered before the deadline: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "answered long after the deadline: {waited:?}"
    );
    assert_eq!(hung.hits(), 1);
}

#[tokio::test]
async fn the_deadline_holds_on_a_kept_alive_connection() {
    // The connection's own timer keeps the request's deadline: here it
    // waits on a 30 s head-read deadline, and must fire at 300 ms anyway,
    // then serve the next request on the same connection.
    let backend = Backend::start(|req: hyper::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            std::future::pending::<()>().await;
        }
        hyper::Response::new(plumeway_tests::backend::full("fast"))
    })
    .await;
    let config = format!(
        "[server]\ntimeouts = {{ header_read = \"30s\" }}\n{}",
        single(&backend.url(), "timeouts = { response_header = \"300ms\" }")
    );
    let proxy = TestProxy::start(&config).await;
    let client = proxy.client();
    assert_eq!(client.get("/fast").await.text(), "fast");
    for _ in 0..2 {
        let started = Instant::now();
        let reply = client.get("/slow").await;
        let waited = started.elapsed();
        assert_eq!(reply.status, 504);
        assert!(waited >= Duration::from_millis(300), "before the deadline: {waited:?}");
        assert!(waited < Duration::from_secs(5), "long after the deadline: {waited:?}");
        assert_eq!(client.get("/fast").await.text(), "fast");
    }
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_before_any_upstream() {
    let backend = Backend::echo("b").await;
    let config = format!(
        "[server]\nlimits = {{ max_body = \"1KiB\" }}\n{}",
        single(&backend.url(), "")
    );
    let proxy = TestProxy::start(&config).await;
    let client = proxy.client();
    let req = client.request("POST", "/upload").body(body(vec![b'x'; 2048])).unwrap();
    let reply = client.send(req).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=http_request_denied");
    assert_eq!(backend.hits(), 0, "the upstream must not see an oversized request");

    // At the limit is fine.
    let req = client.request("POST", "/upload").body(body(vec![b'x'; 1024])).unwrap();
    assert_eq!(client.send(req).await.status, 200);
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    // The backend reads the whole body before answering, as an upload
    // handler would, so the proxy sees the limit break mid-stream.
    let backend = Backend::start(|req| async move {
        match req.into_body().collect().await {
            Ok(b) => http::Response::new(plumeway_tests::backend::full(format!("{}", b.to_bytes().len()))),
            Err(_) => http::Response::builder()
                .status(400)
                .body(plumeway_tests::backend::full(""))
                .unwrap(),
        }
    })
    .await;
    let config = format!(
        "[server]\nlimits = {{ max_body = \"4KiB\" }}\n{}",
        single(&backend.url(), "")
    );
    let proxy = TestProxy::start(&config).await;
    let client = proxy.client();
    // No Content-Length: chunked, so only counting catches it.
    let chunks = stream::iter((0..8).map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 1024])))));
    let streamed: ClientBody = StreamBody::new(chunks).boxed();
    let req = client.request("POST", "/upload").body(streamed).unwrap();
    let reply = client.send(req).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
}
