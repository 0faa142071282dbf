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
/// both. When `shutdown` fires, each direction finishes the frame it is in,
/// sends a close frame (1001, going away), and the connection ends once the
/// peers are done or after a short grace period. `in_flight` counts the
/// connection against its endpoint meanwhile.
pub(super) async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    idle: Duration,
    in_flight: InFlight,
    endpoint: Arc<str>,
    shutdown: tokio::sync::watch::Receiver<bool>,
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
    // Frames to the backend are masked (RFC 6455 §5.3), to the client not.
    let up = pump(
        client_read,
        backend_write,
        Arc::clone(&last),
        start,
        shutdown.clone(),
        close_frame(true),
    );
    let down = pump(
        backend_read,
        client_write,
        Arc::clone(&last),
        start,
        shutdown,
        close_frame(false),
    );
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

/// How long, after sending close frames at shutdown, the peers get to
/// answer and hang up.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Copies `from` to `to` until `from` ends (then shuts `to`'s write side,
/// passing the half-close on), recording activity. On shutdown it stops at
/// the next frame boundary, sends `close`, and discards what else `from`
/// says (the peer's close answer) until it ends or the grace period is over.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    last: Arc<AtomicU64>,
    start: Instant,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    close: Vec<u8>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    let mut stopping = *shutdown.borrow();
    loop {
        if stopping && frames.at_boundary() {
            to.write_all(&close).await?;
            to.flush().await?;
            let drain = async {
                while from.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
            return to.shutdown().await;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            changed = shutdown.changed(), if !stopping => {
                stopping = changed.is_err() || *shutdown.borrow();
                continue;
            }
        };
        if n == 0 {
            return to.shutdown().await;
        }
        // Waiting for the write is the backpressure: a slow reader slows
        // the writer instead of growing a buffer here.
        to.write_all(&buf[..n]).await?;
        frames.feed(&buf[..n]);
        last.store(
            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// A close frame with status 1001 (going away), masked when it goes to the
/// backend.
fn close_frame(masked: bool) -> Vec<u8> {
    let payload = 1001u16.to_be_bytes();
    if !masked {
        return vec![0x88, 0x02, payload[0], payload[1]];
    }
    use std::hash::{BuildHasher, RandomState};
    let mask = (RandomState::new().hash_one(std::time::SystemTime::now()) as u32).to_be_bytes();
    vec![
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        payload[0] ^ mask[0],
        payload[1] ^ mask[1],
    ]
}

/// Follows frame boundaries in one direction of a WebSocket byte stream,
/// without buffering: header bytes are counted, payloads skipped.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: usize,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7f;
            let extended = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + mask {
                continue;
            }
            self.payload_left = match extended {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                _ => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0; 8])),
            };
            self.have = 0;
        }
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
    fn frame_boundaries_are_followed_across_reads() {
        let mut f = Frames::default();
        // A masked 5-byte text frame, split mid-header and mid-payload.
        let frame = [0x81u8, 0x85, 1, 2, 3, 4, 10, 11, 12, 13, 14];
        f.feed(&frame[..1]);
        assert!(!f.at_boundary());
        f.feed(&frame[1..8]);
        assert!(!f.at_boundary());
        f.feed(&frame[8..]);
        assert!(f.at_boundary());
        // A 300-byte unmasked frame (16-bit length) plus the next header byte.
        let mut big = vec![0x82u8, 126, 0x01, 0x2c];
        big.extend(std::iter::repeat_n(0u8, 300));
        big.push(0x81);
        f.feed(&big);
        assert!(!f.at_boundary(), "in the next frame's header");
        f.feed(&[0x00]);
        assert!(f.at_boundary(), "an empty frame ends at its header");
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
