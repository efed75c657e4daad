//! The JSON API (everything the CLI does) and the git endpoint, on one axum server. Every
//! route needs a token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json};
use futures_util::TryStreamExt;
use skiff_builder::BuildLog;
use skiff_core::{AppName, ConfigKey};
use tokio::io::AsyncWriteExt;

use crate::logs::Source;
use crate::{Platform, PlatformError, auth, deploy, gitweb};

type Shared = Arc<Platform>;

/// Who made the call: `admin`, or `git-push` for the hook.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub String);

/// Total size of an app's config vars, as Heroku bounds it.
const CONFIG_LIMIT: usize = 32 * 1024;

use skiff_core::BUILD_RESULT_MARKER as RESULT_MARKER;

pub(crate) fn router(p: Shared) -> axum::Router {
    axum::Router::new()
        .route("/account", get(account))
        .route("/buildpacks", get(list_buildpacks))
        .route("/users", post(create_user))
        .route("/apps", get(list_apps).post(create_app))
        .route(
            "/apps/{app}",
            get(app_info).patch(rename_app).delete(destroy_app),
        )
        .route(
            "/apps/{app}/releases",
            get(list_releases).post(create_release),
        )
        .route("/apps/{app}/releases/{version}", get(release_info))
        .route("/apps/{app}/config", get(get_config).patch(patch_config))
        .route("/apps/{app}/builds", post(create_build))
        .route("/apps/{app}/formation", get(list_dynos).patch(scale))
        .route(
            "/apps/{app}/dynos",
            get(list_dynos)
                .post(crate::runs::create_run)
                .delete(restart_all),
        )
        .route("/apps/{app}/dynos/{dyno}", delete(restart_dyno))
        .route("/apps/{app}/dynos/{dyno}/actions/stop", post(stop_dyno))
        .route(
            "/apps/{app}/collaborators",
            get(list_collaborators).post(add_collaborator),
        )
        .route(
            "/apps/{app}/collaborators/{email}",
            delete(remove_collaborator),
        )
        .merge(crate::logs::routes())
        .merge(crate::routing::routes())
        .merge(crate::certs::routes())
        .merge(crate::addons::routes())
        .route("/{repo}/info/refs", get(gitweb::info_refs))
        .route("/{repo}/git-upload-pack", post(gitweb::service))
        .route("/{repo}/git-receive-pack", post(gitweb::service))
        .layer(axum::middleware::from_fn_with_state(
            p.clone(),
            require_token,
        ))
        .with_state(p)
}

async fn require_token(State(p): State<Shared>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::token_from_header);
    let caller = match token {
        Some(t) if t == p.hook_token => Some("git-push".to_owned()),
        Some(t) => p.state.token_owner(&auth::hash_token(&t)).ok().flatten(),
        None => None,
    };
    match caller {
        Some(name) => {
            req.extensions_mut().insert(Caller(name));
            next.run(req).await
        }
        None => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Invalid credentials provided. Use the token `skiff up` printed (SKIFF_API_TOKEN or ~/.netrc).",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Skiff\""),
            );
            resp
        }
    }
}

/// An API error: a status and Heroku's `{id, message}` body.
pub(crate) struct ApiError {
    status: StatusCode,
    id: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
        }
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        let (status, id) = match &e {
            PlatformError::NoSuchApp(_) => (StatusCode::NOT_FOUND, "not_found"),
            PlatformError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PlatformError::ReleasePhase(_) => (StatusCode::UNPROCESSABLE_ENTITY, "release_failed"),
            PlatformError::AppExists(_) => (StatusCode::CONFLICT, "conflict"),
            PlatformError::Name(_) | PlatformError::BadRequest(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_params")
            }
            PlatformError::Build(_) | PlatformError::Unrunnable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "build_failed")
            }
            PlatformError::AddonUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "addon_unavailable")
            }
            PlatformError::Addon(_) => {
                tracing::error!(error = %e, "add-on provider failed");
                (StatusCode::BAD_GATEWAY, "addon_failed")
            }
            _ => {
                tracing::error!(error = %e, "API call failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
        Self::new(status, id, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "id": self.id, "message": self.message })),
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The app, if `caller` may act on it (the admin, its owner, or a collaborator).
pub(crate) fn authorize(
    p: &Platform,
    caller: &Caller,
    app: &str,
) -> Result<crate::AppRow, PlatformError> {
    let row = p.state.app(app)?;
    if p.state.can_access(&caller.0, &row)? || caller.0 == "git-push" {
        Ok(row)
    } else {
        Err(PlatformError::Forbidden(app.to_owned()))
    }
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.0 == "admin" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the admin may do this",
        ))
    }
}

