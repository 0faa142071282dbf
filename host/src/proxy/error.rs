//! Why the proxy could not produce the upstream's response, and what the
//! client gets instead.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{BoxBody, full};
use crate::config::{Duration, Size};
use crate::plugin::Failure;

/// A request the proxy failed, with what a log needs to explain it.
///
/// The client sees only [`ProxyError::status`] and a short body naming the
/// [`ErrorKind`]; endpoint addresses and causes stay in the logs.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The request body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit}")]
    BodyTooLarge {
        /// The `server.limits.max_body` in force.
        limit: Size,
    },
    /// The request cannot be served as sent (e.g. a broken WebSocket
    /// handshake).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The request target is longer than the configured limit.
    #[error("request target is longer than the limit of {limit}")]
    UriTooLong {
        /// The `server.limits.max_uri_bytes` in force.
        limit: Size,
    },
    /// The client paused its request body for longer than allowed.
    #[error("the request body stalled for {idle}")]
    RequestTimeout {
        /// The `server.timeouts.body_idle` in force.
        idle: Duration,
    },
    /// The route's rate limit is spent for this client.
    #[error("rate limit of route {route:?} exceeded")]
    RateLimited {
        /// The route's name.
        route: Arc<str>,
        /// Seconds until a token is back.
        retry_after: u64,
    },
    /// The client's request body broke while it was being forwarded.
    #[error("reading the request body failed: {reason}")]
    ClientBody {
        /// What went wrong.
        reason: String,
    },
    /// The upstream has no endpoint that can take traffic.
    #[error("upstream {upstream:?} has no available endpoint")]
    NoHealthyEndpoint {
        /// The upstream's name.
        upstream: Arc<str>,
    },
    /// The endpoint refused the connection.
    #[error("{endpoint} (upstream {upstream:?}) refused the connection")]
    ConnectionRefused {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The endpoint tried.
        endpoint: Arc<str>,
    },
    /// The connection to the endpoint did not open in time.
    #[error("connecting to {endpoint} (upstream {upstream:?}) timed out")]
    ConnectionTimeout {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The endpoint tried.
        endpoint: Arc<str>,
    },
    /// The endpoint sent no response head in time.
    #[error("{endpoint} (upstream {upstream:?}) sent no response head within {timeout}")]
    ResponseTimeout {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The endpoint tried.
        endpoint: Arc<str>,
        /// The `timeouts.response_header` in force.
        timeout: Duration,
    },
    /// A plugin on the route failed (trap, limit, returned error, invalid
    /// output).
    #[error("plugin {plugin:?} {failure}")]
    PluginFailed {
        /// The plugin's name.
        plugin: Arc<str>,
        /// How it failed.
        failure: Failure,
    },
    /// A response body a plugin asked to see is larger than its limit.
    #[error("response body is larger than plugin {plugin:?}'s body limit of {limit}")]
    ResponseTooLarge {
        /// The plugin's name.
        plugin: Arc<str>,
        /// The plugin's `limits.body`.
        limit: Size,
    },
    /// The TLS handshake with the endpoint failed.
    #[error("TLS with {endpoint} (upstream {upstream:?}) failed: {reason}")]
    TlsFailed {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The endpoint tried.
        endpoint: Arc<str>,
        /// What went wrong.
        reason: String,
        /// The endpoint's certificate did not verify.
        certificate: bool,
    },
    /// The connection failed or the endpoint did not speak valid HTTP.
    #[error("{endpoint} (upstream {upstream:?}) failed: {reason}")]
    UpstreamFailed {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The endpoint tried.
        endpoint: Arc<str>,
        /// What went wrong.
        reason: String,
    },
}

/// The kind of a [`ProxyError`], named as in the `Proxy-Status` registry
/// (RFC 9209) so that clients, logs and error plugins share one vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `destination_not_found`: no route.
    DestinationNotFound,
    /// `http_request_denied`: the request broke a limit.
    HttpRequestDenied,
    /// `http_request_error`: the client sent a broken request.
    HttpRequestError,
    /// `destination_unavailable`: no endpoint can take traffic.
    DestinationUnavailable,
    /// `connection_refused`.
    ConnectionRefused,
    /// `connection_timeout`.
    ConnectionTimeout,
    /// `http_response_timeout`.
    HttpResponseTimeout,
    /// `http_protocol_error`: the upstream connection failed mid-exchange.
    HttpProtocolError,
    /// `proxy_internal_error`: a plugin on the route failed.
    PluginFailed,
    /// `tls_certificate_error`: the upstream's certificate did not verify.
    TlsCertificateError,
    /// `tls_protocol_error`: the TLS handshake with the upstream failed.
    TlsProtocolError,
}

