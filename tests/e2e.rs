//! End-to-end tests: the real `skiff` binary on free loopback ports, the real `git` client
//! pushing over smart HTTP, real builds with the Rust buildpack, and HTTP through the router.
//!
//! Each test gets its own data dir and `HOME` (so `~/.netrc` is the test's own).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `skiff up` process with its own data dir, home and ports; stopped on drop.
struct Skiff {
    dir: tempfile::TempDir,
    api_port: u16,
    http_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Skiff {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        let mut s = Self {
            log: dir.path().join("skiff.log"),
            dir,
            api_port: free_port()?,
            http_port: free_port()?,
            child: None,
        };
        s.boot()?;
        Ok(s)
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Environment for every process of the test: its own HOME, but the machine's Rust
    /// toolchain and cargo registry cache (which live under the real HOME by default).
    fn env(&self, cmd: &mut Command) {
        let real_home = std::env::var("HOME").unwrap_or_default();
        let cargo_home =
            std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
        let rustup_home =
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
        cmd.env("HOME", self.home())
            .env("CARGO_HOME", cargo_home)
            .env("RUSTUP_HOME", rustup_home)
            .env("SKIFF_API_URL", self.api())
            .env_remove("SKIFF_API_TOKEN")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1");
    }

    fn boot(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(SKIFF);
        self.env(&mut cmd);
        cmd.args(["up", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--api-port", &self.api_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let api = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.api_port))).is_ok();
            let router =
                TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.http_port))).is_ok();
            if api && router {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("skiff up exited with {status}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("skiff up did not start:\n{}", self.logs())
    }

    /// Stops the platform the way a user does (Ctrl-C) and waits for it.
    fn stop(&mut self) -> Result<()> {
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

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the skiff CLI in `cwd`.
    fn cli(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(SKIFF);
        self.env(&mut cmd);
        Ok(cmd.current_dir(cwd).args(args).output()?)
    }

    /// Runs git in `cwd`.
    fn git(&self, cwd: &Path, args: &[&str]) -> Result<Output> {
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
    fn commit_and_push(&self, repo: &Path, message: &str) -> Result<(bool, String)> {
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
    fn request(
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
fn http(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
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
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("transfer-encoding:")
            && line.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw)?;
    let text = if chunked {
        dechunk(&raw)?
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    Ok((status, text))
}

fn dechunk(mut raw: &[u8]) -> Result<String> {
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

fn ok(out: Output) -> Result<Output> {
    ensure!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A fresh git repository holding a copy of examples/rust-hello.
fn rust_hello_repo(s: &Skiff, parent: &Path) -> Result<PathBuf> {
    let repo = parent.join("rust-hello");
    copy_tree(&repo_root().join("examples/rust-hello"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    Ok(repo)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
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

fn set_greeting(repo: &Path, greeting: &str) -> Result<()> {
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

/// The whole user path: create, push, curl, config, push a change, survive bad pushes,
/// restart, and still answer.
#[test]
fn push_serve_change_and_restart() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;

    let out = ok(s.cli(&repo, &["apps:create", "hello"])?)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("http://hello.localhost:{}/", s.http_port)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}/hello.git", s.api())),
        "{stdout}"
    );
    let remote = ok(s.git(&repo, &["remote", "get-url", "skiff"])?)?;
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout).trim(),
        format!("{}/hello.git", s.api())
    );

    // Before any push, the app exists but has no dyno.
    let (status, body) = s.request("hello.localhost", "GET", "/", None)?;
    assert_eq!(status, 503, "{body}");

    let (pushed, output) = s.commit_and_push(&repo, "first")?;
    assert!(pushed, "push failed:\n{output}\n{}", s.logs());
    for expected in [
        "remote: -----> Rust app detected",
        "Compiling rust-hello",
        "-----> Launching... done, v1",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }

    let host = format!("hello.localhost:{}", s.http_port);
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello from Skiff!\n".into())
    );
    let (status, json) = s.request(&host, "GET", "/json", None)?;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["app"], "hello");
    assert_eq!(
        s.request(&host, "POST", "/echo", Some("ping pong"))?,
        (200, "ping pong".into())
    );
    assert_eq!(s.request(&host, "GET", "/env/GREETING", None)?.0, 404);

    // A guest that traps fails its own request with a 500; the next request is served.
    let (status, body) = s.request(&host, "GET", "/crash", None)?;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello from Skiff!\n".into())
    );

    // Config vars reach the guest's environment through a new release.
    let out = ok(s.cli(&repo, &["config:set", "GREETING=ahoy"])?)?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("done, v2"),
        "{out:?}"
    );
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "ahoy\n".into())
    );

    // A change goes live as the next release.
    set_greeting(&repo, "Hello again from Skiff!")?;
    let (pushed, output) = s.commit_and_push(&repo, "second")?;
    assert!(pushed, "{output}");
    assert!(output.contains("Launching... done, v3"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Skiff!\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "ahoy\n".into())
    );

    // A build that does not compile is rejected and v3 keeps serving.
    let main = std::fs::read_to_string(repo.join("src/main.rs"))?;
    std::fs::write(
        repo.join("src/main.rs"),
        format!("{main}\nfn oops() -> u32 {{ \"not a number\" }}\n"),
    )?;
    let (pushed, output) = s.commit_and_push(&repo, "broken")?;
    assert!(!pushed, "a broken build must fail the push:\n{output}");
    assert!(output.contains("failed to compile Rust app"), "{output}");
    assert!(output.contains("pre-receive hook declined"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Skiff!\n".into())
    );

    // An invalid Procfile is rejected with its line number.
    std::fs::write(repo.join("src/main.rs"), &main)?;
    std::fs::write(
        repo.join("Procfile"),
        "web: bin/rust-hello.wasm\nthis is not a process line\n",
    )?;
    let (pushed, output) = s.commit_and_push(&repo, "bad procfile")?;
    assert!(!pushed, "{output}");
    assert!(output.contains("Procfile line 2"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Skiff!\n".into())
    );

    // A Procfile naming a file that is not a component is rejected too.
    std::fs::write(repo.join("Procfile"), "web: Cargo.toml\n")?;
    let (pushed, output) = s.commit_and_push(&repo, "procfile names a non-wasm file")?;
    assert!(!pushed, "{output}");
    assert!(output.contains("not a WebAssembly file"), "{output}");

    let out = ok(s.cli(&repo, &["releases"])?)?;
    let releases = String::from_utf8_lossy(&out.stdout);
    assert!(releases.contains("Current: v3"), "{releases}");
    assert!(releases.contains("Set GREETING config vars"), "{releases}");

    // A restart brings the app back as it was, with no new push.
    s.stop()?;
    s.boot()?;
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Skiff!\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "ahoy\n".into())
    );
    s.stop()?;
    Ok(())
}

/// Each bad input gets a clear error and breaks nothing.
#[test]
fn edges_fail_clearly() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;

    // Unknown host: a 404 page that names no app.
    let (status, body) = s.request(&format!("nope.localhost:{}", s.http_port), "GET", "/", None)?;
    assert_eq!(status, 404);
    assert!(body.contains("No such app"), "{body}");

    // The API refuses a missing or wrong token.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent.get(format!("{}/apps", s.api())).call()?;
    assert_eq!(resp.status().as_u16(), 401);
    let resp = agent
        .get(format!("{}/apps", s.api()))
        .header("authorization", "Bearer wrong")
        .call()?;
    assert_eq!(resp.status().as_u16(), 401);

    // A repository no buildpack detects.
    let plain = work.path().join("plain");
    std::fs::create_dir_all(&plain)?;
    std::fs::write(plain.join("README.md"), "just words\n")?;
    ok(s.git(&plain, &["init", "--quiet", "--initial-branch=main"])?)?;
    ok(s.cli(&plain, &["apps:create", "plain"])?)?;
    let (pushed, output) = s.commit_and_push(&plain, "nothing to build")?;
    assert!(!pushed, "{output}");
    assert!(output.contains("no buildpack detected"), "{output}");
    assert!(output.contains("rust (Cargo.toml)"), "{output}");

    // A wrong token on git: 401, nothing built.
    let wrong = format!("http://skiff:wrong@127.0.0.1:{}/plain.git", s.api_port);
    let out = s.git(&plain, &["push", &wrong, "main"])?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Authentication failed"), "{text}");
    assert!(!text.contains("Building source"), "{text}");

    // A broken buildpack (forced with BUILDPACK) fails the push with its own message.
    let bad = repo_root().join("tests/fixtures/bad-buildpack");
    let bad = bad.canonicalize()?;
    ok(s.cli(
        &plain,
        &["config:set", &format!("BUILDPACK={}", bad.display())],
    )?)?;
    let (pushed, output) = s.commit_and_push(&plain, "broken buildpack")?;
    assert!(!pushed, "{output}");
    assert!(
        output.contains("this buildpack is broken on purpose"),
        "{output}"
    );
    assert!(output.contains("failed to compile"), "{output}");

    // A buildpack whose "component" is not WebAssembly.
    let shell = repo_root()
        .join("tests/fixtures/not-wasm-buildpack")
        .canonicalize()?;
    ok(s.cli(
        &plain,
        &["config:set", &format!("BUILDPACK={}", shell.display())],
    )?)?;
    let (pushed, output) = s.commit_and_push(&plain, "not wasm")?;
    assert!(!pushed, "{output}");
    assert!(output.contains("not a WebAssembly file"), "{output}");

    // An unknown forced buildpack lists what is installed.
    ok(s.cli(&plain, &["config:set", "BUILDPACK=cobol"])?)?;
    let (pushed, output) = s.commit_and_push(&plain, "unknown buildpack")?;
    assert!(!pushed, "{output}");
    assert!(output.contains("unknown buildpack \"cobol\""), "{output}");

    // Bad names and keys are refused by the API with a reason.
    let out = s.cli(&plain, &["apps:create", "Bad_Name"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid app name"),
        "{out:?}"
    );
    let out = s.cli(&plain, &["config:set", "lower=1"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid config var name"),
        "{out:?}"
    );

    // Through all of it the platform kept serving.
    let (status, _) = s.request(
        &format!("plain.localhost:{}", s.http_port),
        "GET",
        "/",
        None,
    )?;
    assert_eq!(status, 503, "plain has no dynos and says so");
    Ok(())
}
