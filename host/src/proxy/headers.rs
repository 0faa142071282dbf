//! Header hygiene between client and upstream: hop-by-hop headers stay on
//! their hop, and the upstream learns who the client was.

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Client;

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
    // One pass over the names finds the few present, usually none or only
    // `Connection`: removing each of the list by name would hash them all,
    // on every request and every response.
    let present: smallvec::SmallVec<[HeaderName; 2]> =
        headers.keys().filter(|k| HOP_BY_HOP.contains(k)).cloned().collect();
    if present.is_empty() {
        return;
    }
    // The usual `Connection: keep-alive` (or `close`) names nothing beyond
    // the fixed list: no name is made for it.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close") && !HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&present) {
        headers.remove(name);
    }
}

/// Whether the client's `TE` includes `trailers`.
pub(super) fn accepts_trailers(headers: &HeaderMap) -> bool {
    has_token(headers, &header::TE, "trailers")
}

/// Whether the comma-separated list in the `name` headers holds `token`
/// (case-insensitive, as such tokens are).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // On the bytes: every request and response asks this of `Connection`,
    // and checking each value is text first cost more than the search.
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers from an upstream's response; a response also
/// carries `Proxy-Authenticate` for this hop only.
pub(super) fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// Cleans a client's request headers for the upstream: hop-by-hop headers
/// out (`TE: trailers` said again, since gRPC needs it on the next hop
/// too), plumeway's internal headers out, forwarding headers set.
pub(super) fn sanitize(headers: &mut HeaderMap, client: &Client, host: Option<&HeaderValue>, trusted: bool) {
    let trailers = accepts_trailers(headers);
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    strip_internal(headers);
    set_forwarded(headers, client, host, trusted);
}

/// Tells the upstream who the client is. From a trusted proxy (one of
/// `server.trusted_proxies`), what it says is kept and this hop appended:
/// `X-Forwarded-For`, `Forwarded`, and its `X-Forwarded-Proto`/`-Host`.
/// From anyone else those headers are replaced, so a client cannot forge
/// its address or scheme; `X-Real-IP` is the peer's address then.
pub(super) fn set_forwarded(headers: &mut HeaderMap, client: &Client, host: Option<&HeaderValue>, trusted: bool) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let xfp = HeaderName::from_static("x-forwarded-proto");
    let xfh = HeaderName::from_static("x-forwarded-host");
    let real = HeaderName::from_static("x-real-ip");
    let joined = |headers: &HeaderMap, name: &HeaderName| {
        let prior: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!prior.is_empty()).then(|| prior.join(", "))
    };
    // The address was written once for the connection; its header value is
    // shared, not copied.
    let ip = &*client.ip;
    let prior_for = if trusted { joined(headers, &xff) } else { None };
    let value = match prior_for {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {ip}")).ok(),
        None => Some(client.ip_header.clone()),
    };
    if let Some(v) = value {
        headers.insert(xff, v);
    }

    let host_text = host.and_then(|h| h.to_str().ok());
    let element = forwarded_element(client.peer.ip(), ip, client.proto, host_text);
    let prior_forwarded = if trusted {
        joined(headers, &header::FORWARDED)
    } else {
        None
    };
    let forwarded = match prior_forwarded {
        Some(prior) => format!("{prior}, {element}"),
        None => element,
    };
    // The text becomes the value as it is, without a copy.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
        Ok(v) => {
            headers.insert(header::FORWARDED, v);
        }
        Err(_) => {
            headers.remove(header::FORWARDED);
        }
    }

    if !(trusted && headers.contains_key(&xfp)) {
        headers.insert(xfp, HeaderValue::from_static(client.proto));
    }
    if !(trusted && headers.contains_key(&xfh)) {
        match host {
            Some(h) => {
                headers.insert(xfh, h.clone());
            }
            None => {
                headers.remove(xfh);
            }
        }
    }
    if !(trusted && headers.contains_key(&real)) {
        headers.insert(real, client.ip_header.clone());
    }
}

/// One `Forwarded` element (RFC 7239): `for=…;proto=…;host=…`, quoting
/// what is not a token (IPv6 addresses, `host:port`). Made to its exact
/// length, so it becomes a header value without another allocation.
fn forwarded_element(client: IpAddr, ip: &str, proto: &str, host: Option<&str>) -> String {
    let (open, close) = if client.is_ipv6() { ("\"[", "]\"") } else { ("", "") };
    let host = match host {
        Some(h) if is_token(h) => [";host=", h, ""],
        Some(h) if !h.contains(['"', '\\']) => [";host=\"", h, "\""],
        _ => ["", "", ""],
    };
    let pieces = ["for=", open, ip, close, ";proto=", proto, host[0], host[1], host[2]];
    let mut element = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for piece in pieces {
        element.push_str(piece);
    }
    element
}

/// Whether `s` is an RFC 9110 token, which a `Forwarded` value need not quote.
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers a client may not set: plumeway's own (`x-plumeway-*`), which
/// upstreams may trust as coming from the proxy.
pub(super) fn strip_internal(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-plumeway-"))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
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

        // Tokens in any case; `close` and the fixed names next to another.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Close, Keep-Alive,x-Other "));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn finds_tokens_in_lists_in_any_case() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static("Upgrade ,  CLOSE"));
        assert!(has_token(&h, &header::CONNECTION, "close"));
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(has_token(&h, &header::CONNECTION, "keep-alive"));
        assert!(!has_token(&h, &header::CONNECTION, "clos"));
        assert!(!has_token(&h, &header::TE, "trailers"));
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("deflate, closed"));
        assert!(!has_token(&h, &header::TE, "close"));
    }

    #[test]
    fn appends_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        h.insert("forwarded", HeaderValue::from_static("for=203.0.113.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let mut untrusted = h.clone();
        let local = Client::new("127.0.0.1:40000".parse().unwrap(), "http");
        set_forwarded(&mut h, &local, Some(&HeaderValue::from_static("example.com")), true);
        append_via(&mut h, Version::HTTP_11);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.1, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.1, for=127.0.0.1;proto=http;host=example.com"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "a trusted proxy's scheme is kept");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 edge, 1.1 plumeway");

        // The same headers from an untrusted client are replaced.
        let v6 = Client::new("[::1]:40000".parse().unwrap(), "http");
        set_forwarded(
            &mut untrusted,
            &v6,
            Some(&HeaderValue::from_static("example.com:8080")),
            false,
        );
        assert_eq!(untrusted["x-forwarded-for"], "::1");
        assert_eq!(
            untrusted["forwarded"],
            "for=\"[::1]\";proto=http;host=\"example.com:8080\""
        );
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-real-ip"], "::1");
    }
}
