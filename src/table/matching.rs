//! Request matching and Gateway API match precedence.
//!
//! Precedence is an ordering on [`Specificity`], not a pile of ifs: exact path beats any
//! regex, which beats any prefix; a longer prefix (or regex) beats a shorter one; then a method
//! match, then more header matches, then more query matches. Ties are broken by `compile`
//! (route age, then namespace/name, then rule and match order).

use std::cmp::Ordering;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde::Serialize;

/// What a match looks at in a request. Built once per request by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
    /// Stored without a trailing slash (except the root `/`).
    #[serde(rename = "PathPrefix")]
    Prefix(String),
    #[serde(rename = "RegularExpression", serialize_with = "ser_regex")]
    Regex(Regex),
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum ValueMatch {
    Exact(String),
    #[serde(rename = "RegularExpression", serialize_with = "ser_regex")]
    Regex(Regex),
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser_header_name")]
    pub name: HeaderName,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// One `matches[]` entry. All present conditions must hold.
#[derive(Debug, Clone, Serialize)]
pub struct RequestMatch {
    pub path: PathMatch,
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    #[serde(rename = "queryParams")]
    pub query: Vec<QueryMatch>,
}

impl Default for RequestMatch {
    /// The API server's default: `PathPrefix /`, nothing else.
    fn default() -> Self {
        RequestMatch {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

/// How specific a match is; greater is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// 2 = exact, 1 = regex, 0 = prefix.
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

impl RequestMatch {
    pub fn specificity(&self) -> Specificity {
        let (path_kind, path_len) = match &self.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        Specificity {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }

    /// Compare two matches by precedence: `Less` means `self` wins (sorts first).
    pub fn precedence(&self, other: &RequestMatch) -> Ordering {
        other.specificity().cmp(&self.specificity())
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        if !self.path.matches(req.path) {
            return false;
        }
        for h in &self.headers {
            // Several values of one header are matched as a comma-joined value only when the
            // header repeats; the common single-value case allocates nothing.
            let mut values = req.headers.get_all(&h.name).iter();
            let Some(first) = values.next() else {
                return false;
            };
            let ok = match values.next() {
                None => first.to_str().is_ok_and(|v| h.value.matches(v)),
                Some(_) => {
                    let joined: Vec<&str> = req
                        .headers
                        .get_all(&h.name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    h.value.matches(&joined.join(","))
                }
            };
            if !ok {
                return false;
            }
        }
        for q in &self.query {
            let found = req.query.and_then(|qs| query_param(qs, &q.name));
            match found {
                Some(v) if q.value.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                if p == "/" {
                    return true;
                }
                match path.strip_prefix(p.as_str()) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
            PathMatch::Regex(r) => full_match(r, path),
        }
    }
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => full_match(r, value),
        }
    }
}

/// Gateway API regexes match the whole value (RE2 full match).
fn full_match(r: &Regex, s: &str) -> bool {
    r.find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

/// First value of a query parameter (raw, not percent-decoded: exact matches compare the
/// bytes the client sent).
fn query_param<'q>(qs: &'q str, name: &str) -> Option<&'q str> {
    qs.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn ser_header_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query,
            headers,
        }
    }

    #[test]
    fn prefix_matches_whole_path_elements() {
        let m = PathMatch::Prefix("/foo".into());
        assert!(m.matches("/foo"));
        assert!(m.matches("/foo/"));
        assert!(m.matches("/foo/bar"));
        assert!(!m.matches("/foobar"));
        assert!(!m.matches("/fo"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn regex_is_a_full_match() {
        let m = PathMatch::Regex(Regex::new("/v[0-9]+").unwrap());
        assert!(m.matches("/v12"));
        assert!(!m.matches("/v12/x"));
        assert!(!m.matches("/api/v12"));
    }

    #[test]
    fn headers_and_query_must_all_match() {
        let mut h = HeaderMap::new();
        h.insert("x-canary", "yes".parse().unwrap());
        let m = RequestMatch {
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-canary"),
                value: ValueMatch::Exact("yes".into()),
            }],
            query: vec![QueryMatch {
                name: "v".into(),
                value: ValueMatch::Exact("2".into()),
            }],
            ..Default::default()
        };
        let get = Method::GET;
        assert!(m.matches(&req(&get, "/", Some("a=1&v=2"), &h)));
        assert!(!m.matches(&req(&get, "/", Some("v=3"), &h)));
        assert!(!m.matches(&req(&get, "/", None, &h)));
        assert!(!m.matches(&req(&get, "/", Some("v=2"), &HeaderMap::new())));
    }

    #[test]
    fn method_restricts() {
        let m = RequestMatch {
            method: Some(Method::POST),
            ..Default::default()
        };
        let h = HeaderMap::new();
        assert!(m.matches(&req(&Method::POST, "/", None, &h)));
        assert!(!m.matches(&req(&Method::GET, "/", None, &h)));
    }

    #[test]
    fn specificity_orders_by_gateway_api_rules() {
        let exact = RequestMatch {
            path: PathMatch::Exact("/a".into()),
            ..Default::default()
        };
        let regex = RequestMatch {
            path: PathMatch::Regex(Regex::new("/a/.*/b").unwrap()),
            ..Default::default()
        };
        let long = RequestMatch {
            path: PathMatch::Prefix("/a/b".into()),
            ..Default::default()
        };
        let short = RequestMatch {
            path: PathMatch::Prefix("/a".into()),
            ..Default::default()
        };
        let method = RequestMatch {
            path: PathMatch::Prefix("/a".into()),
            method: Some(Method::GET),
            ..Default::default()
        };
        let header = RequestMatch {
            path: PathMatch::Prefix("/a".into()),
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x"),
                value: ValueMatch::Exact("1".into()),
            }],
            ..Default::default()
        };
        let query = RequestMatch {
            path: PathMatch::Prefix("/a".into()),
            query: vec![QueryMatch {
                name: "q".into(),
                value: ValueMatch::Exact("1".into()),
            }],
            ..Default::default()
        };
        // Each is strictly more specific than the next.
        let order = [&exact, &regex, &long, &method, &header, &query, &short];
        for w in order.windows(2) {
            assert_eq!(
                w[0].precedence(w[1]),
                Ordering::Less,
                "{:?} should beat {:?}",
                w[0].specificity(),
                w[1].specificity()
            );
        }
    }
}
