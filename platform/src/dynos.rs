//! The running dynos of every app, and the routes that point at them. A new release's dynos
//! are started first; only once they are up does the route table switch, and then the old
//! dynos stop, so a deploy drops no request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use skiff_core::ProcessKind;
use skiff_router::{Backend, RouteTable};
use skiff_runtime::{DynoHandle, DynoSpec, Limits, LoadedComponent, Runtime};

use crate::PlatformError;
use crate::logs::{LogHub, Source};
use crate::state::ReleaseRow;

struct Running {
    release: u64,
    dynos: Vec<DynoHandle>,
}

pub(crate) struct Dynos {
    runtime: Runtime,
    routes: Arc<RouteTable>,
    apps_dir: PathBuf,
    logs: Arc<LogHub>,
    running: Mutex<HashMap<String, Running>>,
    /// Loaded components by (slug, path): a rollback or config change reuses them.
    loaded: Mutex<HashMap<(String, String), LoadedComponent>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dynos {
    pub(crate) fn new(
        runtime: Runtime,
        routes: Arc<RouteTable>,
        apps_dir: PathBuf,
        logs: Arc<LogHub>,
    ) -> Self {
        Self {
            runtime,
            routes,
            apps_dir,
            logs,
            running: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
        }
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
        if web.kind != ProcessKind::WasiHttp {
            return Err(PlatformError::Unrunnable(format!(
                "the web process ({}) is a wasi:cli command; this Skiff serves web dynos from components exporting wasi:http/incoming-handler",
                web.command
            )));
        }
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
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&slug, &path))
            .await
            .map_err(|e| PlatformError::Io(std::io::Error::other(e)))??;
        lock(&self.loaded).insert(key, loaded.clone());
        Ok(Some(loaded))
    }

    /// Starts `count` web dynos of `release` without routing to them yet.
    pub(crate) async fn start_web(
        &self,
        release: &ReleaseRow,
        component: &LoadedComponent,
        count: u32,
    ) -> Result<Vec<DynoHandle>, PlatformError> {
        let app_dir = self.slug_dir(&release.slug).join("app");
        let mut started = Vec::new();
        for i in 1..=count {
            let name = format!("web.{i}");
            let spec = DynoSpec {
                app: release.app.clone(),
                name: name.clone(),
                release: release.version,
                component: component.clone(),
                env: dyno_env(release, &name),
                app_dir: app_dir.clone(),
                limits: Limits::default(),
                log: self.logs.clone(),
            };
            match self.runtime.start_web_dyno(spec).await {
                Ok(handle) => started.push(handle),
                Err(e) => {
                    for d in &started {
                        d.stop();
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(started)
    }

    /// Routes the app to `dynos` (the new release) and stops whatever ran before.
    pub(crate) fn activate(&self, app: &str, release: u64, dynos: Vec<DynoHandle>) {
        let backends = dynos
            .iter()
            .map(|d| Backend {
                dyno: d.name.clone(),
                addr: d.addr,
            })
            .collect();
        self.routes.set_app(app, backends);
        for d in &dynos {
            self.logs.push(
                app,
                Source::Platform,
                &d.name,
                &format!("State changed from starting to up (v{release})"),
            );
        }
        let old = lock(&self.running).insert(app.to_owned(), Running { release, dynos });
        if let Some(old) = old {
            for d in old.dynos {
                d.stop();
                self.logs.push(
                    app,
                    Source::Platform,
                    &d.name,
                    &format!("State changed from up to down (v{} replaced)", old.release),
                );
            }
        }
    }

    /// The release the app's dynos run, if any.
    pub(crate) fn running_release(&self, app: &str) -> Option<u64> {
        lock(&self.running).get(app).map(|r| r.release)
    }

    /// Routes an app that has no running dynos (a created app, or one without a web process).
    pub(crate) fn route_without_dynos(&self, app: &str) {
        if self.routes.backends(app).is_none() {
            self.routes.set_app(app, Vec::new());
        }
    }

    /// Stops every dyno (platform shutdown).
    pub(crate) fn stop_all(&self) {
        for (app, running) in lock(&self.running).drain() {
            for d in running.dynos {
                self.logs
                    .push(&app, Source::Platform, &d.name, "Stopping all processes");
                d.stop();
            }
        }
    }
}

/// A dyno's environment: the release's config vars, then Skiff's own (which win).
fn dyno_env(release: &ReleaseRow, dyno: &str) -> Vec<(String, String)> {
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
