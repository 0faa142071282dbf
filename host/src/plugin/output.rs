//! Checks on everything a plugin returns before the proxy uses it: a
//! plugin cannot produce an invalid message.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use super::Failure;
use super::bindings::plumeway::plugin::types;
use super::host::MANAGED_HEADERS;
use crate::body::{BoxBody, full};

/// A path and query from a plugin: must start with `/` and be a valid
/// request target (ASCII, without spaces or control characters).
pub(crate) fn valid_path(path: String) -> Result<PathAndQuery, Failure> {
    if !path.starts_with('/') {
        return Err(Failure::invalid(format!("path {path:?} does not start with \"/\"")));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return Err(Failure::invalid(format!(
            "path {path:?} contains spaces, control characters or non-ASCII bytes (percent-encode them)"
        )));
    }
    // The string lifted out of the guest becomes the path's storage as it
    // is, not copied; the rare path refused here is gone with it.
    PathAndQuery::from_maybe_shared(Bytes::from(path))
        .map_err(|e| Failure::invalid(format!("the path is not a valid request target: {e}")))
}

/// A status from a plugin: a final status, 200 to 599.
pub(crate) fn valid_status(status: u16) -> Result<StatusCode, Failure> {
    match StatusCode::from_u16(status) {
        Ok(s) if (200..=599).contains(&status) => Ok(s),
        _ => Err(Failure::invalid(format!("status {status} is not between 200 and 599"))),
    }
}

/// A complete response from a plugin, checked header by header.
pub(crate) fn valid_response(r: types::Response) -> Result<Response<BoxBody>, Failure> {
    let status = valid_status(r.status)?;
    let has_body = !r.body.is_empty();
    let mut resp = Response::new(full(Bytes::from(r.body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for (name, value) in r.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::invalid(format!("header name {name:?} is not valid")))?;
        if MANAGED_HEADERS.contains(&n.as_str()) {
            return Err(Failure::invalid(format!("header {name:?} is managed by the proxy")));
        }
        let v = HeaderValue::from_bytes(&value)
            .map_err(|_| Failure::invalid(format!("value of header {name:?} is not valid")))?;
        headers.append(n, v);
    }
    if has_body && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    Ok(resp)
}
