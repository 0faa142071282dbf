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

/// Whether the client's `TE` includes `trailers`.
pub(super) fn accepts_trailers(headers: &HeaderMap) -> bool {
    has_token(headers, &header::TE, "trailers")
}

/// Whether the comma-separated list in the `name` headers holds `token`
/// (case-insensitive, as such tokens are).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // On the bytes: every request and response asks this of `Connection`,
    // and checking each value is text first cost more than the search.
    headers.get_all(name).iter().any(|v| has_token_in(v.as_bytes(), token))
}

/// Whether one comma-separated value holds `token` (case-insensitive).
pub(crate) fn has_token_in(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a response field named `name` (as read, in any case) is one
/// that [`strip_hop_by_hop_response`] removes by its name: the backend's
/// own HTTP/1.1 reader asks this of fields it keeps out of a map.
pub(crate) fn is_hop_by_hop_response(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .chain([&header::PROXY_AUTHENTICATE])
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes hop-by-hop headers from an upstream's response, including
/// every header that `Connection` names; a response also carries
/// `Proxy-Authenticate` for this hop only.
pub(super) fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    // The same single pass as for requests, looking for one name more.
    let present: smallvec::SmallVec<[HeaderName; 2]> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || *k == header::PROXY_AUTHENTICATE)
        .cloned()
        .collect();
    if !present.is_empty() {
        strip_named(headers, &present);
    }
}

/// Headers the proxy adds to a request for its upstream, kept beside the
/// client's map instead of inserted into it: the pool writes them after
/// the map's fields, which saves a hash and an insert per header on every
/// request. None of these names is left in the map.
pub(crate) type Added = Vec<(HeaderName, HeaderValue)>;

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Which of the headers the proxy sets a client's request already has, one
/// bit each; the usual request has none, and then no name is looked up.
#[derive(Debug, Clone, Copy, Default)]
struct Present(u8);

impl Present {
    const XFF: u8 = 1;
    const FORWARDED: u8 = 1 << 1;
    const XFP: u8 = 1 << 2;
    const XFH: u8 = 1 << 3;
    const REAL_IP: u8 = 1 << 4;
    const VIA: u8 = 1 << 5;
    const REQUEST_ID: u8 = 1 << 6;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// What one name of a client's request is to the proxy.
enum Kind {
    HopByHop,
    Internal,
    Set(u8),
    Other,
}

fn kind(name: &HeaderName) -> Kind {
    // One match on the text: a few length checks and a compare, where
    // comparing against each name in turn, or hashing, costs more.
    match name.as_str() {
        "connection"
        | "keep-alive"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade"
        | "proxy-connection"
        | "proxy-authorization" => Kind::HopByHop,
        "x-forwarded-for" => Kind::Set(Present::XFF),
        "forwarded" => Kind::Set(Present::FORWARDED),
        "x-forwarded-proto" => Kind::Set(Present::XFP),
        "x-forwarded-host" => Kind::Set(Present::XFH),
        "x-real-ip" => Kind::Set(Present::REAL_IP),
        "via" => Kind::Set(Present::VIA),
        "x-request-id" => Kind::Set(Present::REQUEST_ID),
        other if other.starts_with("x-plumeway-") => Kind::Internal,
        _ => Kind::Other,
    }
}

/// A client's request head made ready for the upstream.
pub(super) struct Forwarding<'a> {
    /// Who sent it, and whether what it says of earlier hops is believed
    /// (one of `server.trusted_proxies`).
    pub client: &'a Client,
    pub trusted: bool,
    /// The host the client asked for (the URI's authority for HTTP/2 and
    /// absolute-form requests), and whether it came from the URI.
    pub host: Option<HeaderValue>,
    pub host_from_uri: bool,
    /// The route's `strip_headers`.
    pub strip: &'a [HeaderName],
    pub version: Version,
    pub request_id: &'a HeaderValue,
}

