//! What `skiff bench isolation` and `skiff bench load` share: a private `skiff up` child on
//! ports picked at run time, apps deployed to it through git, and a keep-alive HTTP client
//! that records every answer by status and Skiff error code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A `skiff up` child with its own data dir, home and ports; stopped on drop.
pub(crate) struct Host {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) api_port: u16,
    pub(crate) http_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Host {
    /// Starts `skiff up` (this same binary) with `extra` flags and waits for its ports.
    pub(crate) fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        let api_port = crate::bench_router::free_addr()?.port();
        let http_port = crate::bench_router::free_addr()?.port();
        let log = dir.path().join("skiff.log");
        let mut host = Self {
            dir,
            api_port,
            http_port,
            child: None,
            log,
        };
        let out = std::fs::File::create(&host.log)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        host.env(&mut cmd);
        cmd.args(["up", "--data-dir"])
            .arg(host.dir.path().join("data"))
            .args(["--api-port", &api_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(["--https-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        host.child = Some(cmd.spawn().context("starting skiff up")?);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        while Instant::now() < deadline {
            if TcpStream::connect(addr(api_port)).is_ok()
                && TcpStream::connect(addr(http_port)).is_ok()
            {
                return Ok(host);
            }
            if let Some(status) = host
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("skiff up exited with {status}:\n{}", host.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("skiff up did not start:\n{}", host.log_tail(30))
    }

    fn env(&self, cmd: &mut Command) {
        private_env(cmd, &self.dir.path().join("home"), self.api_port);
    }

    /// Whether the platform's log holds `needle` so far.
    pub(crate) fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|text| text.contains(needle))
    }

    /// The last `n` warnings and errors of the platform's own log (its folder goes away with
    /// it; the request lines would bury them).
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || !l.starts_with("20"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs the CLI in `cwd`; fails with its output unless it succeeds.
    pub(crate) fn cli(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(std::env::current_exe()?);
        self.env(&mut cmd);
        let out = cmd.current_dir(cwd).args(args).output()?;
        ensure!(
            out.status.success(),
            "skiff {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Runs git in `cwd`; fails with its output unless it succeeds.
    pub(crate) fn git(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        let out = cmd
            .current_dir(cwd)
            .args([
                "-c",
                "user.name=Skiff Bench",
                "-c",
                "user.email=bench@skiff.invalid",
            ])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "git {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// A git repository for `app` holding a prebuilt component as `bin/app.wasm`, built by a
    /// buildpack that takes the tree as it is: the deploy then costs no compiler.
    pub(crate) fn prebuilt_repo(&self, app: &str, component: &Path) -> Result<PathBuf> {
        let buildpack = self.dir.path().join("prebuilt-buildpack");
        if !buildpack.exists() {
            std::fs::create_dir_all(buildpack.join("bin"))?;
            for (name, script) in [
                ("detect", "#!/bin/sh\necho prebuilt\n"),
                ("compile", "#!/bin/sh\nexit 0\n"),
                ("release", "#!/bin/sh\necho '--- {}'\n"),
            ] {
                let path = buildpack.join("bin").join(name);
                std::fs::write(&path, script)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        let repo = self.dir.path().join("repos").join(app);
        std::fs::create_dir_all(repo.join("bin"))?;
        std::fs::copy(component, repo.join("bin/app.wasm"))
            .with_context(|| format!("copying {}", component.display()))?;
        std::fs::write(repo.join("Procfile"), "web: bin/app.wasm\n")?;
        std::fs::write(
            repo.join(".buildpacks"),
            format!("{}\n", buildpack.display()),
        )?;
        self.git(&repo, &["init", "--quiet", "--initial-branch=main"])?;
        Ok(repo)
    }

    /// A git repository for `app` holding a copy of the example `name` (a folder of
    /// `examples/`).
    pub(crate) fn example_repo(&self, app: &str, name: &str) -> Result<PathBuf> {
        let from = repo_root().join("examples").join(name);
        let repo = self.dir.path().join("repos").join(app);
        copy_tree(&from, &repo)?;
        self.git(&repo, &["init", "--quiet", "--initial-branch=main"])?;
        Ok(repo)
    }

    /// Creates the app (first time), sets `config`, commits everything and pushes.
    pub(crate) fn create_and_push(
        &self,
        repo: &Path,
        app: &str,
        config: &[&str],
    ) -> Result<Duration> {
        self.cli(repo, &["apps:create", app])?;
        if !config.is_empty() {
            let mut args = vec!["config:set"];
            args.extend_from_slice(config);
            self.cli(repo, &args)?;
        }
        self.push(repo, "deploy")
    }

    /// Commits everything in `repo` and pushes it; returns how long the push took.
    pub(crate) fn push(&self, repo: &Path, message: &str) -> Result<Duration> {
        self.git(repo, &["add", "--all"])?;
        self.git(repo, &["commit", "--quiet", "--allow-empty", "-m", message])?;
        let started = Instant::now();
        self.git(repo, &["push", "--quiet", "skiff", "main"])?;
        Ok(started.elapsed())
    }

    /// The platform's resident memory, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
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

    pub(crate) fn router(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ctrl-C first, so the platform stops its dynos and its own PostgreSQL, if any.
            interrupt(&mut child, Duration::from_secs(15));
        }
    }
}

/// The environment of every process a bench's private platform runs (`skiff up`, the CLI,
/// git): a private HOME, where `skiff up` writes the token for the CLI and git, so the
/// user's own is never read or overwritten; the machine's Rust toolchain, which lives under
/// the real HOME and which the Rust buildpack needs; the platform's API; no git prompts.
pub(crate) fn private_env(cmd: &mut Command, home: &Path, api_port: u16) {
    let real_home = std::env::var("HOME").unwrap_or_default();
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
    let rustup_home =
        std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
    cmd.env("HOME", home)
        .env("CARGO_HOME", cargo_home)
        .env("RUSTUP_HOME", rustup_home)
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{api_port}"))
        .env_remove("SKIFF_API_TOKEN")
        .env_remove("SKIFF_DATA_DIR")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1");
}

/// Sends `child` SIGINT (Ctrl-C) and waits up to `grace` for it to exit, then kills it.
pub(crate) fn interrupt(child: &mut std::process::Child, grace: Duration) {
    use rustix::process::{Pid, Signal, kill_process};
    let _ = kill_process(Pid::from_child(child), Signal::INT);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
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

/// Builds a guest crate of this repository for wasm32-wasip2 into target/bench-guest.
pub(crate) fn build_guest(crate_dir: &str, name: &str) -> Result<PathBuf> {
    let dir = repo_root().join(crate_dir);
    let target = repo_root().join("target/bench-guest");
    eprintln!("Building {crate_dir} for wasm32-wasip2...");
    let status = Command::new("cargo")
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "building {crate_dir} failed");
    Ok(target.join(format!("wasm32-wasip2/release/{name}.wasm")))
}

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// An HTTP answer: its status and the Skiff code it names, if any (`skiff-error` header
    /// of a dyno, or the `(H12)` of a router page).
    Answer(u16, Option<String>),
    /// No complete answer: connection refused, reset, closed early, or a timeout.
    Broken(String),
}

impl Outcome {
    pub(crate) fn label(&self) -> String {
        match self {
            Outcome::Answer(status, None) => status.to_string(),
            Outcome::Answer(status, Some(code)) => format!("{status} {code}"),
            Outcome::Broken(why) => format!("broken ({why})"),
        }
    }

    pub(crate) fn ok(&self) -> bool {
        matches!(self, Outcome::Answer(200, None))
    }

    /// An error the platform documents: a router or runtime code with its status.
    pub(crate) fn documented(&self) -> bool {
        const CODES: &[&str] = &[
            "H10", "H11", "H12", "H13", "H14", "H17", "H18", "H20", "H80", "H99", "R15", "R16",
        ];
        match self {
            Outcome::Answer(413, _) => true,
            Outcome::Answer(_, Some(code)) => CODES.contains(&code.as_str()),
            _ => false,
        }
    }
}

/// Answers counted by outcome.
pub(crate) type Counts = BTreeMap<Outcome, u64>;

pub(crate) fn add_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

pub(crate) fn describe_counts(counts: &Counts) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{}x{v}", k.label()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A keep-alive client connection to the router, reopened after any answer that closes it.
pub(crate) struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            conn: None,
            timeout,
        }
    }

    /// Sends one request (with `body`, if any) and reads the whole answer, discarding it.
    pub(crate) fn send(&mut self, host: &str, method: &str, path: &str, body: &[u8]) -> Outcome {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match self.connect() {
                Ok(c) => c,
                Err(e) => return Outcome::Broken(kind(&e)),
            },
        };
        match exchange(conn, host, method, path, body) {
            Ok((outcome, Some(conn))) => {
                self.conn = Some(conn);
                outcome
            }
            Ok((outcome, None)) => outcome,
            Err(e) => Outcome::Broken(kind(&e)),
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        Ok(BufReader::new(s))
    }
}

/// A short name for why an exchange broke.
fn kind(e: &anyhow::Error) -> String {
    match e.downcast_ref::<std::io::Error>() {
        Some(io) => format!("{:?}", io.kind()),
        None => {
            let text = e.to_string();
            text.split(':').next().unwrap_or(&text).to_owned()
        }
    }
}

type Exchanged = (Outcome, Option<BufReader<TcpStream>>);

fn exchange(
    mut conn: BufReader<TcpStream>,
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Exchanged> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: skiff-bench\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes())?;
    conn.get_mut().write_all(body)?;
    let response = read_response(&mut conn, 4096)?;
    let mut code = response.code;
    if code.is_none() && response.status >= 400 {
        code = page_code(&response.kept);
    }
    let outcome = Outcome::Answer(response.status, code);
    Ok((outcome, (!response.close).then_some(conn)))
}

/// One response as the benches' clients see it.
pub(crate) struct Response {
    pub(crate) status: u16,
    /// The router's `skiff-error` code, upper-cased.
    pub(crate) code: Option<String>,
    /// The server closes the connection after this response.
    pub(crate) close: bool,
    /// The start of the body, as much as the caller asked to keep.
    pub(crate) kept: Vec<u8>,
}

/// Reads one HTTP/1.1 response whole (a body by length or in chunks, so the connection can
/// carry the next request), keeping the first `keep` bytes of its body. The body is read in
/// pieces, so a huge one costs no memory here, and a small one no large buffer.
pub(crate) fn read_response(conn: &mut BufReader<TcpStream>, keep: usize) -> Result<Response> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        bail!("closed before the status line");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    let mut code = None;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            bail!("closed in the headers");
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().context("content-length")?;
        } else if let Some(v) = l.strip_prefix("skiff-error:") {
            code = Some(v.trim().to_ascii_uppercase());
        } else if l.starts_with("connection:") && l.contains("close") {
            close = true;
        } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Body {
        buf: Vec::new(),
        kept: Vec::new(),
        keep,
    };
    if chunked {
        // wasi:http guests stream their bodies: size lines, data, and a last chunk of 0.
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                .context("chunk size")?;
            if size == 0 {
                // The last chunk (no trailers expected) ends with one more CRLF.
                conn.read_line(&mut line)?;
                break;
            }
            body.read(conn, size)?;
            let mut crlf = [0u8; 2];
            conn.read_exact(&mut crlf)?;
        }
    } else {
        body.read(conn, length)?;
    }
    Ok(Response {
        status,
        code,
        close,
        kept: body.kept,
    })
}

