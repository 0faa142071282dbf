//! The memory a client connection needs only while it has a request in
//! hand — its read buffer, the response's write buffer, the header map —
//! kept per thread between requests and handed out last in, first out: as
//! nginx takes a request's memory from a pool another request has just
//! freed, a connection gets the buffers the last one done with them let
//! go of, still in cache. An idle connection holds none of them.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Spares of each kind kept per thread: enough for the connections that
/// go idle between two of their requests on a busy server; past it they
/// are freed.
const KEPT: usize = 256;

/// A read buffer grown past this (a large head) is freed rather than kept.
const KEPT_READ: usize = 16 * 1024;

/// A write buffer grown past this (a large body gathered) is freed rather
/// than kept.
const KEPT_WRITE: usize = 16 * 1024;

/// A header map with room for more fields than this is freed rather than
/// kept.
const KEPT_FIELDS: usize = 64;

struct Spares {
    reads: Vec<BytesMut>,
    writes: Vec<Vec<u8>>,
    maps: Vec<HeaderMap>,
}

thread_local! {
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            reads: Vec::new(),
            writes: Vec::new(),
            maps: Vec::new(),
        })
    };
}

/// An empty read buffer with room for at least `size` bytes.
pub(super) fn read_buffer(size: usize) -> BytesMut {
    SPARES
        .with_borrow_mut(|s| s.reads.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(size))
}

/// Takes back `buf` if it is empty and nothing else shares its memory (a
/// request's header values, split off it, may still), leaving an empty
/// buffer with no memory in its place. Taken back, it has room for `size`
/// bytes again, from the start of its memory: the next read lands in the
/// lines the last one warmed. One grown for a large head is freed instead.
/// A buffer given back already (no memory) is left at once: a connection
/// waiting for its next request gives back on every wake-up.
pub(super) fn give_read(buf: &mut BytesMut, size: usize) {
    if buf.capacity() != 0 && buf.is_empty() && buf.try_reclaim(size) {
        let buf = std::mem::take(buf);
        if buf.capacity() <= KEPT_READ {
            keep(|s| &mut s.reads, buf);
        }
    }
}

/// An empty write buffer.
pub(super) fn write_buffer(size: usize) -> Vec<u8> {
    SPARES
        .with_borrow_mut(|s| s.writes.pop())
        .unwrap_or_else(|| Vec::with_capacity(size))
}

/// Takes back a write buffer.
pub(super) fn give_write(mut out: Vec<u8>) {
    if out.capacity() == 0 || out.capacity() > KEPT_WRITE {
        return;
    }
    out.clear();
    keep(|s| &mut s.writes, out);
}

/// An empty header map.
pub(super) fn map() -> HeaderMap {
    SPARES.with_borrow_mut(|s| s.maps.pop()).unwrap_or_default()
}

/// Takes back a header map, emptied here: its values may share a
/// connection's read buffer, which can be reused only once nothing else
/// holds it.
pub(super) fn give_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > KEPT_FIELDS {
        return;
    }
    map.clear();
    keep(|s| &mut s.maps, map);
}

/// Puts `spare` on its list, unless the list is full.
fn keep<T>(list: fn(&mut Spares) -> &mut Vec<T>, spare: T) {
    SPARES.with_borrow_mut(|s| {
        let list = list(s);
        if list.len() < KEPT {
            list.push(spare);
        }
    });
}
