//! HTTP/1.1 from clients on plain listeners, served in the connection's own
//! task: each request head is parsed straight out of the connection's
//! buffer, the proxy is called, and the response head and a small body go
//! out in one write. hyper's server made a read buffer and a boxed timer
//! per request and handed each one through its dispatcher.
//!
//! What this path does not take — HTTP/2's preface, HTTP/1.0, `CONNECT`,
//! upgrades, `Expect`, `Transfer-Encoding`, several `Content-Length`s, no
//! `Host` or several, anything malformed or oversized — is handed over,
//! with every byte already read, to hyper for the rest of the connection,
//! which answers it as it always has (400, 414, 431, a WebSocket upgrade,
//! h2c …). So there is one parser of record for the hard cases, and this
//! one only has to recognise the plain ones.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body::{Body as _, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{State, spare};
use crate::body::RequestBody;
use crate::deadline::Slot;
use crate::proxy::{Client, REQUEST_ID, Served, has_token_in};
use crate::upstream::h1;

/// The read buffer's size; a request head of ordinary size arrives in one
/// read.
const READ_SIZE: usize = 8 * 1024;

/// Room below which the read buffer is grown (or reclaimed) before a read.
const MIN_READ: usize = 1024;

/// Header lines parsed on the stack; a limit above this is left to hyper.
const HEADER_SLOTS: usize = 128;

/// Response bytes gathered before they are written.
const MAX_WRITE: usize = 64 * 1024;

/// Body frames larger than this are written from their own memory rather
/// than copied behind the head.
const COPY_LIMIT: usize = 8 * 1024;

/// How long, and how many bytes, a closing connection reads and drops
/// while the client is still sending.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Request body bytes read from the socket at a time.
const BODY_READ: usize = 16 * 1024;

/// What a client that sent part of a head and then stalled is told
/// (RFC 9110 §15.5.9).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nproxy-status: plumeway; error=http_request_error\r\n\r\n";

/// A client connection's socket, shared by its task and the body of the
/// request in flight.
#[derive(Debug)]
pub(super) struct Socket {
    pub(super) io: TcpStream,
    /// Body bytes the last request's body left unread when it was dropped.
    body_left: AtomicU64,
}

impl Socket {
    pub(super) fn new(io: TcpStream) -> Self {
        Self {
            io,
            body_left: AtomicU64::new(0),
        }
    }

    /// Answers a client that started a head and stalled with 408, and
    /// closes the connection. Non-blocking: an empty send buffer takes the
    /// answer whole, and a client that cannot take 150 bytes loses nothing.
    pub(super) fn answer_timeout(&self) {
        let _ = self.io.try_write(REQUEST_TIMEOUT);
        let _ = socket2::SockRef::from(&self.io).shutdown(std::net::Shutdown::Both);
    }
}

/// How a connection's time on this path ended.
pub(super) enum Ended {
    /// The connection is over.
    Closed,
    /// hyper takes the connection from here, starting with these bytes.
    HandOver(Arc<Socket>, BytesMut),
}

