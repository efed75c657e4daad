//! The harness shared by the end-to-end tests: a real `skiff up` on free loopback ports with
//! its own data dir and `HOME`, the real `git` client, and plain HTTP through the router.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `skiff up` process with its own data dir, home and ports; stopped on drop.
pub struct Skiff {
    /// Scratch space owned by the test.
    pub dir: tempfile::TempDir,
    /// API and git port.
    pub api_port: u16,
    /// Router port.
    pub http_port: u16,
    /// Router HTTPS port.
    pub https_port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Whether `skiff up` has come up once: until then its ports may still change.
    booted: bool,
}

impl Skiff {
    pub fn start() -> Result<Self> {
        let mut s = Self::create()?;
        s.boot()?;
        Ok(s)
    }

    /// The scratch dir and ports, without starting the platform, for tests that prepare the
    /// data dir first (e.g. mount something in it).
    pub fn create() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        Ok(Self {
            log: dir.path().join("skiff.log"),
            dir,
            api_port: free_port()?,
            http_port: free_port()?,
            https_port: free_port()?,
            child: None,
            booted: false,
        })
    }

    /// The platform's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Environment for every process of the test: its own HOME, but the machine's Rust
    /// toolchain and cargo registry cache (which live under the real HOME by default).
    pub fn env(&self, cmd: &mut Command) {
        let real_home = std::env::var("HOME").unwrap_or_default();
        let cargo_home =
            std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
        let rustup_home =
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
        cmd.env("HOME", self.home())
            .env("CARGO_HOME", cargo_home)
            .env("RUSTUP_HOME", rustup_home)
            // Toolchains that buildpacks install are shared by every test, as by every app on
            // one machine, so each is downloaded once per checkout.
            .env(
                "SKIFF_TOOLCHAINS_DIR",
                repo_root().join("target").join("test-toolchains"),
            )
            .env("SKIFF_API_URL", self.api())
            .env_remove("SKIFF_API_TOKEN")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1");
    }

    pub fn boot(&mut self) -> Result<()> {
        self.boot_with(&[])
    }

    /// Starts `skiff up` with extra flags.
    ///
    /// Ports are picked before the platform binds them, so a test running alongside may take
    /// one in between: then this platform exits (or never says it is up) while the other
    /// answers on the port. Readiness is therefore this process's own "Skiff is up." line, not
    /// a port that accepts, and a first boot that loses a port tries again on fresh ones.
    pub fn boot_with(&mut self, extra: &[&str]) -> Result<()> {
        // Before the first start (even with a data dir the test prepared) nothing has recorded
        // the ports yet, so a lost one can be swapped for another.
        let first_boot = !self.booted;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_boot(extra)? {
                true => {
                    self.booted = true;
                    return Ok(());
                }
                false if first_boot && attempt < 4 => {
                    self.api_port = free_port()?;
                    self.http_port = free_port()?;
                    self.https_port = free_port()?;
                }
                false => bail!(
                    "skiff up lost its ports to another process:\n{}",
                    self.logs()
                ),
            }
        }
    }

    /// One start: `Ok(false)` when the platform could not bind its ports.
    fn try_boot(&mut self, extra: &[&str]) -> Result<bool> {
        let ups_before = self.logs().matches("Skiff is up.").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(SKIFF);
        self.env(&mut cmd);
        // As operators often run it: errors that capture backtraces then do, and a log line
        // that carries one must show in the tests (a client's hang-up once logged 35 KB).
        cmd.env("RUST_BACKTRACE", "1");
        cmd.args(["up", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--api-port", &self.api_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--https-port", &self.https_port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut up_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let logs = self.logs();
                if logs.contains("in use") {
                    return Ok(false);
                }
                bail!("skiff up exited with {status}:\n{logs}");
            }
            let up = self.logs().matches("Skiff is up.").count() > ups_before;
            let api = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.api_port))).is_ok();
            let router =
                TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.http_port))).is_ok();
            if up && api && router {
                // The router binds on its own thread: a lost router port shows as an exit
                // shortly after the API is up.
                match up_since {
                    Some(t) if t.elapsed() >= Duration::from_millis(300) => return Ok(true),
                    Some(_) => {}
                    None => up_since = Some(Instant::now()),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("skiff up did not start:\n{}", self.logs())
    }

    /// Stops the platform the way a user does (Ctrl-C) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait()? {
                    ensure!(
                        status.success(),
                        "skiff up exited with {status} on Ctrl-C:\n{}",
                        self.logs()
                    );
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("skiff up did not stop on Ctrl-C:\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills the platform with SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Runs the CLI as another user: its own HOME and an explicit token.
    pub fn cli_as(&self, token: &str, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(SKIFF);
        self.env(&mut cmd);
        let home = self
            .dir
            .path()
            .join(format!("home-{}", &token[..8.min(token.len())]));
        std::fs::create_dir_all(&home)?;
        Ok(cmd
            .current_dir(cwd)
            .env("HOME", home)
            .env("SKIFF_API_TOKEN", token)
            .args(args)
            .output()?)
    }

    /// A git command with the platform's environment, not yet started.
    pub fn git_command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        cmd.current_dir(cwd)
            .args([
                "-c",
                "user.name=Skiff Test",
                "-c",
                "user.email=test@skiff.invalid",
            ])
            .args(args);
        cmd
    }

    /// The platform process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The platform process's resident memory in bytes, from `/proc`.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the skiff CLI in `cwd`.
    pub fn cli(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(SKIFF);
        self.env(&mut cmd);
        Ok(cmd.current_dir(cwd).args(args).output()?)
    }

    /// Runs git in `cwd`.
    pub fn git(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        Ok(cmd
            .current_dir(cwd)
            .args([
                "-c",
                "user.name=Skiff Test",
                "-c",
                "user.email=test@skiff.invalid",
            ])
            .args(args)
            .output()?)
    }

    /// `git add -A && git commit && git push skiff main`; returns (success, combined output).
    pub fn commit_and_push(&self, repo: &Path, message: &str) -> Result<(bool, String)> {
        ok(self.git(repo, &["add", "--all"])?)?;
        ok(self.git(repo, &["commit", "--quiet", "--allow-empty", "-m", message])?)?;
        let out = self.git(repo, &["push", "skiff", "main"])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// GET (or POST with a body) through the router with a `Host` header, like curl -H.
    pub fn request(
        &self,
        host: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        http(self.http_port, host, method, path, body, &[])
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 exchange over a loopback socket, so the `Host` header is exactly what a
/// client like curl sends for `http://<app>.localhost:<port>/`.
pub fn http(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    http_full(port, host, method, path, body, headers).map(|r| (r.status, r.body))
}

pub fn dechunk(mut raw: &[u8]) -> Result<String> {
    let mut out = Vec::new();
    loop {
        let pos = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..pos])?.trim(), 16)?;
        raw = &raw[pos + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
    Ok(String::from_utf8(out)?)
}

pub fn ok(out: Output) -> Result<Output> {
    ensure!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A fresh git repository holding a copy of examples/rust-hello.
pub fn rust_hello_repo(s: &Skiff, parent: &Path) -> Result<PathBuf> {
    let repo = parent.join("rust-hello");
    copy_tree(&repo_root().join("examples/rust-hello"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    Ok(repo)
}

pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == "target" {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

pub fn set_greeting(repo: &Path, greeting: &str) -> Result<()> {
    let path = repo.join("src/main.rs");
    let src = std::fs::read_to_string(&path)?;
    let start = src
        .find("const GREETING: &str = \"")
        .context("greeting line")?;
    let end = start + src[start..].find(";\n").context("greeting end")?;
    let updated = format!(
        "{}const GREETING: &str = \"{greeting}\"{}",
        &src[..start],
        &src[end..]
    );
    std::fs::write(path, updated)?;
    Ok(())
}

/// Stdout of a command as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of a command as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A response as a client saw it, headers included (names lowercased, in order).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends `request` as is on a fresh loopback connection and reads the whole answer (the request
/// should say `Connection: close`). `read_timeout` bounds each read.
pub fn raw_exchange(port: u16, request: &[u8], read_timeout: Duration) -> Result<Response> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.write_all(request)?;
    read_response(stream)
}

/// Reads one response from a connection that the server closes after it.
pub fn read_response(stream: TcpStream) -> Result<Response> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no status in {status_line:?}"))?
        .parse()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut raw = Vec::new();
    match length {
        Some(n) if !chunked => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw)?;
        }
        _ => {
            reader.read_to_end(&mut raw)?;
        }
    }
    let body = if chunked {
        dechunk(&raw)?
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Like [`http`], but returns the response headers too.
pub fn http_full(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw_exchange(port, req.as_bytes(), Duration::from_secs(60))
}

// Helpers of the buildpack tests: push an example, check the routes every example answers.

pub fn example_repo(s: &Skiff, parent: &Path, example: &str) -> Result<PathBuf> {
    let repo = parent.join(example);
    copy_tree(&repo_root().join("examples").join(example), &repo)?;
    // A developer's local build output is not part of what they push.
    for local in ["target", ".cpcache", ".shadow-cljs", "out"] {
        let _ = std::fs::remove_dir_all(repo.join(local));
    }
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    Ok(repo)
}

/// Pushes and checks the push succeeded; returns the output and how long the push took.
pub fn push_timed(s: &Skiff, repo: &Path, message: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let (pushed, output) = s.commit_and_push(repo, message)?;
    let took = started.elapsed();
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    Ok((output, took))
}

/// The slug size from the push output's `Done: 1.2M` line.
pub fn slug_size(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("Done: ").nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

pub fn replace_in(path: &Path, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    ensure!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to))?;
    Ok(())
}

/// The routes every example answers: `/`, `/env/NAME`, `POST /echo` (of `echo`), `/json`, and a
/// 404. Returns the first request's latency.
pub fn check_example_routes(
    s: &Skiff,
    repo: &Path,
    app: &str,
    greeting: &str,
    echo: &str,
) -> Result<Duration> {
    let host = format!("{app}.localhost:{}", s.http_port);
    let started = Instant::now();
    let first = s.request(&host, "GET", "/", None)?;
    let latency = started.elapsed();
    ensure!(
        first == (200, format!("{greeting}\n")),
        "{first:?}\n{}",
        s.logs()
    );

    let (status, body) = s.request(&host, "GET", "/env/GREETING", None)?;
    ensure!(status == 404, "{status} {body}");
    let out = ok(s.cli(repo, &["config:set", "GREETING=ahoy"])?)?;
    ensure!(stderr(&out).contains("done, v2"), "{out:?}");
    let env = s.request(&host, "GET", "/env/GREETING", None)?;
    ensure!(env == (200, "ahoy".into()), "{env:?}");

    let echoed = http_full(
        s.http_port,
        &host,
        "POST",
        "/echo",
        Some(echo),
        &[("Content-Type", "text/x-test")],
    )?;
    ensure!(
        echoed.status == 200 && echoed.body == echo,
        "{} {:?}",
        echoed.status,
        &echoed.body[..echoed.body.len().min(200)]
    );
    ensure!(
        echoed.header("content-type") == Some("text/x-test"),
        "{echoed:?}"
    );

    let json = http_full(s.http_port, &host, "GET", "/json", None, &[])?;
    ensure!(json.status == 200, "{json:?}");
    ensure!(
        json.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{json:?}"
    );
    let value: serde_json::Value = serde_json::from_str(&json.body).context("json body")?;
    ensure!(value["app"] == app && value["method"] == "GET", "{value}");

    let missing = s.request(&host, "GET", "/nowhere", None)?;
    ensure!(missing.0 == 404, "{missing:?}");
    Ok(latency)
}
