//! HTTP/1.1 as a client speaks it to a backend (RFC 9112): the request
//! head out, the response head in, and the response body's framing. No
//! I/O here; `keepalive` moves the bytes.

use std::io::Write as _;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

/// Most header lines a response head (or trailer section) may have; hyper's
/// limit too.
const MAX_HEADERS: usize = 100;

/// The largest response head, and trailer section, accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body, and no framing header.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

impl Framing {
    /// The declared length; 0 for none and for chunked.
    pub(super) fn length(self) -> u64 {
        match self {
            Self::Length(n) => n,
            Self::None | Self::Chunked => 0,
        }
    }
}

/// Writes the request line and headers to `out`: `headers`, then `added`
/// (the proxy's own, which `headers` does not hold). The framing headers
/// are ours: the client's `Content-Length` is replaced by what the body
/// is, so the backend can never read the message another way than we send
/// it.
pub(super) fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: &[(HeaderName, HeaderValue)],
    framing: Framing,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            put_field(name, value, out);
        }
    }
    for (name, value) in added {
        put_field(name, value, out);
    }
    match framing {
        Framing::None => {}
        // Writing a number to a Vec cannot fail.
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one chunk of a chunked body: its size line, the data and CRLF.
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        // A zero-size chunk would end the body.
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk and, when there are trailers,
/// those.
pub(crate) fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(name, value, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// One `name: value` line of a head or trailer section.
pub(crate) fn put_field(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A response head, as read.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// Without `Connection` when it only said `keep-alive` or `close`:
    /// that belongs to this hop, and is kept in `connection` instead.
    /// Empty when the fields are in `raw`.
    pub(super) headers: HeaderMap,
    /// The fields as the backend wrote them, when they were asked for and
    /// none needs more than passing on (see [`RawFields`]).
    pub(super) raw: Option<RawFields>,
    pub(super) connection: Connection,
    /// The framing headers, noted while the head was read so that judging
    /// the body looks nothing up.
    framing: Fields,
}

/// How many `Content-Length` and `Transfer-Encoding` fields a head has, and
/// the first value of each.
#[derive(Debug, Default)]
struct Fields {
    lengths: usize,
    length: Option<HeaderValue>,
    encodings: usize,
    encoding: Option<HeaderValue>,
}

/// What a `Connection` header said of the connection itself (the server
/// side reads the client's with this too).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
}

impl Connection {
    /// Notes the tokens of one `Connection` value; true when it named
    /// nothing else, so the header need not be kept.
    pub(crate) fn note(&mut self, value: &[u8]) -> bool {
        // What nearly every backend says, without splitting it.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return true;
        }
        let mut only_ours = true;
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                only_ours = false;
            }
        }
        only_ours
    }
}

/// A response head's fields as the backend wrote them, for a client that
/// the server's own HTTP/1.1 writer answers: that writer copies them out as
/// they came. Making a map of them cost more than anything else in a plain
/// proxied request (a name looked up, a value checked, a hash and an
/// insert per field, a `Via` entry, then each field written out and
/// dropped again). Only heads whose fields need nothing done to them are
/// kept so; the rest go into a map as before. Response filters edit them
/// in place: the names they set or remove are left out here, and what
/// they set or append is in the response's map, written after these (see
/// the plugin host's `Fields`).
#[derive(Debug, Clone)]
pub(crate) struct RawFields {
    /// The whole head; `spans` index it.
    head: Bytes,
    /// Runs of whole `name: value` lines that go out as they are, each
    /// without its last CRLF. The fields the writer writes itself
    /// (`Content-Length`, `X-Request-Id`) and `Connection` are left out.
    spans: SmallVec<[[u32; 2]; 4]>,
    /// The `Content-Length` the backend gave, if any (never more than one).
    length: Option<u64>,
    /// Whether the backend sent a `Date`.
    dated: bool,
    /// The version the backend answered in, which names this hop in `Via`.
    version: Version,
    /// Names whose lines are not passed on: a response filter set or
    /// removed them, and their values, if any, are in the response's map.
    /// Only names the head has, so this is seldom more than empty: a
    /// `Vec`, which keeps the fields small, as they are moved whole from
    /// the backend's connection to the writer.
    skip: Vec<HeaderName>,
    /// Whether this hop's `Via` is to be written: a response filter may
    /// have set or removed it.
    via: bool,
}

