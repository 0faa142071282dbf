//! Request ids: the client's `X-Request-Id` when it is sane, else a new one.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`, read from the client and sent to the upstream and back.
/// A name made at compile time: looking up by `&str` parses it first.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of a request: taken from a well-formed `X-Request-Id`, or made
/// up. Made-up ids are unique within the process and hard to guess across
/// restarts (a random seed mixed with a counter). Held as the header value
/// the upstream request and the response carry, made once; [`text`] reads
/// it, and only plugins are given a copy of their own.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(HEADER)
        && !value.is_empty()
        && value.len() <= 128
        && value.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return value.clone();
    }
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64: consecutive counters give unrelated-looking ids.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Sixteen hex digits, written without the formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// An id from [`request_id`] as text: visible ASCII, by how it was taken
/// or made.
pub(crate) fn text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}
