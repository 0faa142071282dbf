//! Real HTTP/1.1 backends on 127.0.0.1:0 whose behaviour each test chooses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The response body type backends answer with.
pub type BackendBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running backend; stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    /// Open connections, closed with the backend so that dropping it is a
    /// real crash as the proxy sees it, not just a closed listener.
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// What an echo backend saw, parsed from its JSON answer.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The backend's name.
    pub backend: String,
    /// Request method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Headers as received, names lower-case; repeated headers joined with ", ".
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP version as received.
    pub version: String,
}

impl Backend {
    /// A backend that answers every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BackendBody>> + Send + 'static,
    {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler).await
    }

    /// Like [`Backend::start`], on a chosen address (another loopback
    /// address, a fixed port).
    pub async fn start_on<F, Fut>(addr: SocketAddr, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BackendBody>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = Arc::clone(&hits);
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let counter = Arc::clone(&counter);
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                open.lock().expect("connections").push(conn.abort_handle());
            }
        });
        Self {
            addr,
            hits,
            task,
            connections,
        }
    }

    /// An echo backend (see [`Backend::echo`]) on a chosen address.
    pub async fn echo_on(name: &str, addr: SocketAddr) -> Self {
        let name = name.to_owned();
        Self::start_on(addr, move |req| {
            let name = name.clone();
            async move { echo_response(&name, req).await }
        })
        .await
    }

    /// A backend that answers with a JSON description of the request it got,
    /// plus hop-by-hop response headers that the proxy must strip.
    pub async fn echo(name: &str) -> Self {
        let name = name.to_owned();
        Self::start(move |req| {
            let name = name.clone();
            async move { echo_response(&name, req).await }
        })
        .await
    }

    /// `http://127.0.0.1:PORT`, for a config's `targets`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests reached this backend.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// How many connections this backend has accepted.
    pub fn accepted(&self) -> usize {
        self.connections.lock().expect("connections").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
        for conn in self.connections.lock().expect("connections").drain(..) {
            conn.abort();
        }
    }
}

/// Wraps a finished body for a backend response.
pub fn full(body: impl Into<Bytes>) -> BackendBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

async fn echo_response(name: &str, req: Request<Incoming>) -> Response<BackendBody> {
    let mut headers = serde_json::Map::new();
    for key in req.headers().keys() {
        let values: Vec<String> = req
            .headers()
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(key.as_str().to_owned(), json!(values.join(", ")));
    }
    let body = json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("connection", "x-backend-hop")
        .header("x-backend-hop", "must not reach the client")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic realm=\"backend\"")
        .header("x-backend", name)
        .body(full(body.to_string()))
        .expect("echo response")
}

impl Echo {
    /// Parses an echo backend's JSON answer.
    pub fn parse(body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not an echo body ({e}): {}", String::from_utf8_lossy(body)));
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let headers = v["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            backend: s("backend"),
            method: s("method"),
            path: s("path"),
            version: s("version"),
            headers,
        }
    }

    /// A header as the backend received it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}
