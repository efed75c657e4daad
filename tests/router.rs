//! The router end to end, with real client sockets against a real `skiff up` serving
//! examples/rust-hello: forwarding headers, load balancing, router error codes and their log
//! lines, maintenance mode, custom domains, limits, session affinity, and a deploy under load.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use common::*;

/// The app's router log lines, waiting (bounded) until one contains `needle`.
fn router_line(s: &Skiff, repo: &Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(s.cli(repo, &["logs", "--source", "router", "-n", "1500"])?)?;
        if let Some(line) = stdout(&out).lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        ensure!(
            Instant::now() < deadline,
            "no router line with {needle}:\n{}",
            stdout(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn dyno_of(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("dyno="))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// A request id the router keeps (sane: 20+ characters of a safe alphabet).
fn rid(tag: &str, i: usize) -> String {
    format!("router-test-{tag}-{i:08}")
}

#[test]
fn router_end_to_end() -> Result<()> {
    let mut s = Skiff::create()?;
    // Short enough for the slow-loris check below to see the cut; a per-client cap that the
    // idle-connection check below can reach.
    s.boot_with(&[
        "--head-timeout-secs",
        "5",
        "--max-connections-per-client",
        "320",
    ])?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&repo, &["apps:create", "hello"])?)?;
    let port = s.http_port;
    let host = format!("hello.localhost:{port}");
    let get =
        |path: &str, headers: &[(&str, &str)]| http_full(port, &host, "GET", path, None, headers);

    // H14 before any deploy: its own page and a router line with the code.
    let r = get("/", &[("X-Request-Id", &rid("h14", 0))])?;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("H14"), "{}", r.body);
    assert_eq!(r.header("skiff-error"), Some("H14"), "{r:?}");
    let line = router_line(&s, &repo, &rid("h14", 0))?;
    assert!(
        line.contains("at=error code=H14 desc=\"No web processes running\""),
        "{line}"
    );
    // A 60 KB path is cut short in the line, which stays whole to its last field.
    let long = format!("/{}", "p".repeat(60_000));
    get(&long, &[("X-Request-Id", &rid("long-path", 0))])?;
    let line = router_line(&s, &repo, &rid("long-path", 0))?;
    assert!(line.len() < 3_000, "a {}-byte line", line.len());
    assert!(line.contains("pppp...\" host="), "{line}");
    assert!(line.trim_end().ends_with(" protocol=http"), "{line}");

    let (pushed, output) = s.commit_and_push(&repo, "first")?;
    assert!(pushed, "{output}\n{}", s.logs());
    assert_eq!(get("/", &[])?.body, "Hello from Skiff!\n");

    // Forwarding headers as the dyno sees them, and hop-by-hop headers stripped.
    let before = now_ms();
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: {host}\r\nConnection: close, X-Hop-Only\r\n\
         X-Hop-Only: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nX-Forwarded-For: 10.1.2.3\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nVia: 1.0 corp-proxy\r\n\
         X-Request-Id: {}\r\nX-Kept: yes\r\n\r\n",
        rid("headers", 0)
    );
    let r = raw_exchange(port, request.as_bytes(), Duration::from_secs(30))?;
    let after = now_ms();
    assert_eq!(r.status, 200, "{r:?}");
    let seen: Vec<(String, String)> = r
        .body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let value = |name: &str| {
        seen.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        value("x-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1"),
        "{}",
        r.body
    );
    assert_eq!(value("x-forwarded-proto"), Some("http"), "{}", r.body);
    assert_eq!(value("x-forwarded-port"), Some(port.to_string().as_str()));
    assert_eq!(
        value("via"),
        Some("1.0 corp-proxy, 1.1 skiff"),
        "{}",
        r.body
    );
    assert_eq!(value("x-request-id"), Some(rid("headers", 0).as_str()));
    assert_eq!(value("x-kept"), Some("yes"));
    let start: u128 = value("x-request-start")
        .context("x-request-start")?
        .parse()?;
    assert!(
        (before..=after).contains(&start),
        "{before} {start} {after}"
    );
    for gone in [
        "x-hop-only",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            value(gone).is_none(),
            "{gone} reached the dyno:\n{}",
            r.body
        );
    }
    // The response carries the id and Via; a client's unusable id is replaced by a UUID.
    assert_eq!(r.header("x-request-id"), Some(rid("headers", 0).as_str()));
    assert_eq!(r.header("via"), Some("1.1 skiff"));
    for bad in ["short", "has spaces in it, which are not allowed"] {
        let r = get("/", &[("X-Request-Id", bad)])?;
        let id = r.header("x-request-id").context("id")?;
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
    }

    // Heroku's router line for a served request.
    get("/json", &[("X-Request-Id", &rid("line", 0))])?;
    let line = router_line(&s, &repo, &rid("line", 0))?;
    for part in [
        "at=info method=GET path=\"/json\" host=hello.localhost ",
        "fwd=\"127.0.0.1\"",
        " dyno=web.1 ",
        " connect=",
        " service=",
        " status=200 ",
        " bytes=",
        " protocol=http",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }

    // Two web dynos share sequential requests.
    ok(s.cli(&repo, &["ps:scale", "web=2"])?)?;
    let mut dynos = std::collections::BTreeSet::new();
    for i in 0..6 {
        assert_eq!(get("/", &[("X-Request-Id", &rid("lb", i))])?.status, 200);
    }
    for i in 0..6 {
        let line = router_line(&s, &repo, &rid("lb", i))?;
        dynos.insert(dyno_of(&line).unwrap_or("").to_owned());
    }
    assert_eq!(dynos.len(), 2, "{dynos:?}");

    // Session affinity: a cookie pins the client to one dyno; without the feature, no cookie.
    assert!(get("/", &[])?.header("set-cookie").is_none());
    ok(s.cli(&repo, &["features:enable", "http-session-affinity"])?)?;
    let features = stdout(&ok(s.cli(&repo, &["features"])?)?);
    assert!(features.contains("[+] http-session-affinity"), "{features}");
    let r = get("/", &[])?;
    let cookie = r
        .header("set-cookie")
        .context("affinity cookie")?
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(cookie.starts_with("skiff-session-affinity="), "{cookie}");
    for i in 0..6 {
        let r = get(
            "/",
            &[
                ("Cookie", &format!("a=b; {cookie}")),
                ("X-Request-Id", &rid("pin", i)),
            ],
        )?;
        assert_eq!(r.status, 200);
        assert!(r.header("set-cookie").is_none(), "{r:?}");
    }
    let mut pinned = std::collections::BTreeSet::new();
    for i in 0..6 {
        let line = router_line(&s, &repo, &rid("pin", i))?;
        pinned.insert(dyno_of(&line).unwrap_or("").to_owned());
    }
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    // A cookie naming no live dyno gets a fresh one.
    let r = get(
        "/",
        &[("Cookie", "skiff-session-affinity=0000000000000000")],
    )?;
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_some(), "{r:?}");
    ok(s.cli(&repo, &["features:disable", "http-session-affinity"])?)?;
    assert!(get("/", &[])?.header("set-cookie").is_none());

    // Maintenance mode: H80 for every request, in place, and back.
    ok(s.cli(&repo, &["maintenance:on"])?)?;
    assert_eq!(stdout(&ok(s.cli(&repo, &["maintenance"])?)?).trim(), "on");
    let r = get("/json", &[("X-Request-Id", &rid("h80", 0))])?;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("skiff-error"), Some("H80"), "{r:?}");
    assert!(
        r.body.contains("maintenance") && r.body.contains("H80"),
        "{}",
        r.body
    );
    let line = router_line(&s, &repo, &rid("h80", 0))?;
    assert!(
        line.contains("code=H80 desc=\"Maintenance mode\""),
        "{line}"
    );
    ok(s.cli(&repo, &["maintenance:off"])?)?;
    assert_eq!(stdout(&ok(s.cli(&repo, &["maintenance"])?)?).trim(), "off");
    assert_eq!(get("/", &[])?.status, 200);

    // Custom domains: exact host match, one app per domain, unknown hosts name no app.
    ok(s.cli(&repo, &["domains:add", "www.example.com"])?)?;
    let listed = stdout(&ok(s.cli(&repo, &["domains"])?)?);
    assert!(listed.contains("www.example.com"), "{listed}");
    assert!(listed.contains("hello.localhost"), "{listed}");
    let r = http_full(port, "WWW.example.com", "GET", "/", None, &[])?;
    assert_eq!((r.status, r.body.as_str()), (200, "Hello from Skiff!\n"));
    assert_eq!(
        http_full(port, "example.com", "GET", "/", None, &[])?.status,
        404
    );
    ok(s.cli(&repo, &["apps:create", "other", "--remote", "other"])?)?;
    let taken = s.cli(&repo, &["domains:add", "-a", "other", "www.example.com"])?;
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("already in use"),
        "{}",
        stderr(&taken)
    );
    let under = s.cli(&repo, &["domains:add", "x.localhost"])?;
    assert!(!under.status.success());
    ok(s.cli(&repo, &["domains:remove", "www.example.com"])?)?;
    let r = http_full(port, "www.example.com", "GET", "/", None, &[])?;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("hello"), "{}", r.body);
    ok(s.cli(&repo, &["domains:add", "-a", "other", "www.example.com"])?)?;

    // Header limits: too many headers are refused before any app sees them.
    let mut many = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for i in 0..300 {
        many.push_str(&format!("X-Filler-{i}: x\r\n"));
    }
    many.push_str("\r\n");
    // Closing the connection without an answer (an Err here) is a refusal too.
    if let Ok(r) = raw_exchange(port, many.as_bytes(), Duration::from_secs(30)) {
        assert!(r.status >= 400, "{r:?}");
    }

    // Hostile framing: every probe gets a 4xx of its own, and nothing reaches a dyno as a
    // second request.
    hostile_clients(&s, port, &host)?;

    // Limits from config vars: body size (413), client read timeout, concurrency (H11),
    // request timeout (H12). One release for all but the timeout.
    ok(s.cli(&repo, &["ps:scale", "web=1"])?)?;
    ok(s.cli(
        &repo,
        &[
            "config:set",
            "SKIFF_MAX_BODY_BYTES=1000",
            "SKIFF_ROUTER_CLIENT_TIMEOUT=1",
            "SKIFF_MAX_CONCURRENCY=1",
        ],
    )?)?;
    let small = "x".repeat(500);
    let r = http_full(port, &host, "POST", "/echo", Some(&small), &[])?;
    assert_eq!((r.status, r.body.len()), (200, 500));
    // Declared too large: refused before the body is read.
    let r = raw_exchange(
        port,
        format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(30),
    )?;
    assert_eq!(r.status, 413, "{r:?}");
    // Chunked, so only counting tells.
    let chunk = "y".repeat(2000);
    let r = raw_exchange(
        port,
        format!(
            "POST /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
        Duration::from_secs(30),
    )?;
    assert_eq!(r.status, 413, "{r:?}");
    // A client that stops sending its body is cut off (and told so if it still listens).
    let mut slow = TcpStream::connect(("127.0.0.1", port))?;
    slow.set_read_timeout(Some(Duration::from_secs(20)))?;
    slow.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 100\r\n\r\nabc")
            .as_bytes(),
    )?;
    match read_response(slow) {
        Ok(r) => assert_eq!(r.status, 408, "{r:?}"),
        Err(e) => {
            let io = e.downcast_ref::<std::io::Error>();
            assert!(
                !io.is_some_and(|e| matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )),
                "the router kept a silent client: {e}"
            );
        }
    }
    // A client that trickles its head, a byte every 200 ms, is cut off with a 408 at the
    // head's deadline, though no read ever waits long.
    let mut loris = TcpStream::connect(("127.0.0.1", port))?;
    loris.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes())?;
    loris.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut told = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match loris.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => told.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !told.is_empty() || loris.write_all(b"x").is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let told = String::from_utf8_lossy(&told);
    assert!(told.starts_with("HTTP/1.1 408 "), "slow loris: {told:?}");
    assert!(told.contains("did not arrive within 5 s"), "{told}");
    // The router logs the cut once, as info; Pingora's ERROR line for it is the client's
    // doing and dropped.
    let mut logs = s.logs();
    for _ in 0..100 {
        if logs.contains("request head not complete in time") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        logs = s.logs();
    }
    assert!(logs.contains("request head not complete in time"), "{logs}");
    assert!(!logs.contains("while reading request headers"), "{logs}");
    // A kept-alive connection that goes quiet after its answer is closed after the same
    // client timeout (a Keep-Alive header asking for longer changes nothing).
    // The admission of the stalled upload above is freed just after its client has the
    // 408, so with one request allowed in flight this one may meet H11 for a moment: retry.
    // Whole once the body is: by its length, or by the last chunk.
    let whole = |got: &[u8]| {
        let text = String::from_utf8_lossy(got).to_ascii_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        match head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            Some(n) => body.len() >= n,
            None => body.ends_with("0\r\n\r\n"),
        }
    };
    let mut attempt = 0;
    let (mut idle, got) = loop {
        let mut idle = TcpStream::connect(("127.0.0.1", port))?;
        idle.set_read_timeout(Some(Duration::from_secs(20)))?;
        idle.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nKeep-Alive: timeout=3600\r\n\r\n")
                .as_bytes(),
        )?;
        let mut got = Vec::new();
        while !whole(&got) {
            let n = idle.read(&mut buf)?;
            ensure!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        attempt += 1;
        if attempt < 20
            && String::from_utf8_lossy(&got)
                .to_ascii_lowercase()
                .contains("skiff-error: h11")
        {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        break (idle, got);
    };
    assert!(
        String::from_utf8_lossy(&got).contains("Hello from Skiff!\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !String::from_utf8_lossy(&got)
            .to_ascii_lowercase()
            .contains("connection: close"),
        "kept alive: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        idle.read(&mut buf).map_err(|e| e.kind()),
        Ok(0),
        "the idle connection is closed"
    );

    // H11: one request in flight per dyno; a second one is refused while the first runs.
    let slow_request = {
        let host = host.clone();
        // The router frees an admission just after the client has the answer, so the
        // request before this one may still count for a moment: retry such a refusal.
        std::thread::spawn(move || {
            let mut attempt = 0;
            loop {
                let r = http_full(port, &host, "GET", "/sleep?ms=8000", None, &[])?;
                attempt += 1;
                if r.status == 503 && r.body.contains("H11") && attempt < 20 {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                return Ok::<_, anyhow::Error>(r);
            }
        })
    };
    // Probes until one is refused, for as long as the slow request is in flight (a loaded
    // machine may take a while to get it to the dyno).
    let mut refused = None;
    for i in 0..70 {
        if slow_request.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let r = get("/", &[("X-Request-Id", &rid("h11", i))])?;
        if r.status == 503 {
            refused = Some((i, r));
            break;
        }
    }
    let Some((i, r)) = refused else {
        let slow = slow_request.join();
        anyhow::bail!("no request was refused with H11; the slow request ended with {slow:?}");
    };
    assert!(r.body.contains("H11"), "{}", r.body);
    let line = router_line(&s, &repo, &rid("h11", i))?;
    assert!(
        line.contains("code=H11 desc=\"Backlog too deep\""),
        "{line}"
    );
    let slow = slow_request
        .join()
        .map_err(|_| anyhow::anyhow!("slow request thread panicked"))??;
    assert_eq!(slow.status, 200, "{slow:?}");
    assert_eq!(get("/", &[])?.status, 200);

    // H12: a per-app timeout of 1 s and a slower answer.
    ok(s.cli(&repo, &["config:set", "SKIFF_ROUTER_TIMEOUT=1"])?)?;
    let r = get("/sleep?ms=3000", &[("X-Request-Id", &rid("h12", 0))])?;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("H12"), "{}", r.body);
    let line = router_line(&s, &repo, &rid("h12", 0))?;
    assert!(line.contains("code=H12 desc=\"Request timeout\""), "{line}");
    assert!(line.contains(" status=503 "), "{line}");
    assert_eq!(get("/", &[])?.status, 200);

    // H18: the client leaves before the answer.
    let mut gone = TcpStream::connect(("127.0.0.1", port))?;
    gone.write_all(
        format!(
            "GET /sleep?ms=500 HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {}\r\n\r\n",
            rid("h18", 0)
        )
        .as_bytes(),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    drop(gone);
    let line = router_line(&s, &repo, &rid("h18", 0))?;
    assert!(line.contains("code=H18"), "{line}");

    ok(s.cli(
        &repo,
        &[
            "config:unset",
            "SKIFF_ROUTER_TIMEOUT",
            "SKIFF_MAX_CONCURRENCY",
            "SKIFF_MAX_BODY_BYTES",
            "SKIFF_ROUTER_CLIENT_TIMEOUT",
        ],
    )?)?;
    ok(s.cli(&repo, &["ps:scale", "web=2"])?)?;
    deploy_under_load(&s, &repo, &host)?;

    // Ctrl-C lets a request in flight finish before the platform stops.
    let slow = {
        let host = host.clone();
        std::thread::spawn(move || http_full(port, &host, "GET", "/sleep?ms=3000", None, &[]))
    };
    std::thread::sleep(Duration::from_millis(1000));
    s.stop()?;
    let r = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow request's thread panicked"))??;
    assert_eq!(r.status, 200, "the request in flight was cut off: {r:?}");
    let logs = s.logs();
    assert!(logs.contains("Letting 1 open connection finish"), "{logs}");
    Ok(())
}

/// Requests keep flowing while a push replaces every dyno: none may fail, and slow requests
/// that started on the old dynos finish. The load starts once the push has compiled, so it
/// straddles the switch of routes rather than the (long) build.
/// Request smuggling and malformed heads, sent on raw sockets.
fn hostile_clients(s: &Skiff, port: u16, host: &str) -> Result<()> {
    let refused = |request: String, want: u16, why: &str| -> Result<()> {
        let r = raw_exchange(port, request.as_bytes(), Duration::from_secs(30))?;
        assert_eq!(r.status, want, "{why}: {r:?}");
        assert!(
            !r.body.contains("Hello from Skiff"),
            "{why} reached the app"
        );
        // Every refusal is the router's own page, with an id to quote, whichever part
        // of the router caught it.
        assert_eq!(r.header("via"), Some("1.1 skiff"), "{why}: {r:?}");
        assert!(r.header("x-request-id").is_some(), "{why}: {r:?}");
        assert!(r.header("server").is_none(), "{why}: {r:?}");
        Ok(())
    };
    refused(
        format!(
            "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
        ),
        400,
        "two Content-Length values",
    )?;
    let r = raw_exchange(
        port,
        format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 5\r\n\r\nabcde")
            .as_bytes(),
        Duration::from_secs(30),
    )?;
    assert_eq!(r.status, 400, "a Content-Length list: {r:?}");
    assert!(r.body.contains("single number"), "the router's page: {r:?}");
    refused(
        format!(
            "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        ),
        400,
        "a coding besides chunked",
    )?;
    refused(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Folded: a\r\n b\r\n\r\n"),
        400,
        "obs-fold",
    )?;
    refused("GET / HTTP/1.1\r\n\r\n".into(), 400, "no Host")?;
    refused(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: other.localhost\r\n\r\n"),
        400,
        "two Hosts",
    )?;
    refused(
        format!("GET http://{host}/ HTTP/1.1\r\nHost: other.localhost\r\n\r\n"),
        400,
        "an absolute-form target naming another host",
    )?;
    refused(
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        ),
        431,
        "a header line over 8 KiB",
    )?;
    let lines: String = (0..20)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(4000)))
        .collect();
    refused(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n"),
        431,
        "headers over 64 KiB in all",
    )?;
    refused(
        format!("GET json HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        400,
        "a target that is neither a path nor a URL",
    )?;
    refused(
        format!("GET other.localhost HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        400,
        "an authority-form target",
    )?;
    refused(
        format!(
            "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\nhello\r\n0\r\n\r\n"
        ),
        400,
        "a chunk size that is not a number",
    )?;
    refused(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close, X-Forwarded-For\r\n\r\n"),
        400,
        "a Connection header naming a header the router sets",
    )?;
    // The dyno would refuse these too, with a bare 431: the router's page is the point.
    let many: String = (0..120).map(|i| format!("X-Many-{i}: x\r\n")).collect();
    let r = raw_exchange(
        port,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(30),
    )?;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.contains("at most 90 header lines"), "{r:?}");
    let bad_host = b"GET / HTTP/1.1\r\nHost: hel\xff\xfelo.localhost\r\n\r\n";
    let r = raw_exchange(port, bad_host, Duration::from_secs(30))?;
    assert_eq!(r.status, 404, "invalid UTF-8 in Host names no app: {r:?}");

    // Content-Length and Transfer-Encoding together: the chunked framing wins, the length is
    // dropped, and the connection closes after the one response, so the bytes after the
    // chunked body are never read as a request of their own.
    let smuggle = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(smuggle.as_bytes())?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let responses = answer.matches("HTTP/1.1 ").count();
    assert_eq!(responses, 1, "one request, one response: {answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Uploads broken off midway fail on the client's account (H18), never as the app's
    // crashes: enough of those in a row would put every dyno in the crashed state (H10) for
    // every client. Fifteen, more than the crashes in a row that take a dyno down, whichever
    // dynos they reach; then the app still answers.
    let failed_in_app = || -> Vec<String> {
        s.logs()
            .lines()
            .filter(|l| l.contains("request failed in the app") && l.contains("/echo"))
            .map(str::to_owned)
            .collect()
    };
    let before = failed_in_app().len();
    for _ in 0..15 {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.write_all(
            format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\nabc")
                .as_bytes(),
        )?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = Instant::now();
    while failed_in_app().len() < before + 15 && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = failed_in_app().split_off(before);
    assert!(lines.len() >= 6, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("H18")), "{lines:#?}");
    // One short line each: a client must not be able to make the log grow by kilobytes a
    // request (the error once carried a host backtrace).
    assert!(lines.iter().all(|l| l.len() < 1000), "{lines:#?}");
    let hello = |r: &Response| {
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "Hello from Skiff!\n"),
            "{r:?}"
        )
    };
    hello(&http_full(port, host, "GET", "/", None, &[])?);

    // An absolute-form target names the app without a Host header (HTTP/1.0).
    hello(&raw_exchange(
        port,
        format!("GET http://{host}/ HTTP/1.0\r\n\r\n").as_bytes(),
        Duration::from_secs(30),
    )?);

    // An HTTP/1.0 client gets no chunks: the body comes unframed and the connection closes.
    let r = raw_exchange(
        port,
        format!("GET /json HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
        Duration::from_secs(30),
    )?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.body).context("a JSON body, unframed")?;
    assert!(json.is_object(), "{r:?}");

    // Hundreds of idle connections hold nothing the next client needs.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)))
        .collect::<std::io::Result<_>>()?;
    let r = http_full(port, host, "GET", "/", None, &[])?;
    assert_eq!(r.status, 200, "{r:?}");
    // One client address may hold 320 (as this platform is started): past that, a 503 that
    // says why, until some close. (Idle ones are let go at the head deadline, 5 s here.)
    let mut more = Vec::new();
    let refused = loop {
        ensure!(
            more.len() < 100,
            "no connection refused past the per-client cap"
        );
        more.push(TcpStream::connect(("127.0.0.1", port))?);
        let r = raw_exchange(
            port,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(20),
        )?;
        if r.status == 503 {
            break r;
        }
    };
    assert!(refused.body.contains("Your address"), "{refused:?}");
    assert!(refused.header("x-request-id").is_some(), "{refused:?}");
    drop(idle);
    drop(more);
    let r = http_full(port, host, "GET", "/", None, &[])?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

fn deploy_under_load(s: &Skiff, repo: &Path, host: &str) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let port = s.http_port;
    set_greeting(repo, "Hello under load!")?;
    ok(s.git(repo, &["add", "--all"])?)?;
    ok(s.git(repo, &["commit", "--quiet", "-m", "greeting under load"])?)?;
    let mut push = s
        .git_command(repo, &["push", "skiff", "main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let mut output = String::new();
    let progress = push.stderr.take().context("push stderr")?;
    for line in BufReader::new(progress).lines() {
        let line = line?;
        output.push_str(&line);
        output.push('\n');
        if workers.is_empty() && line.contains("Discovering process types") {
            let started = Instant::now();
            for worker in 0..2 {
                let (stop, sent, host) = (stop.clone(), sent.clone(), host.to_owned());
                workers.push(std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut greetings = std::collections::BTreeSet::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < 6000
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        // One worker mixes in slow requests, which straddle the switch.
                        let path = if worker == 1 && n.is_multiple_of(5) {
                            "/sleep?ms=300"
                        } else {
                            "/"
                        };
                        n += 1;
                        match http_full(port, &host, "GET", path, None, &[]) {
                            Ok(r) if (200..300).contains(&r.status) => {
                                if path == "/" {
                                    greetings.insert(r.body);
                                }
                            }
                            Ok(r) => failures.push(format!("{path}: {} {}", r.status, r.body)),
                            Err(e) => failures.push(format!("{path}: {e}")),
                        }
                        // Paced, so the bounded number of requests covers the whole rollout.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (n, failures, greetings)
                }));
            }
        }
    }
    let status = push.wait()?;
    // A few more requests after the push returns, so the load surely sees the new release.
    let after = sent.load(Ordering::Relaxed) + 20;
    let grace = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < after && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    ensure!(status.success(), "push failed:\n{output}");
    ensure!(
        !workers.is_empty(),
        "the push never reached the release:\n{output}"
    );
    let mut total = 0;
    let mut failures = Vec::new();
    let mut greetings = std::collections::BTreeSet::new();
    for w in workers {
        let (n, f, g) = w
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        total += n;
        failures.extend(f);
        greetings.extend(g);
    }
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during the deploy: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // Both releases answered during the load, so it did cover the switch.
    assert!(
        greetings.contains("Hello from Skiff!\n") && greetings.contains("Hello under load!\n"),
        "{total} requests saw {greetings:?}"
    );
    assert_eq!(
        http(port, host, "GET", "/", None, &[])?,
        (200, "Hello under load!\n".into())
    );
    Ok(())
}

