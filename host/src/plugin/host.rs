//! What a plugin instance's store holds, and the host functions it imports:
//! the call's headers, logging, and request context.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::plumeway::plugin::{context, headers, log, types};
use crate::router::request_host_with;
use crate::upstream::h1::RawFields;

/// The headers an instance lends to its plugin, one call at a time, for the
/// `headers` functions; empty between calls.
///
/// A response filter may be lent a backend's fields as it wrote them
/// (`raw`), with `headers` holding only the filter's edits: making a map
/// of every field cost more than the filter's call. A name the filter sets
/// or removes is then left out of `raw` and its values, if any, are in
/// `headers`; a name it appends to keeps its lines in `raw` and has the new
/// values in `headers`, after them. The first read makes the whole map
/// (`raw` as the map path reads it, then the edits), and the call goes on
/// with that.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub(crate) headers: HeaderMap,
    pub(crate) raw: Option<RawFields>,
    pub(crate) writable: bool,
}

impl Fields {
    /// The fields whole, as a map.
    fn whole(&mut self) -> wasmtime::Result<&HeaderMap> {
        if let Some(raw) = self.raw.take() {
            let mut map = raw.to_map().map_err(wasmtime::Error::new)?;
            // The edits so far: the names set were left out of `raw`, so
            // what is in `headers` is either all a name has or comes after
            // what it had, as an append leaves it.
            let mut name = None;
            for (next, value) in self.headers.drain() {
                if next.is_some() {
                    name = next;
                }
                if let Some(name) = &name {
                    map.append(name.clone(), value);
                }
            }
            self.headers = map;
        }
        Ok(&self.headers)
    }

    /// The map, where `name`'s values are to be all it has from now on.
    fn owning(&mut self, name: &HeaderName) -> &mut HeaderMap {
        if let Some(raw) = &mut self.raw {
            raw.skip(name);
        }
        &mut self.headers
    }
}

/// The request of the call in progress, as the `context` functions read
/// it: its method and URI, moved into the store for the call and back
/// after, so a part is copied only when the plugin asks for it (a header
/// filter never does). Empty outside a call.
#[derive(Debug, Default)]
pub(crate) struct RequestLine {
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    /// The request's `Host`, when the call lends the response's headers
    /// as its fields; when the request's are the fields, it is read there.
    pub(crate) host: Option<HeaderValue>,
    /// Whether the request's headers are the lent fields.
    pub(crate) headers_are_fields: bool,
}

/// Facts about the request a call is for, which the plugin can ask for
/// through the `context` interface.
#[derive(Debug, Default, Clone)]
pub struct CallInfo {
    /// The route's name.
    pub route: Option<Arc<str>>,
    /// The client's IP address.
    pub client_ip: Option<Arc<str>>,
    /// The request's id. Filled in only on routes with plugins: nothing
    /// else reads it.
    pub request_id: Arc<str>,
    /// The upstream, once chosen.
    pub upstream: Option<Arc<str>>,
    /// The endpoint, once chosen.
    pub endpoint: Option<Arc<str>>,
}

/// The data of one plugin instance's store.
pub(crate) struct HostState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) plugin: Arc<str>,
    /// The facts of the request being served, lent for each call.
    pub(crate) call: CallInfo,
    /// The request of the call in progress.
    pub(crate) line: RequestLine,
    /// The headers lent to the call in progress.
    pub(crate) fields: Fields,
    /// Whether a hook's call is in progress (not between calls, nor in
    /// `init`).
    pub(crate) lent: bool,
    /// Header names this plugin edits.
    names: KnownNames,
    /// For balancers: the URL of each endpoint in the list given to `pick`.
    pub(crate) endpoint_urls: Vec<Arc<str>>,
    /// What the guest wrote to stderr (a Rust panic message lands here).
    pub(crate) stderr: MemoryOutputPipe,
}

/// Caps linear memory with an error of our own type, so that a memory
/// breach can be told apart from a guest's own abort.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) limit: usize,
}

/// A plugin tried to grow its memory past `limits.memory`.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: wanted {desired} bytes, limit is {limit}")]
pub(crate) struct MemoryLimitExceeded {
    desired: usize,
    limit: usize,
}

