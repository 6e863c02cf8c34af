//! The HTTP/1.1 response codec of the own client, without I/O: the request head as bytes,
//! a response head off the front of a buffer (interim heads skipped), and a body decoded from
//! a buffer step by step. What a head means is decided by [`wire`](crate::proxy::wire); this
//! module only parses. Fed any split of the same bytes, it gives the same answer (tested byte
//! by byte here, and against hyper's client in `tests/fuzz.rs`).
//!
//! Response field names go through a fast path first ([`wire::common_field`]): the fifteen
//! names nearly every response carries, spelled as servers send them, are compared as fixed-size
//! byte strings and come with their framing kind, instead of `HeaderName::from_bytes`' lower-
//! casing copy and table search followed by a second classification; the usual one-token
//! `Content-Length` and `Connection` values skip list splitting. Measured with callgrind
//! (release build, one worker, 16 keep-alive connections through the peer kit's 90/10 split,
//! nginx answering five fields; 12,000 requests): `header_map`, inclusive, from 2,842 to 1,967
//! instructions per response (-31%), -3.8% of the whole request.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use hyper::body::Frame;

use crate::proxy::wire::{self, FieldKind, Framing, ResponseFields};

/// Most header fields accepted in a response head or a trailer section.
pub const MAX_HEADERS: usize = 128;
/// Largest response head (all interim heads included) or trailer section, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions) accepted.
pub(super) const MAX_CHUNK_LINE: usize = 1024;
/// Most chunk-extension bytes accepted over one body (hyper's limit too).
pub(super) const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection closed before a complete response head")]
    Closed,
    #[error("connection closed inside the response body")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

/// Write the request line and header fields of `req` into `dst` (cleared first).
pub(super) fn encode_head(dst: &mut Vec<u8>, req: &Parts) {
    dst.clear();
    dst.extend_from_slice(req.method.as_str().as_bytes());
    dst.push(b' ');
    let target = req.uri.path_and_query().map_or("", |pq| pq.as_str());
    dst.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// Where in a header block one field's name and value lie, as offsets into the block.
pub(super) type Span = ((usize, usize), (usize, usize));

/// Parse one final response head off the front of `buf`, skipping interim 1xx heads.
/// `Ok(None)` asks for more bytes. On success the head's bytes are consumed and the rest of
/// `buf` is the start of the body. The returned header map is ready to forward: the
/// hop-by-hop fields (RFC 9110 §7.6.1, with those `Connection` names) are already left out.
/// `spans` is scratch space; `interim` counts the bytes of interim heads already skipped, which
/// count against [`MAX_HEAD_BYTES`] too.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    interim: &mut usize,
    head_request: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
    loop {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        );
        let len = match parse {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if *interim + buf.len() >= MAX_HEAD_BYTES => {
                return Err(Error::Invalid("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many response header fields"))
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let code = parsed.code.unwrap_or(0);
        let interim_head = wire::check_status(code).map_err(Error::Invalid)?;
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
        if interim_head {
            *interim += len;
            if *interim >= MAX_HEAD_BYTES {
                return Err(Error::Invalid("response head too large"));
            }
            buf.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        record_spans(spans, buf, parsed.headers);
        let block = buf.split_to(len).freeze();
        let mut fields = ResponseFields::default();
        let headers = header_map(&block, spans, Some(&mut fields))?;
        let (framing, keep_alive) = fields
            .framing(version, status, head_request)
            .map_err(Error::Invalid)?;
        let mut rsp = Response::new(());
        *rsp.status_mut() = status;
        *rsp.version_mut() = version;
        *rsp.headers_mut() = headers;
        return Ok(Some((rsp, framing, keep_alive)));
    }
}

/// Record where the parsed `fields` lie inside `block` (they borrow it, so they are turned
/// into offsets before the block is split off and frozen).
pub(super) fn record_spans(spans: &mut Vec<Span>, block: &[u8], fields: &[httparse::Header<'_>]) {
    let base = block.as_ptr() as usize;
    spans.clear();
    spans.extend(fields.iter().map(|f| {
        let name = f.name.as_ptr() as usize - base;
        let value = f.value.as_ptr() as usize - base;
        ((name, f.name.len()), (value, f.value.len()))
    }));
}

/// Header fields from their spans in `block`; values share `block` instead of being copied.
/// With `facts`, the fields of a response head are noted there and only the end-to-end ones
/// are kept.
pub(super) fn header_map(
    block: &Bytes,
    spans: &[Span],
    mut facts: Option<&mut ResponseFields>,
) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for &((n, nl), (v, vl)) in spans {
        let raw = &block[n..n + nl];
        let (name, kind) = match wire::common_field(raw) {
            Some(known) => known,
            None => {
                let name =
                    HeaderName::from_bytes(raw).map_err(|_| Error::Invalid("bad header name"))?;
                let kind = match facts {
                    Some(_) => FieldKind::of(&name),
                    None => FieldKind::EndToEnd,
                };
                (name, kind)
            }
        };
        if let Some(f) = facts.as_deref_mut() {
            if !f
                .note_kind(kind, &block[v..v + vl])
                .map_err(Error::Invalid)?
            {
                continue;
            }
        }
        let value = HeaderValue::from_maybe_shared(block.slice(v..v + vl))
            .map_err(|_| Error::Invalid("bad header value"))?;
        map.append(name, value);
    }
    if let Some(f) = facts {
        f.finish(&mut map);
    }
    Ok(map)
}

/// Where the body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Bytes left of a sized body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes left of the current chunk's data.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Expecting the trailer section after the last chunk.
    Trailers,
    UntilClose,
    Done,
}

impl From<Framing> for State {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        }
    }
}

