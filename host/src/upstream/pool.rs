//! Keep-alive connections to an upstream's endpoints.

use std::error::Error as StdError;
use std::io;

use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector, capture_connection,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{BoxBody, BoxError};
use crate::config::{PoolConfig, UpstreamTimeouts};

/// Also the server's: chunks, fields and lengths are written and read the
/// same way in both directions.
pub(crate) mod h1;
mod keepalive;
mod streams;

/// Keep-alive connections to an upstream's endpoints.
#[derive(Debug, Clone)]
pub struct Pool(Kind);

#[derive(Debug, Clone)]
enum Kind {
    /// HTTP/1.1 (`http1`): keep-alive connections, one request at a time.
    KeepAlive(keepalive::KeepAlive),
    /// Whatever ALPN picks (`auto`): hyper-util's pooled client does the
    /// bookkeeping (idle timeout, idle connections per host, retrying a
    /// request whose pooled connection turned out to be closed before
    /// anything was sent), HTTP/1.1 and HTTP/2 alike.
    Pooled(Box<Client<Counted, BoxBody>>),
    /// HTTP/2 only (`h2c`, `h2`): connections with a cap on their streams.
    Streams(streams::Streams),
}

/// An upstream's answer to [`Pool::send`]: the response, what carried it,
/// and its fields when they are passed on raw.
pub(crate) type Answer = (http::Response<ResponseBody>, Sent, Option<h1::RawFields>);

/// What carried a request: keep it with the response body.
#[derive(Debug)]
pub(crate) struct Sent(Carrier);

#[derive(Debug)]
enum Carrier {
    /// A keep-alive connection, which travels with the response body
    /// instead: our own client refuses a malformed response before a body
    /// is made, so there is nothing to poison.
    Body,
    /// A pooled connection, which [`Sent::poison`] keeps out of the pool.
    Pooled(CaptureConnection),
    /// A stream on an HTTP/2 connection, counted until this is dropped.
    Stream { _held: streams::StreamGuard },
}

impl Sent {
    /// Keeps the connection that carried a response out of the pool: after
    /// a malformed response nothing later on it can be trusted. An HTTP/2
    /// stream is reset when its body is dropped, and the connection's
    /// other streams are unaffected.
    fn poison(&self) {
        match &self.0 {
            Carrier::Body => {}
            Carrier::Pooled(capture) => {
                if let Some(connected) = capture.connection_metadata().as_ref() {
                    connected.poison();
                }
            }
            Carrier::Stream { .. } => {}
        }
    }
}

