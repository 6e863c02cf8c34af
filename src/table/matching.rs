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
    #[serde(rename = "RegularExpression")]
    Regex(Pattern),
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum ValueMatch {
    Exact(String),
    #[serde(rename = "RegularExpression")]
    Regex(Pattern),
}

/// How a [`Pattern`] is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchoring {
    /// The whole value must match (Gateway API and Linkerd `RegularExpression`, RE2 full match).
    Full,
    /// The match must start at the beginning of the value and may end anywhere (SMI
    /// `pathRegex`: "anchored (`^`) to the beginning of the URI").
    Start,
}

/// A user's regular expression, compiled with its anchoring, so `is_match` answers exactly
/// "does the value match as the spec says". Anchoring is compiled in (`^(?:…)$`) rather than
/// checked on a `find` result: a leftmost-first `find` of `/api|/api/v2` on `/api/v2` stops at
/// `/api`, and a bounds check on that would wrongly say "no".
///
/// Displays, serializes and counts (for precedence) as the pattern the user wrote.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    anchored: Regex,
}

impl Pattern {
    /// Compile `source` with `anchoring`. `source` must be a valid regex on its own (checked
    /// here: wrapping in a group must not make `a)(b` valid). `size_limit` bounds each
    /// compiled program.
    pub fn new(
        source: &str,
        anchoring: Anchoring,
        size_limit: usize,
    ) -> Result<Self, regex::Error> {
        let build = |p: &str| regex::RegexBuilder::new(p).size_limit(size_limit).build();
        build(source)?;
        let wrapped = match anchoring {
            Anchoring::Full => format!("^(?:{source})$"),
            Anchoring::Start => format!("^(?:{source})"),
        };
        Ok(Pattern {
            source: source.to_string(),
            anchored: build(&wrapped)?,
        })
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
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
    /// A GRPCRoute method match (compiled into `path`): its service and method lengths,
    /// which rank it as the GRPCRoute spec says (longer service, then longer method).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRank>,
}

/// Characters of a GRPCRoute method match's service and method (0 when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GrpcRank {
    pub service: usize,
    pub method: usize,
}

impl Default for RequestMatch {
    /// The API server's default: `PathPrefix /`, nothing else.
    fn default() -> Self {
        RequestMatch {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
            grpc: None,
        }
    }
}

/// How specific a match is; greater is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// GRPCRoute matches rank by service, then method length, before anything else;
    /// HTTP matches have none (and so rank below any gRPC method match).
    grpc: Option<GrpcRank>,
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
            grpc: self.grpc,
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
                // A value that is not visible ASCII never matches, alone or among others
                // (dropping it would match a list the client did not send).
                Some(_) => req
                    .headers
                    .get_all(&h.name)
                    .iter()
                    .map(|v| v.to_str().ok())
                    .collect::<Option<Vec<&str>>>()
                    .is_some_and(|values| h.value.matches(&values.join(","))),
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
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// First value of a query parameter (raw, not percent-decoded: exact matches compare the
/// bytes the client sent).
fn query_param<'q>(qs: &'q str, name: &str) -> Option<&'q str> {
    qs.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
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

    fn full(p: &str) -> Pattern {
        Pattern::new(p, Anchoring::Full, 1 << 20).unwrap()
    }

    #[test]
    fn regex_is_a_full_match() {
        let m = PathMatch::Regex(full("/v[0-9]+"));
        assert!(m.matches("/v12"));
        assert!(!m.matches("/v12/x"));
        assert!(!m.matches("/api/v12"));
    }

    #[test]
    fn alternations_match_the_whole_value_whichever_branch_comes_first() {
        // Leftmost-first `find` stops at the first branch; a full match must try the others.
        let path = PathMatch::Regex(full("/api|/api/v2"));
        assert!(path.matches("/api"));
        assert!(path.matches("/api/v2"));
        assert!(!path.matches("/api/v3"));
        let value = ValueMatch::Regex(full("gold|golden"));
        assert!(value.matches("gold"));
        assert!(value.matches("golden"));
        assert!(!value.matches("goldenrod"));
        // Anchors and flags inside the user's pattern keep their meaning.
        assert!(ValueMatch::Regex(full("(?i)yes|true")).matches("TRUE"));
        assert!(ValueMatch::Regex(full("^a$|b")).matches("b"));
        // Query params and headers go through the same value match.
        let m = RequestMatch {
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-tier"),
                value: ValueMatch::Regex(full("gold|golden")),
            }],
            query: vec![QueryMatch {
                name: "v".into(),
                value: ValueMatch::Regex(full("1|12")),
            }],
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-tier", "golden".parse().unwrap());
        assert!(m.matches(&req(&Method::GET, "/", Some("v=12"), &h)));
        assert!(!m.matches(&req(&Method::GET, "/", Some("v=123"), &h)));
    }

    #[test]
    fn start_anchored_patterns_match_prefixes_of_the_value() {
        let p = Pattern::new("/api|/api/v2", Anchoring::Start, 1 << 20).unwrap();
        assert!(p.is_match("/api/v2/x"));
        assert!(p.is_match("/apix"));
        assert!(!p.is_match("/x/api"));
    }

    #[test]
    fn a_pattern_is_valid_only_on_its_own() {
        // Wrapped in `^(?:…)$` this would balance; the user's pattern alone does not.
        assert!(Pattern::new("a)(b", Anchoring::Full, 1 << 20).is_err());
        assert_eq!(full("/a|/b").as_str(), "/a|/b");
        assert_eq!(serde_json::to_string(&full("/a|/b")).unwrap(), "\"/a|/b\"");
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
            path: PathMatch::Regex(full("/a/.*/b")),
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
