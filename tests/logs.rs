//! End-to-end tests of `skiff logs` and log drains against a real `skiff up`: a pushed app's
//! own output, router lines, build output and platform events, read back recent, filtered and
//! live, and delivered to a syslog drain listening in the test.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;

/// A `skiff logs --tail` child whose stdout lines arrive on a channel; killed on drop.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tail {
    fn start(s: &Skiff, cwd: &Path, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        s.env(&mut cmd);
        let mut child = cmd
            .current_dir(cwd)
            .args(["logs", "--tail"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("tail stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits (bounded) for a line satisfying `want`, among those printed so far or next;
    /// the app's and the router's lines for one request come in either order.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> Result<String> {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return Ok(line.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                bail!(
                    "the tail never printed {what}; it printed:\n{:#?}",
                    self.seen
                );
            };
            self.seen.push(line.clone());
            if want(&line) {
                return Ok(line);
            }
        }
    }

    /// Waits (bounded) for the tail process to end on its own.
    fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the tail did not end when the platform stopped")
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `2026-11-28T12:00:00.000000+00:00 app[web.1]: message`
fn is_heroku_line(line: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else {
        return false;
    };
    time.len() == 32
        && time.as_bytes()[10] == b'T'
        && time.ends_with("+00:00")
        && rest.contains("]: ")
        && (rest.starts_with("app[") || rest.starts_with("skiff["))
}

fn stdout_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Splits octet-counted syslog frames (`LEN SP MSG`); an incomplete last frame is left out.
fn syslog_frames(mut data: &[u8]) -> Result<Vec<String>> {
    let mut frames = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .context("frame without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])?.parse()?;
        let rest = &data[space + 1..];
        if rest.len() < len {
            break;
        }
        frames.push(String::from_utf8(rest[..len].to_vec())?);
        data = &rest[len..];
    }
    Ok(frames)
}

/// A syslog drain: accepts connections one after another and keeps every byte received.
fn syslog_listener() -> Result<(String, Arc<Mutex<Vec<u8>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("syslog+tcp://127.0.0.1:{}", listener.local_addr()?.port());
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        }
    });
    Ok((url, received))
}

#[test]
fn logs_tail_filters_and_drains() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&repo, &["apps:create", "hello"])?)?;

    // Drains: HTTPS is refused with a reason; a syslog drain added before the push gets
    // everything from the build on.
    let out = s.cli(&repo, &["drains:add", "https://logs.example.test/"])?;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{out:?}"
    );
    let (drain_url, received) = syslog_listener()?;
    ok(s.cli(&repo, &["drains:add", &drain_url])?)?;
    let out = ok(s.cli(&repo, &["drains"])?)?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&drain_url),
        "{out:?}"
    );

    let (pushed, output) = s.commit_and_push(&repo, "first")?;
    assert!(pushed, "push failed:\n{output}\n{}", s.logs());

    // A live tail sees a request's router line and the app's own line for it.
    let mut tail = Tail::start(&s, &repo, &["-n", "1"])?;
    // The one recent line shows the tail is connected (and so subscribed).
    let first = tail.wait_for("a recent line", |_| true)?;
    assert!(is_heroku_line(&first), "{first}");
    let host = format!("hello.localhost:{}", s.http_port);
    let (status, body) = s.request(&host, "GET", "/logs-probe", None)?;
    assert_eq!((status, body.as_str()), (404, "not found\n"));
    let router = tail.wait_for("the probe's router line", |l| {
        l.contains(" skiff[router]: at=info method=GET path=\"/logs-probe\"")
    })?;
    assert!(is_heroku_line(&router), "{router}");
    assert!(router.contains(" host=hello.localhost "), "{router}");
    assert!(router.contains(" dyno=web.1 "), "{router}");
    assert!(router.contains(" status=404 "), "{router}");
    let app = tail.wait_for("the app's line", |l| {
        l.ends_with(" app[web.1]: GET /logs-probe")
    })?;
    assert!(is_heroku_line(&app), "{app}");
    drop(tail);

    // Recent lines, filtered by source.
    for _ in 0..6 {
        assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);
    }
    let out = ok(s.cli(&repo, &["logs", "-n", "5", "--source", "router"])?)?;
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for line in &lines {
        assert!(is_heroku_line(line), "{line}");
        assert!(line.contains(" skiff[router]: at=info "), "{lines:#?}");
    }

    let out = ok(s.cli(&repo, &["logs", "-n", "1500", "--source", "build"])?)?;
    let lines = stdout_lines(&out);
    assert!(
        lines.iter().all(|l| l.contains(" skiff[build]: ")),
        "{lines:#?}"
    );
    for expected in ["-----> Rust app detected", "Launching... done, v1"] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "no {expected:?} in {lines:#?}"
        );
    }

    let out = ok(s.cli(&repo, &["logs", "--source", "platform"])?)?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" skiff[api]: Release v1 created by "),
        "{text}"
    );
    assert!(
        text.contains(" skiff[web.1]: State changed from starting to up"),
        "{text}"
    );

    let out = ok(s.cli(&repo, &["logs", "--dyno", "web.1", "-n", "1500"])?)?;
    let lines = stdout_lines(&out);
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l.contains("[web.1]: ")), "{lines:#?}");

    // The drain got the same lines as RFC 5424 syslog with octet counting.
    let deadline = Instant::now() + Duration::from_secs(60);
    let frames = loop {
        let data = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let frames = syslog_frames(&data)?;
        let done = frames.iter().any(|f| f.contains("path=\"/logs-probe\""))
            && frames.iter().any(|f| f.ends_with(" GET /logs-probe"));
        if done {
            break frames;
        }
        if Instant::now() > deadline {
            bail!("the drain did not get the probe's lines; it got:\n{frames:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |needle: &str| frames.iter().find(|f| f.contains(needle)).cloned();
    let router = find("path=\"/logs-probe\"").context("router frame")?;
    assert!(router.starts_with("<190>1 "), "{router}");
    assert!(
        router.contains(" hello skiff router - - at=info method=GET"),
        "{router}"
    );
    let app = find(" GET /logs-probe").context("app frame")?;
    assert!(app.starts_with("<14>1 "), "{app}");
    assert!(
        app.ends_with(" hello app web.1 - - GET /logs-probe"),
        "{app}"
    );
    assert!(find("Release v1 created by").is_some(), "{frames:#?}");
    assert!(find("-----> Rust app detected").is_some(), "{frames:#?}");

    ok(s.cli(&repo, &["drains:remove", &drain_url])?)?;
    let out = ok(s.cli(&repo, &["drains"])?)?;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&drain_url),
        "{out:?}"
    );

    // Errors: an unknown app, an unknown source.
    let out = s.cli(&repo, &["logs", "-a", "nope"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Couldn't find that app"),
        "{out:?}"
    );
    let out = s.cli(&repo, &["logs", "--source", "kernel"])?;
    assert!(!out.status.success());

    // An open tail does not hold the platform up: Ctrl-C stops both.
    let mut tail = Tail::start(&s, &repo, &["-n", "1"])?;
    tail.wait_for("a recent line", |_| true)?;
    s.stop()?;
    tail.wait_exit()?;
    Ok(())
}
