//! The request path: route, plugins, upstream, plugins, answer.
//!
//! ```text
//! client ─► route ─► rewrite ─► request filters ─► pick endpoint ─► forward
//!                                   │ (may answer early)                │
//! client ◄──────────────── response filters ◄──────────────────────────┘
//!           on failure: the route's error plugin, else a built-in response
//! ```

mod access;
mod error;
mod grpc;
mod headers;
pub(crate) use headers::{append_via, hop as via_hop, is_hop_by_hop_response};
mod limit;
pub mod path;
mod request_id;
mod validate;
mod websocket;

/// Shared with the upstream pool's HTTP/1.1 client, which refuses
/// ambiguous responses and reads `Connection`.
pub(crate) use headers::{has_token_in, merge_added};
pub(crate) use request_id::HEADER as REQUEST_ID;
pub(crate) use validate::{framing, framing_of};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderName, HeaderValue, Request, Response, Version, header, request};
use http_body_util::{BodyExt, Full, Limited};

use crate::body::{BoxBody, RequestBody, boxed};
use std::collections::BTreeMap;

use crate::config::{Balancer, Config, ConfigError, OnFailure, Size, UpstreamConfig};
use crate::metrics::Metrics;
use crate::plugin::{
    CallInfo, EndpointView, ErrorInfo, Failure, Hook, PickInput, Plugin, Plugins, RequestOutcome, ResponseOutcome,
};
use crate::router::Router;
use crate::upstream::h1::RawFields;
use crate::upstream::{EndpointSet, Pick, PoolError, Upstream};

pub use access::AccessLog;
pub use error::{ErrorKind, ProxyError};

/// A response body as the client gets it: counted, and reported to the
/// access log and metrics when it ends. Not boxed again: the body inside
/// already is.
pub(crate) type Served = crate::body::Metered<BoxBody, access::Finished>;

/// A configuration made runnable: the routing table, the upstreams with
/// their pools, and the loaded plugins. One is shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    router: Router<Route>,
    max_body: Size,
    plugins: Plugins,
    /// Every upstream by name, with the config it was built from (so that
    /// a reload can tell which ones it may keep as they are).
    upstreams: BTreeMap<String, (UpstreamConfig, Arc<Upstream>)>,
    /// Open WebSockets each hold a receiver: sending `true` asks them to
    /// close, and the channel closes when the last one is gone. Shared by
    /// every config a reload brings, so that shutdown reaches them all.
    websockets: Arc<tokio::sync::watch::Sender<bool>>,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    config: Arc<Config>,
}

/// What a matched request needs, resolved once when the config is loaded so
/// that no request looks anything up by name.
#[derive(Debug)]
struct Route {
    name: Arc<str>,
    upstream: Arc<Upstream>,
    rewrite: Option<Arc<Plugin>>,
    request: Vec<Arc<Plugin>>,
    response: Vec<Arc<Plugin>>,
    on_error: Option<Arc<Plugin>>,
    websocket: bool,
    /// `plumeway_request_duration_seconds{route}`, resolved once.
    duration: crate::metrics::ShardedHistogram,
    /// Request headers removed before forwarding.
    strip_headers: Vec<http::HeaderName>,
    limiter: Option<limit::Limiter>,
}

/// The connection a request arrived on.
#[derive(Clone, Debug)]
pub struct Client {
    /// The peer's address.
    pub peer: SocketAddr,
    /// `"http"` or `"https"`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The peer's IP as text, made once per connection: every request on
    /// it shares this in its forwarding headers and plugin calls.
    pub ip: Arc<str>,
    /// The same, as a header value.
    pub ip_header: HeaderValue,
    /// Where the connection keeps the deadline of the request in flight,
    /// on the server's own HTTP/1.1 path (see [`crate::deadline`]).
    pub deadline: Option<Arc<crate::deadline::Slot>>,
    /// The server's own HTTP/1.1 writer answers this connection. It
    /// writes `X-Request-Id` into each response head itself, from the
    /// response's access record, so the proxy leaves it out of the
    /// response's map (an insert saved per request); and it writes a
    /// backend's fields handed to it raw (see [`RawFields`]), so no map is
    /// made of them unless a response filter reads them.
    pub own_http1: bool,
    /// The connection's last `Forwarded` element and the host it names:
    /// the connection's requests nearly always ask for one host, and the
    /// element is then made and checked once, not per request.
    forwarded: Arc<headers::LastForwarded>,
}

impl Client {
    /// The connection from `peer`, over `proto` (`"http"` or `"https"`).
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        let ip: Arc<str> = peer.ip().to_string().into();
        Self {
            peer,
            proto,
            // An IP address in text is always a valid header value.
            ip_header: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            ip,
            deadline: None,
            own_http1: false,
            forwarded: Arc::default(),
        }
    }
}

/// One request's state as it moves through the pipeline.
#[derive(Debug)]
struct Exchange<'a> {
    /// Borrowed from the connection, which outlives its requests: nothing
    /// of it is cloned per request.
    client: &'a Client,
    /// The request id, route, upstream and endpoint, as plugins see them
    /// (lent to each call, not copied). The client's IP as text is there
    /// only when the route has plugins.
    facts: CallInfo,
    /// The request's id, as the upstream request and the response carry it
    /// (`facts` has a copy as text only when the route has plugins).
    request_id: HeaderValue,
    attempts: u32,
    /// Time spent waiting for upstream response heads, over all attempts.
    upstream_time: std::time::Duration,
    /// The matched route's latency histogram.
    route_duration: Option<crate::metrics::ShardedHistogram>,
    /// A gRPC call: failures are answered the way gRPC clients read them.
    grpc: bool,
    /// What each request filter left for its own `on_response`.
    stashes: Vec<(Arc<str>, Vec<u8>)>,
    /// The client's `Host`, kept for the response filters when the
    /// request's headers went upstream (see [`Keep::Target`]).
    host: Option<HeaderValue>,
}