/// TLS towards an upstream's `https://` endpoints.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The handshake's settings (roots, client certificate).
    pub connector: tokio_rustls::TlsConnector,
    /// The name to send and verify instead of the target's host.
    pub sni: Option<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// Why a request to an upstream failed before its response head arrived.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The client stopped sending its request body for too long.
    #[error("request body stalled")]
    RequestBodyStalled,
    /// The TLS handshake with the endpoint failed; `certificate` when it
    /// was the endpoint's certificate that did not verify.
    #[error("TLS handshake failed: {reason}")]
    Tls {
        /// What rustls said.
        reason: String,
        /// Whether the certificate was refused (else the protocol failed).
        certificate: bool,
    },
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
    pub fn new(
        pool: &PoolConfig,
        timeouts: &UpstreamTimeouts,
        open: Gauge,
        tls: Option<UpstreamTls>,
        protocol: crate::config::UpstreamProtocol,
        http2: Option<&crate::config::Http2Config>,
    ) -> Self {
        let connector = Counted {
            inner: connector(timeouts.connect.get()),
            open,
            tls,
        };
        let keep_alive = std::time::Duration::from_secs(30);
        use crate::config::UpstreamProtocol as P;
        let kind = match protocol {
            P::Http1 => Kind::KeepAlive(keepalive::KeepAlive::new(
                connector,
                pool.idle_timeout.get(),
                pool.max_idle_per_endpoint,
            )),
            P::H2c | P::H2 => {
                let defaults = crate::config::Http2Config::default();
                let h2 = http2.unwrap_or(&defaults);
                let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(keep_alive)
                    .initial_stream_window_size(h2.stream_window())
                    .initial_connection_window_size(h2.connection_window())
                    .max_concurrent_reset_streams(h2.max_local_error_reset_streams);
                Kind::Streams(streams::Streams::new(
                    connector,
                    builder,
                    h2.max_concurrent_streams as usize,
                    pool.idle_timeout.get(),
                    pool.max_idle_per_endpoint,
                ))
            }
            // The protocol is known only after ALPN, per connection:
            // hyper-util's client handles both (no stream cap, see
            // docs/grpc.md).
            P::Auto => {
                let mut builder = Client::builder(TokioExecutor::new());
                if let Some(h2) = http2 {
                    builder
                        .http2_initial_stream_window_size(h2.stream_window())
                        .http2_initial_connection_window_size(h2.connection_window())
                        .http2_max_concurrent_reset_streams(h2.max_local_error_reset_streams);
                }
                let client = builder
                    .pool_idle_timeout(pool.idle_timeout.get())
                    .pool_max_idle_per_host(pool.max_idle_per_endpoint)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .http2_keep_alive_interval(keep_alive)
                    .build(connector);
                Kind::Pooled(Box::new(client))
            }
        };
        Self(kind)
    }

    /// A client for health probes: the same connector (TLS included) but
    /// no pooling, so a probe sees what a new connection would.
    pub(super) fn probe_client(
        connect: std::time::Duration,
        tls: Option<UpstreamTls>,
        protocol: crate::config::UpstreamProtocol,
    ) -> Client<Counted, BoxBody> {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .http2_only(protocol.is_h2_only())
            .build(Counted {
                inner: connector(connect),
                open: Gauge::default(),
                tls,
            })
    }

    /// Sends the request (`head` and `body`) to `dest` and waits for the
    /// response head; only the path and query of the head's URI are used;
    /// `added` are fields the proxy adds, which the head's map does not
    /// hold. The head and body come apart: put together into a request
    /// only for our HTTP/1.1 client to take it apart again, the head
    /// (hundreds of bytes) would be copied twice more per request. Keep the
    /// second value with the response body. A response whose length could
    /// be read two ways is refused, and its connection is not used again.
    /// With `raw`, a response read by our HTTP/1.1 client may come with its
    /// fields as [`h1::RawFields`], the third value, its map then empty: for
    /// a response nothing reads but the server's own HTTP/1.1 writer. They
    /// travel beside the response, not in its extensions: a map of
    /// extensions is two allocations, a hash insert and its drop per
    /// request.
    /// The keep-alive pool's send is polled through [`Sending`], not
    /// awaited in an `async fn` here: that would be one more async level on
    /// every poll, with the head copied into its state once more.
    pub(crate) fn send<'a>(
        &'a self,
        dest: &'a Destination,
        head: http::request::Parts,
        body: BoxBody,
        added: &'a [(http::HeaderName, http::HeaderValue)],
        raw: bool,
    ) -> Sending<
        impl Future<Output = KeptAnswer> + 'a,
        impl Future<Output = Result<Answer, PoolError>> + 'a,
        impl Future<Output = Result<Answer, PoolError>> + 'a,
    > {
        match &self.0 {
            Kind::KeepAlive(pool) => Sending::KeepAlive {
                send: pool.send(dest, head, body, added, raw),
            },
            Kind::Pooled(client) => Sending::Pooled {
                send: async move {
                    let mut req = for_hyper(dest, head, body, added)?;
                    let capture = capture_connection(&mut req);
                    let response = client
                        .request(req)
                        .await
                        .map_err(|e| classify_error(&e, e.is_connect()))?;
                    let sent = Sent(Carrier::Pooled(capture));
                    refuse_ambiguous(&response, &sent)?;
                    Ok((response.map(ResponseBody::hyper), sent, None))
                },
            },
            Kind::Streams(streams) => Sending::Streams {
                send: async move {
                    let req = for_hyper(dest, head, body, added)?;
                    let (response, stream) = streams.send(dest, req).await?;
                    let sent = Sent(Carrier::Stream { _held: stream });
                    refuse_ambiguous(&response, &sent)?;
                    Ok((response.map(ResponseBody::hyper), sent, None))
                },
            },
        }
    }
}

