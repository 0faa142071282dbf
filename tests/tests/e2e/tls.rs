//! TLS both ways: termination with SNI and ALPN, and `https://` upstreams
//! verified by default, with the failures a user must be told about.

use plumeway_tests::tls::{Pki, backend, connect, get};
use plumeway_tests::{Backend, TestProxy};

fn terminating(pki_a: &plumeway_tests::tls::Issued, pki_b: &plumeway_tests::tls::Issued, target: &str) -> String {
    format!(
        r#"
[server.tls]
listen = "127.0.0.1:0"
certificates = [
  {{ cert = {:?}, key = {:?}, names = ["a.test"] }},
  {{ cert = {:?}, key = {:?}, names = ["*.b.test"] }},
]
[upstreams.u]
targets = ["{target}"]
[[routes]]
upstream = "u"
"#,
        pki_a.cert.display().to_string(),
        pki_a.key.display().to_string(),
        pki_b.cert.display().to_string(),
        pki_b.key.display().to_string(),
    )
}

#[tokio::test]
async fn tls_termination_picks_certificates_by_sni_and_negotiates_h2() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"], false);
    let b = pki.issue("b", &["*.b.test"], false);
    let echo = Backend::echo("plain").await;
    let proxy = TestProxy::start(&terminating(&a, &b, &echo.url())).await;
    let addr = proxy.tls.unwrap();

    // SNI picks the certificate, wildcards included.
    let tls = connect(addr, "x.b.test", pki.client_config(&[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], b.der);
    let (status, body) = get(tls, "/hello", "x.b.test").await;
    assert_eq!(status, 200);
    let seen = plumeway_tests::Echo::parse(body.as_bytes());
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.path, "/hello");

    let tls = connect(addr, "a.test", pki.client_config(&[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], a.der);
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN did not pick h2"
    );
    let (status, _) = get(tls, "/", "a.test").await;
    assert_eq!(status, 200);

    // A name no certificate has: the default one is shown, which the
    // client rightly refuses.
    let err = connect(addr, "wrong.test", pki.client_config(&[], None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // Plain HTTP still works beside it.
    assert_eq!(proxy.client().get("/").await.status, 200);
}

fn upstream(target: &str, tls: &str) -> String {
    format!("[upstreams.u]\ntargets = [\"{target}\"]\ntls = {{ {tls} }}\n[[routes]]\nupstream = \"u\"\n")
}

#[tokio::test]
async fn https_upstreams_are_verified_unless_told_otherwise() {
    let pki = Pki::new();
    let good = pki.issue("backend", &["backend.test"], false);
    let (addr, _task) = backend(&good, None).await;
    let target = format!("https://{addr}");
    let ca = format!("ca = {:?}", pki.ca.display().to_string());

    // Verified against the configured CA, with the configured SNI name.
    let proxy = TestProxy::start(&upstream(&target, &format!("{ca}, sni = \"backend.test\""))).await;
    let reply = proxy.client().get("/x").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "tls backend: /x http HTTP/1.1");

    // The system roots do not know this CA: 502, said to be the certificate.
    let proxy = TestProxy::start(&upstream(&target, "sni = \"backend.test\"")).await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=tls_certificate_error");

    // The right CA but the wrong name: the same.
    let proxy = TestProxy::start(&upstream(&target, &format!("{ca}, sni = \"other.test\""))).await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=tls_certificate_error");

    // Verification off (and logged loudly): it goes through.
    let proxy = TestProxy::start(&upstream(&target, "insecure_skip_verify = true")).await;
    assert_eq!(proxy.client().get("/").await.status, 200);
}

#[tokio::test]
async fn the_upstream_protocol_decides_http2_over_tls() {
    let pki = Pki::new();
    let good = pki.issue("backend", &["backend.test"], false);
    let (addr, _task) = backend(&good, None).await;
    let ca = format!("ca = {:?}, sni = \"backend.test\"", pki.ca.display().to_string());
    for (protocol, version) in [("http1", "HTTP/1.1"), ("h2", "HTTP/2.0"), ("auto", "HTTP/2.0")] {
        let config = upstream(&format!("https://{addr}"), &ca)
            .replace("[[routes]]", &format!("protocol = \"{protocol}\"\n[[routes]]"));
        let proxy = TestProxy::start(&config).await;
        for _ in 0..3 {
            let reply = proxy.client().get("/v").await;
            assert_eq!(reply.status, 200, "{protocol}: {}", reply.text());
            assert_eq!(reply.text(), format!("tls backend: /v http {version}"), "{protocol}");
        }
    }
}

#[tokio::test]
async fn an_expired_upstream_certificate_is_502() {
    let pki = Pki::new();
    let expired = pki.issue("expired", &["backend.test"], true);
    let (addr, _task) = backend(&expired, None).await;
    let proxy = TestProxy::start(&upstream(
        &format!("https://{addr}"),
        &format!("ca = {:?}, sni = \"backend.test\"", pki.ca.display().to_string()),
    ))
    .await;
    let reply = proxy.client().get("/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.headers["proxy-status"], "plumeway; error=tls_certificate_error");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let server = pki.issue("backend", &["backend.test"], false);
    let client = pki.issue("client", &["plumeway.test"], false);
    let (addr, _task) = backend(&server, Some(pki.ca_der())).await;
    let target = format!("https://{addr}");
    let ca = format!("ca = {:?}, sni = \"backend.test\"", pki.ca.display().to_string());

    let without = TestProxy::start(&upstream(&target, &ca)).await;
    assert_eq!(without.client().get("/").await.status, 502);

    let with = TestProxy::start(&upstream(
        &target,
        &format!(
            "{ca}, client_cert = {:?}, client_key = {:?}",
            client.cert.display().to_string(),
            client.key.display().to_string()
        ),
    ))
    .await;
    let reply = with.client().get("/m").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_key_that_does_not_fit_its_certificate_is_a_config_error() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"], false);
    let b = pki.issue("b", &["b.test"], false);
    let text = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n[[routes]]\nupstream = \"u\"\n",
        a.cert.display().to_string(),
        b.key.display().to_string()
    );
    let config = plumeway::config::Config::parse(std::path::Path::new("p.toml"), &text).unwrap();
    let err = plumeway::server::Server::bind(&config).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("server.tls.certificates[0]") && message.contains("does not fit"),
        "{message}"
    );
}
