//! The `postgres` provider: each add-on is a database and a role of its own (LOGIN, random
//! password) on the server from [`super::pg_server`]. The database refuses connections from
//! every other role (`REVOKE CONNECT ... FROM PUBLIC`), so one app's credentials never open
//! another app's database. Sets `DATABASE_URL`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::pg_server::{Endpoint, PgServer, connect, pg_message};
use super::{Provider, ProviderContext, Provisioned};
use crate::PlatformError;
use crate::state::AddonRow;

pub(crate) fn provider(ctx: &ProviderContext<'_>) -> Result<Arc<dyn Provider>, PlatformError> {
    Ok(Arc::new(Postgres {
        server: PgServer::new(
            ctx.postgres_admin_url.clone(),
            ctx.postgres_bin_dir.clone(),
            &ctx.data_dir,
        ),
    }))
}

/// Connections one app's role may hold at once (all its dynos together).
const CONNECTION_LIMIT: u32 = 40;
/// How long ending the old sessions after a rotation may take (backends exit in moments;
/// the margin is for a loaded machine).
const TERMINATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

struct Postgres {
    server: PgServer,
}

/// The provider's record of one database.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// The database's and the role's name (`sk_<hex>`).
    database: String,
    role: String,
    password: String,
    host: String,
    port: u16,
    /// When the password last changed, by the server's clock: sessions that began before it
    /// were opened with an older password and are ended once the new one is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_changed_at: Option<String>,
}

fn record(resource: &Value) -> Result<Record, PlatformError> {
    serde_json::from_value(resource.clone())
        .map_err(|e| PlatformError::Addon(format!("unreadable postgres add-on record: {e}")))
}

fn err(e: tokio_postgres::Error) -> PlatformError {
    PlatformError::Addon(pg_message(&e))
}

/// `postgres://role:password@host:port/database`; names and passwords are hex, so nothing
/// needs escaping.
fn url(r: &Record) -> String {
    let host = if r.host.contains(':') {
        format!("[{}]", r.host)
    } else {
        r.host.clone()
    };
    format!(
        "postgres://{}:{}@{host}:{}/{}",
        r.role, r.password, r.port, r.database
    )
}

fn provisioned(r: &Record) -> Result<Provisioned, PlatformError> {
    let mut config = BTreeMap::new();
    config.insert("DATABASE_URL".to_owned(), url(r));
    Ok(Provisioned {
        config,
        resource: serde_json::to_value(r)
            .map_err(|e| PlatformError::Addon(format!("recording the database: {e}")))?,
    })
}

impl Postgres {
    async fn admin(&self) -> Result<(Endpoint, tokio_postgres::Client), PlatformError> {
        let endpoint = self.server.endpoint().await?;
        let client = connect(&endpoint.admin).await?;
        Ok((endpoint, client))
    }
}

async fn drop_all(client: &tokio_postgres::Client, name: &str) -> Result<(), PlatformError> {
    // WITH (FORCE) ends the app's open sessions, which would otherwise block the drop.
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(err)?;
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
        .await
        .map_err(err)?;
    Ok(())
}

