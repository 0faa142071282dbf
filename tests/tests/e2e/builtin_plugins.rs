//! Each built-in plugin through the real proxy, and chains of them.

use plumeway_tests::client::empty;
use plumeway_tests::{Backend, TestProxy};

/// A config with `plugins` tables, one upstream on `backend`, and one
/// route with `route` keys.
fn config(plugins: &str, backend: &Backend, route: &str) -> String {
    format!(
        "{plugins}\n[upstreams.u]\ntargets = [\"{}\"]\n\n[[routes]]\nupstream = \"u\"\n{route}\n",
        backend.url()
    )
}

#[tokio::test]
async fn strip_prefix_and_regex_rewrite_change_the_forwarded_path() {
    let backend = Backend::echo("b").await;
    let plugins = r#"
[plugins.strip]
builtin = "strip-prefix"
config = { prefix = "/api" }
[plugins.rx]
builtin = "regex-rewrite"
config = { pattern = "^/old/(.*)$", replacement = "/new/$1" }
"#;
    let toml = format!(
        "{}\n[[routes]]\nmatch = {{ path_prefix = \"/old\" }}\nupstream = \"u\"\nrewrite = \"rx\"\n",
        config(
            plugins,
            &backend,
            "match = { path_prefix = \"/api\" }\nrewrite = \"strip\""
        )
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client();
    assert_eq!(client.get("/api/users/7?x=1").await.echo().path, "/users/7?x=1");
    assert_eq!(client.get("/api").await.echo().path, "/");
    assert_eq!(client.get("/old/a/b?q").await.echo().path, "/new/a/b?q");
}

#[tokio::test]
async fn headers_plugin_edits_requests_and_responses() {
    let backend = Backend::echo("b").await;
    let plugins = r#"
[plugins.req]
builtin = "headers"
config = { set = { "x-gateway" = "plumeway" }, remove = ["x-internal"] }
[plugins.resp]
builtin = "headers"
config = { set = { "x-frame-options" = "DENY" }, remove = ["x-backend"] }
"#;
    let proxy = TestProxy::start(&config(plugins, &backend, "request = [\"req\"]\nresponse = [\"resp\"]")).await;
    let client = proxy.client();
    let req = client
        .request("GET", "/")
        .header("x-internal", "secret")
        .body(empty())
        .unwrap();
    let reply = client.send(req).await;
    let seen = reply.echo();
    assert_eq!(seen.header("x-gateway"), Some("plumeway"));
    assert_eq!(seen.header("x-internal"), None);
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    assert!(reply.headers.get("x-backend").is_none());
}

#[tokio::test]
async fn three_plugins_run_in_declared_order_and_the_same_plugin_takes_per_route_config() {
    let backend = Backend::echo("b").await;
    let plugins = r#"
[plugins.a]
builtin = "headers"
config = { append = { "x-chain" = "a" } }
[plugins.b]
builtin = "headers"
config = { append = { "x-chain" = "b" } }
[plugins.c]
builtin = "headers"
config = { append = { "x-chain" = "c" } }
[plugins.tag-blue]
builtin = "headers"
config = { set = { "x-tenant" = "blue" } }
[plugins.tag-green]
builtin = "headers"
config = { set = { "x-tenant" = "green" } }
"#;
    let toml = format!(
        "{}\n[[routes]]\nmatch = {{ path_prefix = \"/green\" }}\nupstream = \"u\"\nrequest = [\"tag-green\"]\n",
        config(
            plugins,
            &backend,
            "match = { path_prefix = \"/blue\" }\nrequest = [\"c\", \"a\", \"b\", \"tag-blue\"]\nresponse = [\"b\", \"c\", \"a\"]"
        )
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client();
    let reply = client.get("/blue/x").await;
    assert_eq!(
        reply.echo().header("x-chain"),
        Some("c, a, b"),
        "request filters in list order"
    );
    let resp_chain: Vec<&str> = reply
        .headers
        .get_all("x-chain")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(resp_chain, ["b", "c", "a"], "response filters in list order");
    assert_eq!(reply.echo().header("x-tenant"), Some("blue"));
    assert_eq!(client.get("/green/x").await.echo().header("x-tenant"), Some("green"));
}

#[tokio::test]
async fn api_key_answers_401_early_and_never_forwards_the_key() {
    let backend = Backend::echo("b").await;
    let plugins = r#"
[plugins.key]
builtin = "api-key"
config = { header = "x-api-key", keys = ["s3cret"] }
[plugins.sec]
builtin = "headers"
config = { set = { "x-content-type-options" = "nosniff" } }
"#;
    let proxy = TestProxy::start(&config(plugins, &backend, "request = [\"key\"]\nresponse = [\"sec\"]")).await;
    let client = proxy.client();
    let denied = client.get("/private").await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.text(), "401 Unauthorized: missing API key\n");
    assert_eq!(denied.headers["www-authenticate"], "ApiKey header=\"x-api-key\"");
    // Response filters still run on an early answer.
    assert_eq!(denied.headers["x-content-type-options"], "nosniff");
    assert_eq!(backend.hits(), 0, "a rejected request never reaches the upstream");

    let req = client
        .request("GET", "/private")
        .header("x-api-key", "s3cret")
        .body(empty())
        .unwrap();
    let ok = client.send(req).await;
    assert_eq!(ok.echo().header("x-api-key"), None);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn cors_answers_preflights_and_decorates_responses() {
    let backend = Backend::echo("b").await;
    let plugins = r#"
[plugins.cors]
builtin = "cors"
config = { allow_origins = ["https://app.example"], allow_methods = ["GET", "PUT"], allow_headers = ["content-type"] }
"#;
    let proxy = TestProxy::start(&config(
        plugins,
        &backend,
        "request = [\"cors\"]\nresponse = [\"cors\"]",
    ))
    .await;
    let client = proxy.client();
    let preflight = client
        .request("OPTIONS", "/items")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .body(empty())
        .unwrap();
    let reply = client.send(preflight).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(reply.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(backend.hits(), 0);

    let evil = client
        .request("OPTIONS", "/items")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .body(empty())
        .unwrap();
    assert_eq!(client.send(evil).await.status, 403);

    let actual = client
        .request("GET", "/items")
        .header("origin", "https://app.example")
        .body(empty())
        .unwrap();
    let reply = client.send(actual).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(reply.headers["vary"], "origin");
}

#[tokio::test]
async fn json_errors_answers_upstream_failures_with_the_request_id() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let toml = format!(
        "[plugins.errors]\nbuiltin = \"json-errors\"\n[upstreams.u]\ntargets = [\"{url}\"]\n[[routes]]\nupstream = \"u\"\non_error = \"errors\"\n"
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client();
    let req = client
        .request("GET", "/")
        .header("x-request-id", "req-42")
        .body(empty())
        .unwrap();
    let reply = client.send(req).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-request-id"], "req-42");
    assert_eq!(
        reply.text(),
        "{\"status\":502,\"error\":\"connection_refused\",\"request_id\":\"req-42\"}\n"
    );
}

#[tokio::test]
async fn json_errors_answers_a_rate_limited_request_with_its_request_id() {
    let backend = Backend::echo("b").await;
    let toml = format!(
        "[plugins.errors]\nbuiltin = \"json-errors\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\non_error = \"errors\"\nrate_limit = {{ rate = 0.5, burst = 1 }}\n",
        backend.url()
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client();
    let get = |id: &str| {
        client
            .request("GET", "/")
            .header("x-request-id", id)
            .body(empty())
            .unwrap()
    };
    assert_eq!(client.send(get("req-6")).await.status, 200);
    // Refused before any plugin ran: the error plugin still knows the id.
    let reply = client.send(get("req-7")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.text();
    assert!(body.contains("\"request_id\":\"req-7\""), "{body}");
}

#[tokio::test]
async fn canary_balancer_sends_its_share_and_honours_the_header() {
    let (stable, canary) = (Backend::echo("stable").await, Backend::echo("canary").await);
    let toml = format!(
        r#"
[plugins.canary]
builtin = "canary"
config = {{ header = "x-canary", percent = 10 }}
[upstreams.u]
targets = ["{}", "{}"]
balancer = {{ plugin = "canary" }}
[[routes]]
upstream = "u"
"#,
        stable.url(),
        canary.url()
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client();
    for _ in 0..100 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // One warm instance serves sequential requests, so the share is exact.
    assert_eq!((stable.hits(), canary.hits()), (90, 10));
    // The counter would send the next request to the canary: the header
    // overrides it both ways, so the balancer must see the client's headers.
    let forced = |value: &'static str| {
        client
            .request("GET", "/")
            .header("x-canary", value)
            .body(empty())
            .unwrap()
    };
    assert_eq!(client.send(forced("never")).await.echo().backend, "stable");
    assert_eq!(client.send(forced("always")).await.echo().backend, "canary");
}
