//! Durable platform state in SQLite: apps, releases, config vars, formation and API tokens.
//! Every write is one transaction with `synchronous=FULL`, so an acknowledged change survives
//! a kill -9 of the platform.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use skiff_core::{AppName, SlugManifest};

use crate::PlatformError;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied. Never edit
/// a shipped entry: append a new one.
const MIGRATIONS: &[&str] = &[
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_ROUTING,
    SCHEMA_CERTS,
    SCHEMA_ADDONS,
];

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    slug        TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    config      TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS config_vars (
    app   TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE TABLE IF NOT EXISTS formation (
    app          TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    PRIMARY KEY (app, process_type)
);
CREATE TABLE IF NOT EXISTS log_drains (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    token      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (app, url)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Users other than the admin, app owners, and collaborators.
const SCHEMA_V2: &str = "
ALTER TABLE apps ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
CREATE TABLE IF NOT EXISTS users (
    email      TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS collaborators (
    app   TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    email TEXT NOT NULL,
    PRIMARY KEY (app, email)
);
";

/// Dyno sizes per process type.
const SCHEMA_V3: &str = "
ALTER TABLE formation ADD COLUMN size TEXT NOT NULL DEFAULT 'standard-1x';
";

/// The router's per-app state: custom domains (each host belongs to one app) and flags
/// (maintenance mode, features such as session affinity).
const SCHEMA_ROUTING: &str = "
CREATE TABLE IF NOT EXISTS domains (
    hostname   TEXT PRIMARY KEY,
    app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS app_flags (
    app  TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    flag TEXT NOT NULL,
    PRIMARY KEY (app, flag)
);
";

/// HTTPS certificates per app, as the user uploaded them (the key is never returned).
const SCHEMA_CERTS: &str = "
CREATE TABLE IF NOT EXISTS certs (
    app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    cert_pem   TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, name)
);
";

/// Add-ons: one row per provisioned resource. `resource` is the provider's own record (JSON:
/// which database and role, which store), never shown to users; `config_vars` lists the vars
/// it set on the app.
const SCHEMA_ADDONS: &str = "
CREATE TABLE IF NOT EXISTS addons (
    name        TEXT PRIMARY KEY,
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    plan        TEXT NOT NULL,
    resource    TEXT NOT NULL,
    config_vars TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (app, provider)
);
";

fn migrate(conn: &mut Connection) -> Result<(), PlatformError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "state schema migrated");
    }
    Ok(())
}

/// One release as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReleaseRow {
    /// The app.
    pub app: String,
    /// `vN` as a number.
    pub version: u64,
    /// sha256 of the slug.
    pub slug: String,
    /// What the slug holds.
    pub manifest: SlugManifest,
    /// Config vars at the time of the release.
    #[serde(skip)]
    pub config: BTreeMap<String, String>,
    /// `Deploy 1a2b3c4`, `Set FOO config vars`, ...
    pub description: String,
    /// Who cut it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// One app as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppRow {
    /// The name.
    pub name: String,
    /// Who created it (`admin` or a user's email).
    pub owner: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// One log drain as stored.
#[derive(Debug, Clone)]
pub struct DrainRow {
    /// Row id.
    pub id: i64,
    /// Where lines go (`syslog+tcp://...`, `http://...`).
    pub url: String,
    /// `d.<hex>`, sent to HTTP drains as `Logplex-Drain-Token`.
    pub token: String,
}

