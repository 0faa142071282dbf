//! Listeners: accept connections, speak HTTP/1.1 and HTTP/2 on each, swap
//! in a new config on reload, and shut down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod http1;
mod spare;

use crate::config::{Config, ConfigError};
use crate::metrics::{ConnectionLabels, Metrics, ReloadLabels};
use crate::proxy::{Client, Proxy};

/// Bound listeners and the proxy they serve, ready to run.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    state: Arc<State>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `server.listen`.
        addr: SocketAddr,
        /// Why the socket could not be bound.
        #[source]
        source: io::Error,
    },
    /// The config could not be made runnable (a plugin failed to load).
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// What one config runs with; a reload swaps the whole of it.
#[derive(Debug)]
pub struct Serving {
    /// The routes, upstreams and plugins.
    pub proxy: Proxy,
    /// How client connections are spoken to (limits, timeouts); new
    /// connections take the current one.
    http: auto::Builder<TokioExecutor>,
    /// The certificates TLS listeners present (reloaded with the config).
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Serving {
    fn new(proxy: Proxy) -> Result<Self, ConfigError> {
        let config = Arc::clone(proxy.config());
        let tls = match &config.server.tls {
            Some(tls) => Some(crate::tls::server_config(tls, &config.base_dir()).map_err(|i| config.locate(i))?),
            None => None,
        };
        let limits = &config.server.limits;
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.server.timeouts.header_read.get())
            .max_buf_size(limits.max_header_bytes.as_usize())
            .max_headers(limits.max_headers);
        let h2 = &config.server.http2;
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes.get()).unwrap_or(u32::MAX))
            .max_concurrent_streams(h2.max_concurrent_streams)
            .initial_stream_window_size(h2.stream_window())
            .initial_connection_window_size(h2.connection_window())
            .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams);
        Ok(Self { proxy, http, tls })
    }
}

/// The server's state that outlives reloads: the config serving now, the
/// metrics, and whether it is draining.
#[derive(Debug)]
pub struct State {
    serving: ArcSwap<Serving>,
    metrics: Arc<Metrics>,
    /// One reload at a time: each builds on the config before it.
    reloading: tokio::sync::Mutex<()>,
    draining: AtomicBool,
    started: Instant,
}

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    /// Routes now.
    pub routes: usize,
    /// Upstreams now.
    pub upstreams: usize,
    /// Plugins now.
    pub plugins: usize,
    /// How long loading the new config took, in milliseconds.
    pub took_ms: u64,
}

