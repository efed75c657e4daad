//! Command processes: one-off runs (`skiff run`) and the release phase. Both run the app's
//! slug as a `wasi:cli/run` instance with the release's config vars.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_core::manifest::split_command;
use skiff_runtime::{CommandSpec, Exit, Output};
use tokio::sync::mpsc;

use crate::state::ReleaseRow;
use crate::{Platform, PlatformError};

/// Default wall-clock limit of a one-off run.
pub(crate) const ONEOFF_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Wall-clock limit of the release phase.
pub(crate) const RELEASE_PHASE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Finds what `command args...` means for this release: a process type from the Procfile
/// (its arguments first), a component path in the app, or `bin/<command>.wasm` (the way a
/// shell finds programs on PATH).
pub(crate) fn resolve(
    release: &ReleaseRow,
    app_dir: &Path,
    command: &str,
    args: &[String],
) -> Result<(PathBuf, Vec<String>), PlatformError> {
    let (component, mut argv) = if let Some(spec) = release.manifest.process_types.get(command) {
        (spec.component.clone(), spec.args.clone())
    } else {
        let (first, rest) = split_command(command);
        let candidates = [
            first.clone(),
            format!("bin/{first}.wasm"),
            format!("bin/{first}"),
        ];
        let found = candidates.into_iter().find(|c| {
            skiff_core::text::app_relative(c).is_some_and(|rel| app_dir.join(rel).is_file())
        });
        match found {
            Some(c) => (c, rest),
            None => {
                let types: Vec<_> = release.manifest.process_types.keys().cloned().collect();
                return Err(PlatformError::BadRequest(format!(
                    "{command}: no such process type or component in the app (process types: {}; components live under bin/)",
                    types.join(", ")
                )));
            }
        }
    };
    let rel = skiff_core::text::app_relative(&component).ok_or_else(|| {
        PlatformError::BadRequest(format!("{component}: path must stay inside the app"))
    })?;
    argv.extend(args.iter().cloned());
    argv.insert(0, component.clone());
    Ok((rel, argv))
}

/// Runs `argv` from `release` as process `name`, streaming its output to `output`.
pub(crate) async fn run(
    p: &Platform,
    release: &ReleaseRow,
    name: &str,
    component: &Path,
    argv: Vec<String>,
    timeout: Duration,
    output: mpsc::Sender<Output>,
) -> Result<Exit, PlatformError> {
    let app_dir = p.dynos.slug_dir(&release.slug).join("app");
    let command = p.dynos.load_command(&release.slug, component).await?;
    let tmp_dir = p.dynos.fresh_tmp(&release.app, name)?;
    let spec = CommandSpec {
        app: release.app.clone(),
        name: name.to_owned(),
        command,
        args: argv,
        env: crate::dynos::dyno_env(release, name),
        app_dir,
        tmp_dir: Some(tmp_dir.clone()),
        memory_bytes: 512 << 20,
        timeout,
        outbound: crate::dynos::outbound_policy(release),
    };
    let exit = p.dynos.runtime().run_command(spec, output).await;
    let _ = std::fs::remove_dir_all(&tmp_dir);
    Ok(exit)
}

/// Runs the Procfile's `release` process, if any, writing its output as build lines. An
/// error means the release must not go live.
pub(crate) async fn release_phase(
    p: &Platform,
    release: &ReleaseRow,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<(), PlatformError> {
    let Some(spec) = release.manifest.process_types.get("release") else {
        return Ok(());
    };
    log(format!("-----> Running release command: {}", spec.command));
    let app_dir = p.dynos.slug_dir(&release.slug).join("app");
    let (component, argv) = resolve(release, &app_dir, "release", &[])?;
    let (tx, mut rx) = mpsc::channel(64);
    let run = run(
        p,
        release,
        "release",
        &component,
        argv,
        RELEASE_PHASE_TIMEOUT,
        tx,
    );
    tokio::pin!(run);
    let mut pending = String::new();
    let exit = loop {
        tokio::select! {
            exit = &mut run => break exit?,
            Some(chunk) = rx.recv() => {
                let (Output::Stdout(b) | Output::Stderr(b)) = chunk;
                pending.push_str(&String::from_utf8_lossy(&b));
                while let Some(i) = pending.find('\n') {
                    log(format!("       {}", &pending[..i]));
                    pending.drain(..=i);
                }
            }
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        let (Output::Stdout(b) | Output::Stderr(b)) = chunk;
        pending.push_str(&String::from_utf8_lossy(&b));
    }
    for line in pending.lines() {
        log(format!("       {line}"));
    }
    match exit {
        Exit::Code(0) => Ok(()),
        other => Err(PlatformError::ReleasePhase(match other {
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::TimedOut => format!(
                "ran longer than {} minutes",
                RELEASE_PHASE_TIMEOUT.as_secs() / 60
            ),
            Exit::Trapped(t) => format!("crashed: {}", t.lines().next().unwrap_or_default()),
        })),
    }
}
