//! The Go, C, Ruby, PHP and static-site buildpacks end to end: each example is pushed through real git to
//! a running `skiff up`, built into a WASI command component, served CGI-style, called through
//! the router, changed, pushed again and seen live.
//!
//! Build times, slug sizes and first-request latencies are printed (run with `--nocapture`),
//! never asserted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

fn check_routes(s: &Skiff, repo: &Path, app: &str, greeting: &str) -> Result<Duration> {
    check_example_routes(s, repo, app, greeting, "ping pong")
}

fn report(lang: &str, first: &str, first_build: Duration, rebuild: Duration, latency: Duration) {
    eprintln!(
        "[{lang}] first push {:.1}s, second push {:.1}s, slug {}, first request {:.1} ms",
        first_build.as_secs_f64(),
        rebuild.as_secs_f64(),
        slug_size(first),
        latency.as_secs_f64() * 1000.0
    );
}

#[test]
fn go_app_served_through_cgi() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "go-hello")?;
    ok(s.cli(&repo, &["apps:create", "gohello"])?)?;

    let (output, first_build) = push_timed(&s, &repo, "first")?;
    for expected in [
        "remote: -----> Go app detected",
        "-----> Using go1.",
        "-----> Compiling . as bin/go-hello.wasm",
        "-----> Wrapping bin/go-hello.wasm (a WASI preview 1 module) into a component",
        "-----> Launching... done, v1",
    ] {
        ensure!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let latency = check_routes(&s, &repo, "gohello", "Hello from Go on Skiff!")?;

    replace_in(
        &repo.join("main.go"),
        "Hello from Go on Skiff!",
        "Go, changed and pushed again",
    )?;
    let (second, rebuild) = push_timed(&s, &repo, "change")?;
    ensure!(second.contains("build cache warm"), "{second}");
    let host = format!("gohello.localhost:{}", s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "Go, changed and pushed again\n".into()),
        "{changed:?}"
    );
    report("go", &output, first_build, rebuild, latency);
    Ok(())
}

#[test]
fn c_app_served_through_cgi() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "c-hello")?;
    ok(s.cli(&repo, &["apps:create", "chello"])?)?;

    let (output, first_build) = push_timed(&s, &repo, "first")?;
    for expected in [
        "remote: -----> C app detected",
        "for wasm32-wasi with wasi-libc",
        "-----> Built bin/hello.wasm",
        "-----> Wrapping bin/hello.wasm (a WASI preview 1 module) into a component",
        "-----> Launching... done, v1",
    ] {
        ensure!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let latency = check_routes(&s, &repo, "chello", "Hello from C on Skiff!")?;

    replace_in(
        &repo.join("hello.c"),
        "Hello from C on Skiff!",
        "C, changed and pushed again",
    )?;
    let (_, rebuild) = push_timed(&s, &repo, "change")?;
    let host = format!("chello.localhost:{}", s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "C, changed and pushed again\n".into()),
        "{changed:?}"
    );
    // The program's stderr reaches the app's logs.
    let logs = ok(s.cli(&repo, &["logs", "-n", "200"])?)?;
    ensure!(
        stdout(&logs).contains("no route for GET /nowhere"),
        "{}",
        stdout(&logs)
    );
    report("c", &output, first_build, rebuild, latency);
    Ok(())
}

#[test]
fn static_site_served_by_the_file_server() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "static-hello")?;
    ok(s.cli(&repo, &["apps:create", "site"])?)?;

    let (output, first_build) = push_timed(&s, &repo, "first")?;
    for expected in [
        "remote: -----> Static site app detected",
        "Skiff's file server",
        "-----> Serving . (",
        "-----> Launching... done, v1",
    ] {
        ensure!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let host = format!("site.localhost:{}", s.http_port);
    let get = |path: &str| http_full(s.http_port, &host, "GET", path, None, &[]);

    let started = Instant::now();
    let home = get("/")?;
    let latency = started.elapsed();
    ensure!(home.status == 200, "{home:?}");
    ensure!(
        home.body.contains("Hello from a static site on Skiff!"),
        "{home:?}"
    );
    ensure!(
        home.header("content-type") == Some("text/html; charset=utf-8"),
        "{home:?}"
    );

    // clean_urls: /about serves about.html.
    let about = get("/about")?;
    ensure!(
        about.status == 200 && about.body.contains("<h1>About</h1>"),
        "{about:?}"
    );
    // A folder without its slash is redirected; with it, its index.html is served.
    let docs = get("/docs")?;
    ensure!(
        docs.status == 301 && docs.header("location") == Some("/docs/"),
        "{docs:?}"
    );
    let docs = get("/docs/")?;
    ensure!(
        docs.status == 200 && docs.body.contains("<h1>Docs</h1>"),
        "{docs:?}"
    );
    let json = get("/data/info.json")?;
    ensure!(
        json.header("content-type") == Some("application/json"),
        "{json:?}"
    );
    let value: serde_json::Value = serde_json::from_str(&json.body)?;
    ensure!(value["name"] == "static-hello", "{value}");
    let css = get("/css/site.css")?;
    ensure!(
        css.header("content-type") == Some("text/css; charset=utf-8")
            && css.header("cache-control") == Some("public, max-age=3600"),
        "{css:?}"
    );
    // Revalidation with the ETag.
    let etag = css.header("etag").context("etag")?.to_owned();
    let again = http_full(
        s.http_port,
        &host,
        "GET",
        "/css/site.css",
        None,
        &[("If-None-Match", &etag)],
    )?;
    ensure!(again.status == 304, "{again:?}");
    let moved = get("/old-about")?;
    ensure!(
        moved.status == 301 && moved.header("location") == Some("/about"),
        "{moved:?}"
    );
    // Missing files get the error page; hidden files and escapes get it too.
    for path in [
        "/missing.html",
        "/.skiff/static.wasm",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/css/..%2f..%2fstatic.json",
    ] {
        let resp = get(path)?;
        ensure!(
            resp.status == 404 && resp.body.contains("Nothing here"),
            "{path}: {resp:?}"
        );
    }
    let post = http_full(s.http_port, &host, "POST", "/", Some("x"), &[])?;
    ensure!(
        post.status == 405 && post.header("allow") == Some("GET, HEAD"),
        "{post:?}"
    );

    replace_in(
        &repo.join("index.html"),
        "Hello from a static site on Skiff!",
        "Static, changed and pushed again",
    )?;
    let (second, rebuild) = push_timed(&s, &repo, "change")?;
    ensure!(second.contains("built earlier on this machine"), "{second}");
    let changed = get("/")?;
    ensure!(
        changed.body.contains("Static, changed and pushed again"),
        "{changed:?}"
    );
    report("static", &output, first_build, rebuild, latency);
    Ok(())
}

