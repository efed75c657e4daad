//! What the router needs to know about each app beyond its dynos: maintenance mode, custom
//! domains, features (session affinity) and the limits set by config vars. Kept in the state
//! database and pushed into the route table in place, so none of it restarts a dyno.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch};
use axum::{Extension, Json};
use rusqlite::params;
use skiff_router::AppSettings;

use crate::api::{ApiError, Caller, authorize};
use crate::logs::Source;
use crate::{Platform, PlatformError};

type Shared = Arc<Platform>;

const MAINTENANCE: &str = "maintenance";

/// Features an app may turn on, Heroku's names and what they do.
const FEATURES: &[(&str, &str)] = &[(
    "http-session-affinity",
    "Pin each client to one web dyno with a router cookie, while that dyno runs.",
)];

/// Config vars the router reads, with the settings they change.
const TIMEOUT_VAR: &str = "SKIFF_ROUTER_TIMEOUT";
const CLIENT_TIMEOUT_VAR: &str = "SKIFF_ROUTER_CLIENT_TIMEOUT";
const CONCURRENCY_VAR: &str = "SKIFF_MAX_CONCURRENCY";
const BODY_VAR: &str = "SKIFF_MAX_BODY_BYTES";
const BOOT_TIMEOUT_VAR: &str = "SKIFF_BOOT_TIMEOUT";

pub(crate) fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route(
            "/apps/{app}/maintenance",
            get(get_maintenance).patch(set_maintenance),
        )
        .route("/apps/{app}/domains", get(list_domains).post(add_domain))
        .route("/apps/{app}/domains/{hostname}", delete(remove_domain))
        .route("/apps/{app}/features", get(list_features))
        .route("/apps/{app}/features/{name}", patch(set_feature))
}

/// Pushes the app's router state (flags, domains, config-derived limits) into the route
/// table. Called whenever any of it may have changed.
pub(crate) fn sync(p: &Platform, app: &str) -> Result<(), PlatformError> {
    let flags = p.state.app_flags(app)?;
    let config = p.state.config(app)?;
    let mut settings = AppSettings {
        maintenance: flags.iter().any(|f| f == MAINTENANCE),
        session_affinity: flags.iter().any(|f| f == "http-session-affinity"),
        ..AppSettings::default()
    };
    for problem in apply_config(&mut settings, &config) {
        // As skiff[api], not skiff[router]: that name is for the router's request lines.
        p.logs.push(app, Source::Platform, "api", &problem);
    }
    p.routes.set_settings(app, settings);
    let domains: Vec<String> = p
        .state
        .domains(app)?
        .into_iter()
        .map(|d| d.hostname)
        .collect();
    p.routes.set_domains(app, &domains);
    crate::certs::sync(p, app)
}

/// Reads the router's config vars into `settings`; returns a message per value it ignored.
fn apply_config(settings: &mut AppSettings, config: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seconds = |var: &str, target: &mut Duration| {
        if let Some(v) = config.get(var) {
            match v.trim().parse::<f64>() {
                Ok(s) if (0.1..=3600.0).contains(&s) => *target = Duration::from_secs_f64(s),
                _ => problems.push(format!(
                    "Ignoring {var}={v}: expected seconds between 0.1 and 3600"
                )),
            }
        }
    };
    seconds(TIMEOUT_VAR, &mut settings.timeout);
    seconds(CLIENT_TIMEOUT_VAR, &mut settings.client_timeout);
    seconds(BOOT_TIMEOUT_VAR, &mut settings.boot_timeout);
    if let Some(v) = config.get(CONCURRENCY_VAR) {
        match v.trim().parse::<usize>() {
            Ok(n) if (1..=100_000).contains(&n) => settings.max_concurrency = n,
            _ => problems.push(format!(
                "Ignoring {CONCURRENCY_VAR}={v}: expected requests per web dyno, 1 to 100000"
            )),
        }
    }
    if let Some(v) = config.get(BODY_VAR) {
        match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 => settings.max_body_bytes = n,
            _ => problems.push(format!("Ignoring {BODY_VAR}={v}: expected a byte count")),
        }
    }
    problems
}

/// A custom domain as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DomainRow {
    pub hostname: String,
    pub created_at: i64,
}