/// What one decoding step produced.
#[derive(Debug)]
pub(super) enum Step {
    Frame(Frame<Bytes>),
    /// Nothing more can be decoded from the buffered bytes.
    NeedMore,
    /// The body ended.
    End,
}

/// Decode as much as possible of the body from `buf`, advancing `state`. Chunk extensions
/// are ignored, but their bytes are taken from `extension_budget` so that an endpoint cannot
/// make the proxy read far more than the body.
pub(super) fn decode(
    state: &mut State,
    buf: &mut BytesMut,
    extension_budget: &mut usize,
) -> Result<Step, Error> {
    loop {
        match *state {
            State::Done => return Ok(Step::End),
            State::Length(left) | State::ChunkData(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = left.min(buf.len() as u64);
                let rest = left - n;
                *state = match (*state, rest) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), r) => State::Length(r),
                    (_, 0) => State::ChunkEnd,
                    (_, r) => State::ChunkData(r),
                };
                // `n` is at most `buf.len()`, so it fits in usize.
                let data = buf.split_to(n as usize).freeze();
                return Ok(Step::Frame(Frame::data(data)));
            }
            State::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                return Ok(Step::Frame(Frame::data(buf.split().freeze())));
            }
            State::ChunkSize => {
                let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                    return Ok(Step::NeedMore);
                };
                let (size, extension) = chunk_size(&buf[..line_end])?;
                *extension_budget = extension_budget
                    .checked_sub(extension)
                    .ok_or(Error::Invalid("too many chunk extension bytes"))?;
                buf.advance(line_end + 2);
                *state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
            }
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = State::ChunkSize;
            }
            State::Trailers => {
                let Some((section, lines)) = trailer_section(buf)? else {
                    return Ok(Step::NeedMore);
                };
                if lines == 0 {
                    buf.advance(2);
                    *state = State::Done;
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut spans = Vec::new();
                // Room for one field per line, as hyper's decoder allows: a bare LF that
                // starts another field within a line is one field too many.
                match httparse::parse_headers(&buf[..section], &mut fields[..lines]) {
                    Ok(httparse::Status::Complete((_, parsed))) => {
                        record_spans(&mut spans, buf, parsed)
                    }
                    _ => return Err(Error::Invalid("malformed trailer section")),
                }
                let block = buf.split_to(section).freeze();
                let mut trailers = header_map(&block, &spans, None)?;
                wire::drop_forbidden_trailers(&mut trailers);
                *state = State::Done;
                return Ok(Step::Frame(Frame::trailers(trailers)));
            }
        }
    }
}

/// The length of the trailer section at the start of `buf`, its final empty line included,
/// and its number of lines, delimited exactly as hyper's chunked decoder delimits it, so that
/// both upstream paths take and refuse the same trailers: lines of any bytes but CR, each
/// ended by CRLF, then CRLF. A bare CR is refused, and so are more than [`MAX_HEADERS`] lines
/// or a section of [`MAX_HEAD_BYTES`]. A bare LF inside a line passes here (RFC 9112 §2.2
/// lets a recipient read a lone LF as a line end), but the fields are then parsed with room
/// for one per line, as hyper does, so one that would start a second field is refused.
/// `None`: the section is not complete yet.
pub(super) fn trailer_section(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut at = 0;
    let mut lines = 0;
    let end = loop {
        let Some(cr) = buf[at..].iter().position(|&b| b == b'\r') else {
            break None;
        };
        let empty_line = cr == 0;
        at += cr;
        match buf.get(at + 1) {
            None => break None,
            Some(b'\n') => at += 2,
            Some(_) => return Err(Error::Invalid("bare CR in chunked framing")),
        }
        if empty_line {
            break Some(at);
        }
        if lines == MAX_HEADERS {
            return Err(Error::Invalid("too many trailer fields"));
        }
        lines += 1;
    };
    match end {
        Some(len) if len < MAX_HEAD_BYTES => Ok(Some((len, lines))),
        None if buf.len() < MAX_HEAD_BYTES => Ok(None),
        _ => Err(Error::Invalid("trailer section too large")),
    }
}

