//! Calling each hook: lend the headers, call within limits, take the
//! headers back, check what came out.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, request, response, uri::PathAndQuery};

use super::bindings::exports::plumeway::plugin::{balancer, error_handler, request_filter, response_filter};
use super::bindings::plumeway::plugin::types;
use super::host::{CallInfo, Fields, RequestLine};
use super::output::{valid_path, valid_response, valid_status};
use super::{Failure, Instance, Plugin};
use crate::body::BoxBody;
use crate::proxy::ErrorKind;
use crate::upstream::h1::RawFields;

/// What a request filter decided.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Go on; the body (if the plugin replaced it) and the stash for its
    /// `on_response`.
    Continue {
        /// A replacement body.
        body: Option<Bytes>,
        /// Bytes for this plugin's `on_response`.
        stash: Option<Vec<u8>>,
    },
    /// Call again with the whole body.
    BufferBody,
    /// Answer with this response.
    Respond(http::Response<BoxBody>),
}

/// What a response filter decided.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// Go on, with these changes.
    Continue {
        /// A new status.
        status: Option<StatusCode>,
        /// A replacement body.
        body: Option<Bytes>,
    },
    /// Call again with the whole body.
    BufferBody,
    /// Send this response instead.
    Replace(http::Response<BoxBody>),
}

/// What an error handler is told.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// The plugin that failed, for `plugin-failed`.
    pub plugin: Option<Arc<str>>,
    /// The status plumeway would send.
    pub status: StatusCode,
    /// The upstream last tried.
    pub upstream: Option<Arc<str>>,
    /// The endpoint last tried.
    pub endpoint: Option<Arc<str>>,
    /// Endpoints tried.
    pub attempts: u32,
    /// The request's id.
    pub request_id: Arc<str>,
}

/// What a balancer is shown.
#[derive(Debug, Clone)]
pub struct PickInput {
    /// One entry per endpoint, in config order.
    pub endpoints: Vec<EndpointView>,
    /// Changes when the endpoint list changes.
    pub generation: u64,
    /// 0 for the first try.
    pub attempt: u32,
    /// Indexes already tried.
    pub tried: Vec<u32>,
}

/// One endpoint as a balancer sees it.
#[derive(Debug, Clone)]
pub struct EndpointView {
    /// Its URL.
    pub url: Arc<str>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Whether it may take traffic.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: u32,
}

/// What a response filter's call lends besides the request.
struct ForResponse<'a> {
    /// The response's headers, lent as the call's fields.
    headers: &'a mut HeaderMap,
    /// The backend's fields as it wrote them, when they were kept raw: the
    /// call's fields are these and `headers` together (see [`Fields`]).
    raw: &'a mut Option<RawFields>,
    /// The request's `Host`.
    host: &'a mut Option<HeaderValue>,
}

/// Runs `hook` with the call's inputs moved into the instance's store, and
/// moves them back after, whatever `hook` returns: a trap never loses
/// them, and nothing is copied. The request's headers are the call's
/// fields, or for a response filter the response's are and the request's
/// `Host` waits beside them; the request's method and URI are there for
/// the `context` functions, which copy a part only when the plugin asks
/// for it.
fn lent<R>(
    instance: &mut Instance,
    request: &mut request::Parts,
    mut response: Option<&mut ForResponse<'_>>,
    call: &mut CallInfo,
    writable: bool,
    hook: impl FnOnce(&mut Instance) -> R,
) -> R {
    let state = instance.store.data_mut();
    state.fields.writable = writable;
    state.line.headers_are_fields = response.is_none();
    // Swapped with the empty values the store holds between calls, rather
    // than assigned: nothing is built or dropped.
    swap(&mut state.fields, &mut state.line, request, response.as_deref_mut());
    std::mem::swap(&mut state.call, call);
    state.lent = true;
    let result = hook(instance);
    let state = instance.store.data_mut();
    state.lent = false;
    std::mem::swap(&mut state.call, call);
    state.fields.writable = false;
    swap(&mut state.fields, &mut state.line, request, response);
    result
}

/// Exchanges the call's inputs with what the store holds (see [`lent`]).
fn swap(
    fields: &mut Fields,
    line: &mut RequestLine,
    request: &mut request::Parts,
    response: Option<&mut ForResponse<'_>>,
) {
    match response {
        Some(response) => {
            std::mem::swap(&mut fields.headers, response.headers);
            std::mem::swap(&mut fields.raw, response.raw);
            std::mem::swap(&mut line.host, response.host);
        }
        None => std::mem::swap(&mut fields.headers, &mut request.headers),
    }
    std::mem::swap(&mut line.method, &mut request.method);
    std::mem::swap(&mut line.uri, &mut request.uri);
}

