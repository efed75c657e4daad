//! HTTPS certificates per app (`skiff certs:add`). Stored in the state database and loaded
//! into the router's certificate store, which picks one by SNI during each handshake.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json};
use rusqlite::params;
use skiff_router::Certificate;

use crate::api::{ApiError, Caller, authorize};
use crate::{Platform, PlatformError};

type Shared = Arc<Platform>;

/// Largest PEM accepted for a chain or a key: long chains are a few KiB.
const MAX_PEM_BYTES: usize = 64 << 10;

pub(crate) fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/apps/{app}/certs", get(list).post(add))
        .route("/apps/{app}/certs/{name}", get(info).delete(remove))
}

/// A certificate as stored: the PEMs as the user gave them.
struct CertRow {
    name: String,
    cert_pem: String,
    key_pem: String,
    created_at: i64,
}

impl crate::State {
    fn certs(&self, app: &str) -> Result<Vec<CertRow>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT name, cert_pem, key_pem, created_at FROM certs WHERE app = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([app], |r| {
            Ok(CertRow {
                name: r.get(0)?,
                cert_pem: r.get(1)?,
                key_pem: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_cert(&self, app: &str, row: &CertRow) -> Result<(), PlatformError> {
        self.db().execute(
            "INSERT INTO certs (app, name, cert_pem, key_pem, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app, name) DO UPDATE SET cert_pem = excluded.cert_pem,
                 key_pem = excluded.key_pem, created_at = excluded.created_at",
            params![app, row.name, row.cert_pem, row.key_pem, row.created_at],
        )?;
        Ok(())
    }

    fn delete_cert(&self, app: &str, name: &str) -> Result<bool, PlatformError> {
        let n = self.db().execute(
            "DELETE FROM certs WHERE app = ?1 AND name = ?2",
            params![app, name],
        )?;
        Ok(n == 1)
    }
}

/// Loads the app's certificates into the router, replacing what it had for the app.
pub(crate) fn sync(p: &Platform, app: &str) -> Result<(), PlatformError> {
    let store = p.routes.certs();
    store.remove_app(app);
    for row in p.state.certs(app)? {
        match Certificate::from_pem(row.cert_pem.as_bytes(), row.key_pem.as_bytes()) {
            Ok(cert) => store.insert(app, &row.name, cert),
            // It was valid when added; a later Skiff may be stricter. Say so, serve the rest.
            Err(e) => tracing::warn!(app, cert = row.name, error = %e, "certificate not loaded"),
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct CertInfo {
    name: String,
    /// DNS names the certificate covers.
    domains: Vec<String>,
    /// Which of the app's hosts it serves now.
    serves: Vec<String>,
    /// Unix seconds.
    expires_at: i64,
    issuer: String,
    self_signed: bool,
    created_at: i64,
}

/// Every host the app answers to: its default name and its custom domains.
fn hosts_of(p: &Platform, app: &str) -> Result<Vec<String>, PlatformError> {
    let mut hosts = vec![format!("{app}.{}", p.config.domain)];
    hosts.extend(p.state.domains(app)?.into_iter().map(|d| d.hostname));
    Ok(hosts)
}

fn info_of(p: &Platform, app: &str, row: &CertRow) -> Result<CertInfo, PlatformError> {
    let cert = Certificate::from_pem(row.cert_pem.as_bytes(), row.key_pem.as_bytes())
        .map_err(|e| PlatformError::BadRequest(e.to_string()))?;
    let serves = hosts_of(p, app)?
        .into_iter()
        .filter(|h| cert.covers(h))
        .collect();
    Ok(CertInfo {
        name: row.name.clone(),
        domains: cert.names.clone(),
        serves,
        expires_at: cert.not_after,
        issuer: cert.issuer.clone(),
        self_signed: cert.self_signed,
        created_at: row.created_at,
    })
}

async fn list(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Vec<CertInfo>>, ApiError> {
    authorize(&p, &caller, &app)?;
    let mut out = Vec::new();
    for row in p.state.certs(&app)? {
        out.push(info_of(&p, &app, &row)?);
    }
    Ok(Json(out))
}

async fn info(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<CertInfo>, ApiError> {
    authorize(&p, &caller, &app)?;
    let row = p
        .state
        .certs(&app)?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| not_found(&app, &name))?;
    Ok(Json(info_of(&p, &app, &row)?))
}

fn not_found(app: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{app} has no certificate {name}"),
    )
}

#[derive(serde::Deserialize)]
struct NewCert {
    certificate: String,
    private_key: String,
    /// Replaces the certificate of this name (`certs:update`); else a name is derived.
    name: Option<String>,
}

/// `www.example.com` -> `www-example-com`, `*.example.com` -> `wildcard-example-com`.
fn derive_name(first: &str) -> String {
    let name: String = first
        .replace('*', "wildcard")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.trim_matches('-').chars().take(60).collect()
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

async fn add(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Json(body): Json<NewCert>,
) -> Result<(StatusCode, Json<CertInfo>), ApiError> {
    authorize(&p, &caller, &app)?;
    if body.certificate.len() > MAX_PEM_BYTES || body.private_key.len() > MAX_PEM_BYTES {
        return Err(PlatformError::BadRequest(format!(
            "certificate and key must each be under {} KiB",
            MAX_PEM_BYTES >> 10
        ))
        .into());
    }
    let cert = Certificate::from_pem(body.certificate.as_bytes(), body.private_key.as_bytes())
        .map_err(|e| PlatformError::BadRequest(e.to_string()))?;
    let hosts = hosts_of(&p, &app)?;
    if !hosts.iter().any(|h| cert.covers(h)) {
        return Err(PlatformError::BadRequest(format!(
            "the certificate covers {} but none of {app}'s hosts ({}); add the domain with `skiff domains:add` first",
            cert.names.join(", "),
            hosts.join(", ")
        ))
        .into());
    }
    let name = match body.name {
        Some(n) if valid_name(&n) => n,
        Some(n) => {
            return Err(PlatformError::BadRequest(format!(
                "{n:?} is not a valid certificate name (lowercase letters, digits, hyphens)"
            ))
            .into());
        }
        None => derive_name(cert.names.first().map(String::as_str).unwrap_or("cert")),
    };
    let row = CertRow {
        name,
        cert_pem: body.certificate,
        key_pem: body.private_key,
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
    };
    p.state.put_cert(&app, &row)?;
    p.routes.certs().insert(&app, &row.name, cert);
    tracing::info!(app, cert = row.name, by = caller.0, "certificate added");
    Ok((StatusCode::CREATED, Json(info_of(&p, &app, &row)?)))
}

async fn remove(
    State(p): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((app, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&p, &caller, &app)?;
    if !p.state.delete_cert(&app, &name)? {
        return Err(not_found(&app, &name));
    }
    p.routes.certs().remove(&app, &name);
    tracing::info!(app, cert = name, by = caller.0, "certificate removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(derive_name("*.example.com"), "wildcard-example-com");
        assert_eq!(derive_name("www.example.com"), "www-example-com");
        assert!(valid_name("www-example-com"));
        assert!(!valid_name("WWW"));
        assert!(!valid_name(""));
    }
}
