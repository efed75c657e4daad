//! Faults: the platform killed with SIGKILL at random points (`skiff bench chaos`), a build
//! whose compiler is killed, a pusher who hangs up mid-build, and a full disk under the slug
//! store. Each checks that nothing acknowledged is lost, nothing half-built is released or
//! left behind, and the next push works.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

/// Runs `skiff bench chaos` and returns its summary line, failing on any violation.
fn chaos(trials: usize, seed: u64) -> Result<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["bench", "chaos", "--json", "--trials"])
        .arg(trials.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .output()?;
    let text = stdout(&out);
    // The table, for `cargo test -- --nocapture`.
    println!("{text}");
    ensure!(
        out.status.success(),
        "chaos trials failed:\n{text}\n{}",
        stderr(&out)
    );
    let summary: serde_json::Value =
        serde_json::from_str(text.lines().last().context("no output")?)?;
    ensure!(
        summary["trials"] == trials && summary["violations"] == 0,
        "{summary}"
    );
    Ok(summary)
}

#[test]
fn kill9_trials_keep_every_acknowledged_change() -> Result<()> {
    chaos(6, 1)?;
    Ok(())
}

/// The long version of the loop: 50 kills (about a minute and a half in a debug build).
#[test]
#[ignore = "long: run with --ignored"]
fn kill9_fifty_trials() -> Result<()> {
    let summary = chaos(50, 8)?;
    println!("{summary}");
    Ok(())
}

/// A C app whose build prints a marker and then waits in `sleep SECONDS` before compiling,
/// so a test can act while the build is under way.
fn slow_makefile(repo: &Path, seconds: u32) -> Result<()> {
    std::fs::write(
        repo.join("Makefile"),
        format!(
            "CFLAGS ?= -O2\n\nhello.wasm: hello.c\n\t@echo chaos-build-started\n\tsleep {seconds}\n\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $<\n"
        ),
    )?;
    Ok(())
}

