//! In-repo fuzzing on stable Rust: structure-aware generators and byte mutations over a seed
//! corpus, for the parsers that read untrusted bytes or user manifests.
//!
//! Each target first replays every file in `tests/fuzz-corpus/<target>/` (hand-written cases,
//! past bugs and saved findings), then runs seeded random cases for `MESHROUTE_FUZZ_SECONDS`
//! (default 1) — half generated from the target's grammar, half byte mutations of corpus
//! entries. The seed is printed (`MESHROUTE_FUZZ_SEED` replays it) with the executions per
//! target (`--nocapture` shows them). A failing case prints its bytes and, with
//! `MESHROUTE_FUZZ_SAVE=1`, is written into the target's corpus directory so every later run
//! replays it.
//!
//! Targets: `h1` (the upstream HTTP/1.1 response codec, differential against hyper's client),
//! `authority` (request authorities and parent lookup), `manifest` (YAML decoding), `duration`
//! (GEP-2257 durations, differential against a regex) and `matching` (route matches against a
//! reference model).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use meshroute::compile::validate::parse_duration;
use meshroute::model::{LinkerdHttpRoute, Object, TrafficSplit};
use meshroute::proxy::h1::fuzzing::read_response;
use meshroute::proxy::h1::Framing;
use meshroute::proxy::route::{authority_of, is_authority};
use meshroute::proxy::wire::accept_response_head;
use meshroute::sources::file::{decode_strict, parse_documents};
use meshroute::table::matching::{
    Anchoring, HeaderMatch, PathMatch, Pattern, QueryMatch, RequestMatch, RequestView, ValueMatch,
};
use meshroute::table::{ParentPort, RouteTable};

// ---------------------------------------------------------------------------------------------
// The harness

fn budget() -> Duration {
    let secs = std::env::var("MESHROUTE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn base_seed() -> u64 {
    std::env::var("MESHROUTE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

fn read_dir_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Bytes that often matter to the parsers here, spliced in by [`mutate`].
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"\t",
    b",",
    b";",
    b":",
    b"@",
    b"%",
    b"[",
    b"]",
    b"0",
    b"9",
    b"ffffffffffffffffff",
    b"chunked",
    b"gzip",
    b"transfer-encoding: ",
    b"content-length: ",
    b"HTTP/1.1 ",
    b"\r\n\r\n",
    b"\xc3\xa9",
    b"\xff",
    b"- ",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"{",
    b"}",
    b"\"",
    b"'",
    b"---\n",
    b"#",
    b"~",
    b"ms",
    b"h",
    b"|",
    b".*",
    b"/",
    b"..",
];

/// One to four random edits of `input`: byte flips, token splices, deletions, repeats, line
/// swaps and crossovers with another corpus entry.
fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..=len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = rng.random();
            }
            2 | 3 => {
                let t = TOKENS.choose(rng).unwrap();
                v.splice(at..at, t.iter().copied());
            }
            4 if len > 0 => {
                let end = (at + rng.random_range(1..=16)).min(len);
                let start = at.min(len);
                v.drain(start..end);
            }
            5 if len > 0 => {
                let start = at.min(len - 1);
                let end = (start + rng.random_range(1..=32)).min(len);
                let piece = v[start..end].to_vec();
                for _ in 0..rng.random_range(1..=3) {
                    v.splice(start..start, piece.iter().copied());
                }
            }
            6 => {
                // Swap or duplicate a line (manifests and heads are line-based).
                let lines: Vec<&[u8]> = v.split_inclusive(|&b| b == b'\n').collect();
                if lines.len() > 1 {
                    let mut lines: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
                    let a = rng.random_range(0..lines.len());
                    let b = rng.random_range(0..lines.len());
                    if rng.random_bool(0.5) {
                        lines.swap(a, b);
                    } else {
                        let l = lines[a].clone();
                        lines.insert(b, l);
                    }
                    v = lines.concat();
                }
            }
            _ => {
                if let Some(other) = corpus.choose(rng).filter(|o| !o.is_empty()) {
                    let from = rng.random_range(0..other.len());
                    let to = (from + rng.random_range(1..=64)).min(other.len());
                    v.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
        if v.len() > 64 * 1024 {
            v.truncate(64 * 1024);
        }
    }
    v
}

/// Replay the corpus of `target`, then run generated and mutated cases for the budget.
/// `extra` seeds the mutations beside the corpus (without being replayed as cases).
fn fuzz(
    target: &str,
    extra: Vec<Vec<u8>>,
    mut generate: impl FnMut(&mut StdRng) -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> Result<(), String>,
) {
    let seed = base_seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus = read_dir_files(&corpus_dir(target));
    let mut failures = Vec::new();
    let mut run = |input: &[u8], origin: String, failures: &mut Vec<String>| {
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&p))));
        if let Err(why) = outcome {
            let mut line = format!("{target}: {origin}: {why}\n  input: \"{}\"", escaped(input));
            if std::env::var("MESHROUTE_FUZZ_SAVE").as_deref() == Ok("1") {
                let dir = corpus_dir(target);
                std::fs::create_dir_all(&dir).unwrap();
                let name = format!("found-{:016x}", fnv(input));
                std::fs::write(dir.join(&name), input).unwrap();
                line.push_str(&format!("\n  saved as tests/fuzz-corpus/{target}/{name}"));
            }
            eprintln!("{line}");
            failures.push(line);
        }
    };
    for (path, bytes) in &corpus {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        run(bytes, format!("corpus {name}"), &mut failures);
    }
    let mut pool: Vec<Vec<u8>> = corpus.into_iter().map(|(_, b)| b).collect();
    pool.extend(extra);
    let replayed = failures.len();
    let started = Instant::now();
    let deadline = budget();
    let mut executions = 0u64;
    while started.elapsed() < deadline && failures.len() < replayed + 20 {
        let input = if pool.is_empty() || rng.random_bool(0.5) {
            generate(&mut rng)
        } else {
            let base = pool.choose(&mut rng).unwrap().clone();
            mutate(&mut rng, &base, &pool)
        };
        executions += 1;
        run(
            &input,
            format!("seed {seed} case {executions}"),
            &mut failures,
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {} corpus cases, {executions} executions in {secs:.1}s ({:.0}/s), seed {seed}, {} failures",
        pool.len(),
        executions as f64 / secs.max(1e-9),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

// ---------------------------------------------------------------------------------------------
// h1: the upstream HTTP/1.1 response codec against hyper's client

/// What hyper's client made of a response.
#[derive(Debug)]
struct HyperRead {
    status: StatusCode,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
    /// Trailers, filtered as the proxy filters them (`wire::drop_forbidden_trailers`).
    trailers: Option<HeaderMap>,
}

/// Send a GET through hyper's HTTP/1.1 client to a peer that answers `raw` and closes.
async fn hyper_read(raw: &[u8]) -> Result<HyperRead, String> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    // Answer once the request head is in: hyper refuses bytes that come before a request.
    let raw = raw.to_vec();
    let peer = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server.write_all(&raw).await;
        let _ = server.shutdown().await;
        server
    });
    let exchange = async {
        let req = http::Request::get("/")
            .header("host", "svc.ns")
            .body(Empty::new())
            .unwrap();
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?;
        let trailers = body.trailers().cloned().map(|mut t| {
            meshroute::proxy::wire::drop_forbidden_trailers(&mut t);
            t
        });
        Ok(HyperRead {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.to_bytes(),
            trailers,
        })
    };
    let r = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("hyper timed out".into()));
    conn.abort();
    peer.abort();
    r
}

