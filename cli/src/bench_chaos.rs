//! `skiff bench chaos`: kill -9 the platform at random points of deploys, config changes,
//! scales and rollbacks, restart it on the same data dir, and check what survived.
//!
//! It runs its own `skiff up` (temp data dir and HOME, ports picked at run time, loopback
//! only), creates a few C apps (the C buildpack builds one in about a second), and then, per
//! trial: starts one operation the way a user does (the CLI, or `git push`), sends SIGKILL to
//! the platform after a random delay inside the operation's measured duration, reads the
//! state database while the platform is down, restarts it and waits until every app serves.
//!
//! What must hold after every trial:
//! - every release acknowledged to a client (exit 0) is present, with its slug and config;
//! - an unacknowledged operation applied whole or not at all (both config vars of one
//!   `config:set`, count and size of one `ps:scale web=N:SIZE`, at most one new release);
//! - the formation is the last acknowledged one (or the unacknowledged one, whole);
//! - every slug a kept release names exists and hashes to its name; no temp file survives a
//!   restart;
//! - every app answers 200 with its current release's content and config, with as many web
//!   dynos running as its formation says.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

const HELLO_C: &str = include_str!("../../examples/c-hello/hello.c");
const HELLO_MAKEFILE: &str = include_str!("../../examples/c-hello/Makefile");
const SIZES: [&str; 3] = ["basic", "standard-1x", "standard-2x"];
/// How many of an app's newest releases keep their slugs (the platform's rollback window).
const KEPT: usize = 10;

#[derive(clap::Args, Debug)]
pub(crate) struct ChaosArgs {
    /// How many kill -9 trials to run.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Seed of the operation and kill-point choices (default: from the clock); the table
    /// prints it so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// How many apps to create.
    #[arg(long, default_value_t = 2)]
    apps: usize,
    /// Also print one JSON object per trial and a summary as the last lines.
    #[arg(long)]
    json: bool,
    /// Keep the scratch dir (data dir, logs, repositories) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// A small deterministic generator (splitmix64), so a seed replays the same choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Deploy,
    Config,
    Scale,
    Resize,
    ScaleResize,
    Rollback,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Deploy => "deploy",
            Op::Config => "config:set",
            Op::Scale => "ps:scale",
            Op::Resize => "ps:resize",
            Op::ScaleResize => "ps:scale N:SIZE",
            Op::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    version: u64,
    slug: String,
    config: BTreeMap<String, String>,
}

/// What the bench knows an app must look like.
struct AppModel {
    name: String,
    repo: PathBuf,
    /// Newest first.
    releases: Vec<Release>,
    /// The greeting each slug serves at `/`.
    greetings: HashMap<String, String>,
    quantity: u32,
    size: String,
}

/// What one trial's operation expects if it applies.
enum Expect {
    Release {
        config: BTreeMap<String, String>,
        /// The slug, when known beforehand (rollback); a deploy's is new.
        slug: Option<String>,
        greeting: Option<String>,
    },
    Formation {
        quantity: u32,
        size: String,
    },
}

struct Outcome {
    trial: usize,
    app: String,
    op: Op,
    /// The push output line the kill waited for, if any.
    after_line: Option<&'static str>,
    kill_ms: u128,
    acked: bool,
    applied: bool,
    violations: Vec<String>,
    serving_ms: u128,
}

impl Outcome {
    fn label(&self) -> String {
        match self.after_line {
            Some(line) => format!("{}@{}", self.op.name(), line.trim_end_matches([':', '.'])),
            None => self.op.name().to_owned(),
        }
    }
}

/// Push output lines a deploy's kill can wait for: the slug being written, the slug stored,
/// the build's last step before the slug.
const DEPLOY_LINES: [&str; 3] = ["Discovering", "Compressing", "Done:"];

