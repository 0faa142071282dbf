//! gRPC awareness: a gRPC client reads failures from `grpc-status`, not
//! from the HTTP status, and sets its own deadline with `grpc-timeout`.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::{ErrorKind, ProxyError};
use crate::body::{BoxBody, full};

/// Whether a request is a gRPC call (`content-type: application/grpc…`).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-timeout` (an integer of at most 8 digits and a unit: `H`, `M`,
/// `S`, `m`, `u`, `n`), as a duration.
pub(super) fn timeout(value: &HeaderValue) -> Option<Duration> {
    let v = value.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code for a failure the proxy answers itself.
pub(super) fn status(err: &ProxyError) -> u8 {
    // https://grpc.github.io/grpc/core/md_doc_statuscodes.html
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    const DEADLINE_EXCEEDED: u8 = 4;
    const UNIMPLEMENTED: u8 = 12;
    const RESOURCE_EXHAUSTED: u8 = 8;
    match err {
        ProxyError::RateLimited { .. } | ProxyError::BodyTooLarge { .. } => RESOURCE_EXHAUSTED,
        ProxyError::RequestTimeout { .. } => DEADLINE_EXCEEDED,
        _ => match err.kind() {
            ErrorKind::DestinationNotFound => UNIMPLEMENTED,
            ErrorKind::DestinationUnavailable
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionTimeout
            | ErrorKind::HttpProtocolError
            | ErrorKind::TlsCertificateError
            | ErrorKind::TlsProtocolError => UNAVAILABLE,
            ErrorKind::HttpResponseTimeout => DEADLINE_EXCEEDED,
            ErrorKind::HttpRequestDenied | ErrorKind::HttpRequestError | ErrorKind::PluginFailed => INTERNAL,
        },
    }
}

/// The answer to a failed gRPC call: HTTP 200 and a trailers-only
/// response carrying `grpc-status` and `grpc-message`, as gRPC clients
/// expect, plus `Proxy-Status` for people reading the headers.
pub(super) fn error_response(err: &ProxyError) -> Response<BoxBody> {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(status(err))));
    let message = format!("plumeway: {}", err.kind().as_str());
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    let plain = err.to_response();
    if let Some(ps) = plain.headers().get("proxy-status") {
        h.insert("proxy-status", ps.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let t = |s: &str| timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
    }
}
