//! The running dynos of every app (the formation), and the routes that point at them. A new
//! release's dynos are started first; only once they are up does the route table switch, and
//! then the old dynos stop, so a deploy drops no request.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use skiff_core::ProcessKind;
use skiff_router::{Backend, RouteTable};
use skiff_runtime::OutboundPolicy;
use skiff_runtime::{
    CommandSpec, DynoHandle, DynoSpec, Exit, Limits, LoadedCommand, LoadedComponent, Output,
    Runtime,
};
use tokio::sync::mpsc;

use crate::PlatformError;
use crate::deploy::Scale;
use crate::logs::{LogHub, Source};
use crate::state::ReleaseRow;
use skiff_core::sizes;

/// What `skiff ps` shows of a dyno.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DynoInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub process_type: String,
    pub command: String,
    pub state: String,
    pub size: String,
    /// Unix seconds of the last state change.
    pub since: i64,
    pub release: u64,
}

enum Handle {
    Web(DynoHandle),
    Worker(tokio::task::AbortHandle),
}

struct Dyno {
    info: Arc<Mutex<DynoInfo>>,
    handle: Handle,
}

impl Dyno {
    fn stop(&self) {
        match &self.handle {
            Handle::Web(h) => h.stop(),
            Handle::Worker(h) => h.abort(),
        }
    }

    fn name(&self) -> String {
        lock(&self.info).name.clone()
    }
}

/// A release's dynos, started but not necessarily routed yet.
pub(crate) struct Formation {
    release: ReleaseRow,
    web: Option<LoadedComponent>,
    scale: BTreeMap<String, Scale>,
    dynos: Vec<Dyno>,
}

impl Formation {
    /// Stops every dyno of a formation that never went live.
    pub(crate) fn abandon(self) {
        for d in &self.dynos {
            d.stop();
        }
    }
}

