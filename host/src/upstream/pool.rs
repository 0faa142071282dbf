//! Keep-alive connections to an upstream's endpoints.

use std::error::Error as StdError;
use std::io;

use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::BoxBody;
use crate::config::{PoolConfig, UpstreamTimeouts};

/// A pool of keep-alive HTTP/1.1 connections, keyed by endpoint.
///
/// hyper-util's pooled client does the bookkeeping (idle timeout, idle
/// connections per host, retrying a request whose pooled connection turned
/// out to be closed before anything was sent).
#[derive(Debug, Clone)]
pub struct Pool {
    client: Client<HttpConnector, BoxBody>,
}

/// Why a request to an upstream failed before its response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The endpoint refused the TCP connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// The TCP connection did not open within the connect timeout.
    #[error("connection timed out")]
    ConnectionTimeout,
    /// Any other failure to connect (unreachable network, DNS, …).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The client's request body went past `server.limits.max_body`.
    #[error("request body too large")]
    RequestBodyTooLarge,
    /// The request body from the client failed while it was being sent.
    #[error("request body failed: {0}")]
    RequestBody(String),
    /// The connection broke or the upstream answered something that is not
    /// HTTP.
    #[error("upstream connection failed: {0}")]
    Protocol(String),
}

impl PoolError {
    /// Classifies a failure to open a TCP connection to an endpoint.
    pub fn connect(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::ConnectionRefused,
            io::ErrorKind::TimedOut => Self::ConnectionTimeout,
            _ => Self::Connect(err.to_string()),
        }
    }
}

impl Pool {
    /// A pool configured from an upstream's `pool` and `timeouts`.
    pub fn new(pool: &PoolConfig, timeouts: &UpstreamTimeouts) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect.get()));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool.idle_timeout.get())
            .pool_max_idle_per_host(pool.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self { client }
    }

    /// Sends `req` (whose URI names the endpoint) and waits for the response head.
    pub async fn send(&self, req: http::Request<BoxBody>) -> Result<http::Response<Incoming>, PoolError> {
        self.client.request(req).await.map_err(classify)
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> PoolError {
    if err.is_connect() {
        let io = causes(&err).find_map(|e| e.downcast_ref::<io::Error>());
        return match io.map(PoolError::connect) {
            Some(e @ (PoolError::ConnectionRefused | PoolError::ConnectionTimeout)) => e,
            // The whole chain says more than the innermost I/O error.
            _ => PoolError::Connect(chain(&err)),
        };
    }
    if causes(&err).any(|e| e.is::<http_body_util::LengthLimitError>()) {
        return PoolError::RequestBodyTooLarge;
    }
    let body_failed = causes(&err)
        .filter_map(|e| e.downcast_ref::<hyper::Error>())
        .any(|h| h.is_user() || h.is_body_write_aborted());
    if body_failed {
        return PoolError::RequestBody(chain(&err));
    }
    PoolError::Protocol(chain(&err))
}

/// `err` and its causes, outermost first.
fn causes<'a>(err: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

/// The error and its causes on one line, for logs.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    for e in causes(err) {
        let s = e.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
    }
    out
}