/// A Rack app on ruby.wasm: config.ru and a vendored gem, pre-initialised at build time, with
/// config vars still read per request.
#[test]
fn ruby_rack_app_served_through_cgi() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "ruby-hello")?;
    ok(s.cli(&repo, &["apps:create", "rubyhello"])?)?;

    let (output, first_build) = push_timed(&s, &repo, "first")?;
    for expected in [
        "remote: -----> Ruby app detected",
        "ruby.wasm 2.10.1 (Ruby 3.4)",
        "-----> Using vendored gems: greeting",
        "-----> Pre-initialising the interpreter",
        "-----> Built bin/web.wasm",
        "-----> Wrapping bin/web.wasm (a WASI preview 1 module) into a component",
        "-----> Launching... done, v1",
    ] {
        ensure!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    // The snapshot was taken with no config vars; GREETING, set after the build, must show.
    let latency = check_routes(&s, &repo, "rubyhello", "Hello from Ruby on Skiff!")?;

    // The same app again: toolchain and snapshot both come from the caches.
    let (second, rebuild) = push_timed(&s, &repo, "same app")?;
    for expected in [
        "(installed on this machine)",
        "(built earlier on this machine)",
        "App unchanged: using the snapshot from the build cache",
    ] {
        ensure!(
            second.contains(expected),
            "missing {expected:?} in:\n{second}"
        );
    }

    replace_in(
        &repo.join("vendor/greeting/lib/greeting.rb"),
        "\"Hello from #{language} on Skiff!\"",
        "\"#{language}, changed and pushed again\"",
    )?;
    let (_, changed_build) = push_timed(&s, &repo, "change")?;
    let host = format!("rubyhello.localhost:{}", s.http_port);
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "Ruby, changed and pushed again\n".into()),
        "{changed:?}"
    );
    eprintln!(
        "[ruby] push with a changed app {:.1}s",
        changed_build.as_secs_f64()
    );
    report("ruby", &output, first_build, rebuild, latency);
    Ok(())
}

#[test]
fn php_app_served_through_cgi() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "php-hello")?;
    ok(s.cli(&repo, &["apps:create", "phphello"])?)?;

    // The first PHP build on a machine compiles php-cgi; later ones (and other tests' runs on
    // the same machine) reuse it from the toolchain cache.
    let (output, first_build) = push_timed(&s, &repo, "first")?;
    for expected in [
        "remote: -----> PHP app detected",
        "-----> Installing PHP 8.2.",
        "(built for WASI",
        "index.php as the front controller",
        "-----> Built bin/php-cgi.wasm",
        "-----> Wrapping bin/php-cgi.wasm (a WASI preview 1 module) into a component",
        "-----> Launching... done, v1",
    ] {
        ensure!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let latency = check_routes(&s, &repo, "phphello", "Hello from PHP on Skiff!")
        .with_context(|| s.logs())?;

    // A script of its own runs instead of the front controller; other files are sent as
    // they are; dotfiles and unknown paths go to index.php.
    let host = format!("phphello.localhost:{}", s.http_port);
    let (status, info) = s.request(&host, "GET", "/info.php", None)?;
    ensure!(
        status == 200 && info.contains("PHP 8.2.") && info.contains("(cgi-fcgi)"),
        "{status} {info}"
    );
    let css = http_full(s.http_port, &host, "GET", "/public/style.css", None, &[])?;
    ensure!(
        css.status == 200
            && css.body.contains("font-family")
            && css.header("content-type") == Some("text/css; charset=utf-8"),
        "{css:?}"
    );
    let (status, _) = s.request(&host, "GET", "/../etc/passwd", None)?;
    ensure!(status == 404, "{status}");

    let (second, rebuild) = push_timed(&s, &repo, "same app")?;
    ensure!(
        second.contains("(built for WASI, cached)"),
        "missing the cached interpreter in:\n{second}"
    );

    replace_in(
        &repo.join("src/greeting.php"),
        "\"Hello from $language on Skiff!\"",
        "\"$language, changed and pushed again\"",
    )?;
    push_timed(&s, &repo, "change")?;
    let changed = s.request(&host, "GET", "/", None)?;
    ensure!(
        changed == (200, "PHP, changed and pushed again\n".into()),
        "{changed:?}"
    );
    report("php", &output, first_build, rebuild, latency);
    Ok(())
}