/// The lines of `bytes`, each without its line end.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        let (line, next) = match memchr::memchr(b'\n', r) {
            Some(i) => (&r[..i], Some(&r[i + 1..])),
            None => (r, None),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// Whether `head` has a field named `name`: the places of the name's first
/// letter are found in one vectorised pass, and only those at a line's
/// start are looked at.
fn has_field(head: &[u8], name: &HeaderName) -> bool {
    let first = name.as_str().as_bytes()[0];
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), head)
        .any(|i| i > 0 && head[i - 1] == b'\n' && named(&head[i..], name))
}

/// Whether `line` is a field named `name`.
fn named(line: &[u8], name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name)
}

impl RawFields {
    /// The runs of lines to pass on, in order, each without its last CRLF.
    fn spans(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&[a, b]| &self.head[a as usize..b as usize])
    }

    /// Writes the fields to pass on to `out`, each line with its CRLF.
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        for run in self.spans() {
            if self.skip.is_empty() {
                out.extend_from_slice(run);
                out.extend_from_slice(b"\r\n");
                continue;
            }
            for line in lines(run) {
                if !self.skip.iter().any(|name| named(line, name)) {
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// Leaves `name`'s lines out from now on: a response filter set the
    /// name anew, or removed it.
    pub(crate) fn skip(&mut self, name: &HeaderName) {
        if *name == header::DATE {
            self.dated = false;
        } else if *name == header::VIA {
            // Never among the lines (a backend's `Via` needs a map).
            self.via = false;
            return;
        }
        // Kept only when the head has the name, so that a filter setting a
        // name the backend did not send (the usual case) leaves the runs to
        // be written whole.
        if !self.skip.contains(name) && has_field(&self.head, name) {
            self.skip.push(name.clone());
        }
    }

    /// Whether the writer adds this hop's `Via`: not once a response filter
    /// set or removed `Via`, which the map of these fields would hold.
    pub(crate) fn via(&self) -> bool {
        self.via
    }

    /// Forgets the backend's `Content-Length`: a response filter gave the
    /// response another body.
    pub(crate) fn forget_length(&mut self) {
        self.length = None;
    }

    /// The fields as a map, as they are read when they are not kept raw,
    /// with this hop's `Via` (as the proxy appends it to such a map), less
    /// the names left out: for a response filter that reads the fields.
    pub(crate) fn to_map(&self) -> Result<HeaderMap, Malformed> {
        let mut at = Places::new();
        if locate(&self.head, &mut at)?.is_none() {
            return malformed("a raw response head is incomplete");
        }
        let mut map = HeaderMap::with_capacity(at.len() + 1);
        fill_map(&self.head, &at, &mut map)?;
        crate::proxy::append_via(&mut map, self.version);
        for name in &self.skip {
            map.remove(name);
        }
        if !self.via {
            map.remove(header::VIA);
        }
        Ok(map)
    }

    /// The backend's `Content-Length`.
    pub(crate) fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the fields hold a `Date`.
    pub(crate) fn dated(&self) -> bool {
        self.dated
    }

    /// The version the backend answered in.
    pub(crate) fn version(&self) -> Version {
        self.version
    }
}

/// What a response field's name asks of [`RawFields`].
enum Kind {
    /// Passed on as it is.
    Pass,
    /// `Date`: passed on, and the writer adds none.
    Date,
    /// `Content-Length`: noted; the writer writes its own.
    Length,
    /// `Connection`: noted, and dropped if it names nothing else.
    Connection,
    /// `X-Request-Id`: the writer writes the request's own.
    RequestId,
    /// Anything a map is needed for: a hop-by-hop field to strip (and
    /// `Transfer-Encoding`, whose framing is rewritten), or a `Via` to
    /// extend.
    Map,
}

fn kind(name: &[u8]) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    if is("date") {
        Kind::Date
    } else if is("connection") {
        Kind::Connection
    } else if is("content-length") {
        Kind::Length
    } else if is("x-request-id") {
        Kind::RequestId
    } else if is("via") || crate::proxy::is_hop_by_hop_response(name) {
        // The names the map path strips, from its own list.
        Kind::Map
    } else {
        Kind::Pass
    }
}

/// The fields of `head` (at `at`, as in [`parse_head`]) as [`RawFields`],
/// with what they say of the connection and the framing; `None` when one
/// of them needs a map.
fn raw_fields(head: &Bytes, at: &[[u32; 4]], version: Version) -> Option<(RawFields, Connection, Fields)> {
    let mut raw = RawFields {
        head: head.clone(),
        spans: SmallVec::new(),
        length: None,
        dated: false,
        version,
        skip: Vec::new(),
        via: true,
    };
    let mut connection = Connection::default();
    let mut framing = Fields::default();
    // The run of lines being gathered.
    let mut open: Option<[u32; 2]> = None;
    for &[n0, n1, v0, v1] in at {
        let (name, value) = (&head[n0 as usize..n1 as usize], &head[v0 as usize..v1 as usize]);
        // An empty value's place in the line is not certain; a map takes it.
        if value.is_empty() {
            return None;
        }
        let pass = match kind(name) {
            Kind::Pass => true,
            Kind::Date => {
                raw.dated = true;
                true
            }
            Kind::Length => {
                framing.lengths += 1;
                if framing.lengths > 1 {
                    return None;
                }
                framing.length = Some(HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize)).ok()?);
                raw.length = parse_length(value);
                false
            }
            Kind::Connection if connection.note(value) => false,
            Kind::RequestId => false,
            Kind::Connection | Kind::Map => return None,
        };
        if !pass {
            if let Some(run) = open.take() {
                raw.spans.push(run);
            }
            continue;
        }
        // A run goes on only over a plain CRLF between the lines: any other
        // line ending (a bare LF, trailing spaces) is not passed on.
        open = match open {
            Some([start, end]) if head.get(end as usize..n0 as usize) == Some(&b"\r\n"[..]) => Some([start, v1]),
            other => {
                if let Some(run) = other {
                    raw.spans.push(run);
                }
                Some([n0, v1])
            }
        };
    }
    if let Some(run) = open {
        raw.spans.push(run);
    }
    Some((raw, connection, framing))
}

