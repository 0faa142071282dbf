//! Plugins that misbehave, plugins that log, bodies, isolation, and the
//! example plugin, each with real compiled components. Every test plugin in
//! `tests/plugins/` must have a module here, or this file does not compile.

use std::path::Path;

use plumeway_tests::client::{body, empty};
use plumeway_tests::{Backend, BinaryProxy, TestProxy, foreach_test_plugin};

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[expect(unused_imports, reason = "only checks that the module exists")]
        use self::$name as _;
    };
}
foreach_test_plugin!(assert_test_exists);

/// A proxy with one plugin `p` loaded from `wasm` with `extra` keys, used by
/// a route with `route` keys in front of `backend`.
async fn proxy(wasm: &str, extra: &str, backend: &Backend, route: &str) -> TestProxy {
    TestProxy::start(&toml(wasm, extra, backend, route)).await
}

fn toml(wasm: &str, extra: &str, backend: &Backend, route: &str) -> String {
    format!(
        "[plugins.p]\npath = {wasm:?}\n{extra}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n{route}\n",
        backend.url()
    )
}

mod chaos {
    use super::*;
    use plumeway_tests::plugins::CHAOS;

    /// A GET through `client`, asking the chaos plugin for `mode`.
    async fn get(client: &plumeway_tests::Client, path: &str, mode: Option<&str>) -> plumeway_tests::Reply {
        let mut req = client.request("GET", path);
        if let Some(m) = mode {
            req = req.header("x-chaos", m);
        }
        client.send(req.body(empty()).unwrap()).await
    }

    #[tokio::test]
    async fn each_misbehaviour_fails_only_its_request() {
        let backend = Backend::echo("b").await;
        let limits = "limits = { time = \"50ms\", memory = \"16MiB\" }";
        let proxy = proxy(CHAOS, limits, &backend, "request = [\"p\"]").await;
        for mode in [
            "trap",
            "loop",
            "memory",
            "sleep",
            "file",
            "bad-header",
            "bad-header-value",
            "bad-path",
            "bad-status",
            "error",
            "forbidden",
        ] {
            let reply = get(&proxy.client(), "/", Some(mode)).await;
            assert_eq!(reply.status, 500, "{mode}: {}", reply.text());
            assert_eq!(
                reply.text(),
                "500 Internal Server Error: a plugin on this route failed\n",
                "{mode}"
            );
            assert_eq!(
                reply.headers["proxy-status"], "plumeway; error=proxy_internal_error",
                "{mode}"
            );
            // The very next request on the same route is served normally.
            let next = get(&proxy.client(), "/", None).await;
            assert_eq!(next.status, 200, "after {mode}: {}", next.text());
        }
        assert_eq!(backend.hits(), 11, "no failed request reached the upstream");
    }

