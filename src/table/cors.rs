//! The CORS filter (Gateway API GEP-1767, `filters[].type: CORS`): which origins, methods and
//! headers a route allows, and the response headers that follow from a request. Pure: the
//! proxy asks [`Cors::preflight`] for an OPTIONS preflight (answered by the proxy itself) and
//! [`Cors::actual`] for the headers to add to an upstream's response.
//!
//! Choices where the GEP leaves two options: a preflight from an origin that is not allowed
//! gets 204 without CORS headers (not 403), and a wildcard configuration answers `*` only to
//! requests that are not credentialed (`allowCredentials` unset); otherwise it echoes what the
//! request asked for, and adds `Vary: Origin` whenever the answer depends on the origin.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use serde::Serialize;

/// One `allowOrigins` entry: `*`, or `scheme://host[:port]` whose host may start with a
/// `*` that matches any number of labels to its left (`https://*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct OriginPattern {
    source: String,
    kind: OriginKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginKind {
    Any,
    Exact {
        scheme: String,
        host: String,
        port: u16,
    },
    /// `*.example.com`: the host ends with `.example.com` (stored with its dot).
    Suffix {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

impl From<OriginPattern> for String {
    fn from(o: OriginPattern) -> String {
        o.source
    }
}

/// `scheme`, lower-case host and port (the scheme's default when absent) of an origin.
fn split_origin(s: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    // `[v6]` hosts carry colons of their own: the port follows the bracket.
    let (host, port) = match rest.find(']').filter(|_| rest.starts_with('[')) {
        Some(end) => (&rest[..=end], rest[end + 1..].strip_prefix(':')),
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => default,
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let bad = || {
            format!("{s:?} is not an origin (expected *, or scheme://host[:port] with an optional leading * in the host)")
        };
        if s == "*" {
            return Ok(OriginPattern {
                source: s.into(),
                kind: OriginKind::Any,
            });
        }
        let (scheme, host, port) = split_origin(s).ok_or_else(bad)?;
        let kind = if host == "*" {
            OriginKind::Suffix {
                scheme,
                suffix: String::new(),
                port,
            }
        } else if let Some(rest) = host.strip_prefix('*') {
            if !rest.starts_with('.') || rest.contains('*') {
                return Err(bad());
            }
            OriginKind::Suffix {
                scheme,
                suffix: rest.to_string(),
                port,
            }
        } else if host.contains('*') {
            return Err(bad());
        } else {
            OriginKind::Exact { scheme, host, port }
        };
        Ok(OriginPattern {
            source: s.into(),
            kind,
        })
    }

    fn matches(&self, origin: &(String, String, u16)) -> bool {
        let (s, h, p) = origin;
        match &self.kind {
            OriginKind::Any => true,
            OriginKind::Exact { scheme, host, port } => scheme == s && host == h && port == p,
            OriginKind::Suffix {
                scheme,
                suffix,
                port,
            } => scheme == s && port == p && h.len() > suffix.len() && h.ends_with(suffix.as_str()),
        }
    }
}

/// A CORS filter, validated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<OriginPattern>,
    /// `*` allows every method; GET, HEAD and POST are always allowed.
    pub allow_methods: Vec<String>,
    /// Header names, lower-case; `*` allows all.
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age`, seconds (5 when unset, as the GEP says).
    pub max_age: u32,
}

fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

impl Cors {
    /// The request's origin when it is allowed: `Some(None)` for no `Origin` header at all
    /// (not a CORS request), `Some(Some(origin))` when allowed, `None` when refused.
    fn allowed_origin<'h>(&self, req: &'h HeaderMap) -> Option<Option<&'h HeaderValue>> {
        let Some(origin) = req.get(ORIGIN) else {
            return Some(None);
        };
        let parsed = origin.to_str().ok().and_then(split_origin)?;
        self.allow_origins
            .iter()
            .any(|p| p.matches(&parsed))
            .then_some(Some(origin))
    }

    fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| o.kind == OriginKind::Any)
    }

    /// `Access-Control-Allow-Origin` (+ credentials, `Vary`) for an allowed origin.
    fn origin_headers(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        if self.any_origin() && !self.allow_credentials {
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.append(VARY, HeaderValue::from_static("Origin"));
        }
        if self.allow_credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Is this request a CORS preflight (OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`)?
    pub fn is_preflight(method: &Method, req: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && req.contains_key(ORIGIN)
            && req.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Headers of the proxy's own answer to a preflight (always 204): empty when the origin
    /// is not allowed, so the browser refuses the actual request.
    pub fn preflight(&self, req: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        let Some(Some(origin)) = self.allowed_origin(req) else {
            out.append(VARY, HeaderValue::from_static("Origin"));
            return out;
        };
        self.origin_headers(origin, &mut out);
        let wildcard = |list: &[String]| list.iter().any(|m| m == "*");
        if !self.allow_methods.is_empty() {
            let v = if wildcard(&self.allow_methods) {
                if self.allow_credentials {
                    req.get(ACCESS_CONTROL_REQUEST_METHOD).cloned()
                } else {
                    Some(HeaderValue::from_static("*"))
                }
            } else {
                value(&self.allow_methods.join(", "))
            };
            if let Some(v) = v {
                out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
            }
        }
        if !self.allow_headers.is_empty() {
            let v = if wildcard(&self.allow_headers) {
                if self.allow_credentials {
                    req.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned()
                } else {
                    Some(HeaderValue::from_static("*"))
                }
            } else {
                value(&self.allow_headers.join(", "))
            };
            if let Some(v) = v {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(self.max_age));
        out
    }

    /// Headers to add to the upstream's response to an actual (non-preflight) request; empty
    /// for requests without an allowed `Origin`.
    pub fn actual(&self, req: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        match self.allowed_origin(req) {
            Some(Some(origin)) => {
                self.origin_headers(origin, &mut out);
                // `*` means "every header" only to requests without credentials.
                let star = self.expose_headers.iter().any(|h| h == "*");
                let usable = !(star && self.allow_credentials);
                if !self.expose_headers.is_empty() && usable {
                    if let Some(v) = value(&self.expose_headers.join(", ")) {
                        out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
                    }
                }
            }
            // Refused: the answer still depends on the origin, for caches.
            None => {
                out.append(VARY, HeaderValue::from_static("Origin"));
            }
            Some(None) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], creds: bool) -> Cors {
        Cors {
            allow_origins: origins
                .iter()
                .map(|o| OriginPattern::parse(o).unwrap())
                .collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into()],
            allow_credentials: creds,
            max_age: 5,
        }
    }

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins_match_by_scheme_host_and_default_port_with_left_wildcards() {
        let p = |s| OriginPattern::parse(s).unwrap();
        let o = |s| split_origin(s).unwrap();
        assert!(p("https://app.example.com").matches(&o("https://app.example.com:443")));
        assert!(!p("https://app.example.com").matches(&o("http://app.example.com")));
        assert!(p("https://*.example.com").matches(&o("https://a.b.example.com")));
        assert!(!p("https://*.example.com").matches(&o("https://example.com")));
        assert!(!p("https://*.example.com").matches(&o("https://evilexample.com")));
        assert!(p("http://localhost:8080").matches(&o("http://LOCALHOST:8080")));
        assert!(p("*").matches(&o("http://anything")));
        assert!(p("http://[::1]:8080").matches(&o("http://[::1]:8080")));
        assert!(p("http://[::1]").matches(&o("http://[::1]:80")));
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a*.b",
            "https://x/y",
            "https://x:0",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn preflight_from_an_allowed_origin_lists_methods_headers_and_max_age() {
        let c = cors(&["https://app.example.com"], false);
        let h = c.preflight(&req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
        ]));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "5");
        assert_eq!(h[VARY], "Origin");
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        // Another origin: no CORS headers at all.
        let h = c.preflight(&req(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "PUT"),
        ]));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_METHODS));
    }

    #[test]
    fn wildcards_become_echoes_when_credentials_are_allowed() {
        let mut c = cors(&["*"], false);
        c.allow_methods = vec!["*".into()];
        c.allow_headers = vec!["*".into()];
        let ask = req(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "x-a, x-b"),
        ]);
        let h = c.preflight(&ask);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "*");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "*");
        c.allow_credentials = true;
        let h = c.preflight(&ask);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "DELETE");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        // No Access-Control-Request-Headers: the header is left out, never `*`.
        let h = c.preflight(&req(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "DELETE"),
        ]));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_HEADERS));
    }

    #[test]
    fn actual_responses_get_origin_credentials_and_exposed_headers() {
        let c = cors(&["https://app.example.com"], true);
        let h = c.actual(&req(&[("origin", "https://app.example.com")]));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
        assert!(c.actual(&HeaderMap::new()).is_empty(), "not a CORS request");
        let refused = c.actual(&req(&[("origin", "https://other.example")]));
        assert!(!refused.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }
}
