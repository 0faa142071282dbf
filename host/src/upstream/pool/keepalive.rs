//! Keep-alive HTTP/1.1 connections to an upstream's endpoints.
//!
//! hyper-util's pooled client does this too, but for every request it
//! builds a checkout-or-connect race, a watch channel to report the
//! connection, and a task that waits for the connection to be free again.
//! Here a connection is taken from the endpoint's idle list, and put back
//! when the response that used it is over; whether it is free again is
//! checked when it is next taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};

use super::{Counted, Key, PoolError};
use crate::body::BoxBody;

/// Idle connections per endpoint; cheap to clone.
#[derive(Clone)]
pub(super) struct KeepAlive {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("max_idle", &self.inner.max_idle)
            .finish_non_exhaustive()
    }
}

struct Inner {
    connector: Counted,
    builder: Builder,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

struct Idle {
    send: SendRequest<BoxBody>,
    since: Instant,
}

/// A connection lent to one request, given back to the pool when dropped
/// (with the response body) unless it was poisoned.
pub(super) struct Lease {
    send: Option<SendRequest<BoxBody>>,
    key: Key,
    pool: Weak<Inner>,
    poisoned: AtomicBool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Lease {
    /// Keeps the connection out of the pool: it closes when dropped.
    pub(super) fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(send) = self.send.take() else { return };
        if self.poisoned.load(Ordering::Relaxed) || send.is_closed() {
            return;
        }
        let Some(inner) = self.pool.upgrade() else { return };
        let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.key.clone()).or_default();
        // A response dropped before its end leaves a connection hyper will
        // close; `take` finds that out, so it may go in the list for now.
        if list.len() < inner.max_idle {
            list.push(Idle {
                send,
                since: Instant::now(),
            });
        }
    }
}

impl KeepAlive {
    /// Connections through `connector`, at most `max_idle` idle per
    /// endpoint, closed after `idle_timeout` unused.
    pub(super) fn new(connector: Counted, builder: Builder, idle_timeout: Duration, max_idle: usize) -> Self {
        let inner = Arc::new(Inner {
            connector,
            builder,
            idle_timeout,
            max_idle,
            idle: Mutex::default(),
        });
        super::sweep_while_alive(&inner, idle_timeout, sweep);
        Self { inner }
    }

    /// Sends `req` (whose URI names the endpoint) on an idle connection,
    /// or a new one, and waits for the response head.
    pub(super) async fn send(
        &self,
        mut req: http::Request<BoxBody>,
    ) -> Result<(http::Response<Incoming>, Lease), PoolError> {
        let key = super::key(req.uri())?;
        // HTTP/1.1 wants the origin form; Host names the endpoint when the
        // client gave none.
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(key.1.as_str())
        {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(origin);
        loop {
            let (mut send, reused) = match self.take(&key).await {
                Some(send) => (send, true),
                None => (self.connect(&key).await?, false),
            };
            match send.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease {
                        send: Some(send),
                        key,
                        pool: Arc::downgrade(&self.inner),
                        poisoned: AtomicBool::new(false),
                    };
                    return Ok((response, lease));
                }
                // A pooled connection that closed before the request went
                // out gives it back: it goes on another connection.
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(super::classify_error(err.error(), false)),
                },
            }
        }
    }

    /// The most recently used idle connection to `key` that is still open
    /// and free.
    async fn take(&self, key: &Key) -> Option<SendRequest<BoxBody>> {
        loop {
            let mut send = {
                let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(key)?.pop()?.send
            };
            // Free once hyper has finished the previous response on it;
            // closed if the endpoint hung up or that response was cut short.
            if send.ready().await.is_ok() {
                return Some(send);
            }
        }
    }

    async fn connect(&self, key: &Key) -> Result<SendRequest<BoxBody>, PoolError> {
        let io = super::open(self.inner.connector.clone(), key).await?;
        let (send, connection) = self
            .inner
            .builder
            .handshake(io)
            .await
            .map_err(|e| super::classify_error(&e, false))?;
        super::drive(connection);
        Ok(send)
    }
}

/// Closes connections idle past the timeout, and drops closed ones.
fn sweep(inner: &Inner) {
    let now = Instant::now();
    let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
    for list in idle.values_mut() {
        list.retain(|c| !c.send.is_closed() && now.duration_since(c.since) < inner.idle_timeout);
    }
    idle.retain(|_, list| !list.is_empty());
}