/// What [`Proxy::admit`] made of a request.
enum Admission<'a> {
    /// Its route runs.
    Route(&'a Route, request::Parts, RequestBody),
    /// It is answered with the error (by the route's error handler, once
    /// there is a route), and the request's head when the handler may see
    /// it.
    Refused(Option<&'a Route>, Option<request::Parts>, ProxyError),
}

/// A request body: still streaming from the client, or read whole because
/// a plugin asked for it (or replaced it).
enum ReqBody {
    Streaming(RequestBody),
    Whole(Bytes),
}

impl Proxy {
    /// Loads the plugins and builds the routing table and one upstream (with
    /// its pool) per `[upstreams.NAME]` of a validated config. A plugin that
    /// fails to load, or that lacks a hook it is used for, is an error that
    /// points at the config line.
    pub async fn build(config: &Config) -> Result<Self, ConfigError> {
        Self::load(config, &Arc::new(Metrics::new()), None).await
    }

    /// [`Proxy::build`], counting into `metrics`, and on a reload taking
    /// over from `previous`: an upstream whose config did not change is
    /// kept as it is (pool, health, discovery running on); a changed one
    /// keeps the live state of the endpoints that stay. Nothing of
    /// `previous` is changed, so a config that fails here leaves it serving.
    pub async fn load(config: &Config, metrics: &Arc<Metrics>, previous: Option<&Proxy>) -> Result<Self, ConfigError> {
        let plugins = Plugins::load(config, metrics).await.map_err(|i| config.locate(i))?;
        let mut upstreams = BTreeMap::new();
        for (name, u) in &config.upstreams {
            let before = previous.and_then(|p| p.upstreams.get(name));
            // A balancer plugin is reloaded with the config, so an upstream
            // that uses one is always rebuilt around the new instance.
            if let Some((old_config, old)) = before
                && old_config == u
                && !matches!(u.balancer, Balancer::Plugin(_))
            {
                upstreams.insert(name.clone(), (u.clone(), Arc::clone(old)));
                continue;
            }
            let balancer = match &u.balancer {
                Balancer::Plugin(p) => Some(
                    plugins
                        .get(p, Hook::Balancer, &format!("upstreams.{name}.balancer.plugin"))
                        .map_err(|i| config.locate(i))?,
                ),
                _ => None,
            };
            // TLS settings are built when https:// targets may come: listed,
            // or from discovery, or asked for with a `tls` table.
            let may_use_tls = u.discovery.is_some()
                || u.tls != crate::config::UpstreamTls::default()
                || u.targets.iter().any(|t| t.url.scheme == http::uri::Scheme::HTTPS);
            let tls = if may_use_tls {
                let client = crate::tls::client_config(&u.tls, u.protocol, &config.base_dir(), name)
                    .map_err(|i| config.locate(i))?;
                Some(crate::upstream::UpstreamTls {
                    connector: tokio_rustls::TlsConnector::from(client),
                    sni: u.tls.sni.clone(),
                })
            } else {
                None
            };
            let upstream = Arc::new(Upstream::new(
                name,
                u,
                balancer,
                metrics,
                tls,
                before.map(|(_, old)| &**old),
            ));
            if let Some(discovery) = &u.discovery {
                crate::discovery::start(&upstream, discovery, &config.base_dir())
                    .await
                    .map_err(|e| {
                        config.locate(crate::config::Invalid::new(
                            format!("upstreams.{name}.discovery"),
                            e.to_string(),
                        ))
                    })?;
            }
            upstream.start_health_checks();
            upstreams.insert(name.clone(), (u.clone(), upstream));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            // Each plugin a route names, checked to export the hook it is
            // used for; errors point at the key that names it.
            let resolve = |hook: Hook, key: &str, names: &[String]| -> Result<Vec<Arc<Plugin>>, ConfigError> {
                let indexed = matches!(hook, Hook::RequestFilter | Hook::ResponseFilter);
                names
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let key = if indexed {
                            format!("routes[{i}].{key}[{j}]")
                        } else {
                            format!("routes[{i}].{key}")
                        };
                        plugins.get(p, hook, &key).map_err(|e| config.locate(e))
                    })
                    .collect()
            };
            let rewrite = resolve(Hook::Rewrite, "rewrite", r.rewrite.as_slice())?.pop();
            let request = resolve(Hook::RequestFilter, "request", &r.request)?;
            let response = resolve(Hook::ResponseFilter, "response", &r.response)?;
            let on_error = resolve(Hook::ErrorHandler, "on_error", r.on_error.as_slice())?.pop();
            let upstream = upstreams.get(&r.upstream).map(|(_, u)| Arc::clone(u)).ok_or_else(|| {
                config.locate(crate::config::Invalid::new(
                    format!("routes[{i}].upstream"),
                    "unknown upstream",
                ))
            })?;
            let name: Arc<str> = config.route_name(i).into();
            let duration = metrics
                .request_duration
                .get_or_create_owned(&crate::metrics::RouteLabels { route: (&name).into() });
            let strip_headers = r
                .strip_headers
                .iter()
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect();
            routes.push(Some(Route {
                name,
                duration,
                strip_headers,
                limiter: r.rate_limit.as_ref().map(limit::Limiter::new),
                upstream,
                rewrite,
                request,
                response,
                on_error,
                websocket: r.websocket,
            }));
        }
        let router = Router::new(config, |i, _| {
            routes[i]
                .take()
                .unwrap_or_else(|| unreachable!("each route is built once"))
        });
        let access_log = match previous {
            Some(p) if p.config.access_log == config.access_log => Arc::clone(&p.access_log),
            _ => Arc::new(AccessLog::open(&config.access_log, &config.base_dir()).map_err(|e| config.locate(e))?),
        };
        Ok(Self {
            router,
            max_body: config.server.limits.max_body,
            plugins,
            upstreams,
            websockets: previous.map_or_else(
                || Arc::new(tokio::sync::watch::Sender::new(false)),
                |p| Arc::clone(&p.websockets),
            ),
            metrics: Arc::clone(metrics),
            access_log,
            config: Arc::new(config.clone()),
        })
    }

    /// The upstreams, by name.
    pub fn upstreams(&self) -> impl Iterator<Item = (&str, &UpstreamConfig, &Arc<Upstream>)> {
        self.upstreams.iter().map(|(n, (c, u))| (n.as_str(), c, u))
    }

    /// The config this proxy was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// Asks every open WebSocket to close (a close frame to both sides) and
    /// waits until all are gone.
    pub async fn close_websockets(&self) {
        let open = self.websockets.receiver_count();
        if open > 0 {
            tracing::info!(websockets = open, "closing open WebSockets");
        }
        self.websockets.send_replace(true);
        self.websockets.closed().await;
    }

    /// Serves one request to completion of its response head; the access
    /// log line and the request's metrics follow when its body is over.
    /// An upstream response's fields passed on raw go to `raw` (only for a
    /// client with [`Client::own_http1`]): the response's map then lacks
    /// them.
    pub(crate) async fn handle(
        &self,
        req: Request<RequestBody>,
        client: &Client,
        raw: &mut Option<RawFields>,
    ) -> Response<Served> {
        let start = Instant::now();
        let counted = access::InFlight::new(&self.metrics);
        // What only the access log needs is taken only when it is on.
        let logged = self.config.access_log.enabled.then(|| {
            let agent = self.access_log_wants_agent();
            let header = |name: HeaderName| agent.then(|| req.headers().get(name).cloned()).flatten();
            Box::new(access::Logged {
                wall: std::time::SystemTime::now(),
                path: req.uri().path_and_query().map_or("/", PathAndQuery::as_str).into(),
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
            })
        });
        let method = req.method().clone();
        let version = req.version();
        let peer = client.peer.ip();
        let mut ex = Exchange {
            client,
            facts: CallInfo::default(),
            request_id: request_id::request_id(req.headers()),
            attempts: 0,
            upstream_time: std::time::Duration::ZERO,
            route_duration: None,
            grpc: grpc::is_grpc(req.headers()),
            stashes: Vec::new(),
            host: None,
        };
        // The route's pipeline, or the error response for what failed on
        // the way. Awaited here, not in a function of its own: each async
        // level is one more state to load on every poll, and one more copy
        // of the request.
        let mut resp = match self.admit(req, &mut ex) {
            Admission::Route(route, mut parts, body) => match self.run(route, &mut parts, body, &mut ex).await {
                Ok((resp, fields)) => {
                    *raw = fields;
                    resp
                }
                Err(err) => self.failed(Some(route), Some(&mut parts), err, &mut ex).await,
            },
            Admission::Refused(route, mut parts, err) => self.failed(route, parts.as_mut(), err, &mut ex).await,
        };
        *resp.version_mut() = version;
        if !ex.client.own_http1 {
            resp.headers_mut().insert(request_id::HEADER, ex.request_id.clone());
        }
        let finished = access::Finished {
            metrics: Arc::clone(&self.metrics),
            route_duration: ex.route_duration.take(),
            log: Arc::clone(&self.access_log),
            entry: access::Entry {
                start,
                client: peer,
                method,
                version,
                status: resp.status().as_u16(),
                route: ex.facts.route,
                upstream: ex.facts.upstream,
                endpoint: ex.facts.endpoint,
                attempts: ex.attempts,
                upstream_time: ex.upstream_time,
                request_id: ex.request_id,
                logged,
            },
            _counted: counted,
        };
        resp.map(|body| crate::body::Metered::new(body, finished))
    }

    /// Whether the access log shows the client's User-Agent and Referer.
    fn access_log_wants_agent(&self) -> bool {
        self.config.access_log.enabled && self.config.access_log.format != crate::config::AccessLogFormat::Text
    }

    /// The checks before a request's route runs: its head, its route and
    /// the route's rate limit. Not async, so that the request is taken
    /// apart where it already lies instead of in a future of its own.
    fn admit(&self, mut req: Request<RequestBody>, ex: &mut Exchange<'_>) -> Admission<'_> {
        // The server's own HTTP/1.1 reader leaves every head with a framing
        // of its own to hyper: one it read has one plain length or none,
        // and exactly one Host.
        let framed = matches!(req.body(), RequestBody::Read(_) | RequestBody::Empty);
        if let Err(err) = check_head(&mut req, &self.config.server, framed) {
            return Admission::Refused(None, None, err);
        }
        let Some(route) = self.router.route(&req) else {
            return Admission::Refused(None, None, ProxyError::NoRoute);
        };
        ex.facts.route = Some(Arc::clone(&route.name));
        ex.route_duration = Some(route.duration.clone());
        // Before anything can fail on the route: its error plugin sees
        // these too.
        if route.has_plugins() {
            ex.facts.client_ip = Some(Arc::clone(&ex.client.ip));
            ex.facts.request_id = request_id::text(&ex.request_id).into();
        }
        if let Some(limiter) = &route.limiter
            && let Err(retry_after) = limiter.check(ex.client.peer.ip(), req.headers())
        {
            let (parts, _body) = req.into_parts();
            let err = ProxyError::RateLimited {
                route: Arc::clone(&route.name),
                retry_after,
            };
            return Admission::Refused(Some(route), Some(parts), err);
        }
        let (parts, body) = req.into_parts();
        Admission::Route(route, parts, body)
    }

    /// The route's pipeline; any error goes to the route's error handler.
    /// An upstream response's fields may come beside it, raw (see
    /// [`Client::own_http1`]).
    async fn run(
        &self,
        route: &Route,
        parts: &mut request::Parts,
        body: RequestBody,
        ex: &mut Exchange<'_>,
    ) -> Result<(Response<BoxBody>, Option<RawFields>), ProxyError> {
        // The declared length, as the body's reader took it from the head
        // (no header lookup).
        let declared = http_body::Body::size_hint(&body).exact();
        if declared.is_some_and(|n| n > self.max_body.get()) {
            return Err(ProxyError::BodyTooLarge { limit: self.max_body });
        }
        let mut body = ReqBody::Streaming(body);
        // A WebSocket handshake on a WebSocket route must be valid before any
        // plugin or upstream sees it.
        let upgrade = if route.websocket && websocket::is_upgrade(&parts.headers) {
            let key = websocket::validate(&parts.method, &parts.headers)
                .map_err(|e| ProxyError::BadRequest { reason: e.to_string() })?;
            Some(key)
        } else {
            None
        };

        // Plugins may change the path; what they leave is checked and
        // normalised again before it goes anywhere.
        let original = parts.uri.path_and_query().cloned();
        if let Some(plugin) = &route.rewrite
            && let Some(path) = {
                let rewritten = plugin.rewrite(parts, &mut ex.facts);
                guarded(plugin, ex, rewritten)?.flatten()
            }
        {
            set_path(&mut parts.uri, path)?;
        }

        let mut local = None;
        for plugin in &route.request {
            if plugin.needs().request_body {
                body = self.read_whole(body).await?;
            }
            let outcome = loop {
                let outcome = plugin.on_request(parts, body.whole(), &mut ex.facts);
                let outcome = guarded(plugin, ex, outcome)?;
                match outcome {
                    Some(RequestOutcome::BufferBody) if body.whole().is_none() => body = self.read_whole(body).await?,
                    other => break other,
                }
            };
            match outcome {
                None | Some(RequestOutcome::BufferBody) => {}
                Some(RequestOutcome::Continue { body: new_body, stash }) => {
                    if let Some(b) = new_body {
                        body = ReqBody::Whole(b);
                    }
                    if let Some(s) = stash {
                        ex.stashes.push((Arc::clone(plugin.name()), s));
                    }
                }
                Some(RequestOutcome::Respond(resp)) => {
                    local = Some(resp);
                    break;
                }
            }
        }

        if parts.uri.path_and_query() != original.as_ref() {
            let policy = &self.config.server.paths;
            let normal = path::normalize_rewritten(parts.uri.path(), policy)
                .map_err(|e| ProxyError::BadRequest { reason: e.to_string() })?;
            if let std::borrow::Cow::Owned(normal) = normal {
                let normal = with_query(&normal, parts.uri.query())?;
                set_path(&mut parts.uri, normal)?;
            }
        }

        let (resp, mut fields) = match (local, upgrade) {
            (Some(resp), _) => (resp, None),
            (None, Some(key)) => (self.upgrade(route, parts, &key, ex).await?, None),
            (None, None) => self.forward(route, parts, body, ex).await?,
        };
        // Without filters the response is handed on as it is: the fields
        // then need not be kept across an await.
        if route.response.is_empty() {
            return Ok((resp, fields));
        }
        let resp = self.filter_response(route, parts, resp, &mut fields, ex).await?;
        Ok((resp, fields))
    }

    /// Runs the route's response filters, in order. The backend's fields
    /// may be beside the response, raw (`fields`): the filters edit them
    /// there, as the plugin host's `Fields` tells.
    async fn filter_response(
        &self,
        route: &Route,
        request: &mut request::Parts,
        resp: Response<BoxBody>,
        fields: &mut Option<RawFields>,
        ex: &mut Exchange<'_>,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        let mut body = RespBody::Streaming(body);
        // The request's `Host`, for the filters' `authority`: set aside when
        // the request's headers went upstream, else still among them.
        let mut host = ex.host.take().or_else(|| request.headers.get(header::HOST).cloned());
        for plugin in &route.response {
            let stash = stash_for(&ex.stashes, plugin.name());
            if plugin.needs().response_body {
                body = body.read_whole(plugin).await?;
            }
            // A plugin may ask for the whole body once; asking again is
            // invalid output (see `Plugin::on_response`).
            let outcome = loop {
                let outcome = plugin.on_response(
                    request,
                    &mut host,
                    &mut parts,
                    fields,
                    body.whole(),
                    stash,
                    &mut ex.facts,
                );
                let outcome = guarded(plugin, ex, outcome)?;
                match outcome {
                    Some(ResponseOutcome::BufferBody) if body.whole().is_none() => {
                        body = body.read_whole(plugin).await?;
                    }
                    other => break other,
                }
            };
            match outcome {
                None | Some(ResponseOutcome::BufferBody) => {}
                Some(ResponseOutcome::Continue { status, body: new_body }) => {
                    if let Some(s) = status {
                        parts.status = s;
                    }
                    if let Some(b) = new_body {
                        // The new body's length is known to hyper (it is a
                        // whole buffer); a stale length must not survive.
                        parts.headers.remove(header::CONTENT_LENGTH);
                        if let Some(raw) = fields.as_mut() {
                            raw.forget_length();
                        }
                        body = RespBody::Whole(b);
                    }
                }
                Some(ResponseOutcome::Replace(resp)) => {
                    let (p, b) = resp.into_parts();
                    parts = p;
                    *fields = None;
                    body = RespBody::Streaming(b);
                }
            }
        }
        Ok(Response::from_parts(parts, body.into_body()))
    }

    /// Picks an endpoint and forwards the request to it, retrying on another
    /// endpoint when that is safe (see [`crate::config::RetryConfig`]), all
    /// within the upstream's `timeouts.request`. The response's fields may
    /// come beside it, raw (see [`Client::own_http1`]).
    async fn forward(
        &self,
        route: &Route,
        parts: &mut request::Parts,
        body: ReqBody,
        ex: &mut Exchange<'_>,
    ) -> Result<(Response<BoxBody>, Option<RawFields>), ProxyError> {
        let upstream = &route.upstream;
        ex.facts.upstream = Some(Arc::clone(upstream.name()));
        upstream.budget().deposit();
        // A gRPC client's own deadline (`grpc-timeout`) shortens ours; only
        // a gRPC call (by its content type) is looked at for one.
        const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
        let client_deadline = if ex.grpc {
            parts.headers.get(GRPC_TIMEOUT).and_then(grpc::timeout)
        } else {
            None
        };
        let total = match client_deadline {
            Some(grpc) if grpc < upstream.timeouts().request.get() => crate::config::Duration::from(grpc),
            _ => upstream.timeouts().request,
        };
        let deadline = tokio::time::Instant::now() + total.get();
        let safe_path = upstream.is_safe_path(parts.uri.path());
        let safe = crate::upstream::is_idempotent(&parts.method) || safe_path;
        // A request marked safe by path keeps its body so a retry can
        // resend it (an idempotent method's body is usually empty).
        let body = if upstream.attempts() > 1 && safe_path {
            self.read_whole(body).await?
        } else {
            body
        };
        // A body can be sent again only if we hold it whole, or it is empty.
        let replay = match &body {
            ReqBody::Whole(b) => Some(b.clone()),
            ReqBody::Streaming(b) if http_body::Body::is_end_stream(b) => Some(Bytes::new()),
            ReqBody::Streaming(_) => None,
        };
        // The client's headers stay for an error plugin; retries resend a
        // copy of the prepared head instead.
        let mut head = first_head(route, parts, ex);
        let added = self.prepare_head(route, &mut head, ex);
        let key = upstream.hash_key(&head.headers, &added, ex.client.peer.ip());
        // The response's fields need no map when only the server's own
        // writer, and response filters that edit them in place, use them.
        let raw = ex.client.own_http1 && !ex.grpc;
        let mut body = Some(body);
        // One snapshot of the endpoints for the whole request: indexes in
        // `tried` stay meaningful even if the set changes meanwhile.
        let set = upstream.current();
        // Inline for the usual few attempts: no allocation per request.
        let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        // The outcome of the attempt being retried: what the client gets if
        // no other endpoint is left to try.
        let mut previous = None;
        loop {
            let i = match self.pick(route, &set, parts, &tried, key.as_deref(), ex).await {
                Ok(i) => i,
                Err(err) => return previous.unwrap_or(Err(err)),
            };
            tried.push(i);
            let endpoint = &set.endpoints()[i];
            ex.facts.endpoint = Some(Arc::clone(endpoint.label()));
            ex.attempts += 1;
            if ex.attempts > 1 {
                upstream.record_retry();
            }
            // The last attempt needs no copy of the head: no attempts left,
            // a body that cannot be sent again, or no endpoint left to try.
            let last =
                tried.len() >= upstream.attempts() as usize || replay.is_none() || tried.len() >= set.endpoints().len();
            // `head` itself is not looked at again after the last attempt.
            let attempt_head = upstream_head(&mut head, if last { Keep::Nothing } else { Keep::All });
            let attempt_body = match (body.take(), &replay) {
                (Some(b), _) => b,
                (None, Some(bytes)) => ReqBody::Whole(bytes.clone()),
                (None, None) => unreachable!("a body that cannot be replayed is never retried"),
            };
            let sent_at = Instant::now();
            // One deadline per attempt: the response head must come within
            // `response_header`, and within what is left of the request's
            // own deadline.
            let header = upstream.timeouts().response_header;
            let (until, timeout) = match tokio::time::Instant::from_std(sent_at) + header.get() {
                by_header if by_header < deadline => (by_header, header),
                _ => (deadline, total),
            };
            let (out, out_body) = self.outbound(upstream, attempt_head, attempt_body);
            // The endpoint counts the attempt as in flight until the
            // response's body is over, or the attempt fails.
            let guard = endpoint.begin();
            endpoint.dispatched();
            // The pool's own future, awaited here: a function of our own
            // around it would be one more async level, with one more copy
            // of the head and of the response. Pinned where it is made: it
            // is kilobytes, and the timeout around it would otherwise be
            // built, then moved to be awaited, copying it each time.
            let send = std::pin::pin!(upstream.pool().send(endpoint.pool_target(), out, out_body, &added, raw));
            let sent = crate::deadline::timeout_at(ex.client.deadline.as_deref(), until, send).await;
            let took = sent_at.elapsed();
            upstream.record_latency(endpoint, took);
            ex.upstream_time += took;
            let (upstream_name, endpoint_name) = (Arc::clone(upstream.name()), Arc::clone(endpoint.label()));
            let outcome = match sent {
                Err(()) => {
                    upstream.record(endpoint, false);
                    return Err(ProxyError::ResponseTimeout {
                        upstream: upstream_name,
                        endpoint: endpoint_name,
                        timeout,
                    });
                }
                Ok(answer) => self.inbound(answer, upstream, endpoint, guard),
            };
            let retry_reason = match &outcome {
                Ok((resp, _)) => {
                    let status = resp.status();
                    upstream.record(endpoint, !status.is_server_error());
                    upstream
                        .retries_status(safe, status)
                        .then(|| format!("status {}", status.as_u16()))
                }
                Err(err) => {
                    upstream.record(endpoint, false);
                    Self::retryable(err, safe).then(|| err.to_string())
                }
            };
            match retry_reason {
                Some(reason) if !last && upstream.budget().try_retry() => {
                    tracing::info!(
                        route = ex.facts.route.as_deref().unwrap_or("-"),
                        request_id = request_id::text(&ex.request_id),
                        endpoint = &*endpoint_name,
                        attempt = tried.len(),
                        reason,
                        "retrying on another endpoint"
                    );
                    previous = Some(outcome);
                }
                _ => return outcome,
            }
        }
    }

    /// Carries a WebSocket handshake to an endpoint on a connection of its
    /// own. Only a 101 with the right `Sec-WebSocket-Accept` switches
    /// protocols (then bytes are spliced in a task of their own); any other
    /// answer is relayed as an ordinary response, and a wrong accept key is
    /// a 502. Bytes the client sent after its handshake wait in hyper's
    /// buffer until the splice starts, after the endpoint's 101.
    async fn upgrade(
        &self,
        route: &Route,
        parts: &mut request::Parts,
        key: &str,
        ex: &mut Exchange<'_>,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let upstream = &route.upstream;
        ex.facts.upstream = Some(Arc::clone(upstream.name()));
        let on_client =
            parts
                .extensions
                .remove::<hyper::upgrade::OnUpgrade>()
                .ok_or_else(|| ProxyError::BadRequest {
                    reason: "this connection cannot be upgraded".into(),
                })?;
        let set = upstream.current();
        let hash = upstream.hash_key(&parts.headers, &[], ex.client.peer.ip());
        let i = self.pick(route, &set, parts, &[], hash.as_deref(), ex).await?;
        let endpoint = &set.endpoints()[i];
        ex.facts.endpoint = Some(Arc::clone(endpoint.label()));
        ex.attempts += 1;
        let failed = |reason: String| ProxyError::UpstreamFailed {
            upstream: Arc::clone(upstream.name()),
            endpoint: Arc::clone(endpoint.label()),
            reason,
        };

        let mut head = first_head(route, parts, ex);
        let added = self.prepare_head(route, &mut head, ex);
        headers::merge_added(&mut head.headers, &added);
        websocket::mark_upgrade(&mut head.headers);
        head.uri = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
            .into();
        head.version = Version::HTTP_11;

        let connect = upstream.timeouts().connect;
        let stream = match tokio::time::timeout(
            connect.get(),
            tokio::net::TcpStream::connect(endpoint.url.authority.as_str()),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                upstream.record(endpoint, false);
                return Err(self.upstream_error(PoolError::connect(&e), upstream, endpoint));
            }
            Err(_elapsed) => {
                upstream.record(endpoint, false);
                return Err(self.upstream_error(PoolError::ConnectionTimeout, upstream, endpoint));
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let in_flight = endpoint.begin();
        let timeout = upstream.timeouts().response_header;
        let request = Request::from_parts(head, crate::body::full(Bytes::new()));
        let mut resp = match tokio::time::timeout(timeout.get(), sender.send_request(request)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                upstream.record(endpoint, false);
                return Err(failed(e.to_string()));
            }
            Err(_elapsed) => {
                upstream.record(endpoint, false);
                return Err(ProxyError::ResponseTimeout {
                    upstream: Arc::clone(upstream.name()),
                    endpoint: Arc::clone(endpoint.label()),
                    timeout,
                });
            }
        };

        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            upstream.record(endpoint, !resp.status().is_server_error());
            let (mut rparts, body) = resp.into_parts();
            headers::strip_hop_by_hop_response(&mut rparts.headers);
            headers::append_via(&mut rparts.headers, rparts.version);
            let body = crate::body::Guarded::new(body, in_flight);
            return Ok(Response::from_parts(rparts, boxed(body)));
        }
        let expected = websocket::accept_key(key);
        let accepted = resp
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .map(HeaderValue::as_bytes);
        if accepted != Some(expected.as_bytes()) || !websocket::is_upgrade(resp.headers()) {
            upstream.record(endpoint, false);
            return Err(failed("answered 101 without the right Sec-WebSocket-Accept".into()));
        }
        upstream.record(endpoint, true);
        let on_backend = hyper::upgrade::on(&mut resp);
        let (mut rparts, _empty) = resp.into_parts();
        headers::strip_hop_by_hop_response(&mut rparts.headers);
        websocket::mark_upgrade(&mut rparts.headers);
        headers::append_via(&mut rparts.headers, Version::HTTP_11);
        let splice = websocket::splice(
            on_client,
            on_backend,
            upstream.timeouts().idle.get(),
            in_flight,
            Arc::clone(endpoint.label()),
            self.websockets.subscribe(),
        );
        let open = self
            .metrics
            .connections
            .get_or_create_owned(&crate::metrics::ConnectionLabels { kind: "websocket" });
        open.inc();
        tokio::spawn(async move {
            splice.await;
            open.dec();
        });
        Ok(Response::from_parts(rparts, crate::body::full(Bytes::new())))
    }

    /// Picks an endpoint not tried yet: the balancer plugin's choice, else
    /// the built-in balancer's.
    async fn pick(
        &self,
        route: &Route,
        set: &EndpointSet,
        parts: &mut request::Parts,
        tried: &[usize],
        key: Option<&[u8]>,
        ex: &mut Exchange<'_>,
    ) -> Result<usize, ProxyError> {
        let upstream = &route.upstream;
        let pick = Pick { tried, key };
        let picked = match upstream.balancer_plugin() {
            None => set.pick(&pick),
            Some(plugin) => {
                let input = PickInput {
                    endpoints: set
                        .endpoints()
                        .iter()
                        .enumerate()
                        .map(|(i, e)| EndpointView {
                            url: Arc::clone(e.label()),
                            weight: e.weight,
                            healthy: e.is_available() && !tried.contains(&i),
                            in_flight: e.in_flight(),
                        })
                        .collect(),
                    generation: set.generation(),
                    attempt: u32::try_from(tried.len()).unwrap_or(u32::MAX),
                    tried: tried.iter().filter_map(|&i| u32::try_from(i).ok()).collect(),
                };
                let picked = plugin.pick(parts, &input, &mut ex.facts);
                match guarded(plugin, ex, picked)? {
                    Some(choice) => choice,
                    None => set.pick(&pick),
                }
            }
        };
        picked.ok_or_else(|| ProxyError::NoHealthyEndpoint {
            upstream: Arc::clone(upstream.name()),
        })
    }

    /// The proxy's error for a failed exchange with `endpoint`.
    fn upstream_error(&self, err: PoolError, upstream: &Upstream, endpoint: &crate::upstream::Endpoint) -> ProxyError {
        let (upstream, endpoint) = (Arc::clone(upstream.name()), Arc::clone(endpoint.label()));
        match err {
            PoolError::ConnectionRefused => ProxyError::ConnectionRefused { upstream, endpoint },
            PoolError::ConnectionTimeout => ProxyError::ConnectionTimeout { upstream, endpoint },
            PoolError::Tls { reason, certificate } => ProxyError::TlsFailed {
                upstream,
                endpoint,
                reason,
                certificate,
            },
            PoolError::RequestBodyTooLarge => ProxyError::BodyTooLarge { limit: self.max_body },
            PoolError::RequestBody(reason) => ProxyError::ClientBody { reason },
            PoolError::RequestBodyStalled => ProxyError::RequestTimeout {
                idle: self.config.server.timeouts.body_idle,
            },
            PoolError::Connect(reason) | PoolError::Protocol(reason) => ProxyError::UpstreamFailed {
                upstream,
                endpoint,
                reason,
            },
        }
    }

    /// Whether a failed attempt may be tried again elsewhere: a connection
    /// or TLS handshake that never carried the request, or a request that
    /// is safe to repeat (idempotent, or on a `retry.safe_paths` path).
    fn retryable(err: &ProxyError, safe: bool) -> bool {
        match err {
            ProxyError::ConnectionRefused { .. }
            | ProxyError::ConnectionTimeout { .. }
            | ProxyError::TlsFailed { .. } => true,
            ProxyError::UpstreamFailed { .. } => safe,
            _ => false,
        }
    }

    /// The forwarding headers, once per request: hop-by-hop headers out of
    /// the head, and what the proxy adds (`X-Forwarded-*`, `Via`, `Host`,
    /// the request id) returned beside it, for the pool to write.
    fn prepare_head(&self, route: &Route, out: &mut request::Parts, ex: &Exchange<'_>) -> headers::Added {
        let peer = ex.client.peer.ip();
        let forwarding = headers::Forwarding {
            client: ex.client,
            trusted: self.config.server.trusted_proxies.iter().any(|net| net.contains(&peer)),
            host: crate::router::request_host_value(&out.uri, &out.headers),
            host_from_uri: out.uri.authority().is_some(),
            strip: &route.strip_headers,
            version: out.version,
            request_id: &ex.request_id,
        };
        forwarding.apply(&mut out.headers)
    }

    /// One attempt's request as the pool takes it: in the origin form, in
    /// the upstream's version, its body boxed.
    fn outbound(&self, upstream: &Upstream, mut out: request::Parts, body: ReqBody) -> (request::Parts, BoxBody) {
        // The origin form: the pool knows where the endpoint is (a client's
        // absolute-form URI names the proxy's host, not the endpoint's).
        if out.uri.scheme().is_some() {
            let path = std::mem::take(&mut out.uri)
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            out.uri = Uri::from(path);
        }
        out.version = if upstream.protocol().is_h2_only() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let body = match body {
            // A request without a body (most of them) needs no box around
            // the client's empty one.
            ReqBody::Streaming(b) if http_body::Body::is_end_stream(&b) => crate::body::empty(),
            ReqBody::Streaming(b) => boxed(self.client_body(b)),
            ReqBody::Whole(b) => {
                // A whole body's exact length goes out from hyper; whatever
                // the client declared may no longer be true.
                out.headers.remove(header::CONTENT_LENGTH);
                crate::body::full(b)
            }
        };
        (out, body)
    }

    /// The pool's answer to one attempt, as the client is to get it. The
    /// response body carries the endpoint's in-flight guard.
    fn inbound(
        &self,
        answer: Result<crate::upstream::Answer, PoolError>,
        upstream: &Upstream,
        endpoint: &crate::upstream::Endpoint,
        guard: crate::upstream::InFlight,
    ) -> Result<(Response<BoxBody>, Option<RawFields>), ProxyError> {
        let (resp, connection, fields) = answer.map_err(|err| self.upstream_error(err, upstream, endpoint))?;
        // The pool has refused any response whose length could be read two
        // ways.
        let (mut parts, body) = resp.into_parts();
        // Raw fields hold nothing to strip; the writer adds their `Via`.
        if fields.is_none() {
            headers::strip_hop_by_hop_response(&mut parts.headers);
            headers::append_via(&mut parts.headers, parts.version);
        }
        let body = crate::body::IdleTimeout::new(body, upstream.timeouts().idle.get());
        // The HTTP/2 stream counts against its connection's cap until the
        // body is over.
        let body = crate::body::Guarded::new(body, (guard, connection));
        Ok((Response::from_parts(parts, boxed(body)), fields))
    }

    /// The response for a failed request: the route's error plugin's, else
    /// the built-in one. Both failures are logged.
    async fn failed(
        &self,
        route: Option<&Route>,
        parts: Option<&mut request::Parts>,
        err: ProxyError,
        ex: &mut Exchange<'_>,
    ) -> Response<BoxBody> {
        tracing::warn!(
            route = ex.facts.route.as_deref().unwrap_or("-"),
            request_id = request_id::text(&ex.request_id),
            error = %err,
            kind = err.kind().as_str(),
            "request failed"
        );
        if let (Some(plugin), Some(parts)) = (route.and_then(|r| r.on_error.as_ref()), parts) {
            let (upstream, endpoint) = err.upstream();
            let info = ErrorInfo {
                kind: err.kind(),
                plugin: err.plugin().cloned(),
                status: err.status(),
                upstream: upstream.cloned(),
                endpoint: endpoint.cloned(),
                attempts: ex.attempts,
                request_id: Arc::clone(&ex.facts.request_id),
            };
            match plugin.on_error(parts, &info, &mut ex.facts) {
                Ok(mut resp) => {
                    // What the protocol needs stays, whatever the plugin made.
                    let h = resp.headers_mut();
                    if let ProxyError::RateLimited { retry_after, .. } = &err
                        && !h.contains_key(header::RETRY_AFTER)
                    {
                        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                    }
                    if err.closes_connection() {
                        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return resp;
                }
                Err(failure) => log_failure(plugin, &failure, ex),
            }
        }
        if ex.grpc {
            return grpc::error_response(&err);
        }
        err.to_response()
    }

    /// The client's body as it is read, streamed upstream or whole: held to
    /// `max_body` (413 beyond), and cut off (408) when the client stops
    /// sending it mid-way. The timer goes on here, not where the request is
    /// taken in: a request's body is moved half a dozen times on its way to
    /// the upstream, and with the timer's state it is several times larger.
    fn client_body(&self, body: RequestBody) -> Limited<crate::body::IdleTimeout<RequestBody>> {
        Limited::new(
            crate::body::IdleTimeout::new(body, self.config.server.timeouts.body_idle.get()),
            self.max_body.as_usize(),
        )
    }

    /// Reads a streaming request body whole, up to `max_body` (413 beyond).
    async fn read_whole(&self, body: ReqBody) -> Result<ReqBody, ProxyError> {
        match body {
            ReqBody::Whole(b) => Ok(ReqBody::Whole(b)),
            ReqBody::Streaming(b) => match self.client_body(b).collect().await {
                Ok(collected) => Ok(ReqBody::Whole(collected.to_bytes())),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(ProxyError::BodyTooLarge { limit: self.max_body })
                }
                Err(e) if e.is::<crate::body::IdleTimedOut>() => Err(ProxyError::RequestTimeout {
                    idle: self.config.server.timeouts.body_idle,
                }),
                Err(e) => Err(ProxyError::ClientBody { reason: e.to_string() }),
            },
        }
    }
}

