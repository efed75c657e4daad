//! The Clojure and Java buildpacks end to end: each example is pushed through real git to a
//! running `skiff up`, built (the compilers come from Maven, installed once per checkout under
//! target/test-toolchains), served, called through the router, changed, pushed again and seen
//! live.
//!
//! Build times, slug sizes, first-request latencies and a short sequential req/s run are
//! printed (run with `--nocapture`), never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

fn example_repo(s: &Skiff, parent: &Path, example: &str) -> Result<PathBuf> {
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
fn push(s: &Skiff, repo: &Path, message: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let (pushed, output) = s.commit_and_push(repo, message)?;
    let took = started.elapsed();
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    Ok((output, took))
}

fn ensure_lines(output: &str, expected: &[&str]) -> Result<()> {
    for e in expected {
        ensure!(output.contains(e), "missing {e:?} in:\n{output}");
    }
    Ok(())
}

/// The slug size from the push output's `Done: 1.2M` line.
fn slug_size(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("Done: ").nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

fn replace_in(path: &Path, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    ensure!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to))?;
    Ok(())
}

/// Sequential GETs of `/` through the router for about `window`; requests per second.
fn requests_per_second(s: &Skiff, host: &str, window: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < window {
        let (status, _) = s.request(host, "GET", "/", None)?;
        ensure!(status == 200, "status {status} under load");
        n += 1;
    }
    Ok(f64::from(n) / started.elapsed().as_secs_f64())
}

/// The push's step lines and the buildpack's own timings, for the printed report.
fn steps(lang: &str, push: &str, output: &str) {
    for line in output.lines() {
        let line = line.trim_start_matches("remote: ").trim_end();
        if line.starts_with("-----> ") || line.contains("Done in") {
            eprintln!("[{lang}] {push}: {line}");
        }
    }
}

struct Timings {
    first_build: Duration,
    rebuild: Duration,
    slug: String,
    latency: Duration,
    rps: f64,
}

fn report(lang: &str, t: &Timings) {
    eprintln!(
        "[{lang}] first push {:.1}s, second push {:.1}s, slug {}, first request {:.1} ms, {:.1} req/s (sequential, through the router)",
        t.first_build.as_secs_f64(),
        t.rebuild.as_secs_f64(),
        t.slug,
        t.latency.as_secs_f64() * 1000.0,
        t.rps
    );
}

/// The routes every example answers: `/`, `/env/NAME`, `POST /echo`, `/json`, and a 404.
fn check_routes(s: &Skiff, repo: &Path, app: &str, greeting: &str) -> Result<Duration> {
    let host = format!("{app}.localhost:{}", s.http_port);
    let started = Instant::now();
    let first = s.request(&host, "GET", "/", None)?;
    let latency = started.elapsed();
    ensure!(first == (200, format!("{greeting}\n")), "{first:?}");

    let (status, body) = s.request(&host, "GET", "/env/GREETING", None)?;
    ensure!(status == 404, "{status} {body}");
    let out = ok(s.cli(repo, &["config:set", "GREETING=ahoy"])?)?;
    ensure!(stderr(&out).contains("done, v2"), "{out:?}");
    let env = s.request(&host, "GET", "/env/GREETING", None)?;
    ensure!(env == (200, "ahoy".into()), "{env:?}");

    // Larger than one 4 KiB write, and not ASCII, so it must come back whole and unmangled.
    let body = "ping pong \u{1F3D3} ".repeat(500);
    let echoed = http_full(
        s.http_port,
        &host,
        "POST",
        "/echo",
        Some(&body),
        &[("Content-Type", "text/x-test")],
    )?;
    ensure!(
        echoed.status == 200 && echoed.body == body,
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

#[test]
fn clojure_app_compiled_with_clojurescript() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "clojure-hello")?;
    ok(s.cli(&repo, &["apps:create", "cljhello"])?)?;

    let (output, first_build) = push(&s, &repo, "first")?;
    ensure_lines(
        &output,
        &[
            "remote: -----> Clojure app detected",
            "ClojureScript 1.11.132",
            "Serving hello.core/handler from src",
            "-----> Building the component (componentize-js)",
            "-----> Launching... done, v1",
        ],
    )?;
    let latency = check_routes(&s, &repo, "cljhello", "Hello from Clojure on Skiff!")?;

    replace_in(
        &repo.join("src/hello/core.cljs"),
        "Hello from Clojure on Skiff!",
        "Clojure, changed and pushed again",
    )?;
    let (second, rebuild) = push(&s, &repo, "change")?;
    ensure_lines(
        &second,
        &[
            "-----> Using ClojureScript 1.11.132 (installed on this machine)",
            "build cache warm",
        ],
    )?;
    let host = format!("cljhello.localhost:{}", s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "Clojure, changed and pushed again\n".into()),
        "{changed:?}"
    );
    let rps = requests_per_second(&s, &host, Duration::from_secs(3))?;
    steps("clojure", "first push", &output);
    steps("clojure", "second push", &second);
    report(
        "clojure",
        &Timings {
            first_build,
            rebuild,
            slug: slug_size(&output),
            latency,
            rps,
        },
    );
    Ok(())
}

#[test]
fn java_app_compiled_with_teavm() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "java-hello")?;
    ok(s.cli(&repo, &["apps:create", "javahello"])?)?;

    let (output, first_build) = push(&s, &repo, "first")?;
    ensure_lines(
        &output,
        &[
            "remote: -----> Java app detected",
            "TeaVM 0.10.2",
            "-----> Building with Maven (build cache cold)",
            "-----> Serving hello.App",
            "-----> Compiling to WebAssembly (TeaVM 0.10.2, WASI)",
            "-----> Wrapping bin/web.wasm (a WASI preview 1 module) into a component",
            "-----> Launching... done, v1",
        ],
    )?;
    let latency = check_routes(&s, &repo, "javahello", "Hello from Java on Skiff!")?;

    replace_in(
        &repo.join("src/main/java/hello/App.java"),
        "Hello from Java on Skiff!",
        "Java, changed and pushed again",
    )?;
    let (second, rebuild) = push(&s, &repo, "change")?;
    ensure_lines(
        &second,
        &[
            "-----> Using TeaVM 0.10.2 (installed on this machine)",
            "build cache warm",
        ],
    )?;
    let host = format!("javahello.localhost:{}", s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "Java, changed and pushed again\n".into()),
        "{changed:?}"
    );
    let rps = requests_per_second(&s, &host, Duration::from_secs(3))?;
    steps("java", "first push", &output);
    steps("java", "second push", &second);
    report(
        "java",
        &Timings {
            first_build,
            rebuild,
            slug: slug_size(&output),
            latency,
            rps,
        },
    );
    Ok(())
}

/// Clojure comes before Java (Leiningen writes a pom.xml) and both before Node.js (a
/// shadow-cljs project has a package.json), each listed with what it detects.
#[test]
fn jvm_buildpacks_listed_in_detection_order() -> Result<()> {
    let s = Skiff::start()?;
    let out = ok(s.cli(s.dir.path(), &["buildpacks"])?)?;
    let text = stdout(&out);
    let at = |needle: &str| {
        text.find(needle)
            .with_context(|| format!("{needle} missing from:\n{text}"))
    };
    ensure!(
        at("clojure")? < at("java")? && at("java")? < at("nodejs")?,
        "{text}"
    );
    ensure_lines(
        &text,
        &["deps.edn, project.clj or shadow-cljs.edn", "pom.xml"],
    )?;
    Ok(())
}
