//! Which parent a request is addressed to: the authority from an absolute-form URI or h2
//! `:authority`, otherwise the `Host` header. RFC 9112 §3.2: an HTTP/1.1 request without a Host
//! header, or with more than one, is answered 400. Binding the authority to a parent and a rule
//! is the table's job ([`RouteTable::lookup`](crate::table::RouteTable::lookup)).

use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, Uri, Version};

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
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if version == Version::HTTP_11 && host.is_none() {
        return Err(ProxyError::MissingHost);
    }
    if let Some(a) = uri.authority() {
        return Ok(a.as_str());
    }
    match host {
        Some(h) => h.to_str().map_err(|_| ProxyError::InvalidAuthority),
        None => Err(ProxyError::MissingHost),
    }
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
    fn h2_uses_authority_pseudo_header() {
        let p = parts(Version::HTTP_2, "http://web.shop:80/x", &[]);
        assert_eq!(authority(&p).unwrap(), "web.shop:80");
    }
}
