//! The HTTP/1.1 rules both upstream clients follow, as pure functions (no I/O): which response
//! heads are accepted and how their bodies are framed, which fields describe one hop and are
//! never forwarded, which trailer fields are dropped, and when a request may be sent once more
//! after its connection broke. The own client ([`h1`](super::h1)) applies them while it parses;
//! the seam applies them to every head hyper's client hands over ([`accept_response_head`]),
//! so a GET and a POST can never disagree about the same upstream bytes.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
//! `Transfer-Encoding` is exactly `chunked`; otherwise `Content-Length` (every value equal,
//! sent on as one); otherwise until the endpoint closes. A head whose length a peer could read
//! differently is refused whatever its status ([`ResponseFields::framing`]), and so is a `101`
//! (the proxy never asks for an upgrade) or a status outside 100–599 ([`check_status`]).
//! Interim heads count against the 64 KiB head limit on both paths (hyper's through
//! `hyper::ext::on_informational`, in [`pool`](super::pool)).
//!
//! Chunked bodies are decoded by two decoders held to one grammar: the own client's
//! (`h1::codec`) delimits the trailer section exactly as hyper's does (lines ended by CRLF, a
//! bare LF inside one read as hyper's field parser reads it, one field per line), and both
//! refuse a bare LF or CR anywhere else in the framing. `tests/fuzz.rs` checks that both take
//! and refuse the same bytes, with the same body and trailers.

