//! Every way the proxy itself can fail a request, and the one function that turns such a
//! failure into a response ([`error_response`]): a status code, a `meshroute-error: <reason>`
//! header and the same reason as the body. Metrics use the same reason as their `error` label.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;

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
    /// The status and reason for this error. Kept next to [`error_response`] so the mapping
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

/// The response for a proxy-made failure. The only place statuses for errors are chosen.
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    let (status, reason) = err.classify();
    let mut rsp = Response::new(ResponseBody::full(Bytes::from_static(reason.as_bytes())));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if let ProxyError::ConnectNotSupported = err {
        // RFC 9110 §15.5.6: a 405 lists what is allowed. Every method but CONNECT is
        // forwarded; these are the registered ones.
        h.insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
        );
    }
    rsp
}

/// True for a gRPC request (`content-type: application/grpc[+proto|;…]`): its errors are
/// gRPC statuses, which gRPC clients read, not HTTP ones, which they do not.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
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

/// A proxy error as a gRPC client reads it: HTTP 200, trailers-only (`grpc-status` and
/// `grpc-message` in the head, no body), with `meshroute-error` as for every answer of ours.
pub fn grpc_error_response(err: &ProxyError) -> Response<ResponseBody> {
    let reason = err.reason();
    let mut rsp = Response::new(ResponseBody::empty());
    let h = rsp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_status(err))),
    );
    h.insert("grpc-message", HeaderValue::from_static(reason));
    rsp
}

/// The answer to `err` for a request with these headers: gRPC or HTTP.
pub fn error_response_for(err: &ProxyError, request: &http::HeaderMap) -> Response<ResponseBody> {
    if is_grpc(request) {
        grpc_error_response(err)
    } else {
        error_response(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_documented_status() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases = [
            (ProxyError::MissingHost, 400),
            (ProxyError::DuplicateHost, 400),
            (ProxyError::InvalidAuthority, 400),
            (ProxyError::ConflictingHost, 400),
            (ProxyError::UnknownAuthority, 404),
            (ProxyError::NoRoute, 404),
            (ProxyError::ConnectNotSupported, 405),
            (ProxyError::InvalidBackend("x".into()), 500),
            (ProxyError::NoBackends, 500),
            (
                ProxyError::Connect {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                502,
            ),
            (ProxyError::ClientBodyTimeout, 408),
            (ProxyError::NoReadyEndpoint("a".into()), 503),
            (ProxyError::UpstreamOverflow(addr), 503),
            (ProxyError::RequestTimeout, 504),
            (ProxyError::BackendRequestTimeout, 504),
        ];
        for (err, status) in cases {
            let rsp = error_response(&err);
            assert_eq!(rsp.status().as_u16(), status, "{err}");
            assert_eq!(
                rsp.headers()[ERROR_HEADER].to_str().ok(),
                Some(err.reason())
            );
        }
    }
}