impl Plugin {
    /// Ends a call: a returned plugin error and a trap become failures, the
    /// guest's answer goes through `check`, and the instance goes back to
    /// the pool unless the failure poisoned it.
    fn settle<T, U>(
        &self,
        instance: Instance,
        result: wasmtime::Result<Result<T, types::PluginError>>,
        check: impl FnOnce(T) -> Result<U, Failure>,
    ) -> Result<U, Failure> {
        let result = match result {
            Ok(Ok(answer)) => check(answer),
            Ok(Err(e)) => Err(Failure::Returned { message: e.message }),
            Err(e) => Err(self.classify(e, &instance.store)),
        };
        self.finish(instance, result)
    }

    /// The `rewrite` hook: a new path and query, or `None` to keep it.
    // This and the other hooks are kept out of line: inlined into
    // `Proxy::run`, their code made a request on a route without plugins
    // run ~90 more instructions (bench/RESULTS.md, session 26), and the
    // extra call costs the chain nothing measurable.
    #[inline(never)]
    pub fn rewrite(&self, parts: &mut request::Parts, call: &mut CallInfo) -> Result<Option<PathAndQuery>, Failure> {
        // Shared rather than copied on the host (wasmtime copies it into the
        // guest): the request's URI is lent to the store for the call, and
        // the guest is handed the path from this.
        let path = parts.uri.path_and_query().cloned();
        let path = path.as_ref().map_or("/", PathAndQuery::as_str);
        let mut instance = self.checkout()?;
        let result = lent(&mut instance, parts, None, call, false, |i| match &i.hooks.rewrite {
            Some(g) => g.call_rewrite(&mut i.store, path),
            None => Err(not_exported("rewrite")),
        });
        self.settle(instance, result, |path| path.map(valid_path).transpose())
    }

    /// The `request-filter` hook. Header edits are applied to `parts` as the
    /// plugin makes them; a new path is applied to `parts.uri`.
    #[inline(never)]
    pub fn on_request(
        &self,
        parts: &mut request::Parts,
        body: Option<&Bytes>,
        call: &mut CallInfo,
    ) -> Result<RequestOutcome, Failure> {
        let mut instance = self.checkout()?;
        let result = lent(&mut instance, parts, None, call, true, |i| match &i.hooks.request {
            Some(g) => g.call_on_request(&mut i.store, body.map(|b| &b[..])),
            None => Err(not_exported("request-filter")),
        });
        self.settle(instance, result, |action| match action {
            request_filter::RequestAction::Continue(edits) => {
                if let Some(path) = edits.path_with_query {
                    let mut uri = std::mem::take(&mut parts.uri).into_parts();
                    uri.path_and_query = Some(valid_path(path)?);
                    parts.uri = http::Uri::from_parts(uri).map_err(|e| Failure::invalid(e.to_string()))?;
                }
                Ok(RequestOutcome::Continue {
                    body: edits.body.map(Bytes::from),
                    stash: edits.stash,
                })
            }
            request_filter::RequestAction::BufferBody if body.is_some() => {
                Err(Failure::invalid("asked for the body again after it was given"))
            }
            request_filter::RequestAction::BufferBody => Ok(RequestOutcome::BufferBody),
            request_filter::RequestAction::Respond(r) => valid_response(r).map(RequestOutcome::Respond),
        })
    }