#[derive(serde::Serialize)]
struct AppInfo {
    name: String,
    owner: String,
    web_url: String,
    git_url: String,
    created_at: i64,
    current_release: Option<u64>,
    running_release: Option<u64>,
    process_types: Vec<String>,
}

fn app_info_of(p: &Platform, row: &crate::AppRow) -> ApiResult<AppInfo> {
    let name = row.name.as_str();
    let created_at = row.created_at;
    let current = p.state.current_release(name)?;
    Ok(AppInfo {
        name: name.to_owned(),
        owner: row.owner.clone(),
        web_url: p.config.app_url(name),
        git_url: p.config.git_url(name),
        created_at,
        current_release: current.as_ref().map(|r| r.version),
        running_release: p.dynos.running_release(name),
        process_types: current
            .map(|r| r.manifest.process_types.keys().cloned().collect())
            .unwrap_or_default(),
    })
}

async fn list_apps(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<AppInfo>>> {
    let mut infos = Vec::new();
    for app in p.state.apps()? {
        if p.state.can_access(&caller.0, &app)? {
            infos.push(app_info_of(&p, &app)?);
        }
    }
    Ok(Json(infos))
}

#[derive(serde::Deserialize, Default)]
struct CreateApp {
    name: Option<String>,
}

async fn create_app(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Option<Json<CreateApp>>,
) -> ApiResult<(StatusCode, Json<AppInfo>)> {
    let requested = body.and_then(|Json(b)| b.name);
    let name = match requested {
        Some(n) => AppName::parse(&n).map_err(PlatformError::from)?,
        None => random_name(&p)?,
    };
    let row = p.state.create_app(&name, &caller.0)?;
    skiff_builder::git::init_repo(&skiff_builder::git::repo_path(
        &p.repos_dir(),
        name.as_str(),
    ))
    .await
    .map_err(PlatformError::from)?;
    p.dynos.route_without_dynos(name.as_str());
    crate::routing::sync(&p, name.as_str())?;
    tracing::info!(app = %name, "app created");
    Ok((StatusCode::CREATED, Json(app_info_of(&p, &row)?)))
}

fn random_name(p: &Platform) -> Result<AppName, PlatformError> {
    const FIRST: &[&str] = &[
        "calm", "brisk", "sunny", "quiet", "bold", "swift", "misty", "lucky", "amber", "polar",
    ];
    const SECOND: &[&str] = &[
        "harbor", "river", "meadow", "cove", "reef", "delta", "lagoon", "inlet", "shoal", "bay",
    ];
    for _ in 0..32 {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b)
            .map_err(|e| PlatformError::Io(std::io::Error::other(e.to_string())))?;
        let n = u32::from_le_bytes(b);
        let name = format!(
            "{}-{}-{:04}",
            FIRST[(n % 10) as usize],
            SECOND[((n / 10) % 10) as usize],
            (n / 100) % 10_000
        );
        if p.state.app(&name).is_err() {
            return Ok(AppName::parse(&name)?);
        }
    }
    Err(PlatformError::BadRequest(
        "could not find a free app name; pass one".into(),
    ))
}

