//! Consul for discovery tests.
//!
//! No Consul server can be installed on these machines, so [`TestConsul`]
//! is a small server that speaks the documented subset of Consul's HTTP API
//! that plumeway uses, with Consul's semantics:
//!
//! - `GET /v1/health/service/NAME` with `passing`, `tag`, `dc` (ignored: one
//!   datacenter), and blocking queries: `index` + `wait` hold the answer
//!   until the index moves past `index` or `wait` passes; every answer
//!   carries `X-Consul-Index`.
//! - `PUT /v1/agent/service/register` (ID, Name, Address, Port, Tags, Meta,
//!   Weights, one Check with TTL and Status; the check's ID defaults to
//!   `service:ID`), `PUT /v1/agent/service/deregister/ID`.
//! - `PUT /v1/agent/check/pass/ID`, `.../fail/ID`; a TTL check not renewed
//!   within its TTL turns critical.
//!
//! [`ConsulApi`] drives any Consul, this one or a real `consul agent -dev`
//! ([`RealConsul`], when a `consul` binary is on PATH), with raw HTTP calls
//! written from Consul's documentation, not with plumeway's client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::backend::{BackendBody, full};
use crate::{Backend, Client};

/// The test server; stopped when dropped.
#[derive(Debug)]
pub struct TestConsul {
    backend: Backend,
    state: Arc<State>,
    expiry: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    inner: Mutex<Inner>,
    /// Woken on every change, for blocking queries.
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    index: u64,
    services: BTreeMap<String, Service>,
    health_queries: usize,
}

#[derive(Debug)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weight: u64,
    check: Option<Check>,
}

#[derive(Debug)]
struct Check {
    id: String,
    status: String,
    ttl: Option<Duration>,
    renewed: Instant,
}

impl TestConsul {
    /// Starts the server on 127.0.0.1 and a port the OS picked.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                index: 1,
                ..Inner::default()
            }),
            ..State::default()
        });
        let handler_state = Arc::clone(&state);
        let backend = Backend::start(move |req| {
            let state = Arc::clone(&handler_state);
            async move { handle(state, req).await }
        })
        .await;
        // TTL checks that were not renewed in time turn critical.
        let expiry_state = Arc::clone(&state);
        let expiry = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut inner = expiry_state.inner.lock().expect("state");
                let mut expired = false;
                for check in inner.services.values_mut().filter_map(|s| s.check.as_mut()) {
                    if check.ttl.is_some_and(|ttl| check.renewed.elapsed() > ttl) && check.status != "critical" {
                        check.status = "critical".into();
                        expired = true;
                    }
                }
                if expired {
                    inner.index += 1;
                    drop(inner);
                    expiry_state.changed.notify_waiters();
                }
            }
        });
        Self { backend, state, expiry }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.backend.url()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    /// How many health queries it answered.
    pub fn health_queries(&self) -> usize {
        self.state.inner.lock().expect("state").health_queries
    }
}

impl Drop for TestConsul {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<BackendBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), decode(v))
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "health", "service", name]) => health(&state, name, &query).await,
        ("PUT", ["v1", "agent", "service", "register"]) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => register(&state, &v),
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
        },
        ("PUT", ["v1", "agent", "service", "deregister", id]) => {
            let removed = state.inner.lock().expect("state").services.remove(*id).is_some();
            if !removed {
                return reply(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}"));
            }
            bump(&state);
            reply(StatusCode::OK, String::new())
        }
        ("PUT", ["v1", "agent", "check", verb @ ("pass" | "fail"), check_id]) => {
            let status = if *verb == "pass" { "passing" } else { "critical" };
            let found = {
                let mut inner = state.inner.lock().expect("state");
                let check = inner
                    .services
                    .values_mut()
                    .filter_map(|s| s.check.as_mut())
                    .find(|c| c.id == *check_id);
                check.map(|c| {
                    c.renewed = Instant::now();
                    let changed = c.status != status;
                    c.status = status.into();
                    changed
                })
            };
            match found {
                None => reply(StatusCode::NOT_FOUND, format!("Unknown check ID {check_id:?}")),
                Some(changed) => {
                    if changed {
                        bump(&state);
                    }
                    reply(StatusCode::OK, String::new())
                }
            }
        }
        _ => reply(StatusCode::NOT_FOUND, format!("no handler for {method} {path}")),
    }
}

async fn health(state: &State, name: &str, query: &BTreeMap<String, String>) -> Response<BackendBody> {
    let asked: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query.get("wait").map_or(Duration::from_secs(300), |w| parse_wait(w));
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(600));
    loop {
        let notified = state.changed.notified();
        let index = state.inner.lock().expect("state").index;
        if asked == 0 || index > asked || tokio::time::Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
    let mut inner = state.inner.lock().expect("state");
    inner.health_queries += 1;
    let passing_only = query.contains_key("passing");
    let tag = query.get("tag");
    let entries: Vec<Value> = inner
        .services
        .values()
        .filter(|s| s.name == name)
        .filter(|s| tag.is_none_or(|t| s.tags.contains(t)))
        .filter(|s| !passing_only || s.check.as_ref().is_none_or(|c| c.status == "passing"))
        .map(|s| {
            let checks: Vec<Value> = s
                .check
                .iter()
                .map(|c| json!({ "CheckID": c.id, "Status": c.status, "ServiceID": s.id }))
                .chain(std::iter::once(
                    json!({ "CheckID": "serfHealth", "Status": "passing", "ServiceID": "" }),
                ))
                .collect();
            json!({
                "Node": { "Node": "test-node", "Address": "127.0.0.1", "Datacenter": "dc1" },
                "Service": {
                    "ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
                    "Tags": s.tags, "Meta": s.meta, "Weights": { "Passing": s.weight, "Warning": 1 },
                },
                "Checks": checks,
            })
        })
        .collect();
    let index = inner.index;
    drop(inner);
    let mut response = reply(StatusCode::OK, Value::Array(entries).to_string());
    response
        .headers_mut()
        .insert("x-consul-index", index.to_string().parse().expect("header"));
    response
}