    /// The `response-filter` hook. Header edits are applied to `parts` as
    /// the plugin makes them, and to `raw`, the backend's fields when they
    /// were kept as it wrote them (see [`Fields`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a borrow of a different part of the proxy's exchange, taken apart again at once"
    )]
    #[inline(never)]
    pub(crate) fn on_response(
        &self,
        request: &mut request::Parts,
        host: &mut Option<HeaderValue>,
        parts: &mut response::Parts,
        raw: &mut Option<RawFields>,
        body: Option<&Bytes>,
        stash: Option<&[u8]>,
        call: &mut CallInfo,
    ) -> Result<ResponseOutcome, Failure> {
        let mut instance = self.checkout()?;
        let status = parts.status.as_u16();
        let mut response = ForResponse {
            headers: &mut parts.headers,
            raw,
            host,
        };
        let result = lent(&mut instance, request, Some(&mut response), call, true, |i| {
            match &i.hooks.response {
                Some(g) => {
                    let body = body.map(|b| &b[..]);
                    g.call_on_response(&mut i.store, status, body, stash)
                }
                None => Err(not_exported("response-filter")),
            }
        });
        self.settle(instance, result, |action| match action {
            response_filter::ResponseAction::Continue(edits) => {
                let status = edits.status.map(valid_status).transpose()?;
                Ok(ResponseOutcome::Continue {
                    status,
                    body: edits.body.map(Bytes::from),
                })
            }
            response_filter::ResponseAction::BufferBody if body.is_some() => {
                Err(Failure::invalid("asked for the body again after it was given"))
            }
            response_filter::ResponseAction::BufferBody => Ok(ResponseOutcome::BufferBody),
            response_filter::ResponseAction::Replace(r) => valid_response(r).map(ResponseOutcome::Replace),
        })
    }

    /// The `error-handler` hook: the response for a failed request.
    #[inline(never)]
    pub fn on_error(
        &self,
        parts: &mut request::Parts,
        err: &ErrorInfo,
        call: &mut CallInfo,
    ) -> Result<http::Response<BoxBody>, Failure> {
        use error_handler::ErrorKind as K;
        let kind = match (err.kind, &err.plugin) {
            (ErrorKind::PluginFailed, plugin) => K::PluginFailed(plugin.as_deref().unwrap_or_default().to_owned()),
            (ErrorKind::DestinationNotFound, _) => K::DestinationNotFound,
            (ErrorKind::DestinationUnavailable, _) => K::DestinationUnavailable,
            (ErrorKind::ConnectionRefused, _) => K::ConnectionRefused,
            (ErrorKind::ConnectionTimeout, _) => K::ConnectionTimeout,
            (ErrorKind::HttpResponseTimeout, _) => K::HttpResponseTimeout,
            (ErrorKind::HttpProtocolError, _) => K::HttpProtocolError,
            (ErrorKind::HttpRequestDenied, _) => K::HttpRequestDenied,
            (ErrorKind::HttpRequestError, _) => K::HttpRequestError,
            // Kinds newer than the contract travel by their RFC 9209 name.
            (other @ (ErrorKind::TlsCertificateError | ErrorKind::TlsProtocolError), _) => {
                K::Other(other.as_str().to_owned())
            }
        };
        let record = error_handler::ProxyError {
            kind,
            status: err.status.as_u16(),
            upstream: err.upstream.as_deref().map(str::to_owned),
            endpoint: err.endpoint.as_deref().map(str::to_owned),
            attempts: err.attempts,
            request_id: err.request_id.to_string(),
        };
        let mut instance = self.checkout()?;
        let result = lent(&mut instance, parts, None, call, false, |i| match &i.hooks.error {
            Some(g) => g.call_on_error(&mut i.store, &record),
            None => Err(not_exported("error-handler")),
        });
        self.settle(instance, result, valid_response)
    }

    /// The `balancer` hook: the index of the endpoint to use. An index out
    /// of range, or of an endpoint that may not take traffic, is invalid.
    #[inline(never)]
    pub fn pick(
        &self,
        parts: &mut request::Parts,
        input: &PickInput,
        call: &mut CallInfo,
    ) -> Result<Option<usize>, Failure> {
        let states: Vec<balancer::EndpointState> = input
            .endpoints
            .iter()
            .map(|e| balancer::EndpointState {
                weight: e.weight,
                healthy: e.healthy,
                in_flight: e.in_flight,
            })
            .collect();
        let ctx = balancer::PickContext {
            generation: input.generation,
            attempt: input.attempt,
            tried: input.tried.clone(),
        };
        let mut instance = self.checkout()?;
        instance.store.data_mut().endpoint_urls = input.endpoints.iter().map(|e| Arc::clone(&e.url)).collect();
        let result = lent(&mut instance, parts, None, call, false, |i| match &i.hooks.balancer {
            Some(g) => g.call_pick(&mut i.store, &states, &ctx),
            None => Err(not_exported("balancer")),
        });
        instance.store.data_mut().endpoint_urls.clear();
        self.settle(instance, result, |picked| match picked {
            None => Ok(None),
            Some(i) => match input.endpoints.get(i as usize) {
                Some(e) if e.healthy => Ok(Some(i as usize)),
                Some(_) => Err(Failure::invalid(format!(
                    "picked endpoint {i}, which may not take traffic"
                ))),
                None => Err(Failure::invalid(format!(
                    "picked endpoint {i}, but there are only {}",
                    input.endpoints.len()
                ))),
            },
        })
    }
}

/// Exports are checked when a plugin is attached to a route, so this is
/// unreachable in a running proxy; it fails the call rather than panicking.
fn not_exported(hook: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("the plugin does not export the {hook} hook"))
}
