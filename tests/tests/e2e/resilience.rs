//! Upstream resilience with real backends and real failures: balancers,
//! retries, passive ejection, active health checks, budgets.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use plumeway_tests::backend::full;
use plumeway_tests::chaos::{Chaos, Misbehaviour};
use plumeway_tests::client::{body, empty};
use plumeway_tests::{Backend, TestProxy, within};

fn upstream(targets: &[String], extra: &str) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|t| {
            if t.starts_with('{') {
                t.clone()
            } else {
                format!("\"{t}\"")
            }
        })
        .collect();
    format!(
        "[upstreams.u]\ntargets = [{}]\n{extra}\n[[routes]]\nupstream = \"u\"\n",
        list.join(", ")
    )
}

/// A port nothing listens on: connections to it are refused.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[tokio::test]
async fn weighted_shares_follow_weights_over_10000_requests() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let targets = [
        format!("{{ url = \"{}\", weight = 1 }}", a.url()),
        format!("{{ url = \"{}\", weight = 3 }}", b.url()),
    ];
    let proxy = TestProxy::start(&upstream(&targets, "balancer = \"weighted\"")).await;
    let client = proxy.client();
    for _ in 0..10_000 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let share_b = b.hits() as f64 / 10_000.0;
    assert!(
        (share_b - 0.75).abs() <= 0.75 * 0.05,
        "b got {share_b:.4} of requests, weight says 0.75"
    );
    assert_eq!(a.hits() + b.hits(), 10_000);
}

#[tokio::test]
async fn least_connections_prefers_the_idle_endpoint() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = Arc::clone(&gate);
    let slow = Backend::start(move |_req| {
        let held = Arc::clone(&held);
        async move {
            held.notified().await;
            http::Response::new(full("slow"))
        }
    })
    .await;
    let fast = Backend::start(|_req| async { http::Response::new(full("fast")) }).await;
    let proxy = TestProxy::start(&upstream(&[slow.url(), fast.url()], "balancer = \"least-connections\"")).await;
    let client = proxy.client();
    // Occupy the slow endpoint: whichever gets the first request, send until
    // one request is held there.
    let mut pending = Vec::new();
    while slow.hits() == 0 {
        let c = client.clone();
        pending.push(tokio::spawn(async move { c.get("/").await }));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fast_before = fast.hits();
    for _ in 0..20 {
        assert_eq!(client.get("/").await.text(), "fast");
    }
    assert_eq!(fast.hits() - fast_before, 20, "all went to the idle endpoint");
    assert_eq!(slow.hits(), 1);
    gate.notify_waiters();
    for p in pending {
        let _ = within("held request", p).await;
    }
}

#[tokio::test]
async fn consistent_hashing_keeps_clients_when_an_endpoint_joins() {
    let backends = [
        Backend::echo("0").await,
        Backend::echo("1").await,
        Backend::echo("2").await,
        Backend::echo("3").await,
    ];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let by = "balancer = { hash_header = \"x-user\" }";
    let three = TestProxy::start(&upstream(&urls[..3], by)).await;
    let four = TestProxy::start(&upstream(&urls, by)).await;
    let place = |proxy: &TestProxy, user: usize| {
        let client = proxy.client();
        async move {
            let req = client
                .request("GET", "/")
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            client.send(req).await.echo().backend
        }
    };
    let mut before = HashMap::new();
    for user in 0..600 {
        before.insert(user, place(&three, user).await);
    }
    let (mut stayed, mut to_new, mut moved_elsewhere) = (0, 0, 0);
    for user in 0..600 {
        let now = place(&four, user).await;
        assert_eq!(
            place(&four, user).await,
            now,
            "the same key always lands on the same endpoint"
        );
        if now == before[&user] {
            stayed += 1;
        } else if now == "3" {
            to_new += 1;
        } else {
            moved_elsewhere += 1;
        }
    }
    // Only the new endpoint's share moves (~1/4); nobody else is reshuffled.
    assert!(
        stayed as f64 / 600.0 >= 0.65,
        "stayed {stayed}, to new {to_new}, elsewhere {moved_elsewhere}"
    );
    assert!(
        moved_elsewhere * 100 <= 600,
        "more than 1% moved between old endpoints: {moved_elsewhere}"
    );
    let kept_of_unmoved = stayed as f64 / (stayed + moved_elsewhere) as f64;
    assert!(
        kept_of_unmoved >= 0.90,
        "{kept_of_unmoved:.3} of clients not moved to the new endpoint kept theirs"
    );
}

