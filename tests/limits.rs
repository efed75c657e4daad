//! Hostile guests against the runtime's fences: each attack fails its own request with a clear
//! code, the dyno keeps serving, and another app on the same host keeps answering.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use serde_json::Value;

fn hostile_repo(s: &Skiff, parent: &std::path::Path) -> Result<std::path::PathBuf> {
    let repo = parent.join("hostile");
    copy_tree(&repo_root().join("tests/fixtures/hostile"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    Ok(repo)
}

#[test]
fn hostile_guests_fail_alone() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;

    let calm = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&calm, &["apps:create", "calm"])?)?;
    ok(s.cli(&calm, &["config:set", "CALM_SECRET=only-for-calm"])?)?;
    let (pushed, output) = s.commit_and_push(&calm, "calm")?;
    assert!(pushed, "{output}");

    let hostile = hostile_repo(&s, work.path())?;
    ok(s.cli(&hostile, &["apps:create", "hostile"])?)?;
    ok(s.cli(&hostile, &["config:set", "SKIFF_REQUEST_TIMEOUT=2"])?)?;
    let (pushed, output) = s.commit_and_push(&hostile, "hostile")?;
    assert!(pushed, "{output}\n{}", s.logs());

    // Scale up: eco is the smallest size (64 MiB, 10 requests at once).
    ok(s.cli(&hostile, &["ps:resize", "web=eco"])?)?;
    let ps: Value = serde_json::from_slice(&ok(s.cli(&hostile, &["ps", "--json"])?)?.stdout)?;
    assert_eq!(ps["dynos"][0]["size"], "eco", "{ps}");
    assert_eq!(ps["formation"]["web"]["size"], "eco", "{ps}");

    let h = format!("hostile.localhost:{}", s.http_port);
    let c = format!("calm.localhost:{}", s.http_port);
    assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));

    // An infinite loop is stopped at the app's deadline; the other app answers meanwhile.
    let port = s.http_port;
    let looping = {
        let h = h.clone();
        std::thread::spawn(move || http(port, &h, "GET", "/loop", None, &[]))
    };
    let mut calm_answers = 0;
    while !looping.is_finished() && calm_answers < 200 {
        let (status, body) = s.request(&c, "GET", "/", None)?;
        assert_eq!((status, body.as_str()), (200, "Hello from Skiff!\n"));
        calm_answers += 1;
    }
    let (status, body) = looping
        .join()
        .map_err(|_| anyhow::anyhow!("loop thread"))??;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Request timeout"), "{body}");
    assert!(calm_answers > 0, "the calm app answered while the loop ran");

    // A memory bomb hits its size's quota; the dyno lives on.
    let (status, body) = s.request(&h, "GET", "/grow", None)?;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Memory quota exceeded"), "{body}");
    assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));

    // 16 MiB of output: the request still answers, the other app too, and the log
    // keeps its budget and says what it dropped (checked with the other codes below).
    let flooding = {
        let h = h.clone();
        std::thread::spawn(move || http(port, &h, "GET", "/flood", None, &[]))
    };
    let mut calm_during_flood = 0;
    while !flooding.is_finished() && calm_during_flood < 200 {
        assert_eq!(s.request(&c, "GET", "/", None)?.0, 200);
        calm_during_flood += 1;
    }
    let (status, body) = flooding
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread"))??;
    assert_eq!((status, body.as_str()), (200, "flooded 16777216\n"));

    huge_bodies(&s, &h)?;

    // Stack overflow and traps fail their own request only.
    for path in ["/recurse", "/trap"] {
        let (status, body) = s.request(&h, "GET", path, None)?;
        assert_eq!(status, 500, "{path}: {body}");
        assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));
    }

    // Files: no host paths, its own slug read-only at /app, a private writable /tmp.
    let (_, body) = s.request(&h, "GET", "/passwd", None)?;
    assert!(body.starts_with("refused"), "{body}");
    let (_, body) = s.request(&h, "GET", "/own", None)?;
    assert_eq!(body, "own [package]\n");
    let (_, body) = s.request(&h, "GET", "/tmp", None)?;
    assert!(body.contains("Ok(\"written\")"), "{body}");

    // Environment: its own config and Skiff's variables, never another app's.
    let (_, body) = s.request(&h, "GET", "/env", None)?;
    assert!(
        body.contains("SKIFF_APP") && body.contains("SKIFF_REQUEST_TIMEOUT"),
        "{body}"
    );
    assert!(!body.contains("CALM_SECRET"), "{body}");

    // Outbound HTTP: host and private addresses are closed by default, open when listed.
    let outside = std::net::TcpListener::bind("127.0.0.1:0")?;
    let outside_port = outside.local_addr()?.port();
    // What the outside server saw, for the failure message: this exchange failed once in CI
    // with "connection reset" and the cause is not known yet.
    let seen_outside = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let note = {
        let seen = seen_outside.clone();
        move |line: String| {
            if let Ok(mut seen) = seen.lock() {
                seen.push(line);
            }
        }
    };
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (n, conn) in outside.incoming().take(4).enumerate() {
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    note(format!("#{n} accept failed: {e}"));
                    break;
                }
            };
            // The whole head before answering: closing with part of it unread would reset
            // the connection under the answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        note(format!("#{n} head read failed: {e}"));
                        break;
                    }
                }
            }
            note(format!("#{n} head {:?}", String::from_utf8_lossy(&head)));
            if let Err(e) = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 19\r\nconnection: close\r\n\r\nhello from outside\n") {
                note(format!("#{n} answer failed: {e}"));
            }
            // Anything the client still sends (a body's last chunk) is read before the
            // close, for the same reason; a guest slowed by a loaded machine may send it
            // seconds later.
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
            let mut rest = 0;
            let end = loop {
                match conn.read(&mut buf) {
                    Ok(0) => break "closed".to_owned(),
                    Ok(n) => rest += n,
                    Err(e) => break e.to_string(),
                }
            };
            note(format!("#{n} then read {rest} bytes, {end}"));
        }
    });
    let fetch = format!("/fetch?url=http://127.0.0.1:{outside_port}/");
    let (_, body) = s.request(&h, "GET", &fetch, None)?;
    assert!(
        body.starts_with("fetch failed"),
        "loopback is closed by default: {body}"
    );
    ok(s.cli(
        &hostile,
        &[
            "config:set",
            &format!("SKIFF_OUTBOUND_ALLOW=127.0.0.1:{outside_port}"),
        ],
    )?)?;
    let (_, mut body) = s.request(&h, "GET", &fetch, None)?;
    let first = body.clone();
    // A reset is a transport failure, not the policy under test, so it gets one more try.
    if body.starts_with("fetch failed") && body.contains("reset") {
        // Shown with `--nocapture`, or in the failure below if the retry fails too.
        eprintln!(
            "outbound fetch reset, trying once more; the outside server saw {:?}",
            seen_outside.lock().map(|s| s.clone()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
        body = s.request(&h, "GET", &fetch, None)?.1;
    }
    let outbound_log: Vec<String> = s
        .logs()
        .lines()
        .filter(|l| l.contains("outbound") || l.contains("hyper"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        body,
        "fetched hello from outside\n",
        "first try: {first:?}; the outside server saw {:?}; platform log: {outbound_log:?}",
        seen_outside.lock().map(|s| s.clone()).unwrap_or_default()
    );
    let api = format!("/fetch?url=http://127.0.0.1:{}/apps", s.api_port);
    let (_, body) = s.request(&h, "GET", &api, None)?;
    assert!(
        body.starts_with("fetch failed"),
        "the platform's API stays closed: {body}"
    );

    // Concurrency: an eco dyno serves 10 requests at once and answers "full" beyond that.
    // Twelve slow requests at once: at least one of them (or a probe sent meanwhile) must
    // be turned away with the capacity answer.
    let loops: Vec<_> = (0..12)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || http(port, &h, "GET", "/loop", None, &[]))
        })
        .collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && loops.iter().any(|l| !l.is_finished()) {
        seen.push(s.request(&h, "GET", "/ok", None)?);
        std::thread::sleep(Duration::from_millis(20));
    }
    for l in loops {
        if let Ok(Ok(answer)) = l.join() {
            seen.push(answer);
        }
    }
    assert!(
        seen.iter()
            .any(|(status, body)| *status == 503 && body.contains("capacity")),
        "no request found the dyno full: {seen:?}"
    );
    assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));

    // The app's log says what happened, with codes.
    let out = ok(s.cli(&hostile, &["logs", "-n", "200"])?)?;
    let logs = stdout(&out);
    for code in [
        "Error H12",
        "Error R15",
        "Error H10",
        "Error L10 (output buffer overflow)",
        "Outbound request refused",
    ] {
        assert!(logs.contains(code), "missing {code} in:\n{logs}");
    }
    let calm_logs = stdout(&ok(s.cli(&calm, &["logs", "-n", "1500"])?)?);
    assert!(
        !calm_logs.contains("/loop"),
        "one app's lines never reach another's log"
    );
    Ok(())
}

