//! The request path: route, then forward to an endpoint, then answer.
//!
//! ```text
//! client ─► route ─► check limits ─► pick endpoint ─► forward ─► response ─► client
//!              └──────────── any failure: ProxyError → built-in response ─┘
//! ```

mod error;
mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{BoxBody, boxed};
use crate::config::{Config, Size};
use crate::router::{Router, request_host};
use crate::upstream::{PoolError, Upstream};

pub use error::{ErrorKind, ProxyError};

/// A configuration made runnable: the routing table and the upstreams with
/// their pools. One is shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    router: Router<Route>,
    max_body: Size,
}

/// What a matched request needs, resolved once when the config is loaded so
/// that no request looks anything up by name.
#[derive(Debug)]
struct Route {
    name: Arc<str>,
    upstream: Arc<Upstream>,
}

/// The connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// The peer's address.
    pub peer: SocketAddr,
    /// `"http"` or `"https"`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

/// What the access log says about where a request went.
#[derive(Debug, Default)]
struct Trace {
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    endpoint: Option<Arc<str>>,
}

impl Proxy {
    /// Builds the routing table and one upstream (with its pool) per
    /// `[upstreams.NAME]` table of a validated config.
    pub fn new(config: &Config) -> Self {
        let upstreams: std::collections::BTreeMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.as_str(), Arc::new(Upstream::new(name, u))))
            .collect();
        let router = Router::new(config, |i, route| Route {
            name: config.route_name(i).into(),
            // Validation guarantees the name exists; a missing one would be
            // a bug in `Config::validate`, so fail loudly at load time.
            upstream: Arc::clone(upstreams.get(route.upstream.as_str()).unwrap_or_else(|| {
                panic!(
                    "validated config names unknown upstream {:?}",
                    route.upstream
                )
            })),
        });
        Self {
            router,
            max_body: config.server.limits.max_body,
        }
    }

    /// Serves one request to completion of its response head, and logs it.
    pub async fn handle(&self, req: Request<Incoming>, client: Client) -> Response<BoxBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let version = req.version();
        let mut trace = Trace::default();
        let resp = match self.forward(req, client, &mut trace).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::warn!(
                    route = trace.route.as_deref().unwrap_or("-"),
                    error = %err,
                    kind = err.kind().as_str(),
                    "request failed"
                );
                err.to_response()
            }
        };
        tracing::info!(
            target: "plumeway::access",
            client = %client.peer.ip(),
            %method,
            path,
            version = ?version,
            status = resp.status().as_u16(),
            route = trace.route.as_deref().unwrap_or("-"),
            upstream = trace.upstream.as_deref().unwrap_or("-"),
            endpoint = trace.endpoint.as_deref().unwrap_or("-"),
            duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: Client,
        trace: &mut Trace,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let route = self.router.route(&req).ok_or(ProxyError::NoRoute)?;
        trace.route = Some(Arc::clone(&route.name));
        let upstream = &route.upstream;
        trace.upstream = Some(Arc::clone(upstream.name()));

        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body.get()) {
            return Err(ProxyError::BodyTooLarge {
                limit: self.max_body,
            });
        }

        let endpoint = upstream
            .pick()
            .ok_or_else(|| ProxyError::NoHealthyEndpoint {
                upstream: Arc::clone(upstream.name()),
            })?;
        trace.endpoint = Some(Arc::clone(endpoint.label()));

        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        let host = request_host(&parts.uri, &parts.headers).map(str::to_owned);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::set_forwarded(
            &mut parts.headers,
            client.peer.ip(),
            client.proto,
            host.as_deref(),
        );
        headers::append_via(&mut parts.headers, client_version);
        // The upstream sees the Host the client asked for (HTTP/2 clients send
        // it as :authority, which HTTP/1.1 has no place for but Host).
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            parts.headers.insert(header::HOST, h);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme(endpoint.url.scheme.clone())
            .authority(endpoint.url.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::UpstreamFailed {
                upstream: Arc::clone(upstream.name()),
                endpoint: Arc::clone(endpoint.label()),
                reason: e.to_string(),
            })?;
        parts.version = Version::HTTP_11;
        let body = boxed(Limited::new(body, self.max_body.as_usize()));
        let upstream_req = Request::from_parts(parts, body);

        let timeout = upstream.timeouts().response_header;
        let sent = tokio::time::timeout(timeout.get(), upstream.pool().send(upstream_req)).await;
        let names = || (Arc::clone(upstream.name()), Arc::clone(endpoint.label()));
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Err(_elapsed) => {
                let (upstream, endpoint) = names();
                return Err(ProxyError::ResponseTimeout {
                    upstream,
                    endpoint,
                    timeout,
                });
            }
            Ok(Err(err)) => {
                let (upstream, endpoint) = names();
                return Err(match err {
                    PoolError::ConnectionRefused => {
                        ProxyError::ConnectionRefused { upstream, endpoint }
                    }
                    PoolError::ConnectionTimeout => {
                        ProxyError::ConnectionTimeout { upstream, endpoint }
                    }
                    PoolError::RequestBodyTooLarge => ProxyError::BodyTooLarge {
                        limit: self.max_body,
                    },
                    PoolError::RequestBody(reason) => ProxyError::ClientBody { reason },
                    PoolError::Connect(reason) | PoolError::Protocol(reason) => {
                        ProxyError::UpstreamFailed {
                            upstream,
                            endpoint,
                            reason,
                        }
                    }
                });
            }
        };

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop_response(&mut parts.headers);
        headers::append_via(&mut parts.headers, parts.version);
        parts.version = client_version;
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ))
    }
}
