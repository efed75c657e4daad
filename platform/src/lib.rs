//! Skiff's platform: owns the state (apps, releases, config, formation), serves the JSON API
//! and the git endpoint, and wires the builder, the runtime and the router together. It is the
//! only crate that knows all three.

mod addons;
mod api;
mod auth;
mod certs;
mod deploy;
mod drains;
mod dynos;
mod gitweb;
mod logs;
pub mod netrc;
mod oneoff;
mod routing;
mod runs;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_builder::{Builder, SlugStore};
use skiff_router::RouteTable;
use skiff_runtime::Runtime;
use tokio::sync::watch;

pub use auth::hash_token;
pub use logs::Logs;
pub use skiff_builder::builtin_buildpacks as builtin_buildpack_names;
pub use skiff_builder::detects as buildpack_detects;
pub use state::{AppRow, DrainRow, ReleaseRow, State};

/// Errors the platform reports; the API turns each into a status code and a message.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// No app of that name.
    #[error("Couldn't find that app: {0}")]
    NoSuchApp(String),
    /// The name is taken.
    #[error("Name {0} is already taken")]
    AppExists(String),
    /// A bad name or key.
    #[error(transparent)]
    Name(#[from] skiff_core::NameError),
    /// Input the API refuses.
    #[error("{0}")]
    BadRequest(String),
    /// A build failed.
    #[error(transparent)]
    Build(#[from] skiff_builder::BuildError),
    /// A slug could not be stored or unpacked.
    #[error(transparent)]
    Slug(#[from] skiff_builder::SlugError),
    /// A release could not be started.
    #[error(transparent)]
    Runtime(#[from] skiff_runtime::RuntimeError),
    /// The release phase failed; the release did not go live.
    #[error("release phase failed: {0}")]
    ReleasePhase(String),
    /// The caller may not act on this app.
    #[error("You do not have access to the app {0}")]
    Forbidden(String),
    /// The release cannot run with today's runtime.
    #[error("{0}")]
    Unrunnable(String),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] skiff_builder::git::GitError),
    /// The state database failed.
    #[error("state database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// An add-on provider failed (its server refused, a record is unreadable).
    #[error("add-on error: {0}")]
    Addon(String),
    /// The add-on cannot be provided by this host; the message says how to fix that.
    #[error("{0}")]
    AddonUnavailable(String),
    /// Disk or network I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How the platform runs.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where all state lives.
    pub data_dir: PathBuf,
    /// The API and git endpoint address.
    pub api_addr: SocketAddr,
    /// The router's public port, used in app URLs.
    pub http_port: u16,
    /// Apps live at `<app>.<domain>`.
    pub domain: String,
    /// The `skiff` executable, run by git hooks.
    pub skiff_bin: PathBuf,
    /// Time limit for each buildpack script.
    pub build_timeout: Duration,
    /// Largest slug accepted, compressed.
    pub max_slug_bytes: u64,
    /// Instance slots of the pooling allocator (`None`: allocate on demand).
    pub pool_instances: Option<u32>,
    /// Bytes of each instance slot kept resident between requests, only dirty pages reset
    /// (see `skiff_runtime::RuntimeConfig::keep_resident_bytes`).
    pub keep_resident_bytes: usize,
    /// Meter fuel per request (CPU budgets via `SKIFF_REQUEST_FUEL`, `fuel=` in logs).
    pub fuel: bool,
    /// Per-machine toolchain cache given to buildpacks as `SKIFF_TOOLCHAINS`: what one app's
    /// first build installs, the next app's build reuses.
    pub toolchains_dir: PathBuf,
    /// An existing PostgreSQL server for the postgres add-on, as an admin URL; without it,
    /// Skiff runs its own cluster with the machine's `initdb` and `pg_ctl` when first needed.
    pub postgres_admin_url: Option<String>,
    /// Where `initdb` and `pg_ctl` are (default: on PATH, else `/usr/lib/postgresql/*/bin`).
    pub postgres_bin_dir: Option<PathBuf>,
    /// Run first on the threads the runtime starts for itself (see
    /// `skiff_runtime::RuntimeConfig::thread_start`).
    pub runtime_thread_start: Option<skiff_runtime::ThreadStart>,
}

impl PlatformConfig {
    /// Defaults for `data_dir`: loopback ports 5000 (API) and 8080 (router), `localhost`.
    pub fn new(data_dir: PathBuf, skiff_bin: PathBuf) -> Self {
        Self {
            toolchains_dir: data_dir.join("toolchains"),
            data_dir,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            http_port: 8080,
            domain: "localhost".into(),
            skiff_bin,
            build_timeout: Duration::from_secs(15 * 60),
            max_slug_bytes: 300 << 20,
            pool_instances: Some(1000),
            keep_resident_bytes: skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES,
            fuel: false,
            postgres_admin_url: None,
            postgres_bin_dir: None,
            runtime_thread_start: None,
        }
    }

    /// The public URL of an app.
    pub fn app_url(&self, app: &str) -> String {
        if self.http_port == 80 {
            format!("http://{app}.{}/", self.domain)
        } else {
            format!("http://{app}.{}:{}/", self.domain, self.http_port)
        }
    }

    /// The git URL of an app.
    pub fn git_url(&self, app: &str) -> String {
        format!("http://{}/{app}.git", self.api_addr)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// The running platform's shared parts.
pub(crate) struct Platform {
    pub config: PlatformConfig,
    pub state: State,
    pub builder: Builder,
    pub slugs: SlugStore,
    pub dynos: dynos::Dynos,
    /// The table the router reads; `routing` sets what is not dynos (settings, domains).
    pub routes: Arc<RouteTable>,
    pub logs: Arc<logs::LogHub>,
    /// Turns true when the platform stops; long-lived responses (log tails) end on it.
    pub shutdown: watch::Receiver<bool>,
    pub hook_token: String,
    pub deploy_locks:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Add-on providers.
    pub addons: addons::Addons,
}

impl Platform {
    pub(crate) fn repos_dir(&self) -> PathBuf {
        self.config.path("repos")
    }

    /// Serialises deploys and config changes per app.
    pub(crate) fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.deploy_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(app.to_owned()).or_default().clone()
    }
}

/// Opens the state database and ensures the admin token exists. Returns the token in clear
/// text: it is kept in `<data_dir>/admin-token` (mode 0600) so restarts can print it again.
pub fn ensure_admin_token(data_dir: &Path) -> Result<String, PlatformError> {
    std::fs::create_dir_all(data_dir)?;
    let state = State::open(&data_dir.join("state.db"))?;
    let path = data_dir.join("admin-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let token = auth::new_token();
            write_private(&path, &token)?;
            token
        }
    };
    state.add_token(&hash_token(&token), "admin")?;
    Ok(token)
}

fn remove_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp") {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Every build process carries `SKIFF_BUILD_HOST=<data dir>` in its environment (and passes
/// it to what it starts), so the next run of the platform can find them.
const BUILD_MARK: &str = "SKIFF_BUILD_HOST";

/// SIGKILLs every process started by a build of a previous run of this platform (same data
/// dir). Buildpack scripts run in their own process groups, so they outlive a platform killed
/// with SIGKILL; left alone, they would keep compiling into removed dirs and hold locks in
/// the shared toolchain cache.
fn stop_orphaned_builds(data: &Path) {
    let orphans: Vec<String> = build_processes(data).iter().map(u32::to_string).collect();
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(
        count = orphans.len(),
        "stopping build processes left by a previous run that did not stop cleanly"
    );
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&orphans)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Processes started by a build of the platform whose data dir is `data` (they carry its
/// `SKIFF_BUILD_HOST` mark), running or left over from a run killed with SIGKILL.
pub fn build_processes(data: &Path) -> Vec<u32> {
    let mark = format!("{BUILD_MARK}={}", data.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|var| var == mark.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs the platform until `shutdown` turns true: restores every app's dynos, routes and log
/// drains, then serves the API and git endpoint. `routes` is the table the router reads;
/// `logs` is the hub the router's access log writes to.
pub async fn run(
    config: PlatformConfig,
    routes: Arc<RouteTable>,
    logs: Logs,
    mut shutdown: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), PlatformError> {
    let data = &config.data_dir;
    for dir in [
        "repos",
        "slugs",
        "builds",
        "cache",
        "apps",
        "precompiled",
        "buildpacks",
        "run",
    ] {
        std::fs::create_dir_all(data.join(dir))?;
    }
    // Leftovers of builds interrupted by a crash are never resumed: their processes, which
    // a kill -9 of the platform leaves running, are stopped, and their dirs removed.
    stop_orphaned_builds(data);
    let _ = std::fs::remove_dir_all(data.join("builds"));
    std::fs::create_dir_all(data.join("builds"))?;
    // Half-written slugs, unpacks and precompiled files are temp files until renamed into
    // place; after a kill -9 they are only litter.
    for dir in ["slugs", "apps", "precompiled"] {
        remove_temp_files(&data.join(dir));
    }

    let state = State::open(&data.join("state.db"))?;
    let buildpacks = skiff_builder::install_builtin_buildpacks(&data.join("buildpacks"))?;
    let slugs = SlugStore::new(data.join("slugs"), config.max_slug_bytes)?;
    std::fs::create_dir_all(&config.toolchains_dir)?;
    let builder = Builder::new(buildpacks, slugs.clone(), config.build_timeout)
        .with_var("SKIFF_TOOLCHAINS", config.toolchains_dir.to_string_lossy())
        .with_var(BUILD_MARK, data.to_string_lossy());
    // Every dyno's private /tmp starts empty after a restart, like a dyno's filesystem.
    let _ = std::fs::remove_dir_all(data.join("tmp"));
    let runtime = Runtime::new(skiff_runtime::RuntimeConfig {
        cache_dir: data.join("precompiled"),
        pool_instances: config.pool_instances,
        max_memory_bytes: skiff_core::sizes::largest_memory_bytes(),
        fuel: config.fuel,
        keep_resident_bytes: config.keep_resident_bytes,
        thread_start: config.runtime_thread_start.clone(),
    })?;
    let addons = addons::Addons::new(&addons::ProviderContext {
        data_dir: data.clone(),
        postgres_admin_url: config.postgres_admin_url.clone(),
        postgres_bin_dir: config.postgres_bin_dir.clone(),
        runtime: &runtime,
    })?;
    let logs = logs.0;
    let dynos = dynos::Dynos::new(
        runtime,
        routes.clone(),
        data.join("apps"),
        data.join("tmp"),
        logs.clone(),
    );
    let platform = Arc::new(Platform {
        hook_token: auth::new_token(),
        config: config.clone(),
        state,
        builder,
        slugs,
        dynos,
        routes,
        logs,
        shutdown: shutdown.clone(),
        deploy_locks: Default::default(),
        addons,
    });

    // Add-ons first: a server they need may have to start (and move) before dynos use it.
    if let Err(e) = addons::boot(&platform).await {
        tracing::error!(error = %e, "could not start the add-on providers");
    }

    for app in platform.state.apps()? {
        // Drains first, so they also get the restore's own lines.
        if let Err(e) = drains::restart(&platform, &app.name) {
            tracing::error!(app = %app.name, error = %e, "could not start the app's log drains");
        }
        if let Err(e) = deploy::restore(&platform, &app.name).await {
            tracing::error!(app = %app.name, error = %e, "could not restore the app's dynos");
        }
    }

    let listener = tokio::net::TcpListener::bind(config.api_addr).await?;
    tracing::info!(addr = %config.api_addr, "API and git endpoint up");
    let _ = ready.send(());
    let app = api::router(platform.clone());
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    let result = serve.await;
    platform.dynos.stop_all();
    platform.addons.shutdown();
    result.map_err(PlatformError::Io)
}
