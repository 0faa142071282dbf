//! The body type that flows through the proxy in both directions.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body: the client's or the upstream's passed through as is, or
/// one plumeway made. Boxed because each stage may swap in a different body
/// type, and one allocation per message is cheap next to a network write.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// No body. Boxing it allocates nothing (the body has no size).
pub fn empty() -> BoxBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` until it ends or is dropped: an upstream
    /// request counts as in flight while its response still streams.
    #[derive(Debug)]
    pub struct Guarded<B, G> {
        #[pin]
        body: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    /// Wraps `body`; `guard` is dropped with it.
    pub fn new(body: B, guard: G) -> Self {
        Self {
            body,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body, G> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A body that fails if no frame arrives for `idle`: a backend that
    /// stops sending mid-body is cut off (and its connection dropped) rather
    /// than holding the client forever.
    #[derive(Debug)]
    pub struct IdleTimeout<B> {
        #[pin]
        body: B,
        // Armed only while the body is waiting: most bodies are ready
        // whenever they are polled (small ones arrive with their head), and
        // a timer per body costs a clock read and a timer-wheel entry.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        idle: std::time::Duration,
    }
}

/// The body went quiet for longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct IdleTimedOut(pub std::time::Duration);

impl<B> IdleTimeout<B> {
    /// Wraps `body`; the clock runs whenever the body has nothing to give.
    pub fn new(body: B, idle: std::time::Duration) -> Self {
        Self {
            body,
            timer: None,
            idle,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts a fresh clock.
                this.timer.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep(*this.idle)));
                }
                match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(IdleTimedOut(*this.idle))))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a [`Metered`] body reports when it ends.
pub trait Done: Send + 'static {
    /// Called once: `bytes` of data went through, and `complete` tells
    /// whether the body reached its end (rather than failing or being
    /// dropped, as when the client goes away).
    fn done(self, bytes: u64, complete: bool);
}

pin_project_lite::pin_project! {
    /// A body that counts its bytes and reports once when it ends, fails
    /// or is dropped: the access log and request metrics are written when
    /// the response is over, not when its head is sent.
    pub struct Metered<B, D: Done> {
        #[pin]
        body: B,
        bytes: u64,
        // An empty body is never polled: it is over once its head is sent.
        empty: bool,
        done: Option<D>,
    }

    impl<B, D: Done> PinnedDrop for Metered<B, D> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                done.done(*this.bytes, *this.empty);
            }
        }
    }
}

impl<B: http_body::Body, D: Done> Metered<B, D> {
    /// Wraps `body`; `done` hears how it ended.
    pub fn new(body: B, done: D) -> Self {
        Self {
            empty: body.is_end_stream(),
            body,
            bytes: 0,
            done: Some(done),
        }
    }

    /// What will hear how the body ended, until it has.
    pub fn pending(&self) -> Option<&D> {
        self.done.as_ref()
    }
}

impl<B: http_body::Body<Data = Bytes>, D: Done> http_body::Body for Metered<B, D> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = this.body;
        let polled = body.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                body.is_end_stream().then_some(true)
            }
            Poll::Ready(None) => Some(true),
            Poll::Ready(Some(Err(_))) => Some(false),
            Poll::Pending => None,
        };
        if let Some(complete) = ended
            && let Some(done) = this.done.take()
        {
            done.done(*this.bytes, complete);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body from a client: read by hyper (HTTP/2, TLS, and the
/// HTTP/1.1 connections handed to it), or by plumeway's own HTTP/1.1
/// server from the connection's socket.
#[derive(Debug)]
pub enum RequestBody {
    /// Read by hyper.
    Hyper(hyper::body::Incoming),
    /// Read by [`crate::server::http1`], `Content-Length` bytes.
    Read(crate::server::http1::ReadBody),
    /// No body.
    Empty,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Read(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Read(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Read(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}