/// Why a response could not be read: the backend does not speak HTTP/1.1
/// as it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub(super) String);

fn malformed<T>(reason: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(reason.into()))
}

/// Takes a complete response head off the front of `buf`; `None` while it
/// is incomplete. Header values share `buf`'s memory rather than being
/// copied. The headers go into `spare`'s map (taken, and left untouched
/// while the head is incomplete): the request's, whose room fits a
/// response too, so that no map is allocated per response. With `raw`,
/// fields that need nothing done to them are kept as [`RawFields`]
/// instead, and `spare` is left alone.
pub(super) fn parse_head(buf: &mut BytesMut, spare: &mut HeaderMap, raw: bool) -> Result<Option<Head>, Malformed> {
    let mut at = Places::new();
    let Some(Located { len, status, minor }) = locate(buf, &mut at)? else {
        if buf.len() > MAX_HEAD {
            return malformed(format!("response head over {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let head = buf.split_to(len).freeze();
    let version = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    if raw && let Some((raw, connection, framing)) = raw_fields(&head, &at, version) {
        return Ok(Some(Head {
            status,
            version,
            headers: HeaderMap::new(),
            raw: Some(raw),
            connection,
            framing,
        }));
    }
    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(at.len());
    let (connection, framing) = fill_map(&head, &at, &mut headers)?;
    Ok(Some(Head {
        status,
        version,
        headers,
        raw: None,
        connection,
        framing,
    }))
}

/// A complete response head found at the front of a buffer.
struct Located {
    /// The head's length, its blank line included.
    len: usize,
    status: StatusCode,
    /// The minor version: 0 or 1.
    minor: u8,
}

/// Where each field's name and value lie in a buffer, as offsets:
/// httparse's slices borrow it, and the head is split off before values
/// are made from it.
type Places = SmallVec<[[u32; 4]; 32]>;

/// Finds a complete response head at the front of `buf`, and where its
/// fields lie (into `at`, which is given rather than returned so that it
/// is not copied); `None` while the head is incomplete. Inlined into
/// `parse_head`, its one caller per response, as it was before a map of
/// raw fields needed it too.
#[inline(always)]
fn locate(buf: &[u8], at: &mut Places) -> Result<Option<Located>, Malformed> {
    // Uninitialised slots: zeroing a hundred of them for every response
    // would cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return malformed(format!("more than {MAX_HEADERS} response headers"));
        }
        Err(e) => return malformed(format!("invalid response head: {e}")),
    };
    // A head is far shorter than 4 GiB (MAX_HEAD plus one read).
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize - base) as u32;
    for h in res.headers.iter() {
        let (name, value) = (offset(h.name.as_ptr()), offset(h.value.as_ptr()));
        at.push([name, name + h.name.len() as u32, value, value + h.value.len() as u32]);
    }
    let (Some(code), Some(minor)) = (res.code, res.version) else {
        return malformed("invalid response head");
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return malformed(format!("invalid status code {code}"));
    };
    Ok(Some(Located { len, status, minor }))
}

/// Appends the fields of `head` (at `at`) to `headers`, their values
/// sharing its memory, and says what they tell of the connection and the
/// framing. `Connection` is noted rather than kept when it names only
/// `keep-alive` or `close`.
fn fill_map(head: &Bytes, at: &[[u32; 4]], headers: &mut HeaderMap) -> Result<(Connection, Fields), Malformed> {
    let mut connection = Connection::default();
    let mut framing = Fields::default();
    for &[n0, n1, v0, v1] in at {
        let (n, v) = (n0 as usize..n1 as usize, v0 as usize..v1 as usize);
        // Nearly every backend says `Connection: keep-alive`; read here, it
        // costs no header to make, look up and strip again.
        if head[n.clone()].eq_ignore_ascii_case(b"connection") && connection.note(&head[v.clone()]) {
            continue;
        }
        match (
            HeaderName::from_bytes(&head[n]),
            HeaderValue::from_maybe_shared(head.slice(v)),
        ) {
            (Ok(name), Ok(value)) => {
                if name == header::CONTENT_LENGTH {
                    framing.lengths += 1;
                    framing.length.get_or_insert_with(|| value.clone());
                } else if name == header::TRANSFER_ENCODING {
                    framing.encodings += 1;
                    framing.encoding.get_or_insert_with(|| value.clone());
                }
                headers.append(name, value);
            }
            _ => return malformed("invalid response header"),
        }
    }
    Ok((connection, framing))
}

/// How much body follows a response head (RFC 9112 §6.3). A head whose
/// length could be read two ways is refused: the client must never get an
/// ambiguous response.
pub(super) fn response_body(method: &Method, head: &Head) -> Result<Decoder, Malformed> {
    let f = &head.framing;
    if let Some(reason) = crate::proxy::framing_of(f.lengths, f.encodings, f.encoding.as_ref()) {
        return malformed(format!("ambiguous response: {reason}"));
    }
    let status = head.status;
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Decoder::Done);
    }
    if f.encodings > 0 {
        if head.version == Version::HTTP_10 {
            return malformed("ambiguous response: Transfer-Encoding in an HTTP/1.0 response");
        }
        return Ok(Decoder::Chunked(Chunk::Size));
    }
    match &f.length {
        Some(value) => match parse_length(value.as_bytes()) {
            Some(0) => Ok(Decoder::Done),
            Some(n) => Ok(Decoder::Length(n)),
            None => malformed("invalid Content-Length in the response"),
        },
        None => Ok(Decoder::UntilClose),
    }
}