/// With fuel metering on, a CPU budget stops a runaway request and every request reports
/// the fuel it used; a small instance pool refuses formations it cannot hold.
#[test]
fn cpu_budget_stops_a_request() -> Result<()> {
    let mut s = Skiff::start()?;
    s.stop()?;
    s.boot_with(&["--fuel", "--pool-instances", "4"])?;
    let work = tempfile::tempdir()?;
    let hostile = hostile_repo(&s, work.path())?;
    ok(s.cli(&hostile, &["apps:create", "budget"])?)?;
    ok(s.cli(&hostile, &["config:set", "SKIFF_REQUEST_FUEL=50000000"])?)?;
    let (pushed, output) = s.commit_and_push(&hostile, "budget")?;
    assert!(pushed, "{output}");
    let h = format!("budget.localhost:{}", s.http_port);
    assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));
    let (status, body) = s.request(&h, "GET", "/loop", None)?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("CPU budget"), "{body}");
    // A formation the instance pool cannot hold is refused before anything starts.
    let out = s.cli(&hostile, &["ps:scale", "web=5"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("instance pool holds 4"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.request(&h, "GET", "/ok", None)?, (200, "ok\n".into()));
    let logs = s.logs();
    let fuel_line = logs
        .lines()
        .find(|l| l.contains("request fuel"))
        .context("a fuel log line")?;
    assert!(fuel_line.contains("fuel="), "{fuel_line}");
    Ok(())
}

/// What one `/residue` request saw and did, all in bytes of its linear memory.
#[derive(Debug)]
struct Residue {
    /// The longest block left by an earlier request that it found.
    found: usize,
    /// How far its scan reached.
    scanned: usize,
    /// Where it left its own 16 MiB block.
    left: usize,
}

/// `/residue` over `n` sequential requests.
fn residues(s: &Skiff, host: &str, n: usize) -> Result<Vec<Residue>> {
    (0..n)
        .map(|_| {
            let (status, body) = s.request(host, "GET", "/residue", None)?;
            anyhow::ensure!(status == 200, "{status} {body}");
            let words: Vec<&str> = body.split_whitespace().collect();
            let [_, found, _, scanned, _, left] = words.as_slice() else {
                anyhow::bail!("unexpected answer: {body}");
            };
            Ok(Residue {
                found: found.parse()?,
                scanned: scanned.parse()?,
                left: left.parse()?,
            })
        })
        .collect()
}

/// Counts from `/count` over `n` sequential requests.
fn counts(s: &Skiff, host: &str, n: usize) -> Result<Vec<u64>> {
    (0..n)
        .map(|_| {
            let (status, body) = s.request(host, "GET", "/count", None)?;
            anyhow::ensure!(status == 200, "{status} {body}");
            Ok(body.trim().parse::<u64>()?)
        })
        .collect()
}

#[test]
fn instance_reuse_is_opt_in_and_bounded() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let hostile = hostile_repo(&s, work.path())?;
    ok(s.cli(&hostile, &["apps:create", "reuse"])?)?;
    let (pushed, output) = s.commit_and_push(&hostile, "reuse")?;
    assert!(pushed, "{output}");
    let h = format!("reuse.localhost:{}", s.http_port);

    // By default every request meets a fresh instance.
    assert_eq!(counts(&s, &h, 5)?, vec![1; 5]);

    // ...and a fresh instance finds nothing of what earlier ones left in memory, although its
    // pool slot is likely the last one's, kept resident with only the dirtied pages reset. Each
    // scan must reach past where the previous request left its block, or it proves nothing.
    let clean = residues(&s, &h, 6)?;
    assert!(clean.iter().all(|r| r.found < 1 << 20), "{clean:?}");
    assert!(
        clean
            .windows(2)
            .all(|w| w[1].scanned >= w[0].left + (16 << 20)),
        "a scan fell short of the previous block: {clean:?}"
    );

    // Opted in, an instance serves up to 3 requests. The next request can arrive before the
    // previous instance is handed back, so some requests may still start fresh: the bound is
    // what must hold, and that reuse happens at all.
    ok(s.cli(&hostile, &["config:set", "SKIFF_INSTANCE_REUSE=3"])?)?;
    let seen = counts(&s, &h, 12)?;
    assert!(seen.iter().all(|&n| (1..=3).contains(&n)), "{seen:?}");
    assert!(
        seen.iter().any(|&n| n > 1),
        "no instance was reused: {seen:?}"
    );
    // The residue probe does see a block when it is there: in a reused instance.
    // (A few bytes of it go to the guest allocator's bookkeeping once it is freed.)
    let reused = residues(&s, &h, 12)?;
    assert!(
        reused.iter().any(|r| r.found >= 15 << 20),
        "the probe never found the block its instance left: {reused:?}"
    );

    // A trap retires the instance it happened on; the dyno goes on serving.
    let (status, _) = s.request(&h, "GET", "/trap", None)?;
    assert_eq!(status, 500);
    let after = counts(&s, &h, 3)?;
    assert!(after.iter().all(|&n| (1..=3).contains(&n)), "{after:?}");

    // A value that is not a number is reported in the app's logs and ignored.
    ok(s.cli(&hostile, &["config:set", "SKIFF_INSTANCE_REUSE=lots"])?)?;
    assert_eq!(counts(&s, &h, 4)?, vec![1; 4]);
    let logs = ok(s.cli(&hostile, &["logs"])?)?;
    assert!(
        String::from_utf8_lossy(&logs.stdout)
            .contains("SKIFF_INSTANCE_REUSE=\"lots\" is not a whole number"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );
    Ok(())
}

/// Asks for `path` and reads the answer `step` bytes at a time with `pause` between reads, as
/// a slow client does; returns the status and how many body bytes came.
fn slow_download(
    port: u16,
    host: &str,
    path: &str,
    step: usize,
    pause: Duration,
) -> Result<(u16, usize)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = vec![0u8; step];
    let mut head = Vec::new();
    let mut body = 0;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A cut-off answer ends the count; the caller compares it with the length.
            Err(_) => break,
        };
        if head.ends_with(b"\r\n\r\n") {
            body += n;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body += head.len() - end - 4;
                head.truncate(end + 4);
            }
        }
        std::thread::sleep(pause);
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok((status, body))
}