impl crate::State {
    /// The app's flags (maintenance, enabled features).
    pub(crate) fn app_flags(&self, app: &str) -> Result<Vec<String>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT flag FROM app_flags WHERE app = ?1 ORDER BY flag")?;
        let rows = stmt.query_map([app], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Turns a flag on or off.
    pub(crate) fn set_app_flag(
        &self,
        app: &str,
        flag: &str,
        on: bool,
    ) -> Result<(), PlatformError> {
        let db = self.db();
        if on {
            db.execute(
                "INSERT OR IGNORE INTO app_flags (app, flag) VALUES (?1, ?2)",
                params![app, flag],
            )?;
        } else {
            db.execute(
                "DELETE FROM app_flags WHERE app = ?1 AND flag = ?2",
                params![app, flag],
            )?;
        }
        Ok(())
    }

    /// The app's custom domains, by name.
    pub(crate) fn domains(&self, app: &str) -> Result<Vec<DomainRow>, PlatformError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT hostname, created_at FROM domains WHERE app = ?1 ORDER BY hostname")?;
        let rows = stmt.query_map([app], |r| {
            Ok(DomainRow {
                hostname: r.get(0)?,
                created_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a domain; `None` when some app (this one or another) already has it.
    pub(crate) fn add_domain(
        &self,
        app: &str,
        hostname: &str,
    ) -> Result<Option<DomainRow>, PlatformError> {
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let n = self.db().execute(
            "INSERT OR IGNORE INTO domains (hostname, app, created_at) VALUES (?1, ?2, ?3)",
            params![hostname, app, created_at],
        )?;
        Ok((n == 1).then(|| DomainRow {
            hostname: hostname.to_owned(),
            created_at,
        }))
    }

    /// Removes a domain of the app; false if the app does not have it.
    pub(crate) fn remove_domain(&self, app: &str, hostname: &str) -> Result<bool, PlatformError> {
        let n = self.db().execute(
            "DELETE FROM domains WHERE app = ?1 AND hostname = ?2",
            params![app, hostname],
        )?;
        Ok(n == 1)
    }
}

/// A host name an app may claim; the rules live in `skiff_core::names`, where they are fuzzed.
fn parse_hostname(raw: &str, platform_domain: &str) -> Result<String, PlatformError> {
    skiff_core::names::parse_domain(raw, platform_domain)
        .map_err(|e| PlatformError::BadRequest(e.to_string()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Maintenance {
    maintenance: bool,
}

async fn get_maintenance(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Maintenance>, ApiError> {
    authorize(&p, &caller, &app)?;
    let on = p.state.app_flags(&app)?.iter().any(|f| f == MAINTENANCE);
    Ok(Json(Maintenance { maintenance: on }))
}

async fn set_maintenance(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<Maintenance>,
) -> Result<Json<Maintenance>, ApiError> {
    authorize(&p, &caller, &app)?;
    p.state.set_app_flag(&app, MAINTENANCE, body.maintenance)?;
    sync(&p, &app)?;
    let what = if body.maintenance { "on" } else { "off" };
    p.logs.push(
        &app,
        Source::Platform,
        "api",
        &format!("Maintenance mode {what} by {}", caller.0),
    );
    Ok(Json(body))
}

#[derive(serde::Serialize)]
struct DomainInfo {
    hostname: String,
    /// `default` (`<app>.<platform domain>`) or `custom`.
    kind: &'static str,
    created_at: Option<i64>,
}

async fn list_domains(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Vec<DomainInfo>>, ApiError> {
    authorize(&p, &caller, &app)?;
    let mut out = vec![DomainInfo {
        hostname: format!("{app}.{}", p.config.domain),
        kind: "default",
        created_at: None,
    }];
    out.extend(p.state.domains(&app)?.into_iter().map(|d| DomainInfo {
        hostname: d.hostname,
        kind: "custom",
        created_at: Some(d.created_at),
    }));
    Ok(Json(out))
}

#[derive(serde::Deserialize)]
struct NewDomain {
    hostname: String,
}

async fn add_domain(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<NewDomain>,
) -> Result<(StatusCode, Json<DomainInfo>), ApiError> {
    authorize(&p, &caller, &app)?;
    let host = parse_hostname(&body.hostname, &p.config.domain)?;
    let Some(row) = p.state.add_domain(&app, &host)? else {
        // Which app has it is not the caller's business.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{host} is already in use by an app"),
        ));
    };
    sync(&p, &app)?;
    tracing::info!(app, host, by = caller.0, "domain added");
    Ok((
        StatusCode::CREATED,
        Json(DomainInfo {
            hostname: row.hostname,
            kind: "custom",
            created_at: Some(row.created_at),
        }),
    ))
}

async fn remove_domain(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, hostname)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&p, &caller, &app)?;
    let host = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    if !p.state.remove_domain(&app, &host)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{app} has no domain {host}"),
        ));
    }
    sync(&p, &app)?;
    tracing::info!(app, host, by = caller.0, "domain removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize)]
struct FeatureInfo {
    name: &'static str,
    description: &'static str,
    enabled: bool,
}

fn features_of(p: &Platform, app: &str) -> Result<Vec<FeatureInfo>, PlatformError> {
    let flags = p.state.app_flags(app)?;
    Ok(FEATURES
        .iter()
        .map(|(name, description)| FeatureInfo {
            name,
            description,
            enabled: flags.iter().any(|f| f == name),
        })
        .collect())
}

async fn list_features(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Vec<FeatureInfo>>, ApiError> {
    authorize(&p, &caller, &app)?;
    Ok(Json(features_of(&p, &app)?))
}

#[derive(serde::Deserialize)]
struct FeatureChange {
    enabled: bool,
}

async fn set_feature(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, name)): Path<(String, String)>,
    Json(body): Json<FeatureChange>,
) -> Result<Json<FeatureInfo>, ApiError> {
    authorize(&p, &caller, &app)?;
    if !FEATURES.iter().any(|(n, _)| *n == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no feature {name}; features: {}",
                FEATURES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    p.state.set_app_flag(&app, &name, body.enabled)?;
    sync(&p, &app)?;
    features_of(&p, &app)?
        .into_iter()
        .find(|f| f.name == name)
        .map(Json)
        .ok_or_else(|| PlatformError::BadRequest(format!("no feature {name}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_router_config_vars() {
        let mut s = AppSettings::default();
        let config: BTreeMap<String, String> = [
            (TIMEOUT_VAR, "1"),
            (CONCURRENCY_VAR, "3"),
            (BODY_VAR, "1024"),
            (CLIENT_TIMEOUT_VAR, "0.5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(apply_config(&mut s, &config).is_empty());
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!(s.client_timeout, Duration::from_millis(500));
        assert_eq!(s.max_concurrency, 3);
        assert_eq!(s.max_body_bytes, 1024);

        let mut s = AppSettings::default();
        let bad: BTreeMap<String, String> = [(TIMEOUT_VAR, "soon"), (CONCURRENCY_VAR, "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(apply_config(&mut s, &bad).len(), 2);
        assert_eq!(s, AppSettings::default());
    }
}