/// Headers a plugin may not touch or send: the connection's and the
/// framing's, which the proxy manages itself.
pub(crate) const MANAGED_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        let stderr = MemoryOutputPipe::new(4096);
        // No preopens, no environment, no network: a plugin sees only what
        // the hooks hand it.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        Self {
            table: ResourceTable::new(),
            wasi,
            limiter: MemoryLimiter { limit: memory_limit },
            plugin,
            call: CallInfo::default(),
            line: RequestLine::default(),
            fields: Fields::default(),
            lent: false,
            names: KnownNames::default(),
            endpoint_urls: Vec::new(),
            stderr,
        }
    }

    /// The last line the guest wrote to stderr, for failure logs: for a
    /// Rust panic, its message, not the hint about backtraces after it.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
            .map(ToOwned::to_owned)
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.limit,
            }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn parse_name(name: &str) -> Result<HeaderName, types::HeaderError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| types::HeaderError::InvalidSyntax)?;
    if MANAGED_HEADERS.contains(&name.as_str()) {
        return Err(types::HeaderError::Forbidden);
    }
    Ok(name)
}

/// How many header names an instance remembers.
const KNOWN_NAMES: usize = 16;

/// The header names a plugin has edited, parsed: a plugin sets the same
/// few names on every call, and parsing one (a table lookup, or for a
/// name HTTP does not define, an allocation) cost more than finding it
/// again among a handful.
#[derive(Debug, Default)]
pub(crate) struct KnownNames(Vec<(Box<str>, HeaderName)>);

impl KnownNames {
    /// `name` parsed and checked as [`parse_name`] does.
    fn parse(&mut self, name: &str) -> Result<HeaderName, types::HeaderError> {
        if let Some((_, known)) = self.0.iter().find(|(k, _)| **k == *name) {
            return Ok(known.clone());
        }
        let parsed = parse_name(name)?;
        // The first few are kept: a plugin that makes up names per request
        // does not churn the list.
        if self.0.len() < KNOWN_NAMES {
            self.0.push((name.into(), parsed.clone()));
        }
        Ok(parsed)
    }
}

/// Takes the bytes lifted out of the guest as they are, without a copy.
fn parse_value(value: Vec<u8>) -> Result<HeaderValue, types::HeaderError> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).map_err(|_| types::HeaderError::InvalidSyntax)
}

impl HostState {
    /// Runs `edit` on the call's headers if this call may edit them; else
    /// (a read-only hook, or no hook at all) the answer is `immutable`,
    /// whatever the edit, so it is checked first. `edit` checks its names
    /// and values before it changes anything, so a bad one leaves the
    /// headers as they were.
    fn edit(
        &mut self,
        edit: impl FnOnce(&mut KnownNames, &mut Fields) -> Result<(), types::HeaderError>,
    ) -> Result<(), types::HeaderError> {
        if !self.fields.writable {
            return Err(types::HeaderError::Immutable);
        }
        edit(&mut self.names, &mut self.fields)
    }
}

// Between calls the store holds empty fields that may not be edited, so
// outside a hook reads find nothing and edits answer `immutable` with no
// check of their own.
impl headers::Host for HostState {
    fn get(&mut self, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        let headers = self.fields.whole()?;
        Ok(headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }

    fn has(&mut self, name: String) -> wasmtime::Result<bool> {
        Ok(self.fields.whole()?.contains_key(name.as_str()))
    }

    fn set(&mut self, name: String, values: Vec<Vec<u8>>) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(self.edit(|names, fields| {
            // The usual single value needs no list.
            let name = names.parse(&name)?;
            let mut values = values.into_iter();
            let first = values.next().map(parse_value).transpose()?;
            let rest = values.map(parse_value).collect::<Result<Vec<_>, _>>()?;
            let headers = fields.owning(&name);
            match first {
                // `insert` drops every earlier value in the same lookup.
                Some(first) => {
                    headers.insert(name.clone(), first);
                }
                None => {
                    headers.remove(&name);
                }
            }
            for v in rest {
                headers.append(name.clone(), v);
            }
            Ok(())
        }))
    }

