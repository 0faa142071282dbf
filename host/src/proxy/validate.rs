//! Request and response heads that could be read two ways are refused
//! before anything acts on them (request smuggling, RFC 9112 §6.3): the
//! upstream never sees an ambiguous request, and the client never gets an
//! ambiguous response.
//!
//! hyper already refuses most malformed heads with 400 (obs-fold, bare CR,
//! a `Transfer-Encoding` other than a final `chunked`, conflicting
//! `Content-Length`s, `Transfer-Encoding` on HTTP/1.0, 431 for oversized
//! heads); what it lets through and is refused here:

use http::{HeaderMap, HeaderValue, Request, Version, header};

use super::ProxyError;
use crate::config::Limits;

/// Checks a request head; any problem is a 400 (414 for a long target)
/// that closes the connection. `framed`: its framing is known to be
/// unambiguous already, and it has exactly one Host.
pub(super) fn request<B>(req: &Request<B>, limits: &Limits, framed: bool) -> Result<(), ProxyError> {
    let bad = |reason: &str| {
        Err(ProxyError::BadRequest {
            reason: reason.to_owned(),
        })
    };
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target as u64 > limits.max_uri_bytes.get() {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let h = req.headers();
    // The server's own reader hands every head with framing of its own, or
    // without exactly one Host, to hyper (and so here unframed).
    if !framed && let Some(reason) = framing(h) {
        return bad(reason);
    }
    let http1 = req.version() == Version::HTTP_11 || req.version() == Version::HTTP_10;
    if !framed && http1 {
        let hosts = h.get_all(header::HOST).iter().count();
        match hosts {
            0 if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
                return bad("an HTTP/1.1 request without Host");
            }
            2.. => return bad("more than one Host header"),
            _ => {}
        }
    }
    // An absolute-form target names the host itself; a Host header that
    // says otherwise would let routing and the upstream disagree.
    if http1
        && let Some(authority) = req.uri().authority()
        && let Some(host) = h.get(header::HOST)
        && !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return bad("the Host header does not match the request target");
    }
    Ok(())
}

/// What makes a message's length ambiguous: both `Content-Length` and
/// `Transfer-Encoding`, `Content-Length` more than once (even with one
/// value), or `Transfer-Encoding` more than once. Shared by requests and
/// responses.
pub(crate) fn framing(h: &HeaderMap) -> Option<&'static str> {
    // Two lookups: one per name.
    let lengths = h.get_all(header::CONTENT_LENGTH).iter().count();
    let encodings = h.get_all(header::TRANSFER_ENCODING);
    framing_of(lengths, encodings.iter().count(), encodings.iter().next())
}

/// [`framing`] from the counts of each field and the first
/// `Transfer-Encoding`, for a parser that noted them as it read the head.
pub(crate) fn framing_of(lengths: usize, encodings: usize, te: Option<&HeaderValue>) -> Option<&'static str> {
    if lengths > 0 && encodings > 0 {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return Some("Content-Length more than once");
    }
    if encodings > 1 {
        return Some("Transfer-Encoding more than once");
    }
    if te.is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"chunked")) {
        return Some("a Transfer-Encoding other than chunked");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x");
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let limits = Limits::default();
        assert!(request(&req(&[("host", "a")]), &limits, false).is_ok());
        for lines in [
            &[("host", "a"), ("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("host", "a"), ("content-length", "5"), ("content-length", "5")],
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("host", "a"), ("transfer-encoding", "gzip")],
            &[],
            &[("host", "a"), ("host", "b")],
        ] {
            assert!(
                matches!(request(&req(lines), &limits, false), Err(ProxyError::BadRequest { .. })),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn long_targets_are_414() {
        let limits = Limits::default();
        let long = Request::builder()
            .uri(format!("/{}", "a".repeat(8192)))
            .header("host", "a")
            .body(())
            .unwrap();
        assert!(matches!(
            request(&long, &limits, false),
            Err(ProxyError::UriTooLong { .. })
        ));
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        let limits = Limits::default();
        let r = |host: &str| {
            Request::builder()
                .uri("http://good.example/x")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert!(request(&r("good.example"), &limits, false).is_ok());
        assert!(request(&r("evil.example"), &limits, false).is_err());
    }
}
