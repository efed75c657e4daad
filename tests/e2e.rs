//! End-to-end tests: the real `skiff` binary on free loopback ports, the real `git` client
//! pushing over smart HTTP, real builds with the Rust buildpack, and HTTP through the router.
//!
//! Each test gets its own data dir and `HOME` (so `~/.netrc` is the test's own).

mod common;

use anyhow::Result;
use common::*;

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
    // The platform's line for it says what went wrong in the guest, not only where.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let log = s.logs();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("request failed in the app") && l.contains("/crash"))
        {
            break l.to_owned();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no failure line:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(line.contains("wasm trap"), "{line}");
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