impl Route {
    fn has_plugins(&self) -> bool {
        self.rewrite.is_some()
            || !self.request.is_empty()
            || !self.response.is_empty()
            || self.on_error.is_some()
            || self.upstream.balancer_plugin().is_some()
    }
}

impl ReqBody {
    fn whole(&self) -> Option<&Bytes> {
        match self {
            Self::Whole(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }
}

/// A response body in the response filters: streaming from the upstream,
/// or read whole for a plugin.
enum RespBody {
    Streaming(BoxBody),
    Whole(Bytes),
}

impl RespBody {
    fn whole(&self) -> Option<&Bytes> {
        match self {
            Self::Whole(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }

    /// Reads the body whole, up to the plugin's `limits.body` (502 beyond).
    async fn read_whole(self, plugin: &Plugin) -> Result<Self, ProxyError> {
        let mut body = match self {
            Self::Whole(b) => return Ok(Self::Whole(b)),
            Self::Streaming(b) => b,
        };
        let limit = plugin.limits().body;
        // Frame by frame rather than `Limited`: its `Into<Box<dyn Error>>`
        // bound on a boxed body makes this future's Send proof
        // higher-ranked, which rustc cannot do yet.
        let mut whole = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ProxyError::UpstreamFailed {
                upstream: "-".into(),
                endpoint: "-".into(),
                reason: format!("response body failed: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                if whole.len() + data.len() > limit.as_usize() {
                    return Err(ProxyError::ResponseTooLarge {
                        plugin: Arc::clone(plugin.name()),
                        limit,
                    });
                }
                whole.extend_from_slice(&data);
            }
        }
        Ok(Self::Whole(whole.freeze()))
    }

    fn into_body(self) -> BoxBody {
        match self {
            Self::Streaming(b) => b,
            Self::Whole(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
        }
    }
}

/// What a request filter stashed for its own `on_response`.
fn stash_for<'a>(stashes: &'a [(Arc<str>, Vec<u8>)], plugin: &str) -> Option<&'a [u8]> {
    stashes.iter().find(|(p, _)| &**p == plugin).map(|(_, s)| s.as_slice())
}

/// A plugin call's result under the plugin's `on_failure`: `Ok(None)` when a
/// failure is skipped, an error for the request when it is not. Either way
/// the failure is logged with the plugin, route, request and reason.
fn guarded<T>(plugin: &Plugin, ex: &Exchange<'_>, result: Result<T, Failure>) -> Result<Option<T>, ProxyError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(failure) => {
            tracing::warn!(
                plugin = &**plugin.name(),
                route = ex.facts.route.as_deref().unwrap_or("-"),
                request_id = request_id::text(&ex.request_id),
                failure = failure.kind(),
                error = %failure,
                skipped = plugin.on_failure() == OnFailure::Skip,
                "plugin failed"
            );
            match plugin.on_failure() {
                OnFailure::Skip => Ok(None),
                OnFailure::Fail => Err(ProxyError::PluginFailed {
                    plugin: Arc::clone(plugin.name()),
                    failure,
                }),
            }
        }
    }
}