use http::header::{
    self, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST, TRAILER,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// Why a response is refused (the text of a 502 `upstream-protocol-error` in the logs).
pub type Refused = &'static str;

/// Whether a status line starts an interim (1xx, skipped) or the final response. A `101` and
/// codes outside 100–599 are refused: hyper's client would read the first as an upgrade and
/// take any code up to 999.
pub fn check_status(code: u16) -> Result<bool, Refused> {
    if !(100..=599).contains(&code) {
        return Err("status code outside 100-599");
    }
    if code == 101 {
        return Err("unrequested protocol switch");
    }
    Ok(code < 200)
}

/// Accept (or refuse) a final response head another parser produced (hyper's client), and
/// leave in `headers` only what is forwarded: the same decisions, field by field, as the own
/// client makes while parsing ([`ResponseFields`]). Returns the framing and whether the
/// connection may be reused, which hyper decides for itself the same way.
pub fn accept_response_head(
    version: Version,
    status: StatusCode,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<(Framing, bool), Refused> {
    if check_status(status.as_u16())? {
        return Err("interim response as the final one");
    }
    let mut fields = ResponseFields::default();
    let mut hop_by_hop = false;
    for (name, value) in headers.iter() {
        hop_by_hop |= !fields.note(name, value.as_bytes())?;
    }
    let framing = fields.framing(version, status, head_request)?;
    if hop_by_hop {
        for name in HOP_BY_HOP.iter().chain([&header::TE]) {
            headers.remove(name);
        }
    }
    fields.finish(headers);
    Ok(framing)
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the framing and connection fields of a response head said, noted one field at a time
/// ([`ResponseFields::note`]) by whoever parses the head.
#[derive(Debug, Default)]
pub struct ResponseFields {
    close: bool,
    keep_alive: bool,
    /// The codings of every `Transfer-Encoding` line.
    codings: TransferCodings,
    content_length: Option<u64>,
    /// Whether `Content-Length` came as more than one value (`5, 5`), to be sent on as one.
    content_length_listed: bool,
    /// Extra field names listed in `Connection` (rare; removed at the end).
    connection_options: Vec<HeaderName>,
}

impl ResponseFields {
    /// Note one field. Returns whether it is end-to-end (to be forwarded).
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, Refused> {
        self.note_kind(FieldKind::of(name), value)
    }

    /// [`note`](Self::note) for a field whose kind is known already ([`common_field`]).
    pub fn note_kind(&mut self, kind: FieldKind, value: &[u8]) -> Result<bool, Refused> {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        match kind {
            FieldKind::EndToEnd => return Ok(true),
            FieldKind::ContentLength => {
                // One value, as nearly every endpoint sends it, needs no list splitting: a
                // value of digits only is its own one token.
                if let (Some(n), None) = (parse_decimal(value), self.content_length) {
                    self.content_length = Some(n);
                    return Ok(true);
                }
                for part in tokens() {
                    let n = parse_decimal(part).ok_or("bad content-length")?;
                    if let Some(l) = self.content_length {
                        if l != n {
                            return Err("conflicting content-length");
                        }
                        self.content_length_listed = true;
                    }
                    self.content_length = Some(n);
                }
                return Ok(true);
            }
            // The usual values first: one token, nothing to split.
            FieldKind::Connection if is_token(value, b"keep-alive") => self.keep_alive = true,
            FieldKind::Connection if is_token(value, b"close") => self.close = true,
            FieldKind::Connection => {
                for token in tokens() {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if let Ok(n) = HeaderName::from_bytes(token) {
                        self.connection_options.push(n);
                    }
                }
            }
            FieldKind::TransferEncoding => self.codings.add(value),
            FieldKind::OtherHopByHop => {}
        }
        Ok(false)
    }

    /// What is left to do to the forwarded fields once all are noted: remove those
    /// `Connection` names, and send a listed `Content-Length` on as one value.
    pub fn finish(&self, map: &mut HeaderMap) {
        for name in &self.connection_options {
            map.remove(name);
        }
        if let (true, Some(n)) = (self.content_length_listed, self.content_length) {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }

    /// The body framing and whether the connection may be reused afterwards.
    pub fn framing(
        &self,
        version: Version,
        status: StatusCode,
        head_request: bool,
    ) -> Result<(Framing, bool), Refused> {
        let keep_alive = if version == Version::HTTP_11 {
            !self.close
        } else {
            self.keep_alive && !self.close
        };
        // Checked whatever the status: the same head must mean the same on every path.
        head_is_unambiguous(version, &self.codings, self.content_length.is_some())?;
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok((Framing::Length(0), keep_alive));
        }
        if self.codings.present {
            return Ok((Framing::Chunked, keep_alive));
        }
        Ok(match self.content_length {
            Some(n) => (Framing::Length(n), keep_alive),
            None => (Framing::UntilClose, false),
        })
    }
}

/// Whether `value` is `token` in any case; the lower case most endpoints send costs one compare.
#[inline]
fn is_token(value: &[u8], token: &[u8]) -> bool {
    value == token || value.eq_ignore_ascii_case(token)
}

/// What a response field is to the framing and hop-by-hop rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Forwarded as it is.
    EndToEnd,
    /// Forwarded, and read for the framing.
    ContentLength,
    /// Read for keep-alive and the names it lists; not forwarded.
    Connection,
    /// Read for the framing; not forwarded.
    TransferEncoding,
    /// The other hop-by-hop fields (and `TE`); not forwarded.
    OtherHopByHop,
}

impl FieldKind {
    /// The kind of any field name.
    pub fn of(name: &HeaderName) -> FieldKind {
        if *name == CONTENT_LENGTH {
            return FieldKind::ContentLength;
        }
        match hop_by_hop_bit(name.as_str()) {
            0 => FieldKind::EndToEnd,
            HOP_CONNECTION => FieldKind::Connection,
            HOP_TRANSFER_ENCODING => FieldKind::TransferEncoding,
            _ => FieldKind::OtherHopByHop,
        }
    }
}

/// The names nearly every response carries, as servers spell them (lower case, or as RFC 9110
/// writes them), with their kind: the name and kind `HeaderName::from_bytes` and
/// [`FieldKind::of`] would give, without `from_bytes`' lower-casing copy and table search. Any
/// other spelling or name is `None`, for the general path. A speed trick: its measured gain is
/// in `h1::codec`'s module doc.
#[inline]
pub fn common_field(raw: &[u8]) -> Option<(HeaderName, FieldKind)> {
    use FieldKind::{Connection, ContentLength, EndToEnd, TransferEncoding};
    fn is<const N: usize>(raw: &[u8], lower: &[u8; N], title: &[u8; N]) -> bool {
        <&[u8; N]>::try_from(raw).is_ok_and(|r| r == lower || r == title)
    }
    let found = match raw.len() {
        4 if is(raw, b"date", b"Date") => (header::DATE, EndToEnd),
        4 if is(raw, b"etag", b"ETag") => (header::ETAG, EndToEnd),
        4 if is(raw, b"vary", b"Vary") => (header::VARY, EndToEnd),
        6 if is(raw, b"server", b"Server") => (header::SERVER, EndToEnd),
        7 if is(raw, b"expires", b"Expires") => (header::EXPIRES, EndToEnd),
        8 if is(raw, b"location", b"Location") => (header::LOCATION, EndToEnd),
        10 if is(raw, b"connection", b"Connection") => (header::CONNECTION, Connection),
        10 if is(raw, b"set-cookie", b"Set-Cookie") => (header::SET_COOKIE, EndToEnd),
        12 if is(raw, b"content-type", b"Content-Type") => (CONTENT_TYPE, EndToEnd),
        13 if is(raw, b"last-modified", b"Last-Modified") => (header::LAST_MODIFIED, EndToEnd),
        13 if is(raw, b"cache-control", b"Cache-Control") => (header::CACHE_CONTROL, EndToEnd),
        13 if is(raw, b"accept-ranges", b"Accept-Ranges") => (header::ACCEPT_RANGES, EndToEnd),
        14 if is(raw, b"content-length", b"Content-Length") => (CONTENT_LENGTH, ContentLength),
        16 if is(raw, b"content-encoding", b"Content-Encoding") => (CONTENT_ENCODING, EndToEnd),
        17 if is(raw, b"transfer-encoding", b"Transfer-Encoding") => {
            (header::TRANSFER_ENCODING, TransferEncoding)
        }
        _ => return None,
    };
    Some(found)
}

/// The transfer codings of a message, over all its `Transfer-Encoding` field lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct TransferCodings {
    /// Whether any `Transfer-Encoding` line was present (even an empty one).
    pub present: bool,
    /// List items, empty ones included.
    count: usize,
    /// Whether the last coding listed is `chunked`.
    last_chunked: bool,
}

impl TransferCodings {
    /// Note one `Transfer-Encoding` field line. Empty list items count as codings: the list
    /// syntax allows them, but hyper's client reads `chunked,` as not chunked, and both
    /// upstream paths must read a head the same way.
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            self.count += 1;
            self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
        }
    }

    /// Whether the codings are exactly `chunked`: the only transfer coding meshroute forwards.
    fn chunked_only(&self) -> bool {
        self.count == 1 && self.last_chunked
    }
}