#[tokio::test]
async fn a_dead_backend_loses_no_get_request() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&upstream(&[a.url(), dead_url().await, b.url()], "")).await;
    let client = proxy.client();
    for i in 0..90 {
        let reply = client.get("/steady").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(a.hits() + b.hits(), 90);
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_never_retried_but_a_get_is() {
    let breaks = Chaos::start(Misbehaviour::CloseAfterRequest).await;
    let good = Backend::echo("good").await;
    // Round robin starts at the first target, and no passive ejection, so
    // each request below meets the breaking backend first.
    let proxy = TestProxy::start(&upstream(&[breaks.url(), good.url()], "passive = { failures = 0 }")).await;
    let client = proxy.client();
    let post = client.request("POST", "/orders").body(body("{\"qty\":1}")).unwrap();
    let reply = client.send(post).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(breaks.requests(), 1);
    assert_eq!(
        good.hits(),
        0,
        "a POST that may have been processed must not be sent twice"
    );

    // The next request starts on the good backend (round robin); the one after
    // meets the breaking backend again and, being a GET, is retried.
    assert_eq!(client.get("/a").await.status, 200);
    let reply = client.get("/b").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(breaks.requests(), 2);
    assert_eq!(good.hits(), 2);
}

#[tokio::test]
async fn a_reset_mid_body_aborts_the_client_response() {
    let chaos = Chaos::start(Misbehaviour::TruncateBody).await;
    let proxy = TestProxy::start(&upstream(&[chaos.url()], "")).await;
    let client = proxy.client();
    let resp = client
        .send_streaming(client.request("GET", "/file").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200, "the head was already relayed");
    let result = within("body", resp.into_body().collect()).await;
    assert!(
        result.is_err(),
        "a truncated body must end in an error, never look complete"
    );
}

#[tokio::test]
async fn passive_detection_ejects_a_failing_endpoint_but_never_the_majority() {
    let breaks = Chaos::start(Misbehaviour::CloseAfterRequest).await;
    let good = Backend::echo("good").await;
    let proxy = TestProxy::start(&upstream(
        &[breaks.url(), good.url()],
        "passive = { failures = 2, eject = \"60s\" }\nretry = { attempts = 1 }",
    ))
    .await;
    let client = proxy.client();
    let mut failed = 0;
    for _ in 0..20 {
        if client.get("/").await.status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "two failures eject it; then only the good endpoint is used");
    assert_eq!(breaks.requests(), 2);

    // With both endpoints failing, at most half may be ejected: the proxy
    // keeps trying rather than black-holing everything.
    let (x, y) = (
        Chaos::start(Misbehaviour::CloseAfterRequest).await,
        Chaos::start(Misbehaviour::CloseAfterRequest).await,
    );
    let proxy = TestProxy::start(&upstream(
        &[x.url(), y.url()],
        "passive = { failures = 1, eject = \"60s\", max_ejected_percent = 50 }\nretry = { attempts = 1 }",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.client().get("/").await.status, 502);
    }
    assert!(x.requests() > 0 && y.requests() > 0);
    assert_eq!(x.requests() + y.requests(), 10, "one endpoint stayed in rotation");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_a_full_outage() {
    let (x, y) = (
        Chaos::start(Misbehaviour::ResetOnAccept).await,
        Chaos::start(Misbehaviour::ResetOnAccept).await,
    );
    let proxy = TestProxy::start(&upstream(
        &[x.url(), y.url()],
        "passive = { failures = 0 }\nretry = { attempts = 2, budget_percent = 20 }",
    ))
    .await;
    let client = proxy.client();
    for _ in 0..100 {
        assert_eq!(client.get("/").await.status, 502);
    }
    let attempts = x.accepted() + y.accepted();
    // 100 first tries + at most 20% retries + the small reserve of 3.
    assert!((100..=123).contains(&attempts), "{attempts} attempts for 100 requests");
}

#[tokio::test]
async fn active_checks_take_an_endpoint_out_and_bring_it_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let flaky = Backend::start(move |req| {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if req.uri().path() == "/healthz" {
                let status = if ok { 200 } else { 503 };
                http::Response::builder().status(status).body(full("")).unwrap()
            } else {
                http::Response::new(full("flaky"))
            }
        }
    })
    .await;
    let steady = Backend::start(|_req| async { http::Response::new(full("steady")) }).await;
    let interval = Duration::from_millis(50);
    let proxy = TestProxy::start(&upstream(
        &[flaky.url(), steady.url()],
        "health = { path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", healthy = 2, unhealthy = 3 }",
    ))
    .await;
    let client = proxy.client();
    let serves = |who: &'static str| {
        let client = client.clone();
        async move {
            // Two requests: with two endpoints in rotation one of them reaches `who`.
            let a = client.get("/").await.text();
            let b = client.get("/").await.text();
            a == who || b == who
        }
    };
    assert!(serves("flaky").await);

    healthy.store(false, Ordering::SeqCst);
    let started = Instant::now();
    within("flaky taken out", async {
        while serves("flaky").await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let out_after = started.elapsed();
    // Three failed probes, 50 ms apart (±10% jitter), plus a probe in flight
    // and slack for a loaded 2-core machine.
    assert!(
        out_after <= interval * 3 + Duration::from_secs(1),
        "taken out after {out_after:?}"
    );

    healthy.store(true, Ordering::SeqCst);
    within("flaky back", async {
        while !serves("flaky").await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn killing_one_of_three_backends_under_steady_load_loses_no_get() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let doomed = Backend::echo("doomed").await;
    let proxy = TestProxy::start(&upstream(&[a.url(), doomed.url(), b.url()], "")).await;
    let client = proxy.client();
    let mut doomed = Some(doomed);
    for i in 0..300 {
        if i == 100 {
            let gone = doomed.take().expect("once");
            assert!(gone.hits() > 0, "it took its share before dying");
            drop(gone);
        }
        let reply = client.get("/steady").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
}

#[tokio::test]
async fn the_circuit_opens_rests_and_half_opens_with_one_probe() {
    let breaks = Chaos::start(Misbehaviour::CloseAfterRequest).await;
    let good = Backend::echo("good").await;
    let proxy = TestProxy::start(&upstream(
        &[breaks.url(), good.url()],
        "passive = { failures = 0 }\nretry = { attempts = 1 }\n\
         circuit_breaker = { failure_ratio = 0.5, min_requests = 3, window = \"10s\", open_for = \"300ms\" }",
    ))
    .await;
    let client = proxy.client();
    // Round robin alternates until the breaking endpoint has failed 3 of 3.
    while breaks.requests() < 3 {
        client.get("/").await;
    }
    let opened = Instant::now();
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200, "an open circuit gets no traffic");
    }
    assert_eq!(breaks.requests(), 3);
    // After the rest, exactly one probe goes through; it fails, so the
    // circuit opens again and the next requests stay away.
    let rest = Duration::from_millis(300).saturating_sub(opened.elapsed());
    tokio::time::sleep(rest + Duration::from_millis(50)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get("/").await.status.as_u16());
    }
    assert_eq!(breaks.requests(), 4, "one half-open probe: {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 502).count(), 1);
}

#[tokio::test]
async fn a_body_that_goes_quiet_is_cut_off_at_the_idle_timeout() {
    let chaos = Chaos::start(Misbehaviour::StallBody).await;
    let proxy = TestProxy::start(&upstream(&[chaos.url()], "timeouts = { idle = \"300ms\" }")).await;
    let client = proxy.client();
    let resp = client
        .send_streaming(client.request("GET", "/stream").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let result = within("stalled body", resp.into_body().collect()).await;
    let waited = started.elapsed();
    assert!(result.is_err(), "a stalled body must end in an error");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "cut off after {waited:?}"
    );
}

#[tokio::test]
async fn a_malformed_response_is_502() {
    let chaos = Chaos::start(Misbehaviour::Garbage).await;
    let proxy = TestProxy::start(&upstream(&[chaos.url()], "retry = { attempts = 1 }")).await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=http_protocol_error");
}

#[tokio::test]
async fn retry_on_retries_a_503_for_get_but_never_for_post() {
    let busy = Backend::start(|_req| async { http::Response::builder().status(503).body(full("busy")).unwrap() }).await;
    let good = Backend::echo("good").await;
    let proxy = TestProxy::start(&upstream(
        &[busy.url(), good.url()],
        "passive = { failures = 0 }\nretry = { attempts = 2, retry_on = [503] }",
    ))
    .await;
    let client = proxy.client();
    // Round robin starts on the busy backend.
    let reply = client.get("/").await;
    assert_eq!(reply.echo().backend, "good", "the GET was retried after the 503");
    assert_eq!((busy.hits(), good.hits()), (1, 1));
    // The retry took no turn of its own: the next request has the good
    // backend's turn, and the one after it the busy backend's again, where
    // a POST is not retried.
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!((busy.hits(), good.hits()), (1, 2));
    let reply = client.send(client.request("POST", "/").body(body("x")).unwrap()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "busy");
    assert_eq!(
        (busy.hits(), good.hits()),
        (2, 2),
        "the POST was not sent to the good backend"
    );
}
