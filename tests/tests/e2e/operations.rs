//! What an operator relies on: metrics that move with traffic, the admin
//! API, reloads that lose nothing, and the access log.

use std::time::Duration;

use plumeway_tests::client::empty;
use plumeway_tests::plugins::CHAOS;
use plumeway_tests::{Backend, Client, TestProxy, within};

/// The value of one series in a Prometheus text exposition, or 0 when it
/// is absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(proxy: &TestProxy) -> String {
    let reply = proxy.admin().get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    reply.text()
}

async fn json(client: &Client, path: &str) -> serde_json::Value {
    let reply = client.get(path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", reply.text()))
}

#[tokio::test]
async fn metrics_follow_requests_retries_plugin_failures_and_health() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let dead = Backend::echo("dead").await;
    let dead_url = dead.url();
    drop(dead);
    let proxy = TestProxy::start(&format!(
        r#"
[admin]
[plugins.chaos]
path = {CHAOS:?}
limits = {{ time = "50ms" }}
[upstreams.u]
targets = ["{a}"]
[upstreams.pair]
targets = ["{dead_url}", "{b}"]
retry = {{ attempts = 2 }}
health = {{ path = "/", interval = "50ms", healthy = 1, unhealthy = 1 }}
[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "u"
request = ["chaos"]
[[routes]]
name = "pair"
match = {{ path_prefix = "/pair" }}
upstream = "pair"
"#,
        a = a.url(),
        b = b.url()
    ))
    .await;
    let client = proxy.client();
    for _ in 0..3 {
        assert_eq!(client.get("/api/x").await.status, 200);
    }
    let trap = client
        .send(
            client
                .request("POST", "/api/x")
                .header("x-chaos", "trap")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(trap.status, 500);
    assert_eq!(client.get("/nowhere").await.status, 404);

    let m = metrics(&proxy).await;
    let ok = format!(
        "plumeway_requests_total{{route=\"api\",upstream=\"u\",endpoint=\"{}\",method=\"GET\",status=\"2xx\"}}",
        a.url()
    );
    assert_eq!(sample(&m, &ok), 3.0, "{m}");
    let trapped = "plumeway_requests_total{route=\"api\",upstream=\"-\",endpoint=\"-\",method=\"POST\",status=\"5xx\"}";
    assert_eq!(sample(&m, trapped), 1.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "plumeway_requests_total{route=\"-\",upstream=\"-\",endpoint=\"-\",method=\"GET\",status=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "plumeway_plugin_calls_total{plugin=\"chaos\"}"), 4.0, "{m}");
    assert_eq!(
        sample(&m, "plumeway_plugin_failures_total{plugin=\"chaos\",kind=\"trap\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "plumeway_request_duration_seconds_count{route=\"api\"}"),
        4.0
    );
    let upstream_count = format!(
        "plumeway_upstream_duration_seconds_count{{upstream=\"u\",endpoint=\"{}\"}}",
        a.url()
    );
    assert_eq!(sample(&m, &upstream_count), 3.0);
    assert!(sample(&m, "plumeway_plugin_call_duration_seconds_count{plugin=\"chaos\"}") >= 4.0);

    // The dead endpoint is found out by the health checker, and a request
    // that met it first was retried on the live one.
    within("the dead endpoint is marked unhealthy", async {
        loop {
            let m = metrics(&proxy).await;
            let series = format!("plumeway_endpoint_healthy{{upstream=\"pair\",endpoint=\"{dead_url}\"}}");
            if m.contains(&format!("{series} 0")) {
                let to = format!(
                    "plumeway_health_transitions_total{{upstream=\"pair\",endpoint=\"{dead_url}\",to=\"unhealthy\"}}"
                );
                assert_eq!(sample(&m, &to), 1.0, "{m}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let m = metrics(&proxy).await;
    assert!(m.contains(&format!(
        "plumeway_endpoint_healthy{{upstream=\"pair\",endpoint=\"{}\"}} 1",
        b.url()
    )));
    assert!(m.contains("plumeway_open_connections{kind=\"upstream\"} "), "{m}");
    assert!(sample(&m, "plumeway_open_connections{kind=\"client\"}") >= 1.0, "{m}");
    assert_eq!(sample(&m, "plumeway_requests_in_flight"), 0.0);
}

#[tokio::test]
async fn a_retry_is_counted() {
    let b = Backend::echo("b").await;
    let dead = Backend::echo("dead").await;
    let dead_url = dead.url();
    drop(dead);
    let proxy = TestProxy::start(&format!(
        "[admin]\n[upstreams.u]\ntargets = [\"{dead_url}\", \"{}\"]\nretry = {{ attempts = 2 }}\npassive = {{ failures = 1, eject = \"60s\" }}\n[[routes]]\nupstream = \"u\"\n",
        b.url()
    ))
    .await;
    for _ in 0..4 {
        let reply = proxy.client().get("/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let m = metrics(&proxy).await;
    // The first request meets the dead endpoint and is retried; its
    // failure ejects it, so no other request meets it.
    assert_eq!(sample(&m, "plumeway_retries_total{upstream=\"u\"}"), 1.0, "{m}");
    let ejected = format!("plumeway_ejections_total{{upstream=\"u\",endpoint=\"{dead_url}\"}}");
    assert_eq!(sample(&m, &ejected), 1.0, "{m}");
    assert!(m.contains(&format!(
        "plumeway_endpoint_ejected{{upstream=\"u\",endpoint=\"{dead_url}\"}} 1"
    )));
}

#[tokio::test]
async fn admin_api_reports_config_upstreams_plugins_and_health() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&format!(
        r#"
[admin]
[plugins.key]
builtin = "api-key"
config = {{ header = "x-api-key", keys = ["s3cret-key"] }}
[upstreams.u]
targets = ["{a}", {{ url = "http://127.0.0.1:9", weight = 3, down = true }}]
[[routes]]
name = "guarded"
upstream = "u"
request = ["key"]
"#,
        a = a.url()
    ))
    .await;
    let client = proxy.client();
    let reply = client
        .send(
            client
                .request("GET", "/")
                .header("x-api-key", "s3cret-key")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(client.get("/").await.status, 401);

    let admin = proxy.admin();
    assert_eq!(admin.get("/healthz").await.status, 200);
    assert_eq!(admin.get("/readyz").await.status, 200);

    let config = admin.get("/config").await;
    assert_eq!(config.status, 200);
    assert!(
        !config.text().contains("s3cret-key"),
        "a secret leaked: {}",
        config.text()
    );
    let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(config["plugins"]["key"]["config"]["keys"], "<redacted>");
    assert_eq!(config["plugins"]["key"]["config"]["header"], "x-api-key");

    let upstreams = json(&admin, "/upstreams").await;
    let endpoints = &upstreams[0]["endpoints"];
    assert_eq!(upstreams[0]["name"], "u");
    assert_eq!(endpoints[0]["url"], a.url().as_str());
    assert_eq!(endpoints[0]["healthy"], true);
    assert_eq!(endpoints[0]["available"], true);
    assert_eq!(endpoints[0]["requests"], 1);
    assert_eq!(endpoints[0]["in_flight"], 0);
    assert_eq!(endpoints[1]["weight"], 3);
    assert_eq!(endpoints[1]["down"], true);
    assert_eq!(endpoints[1]["available"], false);

    let plugins = json(&admin, "/plugins").await;
    assert_eq!(plugins[0]["name"], "key");
    assert_eq!(plugins[0]["source"], "builtin api-key");
    assert_eq!(plugins[0]["hooks"], serde_json::json!(["request-filter"]));
    assert_eq!(plugins[0]["calls"], 2);
    assert_eq!(plugins[0]["failures"], 0);
    assert_eq!(plugins[0]["limits"]["time"], "20ms");

    let routes = json(&admin, "/routes").await;
    assert_eq!(routes[0]["name"], "guarded");
    assert_eq!(routes[0]["request"], serde_json::json!(["key"]));

    let page = admin.get("/").await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.text().contains("<table id=\"upstreams\">"));
    assert_eq!(admin.get("/nope").await.status, 404);
    assert_eq!(admin.get("/reload").await.status, 405);
}

/// A config file in a temporary directory, rewritten atomically.
struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let file = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        file.write(text);
        file
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("plumeway.toml")
    }

    fn write(&self, text: &str) {
        let tmp = self.dir.path().join("plumeway.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

/// A config whose response plugin tags each response with `tag`. The
/// plugin's time limit is wall-clock: a debug build on 2 cores under the
/// whole suite can be descheduled past the default 20 ms mid-call, and
/// these tests are about reloads, not time limits.
fn reload_config(tag: &str, targets: &[String]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.tag]
builtin = "headers"
config = {{ set = {{ "x-config" = "{tag}" }} }}
limits = {{ time = "2s" }}
[upstreams.u]
targets = [{}]
health = {{ path = "/", interval = "10s", healthy = 1, unhealthy = 1 }}
[[routes]]
upstream = "u"
response = ["tag"]
"#,
        targets.join(", ")
    )
}

async fn reload(proxy: &TestProxy) -> plumeway_tests::Reply {
    let admin = proxy.admin();
    admin
        .send(admin.request("POST", "/reload").body(empty()).unwrap())
        .await
}

#[tokio::test]
async fn reloads_under_load_lose_no_request() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let file = ConfigFile::new(&reload_config("v0", &[a.url()]));
    let proxy = TestProxy::start_file(&file.path()).await;
    assert_eq!(proxy.client().get("/").await.headers["x-config"], "v0");

    // Four clients in a steady loop, each on its own keep-alive connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let client = proxy.client();
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut seen) = (0u32, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = client.get("/").await;
                if reply.status == 200 {
                    ok += 1;
                    seen.insert(reply.headers["x-config"].to_str().unwrap().to_owned());
                } else {
                    failed.push(format!("{} {}", reply.status, reply.text().trim()));
                }
            }
            (ok, failed, seen)
        }));
    }
    for round in 1..=6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Every other reload also changes the targets.
        let targets = if round % 2 == 0 {
            vec![a.url()]
        } else {
            vec![a.url(), b.url()]
        };
        file.write(&reload_config(&format!("v{round}"), &targets));
        let reply = reload(&proxy).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in loops {
        let (ok, failed, seen) = l.await.unwrap();
        assert!(failed.is_empty(), "requests failed across reloads: {failed:?}");
        assert!(
            seen.contains("v6"),
            "a keep-alive connection did not follow the reloads: {seen:?}"
        );
        total += ok;
    }
    assert!(total > 100, "too few requests to mean anything: {total}");
    assert_eq!(proxy.client().get("/").await.headers["x-config"], "v6");
    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "plumeway_config_reloads_total{result=\"ok\"}"), 6.0);
}

