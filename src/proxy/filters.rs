//! Gateway API filters applied by the proxy, at rule level first and then at backendRef level:
//! RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, CORS (preflights
//! answered here, headers for actual requests carried to the response) and the request side of
//! RequestMirror (choosing which mirrors fire; sending is in `forward`).

use bytes::Bytes;
use http::header::LOCATION;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri};

use super::error::ProxyError;
use super::respond::ResponseBody;
use crate::table::cors::Cors;
use crate::table::{Filter, HeaderModifier, PathMatch, PathModifier, Redirect, RequestMatch};

/// What request filters decided beyond editing the request in place.
#[derive(Debug, Default, Clone)]
pub struct RequestEffects {
    /// Authority to send upstream instead of the client's (URLRewrite hostname).
    pub authority: Option<HeaderValue>,
    /// CORS headers for the upstream's response (CORS filter, actual requests). Boxed: the
    /// effects move with every request's pick, and unboxed they would take a `memcpy` call
    /// each time (136 bytes against 48).
    pub cors: Option<Box<HeaderMap>>,
}

/// Apply the request-side filters in order. Returns a response when a filter answers the
/// request itself (RequestRedirect).
pub fn apply_request(
    filters: &[Filter],
    parts: &mut Parts,
    matched: &RequestMatch,
    listener_port: u16,
    effects: &mut RequestEffects,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    for f in filters {
        match f {
            Filter::RequestHeaderModifier(m) => modify_headers(m, &mut parts.headers),
            Filter::RequestRedirect(r) => {
                return redirect(r, parts, matched, listener_port).map(Some);
            }
            Filter::UrlRewrite(rw) => {
                if let Some(h) = &rw.hostname {
                    effects.authority = HeaderValue::from_str(h).ok();
                }
                if let Some(p) = &rw.path {
                    let new_path = rewrite_path(p, &matched.path, parts.uri.path());
                    parts.uri = with_path(&parts.uri, &new_path)?;
                }
            }
            Filter::Cors(c) => {
                // A preflight is the proxy's to answer: it never reaches a backend.
                if Cors::is_preflight(&parts.method, &parts.headers) {
                    let mut rsp = Response::new(ResponseBody::empty());
                    *rsp.status_mut() = StatusCode::NO_CONTENT;
                    *rsp.headers_mut() = c.preflight(&parts.headers);
                    return Ok(Some(rsp));
                }
                let add = c.actual(&parts.headers);
                if !add.is_empty() {
                    effects.cors.get_or_insert_with(Box::default).extend(add);
                }
            }
            Filter::ResponseHeaderModifier(_) | Filter::RequestMirror(_) => {}
        }
    }
    Ok(None)
}

/// Add the CORS headers decided on the request side to the upstream's response (they
/// replace any the upstream sent: the route's policy is the one that holds).
pub fn apply_cors(effects: &mut RequestEffects, headers: &mut HeaderMap) {
    if let Some(add) = effects.cors.take() {
        let mut last = None;
        for (name, value) in *add {
            match name {
                Some(n) => {
                    headers.insert(n.clone(), value);
                    last = Some(n);
                }
                None => {
                    if let Some(n) = &last {
                        headers.append(n.clone(), value);
                    }
                }
            }
        }
    }
}

/// Apply the ResponseHeaderModifier filters in order.
pub fn apply_response(filters: &[Filter], headers: &mut HeaderMap) {
    for f in filters {
        if let Filter::ResponseHeaderModifier(m) = f {
            modify_headers(m, headers);
        }
    }
}

pub fn has_response_filters(filters: &[Filter]) -> bool {
    filters
        .iter()
        .any(|f| matches!(f, Filter::ResponseHeaderModifier(_)))
}

/// Gateway API order: set, then add, then remove.
fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// The path after a URLRewrite or RequestRedirect path modifier.
pub fn rewrite_path(modifier: &PathModifier, matched: &PathMatch, path: &str) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(repl) => {
            let PathMatch::Prefix(prefix) = matched else {
                // Only valid with a PathPrefix match (the schema enforces it).
                return path.to_string();
            };
            let rest = if prefix == "/" {
                path
            } else {
                path.get(prefix.len()..).unwrap_or("")
            };
            let mut out = String::with_capacity(repl.len() + rest.len());
            out.push_str(repl.trim_end_matches('/'));
            if !rest.is_empty() && !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
            if out.is_empty() {
                out.push('/');
            }
            out
        }
    }
}

/// `uri` with its path replaced and its query kept.
fn with_path(uri: &Uri, path: &str) -> Result<Uri, ProxyError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|e| ProxyError::InvalidRedirect(e.to_string()))?);
    Uri::from_parts(parts).map_err(|e| ProxyError::InvalidRedirect(e.to_string()))
}

fn redirect(
    r: &Redirect,
    parts: &Parts,
    matched: &RequestMatch,
    listener_port: u16,
) -> Result<Response<ResponseBody>, ProxyError> {
    let authority = super::route::authority(parts)?;
    let host = host_of(authority);
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let hostname = r.hostname.as_deref().unwrap_or(host);
    // Gateway API: no port given → the scheme's well-known port when the scheme is set,
    // otherwise the listener's port; well-known ports are left out of Location.
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(listener_port),
    };
    let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => rewrite_path(m, &matched.path, parts.uri.path()),
        None => parts.uri.path().to_string(),
    };
    let mut location = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if let Some(q) = parts.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let value = HeaderValue::from_str(&location)
        .map_err(|_| ProxyError::InvalidRedirect(location.clone()))?;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut rsp = Response::new(ResponseBody::full(Bytes::new()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(LOCATION, value);
    Ok(rsp)
}

/// The host part (no port) of the request authority, for redirects.
pub fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    #[test]
    fn replace_prefix_match_follows_the_gateway_api_examples() {
        let m = PathModifier::ReplacePrefixMatch("/xyz".into());
        assert_eq!(rewrite_path(&m, &prefix("/foo"), "/foo/bar"), "/xyz/bar");
        assert_eq!(rewrite_path(&m, &prefix("/foo"), "/foo"), "/xyz");
        assert_eq!(rewrite_path(&m, &prefix("/foo"), "/foo/"), "/xyz/");
        let root = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(rewrite_path(&root, &prefix("/foo"), "/foo/bar"), "/bar");
        assert_eq!(rewrite_path(&root, &prefix("/foo"), "/foo"), "/");
        assert_eq!(rewrite_path(&m, &prefix("/"), "/bar"), "/xyz/bar");
    }

    #[test]
    fn replace_full_path_ignores_the_match() {
        let m = PathModifier::ReplaceFullPath("/new".into());
        assert_eq!(rewrite_path(&m, &prefix("/foo"), "/foo/bar"), "/new");
    }

    #[test]
    fn host_of_strips_only_a_numeric_port() {
        assert_eq!(host_of("web.shop:8080"), "web.shop");
        assert_eq!(host_of("web.shop"), "web.shop");
    }
}