/// Refuse a response head whose body length a client, a cache or a proxy could read
/// differently from meshroute (RFC 9112 §6.1, §6.3), whatever its status:
///
/// - `Transfer-Encoding` together with `Content-Length`: the classic smuggling attempt;
/// - a final coding other than `chunked` (`gzip`, `chunked, gzip`): the length would be left
///   to the connection close;
/// - any coding besides `chunked` (`gzip, chunked`): meshroute does not decode it, and since
///   `Transfer-Encoding` is hop-by-hop the client would get a still-encoded body unlabelled;
/// - `Transfer-Encoding` in HTTP/1.0, which "MUST" be treated as faulty framing.
///
fn head_is_unambiguous(
    version: Version,
    codings: &TransferCodings,
    content_length: bool,
) -> Result<(), Refused> {
    if !codings.present {
        return Ok(());
    }
    if version == Version::HTTP_10 {
        return Err("transfer-encoding in an HTTP/1.0 response");
    }
    if content_length {
        return Err("both transfer-encoding and content-length");
    }
    if !codings.chunked_only() {
        return Err("transfer coding other than chunked");
    }
    Ok(())
}

/// A `Content-Length` value, `1*DIGIT`, read as hyper's client reads it (so both upstream
/// paths agree on the same bytes): leading zeros allowed, at most `u64::MAX - 2` (hyper keeps
/// the two largest values as markers).
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .filter(|&n| n <= u64::MAX - 2)
}