/// Whether the connection may carry another request after this response.
pub(super) fn keeps_alive(head: &Head) -> bool {
    match head.version {
        Version::HTTP_11 => !head.connection.close,
        _ => head.connection.keep_alive,
    }
}

/// Digits only: no sign, no spaces, no list.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    // 19 digits always fit in a u64.
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter()
        .try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// Where a response body's reading stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, at the given place.
    Chunked(Chunk),
    /// Everything until the backend closes the connection.
    UntilClose,
    /// The body is over.
    Done,
}

/// A place in a chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    End,
    /// After the last chunk: trailers, or the final CRLF.
    Trailers,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailers of a chunked body; the body is over.
    Trailers(HeaderMap),
    /// The body is over.
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    /// Whether the body is over.
    pub(super) fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// The bytes left, when that is known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self {
                Self::Done => return Ok(Decoded::End),
                Self::UntilClose if buf.is_empty() => return Ok(Decoded::More),
                Self::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Self::Length(left) => {
                    let Some(data) = take_up_to(left, buf) else {
                        return Ok(Decoded::More);
                    };
                    if *left == 0 {
                        *self = Self::Done;
                    }
                    return Ok(Decoded::Data(data));
                }
                Self::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        let Some(line) = buf.iter().position(|&b| b == b'\n') else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return malformed("chunk-size line too long");
                            }
                            return Ok(Decoded::More);
                        };
                        if line > MAX_CHUNK_LINE {
                            return malformed("chunk-size line too long");
                        }
                        let size = chunk_size(&buf[..=line])?;
                        let _ = buf.split_to(line + 1);
                        *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Chunk::Data(left) => {
                        let Some(data) = take_up_to(left, buf) else {
                            return Ok(Decoded::More);
                        };
                        if *left == 0 {
                            *chunk = Chunk::End;
                        }
                        return Ok(Decoded::Data(data));
                    }
                    Chunk::End => {
                        if buf.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return malformed("chunk data longer than its size");
                        }
                        let _ = buf.split_to(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => return self.trailers(buf),
                },
            }
        }
    }

    /// The trailer section after the last chunk.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    match (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) {
                        (Ok(name), Ok(value)) => {
                            trailers.append(name, value);
                        }
                        _ => return malformed("invalid trailer"),
                    }
                }
                let _ = buf.split_to(len);
                *self = Self::Done;
                Ok(if trailers.is_empty() {
                    Decoded::End
                } else {
                    Decoded::Trailers(trailers)
                })
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                malformed(format!("trailers over {MAX_HEAD} bytes"))
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::More),
            Err(e) => malformed(format!("invalid trailers: {e}")),
        }
    }

    /// The connection closed: the end of an `UntilClose` body, a cut-off
    /// body otherwise.
    pub(super) fn eof(&mut self) -> Result<Decoded, Malformed> {
        match self {
            Self::UntilClose | Self::Done => {
                *self = Self::Done;
                Ok(Decoded::End)
            }
            _ => malformed("the backend closed the connection before the body's end"),
        }
    }
}