/// Why meshroute may refuse a response hyper's client accepts: the rules of
/// `h1::head_is_unambiguous` and `parse_head`, which are stricter than hyper on purpose
/// (RFC 9112 §6.1, §6.3; a proxy must not forward a body whose length a peer could read
/// differently). Found on the final head (interim 1xx heads skipped as both clients do).
///
/// - `Transfer-Encoding` with `Content-Length`;
/// - any transfer coding other than exactly one `chunked` (`gzip`, `chunked, gzip`, `chunked,`);
/// - `Transfer-Encoding` in an HTTP/1.0 response;
/// - a status code outside 100–599, or `101` (the proxy never asks for an upgrade);
/// - an invalid or conflicting `Content-Length` in a 204 or 304 response (hyper ignores the
///   field there; meshroute refuses it whatever the status, like every framing field);
fn intentional_refusal(raw: &[u8]) -> Option<&'static str> {
    let mut rest = raw;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 256];
        let mut rsp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = rsp.parse(rest) else {
            return None;
        };
        let code = rsp.code.unwrap_or(0);
        if code == 101 {
            return Some("101 without an upgrade request");
        }
        if !(100..=599).contains(&code) {
            return Some("status outside 100-599");
        }
        if (100..200).contains(&code) {
            rest = &rest[len..];
            continue;
        }
        let te: Vec<&[u8]> = rsp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value)
            .collect();
        let cl = rsp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"));
        let lengths: Vec<&[u8]> = rsp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        let valid_length = |v: &&[u8]| {
            !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) && *v == lengths[0]
        };
        if (code == 204 || code == 304) && !lengths.iter().all(valid_length) {
            return Some("invalid content-length in a 204/304 response");
        }
        if te.is_empty() {
            return None;
        }
        if rsp.version == Some(0) {
            return Some("transfer-encoding in HTTP/1.0");
        }
        if cl {
            return Some("transfer-encoding with content-length");
        }
        let exactly_chunked = te.len() == 1 && te[0].trim_ascii().eq_ignore_ascii_case(b"chunked");
        if !exactly_chunked {
            return Some("transfer coding other than exactly chunked");
        }
        return None;
    }
}