/// What the keep-alive pool's send answers, before [`Sending`] makes it
/// an [`Answer`].
type KeptAnswer = Result<(http::Response<keepalive::Body>, Option<h1::RawFields>), PoolError>;

pin_project_lite::pin_project! {
    /// [`Pool::send`]'s future: the send of the pool's kind, polled in
    /// place.
    #[project = SendingProj]
    pub(crate) enum Sending<K, P, S> {
        /// Our HTTP/1.1 client.
        KeepAlive { #[pin] send: K },
        /// hyper's pooled client.
        Pooled { #[pin] send: P },
        /// HTTP/2 streams.
        Streams { #[pin] send: S },
    }
}

impl<K, P, S> Future for Sending<K, P, S>
where
    K: Future<Output = KeptAnswer>,
    P: Future<Output = Result<Answer, PoolError>>,
    S: Future<Output = Result<Answer, PoolError>>,
{
    type Output = Result<Answer, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SendingProj::KeepAlive { send } => send.poll(cx).map(|answer| {
                answer.map(|(response, fields)| {
                    (response.map(|b| ResponseBody(Read::H1(b))), Sent(Carrier::Body), fields)
                })
            }),
            SendingProj::Pooled { send } => send.poll(cx),
            SendingProj::Streams { send } => send.poll(cx),
        }
    }
}

/// The request as hyper's clients take it: the endpoint's URI, and the
/// proxy's fields in the map, which hyper writes as it is.
fn for_hyper(
    dest: &Destination,
    mut head: http::request::Parts,
    body: BoxBody,
    added: &[(http::HeaderName, http::HeaderValue)],
) -> Result<http::Request<BoxBody>, PoolError> {
    head.uri = dest.uri(head.uri.path_and_query())?;
    crate::proxy::merge_added(&mut head.headers, added);
    Ok(http::Request::from_parts(head, body))
}

/// Refuses a response hyper read whose length could be read two ways, and
/// keeps its connection out of the pool (our HTTP/1.1 client refuses these
/// itself, in `h1::response_body`).
fn refuse_ambiguous(response: &http::Response<Incoming>, sent: &Sent) -> Result<(), PoolError> {
    match crate::proxy::framing(response.headers()) {
        Some(reason) => {
            sent.poison();
            Err(PoolError::Protocol(format!("ambiguous response: {reason}")))
        }
        None => Ok(()),
    }
}

/// An upstream's response body: from our own HTTP/1.1 client, or from
/// hyper's (HTTP/2, and `auto`).
#[derive(Debug)]
pub(crate) struct ResponseBody(Read);

#[derive(Debug)]
enum Read {
    /// Read by our HTTP/1.1 client; it holds the connection until its end.
    H1(keepalive::Body),
    /// Read by hyper.
    Hyper(Incoming),
}

impl ResponseBody {
    fn hyper(body: Incoming) -> Self {
        Self(Read::Hyper(body))
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Read::H1(body) => Pin::new(body).poll_frame(cx),
            Read::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Read::H1(body) => body.is_end_stream(),
            Read::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Read::H1(body) => body.size_hint(),
            Read::Hyper(body) => body.size_hint(),
        }
    }
}

/// Where a connection goes: scheme and authority of the endpoint.
type Key = (http::uri::Scheme, http::uri::Authority);

/// An endpoint as the pool knows it: where its connections go, hashed once
/// when the endpoint is made. Every request looks its endpoint's
/// connections up by this, and an authority hashes and compares byte by
/// byte, case-insensitively: that cost ~1,000 instructions per request when
/// the key was taken from each request's URI. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Destination(Arc<Hashed>);