/// A huge response body streams through without the host holding it, a client that stops
/// reading does not pin the dyno past the app's deadline, and a guest that ignores a large
/// request body answers, with the upload cut off by the router (or refused at its limit).
fn huge_bodies(s: &Skiff, h: &str) -> Result<()> {
    use std::io::Write;
    let port = s.http_port;

    // Read whole: every byte arrives.
    let r = http_full(port, h, "GET", "/huge?mib=4", None, &[])?;
    assert_eq!((r.status, r.body.len()), (200, 4 << 20));

    // A download that outlasts the deadline streams to its end while its client keeps taking
    // it: once the head is out, each chunk the client takes renews the app's 2 s, as Heroku's
    // rolling window does. This client takes 32 MiB at about 4 MiB/s, some 8 s, more than
    // socket buffers could hold for it early.
    let (status, got) = slow_download(
        port,
        h,
        "/huge?mib=32",
        128 << 10,
        Duration::from_millis(30),
    )?;
    assert_eq!(
        (status, got),
        (200, 32 << 20),
        "{}",
        s.logs()
            .lines()
            .filter(|l| l.contains("/huge"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Clients ask for 256 MiB each and read nothing until the eco dyno's 10 slots are full
    // (the capacity answer), and the host holds no more than socket buffers' worth of their
    // bodies. A burst of twelve can find a slot still taken by the request before (its guest
    // ends a moment after its client has read everything); those turned away do not ask
    // again, so more come until the dyno is full.
    let before = s.rss_bytes().context("platform RSS")?;
    let stall = || -> Result<std::net::TcpStream> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.write_all(format!("GET /huge HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes())?;
        Ok(c)
    };
    let mut stalled: Vec<std::net::TcpStream> = (0..12).map(|_| stall()).collect::<Result<_>>()?;
    // Then, past the 2 s deadline that stops the parked guests, it serves again while those
    // clients are still connected and silent.
    let mut seen = Vec::new();
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut full = false;
    let mut freed = false;
    while Instant::now() < deadline && !freed {
        peak = peak.max(s.rss_bytes().unwrap_or(0));
        let answer = s.request(h, "GET", "/ok", None)?;
        if answer.0 == 503 && answer.1.contains("capacity") {
            full = true;
        } else if full && answer == (200, "ok\n".into()) {
            freed = true;
        } else if !full && stalled.len() < 40 {
            stalled.push(stall()?);
        }
        seen.push(answer.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        full,
        "the stalled clients never filled the dyno: {seen:?}\n{}",
        s.logs()
            .lines()
            .filter(|l| l.contains("/huge"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(freed, "the dyno stayed full: {seen:?}");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 96 << 20,
        "the host held {} MiB of bodies nobody read",
        grown >> 20
    );
    drop(stalled);

    // 32 MiB sent to a route that never reads it: the app's answer arrives, the router stops
    // the upload, and the dyno serves on.
    let conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    let host = h.to_owned();
    let upload = std::thread::spawn(move || -> std::io::Result<usize> {
        let length = 32usize << 20;
        writer.write_all(
            format!(
                "POST /ignore-body HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let chunk = vec![b'b'; 64 << 10];
        let mut sent = 0;
        while sent < length {
            // The router hangs up once the app has answered: the rest is refused.
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        Ok(sent)
    });
    let r = read_response(conn)?;
    assert_eq!((r.status, r.body.as_str()), (200, "ignored\n"));
    let _ = upload.join();
    assert_eq!(s.request(h, "GET", "/ok", None)?, (200, "ok\n".into()));

    // A guest waiting for a body its client stopped sending is parked on a host call, where
    // no epoch tick reaches it: the app's deadline (2 s) still ends the request.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(
        format!(
            "POST /body HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\nContent-Length: 1000\r\n\r\nonly ten.."
        )
        .as_bytes(),
    )?;
    let r = read_response(conn)?;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("Request timeout"), "{r:?}");
    assert_eq!(s.request(h, "GET", "/ok", None)?, (200, "ok\n".into()));

    // A body declared over the app's limit (100 MiB) is refused before any of it is read.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(
        format!(
            "POST /ignore-body HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            200u64 << 20
        )
        .as_bytes(),
    )?;
    let r = read_response(conn)?;
    assert_eq!(r.status, 413, "{r:?}");
    Ok(())
}
