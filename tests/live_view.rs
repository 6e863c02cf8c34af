//! The live traffic view as users reach it: `/api/traffic`, the `meshroute top` binary, the
//! dashboard on the admin port in a real headless Chromium, and `explain --admin`.

#[path = "support/proxy.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshroute::top::LiveTraffic;
use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

fn world(a: &Backend, b: &Backend) -> String {
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(a, true)]);
    y += &service_with_endpoints("shop", "web-b", &[(b, true)]);
    y
}

fn split_route(wa: u32, wb: u32) -> String {
    route(
        "shop",
        "web-split",
        "web",
        &format!("  - backendRefs:\n    - {{name: web-a, port: 80, weight: {wa}}}\n    - {{name: web-b, port: 80, weight: {wb}}}\n"),
    )
}

async fn traffic(admin: SocketAddr) -> LiveTraffic {
    meshroute::top::fetch(admin).await.expect("/api/traffic")
}

/// Observed share of backend `name` on the `web` parent's route.
fn observed(t: &LiveTraffic, name: &str) -> Option<f64> {
    let p = t.traffic.parents.iter().find(|p| p.name == "web")?;
    let r = p.routes.iter().find(|r| r.name == "web-split")?;
    r.backends.iter().find(|b| b.name == name)?.observed
}

#[tokio::test]
async fn api_traffic_gives_rates_success_latency_and_the_observed_split() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(9, 1));
    let m = start_on(dir.path()).await;
    let c = client();
    let first = traffic(m.admin_addr).await;
    assert_eq!(
        first.traffic.window_secs, None,
        "no rates before a second reading"
    );
    split(&c, m.proxy_addr, HOST, 400).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t = traffic(m.admin_addr).await;
    let window = t.traffic.window_secs.expect("rates");
    let p = t.traffic.parents.iter().find(|p| p.name == "web").unwrap();
    let r = p.routes.iter().find(|r| r.name == "web-split").unwrap();
    assert_eq!(r.kind, "HTTPRoute");
    let rps = r.rps.unwrap();
    assert!(
        (rps * window - 400.0).abs() < 1.0,
        "{rps} rps over {window}s"
    );
    assert_eq!(r.success_rate, Some(1.0));
    assert!(r.p50_ms.is_some() && r.p99_ms >= r.p50_ms, "{r:?}");
    let cfg: Vec<f64> = r.backends.iter().map(|b| b.configured).collect();
    assert_eq!(cfg, [0.9, 0.1]);
    let a_share = observed(&t, "web-a").unwrap();
    assert!((a_share - 0.9).abs() < 0.06, "observed {a_share}");
    // Failures count against the success rate: the route to a dead backend fails all.
    let dead = Backend::dead("dead").await;
    let mut y = world(&a, &b);
    y += &service_with_endpoints("shop", "web-dead", &[(&dead, true)]);
    write(dir.path(), "services.yaml", &y);
    let generation = m.proxy.table().generation;
    write(
        dir.path(),
        "route.yaml",
        &route(
            "shop",
            "web-split",
            "web",
            "  - backendRefs:\n    - {name: web-dead, port: 80}\n",
        ),
    );
    wait_generation(&m, generation + 1).await;
    // Rates cover the window: let the first phase age out of it.
    tokio::time::sleep(meshroute::traffic::WINDOW + Duration::from_millis(200)).await;
    traffic(m.admin_addr).await;
    split(&c, m.proxy_addr, HOST, 20).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t = traffic(m.admin_addr).await;
    let p = t.traffic.parents.iter().find(|p| p.name == "web").unwrap();
    let r = p.routes.iter().find(|r| r.name == "web-split").unwrap();
    assert_eq!(r.success_rate, Some(0.0), "{r:?}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn top_fits_80x24_and_keeps_a_rejected_reload_on_its_status_line() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 1));
    let m = start_on(dir.path()).await;
    split(&client(), m.proxy_addr, HOST, 50).await;
    // A broken edit: the last good table keeps serving, and top says so on its last line.
    let reloads = m.status.snapshot().reloads;
    write(
        dir.path(),
        "route.yaml",
        &split_route(1, 1).replace("backendRefs", "backendRef"),
    );
    for _ in 0..300 {
        if m.status.snapshot().reloads > reloads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin = m.admin_addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshroute"))
            .args([
                "top",
                "--admin",
                &admin,
                "--iterations",
                "2",
                "--interval",
                "0.6",
            ])
            .env("COLUMNS", "80")
            .env("LINES", "24")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains('\x1b'), "no colour into a pipe");
    let frames: Vec<&str> = stdout
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .collect();
    assert_eq!(frames.len(), 2, "{stdout}");
    let last = frames[1];
    let lines: Vec<&str> = last.lines().collect();
    assert!(
        lines.len() <= 24 && lines.iter().all(|l| l.chars().count() <= 80),
        "{last}"
    );
    assert!(last.contains("httproute shop/web-split"), "{last}");
    assert!(last.contains("50.0/"), "configured split shown: {last}");
    let status = lines.last().unwrap();
    assert!(
        status.starts_with("RELOAD REJECTED: ") && status.contains("route.yaml:"),
        "{status}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn explain_against_the_admin_port_says_what_file_mode_says() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(3, 1));
    let m = start_on(dir.path()).await;
    let admin = m.admin_addr.to_string();
    let d = dir.path().to_path_buf();
    let run = move |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_meshroute"))
            .args(args)
            .output()
            .unwrap()
    };
    let (live, offline, live_json, unknown) = tokio::task::spawn_blocking(move || {
        let q = |src: Vec<String>, host: &str, extra: &[&str]| {
            let mut a = vec!["explain".to_string()];
            a.extend(src);
            a.extend(["--host", host, "--path", "/x", "-H", "x-a:1"].map(String::from));
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let admin_src = vec!["--admin".to_string(), admin.clone()];
        let dir_src = vec![d.display().to_string()];
        (
            run(q(admin_src.clone(), HOST, &[])),
            run(q(dir_src, HOST, &[])),
            run(q(admin_src.clone(), HOST, &["-o", "json"])),
            run(q(admin_src, "nope.shop", &[])),
        )
    })
    .await
    .unwrap();
    assert!(live.status.success(), "{live:?}");
    assert_eq!(
        String::from_utf8_lossy(&live.stdout),
        String::from_utf8_lossy(&offline.stdout)
    );
    assert!(String::from_utf8_lossy(&live.stdout).contains("75.0%"));
    let json: serde_json::Value = serde_json::from_slice(&live_json.stdout).unwrap();
    assert_eq!(json["outcome"], "matched");
    assert_eq!(json["route"]["name"], "web-split");
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    m.shutdown().await.unwrap();
}

/// Headless Chromium (Debian's `chromium`), started as the machine's notes say.
fn chromium(profile: &Path, args: &[&str]) -> Option<std::process::Output> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    Some(cmd.output().unwrap())
}