fn register(state: &State, v: &Value) -> Response<BackendBody> {
    let Some(name) = v["Name"].as_str().filter(|n| !n.is_empty()) else {
        return reply(StatusCode::BAD_REQUEST, "Missing service name".into());
    };
    let id = v["ID"].as_str().unwrap_or(name).to_owned();
    let check = v.get("Check").filter(|c| !c.is_null()).map(|c| Check {
        id: c["CheckID"]
            .as_str()
            .map_or_else(|| format!("service:{id}"), str::to_owned),
        status: c["Status"].as_str().unwrap_or("critical").to_owned(),
        ttl: c["TTL"].as_str().map(parse_wait),
        renewed: Instant::now(),
    });
    let service = Service {
        id: id.clone(),
        name: name.to_owned(),
        address: v["Address"].as_str().unwrap_or("").to_owned(),
        port: v["Port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
        tags: serde_json::from_value(v["Tags"].clone()).unwrap_or_default(),
        meta: serde_json::from_value(v["Meta"].clone()).unwrap_or_default(),
        weight: v["Weights"]["Passing"].as_u64().unwrap_or(1),
        check,
    };
    state.inner.lock().expect("state").services.insert(id, service);
    bump(state);
    reply(StatusCode::OK, String::new())
}

fn bump(state: &State) {
    state.inner.lock().expect("state").index += 1;
    state.changed.notify_waiters();
}

fn reply(status: StatusCode, body: String) -> Response<BackendBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, "application/json".parse().expect("header"));
    response
}

/// Consul's durations: `"10s"`, `"100ms"`, `"5m"`.
fn parse_wait(s: &str) -> Duration {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().unwrap_or(0);
    match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Raw calls to a Consul agent's documented HTTP API.
#[derive(Debug, Clone)]
pub struct ConsulApi {
    client: Client,
}

impl ConsulApi {
    /// An API client for the agent at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::new(addr),
        }
    }

    async fn put(&self, path: &str, body: Value) {
        let request = self
            .client
            .request("PUT", path)
            .body(crate::client::body(body.to_string()))
            .expect("request");
        let reply = self.client.send(request).await;
        assert_eq!(reply.status, 200, "PUT {path}: {}", reply.text());
    }

    /// Registers service `name` instance `id` at `addr`, with a TTL check
    /// that starts passing.
    pub async fn register(&self, name: &str, id: &str, addr: SocketAddr, tags: &[&str], meta: &[(&str, &str)]) {
        let meta: BTreeMap<&str, &str> = meta.iter().copied().collect();
        self.put(
            "/v1/agent/service/register",
            json!({
                "ID": id, "Name": name, "Address": addr.ip().to_string(), "Port": addr.port(),
                "Tags": tags, "Meta": meta,
                "Check": { "CheckID": format!("service:{id}"), "TTL": "10m", "Status": "passing" },
            }),
        )
        .await;
    }

    /// Deregisters instance `id`.
    pub async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), Value::Null)
            .await;
    }

    /// Sets instance `id`'s TTL check passing or critical.
    pub async fn set_passing(&self, id: &str, passing: bool) {
        let verb = if passing { "pass" } else { "fail" };
        self.put(&format!("/v1/agent/check/{verb}/service:{id}"), Value::Null)
            .await;
    }
}

/// A real `consul agent -dev`, when a `consul` binary is on PATH.
#[derive(Debug)]
pub struct RealConsul {
    /// Its HTTP API address.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RealConsul {
    /// Starts a dev agent on 127.0.0.1 with every port chosen free (DNS and
    /// gRPC off), or `None` when there is no `consul` binary.
    pub fn start() -> Option<Self> {
        let found = Command::new("consul")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let http = crate::free_port();
        let ports = format!(
            "ports {{ http = {http}\n dns = -1\n grpc = -1\n grpc_tls = -1\n serf_lan = {}\n serf_wan = {}\n server = {} }}",
            crate::free_port(),
            crate::free_port(),
            crate::free_port()
        );
        let log = std::fs::File::create(dir.path().join("consul.log")).expect("log");
        let child = Command::new("consul")
            .args(["agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"])
            .arg(format!("-data-dir={}", dir.path().join("data").display()))
            .arg(format!("-hcl={ports}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start consul");
        let addr = SocketAddr::from(([127, 0, 0, 1], http));
        let mut consul = Self { addr, child, _dir: dir };
        let deadline = Instant::now() + crate::STEP;
        // Ready when it has a leader.
        loop {
            if let Ok(Some(status)) = consul.child.try_wait() {
                panic!("consul exited with {status}");
            }
            let leader = std::net::TcpStream::connect(addr).is_ok() && has_leader(addr);
            if leader {
                return Some(consul);
            }
            assert!(
                Instant::now() < deadline,
                "consul agent -dev did not elect a leader in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `GET /v1/status/leader` answers a non-empty address.
fn has_leader(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /v1/status/leader HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\":")
}

impl Drop for RealConsul {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
