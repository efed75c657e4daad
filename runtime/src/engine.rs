//! The shared engine, its epoch ticker, and loading components into `ProxyPre`s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::RuntimeError;
use crate::cache::PrecompiledCache;
use crate::dyno::DynoState;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// How the shared engine is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are cached.
    pub cache_dir: PathBuf,
    /// Instances the pooling allocator holds ready (`None`: allocate on demand). Each slot
    /// reserves address space, not memory; a request beyond the pool gets a clear 503.
    pub pool_instances: Option<u32>,
    /// The largest linear memory any dyno size allows (sizes the pool's memory slots).
    pub max_memory_bytes: usize,
    /// Meter fuel, so requests can have a CPU budget and report what they used.
    pub fuel: bool,
    /// Bytes of each pool slot's linear memory, and of each of its tables, that stay resident
    /// between instances. Only pages the last instance dirtied are reset, in place, found with
    /// Linux's `PAGEMAP_SCAN`; where the kernel lacks it (before 6.7) this is ignored and a
    /// freed slot goes back to the kernel whole, as with 0.
    pub keep_resident_bytes: usize,
    /// Run first on the thread that advances the epoch, as the caller's own runtime threads
    /// run theirs: its ticks decide when a busy guest yields its core, so it should be
    /// scheduled like the threads that serve requests, not like background work.
    pub thread_start: Option<ThreadStart>,
}

/// A hook a thread the runtime starts runs before anything else.
#[derive(Clone)]
pub struct ThreadStart(Arc<dyn Fn() + Send + Sync>);

impl ThreadStart {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for ThreadStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadStart")
    }
}

/// What the platform keeps resident per pool slot: more than a small guest dirties per
/// request, a fraction of what an interpreter does.
pub const DEFAULT_KEEP_RESIDENT_BYTES: usize = 8 << 20;

impl RuntimeConfig {
    /// On-demand allocation, no fuel: the cheapest setup, for tests and tools.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            pool_instances: None,
            max_memory_bytes: 2 << 30,
            fuel: false,
            keep_resident_bytes: 0,
            thread_start: None,
        }
    }
}

/// One engine for every app, plus the linker every dyno shares.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    fuel: bool,
    reset_in_place: bool,
    linker: Linker<DynoState>,
    cache: PrecompiledCache,
    ticker_stop: Arc<AtomicBool>,
    /// PostgreSQL sessions kept for guests across requests.
    pg: Arc<crate::addons::PgPool>,
    /// Where `KV_URL`s are opened; set once by whoever owns the stores.
    kv: std::sync::OnceLock<Arc<dyn crate::addons::KvBackend>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A web component compiled and linked, ready to instantiate once per request.
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) guest: WebGuest,
}

/// How a web dyno drives its component.
#[derive(Clone)]
pub(crate) enum WebGuest {
    /// Exports `wasi:http/incoming-handler`: the request is handed over as is.
    Http(ProxyPre<DynoState>),
    /// A `wasi:cli/run` command served CGI-style: one run per request, the request in the
    /// environment and on stdin, the response read from stdout.
    Cgi(CommandPre<DynoState>),
}

impl LoadedComponent {
    /// Whether requests run the component as a CGI program.
    pub fn is_cgi(&self) -> bool {
        matches!(self.guest, WebGuest::Cgi(_))
    }
}

