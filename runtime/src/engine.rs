//! The shared engine, its epoch ticker, and loading components into `ProxyPre`s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::RuntimeError;
use crate::cache::PrecompiledCache;
use crate::dyno::DynoState;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One engine for every app, plus the linker every dyno shares.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<DynoState>,
    cache: PrecompiledCache,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A component compiled and linked, ready to instantiate once per request.
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) pre: ProxyPre<DynoState>,
}

/// A command component (`wasi:cli/run`), compiled and linked.
#[derive(Clone)]
pub struct LoadedCommand {
    pub(crate) pre: CommandPre<DynoState>,
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker; precompiled code is cached in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        // Epochs bound every request's wall-clock time at near-zero cost per instruction.
        config.epoch_interruption(true);
        let engine =
            Engine::new(&config).map_err(|e| RuntimeError::wasm("creating the engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::wasm("linking WASI", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::wasm("linking wasi:http", e))?;
        let cache = PrecompiledCache::new(cache_dir, &engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                // Holding a weak handle lets the engine drop while this thread sleeps.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                ticker_stop,
            }),
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Loads the component at `path` (from the slug `slug`), compiling it ahead of time on
    /// first use. Blocking: compilation can take seconds for large guests.
    pub fn load(&self, slug: &str, path: &Path) -> Result<LoadedComponent, RuntimeError> {
        let component: Component = self.inner.cache.load(&self.inner.engine, slug, path)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::wasm("linking the component", e))?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            RuntimeError::wasm(
                "the component does not export wasi:http/incoming-handler",
                e,
            )
        })?;
        Ok(LoadedComponent { pre })
    }

    /// Loads a command component (`wasi:cli/run`) the same way as [`Runtime::load`].
    pub fn load_command(&self, slug: &str, path: &Path) -> Result<LoadedCommand, RuntimeError> {
        let component: Component = self.inner.cache.load(&self.inner.engine, slug, path)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::wasm("linking the component", e))?;
        let pre = CommandPre::new(pre)
            .map_err(|e| RuntimeError::wasm("the component does not export wasi:cli/run", e))?;
        Ok(LoadedCommand { pre })
    }
}