async fn app_info(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<AppInfo>> {
    let row = authorize(&p, &caller, &app)?;
    Ok(Json(app_info_of(&p, &row)?))
}

#[derive(serde::Deserialize)]
struct Rename {
    name: String,
}

async fn rename_app(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<Rename>,
) -> ApiResult<Json<AppInfo>> {
    authorize(&p, &caller, &app)?;
    let to = AppName::parse(&body.name).map_err(PlatformError::from)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    p.state.rename_app(&app, &to)?;
    let from_repo = skiff_builder::git::repo_path(&p.repos_dir(), &app);
    let to_repo = skiff_builder::git::repo_path(&p.repos_dir(), to.as_str());
    if from_repo.exists() {
        std::fs::rename(&from_repo, &to_repo).map_err(PlatformError::from)?;
    }
    let cache = p.config.data_dir.join("cache");
    let _ = std::fs::rename(cache.join(&app), cache.join(to.as_str()));
    p.dynos.remove_app(&app);
    p.routes.certs().remove_app(&app);
    p.logs.forget(&app);
    crate::drains::restart(&p, to.as_str())?;
    // The dynos carry the app's name in their environment: start them again under the new one.
    deploy::restore(&p, to.as_str()).await?;
    tracing::info!(from = %app, to = %to, "app renamed");
    let row = p.state.app(to.as_str())?;
    Ok(Json(app_info_of(&p, &row)?))
}

async fn destroy_app(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    let row = authorize(&p, &caller, &app)?;
    if caller.0 != "admin" && caller.0 != row.owner {
        return Err(PlatformError::Forbidden(app).into());
    }
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    let releases = p.state.releases(&app)?;
    p.dynos.remove_app(&app);
    p.routes.certs().remove_app(&app);
    // Heroku destroys an app's add-ons with it: their databases and stores go too.
    crate::addons::destroy_all(&p, &app).await?;
    p.state.destroy_app(&app)?;
    p.logs.forget(&app);
    let _ = std::fs::remove_dir_all(skiff_builder::git::repo_path(&p.repos_dir(), &app));
    let _ = std::fs::remove_dir_all(p.config.data_dir.join("cache").join(&app));
    let _ = std::fs::remove_dir_all(p.config.data_dir.join("tmp").join(&app));
    // Slugs are shared by content: delete only those no remaining release refers to.
    let in_use = p.state.all_slugs()?;
    for r in releases {
        if !in_use.contains(&r.slug) && p.slugs.contains(&r.slug) {
            let _ = std::fs::remove_file(p.slugs.path(&r.slug));
            let _ = std::fs::remove_dir_all(p.dynos.slug_dir(&r.slug));
        }
    }
    tracing::info!(app, "app destroyed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize)]
struct ReleaseInfo {
    #[serde(flatten)]
    release: crate::ReleaseRow,
    /// Whether the slug is still kept (rollback possible).
    slug_available: bool,
    current: bool,
}

fn release_info_of(p: &Platform, r: crate::ReleaseRow, current: bool) -> ReleaseInfo {
    ReleaseInfo {
        slug_available: p.slugs.contains(&r.slug),
        current,
        release: r,
    }
}

async fn list_releases(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<ReleaseInfo>>> {
    authorize(&p, &caller, &app)?;
    let releases = p.state.releases(&app)?;
    Ok(Json(
        releases
            .into_iter()
            .enumerate()
            .map(|(i, r)| release_info_of(&p, r, i == 0))
            .collect(),
    ))
}

async fn release_info(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseInfo>> {
    authorize(&p, &caller, &app)?;
    let wanted: u64 = version.trim_start_matches('v').parse().map_err(|_| {
        PlatformError::BadRequest(format!("{version} is not a release version (v1, v2, ...)"))
    })?;
    let releases = p.state.releases(&app)?;
    let current = releases.first().map(|r| r.version);
    let release = releases
        .into_iter()
        .find(|r| r.version == wanted)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{app} has no release v{wanted}"),
            )
        })?;
    Ok(Json(release_info_of(&p, release, current == Some(wanted))))
}

#[derive(serde::Deserialize)]
struct NewRelease {
    /// Roll back to this version (`null`: the one before the current).
    rollback: Option<u64>,
}

/// `POST /apps/{app}/releases {"rollback": N}`: a rollback is a new release.
async fn create_release(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<NewRelease>,
) -> ApiResult<(StatusCode, Json<ReleaseInfo>)> {
    authorize(&p, &caller, &app)?;
    let release = deploy::rollback(&p, &app, body.rollback, &caller.0).await?;
    Ok((
        StatusCode::CREATED,
        Json(release_info_of(&p, release, true)),
    ))
}

async fn get_config(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    authorize(&p, &caller, &app)?;
    Ok(Json(p.state.config(&app)?))
}

async fn list_dynos(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    let current = p.state.current_release(&app)?;
    let formation = match &current {
        Some(r) => deploy::quantities(&p, r)?,
        None => BTreeMap::new(),
    };
    Ok(Json(serde_json::json!({
        "formation": formation,
        "dynos": p.dynos.ps(&app),
    })))
}

/// A formation change for one process type: a count (`3`), or `{"quantity", "size"}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ScaleChange {
    Count(u32),
    Change {
        quantity: Option<u32>,
        size: Option<String>,
    },
}

/// `PATCH /apps/{app}/formation {"web": 3, "worker": {"quantity": 1, "size": "eco"}}`.
async fn scale(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<BTreeMap<String, ScaleChange>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    let release = p.state.current_release(&app)?.ok_or_else(|| {
        PlatformError::BadRequest(format!("{app} has no release yet: git push first"))
    })?;
    let mut quantities = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for (process_type, change) in body {
        if !release.manifest.process_types.contains_key(&process_type) || process_type == "release"
        {
            let types: Vec<_> = release
                .manifest
                .process_types
                .keys()
                .filter(|t| *t != "release")
                .cloned()
                .collect();
            return Err(PlatformError::BadRequest(format!(
                "no such process type {process_type} (this release has: {})",
                types.join(", ")
            ))
            .into());
        }
        let (quantity, size) = match change {
            ScaleChange::Count(q) => (Some(q), None),
            ScaleChange::Change { quantity, size } => (quantity, size),
        };
        if let Some(q) = quantity {
            if q > 100 {
                return Err(PlatformError::BadRequest(format!(
                    "{process_type}={q}: at most 100 dynos per process type"
                ))
                .into());
            }
            quantities.insert(process_type.clone(), q);
        }
        if let Some(size) = size {
            let known = skiff_core::sizes::size(&size).ok_or_else(|| {
                let names: Vec<_> = skiff_core::sizes::SIZES.iter().map(|s| s.name).collect();
                PlatformError::BadRequest(format!(
                    "unknown dyno size {size} (sizes: {})",
                    names.join(", ")
                ))
            })?;
            sizes.insert(process_type.clone(), known.name.to_owned());
        }
    }
    // Every dyno needs at least one instance slot: refuse a formation the pool cannot hold.
    if let Some(pool) = p.config.pool_instances {
        let current = deploy::quantities(&p, &release)?;
        let wanted: usize = current
            .iter()
            .map(|(t, s)| quantities.get(t).copied().unwrap_or(s.quantity) as usize)
            .sum();
        let others = p.dynos.total().saturating_sub(p.dynos.count(&app));
        if others + wanted > pool as usize {
            return Err(PlatformError::BadRequest(format!(
                "this host's instance pool holds {pool} dynos and {others} run for other apps; {wanted} more do not fit (start skiff up with a larger --pool-instances)"
            ))
            .into());
        }
    }
    p.state.set_formation(&app, &quantities, &sizes)?;
    deploy::launch(&p, &release).await?;
    let now = deploy::quantities(&p, &release)?;
    let summary: Vec<String> = now
        .iter()
        .map(|(t, s)| format!("{t}@{}:{}", s.quantity, s.size))
        .collect();
    p.logs.push(
        &app,
        crate::logs::Source::Platform,
        "api",
        &format!("Scaled to {} by user {}", summary.join(" "), caller.0),
    );
    Ok(Json(serde_json::json!({
        "formation": now,
        "dynos": p.dynos.ps(&app),
    })))
}

async fn restart_all(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&p, &caller, &app)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    if let Some(release) = p.state.current_release(&app)? {
        p.logs.push(
            &app,
            crate::logs::Source::Platform,
            "api",
            &format!("Restart all dynos by user {}", caller.0),
        );
        deploy::launch(&p, &release).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

async fn restart_dyno(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    authorize(&p, &caller, &app)?;
    let lock = p.app_lock(&app);
    let _guard = lock.lock().await;
    p.dynos.restart_one(&app, &dyno).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn stop_dyno(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    authorize(&p, &caller, &app)?;
    p.dynos.stop_one(&app, &dyno)?;
    Ok(StatusCode::ACCEPTED)
}

async fn account(Extension(caller): Extension<Caller>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "email": caller.0 }))
}