fn h1_generate(rng: &mut StdRng) -> Vec<u8> {
    let eol: &[u8] = if rng.random_bool(0.95) {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut out = Vec::new();
    if rng.random_bool(0.1) {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    if rng.random_bool(0.05) {
        out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n");
    }
    let version = *[
        &b"HTTP/1.1"[..],
        b"HTTP/1.1",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
    ]
    .choose(rng)
    .unwrap();
    let status = *[
        200u16, 200, 200, 201, 204, 206, 301, 304, 400, 404, 500, 503, 101, 199, 600, 999, 99,
    ]
    .choose(rng)
    .unwrap();
    out.extend_from_slice(version);
    out.extend_from_slice(format!(" {status:03} ").as_bytes());
    out.extend_from_slice([&b"OK"[..], b"", b"Whatever It Is"].choose(rng).unwrap());
    out.extend_from_slice(eol);
    let body: Vec<u8> = (0..rng.random_range(0..40))
        .map(|_| *b"abcxyz\r\n0;".choose(rng).unwrap())
        .collect();
    let mut chunked = false;
    let mut length = None;
    for _ in 0..rng.random_range(0..6) {
        let (name, value): (&str, String) = match rng.random_range(0..9) {
            0 | 1 => {
                let n = match rng.random_range(0..6) {
                    0 => body.len() + 3,
                    1 => body.len().saturating_sub(2),
                    _ => body.len(),
                };
                length = Some(n);
                let v = match rng.random_range(0..8) {
                    0 => format!("{n}, {n}"),
                    1 => format!("{n},{}", n + 1),
                    2 => format!("+{n}"),
                    3 => format!(" {n} "),
                    4 => "99999999999999999999".into(),
                    _ => n.to_string(),
                };
                (
                    *["content-length", "Content-Length"].choose(rng).unwrap(),
                    v,
                )
            }
            2..=4 => {
                let v = *[
                    "chunked",
                    "chunked",
                    "Chunked",
                    " chunked ",
                    "chunked, gzip",
                    "gzip, chunked",
                    "gzip",
                    "chunked,",
                    ", chunked",
                    "identity",
                    "chunked, chunked",
                    "",
                ]
                .choose(rng)
                .unwrap();
                chunked |= v.contains("chunked");
                (
                    *["transfer-encoding", "Transfer-Encoding"]
                        .choose(rng)
                        .unwrap(),
                    v.to_string(),
                )
            }
            5 => (
                *["connection", "Connection", "CONNECTION"]
                    .choose(rng)
                    .unwrap(),
                [
                    "close",
                    "keep-alive",
                    "Keep-Alive",
                    "x-drop",
                    "Upgrade, close",
                ]
                .choose(rng)
                .unwrap()
                .to_string(),
            ),
            6 => ("x-drop", "1".into()),
            // Names the own client's fast path (`wire::common_field`) takes, in the spellings it
            // takes and one it leaves to the general path.
            7 => (
                *[
                    "content-type",
                    "Content-Type",
                    "Server",
                    "date",
                    "ETag",
                    "eTag",
                ]
                .choose(rng)
                .unwrap(),
                "text/plain".into(),
            ),
            _ => (
                "x-random",
                (0..rng.random_range(0..12))
                    .map(|_| *"ab 1é\t".as_bytes().choose(rng).unwrap() as char)
                    .collect(),
            ),
        };
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(if rng.random_bool(0.9) { b": " } else { b":" });
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    if chunked && rng.random_bool(0.9) {
        out.extend(chunk_encode(rng, &body));
    } else {
        out.extend_from_slice(&body);
        let _ = length;
    }
    match rng.random_range(0..10) {
        0 => {
            let cut = rng.random_range(0..=out.len());
            out.truncate(cut);
        }
        1 => out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nextra"),
        _ => {}
    }
    out
}

fn chunk_encode(rng: &mut StdRng, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let eol = |rng: &mut StdRng| -> &'static [u8] {
        if rng.random_bool(0.97) {
            b"\r\n"
        } else {
            [&b"\n"[..], b"\r", b"\r\r\n"].choose(rng).unwrap()
        }
    };
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len());
        let size = match rng.random_range(0..10) {
            0 => format!("{n:X}"),
            1 => format!("000{n:x}"),
            2 => format!("{n:x} "),
            3 => format!("{n:x};ext=1"),
            4 => format!("{n:x} ;q=\"a b\""),
            5 => format!("{:x}", n + 1),
            _ => format!("{n:x}"),
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(eol(rng));
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(eol(rng));
        rest = &rest[n..];
    }
    out.extend_from_slice(if rng.random_bool(0.05) {
        b"ffffffffffffffffff"
    } else {
        b"0"
    });
    out.extend_from_slice(eol(rng));
    for _ in 0..rng.random_range(0..3) {
        out.extend_from_slice(
            [
                &b"x-sum: 42"[..],
                b"x-a: 1\nx-b: 2",
                b"\nx-c: 3",
                b"x-d:\n 4",
                b"bad line",
            ]
            .choose(rng)
            .unwrap(),
        );
        out.extend_from_slice(eol(rng));
    }
    out.extend_from_slice(eol(rng));
    out
}

/// The framing hyper chose, read back from the fields it kept (it leaves them in the head).
fn hyper_framing(h: &HyperRead) -> Option<Framing> {
    if h.status == StatusCode::NO_CONTENT || h.status == StatusCode::NOT_MODIFIED {
        return None;
    }
    if h.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Some(Framing::Chunked);
    }
    let cl = h.headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?;
    let first = cl.split(',').next()?.trim().parse().ok()?;
    Some(Framing::Length(first))
}

