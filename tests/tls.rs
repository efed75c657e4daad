//! HTTPS through the router: certificates added with `skiff certs:add`, chosen by SNI, HTTP/2
//! by ALPN, Heroku's forwarding headers saying `https`, and certificates scoped to their app.
//! The client is the machine's `curl`; certificates come from the machine's `openssl`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;

/// The platform's head timeout here: short, for the checks of connections that never send
/// a head, yet long enough for a refused client's handshake and request on a slow machine.
const HEAD_TIMEOUT_SECS: u64 = 5;

/// A self-signed certificate and key for `names` (the first is also the CN).
fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (install the openssl package)")?;
    if !out.status.success() {
        bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

/// What curl saw: HTTP version, status and body; `None` when the TLS handshake failed.
struct Fetched {
    version: String,
    status: u16,
    body: String,
}

fn curl(s: &Skiff, host: &str, path: &str, ca: &Path, http2: bool) -> Result<Option<Fetched>> {
    let port = s.https_port;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version} %{http_code}"]);
    cmd.arg(if http2 { "--http2" } else { "--http1.1" });
    cmd.arg(format!("https://{host}:{port}{path}"));
    let out = cmd.output().context("running curl")?;
    if !out.status.success() {
        // 35: TLS handshake failed; 60: certificate not trusted for this host.
        return match out.status.code() {
            Some(35 | 51 | 60) => Ok(None),
            _ => bail!(
                "curl {host}{path}: {:?} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ),
        };
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').context("curl -w output")?;
    let (version, code) = tail.split_once(' ').context("curl -w output")?;
    Ok(Some(Fetched {
        version: version.to_owned(),
        status: code.parse()?,
        body: body.to_owned(),
    }))
}

#[test]
fn https_with_certs_sni_and_http2() -> Result<()> {
    let mut s = Skiff::create()?;
    // A head timeout and a per-client cap that the silent handshakes below can reach.
    let head_timeout = HEAD_TIMEOUT_SECS.to_string();
    s.boot_with(&[
        "--head-timeout-secs",
        &head_timeout,
        "--max-connections-per-client",
        "12",
    ])?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&repo, &["apps:create", "tls-a"])?)?;
    let (pushed, output) = s.commit_and_push(&repo, "first")?;
    assert!(pushed, "push failed:\n{output}");
    ok(s.cli(&repo, &["domains:add", "www.tls-a.test"])?)?;
    let certs = work.path();

    // No certificate yet: the handshake fails, and plain HTTP is unaffected.
    let (ca_a, key_a) = self_signed(certs, "a", &["www.tls-a.test"])?;
    assert!(curl(&s, "www.tls-a.test", "/", &ca_a, true)?.is_none());
    let out = stdout(&ok(s.cli(&repo, &["certs"])?)?);
    assert!(out.contains("no SSL certificates"), "{out}");

    // A certificate for none of the app's hosts is refused with the reason.
    let (stray, stray_key) = self_signed(certs, "stray", &["elsewhere.test"])?;
    let out = s.cli(&repo, &["certs:add", path(&stray), path(&stray_key)])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("none of tls-a's hosts"),
        "{}",
        stderr(&out)
    );
    // A key that does not belong to the certificate is refused.
    let out = s.cli(&repo, &["certs:add", path(&ca_a), path(&stray_key)])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));

    let out = stdout(&ok(
        s.cli(&repo, &["certs:add", path(&ca_a), path(&key_a)])?
    )?);
    assert!(out.contains("www.tls-a.test"), "{out}");
    let listed = stdout(&ok(s.cli(&repo, &["certs"])?)?);
    assert!(listed.contains("www-tls-a-test"), "{listed}");

    // HTTP/2 by ALPN, HTTP/1.1 when asked; the app sees https and the HTTPS port.
    let h2 = curl(&s, "www.tls-a.test", "/", &ca_a, true)?.context("h2 handshake")?;
    assert_eq!((h2.version.as_str(), h2.status), ("2", 200));
    assert_eq!(h2.body.trim_end(), "Hello from Skiff!");
    let h1 = curl(&s, "www.tls-a.test", "/headers", &ca_a, false)?.context("h1 handshake")?;
    assert_eq!((h1.version.as_str(), h1.status), ("1.1", 200));
    let seen = h1.body.to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-port: {}", s.https_port)),
        "{seen}"
    );
    let h2 = curl(&s, "www.tls-a.test", "/headers", &ca_a, true)?.context("h2")?;
    let seen = h2.body.to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
    // A body over HTTP/2 reaches the app whole.
    let big = "x".repeat(200_000);
    let body_file = work.path().join("body");
    std::fs::write(&body_file, &big)?;
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(&ca_a)
        .arg("--resolve")
        .arg(format!("www.tls-a.test:{}:127.0.0.1", s.https_port))
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("https://www.tls-a.test:{}/echo", s.https_port))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), big.len());

    silent_handshakes(&s, &ca_a)?;
    idle_http2(&s)?;
    http2_connect(&s)?;
    unread_answers_hold_no_place(&s, &ca_a)?;

    // The router's line says how the request came.
    let logs = stdout(&ok(
        s.cli(&repo, &["logs", "--source", "router", "-n", "1500"])?
    )?);
    assert!(logs.contains("protocol=https"), "{logs}");

    // Another app cannot serve app A's domain, even with a certificate naming it.
    let repo_b = work.path().join("b");
    copy_tree(&repo, &repo_b)?;
    ok(s.cli(&repo_b, &["apps:create", "tls-b", "--remote", "b"])?)?;
    let (both, both_key) = self_signed(certs, "both", &["tls-b.localhost", "www.tls-a.test"])?;
    ok(s.cli(
        &repo_b,
        &["certs:add", path(&both), path(&both_key), "-a", "tls-b"],
    )?)?;
    let fetched = curl(&s, "www.tls-a.test", "/", &both, true)?;
    assert!(
        fetched.is_none(),
        "app B's certificate served app A's domain"
    );
    // A connection made for app A's host speaks for no other app: asking it for app B's
    // host (with another `Host`, or `:authority` over HTTP/2) gets 421, not app B.
    for http2 in [false, true] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca_a)
            .arg("--resolve")
            .arg(format!("www.tls-a.test:{}:127.0.0.1", s.https_port))
            .args(["-H", "Host: tls-b.localhost", "-w", "\n%{http_code}"])
            .arg(if http2 { "--http2" } else { "--http1.1" })
            .arg(format!("https://www.tls-a.test:{}/", s.https_port))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("\n421"), "http2 {http2}: {text}");
        assert!(text.contains("Misdirected"), "http2 {http2}: {text}");
    }

    // Certificates survive a restart; removing one stops HTTPS for its host. The restart
    // adds the platform's certificate for every app's default host.
    ok(s.cli(&repo_b, &["apps:create", "tls-c", "--remote", "c"])?)?;
    s.stop()?;
    let (every, every_key) = self_signed(certs, "every", &["*.localhost"])?;
    s.boot_with(&["--tls-cert", path(&every), "--tls-key", path(&every_key)])?;
    // That one certificate speaks for every default host that has no certificate of its
    // app's, so a connection made for one app's may carry another's requests (app C has no
    // dynos: H14, from app C).
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "--resolve"])
        .arg(format!("tls-a.localhost:{}:127.0.0.1", s.https_port))
        .args(["-H", "Host: tls-c.localhost", "-w", "\n%{http_code}"])
        .arg(format!("https://tls-a.localhost:{}/", s.https_port))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n503") && text.contains("H14"), "{text}");
    let again = curl(&s, "www.tls-a.test", "/", &ca_a, true)?.context("after restart")?;
    assert_eq!(again.status, 200);
    let info = stdout(&ok(s.cli(&repo, &["certs:info"])?)?);
    assert!(info.contains("Serves:         www.tls-a.test"), "{info}");
    ok(s.cli(&repo, &["certs:remove"])?)?;
    assert!(curl(&s, "www.tls-a.test", "/", &ca_a, true)?.is_none());
    s.stop()?;
    Ok(())
}

