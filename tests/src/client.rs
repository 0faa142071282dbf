//! A plain HTTP client for tests: HTTP/1.1 with keep-alive, or HTTP/2 with
//! prior knowledge.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client as Legacy, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The body type the test client sends.
pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A pooled HTTP/1.1 client aimed at one address.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    inner: Legacy<HttpConnector, ClientBody>,
}

/// A whole response, body read to the end.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Client {
    /// A client for the proxy (or backend) at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let inner = Legacy::builder(TokioExecutor::new()).build_http();
        Self { addr, inner }
    }

    /// The address it sends to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A request builder for `path` on this client's address.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path).body(empty()).expect("request"))
            .await
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<ClientBody>) -> Reply {
        let resp = crate::within("response head", self.inner.request(req))
            .await
            .expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = crate::within("response body", body.collect())
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends `req` and returns the response with its body unread.
    pub async fn send_streaming(&self, req: Request<ClientBody>) -> http::Response<hyper::body::Incoming> {
        crate::within("response head", self.inner.request(req))
            .await
            .expect("request failed")
    }

    /// Sends one request over a fresh HTTP/2 prior-knowledge connection.
    pub async fn get_h2(&self, path: &str, host: &str) -> Reply {
        let stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("http://{host}{path}"))
            .version(http::Version::HTTP_2)
            .body(empty())
            .expect("request");
        let resp = crate::within("h2 response", sender.send_request(req))
            .await
            .expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// An empty request body.
pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A complete request body.
pub fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as an echo backend's answer.
    pub fn echo(&self) -> crate::Echo {
        assert_eq!(self.status, StatusCode::OK, "expected an echo, got: {}", self.text());
        crate::Echo::parse(&self.body)
    }
}