/// Remove the fields a trailer section must not carry or that only describe one hop: framing,
/// routing and connection fields (RFC 9110 §6.5.1, §7.6.1).
pub fn drop_forbidden_trailers(trailers: &mut HeaderMap) {
    let forbidden = |n: &HeaderName| {
        hop_by_hop_bit(n.as_str()) != 0
            || [
                CONTENT_LENGTH,
                HOST,
                TRAILER,
                CONTENT_ENCODING,
                CONTENT_TYPE,
                CONTENT_RANGE,
            ]
            .contains(n)
    };
    if trailers.keys().any(forbidden) {
        let names: Vec<HeaderName> = trailers.keys().filter(|n| forbidden(n)).cloned().collect();
        for n in names {
            trailers.remove(n);
        }
    }
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How an exchange on an HTTP/1.1 connection broke before a complete response head arrived.
#[derive(Debug, Clone, Copy)]
pub struct Broken {
    /// The connection had carried an exchange before (it came from the pool).
    pub reused: bool,
    /// Every byte of the request was handed to the connection (as far as the client knows).
    pub request_written: bool,
    /// The endpoint closed or reset the connection (rather than sending something invalid).
    pub closed: bool,
    pub idempotent: bool,
    /// The whole request, body included, can be produced again.
    pub replayable: bool,
}

/// Whether a request whose exchange broke goes once more, on a new connection (RFC 9110
/// §9.2.2, RFC 9112 §9.3.1): only after a pooled connection closed under it (an endpoint's
/// idle timeout racing the request; a new connection that fails tells something about the
/// endpoint instead), only when the whole request can be sent again, and only when the
/// endpoint cannot have acted on it or acting twice is harmless: the request never left
/// whole, or its method is idempotent.
pub fn send_again(b: Broken) -> bool {
    b.reused && b.closed && b.replayable && (!b.request_written || b.idempotent)
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1). `Connection` is
/// first: the headers it names are hop-by-hop too.
pub const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Bit of `TE` in the presence mask of [`strip_hop_by_hop`] (after the `HOP_BY_HOP` bits).
pub const TE_BIT: u8 = 1 << 6;

/// The bits of `Connection` and `Transfer-Encoding` from [`hop_by_hop_bit`].
pub const HOP_CONNECTION: u8 = 1;
pub const HOP_TRANSFER_ENCODING: u8 = 1 << 3;

/// The presence bit of a (lowercase) header name: its index in [`HOP_BY_HOP`], [`TE_BIT`], or
/// 0 for an end-to-end header. Dispatches on the length first, so the common names cost one
/// comparison of a length rather than seven of names.
pub fn hop_by_hop_bit(name: &str) -> u8 {
    let index = match name.len() {
        2 if name == "te" => return TE_BIT,
        7 if name == "upgrade" => 4,
        10 if name == "connection" => 0,
        10 if name == "keep-alive" => 1,
        16 if name == "proxy-connection" => 5,
        17 if name == "transfer-encoding" => 3,
        19 if name == "proxy-authorization" => 2,
        _ => return 0,
    };
    debug_assert_eq!(HOP_BY_HOP[index].as_str(), name);
    1 << index
}

/// Remove the hop-by-hop headers of a message about to be forwarded. Runs twice per request, so
/// it makes one pass over the names to see which are there (usually none in a request and only
/// `Connection: keep-alive` in a response) and then touches only those, without allocating.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name.as_str());
    }
    if present == 0 {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        remove_connection_options(headers);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        // RFC 9112 §6.3: a Content-Length received with Transfer-Encoding is removed before
        // forwarding (the body is re-framed anyway).
        headers.remove(header::CONTENT_LENGTH);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if present & TE_BIT != 0 {
        if let Some(te) = headers.get(header::TE) {
            if te.as_bytes() != b"trailers" {
                headers.remove(header::TE);
            }
        }
    }
}

