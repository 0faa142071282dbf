//! Entry points for the fuzz targets in `fuzz/` (not part of the API):
//! each takes arbitrary bytes, runs one piece of input handling, and
//! panics only if an invariant breaks.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{EncodedSlash, PathPolicy};

/// The config parser and validator: any text gives a config or an error,
/// and an error names a place.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(err) = crate::config::Config::parse(Path::new("fuzz.toml"), text) {
        assert!(err.to_string().starts_with("fuzz.toml"), "{err}");
    }
}

/// Path normalisation: a normalised path starts with `/`, has no dot
/// segments, normalises to itself, and passes the post-rewrite check.
pub fn path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for merge_slashes in [true, false] {
        for encoded_slash in [EncodedSlash::Keep, EncodedSlash::Reject, EncodedSlash::Decode] {
            let policy = PathPolicy {
                merge_slashes,
                encoded_slash,
            };
            let Ok(normal) = crate::proxy::path::normalize(path, &policy) else {
                continue;
            };
            assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
            assert!(
                !normal.split('/').any(|s| s == "." || s == ".."),
                "{path:?} -> {normal:?}"
            );
            if merge_slashes {
                assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
            }
            let again = crate::proxy::path::normalize(&normal, &policy).expect("a normal path normalises");
            assert_eq!(again, normal, "not idempotent for {path:?}");
            assert!(
                crate::proxy::path::normalize_rewritten(&normal, &policy).is_ok()
                    || encoded_slash != EncodedSlash::Decode
            );
        }
    }
}

/// Forwarding header handling: from any client headers, the upstream gets
/// no hop-by-hop header (but `TE: trailers` when the client accepts them)
/// or internal header, and an `X-Forwarded-For` that ends with the peer
/// (and is only the peer when it is not trusted).
pub fn headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let peer: IpAddr = [203, 0, 113, 9].into();
    for trusted in [false, true] {
        let mut h = headers.clone();
        crate::proxy::sanitize_for_fuzzing(&mut h, peer, trusted);
        for hop in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(hop), "{hop} survived");
        }
        let te: Vec<_> = h.get_all("te").iter().collect();
        assert!(te.is_empty() || te == ["trailers"], "TE survived as {te:?}");
        assert!(!h.keys().any(|k| k.as_str().starts_with("x-plumeway-")));
        let xff = h
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if trusted {
            assert!(xff.ends_with("203.0.113.9"), "{xff}");
        } else {
            assert_eq!(xff, "203.0.113.9");
            assert!(
                h.get("forwarded")
                    .is_some_and(|v| v.as_bytes().starts_with(b"for=203.0.113.9;"))
            );
        }
    }
}

/// Plugin output validation: whatever a plugin returns, the proxy gets a
/// valid path or response, or a failure.
pub fn plugin_output(data: &[u8]) {
    crate::plugin::validate_for_fuzzing(data);
}

/// Request head handling end to end over an in-memory connection: hyper's
/// parser, then plumeway's checks and normalisation. Every input ends
/// with an answer or a closed connection, never a hang or a panic.
pub fn request_head(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    let data = data.to_vec();
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let mut req = req;
                let server = crate::config::ServerConfig::default();
                let status = match crate::proxy::check_for_fuzzing(&mut req, &server) {
                    Ok(path) => {
                        assert!(path.starts_with('/'));
                        200
                    }
                    Err(status) => status,
                };
                let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(resp)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let driver = tokio::spawn(conn);
            let _ = client.write_all(&data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_end(&mut out)).await;
            assert!(read.is_ok(), "the connection hung");
            let _ = driver.await;
        });
    });
}
