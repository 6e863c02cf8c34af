//! The bundled demo: `policies/` with built-in echo backends on their loopback endpoints.
//! Uses the fixed ports of `policies/services.yaml`, so it is the one proxy test that can
//! collide with a demo already running on this machine.

#[path = "support/proxy.rs"]
mod support;

use support::*;

#[tokio::test]
async fn demo_backends_answer_for_the_bundled_policies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let m = meshroute::run::start(meshroute::run::RunConfig {
        config_dir: dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        demo: true,
        proxy: test_config(),
        resync: None,
        ..Default::default()
    })
    .await
    .expect("demo starts");
    let r = get(
        &client(),
        m.proxy_addr,
        "smiley.faces.svc.cluster.local",
        "/",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-demo-service"], "smiley-east.faces");
    assert_eq!(r.headers["x-demo-cluster"], "east");
    m.shutdown().await.unwrap();
}
