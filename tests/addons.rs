//! Add-ons end to end: a real PostgreSQL cluster (Skiff's own, made with the machine's
//! `initdb`), the todo example pushed with git and served through the router, credentials
//! rotated, the platform restarted; and the isolation between apps' databases and stores.
//!
//! Needs PostgreSQL's server binaries (`.ci/run` installs Debian's `postgresql`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::*;

/// Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin.
fn pg_bin(name: &str) -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin").join(name);
            bin.is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .with_context(|| format!("no {name} under /usr/lib/postgresql/*/bin"))
}

/// Runs `psql URL -c SQL` and returns (success, output).
fn psql(url: &str, sql: &str) -> Result<(bool, String)> {
    let out = Command::new(pg_bin("psql")?)
        .args([url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn config_get(s: &Skiff, cwd: &Path, app: &str, key: &str) -> Result<String> {
    let out = ok(s.cli(cwd, &["config:get", key, "-a", app])?)?;
    Ok(stdout(&out).trim().to_owned())
}

/// The same URL naming another database.
fn with_database(url: &str, database: &str) -> Result<String> {
    let (base, _) = url.rsplit_once('/').context("no database in the URL")?;
    Ok(format!("{base}/{database}"))
}

fn todos(s: &Skiff, host: &str) -> Result<serde_json::Value> {
    let (status, body) = s.request(host, "GET", "/todos", None)?;
    ensure!(status == 200, "GET /todos: {status} {body}\n{}", s.logs());
    Ok(serde_json::from_str(&body)?)
}

/// The todo example keeps its rows in PostgreSQL through a credentials rotation and a restart
/// of the platform, counts visits in its key-value store, and loses both when they are
/// destroyed.
#[test]
fn todo_rows_survive_rotation_and_restart() -> Result<()> {
    pg_bin("initdb")?;
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("rust-todo");
    copy_tree(&repo_root().join("examples/rust-todo"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    ok(s.cli(&repo, &["apps:create", "todo"])?)?;
    let (pushed, output) = s.commit_and_push(&repo, "todo app")?;
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    let host = format!("todo.localhost:{}", s.http_port);

    // Without the add-on the app says what is missing.
    let (status, body) = s.request(&host, "GET", "/todos", None)?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("addons:create postgres"), "{body}");

    let out = ok(s.cli(&repo, &["addons:create", "postgres", "-a", "todo"])?)?;
    assert!(stdout(&out).contains("DATABASE_URL"), "{out:?}");
    assert!(stderr(&out).contains("done, v2"), "{out:?}");
    let url = config_get(&s, &repo, "todo", "DATABASE_URL")?;
    assert!(url.starts_with("postgres://sk_"), "{url}");

    for title in ["buy milk", "write docs"] {
        let (status, body) = s.request(&host, "POST", "/todos", Some(title))?;
        assert_eq!(status, 201, "{body}\n{}", s.logs());
    }
    let (status, body) = s.request(&host, "POST", "/todos/1/done", None)?;
    assert_eq!(status, 200, "{body}");
    let listed = todos(&s, &host)?;
    assert_eq!(listed[0]["title"], "buy milk");
    assert_eq!(listed[0]["done"], true);
    assert_eq!(listed[1]["title"], "write docs");
    assert_eq!(listed[1]["done"], false);

    // The rows are in a real database that psql (through the CLI) sees too.
    let out = ok(s.cli(
        &repo,
        &["pg:psql", "-a", "todo", "-c", "SELECT count(*) FROM todos"],
    )?)?;
    assert!(stdout(&out).contains('2'), "{out:?}");
    // Command dynos reach the database through the same interface as web dynos.
    let out = ok(s.cli(&repo, &["run", "-a", "todo", "--", "todos"])?)?;
    assert!(stdout(&out).contains("[x] buy milk"), "{out:?}");
    assert!(stdout(&out).contains("2 todos"), "{out:?}");
    let out = ok(s.cli(&repo, &["pg:info", "-a", "todo"])?)?;
    assert!(stdout(&out).contains("PG Version"), "{out:?}");

    // New credentials: a new release, the app still works, the old password does not.
    let out = ok(s.cli(&repo, &["pg:credentials:rotate", "-a", "todo"])?)?;
    assert!(stderr(&out).contains("done, v3"), "{out:?}");
    let rotated = config_get(&s, &repo, "todo", "DATABASE_URL")?;
    assert_ne!(rotated, url);
    assert_eq!(todos(&s, &host)?.as_array().map(Vec::len), Some(2));
    let (worked, text) = psql(&url, "SELECT 1")?;
    assert!(!worked, "the old password still works: {text}");
    assert!(text.contains("password authentication failed"), "{text}");
    let (worked, text) = psql(&rotated, "SELECT count(*) FROM todos")?;
    assert!(worked, "{text}");
    let releases = stdout(&ok(s.cli(&repo, &["releases", "-a", "todo"])?)?);
    assert!(releases.contains("Rotate postgres-"), "{releases}");

    // The key-value store: per-app, credentials checked by the host.
    ok(s.cli(&repo, &["addons:create", "kv", "-a", "todo"])?)?;
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "1\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "2\n".into())
    );

    // A restart of the platform (and of its PostgreSQL cluster) keeps rows and keys.
    s.stop()?;
    s.boot()?;
    let listed = todos(&s, &host)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "3\n".into())
    );

    // Pointing the app at another app's store with its own secret opens nothing: the host
    // checks the credentials, not just the name.
    ok(s.cli(&repo, &["apps:create", "spy", "--remote", "spy"])?)?;
    ok(s.cli(&repo, &["addons:create", "kv", "-a", "spy"])?)?;
    let own = config_get(&s, &repo, "todo", "KV_URL")?;
    let other = config_get(&s, &repo, "spy", "KV_URL")?;
    let secret = own
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, secret)| secret.to_owned())
        .context("secret in KV_URL")?;
    let other_store = other
        .trim_start_matches("skiff-kv://")
        .split(':')
        .next()
        .context("store in KV_URL")?
        .to_owned();
    let forged = format!("skiff-kv://{other_store}:{secret}@local");
    ok(s.cli(
        &repo,
        &["config:set", &format!("KV_URL={forged}"), "-a", "todo"],
    )?)?;
    let (status, body) = s.request(&host, "GET", "/visits", None)?;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("credentials are wrong"), "{body}");
    ok(s.cli(
        &repo,
        &["config:set", &format!("KV_URL={own}"), "-a", "todo"],
    )?)?;
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "4\n".into())
    );

    // Destroying the add-on drops the database and unsets the var.
    let out = s.cli(&repo, &["addons:destroy", "postgres", "-a", "todo"])?;
    assert!(
        !out.status.success(),
        "destroy without --confirm must refuse"
    );
    ok(s.cli(
        &repo,
        &[
            "addons:destroy",
            "postgres",
            "-a",
            "todo",
            "--confirm",
            "todo",
        ],
    )?)?;
    let (status, body) = s.request(&host, "GET", "/todos", None)?;
    assert_eq!(status, 503, "{body}");
    let (worked, text) = psql(&rotated, "SELECT 1")?;
    assert!(!worked, "the database outlived its add-on: {text}");
    s.stop()?;
    Ok(())
}

