//! Keep-alive HTTP/1.1 connections to an upstream's endpoints, spoken by
//! our own client ([`super::h1`]) inside the request's task.
//!
//! hyper's client drives each connection from a task of its own and hands
//! requests and responses over through channels: per request a wake-up of
//! that task, a channel round trip, and a fresh read buffer, because the
//! last one is still shared with header values in flight. Here the
//! request's own task writes the request and reads the response on a pooled
//! socket, and a connection's buffer is reused once the previous response
//! has gone. The response body carries the connection and puts it back in
//! the idle list as soon as the body's end has been read.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::h1::{self, Decoded, Decoder, Framing, Malformed};
use super::{Counted, Destination, Opened, PoolError, Stream};
use crate::body::{BoxBody, BoxError};

/// A connection's read buffer: what one read asks for at most, and the
/// room below which the buffer is grown (or reclaimed) before a read.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ: usize = 1024;

/// Body bytes gathered into one write while the body has them ready.
const MAX_WRITE: usize = 64 * 1024;

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
    idle_timeout: Duration,
    max_idle: usize,
    /// By endpoint. Every request looks its endpoint up here twice (to take
    /// a connection and to put it back), by the hash its [`Destination`] keeps.
    idle: Mutex<HashMap<Destination, Vec<Idle>, rustc_hash::FxBuildHasher>>,
    /// Whether the pool is used from a current-thread runtime (see
    /// [`requeue`]).
    current_thread: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection to an endpoint, with the buffers it keeps between
/// requests.
struct Conn {
    io: Stream,
    /// Bytes read and not yet taken. Header values and body frames are
    /// split off it and share its memory; once they are gone, a later read
    /// reuses the same allocation.
    buf: BytesMut,
    /// The request being written.
    out: Vec<u8>,
    _open: Opened,
}

impl Conn {
    fn new(io: Stream, open: Opened) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(1024),
            _open: open,
        }
    }

    /// Reads what the socket has into `buf`: `Ok(0)` when the backend has
    /// closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            // Reclaims the buffer's memory when nothing else holds it.
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether an idle connection can carry a request: still open, and
    /// nothing unasked for has arrived on it. Costs no system call unless
    /// the socket has signalled something since it was last read.
    fn is_usable(&mut self) -> bool {
        self.buf.is_empty() && self.poll_fill(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    /// Reads until a final response head (1xx heads are skipped), whose
    /// headers go into `spare`'s map, or are kept raw when `raw` allows
    /// (see [`h1::parse_head`]). The head goes into `head`, where the
    /// caller builds the response from it: handed up by value, hundreds of
    /// bytes, it was copied at each step.
    async fn read_head(
        &mut self,
        spare: &mut HeaderMap,
        raw: bool,
        head: &mut Option<h1::Head>,
    ) -> Result<(), Failure> {
        let mut answered = !self.buf.is_empty();
        poll_fn(|cx| self.poll_head(cx, spare, raw, &mut answered, head)).await
    }

    /// [`Conn::read_head`], one poll at a time. `answered` says whether any
    /// of the response has come: a connection closed (or reset) before that
    /// is one the backend gave up while it was idle.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        spare: &mut HeaderMap,
        raw: bool,
        answered: &mut bool,
        head: &mut Option<h1::Head>,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if self.take_head(spare, raw, head)? {
                return Poll::Ready(Ok(()));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) if !*answered => return Poll::Ready(Err(Failure::Closed)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failure::Malformed(Malformed(
                        "the backend closed the connection inside the response head".into(),
                    ))));
                }
                Poll::Ready(Ok(_)) => *answered = true,
                Poll::Ready(Err(e)) if !*answered && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Err(Failure::Closed));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Puts the final response head into `out` if `buf` holds one (and
    /// says so); interim (1xx) heads before it are dropped, as a
    /// `100 Continue` answers only us.
    fn take_head(&mut self, spare: &mut HeaderMap, raw: bool, out: &mut Option<h1::Head>) -> Result<bool, Failure> {
        // Nothing read yet (the first poll, and each wake-up before a
        // read): nothing to parse.
        while !self.buf.is_empty() {
            let Some(head) = h1::parse_head(&mut self.buf, spare, raw)? else {
                return Ok(false);
            };
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // Upgrades go on connections of their own (see `proxy::websocket`).
                return Err(Failure::Malformed(Malformed(
                    "an unasked-for 101 Switching Protocols".into(),
                )));
            }
            if !head.status.is_informational() {
                *out = Some(head);
                return Ok(true);
            }
            if head.raw.is_none() {
                *spare = head.headers;
            }
        }
        Ok(false)
    }
}