/// Connections to the HTTPS port that never finish their handshake (half send nothing, half
/// the first bytes of a TLS record) count against the caps like any other, so they cannot
/// pile up unseen, and are closed at the head timeout.
fn silent_handshakes(s: &Skiff, ca: &Path) -> Result<()> {
    let mut silent = Vec::new();
    for i in 0..12 {
        let mut conn = TcpStream::connect(("127.0.0.1", s.https_port))?;
        if i % 2 == 1 {
            // A handshake record's header, and then nothing of the ClientHello it announces.
            conn.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])?;
        }
        silent.push(conn);
    }
    // The router sees a connection once it accepts it: give it the moment.
    std::thread::sleep(Duration::from_millis(300));
    // The address is at its cap: HTTPS and plain HTTP both get the router's 503.
    let refused = curl(s, "www.tls-a.test", "/", ca, false)?.context("refusal over TLS")?;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("connections"), "{}", refused.body);
    let plain = http_full(s.http_port, "tls-a.localhost", "GET", "/", None, &[])?;
    assert_eq!(plain.status, 503, "{plain:?}");
    // An HTTP/2 client is told in HTTP/2's terms: a GOAWAY with the reason.
    let seen = h2_answer(h2_client(s, &[], Stdio::piped())?, |_| false)?;
    // SETTINGS (9 bytes), then GOAWAY: type 7, no stream processed, ENHANCE_YOUR_CALM.
    let goaway = seen.get(9..).unwrap_or_default();
    assert_eq!(goaway.get(3), Some(&7), "{seen:?}");
    assert_eq!(goaway.get(13..17), Some(&[0, 0, 0, 0xb][..]), "{seen:?}");
    assert!(
        String::from_utf8_lossy(&seen).contains("too many connections from this address"),
        "{seen:?}"
    );
    // Each is closed at the head timeout, never answered.
    for conn in &mut silent {
        conn.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => bail!("a silent handshake got {n} bytes: {:?}", &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => bail!("a silent handshake was not closed: {e}"),
        }
    }
    drop(silent);
    // Their places are free again.
    let fetched = curl(s, "www.tls-a.test", "/", ca, true)?.context("after the cut")?;
    assert_eq!(fetched.status, 200);
    Ok(())
}