    /// The `plumeway` binary with one worker, so that the plugin runs on
    /// the thread that serves everything: the chaos plugin as `p` (with
    /// `extra` keys) on every request.
    async fn one_worker(extra: &str, backend: &Backend) -> BinaryProxy {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{}",
            toml(CHAOS, extra, backend, "request = [\"p\"]")
        );
        BinaryProxy::start(&config).await
    }

    #[tokio::test]
    async fn the_log_says_what_the_plugin_did() {
        let backend = Backend::echo("b").await;
        let proxy = one_worker("", &backend).await;
        let client = proxy.client();
        for (mode, logged) in [
            // The panic message the guest wrote to stderr.
            ("trap", "chaos: asked to trap"),
            ("sleep", "a plugin may not wait"),
            ("file", "a plugin has no files or network"),
        ] {
            let reply = get(&client, "/", Some(mode)).await;
            assert_eq!(reply.status, 500, "{mode}: {}", reply.text());
            let line = proxy.wait_for_log(logged).await;
            assert!(
                line.contains("plugin failed") && line.contains("failure=\"trap\""),
                "{mode}: {line}"
            );
            assert_eq!(client.get("/").await.status, 200, "after {mode}");
        }
    }

    /// The `plumeway` binary advances the epoch from a timer's signal, not
    /// from a thread: with one worker, an endless loop runs on the only
    /// thread there is, and only the signal can stop it. Three in a row:
    /// the timer keeps re-arming itself, from its idle pace each time.
    #[tokio::test]
    async fn the_binary_stops_an_endless_loop_on_its_only_thread() {
        let backend = Backend::echo("b").await;
        let proxy = one_worker("limits = { time = \"50ms\" }", &backend).await;
        let client = proxy.client();
        for n in 1..=3 {
            let started = std::time::Instant::now();
            let reply = get(&client, "/", Some("loop")).await;
            assert_eq!(reply.status, 500, "loop {n}: {}", reply.text());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "loop {n} took {:?}",
                started.elapsed()
            );
            assert_eq!(client.get("/").await.status, 200, "after loop {n}");
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let line = proxy.wait_for_log("failure=\"timeout\"").await;
        assert!(line.contains("plugin failed"), "{line}");
        assert_eq!(backend.hits(), 3, "no looping request reached the upstream");
    }

    #[tokio::test]
    async fn a_trap_in_a_response_filter_fails_that_response_only() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(CHAOS, "", &backend, "response = [\"p\"]").await;
        assert_eq!(get(&proxy.client(), "/x/trap-response", None).await.status, 500);
        let ok = get(&proxy.client(), "/fine", None).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.headers["x-chaos-response"], "seen");
    }

    #[tokio::test]
    async fn pooled_instances_are_reused_and_a_trapped_one_is_replaced() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(CHAOS, "", &backend, "request = [\"p\"]").await;
        let served = |r: plumeway_tests::Reply| r.echo().header("x-instance-requests").map(str::to_owned);
        assert_eq!(served(get(&proxy.client(), "/", None).await).as_deref(), Some("1"));
        assert_eq!(served(get(&proxy.client(), "/", None).await).as_deref(), Some("2"));
        assert_eq!(get(&proxy.client(), "/", Some("trap")).await.status, 500);
        assert_eq!(
            served(get(&proxy.client(), "/", None).await).as_deref(),
            Some("1"),
            "a fresh instance after the trap"
        );
    }

    #[tokio::test]
    async fn per_request_isolation_gives_every_call_a_fresh_instance() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(CHAOS, "isolation = \"per-request\"", &backend, "request = [\"p\"]").await;
        for _ in 0..3 {
            let reply = get(&proxy.client(), "/", None).await;
            assert_eq!(reply.echo().header("x-instance-requests"), Some("1"));
        }
    }

    #[tokio::test]
    async fn on_failure_skip_keeps_serving_through_a_failing_plugin() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(CHAOS, "on_failure = \"skip\"", &backend, "request = [\"p\"]").await;
        assert_eq!(get(&proxy.client(), "/", Some("trap")).await.status, 200);
        assert_eq!(get(&proxy.client(), "/", Some("error")).await.status, 200);
    }

    #[tokio::test]
    async fn fuel_limits_a_call_deterministically() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(
            CHAOS,
            "limits = { fuel = 5000000, time = \"5s\" }",
            &backend,
            "request = [\"p\"]",
        )
        .await;
        assert_eq!(get(&proxy.client(), "/", Some("loop")).await.status, 500);
        assert_eq!(get(&proxy.client(), "/", None).await.status, 200);
    }

    #[tokio::test]
    async fn the_error_plugin_sees_which_plugin_failed() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(
            CHAOS,
            "[plugins.errors]\nbuiltin = \"json-errors\"",
            &backend,
            "request = [\"p\"]\non_error = \"errors\"",
        )
        .await;
        let client = proxy.client();
        let req = client
            .request("GET", "/")
            .header("x-chaos", "trap")
            .header("x-request-id", "r-7")
            .body(empty())
            .unwrap();
        let reply = client.send(req).await;
        assert_eq!(reply.status, 500);
        assert_eq!(
            reply.text(),
            "{\"status\":500,\"error\":\"plugin_failed\",\"plugin\":\"p\",\"request_id\":\"r-7\"}\n"
        );
    }
}