/// Serves requests on `socket` until the connection ends or needs hyper.
pub(super) async fn serve(
    socket: Arc<Socket>,
    mut client: Client,
    state: &Arc<State>,
    mut stop: watch::Receiver<()>,
) -> Ended {
    // One wait on the server's stop for the connection's life: a wait made
    // and dropped per request cost a waiter-list insert and remove each
    // time. The sender is only ever dropped, so it resolves once, at
    // shutdown.
    // Outside tokio's budget: a wait polled when the task's budget has run
    // out would be told to yield without being armed, and it is polled
    // only once (see `Stop`).
    let mut stop = Stop {
        changed: pin!(tokio::task::coop::unconstrained(stop.changed())),
        draining: &state.draining,
        waiting: false,
        stopped: false,
    };
    // The deadline of the request in flight is kept by `timer` below.
    let slot = Arc::new(Slot::new());
    client.deadline = Some(Arc::clone(&slot));
    client.own_http1 = true;
    // No memory until there is a request to read (see `spare`).
    let mut conn = Conn {
        socket,
        buf: BytesMut::new(),
        out: Vec::new(),
    };
    let header_read = state.current().proxy.config().server.timeouts.header_read.get();
    // One timer for the connection's life, moved only when it fires
    // early: re-arming it for every request would cost a timer-wheel
    // insert and remove per request. While a request is in flight it
    // serves that request's upstream deadline (see `crate::deadline`).
    let mut timer = pin!(tokio::time::sleep(header_read));
    loop {
        let limits = {
            let serving = state.serving.load();
            let server = &serving.proxy.config().server;
            Limits {
                head: server.limits.max_header_bytes.as_usize(),
                headers: server.limits.max_headers,
                deadline: Instant::now() + server.timeouts.header_read.get(),
            }
        };
        // The backend's fields, when they are passed on as it wrote them.
        let mut raw = None;
        let serving;
        let (mut handled, head, keep_alive, has_body) = {
            // The parsed request is bound in this block, which ends before
            // the next await: bound in the loop's body, it would be kept in
            // the connection's future as well, hundreds of bytes more to
            // write and read per request.
            let Parsed {
                req,
                keep_alive,
                has_body,
            } = match conn.next_request(&limits, timer.as_mut(), &mut stop).await {
                Next::Request(parsed) => parsed,
                Next::HandOver => return Ended::HandOver(conn.socket, conn.buf),
                Next::Closed => return Ended::Closed,
                Next::TimedOut => {
                    if conn.buf.is_empty() {
                        conn.close();
                    } else {
                        conn.socket.answer_timeout();
                    }
                    return Ended::Closed;
                }
            };
            let head = req.method() == Method::HEAD;
            serving = state.current();
            // The request's future, kilobytes, is made in place in memory
            // of its own, freed as soon as the response is ready. In the
            // connection's future it made every idle connection ~7 KiB
            // larger, and at 200 busy connections its lines had gone cold
            // by the time the connection sent again (bench/RESULTS.md,
            // session 24). Made inside `Box::write`'s call: made first and
            // then moved, it is copied whole.
            let handled = Box::into_pin(Box::write(
                Box::new_uninit(),
                serving.proxy.handle(req, &client, &mut raw),
            ));
            (handled, head, keep_alive, has_body)
        };
        // The response, hundreds of bytes, is put where it stays until it
        // is written: handed from one future to another, it would be
        // copied at each step.
        let written = {
            let mut answered = None;
            let mut armed = None;
            poll_fn(|cx| {
                let deadline = (&*slot, &mut armed);
                conn.poll_answered(cx, handled.as_mut(), !has_body, timer.as_mut(), deadline, &mut answered)
            })
            .await;
            drop(handled);
            slot.clear();
            let Some(resp) = answered.as_mut() else {
                // The client went away: dropping the request's future
                // cancels its upstream exchange.
                conn.close();
                return Ended::Closed;
            };
            drop(serving);
            conn.respond(resp, raw, head, keep_alive).await
            // The response's body goes here, where it lies (its end is
            // logged, what it holds let go), not after a lingering close.
        };
        let Ok(reusable) = written else {
            conn.close();
            return Ended::Closed;
        };
        // The request's body must be over, or the next head would be read
        // from the middle of it.
        let body_over = Arc::strong_count(&conn.socket) == 1 && conn.socket.body_left.load(Ordering::Relaxed) == 0;
        let stopping = poll_fn(|cx| Poll::Ready(stop.poll(cx))).await;
        if !(reusable && body_over) || stopping {
            if body_over && conn.buf.is_empty() {
                conn.close();
            } else {
                conn.close_lingering().await;
            }
            return Ended::Closed;
        }
    }
}

/// The server's stop, as one connection waits on it.
struct Stop<'a, F> {
    changed: Pin<&'a mut F>,
    /// Set before the stop is sent (see `Server::serve`), so reading it
    /// tells as much as polling `changed` would.
    draining: &'a AtomicBool,
    /// `changed` has been polled once: it holds the connection task's
    /// waker, which is the same for every poll of this task, and wakes
    /// it at the stop. Each poll of it takes the lock of tokio's waiter
    /// list; polled twice per request, that was 1.3% of a request's
    /// instructions.
    waiting: bool,
    /// It has come.
    stopped: bool,
}