/// Each app's role reaches its own database only: A's credentials against B's database (or
/// the server's own) are refused by PostgreSQL.
#[test]
fn one_apps_credentials_cannot_open_another_apps_database() -> Result<()> {
    pg_bin("initdb")?;
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    for app in ["alpha", "beta"] {
        ok(s.cli(work.path(), &["apps:create", app])?)?;
        ok(s.cli(work.path(), &["addons:create", "postgres", "-a", app])?)?;
    }
    let a = config_get(&s, work.path(), "alpha", "DATABASE_URL")?;
    let b = config_get(&s, work.path(), "beta", "DATABASE_URL")?;
    let b_database = b.rsplit('/').next().context("database")?.to_owned();

    let (worked, text) = psql(&a, "CREATE TABLE secrets (v text)")?;
    assert!(worked, "{text}");
    let (worked, text) = psql(&b, "CREATE TABLE secrets (v text)")?;
    assert!(worked, "{text}");

    for other in [b_database.as_str(), "postgres", "template1"] {
        let (worked, text) = psql(&with_database(&a, other)?, "SELECT 1")?;
        assert!(!worked, "alpha's role opened {other}: {text}");
        assert!(
            text.contains("permission denied for database"),
            "{other}: {text}"
        );
    }
    let (worked, text) = psql(&a, "SELECT count(*) FROM secrets")?;
    assert!(worked, "{text}");

    // A second postgres add-on on one app is refused; an unknown service names the known.
    let out = s.cli(work.path(), &["addons:create", "postgres", "-a", "alpha"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already has a postgres add-on"),
        "{out:?}"
    );
    let out = s.cli(work.path(), &["addons:create", "mysql", "-a", "alpha"])?;
    assert!(stderr(&out).contains("postgres, kv"), "{out:?}");

    // Destroying the app drops its database.
    ok(s.cli(
        work.path(),
        &["apps:destroy", "-a", "beta", "--confirm", "beta"],
    )?)?;
    let (worked, text) = psql(&b, "SELECT 1")?;
    assert!(!worked, "beta's database outlived the app: {text}");

    // The cluster survives a kill -9 of the platform: the next start takes it over.
    s.kill9()?;
    s.boot()?;
    let out = ok(s.cli(work.path(), &["pg:info", "-a", "alpha"])?)?;
    assert!(stdout(&out).contains("Available"), "{out:?}");
    let a_now = config_get(&s, work.path(), "alpha", "DATABASE_URL")?;
    let (worked, text) = psql(&a_now, "SELECT count(*) FROM secrets")?;
    assert!(worked, "{text}");

    // Another Skiff pointed at this cluster with --postgres-admin-url provisions there.
    let data = s.dir.path().join("data/postgres");
    let password = std::fs::read_to_string(data.join("admin-password"))?;
    let port = std::fs::read_to_string(data.join("port"))?;
    let admin = format!(
        "postgres://skiff:{}@127.0.0.1:{}/postgres",
        password.trim(),
        port.trim()
    );
    let mut other = Skiff::start()?;
    other.stop()?;
    other.boot_with(&["--postgres-admin-url", &admin])?;
    ok(other.cli(work.path(), &["apps:create", "gamma"])?)?;
    ok(other.cli(work.path(), &["addons:create", "postgres", "-a", "gamma"])?)?;
    let g = config_get(&other, work.path(), "gamma", "DATABASE_URL")?;
    assert!(g.contains(&format!("@127.0.0.1:{}/", port.trim())), "{g}");
    let (worked, text) = psql(&g, "SELECT current_user")?;
    assert!(worked, "{text}");
    assert!(
        !other.dir.path().join("data/postgres").exists(),
        "a Skiff with an admin URL runs no cluster of its own"
    );
    ok(other.cli(
        work.path(),
        &[
            "addons:destroy",
            "postgres",
            "-a",
            "gamma",
            "--confirm",
            "gamma",
        ],
    )?)?;
    other.stop()?;

    // If the cluster's port is taken when Skiff starts again, the cluster moves and every
    // DATABASE_URL follows it (a release, for deployed apps).
    s.stop()?;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port.trim().parse::<u16>()?))?;
    s.boot()?;
    let moved = config_get(&s, work.path(), "alpha", "DATABASE_URL")?;
    assert_ne!(moved, a_now);
    let (worked, text) = psql(&moved, "SELECT count(*) FROM secrets")?;
    assert!(worked, "{text}");
    assert!(!moved.contains(&format!(":{}/", port.trim())), "{moved}");
    drop(squatter);
    s.stop()?;
    Ok(())
}

