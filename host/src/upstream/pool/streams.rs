//! HTTP/2 connections to an upstream's endpoints, with a cap on the streams
//! each one carries.
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per endpoint and
//! puts every request on it, however many there are. A backend that
//! advertises a low `SETTINGS_MAX_CONCURRENT_STREAMS`, or a single
//! connection's flow-control window, then becomes a queue. Here each
//! connection carries at most `max_streams` requests at once and another
//! is opened when all are full, as Envoy's `max_concurrent_streams` does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::TokioExecutor;

use super::{Counted, Destination, PoolError};
use crate::body::BoxBody;

/// A connection being opened, or opened: every request that picked it
/// waits on the same handshake.
type Connecting = Shared<BoxFuture<'static, Result<SendRequest<BoxBody>, PoolError>>>;

/// HTTP/2 connections per endpoint; cheap to clone.
#[derive(Clone)]
pub(super) struct Streams {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("max_streams", &self.inner.max_streams)
            .finish_non_exhaustive()
    }
}

struct Inner {
    connector: Counted,
    builder: Builder<TokioExecutor>,
    max_streams: usize,
    idle_timeout: Duration,
    max_idle: usize,
    endpoints: Mutex<HashMap<Destination, Vec<Arc<Slot>>, rustc_hash::FxBuildHasher>>,
}

/// One connection and the streams it carries now.
struct Slot {
    connecting: Connecting,
    active: AtomicUsize,
    /// When `active` last fell to zero, for the idle timeout.
    idle_since: Mutex<Instant>,
}

impl Slot {
    /// Whether the connection failed to open or has closed since.
    fn is_dead(&self) -> bool {
        match self.connecting.peek() {
            Some(Ok(send)) => send.is_closed(),
            Some(Err(_)) => true,
            None => false,
        }
    }

    fn is_idle_for(&self, timeout: Duration, now: Instant) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && now.duration_since(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner())) >= timeout
    }
}

/// One stream's place on a connection, given back when dropped: it goes
/// with the response body, so a stream counts until its body is over.
#[derive(Debug)]
pub(super) struct StreamGuard {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.slot.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.slot.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

impl Streams {
    /// Connections through `connector`, each carrying at most `max_streams`
    /// requests, closed after `idle_timeout` without one; at most
    /// `max_idle` without a request are kept per endpoint.
    pub(super) fn new(
        connector: Counted,
        builder: Builder<TokioExecutor>,
        max_streams: usize,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let inner = Arc::new(Inner {
            connector,
            builder,
            max_streams: max_streams.max(1),
            idle_timeout,
            max_idle,
            endpoints: Mutex::default(),
        });
        super::sweep_while_alive(&inner, idle_timeout, sweep);
        Self { inner }
    }

    /// Sends `req` to `dest` on a connection with a free stream, opening
    /// one if none has.
    pub(super) async fn send(
        &self,
        dest: &Destination,
        mut req: http::Request<BoxBody>,
    ) -> Result<(http::Response<Incoming>, StreamGuard), PoolError> {
        // A connection that closed between the checkout and the send gives
        // the request back unsent: it goes on another connection, once.
        let mut retried = false;
        loop {
            let guard = self.checkout(dest);
            let mut send = guard.slot.connecting.clone().await?;
            match send.try_send_request(req).await {
                Ok(response) => return Ok((response, guard)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(super::classify_error(err.error(), false)),
                },
            }
        }
    }

    /// A stream on the first connection to `dest` with room for one, or on a
    /// new connection.
    fn checkout(&self, dest: &Destination) -> StreamGuard {
        let inner = &self.inner;
        let mut endpoints = inner.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let slots = endpoints.entry(dest.clone()).or_default();
        slots.retain(|s| !s.is_dead());
        // Filling the oldest connections first leaves the newest to fall
        // idle and close when the load drops.
        let found = slots
            .iter()
            .find(|s| {
                s.active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < inner.max_streams).then_some(n + 1)
                    })
                    .is_ok()
            })
            .cloned();
        let slot = found.unwrap_or_else(|| {
            let slot = Arc::new(Slot {
                connecting: connect(inner, dest).shared(),
                active: AtomicUsize::new(1),
                idle_since: Mutex::new(Instant::now()),
            });
            slots.push(Arc::clone(&slot));
            slot
        });
        StreamGuard { slot }
    }
}

/// Opens a connection to `dest` and hands its driver to the runtime.
fn connect(inner: &Inner, dest: &Destination) -> BoxFuture<'static, Result<SendRequest<BoxBody>, PoolError>> {
    let connector = inner.connector.clone();
    let builder = inner.builder.clone();
    let dest = dest.clone();
    async move {
        let io = super::open(connector, &dest).await?;
        let (send, connection) = builder
            .handshake(io)
            .await
            .map_err(|e| super::classify_error(&e, false))?;
        super::drive(connection);
        Ok(send)
    }
    .boxed()
}

/// Drops the dead connections, those idle past the timeout, and idle ones
/// beyond `max_idle`. Dropping a connection's last handle closes it.
fn sweep(inner: &Inner) {
    let now = Instant::now();
    let mut endpoints = inner.endpoints.lock().unwrap_or_else(|e| e.into_inner());
    for slots in endpoints.values_mut() {
        let mut idle = 0;
        slots.retain(|s| {
            if s.is_dead() || s.is_idle_for(inner.idle_timeout, now) {
                return false;
            }
            if s.active.load(Ordering::Acquire) == 0 {
                idle += 1;
                return idle <= inner.max_idle;
            }
            true
        });
    }
    endpoints.retain(|_, slots| !slots.is_empty());
}