impl<F: Future> Stop<'_, F> {
    /// Whether the server is stopping; if not, the task `cx` belongs to
    /// is woken when it does.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.stopped && !self.waiting {
            self.waiting = true;
            self.stopped = self.changed.as_mut().poll(cx).is_ready();
        }
        self.stopped = self.stopped || self.draining.load(Ordering::Acquire);
        self.stopped
    }
}

/// A connection on this path, with the buffers of the request in hand.
/// Between requests they go back to the thread's spares (see `spare`).
struct Conn {
    socket: Arc<Socket>,
    /// Bytes read and not yet taken. Header values share its memory; once
    /// they are gone, the next read reuses the same allocation.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
}

/// The limits of one head's read, from the config serving when it starts.
struct Limits {
    head: usize,
    headers: usize,
    deadline: Instant,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once: boxing the head would cost an allocation per request"
)]
enum Next {
    Request(Parsed),
    HandOver,
    Closed,
    TimedOut,
}

/// A request head as this path takes it.
struct Parsed {
    req: Request<RequestBody>,
    keep_alive: bool,
    has_body: bool,
}

/// What the flags of a head's headers say about its framing.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    lengths: u32,
    /// `Host` fields: a head without exactly one is refused on hyper's
    /// path, where the proxy checks it (see `proxy::validate`).
    hosts: u32,
    /// Something only hyper handles: `Transfer-Encoding`, `Upgrade`,
    /// `Expect`, or a `Content-Length` that is not one plain number.
    other: bool,
    /// What `Connection` said of the connection itself.
    connection: h1::Connection,
}