/// One add-on as stored.
#[derive(Debug, Clone)]
pub struct AddonRow {
    /// `postgres-1a2b3c`: unique on this Skiff.
    pub name: String,
    /// The app it is attached to.
    pub app: String,
    /// The provider (`postgres`, `kv`).
    pub provider: String,
    /// The provider's plan.
    pub plan: String,
    /// The provider's private record of what it made.
    pub resource: serde_json::Value,
    /// Config vars it set on the app.
    pub config_vars: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// What an add-on change does to the `addons` table, in the same transaction as its config
/// change and release.
#[derive(Debug, Clone)]
pub(crate) enum AddonChange {
    /// A plain config change.
    None,
    /// Attach a new add-on.
    Attach(AddonRow),
    /// Detach (and forget) the add-on of this name.
    Detach(String),
    /// The provider's record changed (new credentials).
    Update(String, serde_json::Value),
}

/// The state database.
pub struct State {
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl State {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, PlatformError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = conn;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an API token (by hash) unless present.
    pub fn add_token(&self, hash: &str, name: &str) -> Result<(), PlatformError> {
        self.db().execute(
            "INSERT OR IGNORE INTO tokens (hash, name, created_at) VALUES (?1, ?2, ?3)",
            params![hash, name, now()],
        )?;
        Ok(())
    }

    /// The token's owner name, if the hash is known.
    pub fn token_owner(&self, hash: &str) -> Result<Option<String>, PlatformError> {
        Ok(self
            .db()
            .query_row("SELECT name FROM tokens WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Creates an app; fails if the name is taken.
    pub fn create_app(&self, name: &AppName, owner: &str) -> Result<AppRow, PlatformError> {
        let created_at = now();
        let inserted = self.db().execute(
            "INSERT OR IGNORE INTO apps (name, created_at, owner) VALUES (?1, ?2, ?3)",
            params![name.as_str(), created_at, owner],
        )?;
        if inserted == 0 {
            return Err(PlatformError::AppExists(name.to_string()));
        }
        Ok(AppRow {
            name: name.to_string(),
            owner: owner.to_owned(),
            created_at,
        })
    }

    /// Lists apps by name.
    pub fn apps(&self) -> Result<Vec<AppRow>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name, created_at, owner FROM apps ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AppRow {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    owner: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One app, or `NoSuchApp`.
    pub fn app(&self, name: &str) -> Result<AppRow, PlatformError> {
        self.db()
            .query_row(
                "SELECT name, created_at, owner FROM apps WHERE name = ?1",
                [name],
                |r| {
                    Ok(AppRow {
                        name: r.get(0)?,
                        created_at: r.get(1)?,
                        owner: r.get(2)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| PlatformError::NoSuchApp(name.to_owned()))
    }

    /// The app's current config vars.
    pub fn config(&self, app: &str) -> Result<BTreeMap<String, String>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT key, value FROM config_vars WHERE app = ?1")?;
        let rows = stmt
            .query_map([app], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(rows)
    }

    /// Applies config changes (`None` unsets) and, if the app has a release, cuts a new one
    /// with the same slug, all in one transaction. Returns the new release, if any.
    pub fn change_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        description: &str,
        by: &str,
    ) -> Result<Option<ReleaseRow>, PlatformError> {
        self.change_config_with(app, changes, &AddonChange::None, description, by)
    }

    /// [`State::change_config`] plus an add-on change, in the same transaction: an add-on and
    /// the config vars pointing at it appear (or go) together.
    pub(crate) fn change_config_with(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        addon: &AddonChange,
        description: &str,
        by: &str,
    ) -> Result<Option<ReleaseRow>, PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        match addon {
            AddonChange::None => {}
            AddonChange::Attach(row) => {
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO addons (name, app, provider, plan, resource, config_vars, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        row.name,
                        app,
                        row.provider,
                        row.plan,
                        row.resource.to_string(),
                        serde_json::to_string(&row.config_vars).unwrap_or_else(|_| "[]".into()),
                        row.created_at
                    ],
                )?;
                if inserted == 0 {
                    return Err(PlatformError::BadRequest(format!(
                        "{app} already has a {} add-on",
                        row.provider
                    )));
                }
            }
            AddonChange::Detach(name) => {
                tx.execute(
                    "DELETE FROM addons WHERE name = ?1 AND app = ?2",
                    params![name, app],
                )?;
            }
            AddonChange::Update(name, resource) => {
                tx.execute(
                    "UPDATE addons SET resource = ?3 WHERE name = ?1 AND app = ?2",
                    params![name, app, resource.to_string()],
                )?;
            }
        }
        for (key, value) in changes {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO config_vars (app, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
                    params![app, key, v],
                )?,
                None => tx.execute(
                    "DELETE FROM config_vars WHERE app = ?1 AND key = ?2",
                    params![app, key],
                )?,
            };
        }
        let release = match current_release_in(&tx, app)? {
            Some(current) => {
                let config = config_in(&tx, app)?;
                Some(insert_release_in(
                    &tx,
                    app,
                    &current.slug,
                    &current.manifest,
                    &config,
                    description,
                    by,
                )?)
            }
            None => None,
        };
        tx.commit()?;
        Ok(release)
    }

    /// The app's add-ons, oldest first.
    pub fn addons(&self, app: &str) -> Result<Vec<AddonRow>, PlatformError> {
        self.addons_where("app = ?1", app)
    }

    /// Every add-on of a provider, all apps together.
    pub fn addons_of_provider(&self, provider: &str) -> Result<Vec<AddonRow>, PlatformError> {
        self.addons_where("provider = ?1", provider)
    }

    fn addons_where(&self, filter: &str, value: &str) -> Result<Vec<AddonRow>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "SELECT name, app, provider, plan, resource, config_vars, created_at FROM addons WHERE {filter} ORDER BY created_at, name"
        ))?;
        let rows = stmt
            .query_map([value], |r| {
                let resource: String = r.get(4)?;
                let vars: String = r.get(5)?;
                let bad = |i, e: serde_json::Error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                };
                Ok(AddonRow {
                    name: r.get(0)?,
                    app: r.get(1)?,
                    provider: r.get(2)?,
                    plan: r.get(3)?,
                    resource: serde_json::from_str(&resource).map_err(|e| bad(4, e))?,
                    config_vars: serde_json::from_str(&vars).map_err(|e| bad(5, e))?,
                    created_at: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records a new release of `slug` with the app's current config.
    pub fn add_release(
        &self,
        app: &str,
        slug: &str,
        manifest: &SlugManifest,
        description: &str,
        by: &str,
    ) -> Result<ReleaseRow, PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let config = config_in(&tx, app)?;
        let row = insert_release_in(&tx, app, slug, manifest, &config, description, by)?;
        tx.commit()?;
        Ok(row)
    }

    /// The version the next release of `app` will get.
    pub fn next_version(&self, app: &str) -> Result<u64, PlatformError> {
        let db = self.db();
        let max: Option<i64> = db.query_row(
            "SELECT MAX(version) FROM releases WHERE app = ?1",
            [app],
            |r| r.get(0),
        )?;
        Ok(max.unwrap_or(0) as u64 + 1)
    }

    /// The app's newest release.
    pub fn current_release(&self, app: &str) -> Result<Option<ReleaseRow>, PlatformError> {
        current_release_in(&self.db(), app)
    }

    /// The app's releases, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<ReleaseRow>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "{RELEASE_SELECT} WHERE app = ?1 ORDER BY version DESC"
        ))?;
        let rows = stmt
            .query_map([app], release_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records a release of `slug` that also restores `config` as the app's config vars
    /// (a rollback brings back the config it ran with).
    pub fn add_release_with_config(
        &self,
        app: &str,
        slug: &str,
        manifest: &SlugManifest,
        config: &BTreeMap<String, String>,
        description: &str,
        by: &str,
    ) -> Result<ReleaseRow, PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM config_vars WHERE app = ?1", [app])?;
        for (k, v) in config {
            tx.execute(
                "INSERT INTO config_vars (app, key, value) VALUES (?1, ?2, ?3)",
                params![app, k, v],
            )?;
        }
        let row = insert_release_in(&tx, app, slug, manifest, config, description, by)?;
        tx.commit()?;
        Ok(row)
    }

    /// Slugs used by the newest `keep` releases of any app: these must stay stored.
    pub fn slugs_in_use(
        &self,
        keep: usize,
    ) -> Result<std::collections::HashSet<String>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT slug FROM (SELECT slug, ROW_NUMBER() OVER (PARTITION BY app ORDER BY version DESC) AS n FROM releases) WHERE n <= ?1",
        )?;
        let rows = stmt
            .query_map([keep as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every slug any release refers to.
    pub fn all_slugs(&self) -> Result<std::collections::HashSet<String>, PlatformError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT DISTINCT slug FROM releases")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Renames an app everywhere in one transaction.
    pub fn rename_app(&self, from: &str, to: &AppName) -> Result<(), PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        // Child rows are updated after the parent inside the same transaction.
        tx.pragma_update(None, "defer_foreign_keys", "ON")?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT name FROM apps WHERE name = ?1",
                [to.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(PlatformError::AppExists(to.to_string()));
        }
        let n = tx.execute(
            "UPDATE apps SET name = ?2 WHERE name = ?1",
            params![from, to.as_str()],
        )?;
        if n == 0 {
            return Err(PlatformError::NoSuchApp(from.to_owned()));
        }
        for table in APP_TABLES {
            tx.execute(
                &format!("UPDATE {table} SET app = ?2 WHERE app = ?1"),
                params![from, to.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes an app and everything recorded about it.
    pub fn destroy_app(&self, name: &str) -> Result<(), PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for table in APP_TABLES {
            tx.execute(&format!("DELETE FROM {table} WHERE app = ?1"), [name])?;
        }
        let n = tx.execute("DELETE FROM apps WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(PlatformError::NoSuchApp(name.to_owned()));
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets how many dynos of each process type run and of which size, in one transaction:
    /// a `ps:scale web=2:standard-2x` cut off by a crash is applied whole or not at all.
    pub fn set_formation(
        &self,
        app: &str,
        quantities: &BTreeMap<String, u32>,
        sizes: &BTreeMap<String, String>,
    ) -> Result<(), PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for (process_type, q) in quantities {
            tx.execute(
                "INSERT INTO formation (app, process_type, quantity) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app, process_type) DO UPDATE SET quantity = excluded.quantity",
                params![app, process_type, q],
            )?;
        }
        for (process_type, size) in sizes {
            let default_quantity = quantities
                .get(process_type)
                .map_or(i64::from(process_type == "web"), |q| i64::from(*q));
            tx.execute(
                "INSERT INTO formation (app, process_type, quantity, size) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, process_type) DO UPDATE SET size = excluded.size",
                params![app, process_type, default_quantity, size],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Creates a user (not the admin); fails if the email is taken.
    pub fn create_user(&self, email: &str, token_hash: &str) -> Result<(), PlatformError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO users (email, created_at) VALUES (?1, ?2)",
            params![email, now()],
        )?;
        if inserted == 0 || email == "admin" {
            return Err(PlatformError::BadRequest(format!(
                "user {email} already exists"
            )));
        }
        tx.execute(
            "INSERT INTO tokens (hash, name, created_at) VALUES (?1, ?2, ?3)",
            params![token_hash, email, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether `email` names a user.
    pub fn user_exists(&self, email: &str) -> Result<bool, PlatformError> {
        let found: Option<String> = self
            .db()
            .query_row("SELECT email FROM users WHERE email = ?1", [email], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(found.is_some())
    }

    /// Collaborators of an app.
    pub fn collaborators(&self, app: &str) -> Result<Vec<String>, PlatformError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT email FROM collaborators WHERE app = ?1 ORDER BY email")?;
        let rows = stmt
            .query_map([app], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Adds or removes a collaborator.
    pub fn set_collaborator(
        &self,
        app: &str,
        email: &str,
        present: bool,
    ) -> Result<bool, PlatformError> {
        let n = if present {
            self.db().execute(
                "INSERT OR IGNORE INTO collaborators (app, email) VALUES (?1, ?2)",
                params![app, email],
            )?
        } else {
            self.db().execute(
                "DELETE FROM collaborators WHERE app = ?1 AND email = ?2",
                params![app, email],
            )?
        };
        Ok(n > 0)
    }

    /// Whether `who` may see and change `app`: the admin, its owner, or a collaborator.
    pub fn can_access(&self, who: &str, app: &AppRow) -> Result<bool, PlatformError> {
        if who == "admin" || app.owner == who {
            return Ok(true);
        }
        let found: Option<String> = self
            .db()
            .query_row(
                "SELECT email FROM collaborators WHERE app = ?1 AND email = ?2",
                params![app.name, who],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// The dyno size of a process type (the default size unless resized).
    pub fn size(&self, app: &str, process_type: &str) -> Result<String, PlatformError> {
        let size: Option<String> = self
            .db()
            .query_row(
                "SELECT size FROM formation WHERE app = ?1 AND process_type = ?2",
                params![app, process_type],
                |r| r.get(0),
            )
            .optional()?;
        Ok(size.unwrap_or_else(|| skiff_core::sizes::DEFAULT_SIZE.to_owned()))
    }

    /// How many dynos of `process_type` the app should run (web defaults to 1).
    pub fn quantity(&self, app: &str, process_type: &str) -> Result<u32, PlatformError> {
        let q: Option<i64> = self
            .db()
            .query_row(
                "SELECT quantity FROM formation WHERE app = ?1 AND process_type = ?2",
                params![app, process_type],
                |r| r.get(0),
            )
            .optional()?;
        Ok(q.map(|q| q.clamp(0, 1000) as u32)
            .unwrap_or(if process_type == "web" { 1 } else { 0 }))
    }

    /// The app's log drains, oldest first.
    pub fn drains(&self, app: &str) -> Result<Vec<DrainRow>, PlatformError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT id, url, token FROM log_drains WHERE app = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([app], |r| {
                Ok(DrainRow {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    token: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Adds a drain; `None` if the app already has that URL.
    pub fn add_drain(
        &self,
        app: &str,
        url: &str,
        token: &str,
    ) -> Result<Option<DrainRow>, PlatformError> {
        let db = self.db();
        let inserted = db.execute(
            "INSERT OR IGNORE INTO log_drains (app, url, token, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![app, url, token, now()],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        Ok(Some(DrainRow {
            id: db.last_insert_rowid(),
            url: url.to_owned(),
            token: token.to_owned(),
        }))
    }

    /// Removes a drain; `false` if the app had no such URL.
    pub fn remove_drain(&self, app: &str, url: &str) -> Result<bool, PlatformError> {
        let removed = self.db().execute(
            "DELETE FROM log_drains WHERE app = ?1 AND url = ?2",
            params![app, url],
        )?;
        Ok(removed > 0)
    }
}

/// Tables holding per-app rows, keyed by an `app` column.
const APP_TABLES: &[&str] = &[
    "releases",
    "config_vars",
    "formation",
    "collaborators",
    "log_drains",
    "domains",
    "app_flags",
    "certs",
    "addons",
];

const RELEASE_SELECT: &str = "SELECT app, version, slug, manifest, config, description, created_by, created_at FROM releases";

fn release_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRow> {
    let manifest: String = r.get(3)?;
    let config: String = r.get(4)?;
    let bad = |i, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(ReleaseRow {
        app: r.get(0)?,
        version: r.get::<_, i64>(1)? as u64,
        slug: r.get(2)?,
        manifest: serde_json::from_str(&manifest).map_err(|e| bad(3, e))?,
        config: serde_json::from_str(&config).map_err(|e| bad(4, e))?,
        description: r.get(5)?,
        created_by: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn current_release_in(db: &Connection, app: &str) -> Result<Option<ReleaseRow>, PlatformError> {
    Ok(db
        .query_row(
            &format!("{RELEASE_SELECT} WHERE app = ?1 ORDER BY version DESC LIMIT 1"),
            [app],
            release_from_row,
        )
        .optional()?)
}

fn config_in(db: &Connection, app: &str) -> Result<BTreeMap<String, String>, PlatformError> {
    let mut stmt = db.prepare("SELECT key, value FROM config_vars WHERE app = ?1")?;
    let rows = stmt
        .query_map([app], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(rows)
}

fn insert_release_in(
    db: &Connection,
    app: &str,
    slug: &str,
    manifest: &SlugManifest,
    config: &BTreeMap<String, String>,
    description: &str,
    by: &str,
) -> Result<ReleaseRow, PlatformError> {
    let max: Option<i64> = db.query_row(
        "SELECT MAX(version) FROM releases WHERE app = ?1",
        [app],
        |r| r.get(0),
    )?;
    let version = max.unwrap_or(0) + 1;
    let created_at = now();
    db.execute(
        "INSERT INTO releases (app, version, slug, manifest, config, description, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            app,
            version,
            slug,
            String::from_utf8_lossy(&manifest.to_json()),
            serde_json::to_string(config).unwrap_or_else(|_| "{}".into()),
            description,
            by,
            created_at
        ],
    )?;
    Ok(ReleaseRow {
        app: app.to_owned(),
        version: version as u64,
        slug: slug.to_owned(),
        manifest: manifest.clone(),
        config: config.clone(),
        description: description.to_owned(),
        created_by: by.to_owned(),
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::SLUG_MANIFEST_VERSION;

    fn manifest() -> SlugManifest {
        SlugManifest {
            version: SLUG_MANIFEST_VERSION,
            buildpacks: vec!["rust".into()],
            process_types: BTreeMap::new(),
            commit: None,
            unpacked_bytes: 1,
        }
    }

    #[test]
    fn formation_changes_count_and_size_together() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = State::open(&dir.path().join("state.db")).expect("open");
        let app = AppName::parse("hello").expect("name");
        s.create_app(&app, "admin").expect("create");
        let both = |q: u32, size: &str| {
            s.set_formation(
                "hello",
                &BTreeMap::from([("web".to_owned(), q)]),
                &BTreeMap::from([("web".to_owned(), size.to_owned())]),
            )
        };
        both(3, "standard-2x").expect("scale");
        assert_eq!(s.quantity("hello", "web").expect("q"), 3);
        assert_eq!(s.size("hello", "web").expect("size"), "standard-2x");
        // A size alone keeps the count; a count alone keeps the size.
        s.set_formation(
            "hello",
            &BTreeMap::new(),
            &BTreeMap::from([("web".to_owned(), "basic".to_owned())]),
        )
        .expect("resize");
        s.set_formation(
            "hello",
            &BTreeMap::from([("web".to_owned(), 2)]),
            &BTreeMap::new(),
        )
        .expect("scale");
        assert_eq!(s.quantity("hello", "web").expect("q"), 2);
        assert_eq!(s.size("hello", "web").expect("size"), "basic");
        // A new process type given a size only starts at its default count.
        s.set_formation(
            "hello",
            &BTreeMap::new(),
            &BTreeMap::from([("worker".to_owned(), "eco".to_owned())]),
        )
        .expect("resize worker");
        assert_eq!(s.quantity("hello", "worker").expect("q"), 0);
    }

    #[test]
    fn releases_and_config_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.db");
        let app = AppName::parse("hello").expect("name");
        {
            let s = State::open(&path).expect("open");
            s.create_app(&app, "admin").expect("create");
            assert!(matches!(
                s.create_app(&app, "admin"),
                Err(PlatformError::AppExists(_))
            ));
            let mut changes = BTreeMap::new();
            changes.insert("FOO".to_owned(), Some("bar".to_owned()));
            assert!(
                s.change_config("hello", &changes, "Set FOO", "t")
                    .expect("config")
                    .is_none(),
                "no release before a deploy"
            );
            let v1 = s
                .add_release("hello", &"a".repeat(64), &manifest(), "Deploy abc", "t")
                .expect("release");
            assert_eq!(v1.version, 1);
            assert_eq!(v1.config["FOO"], "bar");
            changes.insert("FOO".to_owned(), None);
            let v2 = s
                .change_config("hello", &changes, "Unset FOO", "t")
                .expect("config")
                .expect("release");
            assert_eq!(v2.version, 2);
            assert!(v2.config.is_empty());
            assert_eq!(v2.slug, v1.slug);
        }
        let s = State::open(&path).expect("reopen");
        let releases = s.releases("hello").expect("releases");
        assert_eq!(
            releases.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(
            s.current_release("hello")
                .expect("current")
                .map(|r| r.version),
            Some(2)
        );
        assert_eq!(s.quantity("hello", "web").expect("q"), 1);
        assert!(matches!(s.app("nope"), Err(PlatformError::NoSuchApp(_))));

        let url = "syslog+tcp://127.0.0.1:514";
        assert!(s.add_drain("hello", url, "d.1").expect("add").is_some());
        assert!(s.add_drain("hello", url, "d.2").expect("again").is_none());
        assert_eq!(s.drains("hello").expect("drains")[0].token, "d.1");
        assert!(s.remove_drain("hello", url).expect("remove"));
        assert!(!s.remove_drain("hello", url).expect("remove again"));
        assert!(s.drains("hello").expect("drains").is_empty());
    }
}