#[tokio::test]
async fn a_reload_keeps_what_it_knows_about_endpoints_that_stay() {
    // `sick` fails its health checks; a reload that keeps it must not
    // forget that (the next probe is 10s away), nor the pool of `a`.
    let a = Backend::echo("a").await;
    let sick = Backend::start(|_req| async {
        http::Response::builder()
            .status(500)
            .body(plumeway_tests::backend::full("sick"))
            .unwrap()
    })
    .await;
    let file = ConfigFile::new(&reload_config("v0", &[a.url(), sick.url()]));
    let proxy = TestProxy::start_file(&file.path()).await;
    within("sick is found out", async {
        loop {
            let upstreams = json(&proxy.admin(), "/upstreams").await;
            if upstreams[0]["endpoints"][1]["healthy"] == false {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    file.write(&reload_config("v1", &[a.url(), sick.url()]));
    assert_eq!(reload(&proxy).await.status, 200);
    let upstreams = json(&proxy.admin(), "/upstreams").await;
    assert_eq!(upstreams[0]["endpoints"][1]["healthy"], false, "{upstreams}");
    for _ in 0..10 {
        let reply = proxy.client().get("/").await;
        assert_eq!((reply.status.as_u16(), reply.echo().backend.as_str()), (200, "a"));
        assert_eq!(reply.headers["x-config"], "v1");
    }
}

#[tokio::test]
async fn an_invalid_reload_is_rejected_and_the_old_config_keeps_serving() {
    let a = Backend::echo("a").await;
    let file = ConfigFile::new(&reload_config("v0", &[a.url()]));
    let proxy = TestProxy::start_file(&file.path()).await;

    // A typo: rejected with the file, line and key.
    file.write(&reload_config("v1", &[a.url()]).replace("upstream = \"u\"", "upstream = \"nope\""));
    let reply = reload(&proxy).await;
    assert_eq!(reply.status, 409);
    let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("plumeway.toml:14:12: routes[0].upstream: unknown upstream \"nope\""),
        "{message}"
    );

    // A plugin that does not compile: rejected too.
    let garbage = file.dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really").unwrap();
    file.write(&format!(
        "{}\n[plugins.broken]\npath = {:?}\n",
        reload_config("v2", &[a.url()]),
        garbage.display().to_string()
    ));
    let reply = reload(&proxy).await;
    assert_eq!(reply.status, 409);
    assert!(reply.text().contains("plugins.broken"), "{}", reply.text());

    // A listener change needs a restart.
    file.write(
        &reload_config("v3", &[a.url()])
            .replace("listen = \"127.0.0.1:0\"\n[admin]", "listen = \"127.0.0.1:1\"\n[admin]"),
    );
    let reply = reload(&proxy).await;
    assert_eq!(reply.status, 409);
    assert!(
        reply.text().contains("listeners change only with a restart"),
        "{}",
        reply.text()
    );

    let served = proxy.client().get("/").await;
    assert_eq!(
        (served.status.as_u16(), served.headers["x-config"].to_str().unwrap()),
        (200, "v0")
    );
    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "plumeway_config_reloads_total{result=\"failed\"}"), 3.0);
    assert_eq!(sample(&m, "plumeway_config_reloads_total{result=\"ok\"}"), 0.0);
}

#[tokio::test]
async fn the_config_file_is_watched_when_asked() {
    let a = Backend::echo("a").await;
    let text = |tag: &str| reload_config(tag, &[a.url()]).replace("[admin]\n", "[admin]\nwatch_config = true\n");
    let file = ConfigFile::new(&text("v0"));
    let proxy = TestProxy::start_file(&file.path()).await;
    assert_eq!(proxy.client().get("/").await.headers["x-config"], "v0");
    file.write(&text("v1"));
    within("the edit is picked up", async {
        while proxy.client().get("/").await.headers["x-config"] != "v1" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let a = Backend::echo("a").await;
    let mut proxy = plumeway_tests::BinaryProxy::start(&reload_config("v0", &[a.url()])).await;
    assert_eq!(proxy.client().get("/").await.headers["x-config"], "v0");
    std::fs::write(proxy.config_path(), reload_config("v1", &[a.url()])).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("config reloaded").await;
    assert_eq!(proxy.client().get("/").await.headers["x-config"], "v1");
    proxy.signal("TERM");
    let status = proxy.wait().await;
    let logs = proxy.logs().join("\n");
    // Seen once under the full suite's load: the status and the log say why.
    assert!(status.success(), "{status}\n{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
}

#[tokio::test]
async fn access_log_lines_in_json_and_common_format() {
    let a = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    for format in ["json", "common"] {
        let log = dir.path().join(format!("access-{format}.log"));
        let proxy = TestProxy::start(&format!(
            "[access_log]\nformat = \"{format}\"\npath = {:?}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
            log.display().to_string(),
            a.url()
        ))
        .await;
        let client = proxy.client();
        let reply = client
            .send(
                client
                    .request("GET", "/hello?x=1")
                    .header("x-request-id", "req-42")
                    .header("user-agent", "tester/1.0")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        let bytes = reply.body.len();
        let line = within("the access log line is written", async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().next() {
                    return line.to_owned();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["method"], "GET");
            assert_eq!(v["path"], "/hello?x=1");
            assert_eq!(v["status"], 200);
            assert_eq!(v["bytes"], bytes);
            assert_eq!(v["complete"], true);
            assert_eq!(v["route"], "r");
            assert_eq!(v["upstream"], "u");
            assert_eq!(v["endpoint"], a.url().as_str());
            assert_eq!(v["attempts"], 1);
            assert_eq!(v["request_id"], "req-42");
            assert_eq!(v["user_agent"], "tester/1.0");
            assert!(v["duration_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
        } else {
            assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
            assert!(
                line.contains(&format!(
                    "\"GET /hello?x=1 HTTP/1.1\" 200 {bytes} \"-\" \"tester/1.0\" rt="
                )),
                "{line}"
            );
            assert!(
                line.contains(&format!(
                    "route=r upstream=u endpoint={} attempts=1 complete=true id=req-42",
                    a.url()
                )),
                "{line}"
            );
        }
    }
}

/// The dashboard in a real headless Chromium: it loads, shows routes,
/// endpoints and plugins from the live API, and shows a backend going
/// unhealthy.
#[tokio::test]
async fn the_dashboard_shows_a_backend_going_unhealthy() {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    let flaky = Backend::start(move |req: http::Request<hyper::body::Incoming>| {
        let ok = req.uri().path() != "/healthz" || flag.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            http::Response::builder()
                .status(if ok { 200 } else { 503 })
                .body(plumeway_tests::backend::full("flaky"))
                .unwrap()
        }
    })
    .await;
    let steady = Backend::echo("steady").await;
    let proxy = TestProxy::start(&format!(
        r#"
[admin]
[plugins.hdr]
builtin = "headers"
config = {{ set = {{ "x-gateway" = "plumeway" }} }}
[upstreams.web]
targets = ["{}", "{}"]
health = {{ path = "/healthz", interval = "100ms", healthy = 1, unhealthy = 1 }}
[[routes]]
name = "site"
upstream = "web"
response = ["hdr"]
"#,
        flaky.url(),
        steady.url()
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(proxy.client().get("/").await.status, 200);
    }
    let browser = plumeway_tests::browser::Browser::start().await;
    browser
        .open(&format!("http://{}/?interval=200", proxy.admin.unwrap()))
        .await;
    let state = format!(
        "const td = document.querySelector('tr[data-endpoint=\"{}\"] td.state'); return td ? td.textContent : null;",
        flaky.url()
    );
    browser
        .wait_for("the endpoint shows healthy", &state, &serde_json::json!("healthy"))
        .await;
    browser
        .wait_for(
            "the route row is there",
            "const r = document.querySelector('tr[data-route=\"site\"]'); return r ? r.cells[2].textContent : null;",
            &serde_json::json!("web"),
        )
        .await;
    browser
        .wait_for(
            "the plugin row counts calls",
            "const r = document.querySelector('tr[data-plugin=\"hdr\"]'); return r ? Number(r.cells[3].textContent) >= 20 : null;",
            &serde_json::json!(true),
        )
        .await;

    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    browser
        .wait_for("the endpoint shows unhealthy", &state, &serde_json::json!("unhealthy"))
        .await;
    let status = browser
        .eval("return document.getElementById('status').textContent;")
        .await;
    assert!(status.as_str().unwrap().starts_with("up "), "{status}");
}