#[derive(Debug)]
struct Hashed {
    key: Key,
    hash: u64,
}

impl Destination {
    /// The endpoint at `scheme://authority`.
    pub fn new(scheme: http::uri::Scheme, authority: http::uri::Authority) -> Self {
        use std::hash::BuildHasher;
        let key = (scheme, authority);
        let hash = rustc_hash::FxBuildHasher.hash_one(&key);
        Self(Arc::new(Hashed { key, hash }))
    }

    fn key(&self) -> &Key {
        &self.0.key
    }

    /// The absolute URI of `path` on this endpoint, which hyper's clients
    /// want (our HTTP/1.1 client needs only the path).
    fn uri(&self, path: Option<&http::uri::PathAndQuery>) -> Result<http::Uri, PoolError> {
        let (scheme, authority) = self.key();
        http::Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(
                path.cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            )
            .build()
            .map_err(|e| PoolError::Protocol(e.to_string()))
    }
}

impl std::hash::Hash for Destination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        // The same endpoint's destination is usually the very same one; another
        // endpoint's almost always differs in the hash.
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.key == other.0.key)
    }
}

impl Eq for Destination {}

/// Opens a connection (TLS included for `https`) to `dest`, for hyper.
async fn open(connector: Counted, dest: &Destination) -> Result<CountedIo<Conn>, PoolError> {
    let (stream, open) = connector.open(dest).await?;
    Ok(CountedIo {
        io: Conn::from(stream),
        _open: open,
    })
}

/// Runs a connection's driver in a task of its own until it ends.
fn drive(connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %chain(&err), "upstream connection ended");
        }
    });
}

/// Calls `sweep` on the pool every half `idle_timeout` (at least every
/// 250 ms) until the pool is gone: connections nobody uses any more are
/// closed even when no request comes to notice.
fn sweep_while_alive<T: Send + Sync + 'static>(pool: &Arc<T>, idle_timeout: std::time::Duration, sweep: fn(&T)) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = Arc::downgrade(pool);
    let period = (idle_timeout / 2).max(std::time::Duration::from_millis(250));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            sweep(&pool);
        }
    });
}

/// hyper-util's TCP connector with the settings every upstream uses.
fn connector(connect_timeout: std::time::Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // https:// URIs reach `Counted`, which adds TLS.
    connector.enforce_http(false);
    connector
}

