//! Service discovery with real back ends: the proxy follows the live set of
//! instances without a restart.

use std::path::Path;
use std::time::Duration;

use plumeway_tests::consul::{ConsulApi, RealConsul, TestConsul};
use plumeway_tests::etcd::Etcd;
use plumeway_tests::{Backend, TestProxy, within};

fn instances(urls: &[&str]) -> String {
    urls.iter().map(|u| format!("[[instances]]\nurl = \"{u}\"\n")).collect()
}

/// Replaces `path` the way deploy tools do: write a temporary file, rename.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Asks until the backends the proxy spreads requests over are exactly
/// `names`: a window of requests (enough for round robin to visit every
/// endpoint twice) answered by them all and by nothing else.
async fn until_served_exactly_by(proxy: &TestProxy, names: &[&str]) {
    let mut want: Vec<&str> = names.to_vec();
    want.sort_unstable();
    let deadline = tokio::time::Instant::now() + plumeway_tests::STEP;
    loop {
        let mut seen = Vec::new();
        for _ in 0..(2 * want.len()).max(4) {
            let reply = proxy.client().get("/").await;
            seen.push(if reply.status == 200 {
                reply.echo().backend
            } else {
                reply.status.as_str().to_owned()
            });
        }
        seen.sort_unstable();
        seen.dedup();
        if seen == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic did not go to exactly {want:?} within {:?}; last seen: {seen:?}",
            plumeway_tests::STEP
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks until the proxy answers from `backend`, within the test's bound.
async fn until_served_by(proxy: &TestProxy, backend: &str) {
    within(&format!("traffic moves to {backend}"), async {
        loop {
            let reply = proxy.client().get("/").await;
            if reply.status == 200 && reply.echo().backend == backend {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn file_discovery_follows_edits_and_keeps_the_last_good_set() {
    let (a, b, c) = (
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instances.toml");
    std::fs::write(&file, instances(&[&a.url()])).unwrap();
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ndiscovery = {{ file = {{ path = {:?} }} }}\n[[routes]]\nupstream = \"u\"\n",
        file.display().to_string()
    ))
    .await;
    assert_eq!(proxy.client().get("/").await.echo().backend, "a");

    write_atomically(&file, &instances(&[&b.url()]));
    until_served_by(&proxy, "b").await;
    let a_hits = a.hits();

    // A broken edit: the last good set keeps serving.
    std::fs::write(&file, "[[instances]]\nurl = \"not a url\"\n").unwrap();
    for _ in 0..20 {
        let reply = proxy.client().get("/").await;
        assert_eq!(reply.echo().backend, "b", "the broken edit must not take effect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // …and the watch is still alive for the next good edit.
    write_atomically(&file, &instances(&[&c.url(), &b.url()]));
    until_served_by(&proxy, "c").await;
    assert_eq!(a.hits(), a_hits, "a left the set and got nothing more");
}

#[tokio::test]
async fn a_missing_instances_file_is_a_config_error() {
    let config = plumeway::config::Config::parse(
        Path::new("p.toml"),
        "[upstreams.u]\ndiscovery = { file = { path = \"/nonexistent/instances.toml\" } }\n[[routes]]\nupstream = \"u\"\n",
    )
    .unwrap();
    let err = plumeway::proxy::Proxy::build(&config).await.unwrap_err();
    assert_eq!(err.key(), "upstreams.u.discovery");
    assert!(
        err.message().starts_with("cannot read /nonexistent/instances.toml"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn dns_discovery_follows_changed_a_records() {
    // Two backends on different loopback addresses, same port: A records
    // carry no port.
    let first = Backend::echo_on("first", "127.0.0.2:0".parse().unwrap()).await;
    let port = first.addr.port();
    let second = Backend::echo_on("second", format!("127.0.0.3:{port}").parse().unwrap()).await;
    let dns = plumeway_tests::dns::Dnsmasq::start("127.0.0.2 users.test\n");
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ndiscovery = {{ dns = {{ name = \"users.test\", port = {port}, server = \"{}\" }} }}\n[[routes]]\nupstream = \"u\"\n",
        dns.addr
    ))
    .await;
    until_served_by(&proxy, "first").await;

    dns.set_hosts("127.0.0.3 users.test\n");
    until_served_by(&proxy, "second").await;
    let before = first.hits();
    for _ in 0..5 {
        assert_eq!(proxy.client().get("/").await.echo().backend, "second");
    }
    assert_eq!(first.hits(), before, "the old address left the set");

    // Both addresses: both serve.
    dns.set_hosts("127.0.0.2 users.test\n127.0.0.3 users.test\n");
    until_served_by(&proxy, "first").await;
    drop(second);
}

#[tokio::test]
async fn dns_discovery_reads_srv_targets_ports_and_weights() {
    // Two instances on one address, told apart by the ports in their SRV
    // records, weighted 1:3.
    let light = Backend::echo_on("light", "127.0.0.2:0".parse().unwrap()).await;
    let heavy = Backend::echo_on("heavy", "127.0.0.2:0".parse().unwrap()).await;
    let dns = plumeway_tests::dns::Dnsmasq::start_with(
        "127.0.0.2 node.test\n",
        &[
            format!("--srv-host=_http._tcp.users.test,node.test,{},0,1", light.addr.port()),
            format!("--srv-host=_http._tcp.users.test,node.test,{},0,3", heavy.addr.port()),
        ],
    );
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ndiscovery = {{ dns = {{ name = \"_http._tcp.users.test\", type = \"srv\", server = \"{}\" }} }}\nbalancer = \"weighted\"\n[[routes]]\nupstream = \"u\"\n",
        dns.addr
    ))
    .await;
    for _ in 0..400 {
        assert_eq!(proxy.client().get("/").await.status, 200);
    }
    // SRV weights became endpoint weights: 1:3 of 400 requests.
    assert_eq!((light.hits(), heavy.hits()), (100, 300));
}

fn etcd_config(etcd: &Etcd) -> String {
    format!(
        "[upstreams.u]\ndiscovery = {{ etcd = {{ endpoints = [\"{}\"], prefix = \"/services/users/\" }} }}\n[[routes]]\nupstream = \"u\"\n",
        etcd.url
    )
}

fn record(url: &str) -> String {
    serde_json::json!({ "url": url, "weight": 1, "metadata": { "zone": "a" } }).to_string()
}

#[tokio::test]
async fn etcd_discovery_follows_the_live_set_across_a_restart() {
    let (a, b, c) = (
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    );
    let mut etcd = Etcd::start();
    etcd.put("/services/users/a", &record(&a.url()));
    // A key that sorts right after the prefix but is not under it.
    etcd.put("/services/users0", &record(&c.url()));
    let proxy = TestProxy::start(&etcd_config(&etcd)).await;
    until_served_exactly_by(&proxy, &["a"]).await;

    etcd.put("/services/users/b", &record(&b.url()));
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    etcd.delete("/services/users/a");
    until_served_exactly_by(&proxy, &["b"]).await;

    // A value that is not a record is skipped; the rest keeps serving.
    etcd.put("/services/users/c", "not json");
    etcd.put("/services/users/d", &record(&a.url()));
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    etcd.delete("/services/users/d");
    until_served_exactly_by(&proxy, &["b"]).await;

    // etcd crashes: the last good set keeps serving while it is down.
    etcd.stop();
    for _ in 0..10 {
        assert_eq!(proxy.client().get("/").await.echo().backend, "b");
    }
    // It comes back; changes made before the proxy reconnects, with the
    // history compacted under them, are still all seen.
    etcd.restart();
    etcd.put("/services/users/c", &record(&c.url()));
    etcd.put("/services/users/a", &record(&a.url()));
    etcd.delete("/services/users/b");
    etcd.compact();
    until_served_exactly_by(&proxy, &["a", "c"]).await;
    // …and the watch is live again afterwards.
    etcd.delete("/services/users/a");
    until_served_exactly_by(&proxy, &["c"]).await;
}

#[tokio::test]
async fn etcd_registration_lives_with_its_lease() {
    use plumeway::discovery::{Discovery, Etcd as EtcdBackend, Registration};
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let etcd = Etcd::start();
    etcd.put("/services/users/a", &record(&a.url()));
    let proxy = TestProxy::start(&etcd_config(&etcd)).await;
    until_served_exactly_by(&proxy, &["a"]).await;

    let config = plumeway::config::EtcdDiscovery {
        endpoints: vec![plumeway::config::TargetUrl::parse(&etcd.url).unwrap()],
        prefix: "/services/users/".into(),
        timeout: plumeway::config::Duration::from_secs(2),
    };
    let registry = EtcdBackend::new(&config);
    let instance = Registration {
        id: "b-1".into(),
        url: plumeway::config::TargetUrl::parse(&b.url()).unwrap(),
        weight: 1,
        metadata: [("zone".to_owned(), "b".to_owned())].into(),
        ttl: Duration::from_secs(2),
    };
    registry.register(&instance).await.unwrap();
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    // Kept alive past its TTL by the owner's renewals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        etcd.keys("/services/users/")
            .contains(&"/services/users/b-1".to_owned())
    );
    until_served_exactly_by(&proxy, &["a", "b"]).await;

    // Marked failing: out of the set; passing again: back.
    registry.set_health("b-1", false).await.unwrap();
    until_served_exactly_by(&proxy, &["a"]).await;
    registry.set_health("b-1", true).await.unwrap();
    until_served_exactly_by(&proxy, &["a", "b"]).await;

    // Deregistered: gone at once.
    registry.deregister("b-1").await.unwrap();
    until_served_exactly_by(&proxy, &["a"]).await;

    // The owner dies without a word: the lease expires and the instance
    // disappears by itself.
    registry.register(&instance).await.unwrap();
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    drop(registry);
    until_served_exactly_by(&proxy, &["a"]).await;
    assert_eq!(etcd.keys("/services/users/"), ["/services/users/a"]);
}

fn consul_config(addr: std::net::SocketAddr) -> String {
    format!(
        "[upstreams.u]\ndiscovery = {{ consul = {{ address = \"http://{addr}\", service = \"users\", tag = \"v2\", meta = {{ zone = \"a\" }}, wait = \"2s\" }} }}\n[[routes]]\nupstream = \"u\"\n"
    )
}

/// What a user relies on from Consul discovery, against any Consul: only
/// passing instances of the service with the tag and metadata asked for,
/// followed as checks fail and pass and instances come and go.
async fn consul_follows_passing_tagged_instances(consul: std::net::SocketAddr) {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let (v1, zone_b, other) = (
        Backend::echo("v1").await,
        Backend::echo("zone-b").await,
        Backend::echo("other-service").await,
    );
    let api = ConsulApi::new(consul);
    api.register("users", "users-a", a.addr, &["v2"], &[("zone", "a")])
        .await;
    api.register("users", "users-b", b.addr, &["v2", "canary"], &[("zone", "a")])
        .await;
    api.register("users", "users-v1", v1.addr, &["v1"], &[("zone", "a")])
        .await;
    api.register("users", "users-zone-b", zone_b.addr, &["v2"], &[("zone", "b")])
        .await;
    api.register("billing", "billing-1", other.addr, &["v2"], &[("zone", "a")])
        .await;
    let proxy = TestProxy::start(&consul_config(consul)).await;
    until_served_exactly_by(&proxy, &["a", "b"]).await;

    api.set_passing("users-b", false).await;
    until_served_exactly_by(&proxy, &["a"]).await;
    api.set_passing("users-b", true).await;
    until_served_exactly_by(&proxy, &["a", "b"]).await;

    api.deregister("users-a").await;
    until_served_exactly_by(&proxy, &["b"]).await;
    api.register("users", "users-a", a.addr, &["v2"], &[("zone", "a")])
        .await;
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    assert_eq!(
        (v1.hits(), zone_b.hits(), other.hits()),
        (0, 0, 0),
        "filtered instances got traffic"
    );
}

#[tokio::test]
async fn consul_discovery_follows_passing_tagged_instances() {
    let consul = TestConsul::start().await;
    consul_follows_passing_tagged_instances(consul.addr()).await;
    // Blocking queries, not polling: an idle second costs at most one
    // query per proxy (wait = 2s), where polling would cost many.
    let before = consul.health_queries();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        consul.health_queries() - before <= 1,
        "the proxy polls instead of blocking"
    );
}

#[tokio::test]
async fn consul_discovery_against_a_real_consul_agent() {
    let Some(consul) = RealConsul::start() else {
        eprintln!("SKIPPED: no `consul` binary on PATH; the Consul adapter was tested against the test server only");
        return;
    };
    consul_follows_passing_tagged_instances(consul.addr).await;
}

#[tokio::test]
async fn consul_registration_is_renewed_and_expires_with_its_owner() {
    use plumeway::discovery::{Consul as ConsulBackend, Discovery, Registration};
    let b = Backend::echo("b").await;
    let consul = TestConsul::start().await;
    let proxy = TestProxy::start(&consul_config(consul.addr())).await;
    assert_eq!(proxy.client().get("/").await.status, 503, "no instance yet");

    let config = plumeway::config::ConsulDiscovery {
        address: plumeway::config::TargetUrl::parse(&consul.url()).unwrap(),
        service: "users".into(),
        tag: Some("v2".into()),
        meta: [("zone".to_owned(), "a".to_owned())].into(),
        dc: None,
        token: None,
        wait: plumeway::config::Duration::from_secs(2),
        timeout: plumeway::config::Duration::from_secs(2),
    };
    let registry = ConsulBackend::new(&config);
    let instance = Registration {
        id: "users-b".into(),
        url: plumeway::config::TargetUrl::parse(&b.url()).unwrap(),
        weight: 1,
        metadata: [("zone".to_owned(), "a".to_owned())].into(),
        ttl: Duration::from_secs(1),
    };
    registry.register(&instance).await.unwrap();
    until_served_exactly_by(&proxy, &["b"]).await;
    // The owner's heartbeats keep the TTL check passing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    until_served_exactly_by(&proxy, &["b"]).await;

    registry.set_health("users-b", false).await.unwrap();
    until_served_exactly_by(&proxy, &["503"]).await;
    registry.set_health("users-b", true).await.unwrap();
    until_served_exactly_by(&proxy, &["b"]).await;

    // The owner dies: the check turns critical after its TTL.
    drop(registry);
    until_served_exactly_by(&proxy, &["503"]).await;
}

#[tokio::test]
async fn discovered_endpoints_are_health_checked_and_leaving_ones_finish_their_requests() {
    // `slow` answers after a delay; `sick` fails its health check but
    // would answer traffic, so only the checker keeps it out.
    let slow = Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() != "/healthz" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        http::Response::new(plumeway_tests::backend::full("slow"))
    })
    .await;
    let sick_traffic = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sick_traffic.clone();
    let sick = Backend::start(move |req: http::Request<hyper::body::Incoming>| {
        let status = if req.uri().path() == "/healthz" {
            500
        } else {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            200
        };
        async move {
            http::Response::builder()
                .status(status)
                .body(plumeway_tests::backend::full("sick"))
                .unwrap()
        }
    })
    .await;
    let fast = Backend::echo("fast").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instances.toml");
    std::fs::write(&file, instances(&[&slow.url()])).unwrap();
    let proxy = TestProxy::start(&format!(
        "[upstreams.u]\ndiscovery = {{ file = {{ path = {:?} }} }}\nhealth = {{ path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", healthy = 1, unhealthy = 1 }}\n[[routes]]\nupstream = \"u\"\n",
        file.display().to_string()
    ))
    .await;

    // A request in flight on `slow` when it leaves the set still completes.
    let client = proxy.client();
    let in_flight = tokio::spawn(async move { client.get("/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    write_atomically(&file, &instances(&[&fast.url(), &sick.url()]));
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "slow".to_owned()));

    // Newcomers wait for their first probe: the one that fails it never
    // gets traffic, not even before the checker's verdict.
    until_served_exactly_by(&proxy, &["fast"]).await;
    for _ in 0..10 {
        assert_eq!(proxy.client().get("/").await.echo().backend, "fast");
    }
    assert_eq!(
        sick_traffic.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an endpoint failing its health check got traffic"
    );
    drop(sick);
}

/// `plumeway register` as an operator uses it: the instance is served
/// while the command runs; SIGTERM deregisters it at once; a killed
/// registrar's instance expires with its lease.
#[tokio::test]
async fn plumeway_register_keeps_an_instance_in_etcd_while_it_runs() {
    use std::process::{Command, Stdio};
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let etcd = Etcd::start();
    etcd.put("/services/users/a", &record(&a.url()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plumeway.toml");
    std::fs::write(&config, etcd_config(&etcd)).unwrap();
    let proxy = TestProxy::start(&etcd_config(&etcd)).await;
    until_served_exactly_by(&proxy, &["a"]).await;

    let register = || {
        Command::new(env!("CARGO_BIN_EXE_plumeway-e2e"))
            .args([
                "register",
                config.to_str().unwrap(),
                "--upstream",
                "u",
                "--url",
                &b.url(),
            ])
            .args(["--id", "b", "--ttl", "2s", "--meta", "zone=b"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run plumeway register")
    };
    let mut registrar = register();
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    let value = etcd.ctl(&["get", "--print-value-only", "/services/users/b"]).unwrap();
    let value: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(value["url"], b.url().as_str());
    assert_eq!(value["metadata"]["zone"], "b");

    // SIGTERM: deregistered at once, exit 0.
    assert!(
        Command::new("kill")
            .arg(registrar.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    assert!(registrar.wait().unwrap().success());
    assert_eq!(etcd.keys("/services/users/"), ["/services/users/a"]);
    until_served_exactly_by(&proxy, &["a"]).await;

    // SIGKILL: nothing deregisters it, the lease runs out.
    let mut registrar = register();
    until_served_exactly_by(&proxy, &["a", "b"]).await;
    registrar.kill().unwrap();
    registrar.wait().unwrap();
    until_served_exactly_by(&proxy, &["a"]).await;
}