/// The installed buildpacks in detection order, and what each one's `bin/detect` looks for.
async fn list_buildpacks(State(p): State<Shared>) -> Json<serde_json::Value> {
    let list: Vec<_> = p
        .builder
        .buildpacks()
        .iter()
        .map(|bp| {
            serde_json::json!({
                "name": bp.name,
                "detects": skiff_builder::detects(&bp.name),
            })
        })
        .collect();
    Json(serde_json::Value::Array(list))
}

#[derive(serde::Deserialize)]
struct NewUser {
    email: String,
}

/// Admin only: creates a user and returns their API token (shown once).
async fn create_user(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    admin_only(&caller)?;
    let email = body.email.trim().to_owned();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    if !valid {
        return Err(PlatformError::BadRequest(format!("{email:?} is not an email address")).into());
    }
    let token = auth::new_token();
    p.state.create_user(&email, &auth::hash_token(&token))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "email": email, "token": token })),
    ))
}

async fn list_collaborators(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let row = authorize(&p, &caller, &app)?;
    Ok(Json(serde_json::json!({
        "owner": row.owner,
        "collaborators": p.state.collaborators(&app)?,
    })))
}

#[derive(serde::Deserialize)]
struct Collaborator {
    email: String,
}

async fn add_collaborator(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<Collaborator>,
) -> ApiResult<StatusCode> {
    let row = authorize(&p, &caller, &app)?;
    if caller.0 != "admin" && caller.0 != row.owner {
        return Err(PlatformError::Forbidden(app).into());
    }
    if !p.state.user_exists(&body.email)? {
        return Err(PlatformError::BadRequest(format!(
            "no user {}: the admin creates users with `skiff users:create EMAIL`",
            body.email
        ))
        .into());
    }
    p.state.set_collaborator(&app, &body.email, true)?;
    Ok(StatusCode::CREATED)
}

