//! The host side of Skiff's add-on interfaces (`wit/skiff.wit`): `skiff:addons/postgres` and
//! `skiff:addons/kv`, linked for every dyno, web and command alike.
//!
//! A guest never names a server or passes credentials: `open` uses the `DATABASE_URL` /
//! `KV_URL` of the dyno's release as the host set it, so a guest reaches only what its own
//! config names. Connections live in a pool the runtime keeps across requests; raw sockets
//! stay closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use wasmtime::component::Resource;

use crate::dyno::DynoState;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "skiff:addons/host",
        imports: { default: async | trappable },
        with: {
            "skiff:addons/postgres.connection": super::PgConnection,
            "skiff:addons/kv.store": super::KvHandle,
        },
    });
}

use bindings::skiff::addons::kv as wit_kv;
use bindings::skiff::addons::postgres as wit_pg;
use wit_pg::DbValue;

/// Idle connections kept per database URL.
const IDLE_PER_DATABASE: usize = 8;
/// Connections one instance (one request) may hold open at once: a guest opening in a loop
/// must not take the server's connection slots from every other app.
const OPEN_PER_INSTANCE: usize = 4;
/// How long opening a connection or one statement may take; a request's own deadline only
/// interrupts wasm code, not a host call waiting on the server.
const PG_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest key and value the kv interface accepts.
pub const KV_MAX_KEY_BYTES: usize = 1024;
/// Largest value the kv interface accepts.
pub const KV_MAX_VALUE_BYTES: usize = 1 << 20;

/// An app's key-value store, opened from its `KV_URL`.
pub trait KvStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Keys starting with `prefix`, in order.
    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, String>;
}

/// Opens key-value stores by URL; the platform implements it, checking the URL's credentials.
pub trait KvBackend: Send + Sync {
    /// The store `url` names, or why not (unknown store, wrong secret).
    fn open(&self, url: &str) -> Result<Arc<dyn KvStore>, String>;
}

/// Idle sessions older than this are closed: after a credentials rotation or a redeploy no
/// dyno asks for the old URL again, and its sessions should not hold server slots.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Pooled PostgreSQL sessions, by database URL, with when each went idle.
#[derive(Default)]
pub(crate) struct PgPool {
    idle: Mutex<HashMap<String, Vec<(tokio_postgres::Client, Instant)>>>,
}

impl PgPool {
    fn take(&self, url: &str) -> Option<tokio_postgres::Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(url)?;
        while let Some((client, since)) = list.pop() {
            if !client.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(client);
            }
        }
        None
    }

    fn give_back(&self, url: String, client: tokio_postgres::Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Dropping a client closes its session.
        idle.retain(|_, list| {
            list.retain(|(c, since)| !c.is_closed() && since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
        let list = idle.entry(url).or_default();
        if list.len() < IDLE_PER_DATABASE {
            list.push((client, Instant::now()));
        }
    }
}

/// What one dyno's guests may open, fixed when the dyno starts.
#[derive(Clone, Default)]
pub(crate) struct GuestAddons {
    database_url: Option<String>,
    kv_url: Option<String>,
    pool: Arc<PgPool>,
    kv: Option<Arc<dyn KvBackend>>,
    /// Connections this instance holds now.
    pg_open: Arc<std::sync::atomic::AtomicUsize>,
}

impl GuestAddons {
    /// Reads the add-on URLs from the dyno's environment as the host set it.
    pub(crate) fn from_env(
        env: &[(String, String)],
        pool: Arc<PgPool>,
        kv: Option<Arc<dyn KvBackend>>,
    ) -> Self {
        let find = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        Self {
            database_url: find("DATABASE_URL"),
            kv_url: find("KV_URL"),
            pool,
            kv,
            pg_open: Default::default(),
        }
    }

    /// A copy for one instance: same URLs and pool, its own count of open connections.
    pub(crate) fn for_instance(&self) -> Self {
        Self {
            pg_open: Default::default(),
            ..self.clone()
        }
    }
}

/// A guest's PostgreSQL session; returned to the pool when the guest drops it or its instance
/// ends.
pub struct PgConnection {
    client: Option<tokio_postgres::Client>,
    /// Taken from the pool and not used yet: if the server ended the session while it sat
    /// idle (a credentials rotation, a server restart), the first statement finds out and the
    /// host opens a new session instead of failing the guest's request.
    stale_possible: bool,
    url: String,
    pool: Arc<PgPool>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool.clone();
        let url = std::mem::take(&mut self.url);
        // A guest may leave a transaction open; the next guest must start clean.
        handle.spawn(async move {
            let reset = tokio::time::timeout(PG_TIMEOUT, client.batch_execute("ROLLBACK")).await;
            if matches!(reset, Ok(Ok(()))) {
                pool.give_back(url, client);
            }
        });
    }
}

/// A guest's handle on its key-value store.
pub struct KvHandle {
    store: Arc<dyn KvStore>,
}

/// Registers the add-on interfaces with the linker every dyno shares.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<DynoState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    wit_pg::add_to_linker::<DynoState, HasSelf<DynoState>>(linker, |s| s)?;
    wit_kv::add_to_linker::<DynoState, HasSelf<DynoState>>(linker, |s| s)?;
    Ok(())
}

