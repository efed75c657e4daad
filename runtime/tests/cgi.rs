//! The CGI executor with a real guest: a std-only Rust program compiled for wasm32-wasip2 (a
//! `wasi:cli/run` command), served by a web dyno over a real loopback socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use skiff_runtime::{
    DynoHandle, DynoSpec, Limits, LogSink, OutboundPolicy, Runtime, RuntimeConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Builds the guest once per test run.
fn guest() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/cgi.rs");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cgi-guest.wasm");
            let status = std::process::Command::new("rustc")
                .args(["--edition", "2024", "-O", "--target", "wasm32-wasip2", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .map_err(|e| format!("running rustc: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "rustc failed ({status}); is the wasm32-wasip2 target installed?"
                ));
            }
            Ok(out)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl LogSink for Lines {
    fn line(&self, _app: &str, _dyno: &str, text: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text.to_owned());
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Dyno {
    handle: DynoHandle,
    /// Kept alive: its epoch ticker enforces the deadlines.
    _runtime: Runtime,
    logs: Arc<Lines>,
    _dir: tempfile::TempDir,
}

async fn start(limits: Limits) -> Result<Dyno> {
    let wasm = guest()?;
    let dir = tempfile::tempdir()?;
    let app = dir.path().join("app");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&app)?;
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(app.join("hello.txt"), "from the slug")?;
    let runtime = Runtime::new(RuntimeConfig::new(dir.path().join("cache")))?;
    let component = tokio::task::spawn_blocking({
        let runtime = runtime.clone();
        move || runtime.load_cgi("cgi-test", &wasm)
    })
    .await??;
    ensure!(component.is_cgi());
    let logs = Arc::new(Lines::default());
    let handle = runtime
        .start_web_dyno(DynoSpec {
            app: "cgi-test".into(),
            name: "web.1".into(),
            release: 1,
            component,
            env: vec![
                ("GREETING".into(), "ahoy".into()),
                // A config var may not pose as a CGI variable.
                ("REQUEST_METHOD".into(), "FAKE".into()),
            ],
            args: vec!["bin/cgi.wasm".into(), "--flag".into()],
            app_dir: app,
            tmp_dir: Some(tmp),
            limits,
            outbound: Arc::new(OutboundPolicy::Closed),
            log: logs.clone(),
        })
        .await?;
    Ok(Dyno {
        handle,
        _runtime: runtime,
        logs,
        _dir: dir,
    })
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        request_timeout: Duration::from_secs(3),
        concurrency: 8,
        ..Limits::default()
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body arrived whole (chunked framing ended properly).
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn request(addr: SocketAddr, raw: &[u8]) -> Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
        .await
        .context("no answer")??;
    parse(&buf)
}

async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: cgi-test.localhost:5000\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.7\r\nCookie: a=1\r\nCookie: b=2\r\nProxy: http://evil.invalid/\r\n\r\n"
    );
    request(addr, raw.as_bytes()).await
}

fn parse(buf: &[u8]) -> Result<Response> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header block")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no status line")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(raw)
    } else {
        (raw.to_vec(), true)
    };
    Ok(Response {
        status,
        headers,
        body,
        complete,
    })
}

fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(pos) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let Some(size) = std::str::from_utf8(&raw[..pos])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            return (out, false);
        };
        raw = &raw[pos + 2..];
        if size == 0 {
            return (out, true);
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_variables_and_responses() -> Result<()> {
    let dyno = start(limits()).await?;
    let addr = dyno.handle.addr;

    let env = get(addr, "/env?x=1&y=two").await?;
    ensure!(env.status == 200, "{env:?}");
    let text = env.text();
    for expected in [
        "GATEWAY_INTERFACE=CGI/1.1",
        "SERVER_PROTOCOL=HTTP/1.1",
        "SERVER_NAME=cgi-test.localhost",
        "SERVER_PORT=5000",
        "REQUEST_METHOD=GET",
        "REQUEST_URI=/env?x=1&y=two",
        "SCRIPT_NAME=\n",
        "PATH_INFO=/env\n",
        "QUERY_STRING=x=1&y=two",
        "REMOTE_ADDR=198.51.100.7",
        "HTTP_HOST=cgi-test.localhost:5000",
        "HTTP_COOKIE=a=1; b=2",
        "GREETING=ahoy",
        "ARGV=bin/cgi.wasm --flag",
        "SERVER_SOFTWARE=Skiff/",
    ] {
        ensure!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    ensure!(!text.contains("FAKE"), "{text}");
    ensure!(!text.contains("HTTP_PROXY"), "{text}");
    ensure!(!text.contains("CONTENT_LENGTH"), "{text}");
    ensure!(env.header("content-type") == Some("text/plain"), "{env:?}");

    // A 404 from the program is the program's answer, not a failure.
    let missing = get(addr, "/env/a%20b").await?;
    ensure!(
        missing.status == 404 && missing.text() == "no route",
        "{missing:?}"
    );

    let created = get(addr, "/status").await?;
    ensure!(created.status == 201, "{created:?}");
    ensure!(created.header("x-custom") == Some("yes"), "{created:?}");
    ensure!(created.header("status").is_none(), "{created:?}");
    ensure!(created.text() == "created", "{created:?}");

    let moved = get(addr, "/redirect").await?;
    ensure!(moved.status == 302, "{moved:?}");
    ensure!(
        moved.header("location") == Some("http://example.invalid/next"),
        "{moved:?}"
    );

    // Body in, body out: 1 MiB with a Content-Length streams through the 64 KiB pipes.
    let body = vec![b'z'; 1 << 20];
    let mut raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let echoed = request(addr, &raw).await?;
    ensure!(echoed.status == 200, "{}", echoed.status);
    ensure!(echoed.body == body, "echoed {} bytes", echoed.body.len());

    // A chunked request body is given a CONTENT_LENGTH, as CGI requires.
    let raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let echoed = request(addr, raw).await?;
    ensure!(echoed.text() == "hello world", "{echoed:?}");

    let big = get(addr, "/big").await?;
    ensure!(
        big.complete && big.body.len() == 1 << 20,
        "{}",
        big.body.len()
    );

    let files = get(addr, "/files").await?;
    ensure!(
        files.text() == "written to tmp|from the slug|app read-only: true",
        "{files:?}"
    );

    let logged = get(addr, "/stderr").await?;
    ensure!(logged.text() == "logged", "{logged:?}");
    let lines = dyno.logs.all();
    ensure!(
        lines.iter().any(|l| l == "a line for the logs"),
        "{lines:?}"
    );
    let long: Vec<usize> = lines
        .iter()
        .filter(|l| l.starts_with('y'))
        .map(String::len)
        .collect();
    ensure!(
        long == [skiff_core::text::MAX_LOG_LINE_BYTES],
        "the long line reached the sink as {long:?} bytes"
    );
    dyno.handle.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_failures_have_codes() -> Result<()> {
    let dyno = start(limits()).await?;
    let addr = dyno.handle.addr;
    for (path, status, code) in [
        ("/malformed", 502, "H17"),
        ("/silent", 502, "H17"),
        ("/exit3", 500, "H10"),
        ("/panic", 500, "H10"),
        ("/memory", 500, "R15"),
        ("/spin", 503, "H12"),
    ] {
        let resp = get(addr, path).await?;
        ensure!(
            resp.status == status && resp.header("skiff-error") == Some(code),
            "{path}: {resp:?}"
        );
    }
    let logs = dyno.logs.all();
    for expected in [
        "Error H17 (Bad response: the app's answer is not a well-formed CGI response) on GET /malformed: CGI header line 1 has no colon",
        "Error H10",
        "Error R15",
        "Error H12",
    ] {
        ensure!(
            logs.iter().any(|l| l.starts_with(expected)),
            "missing {expected:?} in {logs:#?}"
        );
    }
    // Failures fail their own request only.
    let ok = get(addr, "/status").await?;
    ensure!(ok.status == 201, "{ok:?}");
    dyno.handle.stop();
    Ok(())
}

/// The body reaches the client while the program is still running: the program writes its
/// head and a first line, then computes until its deadline stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_bodies_stream() -> Result<()> {
    let dyno = start(limits()).await?;
    let mut stream = TcpStream::connect(dyno.handle.addr).await?;
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .context("no first line")??;
        if n == 0 {
            bail!(
                "connection closed before the first line: {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.windows(6).any(|w| w == b"first\n") {
            break;
        }
    }
    // The program never finishes on its own, so a buffering executor could only have answered
    // with the deadline's 503; a 200 with the first line means the body streamed. The deadline
    // then stops the program, and the body is cut rather than ended cleanly.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut seen))
        .await
        .context("the stream never ended")??;
    let resp = parse(&seen)?;
    ensure!(resp.status == 200 && !resp.complete, "{resp:?}");
    ensure!(resp.text() == "first\n", "{resp:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !dyno.logs.all().iter().any(|l| l.starts_with("Error H12")) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            dyno.logs.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dyno.handle.stop();
    Ok(())
}