    fn set_one(&mut self, name: String, value: Vec<u8>) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(self.edit(|names, fields| {
            let (name, value) = (names.parse(&name)?, parse_value(value)?);
            fields.owning(&name).insert(name, value);
            Ok(())
        }))
    }

    fn append(&mut self, name: String, value: Vec<u8>) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(self.edit(|names, fields| {
            let (name, value) = (names.parse(&name)?, parse_value(value)?);
            // Raw fields keep their lines of the name; the new value goes
            // after them.
            fields.headers.append(name, value);
            Ok(())
        }))
    }

    fn delete(&mut self, name: String) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(self.edit(|names, fields| {
            let name = names.parse(&name)?;
            fields.owning(&name).remove(&name);
            Ok(())
        }))
    }

    fn copy_all(&mut self) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let headers = self.fields.whole()?;
        Ok(headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect())
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(match level {
            log::Level::Trace => tracing::enabled!(target: "plumeway::plugin", tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: "plumeway::plugin", tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: "plumeway::plugin", tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: "plumeway::plugin", tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: "plumeway::plugin", tracing::Level::ERROR),
        })
    }

    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        let route = self.call.route.as_deref().unwrap_or("-");
        // Bounded: a plugin must not flood the log with megabyte lines.
        let message = if message.len() > 4096 {
            &message[..message.floor_char_boundary(4096)]
        } else {
            &message
        };
        match level {
            log::Level::Trace => tracing::trace!(target: "plumeway::plugin", plugin, route, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plumeway::plugin", plugin, route, "{message}"),
            log::Level::Info => tracing::info!(target: "plumeway::plugin", plugin, route, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plumeway::plugin", plugin, route, "{message}"),
            log::Level::Error => tracing::error!(target: "plumeway::plugin", plugin, route, "{message}"),
        }
        Ok(())
    }
}

impl context::Host for HostState {
    // Outside a call (in `init`) the line is empty, not the defaults
    // (`GET`, `/`) the store holds between calls.

    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(if self.lent {
            self.line.method.as_str().to_owned()
        } else {
            String::new()
        })
    }

    fn path_with_query(&mut self) -> wasmtime::Result<String> {
        Ok(if self.lent {
            self.line.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
        } else {
            String::new()
        })
    }

    fn authority(&mut self) -> wasmtime::Result<Option<String>> {
        if !self.lent {
            return Ok(None);
        }
        let host = match self.line.headers_are_fields {
            true => self.fields.headers.get(http::header::HOST),
            false => self.line.host.as_ref(),
        };
        Ok(request_host_with(&self.line.uri, host).map(str::to_owned))
    }

    fn attribute(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let c = &self.call;
        let value = match name.as_str() {
            "plugin" => Some(&self.plugin),
            "route" => c.route.as_ref(),
            "client-ip" => c.client_ip.as_ref(),
            "request-id" => Some(&c.request_id),
            "upstream" => c.upstream.as_ref(),
            "endpoint" => c.endpoint.as_ref(),
            _ => None,
        };
        Ok(value.map(|v| v.to_string()))
    }

    fn endpoint_url(&mut self, index: u32) -> wasmtime::Result<Option<String>> {
        Ok(self.endpoint_urls.get(index as usize).map(|u| u.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_answer_as_parsing_does_every_time() {
        let mut names = KnownNames::default();
        for _ in 0..2 {
            assert_eq!(names.parse("x-gateway").unwrap(), "x-gateway");
            // Kept by the bytes the plugin gave; the name is lowercased.
            assert_eq!(names.parse("X-Gateway").unwrap(), "x-gateway");
            assert!(matches!(
                names.parse("content-length"),
                Err(types::HeaderError::Forbidden)
            ));
            assert!(matches!(
                names.parse("bad name"),
                Err(types::HeaderError::InvalidSyntax)
            ));
        }
        assert_eq!(names.0.len(), 2, "refused names are not kept");
        for i in 0..2 * KNOWN_NAMES {
            assert_eq!(names.parse(&format!("x-{i}")).unwrap(), format!("x-{i}").as_str());
        }
        assert_eq!(names.0.len(), KNOWN_NAMES);
    }
}