mod rewrite_only {
    use super::*;
    use plumeway::config::Config;
    use plumeway::proxy::Proxy;
    use plumeway_tests::plugins::REWRITE_ONLY;

    #[tokio::test]
    async fn using_a_plugin_for_a_hook_it_does_not_export_is_a_load_error() {
        let backend = Backend::echo("b").await;
        let source = toml(REWRITE_ONLY, "", &backend, "request = [\"p\"]");
        let config = Config::parse(Path::new("p.toml"), &source).unwrap();
        let err = Proxy::build(&config).await.unwrap_err().to_string();
        assert_eq!(
            err.lines().next().unwrap(),
            "p.toml:8:12: routes[0].request[0]: plugin \"p\" does not export plumeway:plugin/request-filter@0.1.0, \
             so it cannot be used as a request filter (it exports: rewrite)"
        );
        // Used for what it exports, it works.
        let proxy = proxy(REWRITE_ONLY, "", &backend, "rewrite = \"p\"").await;
        assert_eq!(proxy.client().get("/anything").await.echo().path, "/rewritten");
    }
}

mod old_contract {
    use super::*;
    use plumeway::config::Config;
    use plumeway::proxy::Proxy;
    use plumeway_tests::plugins::OLD_CONTRACT;

    #[tokio::test]
    async fn a_plugin_built_against_another_shape_of_the_contract_is_told_to_be_rebuilt() {
        let backend = Backend::echo("b").await;
        let source = toml(OLD_CONTRACT, "", &backend, "rewrite = \"p\"");
        let config = Config::parse(Path::new("p.toml"), &source).unwrap();
        let err = Proxy::build(&config).await.unwrap_err().to_string();
        assert_eq!(
            err.lines().next().unwrap(),
            "p.toml:1:10: plugins.p: failed to start: could not start an instance: it exports \
             plumeway:plugin/rewrite@0.1.0, but not as this plumeway's contract has it: it was built against \
             another version of the contract; rebuild it against this plumeway's plumeway-sdk: failed to convert \
             function to given type: type mismatch with parameters: expected 1-tuple, found 0-tuple"
        );
    }
}

mod logger {
    use super::*;
    use plumeway_tests::plugins::LOGGER;

    #[tokio::test]
    async fn plugin_logs_reach_the_proxy_log_and_context_is_visible() {
        let backend = Backend::echo("b").await;
        let mut source = toml(
            LOGGER,
            "config = { tag = \"t1\" }",
            &backend,
            "name = \"logged\"\nrequest = [\"p\"]\nresponse = [\"p\"]",
        );
        source.insert_str(0, "[server]\nlisten = \"127.0.0.1:0\"\n");
        let proxy = BinaryProxy::start(&source).await;
        let client = proxy.client();
        let req = client
            .request("GET", "/hello?x=1")
            .header("host", "api.example")
            .header("x-request-id", "abc-1")
            .body(empty())
            .unwrap();
        let reply = client.send(req).await;
        let seen = reply.echo();
        let line = proxy.wait_for_log("logger t1 saw GET /hello").await;
        assert!(line.contains("plugin=\"p\"") || line.contains("plugin=p"), "{line}");
        assert!(line.contains("logged"), "the route is named in the log: {line}");
        assert_eq!(seen.header("x-seen-route"), Some("logged"));
        assert_eq!(seen.header("x-seen-plugin"), Some("p"));
        assert_eq!(seen.header("x-seen-client-ip"), Some("127.0.0.1"));
        assert_eq!(seen.header("x-seen-request-id"), Some("abc-1"));
        // The request line, read through `context` by the SDK.
        assert_eq!(seen.header("x-seen-line"), Some("GET /hello?x=1 api.example"));
        // And by a response filter, which is lent the response's headers.
        assert_eq!(reply.headers["x-seen-line"], "GET /hello?x=1 api.example");
        // Outside a hook there are no headers to read or edit.
        assert_eq!(
            seen.header("x-seen-init"),
            Some("get 0, has false, set Err(HeaderError::Immutable), all 0")
        );
    }