/// A command component (`wasi:cli/run`), compiled and linked.
#[derive(Clone)]
pub struct LoadedCommand {
    pub(crate) pre: CommandPre<DynoState>,
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(rc: RuntimeConfig) -> Result<Self, RuntimeError> {
        let cache_dir = rc.cache_dir.clone();
        let mut config = Config::new();
        // Epochs bound every request's wall-clock time at near-zero cost per instruction.
        config.epoch_interruption(true);
        config.consume_fuel(rc.fuel);
        let mut reset_in_place = false;
        if let Some(instances) = rc.pool_instances {
            // Slots are reserved once and reused: instantiation becomes a few microseconds
            // and memory is copy-on-write from the compiled image.
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(8))
                .total_memories(instances.saturating_mul(2))
                .total_tables(instances.saturating_mul(8))
                .total_stacks(instances)
                .max_memories_per_module(2)
                .max_tables_per_module(8)
                // Interpreters compiled to wasm (JS, Python) carry large function tables.
                .table_elements(200_000)
                .max_memory_size(rc.max_memory_bytes);
            if rc.keep_resident_bytes > 0 && PoolingAllocationConfig::is_pagemap_scan_available() {
                // Handing a freed slot back with madvise cost more than the guest's own work:
                // dropping the pages and the copy-on-write faults that bring them back for the
                // next instance each flush the TLB of every core running the process, by
                // interrupt. Resetting only the dirty pages leaves the mapping alone.
                // Without PAGEMAP_SCAN, keeping pages resident means a memset of the whole
                // kept range per instance, which measured no better than madvise.
                pool.pagemap_scan(wasmtime::Enabled::Yes)
                    .linear_memory_keep_resident(rc.keep_resident_bytes)
                    .table_keep_resident(rc.keep_resident_bytes);
                reset_in_place = true;
            } else if rc.keep_resident_bytes > 0 {
                tracing::info!(
                    "this kernel has no PAGEMAP_SCAN (Linux 6.7 or later): freed instance slots go back to the kernel whole"
                );
            }
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine =
            Engine::new(&config).map_err(|e| RuntimeError::wasm("creating the engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::wasm("linking WASI", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::wasm("linking wasi:http", e))?;
        crate::addons::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::wasm("linking Skiff's add-on interfaces", e))?;
        let cache = PrecompiledCache::new(cache_dir, &engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        let thread_start = rc.thread_start.clone();
        std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                if let Some(ThreadStart(start)) = thread_start {
                    start();
                }
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
                fuel: rc.fuel,
                reset_in_place,
                linker,
                cache,
                ticker_stop,
                pg: Default::default(),
                kv: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Instantiates `component` once in a fresh store and drops it, returning how long the
    /// store and instantiation took: the fixed cost every request pays.
    pub async fn time_instantiation(
        &self,
        component: &LoadedComponent,
    ) -> Result<std::time::Duration, RuntimeError> {
        let started = std::time::Instant::now();
        crate::dyno::instantiate_once(component).await?;
        Ok(started.elapsed())
    }

    /// Gives guests their key-value stores: `KV_URL`s are opened by `backend`. Set once;
    /// later calls are ignored.
    pub fn set_kv_backend(&self, backend: Arc<dyn crate::addons::KvBackend>) {
        let _ = self.inner.kv.set(backend);
    }

    /// What a dyno with environment `env` may open through the add-on interfaces.
    pub(crate) fn guest_addons(&self, env: &[(String, String)]) -> crate::addons::GuestAddons {
        crate::addons::GuestAddons::from_env(
            env,
            self.inner.pg.clone(),
            self.inner.kv.get().cloned(),
        )
    }

    /// Whether freed pool slots keep their pages and reset only the dirty ones (see
    /// [`RuntimeConfig::keep_resident_bytes`]).
    pub fn resets_slots_in_place(&self) -> bool {
        self.inner.reset_in_place
    }

    /// Whether requests are metered with fuel.
    pub fn meters_fuel(&self) -> bool {
        self.inner.fuel
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles (or loads from the cache) and links the component at `path`.
    fn link(
        &self,
        slug: &str,
        path: &Path,
    ) -> Result<wasmtime::component::InstancePre<DynoState>, RuntimeError> {
        let component: Component = self.inner.cache.load(&self.inner.engine, slug, path)?;
        self.inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::wasm("linking the component", e))
    }

    /// Loads the component at `path` (from the slug `slug`), compiling it ahead of time on
    /// first use. Blocking: compilation can take seconds for large guests.
    pub fn load(&self, slug: &str, path: &Path) -> Result<LoadedComponent, RuntimeError> {
        let pre = ProxyPre::new(self.link(slug, path)?).map_err(|e| {
            RuntimeError::wasm(
                "the component does not export wasi:http/incoming-handler",
                e,
            )
        })?;
        Ok(LoadedComponent {
            guest: WebGuest::Http(pre),
        })
    }

    /// Loads a command component (`wasi:cli/run`) to serve web requests CGI-style, one run
    /// per request, the same way as [`Runtime::load`].
    pub fn load_cgi(&self, slug: &str, path: &Path) -> Result<LoadedComponent, RuntimeError> {
        let LoadedCommand { pre } = self.load_command(slug, path)?;
        Ok(LoadedComponent {
            guest: WebGuest::Cgi(pre),
        })
    }

    /// Loads a command component (`wasi:cli/run`) the same way as [`Runtime::load`].
    pub fn load_command(&self, slug: &str, path: &Path) -> Result<LoadedCommand, RuntimeError> {
        let pre = CommandPre::new(self.link(slug, path)?)
            .map_err(|e| RuntimeError::wasm("the component does not export wasi:cli/run", e))?;
        Ok(LoadedCommand { pre })
    }
}
