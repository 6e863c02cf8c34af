//! CPU spent by the listener on connections that wait (issue 16, availability 1). Alone in
//! its own test binary: the measure is this process's CPU time, which other tests running in
//! parallel would add to.

#[path = "support/proxy.rs"]
mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

async fn passthrough_with(
    cfg: meshroute::proxy::ProxyConfig,
) -> (tempfile::TempDir, Backend, meshroute::run::Running) {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_with(dir.path(), cfg).await;
    (dir, own, m)
}

/// CPU time (user + system) this process has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_h2_prefaces_cost_no_cpu_while_waiting() {
    let (_d, _own, m) = passthrough_with(meshroute::proxy::ProxyConfig {
        // Long enough that every connection is still waiting while CPU is measured.
        header_read_timeout: Duration::from_secs(20),
        ..test_config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        held.push(s);
    }
    // Let the proxy accept and look at every connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks() - before;
    let wall = started.elapsed();
    eprintln!("CPU with 2,000 partial prefaces: {used} ticks in {wall:?}");
    // A waiting connection must cost nothing; a re-polling sniffer keeps a core busy. 20% of
    // one core is far above idle and far below a busy loop.
    let limit = wall.as_millis() as u64 / 10 / 5;
    assert!(
        used <= limit,
        "{used} ticks of CPU in {wall:?} with 2,000 partial prefaces (limit {limit})"
    );
    // The connections are still open and still served once the preface completes.
    let s = &mut held[0];
    s.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // A SETTINGS frame (empty) so the server has something to answer.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut buf = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("server answers the completed preface")
        .unwrap();
    assert_eq!(buf[3], 4, "the server's first frame is SETTINGS");
    drop(held);
    m.shutdown().await.unwrap();
}