/// HTTP/2 connections and streams that hold nothing are let go: a connection that never sends
/// the client preface at the head timeout; one that sends it and opens no stream at the
/// client timeout (30 s, as a kept-alive HTTP/1 connection); and a stream whose answer (the
/// router's page for an unknown host) cannot be sent because the client grants no window is
/// reset at the write bound (the client timeout too). Frames a client gets wrong (PING acks
/// nobody asked for) cost no log lines.
fn idle_http2(s: &Skiff) -> Result<()> {
    // A PING frame with the ACK flag, answering nothing.
    const PING_ACK: &[u8] = &[0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let host = b"nobody.localhost";
    // HEADERS on stream 1, END_STREAM | END_HEADERS: `GET https://nobody.localhost/` in HPACK
    // (static-table :method GET, :scheme https, :path /, then :authority as a literal).
    let mut headers = vec![0, 0, (5 + host.len()) as u8, 1, 5, 0, 0, 0, 1];
    headers.extend_from_slice(&[0x82, 0x87, 0x84, 0x41, host.len() as u8]);
    headers.extend_from_slice(host);
    let mut pings = Vec::new();
    for _ in 0..200 {
        pings.extend_from_slice(PING_ACK);
    }
    // What each sends, and the least time it must be kept (the limits less a margin).
    let cases = [
        ("no preface", Vec::new(), HEAD_TIMEOUT_SECS - 1),
        ("no stream", [PREFACE, SETTINGS, &pings].concat(), 29),
        ("no window", [PREFACE, NO_WINDOW, &headers].concat(), 29),
    ];
    let started = Instant::now();
    let mut waits = Vec::new();
    for (what, sends, least) in cases {
        let (mut client, stdin) = h2_client(s, &sends, Stdio::piped())?;
        let stdout = client.stdout.take().context("s_client's stdout")?;
        // Reads the server's frames until stream 1 is reset or the connection closes.
        let waiter = std::thread::spawn(move || -> (Duration, &'static str) {
            let mut stdout = stdout;
            let mut header = [0u8; 9];
            loop {
                if stdout.read_exact(&mut header).is_err() {
                    return (started.elapsed(), "closed");
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                let mut payload = vec![0u8; len];
                if stdout.read_exact(&mut payload).is_err() {
                    return (started.elapsed(), "closed");
                }
                if header[3] == 3 && stream == 1 {
                    return (started.elapsed(), "reset");
                }
            }
        });
        waits.push((what, least, client, stdin, waiter));
    }
    let deadline = started + Duration::from_secs(60);
    for (what, least, mut client, stdin, waiter) in waits {
        while !waiter.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = waiter.is_finished();
        let _ = client.kill();
        let _ = client.wait();
        drop(stdin);
        assert!(done, "an HTTP/2 connection with {what} was kept open");
        let (after, how) = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("frame reader panicked"))?;
        assert!(
            after >= Duration::from_secs(least),
            "an HTTP/2 connection with {what} was {how} after only {after:?}"
        );
    }
    // What clients do is not the platform's error.
    let log = s.logs();
    assert!(!log.contains("H2 handshake error"), "{log}");
    assert!(!log.contains("PING ack"), "{log}");
    Ok(())
}

/// One HTTP/2 connection granting no window, with more requests open than the app's bound
/// on requests in flight (50 a dyno), cannot keep the app from others: each request's place
/// goes back once the dyno has answered, not when the client reads the answer.
fn unread_answers_hold_no_place(s: &Skiff, ca: &Path) -> Result<()> {
    let authority = b"www.tls-a.test";
    let mut sends = [PREFACE, NO_WINDOW].concat();
    for stream in (1u8..=119).step_by(2) {
        // HEADERS, END_STREAM | END_HEADERS: GET https://www.tls-a.test/ (the authority a
        // literal not indexed, so every block stands alone).
        let mut block = vec![0x82, 0x87, 0x84, 0x01, authority.len() as u8];
        block.extend_from_slice(authority);
        sends.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, stream]);
        sends.extend_from_slice(&block);
    }
    let (mut client, stdin) = h2_client(s, &sends, Stdio::null())?;
    // The dyno answers the 60 at once; their answers wait on a window that never opens.
    std::thread::sleep(Duration::from_secs(2));
    let fetched = curl(s, "www.tls-a.test", "/", ca, false);
    let _ = client.kill();
    let _ = client.wait();
    drop(stdin);
    let fetched = fetched?.context("handshake")?;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    Ok(())
}