/// Pids of processes whose command line is exactly `args`.
fn pids_of(args: &[&str]) -> Vec<u32> {
    let want = args.join("\0") + "\0";
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A push under way, and the thread collecting the rest of its output.
type PushUnderWay = (std::process::Child, std::thread::JoinHandle<String>);

/// Starts `git push` in its own process group and reads its output until `marker`.
fn push_until(s: &Skiff, repo: &Path, marker: &str) -> Result<PushUnderWay> {
    let mut push = s
        .git_command(repo, &["push", "--progress", "skiff", "main"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut reader = BufReader::new(push.stderr.take().context("stderr")?);
    let mut seen = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        seen.push_str(&line);
        if line.contains(marker) {
            // The rest is read on a thread, so the push never blocks writing it.
            let rest = std::thread::spawn(move || {
                let _ = std::io::Read::read_to_string(&mut reader, &mut seen);
                seen
            });
            return Ok((push, rest));
        }
        line.clear();
    }
    let _ = push.wait();
    bail!("the push ended before {marker:?}:\n{seen}\n{}", s.logs())
}

fn wait_with_deadline(child: &mut std::process::Child, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries of `dir` (empty when it is missing).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the platform has removed every build dir.
fn builds_cleaned(s: &Skiff) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = entries(&s.data_dir().join("builds"));
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "build dirs left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn release_count(s: &Skiff, repo: &Path) -> Result<usize> {
    let out = ok(s.cli(repo, &["releases", "--json"])?)?;
    let releases: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    Ok(releases.as_array().map_or(0, Vec::len))
}

/// Waits for the process running `args` to appear.
fn wait_for_process(args: &[&str]) -> Result<u32> {
    for _ in 0..600 {
        if let Some(pid) = pids_of(args).first() {
            return Ok(*pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{args:?} never started")
}

/// The nearest ancestor of `pid` whose command line contains `needle`.
fn ancestor_running(pid: u32, needle: &str) -> Option<u32> {
    let mut at = parent_of(pid);
    while let Some(p) = at.filter(|p| *p > 1) {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            return Some(p);
        }
        at = parent_of(p);
    }
    None
}

/// Pushes a build that waits in `sleep SECONDS`, SIGKILLs the process `pick` chooses (given
/// the sleep's pid), and checks the push fails promptly and the build left nothing behind.
fn push_and_kill(
    s: &Skiff,
    repo: &Path,
    seconds: u32,
    pick: impl Fn(u32) -> Option<u32>,
) -> Result<()> {
    slow_makefile(repo, seconds)?;
    ok(s.git(repo, &["add", "--all"])?)?;
    ok(s.git(repo, &["commit", "--quiet", "-m", "doomed"])?)?;
    let (mut push, output) = push_until(s, repo, "chaos-build-started")?;
    let sleep_args = ["sleep".to_owned(), seconds.to_string()];
    let sleep_args: Vec<&str> = sleep_args.iter().map(String::as_str).collect();
    let sleeper = wait_for_process(&sleep_args)?;
    let victim = pick(sleeper).context("no process to kill")?;
    ok(Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .output()?)?;

    // The push fails promptly (not at the build time limit), with the reason.
    let pushed = wait_with_deadline(&mut push, Duration::from_secs(60))?;
    let output = output
        .join()
        .map_err(|_| anyhow::anyhow!("output reader panicked"))?;
    ensure!(!pushed, "a killed build must not deploy:\n{output}");
    ensure!(
        output.contains("failed to compile") && output.contains("Push rejected"),
        "{output}"
    );
    builds_cleaned(s)?;
    // SIGKILL is delivered asynchronously: give the kernel a moment to end the group.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_of(&sleep_args).is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the build's processes outlived it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn build_killed_mid_way_is_rejected_and_leaves_nothing() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "brittle"])?)?;
    push_timed(&s, &repo, "v1")?;
    let host = format!("brittle.localhost:{}", s.http_port);
    let hello = (200, "Hello from C on Skiff!\n".to_owned());
    assert_eq!(s.request(&host, "GET", "/", None)?, hello);
    replace_in(&repo.join("hello.c"), "Hello", "Never released")?;

    // The compiler dies (an OOM kill): make reports it, the buildpack fails.
    push_and_kill(&s, &repo, 313, Some)?;
    // The buildpack's bin/compile itself dies: what it started (make, the compiler) would
    // hold the build's output open; the platform stops them and fails the build at once.
    push_and_kill(&s, &repo, 314, |sleeper| {
        ancestor_running(sleeper, "bin/compile")
    })?;
    ensure!(
        release_count(&s, &repo)? == 1,
        "no release from a broken build"
    );
    assert_eq!(s.request(&host, "GET", "/", None)?, hello);

    // The next push works.
    std::fs::copy(
        repo_root().join("examples/c-hello/Makefile"),
        repo.join("Makefile"),
    )?;
    let (output, _) = push_timed(&s, &repo, "fixed")?;
    ensure!(output.contains("done, v2"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Never released from C on Skiff!\n".into())
    );
    Ok(())
}

/// Buildpack scripts run in their own process groups, so a kill -9 of the platform leaves
/// them running; the next start stops them before removing their build dirs.
#[test]
fn kill9_mid_build_then_restart_stops_the_builds_processes() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "orphaned"])?)?;
    push_timed(&s, &repo, "v1")?;
    slow_makefile(&repo, 315)?;
    ok(s.git(&repo, &["add", "--all"])?)?;
    ok(s.git(&repo, &["commit", "--quiet", "-m", "cut off"])?)?;
    let (mut push, _output) = push_until(&s, &repo, "chaos-build-started")?;
    wait_for_process(&["sleep", "315"])?;
    s.kill9()?;
    let pushed = wait_with_deadline(&mut push, Duration::from_secs(60))?;
    ensure!(!pushed, "a push cut off by a crash must not report success");
    ensure!(
        !pids_of(&["sleep", "315"]).is_empty(),
        "the build should still run while the platform is down"
    );

    s.boot()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_of(&["sleep", "315"]).is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the killed platform's build still runs after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(entries(&s.data_dir().join("builds")).is_empty());
    std::fs::copy(
        repo_root().join("examples/c-hello/Makefile"),
        repo.join("Makefile"),
    )?;
    let (output, _) = push_timed(&s, &repo, "after the crash")?;
    ensure!(output.contains("done, v2"), "{output}");
    Ok(())
}

/// A pusher who hangs up mid-build does not cancel it: like Heroku, the build runs to the
/// end and its release goes live (its output is in `skiff logs`). The git branch on the
/// platform stays where it was, so the next push sends the commits again and works.
#[test]
fn pusher_hanging_up_mid_build_still_releases() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "walkaway"])?)?;
    push_timed(&s, &repo, "v1")?;
    let host = format!("walkaway.localhost:{}", s.http_port);

    slow_makefile(&repo, 3)?;
    replace_in(&repo.join("hello.c"), "Hello", "Left behind")?;
    ok(s.git(&repo, &["add", "--all"])?)?;
    ok(s.git(&repo, &["commit", "--quiet", "-m", "walk away"])?)?;
    let (mut push, _) = push_until(&s, &repo, "chaos-build-started")?;
    // Like Ctrl-C in the terminal: the whole git process group.
    ok(Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", push.id())])
        .output()?)?;
    let _ = push.wait();

    let deadline = Instant::now() + Duration::from_secs(60);
    while release_count(&s, &repo)? < 2 {
        ensure!(
            Instant::now() < deadline,
            "the build never released:\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Left behind from C on Skiff!\n".into())
    );
    builds_cleaned(&s)?;

    std::fs::copy(
        repo_root().join("examples/c-hello/Makefile"),
        repo.join("Makefile"),
    )?;
    replace_in(&repo.join("hello.c"), "Left behind", "Back again")?;
    let (output, _) = push_timed(&s, &repo, "again")?;
    ensure!(output.contains("done, v3"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Back again from C on Skiff!\n".into())
    );
    Ok(())
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_during_slug_write_keeps_the_running_release() -> Result<()> {
    let mut s = Skiff::create()?;
    let slugs = s.data_dir().join("slugs");
    std::fs::create_dir_all(&slugs)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&slugs)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        // Mounting needs root (CI runs as root); elsewhere the test cannot make a small disk.
        eprintln!("skipped: mounting a tmpfs as the slug store is not permitted here");
        return Ok(());
    }
    let _mount = Mount(slugs.clone());
    s.boot()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "crammed"])?)?;
    push_timed(&s, &repo, "v1")?;
    let host = format!("crammed.localhost:{}", s.http_port);
    let hello = (200, "Hello from C on Skiff!\n".to_owned());
    let before = entries(&slugs);

    // Fill the disk, then push a change.
    let filler = slugs.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status()?;
    replace_in(&repo.join("hello.c"), "Hello", "Squeezed")?;
    let (pushed, output) = s.commit_and_push(&repo, "no room")?;
    ensure!(
        !pushed,
        "a push with no room for its slug must fail:\n{output}"
    );
    ensure!(output.contains("no space left"), "{output}");
    ensure!(output.contains("Push rejected"), "{output}");
    let mut after = entries(&slugs);
    after.retain(|e| e != "filler");
    let mut before_sorted = before.clone();
    before_sorted.sort();
    after.sort();
    ensure!(
        after == before_sorted,
        "the slug store changed: {before_sorted:?} -> {after:?}"
    );
    ensure!(release_count(&s, &repo)? == 1);
    assert_eq!(s.request(&host, "GET", "/", None)?, hello);
    builds_cleaned(&s)?;

    // Space comes back; the same code deploys.
    std::fs::remove_file(&filler)?;
    let (output, _) = push_timed(&s, &repo, "room again")?;
    ensure!(output.contains("done, v2"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Squeezed from C on Skiff!\n".into())
    );
    s.kill9()?;
    Ok(())
}

