//! Add-ons: resources an app uses (a PostgreSQL database, a key-value store), each made by a
//! [`Provider`]. Providers are listed in [`registry`]; a new one is a module implementing the
//! trait plus one line there (docs/addons.md says how).
//!
//! Attaching, detaching and rotating an add-on's credentials change the app's config vars, and
//! so cut a release and roll the dynos exactly as `config:set` does; the add-on's row changes
//! in the same transaction as the config.

mod kv;
mod pg_server;
mod postgres;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use skiff_runtime::Runtime;

use crate::api::{ApiError, ApiResult, Caller, authorize};
use crate::state::{AddonChange, AddonRow};
use crate::{Platform, PlatformError, deploy};

type Shared = Arc<Platform>;

/// What a provider made: the config vars the app gets, and the provider's own record of the
/// resource (kept in the state, handed back to `deprovision`, `rotate_credentials`, `info`).
#[derive(Debug, Clone)]
pub(crate) struct Provisioned {
    pub config: BTreeMap<String, String>,
    pub resource: serde_json::Value,
}

/// One kind of add-on. Methods get the provider's own record of a resource, never other
/// apps' records; errors are [`PlatformError::Addon`] (the provider failed) or
/// [`PlatformError::AddonUnavailable`] (it cannot work on this host, and the message says
/// how to fix that).
#[async_trait::async_trait]
pub(crate) trait Provider: Send + Sync {
    /// What users type: `skiff addons:create <name>`.
    fn name(&self) -> &'static str;
    /// One line for `addons:services`.
    fn description(&self) -> &'static str;
    /// The plans it offers, the default first.
    fn plans(&self) -> &'static [&'static str];
    /// Makes a new resource for `app`.
    async fn provision(&self, app: &str, plan: &str) -> Result<Provisioned, PlatformError>;
    /// Destroys the resource and everything in it.
    async fn deprovision(&self, resource: &serde_json::Value) -> Result<(), PlatformError>;
    /// Replaces the resource's credentials; the old ones stop working.
    async fn rotate_credentials(
        &self,
        resource: &serde_json::Value,
    ) -> Result<Provisioned, PlatformError>;
    /// Called once the release carrying rotated credentials is out (or failed to go out):
    /// ends what still uses the old credentials, such as sessions opened with the old
    /// password. `resource` is the record `rotate_credentials` returned.
    async fn retire_old_credentials(
        &self,
        resource: &serde_json::Value,
    ) -> Result<(), PlatformError> {
        let _ = resource;
        Ok(())
    }
    /// Facts about the resource, in display order (`("Data Size", "7.5 MB")`).
    async fn info(
        &self,
        resource: &serde_json::Value,
    ) -> Result<Vec<(String, String)>, PlatformError>;
    /// At platform start, given every add-on of this provider: returns the ones whose config
    /// vars must change (a server that moved), as (add-on name, new values).
    async fn boot(
        &self,
        existing: &[AddonRow],
    ) -> Result<Vec<(String, Provisioned)>, PlatformError> {
        let _ = existing;
        Ok(Vec::new())
    }
    /// At platform stop: release what the provider runs (a local server).
    fn shutdown(&self) {}
}

/// What providers may use of the platform.
pub(crate) struct ProviderContext<'a> {
    pub data_dir: PathBuf,
    /// `--postgres-admin-url`.
    pub postgres_admin_url: Option<String>,
    /// `--postgres-bin-dir`.
    pub postgres_bin_dir: Option<PathBuf>,
    /// The runtime, for providers that serve guests directly (the kv store).
    pub runtime: &'a Runtime,
}

/// Every provider this Skiff offers. A new provider is a module and one line here.
fn registry(ctx: &ProviderContext<'_>) -> Result<Vec<Arc<dyn Provider>>, PlatformError> {
    Ok(vec![postgres::provider(ctx)?, kv::provider(ctx)?])
}

/// The providers, looked up by name.
pub(crate) struct Addons {
    providers: Vec<Arc<dyn Provider>>,
}

impl Addons {
    pub(crate) fn new(ctx: &ProviderContext<'_>) -> Result<Self, PlatformError> {
        Ok(Self {
            providers: registry(ctx)?,
        })
    }

    fn provider(&self, name: &str) -> Result<Arc<dyn Provider>, PlatformError> {
        self.providers
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<_> = self.providers.iter().map(|p| p.name()).collect();
                PlatformError::BadRequest(format!(
                    "no add-on service {name} (services: {})",
                    names.join(", ")
                ))
            })
    }

    /// Stops what providers run; called once when the platform stops.
    pub(crate) fn shutdown(&self) {
        for p in &self.providers {
            p.shutdown();
        }
    }
}

