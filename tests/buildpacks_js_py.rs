//! The Node.js and Python buildpacks end to end: the examples pushed through real git to a real
//! `skiff up`, every route called through the router, a config var set, a change pushed and
//! seen live, and the second build reusing the caches. Toolchains (componentize-js,
//! componentize-py) are installed once per checkout under target/test-toolchains.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use common::*;

/// A fresh git repository holding a copy of `examples/<name>`.
fn example_repo(s: &Skiff, parent: &Path, name: &str) -> Result<PathBuf> {
    let repo = parent.join(name);
    copy_tree(&repo_root().join("examples").join(name), &repo)?;
    // A developer's local install is not part of what they push.
    let _ = std::fs::remove_dir_all(repo.join("node_modules"));
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    Ok(repo)
}

/// Replaces `from` with `to` in `repo/file`, which must contain it.
fn edit(repo: &Path, file: &str, from: &str, to: &str) -> Result<()> {
    let path = repo.join(file);
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replace(from, to))?;
    Ok(())
}

fn push(s: &Skiff, repo: &Path, message: &str) -> Result<String> {
    let (pushed, output) = s.commit_and_push(repo, message)?;
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    Ok(output)
}

fn assert_contains(output: &str, expected: &[&str]) {
    for e in expected {
        assert!(output.contains(e), "missing {e:?} in:\n{output}");
    }
}

/// Calls the routes every example has: `/`, `/json`, `/echo`, `/env/NAME`.
fn check_routes(s: &Skiff, app: &str, greeting: &str) -> Result<()> {
    let host = format!("{app}.localhost:{}", s.http_port);
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, format!("{greeting}\n"))
    );
    let (status, json) = s.request(&host, "GET", "/json", None)?;
    assert_eq!(status, 200, "{json}");
    let json: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
    assert_eq!(json["path"], "/json", "{json}");
    let body = "ping pong \u{1F3D3} ".repeat(2000);
    assert_eq!(
        s.request(&host, "POST", "/echo", Some(&body))?,
        (200, body.clone()),
        "a body larger than one 4 KiB write comes back whole"
    );
    Ok(())
}

fn config_var_reaches_the_app(s: &Skiff, repo: &Path, app: &str) -> Result<()> {
    let host = format!("{app}.localhost:{}", s.http_port);
    assert_eq!(s.request(&host, "GET", "/env/GREETING", None)?.0, 404);
    ok(s.cli(repo, &["config:set", "GREETING=ahoy"])?)?;
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "ahoy\n".into())
    );
    Ok(())
}

#[test]
fn nodejs_app_builds_serves_and_redeploys() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "nodejs-hello")?;
    ok(s.cli(&repo, &["apps:create", "jshello"])?)?;

    let output = push(&s, &repo, "first")?;
    assert_contains(
        &output,
        &[
            "-----> Node.js app detected",
            "-----> Installing dependencies",
            "-----> Bundling src/index.ts (esbuild)",
            "-----> Building the component (componentize-js)",
            "-----> Built bin/web.wasm",
            "-----> Launching... done, v1",
        ],
    );
    check_routes(&s, "jshello", "Hello from Node.js on Skiff!")?;
    config_var_reaches_the_app(&s, &repo, "jshello")?;

    // The second push reuses the toolchain and the app's node_modules.
    edit(
        &repo,
        "src/index.ts",
        "Hello from Node.js on Skiff!",
        "Hello again from Node.js!",
    )?;
    let output = push(&s, &repo, "second")?;
    assert_contains(
        &output,
        &[
            "-----> Using componentize-js",
            "Restoring node_modules from the build cache",
            "Launching... done, v3",
        ],
    );
    check_routes(&s, "jshello", "Hello again from Node.js!")?;
    let host = format!("jshello.localhost:{}", s.http_port);
    assert_eq!(
        s.request(&host, "GET", "/env/GREETING", None)?,
        (200, "ahoy\n".into())
    );

    // A syntax error fails the push with esbuild's message; the running release stays.
    edit(
        &repo,
        "src/index.ts",
        "export default app;",
        "export default app;;; }",
    )?;
    let (pushed, output) = s.commit_and_push(&repo, "broken")?;
    assert!(!pushed, "{output}");
    assert_contains(
        &output,
        &[
            "bundling src/index.ts failed",
            "failed to compile Node.js app",
        ],
    );

    // So does a module with no fetch handler, with a message that says what to write.
    std::fs::write(
        repo.join("src/index.ts"),
        "export default { hello() {} };\n",
    )?;
    let (pushed, output) = s.commit_and_push(&repo, "no handler")?;
    assert!(!pushed, "{output}");
    assert_contains(
        &output,
        &[
            "the app has no fetch handler",
            "failed to compile Node.js app",
        ],
    );
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Node.js!\n".into())
    );
    Ok(())
}