/// The server's own words for a failure (its message and detail), else the client's.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => skiff_core::text::error_chain(e),
    }
}

/// A guest value bound to a statement parameter, converted to whatever type the statement
/// expects where that loses nothing.
#[derive(Debug)]
struct Param(DbValue);

fn int_to_sql(v: i64, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    match *ty {
        Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
        Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
        Type::INT8 => v.to_sql(ty, out),
        Type::OID => u32::try_from(v)?.to_sql(ty, out),
        Type::FLOAT4 => (v as f32).to_sql(ty, out),
        Type::FLOAT8 => (v as f64).to_sql(ty, out),
        _ => Err(format!("an integer cannot be sent as {ty}; cast the parameter in SQL").into()),
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 {
            DbValue::Null => Ok(IsNull::Yes),
            DbValue::Boolean(b) => b.to_sql(ty, out),
            DbValue::Int32(i) => int_to_sql(i64::from(*i), ty, out),
            DbValue::Int64(i) => int_to_sql(*i, ty, out),
            DbValue::Float64(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => {
                    Err(format!("a float cannot be sent as {ty}; cast the parameter in SQL").into())
                }
            },
            DbValue::Text(s) if is_text(ty) => s.as_str().to_sql(ty, out),
            DbValue::Text(_) => Err(format!(
                "text cannot be sent as {ty}; write the parameter as $n::text::{ty}"
            )
            .into()),
            DbValue::Binary(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        // Each value checks its own type in `to_sql`, with a message saying what to cast.
        let _ = ty;
        true
    }

    to_sql_checked!();
}

fn column_value(row: &tokio_postgres::Row, i: usize) -> Result<DbValue, String> {
    let ty = row.columns()[i].type_().clone();
    let bad = |e: tokio_postgres::Error| pg_message(&e);
    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> DbValue) -> DbValue {
        v.map(f).unwrap_or(DbValue::Null)
    }
    Ok(match ty {
        Type::BOOL => or_null(row.try_get(i).map_err(bad)?, DbValue::Boolean),
        Type::INT2 => or_null(row.try_get::<_, Option<i16>>(i).map_err(bad)?, |v| {
            DbValue::Int32(i32::from(v))
        }),
        Type::INT4 => or_null(row.try_get(i).map_err(bad)?, DbValue::Int32),
        Type::INT8 => or_null(row.try_get(i).map_err(bad)?, DbValue::Int64),
        Type::OID => or_null(row.try_get::<_, Option<u32>>(i).map_err(bad)?, |v| {
            DbValue::Int64(i64::from(v))
        }),
        Type::FLOAT4 => or_null(row.try_get::<_, Option<f32>>(i).map_err(bad)?, |v| {
            DbValue::Float64(f64::from(v))
        }),
        Type::FLOAT8 => or_null(row.try_get(i).map_err(bad)?, DbValue::Float64),
        Type::BYTEA => or_null(row.try_get(i).map_err(bad)?, DbValue::Binary),
        ref t if is_text(t) => or_null(row.try_get(i).map_err(bad)?, DbValue::Text),
        other => {
            return Err(format!(
                "column {} is of type {other}, which has no guest value; select it as {}::text",
                row.columns()[i].name(),
                row.columns()[i].name()
            ));
        }
    })
}

/// Opens a new session on the database `url` names.
async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, wit_pg::Error> {
    let connect = async {
        let config: tokio_postgres::Config = url.parse()?;
        config.connect(tokio_postgres::NoTls).await
    };
    match tokio::time::timeout(PG_TIMEOUT, connect).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "a pooled PostgreSQL connection ended");
                }
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(wit_pg::Error::ConnectionFailed(pg_message(&e))),
        Err(_) => Err(wit_pg::Error::ConnectionFailed(
            "timed out connecting to the database".into(),
        )),
    }
}

