//! The control plane end to end: releases and rollback, the release phase, scaling with web and
//! worker dynos, one-off runs, collaborators, rename and destroy, and a kill -9 mid-deploy.

mod common;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

const PROCFILE: &str = "web: bin/rust-hello.wasm\nrelease: bin/tasks.wasm migrate\nworker: bin/tasks.wasm work\ncrasher: bin/tasks.wasm exit 3\n";

fn json(out: std::process::Output) -> Result<Value> {
    let out = ok(out)?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("not JSON: {}", stdout(&out)))
}

#[test]
fn releases_rollback_scale_run_and_access() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;
    std::fs::write(repo.join("Procfile"), PROCFILE)?;
    ok(s.cli(&repo, &["apps:create", "hello"])?)?;
    let host = format!("hello.localhost:{}", s.http_port);

    // The release phase runs before the release goes live, and its output reaches the pusher.
    let (pushed, output) = s.commit_and_push(&repo, "first")?;
    assert!(pushed, "{output}\n{}", s.logs());
    assert!(
        output.contains("Running release command: bin/tasks.wasm migrate"),
        "{output}"
    );
    assert!(output.contains("Migrations up to date."), "{output}");
    assert!(output.contains("Launching... done, v1"), "{output}");

    // Config changes and rollbacks are releases; a rollback brings back code and config.
    ok(s.cli(&repo, &["config:set", "GREETING=one"])?)?; // v2
    ok(s.cli(&repo, &["config:set", "GREETING=two"])?)?; // v3
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "two\n".into())
    );
    let out = ok(s.cli(&repo, &["rollback"])?)?;
    assert!(stderr(&out).contains("done, v4"), "{}", stderr(&out));
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "one\n".into())
    );
    ok(s.cli(&repo, &["rollback", "v1"])?)?; // v5
    assert_eq!(s.request(&host, "GET", "/env/GREETING", None)?.0, 404);
    let config = json(s.cli(&repo, &["config", "--json"])?)?;
    assert!(
        config.get("GREETING").is_none(),
        "rollback restores v1's config: {config}"
    );

    let releases = json(s.cli(&repo, &["releases", "--json"])?)?;
    let descriptions: Vec<&str> = releases
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|r| r["description"].as_str())
        .collect();
    assert_eq!(descriptions[0], "Rollback to v1");
    assert_eq!(descriptions[1], "Rollback to v2");
    assert_eq!(descriptions.len(), 5);
    let info = json(s.cli(&repo, &["releases:info", "v3", "--json"])?)?;
    assert_eq!(info["description"], "Set GREETING config vars");
    assert_eq!(info["slug_available"], true);
    let out = s.cli(&repo, &["rollback", "v42"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no release v42"), "{}", stderr(&out));

    // A failing release phase stops the rollout: no new release, the old one keeps serving.
    let out = s.cli(&repo, &["config:set", "FAIL_MIGRATIONS=1"])?;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("release phase failed"),
        "{}",
        stderr(&out)
    );
    let after = json(s.cli(&repo, &["releases", "--json"])?)?;
    assert_eq!(after.as_array().map(Vec::len), Some(5));
    assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);

    // Scale out web and start a worker; both show in ps, and requests keep being served.
    ok(s.cli(&repo, &["ps:scale", "web=2", "worker=1"])?)?;
    let ps = json(s.cli(&repo, &["ps", "--json"])?)?;
    let names: Vec<&str> = ps["dynos"]
        .as_array()
        .context("dynos")?
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, vec!["web.1", "web.2", "worker.1"], "{ps}");
    assert_eq!(ps["formation"]["web"]["quantity"], 2);
    for _ in 0..4 {
        assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);
    }
    ok(s.cli(&repo, &["ps:stop", "web.2"])?)?;
    let ps = json(s.cli(&repo, &["ps", "--json"])?)?;
    assert_eq!(ps["dynos"].as_array().map(Vec::len), Some(2), "{ps}");
    assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);
    ok(s.cli(&repo, &["ps:restart", "web.1"])?)?;
    ok(s.cli(&repo, &["ps:restart"])?)?;
    let ps = json(s.cli(&repo, &["ps", "--json"])?)?;
    assert_eq!(
        ps["dynos"].as_array().map(Vec::len),
        Some(3),
        "restart brings the formation back: {ps}"
    );
    let out = s.cli(&repo, &["ps:scale", "nope=1"])?;
    assert!(
        stderr(&out).contains("no such process type nope"),
        "{}",
        stderr(&out)
    );
    ok(s.cli(&repo, &["ps:scale", "worker=0"])?)?;

    // A worker that keeps exiting is started again after a wait that doubles.
    ok(s.cli(&repo, &["ps:scale", "crasher=1"])?)?;
    let logs = wait_for_log(&s, &repo, "restarting in 2s")?;
    // wasip2's `exit` carries only success or failure, so any failing code shows as 1.
    assert!(logs.contains("Process exited with status 1"), "{logs}");
    assert!(logs.contains("restarting in 1s"), "{logs}");
    ok(s.cli(&repo, &["ps:scale", "crasher=0"])?)?;

    // Web dynos whose every request crashes go into a crash loop: they answer H10 at once
    // (503) instead of running the guest, show as crashed, and serve again once a request
    // after the wait succeeds.
    let mut refused = None;
    for _ in 0..60 {
        let (status, body) = s.request(&host, "GET", "/crash", None)?;
        if status == 503 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 500, "{body}");
    }
    let refused = refused.context("the dynos never entered the crash loop")?;
    assert!(refused.contains("App crashed"), "{refused}");
    let ps = json(s.cli(&repo, &["ps", "--json"])?)?;
    assert!(
        ps["dynos"]
            .as_array()
            .context("dynos")?
            .iter()
            .any(|d| d["state"] == "crashed"),
        "{ps}"
    );
    let mut served = false;
    for _ in 0..200 {
        let (status, body) = s.request(&host, "GET", "/", None)?;
        match status {
            200 => {
                served = true;
                break;
            }
            503 => assert!(body.contains("App crashed"), "{body}"),
            other => anyhow::bail!("unexpected {other} during the crash loop: {body}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served, "the app never served again after its crash loop");
    let logs = wait_for_log(&s, &repo, "State changed from crashed to up")?;
    assert!(logs.contains("requests in a row crashed"), "{logs}");
    assert!(logs.contains("Error H10 (App crashed"), "{logs}");

    // A new release ends a crash loop at once: its dynos start with a clean record.
    let mut looping = false;
    for _ in 0..60 {
        if s.request(&host, "GET", "/crash", None)?.0 == 503 {
            looping = true;
            break;
        }
    }
    assert!(looping, "the dynos never entered the crash loop again");
    ok(s.cli(&repo, &["config:set", "AFTER_CRASH=yes"])?)?;
    for _ in 0..4 {
        assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);
    }
    let ps = json(s.cli(&repo, &["ps", "--json"])?)?;
    assert!(
        ps["dynos"]
            .as_array()
            .context("dynos")?
            .iter()
            .all(|d| d["state"] == "up"),
        "{ps}"
    );

    // One-off runs: output streams back and the exit status comes through.
    let out = ok(s.cli(&repo, &["run", "--", "tasks", "env", "SKIFF_APP"])?)?;
    assert_eq!(stdout(&out), "SKIFF_APP=hello\n");
    let out = s.cli(&repo, &["run", "tasks", "exit", "3"])?;
    assert!(!out.status.success(), "a failing command fails the run");
    assert!(stderr(&out).contains("exiting with 3"), "{}", stderr(&out));
    let out = s.cli(&repo, &["run", "no-such-thing"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no such process type or component"),
        "{}",
        stderr(&out)
    );
    let out = ok(s.cli(&repo, &["run", "--detach", "tasks", "migrate"])?)?;
    assert!(stderr(&out).contains("done, run."), "{}", stderr(&out));

    // Collaborators: a user sees only the apps shared with them.
    let bob = stdout(&ok(s.cli(&repo, &["users:create", "bob@example.com"])?)?)
        .trim()
        .to_owned();
    ensure!(bob.len() == 64, "token printed: {bob:?}");
    ok(s.cli(&repo, &["apps:create", "other"])?)?;
    let out = s.cli_as(&bob, &repo, &["config", "-a", "hello"])?;
    assert!(
        stderr(&out).contains("You do not have access to the app hello"),
        "{out:?}"
    );
    ok(s.cli(&repo, &["access:add", "bob@example.com"])?)?;
    ok(s.cli_as(&bob, &repo, &["config", "-a", "hello"])?)?;
    let out = s.cli_as(&bob, &repo, &["config", "-a", "other"])?;
    assert!(
        stderr(&out).contains("You do not have access to the app other"),
        "{out:?}"
    );
    let out = s.cli_as(&bob, &repo, &["logs", "-a", "other"])?;
    assert!(
        stderr(&out).contains("You do not have access to the app other"),
        "{out:?}"
    );
    let apps = json(s.cli_as(&bob, &repo, &["apps", "--json"])?)?;
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    let other_git = format!("http://bob:{bob}@127.0.0.1:{}/other.git", s.api_port);
    let out = s.git(&repo, &["push", &other_git, "main"])?;
    assert!(!out.status.success(), "bob may not push to other");
    let out = s.cli_as(&bob, &repo, &["users:create", "eve@example.com"])?;
    assert!(stderr(&out).contains("only the admin"), "{out:?}");

    // Login writes the token to ~/.netrc; whoami reads it back.
    let bob_home = s.dir.path().join("bob-home");
    std::fs::create_dir_all(&bob_home)?;
    let login = |args: &[&str]| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
        s.env(&mut cmd);
        Ok(cmd
            .env("HOME", &bob_home)
            .current_dir(&repo)
            .args(args)
            .output()?)
    };
    ok(login(&["login", "--token", &bob])?)?;
    assert_eq!(
        stdout(&ok(login(&["auth:whoami"])?)?).trim(),
        "bob@example.com"
    );
    assert_eq!(stdout(&ok(login(&["auth:token"])?)?).trim(), bob);
    ok(login(&["logout"])?)?;
    assert!(!login(&["auth:whoami"])?.status.success());
    let out = login(&["login", "--token", "wrong"])?;
    assert!(stderr(&out).contains("refused"), "{out:?}");

    // Rename moves the URL; destroy removes the app and needs confirmation.
    ok(s.cli(&repo, &["apps:rename", "hello-two"])?)?;
    let remote = stdout(&ok(s.git(&repo, &["remote", "get-url", "skiff"])?)?);
    assert!(remote.trim().ends_with("/hello-two.git"), "{remote}");
    let renamed = format!("hello-two.localhost:{}", s.http_port);
    assert_eq!(s.request(&renamed, "GET", "/", None)?.0, 200);
    assert_eq!(s.request(&host, "GET", "/", None)?.0, 404);
    let out = s.cli(&repo, &["apps:destroy"])?;
    assert!(stderr(&out).contains("--confirm hello-two"), "{out:?}");
    ok(s.cli(&repo, &["apps:destroy", "--confirm", "hello-two"])?)?;
    assert_eq!(s.request(&renamed, "GET", "/", None)?.0, 404);
    let apps = json(s.cli(&repo, &["apps", "--json"])?)?;
    assert_eq!(
        apps.as_array().map(Vec::len),
        Some(1),
        "only `other` is left: {apps}"
    );
    Ok(())
}

/// kill -9 of the platform in the middle of a deploy loses no acknowledged release, and the
/// app comes back serving what was live.
#[test]
fn kill9_mid_deploy_keeps_every_release() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = rust_hello_repo(&s, work.path())?;
    ok(s.cli(&repo, &["apps:create", "sturdy"])?)?;
    let (pushed, output) = s.commit_and_push(&repo, "v1")?;
    assert!(pushed, "{output}");
    ok(s.cli(&repo, &["config:set", "GREETING=kept"])?)?;
    let host = format!("sturdy.localhost:{}", s.http_port);
    let before = stdout(&ok(s.cli(&repo, &["releases", "--json"])?)?);

    // Push a change and kill the platform once the build is under way.
    set_greeting(&repo, "never released")?;
    ok(s.git(&repo, &["add", "--all"])?)?;
    ok(s.git(&repo, &["commit", "--quiet", "-m", "doomed"])?)?;
    let mut push = s
        .git_command(&repo, &["push", "--progress", "skiff", "main"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = BufReader::new(push.stderr.take().context("stderr")?);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    for line in reader.lines() {
        let line = line?;
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("-----> Compiling") || Instant::now() > deadline {
            break;
        }
    }
    assert!(
        seen.contains("-----> Compiling"),
        "the build never started:\n{seen}"
    );
    s.kill9()?;
    let status = push.wait()?;
    assert!(
        !status.success(),
        "a push cut off by a crash must not report success"
    );

    s.boot()?;
    let after = stdout(&ok(s.cli(&repo, &["releases", "--json"])?)?);
    assert_eq!(after, before, "releases after the crash");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello from Skiff!\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "kept\n".into())
    );

    // The next push works normally.
    let (pushed, output) = s.commit_and_push(&repo, "again")?;
    assert!(pushed, "{output}");
    assert!(output.contains("Launching... done, v3"), "{output}");
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "never released\n".into())
    );
    Ok(())
}

/// The app's recent log once it holds `needle` (waits up to 30 s).
fn wait_for_log(s: &Skiff, repo: &std::path::Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = stdout(&ok(s.cli(repo, &["logs", "-n", "500"])?)?);
        if logs.contains(needle) || Instant::now() > deadline {
            anyhow::ensure!(logs.contains(needle), "no {needle:?} in:\n{logs}");
            return Ok(logs);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
