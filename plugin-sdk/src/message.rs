//! The request and response a hook sees, and the response a plugin makes.

use std::cell::OnceCell;

use crate::Headers;
use crate::bindings::imports::plumeway::plugin::context as host;

/// The request line: method, path with query, and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/api/users?page=2`.
    pub path_with_query: String,
    /// `Host` / `:authority`, if the client sent one.
    pub authority: Option<String>,
}

impl RequestHead {
    /// The path without the query.
    pub fn path(&self) -> &str {
        split_target(&self.path_with_query).0
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        split_target(&self.path_with_query).1
    }
}

/// A path with query split at its first `?`: the path, and the query if
/// there is one.
fn split_target(path_with_query: &str) -> (&str, Option<&str>) {
    match path_with_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_with_query, None),
    }
}

/// The request line as a hook sees it. Inside plumeway it is the host's,
/// read through the `context` functions of the call, and each part is
/// copied in the first time the plugin looks at it: a hook that never does
/// (a header filter) costs no copies. A rewrite is handed its path as the
/// call's argument, every rewrite reading it. In unit tests it is a whole
/// [`RequestHead`] from the builder.
#[derive(Debug)]
enum Head {
    Host {
        method: OnceCell<String>,
        path_with_query: OnceCell<String>,
        authority: OnceCell<Option<String>>,
        /// Made from the parts when a hook asks for the whole head.
        whole: OnceCell<RequestHead>,
    },
    Local(RequestHead),
}

impl Head {
    fn host() -> Self {
        Self::host_with(OnceCell::new())
    }

    /// The host's, with the path and query already given.
    fn with_path(path_with_query: String) -> Self {
        Self::host_with(OnceCell::from(path_with_query))
    }

    fn host_with(path_with_query: OnceCell<String>) -> Self {
        Self::Host {
            method: OnceCell::new(),
            path_with_query,
            authority: OnceCell::new(),
            whole: OnceCell::new(),
        }
    }

    fn method(&self) -> &str {
        match self {
            Self::Host { method, .. } => method.get_or_init(host::method),
            Self::Local(head) => &head.method,
        }
    }

    fn path_with_query(&self) -> &str {
        match self {
            Self::Host { path_with_query, .. } => path_with_query.get_or_init(host::path_with_query),
            Self::Local(head) => &head.path_with_query,
        }
    }

    fn authority(&self) -> Option<&str> {
        match self {
            Self::Host { authority, .. } => authority.get_or_init(host::authority).as_deref(),
            Self::Local(head) => head.authority.as_deref(),
        }
    }

    fn whole(&self) -> &RequestHead {
        match self {
            Self::Host { whole, .. } => whole.get_or_init(|| RequestHead {
                method: self.method().to_owned(),
                path_with_query: self.path_with_query().to_owned(),
                authority: self.authority().map(str::to_owned),
            }),
            Self::Local(head) => head,
        }
    }
}

/// The request as a request filter, rewrite, error or balancer hook sees it.
///
/// Header edits go to the proxy at once; path, body and stash edits are
/// handed over when the hook returns.
///
/// ```
/// use plumeway_sdk::Request;
/// let mut req = Request::builder("GET", "/api/users?page=2").header("x-tenant", "blue").build();
/// assert_eq!(req.path(), "/api/users");
/// assert_eq!(req.query(), Some("page=2"));
/// req.set_path_with_query("/users?page=2");
/// assert_eq!(req.path_with_query(), "/users?page=2");
/// ```
#[derive(Debug)]
pub struct Request<'a> {
    head: Head,
    headers: Headers<'a>,
    body: Option<Vec<u8>>,
    pub(crate) new_path: Option<String>,
    pub(crate) new_body: Option<Vec<u8>>,
    pub(crate) stash: Option<Vec<u8>>,
}

impl<'a> Request<'a> {
    pub(crate) fn host(headers: Headers<'a>, body: Option<Vec<u8>>) -> Self {
        Self::new(Head::host(), headers, body)
    }

    /// The request of a `rewrite` call, which is handed the path and query
    /// rather than asking the host for them.
    pub(crate) fn with_path(headers: Headers<'a>, path_with_query: String) -> Self {
        Self::new(Head::with_path(path_with_query), headers, None)
    }

    fn new(head: Head, headers: Headers<'a>, body: Option<Vec<u8>>) -> Self {
        Self {
            head,
            headers,
            body,
            new_path: None,
            new_body: None,
            stash: None,
        }
    }

    /// A request for unit tests.
    pub fn builder(method: &str, path_with_query: &str) -> RequestBuilder {
        RequestBuilder {
            head: RequestHead {
                method: method.to_owned(),
                path_with_query: path_with_query.to_owned(),
                authority: None,
            },
            headers: Vec::new(),
            body: None,
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.head.method()
    }

    /// The path without query, including this hook's own
    /// [`Request::set_path_with_query`].
    pub fn path(&self) -> &str {
        self.path_and_query().0
    }

    /// The query, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query().1
    }

    /// [`Request::path`] and [`Request::query`] together, found with one
    /// scan of the target rather than one each.
    ///
    /// ```
    /// let req = plumeway_sdk::Request::builder("GET", "/api/users?page=2").build();
    /// assert_eq!(req.path_and_query(), ("/api/users", Some("page=2")));
    /// ```
    pub fn path_and_query(&self) -> (&str, Option<&str>) {
        split_target(self.path_with_query())
    }

    /// Path and query, including this hook's own edit.
    pub fn path_with_query(&self) -> &str {
        self.new_path.as_deref().unwrap_or_else(|| self.head.path_with_query())
    }

    /// The host the request is for, if known.
    pub fn authority(&self) -> Option<&str> {
        self.head.authority()
    }