impl Drop for Addons {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// At start, before dynos are restored: lets each provider bring up what existing add-ons need
/// and records config vars that changed (each as a release, which the restore then runs).
pub(crate) async fn boot(p: &Platform) -> Result<(), PlatformError> {
    for provider in &p.addons.providers {
        let existing = p.state.addons_of_provider(provider.name())?;
        if existing.is_empty() {
            continue;
        }
        let changed = match provider.boot(&existing).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(provider = provider.name(), error = %e, "add-on provider could not start; its add-ons are unreachable");
                continue;
            }
        };
        for (name, new) in changed {
            let Some(row) = existing.iter().find(|r| r.name == name) else {
                continue;
            };
            let changes = new
                .config
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            p.state.change_config_with(
                &row.app,
                &changes,
                &AddonChange::Update(name.clone(), new.resource),
                &format!("Update {} config vars ({name} moved)", keys(&new.config)),
                "skiff",
            )?;
            tracing::info!(app = %row.app, addon = %name, "add-on config vars updated at start");
        }
    }
    Ok(())
}

fn keys(config: &BTreeMap<String, String>) -> String {
    config.keys().cloned().collect::<Vec<_>>().join(", ")
}

pub(crate) fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/addon-services", get(list_services))
        .route("/apps/{app}/addons", get(list_addons).post(create_addon))
        .route(
            "/apps/{app}/addons/{addon}",
            get(addon_info).delete(destroy_addon),
        )
        .route(
            "/apps/{app}/addons/{addon}/actions/rotate-credentials",
            post(rotate_credentials),
        )
}

#[derive(serde::Serialize)]
struct AddonInfo {
    name: String,
    app: String,
    provider: String,
    plan: String,
    config_vars: Vec<String>,
    created_at: i64,
}

impl From<&AddonRow> for AddonInfo {
    fn from(r: &AddonRow) -> Self {
        Self {
            name: r.name.clone(),
            app: r.app.clone(),
            provider: r.provider.clone(),
            plan: r.plan.clone(),
            config_vars: r.config_vars.clone(),
            created_at: r.created_at,
        }
    }
}

async fn list_services(State(p): State<Shared>) -> Json<serde_json::Value> {
    let services: Vec<_> = p
        .addons
        .providers
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name(),
                "description": s.description(),
                "plans": s.plans(),
            })
        })
        .collect();
    Json(serde_json::Value::Array(services))
}

async fn list_addons(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<AddonInfo>>> {
    authorize(&p, &caller, &app)?;
    Ok(Json(
        p.state.addons(&app)?.iter().map(AddonInfo::from).collect(),
    ))
}

/// The app's add-on called `wanted`: its name (`postgres-1a2b3c`) or its provider (`postgres`).
fn find_addon(p: &Platform, app: &str, wanted: &str) -> Result<AddonRow, ApiError> {
    p.state
        .addons(app)?
        .into_iter()
        .find(|a| a.name == wanted || a.provider == wanted)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{app} has no add-on {wanted} (see `skiff addons -a {app}`)"),
            )
        })
}

#[derive(serde::Deserialize)]
struct NewAddon {
    /// The provider (`postgres`, `kv`); `service` is accepted too.
    #[serde(alias = "service")]
    provider: String,
    plan: Option<String>,
}

fn random_hex(bytes: usize) -> Result<String, PlatformError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| PlatformError::Io(std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(b))
}

/// Random hex for names and secrets.
pub(crate) fn token(bytes: usize) -> Result<String, PlatformError> {
    random_hex(bytes)
}

async fn create_addon(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<NewAddon>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    authorize(&p, &caller, &app)?;
    let provider = p.addons.provider(body.provider.trim())?;
    let plan = match body.plan {
        Some(plan) if provider.plans().contains(&plan.as_str()) => plan,
        Some(plan) => {
            return Err(PlatformError::BadRequest(format!(
                "{} has no plan {plan} (plans: {})",
                provider.name(),
                provider.plans().join(", ")
            ))
            .into());
        }
        None => provider
            .plans()
            .first()
            .copied()
            .unwrap_or("standard")
            .to_owned(),
    };
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    if p.state
        .addons(&app)?
        .iter()
        .any(|a| a.provider == provider.name())
    {
        return Err(PlatformError::BadRequest(format!(
            "{app} already has a {} add-on",
            provider.name()
        ))
        .into());
    }
    let config = p.state.config(&app)?;
    let provisioned = provider.provision(&app, &plan).await?;
    if let Some(taken) = provisioned.config.keys().find(|k| config.contains_key(*k)) {
        // The app's own value would be overwritten silently; keep it and undo the add-on.
        let _ = provider.deprovision(&provisioned.resource).await;
        return Err(PlatformError::BadRequest(format!(
            "{app} already sets {taken}; unset it first (`skiff config:unset {taken}`)"
        ))
        .into());
    }
    let row = AddonRow {
        name: format!("{}-{}", provider.name(), random_hex(3)?),
        app: app.clone(),
        provider: provider.name().to_owned(),
        plan,
        resource: provisioned.resource.clone(),
        config_vars: provisioned.config.keys().cloned().collect(),
        created_at: now(),
    };
    let changes = provisioned
        .config
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let description = format!(
        "Attach {} ({}); set {}",
        row.name,
        row.provider,
        keys(&provisioned.config)
    );
    let release = match deploy::change_config_locked(
        &p,
        &app,
        &changes,
        &AddonChange::Attach(row.clone()),
        &description,
        &caller.0,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            // Nothing points at the new resource: take it back down.
            if let Err(undo) = provider.deprovision(&provisioned.resource).await {
                tracing::error!(app, addon = %row.name, error = %undo, "could not remove an add-on whose release failed");
            }
            return Err(e.into());
        }
    };
    log(&p, &app, &format!("{} by user {}", description, caller.0));
    tracing::info!(app, addon = %row.name, "add-on created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "addon": AddonInfo::from(&row),
            "release": release.map(|r| r.version),
        })),
    ))
}

