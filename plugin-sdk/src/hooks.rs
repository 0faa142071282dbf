//! One trait per hook kind. A plugin implements [`Plugin`] and the hooks
//! it offers, then names them in [`crate::export!`].

use std::fmt;

use crate::{Config, LocalResponse, Request, Response};

/// What every plugin is: built once per instance from its config.
///
/// plumeway keeps instances and reuses them across requests (unless the
/// route asks for `isolation = "per-request"`), so state kept in `self` or
/// in globals lives on between requests: never rely on it being fresh.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its `config` table. An error rejects the
    /// config: `plumeway check` and `plumeway run` fail with the message.
    fn init(config: Config) -> Result<Self, String>;

    /// Bodies this plugin wants to see whole. By default none: the plugin
    /// sees headers only and bodies stream past it untouched.
    fn needs(&self) -> Needs {
        Needs::default()
    }
}

/// Bodies a plugin wants buffered and handed to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The request body, up to the route's `max_body` (413 beyond).
    pub request_body: bool,
    /// The response body, up to the plugin's body limit (502 beyond).
    pub response_body: bool,
}

/// "I could not do my job": the request fails with a 5xx (or the route's
/// error handler runs). Unlike a panic, the plugin instance stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with a message for the logs.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<crate::HeaderError> for Error {
    fn from(e: crate::HeaderError) -> Self {
        Self::new(format!("header edit refused: {e}"))
    }
}

/// Path rewrite: runs first on a route (`rewrite = "NAME"`).
///
/// ```
/// use plumeway_sdk::{Config, Plugin, Request, Rewrite};
///
/// struct Lowercase;
/// impl Plugin for Lowercase {
///     fn init(_: Config) -> Result<Self, String> { Ok(Lowercase) }
/// }
/// impl Rewrite for Lowercase {
///     fn rewrite(&self, req: &Request<'_>) -> Result<Option<String>, plumeway_sdk::Error> {
///         Ok(Some(req.path_with_query().to_ascii_lowercase()))
///     }
/// }
///
/// let req = Request::builder("GET", "/API/Users").build();
/// assert_eq!(Lowercase.rewrite(&req).unwrap().as_deref(), Some("/api/users"));
/// ```
pub trait Rewrite: Plugin {
    /// The new path and query (starting with `/`), or `None` to keep it.
    /// Headers are read-only here.
    fn rewrite(&self, req: &Request<'_>) -> Result<Option<String>, Error>;
}

/// What a request filter decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on: the next filter, then the upstream.
    Continue,
    /// Call me again with the whole body.
    BufferBody,
    /// Answer now with this response; the upstream and later request
    /// filters are skipped, the route's response filters still run.
    Respond(LocalResponse),
}

/// Request filter: runs in the order of a route's `request = [...]`.
///
/// By default it does nothing and returns `Ok(Action::Continue)`.
///
/// ```
/// use plumeway_sdk::{Action, Config, LocalResponse, Plugin, Request, RequestFilter};
///
/// struct RequireTenant;
/// impl Plugin for RequireTenant {
///     fn init(_: Config) -> Result<Self, String> { Ok(RequireTenant) }
/// }
/// impl RequestFilter for RequireTenant {
///     fn on_request(&self, req: &mut Request<'_>) -> Result<Action, plumeway_sdk::Error> {
///         if req.headers().has("x-tenant") {
///             req.headers_mut().set("x-tenant-checked", "1")?;
///             Ok(Action::Continue)
///         } else {
///             Ok(Action::Respond(LocalResponse::new(400).body("x-tenant is required\n")))
///         }
///     }
/// }
///
/// let mut req = Request::builder("GET", "/").header("x-tenant", "blue").build();
/// assert_eq!(RequireTenant.on_request(&mut req).unwrap(), Action::Continue);
/// assert!(req.headers().has("x-tenant-checked"));
/// ```
pub trait RequestFilter: Plugin {
    /// Looks at (and may change) the request before it goes upstream.
    fn on_request(&self, req: &mut Request<'_>) -> Result<Action, Error> {
        let _ = req;
        Ok(Action::Continue)
    }
}

/// What a response filter decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Go on with the (possibly edited) response.
    Continue,
    /// Call me again with the whole body.
    BufferBody,
    /// Send this response instead.
    Replace(LocalResponse),
}

/// Response filter: runs in the order of a route's `response = [...]`, on
/// upstream responses and on responses made by request filters.
///
/// By default it does nothing and returns `Ok(ResponseAction::Continue)`.
///
/// ```
/// use plumeway_sdk::{Config, Plugin, Response, ResponseAction, ResponseFilter};
///
/// struct NoSniff;
/// impl Plugin for NoSniff {
///     fn init(_: Config) -> Result<Self, String> { Ok(NoSniff) }
/// }
/// impl ResponseFilter for NoSniff {
///     fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, plumeway_sdk::Error> {
///         res.headers_mut().set("x-content-type-options", "nosniff")?;
///         Ok(ResponseAction::Continue)
///     }
/// }
///
/// let mut res = Response::builder(200).build();
/// NoSniff.on_response(&mut res).unwrap();
/// assert_eq!(res.headers().get("x-content-type-options").as_deref(), Some("nosniff"));
/// ```
pub trait ResponseFilter: Plugin {
    /// Looks at (and may change) the response before it goes to the client.
    fn on_response(&self, res: &mut Response<'_>) -> Result<ResponseAction, Error> {
        let _ = res;
        Ok(ResponseAction::Continue)
    }
}