impl State {
    /// The config serving now. Requests already running keep the one they
    /// started with.
    pub fn current(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// The metrics, shared by every config.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether shutdown has begun (`/readyz` then says no).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// How long the server has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads the config file again and swaps it in whole, plugins rebuilt.
    /// Anything wrong (a bad file, a plugin that does not compile, a
    /// listener change, which needs a restart) leaves the running config
    /// serving and is returned, and logged.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let _one = self.reloading.lock().await;
        let started = Instant::now();
        let outcome = self.load_new().await;
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        self.metrics.reloads.get_or_create(&ReloadLabels { result }).inc();
        match outcome {
            Ok(serving) => {
                let config = Arc::clone(serving.proxy.config());
                self.serving.store(Arc::new(serving));
                let done = Reloaded {
                    routes: config.routes.len(),
                    upstreams: config.upstreams.len(),
                    plugins: config.plugins.len(),
                    took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                tracing::info!(
                    routes = done.routes,
                    upstreams = done.upstreams,
                    plugins = done.plugins,
                    took_ms = done.took_ms,
                    "config reloaded"
                );
                Ok(done)
            }
            Err(err) => {
                tracing::error!(error = %err, "config reload rejected; the running config keeps serving");
                Err(err)
            }
        }
    }

    async fn load_new(&self) -> Result<Serving, String> {
        let current = self.current();
        let running = current.proxy.config();
        let path: PathBuf = running
            .origin
            .as_ref()
            .map(|o| o.file.clone())
            .ok_or("the running config was not read from a file")?;
        let mut config = Config::load(&path).map_err(|e| e.to_string())?;
        let tls_listen = |c: &Config| c.server.tls.as_ref().map(|t| t.listen.clone()).unwrap_or_default();
        if tls_listen(&config) != tls_listen(running) {
            return Err(format!(
                "{}: server.tls.listen changed; listeners change only with a restart",
                path.display()
            ));
        }
        if config.server.listen != running.server.listen {
            return Err(format!(
                "{}: server.listen changed ({:?} -> {:?}); listeners change only with a restart",
                path.display(),
                running.server.listen,
                config.server.listen
            ));
        }
        if config.server.workers != running.server.workers {
            return Err(format!(
                "{}: server.workers changed; the worker threads change only with a restart",
                path.display()
            ));
        }
        if config.admin != running.admin {
            return Err(format!(
                "{}: [admin] changed; the admin listener changes only with a restart",
                path.display()
            ));
        }
        // Keep what the running config was started with where the file
        // cannot say it (an address given on the command line).
        config.server.listen.clone_from(&running.server.listen);
        let proxy = Proxy::load(&config, &self.metrics, Some(&current.proxy))
            .await
            .map_err(|e| e.to_string())?;
        Serving::new(proxy).map_err(|e| e.to_string())
    }
}

impl Server {
    /// Loads a validated config (plugins included) and binds every
    /// `server.listen` address, and the admin listener if configured.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::load(config, &metrics, None).await?;
        let mut listeners = Vec::with_capacity(config.server.listen.len());
        for &addr in &config.server.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(listener);
        }
        let serving = Serving::new(proxy)?;
        let mut tls_listeners = Vec::new();
        for &addr in config.server.tls.iter().flat_map(|t| &t.listen) {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            tls_listeners.push(listener);
        }
        let admin = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.listen)
                    .await
                    .map_err(|source| StartError::Bind { addr: a.listen, source })?,
            ),
            None => None,
        };
        Ok(Self {
            listeners,
            tls_listeners,
            admin,
            state: Arc::new(State {
                serving: ArcSwap::from_pointee(serving),
                metrics,
                reloading: tokio::sync::Mutex::new(()),
                draining: AtomicBool::new(false),
                started: Instant::now(),
            }),
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The TLS listeners' addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The state that reloads change; for reloading from outside.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves until `shutdown` completes, reloading on SIGHUP (and on
    /// `POST /reload` or a changed file, with `[admin]`); then stops
    /// accepting, lets in-flight requests finish for up to
    /// `server.timeouts.shutdown`, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        // Before anything says "listening": SIGHUP's default action ends
        // the process, so a reload sent at once must already be caught.
        let hup = sighup();
        let (stop_tx, stop_rx) = watch::channel(());
        let mut tasks = JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening");
            }
            tasks.spawn(accept_loop(listener, Arc::clone(&self.state), stop_rx.clone(), false));
        }
        for listener in self.tls_listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening (TLS)");
            }
            tasks.spawn(accept_loop(listener, Arc::clone(&self.state), stop_rx.clone(), true));
        }
        let mut helpers = JoinSet::new();
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            helpers.spawn(crate::admin::serve(admin, Arc::clone(&self.state), stop_rx.clone()));
        }
        helpers.spawn(reload_on_sighup(hup, Arc::clone(&self.state)));
        if self
            .state
            .current()
            .proxy
            .config()
            .admin
            .as_ref()
            .is_some_and(|a| a.watch_config)
        {
            helpers.spawn(reload_on_change(Arc::clone(&self.state)));
        }
        shutdown.await;
        let started = Instant::now();
        // Before the stop is sent: the own HTTP/1.1 path reads this
        // instead of polling its wait on the stop (see `http1::Stop`).
        self.state.draining.store(true, Ordering::Release);
        let in_flight = self.state.metrics.in_flight();
        let connections = self
            .state
            .metrics
            .connections
            .get_or_create(&ConnectionLabels { kind: "client" })
            .get();
        tracing::info!(
            in_flight,
            connections,
            "shutting down: no new connections; finishing in-flight requests"
        );
        drop(stop_tx);
        let proxy = self.state.current();
        let drained = tokio::time::timeout(proxy.proxy.config().server.timeouts.shutdown.get(), async {
            // HTTP connections drain by themselves; WebSockets are told.
            tokio::join!(
                async { while tasks.join_next().await.is_some() {} },
                proxy.proxy.close_websockets(),
            );
        })
        .await;
        helpers.abort_all();
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match drained {
            Ok(()) => tracing::info!(elapsed_ms, drained_requests = in_flight, "shutdown complete"),
            Err(_) => tracing::warn!(
                elapsed_ms,
                still_in_flight = self.state.metrics.in_flight(),
                "shutdown deadline reached; closing connections that are still busy"
            ),
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<()>, tls: bool) {
    let graceful = GracefulShutdown::new();
    let open = state
        .metrics
        .connections
        .get_or_create_owned(&ConnectionLabels { kind: "client" });
    // Connections beyond the limit are closed at once: refusing fast keeps
    // the ones already open served, where queueing would slow them all.
    let max = state.current().proxy.config().server.limits.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, max, refused, "connection limit reached; closing new connections");
                        }
                        drop(stream);
                        continue;
                    };
                    // Small writes (response heads) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let open = open.clone();
                    open.inc();
                    let task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = if tls {
                        Box::pin(serve_tls(stream, peer, Arc::clone(&state), graceful.watcher()))
                    } else {
                        Box::pin(serve_plain(stream, peer, Arc::clone(&state), graceful.watcher(), stop.clone()))
                    };
                    tokio::spawn(async move {
                        task.await;
                        open.dec();
                        drop(slot);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: the error is
                    // about this moment, not the listener, so pause briefly
                    // instead of spinning or giving up.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Every connection holds a slot, on either HTTP/1.1 path: hyper's
    // count alone would miss those on ours.
    let open = max - slots.available_permits();
    if open > 0 {
        tracing::info!(connections = open, "draining open connections");
    }
    graceful.shutdown().await;
    // Connections on our own HTTP/1.1 path are not hyper's to count: each
    // holds its slot until it ends, so all the slots back means all done.
    let _ = slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)).await;
}

