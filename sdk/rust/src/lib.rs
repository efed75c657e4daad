//! Skiff's guest SDK: a dyno's add-ons, reached through the host interfaces in Skiff's `wit/`
//! folder (never through sockets). The host opens what the app's own config names:
//! `DATABASE_URL` for [`pg`], `KV_URL` for [`kv`].
//!
//! ```ignore
//! let db = skiff_sdk::pg::Connection::open()?;
//! db.execute("INSERT INTO todos (title) VALUES ($1)", &["write docs".into()])?;
//! for row in db.query("SELECT id, title FROM todos", &[])?.rows() {
//!     let id: i32 = row.get("id")?;
//!     let title: String = row.get("title")?;
//! }
//! let kv = skiff_sdk::kv::Store::open()?;
//! kv.set("visits", b"1")?;
//! ```

// Bindings generated ahead of time (see ./regenerate), so an app's build compiles no code
// generator: only wit-bindgen's small runtime, which wasi crates already pull in.
#[rustfmt::skip]
mod bindings;

use std::fmt;

/// What went wrong talking to an add-on.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The app has no such add-on (no `DATABASE_URL` / `KV_URL`).
    NotConfigured(String),
    /// The add-on could not be reached or refused the app's credentials.
    Connection(String),
    /// The database rejected a statement, or the store an operation.
    Query(String),
    /// A value could not be converted between the app and the add-on.
    Conversion(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotConfigured(m) => write!(f, "add-on not configured: {m}"),
            Error::Connection(m) => write!(f, "add-on unreachable: {m}"),
            Error::Query(m) => write!(f, "{m}"),
            Error::Conversion(m) => write!(f, "value conversion: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// The app's PostgreSQL database.
pub mod pg {
    use super::Error;
    use crate::bindings::skiff::addons::postgres as wit;

    pub use wit::DbValue as Value;

    impl From<wit::Error> for Error {
        fn from(e: wit::Error) -> Self {
            match e {
                wit::Error::NotConfigured(m) => Error::NotConfigured(m),
                wit::Error::ConnectionFailed(m) => Error::Connection(m),
                wit::Error::QueryFailed(m) => Error::Query(m),
                wit::Error::ValueConversion(m) => Error::Conversion(m),
            }
        }
    }

    /// A session on the app's database (`DATABASE_URL`), from the host's pool.
    pub struct Connection(wit::Connection);

    impl Connection {
        /// Opens the app's database.
        pub fn open() -> Result<Self, Error> {
            Ok(Self(wit::Connection::open()?))
        }

        /// Runs a statement returning rows; `$1`, `$2`, ... take `params` in order.
        pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows, Error> {
            let set = self.0.query(sql, params)?;
            Ok(Rows {
                columns: set.columns.into_iter().map(|c| c.name).collect(),
                rows: set.rows,
            })
        }

        /// Runs a statement and returns how many rows it changed.
        pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
            Ok(self.0.execute(sql, params)?)
        }
    }

    /// A query's result.
    pub struct Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    }

    impl Rows {
        /// Column names, in order.
        pub fn columns(&self) -> &[String] {
            &self.columns
        }

        /// The rows, in order.
        pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
            self.rows.iter().map(|values| Row {
                columns: &self.columns,
                values,
            })
        }

        /// How many rows.
        pub fn len(&self) -> usize {
            self.rows.len()
        }

        /// Whether there are no rows.
        pub fn is_empty(&self) -> bool {
            self.rows.is_empty()
        }
    }

    /// One row; read columns by name with [`Row::get`].
    pub struct Row<'a> {
        columns: &'a [String],
        values: &'a [Value],
    }

    impl Row<'_> {
        /// The value of `column`, converted.
        pub fn get<T: FromValue>(&self, column: &str) -> Result<T, Error> {
            let i = self
                .columns
                .iter()
                .position(|c| c == column)
                .ok_or_else(|| Error::Conversion(format!("no column {column}")))?;
            T::from_value(&self.values[i])
                .map_err(|m| Error::Conversion(format!("column {column}: {m}")))
        }

        /// The raw values, in column order.
        pub fn values(&self) -> &[Value] {
            self.values
        }
    }

    /// Rust types a column converts to.
    pub trait FromValue: Sized {
        /// The conversion, or why not.
        fn from_value(v: &Value) -> Result<Self, String>;
    }

    fn mismatch(want: &str, v: &Value) -> String {
        format!("expected {want}, found {v:?}")
    }

    impl FromValue for i64 {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Int32(i) => Ok(i64::from(*i)),
                Value::Int64(i) => Ok(*i),
                other => Err(mismatch("an integer", other)),
            }
        }
    }

    impl FromValue for i32 {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Int32(i) => Ok(*i),
                Value::Int64(i) => i32::try_from(*i).map_err(|e| e.to_string()),
                other => Err(mismatch("an integer", other)),
            }
        }
    }

    impl FromValue for f64 {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Float64(f) => Ok(*f),
                Value::Int32(i) => Ok(f64::from(*i)),
                other => Err(mismatch("a float", other)),
            }
        }
    }

    impl FromValue for bool {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Boolean(b) => Ok(*b),
                other => Err(mismatch("a boolean", other)),
            }
        }
    }

    impl FromValue for String {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Text(s) => Ok(s.clone()),
                other => Err(mismatch("text", other)),
            }
        }
    }

    impl FromValue for Vec<u8> {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Binary(b) => Ok(b.clone()),
                other => Err(mismatch("bytes", other)),
            }
        }
    }

    impl<T: FromValue> FromValue for Option<T> {
        fn from_value(v: &Value) -> Result<Self, String> {
            match v {
                Value::Null => Ok(None),
                other => T::from_value(other).map(Some),
            }
        }
    }

    impl From<i32> for Value {
        fn from(v: i32) -> Self {
            Value::Int32(v)
        }
    }

    impl From<i64> for Value {
        fn from(v: i64) -> Self {
            Value::Int64(v)
        }
    }

    impl From<f64> for Value {
        fn from(v: f64) -> Self {
            Value::Float64(v)
        }
    }

    impl From<bool> for Value {
        fn from(v: bool) -> Self {
            Value::Boolean(v)
        }
    }

    impl From<&str> for Value {
        fn from(v: &str) -> Self {
            Value::Text(v.to_owned())
        }
    }

    impl From<String> for Value {
        fn from(v: String) -> Self {
            Value::Text(v)
        }
    }

    impl From<Vec<u8>> for Value {
        fn from(v: Vec<u8>) -> Self {
            Value::Binary(v)
        }
    }

    impl<T: Into<Value>> From<Option<T>> for Value {
        fn from(v: Option<T>) -> Self {
            v.map(Into::into).unwrap_or(Value::Null)
        }
    }
}