#[async_trait::async_trait]
impl Provider for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn description(&self) -> &'static str {
        "A PostgreSQL database and role of the app's own (DATABASE_URL)"
    }

    fn plans(&self) -> &'static [&'static str] {
        &["standard"]
    }

    async fn provision(&self, app: &str, plan: &str) -> Result<Provisioned, PlatformError> {
        let (endpoint, client) = self.admin().await?;
        let name = format!("sk_{}", super::token(6)?);
        let r = Record {
            database: name.clone(),
            role: name.clone(),
            password: super::token(24)?,
            host: endpoint.host.clone(),
            port: endpoint.port,
            password_changed_at: None,
        };
        // CREATE DATABASE cannot run in a transaction block: one statement per call, and
        // undo by hand if a later one fails.
        let steps = [
            // A connection limit keeps one app from taking every slot of a shared server.
            format!(
                "CREATE ROLE \"{name}\" LOGIN CONNECTION LIMIT {CONNECTION_LIMIT} PASSWORD '{}'",
                r.password
            ),
            format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""),
            format!("REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC"),
            format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{name}\" TO \"{name}\""),
        ];
        for step in &steps {
            if let Err(e) = client.batch_execute(step).await {
                let _ = drop_all(&client, &name).await;
                return Err(err(e));
            }
        }
        tracing::info!(app, plan, database = %name, "provisioned a PostgreSQL database");
        provisioned(&r)
    }

    async fn deprovision(&self, resource: &Value) -> Result<(), PlatformError> {
        let r = record(resource)?;
        let (_, client) = self.admin().await?;
        drop_all(&client, &r.database).await?;
        tracing::info!(database = %r.database, "dropped a PostgreSQL database");
        Ok(())
    }

    async fn rotate_credentials(&self, resource: &Value) -> Result<Provisioned, PlatformError> {
        let mut r = record(resource)?;
        let (endpoint, client) = self.admin().await?;
        r.password = super::token(24)?;
        r.host = endpoint.host;
        r.port = endpoint.port;
        client
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" PASSWORD '{}'",
                r.role, r.password
            ))
            .await
            .map_err(err)?;
        // Read after the change committed: any session that began later used the new password.
        let row = client
            .query_one("SELECT clock_timestamp()::text", &[])
            .await
            .map_err(err)?;
        r.password_changed_at = Some(row.get(0));
        provisioned(&r)
    }

    async fn retire_old_credentials(&self, resource: &Value) -> Result<(), PlatformError> {
        let r = record(resource)?;
        let Some(changed_at) = r.password_changed_at else {
            return Ok(());
        };
        let (_, client) = self.admin().await?;
        let old_sessions = "SELECT pid FROM pg_stat_activity
             WHERE usename = $1::text::name AND backend_start < $2::text::timestamptz
               AND pid <> pg_backend_pid()";
        let ended = client
            .query(
                &format!("SELECT pg_terminate_backend(pid) FROM ({old_sessions}) AS old"),
                &[&r.role, &changed_at],
            )
            .await
            .map_err(err)?
            .len();
        // pg_terminate_backend only signals; the sessions are gone once their backends exit,
        // which takes moments. Waiting here lets the caller rely on them being gone.
        let deadline = std::time::Instant::now() + TERMINATE_WAIT;
        loop {
            let left = client
                .query(old_sessions, &[&r.role, &changed_at])
                .await
                .map_err(err)?
                .len();
            if left == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(PlatformError::Addon(format!(
                    "{left} session(s) opened with the old password of {} did not end within {}s",
                    r.role,
                    TERMINATE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::info!(role = %r.role, ended, "ended sessions opened with the old password");
        Ok(())
    }

    async fn info(&self, resource: &Value) -> Result<Vec<(String, String)>, PlatformError> {
        let r = record(resource)?;
        let (_, client) = self.admin().await?;
        let row = client
            .query_one(
                "SELECT current_setting('server_version'),
                        pg_size_pretty(pg_database_size($1::text::name)),
                        (SELECT count(*) FROM pg_stat_activity WHERE datname = $1::text::name)",
                &[&r.database],
            )
            .await
            .map_err(err)?;
        let version: String = row.get(0);
        let size: String = row.get(1);
        let connections: i64 = row.get(2);
        Ok(vec![
            ("Status".into(), "Available".into()),
            ("PG Version".into(), version),
            ("Data Size".into(), size),
            ("Connections".into(), connections.to_string()),
            ("Database".into(), r.database),
            ("Role".into(), r.role),
            ("Host".into(), format!("{}:{}", r.host, r.port)),
        ])
    }

    async fn boot(
        &self,
        existing: &[AddonRow],
    ) -> Result<Vec<(String, Provisioned)>, PlatformError> {
        let endpoint = self.server.endpoint().await?;
        let mut moved = Vec::new();
        for row in existing {
            let mut r = record(&row.resource)?;
            if r.host != endpoint.host || r.port != endpoint.port {
                r.host = endpoint.host.clone();
                r.port = endpoint.port;
                moved.push((row.name.clone(), provisioned(&r)?));
            }
        }
        Ok(moved)
    }

    fn shutdown(&self) {
        self.server.stop();
    }
}