impl Conn {
    /// Reads what the socket has into `buf`: `Ok(0)` when the client has
    /// closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let buf = &mut self.buf;
        let wanted = if buf.capacity() == 0 {
            // A spare buffer has at least this much room.
            READ_SIZE
        } else {
            if buf.capacity() - buf.len() < MIN_READ {
                // Reclaims the buffer's memory when nothing else holds it.
                buf.reserve(READ_SIZE);
            }
            buf.capacity() - buf.len()
        };
        poll_read_shared(&self.socket.io, cx, wanted, |s| {
            // Taken only once the socket has something to read: waiting
            // for a request holds no buffer.
            if buf.capacity() == 0 {
                *buf = spare::read_buffer(READ_SIZE);
            }
            s.try_read_buf(buf)
        })
    }

    /// Waits for the next complete request head.
    async fn next_request(
        &mut self,
        limits: &Limits,
        mut timer: Pin<&mut Sleep>,
        stop: &mut Stop<'_, impl Future>,
    ) -> Next {
        // The last request's deadline may have moved the timer past this
        // head's.
        if timer.deadline() > limits.deadline {
            timer.as_mut().reset(limits.deadline);
        }
        poll_fn(|cx| {
            loop {
                if !self.buf.is_empty() {
                    match self.parse(limits) {
                        Ok(Some(parsed)) => return Poll::Ready(Next::Request(parsed)),
                        Ok(None) if self.buf.len() > limits.head => return Poll::Ready(Next::HandOver),
                        Ok(None) => {}
                        Err(HandOver) => return Poll::Ready(Next::HandOver),
                    }
                }
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Next::Closed),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => break,
                }
            }
            // Shutdown closes a connection between requests at once.
            if self.buf.is_empty() && stop.poll(cx) {
                return Poll::Ready(Next::Closed);
            }
            while timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= limits.deadline {
                    return Poll::Ready(Next::TimedOut);
                }
                timer.as_mut().reset(limits.deadline);
            }
            // Waiting for the next request: its buffer goes back to the
            // spares, for a connection that has one to read.
            spare::give_read(&mut self.buf, READ_SIZE);
            Poll::Pending
        })
        .await
    }

    /// Takes a complete head off the front of `buf`: `Ok(None)` while it is
    /// incomplete, `Err(HandOver)` for anything this path leaves to hyper
    /// (with `buf` untouched).
    fn parse(&mut self, limits: &Limits) -> Result<Option<Parsed>, HandOver> {
        // Where the target, and each name and value, lie in `buf`:
        // httparse's slices borrow it, and the head is split off before
        // values are made from it.
        let mut at: SmallVec<[[u32; 4]; 32]> = SmallVec::new();
        let mut framing = Framing::default();
        let (len, method, target) = {
            // Uninitialised slots: zeroing them for every request would
            // cost more than parsing a small head.
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
            let slots = &mut slots[..limits.headers.min(HEADER_SLOTS)];
            let mut req = httparse::Request::new(&mut []);
            let len =
                match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, &self.buf, slots) {
                    Ok(httparse::Status::Complete(len)) if len <= limits.head => len,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    _ => return Err(HandOver),
                };
            if req.version != Some(1) {
                return Err(HandOver);
            }
            let method = match req.method.map(str::as_bytes) {
                Some(b"GET") => Method::GET,
                Some(b"POST") => Method::POST,
                Some(b"CONNECT") | None => return Err(HandOver),
                Some(other) => Method::from_bytes(other).map_err(|_| HandOver)?,
            };
            // A head is far shorter than 4 GiB (the limit is checked above).
            let base = self.buf.as_ptr() as usize;
            let offset = |p: *const u8| (p as usize - base) as u32;
            let path = req.path.ok_or(HandOver)?;
            let target = offset(path.as_ptr()) as usize..offset(path.as_ptr()) as usize + path.len();
            for h in req.headers.iter() {
                // A `Connection` that only says `keep-alive` or `close` is
                // noted and dropped here: the proxy would strip it anyway.
                if framing.note(h.name.as_bytes(), h.value) {
                    continue;
                }
                let (name, value) = (offset(h.name.as_ptr()), offset(h.value.as_ptr()));
                at.push([name, name + h.name.len() as u32, value, value + h.value.len() as u32]);
            }
            (len, method, target)
        };
        if framing.other || framing.lengths > 1 || framing.hosts != 1 {
            return Err(HandOver);
        }
        let head = self.buf.split_to(len).freeze();
        let built = Uri::from_maybe_shared(head.slice(target))
            .ok()
            .and_then(|uri| self.headers_of(&head, &at).map(|headers| (uri, headers)));
        let Some((uri, headers)) = built else {
            // Put the head back in front of what follows it, for hyper.
            let mut all = BytesMut::with_capacity(head.len() + self.buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&self.buf);
            self.buf = all;
            return Err(HandOver);
        };
        let length = framing.length.unwrap_or(0);
        let body = if length == 0 {
            RequestBody::Empty
        } else {
            let first = self
                .buf
                .split_to(self.buf.len().min(usize::try_from(length).unwrap_or(usize::MAX)))
                .freeze();
            self.socket.body_left.store(length, Ordering::Relaxed);
            RequestBody::Read(ReadBody {
                remaining: length - first.len() as u64,
                first,
                socket: Arc::clone(&self.socket),
            })
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(Some(Parsed {
            req,
            keep_alive: !framing.connection.close,
            has_body: length != 0,
        }))
    }

    /// The head's fields, in a map a response has given back (see
    /// `spare`); `None` if one is not a valid name or value.
    fn headers_of(&mut self, head: &Bytes, at: &[[u32; 4]]) -> Option<HeaderMap> {
        let mut headers = spare::map();
        headers.reserve(at.len());
        for &[n0, n1, v0, v1] in at {
            let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize)).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }

    /// Polls the request's future until its response is in `answered`.
    /// When the request has no body to read, the socket is watched
    /// meanwhile: a client that closes the connection no longer wants the
    /// answer (ready, with `answered` left `None`). The
    /// deadline the request waits on (in the slot) is kept by `timer`;
    /// `armed` is the deadline it was last polled for.
    fn poll_answered<F: Future>(
        &mut self,
        cx: &mut Context<'_>,
        mut handled: Pin<&mut F>,
        watch: bool,
        mut timer: Pin<&mut Sleep>,
        (slot, armed): (&Slot, &mut Option<Instant>),
        answered: &mut Option<F::Output>,
    ) -> Poll<()> {
        let mut fired = false;
        loop {
            if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
                *answered = Some(resp);
                return Poll::Ready(());
            }
            // Told once per wake-up: a request that does not take it now
            // is not waiting on it.
            let Some(at) = slot.wanted().filter(|_| !fired) else {
                break;
            };
            // Polled for this deadline already: it will wake the task.
            if *armed == Some(at) && !timer.is_elapsed() {
                break;
            }
            // Moved earlier only when it must be; when it fires early it
            // is moved on to the deadline.
            if timer.deadline() > at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                *armed = Some(at);
                break;
            }
            *armed = None;
            if Instant::now() >= at {
                slot.fire();
                fired = true;
            } else {
                timer.as_mut().reset(at);
            }
        }
        // Bytes of a pipelined request are kept for later, in the room the
        // buffer has: growing it now would copy it, as the request's header
        // values still share it. Past that the client waits on TCP.
        while watch && self.buf.capacity() - self.buf.len() >= MIN_READ {
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Writes the response: its head, then its body framed by length or in
    /// chunks. `Ok(true)` when the connection may carry another request.
    async fn respond(
        &mut self,
        resp: &mut http::Response<Served>,
        raw: Option<h1::RawFields>,
        head: bool,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        if self.out.capacity() == 0 {
            self.out = spare::write_buffer(1024);
        }
        let mut encoder = self.encode_head(resp, raw.as_ref(), head, &mut keep_alive);
        // The map serves a later request's head. Its values go now: they
        // may share an upstream connection's read buffer, which can be
        // reused only once nothing else holds it.
        spare::give_map(std::mem::take(resp.headers_mut()));
        // Raw fields share the backend connection's read buffer in the same
        // way.
        drop(raw);
        let body = resp.body_mut();
        let mut big = Bytes::new();
        let mut written = 0;
        let mut over = matches!(encoder, Encoder::Length(0));
        let outcome = poll_fn(|cx| {
            loop {
                // Gather what the body has ready.
                while !over && big.is_empty() && self.out.len() < MAX_WRITE {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            let end = body.is_end_stream();
                            over = encoder.put(frame, end, &mut self.out, &mut big)?;
                        }
                        Poll::Ready(None) => over = encoder.finish(&mut self.out)?,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                        Poll::Pending => break,
                    }
                }
                if written < self.out.len() || !big.is_empty() {
                    ready!(self.poll_write_out(cx, &mut written, &mut big))?;
                    continue;
                }
                return if over { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
        })
        .await;
        spare::give_write(std::mem::take(&mut self.out));
        outcome.map(|()| keep_alive)
    }

    /// Writes `out[written..]`, then `big`, until both are out or the
    /// socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, written: &mut usize, big: &mut Bytes) -> Poll<io::Result<()>> {
        let io = &self.socket.io;
        while *written < self.out.len() || !big.is_empty() {
            let n = ready!(poll_io(cx, io, TcpStream::poll_write_ready, |s| {
                let head = &self.out[*written..];
                if big.is_empty() {
                    s.try_write(head)
                } else if head.is_empty() {
                    s.try_write(big)
                } else {
                    s.try_write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(big)])
                }
            }))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_out = n.min(self.out.len() - *written);
            *written += from_out;
            let _ = big.split_to(n - from_out);
        }
        self.out.clear();
        *written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes the status line and headers into `out`, and says how the
    /// body follows. The framing is the same as hyper's server gives: a
    /// `Content-Length` already in the head stands, then the body's exact
    /// size, then chunks; none for HEAD, 1xx, 204 and 304.
    fn encode_head(
        &mut self,
        resp: &http::Response<Served>,
        raw: Option<&h1::RawFields>,
        head: bool,
        keep_alive: &mut bool,
    ) -> Encoder {
        let (status, body) = (resp.status(), resp.body());
        let out = &mut self.out;
        if status == StatusCode::OK {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        } else {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let may_have_length =
            !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED);
        let may_have_body = may_have_length && !head;
        let empty = body.is_end_stream();
        // An empty body's length is dropped as hyper drops it, except for
        // HEAD, where it tells what a GET would get.
        let keeps_length = may_have_length && (head || !empty);
        let mut length = None;
        let mut dated = false;
        // Whether the response's own `Connection` says `close` (an error
        // response that ends the connection): noted in the one pass below.
        let mut said_close = false;
        // The request's id is written from its access record (the proxy
        // leaves it out of the map on this path; see `Client`), in place
        // of any the upstream sent.
        let request_id = body.pending().map(|f| f.request_id());
        if let Some(raw) = raw {
            // A backend's fields, passed on as they came: they hold no
            // `Connection`, no framing and no request id (see `RawFields`).
            // What response filters set comes from the map below.
            raw.put(out);
            if raw.via() {
                out.extend_from_slice(b"via: ");
                out.extend_from_slice(crate::proxy::via_hop(raw.version()).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            dated = raw.dated();
            if keeps_length && let Some(n) = raw.length() {
                length = Some(n);
                put_length(n, out);
            }
        }
        for (name, value) in resp.headers() {
            if name == header::CONNECTION && !said_close {
                said_close = has_token_in(value.as_bytes(), "close");
            }
            if request_id.is_some() && name == REQUEST_ID {
                continue;
            }
            if name == header::CONTENT_LENGTH {
                // Only the first, and only where a length is kept.
                if length.is_none()
                    && keeps_length
                    && let Some(n) = h1::parse_length(value.as_bytes())
                {
                    length = Some(n);
                    h1::put_field(name, value, out);
                }
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                // The framing is ours to choose.
                continue;
            }
            dated |= name == header::DATE;
            h1::put_field(name, value, out);
        }
        let encoder = match (length, body.size_hint().exact()) {
            _ if !may_have_body => Encoder::Length(0),
            (Some(n), _) => Encoder::Length(n),
            (None, _) if empty => {
                out.extend_from_slice(b"content-length: 0\r\n");
                Encoder::Length(0)
            }
            (None, Some(n)) => {
                put_length(n, out);
                Encoder::Length(n)
            }
            (None, None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
        };
        if said_close {
            *keep_alive = false;
        } else if !*keep_alive {
            // RFC 9112 §9.6: the closing side says so.
            out.extend_from_slice(b"connection: close\r\n");
        }
        if let Some(id) = request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !dated {
            out.extend_from_slice(b"date: ");
            put_date(out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        encoder
    }

    /// Ends the connection: the client hears the end of the stream after
    /// what was written, even if a body still holds the socket.
    fn close(&self) {
        let _ = socket2::SockRef::from(&self.socket.io).shutdown(std::net::Shutdown::Write);
    }

    /// Ends the connection after a response, when the client may still be
    /// sending (a body that was not read, pipelined requests): closing a
    /// socket with unread bytes resets it, and a reset can reach the client
    /// before it has read the answer. So the client's bytes are read and
    /// dropped until it closes too, for a moment at most (nginx's
    /// lingering close).
    async fn close_lingering(&mut self) {
        self.close();
        let mut left = LINGER_BYTES;
        let linger = async {
            while left > 0 {
                self.buf.clear();
                match poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

/// Something in the head is hyper's to handle.
struct HandOver;

impl Framing {
    /// Notes a header that bears on framing or on this path; true for a
    /// `Connection` that names no other header, which need not be kept.
    fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |known: &[u8]| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        match name.len() {
            14 if is(b"content-length") => {
                self.lengths += 1;
                match h1::parse_length(value) {
                    Some(n) => self.length = Some(n),
                    None => self.other = true,
                }
            }
            17 if is(b"transfer-encoding") => self.other = true,
            7 if is(b"upgrade") => self.other = true,
            6 if is(b"expect") => self.other = true,
            10 if is(b"connection") => return self.connection.note(value),
            4 if is(b"host") => self.hosts += 1,
            _ => {}
        }
        false
    }
}

/// How the response body goes on the wire.
enum Encoder {
    /// Exactly this many more bytes.
    Length(u64),
    /// In chunks. Trailers are not sent: the proxy drops `Trailer` as a
    /// hop-by-hop header, and hyper's server sends only the trailers a
    /// response's `Trailer` names, so HTTP/1.1 clients never got them.
    Chunked,
}

impl Encoder {
    /// Encodes one body frame (`end` when the body says it is the last);
    /// `Ok(true)` when the body is over. A large frame of a body with a
    /// length is left in `big`, to be written from its own memory.
    fn put(&mut self, frame: Frame<Bytes>, end: bool, out: &mut Vec<u8>, big: &mut Bytes) -> io::Result<bool> {
        let Ok(data) = frame.into_data() else {
            // Trailers end a chunked body.
            return match self {
                Self::Chunked => self.finish(out),
                Self::Length(_) => Ok(false),
            };
        };
        match self {
            Self::Length(left) => {
                let Some(rest) = left.checked_sub(data.len() as u64) else {
                    return Err(io::Error::other("the response body is longer than its length"));
                };
                *left = rest;
                if data.len() > COPY_LIMIT {
                    *big = data;
                } else {
                    out.extend_from_slice(&data);
                }
            }
            // A chunked frame is copied: its chunk's CRLF must follow it.
            Self::Chunked => h1::encode_chunk(&data, out),
        }
        if end {
            self.finish(out)
        } else {
            Ok(matches!(self, Self::Length(0)))
        }
    }

    /// The body ended: `Ok(true)`, or an error if it fell short of its
    /// length.
    fn finish(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Self::Length(0) => Ok(true),
            Self::Length(_) => Err(io::Error::other("the response body ended before its length")),
            Self::Chunked => {
                h1::encode_last_chunk(None, out);
                Ok(true)
            }
        }
    }
}

/// Writes a `Content-Length` line.
fn put_length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the current `Date` value, formatted once a second per thread.
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(text);
    });
}

/// Polls a non-blocking call on a shared socket until it stops saying
/// `WouldBlock`; tokio clears the readiness it found stale.
pub(super) fn poll_io<T>(
    cx: &mut Context<'_>,
    io: &TcpStream,
    ready: fn(&TcpStream, &mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut(&TcpStream) -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(ready(io, cx))?;
        match op(io) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return Poll::Ready(other),
        }
    }
}

/// Reads from a socket shared through `&TcpStream` with `read`, which may
/// take up to `wanted` bytes. A read that came back short emptied the
/// socket, so tokio's own `TcpStream` clears its readiness there and the
/// next read waits for epoll instead of making a system call only to hear
/// `EAGAIN`. Through `&TcpStream` the only way to clear it is `try_io`
/// seeing `WouldBlock`: the readiness it clears is the one it saw before
/// the read, so an event that came in since is kept.
pub(super) fn poll_read_shared(
    io: &TcpStream,
    cx: &mut Context<'_>,
    wanted: usize,
    mut read: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    poll_io(cx, io, TcpStream::poll_read_ready, |s| {
        let mut short = 0;
        let got = s.try_io(tokio::io::Interest::READABLE, || match read(s)? {
            n if 0 < n && n < wanted => {
                short = n;
                Err(io::ErrorKind::WouldBlock.into())
            }
            n => Ok(n),
        });
        match got {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
            other => other,
        }
    })
}

/// A request body of `Content-Length` bytes, read from the client's
/// socket as the proxy asks for it: the bytes that came with the head
/// first, then never more than the body's rest, so that a pipelined
/// request behind it stays on the socket for the connection.
#[derive(Debug)]
pub struct ReadBody {
    socket: Arc<Socket>,
    first: Bytes,
    remaining: u64,
}

/// The client closed the connection inside a request body.
#[derive(Debug, thiserror::Error)]
#[error("the client closed the connection with {0} body bytes still to come")]
pub struct CutShort(u64);

impl http_body::Body for ReadBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !self.first.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.first)))));
        }
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(BODY_READ, |r| r.min(BODY_READ));
        let this = &mut *self;
        // Made only once the socket has something to give.
        let mut buf = None;
        let read = ready!(poll_read_shared(&this.socket.io, cx, want, |s| {
            let buf = buf.get_or_insert_with(|| BytesMut::with_capacity(want));
            s.try_read_buf(&mut buf.limit(want))
        }));
        match read {
            Ok(0) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                CutShort(this.remaining),
            )))),
            Ok(n) => {
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.unwrap_or_default().freeze()))))
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.first.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining + self.first.len() as u64)
    }
}