/// With no server named and no initdb to run one, creating a database fails and says how to
/// get one.
#[test]
fn without_postgres_the_error_says_how_to_get_one() -> Result<()> {
    let mut s = Skiff::start()?;
    s.stop()?;
    let nowhere = s.dir.path().join("no-postgres-here");
    s.boot_with(&["--postgres-bin-dir", &nowhere.to_string_lossy()])?;
    let work = tempfile::tempdir()?;
    ok(s.cli(work.path(), &["apps:create", "lonely"])?)?;
    let out = s.cli(work.path(), &["addons:create", "postgres", "-a", "lonely"])?;
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("--postgres-admin-url"), "{text}");
    assert!(text.contains("apt-get install postgresql"), "{text}");
    let out = ok(s.cli(work.path(), &["addons", "-a", "lonely"])?)?;
    assert!(stdout(&out).contains("no add-ons"), "{out:?}");
    s.stop()?;
    Ok(())
}

/// One app's store does not open with another app's credentials: the host checks the secret
/// in `KV_URL`, so pointing an app at another store's name gets nothing.
#[test]
fn kv_urls_open_their_own_store_only() -> Result<()> {
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    for app in ["kva", "kvb"] {
        ok(s.cli(work.path(), &["apps:create", app])?)?;
        ok(s.cli(work.path(), &["addons:create", "kv", "-a", app])?)?;
    }
    let a = config_get(&s, work.path(), "kva", "KV_URL")?;
    let b = config_get(&s, work.path(), "kvb", "KV_URL")?;
    assert_ne!(a, b);
    assert!(a.starts_with("skiff-kv://kv_"), "{a}");
    let out = ok(s.cli(work.path(), &["addons:info", "kv", "-a", "kva"])?)?;
    assert!(stdout(&out).contains("Keys:"), "{out:?}");
    let out = ok(s.cli(work.path(), &["addons", "-a", "kva"])?)?;
    assert!(stdout(&out).contains("KV_URL"), "{out:?}");
    // Rotating gives a new secret; the old URL is then refused (checked by the unit test in
    // the kv provider, which opens stores the way the runtime does).
    ok(s.cli(
        work.path(),
        &["addons:credentials:rotate", "kv", "-a", "kva"],
    )?)?;
    assert_ne!(config_get(&s, work.path(), "kva", "KV_URL")?, a);
    s.stop()?;
    Ok(())
}

