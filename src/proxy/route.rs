//! Which parent a request is addressed to: the authority from an absolute-form URI or h2
//! `:authority`, otherwise the `Host` header. RFC 9112 §3.2: an HTTP/1.1 request without a Host
//! header, or with more than one, is answered 400, and so is a `Host` that is not a valid
//! authority. The request is routed by and forwarded with one authority: an HTTP/1.1
//! absolute-form target replaces `Host` ([`host_from_target`], RFC 9112 §3.2.2), and an h2
//! `host` that differs from `:authority` makes the request malformed (RFC 9113 §8.3.1). Binding
//! the authority to a parent and a rule is the table's job
//! ([`RouteTable::lookup`](crate::table::RouteTable::lookup)).
//!
//! Every request's authority is checked byte by byte ([`is_authority`]), so the check reads a
//! 256-entry table instead of searching the delimiter list per byte. Measured with callgrind
//! (release build, one worker, 5,000 keep-alive GETs through the peer kit's 90/10 split with a
//! 44-byte `Host`): `is_authority` went from 746 to 427 instructions per request, the whole
//! proxy from 22,076 to 21,777 (-1.4%; together with one `Served` value instead of three in
//! the request future, see `forward`).

use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Uri, Version};

use super::error::ProxyError;

/// The request authority used for routing.
pub fn authority(parts: &Parts) -> Result<&str, ProxyError> {
    authority_of(&parts.headers, &parts.uri, parts.version)
}

/// [`authority`] from the pieces of a request head (before it is split into parts).
pub fn authority_of<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    version: Version,
) -> Result<&'a str, ProxyError> {
    authority_trusting(headers, uri, version, |_| false)
}

/// [`authority_of`], skipping the byte-by-byte check of a `Host` value for which `checked`
/// answers true: one equal to an authority that passed [`is_authority`] before (a
/// connection's last one, `forward::ParentCache`). Clients send the same `Host` on every
/// request of a connection, so this saves the check on all but the first. Measured with
/// callgrind as in the module doc (10,000 requests over 16 connections): `is_authority` went
/// from 431 instructions per request to the first request of each connection, and
/// `forward::handle`, where this is inlined, from 1,081 to 679.
pub fn authority_trusting<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    version: Version,
    checked: impl FnOnce(&[u8]) -> bool,
) -> Result<&'a str, ProxyError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if version == Version::HTTP_11 && host.is_none() {
        return Err(ProxyError::MissingHost);
    }
    // A Host that is not an authority is refused even when the target names one: it would
    // be forwarded as it is to an h2 endpoint's `:authority` otherwise.
    let host = match host {
        Some(h) if checked(h.as_bytes()) || is_authority(h.as_bytes()) => Some(h),
        Some(_) => return Err(ProxyError::InvalidAuthority),
        None => None,
    };
    if let Some(a) = uri.authority() {
        // The URI parser takes userinfo, an empty or non-numeric port and any bracketed text
        // (found by fuzzing): the target must be an authority like a Host is.
        if !is_authority(a.as_str().as_bytes()) {
            return Err(ProxyError::InvalidAuthority);
        }
        if version == Version::HTTP_2 {
            if let Some(h) = host {
                if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                    return Err(ProxyError::ConflictingHost);
                }
            }
        }
        return Ok(a.as_str());
    }
    match host {
        // `is_authority` admits ASCII only.
        Some(h) => h.to_str().map_err(|_| ProxyError::InvalidAuthority),
        None => Err(ProxyError::MissingHost),
    }
}

/// Whether a `Host` value is an authority meshroute can route by: `host[:port]`, where the
/// host is a reg-name, an IPv4 address or a bracketed IP literal (RFC 3986 §3.2.2). No
/// userinfo (RFC 9110 §4.2.4 forbids it in `http` URIs), no spaces or other delimiters that a
/// peer could split differently.
pub fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IP literal, not before a port.
        Some(i) if !value[i..].contains(&b']') => (&value[..i], Some(&value[i + 1..])),
        _ => (value, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.iter().all(u8::is_ascii_digit)) {
        return false;
    }
    match host {
        [] => false,
        // An IPv6 address, strictly: `http::uri::Authority` (and so an h2 `:authority`)
        // refuses a malformed one such as `[:::::::::1]` (found by fuzzing). No zone ID or
        // IPvFuture: no Service is addressed by one.
        [b'[', literal @ .., b']'] => {
            std::str::from_utf8(literal).is_ok_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok())
        }
        _ => host.iter().all(|&b| REG_NAME[usize::from(b)]),
    }
}

/// The bytes of a reg-name: unreserved and sub-delims (RFC 3986 §3.2.2). Not pct-encoded:
/// `http` refuses `%` in a host (so the authority could not be forwarded as a URI), and no
/// Service name has one (found by fuzzing). A table,
/// because every request's authority is checked byte by byte: testing each byte against the
/// list of delimiters cost about 16 instructions a byte.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let delims = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < delims.len() {
        t[delims[i] as usize] = true;
        i += 1;
    }
    t
};