/// A response body being read: a buffer reused across pieces, and the start kept.
struct Body {
    buf: Vec<u8>,
    kept: Vec<u8>,
    keep: usize,
}

impl Body {
    fn read(&mut self, conn: &mut BufReader<TcpStream>, mut left: usize) -> Result<()> {
        if self.buf.len() < left.min(64 << 10) {
            self.buf.resize(left.min(64 << 10), 0);
        }
        while left > 0 {
            let n = left.min(self.buf.len());
            conn.read_exact(&mut self.buf[..n])?;
            let room = self.keep.saturating_sub(self.kept.len()).min(n);
            self.kept.extend_from_slice(&self.buf[..room]);
            left -= n;
        }
        Ok(())
    }
}

/// The `(H12)` a router page names.
pub(crate) fn page_code(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let at = text.find("(H")?;
    let code = text.get(at + 1..at + 4)?;
    (code[1..].bytes().all(|b| b.is_ascii_digit()) && text.get(at + 4..at + 5) == Some(")"))
        .then(|| code.to_owned())
}

/// One paced phase's latencies (sorted) and failures.
pub(crate) struct Paced {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) failures: Counts,
}

/// Paced (open-loop) load: `requests` GET / in all over `connections` keep-alive
/// connections, sent on a schedule of `rate` per second whatever the answers take. Each
/// latency runs from sending to the whole answer.
pub(crate) fn paced_load(
    addr: SocketAddr,
    host: &str,
    requests: usize,
    rate: u64,
    connections: usize,
) -> Paced {
    let per = requests.div_ceil(connections);
    let interval = Duration::from_secs_f64(connections as f64 / rate.max(1) as f64);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let host = host.to_owned();
            std::thread::spawn(move || {
                // Spread the connections' schedules over one interval.
                let start = Instant::now() + interval.mul_f64(c as f64 / connections as f64);
                let mut client = Client::new(addr, Duration::from_secs(30));
                let mut latencies = Vec::with_capacity(per);
                let mut failures = Counts::new();
                for i in 0..per {
                    let due = start + interval.mul_f64(i as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let outcome = client.send(&host, "GET", "/", b"");
                    if outcome.ok() {
                        latencies.push(sent.elapsed());
                    } else {
                        *failures.entry(outcome).or_default() += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut paced = Paced {
        latencies: Vec::new(),
        failures: Counts::new(),
    };
    for t in threads {
        if let Ok((l, f)) = t.join() {
            paced.latencies.extend(l);
            add_counts(&mut paced.failures, &f);
        }
    }
    paced.latencies.sort_unstable();
    paced
}

/// Latency percentiles of sorted samples, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// The machine's 1-minute load average, for the record.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two answers on one connection, one in chunks and one by length, then one that closes:
    /// each is read whole, so the next starts where it should.
    #[test]
    fn reads_answers_whole_in_either_framing() -> Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nHello\r\n7;x=1\r\n, world\r\n0\r\n\r\n\
                  HTTP/1.1 503 Service Unavailable\r\nSkiff-Error: h12\r\n\
                  Content-Length: 9\r\n\r\ntoo slow.\
                  HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            )
        });
        let mut conn = BufReader::new(TcpStream::connect(addr)?);
        let first = read_response(&mut conn, 8)?;
        assert_eq!((first.status, first.code, first.close), (200, None, false));
        assert_eq!(first.kept, b"Hello, w");
        let second = read_response(&mut conn, 4096)?;
        assert_eq!(second.status, 503);
        assert_eq!(second.code.as_deref(), Some("H12"));
        assert_eq!(second.kept, b"too slow.");
        let third = read_response(&mut conn, 4096)?;
        assert_eq!((third.status, third.close), (404, true));
        assert!(third.kept.is_empty());
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))??;
        Ok(())
    }

    #[test]
    fn reads_codes_from_router_pages() {
        assert_eq!(
            page_code(b"<p>The app did not answer in time (H12).</p>"),
            Some("H12".into())
        );
        assert_eq!(page_code(b"no code here (Hello)"), None);
        assert!(Outcome::Answer(503, Some("H11".into())).documented());
        assert!(!Outcome::Answer(502, None).documented());
        assert!(!Outcome::Broken("ConnectionReset".into()).documented());
    }
}