async fn remove_collaborator(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, email)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let row = authorize(&p, &caller, &app)?;
    if caller.0 != "admin" && caller.0 != row.owner {
        return Err(PlatformError::Forbidden(app).into());
    }
    if !p.state.set_collaborator(&app, &email, false)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{email} is not a collaborator on {app}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn patch_config(
    State(p): State<Shared>,
    Path(app): Path<String>,
    Extension(caller): Extension<Caller>,
    Json(changes): Json<BTreeMap<String, Option<String>>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&p, &caller, &app)?;
    if changes.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            "no config vars given",
        ));
    }
    for key in changes.keys() {
        ConfigKey::parse(key).map_err(PlatformError::from)?;
    }
    let mut merged = p.state.config(&app)?;
    for (k, v) in &changes {
        match v {
            Some(v) => merged.insert(k.clone(), v.clone()),
            None => merged.remove(k),
        };
    }
    let size: usize = merged.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > CONFIG_LIMIT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            format!("config vars would total {size} bytes; the limit is {CONFIG_LIMIT}"),
        ));
    }
    let release = deploy::change_config(&p, &app, &changes, &caller.0).await?;
    Ok(Json(serde_json::json!({
        "config": merged.keys().collect::<Vec<_>>(),
        "release": release.map(|r| r.version),
    })))
}