/// The service for one client connection: each request takes the config
/// serving when it starts, so keep-alive connections follow reloads.
fn service(
    state: Arc<State>,
    client: Client,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::proxy::Served>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::proxy::Served>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| {
        let serving = state.current();
        let client = client.clone();
        async move {
            // hyper writes the response from its map: no raw fields come
            // for this client (see `Client::own_http1`).
            let mut raw = None;
            Ok::<_, Infallible>(
                serving
                    .proxy
                    .handle(req.map(crate::body::RequestBody::Hyper), &client, &mut raw)
                    .await,
            )
        }
    })
}

async fn serve_plain(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    graceful: hyper_util::server::graceful::Watcher,
    stop: watch::Receiver<()>,
) {
    let client = Client::new(peer, "http");
    let socket = Arc::new(http1::Socket::new(stream));
    let (socket, read) = match http1::serve(socket, client.clone(), &state, stop).await {
        http1::Ended::Closed => return,
        http1::Ended::HandOver(socket, read) => (socket, read.freeze()),
    };
    // The rest of the connection is hyper's, starting with what was read.
    let (stream, timeout_reply) = Stalled::watch(socket, read);
    let service = service(Arc::clone(&state), client);
    let conn = state
        .current()
        .http
        .serve_connection_with_upgrades(stream, service)
        .into_owned();
    if let Err(err) = graceful.watch(conn).await {
        timeout_reply.after(&*err);
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
}

async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    graceful: hyper_util::server::graceful::Watcher,
) {
    let serving = state.current();
    let Some(acceptor) = serving.tls.clone().map(tokio_rustls::TlsAcceptor::from) else {
        return;
    };
    // The handshake counts against the header read timeout: a client that
    // opens and says nothing holds a slot no longer than a slow head would.
    let limit = serving.proxy.config().server.timeouts.header_read.get();
    drop(serving);
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = service(Arc::clone(&state), Client::new(peer, "https"));
    let conn = state
        .current()
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    if let Err(err) = graceful.watch(conn).await {
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
}

/// A client connection, watched for the case hyper leaves silent: the
/// header read timeout closes the connection without a word, where a
/// client that sent part of a head should hear 408 (RFC 9110 §15.5.9).
/// It shares the socket with hyper's side, so it can still write that
/// answer after hyper has let go, without a second file descriptor.
struct Stalled {
    socket: Arc<http1::Socket>,
    /// Bytes arrived since the proxy last wrote: a head was under way.
    partial: Arc<AtomicBool>,
}

impl Stalled {
    /// hyper's side of `socket`, which reads `read` first: the bytes our
    /// own HTTP/1.1 path had read before it handed the connection over.
    fn watch(socket: Arc<http1::Socket>, read: bytes::Bytes) -> (TokioIo<Watched>, Self) {
        let partial = Arc::new(AtomicBool::new(!read.is_empty()));
        let io = Watched {
            socket: Arc::clone(&socket),
            read,
            partial: Arc::clone(&partial),
        };
        (TokioIo::new(io), Self { socket, partial })
    }

    /// Answers 408 if hyper gave up on a head the client had started.
    fn after(self, err: &(dyn std::error::Error + 'static)) {
        let timed_out = std::iter::successors(Some(err), |e| e.source())
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .any(hyper::Error::is_timeout);
        if timed_out && self.partial.load(Ordering::Relaxed) {
            self.socket.answer_timeout();
        }
    }
}

/// The client's socket as hyper reads it: first the bytes already read,
/// then the socket, noting whether bytes came in since the proxy last
/// wrote. It reads and writes through `&TcpStream` (readiness, then a
/// non-blocking call), as tokio's own `TcpStream` does.
struct Watched {
    socket: Arc<http1::Socket>,
    read: bytes::Bytes,
    partial: Arc<AtomicBool>,
}

impl Watched {
    fn wrote(&self, polled: &std::task::Poll<io::Result<usize>>) {
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.partial.store(false, Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        let wanted = buf.remaining();
        let polled = http1::poll_read_shared(&self.socket.io, cx, wanted, |s| s.try_read_buf(buf));
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.partial.store(true, Ordering::Relaxed);
        }
        polled.map_ok(|_| ())
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let polled = http1::poll_io(cx, &self.socket.io, tokio::net::TcpStream::poll_write_ready, |s| {
            s.try_write(buf)
        });
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let polled = http1::poll_io(cx, &self.socket.io, tokio::net::TcpStream::poll_write_ready, |s| {
            s.try_write_vectored(bufs)
        });
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        // Writes go straight to the socket: nothing is buffered here.
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(socket2::SockRef::from(&self.socket.io).shutdown(std::net::Shutdown::Write))
    }
}

/// The SIGHUP stream, where there is one.
#[cfg(unix)]
fn sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGHUP; reload with POST /reload instead");
            None
        }
    }
}

#[cfg(not(unix))]
fn sighup() -> Option<()> {
    None
}

/// SIGHUP reloads the config, as for nginx and HAProxy.
#[cfg(unix)]
async fn reload_on_sighup(hup: Option<tokio::signal::unix::Signal>, state: Arc<State>) {
    let Some(mut hup) = hup else { return };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the config");
        let _ = state.reload().await;
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_hup: Option<()>, _state: Arc<State>) {}

/// `[admin] watch_config = true`: reload when the config file changes.
async fn reload_on_change(state: Arc<State>) {
    use notify::{RecursiveMode, Watcher};
    let Some(path) = state.current().proxy.config().origin.as_ref().map(|o| o.file.clone()) else {
        return;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned);
    let name = path.file_name().map(ToOwned::to_owned);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the config file");
            return;
        }
    };
    if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %err, dir = %dir.display(), "cannot watch the config file");
        return;
    }
    while let Some(event) = rx.recv().await {
        let touches = event.is_ok_and(|e| {
            (e.kind.is_modify() || e.kind.is_create()) && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if !touches {
            continue;
        }
        // Editors write in several steps: let them finish.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        tracing::info!(file = %path.display(), "config file changed: reloading");
        let _ = state.reload().await;
    }
}