fn log(p: &Platform, app: &str, line: &str) {
    p.logs.push(app, crate::logs::Source::Platform, "api", line);
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn addon_info(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, addon)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    let row = find_addon(&p, &app, &addon)?;
    let provider = p.addons.provider(&row.provider)?;
    let facts = provider.info(&row.resource).await?;
    let facts: Vec<_> = facts
        .into_iter()
        .map(|(k, v)| serde_json::json!({ "name": k, "value": v }))
        .collect();
    Ok(Json(serde_json::json!({
        "addon": AddonInfo::from(&row),
        "info": facts,
    })))
}

async fn destroy_addon(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, addon)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    let row = find_addon(&p, &app, &addon)?;
    let provider = p.addons.provider(&row.provider)?;
    let changes = row.config_vars.iter().map(|k| (k.clone(), None)).collect();
    let description = format!(
        "Detach {} ({}); remove {}",
        row.name,
        row.provider,
        row.config_vars.join(", ")
    );
    // The app stops using the resource first; only then is it destroyed.
    let release = deploy::change_config_locked(
        &p,
        &app,
        &changes,
        &AddonChange::Detach(row.name.clone()),
        &description,
        &caller.0,
    )
    .await?;
    provider.deprovision(&row.resource).await?;
    log(&p, &app, &format!("{} by user {}", description, caller.0));
    tracing::info!(app, addon = %row.name, "add-on destroyed");
    Ok(Json(serde_json::json!({
        "addon": AddonInfo::from(&row),
        "release": release.map(|r| r.version),
    })))
}

async fn rotate_credentials(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, addon)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    let row = find_addon(&p, &app, &addon)?;
    let provider = p.addons.provider(&row.provider)?;
    let fresh = provider.rotate_credentials(&row.resource).await?;
    let changes = fresh
        .config
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let description = format!(
        "Rotate {} credentials; set {}",
        row.name,
        keys(&fresh.config)
    );
    // The old credentials no longer work: the new release must go out even if something
    // about it fails, so the record is the new one either way.
    let release = deploy::change_config_locked(
        &p,
        &app,
        &changes,
        &AddonChange::Update(row.name.clone(), fresh.resource.clone()),
        &description,
        &caller.0,
    )
    .await;
    let release = match release {
        Ok(r) => r,
        Err(e) => {
            p.state.change_config_with(
                &app,
                &changes,
                &AddonChange::Update(row.name.clone(), fresh.resource.clone()),
                &description,
                &caller.0,
            )?;
            // Whoever held the old credentials loses them even so: a rotation is often
            // because they leaked.
            if let Err(retire) = provider.retire_old_credentials(&fresh.resource).await {
                tracing::error!(app, addon = %row.name, error = %retire, "could not end sessions using rotated credentials");
            }
            return Err(e.into());
        }
    };
    // Only now, with every dyno on the new credentials, are the old sessions ended: until
    // the new release was up, the old dynos' requests still ran on them.
    if let Err(e) = provider.retire_old_credentials(&fresh.resource).await {
        log(
            &p,
            &app,
            &format!("{description}; ending sessions that use the old credentials failed: {e}"),
        );
        return Err(PlatformError::Addon(format!(
            "the new credentials are live{}, but ending sessions that still use the old ones failed: {e}",
            release
                .as_ref()
                .map(|r| format!(" in v{}", r.version))
                .unwrap_or_default()
        ))
        .into());
    }
    log(&p, &app, &format!("{} by user {}", description, caller.0));
    Ok(Json(serde_json::json!({
        "addon": AddonInfo::from(&row),
        "release": release.map(|r| r.version),
    })))
}

/// Deprovisions every add-on of an app that is being destroyed; failures are logged, not fatal.
pub(crate) async fn destroy_all(p: &Platform, app: &str) -> Result<(), PlatformError> {
    for row in p.state.addons(app)? {
        let result = match p.addons.provider(&row.provider) {
            Ok(provider) => provider.deprovision(&row.resource).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(app, addon = %row.name, error = %e, "could not deprovision an add-on of a destroyed app");
        }
    }
    Ok(())
}