    /// A backend whose fields need nothing done to them is passed on as it
    /// wrote them, and response filters edit those fields in place: what
    /// they remove or set is left out, what they append comes after. The
    /// client must get the same response whether the filter's edits are
    /// written beside the raw fields, or a filter that reads the fields
    /// (the logger) makes them a map before or after the edits; and the
    /// same as an HTTP/2 client, whose response is made a map throughout.
    #[tokio::test]
    async fn response_filters_edit_a_backends_fields_as_it_wrote_them() {
        let backend = Backend::start(|_req| async {
            http::Response::builder()
                .header("server", "test")
                .header("x-drop", "1")
                .header("x-replace", "old")
                .header("x-add", "first")
                .header("set-cookie", "a=1")
                .header("x-keep", "k")
                .header("set-cookie", "b=2")
                .header("content-type", "text/plain")
                .body(plumeway_tests::backend::full("hello"))
                .unwrap()
        })
        .await;
        let date = "Thu, 01 Jan 2026 00:00:00 GMT";
        let source = format!(
            r#"[plugins.p]
path = {LOGGER:?}
[plugins.edit]
builtin = "headers"
config = {{ remove = ["x-drop"], set = {{ "x-replace" = "new", "date" = "{date}" }}, append = {{ "x-add" = "second" }} }}
[upstreams.u]
targets = ["{}"]
[[routes]]
match = {{ path_prefix = "/edit-only" }}
upstream = "u"
response = ["edit"]
[[routes]]
match = {{ path_prefix = "/edit-then-read" }}
upstream = "u"
response = ["edit", "p"]
[[routes]]
match = {{ path_prefix = "/read-then-edit" }}
upstream = "u"
response = ["p", "edit"]
"#,
            backend.url()
        );
        let proxy = TestProxy::start(&source).await;
        let client = proxy.client();
        for path in ["/edit-only", "/edit-then-read", "/read-then-edit"] {
            // HTTP/1.1 twice (the second response comes on a reused
            // connection), then HTTP/2.
            for h2 in [false, false, true] {
                let reply = match h2 {
                    false => client.get(path).await,
                    true => client.get_h2(path, "localhost").await,
                };
                let all = |name: &str| -> Vec<&str> {
                    reply
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap())
                        .collect()
                };
                let path = format!("{path}{}", if h2 { " over HTTP/2" } else { "" });
                assert_eq!(reply.status, 200, "{path}");
                assert!(all("x-drop").is_empty(), "{path}: {:?}", reply.headers);
                assert_eq!(all("x-replace"), ["new"], "{path}");
                assert_eq!(all("x-add"), ["first", "second"], "{path}");
                assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{path}");
                assert_eq!((all("x-keep"), all("server")), (vec!["k"], vec!["test"]), "{path}");
                assert_eq!(all("date"), [date], "{path}: one Date, the filter's");
                assert_eq!(all("via").len(), 1, "{path}: {:?}", reply.headers);
                assert_eq!(all("content-length"), ["5"], "{path}");
                assert_eq!(reply.text(), "hello", "{path}");
            }
        }
        let seen = |path: &'static str| {
            let client = &client;
            async move {
                client.get(path).await.headers["x-seen-fields"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let via = format!(
            "via={}",
            &client.get("/edit-only").await.headers["via"].to_str().unwrap()
        );
        assert_eq!(
            seen("/edit-then-read").await,
            format!(
                "content-length=5; content-type=text/plain; server=test; set-cookie=a=1; set-cookie=b=2; \
                 {via}; x-add=first; x-add=second; x-keep=k; x-replace=new"
            ),
            "a filter after the edits reads them"
        );
        assert_eq!(
            seen("/read-then-edit").await,
            format!(
                "content-length=5; content-type=text/plain; server=test; set-cookie=a=1; set-cookie=b=2; \
                 {via}; x-add=first; x-drop=1; x-keep=k; x-replace=old"
            ),
            "a filter before the edits reads the backend's fields"
        );
    }
}

mod body_upper {
    use super::*;
    use plumeway_tests::plugins::BODY_UPPER;

