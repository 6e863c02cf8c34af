//! Every way the proxy itself can fail a request, with its status and reason
//! ([`ProxyError::classify`]); [`respond`](super::respond) turns it into a response: the status,
//! a `meshroute-error: <reason>` header and the same reason as the body. Metrics use the same
//! reason as their `error` label.

use std::net::SocketAddr;

use http::{HeaderName, StatusCode};

/// Header naming the reason on every response the proxy makes up itself.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("meshroute-error");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host header or authority")]
    MissingHost,
    #[error("request has more than one Host header")]
    DuplicateHost,
    #[error("request authority is not valid")]
    InvalidAuthority,
    #[error("h2 request has a host header that differs from :authority")]
    ConflictingHost,
    #[error("CONNECT is not supported: meshroute routes HTTP requests, it opens no tunnels")]
    ConnectNotSupported,
    #[error("no Service is known for the request authority")]
    UnknownAuthority,
    #[error("no route rule matches the request")]
    NoRoute,
    #[error("backend is invalid: {0}")]
    InvalidBackend(String),
    #[error("no backend of the rule has a non-zero weight")]
    NoBackends,
    #[error("backend {0} has no ready endpoint")]
    NoReadyEndpoint(String),
    #[error("connecting to endpoint {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to endpoint {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("endpoint {0} has all its connections busy and its queue full")]
    UpstreamOverflow(SocketAddr),
    #[error("endpoint {addr} failed the exchange: {source}")]
    Upstream {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("client request body failed: {0}")]
    ClientBody(#[source] hyper::Error),
    #[error("client sent no request body byte for the client body timeout")]
    ClientBodyTimeout,
    #[error("request timeout expired")]
    RequestTimeout,
    #[error("backendRequest timeout expired")]
    BackendRequestTimeout,
    #[error("redirect target is not a valid Location: {0}")]
    InvalidRedirect(String),
}

impl ProxyError {
    /// The status and reason for this error, which
    /// [`error_response`](super::respond::error_response) answers with. The mapping
    /// has exactly one home.
    pub fn classify(&self) -> (StatusCode, &'static str) {
        use ProxyError::*;
        match self {
            MissingHost => (StatusCode::BAD_REQUEST, "missing-host"),
            DuplicateHost => (StatusCode::BAD_REQUEST, "duplicate-host"),
            InvalidAuthority => (StatusCode::BAD_REQUEST, "invalid-authority"),
            ConflictingHost => (StatusCode::BAD_REQUEST, "conflicting-host"),
            UnknownAuthority => (StatusCode::NOT_FOUND, "unknown-authority"),
            ConnectNotSupported => (StatusCode::METHOD_NOT_ALLOWED, "connect-not-supported"),
            NoRoute => (StatusCode::NOT_FOUND, "no-route"),
            InvalidBackend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "invalid-backend"),
            NoBackends => (StatusCode::INTERNAL_SERVER_ERROR, "no-backends"),
            InvalidRedirect(_) => (StatusCode::INTERNAL_SERVER_ERROR, "invalid-redirect"),
            Connect { .. } | ConnectTimeout(_) => (StatusCode::BAD_GATEWAY, "connect-failed"),
            Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream-protocol-error"),
            ClientBody(_) => (StatusCode::BAD_REQUEST, "client-protocol-error"),
            ClientBodyTimeout => (StatusCode::REQUEST_TIMEOUT, "client-body-timeout"),
            NoReadyEndpoint(_) => (StatusCode::SERVICE_UNAVAILABLE, "no-ready-endpoint"),
            UpstreamOverflow(_) => (StatusCode::SERVICE_UNAVAILABLE, "upstream-overflow"),
            RequestTimeout => (StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            BackendRequestTimeout => (StatusCode::GATEWAY_TIMEOUT, "backend-request-timeout"),
        }
    }

    /// The `meshroute-error` reason (also the metrics `error` label).
    pub fn reason(&self) -> &'static str {
        self.classify().1
    }
}

/// True for a gRPC request (a POST with `content-type: application/grpc[+proto|;…]`): its
/// errors are gRPC statuses, which gRPC clients read, not HTTP ones, which they do not. gRPC
/// and gRPC-Web calls are always POSTs (gRPC's PROTOCOL-HTTP2.md), so other methods skip the
/// header lookup.
pub fn is_grpc(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::POST
        && parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.get(..16)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
            })
}

/// The gRPC status code for a proxy error, by the meaning of the error (timeouts are
/// DEADLINE_EXCEEDED), else by gRPC's HTTP-to-gRPC status mapping.
pub fn grpc_status(err: &ProxyError) -> u8 {
    const INTERNAL: u8 = 13;
    const UNIMPLEMENTED: u8 = 12;
    const DEADLINE_EXCEEDED: u8 = 4;
    const UNAVAILABLE: u8 = 14;
    use ProxyError::*;
    match err {
        RequestTimeout | BackendRequestTimeout | ClientBodyTimeout => DEADLINE_EXCEEDED,
        UnknownAuthority | NoRoute | ConnectNotSupported => UNIMPLEMENTED,
        NoReadyEndpoint(_)
        | Connect { .. }
        | ConnectTimeout(_)
        | UpstreamOverflow(_)
        | Upstream { .. } => UNAVAILABLE,
        _ => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, content_type: Option<&str>) -> http::request::Parts {
        let mut req = http::Request::builder().method(method).uri("/pkg.Svc/Call");
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_posts_with_a_grpc_content_type_are_grpc() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
            "application/grpc-web+proto",
        ] {
            assert!(is_grpc(&parts("POST", Some(ct))), "{ct}");
            assert!(!is_grpc(&parts("GET", Some(ct))), "GET {ct}");
            assert!(!is_grpc(&parts("PUT", Some(ct))), "PUT {ct}");
        }
        for ct in [Some("application/json"), Some("application/grp"), None] {
            assert!(!is_grpc(&parts("POST", ct)), "{ct:?}");
        }
    }
}
