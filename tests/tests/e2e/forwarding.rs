//! Forwarding through the real proxy to real backends: balancing, headers,
//! protocols.

use plumeway_tests::{Backend, TestProxy};

fn two_backend_config(a: &Backend, b: &Backend) -> String {
    format!(
        r#"
[upstreams.pair]
targets = ["{}", "{}"]

[[routes]]
upstream = "pair"
"#,
        a.url(),
        b.url()
    )
}

#[tokio::test]
async fn round_robin_alternates_between_two_backends() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&two_backend_config(&a, &b)).await;
    let client = proxy.client();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(client.get("/").await.echo().backend);
    }
    // Strict alternation, whichever backend goes first.
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "{seen:?}");
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

#[tokio::test]
async fn forwards_headers_like_a_proxy() {
    let backend = Backend::echo("only").await;
    // The test client is a trusted proxy here, so its X-Forwarded-For is
    // kept and appended to (untrusted peers: tests/tests/e2e/hardening.rs).
    let proxy = TestProxy::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let client = proxy.client();
    let req = client
        .request("GET", "/path/here?q=1&r=%20")
        .header("host", "shop.example:8443")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("x-forwarded-for", "203.0.113.7")
        .header("via", "1.1 edge")
        .header("x-custom", "kept")
        .body(plumeway_tests::client::empty())
        .unwrap();
    let reply = client.send(req).await;
    let seen = reply.echo();

    // Request side: the upstream sees the message, not the client's hop.
    assert_eq!(seen.path, "/path/here?q=1&r=%20");
    assert_eq!(seen.header("host"), Some("shop.example:8443"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    for hop in [
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert_eq!(seen.header(hop), None, "{hop} reached the upstream");
    }
    // Connection is the backend client's own (keep-alive), never the client's list.
    assert_ne!(seen.header("connection"), Some("keep-alive, x-client-hop"));
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example:8443"));
    assert_eq!(seen.header("via"), Some("1.1 edge, 1.1 plumeway"));

    // Response side: the backend's hop-by-hop headers stay behind.
    assert_eq!(reply.headers.get("x-backend").unwrap(), "only");
    for hop in ["x-backend-hop", "keep-alive", "proxy-authenticate"] {
        assert!(reply.headers.get(hop).is_none(), "{hop} reached the client");
    }
    assert_eq!(reply.headers.get("via").unwrap(), "1.1 plumeway");
}

#[tokio::test]
async fn http2_client_reaches_http1_backend() {
    let backend = Backend::echo("h1").await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nmatch = {{ host = \"api.example\" }}\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let reply = proxy.client().get_h2("/h2/path?x=1", "api.example").await;
    let seen = reply.echo();
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.path, "/h2/path?x=1");
    // HTTP/2's :authority becomes the Host the HTTP/1.1 backend routes on.
    assert_eq!(seen.header("host"), Some("api.example"));
    assert_eq!(seen.header("via"), Some("2 plumeway"));
}

#[tokio::test]
async fn routes_by_prefix_host_and_method() {
    let api = Backend::echo("api").await;
    let users = Backend::echo("users").await;
    let admin = Backend::echo("admin").await;
    let writes = Backend::echo("writes").await;
    let fallback = Backend::echo("fallback").await;
    let config = format!(
        r#"
[upstreams.api]
targets = ["{}"]
[upstreams.users]
targets = ["{}"]
[upstreams.admin]
targets = ["{}"]
[upstreams.writes]
targets = ["{}"]
[upstreams.fallback]
targets = ["{}"]

[[routes]]
match = {{ path_prefix = "/api" }}
upstream = "api"

[[routes]]
match = {{ path_prefix = "/api/users" }}
upstream = "users"

[[routes]]
match = {{ path_prefix = "/api/users", methods = ["POST", "PUT"] }}
upstream = "writes"

[[routes]]
match = {{ host = "admin.example" }}
upstream = "admin"

[[routes]]
match = {{ path_prefix = "/static", host = "*.cdn.example" }}
upstream = "fallback"
"#,
        api.url(),
        users.url(),
        admin.url(),
        writes.url(),
        fallback.url()
    );
    let proxy = TestProxy::start(&config).await;
    let client = proxy.client();
    let route = |method: &'static str, host: &'static str, path: &'static str| {
        let client = client.clone();
        async move {
            let req = client
                .request(method, path)
                .header("host", host)
                .body(plumeway_tests::client::empty())
                .unwrap();
            let reply = client.send(req).await;
            if reply.status == 404 {
                "404".to_owned()
            } else {
                reply.echo().backend
            }
        }
    };
    assert_eq!(route("GET", "x.example", "/api/orders").await, "api");
    assert_eq!(
        route("GET", "x.example", "/api/users/7").await,
        "users",
        "longest prefix wins"
    );
    assert_eq!(
        route("POST", "x.example", "/api/users/7").await,
        "writes",
        "method narrows"
    );
    assert_eq!(route("GET", "x.example", "/api").await, "api");
    assert_eq!(
        route("GET", "x.example", "/apix").await,
        "404",
        "prefixes match whole segments"
    );
    assert_eq!(route("GET", "admin.example", "/anything").await, "admin");
    assert_eq!(
        route("GET", "ADMIN.example:8080", "/anything").await,
        "admin",
        "host ignores case and port"
    );
    assert_eq!(route("GET", "img.cdn.example", "/static/a.png").await, "fallback");
    assert_eq!(
        route("GET", "cdn.example", "/static/a.png").await,
        "404",
        "wildcard needs a subdomain"
    );
    assert_eq!(route("GET", "x.example", "/nothing").await, "404");
}

#[tokio::test]
async fn unmatched_request_gets_a_short_404() {
    let backend = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nmatch = {{ path_prefix = \"/only\" }}\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let reply = proxy.client().get("/elsewhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "404 Not Found: no route matches this request\n");
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=destination_not_found");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_reused_and_closed_when_idle() {
    let backend = Backend::echo("a").await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\npool = {{ idle_timeout = \"500ms\", max_idle_per_endpoint = 2 }}\n[[routes]]\nupstream = \"u\"\n",
        backend.url()
    ))
    .await;
    let client = proxy.client();
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(backend.accepted(), 1, "sequential requests share one connection");

    // Ten at once need ten connections; two of them stay idle afterwards.
    let calls = (0..10).map(|_| {
        let client = proxy.client();
        async move { client.get("/").await.status }
    });
    assert!(futures_util::future::join_all(calls).await.iter().all(|s| *s == 200));
    let after_burst = backend.accepted();
    assert!(after_burst >= 2, "{after_burst}");
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(backend.accepted(), after_burst, "an idle connection was reused");

    // Past the idle timeout they are closed: the next request connects.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(backend.accepted(), after_burst + 1);
}