/// The app's key-value store.
pub mod kv {
    use super::Error;
    use crate::bindings::skiff::addons::kv as wit;

    impl From<wit::Error> for Error {
        fn from(e: wit::Error) -> Self {
            match e {
                wit::Error::NotConfigured(m) => Error::NotConfigured(m),
                wit::Error::AccessDenied(m) => Error::Connection(m),
                wit::Error::StoreFailed(m) => Error::Query(m),
            }
        }
    }

    /// The app's store (`KV_URL`).
    pub struct Store(wit::Store);

    impl Store {
        /// Opens the app's store.
        pub fn open() -> Result<Self, Error> {
            Ok(Self(wit::Store::open()?))
        }

        /// The value of `key`.
        pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
            Ok(self.0.get(key)?)
        }

        /// The value of `key` as text (invalid UTF-8 is replaced).
        pub fn get_string(&self, key: &str) -> Result<Option<String>, Error> {
            Ok(self
                .get(key)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        }

        /// Sets `key`.
        pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
            Ok(self.0.set(key, value.as_ref())?)
        }

        /// Removes `key`.
        pub fn delete(&self, key: &str) -> Result<(), Error> {
            Ok(self.0.delete(key)?)
        }

        /// Whether `key` is set.
        pub fn exists(&self, key: &str) -> Result<bool, Error> {
            Ok(self.0.exists(key)?)
        }

        /// Keys starting with `prefix`, in order.
        pub fn list_keys(&self, prefix: &str) -> Result<Vec<String>, Error> {
            Ok(self.0.list_keys(prefix)?)
        }
    }
}
