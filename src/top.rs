//! `meshroute top`: the live traffic view of a running proxy, read from its admin port
//! (`/api/traffic`) and redrawn in place every second. The same renderer draws the `--demo`
//! view. It fits an 80×24 terminal: long names are cut, parents beyond the screen are counted
//! instead of shown, and the status line (the last reload's result, or why the admin port
//! cannot be read) is always the last line, so an error stays on screen across redraws.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::traffic::TrafficView;

/// What `/api/traffic` answers: the view and the reload status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveTraffic {
    pub traffic: TrafficView,
    /// `/status` of the admin server (the last reload or Kubernetes sync).
    pub status: serde_json::Value,
}

/// Terminal styling: plain text, or ANSI colours on a TTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Colour,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        match self {
            Style::Plain => s.to_string(),
            Style::Colour => format!("\x1b[{code}m{s}\x1b[0m"),
        }
    }
}

/// Cut `s` to `n` characters (a `~` marks the cut).
fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('~');
    out
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v < 1.0 => format!("{v:.1}ms"),
        Some(v) if v < 10_000.0 => format!("{v:.0}ms"),
        Some(v) => format!("{:.0}s", v / 1000.0),
    }
}

/// The status line: the last reload's result, first error first.
pub fn status_line(status: &serde_json::Value) -> (bool, String) {
    let errors: Vec<&str> = status
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    let problems = status
        .get("route_problems")
        .and_then(|e| e.as_array())
        .map(|a| a.len())
        .unwrap_or(0);
    if let Some(first) = errors.first() {
        let more = if errors.len() > 1 {
            format!(" (+{} more)", errors.len() - 1)
        } else {
            String::new()
        };
        return (false, format!("RELOAD REJECTED{more}: {first}"));
    }
    let ok = status
        .get("config_ok")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let text = match (ok, problems) {
        (true, 0) => "configuration ok".to_string(),
        (true, n) => format!("configuration ok; {n} route problem(s): see /status"),
        (false, _) => "configuration not ok: see /status".to_string(),
    };
    (ok && problems == 0, text)
}

