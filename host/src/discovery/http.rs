//! The small JSON-over-HTTP client that the etcd and Consul back ends
//! share: one pooled hyper client, a deadline per call, errors that name
//! the server and what it said.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::TargetUrl;

/// An answer read whole.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// A pooled client for one back end's API.
#[derive(Clone)]
pub(super) struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Client {
    /// A client that sends `headers` (an API token, say) on every call.
    pub(super) fn new(headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        // A watch can stay quiet for minutes: TCP keep-alive notices a
        // server that vanished without closing the connection.
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { inner, headers }
    }

    /// Sends a request and returns the response head with its body still
    /// streaming (etcd's watch), or an error naming the server.
    pub(super) async fn open(
        &self,
        method: Method,
        server: &TargetUrl,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, String> {
        let uri = format!("{server}{path_and_query}");
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{method} {uri}: {e}"))?;
        match tokio::time::timeout(timeout, self.inner.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(format!("{method} {uri}: {}", crate::upstream::chain(&e))),
            Err(_) => Err(format!("{method} {uri}: no answer within {timeout:?}")),
        }
    }

    /// Sends a request and reads the whole answer within `timeout`.
    pub(super) async fn call(
        &self,
        method: Method,
        server: &TargetUrl,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let response = self.open(method.clone(), server, path_and_query, body, timeout).await?;
        let (head, body) = response.into_parts();
        let body = match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) => return Err(format!("{method} {server}{path_and_query}: {e}")),
            Err(_) => {
                return Err(format!(
                    "{method} {server}{path_and_query}: no answer within {timeout:?}"
                ));
            }
        };
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// [`Client::call`] that expects a 2xx JSON answer and decodes it.
    pub(super) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        server: &TargetUrl,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(T, HeaderMap), String> {
        let reply = self.call(method.clone(), server, path_and_query, body, timeout).await?;
        let reply = reply.success(&method, server, path_and_query)?;
        let value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("{method} {server}{path_and_query}: unexpected answer: {e}"))?;
        Ok((value, reply.headers))
    }
}

impl Reply {
    /// The reply if its status is 2xx, else an error with the status and
    /// the start of the body (where APIs put their reason).
    pub(super) fn success(self, method: &Method, server: &TargetUrl, path_and_query: &str) -> Result<Self, String> {
        if self.status.is_success() {
            return Ok(self);
        }
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            .trim()
            .to_owned();
        Err(format!("{method} {server}{path_and_query}: {}: {text}", self.status))
    }
}