    /// The request line as it arrived at this hook. Copies every part in
    /// from the host (a rewrite has its path already); [`Request::method`],
    /// [`Request::path_with_query`] and [`Request::authority`] copy only
    /// their own.
    pub fn head(&self) -> &RequestHead {
        self.head.whole()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers<'a> {
        &self.headers
    }

    /// The headers, for editing.
    pub fn headers_mut(&mut self) -> &mut Headers<'a> {
        &mut self.headers
    }

    /// The whole body, when the plugin asked for it (see
    /// [`crate::Plugin::needs`] and [`crate::Action::BufferBody`]).
    pub fn body(&self) -> Option<&[u8]> {
        self.new_body.as_deref().or(self.body.as_deref())
    }

    /// Sends `path_with_query` upstream instead; it must start with `/`.
    pub fn set_path_with_query(&mut self, path_with_query: impl Into<String>) {
        self.new_path = Some(path_with_query.into());
    }

    /// Sends this body upstream instead; the proxy fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.new_body = Some(body.into());
    }

    /// Leaves bytes for this plugin's `on_response` for the same request.
    pub fn stash(&mut self, bytes: impl Into<Vec<u8>>) {
        self.stash = Some(bytes.into());
    }

    /// What [`Request::stash`] left, for tests.
    pub fn stashed(&self) -> Option<&[u8]> {
        self.stash.as_deref()
    }
}

/// Builds a [`Request`] for unit tests.
#[derive(Debug)]
pub struct RequestBuilder {
    head: RequestHead,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl RequestBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the authority (`Host`).
    pub fn authority(mut self, authority: &str) -> Self {
        self.head.authority = Some(authority.to_owned());
        self
    }

    /// Gives the request a body, as if the plugin had asked for it.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The request.
    pub fn build(self) -> Request<'static> {
        Request::new(Head::Local(self.head), Headers::from_pairs(self.headers), self.body)
    }
}

/// The response as a response filter sees it.
///
/// ```
/// use plumeway_sdk::{Response, RequestHead};
/// let mut res = Response::builder(200).header("server", "nginx").build();
/// res.headers_mut().remove("server").unwrap();
/// res.set_status(203);
/// assert_eq!(res.status(), 203);
/// assert!(!res.headers().has("server"));
/// ```
#[derive(Debug)]
pub struct Response<'a> {
    request: Head,
    status: u16,
    headers: Headers<'a>,
    body: Option<Vec<u8>>,
    stash: Option<Vec<u8>>,
    pub(crate) new_status: Option<u16>,
    pub(crate) new_body: Option<Vec<u8>>,
}

impl<'a> Response<'a> {
    pub(crate) fn host(status: u16, headers: Headers<'a>, body: Option<Vec<u8>>, stash: Option<Vec<u8>>) -> Self {
        Self::new(Head::host(), status, headers, body, stash)
    }

    fn new(request: Head, status: u16, headers: Headers<'a>, body: Option<Vec<u8>>, stash: Option<Vec<u8>>) -> Self {
        Self {
            request,
            status,
            headers,
            body,
            stash,
            new_status: None,
            new_body: None,
        }
    }

    /// A response for unit tests.
    pub fn builder(status: u16) -> ResponseBuilder {
        ResponseBuilder {
            request: RequestHead {
                method: "GET".into(),
                path_with_query: "/".into(),
                authority: None,
            },
            status,
            headers: Vec::new(),
            body: None,
            stash: None,
        }
    }

    /// The request this responds to, as it was forwarded. Copied in from
    /// the host the first time a hook asks.
    pub fn request(&self) -> &RequestHead {
        self.request.whole()
    }

    /// The status, including this hook's own edit.
    pub fn status(&self) -> u16 {
        self.new_status.unwrap_or(self.status)
    }

    /// Answers with `status` instead (100–599).
    pub fn set_status(&mut self, status: u16) {
        self.new_status = Some(status);
    }

    /// The headers.
    pub fn headers(&self) -> &Headers<'a> {
        &self.headers
    }

    /// The headers, for editing.
    pub fn headers_mut(&mut self) -> &mut Headers<'a> {
        &mut self.headers
    }

    /// The whole body, when the plugin asked for it.
    pub fn body(&self) -> Option<&[u8]> {
        self.new_body.as_deref().or(self.body.as_deref())
    }

    /// Sends this body to the client instead; the proxy fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.new_body = Some(body.into());
    }

    /// What this plugin's `on_request` stashed for this request.
    pub fn stash(&self) -> Option<&[u8]> {
        self.stash.as_deref()
    }
}

/// Builds a [`Response`] for unit tests.
#[derive(Debug)]
pub struct ResponseBuilder {
    request: RequestHead,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    stash: Option<Vec<u8>>,
}

impl ResponseBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the request it answers.
    pub fn request(mut self, method: &str, path_with_query: &str) -> Self {
        self.request.method = method.to_owned();
        self.request.path_with_query = path_with_query.to_owned();
        self
    }

    /// Gives it a body, as if the plugin had asked for it.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets what `on_request` stashed.
    pub fn stash(mut self, stash: impl Into<Vec<u8>>) -> Self {
        self.stash = Some(stash.into());
        self
    }

    /// The response.
    pub fn build(self) -> Response<'static> {
        Response::new(
            Head::Local(self.request),
            self.status,
            Headers::from_pairs(self.headers),
            self.body,
            self.stash,
        )
    }
}

/// A complete response made by a plugin: an early answer from a request
/// filter, a replacement from a response filter, or an error page.
///
/// ```
/// let r = plumeway_sdk::LocalResponse::new(401)
///     .header("www-authenticate", "ApiKey")
///     .body("missing API key\n");
/// assert_eq!(r.status, 401);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// 100–599; the proxy refuses anything else.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body; `content-length` is set by the proxy.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}