/// An HTTP/2 CONNECT gets the router's own 405 page (its text is in the DATA frame, which
/// HPACK leaves as it is), not Pingora's empty one.
fn http2_connect(s: &Skiff) -> Result<()> {
    let authority = b"www.tls-a.test:443";
    // HEADERS on stream 1, END_HEADERS: `:method CONNECT` and `:authority` as literals.
    let mut block = vec![0x42, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x41, authority.len() as u8]);
    block.extend_from_slice(authority);
    let mut headers = vec![0, 0, block.len() as u8, 1, 4, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    let sends = [PREFACE, SETTINGS, &headers].concat();
    let seen = h2_answer(h2_client(s, &sends, Stdio::piped())?, |seen| {
        String::from_utf8_lossy(seen).contains("</html>")
    })?;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("This method is not supported here."),
        "{text:?}"
    );
    Ok(())
}

/// The client's connection preface, which opens every HTTP/2 connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: the client's half of the connection preface.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may send the client any data.
const NO_WINDOW: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0];

/// `openssl s_client` speaking HTTP/2 (ALPN h2) to the HTTPS port, for www.tls-a.test, having
/// sent `sends`; `-quiet` keeps the connection open until the server closes it.
fn h2_client(s: &Skiff, sends: &[u8], stdout: Stdio) -> Result<(Child, ChildStdin)> {
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "h2"])
        .args(["-servername", "www.tls-a.test", "-connect"])
        .arg(format!("127.0.0.1:{}", s.https_port))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .context("running openssl s_client")?;
    let mut stdin = client.stdin.take().context("s_client's stdin")?;
    stdin.write_all(sends)?;
    stdin.flush()?;
    Ok((client, stdin))
}

/// What the server sent an [`h2_client`], read until `enough` says so, the server closes, or
/// 15 s pass; the client is stopped then.
fn h2_answer(
    (mut client, stdin): (Child, ChildStdin),
    enough: fn(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    let mut stdout = client.stdout.take().context("s_client's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if enough(&seen) {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = client.kill();
    let _ = client.wait();
    drop(stdin);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