    #[tokio::test]
    async fn request_body_is_buffered_and_replaced_with_a_fixed_length() {
        let backend = Backend::start(|req| async move {
            use http_body_util::BodyExt;
            let len = req
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            http::Response::new(plumeway_tests::backend::full(format!(
                "{len:?} {}",
                String::from_utf8_lossy(&body)
            )))
        })
        .await;
        let proxy = proxy(BODY_UPPER, "", &backend, "request = [\"p\"]").await;
        let client = proxy.client();
        let req = client.request("POST", "/").body(body("make me loud")).unwrap();
        assert_eq!(client.send(req).await.text(), "Some(\"12\") MAKE ME LOUD");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_when_a_plugin_needs_it() {
        let backend = Backend::echo("b").await;
        let source = format!(
            "[server]\nlimits = {{ max_body = \"1KiB\" }}\n{}",
            toml(BODY_UPPER, "", &backend, "request = [\"p\"]")
        );
        let proxy = TestProxy::start(&source).await;
        let client = proxy.client();
        // Chunked (no declared length), so only buffering finds out.
        let chunks = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![b'a'; 512])))),
        );
        use http_body_util::BodyExt;
        let streamed = http_body_util::StreamBody::new(chunks)
            .map_err(|e| Box::new(e) as _)
            .boxed();
        let req = client.request("POST", "/").body(streamed).unwrap();
        assert_eq!(client.send(req).await.status, 413);
        assert_eq!(backend.hits(), 0);
    }

    #[tokio::test]
    async fn response_body_is_buffered_on_request_and_limited() {
        let backend =
            Backend::start(|_req| async { http::Response::new(plumeway_tests::backend::full("quiet reply")) }).await;
        let proxy = proxy(BODY_UPPER, "limits = { body = \"8B\" }", &backend, "response = [\"p\"]").await;
        let client = proxy.client();
        // Over the plugin's 8-byte body limit: 502, never a cut body.
        let reply = client.get("/x/upper-response").await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        // Bodies the plugin does not ask for stream past it untouched.
        assert_eq!(client.get("/plain").await.text(), "quiet reply");

        let roomy = proxy_roomy(&backend).await;
        let reply = roomy.client().get("/x/upper-response").await;
        assert_eq!(reply.text(), "QUIET REPLY");
        assert_eq!(reply.headers["content-length"], "11");
    }

    async fn proxy_roomy(backend: &Backend) -> TestProxy {
        proxy(BODY_UPPER, "", backend, "response = [\"p\"]").await
    }
}

mod hello_plugin {
    use super::*;
    use plumeway_tests::plugins::HELLO_PLUGIN;

    #[tokio::test]
    async fn the_example_plugin_works_as_documented() {
        let backend = Backend::echo("b").await;
        let proxy = proxy(
            HELLO_PLUGIN,
            "config = { greeting = \"hi from wasm\" }",
            &backend,
            "request = [\"p\"]\nresponse = [\"p\"]",
        )
        .await;
        let reply = proxy.client().get("/").await;
        assert_eq!(reply.headers["x-hello-plugin"], "1");
        assert_eq!(reply.echo().header("x-hello"), Some("hi from wasm"));
    }

    #[tokio::test]
    async fn a_config_the_plugin_rejects_fails_at_load_with_its_message() {
        let backend = Backend::echo("b").await;
        let source = toml(
            HELLO_PLUGIN,
            "config = { greting = \"typo\" }",
            &backend,
            "request = [\"p\"]",
        );
        let config = plumeway::config::Config::parse(Path::new("p.toml"), &source).unwrap();
        let err = plumeway::proxy::Proxy::build(&config).await.unwrap_err();
        assert_eq!(err.key(), "plugins.p.config");
        assert!(
            err.message()
                .starts_with("rejected by the plugin: invalid config: unknown field `greting`"),
            "{}",
            err.message()
        );
    }
}
