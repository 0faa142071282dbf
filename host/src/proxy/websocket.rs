//! WebSocket upgrades (RFC 6455): validate the client's handshake, carry it
//! to an endpoint on a connection of its own, check the endpoint's accept
//! key, then splice bytes both ways until either side is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::upstream::InFlight;

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a client's upgrade request was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Invalid {
    /// Only GET can be upgraded.
    #[error("a WebSocket handshake must be a GET")]
    Method,
    /// Only version 13 exists.
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    /// The key must be 16 bytes, base64-encoded.
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
}

/// Whether the request asks to switch to WebSocket: `Connection` lists
/// `upgrade` and `Upgrade` lists `websocket`.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    let lists = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    lists(header::CONNECTION, "upgrade") && lists(header::UPGRADE, "websocket")
}

/// Checks an upgrade request and returns its key.
pub(super) fn validate(method: &Method, headers: &HeaderMap) -> Result<String, Invalid> {
    if method != Method::GET {
        return Err(Invalid::Method);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Invalid::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .ok_or(Invalid::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
        Ok(raw) if raw.len() == 16 => Ok(key.trim().to_owned()),
        _ => Err(Invalid::Key),
    }
}

/// The `Sec-WebSocket-Accept` value for `key`.
pub(super) fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Puts back the two headers that make a message an upgrade, which the
/// hop-by-hop cleanup removed.
pub(super) fn mark_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Waits for both sides to finish switching protocols, then copies bytes
/// both ways. A clean end on one side is passed on as a half-close; an error
/// on either side, or `idle` without a byte in either direction, closes
/// both. `in_flight` counts the connection against its endpoint meanwhile.
pub(super) async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    idle: Duration,
    in_flight: InFlight,
    endpoint: Arc<str>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(endpoint = &*endpoint, error = %err, "WebSocket upgrade did not complete");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (backend_read, backend_write) = tokio::io::split(TokioIo::new(backend));
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up = pump(client_read, backend_write, Arc::clone(&last), start);
    let down = pump(backend_read, client_write, Arc::clone(&last), start);
    let watchdog = async {
        loop {
            let since_start = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since_start + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::pin!(up, down, watchdog);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(_) => break,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(_) => break,
            },
            () = &mut watchdog => {
                tracing::debug!(endpoint = &*endpoint, ?idle, "WebSocket idle: closing both sides");
                break;
            }
        }
    }
    drop(in_flight);
}

/// Copies `from` to `to` until `from` ends (then shuts `to`'s write side,
/// passing the half-close on), recording activity.
async fn pump<R, W>(mut from: R, mut to: W, last: Arc<AtomicU64>, start: Instant) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        // Waiting for the write is the backpressure: a slow reader slows
        // the writer instead of growing a buffer here.
        to.write_all(&buf[..n]).await?;
        last.store(
            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn validates_method_version_and_key() {
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(validate(&Method::GET, &h).is_ok());
        assert_eq!(validate(&Method::POST, &h), Err(Invalid::Method));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(validate(&Method::GET, &h), Err(Invalid::Key));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(validate(&Method::GET, &h), Err(Invalid::Version));
    }
}