#[test]
fn python_app_builds_serves_and_redeploys() -> Result<()> {
    let s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = example_repo(&s, work.path(), "python-hello")?;
    ok(s.cli(&repo, &["apps:create", "pyhello"])?)?;

    let output = push(&s, &repo, "first")?;
    assert_contains(
        &output,
        &[
            "-----> Python app detected",
            "-----> Installing requirements with pip",
            "Removing native extensions",
            "-----> Serving app:app (WSGI)",
            "-----> Building the component (componentize-py)",
            "Procfile web: gunicorn app:app -> web: bin/web.wasm",
            "-----> Launching... done, v1",
        ],
    );
    check_routes(&s, "pyhello", "Hello from Flask on Skiff!")?;
    config_var_reaches_the_app(&s, &repo, "pyhello")?;

    // Flask's own 404 and 405 pages come through the adapter.
    let host = format!("pyhello.localhost:{}", s.http_port);
    assert_eq!(s.request(&host, "GET", "/nowhere", None)?.0, 404);
    assert_eq!(s.request(&host, "DELETE", "/", None)?.0, 405);
    // HEAD: the status and headers of GET, no body, and no complaint from the host about a
    // body shorter than the Content-Length Flask computed.
    let head = http_full(s.http_port, &host, "HEAD", "/", None, &[])?;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(s.request(&host, "GET", "/", None)?.0, 200);
    assert!(!s.logs().contains("HttpResponseBodySize"), "{}", s.logs());

    // The second push reuses the toolchain and the installed requirements.
    edit(
        &repo,
        "app.py",
        "Hello from Flask on Skiff!",
        "Hello again from Flask!",
    )?;
    let output = push(&s, &repo, "second")?;
    assert_contains(
        &output,
        &[
            "-----> Using componentize-py",
            "Requirements unchanged: using the packages from the build cache",
            "Launching... done, v3",
        ],
    );
    check_routes(&s, "pyhello", "Hello again from Flask!")?;

    // An app that fails to import fails the push with its traceback; the running release stays.
    edit(
        &repo,
        "app.py",
        "import os\n",
        "import os\nimport not_a_module\n",
    )?;
    let (pushed, output) = s.commit_and_push(&repo, "broken")?;
    assert!(!pushed, "{output}");
    assert_contains(&output, &["not_a_module", "failed to compile Python app"]);
    assert_eq!(
        s.request(&host, "GET", "/", None)?,
        (200, "Hello again from Flask!\n".into())
    );
    Ok(())
}

/// `skiff buildpacks` lists what is installed in detection order, with what each detects.
#[test]
fn buildpacks_are_listed_in_detection_order() -> Result<()> {
    let s = Skiff::start()?;
    let out = ok(s.cli(s.dir.path(), &["buildpacks"])?)?;
    let text = stdout(&out);
    let at = |name: &str| {
        text.find(name)
            .with_context(|| format!("{name} missing from:\n{text}"))
    };
    ensure!(
        at("rust")? < at("nodejs")?
            && at("nodejs")? < at("python")?
            && at("python")? < at("ruby")?
            && at("ruby")? < at("php")?
            && at("php")? < at("go.mod")?,
        "{text}"
    );
    assert_contains(
        &text,
        &[
            "package.json",
            "requirements.txt, pyproject.toml or app.py",
            "index.php or composer.json",
            "config.ru or Gemfile",
        ],
    );

    let out = ok(s.cli(s.dir.path(), &["buildpacks", "--json"])?)?;
    let list: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    let python = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["name"] == "python")
        .context("python in --json")?;
    assert_eq!(
        python["detects"],
        "requirements.txt, pyproject.toml or app.py"
    );
    Ok(())
}
