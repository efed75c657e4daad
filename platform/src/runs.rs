//! `POST /apps/{app}/dynos`: one-off runs. The response streams newline-delimited JSON events
//! (`{"stdout": "..."}`, `{"stderr": "..."}`, and last `{"exit": N}`), so the CLI can print
//! the guest's output as it comes and return its exit code.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_runtime::{Exit, Output};
use tokio::sync::mpsc;

use crate::api::{ApiResult, Caller, authorize};
use crate::logs::Source;
use crate::{Platform, PlatformError, deploy, oneoff};

#[derive(serde::Deserialize)]
pub(crate) struct RunRequest {
    /// A process type, a component path in the app, or a name under `bin/`.
    command: String,
    #[serde(default)]
    args: Vec<String>,
    /// Send output to the logs instead of the response.
    #[serde(default)]
    detach: bool,
    /// Wall-clock limit in seconds (default one hour).
    timeout_secs: Option<u64>,
}

pub(crate) async fn create_run(
    State(p): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(req): Json<RunRequest>,
) -> ApiResult<Response> {
    authorize(&p, &caller, &app)?;
    let release = p.state.current_release(&app)?.ok_or_else(|| {
        PlatformError::BadRequest(format!("{app} has no release yet: git push first"))
    })?;
    deploy::ensure_unpacked(&p, &release.slug).await?;
    let app_dir = p.dynos.slug_dir(&release.slug).join("app");
    let (component, argv) = oneoff::resolve(&release, &app_dir, &req.command, &req.args)?;
    // Load before answering, so a command that is not runnable fails the call itself.
    p.dynos.load_command(&release.slug, &component).await?;
    let timeout = req
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(oneoff::ONEOFF_TIMEOUT)
        .min(Duration::from_secs(24 * 3600));
    let name = format!("run.{}", run_number());
    tracing::info!(app, dyno = %name, command = %argv.join(" "), by = %caller.0, "starting one-off dyno");

    let (tx, rx) = mpsc::channel(64);
    let platform = p.clone();
    let task_name = name.clone();
    let handle = tokio::spawn(async move {
        oneoff::run(
            &platform, &release, &task_name, &component, argv, timeout, tx,
        )
        .await
    });

    if req.detach {
        let app_name = app.clone();
        let dyno = name.clone();
        let logs = p.logs.clone();
        tokio::spawn(async move {
            logs.push(
                &app_name,
                Source::Platform,
                &dyno,
                "Starting process (detached one-off)",
            );
            crate::dynos::output_to_logs(rx, logs.clone(), app_name.clone(), dyno.clone()).await;
            let what = match handle.await {
                Ok(Ok(exit)) => format!("Process exited with status {}", exit.code()),
                Ok(Err(e)) => format!("Process failed: {e}"),
                Err(e) => format!("Process failed: {e}"),
            };
            logs.push(&app_name, Source::Platform, &dyno, &what);
        });
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "name": name, "detached": true })),
        )
            .into_response());
    }

    let events = async_stream(rx, handle, name.clone());
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header("x-skiff-dyno", name)
        .body(Body::from_stream(events))
        .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?)
}

type RunHandle = tokio::task::JoinHandle<Result<Exit, PlatformError>>;

/// Output events while the command runs, then its exit.
fn async_stream(
    rx: mpsc::Receiver<Output>,
    handle: RunHandle,
    name: String,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold(Some((rx, handle)), move |state| {
        let name = name.clone();
        async move {
            let (mut rx, handle) = state?;
            match rx.recv().await {
                Some(Output::Stdout(b)) => Some((Ok(event("stdout", &b)), Some((rx, handle)))),
                Some(Output::Stderr(b)) => Some((Ok(event("stderr", &b)), Some((rx, handle)))),
                None => {
                    let last = match handle.await {
                        Ok(Ok(exit)) => {
                            let mut v = serde_json::json!({ "exit": exit.code() });
                            match exit {
                                Exit::TimedOut => {
                                    v["error"] =
                                        "the run reached its time limit and was stopped".into()
                                }
                                Exit::Trapped(t) => {
                                    v["error"] = format!(
                                        "{name} crashed: {}",
                                        t.lines().next().unwrap_or_default()
                                    )
                                    .into()
                                }
                                Exit::Code(_) => {}
                            }
                            v
                        }
                        Ok(Err(e)) => serde_json::json!({ "exit": 1, "error": e.to_string() }),
                        Err(e) => serde_json::json!({ "exit": 1, "error": e.to_string() }),
                    };
                    Some((Ok(bytes::Bytes::from(format!("{last}\n"))), None))
                }
            }
        }
    })
}

fn event(stream: &str, data: &[u8]) -> bytes::Bytes {
    let v = serde_json::json!({ stream: String::from_utf8_lossy(data) });
    bytes::Bytes::from(format!("{v}\n"))
}

fn run_number() -> u32 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    1000 + u32::from(u16::from_le_bytes(b)) % 9000
}