/// The platform under test: a `skiff up` child process.
struct Platform {
    exe: PathBuf,
    root: PathBuf,
    api_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl Platform {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn env(&self, cmd: &mut Command) {
        crate::bench_host::private_env(cmd, &self.root.join("home"), self.api_port);
    }

    /// Starts `skiff up` and waits until its API and router accept connections.
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("skiff.log"))?;
        let mut cmd = Command::new(&self.exe);
        self.env(&mut cmd);
        cmd.args(["up", "--data-dir"])
            .arg(self.data())
            .args(["--api-port", &self.api_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--https-port", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("starting skiff up")?);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let api = TcpStream::connect(("127.0.0.1", self.api_port)).is_ok();
            let router = TcpStream::connect(("127.0.0.1", self.http_port)).is_ok();
            if api && router {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "skiff up exited with {status}; see {}",
                    self.root.join("skiff.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("skiff up did not start within 120 s")
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        self.env(&mut cmd);
        cmd.current_dir(cwd).args(args);
        cmd
    }

    fn git(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        cmd.current_dir(cwd)
            .args([
                "-c",
                "user.name=Skiff Chaos",
                "-c",
                "user.email=chaos@skiff.invalid",
            ])
            .args(args);
        cmd
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_ok(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{what} failed:\n{text}");
    Ok(text)
}

fn hello_source(greeting: &str) -> String {
    HELLO_C
        .lines()
        .map(|l| {
            if l.starts_with("#define GREETING ") {
                format!("#define GREETING \"{greeting}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One HTTP/1.1 GET through the router with the app's Host header.
fn get(port: u16, host: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

pub(crate) fn run(args: ChaosArgs) -> Result<()> {
    ensure!(args.apps >= 1, "--apps must be at least 1");
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let scratch = tempfile::Builder::new().prefix("skiff-chaos-").tempdir()?;
    // The platform names its data dir canonically (build processes carry it).
    let root = std::fs::canonicalize(scratch.path())?;
    std::fs::create_dir_all(root.join("home"))?;
    std::fs::create_dir_all(root.join("work"))?;
    let mut platform = Platform {
        exe: std::env::current_exe().context("locating the skiff executable")?,
        root: root.clone(),
        api_port: free_port()?,
        http_port: free_port()?,
        child: None,
    };
    eprintln!(
        "Chaos: {} trials, seed {seed}, scratch dir {}",
        args.trials,
        root.display()
    );
    platform.start()?;

    // Set up the apps and measure each operation once, uninterrupted: kill points are
    // drawn inside these durations.
    let mut apps = Vec::new();
    let mut expected: HashMap<Op, Duration> = HashMap::new();
    for i in 1..=args.apps {
        let name = format!("chaos-{i}");
        let repo = root.join("work").join(&name);
        std::fs::create_dir_all(&repo)?;
        std::fs::write(repo.join("hello.c"), hello_source(&format!("{name} v0")))?;
        std::fs::write(repo.join("Makefile"), HELLO_MAKEFILE)?;
        run_ok(
            platform.git(&repo, &["init", "--quiet", "--initial-branch=main"]),
            "git init",
        )?;
        run_ok(
            platform.command(&repo, &["apps:create", &name]),
            "apps:create",
        )?;
        run_ok(platform.git(&repo, &["add", "--all"]), "git add")?;
        run_ok(
            platform.git(&repo, &["commit", "--quiet", "-m", "v0"]),
            "git commit",
        )?;
        let started = Instant::now();
        run_ok(platform.git(&repo, &["push", "skiff", "main"]), "git push")?;
        expected.insert(Op::Deploy, started.elapsed());
        let started = Instant::now();
        run_ok(
            platform.command(&repo, &["config:set", "CHAOS_T=setup", "CHAOS_PAIR=setup"]),
            "config:set",
        )?;
        expected.insert(Op::Config, started.elapsed());
        let started = Instant::now();
        run_ok(platform.command(&repo, &["ps:scale", "web=1"]), "ps:scale")?;
        expected.insert(Op::Scale, started.elapsed());
        apps.push(AppModel {
            name,
            repo,
            releases: Vec::new(),
            greetings: HashMap::new(),
            quantity: 1,
            size: String::new(),
        });
    }
    for op in [Op::Resize, Op::ScaleResize, Op::Rollback] {
        let scale = expected.get(&Op::Scale).copied().unwrap_or_default();
        let config = expected.get(&Op::Config).copied().unwrap_or_default();
        expected.insert(op, if op == Op::Rollback { config } else { scale });
    }
    // The model starts from what the platform reports after setup.
    platform.kill9()?;
    {
        let state = skiff_platform::State::open(&platform.data().join("state.db"))?;
        for app in &mut apps {
            app.releases = state
                .releases(&app.name)?
                .into_iter()
                .map(|r| Release {
                    version: r.version,
                    slug: r.slug,
                    config: r.config,
                })
                .collect();
            if let Some(first) = app.releases.last() {
                app.greetings
                    .insert(first.slug.clone(), format!("{} v0", app.name));
            }
            app.quantity = state.quantity(&app.name, "web")?;
            app.size = state.size(&app.name, "web")?;
        }
    }
    platform.start()?;
    wait_serving(&platform, &apps)?;
    let token = std::fs::read_to_string(platform.data().join("admin-token"))?
        .trim()
        .to_owned();

    let mut rng = Rng(seed);
    println!(
        "{:>5}  {:<8}  {:<20}  {:>8}  {:>5}  {:>7}  {:>10}  outcome",
        "trial", "app", "op", "kill ms", "acked", "applied", "serving ms"
    );
    let mut outcomes = Vec::new();
    for trial in 1..=args.trials {
        let which = rng.below(apps.len() as u64) as usize;
        let outcome = run_trial(
            &mut platform,
            &mut apps,
            which,
            trial,
            &mut rng,
            &expected,
            &token,
        )?;
        let verdict = if outcome.violations.is_empty() {
            "ok".to_owned()
        } else {
            format!("VIOLATION: {}", outcome.violations.join("; "))
        };
        println!(
            "{:>5}  {:<8}  {:<20}  {:>8}  {:>5}  {:>7}  {:>10}  {verdict}",
            outcome.trial,
            outcome.app,
            outcome.label(),
            outcome.kill_ms,
            if outcome.acked { "yes" } else { "no" },
            if outcome.applied { "yes" } else { "no" },
            outcome.serving_ms,
        );
        outcomes.push(outcome);
    }

    // After all the kills, every app still takes a push, a config change and a scale.
    let mut final_problems = Vec::new();
    for app in &apps {
        if let Err(e) = final_round(&platform, app) {
            final_problems.push(format!("{}: {e:#}", app.name));
        }
    }
    if final_problems.is_empty() {
        println!("final round: every app took a push, config:set and ps:scale after the kills");
    } else {
        println!("final round: VIOLATION: {}", final_problems.join("; "));
    }

    let violations: usize =
        outcomes.iter().filter(|o| !o.violations.is_empty()).count() + final_problems.len();
    let acked = outcomes.iter().filter(|o| o.acked).count();
    let applied_unacked = outcomes.iter().filter(|o| !o.acked && o.applied).count();
    let mut serving: Vec<u128> = outcomes.iter().map(|o| o.serving_ms).collect();
    serving.sort_unstable();
    let p50 = serving.get(serving.len() / 2).copied().unwrap_or(0);
    let max = serving.last().copied().unwrap_or(0);
    println!(
        "{} trials (seed {seed}): {acked} acknowledged, {} cut off ({applied_unacked} of them applied whole), {violations} with violations; restart to serving p50 {p50} ms, max {max} ms",
        outcomes.len(),
        outcomes.len() - acked,
    );
    if args.json {
        for o in &outcomes {
            println!(
                "{}",
                serde_json::json!({
                    "trial": o.trial,
                    "app": o.app,
                    "op": o.op.name(),
                    "kill_after_line": o.after_line,
                    "kill_ms": o.kill_ms as u64,
                    "acked": o.acked,
                    "applied": o.applied,
                    "serving_ms": o.serving_ms as u64,
                    "violations": o.violations,
                })
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "summary": true,
                "seed": seed,
                "trials": outcomes.len(),
                "acked": acked,
                "applied_unacked": applied_unacked,
                "violations": violations,
                "serving_p50_ms": p50 as u64,
                "serving_max_ms": max as u64,
            })
        );
    }
    platform.kill9()?;
    if args.keep {
        eprintln!("Kept {}", scratch.keep().display());
    }
    if violations > 0 {
        bail!(
            "{violations} of {} trials broke an invariant",
            outcomes.len()
        );
    }
    Ok(())
}

fn run_trial(
    platform: &mut Platform,
    apps: &mut [AppModel],
    which: usize,
    trial: usize,
    rng: &mut Rng,
    expected: &HashMap<Op, Duration>,
    token: &str,
) -> Result<Outcome> {
    let app = &apps[which];
    let mut ops = vec![
        Op::Deploy,
        Op::Deploy,
        Op::Config,
        Op::Config,
        Op::Scale,
        Op::Resize,
        Op::ScaleResize,
    ];
    // The release before the current one is inside the rollback window, so its slug is kept.
    if app.releases.len() >= 2 {
        ops.push(Op::Rollback);
    }
    let op = ops[rng.below(ops.len() as u64) as usize];
    let tag = format!("t{trial}");
    let current = app.releases.first().context("the app has no release")?;
    let (mut cmd, expect) = match op {
        Op::Deploy => {
            let greeting = format!("{} {tag}", app.name);
            std::fs::write(app.repo.join("hello.c"), hello_source(&greeting))?;
            run_ok(platform.git(&app.repo, &["add", "--all"]), "git add")?;
            run_ok(
                platform.git(&app.repo, &["commit", "--quiet", "-m", &tag]),
                "git commit",
            )?;
            (
                platform.git(&app.repo, &["push", "skiff", "main"]),
                Expect::Release {
                    config: current.config.clone(),
                    slug: None,
                    greeting: Some(greeting),
                },
            )
        }
        Op::Config => {
            let mut config = current.config.clone();
            config.insert("CHAOS_T".into(), tag.clone());
            config.insert("CHAOS_PAIR".into(), tag.clone());
            (
                platform.command(
                    &app.repo,
                    &[
                        "config:set",
                        &format!("CHAOS_T={tag}"),
                        &format!("CHAOS_PAIR={tag}"),
                    ],
                ),
                Expect::Release {
                    config,
                    slug: Some(current.slug.clone()),
                    greeting: None,
                },
            )
        }
        Op::Scale | Op::Resize | Op::ScaleResize => {
            let quantity = if op == Op::Resize {
                app.quantity
            } else {
                1 + rng.below(3) as u32
            };
            let size = if op == Op::Scale {
                app.size.clone()
            } else {
                SIZES[rng.below(SIZES.len() as u64) as usize].to_owned()
            };
            let arg = match op {
                Op::Scale => format!("web={quantity}"),
                Op::Resize => format!("web={size}"),
                _ => format!("web={quantity}:{size}"),
            };
            let verb = if op == Op::Resize {
                "ps:resize"
            } else {
                "ps:scale"
            };
            (
                platform.command(&app.repo, &[verb, &arg]),
                Expect::Formation { quantity, size },
            )
        }
        Op::Rollback => {
            let target = &app.releases[1];
            (
                platform.command(&app.repo, &["rollback", &format!("v{}", target.version)]),
                Expect::Release {
                    config: target.config.clone(),
                    slug: Some(target.slug.clone()),
                    greeting: None,
                },
            )
        }
    };
    let span = expected
        .get(&op)
        .copied()
        .unwrap_or(Duration::from_secs(1))
        .as_millis()
        * 3
        / 2;
    let delay = Duration::from_millis(rng.below(span.max(1) as u64));

    // Half the deploys are killed at a step of the build instead, seen in the push's
    // output, plus up to 40 ms: the slug write and the release record are short windows
    // that random delays rarely hit.
    let after_line = (op == Op::Deploy && rng.below(2) == 0)
        .then(|| DEPLOY_LINES[rng.below(DEPLOY_LINES.len() as u64) as usize]);
    let extra = Duration::from_millis(rng.below(40));
    let log_path = platform.root.join(format!("trial-{trial}.log"));
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let mut client = match after_line {
        None => cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?),
        Some(_) => cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped()),
    }
    .spawn()
    .with_context(|| format!("starting {}", op.name()))?;
    if let (Some(line), Some(stderr)) = (after_line, client.stderr.take()) {
        let mut log = log;
        std::thread::spawn(move || {
            use std::io::BufRead;
            for text in std::io::BufReader::new(stderr).lines() {
                let Ok(text) = text else { break };
                let _ = writeln!(log, "{text}");
                if text.contains(line) {
                    let _ = seen_tx.send(());
                }
            }
        });
    }
    // The kill lands at the drawn delay (up to 1.5 times the operation's measured time),
    // or right after the client is answered if that comes first: some trials are cut off,
    // the others are killed just after their acknowledgement, the case that loses most.
    let mut before_kill = None;
    let mut kill_at = (after_line.is_none()).then_some(delay);
    let give_up = started + Duration::from_millis(span.max(1000) as u64 * 2);
    loop {
        if kill_at.is_some_and(|at| started.elapsed() >= at) {
            break;
        }
        if let Some(status) = client.try_wait()? {
            before_kill = Some(status);
            break;
        }
        if kill_at.is_none() && (seen_rx.try_recv().is_ok() || Instant::now() > give_up) {
            kill_at = Some(started.elapsed() + extra);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    platform.kill9()?;
    let kill_ms = started.elapsed().as_millis();
    let mut violations = Vec::new();
    // An operation that failed while the platform was still up failed for another reason
    // (e.g. a repository broken by an earlier kill): that is a finding, not a cut-off.
    if before_kill.is_some_and(|s| !s.success()) {
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(3).collect();
        violations.push(format!(
            "{} failed before any kill: {}",
            op.name(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked = loop {
        if let Some(status) = client.try_wait()? {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            violations.push(format!(
                "{} still waiting 60 s after the platform died",
                op.name()
            ));
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // The durable state, read while the platform is down.
    let mut applied = false;
    {
        let state = skiff_platform::State::open(&platform.data().join("state.db"))?;
        for (i, model) in apps.iter_mut().enumerate() {
            let mine = i == which;
            let stored: Vec<Release> = state
                .releases(&model.name)?
                .into_iter()
                .map(|r| Release {
                    version: r.version,
                    slug: r.slug,
                    config: r.config,
                })
                .collect();
            for known in &model.releases {
                match stored.iter().find(|r| r.version == known.version) {
                    None => violations.push(format!("{} lost v{}", model.name, known.version)),
                    Some(r) if r != known => violations.push(format!(
                        "{} v{} changed (slug or config)",
                        model.name, known.version
                    )),
                    Some(_) => {}
                }
            }
            let newest_known = model.releases.first().map_or(0, |r| r.version);
            let new: Vec<&Release> = stored.iter().filter(|r| r.version > newest_known).collect();
            let releasing = mine && matches!(expect, Expect::Release { .. });
            if new.len() > usize::from(releasing) {
                violations.push(format!(
                    "{} has {} unexpected new releases",
                    model.name,
                    new.len()
                ));
            }
            if releasing && acked && new.is_empty() {
                violations.push(format!(
                    "{}: {} was acknowledged but cut no release",
                    model.name,
                    op.name()
                ));
            }
            if let (
                true,
                Some(r),
                Expect::Release {
                    config,
                    slug,
                    greeting,
                },
            ) = (releasing, new.first(), &expect)
            {
                applied = true;
                if &r.config != config {
                    violations.push(format!(
                        "{} v{} has config {:?}, not all of the change {:?}",
                        model.name, r.version, r.config, config
                    ));
                }
                if slug.as_ref().is_some_and(|s| s != &r.slug) {
                    violations.push(format!("{} v{} has the wrong slug", model.name, r.version));
                }
                if let Some(g) = greeting {
                    model.greetings.insert(r.slug.clone(), g.clone());
                }
            }
            // The config vars the next change starts from are the current release's.
            let config = state.config(&model.name)?;
            if let Some(current) = stored.first()
                && current.config != config
            {
                violations.push(format!(
                    "{}: config vars {:?} differ from the current release v{}'s",
                    model.name, config, current.version
                ));
            }

            let quantity = state.quantity(&model.name, "web")?;
            let size = state.size(&model.name, "web")?;
            let unchanged = quantity == model.quantity && size == model.size;
            match (&expect, mine) {
                (
                    Expect::Formation {
                        quantity: q,
                        size: s,
                    },
                    true,
                ) => {
                    let whole = quantity == *q && size == *s;
                    if acked && !whole {
                        violations.push(format!(
                            "{}: formation web={quantity}:{size}, acknowledged web={q}:{s}",
                            model.name
                        ));
                    } else if !whole && !unchanged {
                        violations.push(format!(
                            "{}: formation web={quantity}:{size} is half of web={q}:{s}",
                            model.name
                        ));
                    }
                    applied = whole;
                }
                _ if !unchanged => violations.push(format!(
                    "{}: formation changed to web={quantity}:{size} by nothing",
                    model.name
                )),
                _ => {}
            }
            model.quantity = quantity;
            model.size = size;
            model.releases = stored;

            // Every kept release's slug is stored whole under its digest.
            for r in model.releases.iter().take(KEPT) {
                let path = platform
                    .data()
                    .join("slugs")
                    .join(format!("{}.tar.zst", r.slug));
                match sha256_file(&path) {
                    Ok(digest) if digest == r.slug => {}
                    Ok(_) => violations.push(format!(
                        "{} v{}: slug content does not match its name",
                        model.name, r.version
                    )),
                    Err(e) => violations.push(format!(
                        "{} v{}: slug unreadable: {e}",
                        model.name, r.version
                    )),
                }
            }
        }
    }
    let restarted = Instant::now();
    platform.start()?;
    if let Err(e) = wait_serving(platform, apps) {
        violations.push(format!("{e:#}"));
    }
    let serving_ms = restarted.elapsed().as_millis();

    // Nothing temporary survives a restart, and the formation runs.
    let slugs = platform.data().join("slugs");
    for entry in std::fs::read_dir(&slugs)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".tar.zst") {
            violations.push(format!("leftover in the slug store: {name}"));
        }
    }
    for dir in ["apps", "precompiled", "builds"] {
        for entry in std::fs::read_dir(platform.data().join(dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dir == "builds" || name.starts_with(".tmp") {
                violations.push(format!("leftover after the restart: {dir}/{name}"));
            }
        }
    }
    let orphans = skiff_platform::build_processes(&platform.data());
    if !orphans.is_empty() {
        violations.push(format!(
            "build processes of the killed platform still run: {orphans:?}"
        ));
    }
    for model in apps.iter() {
        if let Err(e) = check_dynos(platform, model, token) {
            violations.push(format!("{e:#}"));
        }
    }
    Ok(Outcome {
        trial,
        app: apps[which].name.clone(),
        op,
        after_line,
        kill_ms,
        acked,
        applied: applied || acked,
        violations,
        serving_ms,
    })
}

/// A push, a config change and a scale, uninterrupted, each acknowledged and visible.
fn final_round(platform: &Platform, app: &AppModel) -> Result<()> {
    let greeting = format!("{} final", app.name);
    std::fs::write(app.repo.join("hello.c"), hello_source(&greeting))?;
    run_ok(platform.git(&app.repo, &["add", "--all"]), "git add")?;
    run_ok(
        platform.git(&app.repo, &["commit", "--quiet", "-m", "final"]),
        "git commit",
    )?;
    run_ok(
        platform.git(&app.repo, &["push", "skiff", "main"]),
        "git push",
    )?;
    run_ok(
        platform.command(&app.repo, &["config:set", "CHAOS_T=final"]),
        "config:set",
    )?;
    run_ok(
        platform.command(&app.repo, &["ps:scale", "web=2"]),
        "ps:scale",
    )?;
    let host = format!("{}.localhost:{}", app.name, platform.http_port);
    let root = get(platform.http_port, &host, "/")?;
    let env = get(platform.http_port, &host, "/env/CHAOS_T")?;
    ensure!(
        root.0 == 200 && root.1.trim_end() == greeting && env == (200, "final".to_owned()),
        "after the final round it answers {root:?} and {env:?}"
    );
    Ok(())
}

/// Waits until every app answers its current release's greeting and config.
fn wait_serving(platform: &Platform, apps: &[AppModel]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for app in apps {
        let host = format!("{}.localhost:{}", app.name, platform.http_port);
        let current = app.releases.first().context("no release")?;
        let greeting = app
            .greetings
            .get(&current.slug)
            .with_context(|| format!("{}: no greeting known for its slug", app.name))?;
        let want_t = current.config.get("CHAOS_T");
        let mut last = (0, String::new());
        loop {
            let root = get(platform.http_port, &host, "/");
            let env = get(platform.http_port, &host, "/env/CHAOS_T");
            if let (Ok(root), Ok(env)) = (root, env) {
                let root_ok = root.0 == 200 && root.1.trim_end() == greeting;
                let env_ok = match want_t {
                    Some(v) => env.0 == 200 && env.1.trim_end() == v,
                    None => env.0 == 404,
                };
                if root_ok && env_ok {
                    break;
                }
                last = if root_ok { env } else { root };
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve v{} ({greeting:?}, CHAOS_T={want_t:?}) within 60 s of the restart; last answer {} {:?}",
                    app.name,
                    current.version,
                    last.0,
                    last.1
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The running web dynos match the recorded formation and the current release.
fn check_dynos(platform: &Platform, app: &AppModel, token: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let text = agent
        .get(format!("{}/apps/{}/formation", platform.api(), app.name))
        .header("authorization", format!("Bearer {token}"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let current = app.releases.first().map_or(0, |r| r.version);
    let dynos = value["dynos"].as_array().cloned().unwrap_or_default();
    let web: Vec<_> = dynos.iter().filter(|d| d["type"] == "web").collect();
    ensure!(
        web.len() == app.quantity as usize,
        "{} runs {} web dynos, formation says {}",
        app.name,
        web.len(),
        app.quantity
    );
    for d in web {
        ensure!(
            d["size"] == app.size.as_str() && d["release"] == current,
            "{}: dyno {} is {} of v{}, expected {} of v{current}",
            app.name,
            d["name"],
            d["size"],
            d["release"],
            app.size
        );
    }
    Ok(())
}