/// Why the proxy could not deliver a response, as an error handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The status plumeway would answer with by itself.
    pub status: u16,
    /// The upstream last tried.
    pub upstream: Option<String>,
    /// The endpoint last tried.
    pub endpoint: Option<String>,
    /// Endpoints tried.
    pub attempts: u32,
    /// The request's id, for the response body and support.
    pub request_id: String,
}

/// The kinds of [`ProxyError`], named as in the `Proxy-Status` registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched.
    DestinationNotFound,
    /// No endpoint could take the request.
    DestinationUnavailable,
    /// The endpoint refused the connection.
    ConnectionRefused,
    /// Connecting timed out.
    ConnectionTimeout,
    /// The endpoint did not answer in time.
    HttpResponseTimeout,
    /// The upstream connection failed or spoke invalid HTTP.
    HttpProtocolError,
    /// The request broke a limit.
    HttpRequestDenied,
    /// The client sent a broken request.
    HttpRequestError,
    /// A plugin on the route failed; names it.
    PluginFailed(String),
    /// Anything else.
    Other(String),
}

impl ErrorKind {
    /// The name as in `Proxy-Status` (`connection_refused`, …).
    pub fn as_str(&self) -> &str {
        match self {
            Self::DestinationNotFound => "destination_not_found",
            Self::DestinationUnavailable => "destination_unavailable",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionTimeout => "connection_timeout",
            Self::HttpResponseTimeout => "http_response_timeout",
            Self::HttpProtocolError => "http_protocol_error",
            Self::HttpRequestDenied => "http_request_denied",
            Self::HttpRequestError => "http_request_error",
            Self::PluginFailed(_) => "plugin_failed",
            Self::Other(_) => "other",
        }
    }
}

/// Error handler: makes the response when the proxy cannot deliver one
/// (`on_error = "NAME"`). Request headers are read-only here.
///
/// ```
/// use plumeway_sdk::{Config, ErrorHandler, ErrorKind, LocalResponse, Plugin, ProxyError, Request};
///
/// struct Plain;
/// impl Plugin for Plain {
///     fn init(_: Config) -> Result<Self, String> { Ok(Plain) }
/// }
/// impl ErrorHandler for Plain {
///     fn on_error(&self, _req: &Request<'_>, err: &ProxyError) -> Result<LocalResponse, plumeway_sdk::Error> {
///         Ok(LocalResponse::new(err.status).body(format!("sorry ({})\n", err.kind.as_str())))
///     }
/// }
///
/// let err = ProxyError { kind: ErrorKind::ConnectionRefused, status: 502, upstream: None,
///                        endpoint: None, attempts: 1, request_id: "r1".into() };
/// let res = Plain.on_error(&Request::builder("GET", "/").build(), &err).unwrap();
/// assert_eq!(res.body, b"sorry (connection_refused)\n");
/// ```
pub trait ErrorHandler: Plugin {
    /// The response for the client.
    fn on_error(&self, req: &Request<'_>, err: &ProxyError) -> Result<LocalResponse, Error>;
}

/// One endpoint as a balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its position in the list.
    pub index: usize,
    /// Relative share of traffic.
    pub weight: u32,
    /// False when health checks or outlier detection took it out.
    pub healthy: bool,
    /// Requests in flight to it now.
    pub in_flight: u32,
    url: Option<String>,
}

impl Endpoint {
    /// An endpoint for unit tests.
    pub fn new(index: usize, weight: u32, healthy: bool, in_flight: u32) -> Self {
        Self {
            index,
            weight,
            healthy,
            in_flight,
            url: None,
        }
    }

    /// Gives a test endpoint a URL.
    pub fn with_url(mut self, url: &str) -> Self {
        self.url = Some(url.to_owned());
        self
    }

    /// The endpoint's URL (asked of the proxy on demand).
    pub fn url(&self) -> Option<String> {
        self.url.clone().or_else(|| crate::context::endpoint_url(self.index))
    }
}

/// About this pick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PickContext {
    /// Changes whenever the endpoint list changes (cache per generation).
    pub generation: u64,
    /// 0 for the first try, 1 for the first retry, …
    pub attempt: u32,
    /// Indexes already tried for this request.
    pub tried: Vec<usize>,
}

/// A load-balancing policy (`balancer = { plugin = "NAME" }`). Headers are
/// read-only here.
///
/// ```
/// use plumeway_sdk::{Balancer, Config, Endpoint, PickContext, Plugin, Request};
///
/// struct First;
/// impl Plugin for First {
///     fn init(_: Config) -> Result<Self, String> { Ok(First) }
/// }
/// impl Balancer for First {
///     fn pick(&self, _req: &Request<'_>, endpoints: &[Endpoint], _ctx: &PickContext)
///         -> Result<Option<usize>, plumeway_sdk::Error> {
///         Ok(endpoints.iter().find(|e| e.healthy).map(|e| e.index))
///     }
/// }
///
/// let eps = [Endpoint::new(0, 1, false, 0), Endpoint::new(1, 1, true, 0)];
/// let req = Request::builder("GET", "/").build();
/// assert_eq!(First.pick(&req, &eps, &PickContext::default()).unwrap(), Some(1));
/// ```
pub trait Balancer: Plugin {
    /// The index of the endpoint to use, or `None` when none fits (503).
    fn pick(&self, req: &Request<'_>, endpoints: &[Endpoint], ctx: &PickContext) -> Result<Option<usize>, Error>;
}