/// Up to `left` bytes off the front of `buf` (sharing its memory), counted
/// off `left`; `None` when `buf` is empty.
fn take_up_to(left: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// The size from a chunk-size line (`line` ends with LF): hex digits, then
/// optional extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return malformed("chunk-size line without CRLF");
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    // Blanks may follow the size (as many servers write them), then only
    // extensions.
    let rest = rest.trim_ascii_start();
    let rest_ok = rest.is_empty() || rest.starts_with(b";");
    if digits == 0 || digits > 16 || !rest_ok || rest.contains(&b'\r') {
        return malformed("invalid chunk size");
    }
    let digits = std::str::from_utf8(&line[..digits]).map_err(|_| Malformed("invalid chunk size".into()))?;
    u64::from_str_radix(digits, 16).map_err(|_| Malformed("invalid chunk size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Option<Head>, Malformed> {
        parse_head(&mut BytesMut::from(raw), &mut HeaderMap::new(), false)
    }

    /// The head with its fields kept raw where they can be.
    fn raw_head(raw: &[u8]) -> Head {
        parse_head(&mut BytesMut::from(raw), &mut HeaderMap::new(), true)
            .unwrap()
            .unwrap()
    }

    /// The body's framing; the same whether the fields are kept raw or not.
    fn body(method: Method, raw: &[u8]) -> Result<Decoder, Malformed> {
        let mapped = response_body(&method, &head(raw)?.expect("a complete head"));
        let kept = parse_head(&mut BytesMut::from(raw), &mut HeaderMap::new(), true)
            .and_then(|h| response_body(&method, &h.expect("a complete head")));
        assert_eq!(mapped, kept, "{}", String::from_utf8_lossy(raw));
        mapped
    }

    /// The lines `fields` passes on, each with its CRLF.
    fn written(fields: &RawFields) -> String {
        let mut out = Vec::new();
        fields.put(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_a_filter_set_or_removed_are_left_out_and_the_map_is_the_map_paths() {
        const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: raw/1\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\
              Set-Cookie: b=2\r\nX-Request-Id: theirs\r\nContent-Length: 12\r\nX-Last: z\r\n\
              Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";
        let mut raw = raw_head(HEAD).raw.expect("kept raw");
        // Untouched, the map is the one the map path makes, with `Via`.
        let mut mapped = head(HEAD).unwrap().unwrap().headers;
        crate::proxy::append_via(&mut mapped, Version::HTTP_11);
        let pairs = |m: &HeaderMap| m.iter().map(|(n, v)| format!("{n}: {v:?}")).collect::<Vec<_>>();
        assert_eq!(pairs(&raw.to_map().unwrap()), pairs(&mapped));

        // A name the head lacks changes nothing.
        raw.skip(&HeaderName::from_static("x-absent"));
        assert!(raw.skip.is_empty());
        // Names matched whatever their case; a run is split around them.
        raw.skip(&header::SET_COOKIE);
        raw.skip(&header::DATE);
        raw.skip(&header::SET_COOKIE);
        assert_eq!(written(&raw), "Server: raw/1\r\nX-Last: z\r\n");
        assert!(
            !raw.dated(),
            "the writer dates a response whose Date was set or removed"
        );
        assert!(raw.via());
        mapped.remove(header::SET_COOKIE);
        mapped.remove(header::DATE);
        assert_eq!(pairs(&raw.to_map().unwrap()), pairs(&mapped));
        // A field the writer writes itself is still left out of the map.
        raw.skip(&HeaderName::from_static("x-request-id"));
        assert_eq!(written(&raw), "Server: raw/1\r\nX-Last: z\r\n");
        mapped.remove("x-request-id");
        assert_eq!(pairs(&raw.to_map().unwrap()), pairs(&mapped));

        raw.skip(&header::VIA);
        assert!(!raw.via());
        assert!(!raw.to_map().unwrap().contains_key(header::VIA));
        assert_eq!(raw.length(), Some(12));
        raw.forget_length();
        assert_eq!(raw.length(), None);
    }

    #[test]
    fn plain_fields_are_passed_on_as_written() {
        let h = raw_head(
            b"HTTP/1.1 200 OK\r\nServer: raw/1\r\nSet-Cookie: a=1\r\nConnection: Keep-Alive\r\n\
              Set-Cookie: b=2\r\nX-Request-Id: theirs\r\nX-Spaced:  a  b\r\nContent-Length: 12\r\n\
              Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n",
        );
        assert!(h.headers.is_empty());
        let raw = h.raw.expect("kept raw");
        // `Connection`, the backend's request id and its length are the
        // writer's to write; a run stops at each.
        assert_eq!(
            written(&raw),
            "Server: raw/1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Spaced:  a  b\r\n\
             Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
        );
        assert_eq!(raw.spans().count(), 4);
        assert_eq!(
            (raw.length(), raw.dated(), raw.version()),
            (Some(12), true, Version::HTTP_11)
        );
        assert!(h.connection.keep_alive);
        assert_eq!(
            raw_head(b"HTTP/1.0 204 No Content\r\n\r\n").raw.unwrap().version(),
            Version::HTTP_10
        );
        // A line that does not end in CRLF ends its run; what goes out
        // ends in CRLF all the same.
        let raw = raw_head(b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n").raw.unwrap();
        assert_eq!(written(&raw), "X-A: 1\r\nX-B: 2\r\n");
        assert!(!raw.dated());
    }

    #[test]
    fn fields_that_need_work_go_into_a_map() {
        for needy in [
            &b"Via: 1.1 edge"[..],
            b"Keep-Alive: timeout=5",
            b"Connection: close, X-A",
            b"Proxy-Authenticate: Basic",
            b"Proxy-Connection: keep-alive",
            b"Trailer: x-sum",
            b"Upgrade: h2c",
            b"TE: trailers",
            b"Transfer-Encoding: chunked",
            b"Content-Length: 2\r\nContent-Length: 2",
            b"X-Empty:",
        ] {
            let mut raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n".to_vec();
            raw.extend_from_slice(needy);
            raw.extend_from_slice(b"\r\n\r\n");
            let h = raw_head(&raw);
            assert!(h.raw.is_none(), "{}", String::from_utf8_lossy(needy));
            assert_eq!(h.headers["x-a"], "1");
        }
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(parse_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1,1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Feeds `raw` to a decoder a few bytes at a time, as a socket might.
    fn decode_all(mut decoder: Decoder, raw: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Malformed> {
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => return Ok((data, trailers)),
                    Decoded::More => break,
                }
            }
        }
        match decoder.eof()? {
            Decoded::End => Ok((data, trailers)),
            other => panic!("{other:?} at the end"),
        }
    }

    #[test]
    fn a_request_head_has_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("b.example"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(&Method::POST, "/p?q=1", &headers, &[], Framing::Length(5), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: b.example\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&Method::PUT, "/", &headers, &[], Framing::Chunked, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("transfer-encoding: chunked\r\n\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        let mut out = Vec::new();
        encode_chunk(b"hello", &mut out);
        encode_chunk(b"", &mut out);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("7"));
        encode_last_chunk(Some(&trailers), &mut out);
        assert_eq!(out, b"5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n");
    }

    #[test]
    fn a_response_head_is_read_once_complete() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Id: a b\r\n\r\nok";
        let mut buf = BytesMut::from(&raw[..20]);
        let mut spare = HeaderMap::new();
        spare.insert("x-request", HeaderValue::from_static("1"));
        assert!(parse_head(&mut buf, &mut spare, false).unwrap().is_none());
        assert_eq!(spare.len(), 1, "left alone while the head is incomplete");
        buf.extend_from_slice(&raw[20..]);
        let head = parse_head(&mut buf, &mut spare, false).unwrap().unwrap();
        assert_eq!(head.headers.len(), 2, "the spare map's old headers are gone");
        assert_eq!(head.status, 200);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["x-id"], "a b");
        assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
        let old = head_version(b"HTTP/1.0 404 Not Found\r\n\r\n");
        assert_eq!(old, Version::HTTP_10);
    }

    fn head_version(raw: &[u8]) -> Version {
        head(raw).unwrap().unwrap().version
    }

    #[test]
    fn malformed_response_heads_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX-A: a\rX: y\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX A: a\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        let many: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).is_err());
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD));
        assert!(head(big.as_bytes()).is_err(), "an endless head is cut off");
    }

    #[test]
    fn the_body_length_follows_rfc_9112() {
        let get = || Method::GET;
        assert_eq!(
            body(get(), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Decoder::Length(5))
        );
        assert_eq!(
            body(get(), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Decoder::Done)
        );
        assert_eq!(
            body(Method::HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Decoder::Done)
        );
        assert_eq!(body(get(), b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(Decoder::Done));
        assert_eq!(
            body(get(), b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Ok(Decoder::Done)
        );
        assert_eq!(
            body(get(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Decoder::Chunked(Chunk::Size))
        );
        assert_eq!(body(get(), b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Decoder::UntilClose));
        for ambiguous in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                body(get(), ambiguous).is_err(),
                "{}",
                String::from_utf8_lossy(ambiguous)
            );
        }
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        let alive = |raw: &[u8]| {
            let mapped = keeps_alive(&head(raw).unwrap().unwrap());
            assert_eq!(mapped, keeps_alive(&raw_head(raw)), "{}", String::from_utf8_lossy(raw));
            mapped
        };
        assert!(alive(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!alive(b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\n\r\n"));
        assert!(!alive(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(alive(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        // Only a `Connection` that names other headers stays, for the proxy
        // to strip them.
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.headers.contains_key(header::CONNECTION));
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.headers[header::CONNECTION], "close, X-A");
        assert!(!keeps_alive(&h));
    }

    #[test]
    fn bodies_decode_whatever_the_reads_split() {
        for step in [1, 2, 3, 7, 64] {
            let (data, trailers) = decode_all(Decoder::Length(5), b"hello", step).unwrap();
            assert_eq!((data.as_slice(), trailers), (&b"hello"[..], None));
            let chunked = b"5\r\nhello\r\n1;ext=1\r\n!\r\nA \r\n0123456789\r\n0\r\nX-Sum: 7\r\n\r\n";
            let (data, trailers) = decode_all(Decoder::Chunked(Chunk::Size), chunked, step).unwrap();
            assert_eq!(data, b"hello!0123456789");
            assert_eq!(trailers.unwrap()["x-sum"], "7");
            let (data, trailers) = decode_all(Decoder::Chunked(Chunk::Size), b"2\r\nok\r\n0\r\n\r\n", step).unwrap();
            assert_eq!((data.as_slice(), trailers), (&b"ok"[..], None));
            let (data, _) = decode_all(Decoder::UntilClose, b"all of it", step).unwrap();
            assert_eq!(data, b"all of it");
        }
    }

    #[test]
    fn broken_bodies_are_errors() {
        assert!(decode_all(Decoder::Length(10), b"short", 2).is_err(), "cut off");
        for raw in [
            &b"5\r\nhello world\r\n0\r\n\r\n"[..],
            b"x\r\nhello\r\n",
            b"-5\r\nhello\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhello\r\n",
        ] {
            assert!(
                decode_all(Decoder::Chunked(Chunk::Size), raw, 3).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Decoder::Chunked(Chunk::Size), &endless, 512).is_err());
    }
}