/// The `data-value` of the observed cell of `backend` in the dumped DOM.
fn dom_observed(dom: &str, backend: &str) -> Option<f64> {
    let row = dom.split("<tr ").find(|r| {
        r.contains(&format!("data-backend=\"{backend}\""))
            && r.contains("data-parent=\"shop/web:80\"")
    })?;
    let cell = row.split("class=\"num observed\" data-value=\"").nth(1)?;
    cell.split('"').next()?.parse().ok()
}

#[tokio::test]
async fn dashboard_in_headless_chromium_follows_a_weight_edit() {
    let profile = tempfile::tempdir().unwrap();
    if chromium(profile.path(), &["--version"]).is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Debian's chromium for the dashboard test"
        );
        eprintln!("SKIPPED: no chromium on this machine (apt-get install chromium)");
        return;
    }
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = start_on(dir.path()).await;
    let c = client();
    let url = format!("http://{}/", m.admin_addr);
    let dump = |url: String, profile: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let out = chromium(&profile, &["--dump-dom", &url]).unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    // A reading, traffic, then the page: its first poll has rates.
    traffic(m.admin_addr).await;
    split(&c, m.proxy_addr, HOST, 100).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dom = dump(url.clone(), profile.path().into()).await.unwrap();
    assert!(dom.contains("HTTPRoute shop/web-split"), "{dom}");
    assert_eq!(dom_observed(&dom, "shop/web-a:80"), Some(1.0), "{dom}");
    assert_eq!(dom_observed(&dom, "shop/web-b:80"), Some(0.0), "{dom}");

    // The weights move to b; once the window holds only new traffic, the page shows it.
    let generation = m.proxy.table().generation;
    write(dir.path(), "route.yaml", &split_route(0, 1));
    wait_generation(&m, generation + 1).await;
    tokio::time::sleep(meshroute::traffic::WINDOW + Duration::from_millis(200)).await;
    traffic(m.admin_addr).await;
    split(&c, m.proxy_addr, HOST, 100).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dom = dump(url.clone(), profile.path().into()).await.unwrap();
    assert_eq!(dom_observed(&dom, "shop/web-b:80"), Some(1.0), "{dom}");
    assert!(dom.contains(">100.0%</td>"), "{dom}");

    // A screenshot renders something: a real PNG, wide as asked, not a blank page.
    let shot = profile.path().join("dash.png");
    let arg = format!("--screenshot={}", shot.display());
    let p = profile.path().to_path_buf();
    tokio::task::spawn_blocking(move || chromium(&p, &["--window-size=1200,800", &arg, &url]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1200);
    // A blank 1200x800 page compresses to a few KiB; the dashboard's text and bars do not.
    assert!(png.len() > 20_000, "screenshot is only {} bytes", png.len());
    m.shutdown().await.unwrap();
}