fn h1_check(rt: &tokio::runtime::Runtime, raw: &[u8]) -> Result<(), String> {
    let at_once = read_response(raw, false, 0);
    for step in [1, 7] {
        let piecewise = read_response(raw, false, step);
        let same = match (&at_once, &piecewise) {
            (Ok(a), Ok(b)) => {
                a.status == b.status
                    && a.framing == b.framing
                    && a.body == b.body
                    && a.trailers == b.trailers
                    && a.headers == b.headers
            }
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !same {
            return Err(format!(
                "fed {step} byte(s) at a time: {piecewise:?}, at once: {at_once:?}"
            ));
        }
    }
    let _ = read_response(raw, true, 0);
    let theirs = rt.block_on(hyper_read(raw));
    // What the proxy's other path makes of the same bytes: hyper's client, then the policy
    // the seam holds every hyper head to (`wire::accept_response_head`).
    let proxied = theirs.as_ref().map_err(Clone::clone).and_then(|h| {
        let mut headers = h.headers.clone();
        accept_response_head(h.version, h.status, &mut headers, false)
            .map(|_| headers)
            .map_err(|e| format!("refused by the policy: {e}"))
    });
    match (&at_once, &proxied) {
        (Ok(ours), Ok(headers)) if ours.headers != *headers => {
            return Err(format!(
                "forwarded fields: own client {:?}, hyper path {headers:?}",
                ours.headers
            ))
        }
        (Ok(ours), Err(e)) if theirs.is_ok() => {
            return Err(format!(
                "own client accepts ({} {:?}), hyper path refuses ({e})",
                ours.status, ours.framing
            ))
        }
        // One policy for heads and bodies (chunked framing included).
        (Err(ours), Ok(_)) => {
            return Err(format!("own client refuses ({ours}), hyper path accepts"))
        }
        _ => {}
    }
    match (&at_once, &theirs) {
        (Ok(ours), Ok(theirs)) => {
            if ours.status != theirs.status {
                return Err(format!(
                    "status: meshroute {} hyper {}",
                    ours.status, theirs.status
                ));
            }
            if ours.body != theirs.body {
                return Err(format!(
                    "body: meshroute \"{}\" hyper \"{}\"",
                    escaped(&ours.body),
                    escaped(&theirs.body)
                ));
            }
            let none_if_empty = |t: &Option<HeaderMap>| t.clone().filter(|t| !t.is_empty());
            if none_if_empty(&ours.trailers) != none_if_empty(&theirs.trailers) {
                return Err(format!(
                    "trailers: meshroute {:?} hyper {:?}",
                    ours.trailers, theirs.trailers
                ));
            }
            let expected = hyper_framing(theirs).unwrap_or(Framing::UntilClose);
            let matches = match (ours.framing, expected) {
                (Framing::Length(0), _) if hyper_framing(theirs).is_none() => true,
                (a, b) => a == b,
            };
            if !matches && ours.status != 204 && ours.status != 304 {
                return Err(format!(
                    "framing: meshroute {:?} hyper {expected:?}",
                    ours.framing
                ));
            }
            Ok(())
        }
        (Err(_), Err(_)) => Ok(()),
        (Err(ours), Ok(_)) => match intentional_refusal(raw) {
            Some(_) => Ok(()),
            None => Err(format!("meshroute refuses ({ours}), hyper accepts")),
        },
        (Ok(ours), Err(theirs)) => Err(format!(
            "meshroute accepts ({} {:?}), hyper refuses ({theirs})",
            ours.status, ours.framing
        )),
    }
}

#[test]
fn h1_response_codec_agrees_with_hyper() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fuzz("h1", Vec::new(), h1_generate, |raw| h1_check(&rt, raw));
}

// ---------------------------------------------------------------------------------------------
// authority: `Host` values and absolute-form targets, and the parent they route to

const SERVICES: &[(&str, &str, u16)] = &[
    ("web", "shop", 80),
    ("web", "shop", 8080),
    ("api", "shop", 80),
    ("shop", "web", 80),
    ("a", "b", 80),
];

fn authority_table() -> RouteTable {
    let mut t = RouteTable::new("cluster.local");
    for (name, ns, port) in SERVICES {
        t.insert_parent(ParentPort {
            namespace: Arc::from(*ns),
            name: Arc::from(*name),
            port: *port,
            matches: Vec::new(),
        });
    }
    t
}

/// The parent an authority names, by the rules of the README ("Service authorities"):
/// `name.namespace[.svc[.cluster.local]][.]`, case-insensitive, port 80 when absent.
fn reference_parent(authority: &str) -> Option<(String, String, u16)> {
    if authority.starts_with('[') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (h, p.parse::<u16>().ok()?)
        }
        None => (authority, 80),
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 || labels[0].is_empty() || labels[1].is_empty() {
        return None;
    }
    let tail = &labels[2..];
    let ok = tail.is_empty() || tail == ["svc"] || tail == ["svc", "cluster", "local"];
    ok.then(|| (labels[0].to_string(), labels[1].to_string(), port))
}

fn authority_generate(rng: &mut StdRng) -> Vec<u8> {
    let name = *[
        "web", "WEB", "api", "shop", "a", "x", "", "we b", "web@evil",
    ]
    .choose(rng)
    .unwrap();
    let ns = *["shop", "Shop", "web", "b", "", "evil"]
        .choose(rng)
        .unwrap();
    let tail = *[
        "",
        "",
        ".svc",
        ".SVC",
        ".Svc",
        ".svc.cluster.local",
        ".svc.Cluster.Local",
        ".Svc.cluster.local",
        ".svc.cluster.local.",
        ".",
        "..",
        ".svc.other.domain",
        ".svc.cluster",
    ]
    .choose(rng)
    .unwrap();
    let port = *[
        "", "", ":80", ":8080", ":080", ":", ":+80", ":65536", ":-1", ":8o", ":80:80",
    ]
    .choose(rng)
    .unwrap();
    let mut s = format!("{name}.{ns}{tail}{port}");
    match rng.random_range(0..8) {
        0 => s = format!("[::1]{port}"),
        1 => s.insert(rng.random_range(0..=s.len()), ' '),
        2 => s = format!("user@{s}"),
        3 => s.push_str(["\t", "/", "?", "#", "\u{e9}"].choose(rng).unwrap()),
        _ => {}
    }
    s.into_bytes()
}