/// Draw the view into at most `height` lines of `width` columns.
pub fn render(
    live: &LiveTraffic,
    title: &str,
    width: usize,
    height: usize,
    style: Style,
) -> String {
    let width = width.max(40);
    let height = height.max(4);
    let v = &live.traffic;
    let mut lines: Vec<String> = Vec::new();
    let window = v
        .window_secs
        .map(|s| format!("rates over {s:.1}s"))
        .unwrap_or_else(|| "rates from the next refresh".into());
    lines.push(fit(
        &format!("{title} · generation {} · {window}", v.generation),
        width,
    ));
    // Columns: name, four right-aligned figures of 8 and the split (configured/observed %)
    // of 11, each after a space.
    let name_w = width.saturating_sub(4 * 9 + 12).max(12);
    lines.push(style.paint(
        "1",
        &format!(
            "{:<name_w$} {:>8} {:>8} {:>8} {:>8} {:>11}",
            "PARENT / ROUTE / BACKEND", "RPS", "SUCCESS", "P50", "P99", "CFG/OBS %"
        ),
    ));
    let mut body: Vec<(usize, String)> = Vec::new(); // (parent index, line)
    for (pi, p) in v.parents.iter().enumerate() {
        body.push((
            pi,
            style.paint(
                "36",
                &fit(&format!("{}/{}:{}", p.namespace, p.name, p.port), width),
            ),
        ));
        for r in &p.routes {
            let name = if r.kind == "default" {
                "  (no route: passthrough)".to_string()
            } else {
                format!(
                    "  {} {}/{}",
                    r.kind.to_ascii_lowercase(),
                    r.namespace,
                    r.name
                )
            };
            let success = match r.success_rate {
                Some(s) if s < 0.95 => style.paint("31", &format!("{:>8}", pct(Some(s)))),
                s => format!("{:>8}", pct(s)),
            };
            body.push((
                pi,
                format!(
                    "{:<name_w$} {:>8} {success} {:>8} {:>8} {:>11}",
                    fit(&name, name_w),
                    r.rps
                        .map(|x| format!("{x:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    "",
                ),
            ));
            for b in &r.backends {
                let name = match &b.invalid {
                    Some(why) => format!("    invalid: {why}"),
                    None if b.cluster.is_empty() => {
                        format!("    {}/{}:{}", b.namespace, b.name, b.port)
                    }
                    None => format!("    {}/{}:{} [{}]", b.namespace, b.name, b.port, b.cluster),
                };
                let split = format!(
                    "{:>5.1}/{}",
                    b.configured * 100.0,
                    b.observed
                        .map(|o| format!("{:.1}", o * 100.0))
                        .unwrap_or_else(|| "-".into())
                );
                body.push((
                    pi,
                    format!(
                        "{:<name_w$} {:>8} {:>8} {:>8} {:>8} {split:>11}",
                        fit(&name, name_w),
                        "",
                        "",
                        "",
                        "",
                    ),
                ));
            }
        }
    }
    if v.parents.is_empty() {
        body.push((0, "no parents with routes or traffic yet".into()));
    }
    // Header (2) + body + status line (1); cut whole parents that do not fit.
    let room = height.saturating_sub(3);
    let shown = if body.len() <= room {
        body.len()
    } else {
        let cut = room.saturating_sub(1);
        let last_parent = body.get(cut).map(|(pi, _)| *pi).unwrap_or(0);
        body.iter()
            .take(cut)
            .take_while(|(pi, _)| *pi < last_parent)
            .count()
    };
    let hidden_parents = v.parents.len().saturating_sub(
        body.iter()
            .take(shown)
            .map(|(pi, _)| *pi)
            .max()
            .map(|m| m + 1)
            .unwrap_or(0),
    );
    lines.extend(body.into_iter().take(shown).map(|(_, l)| l));
    if hidden_parents > 0 && !v.parents.is_empty() {
        lines.push(format!(
            "… {hidden_parents} more parent(s) below the screen"
        ));
    }
    let (ok, status) = status_line(&live.status);
    let status = fit(&status, width);
    lines.push(if ok {
        style.paint("32", &status)
    } else {
        style.paint("1;31", &status)
    });
    lines.join("\n")
}

/// Fetch `/api/traffic` from an admin address.
pub async fn fetch(admin: SocketAddr) -> Result<LiveTraffic, String> {
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .map_err(|_| format!("{admin}: connect timed out"))?
    .map_err(|e| format!("{admin}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{admin}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get("/api/traffic")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let rsp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| format!("{admin}: no answer"))?
        .map_err(|e| format!("{admin}: {e}"))?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{admin}: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{admin}: /api/traffic answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{admin}: not a meshroute admin port: {e}"))
}

/// Terminal size from `COLUMNS`/`LINES` (set by shells and `watch`), else 80×24.
pub fn terminal_size() -> (usize, usize) {
    let get = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n: &usize| *n > 0)
            .unwrap_or(d)
    };
    (get("COLUMNS", 80), get("LINES", 24))
}

/// `meshroute top`: redraw every `interval` until interrupted (or once with `iterations`).
pub async fn run(admin: SocketAddr, interval: Duration, iterations: Option<u64>) -> i32 {
    let tty = std::io::stdout().is_terminal();
    let style = if tty && std::env::var_os("NO_COLOR").is_none() {
        Style::Colour
    } else {
        Style::Plain
    };
    let mut last = LiveTraffic::default();
    let mut n = 0u64;
    loop {
        let (w, h) = terminal_size();
        let title = format!("meshroute top · {admin}");
        let text = match fetch(admin).await {
            Ok(live) => {
                last = live;
                render(&last, &title, w, h, style)
            }
            Err(e) => {
                // Keep the last view; say why it is stale on the status line.
                let mut stale = last.clone();
                stale.status =
                    serde_json::json!({"errors": [format!("admin port unreadable: {e}")]});
                render(&stale, &title, w, h, style)
            }
        };
        let frame = if tty {
            format!("\x1b[H\x1b[2J{text}")
        } else {
            format!("{text}\n\n")
        };
        match crate::output::print(&frame) {
            Ok(crate::output::Printed::All) => {}
            Ok(crate::output::Printed::ReaderGone) => return 0,
            Err(_) => return 1,
        }
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return 0;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{BackendView, ParentView, RouteView};

    fn view(parents: usize) -> LiveTraffic {
        let route = RouteView {
            kind: "HTTPRoute".into(),
            group: "gateway.networking.k8s.io".into(),
            namespace: "faces".into(),
            name: "a-route-with-a-rather-long-name-that-will-not-fit-in-eighty-columns".into(),
            requests_total: 10,
            rps: Some(12.5),
            success_rate: Some(0.5),
            p50_ms: Some(4.0),
            p99_ms: Some(250.0),
            backends: vec![
                BackendView {
                    namespace: "faces".into(),
                    name: "color".into(),
                    port: 80,
                    configured: 0.9,
                    observed: Some(0.88),
                    ..Default::default()
                },
                BackendView {
                    namespace: "faces".into(),
                    name: "color2-west".into(),
                    port: 80,
                    cluster: "west".into(),
                    configured: 0.1,
                    observed: Some(0.12),
                    ..Default::default()
                },
            ],
        };
        LiveTraffic {
            traffic: TrafficView {
                generation: 3,
                window_secs: Some(5.0),
                parents: (0..parents)
                    .map(|i| ParentView {
                        namespace: "faces".into(),
                        name: format!("svc-{i}"),
                        port: 80,
                        routes: vec![route.clone()],
                    })
                    .collect(),
            },
            status: serde_json::json!({"config_ok": false, "errors": ["policies/x.yaml:3:1: httproute faces/x: spec.rules[0].backendRef: unknown field \"backendRef\""]}),
        }
    }

    #[test]
    fn fits_80_by_24_and_keeps_the_error_on_the_last_line() {
        let text = render(
            &view(20),
            "meshroute top · 127.0.0.1:9990",
            80,
            24,
            Style::Plain,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= 24, "{} lines:\n{text}", lines.len());
        for l in &lines {
            assert!(l.chars().count() <= 80, "too wide: {l:?}");
        }
        let last = lines.last().unwrap();
        assert!(
            last.starts_with("RELOAD REJECTED: policies/x.yaml:3:1"),
            "{last}"
        );
        assert!(text.contains("more parent(s) below the screen"), "{text}");
        // Whole parents only: every shown parent has its route and both backends.
        assert!(
            text.contains("faces/svc-0:80") && text.contains("90.0/88.0"),
            "{text}"
        );
        assert!(text.contains("12.5") && text.contains("50.0%") && text.contains("250ms"));
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = render(&view(1), "t", 80, 24, Style::Plain);
        assert!(!plain.contains('\x1b'));
        let colour = render(&view(1), "t", 80, 24, Style::Colour);
        assert!(colour.contains("\x1b[1;31mRELOAD REJECTED"), "{colour}");
    }

    #[test]
    fn a_healthy_status_line_says_so() {
        let mut v = view(1);
        v.status = serde_json::json!({"config_ok": true, "errors": [], "route_problems": []});
        let text = render(&v, "t", 80, 24, Style::Plain);
        assert_eq!(text.lines().last(), Some("configuration ok"));
    }
}