/// Whether `e` says the session itself is gone (closed, or ended by the server) rather than
/// that the statement failed.
fn session_gone(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.is_closed()
        || e.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::IDLE_SESSION_TIMEOUT
        })
}

impl DynoState {
    /// After a statement on `conn` failed with `e`: when the session came from the pool
    /// unused and the server had ended it, replaces it with a new one and says to run the
    /// statement again. A statement on a session that was already ended never ran, so
    /// running it again cannot apply it twice.
    async fn pg_reopen_if_stale(
        &mut self,
        conn: &Resource<PgConnection>,
        e: &tokio_postgres::Error,
    ) -> wasmtime::Result<bool> {
        let entry = self.table.get_mut(conn)?;
        let retry = entry.stale_possible && session_gone(e);
        entry.stale_possible = false;
        if !retry {
            return Ok(false);
        }
        let url = entry.url.clone();
        tracing::debug!(error = %e, "a pooled PostgreSQL session had ended; opening a new one");
        match pg_connect(&url).await {
            Ok(client) => {
                self.table.get_mut(conn)?.client = Some(client);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn pg_used(&mut self, conn: &Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.get_mut(conn)?.stale_possible = false;
        Ok(())
    }

    fn pg_client(
        &self,
        conn: &Resource<PgConnection>,
    ) -> wasmtime::Result<Result<&tokio_postgres::Client, wit_pg::Error>> {
        let conn = self.table.get(conn)?;
        Ok(conn
            .client
            .as_ref()
            .ok_or_else(|| wit_pg::Error::ConnectionFailed("the connection is closed".into())))
    }
}

fn params_of(params: Vec<DbValue>) -> Vec<Param> {
    params.into_iter().map(Param).collect()
}

impl wit_pg::Host for DynoState {}

impl wit_pg::HostConnection for DynoState {
    async fn open(&mut self) -> wasmtime::Result<Result<Resource<PgConnection>, wit_pg::Error>> {
        let Some(url) = self.addons.database_url.clone() else {
            return Ok(Err(wit_pg::Error::NotConfigured(
                "the app has no DATABASE_URL; add a database with `skiff addons:create postgres`"
                    .into(),
            )));
        };
        let open = self.addons.pg_open.clone();
        if open.load(std::sync::atomic::Ordering::Relaxed) >= OPEN_PER_INSTANCE {
            return Ok(Err(wit_pg::Error::ConnectionFailed(format!(
                "at most {OPEN_PER_INSTANCE} connections per request; reuse or drop one"
            ))));
        }
        let pool = self.addons.pool.clone();
        let (client, stale_possible) = match pool.take(&url) {
            Some(c) => (c, true),
            None => match pg_connect(&url).await {
                Ok(c) => (c, false),
                Err(e) => return Ok(Err(e)),
            },
        };
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn = PgConnection {
            client: Some(client),
            stale_possible,
            url,
            pool,
            open,
        };
        Ok(Ok(self.table.push(conn)?))
    }

    async fn query(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<DbValue>,
    ) -> wasmtime::Result<Result<wit_pg::RowSet, wit_pg::Error>> {
        let params = params_of(params);
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let mut retried = false;
        let rows = loop {
            let client = match self.pg_client(&conn)? {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            match tokio::time::timeout(PG_TIMEOUT, client.query(&statement, &refs)).await {
                Ok(Ok(rows)) => break rows,
                Ok(Err(e)) => {
                    if !retried && self.pg_reopen_if_stale(&conn, &e).await? {
                        retried = true;
                        continue;
                    }
                    return Ok(Err(query_error(&e)));
                }
                Err(_) => {
                    return Ok(Err(wit_pg::Error::QueryFailed(
                        "the statement ran past 30 seconds".into(),
                    )));
                }
            }
        };
        self.pg_used(&conn)?;
        let client = match self.pg_client(&conn)? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let describe = |cols: &[tokio_postgres::Column]| -> Vec<wit_pg::Column> {
            cols.iter()
                .map(|c| wit_pg::Column {
                    name: c.name().to_owned(),
                    data_type: c.type_().name().to_owned(),
                })
                .collect()
        };
        let columns = match rows.first() {
            Some(row) => describe(row.columns()),
            // No rows: ask the server what the columns would have been.
            None => match client.prepare(&statement).await {
                Ok(s) => describe(s.columns()),
                Err(e) => return Ok(Err(query_error(&e))),
            },
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                match column_value(row, i) {
                    Ok(v) => values.push(v),
                    Err(e) => return Ok(Err(wit_pg::Error::ValueConversion(e))),
                }
            }
            out.push(values);
        }
        Ok(Ok(wit_pg::RowSet { columns, rows: out }))
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<DbValue>,
    ) -> wasmtime::Result<Result<u64, wit_pg::Error>> {
        let params = params_of(params);
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let mut retried = false;
        loop {
            let client = match self.pg_client(&conn)? {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let outcome =
                match tokio::time::timeout(PG_TIMEOUT, client.execute(&statement, &refs)).await {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(e)) => {
                        if !retried && self.pg_reopen_if_stale(&conn, &e).await? {
                            retried = true;
                            continue;
                        }
                        Err(query_error(&e))
                    }
                    Err(_) => Err(wit_pg::Error::QueryFailed(
                        "the statement ran past 30 seconds".into(),
                    )),
                };
            self.pg_used(&conn)?;
            return Ok(outcome);
        }
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

/// Conversion failures are the guest's values; everything else is the server's answer.
fn query_error(e: &tokio_postgres::Error) -> wit_pg::Error {
    let conversion = std::error::Error::source(e).is_some_and(|s| {
        s.to_string().contains("cannot be sent as") || s.is::<std::num::TryFromIntError>()
    });
    if conversion {
        wit_pg::Error::ValueConversion(pg_message(e))
    } else {
        wit_pg::Error::QueryFailed(pg_message(e))
    }
}

impl DynoState {
    fn kv_store(&self, store: &Resource<KvHandle>) -> wasmtime::Result<Arc<dyn KvStore>> {
        Ok(self.table.get(store)?.store.clone())
    }
}

fn check_key(key: &str) -> Result<(), wit_kv::Error> {
    if key.len() > KV_MAX_KEY_BYTES {
        return Err(wit_kv::Error::StoreFailed(format!(
            "keys are at most {KV_MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl wit_kv::Host for DynoState {}

impl wit_kv::HostStore for DynoState {
    async fn open(&mut self) -> wasmtime::Result<Result<Resource<KvHandle>, wit_kv::Error>> {
        let (Some(url), Some(backend)) = (self.addons.kv_url.clone(), self.addons.kv.clone())
        else {
            return Ok(Err(wit_kv::Error::NotConfigured(
                "the app has no KV_URL; add a store with `skiff addons:create kv`".into(),
            )));
        };
        match backend.open(&url) {
            Ok(store) => Ok(Ok(self.table.push(KvHandle { store })?)),
            Err(e) => Ok(Err(wit_kv::Error::AccessDenied(e))),
        }
    }

    async fn get(
        &mut self,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wit_kv::Error>> {
        let store = self.kv_store(&store)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(store.get(&key).map_err(wit_kv::Error::StoreFailed))
    }

    async fn set(
        &mut self,
        store: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit_kv::Error>> {
        let store = self.kv_store(&store)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        if value.len() > KV_MAX_VALUE_BYTES {
            return Ok(Err(wit_kv::Error::StoreFailed(format!(
                "values are at most {KV_MAX_VALUE_BYTES} bytes"
            ))));
        }
        Ok(store.set(&key, &value).map_err(wit_kv::Error::StoreFailed))
    }

    async fn delete(
        &mut self,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), wit_kv::Error>> {
        let store = self.kv_store(&store)?;
        Ok(store.delete(&key).map_err(wit_kv::Error::StoreFailed))
    }

    async fn exists(
        &mut self,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wit_kv::Error>> {
        let store = self.kv_store(&store)?;
        Ok(store
            .get(&key)
            .map(|v| v.is_some())
            .map_err(wit_kv::Error::StoreFailed))
    }

    async fn list_keys(
        &mut self,
        store: Resource<KvHandle>,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, wit_kv::Error>> {
        let store = self.kv_store(&store)?;
        Ok(store.list_keys(&prefix).map_err(wit_kv::Error::StoreFailed))
    }

    async fn drop(&mut self, store: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}
