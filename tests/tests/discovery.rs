//! Service discovery with real back ends: the proxy follows the live set of
//! instances without a restart.

use std::path::Path;
use std::time::Duration;

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