impl Forwarding<'_> {
    /// Cleans `headers` (hop-by-hop headers, plumeway's internal ones and the
    /// route's `strip_headers` out) and returns what the proxy adds:
    /// `TE: trailers` again when the client accepts trailers (gRPC needs it
    /// on the next hop too), `X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
    /// `Via`, `Host` and the request id. See [`forwarded`] for what a
    /// trusted proxy's headers become.
    pub(super) fn apply(&self, headers: &mut HeaderMap) -> Added {
        let mut hop: smallvec::SmallVec<[HeaderName; 2]> = smallvec::SmallVec::new();
        let (mut internal, mut present) = (false, Present::default());
        for name in headers.keys() {
            match kind(name) {
                Kind::HopByHop => hop.push(name.clone()),
                Kind::Internal => internal = true,
                Kind::Set(bit) => present.0 |= bit,
                Kind::Other => {}
            }
        }
        let mut added = Added::with_capacity(9);
        if hop.contains(&header::TE) && accepts_trailers(headers) {
            added.push((header::TE, HeaderValue::from_static("trailers")));
        }
        if !hop.is_empty() {
            strip_named(headers, &hop);
        }
        if internal {
            strip_internal(headers);
        }
        forwarded(
            headers,
            self.client,
            self.host.as_ref(),
            self.trusted,
            present,
            &mut added,
        );
        for name in self.strip {
            headers.remove(name);
            added.retain(|(n, _)| n != name);
        }
        let via = via_value(headers, self.version, present.has(Present::VIA));
        added.push((header::VIA, via));
        if let Some(host) = &self.host {
            // A Host from the head stays where it is, unless something above
            // removed it; HTTP/1.1 has no place for the URI's authority but
            // Host.
            let gone = !hop.is_empty() || !self.strip.is_empty();
            if self.host_from_uri || (gone && !headers.contains_key(header::HOST)) {
                headers.remove(header::HOST);
                added.push((header::HOST, host.clone()));
            }
        }
        if present.has(Present::REQUEST_ID) {
            headers.remove(super::request_id::HEADER);
        }
        added.push((super::request_id::HEADER, self.request_id.clone()));
        added
    }
}

/// Puts what [`Forwarding::apply`] added into the map itself, for the
/// paths that send a map as it is (hyper's clients, WebSocket handshakes).
pub(crate) fn merge_added(headers: &mut HeaderMap, added: &[(HeaderName, HeaderValue)]) {
    for (name, value) in added {
        headers.insert(name.clone(), value.clone());
    }
}

/// Removes the hop-by-hop headers found (`present`) and every header that
/// `Connection` names.
fn strip_named(headers: &mut HeaderMap, present: &[HeaderName]) {
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
    for name in named.iter().chain(present) {
        headers.remove(name);
    }
}

/// Tells the upstream who the client is, into `added`. From a trusted
/// proxy (one of `server.trusted_proxies`), what it says is kept and this
/// hop appended: `X-Forwarded-For`, `Forwarded`, and its
/// `X-Forwarded-Proto`/`-Host`/`X-Real-IP` stay as they are. From anyone
/// else those headers are replaced, so a client cannot forge its address
/// or scheme; `X-Real-IP` is the peer's address then. `present` says which
/// of them the client sent; only those are looked up.
fn forwarded(
    headers: &mut HeaderMap,
    client: &Client,
    host: Option<&HeaderValue>,
    trusted: bool,
    present: Present,
    added: &mut Added,
) {
    let joined = |headers: &HeaderMap, name: &HeaderName| joined(headers.get_all(name).iter());
    // The address was written once for the connection; its header value is
    // shared, not copied.
    let ip = &*client.ip;
    let prior_for = if trusted && present.has(Present::XFF) {
        joined(headers, &XFF)
    } else {
        None
    };
    let xff = match prior_for {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {ip}")).ok(),
        None => Some(client.ip_header.clone()),
    };
    // A trusted chain that cannot be extended is passed on as it came.
    if let Some(v) = xff {
        if present.has(Present::XFF) {
            headers.remove(&XFF);
        }
        added.push((XFF, v));
    }

    let prior_forwarded = if trusted && present.has(Present::FORWARDED) {
        joined(headers, &header::FORWARDED)
    } else {
        None
    };
    let ours = client.forwarded_element(host);
    let value = match prior_forwarded {
        Some(prior) => ours.and_then(|e| HeaderValue::try_from(format!("{prior}, {}", e.to_str().ok()?)).ok()),
        None => ours,
    };
    if present.has(Present::FORWARDED) {
        headers.remove(header::FORWARDED);
    }
    if let Some(v) = value {
        added.push((header::FORWARDED, v));
    }

    // Kept from a trusted proxy, else ours.
    let mut set = |name: HeaderName, bit: u8, value: Option<HeaderValue>| {
        if present.has(bit) {
            if trusted {
                return;
            }
            headers.remove(&name);
        }
        if let Some(v) = value {
            added.push((name, v));
        }
    };
    set(XFP, Present::XFP, Some(HeaderValue::from_static(client.proto)));
    set(XFH, Present::XFH, host.cloned());
    set(REAL_IP, Present::REAL_IP, Some(client.ip_header.clone()));
}

