//! Request ids: the client's `X-Request-Id` when it is sane, else a new one.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
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
    let cut = BLOCK.try_with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() < digits.len() {
            // Reuses the block in place once every id cut from it is gone.
            block.reserve(IDS_PER_BLOCK * digits.len());
        }
        block.extend_from_slice(&digits);
        block.split().freeze()
    });
    // A thread that is ending has no block any more: the id gets its own.
    let id = cut.unwrap_or_else(|_| bytes::Bytes::copy_from_slice(&digits));
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Made-up ids cut from one block of memory, per thread.
const IDS_PER_BLOCK: usize = 256;

thread_local! {
    /// Where this thread's made-up ids are cut from. Each is a slice of a
    /// block that is shared already: an id of its own would allocate
    /// twice, once for its bytes and once more when first cloned (for the
    /// upstream request), which makes its shared header.
    static BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// An id from [`request_id`] as text: visible ASCII, by how it was taken
/// or made.
pub(crate) fn text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_ids_are_distinct_hex_across_blocks() {
        let none = HeaderMap::new();
        let ids: Vec<HeaderValue> = (0..IDS_PER_BLOCK * 3).map(|_| request_id(&none)).collect();
        // Ids outlive the block they were cut from being refilled.
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let text = text(id);
            assert_eq!(text.len(), 16, "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
            assert!(seen.insert(text.to_owned()), "{text} made twice");
        }
        // Ids keep coming whole once the blocks they came from are let go.
        drop(ids);
        for _ in 0..IDS_PER_BLOCK * 2 {
            assert_eq!(text(&request_id(&none)).len(), 16);
        }
    }

    #[test]
    fn a_sane_client_id_is_kept_and_others_replaced() {
        let with = |v: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_bytes(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with(b"abc-1"), "abc-1");
        assert_eq!(text(&with(b"has space")).len(), 16);
        assert_eq!(text(&with(b"")).len(), 16);
        assert_eq!(text(&with(&[b'x'; 129])).len(), 16);
    }
}