impl Drop for ReadBody {
    fn drop(&mut self) {
        self.socket
            .body_left
            .store(self.remaining + self.first.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(fields: &[(&str, &str)]) -> Framing {
        let mut f = Framing::default();
        for (name, value) in fields {
            let _ = f.note(name.as_bytes(), value.as_bytes());
        }
        f
    }

    #[test]
    fn heads_framed_by_one_plain_length_stay_on_this_path() {
        let f = framing(&[("Host", "x"), ("CONTENT-LENGTH", "12")]);
        assert_eq!(
            (f.length, f.lengths, f.other, f.connection.close),
            (Some(12), 1, false, false)
        );
        let f = framing(&[("connection", "keep-alive, Close")]);
        assert!(f.connection.close && !f.other);
        // Kept only when it names another header, for the proxy to strip.
        assert!(Framing::default().note(b"Connection", b"keep-alive"));
        assert!(!Framing::default().note(b"Connection", b"close, x-secret"));
    }

    #[test]
    fn what_hyper_must_judge_is_handed_over() {
        for fields in [
            &[("Transfer-Encoding", "chunked")][..],
            &[("content-length", "+5")],
            &[("content-length", "5, 5")],
            &[("content-length", "")],
            &[("Upgrade", "websocket")],
            &[("Expect", "100-continue")],
        ] {
            assert!(framing(fields).other, "{fields:?}");
        }
        // Two lengths, even equal ones: hyper resolves them, as before.
        assert_eq!(framing(&[("content-length", "5"), ("content-length", "5")]).lengths, 2);
    }

    #[test]
    fn bodies_with_a_length_are_held_to_it() {
        let (mut out, mut big) = (Vec::new(), Bytes::new());
        let mut enc = Encoder::Length(10);
        assert!(
            !enc.put(Frame::data(Bytes::from_static(b"hello")), false, &mut out, &mut big)
                .unwrap()
        );
        assert!(
            enc.put(Frame::data(Bytes::from_static(b"world")), true, &mut out, &mut big)
                .unwrap()
        );
        assert_eq!(out, b"helloworld");
        // Longer than its length, or over before it: an error, and the
        // connection is closed rather than left out of step.
        let mut enc = Encoder::Length(3);
        assert!(
            enc.put(Frame::data(Bytes::from_static(b"four")), false, &mut out, &mut big)
                .is_err()
        );
        let mut enc = Encoder::Length(3);
        assert!(enc.finish(&mut out).is_err());
        // A large frame is not copied.
        let large = Bytes::from(vec![7u8; COPY_LIMIT + 1]);
        let mut enc = Encoder::Length(large.len() as u64);
        out.clear();
        assert!(enc.put(Frame::data(large.clone()), true, &mut out, &mut big).unwrap());
        assert!(out.is_empty());
        assert_eq!(big, large);
    }

    #[test]
    fn bodies_of_unknown_length_are_chunked_and_end_with_the_last_chunk() {
        let (mut out, mut big) = (Vec::new(), Bytes::new());
        let mut enc = Encoder::Chunked;
        assert!(
            !enc.put(Frame::data(Bytes::from_static(b"hello")), false, &mut out, &mut big)
                .unwrap()
        );
        assert!(!enc.put(Frame::data(Bytes::new()), false, &mut out, &mut big).unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1"));
        assert!(enc.put(Frame::trailers(trailers), false, &mut out, &mut big).unwrap());
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        put_date(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