fn authority_check(table: &RouteTable, raw: &[u8]) -> Result<(), String> {
    let accepted = is_authority(raw);
    if accepted {
        if http::uri::Authority::try_from(raw).is_err() {
            return Err("accepted but not an http::uri::Authority".into());
        }
        if raw
            .iter()
            .any(|&b| b <= b' ' || b == 0x7f || b == b'@' || !b.is_ascii())
        {
            return Err("accepted with a space, control byte, @ or non-ASCII".into());
        }
    }
    // As a Host header of an origin-form HTTP/1.1 request.
    let uri = Uri::from_static("/");
    if let Ok(v) = HeaderValue::from_bytes(raw) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, v);
        let routed = authority_of(&headers, &uri, Version::HTTP_11);
        match (&routed, accepted) {
            (Ok(a), true) if a.as_bytes() == raw => {}
            (Err(_), false) => {}
            _ => {
                return Err(format!(
                    "Host: authority_of {routed:?}, is_authority {accepted}"
                ))
            }
        }
        // With an absolute-form target naming another authority, the target wins.
        if accepted {
            let target: Uri = "http://other.ns/x".parse().unwrap();
            let routed = authority_of(&headers, &target, Version::HTTP_11);
            if routed.as_deref().ok() != Some("other.ns") {
                return Err(format!("absolute form: {routed:?}"));
            }
        }
    }
    // As the authority of an absolute-form target: whatever `http` admits is routed as is.
    if let Ok(text) = std::str::from_utf8(raw) {
        if let Ok(target) = format!("http://{text}/").parse::<Uri>() {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, HeaderValue::from_static("svc.ns"));
            let _ = authority_of(&headers, &target, Version::HTTP_11);
            let _ = authority_of(&headers, &target, Version::HTTP_2);
        }
    }
    // Lookups: only the Service named (and only for authorities the proxy accepts; the rest
    // never reach the table).
    let text = String::from_utf8_lossy(raw);
    let found = table
        .parent(&text)
        .map(|p| (p.name.to_string(), p.namespace.to_string(), p.port));
    if accepted {
        let expected = reference_parent(&text).filter(|(n, ns, p)| {
            SERVICES
                .iter()
                .any(|(sn, sns, sp)| sn == n && sns == ns && sp == p)
        });
        if found != expected {
            return Err(format!(
                "parent of {text:?}: table {found:?}, reference {expected:?}"
            ));
        }
    }
    let _ = table.parent_miss(&text);
    Ok(())
}

#[test]
fn authorities_are_valid_and_route_only_to_the_service_named() {
    let table = authority_table();
    fuzz("authority", Vec::new(), authority_generate, |raw| {
        authority_check(&table, raw)
    });
}

// ---------------------------------------------------------------------------------------------
// manifest: YAML documents into objects

fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// An object as its manifest would say it (what `kubectl get -o json` prints).
fn to_value(o: &Object) -> serde_json::Value {
    let v = match o {
        Object::GatewayHttpRoute(r) => serde_json::to_value(&**r),
        Object::GatewayGrpcRoute(r) => serde_json::to_value(&**r),
        Object::LinkerdHttpRoute(r) => match &**r {
            LinkerdHttpRoute::V1alpha1(r) => serde_json::to_value(r),
            LinkerdHttpRoute::V1beta1(r) => serde_json::to_value(r),
            LinkerdHttpRoute::V1beta2(r) => serde_json::to_value(r),
            LinkerdHttpRoute::V1beta3(r) => serde_json::to_value(r),
        },
        Object::TrafficSplit(t) => match &**t {
            TrafficSplit::V1alpha1(t) => serde_json::to_value(t),
            TrafficSplit::V1alpha2(t) => serde_json::to_value(t),
            TrafficSplit::V1alpha3(t) => serde_json::to_value(t),
            TrafficSplit::V1alpha4(t) => serde_json::to_value(t),
        },
        Object::HttpRouteGroup(g) => Ok(serde_json::json!({
            "apiVersion": g.api_version,
            "kind": "HTTPRouteGroup",
            "metadata": g.metadata,
            "spec": g.spec,
        })),
        Object::Service(s) => serde_json::to_value(&**s),
        Object::EndpointSlice(s) => serde_json::to_value(&**s),
        Object::Endpoints(e) => serde_json::to_value(&**e),
        Object::BackendTrafficPolicy(p) => Ok(serde_json::json!({
            "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
            "kind": "XBackendTrafficPolicy",
            "metadata": p.metadata,
            "spec": p.spec,
        })),
    };
    without_nulls(v.expect("objects serialize"))
}