pub(crate) struct Dynos {
    runtime: Runtime,
    routes: Arc<RouteTable>,
    apps_dir: PathBuf,
    logs: Arc<LogHub>,
    running: Mutex<HashMap<String, Formation>>,
    /// Dynos' private `/tmp` folders, one per app and dyno name.
    tmp_root: PathBuf,
    /// Loaded components by (slug, path): a rollback or config change reuses them.
    loaded: Mutex<HashMap<(String, String), LoadedComponent>>,
    commands: Mutex<HashMap<(String, String), LoadedCommand>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Dynos {
    pub(crate) fn new(
        runtime: Runtime,
        routes: Arc<RouteTable>,
        apps_dir: PathBuf,
        tmp_root: PathBuf,
        logs: Arc<LogHub>,
    ) -> Self {
        Self {
            tmp_root,
            runtime,
            routes,
            apps_dir,
            logs,
            running: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            commands: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A new, empty private `/tmp` for a dyno. Each start of a dyno gets its own folder: when
    /// `web.1` is replaced (a deploy, a restart) the old `web.1` drains its requests while the
    /// new one serves, and wiping the folder under it would fail those requests. Folders of
    /// earlier starts are discarded, except the one just before (it may still be draining).
    pub(crate) fn fresh_tmp(&self, app: &str, dyno: &str) -> Result<PathBuf, PlatformError> {
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let parent = self.tmp_root.join(app);
        let prefix = format!("{dyno}@");
        let mut earlier: Vec<(u64, PathBuf)> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let seq = name.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                Some((seq, entry.path()))
            })
            .collect();
        earlier.sort();
        earlier.pop();
        for (_, stale) in earlier {
            let _ = std::fs::remove_dir_all(stale);
        }
        let dir = parent.join(format!(
            "{prefix}{}",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Where a slug is unpacked.
    pub(crate) fn slug_dir(&self, slug: &str) -> PathBuf {
        self.apps_dir.join(slug)
    }

    /// Compiles (or fetches from cache) the web component of `release`.
    pub(crate) async fn load_web(
        &self,
        release: &ReleaseRow,
    ) -> Result<Option<LoadedComponent>, PlatformError> {
        let Some(web) = release.manifest.process_types.get("web") else {
            return Ok(None);
        };
        let key = (release.slug.clone(), web.component.clone());
        if let Some(found) = lock(&self.loaded).get(&key) {
            return Ok(Some(found.clone()));
        }
        let runtime = self.runtime.clone();
        let path = self
            .slug_dir(&release.slug)
            .join("app")
            .join(&web.component);
        let slug = release.slug.clone();
        // A command component serves the web CGI-style: one run per request.
        let cgi = web.kind == ProcessKind::Command;
        let loaded = tokio::task::spawn_blocking(move || {
            if cgi {
                runtime.load_cgi(&slug, &path)
            } else {
                runtime.load(&slug, &path)
            }
        })
        .await
        .map_err(|e| PlatformError::Io(std::io::Error::other(e)))??;
        lock(&self.loaded).insert(key, loaded.clone());
        Ok(Some(loaded))
    }

    /// Compiles (or fetches from cache) a command component of the slug.
    pub(crate) async fn load_command(
        &self,
        slug: &str,
        component: &std::path::Path,
    ) -> Result<LoadedCommand, PlatformError> {
        let key = (slug.to_owned(), component.display().to_string());
        if let Some(found) = lock(&self.commands).get(&key) {
            return Ok(found.clone());
        }
        let runtime = self.runtime.clone();
        let path = self.slug_dir(slug).join("app").join(component);
        if !path.is_file() {
            return Err(PlatformError::BadRequest(format!(
                "{} is not in the slug",
                component.display()
            )));
        }
        let slug_owned = slug.to_owned();
        let loaded = tokio::task::spawn_blocking(move || runtime.load_command(&slug_owned, &path))
            .await
            .map_err(|e| PlatformError::Io(std::io::Error::other(e)))??;
        lock(&self.commands).insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Starts the dynos `quantities` asks for (web and workers) without routing to them.
    pub(crate) async fn start(
        &self,
        release: &ReleaseRow,
        web: Option<LoadedComponent>,
        scale: &BTreeMap<String, Scale>,
    ) -> Result<Formation, PlatformError> {
        let mut formation = Formation {
            release: release.clone(),
            web,
            scale: scale.clone(),
            dynos: Vec::new(),
        };
        for (process_type, s) in scale {
            for i in 1..=s.quantity {
                match self.spawn(&formation, process_type, i).await {
                    Ok(d) => formation.dynos.push(d),
                    Err(e) => {
                        formation.abandon();
                        return Err(e);
                    }
                }
            }
        }
        Ok(formation)
    }

    async fn spawn(
        &self,
        formation: &Formation,
        process_type: &str,
        index: u32,
    ) -> Result<Dyno, PlatformError> {
        let release = &formation.release;
        let name = format!("{process_type}.{index}");
        let spec = release
            .manifest
            .process_types
            .get(process_type)
            .ok_or_else(|| {
                PlatformError::BadRequest(format!(
                    "no process type {process_type} in v{}",
                    release.version
                ))
            })?;
        let size_name = formation
            .scale
            .get(process_type)
            .map(|s| s.size.clone())
            .unwrap_or_else(|| sizes::DEFAULT_SIZE.to_owned());
        let size = sizes::size(&size_name).unwrap_or(sizes::SIZES[2]);
        let limits = limits_for(release, size);
        let info = Arc::new(Mutex::new(DynoInfo {
            name: name.clone(),
            process_type: process_type.to_owned(),
            command: spec.command.clone(),
            state: "starting".into(),
            size: size.name.to_owned(),
            since: now(),
            release: release.version,
        }));
        let app_dir = self.slug_dir(&release.slug).join("app");
        let tmp_dir = self.fresh_tmp(&release.app, &name)?;
        if process_type == "web" {
            let component = formation.web.clone().ok_or_else(|| {
                PlatformError::Unrunnable("the release has no web component".into())
            })?;
            let handle = self
                .runtime
                .start_web_dyno(DynoSpec {
                    app: release.app.clone(),
                    name: name.clone(),
                    release: release.version,
                    component,
                    env: dyno_env(release, &name),
                    args: std::iter::once(spec.component.clone())
                        .chain(spec.args.iter().cloned())
                        .collect(),
                    app_dir,
                    tmp_dir: Some(tmp_dir),
                    limits,
                    outbound: outbound_policy(release),
                    log: self.logs.clone(),
                })
                .await?;
            set_state(&info, "up");
            return Ok(Dyno {
                info,
                handle: Handle::Web(handle),
            });
        }
        if spec.kind != ProcessKind::Command {
            return Err(PlatformError::Unrunnable(format!(
                "{process_type} ({}) must be a wasi:cli command component to run as a worker",
                spec.command
            )));
        }
        let command = self
            .load_command(&release.slug, std::path::Path::new(&spec.component))
            .await?;
        let mut argv = vec![spec.component.clone()];
        argv.extend(spec.args.iter().cloned());
        let run = CommandSpec {
            app: release.app.clone(),
            name: name.clone(),
            command,
            args: argv,
            env: dyno_env(release, &name),
            app_dir,
            tmp_dir: Some(tmp_dir),
            memory_bytes: limits.memory_bytes,
            timeout: Duration::from_secs(365 * 24 * 3600),
            outbound: outbound_policy(release),
        };
        let task = tokio::spawn(supervise(
            self.runtime.clone(),
            run,
            info.clone(),
            self.logs.clone(),
        ));
        Ok(Dyno {
            info,
            handle: Handle::Worker(task.abort_handle()),
        })
    }

    /// Routes the app to `formation`'s web dynos and stops whatever ran before.
    pub(crate) fn activate(&self, app: &str, formation: Formation) {
        self.routes.set_app(app, web_backends(&formation));
        let version = formation.release.version;
        for d in &formation.dynos {
            self.logs.push(
                app,
                Source::Platform,
                &d.name(),
                &format!("State changed from starting to up (v{version})"),
            );
        }
        let old = lock(&self.running).insert(app.to_owned(), formation);
        if let Some(old) = old {
            for d in &old.dynos {
                self.logs.push(
                    app,
                    Source::Platform,
                    &d.name(),
                    &format!(
                        "State changed from up to down (v{} replaced)",
                        old.release.version
                    ),
                );
            }
            old.abandon();
        }
    }

    /// The release the app's dynos run, if any.
    pub(crate) fn running_release(&self, app: &str) -> Option<u64> {
        lock(&self.running).get(app).map(|r| r.release.version)
    }

    /// What `ps` shows.
    pub(crate) fn ps(&self, app: &str) -> Vec<DynoInfo> {
        let running = lock(&self.running);
        let mut out: Vec<DynoInfo> = running
            .get(app)
            .map(|f| {
                f.dynos
                    .iter()
                    .map(|d| {
                        let mut info = lock(&d.info).clone();
                        // A web dyno's crash loop lives in the runtime: each request is its
                        // own instance, so there is no process to watch.
                        if let Handle::Web(h) = &d.handle
                            && h.crashed()
                        {
                            info.state = "crashed".into();
                        }
                        info
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| {
            (&a.process_type, a.name.len(), &a.name).cmp(&(&b.process_type, b.name.len(), &b.name))
        });
        out
    }

    /// Dynos running on this host, all apps together.
    pub(crate) fn total(&self) -> usize {
        lock(&self.running).values().map(|f| f.dynos.len()).sum()
    }

    /// Dynos `app` runs now.
    pub(crate) fn count(&self, app: &str) -> usize {
        lock(&self.running).get(app).map_or(0, |f| f.dynos.len())
    }

    /// Restarts one dyno in place (same name, same release).
    pub(crate) async fn restart_one(&self, app: &str, name: &str) -> Result<(), PlatformError> {
        let (process_type, index, probe) = {
            let running = lock(&self.running);
            let formation = running
                .get(app)
                .ok_or_else(|| PlatformError::BadRequest(format!("{app} has no running dynos")))?;
            let dyno = formation
                .dynos
                .iter()
                .find(|d| d.name() == name)
                .ok_or_else(|| PlatformError::BadRequest(format!("no dyno {name} is running")))?;
            let info = lock(&dyno.info).clone();
            let index: u32 = name
                .rsplit('.')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or(1);
            (
                info.process_type,
                index,
                Formation {
                    release: formation.release.clone(),
                    web: formation.web.clone(),
                    scale: formation.scale.clone(),
                    dynos: Vec::new(),
                },
            )
        };
        let fresh = self.spawn(&probe, &process_type, index).await?;
        let mut running = lock(&self.running);
        let Some(formation) = running.get_mut(app) else {
            fresh.stop();
            return Ok(());
        };
        if let Some(slot) = formation.dynos.iter_mut().find(|d| d.name() == name) {
            let old = std::mem::replace(slot, fresh);
            old.stop();
        } else {
            formation.dynos.push(fresh);
        }
        self.routes.set_app(app, web_backends(formation));
        Ok(())
    }

    /// Stops one dyno until the next restart, scale or release.
    pub(crate) fn stop_one(&self, app: &str, name: &str) -> Result<(), PlatformError> {
        let mut running = lock(&self.running);
        let formation = running
            .get_mut(app)
            .ok_or_else(|| PlatformError::BadRequest(format!("{app} has no running dynos")))?;
        let pos = formation
            .dynos
            .iter()
            .position(|d| d.name() == name)
            .ok_or_else(|| PlatformError::BadRequest(format!("no dyno {name} is running")))?;
        let dyno = formation.dynos.remove(pos);
        self.routes.set_app(app, web_backends(formation));
        dyno.stop();
        Ok(())
    }

    /// Routes an app that has no running dynos (a created app, or one without a web process).
    pub(crate) fn route_without_dynos(&self, app: &str) {
        if self.routes.backends(app).is_none() {
            self.routes.set_app(app, Vec::new());
        }
    }

    /// Stops an app's dynos and forgets its routes (destroy, rename).
    pub(crate) fn remove_app(&self, app: &str) {
        self.routes.remove_app(app);
        if let Some(f) = lock(&self.running).remove(app) {
            f.abandon();
        }
    }

    /// Stops every dyno (platform shutdown).
    pub(crate) fn stop_all(&self) {
        for (app, formation) in lock(&self.running).drain() {
            for d in &formation.dynos {
                self.logs
                    .push(&app, Source::Platform, &d.name(), "Stopping all processes");
            }
            formation.abandon();
        }
    }
}

fn web_backends(formation: &Formation) -> Vec<Backend> {
    formation
        .dynos
        .iter()
        .filter_map(|d| match &d.handle {
            Handle::Web(h) => Some(Backend {
                dyno: h.name.clone(),
                addr: h.addr,
            }),
            Handle::Worker(_) => None,
        })
        .collect()
}

fn set_state(info: &Arc<Mutex<DynoInfo>>, state: &str) {
    let mut i = lock(info);
    i.state = state.to_owned();
    i.since = now();
}

/// Keeps a worker running: a crash or exit restarts it after a backoff that doubles up to five
/// minutes, and resets once a run has lasted a while (Heroku's crash-restart policy).
async fn supervise(
    runtime: Runtime,
    spec: CommandSpec,
    info: Arc<Mutex<DynoInfo>>,
    logs: Arc<LogHub>,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(300);
    let mut backoff = Duration::from_secs(1);
    loop {
        set_state(&info, "up");
        let started = Instant::now();
        let (tx, rx) = mpsc::channel(64);
        let printer = tokio::spawn(output_to_logs(
            rx,
            logs.clone(),
            spec.app.clone(),
            spec.name.clone(),
        ));
        let exit = runtime.run_command(spec.clone(), tx).await;
        let _ = printer.await;
        set_state(&info, "crashed");
        let what = match &exit {
            Exit::Code(c) => format!("Process exited with status {c}"),
            Exit::TimedOut => "Process ran past its time limit".to_owned(),
            Exit::Trapped(t) => {
                format!("Process crashed: {}", t.lines().next().unwrap_or_default())
            }
        };
        logs.push(&spec.app, Source::Platform, &spec.name, &what);
        logs.push(
            &spec.app,
            Source::Platform,
            &spec.name,
            &format!(
                "State changed from up to crashed; restarting in {}s",
                backoff.as_secs()
            ),
        );
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sends a command's output to the app's logs line by line, as `app[<dyno>]`.
pub(crate) async fn output_to_logs(
    mut rx: mpsc::Receiver<Output>,
    logs: Arc<LogHub>,
    app: String,
    dyno: String,
) {
    let mut pending = String::new();
    while let Some(chunk) = rx.recv().await {
        let (Output::Stdout(b) | Output::Stderr(b)) = chunk;
        pending.push_str(&String::from_utf8_lossy(&b));
        while let Some(i) = pending.find('\n') {
            logs.push(
                &app,
                Source::App,
                &dyno,
                pending[..i].trim_end_matches('\r'),
            );
            pending.drain(..=i);
        }
    }
    if !pending.is_empty() {
        logs.push(&app, Source::App, &dyno, &pending);
    }
}

/// A dyno's limits: its size's memory and concurrency, and the app's own request timeout
/// (`SKIFF_REQUEST_TIMEOUT`, else `SKIFF_ROUTER_TIMEOUT`, seconds) and CPU budget (`SKIFF_REQUEST_FUEL`) when set.
pub(crate) fn limits_for(release: &ReleaseRow, size: sizes::DynoSize) -> Limits {
    let defaults = Limits::default();
    // The router's timeout (SKIFF_ROUTER_TIMEOUT) also bounds the guest unless the app sets
    // the runtime's own; a guest outliving the router's wait would only burn CPU.
    let timeout = release
        .config
        .get("SKIFF_REQUEST_TIMEOUT")
        .or_else(|| release.config.get("SKIFF_ROUTER_TIMEOUT"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (1..=300).contains(s))
        .map(Duration::from_secs)
        .unwrap_or(defaults.request_timeout);
    let fuel = release
        .config
        .get("SKIFF_REQUEST_FUEL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|f| *f > 0);
    Limits {
        memory_bytes: size.memory_bytes(),
        request_timeout: timeout,
        concurrency: size.concurrency as usize,
        fuel,
        ..defaults
    }
}

/// Where the release's dynos may send HTTP requests (`SKIFF_OUTBOUND_ALLOW`).
pub(crate) fn outbound_policy(release: &ReleaseRow) -> Arc<OutboundPolicy> {
    Arc::new(OutboundPolicy::from_config(
        release
            .config
            .get("SKIFF_OUTBOUND_ALLOW")
            .map(String::as_str),
    ))
}

/// A dyno's environment: the release's config vars, then Skiff's own (which win).
pub(crate) fn dyno_env(release: &ReleaseRow, dyno: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = release
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("SKIFF_APP".into(), release.app.clone()));
    env.push((
        "SKIFF_RELEASE_VERSION".into(),
        format!("v{}", release.version),
    ));
    env.push(("DYNO".into(), dyno.to_owned()));
    env
}