/// A connection's last `Forwarded` element, with the host it names.
pub(crate) type LastForwarded = std::sync::Mutex<Option<(Option<HeaderValue>, HeaderValue)>>;

impl Client {
    /// This client's `Forwarded` element for a request to `host`, made
    /// once for as long as the connection's requests name the same host.
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut last = self.forwarded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((for_host, value)) = &*last
            && for_host.as_ref() == host
        {
            return Some(value.clone());
        }
        let host_text = host.and_then(|h| h.to_str().ok());
        let element = forwarded_element(self.peer.ip(), &self.ip, self.proto, host_text);
        // The text becomes the value as it is, without a copy.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(element)).ok()?;
        // The host kept is a copy: the request's value shares the memory
        // the connection read its head into, which would be held for the
        // connection's life, and could not be handed to the next
        // connection that reads (see `server::spare`).
        let kept = host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok());
        *last = Some((kept, value.clone()));
        Some(value)
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
pub(crate) fn append_via(headers: &mut HeaderMap, version: Version) {
    // One lookup: the entry is both read and written.
    match headers.entry(header::VIA) {
        http::header::Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(hop(version)));
        }
        http::header::Entry::Occupied(mut e) => {
            let value = joined_via(e.iter(), version);
            e.insert(value);
        }
    }
}

/// `Via` for a request: the client's hops, if it sent any (`prior`; taken
/// out of the map), then this one.
fn via_value(headers: &mut HeaderMap, version: Version, prior: bool) -> HeaderValue {
    if !prior {
        return HeaderValue::from_static(hop(version));
    }
    let value = joined_via(headers.get_all(header::VIA).iter(), version);
    headers.remove(header::VIA);
    value
}

/// This proxy's element of `Via`, for a message received in `version`.
pub(crate) fn hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9 plumeway",
        Version::HTTP_10 => "1.0 plumeway",
        Version::HTTP_2 => "2 plumeway",
        Version::HTTP_3 => "3 plumeway",
        _ => "1.1 plumeway",
    }
}

fn joined_via<'a>(prior: impl Iterator<Item = &'a HeaderValue>, version: Version) -> HeaderValue {
    let hop = hop(version);
    match joined(prior) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {hop}")).unwrap_or(HeaderValue::from_static(hop)),
        None => HeaderValue::from_static(hop),
    }
}

