//! Header hygiene between client and upstream: hop-by-hop headers stay on
//! their hop, and the upstream learns who the client was.

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1),
/// plus the legacy ones that proxies have long treated the same way.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers from an upstream's response; a response also
/// carries `Proxy-Authenticate` for this hop only.
pub(super) fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// Tells the upstream who the client is: appends the client's address to
/// `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub(super) fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: &'static str, host: Option<&str>) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<&str> = headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()).collect();
    let value = if prior.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    let xfh = HeaderName::from_static("x-forwarded-host");
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => {
            headers.insert(xfh, h);
        }
        None => {
            headers.remove(xfh);
        }
    }
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3), as `1.1 plumeway`.
pub(super) fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_09 => "0.9 plumeway",
        Version::HTTP_10 => "1.0 plumeway",
        Version::HTTP_2 => "2 plumeway",
        Version::HTTP_3 => "3 plumeway",
        _ => "1.1 plumeway",
    };
    let prior: Vec<&str> = headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        HeaderValue::from_static(hop)
    } else {
        HeaderValue::from_str(&format!("{}, {hop}", prior.join(", "))).unwrap_or(HeaderValue::from_static(hop))
    };
    headers.insert(header::VIA, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn appends_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some("example.com"));
        append_via(&mut h, Version::HTTP_11);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 edge, 1.1 plumeway");
    }
}
