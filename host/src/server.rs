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

use crate::config::{Config, ConfigError};
use crate::metrics::{ConnectionLabels, Metrics, ReloadLabels};
use crate::proxy::{Client, Proxy};

/// Bound listeners and the proxy they serve, ready to run.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<TcpListener>,
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
}

impl Serving {
    fn new(proxy: Proxy) -> Self {
        let config = Arc::clone(proxy.config());
        let limits = &config.server.limits;
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.server.timeouts.header_read.get())
            .max_buf_size(limits.max_header_bytes.as_usize())
            .max_headers(limits.max_headers);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes.get()).unwrap_or(u32::MAX));
        Self { proxy, http }
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
        if config.server.listen != running.server.listen {
            return Err(format!(
                "{}: server.listen changed ({:?} -> {:?}); listeners change only with a restart",
                path.display(),
                running.server.listen,
                config.server.listen
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
        Ok(Serving::new(proxy))
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
            admin,
            state: Arc::new(State {
                serving: ArcSwap::from_pointee(Serving::new(proxy)),
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
            tasks.spawn(accept_loop(listener, Arc::clone(&self.state), stop_rx.clone()));
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
        self.state.draining.store(true, Ordering::Relaxed);
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
        let drained = tokio::time::timeout(
            self.state.current().proxy.config().server.timeouts.shutdown.get(),
            async {
                // HTTP connections drain by themselves; WebSockets are told.
                tokio::join!(
                    async { while tasks.join_next().await.is_some() {} },
                    proxy.proxy.close_websockets(),
                );
            },
        )
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

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let open = state
        .metrics
        .connections
        .get_or_create_owned(&ConnectionLabels { kind: "client" });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small writes (response heads) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let client = Client { peer, proto: "http" };
                    let for_requests = Arc::clone(&state);
                    // Each request takes the config serving when it starts,
                    // so keep-alive connections follow reloads.
                    let service = service_fn(move |req| {
                        let serving = for_requests.current();
                        async move { Ok::<_, Infallible>(serving.proxy.handle(req, client).await) }
                    });
                    let conn = state
                        .current()
                        .http
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    let open = open.clone();
                    open.inc();
                    tokio::spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(%peer, error = %err, "client connection ended with an error");
                        }
                        open.dec();
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
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "draining open connections");
    }
    graceful.shutdown().await;
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
