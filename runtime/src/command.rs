//! Command components (`wasi:cli/run`): one-off runs (`skiff run`), the release phase, and
//! long-running worker processes. Output streams out as it is written, so a user watching a
//! one-off sees it live.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::{FsPerms, WasiCtx};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::Runtime;
use crate::dyno::DynoState;
use crate::engine::LoadedCommand;
use crate::limits::DynoLimiter;
use crate::outbound::{Outbound, OutboundPolicy};

/// A chunk of a command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Written to stdout.
    Stdout(Bytes),
    /// Written to stderr.
    Stderr(Bytes),
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned or called `exit`; 0 is success.
    Code(i32),
    /// It trapped (a crash: panic, out-of-bounds, stack overflow, memory limit).
    Trapped(String),
    /// It ran past its time limit and was stopped.
    TimedOut,
}

impl Exit {
    /// The exit status a shell would report: traps as 134 (like SIGABRT), timeouts as 124
    /// (like `timeout(1)`).
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Trapped(_) => 134,
            Exit::TimedOut => 124,
        }
    }
}

/// What a command run needs.
#[derive(Clone)]
pub struct CommandSpec {
    /// The app, for logs.
    pub app: String,
    /// The process name (`run.4821`, `release`, `worker.1`).
    pub name: String,
    /// The loaded component.
    pub command: LoadedCommand,
    /// argv, starting with the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The unpacked app, read-only at `/app`.
    pub app_dir: PathBuf,
    /// A private writable folder at `/tmp`.
    pub tmp_dir: Option<PathBuf>,
    /// Linear memory limit.
    pub memory_bytes: usize,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Where the command's outbound HTTP may go.
    pub outbound: std::sync::Arc<OutboundPolicy>,
}

/// Bytes of output a command may have in flight before its writes wait for the reader.
const OUTPUT_BUFFER: usize = 64 * 1024;

impl Runtime {
    /// Runs a command to completion, sending its output to `output` as it is written. A
    /// closed `output` receiver does not stop the command; its output is then discarded.
    pub async fn run_command(&self, spec: CommandSpec, output: mpsc::Sender<Output>) -> Exit {
        let (out_guest, out_host) = tokio::io::duplex(OUTPUT_BUFFER);
        let (err_guest, err_host) = tokio::io::duplex(OUTPUT_BUFFER);
        let out_task = tokio::spawn(forward(out_host, output.clone(), Output::Stdout));
        let err_task = tokio::spawn(forward(err_host, output, Output::Stderr));

        let addons = self.guest_addons(&spec.env);
        let exit = run(&spec, addons, out_guest, err_guest).await;
        let _ = out_task.await;
        let _ = err_task.await;
        exit
    }
}

async fn run(
    spec: &CommandSpec,
    addons: crate::addons::GuestAddons,
    stdout: tokio::io::DuplexStream,
    stderr: tokio::io::DuplexStream,
) -> Exit {
    let mut wasi = WasiCtx::builder();
    wasi.envs(&spec.env)
        .args(&spec.args)
        .stdout(AsyncStdoutStream::new(OUTPUT_BUFFER, stdout))
        .stderr(AsyncStdoutStream::new(OUTPUT_BUFFER, stderr));
    if let Err(e) = wasi.preopened_dir(&spec.app_dir, "/app", FsPerms::ReadOnly) {
        return Exit::Trapped(format!("opening /app: {e:?}"));
    }
    if let Some(tmp) = &spec.tmp_dir
        && let Err(e) = wasi.preopened_dir(tmp, "/tmp", FsPerms::ReadWrite)
    {
        return Exit::Trapped(format!("opening /tmp: {e:?}"));
    }
    let state = DynoState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: DynoLimiter::new(spec.memory_bytes).0,
        addons,
        hooks: Outbound {
            policy: spec.outbound.clone(),
            app: spec.app.clone(),
            dyno: spec.name.clone(),
            log: None,
        },
    };
    let pre = spec.command.pre.clone();
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limits);
    let turn = crate::limits::fence_time(&mut store, spec.timeout, &spec.app);

    let run = async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    };
    let result = crate::limits::taking_turns(&turn, run).await;
    // Dropping the store closes the guest's ends of the output pipes, ending the forwarders.
    crate::limits::in_turn(&turn, || drop(store)).await;
    match result {
        Ok(Ok(())) => Exit::Code(0),
        Ok(Err(())) => Exit::Code(1),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Exit::Code(exit.0)
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Exit::TimedOut
            } else {
                tracing::warn!(app = %spec.app, dyno = %spec.name, error = ?e, "command trapped");
                Exit::Trapped(format!("{e:#}"))
            }
        }
    }
}

async fn forward(
    mut from: tokio::io::DuplexStream,
    to: mpsc::Sender<Output>,
    wrap: fn(Bytes) -> Output,
) {
    let mut buf = vec![0u8; 8192];
    let mut open = true;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if open
                    && to
                        .send(wrap(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
                    // Keep draining so the guest never blocks on a reader that left.
                    open = false;
                }
            }
        }
    }
}