impl ProxyError {
    /// The kind, for clients, metrics and error plugins.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NoRoute => ErrorKind::DestinationNotFound,
            Self::BodyTooLarge { .. } | Self::UriTooLong { .. } | Self::RateLimited { .. } => {
                ErrorKind::HttpRequestDenied
            }
            Self::ClientBody { .. } | Self::BadRequest { .. } | Self::RequestTimeout { .. } => {
                ErrorKind::HttpRequestError
            }
            Self::NoHealthyEndpoint { .. } => ErrorKind::DestinationUnavailable,
            Self::ConnectionRefused { .. } => ErrorKind::ConnectionRefused,
            Self::ConnectionTimeout { .. } => ErrorKind::ConnectionTimeout,
            Self::ResponseTimeout { .. } => ErrorKind::HttpResponseTimeout,
            Self::UpstreamFailed { .. } | Self::ResponseTooLarge { .. } => ErrorKind::HttpProtocolError,
            Self::PluginFailed { .. } => ErrorKind::PluginFailed,
            Self::TlsFailed { certificate: true, .. } => ErrorKind::TlsCertificateError,
            Self::TlsFailed { .. } => ErrorKind::TlsProtocolError,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UriTooLong { .. } => return StatusCode::URI_TOO_LONG,
            Self::RequestTimeout { .. } => return StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => return StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest { .. } => return StatusCode::BAD_REQUEST,
            _ => {}
        }
        match self.kind() {
            ErrorKind::DestinationNotFound => StatusCode::NOT_FOUND,
            ErrorKind::HttpRequestDenied => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HttpRequestError => StatusCode::BAD_REQUEST,
            ErrorKind::DestinationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectionRefused
            | ErrorKind::HttpProtocolError
            | ErrorKind::TlsCertificateError
            | ErrorKind::TlsProtocolError => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectionTimeout | ErrorKind::HttpResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::PluginFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The plugin that failed, for `PluginFailed` and `ResponseTooLarge`.
    pub fn plugin(&self) -> Option<&Arc<str>> {
        match self {
            Self::PluginFailed { plugin, .. } | Self::ResponseTooLarge { plugin, .. } => Some(plugin),
            _ => None,
        }
    }

    /// The upstream and endpoint involved, when one was.
    pub fn upstream(&self) -> (Option<&Arc<str>>, Option<&Arc<str>>) {
        match self {
            Self::NoHealthyEndpoint { upstream } => (Some(upstream), None),
            Self::ConnectionRefused { upstream, endpoint }
            | Self::ConnectionTimeout { upstream, endpoint }
            | Self::ResponseTimeout { upstream, endpoint, .. }
            | Self::UpstreamFailed { upstream, endpoint, .. }
            | Self::TlsFailed { upstream, endpoint, .. } => (Some(upstream), Some(endpoint)),
            _ => (None, None),
        }
    }

    /// Whether the proxy gave up waiting (a 504).
    pub fn is_timeout(&self) -> bool {
        self.status() == StatusCode::GATEWAY_TIMEOUT
    }

    /// The built-in error response: the status, a `Proxy-Status` header and
    /// a one-line plain-text body.
    pub fn to_response(&self) -> Response<BoxBody> {
        let status = self.status();
        let kind = self.kind();
        let body = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.describe()
        );
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        h.insert("proxy-status", kind.proxy_status());
        if let Self::RateLimited { retry_after, .. } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Whether the client connection must not be reused after this answer:
    /// after a malformed or stalled request, nothing later on the
    /// connection can be trusted to start where the proxy thinks it does.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest { .. } | Self::UriTooLong { .. } | Self::RequestTimeout { .. } | Self::ClientBody { .. }
        )
    }

    /// One line for the client, saying what was wrong without internals.
    fn describe(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "the request is malformed",
            Self::UriTooLong { .. } => "the request target is too long",
            Self::RequestTimeout { .. } => "the request body stalled",
            Self::RateLimited { .. } => "too many requests; retry later",
            _ => self.kind().describe(),
        }
    }
}

impl ErrorKind {
    /// The RFC 9209 name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DestinationNotFound => "destination_not_found",
            Self::HttpRequestDenied => "http_request_denied",
            Self::HttpRequestError => "http_request_error",
            Self::DestinationUnavailable => "destination_unavailable",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionTimeout => "connection_timeout",
            Self::HttpResponseTimeout => "http_response_timeout",
            Self::HttpProtocolError => "http_protocol_error",
            Self::PluginFailed => "proxy_internal_error",
            Self::TlsCertificateError => "tls_certificate_error",
            Self::TlsProtocolError => "tls_protocol_error",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::DestinationNotFound => "no route matches this request",
            Self::HttpRequestDenied => "the request body is too large",
            Self::HttpRequestError => "the request body could not be read",
            Self::DestinationUnavailable => "no upstream endpoint is available",
            Self::ConnectionRefused => "the upstream refused the connection",
            Self::ConnectionTimeout => "connecting to the upstream timed out",
            Self::HttpResponseTimeout => "the upstream did not answer in time",
            Self::HttpProtocolError => "the upstream connection failed",
            Self::PluginFailed => "a plugin on this route failed",
            Self::TlsCertificateError => "the upstream's TLS certificate did not verify",
            Self::TlsProtocolError => "TLS with the upstream failed",
        }
    }

    fn proxy_status(self) -> HeaderValue {
        // Built from fixed strings only, so the value is always valid.
        HeaderValue::from_str(&format!("plumeway; error={}", self.as_str()))
            .unwrap_or_else(|_| HeaderValue::from_static("plumeway"))
    }
}