/// The scheduler slice a `/proc/.../sched` file shows (kernels built with scheduler debugging
/// show it; others do not).
fn slice_in(sched_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(sched_file).ok()?;
    let line = text.lines().find(|l| l.starts_with("se.slice"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The router's and the runtime's threads ask for 100 µs scheduler slices (`skiff up
/// --sched-slice-us`), so a request's wake-ups take a core from longer-sliced work at once;
/// the build processes Skiff starts keep the kernel's slice, behind requests.
#[test]
fn serving_threads_get_short_slices_and_builds_keep_the_default() -> Result<()> {
    let Some(default) = slice_in(Path::new("/proc/thread-self/sched")) else {
        eprintln!("this kernel does not show scheduler slices; nothing to check");
        return Ok(());
    };
    let s = Skiff::start()?;
    if s.logs().contains("keeps its own scheduler slices") {
        eprintln!("this kernel keeps its own scheduler slices; nothing to check");
        return Ok(());
    }
    let pid = s.pid().context("the platform's pid")?;
    let mut serving = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm"))?;
        let comm = comm.trim();
        // The tokio runtime's threads (and the main thread) are "skiff", the router's
        // "skiff-router", Pingora's own listener thread "Server", and the thread whose ticks
        // make busy guests yield "skiff-epoch".
        if ["skiff", "skiff-router", "Server", "skiff-epoch"].contains(&comm) {
            serving.push((comm.to_owned(), slice_in(&task.path().join("sched"))));
        }
    }
    ensure!(
        ["skiff", "skiff-router", "skiff-epoch"]
            .iter()
            .all(|name| serving.iter().any(|(c, _)| c == name)),
        "{serving:?}"
    );
    ensure!(
        serving.iter().all(|(_, slice)| *slice == Some(100_000)),
        "every serving thread has a 100 µs slice: {serving:?}"
    );

    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "sliced"])?)?;
    slow_makefile(&repo, 316)?;
    ok(s.git(&repo, &["add", "--all"])?)?;
    ok(s.git(&repo, &["commit", "--quiet", "-m", "slow"])?)?;
    let (mut push, _output) = push_until(&s, &repo, "chaos-build-started")?;
    let sleeper = wait_for_process(&["sleep", "316"])?;
    let compile = ancestor_running(sleeper, "bin/compile").context("the buildpack's process")?;
    let build: Vec<_> = [compile, sleeper]
        .iter()
        .map(|p| slice_in(Path::new(&format!("/proc/{p}/sched"))))
        .collect();
    ok(Command::new("kill")
        .args(["-KILL", &sleeper.to_string()])
        .output()?)?;
    let pushed = wait_with_deadline(&mut push, Duration::from_secs(60))?;
    ensure!(!pushed, "the cut-off build must not deploy");
    ensure!(
        build.iter().all(|slice| *slice == Some(default)),
        "the build's processes keep the kernel's {default} ns slice: {build:?}"
    );
    Ok(())
}