/// Why an exchange on a connection failed.
#[derive(Debug)]
enum Failure {
    /// The backend closed the connection before any of the response.
    Closed,
    Io(io::Error),
    Malformed(Malformed),
    /// The request body failed.
    Body(BoxError),
}

impl From<Malformed> for Failure {
    fn from(m: Malformed) -> Self {
        Self::Malformed(m)
    }
}

impl Failure {
    fn into_pool_error(self) -> PoolError {
        match self {
            Self::Closed => PoolError::Protocol("the backend closed the connection before responding".into()),
            Self::Io(e) => PoolError::Protocol(format!("upstream connection failed: {e}")),
            Self::Malformed(m) => PoolError::Protocol(m.0),
            Self::Body(e) => {
                super::request_body_error(&*e).unwrap_or_else(|| PoolError::RequestBody(super::chain(&*e)))
            }
        }
    }
}

/// How far the request got before the response head arrived.
enum Sent {
    /// All of it.
    Whole,
    /// The backend answered before the body was all sent, with the head
    /// put where the caller asked; the connection cannot be used again.
    Early,
}

impl KeepAlive {
    /// Connections through `connector`, at most `max_idle` idle per
    /// endpoint, closed after `idle_timeout` unused.
    pub(super) fn new(connector: Counted, idle_timeout: Duration, max_idle: usize) -> Self {
        let inner = Arc::new(Inner {
            connector,
            idle_timeout,
            max_idle,
            idle: Mutex::default(),
            current_thread: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        });
        super::sweep_while_alive(&inner, idle_timeout, sweep);
        Self { inner }
    }

    /// Sends the request (`parts` and `body`) to `dest` on an idle
    /// connection, or a new one, and waits for the response head.
    /// `added` are fields written after the request's own. With `raw`, the
    /// response's fields may come beside it as [`h1::RawFields`], its map
    /// then empty.
    pub(super) async fn send(
        &self,
        dest: &Destination,
        mut parts: http::request::Parts,
        mut body: BoxBody,
        added: &[(HeaderName, HeaderValue)],
        raw: bool,
    ) -> Result<(Response<Body>, Option<h1::RawFields>), PoolError> {
        // HTTP/1.1 wants the origin form; Host names the endpoint when the
        // client gave none.
        if !added.iter().any(|(name, _)| name == header::HOST)
            && !parts.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(dest.key().1.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let framing = framing(&parts.method, &parts.headers, &body);
        // The request goes out after the tasks already woken have run, as
        // it did through hyper's connection tasks: on a busy proxy, writes
        // to a backend then come in bursts, and a backend asleep in epoll
        // is woken once per burst, not once per request. On loopback that
        // wake-up is charged to the sender: writing at once cost ~1.5 µs
        // of system time per request with the 3-plugin chain (bench/RESULTS.md).
        if self.inner.current_thread {
            requeue().await;
        } else {
            tokio::task::yield_now().await;
        }
        loop {
            let (mut conn, reused) = match self.take(dest) {
                Some(conn) => (conn, true),
                None => {
                    let (stream, open) = self.inner.connector.open(dest).await?;
                    (Conn::new(stream, open), false)
                }
            };
            conn.out.clear();
            h1::encode_head(&parts.method, target, &parts.headers, added, framing, &mut conn.out);
            let mut consumed = false;
            // An early answer's headers: the request's map must stay whole
            // for a retry while the request is still going out.
            let mut early_headers = HeaderMap::new();
            // The final response head, where the response is built from it.
            let mut head = None;
            let sent = match exchange_start(
                &mut conn,
                &mut body,
                framing,
                &mut consumed,
                &mut early_headers,
                &mut head,
            )
            .await
            {
                Ok(sent) => sent,
                // A pooled connection the backend closed meanwhile: the
                // request goes on another.
                Err(Failure::Io(_) | Failure::Closed) if reused && !consumed => continue,
                Err(e) => return Err(e.into_pool_error()),
            };
            let early = match sent {
                Sent::Early => true,
                // The request's header map, no longer needed, takes the
                // response's headers (it is left alone on failure, for a
                // retry).
                Sent::Whole => match conn.read_head(&mut parts.headers, raw, &mut head).await {
                    Ok(()) => false,
                    // The backend closed an idle connection just as the
                    // request went out, so it most likely never saw it:
                    // a request that may be repeated goes on another
                    // connection (a new one closing the same way is an
                    // error).
                    Err(Failure::Closed) if reused && !consumed && crate::upstream::is_idempotent(&parts.method) => {
                        continue;
                    }
                    Err(e) => return Err(e.into_pool_error()),
                },
            };
            let Some(head) = head.as_mut() else {
                // Both put a head there whenever they end well.
                return Err(PoolError::Protocol("no response head was read".into()));
            };
            let decoder = h1::response_body(&parts.method, head).map_err(|m| PoolError::Protocol(m.0))?;
            let reuse = !early && h1::keeps_alive(head) && decoder != Decoder::UntilClose;
            let mut body = Body {
                conn: Some(conn),
                decoder,
                home: reuse.then(|| (Arc::downgrade(&self.inner), dest.clone())),
                failed: None,
            };
            if body.decoder.is_done() {
                body.finish();
            }
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            match &head.raw {
                None => *response.headers_mut() = std::mem::take(&mut head.headers),
                Some(_) => {
                    // The request's map goes back to the server for its
                    // next request, as a response's map would.
                    parts.headers.clear();
                    *response.headers_mut() = std::mem::take(&mut parts.headers);
                }
            }
            return Ok((response, head.raw.take()));
        }
    }

    /// The most recently used idle connection to `dest` that can carry a
    /// request.
    fn take(&self, dest: &Destination) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(dest)?.pop()?.conn
            };
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }
}