/// The offset of the first CRLF in `buf`, refusing a bare LF or a line longer than `limit`.
pub(super) fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    let window = &buf[..buf.len().min(limit + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(Error::Invalid("bare LF in chunked framing")),
        Some(i) if window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(Error::Invalid("bare LF in chunked framing")),
        None if buf.len() > limit + 1 => Err(Error::Invalid("chunk-size line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1*HEXDIG [ BWS ";" chunk-ext ]`) and the length of its
/// extensions, which are otherwise ignored.
pub(super) fn chunk_size(line: &[u8]) -> Result<(u64, usize), Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // Leading zeros do not count towards the 16 digits a u64 holds (hyper takes them too).
    let zeros = line.iter().take_while(|&&b| b == b'0').count().min(digits);
    if digits == 0 || digits - zeros > 16 {
        return Err(Error::Invalid("bad chunk size"));
    }
    let blank = line[digits..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &line[digits + blank..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Error::Invalid("bad chunk size"));
    }
    if rest.contains(&b'\r') {
        return Err(Error::Invalid("bare CR in chunk extension"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        // `is_ascii_hexdigit` was checked above, and 16 digits cannot overflow.
        size = size << 4 | u64::from((d as char).to_digit(16).unwrap_or(0));
    }
    Ok((size, line.len() - digits))
}

/// Pure entry points into the response codec for `tests/fuzz.rs`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A response read by the inline client from a complete byte stream.
    #[derive(Debug)]
    pub struct Read {
        pub status: StatusCode,
        pub version: Version,
        pub headers: HeaderMap,
        pub framing: Framing,
        pub keep_alive: bool,
        pub body: Vec<u8>,
        pub trailers: Option<HeaderMap>,
    }

    /// Read one response to a GET (or HEAD) from `raw`, the endpoint closing after the last
    /// byte; fed `step` bytes at a time (0: all at once).
    pub fn read_response(raw: &[u8], head_request: bool, step: usize) -> Result<Read, Error> {
        let step = if step == 0 { raw.len().max(1) } else { step };
        let mut input = raw.chunks(step);
        let mut buf = BytesMut::new();
        let (mut spans, mut interim) = (Vec::new(), 0);
        let (rsp, framing, keep_alive) = loop {
            if !buf.is_empty() {
                if let Some(h) = parse_head(&mut buf, &mut spans, &mut interim, head_request)? {
                    break h;
                }
            }
            buf.extend_from_slice(input.next().ok_or(Error::Closed)?);
        };
        let mut state = State::from(framing);
        let mut budget = MAX_CHUNK_EXTENSIONS;
        let (mut body, mut trailers) = (Vec::new(), None);
        loop {
            match decode(&mut state, &mut buf, &mut budget)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => body.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End => break,
                Step::NeedMore => match input.next() {
                    Some(more) => buf.extend_from_slice(more),
                    None if state == State::UntilClose => break,
                    None => return Err(Error::Truncated),
                },
            }
        }
        Ok(Read {
            status: rsp.status(),
            version: rsp.version(),
            headers: rsp.headers().clone(),
            framing,
            keep_alive,
            body,
            trailers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
        parse_head(
            &mut BytesMut::from(raw),
            &mut Vec::new(),
            &mut 0,
            head_request,
        )
    }

    fn framing_of(raw: &str) -> (Framing, bool) {
        let (_, f, k) = head(raw, false).unwrap().unwrap();
        (f, k)
    }

    /// Decode `raw` fed one byte at a time, as the slowest endpoint would send it.
    fn decode_bytewise(
        mut state: State,
        raw: &[u8],
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut input = raw.iter();
        let mut budget = MAX_CHUNK_EXTENSIONS;
        loop {
            match decode(&mut state, &mut buf, &mut budget)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => body.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End => {
                    // The decoder must stop exactly at the end of the framing: what is left
                    // decides whether the connection can be reused.
                    assert!(buf.is_empty(), "unconsumed: {buf:?}");
                    assert_eq!(input.next(), None, "input left after the end");
                    return Ok((body, trailers));
                }
                Step::NeedMore => match input.next() {
                    Some(&b) => buf.extend_from_slice(&[b]),
                    None => return Err(Error::Truncated),
                },
            }
        }
    }

    #[test]
    fn request_head_is_origin_form_with_every_field() {
        let mut req = http::Request::builder()
            .method("GET")
            .uri("/a/b?x=1")
            .header("host", "svc.ns:80")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut out = Vec::new();
        encode_head(&mut out, &req);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET /a/b?x=1 HTTP/1.1\r\nhost: svc.ns:80\r\nx-multi: 1\r\nx-multi: 2\r\n\r\n"
        );
        req.uri = http::Uri::from_static("*");
        req.method = http::Method::OPTIONS;
        req.headers.clear();
        encode_head(&mut out, &req);
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn response_heads_choose_the_right_framing() {
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing_of(&format!("{ok}content-length: 5\r\n\r\n")),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of(&format!("{ok}Content-Length: 5, 5\r\n\r\n")),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of(&format!("{ok}Transfer-Encoding: Chunked\r\n\r\n")),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing_of(&format!("{ok}transfer-encoding:  chunked \r\n\r\n")),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing_of(&format!("{ok}\r\n")),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing_of(&format!(
                "{ok}connection: Upgrade, Close\r\ncontent-length: 0\r\n\r\n"
            )),
            (Framing::Length(0), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"),
            (Framing::Length(2), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n"),
            (Framing::Length(2), true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n"),
            (Framing::Length(0), true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
            (Framing::Length(0), true)
        );
        let (_, f, _) = head(&format!("{ok}content-length: 9\r\n\r\n"), true)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(0), "a HEAD response has no body");
    }

    #[test]
    fn hop_by_hop_fields_and_connection_options_are_left_out() {
        let (rsp, _, keep_alive) = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Trace\r\nKeep-Alive: timeout=5\r\n\
             X-Trace: 1\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nTE: trailers\r\n\
             Proxy-Connection: close\r\nContent-Type: text/plain\r\nX-Keep: 2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<&str> = rsp.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-keep"]);
        assert!(keep_alive);
    }

    #[test]
    fn chunk_sizes_allow_blanks_before_extensions_only() {
        assert_eq!(chunk_size(b"1a").unwrap(), (26, 0));
        assert_eq!(chunk_size(b"3 \t;x=y").unwrap(), (3, 6));
        assert_eq!(chunk_size(b"3 ").unwrap(), (3, 1));
        assert!(chunk_size(b"3 x").is_err());
        assert_eq!(chunk_size(b"00000000000000000005").unwrap(), (5, 0));
        assert!(chunk_size(b"10000000000000000").is_err());
    }

    #[test]
    fn chunk_extensions_have_a_total_budget() {
        // 1-byte chunks each carrying a 1000-byte extension: 17 of them exceed 16 KiB.
        let ext = "e".repeat(1000);
        let raw: String = (0..17).map(|_| format!("1;{ext}\r\na\r\n")).collect();
        let r = decode_bytewise(State::ChunkSize, format!("{raw}0\r\n\r\n").as_bytes());
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        let few: String = (0..10).map(|_| format!("1;{ext}\r\na\r\n")).collect();
        let (body, _) =
            decode_bytewise(State::ChunkSize, format!("{few}0\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(body, b"aaaaaaaaaa");
    }

    #[test]
    fn endless_interim_heads_hit_the_head_limit() {
        let early = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut interim = 0;
        let mut spans = Vec::new();
        let mut outcome = Ok(None);
        for _ in 0..(2 * MAX_HEAD_BYTES / early.len()) {
            buf.extend_from_slice(early.as_bytes());
            outcome = parse_head(&mut buf, &mut spans, &mut interim, false);
            if outcome.is_err() {
                break;
            }
        }
        assert!(matches!(outcome, Err(Error::Invalid(_))), "{outcome:?}");
    }

    #[test]
    fn trailers_lose_framing_routing_and_hop_by_hop_fields() {
        let raw = b"0\r\nx-sum: 1\r\ncontent-length: 5\r\nconnection: close\r\nhost: a\r\n\
                    transfer-encoding: chunked\r\ntrailer: x\r\n\r\n";
        let (_, trailers) = decode_bytewise(State::ChunkSize, raw).unwrap();
        let trailers = trailers.unwrap();
        let names: Vec<&str> = trailers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-sum"]);
    }

    #[test]
    fn listed_content_length_is_sent_on_as_one_value() {
        use http::header::CONTENT_LENGTH;
        let (rsp, framing, _) = head("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(framing, Framing::Length(5));
        let values: Vec<_> = rsp.headers().get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(values, ["5"]);
    }

    #[test]
    fn interim_heads_are_skipped_and_the_rest_is_body() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nhi",
        );
        let (rsp, framing, _) = parse_head(&mut buf, &mut Vec::new(), &mut 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(rsp.status(), 201);
        assert_eq!(rsp.headers()["x-a"], "1");
        assert!(!rsp.headers().contains_key("link"));
        assert_eq!(framing, Framing::Length(2));
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let full = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        for cut in 0..full.len() {
            assert!(head(&full[..cut], false).unwrap().is_none(), "cut at {cut}");
        }
        assert!(head(full, false).unwrap().is_some());
    }

    #[test]
    fn broken_heads_are_errors() {
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: ,\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: gzip\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 600 X\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 099 X\r\ncontent-length: 0\r\n\r\n",
            // Control bytes and obs-fold in values.
            "HTTP/1.1 200 OK\r\nx-a: a\x7fb\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: a\x01b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: a\rb\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: a\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw, false), Err(Error::Invalid(_))),
                "{raw:?}"
            );
        }
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(head(&many, false), Err(Error::Invalid(_))));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(head(&huge, false), Err(Error::Invalid(_))));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers_byte_by_byte() {
        let raw =
            b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 42\r\n\r\n";
        let (body, trailers) = decode_bytewise(State::ChunkSize, raw).unwrap();
        assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
        assert_eq!(trailers.unwrap()["x-sum"], "42");

        let (body, trailers) = decode_bytewise(State::ChunkSize, b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());

        // A trailer line ended by LF then CRLF is one field, as hyper's decoder reads it.
        let (_, trailers) =
            decode_bytewise(State::ChunkSize, b"1\r\nx\r\n0\r\nx-a: 1\n\r\n\r\n").unwrap();
        assert_eq!(trailers.unwrap()["x-a"], "1");
    }

    #[test]
    fn trailer_sections_end_only_at_an_empty_crlf_line() {
        // Lines ended by a bare LF do not end the section: these bodies never end, and fail
        // when the endpoint closes (Truncated), as they do through hyper's client.
        for raw in [
            &b"0\r\n\n"[..],
            b"0\r\nx-sum: 1\n\r\n",
            b"0\r\nx-sum: 1\r\n\n",
        ] {
            let r = decode_bytewise(State::ChunkSize, raw);
            assert!(
                matches!(r, Err(Error::Truncated)),
                "{:?}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for raw in [
            &b"x\r\nabc\r\n0\r\n\r\n"[..],
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"3\r\r\nabc\r\n0\r\n\r\n",
            b"3\x0c\r\nabc\r\n0\r\n\r\n",
            // A bare LF that would start a second trailer field within one line; a bare CR.
            b"0\r\nx-a: 1\nx-b: 2\r\n\r\n",
            b"0\r\nx-a: 1\rx\r\n\r\n",
        ] {
            let r = decode_bytewise(State::ChunkSize, raw);
            assert!(
                matches!(r, Err(Error::Invalid(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 10));
        assert!(matches!(
            decode_bytewise(State::ChunkSize, long.as_bytes()),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            decode_bytewise(State::ChunkSize, b"5\r\nab"),
            Err(Error::Truncated)
        ));
    }

    #[test]
    fn sized_and_close_delimited_bodies_stop_where_they_should() {
        let (body, _) = decode_bytewise(State::Length(3), b"abc").unwrap();
        assert_eq!(body, b"abc");
        let mut state = State::Length(2);
        let mut buf = BytesMut::from(&b"abEXTRA"[..]);
        let Step::Frame(f) = decode(&mut state, &mut buf, &mut 0).unwrap() else {
            panic!("expected data");
        };
        assert_eq!(f.into_data().unwrap(), "ab");
        assert_eq!(state, State::Done);
        assert_eq!(&buf[..], b"EXTRA", "bytes past the body stay unread");

        let mut state = State::UntilClose;
        let mut buf = BytesMut::from(&b"all of it"[..]);
        let Step::Frame(f) = decode(&mut state, &mut buf, &mut 0).unwrap() else {
            panic!("expected data");
        };
        assert_eq!(f.into_data().unwrap(), "all of it");
        assert!(matches!(
            decode(&mut state, &mut buf, &mut 0).unwrap(),
            Step::NeedMore
        ));
    }
}