/// For an HTTP/1.x request in absolute form, make `Host` the target's authority: a proxy
/// "MUST ignore the received Host header field (if any) and instead replace it with the host
/// information of the request-target" (RFC 9112 §3.2.2). meshroute routes by the target, so it
/// forwards the same authority it routed by. h2 requests carry one authority already (a
/// differing `host` was refused by [`authority_of`]).
pub fn host_from_target(parts: &mut Parts) -> Result<(), ProxyError> {
    if parts.version == Version::HTTP_2 {
        return Ok(());
    }
    if let Some(a) = parts.uri.authority() {
        let value = HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::InvalidAuthority)?;
        parts.headers.insert(HOST, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn reg_name_table_admits_exactly_unreserved_and_sub_delims() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
            assert_eq!(REG_NAME[usize::from(b)], expected, "byte {b}");
        }
    }

    #[test]
    fn only_a_host_checked_before_skips_the_check() {
        let trusted = |h: &[u8]| h == b"web.shop:8080";
        let p = parts(Version::HTTP_11, "/x", &["web.shop:8080"]);
        let got = authority_trusting(&p.headers, &p.uri, p.version, trusted);
        assert_eq!(got.unwrap(), "web.shop:8080");
        // Another value is checked byte by byte, whatever was trusted before.
        let p = parts(Version::HTTP_11, "/x", &["web.shop b"]);
        let got = authority_trusting(&p.headers, &p.uri, p.version, trusted);
        assert!(matches!(got, Err(ProxyError::InvalidAuthority)));
    }

    #[test]
    fn host_header_names_the_parent() {
        let p = parts(Version::HTTP_11, "/x", &["web.shop:8080"]);
        assert_eq!(authority(&p).unwrap(), "web.shop:8080");
    }

    #[test]
    fn absolute_form_uri_wins_over_host() {
        let p = parts(Version::HTTP_11, "http://web.shop/x", &["other.ns"]);
        assert_eq!(authority(&p).unwrap(), "web.shop");
    }

    #[test]
    fn http11_without_host_is_rejected() {
        let p = parts(Version::HTTP_11, "http://web.shop/x", &[]);
        assert!(matches!(authority(&p), Err(ProxyError::MissingHost)));
        let p = parts(Version::HTTP_11, "/x", &[]);
        assert!(matches!(authority(&p), Err(ProxyError::MissingHost)));
    }

    #[test]
    fn duplicate_host_is_rejected() {
        let p = parts(Version::HTTP_11, "/x", &["a.b", "c.d"]);
        assert!(matches!(authority(&p), Err(ProxyError::DuplicateHost)));
    }

    #[test]
    fn host_must_be_an_authority() {
        for good in [
            "a.b",
            "web.shop:8080",
            "10.0.0.1:80",
            "[::1]:80",
            "[fe80::1]",
            "x_y.z",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
            let p = parts(Version::HTTP_11, "/x", &[good]);
            assert_eq!(authority(&p).unwrap(), good);
        }
        for bad in [
            "app.t b",
            "",
            "a.b:",
            "a.b:8x",
            "u@a.b",
            "a.b/c",
            "a.b?",
            "[::1",
            "[]",
            "a\tb",
            "a.b:80:80",
            "[:::::::::1]:80",
            "[::1::80:1::1::1]:80",
            "[::1:1::1:1::::]:80",
            "[fe80::1%25eth0]",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad:?}");
        }
        let mut p = parts(Version::HTTP_11, "/x", &[]);
        p.headers.insert(HOST, HeaderValue::from_static("app.t b"));
        assert!(matches!(authority(&p), Err(ProxyError::InvalidAuthority)));
        let mut p = parts(Version::HTTP_11, "http://app.t/x", &[]);
        p.headers.insert(HOST, HeaderValue::from_static("app.t b"));
        assert!(matches!(authority(&p), Err(ProxyError::InvalidAuthority)));
    }

    #[test]
    fn absolute_form_target_replaces_host() {
        let mut p = parts(Version::HTTP_11, "http://web.shop:81/x", &["evil.example"]);
        assert_eq!(authority(&p).unwrap(), "web.shop:81");
        host_from_target(&mut p).unwrap();
        assert_eq!(p.headers[HOST], "web.shop:81");
        assert_eq!(p.headers.get_all(HOST).iter().count(), 1);
        let mut p = parts(Version::HTTP_11, "/x", &["web.shop"]);
        host_from_target(&mut p).unwrap();
        assert_eq!(p.headers[HOST], "web.shop");
    }

    #[test]
    fn h2_host_must_match_authority() {
        let p = parts(Version::HTTP_2, "http://web.shop/x", &["evil.example"]);
        assert!(matches!(authority(&p), Err(ProxyError::ConflictingHost)));
        let p = parts(Version::HTTP_2, "http://web.shop/x", &["WEB.shop"]);
        assert_eq!(authority(&p).unwrap(), "web.shop");
        let p = parts(Version::HTTP_2, "/x", &["web.shop"]);
        assert_eq!(authority(&p).unwrap(), "web.shop");
    }

    #[test]
    fn target_authority_must_be_an_authority_too() {
        for bad in [
            "http://u@web.shop/x",
            "http://web.shop:+80/x",
            "http://[]/x",
        ] {
            let p = parts(Version::HTTP_11, bad, &["web.shop"]);
            assert!(
                matches!(authority(&p), Err(ProxyError::InvalidAuthority)),
                "{bad}"
            );
            let p = parts(Version::HTTP_2, bad, &[]);
            assert!(
                matches!(authority(&p), Err(ProxyError::InvalidAuthority)),
                "{bad}"
            );
        }
    }

    #[test]
    fn h2_uses_authority_pseudo_header() {
        let p = parts(Version::HTTP_2, "http://web.shop:80/x", &[]);
        assert_eq!(authority(&p).unwrap(), "web.shop:80");
    }
}