/// The Python todo example (plain WSGI, the `skiff` module the Python buildpack ships) keeps
/// its rows in PostgreSQL and counts visits in its key-value store.
#[test]
fn python_todo_stores_rows_in_postgres() -> Result<()> {
    pg_bin("initdb")?;
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("python-todo");
    copy_tree(&repo_root().join("examples/python-todo"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    ok(s.cli(&repo, &["apps:create", "pytodo"])?)?;
    let (pushed, output) = s.commit_and_push(&repo, "python todo app")?;
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    let host = format!("pytodo.localhost:{}", s.http_port);

    let (status, body) = s.request(&host, "GET", "/todos", None)?;
    assert_eq!(status, 503, "{body}");
    ok(s.cli(&repo, &["addons:create", "postgres", "-a", "pytodo"])?)?;
    ok(s.cli(&repo, &["addons:create", "kv", "-a", "pytodo"])?)?;
    for title in ["feed the cat", "water plants"] {
        let (status, body) = s.request(&host, "POST", "/todos", Some(title))?;
        assert_eq!(status, 201, "{body}\n{}", s.logs());
    }
    let (status, body) = s.request(&host, "POST", "/todos/2/done", None)?;
    assert_eq!(status, 200, "{body}");
    let listed = todos(&s, &host)?;
    assert_eq!(listed[0]["title"], "feed the cat");
    assert_eq!(listed[0]["done"], false);
    assert_eq!(listed[1]["done"], true);
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "1\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "2\n".into())
    );
    s.stop()?;
    Ok(())
}

/// A `psql` session held open, as a client that connected before a credentials rotation.
struct HeldSession {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    output: PathBuf,
    pid: u32,
}

impl HeldSession {
    fn open(url: &str, output: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&output)?;
        let mut child = Command::new(pg_bin("psql")?)
            .args([url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        use std::io::Write;
        writeln!(stdin, "SELECT 'session ' || pg_backend_pid();")?;
        stdin.flush()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&output)?;
            if let Some(pid) = text
                .lines()
                .find_map(|l| l.strip_prefix("session "))
                .and_then(|p| p.trim().parse().ok())
            {
                return Ok(Self {
                    child,
                    stdin: Some(stdin),
                    output,
                    pid,
                });
            }
            if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("psql did not open a session: {text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends one more statement and ends the input; returns whether psql succeeded and all
    /// it printed.
    fn finish(mut self, sql: &str) -> Result<(bool, String)> {
        use std::io::Write;
        if let Some(mut stdin) = self.stdin.take() {
            // A session the server ended may have closed psql already.
            let _ = writeln!(stdin, "{sql}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("psql did not exit");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Ok((status.success(), std::fs::read_to_string(&self.output)?))
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Node.js todo example (the `skiff` module the Node.js buildpack ships): rows in
/// PostgreSQL through a credentials rotation that ends the sessions of the old password, a
/// server-side end of the app's pooled sessions and a restart of the platform; kv get, set
/// and delete.
#[test]
fn nodejs_todo_survives_rotation_that_ends_old_sessions() -> Result<()> {
    pg_bin("initdb")?;
    let mut s = Skiff::start()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("nodejs-todo");
    copy_tree(&repo_root().join("examples/nodejs-todo"), &repo)?;
    ok(s.git(&repo, &["init", "--quiet", "--initial-branch=main"])?)?;
    ok(s.cli(&repo, &["apps:create", "jstodo"])?)?;
    let (pushed, output) = s.commit_and_push(&repo, "node todo app")?;
    ensure!(pushed, "push failed:\n{output}\n{}", s.logs());
    let host = format!("jstodo.localhost:{}", s.http_port);

    // Built against the world with the add-on imports, the app runs without any add-on and
    // says what is missing.
    let (status, body) = s.request(&host, "GET", "/todos", None)?;
    assert_eq!(status, 503, "{body}\n{}", s.logs());
    assert!(body.contains("addons:create postgres"), "{body}");
    let (status, body) = s.request(&host, "GET", "/nowhere", None)?;
    assert_eq!(status, 404, "{body}");

    ok(s.cli(&repo, &["addons:create", "postgres", "-a", "jstodo"])?)?;
    let url = config_get(&s, &repo, "jstodo", "DATABASE_URL")?;
    for title in ["pack boxes", "it's $1 \"quoted\""] {
        let (status, body) = s.request(&host, "POST", "/todos", Some(title))?;
        assert_eq!(status, 201, "{body}\n{}", s.logs());
    }
    let (status, body) = s.request(&host, "POST", "/todos/1/done", None)?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.request(&host, "POST", "/todos/99/done", None)?;
    assert_eq!(status, 404);
    let listed = todos(&s, &host)?;
    assert_eq!(listed[0]["id"], 1);
    assert_eq!(listed[0]["title"], "pack boxes");
    assert_eq!(listed[0]["done"], true);
    assert_eq!(listed[1]["title"], "it's $1 \"quoted\"");
    assert_eq!(listed[1]["done"], false);

    // A session opened with the current password before the rotation.
    let held = HeldSession::open(&url, work.path().join("held-session.log"))?;
    let out = ok(s.cli(&repo, &["pg:credentials:rotate", "-a", "jstodo"])?)?;
    assert!(stderr(&out).contains("done, v3"), "{out:?}");
    let rotated = config_get(&s, &repo, "jstodo", "DATABASE_URL")?;
    assert_ne!(rotated, url);
    // The rotation returned only after the old sessions were gone: the held one, and the
    // ones the app's old dynos had pooled.
    let (worked, text) = psql(
        &rotated,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {}",
            held.pid
        ),
    )?;
    assert!(worked, "{text}");
    assert_eq!(text.trim(), "0", "the old session is still there");
    let (worked, text) = held.finish("SELECT 'still ' || 'here';")?;
    assert!(!worked, "the old session still answered: {text}");
    assert!(!text.contains("still here"), "{text}");
    let (worked, text) = psql(&url, "SELECT 1")?;
    assert!(!worked, "the old password still works: {text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert_eq!(todos(&s, &host)?.as_array().map(Vec::len), Some(2));

    // The server ends every session of the app's role, pooled ones included: the runtime
    // notices and opens new ones instead of failing requests.
    let data = s.dir.path().join("data/postgres");
    let admin = format!(
        "postgres://skiff:{}@127.0.0.1:{}/postgres",
        std::fs::read_to_string(data.join("admin-password"))?.trim(),
        std::fs::read_to_string(data.join("port"))?.trim()
    );
    let role = rotated
        .trim_start_matches("postgres://")
        .split(':')
        .next()
        .context("role in DATABASE_URL")?
        .to_owned();
    // Once with time for the pool to see the sessions close, once racing it.
    for pause in [200, 0] {
        let (worked, text) = psql(
            &admin,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"
            ),
        )?;
        assert!(worked, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(pause));
        let (status, body) = s.request(&host, "POST", "/todos", Some("after a kill"))?;
        assert_eq!(status, 201, "{body}\n{}", s.logs());
    }
    assert_eq!(todos(&s, &host)?.as_array().map(Vec::len), Some(4));

    // The key-value store: get, set (text and bytes), delete.
    let (status, body) = s.request(&host, "GET", "/visits", None)?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("addons:create kv"), "{body}");
    ok(s.cli(&repo, &["addons:create", "kv", "-a", "jstodo"])?)?;
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "1\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "2\n".into())
    );
    assert_eq!(s.request(&host, "GET", "/kv/greeting", None)?.0, 404);
    assert_eq!(
        s.request(&host, "PUT", "/kv/greeting", Some("hello, 世界"))?,
        (200, "stored\n".into())
    );
    assert_eq!(
        s.request(&host, "GET", "/kv/greeting", None)?,
        (200, "hello, 世界".into())
    );
    assert_eq!(
        s.request(&host, "DELETE", "/kv/greeting", None)?,
        (200, "deleted\n".into())
    );
    assert_eq!(s.request(&host, "GET", "/kv/greeting", None)?.0, 404);

    // A restart of the platform and its cluster keeps rows and keys.
    s.stop()?;
    s.boot()?;
    let listed = todos(&s, &host)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    assert_eq!(listed[0]["done"], true);
    assert_eq!(
        s.request(&host, "GET", "/visits", None)?,
        (200, "3\n".into())
    );
    s.stop()?;
    Ok(())
}
