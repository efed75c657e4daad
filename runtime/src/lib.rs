//! Skiff's runtime: WebAssembly dynos on one shared wasmtime [`Engine`].
//!
//! Expensive work happens once per slug: the component is compiled ahead of time and cached on
//! disk ([`cache`]), then linked into an `InstancePre` per release. Each web dyno listens on its
//! own loopback port ([`dyno`]) and serves every request on a fresh instance in a fresh
//! `Store`, with a memory limit and an epoch deadline, so one request can neither see nor
//! stall another (an app may opt into serving several requests per instance with
//! `SKIFF_INSTANCE_REUSE=N`). A web process that is a `wasi:cli/run` command is served CGI-style
//! (the `cgi` module): one run per request, with the same fences.

pub mod addons;
pub mod cache;
mod cgi;
pub mod command;
pub mod dyno;
pub mod engine;
pub mod limits;
mod logpipe;
pub mod outbound;

pub use addons::{KvBackend, KvStore};
pub use command::{CommandSpec, Exit, Output};
pub use dyno::{DynoHandle, DynoSpec, Limits, LogSink};
pub use engine::{
    DEFAULT_KEEP_RESIDENT_BYTES, LoadedCommand, LoadedComponent, Runtime, RuntimeConfig,
    ThreadStart,
};
pub use limits::Failure;
pub use outbound::OutboundPolicy;

/// The wasmtime release Skiff embeds (pinned in the workspace manifest); peers compared in
/// benchmarks, such as `wasmtime serve`, should be the same release.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Errors from loading or running dynos.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the component or failed to set up the engine.
    #[error("{context}: {message}")]
    Wasm {
        /// What was being done.
        context: String,
        /// wasmtime's message with its cause chain.
        message: String,
    },
    /// Disk or socket errors.
    #[error("runtime I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A precompiled file whose digest does not match its contents.
    #[error("precompiled component {} is damaged", path.display())]
    CorruptCache {
        /// The file.
        path: std::path::PathBuf,
    },
}

impl RuntimeError {
    pub(crate) fn wasm(context: impl Into<String>, err: impl std::fmt::Debug) -> Self {
        Self::Wasm {
            context: context.into(),
            message: format!("{err:?}"),
        }
    }
}