/// The text values of a header, as one comma-separated list; `None` when
/// there is none.
fn joined<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let values: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
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
        strip_hop_by_hop_response(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        // Tokens in any case; `close` and the fixed names next to another.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Close, Keep-Alive,x-Other "));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop_response(&mut h);
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

    /// The head `Forwarding::apply` leaves, with what it added merged in;
    /// and checks that the map kept none of the added names.
    fn forward(h: &mut HeaderMap, client: &Client, trusted: bool, host: &'static str, strip: &[HeaderName]) {
        let id = HeaderValue::from_static("id-1");
        let forwarding = Forwarding {
            client,
            trusted,
            host: Some(HeaderValue::from_static(host)),
            host_from_uri: false,
            strip,
            version: Version::HTTP_11,
            request_id: &id,
        };
        let added = forwarding.apply(h);
        for (name, _) in &added {
            assert!(!h.contains_key(name), "{name} both in the map and added");
        }
        merge_added(h, &added);
    }

    #[test]
    fn appends_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        h.insert("forwarded", HeaderValue::from_static("for=203.0.113.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-request-id", HeaderValue::from_static("client-id"));
        h.insert("host", HeaderValue::from_static("example.com"));
        let mut untrusted = h.clone();
        let local = Client::new("127.0.0.1:40000".parse().unwrap(), "http");
        forward(&mut h, &local, true, "example.com", &[]);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.1, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.1, for=127.0.0.1;proto=http;host=example.com"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "a trusted proxy's scheme is kept");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 edge, 1.1 plumeway");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h.get_all("x-request-id").iter().collect::<Vec<_>>(), ["id-1"]);

        // The same headers from an untrusted client are replaced.
        let v6 = Client::new("[::1]:40000".parse().unwrap(), "http");
        forward(&mut untrusted, &v6, false, "example.com:8080", &[]);
        assert_eq!(untrusted["x-forwarded-for"], "::1");
        assert_eq!(
            untrusted["forwarded"],
            "for=\"[::1]\";proto=http;host=\"example.com:8080\""
        );
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-real-ip"], "::1");
        assert_eq!(untrusted.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn each_request_of_a_connection_gets_a_forwarded_element_for_its_own_host() {
        // The element is kept per connection: a host change must not reuse it.
        let client = Client::new("192.0.2.7:40000".parse().unwrap(), "http");
        for host in ["a.example", "a.example", "b.example:81", "a.example"] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static(host));
            forward(&mut h, &client, false, host, &[]);
            let quoted = if host.contains(':') {
                format!("\"{host}\"")
            } else {
                host.to_owned()
            };
            assert_eq!(h["forwarded"], format!("for=192.0.2.7;proto=http;host={quoted}"));
        }
    }

    #[test]
    fn the_quick_classification_knows_every_hop_by_hop_name() {
        // `kind` spells the names out for speed; it must agree with the list.
        for name in &HOP_BY_HOP {
            assert!(matches!(kind(name), Kind::HopByHop), "{name}");
        }
    }

    #[test]
    fn a_plain_request_gets_the_forwarding_headers_once() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let client = Client::new("192.0.2.7:40000".parse().unwrap(), "https");
        forward(&mut h, &client, false, "example.com", &[]);
        for (name, value) in [
            ("host", "example.com"),
            ("accept", "*/*"),
            ("x-forwarded-for", "192.0.2.7"),
            ("forwarded", "for=192.0.2.7;proto=https;host=example.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
            ("x-real-ip", "192.0.2.7"),
            ("via", "1.1 plumeway"),
            ("x-request-id", "id-1"),
        ] {
            assert_eq!(h.get_all(name).iter().collect::<Vec<_>>(), [value], "{name}");
        }
        assert_eq!(h.len(), 9, "{h:?}");
    }

    #[test]
    fn what_is_stripped_stays_stripped() {
        // `TE: trailers` goes on; what `Connection` names, the internal
        // headers and the route's `strip_headers` do not, even when they
        // name a forwarding header or Host.
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("connection", HeaderValue::from_static("x-forwarded-for, host, x-a"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-plumeway-route", HeaderValue::from_static("forged"));
        h.insert("cookie", HeaderValue::from_static("a=b"));
        let client = Client::new("192.0.2.7:40000".parse().unwrap(), "http");
        let strip = [header::COOKIE, HeaderName::from_static("x-real-ip")];
        forward(&mut h, &client, true, "example.com", &strip);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7", "a hop-by-hop chain is not extended");
        assert_eq!(h["host"], "example.com", "Host is said again");
        for gone in ["connection", "x-a", "x-plumeway-route", "cookie", "x-real-ip"] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
    }
}
