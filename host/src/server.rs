//! Listeners: accept connections, speak HTTP/1.1 and HTTP/2 on each, and
//! shut down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError};
use crate::proxy::{Client, Proxy};

/// Bound listeners and the proxy they serve, ready to run.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<TcpListener>,
    proxy: Arc<Proxy>,
    http: auto::Builder<TokioExecutor>,
    shutdown_timeout: Duration,
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

impl Server {
    /// Loads a validated config (plugins included) and binds every
    /// `server.listen` address.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let proxy = Proxy::build(config).await?;
        let mut listeners = Vec::with_capacity(config.server.listen.len());
        for &addr in &config.server.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(listener);
        }
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
        Ok(Self {
            listeners,
            proxy: Arc::new(proxy),
            http,
            shutdown_timeout: config.server.timeouts.shutdown.get(),
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish for up to `server.timeouts.shutdown`, and
    /// returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(());
        let mut tasks = JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening");
            }
            tasks.spawn(accept_loop(
                listener,
                Arc::clone(&self.proxy),
                self.http.clone(),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        let started = Instant::now();
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        drop(stop_tx);
        let proxy = Arc::clone(&self.proxy);
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            // HTTP connections drain by themselves; WebSockets are told.
            tokio::join!(
                async { while tasks.join_next().await.is_some() {} },
                proxy.close_websockets(),
            );
        })
        .await;
        match drained {
            Ok(()) => tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "shutdown complete"),
            Err(_) => tracing::warn!(
                timeout = ?self.shutdown_timeout,
                "shutdown deadline reached; closing connections that are still busy"
            ),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    http: auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small writes (response heads) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let client = Client { peer, proto: "http" };
                    let proxy = Arc::clone(&proxy);
                    let service = service_fn(move |req| {
                        let proxy = Arc::clone(&proxy);
                        async move { Ok::<_, Infallible>(proxy.handle(req, client).await) }
                    });
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(%peer, error = %err, "client connection ended with an error");
                        }
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