fn log_failure(plugin: &Plugin, failure: &Failure, ex: &Exchange<'_>) {
    tracing::warn!(
        plugin = &**plugin.name(),
        route = ex.facts.route.as_deref().unwrap_or("-"),
        request_id = request_id::text(&ex.request_id),
        failure = failure.kind(),
        error = %failure,
        "error plugin failed; sending the built-in error response"
    );
}

/// The client headers `prepare_head` cleans, for the fuzz targets.
#[doc(hidden)]
pub fn sanitize_for_fuzzing(h: &mut http::HeaderMap, peer: std::net::IpAddr, trusted: bool) {
    let client = Client::new(SocketAddr::new(peer, 0), "http");
    let forwarding = headers::Forwarding {
        client: &client,
        trusted,
        host: Some(HeaderValue::from_static("fuzz.example")),
        host_from_uri: false,
        strip: &[],
        version: http::Version::HTTP_11,
        request_id: &HeaderValue::from_static("fuzz"),
    };
    let added = forwarding.apply(h);
    headers::merge_added(h, &added);
}

/// The head checks `Proxy::admit` applies, for the fuzz targets: the normalised
/// path, or the status of the refusal.
#[doc(hidden)]
pub fn check_for_fuzzing<B>(req: &mut Request<B>, server: &crate::config::ServerConfig) -> Result<String, u16> {
    check_head(req, server, false).map_err(|e| e.status().as_u16())?;
    Ok(req.uri().path().to_owned())
}

