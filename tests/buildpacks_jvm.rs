//! The Clojure, Scala and Java buildpacks end to end: each example is pushed through real git
//! to a running `skiff up`, built (the compilers come from Maven, installed once per checkout
//! under target/test-toolchains), served, called through the router, changed, pushed again and
//! seen live, all by one shared flow.
//!
//! Build times, slug sizes, first-request latencies and a short sequential req/s run are
//! printed (run with `--nocapture`), never asserted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

/// The shared route checks, with an echo body larger than one 4 KiB write and not ASCII, so it
/// must come back whole and unmangled.
fn check_routes(s: &Skiff, repo: &Path, app: &str, greeting: &str) -> Result<Duration> {
    check_example_routes(s, repo, app, greeting, &"ping pong \u{1F3D3} ".repeat(500))
}

fn ensure_lines(output: &str, expected: &[&str]) -> Result<()> {
    for e in expected {
        ensure!(output.contains(e), "missing {e:?} in:\n{output}");
    }
    Ok(())
}

/// Sequential GETs of `/` through the router for about `window`; requests per second.
fn requests_per_second(s: &Skiff, host: &str, window: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < window {
        let (status, _) = s.request(host, "GET", "/", None)?;
        ensure!(status == 200, "status {status} under load\n{}", s.logs());
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

/// How long each deploy took to compile the component to native code, from the runtime's
/// `precompiled component ... ms=N` log lines.
fn precompile_times(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("precompiled component"))
        .filter_map(|l| l.split("ms=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|ms| ms.parse::<f64>().ok())
        .map(|ms| format!("{:.1}s", ms / 1000.0))
        .collect()
}

struct Timings {
    first_build: Duration,
    rebuild: Duration,
    slug: String,
    latency: Duration,
    rps: f64,
    native: Vec<String>,
}

fn report(lang: &str, t: &Timings) {
    eprintln!(
        "[{lang}] first push {:.1}s, second push {:.1}s, slug {}, compile to native at deploy {}, first request {:.1} ms, {:.1} req/s (sequential, through the router)",
        t.first_build.as_secs_f64(),
        t.rebuild.as_secs_f64(),
        t.slug,
        t.native.join(" / "),
        t.latency.as_secs_f64() * 1000.0,
        t.rps
    );
}

/// One buildpack's example, pushed twice: what its pushes must print, and where its greeting is.
struct Example<'a> {
    lang: &'a str,
    example: &'a str,
    app: &'a str,
    greeting: &'a str,
    /// The source file holding the greeting, changed for the second push.
    source: &'a str,
    first_push: &'a [&'a str],
    second_push: &'a [&'a str],
}

/// The flow every JVM-language example goes through: push, call each route, set a config var,
/// push a change and see it live, then a short sequential load run.
fn push_example_twice(e: &Example) -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), e.example)?;
    ok(s.cli(&repo, &["apps:create", e.app])?)?;

    let (output, first_build) = push_timed(&s, &repo, "first")?;
    ensure_lines(&output, e.first_push)?;
    ensure_lines(&output, &["-----> Launching... done, v1"])?;
    let latency = check_routes(&s, &repo, e.app, e.greeting)?;

    let changed_greeting = format!("{}, changed and pushed again", e.lang);
    replace_in(&repo.join(e.source), e.greeting, &changed_greeting)?;
    let (second, rebuild) = push_timed(&s, &repo, "change")?;
    ensure_lines(&second, e.second_push)?;
    let host = format!("{}.localhost:{}", e.app, s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, format!("{changed_greeting}\n")),
        "{changed:?}\n{}",
        s.logs()
    );
    let rps = requests_per_second(&s, &host, Duration::from_secs(3))?;
    let lang = e.lang.to_lowercase();
    steps(&lang, "first push", &output);
    steps(&lang, "second push", &second);
    report(
        &lang,
        &Timings {
            first_build,
            rebuild,
            slug: slug_size(&output),
            latency,
            rps,
            native: precompile_times(&s.logs()),
        },
    );
    Ok(())
}

#[test]
fn clojure_app_compiled_with_clojurescript() -> Result<()> {
    push_example_twice(&Example {
        lang: "Clojure",
        example: "clojure-hello",
        app: "cljhello",
        greeting: "Hello from Clojure on Skiff!",
        source: "src/hello/core.cljs",
        first_push: &[
            "remote: -----> Clojure app detected",
            "ClojureScript 1.11.132",
            "Serving hello.core/handler from src",
            "-----> Building the component (componentize-js)",
        ],
        second_push: &[
            "-----> Using ClojureScript 1.11.132 (installed on this machine)",
            "build cache warm",
        ],
    })
}

#[test]
fn java_app_compiled_with_teavm() -> Result<()> {
    push_example_twice(&Example {
        lang: "Java",
        example: "java-hello",
        app: "javahello",
        greeting: "Hello from Java on Skiff!",
        source: "src/main/java/hello/App.java",
        first_push: &[
            "remote: -----> Java app detected",
            "TeaVM 0.10.2",
            "-----> Building with Maven (build cache cold)",
            "-----> Serving hello.App",
            "-----> Compiling to WebAssembly (TeaVM 0.10.2, WASI)",
            "-----> Wrapping bin/web.wasm (a WASI preview 1 module) into a component",
        ],
        second_push: &[
            "-----> Using TeaVM 0.10.2 (installed on this machine)",
            "build cache warm",
        ],
    })
}

#[test]
fn scala_app_compiled_with_scalajs() -> Result<()> {
    push_example_twice(&Example {
        lang: "Scala",
        example: "scala-hello",
        app: "scalahello",
        greeting: "Hello from Scala on Skiff!",
        source: "src/main/scala/hello/App.scala",
        first_push: &[
            "remote: -----> Scala app detected",
            "Scala 2.13.18 and Scala.js 1.20.2",
            "-----> Serving hello.App",
            "-----> Compiling Scala 2.13.18 with Scala.js 1.20.2",
            "-----> Linking to JavaScript (Scala.js linker, one ES module)",
            "-----> Building the component (componentize-js)",
        ],
        second_push: &[
            "-----> Using Scala 2.13.18 and Scala.js 1.20.2 (installed on this machine)",
        ],
    })
}

/// Clojure comes before Java (Leiningen writes a pom.xml), Scala before Java (a Scala Maven
/// project has a pom.xml) and all before Node.js (a shadow-cljs project has a package.json),
/// each listed with what it detects.
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
        at("clojure")? < at("scala")? && at("scala")? < at("java")? && at("java")? < at("nodejs")?,
        "{text}"
    );
    ensure_lines(
        &text,
        &[
            "deps.edn, project.clj or shadow-cljs.edn",
            "build.sbt, or pom.xml with Scala",
            "pom.xml",
        ],
    )?;
    Ok(())
}