/// Lets the tasks already woken run first, on a current-thread runtime
/// by going to the back of its run queue (tokio reschedules a task that
/// woke itself while being polled as a yield: `task/harness.rs`).
/// tokio's `yield_now` holds a task back until the queue is empty and the
/// driver has been polled: one more `epoll_wait` per request where
/// connections are few (0.90 per request at 10 connections; nginx makes
/// 0.56), and the request waits behind every connection that poll finds
/// ready. Against it (bench/RESULTS.md, session 27): p99 over nginx's at
/// 10/50/200 connections 1.12/1.34/1.08× became 1.02/1.07/0.97×, and the
/// 3-plugin chain 0.6–1.4 µs cheaper per request. A multi-thread runtime
/// keeps `yield_now`: there a yield also wakes a parked worker to come and
/// steal, and with two workers requeueing cost +1.4 µs per request at 10
/// connections (lower in 3 of 8 rounds; session 27).
async fn requeue() {
    let mut queued = false;
    poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// How the request body will be framed: by its exact length when known
/// (the client's `Content-Length` is what hyper's server says the body is),
/// chunked otherwise, and nothing for no body.
fn framing(method: &Method, headers: &HeaderMap, body: &BoxBody) -> Framing {
    if body.is_end_stream() {
        // A method that means something with content says that there is
        // none (RFC 9110 §8.6); a GET's empty body goes unmentioned.
        let expects_content = *method == Method::POST || *method == Method::PUT || *method == Method::PATCH;
        return if expects_content || headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Length(0)
        } else {
            Framing::None
        };
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Writes the request (head already in `conn.out`) and its body. The
/// socket is watched meanwhile: a backend may answer before the body is
/// all sent (a 413, say), and then waits for nothing more.
async fn exchange_start(
    conn: &mut Conn,
    body: &mut BoxBody,
    framing: Framing,
    consumed: &mut bool,
    spare: &mut HeaderMap,
    head: &mut Option<h1::Head>,
) -> Result<Sent, Failure> {
    let mut written = 0;
    let mut body_done = framing != Framing::Chunked && framing.length() == 0;
    let mut left = framing.length();
    let mut answered = !conn.buf.is_empty();
    poll_fn(|cx| {
        loop {
            // Gather what the body has ready into one write.
            while !body_done && conn.out.len() < MAX_WRITE {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        *consumed = true;
                        body_done = put_frame(frame, framing, &mut left, &mut conn.out)?;
                    }
                    Poll::Ready(None) => {
                        *consumed = true;
                        body_done = true;
                        match framing {
                            Framing::Chunked => h1::encode_last_chunk(None, &mut conn.out),
                            _ if left != 0 => {
                                return Poll::Ready(Err(Failure::Body("the request body ended early".into())));
                            }
                            _ => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *consumed = true;
                        return Poll::Ready(Err(Failure::Body(e)));
                    }
                    Poll::Pending => break,
                }
            }
            if written < conn.out.len() {
                match Pin::new(&mut conn.io).poll_write(cx, &conn.out[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Failure::Io(io::ErrorKind::WriteZero.into()))),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        if written == conn.out.len() {
                            conn.out.clear();
                            written = 0;
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Io(e))),
                    Poll::Pending => {}
                }
            } else if body_done {
                // TLS holds written bytes until flushed.
                return match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(Sent::Whole)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Failure::Io(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
            // Waiting for the socket or the body: has the backend answered?
            // (A 100 Continue, or part of a head, leaves us sending.)
            // An early answer is rare: its fields go into a map.
            return conn
                .poll_head(cx, spare, false, &mut answered, head)
                .map_ok(|()| Sent::Early);
        }
    })
    .await
}

/// Encodes one frame of the request body; true when it ended the body
/// (its length reached, or a chunked body's trailers).
fn put_frame(frame: Frame<Bytes>, framing: Framing, left: &mut u64, out: &mut Vec<u8>) -> Result<bool, Failure> {
    match frame.into_data() {
        Ok(data) => match framing {
            Framing::Chunked => h1::encode_chunk(&data, out),
            _ => {
                let Some(rest) = left.checked_sub(data.len() as u64) else {
                    return Err(Failure::Body("the request body is longer than its length".into()));
                };
                *left = rest;
                out.extend_from_slice(&data);
                return Ok(rest == 0);
            }
        },
        // Trailers end a chunked body; with a length they have no place.
        Err(frame) => {
            if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                h1::encode_last_chunk(Some(&trailers), out);
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A response body read from a pooled connection; the connection goes
/// back to the pool once the body's end has been read, and closes if the
/// body is dropped before that.
pub(crate) struct Body {
    conn: Option<Conn>,
    decoder: Decoder,
    /// Where the connection goes back to, if it may be used again.
    home: Option<(Weak<Inner>, Destination)>,
    /// A failure waiting to be reported (see [`Body::fail`]).
    failed: Option<BoxError>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl Body {
    /// The body is over: its connection goes back to the idle list, unless
    /// it cannot carry another request.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        let (Some(conn), Some((pool, key))) = (self.conn.take(), self.home.take()) else {
            return;
        };
        // Bytes past the response's end: the backend is not speaking
        // HTTP/1.1 as it must, and the connection is not trusted again.
        if !conn.buf.is_empty() {
            return;
        }
        let Some(inner) = pool.upgrade() else { return };
        let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = match idle.get_mut(&key) {
            Some(list) => list,
            None => idle.entry(key).or_default(),
        };
        if list.len() < inner.max_idle {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A failure ends the body and closes its connection. It is reported
    /// at the next poll, not this one: hyper's server drops what it has not
    /// yet written when a body fails, and the client should still get the
    /// head and the bytes that came before the failure.
    fn fail(&mut self, err: BoxError, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.home = None;
        self.failed = Some(err);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(err) = this.failed.take() {
            this.decoder = Decoder::Done;
            return Poll::Ready(Some(Err(err)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(m) => return this.fail(Box::new(m), cx),
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => match this.decoder.eof() {
                    Ok(_) => {
                        // A body that ran until the close: over, and the
                        // connection with it.
                        this.home = None;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Err(m) => return this.fail(Box::new(m), cx),
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(Box::new(e), cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Closes connections idle past the timeout, and those the backend closed.
fn sweep(inner: &Inner) {
    let now = Instant::now();
    let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
    for list in idle.values_mut() {
        list.retain_mut(|c| now.duration_since(c.since) < inner.idle_timeout && c.conn.is_usable());
    }
    idle.retain(|_, list| !list.is_empty());
}