/// What went wrong, from an error and its causes; `connect` when it
/// happened while opening the connection.
fn classify_error(err: &(dyn StdError + 'static), connect: bool) -> PoolError {
    // tokio-rustls wraps rustls' error in an io::Error, whose `source()`
    // skips it: look inside io::Errors too.
    let tls = causes(err).find_map(|e| {
        e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    });
    if let Some(tls) = tls {
        return PoolError::Tls {
            reason: tls.to_string(),
            certificate: matches!(tls, rustls::Error::InvalidCertificate(_)),
        };
    }
    if connect {
        let io = causes(err).find_map(|e| e.downcast_ref::<io::Error>());
        return match io.map(PoolError::connect) {
            Some(e @ (PoolError::ConnectionRefused | PoolError::ConnectionTimeout)) => e,
            // The whole chain says more than the innermost I/O error.
            _ => PoolError::Connect(chain(err)),
        };
    }
    if let Some(known) = request_body_error(err) {
        return known;
    }
    let body_failed = causes(err)
        .filter_map(|e| e.downcast_ref::<hyper::Error>())
        .any(|h| h.is_user() || h.is_body_write_aborted());
    if body_failed {
        return PoolError::RequestBody(chain(err));
    }
    PoolError::Protocol(chain(err))
}

/// The request body's own limits, when one of them is why sending failed.
fn request_body_error(err: &(dyn StdError + 'static)) -> Option<PoolError> {
    if causes(err).any(|e| e.is::<http_body_util::LengthLimitError>()) {
        return Some(PoolError::RequestBodyTooLarge);
    }
    if causes(err).any(|e| e.is::<crate::body::IdleTimedOut>()) {
        return Some(PoolError::RequestBodyStalled);
    }
    None
}

/// hyper-util's connector, with TLS for `https://` endpoints, counting
/// the connections it opened that are still open
/// (`plumeway_open_connections{kind="upstream"}`).
#[derive(Clone, Debug)]
pub(super) struct Counted {
    inner: HttpConnector,
    open: Gauge,
    tls: Option<UpstreamTls>,
}

impl Counted {
    /// Opens a connection (TLS included for `https`) to `dest`, counted
    /// until the returned [`Opened`] is dropped.
    pub(super) async fn open(&self, dest: &Destination) -> Result<(Stream, Opened), PoolError> {
        let uri = dest.uri(None)?;
        let stream = connect(self.inner.clone(), self.tls.clone(), uri)
            .await
            .map_err(|e| classify_error(&*e, true))?;
        Ok((stream, Opened::new(self.open.clone())))
    }
}

/// Opens a TCP connection to `uri`, with TLS on top for `https`.
async fn connect(mut tcp: HttpConnector, tls: Option<UpstreamTls>, uri: http::Uri) -> Result<Stream, BoxError> {
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri.host().unwrap_or_default().to_owned();
    let tcp = tower_service::Service::call(&mut tcp, uri).await?.into_inner();
    if !https {
        return Ok(Stream::Plain(tcp));
    }
    let tls = tls.ok_or("an https:// endpoint, but the upstream has no TLS settings")?;
    let name = crate::tls::server_name(tls.sni.as_deref(), &host)?;
    Ok(Stream::Tls(Box::new(tls.connector.connect(name, tcp).await?)))
}

impl tower_service::Service<http::Uri> for Counted {
    type Response = CountedIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = connect(self.inner.clone(), self.tls.clone(), uri);
        let open = self.open.clone();
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(CountedIo {
                io: Conn::from(stream),
                _open: Opened::new(open),
            })
        })
    }
}

/// Counts an open upstream connection
/// (`plumeway_open_connections{kind="upstream"}`) until dropped.
#[derive(Debug)]
pub(super) struct Opened(Gauge);

impl Opened {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A plain or TLS connection to an endpoint, as tokio sees it: what our
/// own HTTP/1.1 client reads and writes.
#[derive(Debug)]
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl From<Stream> for Conn {
    fn from(stream: Stream) -> Self {
        match stream {
            Stream::Plain(tcp) => Self::Plain { io: TokioIo::new(tcp) },
            Stream::Tls(tls) => Self::Tls { io: TokioIo::new(*tls) },
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// A plain or TLS connection to an endpoint.
    #[project = ConnProj]
    #[derive(Debug)]
    pub(super) enum Conn {
        Plain { #[pin] io: TokioIo<TcpStream> },
        Tls { #[pin] io: TokioIo<tokio_rustls::client::TlsStream<TcpStream>> },
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.project() {
            ConnProj::Plain { io } => io.poll_read(cx, buf),
            ConnProj::Tls { io } => io.poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.project() {
            ConnProj::Plain { io } => io.poll_write(cx, buf),
            ConnProj::Tls { io } => io.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            ConnProj::Plain { io } => io.poll_flush(cx),
            ConnProj::Tls { io } => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            ConnProj::Plain { io } => io.poll_shutdown(cx),
            ConnProj::Tls { io } => io.poll_shutdown(cx),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain { io } => io.connected(),
            Self::Tls { io } => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                // ALPN's answer decides the protocol for `auto`.
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that leaves the count when it closes.
    #[derive(Debug)]
    pub(super) struct CountedIo<T> {
        #[pin]
        io: T,
        _open: Opened,
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for CountedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for CountedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// `err` and its causes, outermost first.
fn causes<'a>(err: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

/// The error and its causes on one line, for logs.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
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