/// Refuses ambiguous or oversized heads and paths that do not normalise,
/// and puts the normalised path into the request, before any routing.
/// `framed`: the head's framing is known to be unambiguous already.
fn check_head<B>(req: &mut Request<B>, server: &crate::config::ServerConfig, framed: bool) -> Result<(), ProxyError> {
    validate::request(req, &server.limits, framed)?;
    match path::normalize(req.uri().path(), &server.paths) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(()),
        Ok(std::borrow::Cow::Owned(normal)) => {
            let normal = with_query(&normal, req.uri().query())?;
            set_path(req.uri_mut(), normal)
        }
        Err(e) => Err(ProxyError::BadRequest { reason: e.to_string() }),
    }
}

/// `path` with `query` put back.
fn with_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let joined = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(joined).map_err(|e| ProxyError::BadRequest { reason: e.to_string() })
}

/// Replaces the path and query of `uri`, keeping its scheme and authority.
fn set_path(uri: &mut Uri, path: PathAndQuery) -> Result<(), ProxyError> {
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path);
    *uri = Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest { reason: e.to_string() })?;
    Ok(())
}

/// The first upstream head of a request on `route`; when the client's
/// headers go into it whole (see [`Keep::Target`]), their `Host` is kept in
/// `ex` for the response filters, shared rather than copied into a map of
/// its own.
fn first_head(route: &Route, parts: &mut request::Parts, ex: &mut Exchange<'_>) -> request::Parts {
    let keep = Keep::for_route(route);
    let head = upstream_head(parts, keep);
    if keep == Keep::Target {
        ex.host = head.headers.get(header::HOST).cloned();
    }
    head
}