#[test]
fn bench_router_prints_its_table() -> Result<()> {
    let nginx_before = processes_named("nginx")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["bench", "router", "--seconds", "1", "--connections", "2"])
        .output()?;
    let text = stdout(&out);
    // nginx's workers outlive a master killed with SIGKILL; the bench stops them all.
    let nginx_after = processes_named("nginx")?;
    ensure!(
        nginx_after <= nginx_before,
        "nginx processes before the bench: {nginx_before}, after: {nginx_after}"
    );
    ensure!(out.status.success(), "{text}{}", stderr(&out));
    for part in [
        "req/s",
        "p50",
        "p99",
        "direct",
        "skiff router",
        "router/direct",
        "bare pingora",
        "router/pingora",
    ] {
        ensure!(text.contains(part), "{part} missing:\n{text}");
    }
    ensure!(
        text.contains("nginx"),
        "the nginx comparison is run or said to be skipped:\n{text}"
    );
    ensure!(text.contains("idle cores "), "{text}");
    // The paced phase: every target that ran carries the same rate without a failure.
    let paced = text
        .split_once("Paced: 2000 req/s")
        .with_context(|| format!("no paced table:\n{text}"))?
        .1;
    ensure!(paced.contains("added p99"), "{text}");
    let rows: Vec<&str> = paced
        .lines()
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.contains("µs"))
        .collect();
    ensure!(
        rows.first().is_some_and(|r| r.starts_with("direct"))
            && rows.iter().any(|r| r.starts_with("skiff router")),
        "{text}"
    );
    for row in rows {
        ensure!(row.ends_with(" 0"), "a paced phase had errors:\n{text}");
    }
    if !text.contains("nginx: not installed") {
        // Both nginx set-ups are measured, and a keep-alive connection nginx closes after its
        // default 1000 requests would show up as errors here.
        for name in ["nginx ", "nginx-equiv "] {
            let row = text
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name}row:\n{text}"))?;
            ensure!(row.ends_with(" 0"), "{name}had errors:\n{text}");
        }
        ensure!(text.contains("router/nginx-equiv"), "{text}");
    }
    Ok(())
}

