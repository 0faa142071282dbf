//! Headers: the host's, lent for one call, or local ones in unit tests.

use std::fmt;
use std::marker::PhantomData;

use crate::bindings::imports::plumeway::plugin::headers as host;
use crate::bindings::imports::plumeway::plugin::types::HeaderError as WitHeaderError;

/// The headers of the request or response a hook is looking at.
///
/// Inside plumeway these are the host's own headers: each call goes to the
/// host, which validates every edit on the spot. In unit tests (built with
/// [`Headers::new`] or a [`crate::Request`] builder) they are a local list
/// with the same rules, so a plugin's logic can be tested with plain
/// `cargo test`.
///
/// Names are case-insensitive.
///
/// ```
/// let mut headers = plumeway_sdk::Headers::new();
/// headers.set("x-gateway", "plumeway").unwrap();
/// headers.append("x-chain", "a").unwrap();
/// headers.append("x-chain", "b").unwrap();
/// assert_eq!(headers.get("X-Gateway").as_deref(), Some("plumeway"));
/// assert_eq!(headers.get_all("x-chain"), vec![b"a".to_vec(), b"b".to_vec()]);
/// assert!(headers.set("content-length", "5").is_err()); // the host owns framing
/// ```
pub struct Headers<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    /// The headers of the call in progress, which the host's `headers`
    /// functions act on. The hooks' traits take `Request<'_>` and
    /// `Response<'_>`, so `'a` keeps them inside the hook they were given
    /// to: kept for a later call, they would act on that call's headers.
    Host { call: PhantomData<&'a ()>, read_only: bool },
    Local {
        list: Vec<(String, Vec<u8>)>,
        read_only: bool,
    },
}

/// Why a header edit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The name or value is not valid HTTP (e.g. a value with CR or LF).
    InvalidSyntax,
    /// The header belongs to the connection or framing; the host manages it.
    Forbidden,
    /// The headers are read-only in this hook (or no hook is running).
    Immutable,
    /// Something else, as the host explained.
    Other(Option<String>),
}

/// Headers a plugin may not touch: hop-by-hop and framing headers. The host
/// refuses them too; the local list mirrors that so tests see the truth.
const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

impl Headers<'static> {
    /// Empty local headers, for tests.
    pub fn new() -> Self {
        Self {
            inner: Inner::Local {
                list: Vec::new(),
                read_only: false,
            },
        }
    }

    /// Local headers from pairs, for tests.
    pub fn from_pairs<N: Into<String>, V: Into<Vec<u8>>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let list = pairs
            .into_iter()
            .map(|(n, v)| (n.into().to_ascii_lowercase(), v.into()))
            .collect();
        Self {
            inner: Inner::Local { list, read_only: false },
        }
    }
}

impl Default for Headers<'static> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Headers<'a> {
    /// The call's headers, as the host lends them to the hook running now.
    pub(crate) fn host(read_only: bool) -> Self {
        Self {
            inner: Inner::Host {
                call: PhantomData,
                read_only,
            },
        }
    }

    /// Makes these headers read-only, as they are in rewrite, error and
    /// balancer hooks.
    pub fn into_read_only(mut self) -> Self {
        match &mut self.inner {
            Inner::Host { read_only, .. } | Inner::Local { read_only, .. } => *read_only = true,
        }
        self
    }

    /// The first value of `name` as text, if present and valid UTF-8.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_all(name)
            .into_iter()
            .next()
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of `name`, as bytes, in order.
    pub fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
        match &self.inner {
            Inner::Host { .. } => host::get(name),
            Inner::Local { list, .. } => list
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// Whether `name` is present.
    pub fn has(&self, name: &str) -> bool {
        match &self.inner {
            Inner::Host { .. } => host::has(name),
            Inner::Local { list, .. } => list.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)),
        }
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), HeaderError> {
        let value = value.as_ref();
        match &mut self.inner {
            Inner::Host { read_only, .. } => {
                if *read_only {
                    return Err(HeaderError::Immutable);
                }
                // The value goes to the host as it is: no copy, no list.
                host::set_one(name, value).map_err(Into::into)
            }
            Inner::Local { list, read_only } => {
                check_local(name, Some(value), *read_only)?;
                list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                list.push((name.to_ascii_lowercase(), value.to_vec()));
                Ok(())
            }
        }
    }

    /// Adds a value to `name`, keeping the ones it has.
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), HeaderError> {
        let value = value.as_ref();
        match &mut self.inner {
            Inner::Host { read_only, .. } => {
                if *read_only {
                    return Err(HeaderError::Immutable);
                }
                host::append(name, value).map_err(Into::into)
            }
            Inner::Local { list, read_only } => {
                check_local(name, Some(value), *read_only)?;
                list.push((name.to_ascii_lowercase(), value.to_vec()));
                Ok(())
            }
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), HeaderError> {
        match &mut self.inner {
            Inner::Host { read_only, .. } => {
                if *read_only {
                    return Err(HeaderError::Immutable);
                }
                host::delete(name).map_err(Into::into)
            }
            Inner::Local { list, read_only } => {
                check_local(name, None, *read_only)?;
                list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                Ok(())
            }
        }
    }

    /// A copy of every header. Inside plumeway this copies them all out of
    /// the host; prefer [`Headers::get`] on the hot path.
    pub fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        match &self.inner {
            Inner::Host { .. } => host::copy_all(),
            Inner::Local { list, .. } => list.clone(),
        }
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Host { .. } => f.write_str("Headers(host)"),
            Inner::Local { list, .. } => f.debug_list().entries(list).finish(),
        }
    }
}

fn check_local(name: &str, value: Option<&[u8]>, read_only: bool) -> Result<(), HeaderError> {
    if read_only {
        return Err(HeaderError::Immutable);
    }
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(HeaderError::InvalidSyntax);
    }
    if value.is_some_and(|v| v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)) {
        return Err(HeaderError::InvalidSyntax);
    }
    if FORBIDDEN.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        return Err(HeaderError::Forbidden);
    }
    Ok(())
}

impl From<WitHeaderError> for HeaderError {
    fn from(e: WitHeaderError) -> Self {
        match e {
            WitHeaderError::InvalidSyntax => Self::InvalidSyntax,
            WitHeaderError::Forbidden => Self::Forbidden,
            WitHeaderError::Immutable => Self::Immutable,
            WitHeaderError::Other(m) => Self::Other(m),
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSyntax => f.write_str("invalid header name or value"),
            Self::Forbidden => f.write_str("header is managed by the proxy"),
            Self::Immutable => f.write_str("headers are read-only in this hook"),
            Self::Other(Some(m)) => f.write_str(m),
            Self::Other(None) => f.write_str("header edit refused"),
        }
    }
}

impl std::error::Error for HeaderError {}