/// What of the client's head is still looked at once the upstream head has
/// been made from it: whatever is not is moved, not copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// All of it: an error plugin or a balancer plugin may be shown the
    /// request.
    All,
    /// The URI (and `Host`, which [`first_head`] sets aside): response
    /// filters are shown the request's path and authority.
    Target,
    /// Nothing.
    Nothing,
}

impl Keep {
    /// What `route`'s plugins will look at after the upstream head is made:
    /// a balancer plugin picks (for each attempt) after it.
    fn for_route(route: &Route) -> Self {
        if route.on_error.is_some() || route.upstream.balancer_plugin().is_some() {
            Self::All
        } else if !route.response.is_empty() {
            Self::Target
        } else {
            Self::Nothing
        }
    }
}

/// The head of the upstream request, taking from the client's head what
/// `keep` says will not be looked at again.
fn upstream_head(parts: &mut request::Parts, keep: Keep) -> request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.version = parts.version;
    // Swapped rather than taken: the empty map and URI left behind are the
    // new head's own, so none is made and dropped per request.
    match keep {
        Keep::All => {
            head.uri = parts.uri.clone();
            head.headers = parts.headers.clone();
        }
        Keep::Target => {
            head.uri = parts.uri.clone();
            std::mem::swap(&mut head.headers, &mut parts.headers);
        }
        Keep::Nothing => {
            std::mem::swap(&mut head.uri, &mut parts.uri);
            std::mem::swap(&mut head.headers, &mut parts.headers);
        }
    }
    head
}