/// How many processes on this machine have the command name `name`.
fn processes_named(name: &str) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc")? {
        let comm = entry?.path().join("comm");
        if std::fs::read_to_string(comm).is_ok_and(|c| c.trim_end() == name) {
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn bench_serve_compares_with_wasmtime_serve() -> Result<()> {
    let peer = std::process::Command::new("wasmtime")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut args = vec!["bench", "serve", "--seconds", "1", "--connections", "2"];
    if !peer {
        // Without the peer the bench says how to get it, and does nothing else.
        args.extend(["--wasmtime", "/nonexistent/wasmtime"]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(&args)
        .output()?;
    if !peer {
        ensure!(!out.status.success());
        ensure!(
            stderr(&out).contains("cargo install wasmtime-cli --version 48.0.8"),
            "{}",
            stderr(&out)
        );
        return Ok(());
    }
    let text = stdout(&out);
    ensure!(out.status.success(), "{text}{}", stderr(&out));
    for part in [
        "Freed instance slots: ",
        "wasmtime serve",
        "wasmtime serve, tuned",
        "skiff dyno",
        "skiff router+dyno",
        "skiff dyno, madvise",
        "skiff reuse=16",
        "skiff router+dyno / wasmtime serve, tuned",
    ] {
        ensure!(text.contains(part), "{part} missing:\n{text}");
    }
    Ok(())
}

/// Pushes `repo` and, as soon as the release phase starts (no web dyno is up yet, and the
/// phase sleeps), sends one GET through the router. Returns that response and the push output.
fn request_during_release_phase(s: &Skiff, repo: &Path, host: &str) -> Result<(Response, String)> {
    use std::io::BufRead;
    ok(s.git(repo, &["add", "--all"])?)?;
    ok(s.git(repo, &["commit", "--quiet", "--allow-empty", "-m", "boot"])?)?;
    let mut push = s
        .git_command(repo, &["push", "skiff", "main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = push.stderr.take().context("push stderr")?;
    let mut output = String::new();
    let mut response = None;
    for line in std::io::BufReader::new(stderr).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        output.push_str(&line);
        output.push('\n');
        if response.is_none() && line.contains("Running release command") {
            let port = s.http_port;
            let host = host.to_owned();
            // Sent from another thread so the push output keeps draining meanwhile.
            response = Some(std::thread::spawn(move || {
                http_full(port, &host, "GET", "/", None, &[])
            }));
        }
    }
    let status = push.wait()?;
    ensure!(status.success(), "push failed:\n{output}");
    let response = response
        .context("the release phase never started")?
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))??;
    Ok((response, output))
}

/// Requests for an app whose first web dynos are starting wait for them (Heroku queues them up
/// to 75 s) instead of failing at once with H14; past the app's boot timeout they get H20.
#[test]
fn requests_wait_for_booting_dynos_then_h20() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let procfile = "web: bin/rust-hello.wasm\nrelease: bin/tasks.wasm sleep 3\n";

    // The first deploy: a request sent while the release phase runs (no dyno yet) is held
    // until the new web dyno is up, then served.
    let repo = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&repo, &["apps:create", "booting"])?)?;
    std::fs::write(repo.join("Procfile"), procfile)?;
    let host = format!("booting.localhost:{}", s.http_port);
    let (r, output) = request_during_release_phase(&s, &repo, &host)?;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Hello from Skiff!\n"),
        "{output}"
    );

    // With a boot timeout shorter than the release phase the held request gets H20.
    let late = work.path().join("late");
    copy_tree(&repo, &late)?;
    ok(s.cli(&late, &["apps:create", "boot-late", "--remote", "late"])?)?;
    ok(s.git(
        &late,
        &[
            "remote",
            "set-url",
            "skiff",
            &format!("{}/boot-late.git", s.api()),
        ],
    )?)?;
    ok(s.cli(
        &late,
        &["config:set", "SKIFF_BOOT_TIMEOUT=0.5", "-a", "boot-late"],
    )?)?;
    let host = format!("boot-late.localhost:{}", s.http_port);
    let (r, output) = request_during_release_phase(&s, &late, &host)?;
    assert_eq!(r.status, 503, "{}\n{output}", r.body);
    assert!(r.body.contains("H20"), "{}", r.body);
    let logs = stdout(&ok(s.cli(
        &late,
        &[
            "logs",
            "--source",
            "router",
            "-n",
            "1500",
            "-a",
            "boot-late",
        ],
    )?)?);
    assert!(
        logs.contains("code=H20 desc=\"App boot timeout\""),
        "{logs}"
    );
    assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);

    // Scaled to zero, a deploy starts no web dyno, so nothing is held: H14 at once.
    ok(s.cli(&late, &["ps:scale", "web=0", "-a", "boot-late"])?)?;
    let (r, output) = request_during_release_phase(&s, &late, &host)?;
    assert_eq!(r.status, 503, "{}\n{output}", r.body);
    assert!(r.body.contains("H14"), "{}", r.body);
    s.stop()?;
    Ok(())
}
