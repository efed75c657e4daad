//! The git endpoint: smart HTTP served by the real `git http-backend`, run as CGI per request.
//! Each app has a bare repository whose `pre-receive` hook hands the pushed commit to the
//! platform for building, so build output reaches the pusher as `remote:` lines and a failed
//! build rejects the push (refs are not updated).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{ChildStdout, Command};

/// Errors from running git.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git is not installed or failed to start.
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    /// A git command failed.
    #[error("git {command} failed: {stderr}")]
    Failed {
        /// What was run.
        command: String,
        /// What git said.
        stderr: String,
    },
    /// http-backend's CGI response was malformed.
    #[error("git http-backend returned a malformed response")]
    BadResponse,
    /// Local I/O.
    #[error("git I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The `pre-receive` hook installed in every app repository. The platform passes
/// `SKIFF_BIN` through the http-backend environment; receive-pack hands it to the hook.
const PRE_RECEIVE: &str = "#!/bin/sh\n# Installed by Skiff: builds and releases the pushed commit.\nexec \"$SKIFF_BIN\" hook pre-receive\n";

/// Creates the bare repository for an app (idempotent) and (re)installs its hook.
pub async fn init_repo(path: &Path) -> Result<(), GitError> {
    if !path.join("HEAD").exists() {
        run_git(
            &["init", "--bare", "--quiet", "--initial-branch=main"],
            path.parent().unwrap_or(Path::new(".")),
            Some(path),
        )
        .await?;
    }
    run_git(&["config", "http.receivepack", "true"], path, None).await?;
    let hook = path.join("hooks").join("pre-receive");
    std::fs::create_dir_all(path.join("hooks"))?;
    std::fs::write(&hook, PRE_RECEIVE)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

async fn run_git(args: &[&str], cwd: &Path, target: Option<&Path>) -> Result<(), GitError> {
    let mut cmd = Command::new("git");
    cmd.args(args);
    if let Some(t) = target {
        cmd.arg(t);
    }
    let out = cmd
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(GitError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GitError::Failed {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// One smart-HTTP request, in CGI terms.
#[derive(Debug, Clone)]
pub struct GitRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// `/<app>.git/info/refs` and the like, relative to the repositories root.
    pub path_info: String,
    /// The raw query string (`service=git-receive-pack`).
    pub query: String,
    /// Request `Content-Type`.
    pub content_type: Option<String>,
    /// Request `Content-Encoding` (git gzips large requests).
    pub content_encoding: Option<String>,
    /// Request `Git-Protocol` header (protocol v2 negotiation).
    pub git_protocol: Option<String>,
    /// The authenticated user; receive-pack refuses anonymous pushes.
    pub remote_user: String,
    /// The client address.
    pub remote_addr: String,
    /// Extra variables for the hook (platform URL, hook token, app name).
    pub hook_env: Vec<(String, String)>,
}

/// http-backend's answer: status, headers, and its output still streaming.
pub struct GitResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The rest of the output, to be streamed to the client as it comes.
    pub body: BufReader<ChildStdout>,
}

/// Runs `git http-backend` for `req`, feeding it `body`.
pub async fn http_backend(
    repos_root: &Path,
    req: GitRequest,
    body: impl AsyncRead + Send + Unpin + 'static,
) -> Result<GitResponse, GitError> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", repos_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path_info)
        .env("QUERY_STRING", &req.query)
        .env("REMOTE_USER", &req.remote_user)
        .env("REMOTE_ADDR", &req.remote_addr)
        .envs(req.hook_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Ok(home) = std::env::var("HOME") {
        cmd.env("HOME", home);
    }
    if let Some(ct) = &req.content_type {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(ce) = &req.content_encoding {
        cmd.env("HTTP_CONTENT_ENCODING", ce);
    }
    if let Some(gp) = &req.git_protocol {
        cmd.env("GIT_PROTOCOL", gp);
    }
    let mut child = cmd.spawn().map_err(GitError::Spawn)?;
    let mut stdin = child.stdin.take().ok_or(GitError::BadResponse)?;
    let stdout = child.stdout.take().ok_or(GitError::BadResponse)?;
    let stderr = child.stderr.take();

    tokio::spawn(async move {
        let mut body = body;
        if let Err(e) = tokio::io::copy(&mut body, &mut stdin).await {
            tracing::debug!(error = %e, "git request body ended early");
        }
        // Dropping stdin closes it: http-backend reads the request until EOF.
    });
    tokio::spawn(async move {
        if let Some(mut stderr) = stderr {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tracing::warn!(target: "skiff::git", "{line}");
            }
        }
        let _ = child.wait().await;
    });

    let mut reader = BufReader::new(stdout);
    let mut status = 200;
    let mut headers = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(GitError::BadResponse);
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').ok_or(GitError::BadResponse)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or(GitError::BadResponse)?;
        } else {
            headers.push((name.trim().to_owned(), value.to_owned()));
        }
    }
    Ok(GitResponse {
        status,
        headers,
        body: reader,
    })
}

/// Where an app's bare repository lives under the repositories root.
pub fn repo_path(repos_root: &Path, app: &str) -> PathBuf {
    repos_root.join(format!("{app}.git"))
}