fn manifest_check(raw: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(raw);
    // YAML's line breaks: `\r\n`, `\n`, and a lone `\r` (as old Mac editors write them).
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u32;
    let file = Path::new("fuzz.yaml");
    for r in parse_documents(file, &text) {
        match r {
            Err(e) => {
                if let Some(p) = e.location.pos {
                    if p.line == 0 || p.line > lines {
                        return Err(format!("error line {} of {lines}: {e}", p.line));
                    }
                }
            }
            Ok(loaded) => {
                if let Some(p) = loaded.location.pos {
                    if p.line == 0 || p.line > lines {
                        return Err(format!("object at line {} of {lines}", p.line));
                    }
                }
                let value = to_value(&loaded.object);
                let again = decode_strict(&loaded.location, value.clone(), None)
                    .map_err(|e| format!("re-decoding {value}: {e}"))?;
                if again.object != loaded.object {
                    return Err(format!(
                        "decode → serialize → decode changed the object: {value}"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn manifest_generate(rng: &mut StdRng) -> Vec<u8> {
    // A small route in a random style, then the mutator does the rest.
    let name = *["r", "route-1", "\"quoted\"", "&a r", "*a"]
        .choose(rng)
        .unwrap();
    let weight = *["1", "0", "-1", "100000000000", "'5'", "1.5", "~", "*a"]
        .choose(rng)
        .unwrap();
    let timeout = *[
        "5s",
        "1h30m",
        "5",
        "500us",
        "\"1ms\"",
        "99999h99999m99999s99999ms",
    ]
    .choose(rng)
    .unwrap();
    let mut y = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n  - matches:\n    - path: {{type: RegularExpression, value: \"/api|/api/v2\"}}\n    backendRefs:\n    - {{name: web-a, port: 80, weight: {weight}}}\n    timeouts: {{request: {timeout}}}\n"
    );
    if rng.random_bool(0.3) {
        y = format!(
            "kind: List\napiVersion: v1\nitems:\n- {}",
            y.replace('\n', "\n  ")
        );
    }
    if rng.random_bool(0.2) {
        y.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec: {ports: [{port: 80}]}\n");
    }
    y.into_bytes()
}

#[test]
fn manifests_decode_without_panics_and_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for dir in ["policies", "policies/invalid"] {
        seeds.extend(read_dir_files(&root.join(dir)).into_iter().map(|(_, b)| b));
    }
    // The bundled policies are cases too: they must decode and round-trip.
    for s in &seeds {
        manifest_check(s).unwrap();
    }
    fuzz("manifest", seeds, manifest_generate, manifest_check);
}

// ---------------------------------------------------------------------------------------------
// duration: GEP-2257 against its grammar

fn duration_grammar() -> regex::Regex {
    regex::Regex::new(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$").unwrap()
}

/// The value of a string the grammar accepts, summed group by group.
fn reference_duration(s: &str) -> Duration {
    let group = regex::Regex::new(r"([0-9]{1,5})(ms|h|m|s)").unwrap();
    group
        .captures_iter(s)
        .map(|c| {
            let n: u64 = c[1].parse().unwrap();
            match &c[2] {
                "h" => Duration::from_secs(n * 3600),
                "m" => Duration::from_secs(n * 60),
                "s" => Duration::from_secs(n),
                _ => Duration::from_millis(n),
            }
        })
        .sum()
}

/// Format `d` the way GEP-2257 writes durations (largest units first, each at most 5 digits).
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

fn duration_generate(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.2) {
        // A formatted value: it must parse back to itself.
        let ms = rng.random_range(0..99_999u64 * 3_600_000);
        return format!("fmt:{ms}").into_bytes();
    }
    let mut s = String::new();
    for _ in 0..rng.random_range(0..6) {
        let digits = rng.random_range(0..8);
        for _ in 0..digits {
            s.push(char::from(b'0' + rng.random_range(0..10)));
        }
        s.push_str(
            [
                "h", "m", "s", "ms", "ms", "us", "H", "", "mm", "sm", "µs", "d", "1",
            ]
            .choose(rng)
            .unwrap(),
        );
    }
    if rng.random_bool(0.1) {
        let at = rng.random_range(0..=s.len());
        let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.insert_str(at, ["+", "-", " ", ".", "\n", "٣"].choose(rng).unwrap());
    }
    s.into_bytes()
}

fn duration_check(grammar: &regex::Regex, raw: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Ok(());
    };
    let formatted = text
        .strip_prefix("fmt:")
        .and_then(|m| m.parse::<u64>().ok());
    // Up to 99999h59m59s999ms: each group fits in 5 digits.
    if let Some(ms) = formatted.filter(|ms| *ms < 99_999 * 3_600_000) {
        let d = Duration::from_millis(ms);
        let f = format_duration(d);
        return match parse_duration(&f) {
            Ok(back) if back == d => Ok(()),
            other => Err(format!("{d:?} formatted as {f:?} parses as {other:?}")),
        };
    }
    let ours = parse_duration(text);
    match (ours, grammar.is_match(text)) {
        (Ok(d), true) if d == reference_duration(text) => Ok(()),
        (Err(_), false) => Ok(()),
        (ours, grammar) => Err(format!(
            "{text:?}: parse_duration {ours:?}, grammar {grammar}"
        )),
    }
}

#[test]
fn durations_match_the_gep_2257_grammar() {
    let grammar = duration_grammar();
    fuzz("duration", Vec::new(), duration_generate, |raw| {
        duration_check(&grammar, raw)
    });
}

// ---------------------------------------------------------------------------------------------
// matching: route matches against a reference model
//
// A case is text, one item per line:
//   path exact|prefix|regex|regex-start VALUE      method GET
//   header NAME exact|regex VALUE                   query NAME exact|regex VALUE
//   req-method GET   req-path /a   req-query a=1&b   req-header NAME VALUE
// Regexes in cases are alternations of literals, each optionally followed by `.*`, so the
// reference can evaluate them without a regex engine.

#[derive(Debug, Default)]
struct MatchCase {
    path: Option<(String, String)>,
    method: Option<String>,
    headers: Vec<(String, String, String)>,
    query: Vec<(String, String, String)>,
    req_method: String,
    req_path: String,
    req_query: Option<String>,
    req_headers: Vec<(String, Vec<u8>)>,
}

fn parse_case(raw: &[u8]) -> MatchCase {
    let mut c = MatchCase {
        req_method: "GET".into(),
        req_path: "/".into(),
        ..MatchCase::default()
    };
    for line in raw.split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let mut it = text.splitn(2, ' ');
        let (key, rest) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let two = |s: &str| {
            let mut p = s.splitn(2, ' ');
            (
                p.next().unwrap_or("").to_string(),
                p.next().unwrap_or("").to_string(),
            )
        };
        let three = |s: &str| {
            let (a, r) = two(s);
            let (b, c) = two(&r);
            (a, b, c)
        };
        match key {
            "path" => c.path = Some(two(rest)),
            "method" => c.method = Some(rest.to_string()),
            "header" => c.headers.push(three(rest)),
            "query" => c.query.push(three(rest)),
            "req-method" => c.req_method = rest.to_string(),
            "req-path" => c.req_path = rest.to_string(),
            "req-query" => c.req_query = Some(rest.to_string()),
            "req-header" => {
                let i = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
                let rest = &line[(i + 1).min(line.len())..];
                let j = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                let name = String::from_utf8_lossy(&rest[..j]).into_owned();
                c.req_headers
                    .push((name, rest[(j + 1).min(rest.len())..].to_vec()));
            }
            _ => {}
        }
    }
    c
}

/// `a|b.*|c` as (literal, open-ended) alternatives; `None` for anything else.
fn literal_alternation(source: &str) -> Option<Vec<(String, bool)>> {
    let mut alts = vec![(String::new(), false)];
    let mut chars = source.chars().peekable();
    while let Some(ch) = chars.next() {
        let cur = alts.last_mut().unwrap();
        if cur.1 {
            // Only `|` may follow `.*`.
            if ch != '|' {
                return None;
            }
        }
        match ch {
            '\\' => {
                let next = chars.next()?;
                if next.is_ascii_alphanumeric() {
                    return None;
                }
                cur.0.push(next);
            }
            '|' => alts.push((String::new(), false)),
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                cur.1 = true;
            }
            c if "^$.*+?()[]{}".contains(c) => return None,
            c => cur.0.push(c),
        }
    }
    Some(alts)
}

fn reference_regex(source: &str, anchoring: Anchoring, value: &str) -> Option<bool> {
    let alts = literal_alternation(source)?;
    Some(
        alts.iter()
            .any(|(lit, open)| match value.strip_prefix(lit.as_str()) {
                None => false,
                Some(_) if anchoring == Anchoring::Start => true,
                Some(rest) => rest.is_empty() || (*open && !rest.contains('\n')),
            }),
    )
}

fn value_match(kind: &str, value: &str) -> Option<ValueMatch> {
    match kind {
        "exact" => Some(ValueMatch::Exact(value.to_string())),
        "regex" => Pattern::new(value, Anchoring::Full, 1 << 20)
            .ok()
            .map(ValueMatch::Regex),
        _ => None,
    }
}

fn reference_value(kind: &str, pattern: &str, value: &str) -> Option<bool> {
    match kind {
        "exact" => Some(pattern == value),
        _ => reference_regex(pattern, Anchoring::Full, value),
    }
}

fn matching_check(raw: &[u8]) -> Result<(), String> {
    let c = parse_case(raw);
    // Build the match; cases that do not make a valid one are only run for panics.
    let path = match &c.path {
        None => PathMatch::Prefix("/".into()),
        Some((kind, v)) => match kind.as_str() {
            "exact" => PathMatch::Exact(v.clone()),
            "prefix" => {
                let p = v.trim_end_matches('/');
                PathMatch::Prefix(if p.is_empty() { "/".into() } else { p.into() })
            }
            "regex" | "regex-start" => {
                let anchoring = if kind == "regex" {
                    Anchoring::Full
                } else {
                    Anchoring::Start
                };
                match Pattern::new(v, anchoring, 1 << 20) {
                    Ok(p) => PathMatch::Regex(p),
                    Err(_) => return Ok(()),
                }
            }
            _ => return Ok(()),
        },
    };
    let mut m = RequestMatch {
        path,
        method: None,
        ..RequestMatch::default()
    };
    if let Some(method) = &c.method {
        m.method = Some(Method::from_bytes(method.as_bytes()).map_err(|_| ()).ok()).flatten();
        if m.method.is_none() {
            return Ok(());
        }
    }
    for (name, kind, value) in &c.headers {
        let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            value_match(kind, value),
        ) else {
            return Ok(());
        };
        m.headers.push(HeaderMatch { name, value });
    }
    for (name, kind, value) in &c.query {
        let Some(value) = value_match(kind, value) else {
            return Ok(());
        };
        m.query.push(QueryMatch {
            name: name.clone(),
            value,
        });
    }
    let Ok(method) = Method::from_bytes(c.req_method.as_bytes()) else {
        return Ok(());
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &c.req_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let view = RequestView {
        method: &method,
        path: &c.req_path,
        query: c.req_query.as_deref(),
        headers: &headers,
    };
    let ours = m.matches(&view);

    // The reference.
    let mut expected = Some(true);
    let mut and = |b: Option<bool>| {
        expected = match (expected, b) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    };
    if let Some(want) = &m.method {
        and(Some(*want == method));
    }
    and(match &c.path {
        None => Some(true),
        Some((kind, v)) => match kind.as_str() {
            "exact" => Some(c.req_path == *v),
            "prefix" => {
                let p = v.trim_end_matches('/');
                Some(p.is_empty() || c.req_path == p || c.req_path.starts_with(&format!("{p}/")))
            }
            "regex" => reference_regex(v, Anchoring::Full, &c.req_path),
            _ => reference_regex(v, Anchoring::Start, &c.req_path),
        },
    });
    for (name, kind, pattern) in &c.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let values: Vec<&HeaderValue> = headers.get_all(&name).iter().collect();
        and(match values.len() {
            0 => Some(false),
            1 => match values[0].to_str() {
                Ok(v) => reference_value(kind, pattern, v),
                Err(_) => Some(false),
            },
            // One value that is not visible ASCII spoils the list (RFC 9110 §5.3 combines
            // the values; dropping one would match a list the client did not send).
            _ => match values
                .iter()
                .map(|v| v.to_str())
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(all) => reference_value(kind, pattern, &all.join(",")),
                Err(_) => Some(false),
            },
        });
    }
    for (name, kind, pattern) in &c.query {
        let first = c.req_query.as_deref().and_then(|qs| {
            qs.split('&').find_map(|pair| match pair.find('=') {
                Some(i) if pair[..i] == *name => Some(&pair[i + 1..]),
                None if pair == name => Some(""),
                _ => None,
            })
        });
        and(match first {
            None => Some(false),
            Some(v) => reference_value(kind, pattern, v),
        });
    }
    match expected {
        Some(e) if e != ours => Err(format!("matches() says {ours}, the reference {e}: {c:?}")),
        _ => Ok(()),
    }
}

fn matching_generate(rng: &mut StdRng) -> Vec<u8> {
    let seg = |rng: &mut StdRng| -> String {
        ["api", "v2", "api.v2", "a", "", "A", "x+y", "%2F", "é"]
            .choose(rng)
            .unwrap()
            .to_string()
    };
    let path = |rng: &mut StdRng| -> String {
        let n = rng.random_range(0..4);
        let mut p: String = (0..n).map(|_| format!("/{}", seg(rng))).collect();
        if p.is_empty() || rng.random_bool(0.1) {
            p.push('/');
        }
        p
    };
    let regex = |rng: &mut StdRng, lit: &mut dyn FnMut(&mut StdRng) -> String| -> String {
        (0..rng.random_range(1..4))
            .map(|_| {
                let mut a = regex::escape(&lit(rng));
                if rng.random_bool(0.3) {
                    a.push_str(".*");
                }
                a
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut out = String::new();
    let kind = *["exact", "prefix", "regex", "regex-start"]
        .choose(rng)
        .unwrap();
    let v = if kind.starts_with("regex") {
        regex(rng, &mut |r: &mut StdRng| path(r))
    } else {
        path(rng)
    };
    out.push_str(&format!("path {kind} {v}\n"));
    if rng.random_bool(0.3) {
        out.push_str(&format!(
            "method {}\n",
            ["GET", "POST"].choose(rng).unwrap()
        ));
    }
    let value = |rng: &mut StdRng| -> String {
        ["1", "2", "a,b", "", "x y"]
            .choose(rng)
            .unwrap()
            .to_string()
    };
    for _ in 0..rng.random_range(0..3) {
        let kind = *["exact", "regex"].choose(rng).unwrap();
        let v = if kind == "regex" {
            regex(rng, &mut |r: &mut StdRng| value(r))
        } else {
            value(rng)
        };
        let name = *["x-a", "X-B", "x-c"].choose(rng).unwrap();
        out.push_str(&format!("header {name} {kind} {v}\n"));
    }
    for _ in 0..rng.random_range(0..3) {
        let kind = *["exact", "regex"].choose(rng).unwrap();
        let v = if kind == "regex" {
            regex(rng, &mut |r: &mut StdRng| value(r))
        } else {
            value(rng)
        };
        let name = *["q", "Q", "r"].choose(rng).unwrap();
        out.push_str(&format!("query {name} {kind} {v}\n"));
    }
    out.push_str(&format!(
        "req-method {}\nreq-path {}\n",
        ["GET", "POST"].choose(rng).unwrap(),
        path(rng)
    ));
    if rng.random_bool(0.7) {
        let pairs: Vec<String> = (0..rng.random_range(0..4))
            .map(|_| {
                let name = ["q", "Q", "r", "q=", ""].choose(rng).unwrap();
                if rng.random_bool(0.2) {
                    name.to_string()
                } else {
                    format!("{name}={}", value(rng))
                }
            })
            .collect();
        out.push_str(&format!("req-query {}\n", pairs.join("&")));
    }
    for _ in 0..rng.random_range(0..4) {
        let name = *["x-a", "x-b", "x-c"].choose(rng).unwrap();
        let v = if rng.random_bool(0.1) {
            "\u{e9}".to_string()
        } else {
            value(rng)
        };
        out.push_str(&format!("req-header {name} {v}\n"));
    }
    out.into_bytes()
}

#[test]
fn route_matches_agree_with_a_reference_model() {
    fuzz("matching", Vec::new(), matching_generate, matching_check);
}

/// The corpus directories exist and hold only files the targets read.
#[test]
fn every_target_has_a_seed_corpus() {
    let targets: BTreeSet<String> = std::fs::read_dir(corpus_dir(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = ["authority", "duration", "h1", "manifest", "matching"]
        .map(String::from)
        .into();
    assert_eq!(targets, expected);
    for t in &targets {
        assert!(
            !read_dir_files(&corpus_dir(t)).is_empty(),
            "{t} has no seeds"
        );
    }
}
