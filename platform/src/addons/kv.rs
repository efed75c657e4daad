//! The `kv` provider: a key-value store per add-on, embedded in the platform (one SQLite file,
//! `<data-dir>/kv.db`, rows keyed by store). `KV_URL` is `skiff-kv://<store>:<secret>@local`;
//! the runtime hands guests the store only when the secret matches, so one app's URL never
//! opens another app's keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use sha2::{Digest, Sha256};
use skiff_runtime::{KvBackend, KvStore};

use super::{Provider, ProviderContext, Provisioned};
use crate::PlatformError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stores (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    store TEXT NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (store, key)
);
";

pub(crate) fn provider(ctx: &ProviderContext<'_>) -> Result<Arc<dyn Provider>, PlatformError> {
    let db = Arc::new(KvDb::open(&ctx.data_dir.join("kv.db"))?);
    ctx.runtime.set_kv_backend(Arc::new(Backend(db.clone())));
    Ok(Arc::new(Kv { db }))
}

/// The stores' database.
pub(crate) struct KvDb {
    conn: Mutex<Connection>,
}

impl KvDb {
    fn open(path: &Path) -> Result<Self, PlatformError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A write survives a crash of the platform; an fsync per set would make every write
        // wait on the disk.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// (store, secret) from a `KV_URL`.
fn parse_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("skiff-kv://")?;
    let (userinfo, _) = rest.split_once('@')?;
    let (id, secret) = userinfo.split_once(':')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn url(id: &str, secret: &str) -> String {
    format!("skiff-kv://{id}:{secret}@local")
}

/// Compares without stopping at the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What the runtime opens `KV_URL`s with.
struct Backend(Arc<KvDb>);

impl KvBackend for Backend {
    fn open(&self, kv_url: &str) -> Result<Arc<dyn KvStore>, String> {
        let (id, secret) =
            parse_url(kv_url).ok_or("KV_URL is not a skiff-kv:// URL with credentials")?;
        let stored: Option<String> = self
            .0
            .db()
            .query_row("SELECT secret_hash FROM stores WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())?;
        match stored {
            Some(h) if same(&h, &hash(secret)) => Ok(Arc::new(StoreHandle {
                db: self.0.clone(),
                id: id.to_owned(),
            })),
            _ => Err("the store in KV_URL does not exist or its credentials are wrong".into()),
        }
    }
}

/// One opened store: every call is scoped to its id.
struct StoreHandle {
    db: Arc<KvDb>,
    id: String,
}

impl KvStore for StoreHandle {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.db
            .db()
            .query_row(
                "SELECT value FROM entries WHERE store = ?1 AND key = ?2",
                params![self.id, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.db
            .db()
            .execute(
                "INSERT INTO entries (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                params![self.id, key, value],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.db
            .db()
            .execute(
                "DELETE FROM entries WHERE store = ?1 AND key = ?2",
                params![self.id, key],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let db = self.db.db();
        // substr, not LIKE: keys may hold % and _.
        let mut stmt = db
            .prepare(
                "SELECT key FROM entries WHERE store = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            )
            .map_err(|e| e.to_string())?;
        stmt.query_map(params![self.id, prefix], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
            .map_err(|e| e.to_string())
    }
}

struct Kv {
    db: Arc<KvDb>,
}

/// The provider's record of one store.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    store: String,
    secret: String,
}

fn record(resource: &Value) -> Result<Record, PlatformError> {
    serde_json::from_value(resource.clone())
        .map_err(|e| PlatformError::Addon(format!("unreadable kv add-on record: {e}")))
}

fn provisioned(r: &Record) -> Result<Provisioned, PlatformError> {
    let mut config = BTreeMap::new();
    config.insert("KV_URL".to_owned(), url(&r.store, &r.secret));
    Ok(Provisioned {
        config,
        resource: serde_json::to_value(r)
            .map_err(|e| PlatformError::Addon(format!("recording the store: {e}")))?,
    })
}

#[async_trait::async_trait]
impl Provider for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn description(&self) -> &'static str {
        "A key-value store embedded in Skiff (KV_URL)"
    }

    fn plans(&self) -> &'static [&'static str] {
        &["standard"]
    }

    async fn provision(&self, app: &str, plan: &str) -> Result<Provisioned, PlatformError> {
        let r = Record {
            store: format!("kv_{}", super::token(6)?),
            secret: super::token(24)?,
        };
        self.db.db().execute(
            "INSERT INTO stores (id, secret_hash, created_at) VALUES (?1, ?2, strftime('%s','now'))",
            params![r.store, hash(&r.secret)],
        )?;
        tracing::info!(app, plan, store = %r.store, "provisioned a key-value store");
        provisioned(&r)
    }

    async fn deprovision(&self, resource: &Value) -> Result<(), PlatformError> {
        let r = record(resource)?;
        let mut db = self.db.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM entries WHERE store = ?1", [&r.store])?;
        tx.execute("DELETE FROM stores WHERE id = ?1", [&r.store])?;
        tx.commit()?;
        Ok(())
    }

    async fn rotate_credentials(&self, resource: &Value) -> Result<Provisioned, PlatformError> {
        let mut r = record(resource)?;
        r.secret = super::token(24)?;
        let n = self.db.db().execute(
            "UPDATE stores SET secret_hash = ?2 WHERE id = ?1",
            params![r.store, hash(&r.secret)],
        )?;
        if n == 0 {
            return Err(PlatformError::Addon(format!("store {} is gone", r.store)));
        }
        provisioned(&r)
    }

    async fn info(&self, resource: &Value) -> Result<Vec<(String, String)>, PlatformError> {
        let r = record(resource)?;
        let (keys, bytes): (i64, i64) = self.db.db().query_row(
            "SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM entries WHERE store = ?1",
            [&r.store],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(vec![
            ("Status".into(), "Available".into()),
            ("Keys".into(), keys.to_string()),
            ("Data Size".into(), format!("{bytes} bytes")),
            ("Store".into(), r.store),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_opens_its_own_store_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Arc::new(KvDb::open(&dir.path().join("kv.db")).expect("open"));
        let kv = Kv { db: db.clone() };
        let backend = Backend(db);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let a = rt.block_on(kv.provision("a", "standard")).expect("a");
        let b = rt.block_on(kv.provision("b", "standard")).expect("b");
        let store_a = backend.open(&a.config["KV_URL"]).expect("open a");
        store_a.set("k", b"from a").expect("set");
        let store_b = backend.open(&b.config["KV_URL"]).expect("open b");
        assert_eq!(store_b.get("k").expect("get"), None);
        assert_eq!(store_a.get("k").expect("get"), Some(b"from a".to_vec()));

        // A's store id with anything but A's secret is refused.
        let ra = record(&a.resource).expect("record");
        let rb = record(&b.resource).expect("record");
        assert!(backend.open(&url(&ra.store, &rb.secret)).is_err());
        assert!(backend.open("skiff-kv://nothing").is_err());

        let rotated = rt
            .block_on(kv.rotate_credentials(&a.resource))
            .expect("rotate");
        assert!(backend.open(&a.config["KV_URL"]).is_err());
        let again = backend.open(&rotated.config["KV_URL"]).expect("new url");
        assert_eq!(again.get("k").expect("get"), Some(b"from a".to_vec()));
        assert_eq!(again.list_keys("").expect("keys"), vec!["k".to_owned()]);
    }
}