/// Remove the headers named by `Connection` options (every `Connection` line). `keep-alive` is
/// skipped here because [`HOP_BY_HOP`] removes it anyway.
fn remove_connection_options(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(header::CONNECTION).iter();
    let first = lines.next().cloned();
    // More than one Connection line is rare; only then does this allocate.
    let rest: Vec<HeaderValue> = lines.cloned().collect();
    for value in first.iter().chain(&rest) {
        for option in value.as_bytes().split(|&b| b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() || option.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if let Ok(name) = std::str::from_utf8(option) {
                // An option that is not a valid header name names nothing to remove.
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    /// The fast path gives exactly what the general one gives, for the names it knows in
    /// every spelling tried, and steps aside for everything else.
    #[test]
    fn common_fields_are_what_the_general_path_makes_of_them() {
        let known = [
            "Date",
            "ETag",
            "Vary",
            "Server",
            "Expires",
            "Location",
            "Connection",
            "Set-Cookie",
            "Content-Type",
            "Last-Modified",
            "Cache-Control",
            "Accept-Ranges",
            "Content-Length",
            "Content-Encoding",
            "Transfer-Encoding",
        ];
        let mut taken = 0;
        for name in known {
            let lower = name.to_ascii_lowercase();
            let upper = name.to_ascii_uppercase();
            let mut odd = lower.clone().into_bytes();
            odd[1] = odd[1].to_ascii_uppercase();
            for raw in [
                name.as_bytes(),
                lower.as_bytes(),
                upper.as_bytes(),
                &odd[..],
            ] {
                let general = HeaderName::from_bytes(raw).unwrap();
                match common_field(raw) {
                    Some((fast, kind)) => {
                        taken += 1;
                        assert_eq!(fast, general, "{name}");
                        assert_eq!(kind, FieldKind::of(&general), "{name}");
                    }
                    None => assert!(raw != name.as_bytes() && raw != lower.as_bytes()),
                }
            }
        }
        assert_eq!(taken, 2 * known.len());
        for other in [
            "x-date",
            "dat",
            "datee",
            "keep-alive",
            "te",
            "upgrade",
            "content-lengtH ",
        ] {
            assert_eq!(common_field(other.as_bytes()), None, "{other}");
        }
        assert_eq!(
            FieldKind::of(&HeaderName::from_static("keep-alive")),
            FieldKind::OtherHopByHop
        );
        assert_eq!(FieldKind::of(&header::TE), FieldKind::OtherHopByHop);
        assert_eq!(FieldKind::of(&header::UPGRADE), FieldKind::OtherHopByHop);
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(h.as_str()), 1 << i, "{h}");
        }
        assert_eq!(hop_by_hop_bit("te"), TE_BIT);
        assert_eq!(hop_by_hop_bit("connection"), HOP_CONNECTION);
        assert_eq!(hop_by_hop_bit("transfer-encoding"), HOP_TRANSFER_ENCODING);
        for other in [
            "host",
            "tf",
            "upgrades",
            "connectio",
            "content-length",
            "x-keep-alive",
        ] {
            assert_eq!(hop_by_hop_bit(other), 0, "{other}");
        }
    }

    #[test]
    fn end_to_end_headers_pass_untouched() {
        let mut h = headers(&[("host", "a.b"), ("accept", "*/*"), ("x-id", "1")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_options_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Trace ,Upgrade"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn te_trailers_is_kept_unless_connection_names_it() {
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");

        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());

        let mut h = headers(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn invalid_connection_options_are_ignored() {
        let mut h = headers(&[("connection", "bad name, ,close"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-a"]);
    }

    #[test]
    fn a_pooled_connection_closed_under_a_request_sends_it_again_only_when_safe() {
        let b = Broken {
            reused: true,
            request_written: true,
            closed: true,
            idempotent: true,
            replayable: true,
        };
        assert!(send_again(b));
        assert!(!send_again(Broken { reused: false, ..b }));
        assert!(!send_again(Broken { closed: false, ..b }));
        assert!(!send_again(Broken {
            replayable: false,
            ..b
        }));
        assert!(!send_again(Broken {
            idempotent: false,
            ..b
        }));
        assert!(send_again(Broken {
            idempotent: false,
            request_written: false,
            ..b
        }));
    }

    #[test]
    fn heads_from_another_parser_get_the_same_decisions() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-drop"),
            ("x-drop", "1"),
            ("te", "trailers"),
            ("content-length", "2, 2"),
            ("x-keep", "1"),
        ]);
        let r = accept_response_head(Version::HTTP_11, StatusCode::OK, &mut h, false);
        assert_eq!(r, Ok((Framing::Length(2), true)));
        let mut left: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(left, [("content-length", "2"), ("x-keep", "1")]);
        for (status, fields) in [
            (204, &[("content-length", "x")][..]),
            (304, &[("content-length", "1"), ("content-length", "2")][..]),
            (200, &[("transfer-encoding", "gzip")][..]),
            (101, &[][..]),
            (600, &[][..]),
        ] {
            let mut h = headers(fields);
            let status = StatusCode::from_u16(status).unwrap();
            assert!(accept_response_head(Version::HTTP_11, status, &mut h, false).is_err());
        }
    }

    #[test]
    fn decimal_lengths() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1 2"), None);
        assert_eq!(parse_decimal(b"000000000000000000011"), Some(11));
        assert_eq!(parse_decimal(b"18446744073709551613"), Some(u64::MAX - 2));
        assert_eq!(parse_decimal(b"18446744073709551614"), None);
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
    }
}