#[derive(serde::Deserialize)]
struct BuildQuery {
    commit: Option<String>,
}

/// Receives a tar of the source (from the git hook), builds and releases it, and streams the
/// build output back as text. The last line carries the outcome after [`RESULT_MARKER`].
async fn create_build(
    State(p): State<Shared>,
    Path(app): Path<String>,
    Query(q): Query<BuildQuery>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    authorize(&p, &caller, &app)?;
    // The hook acts for whoever pushed; only the hook's own token may say who that was.
    let by = match headers.get("x-skiff-pusher").and_then(|v| v.to_str().ok()) {
        Some(pusher) if caller.0 == "git-push" && !pusher.is_empty() => pusher.to_owned(),
        _ => caller.0.clone(),
    };
    let commit = q
        .commit
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    let build_dir = tempfile::Builder::new()
        .prefix(&format!("{app}-"))
        .tempdir_in(p.config.data_dir.join("builds"))
        .map_err(PlatformError::from)?;
    let tar_path = build_dir.path().join("source.tar");
    receive_to_file(body, &tar_path).await?;
    let src = build_dir.path().join("src");
    let tar_for_unpack = tar_path.clone();
    let src_for_unpack = src.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&src_for_unpack)?;
        let file = std::fs::File::open(&tar_for_unpack)?;
        tar::Archive::new(file).unpack(&src_for_unpack)?;
        std::fs::remove_file(&tar_for_unpack)
    })
    .await
    .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?
    .map_err(|e| PlatformError::BadRequest(format!("the pushed source could not be read: {e}")))?;

    let (log, mut build_rx) = BuildLog::channel();
    // Build output goes to the app's logs too, even if the pusher hangs up mid-build.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hub = p.logs.clone();
    let log_app = app.clone();
    tokio::spawn(async move {
        while let Some(line) = build_rx.recv().await {
            if !line.starts_with(RESULT_MARKER) {
                hub.push(&log_app, Source::Build, "build", &line);
            }
            let _ = tx.send(line);
        }
    });
    let platform = p.clone();
    tokio::spawn(async move {
        let outcome = deploy::build_and_release(&platform, &app, &src, commit, &by, &log).await;
        match outcome {
            Ok(release) => {
                log.step(format!("Launching... done, v{}", release.version));
                log.detail(format!(
                    "{} deployed to Skiff",
                    platform.config.app_url(&app)
                ));
                log.line(format!("{RESULT_MARKER}ok v{}", release.version));
                tracing::info!(app, version = release.version, "deployed");
            }
            Err(e) => {
                log.line(format!(" !     {e}"));
                log.line(" !     Push rejected; the running release is unchanged.");
                log.line(format!("{RESULT_MARKER}failed"));
                tracing::warn!(app, error = %e, "build failed");
            }
        }
        drop(build_dir);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line + "\n")),
            rx,
        ))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?)
}

/// Largest source tree a push may send.
const SOURCE_LIMIT: u64 = 1 << 30;

async fn receive_to_file(body: Body, path: &std::path::Path) -> ApiResult<()> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(PlatformError::from)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| PlatformError::BadRequest(format!("the upload ended early: {e}")))?
    {
        total += chunk.len() as u64;
        if total > SOURCE_LIMIT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the pushed source is larger than 1 GiB",
            ));
        }
        file.write_all(&chunk).await.map_err(PlatformError::from)?;
    }
    file.flush().await.map_err(PlatformError::from)?;
    Ok(())
}
