//! GRPCRoute through the real proxy with a real gRPC client and servers (tonic's health
//! service): method matches, weights, edits, h2c upstreams whatever `appProtocol` says, and
//! proxy errors as gRPC statuses (HTTP 200, trailers-only).

#[path = "support/proxy.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A gRPC health server that reports `svc` as `status`: which status a client sees tells
/// which backend answered.
async fn health_server(status: tonic_health::ServingStatus) -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("svc", status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Keep the reporter alive with the server.
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

/// An h2c server that accepts every stream and never answers.
async fn silent_h2_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok(stream)) = conn.accept().await {
                    held.push(stream);
                }
            });
        }
    });
    addr
}

fn endpoints_yaml(ns: &str, name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: grpc, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n---\n",
        addr.port(),
        addr.ip()
    )
}

fn grpc_route(rules: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: health, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n{rules}")
}

async fn client(proxy: SocketAddr) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .origin("http://web.shop.svc.cluster.local".parse().unwrap())
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(c: &mut HealthClient<Channel>) -> Result<i32, tonic::Status> {
    c.check(HealthCheckRequest {
        service: "svc".into(),
    })
    .await
    .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn grpcroute_splits_by_weight_follows_edits_and_answers_errors_as_grpc_statuses() {
    let serving = health_server(tonic_health::ServingStatus::Serving).await;
    let not_serving = health_server(tonic_health::ServingStatus::NotServing).await;
    let silent = silent_h2_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    // No appProtocol on these ports: a GRPCRoute backend is h2c anyway.
    y += &endpoints_yaml("shop", "grpc-a", serving);
    y += &endpoints_yaml("shop", "grpc-b", not_serving);
    y += &endpoints_yaml("shop", "grpc-silent", silent);
    y += "apiVersion: v1\nkind: Service\nmetadata: {name: grpc-empty, namespace: shop}\nspec: {ports: [{name: grpc, port: 80}]}\n---\n";
    write(dir.path(), "services.yaml", &y);
    let rules = |wa: u32, wb: u32| {
        format!("  - matches: [{{method: {{service: grpc.health.v1.Health, method: Check}}}}]\n    backendRefs: [{{name: grpc-a, port: 80, weight: {wa}}}, {{name: grpc-b, port: 80, weight: {wb}}}]\n  - matches: [{{method: {{service: grpc.health.v1.Health, method: Watch}}}}]\n    backendRefs: [{{name: grpc-empty, port: 80}}]\n")
    };
    write(dir.path(), "route.yaml", &grpc_route(&rules(1, 0)));
    // GRPCRoute has no `timeouts`: the proxy's default request timeout bounds its calls.
    let m = start_with(
        dir.path(),
        meshroute::proxy::ProxyConfig {
            default_request_timeout: Duration::from_millis(500),
            ..test_config()
        },
    )
    .await;
    let mut c = client(m.proxy_addr).await;
    for _ in 0..10 {
        assert_eq!(check(&mut c).await.unwrap(), ServingStatus::Serving as i32);
    }
    // 50/50: both backends answer, over one h2 connection from the client.
    let generation = m.proxy.table().generation;
    write(dir.path(), "route.yaml", &grpc_route(&rules(1, 1)));
    wait_generation(&m, generation + 1).await;
    let mut seen = [0; 3];
    for _ in 0..200 {
        seen[check(&mut c).await.unwrap() as usize] += 1;
    }
    let (a, b) = (
        seen[ServingStatus::Serving as usize],
        seen[ServingStatus::NotServing as usize],
    );
    assert!(a > 60 && b > 60, "split {a}/{b}");
    // Edited to b only: the very next call follows.
    let generation = m.proxy.table().generation;
    write(dir.path(), "route.yaml", &grpc_route(&rules(0, 1)));
    wait_generation(&m, generation + 1).await;
    assert_eq!(
        check(&mut c).await.unwrap(),
        ServingStatus::NotServing as i32
    );

    // A method no rule matches: UNIMPLEMENTED, not an HTTP 404 the client cannot read.
    let status = c
        .watch(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "Watch goes to a backend without endpoints: {status:?}"
    );
    let mut other = tonic::client::Grpc::new(
        Endpoint::from_shared(format!("http://{}", m.proxy_addr))
            .unwrap()
            .origin("http://web.shop.svc.cluster.local".parse().unwrap())
            .connect()
            .await
            .unwrap(),
    );
    other.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/other.Service/Do");
    let codec: tonic_prost::ProstCodec<HealthCheckRequest, tonic_health::pb::HealthCheckResponse> =
        tonic_prost::ProstCodec::default();
    let status = other
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.metadata().get("meshroute-error").unwrap(),
        "no-route"
    );

    // A backend that never answers: the default request timeout ends the call with
    // DEADLINE_EXCEEDED.
    let generation = m.proxy.table().generation;
    write(
        dir.path(),
        "route.yaml",
        &grpc_route("  - backendRefs: [{name: grpc-silent, port: 80}]\n"),
    );
    wait_generation(&m, generation + 1).await;
    let started = std::time::Instant::now();
    let status = check(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.metadata().get("meshroute-error").unwrap(),
        "request-timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    m.shutdown().await.unwrap();
}
