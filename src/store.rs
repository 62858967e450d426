//! One SQL surface over both state backends: SQLite in the state directory (rusqlite) and the
//! PostgreSQL state store (`[state] url`, the blocking `postgres` crate), so one piece of code runs
//! the same statements on either.
//!
//! Owns: [`Conn`] (a connection to either backend: `execute`, `execute_batch`, `query_row`,
//! `query_opt`, `query_map`, `query`, [`Conn::transaction`]), [`Value`] (a parameter: integer,
//! text, bytes or null; `Option<T>` is null or `T`) with the [`params!`](crate::store::params)
//! macro, [`Row`] (an owned result row with typed getters, [`FromCell`]) and [`StoreError`].
//!
//! Why this shape: the scheduler's occurrence record ([`crate::daemon::state`]) runs on it today,
//! and the journal is ported onto it next. The API copies the part of rusqlite the journal uses
//! (`execute(sql, params)`, `query_row(sql, params, |r| r.get(0))`, `.optional()`,
//! `query_map`, a transaction that derefs to the connection) with `&self` methods, so that port is
//! mostly a change of imports. A trait with two implementations was the alternative; an enum keeps
//! callers free of generics and of `dyn`, and a backend-specific step (a SQLite pragma) stays
//! possible through [`Conn::as_sqlite`]. No maintained crate does this for a sync rusqlite and a
//! sync `postgres` client (sqlx is async and would bring a second SQLite binding), hence these few
//! hundred lines.
//!
//! Statements are written once, in the subset both dialects accept:
//! - placeholders are numbered, `?1`, `?2` … (translated to `$1`, `$2` … for PostgreSQL, outside
//!   quotes; the translation and the prepared statement are cached per SQL text); a bare `?` is
//!   refused;
//! - integer columns are `BIGINT` on PostgreSQL (`INTEGER` on SQLite is 64-bit already): a
//!   parameter is an `i64`, and a value read back must fit one;
//! - `INSERT … ON CONFLICT (…) DO NOTHING` / `DO UPDATE SET x = excluded.x`, never
//!   `INSERT OR IGNORE/REPLACE`; no `rowid`; no `AUTOINCREMENT` outside SQLite-only tables;
//! - aggregates that PostgreSQL widens are cast back: `SUM(x)::bigint` is PostgreSQL only, so
//!   write `CAST(SUM(x) AS BIGINT)` (`COUNT(*)` is BIGINT already); reading a `numeric` column is
//!   an error that says so;
//! - a parameter whose type PostgreSQL cannot infer from its context is cast where it is used:
//!   `CAST(?1 AS TEXT) IS NULL OR k = ?1`, not `?1 IS NULL OR …`;
//! - booleans are stored as integers 0/1 on both (a `BOOLEAN` read back is 0/1 too);
//! - time is a parameter (the injected clock), never the server's `now()`.
//!
//! Transactions: [`Conn::transaction`] is `BEGIN IMMEDIATE` on SQLite (the write lock up front,
//! so two writers never deadlock on an upgrade) and `BEGIN ISOLATION LEVEL READ COMMITTED` on
//! PostgreSQL, where exclusivity comes from unique keys (`ON CONFLICT DO NOTHING` waits for a
//! concurrent inserter of the same key and then does nothing) and row locks (`FOR UPDATE`), not
//! from the isolation level. A [`Tx`] dropped without [`Tx::commit`] rolls back.
//!
//! PostgreSQL connections set `lock_timeout` (30 s) and `idle_in_transaction_session_timeout`
//! (10 s, so a stopped process does not hold locks), apply the store's migrations
//! ([`crate::pg::schema`]) on connecting, and reconnect on the next statement after a lost
//! connection, except inside a transaction (that statement fails; the caller retries whole).
//! The `postgres` client runs a runtime of its own: a [`Conn`] to PostgreSQL must be opened and
//! used off the async runtime's threads (tokio's blocking pool is fine); dropping it anywhere is
//! safe ([`crate::pg::OffRuntime`]).
//!
//! Rows are read into owned values ([`Cell`]) before the caller's closure sees them: one code path
//! for both backends, at the cost of a copy per value (the callers read a few rows at a time).
//!
//! Must not: rewrite SQL beyond the placeholders (a statement that needs a dialect of its own
//! belongs to its owner, behind [`Conn::backend`]), or hold a PostgreSQL client on a runtime
//! thread.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::pg::{OffRuntime, PgUrl};

/// Errors from either backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error(transparent)]
    Connect(#[from] crate::pg::PgError),
    #[error(transparent)]
    Schema(#[from] crate::pg::schema::SchemaError),
    #[error("the query returned no row")]
    NoRows,
    #[error("column {index}: wanted {want}, the row holds {found}")]
    Type {
        index: usize,
        want: &'static str,
        found: &'static str,
    },
    #[error("column {index}: PostgreSQL type {ty} is not read by imcast's store layer (cast it to BIGINT, TEXT or BYTEA)")]
    Unsupported { index: usize, ty: String },
    #[error("SQL {sql:?}: {why}")]
    Sql { sql: String, why: &'static str },
    #[error("the PostgreSQL connection was lost inside a transaction")]
    Lost,
}

impl StoreError {
    /// Whether retrying the whole operation may succeed (a busy SQLite file, a lost PostgreSQL
    /// connection, a serialization failure or deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => crate::db::is_busy(e),
            StoreError::Postgres(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code().is_some_and(|c| {
                        use postgres::error::SqlState;
                        // Class 08: connection exceptions; 57P01–03: the server shut the session.
                        c.code().starts_with("08")
                            || *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CRASH_SHUTDOWN
                            || *c == SqlState::CANNOT_CONNECT_NOW
                            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                    })
            }
            StoreError::Connect(_) | StoreError::Lost => true,
            _ => false,
        }
    }
}

/// `Result<T, StoreError>` → `Result<Option<T>, StoreError>`, as rusqlite's `OptionalExtension`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, StoreError>;
}

impl<T> OptionalExtension<T> for Result<T, StoreError> {
    fn optional(self) -> Result<Option<T>, StoreError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}
impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Bytes(v)
    }
}
impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
impl<'a, T: Copy + Into<Value<'a>>> From<&Option<T>> for Value<'a> {
    fn from(v: &Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `params![a, b, c]`: a `&[Value]` from anything with `Into<Value>`.
#[macro_export]
macro_rules! store_params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::Value::from($v)),*][..]
    };
}
pub use crate::store_params as params;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => Err(format!(
                    "an integer parameter where PostgreSQL expects {ty} (write the column BIGINT, or cast the parameter)"
                )
                .into()),
            },
            Value::Text(s) => {
                if <&str as postgres::types::ToSql>::accepts(ty) {
                    s.to_sql(ty, out)
                } else {
                    Err(format!("a text parameter where PostgreSQL expects {ty}").into())
                }
            }
            Value::Bytes(b) => {
                if *ty == Type::BYTEA {
                    b.to_sql(ty, out)
                } else {
                    Err(format!("a bytes parameter where PostgreSQL expects {ty}").into())
                }
            }
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        // Checked per value in `to_sql`, with a message naming both types.
        true
    }

    postgres::types::to_sql_checked!();
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "NULL",
            Cell::Int(_) => "an integer",
            Cell::Real(_) => "a real",
            Cell::Text(_) => "text",
            Cell::Bytes(_) => "bytes",
        }
    }
}

/// A type a [`Cell`] reads into.
pub trait FromCell: Sized {
    /// `None`: the cell holds another type (`want` names this one).
    fn from_cell(c: &Cell) -> Option<Self>;
    fn want() -> &'static str;
}

impl FromCell for i64 {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "an integer"
    }
}
impl FromCell for u64 {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "a non-negative integer"
    }
}
impl FromCell for u32 {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Int(i) => u32::try_from(*i).ok(),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "an integer in 0..2^32"
    }
}
impl FromCell for bool {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "an integer 0/1"
    }
}
impl FromCell for f64 {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Real(f) => Some(*f),
            Cell::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "a number"
    }
}
impl FromCell for String {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "text"
    }
}
impl FromCell for Vec<u8> {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
    fn want() -> &'static str {
        "bytes"
    }
}
impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: &Cell) -> Option<Self> {
        match c {
            Cell::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
    fn want() -> &'static str {
        T::want()
    }
}

/// One result row, read into owned values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    cells: Vec<Cell>,
}

impl Row {
    /// Column `index` (from 0) as `T`.
    pub fn get<T: FromCell>(&self, index: usize) -> Result<T, StoreError> {
        let c = self.cells.get(index).ok_or(StoreError::Type {
            index,
            want: T::want(),
            found: "no such column",
        })?;
        T::from_cell(c).ok_or(StoreError::Type {
            index,
            want: T::want(),
            found: c.kind(),
        })
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// Which database a [`Conn`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection to either backend. `Send`, not `Sync` (as `rusqlite::Connection`).
pub struct Conn {
    inner: Inner,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<Pg>>),
}

struct Pg {
    url: PgUrl,
    client: Option<OffRuntime<postgres::Client>>,
    /// SQL text as written → prepared statement (placeholders translated).
    stmts: HashMap<String, postgres::Statement>,
    in_tx: bool,
}

impl Pg {
    fn client(&mut self) -> Result<&mut postgres::Client, StoreError> {
        let lost = self.client.as_ref().is_none_or(|c| c.is_closed());
        if lost {
            if self.in_tx {
                return Err(StoreError::Lost);
            }
            self.stmts.clear();
            self.client = None;
            self.client = Some(OffRuntime::new(pg_connect(&self.url)?));
        }
        match self.client.as_deref_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Lost),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
                return Ok(s.clone());
            }
        }
        let translated = translate(sql)?;
        let st = self.client()?.prepare(&translated)?;
        self.stmts.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = self.client()?.query(&st, &refs)?;
        rows.iter().map(pg_row).collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<usize, StoreError> {
        let st = self.statement(sql)?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let n = self.client()?.execute(&st, &refs)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

fn pg_connect(url: &PgUrl) -> Result<postgres::Client, StoreError> {
    let mut client = crate::pg::connect(url)?;
    client.batch_execute(
        "SET lock_timeout = '30s'; SET idle_in_transaction_session_timeout = '10s'",
    )?;
    let m = crate::pg::schema::migrate(&mut client)?;
    for (v, name) in &m.applied {
        tracing::info!(version = v, "state store: applied migration: {name}");
    }
    Ok(client)
}

fn pg_row(r: &postgres::Row) -> Result<Row, StoreError> {
    use postgres::types::Type;
    let mut cells = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let cell = match *ty {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Cell::Int(i64::from(v))),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Cell::Int(i64::from(v))),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(i64::from(v))),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Cell::Real),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Cell::Real(f64::from(v))),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                r.try_get::<_, Option<String>>(i)?.map(Cell::Text)
            }
            _ => {
                return Err(StoreError::Unsupported {
                    index: i,
                    ty: ty.to_string(),
                })
            }
        };
        cells.push(cell.unwrap_or(Cell::Null));
    }
    Ok(Row { cells })
}

fn sqlite_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut cells = Vec::with_capacity(n);
    for i in 0..n {
        cells.push(match r.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(v) => Cell::Int(v),
            ValueRef::Real(v) => Cell::Real(v),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
        });
    }
    Ok(Row { cells })
}

/// `?N` → `$N` outside string literals and quoted identifiers; a bare `?` is an error.
pub fn translate(sql: &str) -> Result<String, StoreError> {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '?' => {
                    if !chars.peek().is_some_and(char::is_ascii_digit) {
                        return Err(StoreError::Sql {
                            sql: sql.to_string(),
                            why: "a bare `?`: number the placeholders (?1, ?2 …)",
                        });
                    }
                    out.push('$');
                }
                _ => out.push(c),
            },
        }
    }
    Ok(out)
}

impl Conn {
    /// A SQLite connection (opened by its owner, e.g. [`crate::db::open`]).
    pub fn sqlite(c: rusqlite::Connection) -> Conn {
        Conn {
            inner: Inner::Sqlite(c),
        }
    }

    /// Connect to the PostgreSQL store (blocking: off the async runtime), applying the store's
    /// migrations (a newer schema is refused).
    pub fn postgres(url: &PgUrl) -> Result<Conn, StoreError> {
        let client = pg_connect(url)?;
        Ok(Conn {
            inner: Inner::Postgres(Box::new(RefCell::new(Pg {
                url: url.clone(),
                client: Some(OffRuntime::new(client)),
                stmts: HashMap::new(),
                in_tx: false,
            }))),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection, for a step only SQLite has (a pragma).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Run one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<usize, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params.iter()))?),
            Inner::Postgres(p) => p.borrow_mut().execute(sql, params),
        }
    }

    /// Run statements without parameters, separated by `;` (schema, `BEGIN`/`COMMIT`).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(p) => Ok(p.borrow_mut().client()?.batch_execute(sql)?),
        }
    }

    /// Every row of a query.
    pub fn query(&self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let rows = st
                    .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                        sqlite_row(r, n)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            }
            Inner::Postgres(p) => p.borrow_mut().query(sql, params),
        }
    }

    /// Every row of a query, through `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row of a query through `f`; [`StoreError::NoRows`] when there is none (see
    /// [`OptionalExtension::optional`] and [`Conn::query_opt`]).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.query(sql, params)?.first() {
            Some(r) => f(r),
            None => Err(StoreError::NoRows),
        }
    }

    /// The first row of a query through `f`, if any.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.query_row(sql, params, f).optional()
    }

    /// Begin a transaction (SQLite: `IMMEDIATE`; PostgreSQL: `READ COMMITTED`; see the module
    /// doc). Statements run on the returned [`Tx`] (it derefs to this connection).
    pub fn transaction(&self) -> Result<Tx<'_>, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Inner::Postgres(p) => {
                let mut p = p.borrow_mut();
                if p.in_tx {
                    return Err(StoreError::Sql {
                        sql: "BEGIN".into(),
                        why: "a transaction is already open on this connection",
                    });
                }
                p.client()?
                    .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
                p.in_tx = true;
            }
        }
        Ok(Tx {
            conn: self,
            open: true,
        })
    }

    fn end(&self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(p) => {
                let mut p = p.borrow_mut();
                let r = match p.client.as_deref_mut() {
                    Some(c) if !c.is_closed() => c.batch_execute(sql).map_err(StoreError::from),
                    _ => Err(StoreError::Lost),
                };
                p.in_tx = false;
                if r.is_err() {
                    // A connection whose transaction end failed is not reused.
                    p.client = None;
                }
                r
            }
        }
    }
}

/// An open transaction; rolls back when dropped without [`Tx::commit`].
pub struct Tx<'c> {
    conn: &'c Conn,
    open: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.conn.end("COMMIT")
    }

    pub fn rollback(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.conn.end("ROLLBACK")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.end("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pg::test_db;

    #[test]
    fn placeholders_translate_outside_quotes_only() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?\" = ?12").expect("ok"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?\" = $12"
        );
        assert!(translate("SELECT ? ").is_err());
    }

    const SCHEMA: &str = "CREATE TABLE kv(
            k TEXT PRIMARY KEY,
            n BIGINT NOT NULL,
            opt BIGINT,
            b BYTEA_OR_BLOB,
            flag BIGINT NOT NULL DEFAULT 0)";

    fn schema(c: &Conn) {
        let blob = match c.backend() {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        };
        c.execute_batch(&SCHEMA.replace("BYTEA_OR_BLOB", blob))
            .expect("schema");
    }

    /// The same statements on either backend, with the same answers.
    fn same_statements(c: &Conn) {
        schema(c);
        let ins = "INSERT INTO kv (k, n, opt, b, flag) VALUES (?1, ?2, ?3, ?4, ?5)
                   ON CONFLICT (k) DO NOTHING";
        let none: Option<i64> = None;
        assert_eq!(
            c.execute(ins, params!["a", 1i64, none, &b"\x00\xff"[..], true])
                .expect("ins"),
            1
        );
        assert_eq!(
            c.execute(
                ins,
                params!["a", 2i64, Some(5i64), none.map(|_| &b""[..]), false]
            )
            .expect("dup"),
            0,
            "a second insert of one key changes nothing"
        );
        c.execute(
            ins,
            params!["b", i64::MAX, Some(-7i64), None::<&[u8]>, 0i64],
        )
        .expect("ins b");
        let up = "INSERT INTO kv (k, n) VALUES (?1, ?2)
                  ON CONFLICT (k) DO UPDATE SET n = excluded.n";
        c.execute(up, params!["b", 3i64]).expect("upsert");
        let rows = c
            .query_map(
                "SELECT k, n, opt, b, flag FROM kv WHERE (CAST(?1 AS TEXT) IS NULL OR k = ?1) ORDER BY k",
                params![None::<&str>],
                |r| {
                    Ok((
                        r.get::<String>(0)?,
                        r.get::<i64>(1)?,
                        r.get::<Option<i64>>(2)?,
                        r.get::<Option<Vec<u8>>>(3)?,
                        r.get::<bool>(4)?,
                    ))
                },
            )
            .expect("select");
        assert_eq!(
            rows,
            vec![
                ("a".into(), 1, None, Some(vec![0, 255]), true),
                ("b".into(), 3, Some(-7), None, false),
            ]
        );
        let only_b = c
            .query_map(
                "SELECT k FROM kv WHERE (CAST(?1 AS TEXT) IS NULL OR k = ?1)",
                params!["b"],
                |r| r.get::<String>(0),
            )
            .expect("filter");
        assert_eq!(only_b, vec!["b".to_string()]);
        let (count, sum): (i64, i64) = c
            .query_row(
                "SELECT COUNT(*), CAST(SUM(n) AS BIGINT) FROM kv WHERE k IN (?1, ?2)",
                params!["a", "b"],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("aggregate");
        assert_eq!((count, sum), (2, 4));
        assert!(c
            .query_opt("SELECT n FROM kv WHERE k = ?1", params!["zz"], |r| r
                .get::<i64>(0))
            .expect("none")
            .is_none());
        // A wrong type is an error naming the column, not a panic.
        let e = c
            .query_row("SELECT k FROM kv WHERE k = ?1", params!["a"], |r| {
                r.get::<i64>(0)
            })
            .expect_err("text is not an integer");
        assert!(e.to_string().contains("column 0"), "{e}");
        // A transaction dropped uncommitted leaves nothing; a committed one stays.
        {
            let tx = c.transaction().expect("begin");
            tx.execute("UPDATE kv SET n = ?2 WHERE k = ?1", params!["a", 100i64])
                .expect("upd");
        }
        let tx = c.transaction().expect("begin");
        tx.execute("DELETE FROM kv WHERE k = ?1", params!["b"])
            .expect("del");
        tx.commit().expect("commit");
        let left = c
            .query_map("SELECT k, n FROM kv ORDER BY k", params![], |r| {
                Ok((r.get::<String>(0)?, r.get::<u64>(1)?))
            })
            .expect("left");
        assert_eq!(left, vec![("a".to_string(), 1)]);
    }

    #[test]
    fn same_statements_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Conn::sqlite(crate::db::open(&dir.path().join("t.db"), "NORMAL").expect("open"));
        same_statements(&c);
    }

    #[test]
    fn same_statements_on_postgres() {
        let Some(db) = test_db("store_same") else {
            return;
        };
        let url = db.url().clone();
        std::thread::spawn(move || {
            let c = Conn::postgres(&url).expect("connect");
            same_statements(&c);
            // A numeric SUM (no cast) is refused with a message saying what to do.
            let e = c
                .query_row("SELECT SUM(n) FROM kv", params![], |r| r.get::<i64>(0))
                .expect_err("numeric");
            assert!(e.to_string().contains("cast it"), "{e}");
            // A lost connection is reopened by the next statement outside a transaction.
            let pid: i64 = c
                .query_row("SELECT CAST(pg_backend_pid() AS BIGINT)", params![], |r| {
                    r.get(0)
                })
                .expect("pid");
            let killer = Conn::postgres(&url).expect("second connection");
            killer
                .execute(
                    "SELECT pg_terminate_backend(CAST(?1 AS INTEGER))",
                    params![pid],
                )
                .expect("terminate");
            // Terminating is asynchronous: wait until the backend is gone.
            let gone = (0..200).any(|_| {
                let left: i64 = killer
                    .query_row(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = CAST(?1 AS INTEGER)",
                        params![pid],
                        |r| r.get(0),
                    )
                    .expect("pg_stat_activity");
                if left > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                left == 0
            });
            assert!(gone, "the backend was not terminated");
            let e = c
                .query("SELECT 1", params![])
                .expect_err("the connection is gone");
            assert!(e.is_transient(), "{e:?}");
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM kv", params![], |r| r.get(0))
                .expect("reconnected");
            assert_eq!(n, 1);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn concurrent_inserts_of_one_key_on_postgres_win_once() {
        let Some(db) = test_db("store_race") else {
            return;
        };
        let url = db.url().clone();
        {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = Conn::postgres(&url).expect("connect");
                schema(&c);
            })
            .join()
            .expect("schema");
        }
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let won: usize = (0..4)
            .map(|i| {
                let url = url.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let c = Conn::postgres(&url).expect("connect");
                    let mut wins = 0;
                    for k in 0..50i64 {
                        b.wait();
                        let tx = c.transaction().expect("begin");
                        let n = tx
                            .execute(
                                "INSERT INTO kv (k, n) VALUES (?1, ?2) ON CONFLICT (k) DO NOTHING",
                                params![&format!("k{k}"), i64::from(i)],
                            )
                            .expect("insert");
                        tx.commit().expect("commit");
                        wins += n;
                    }
                    wins
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(won, 50, "each key inserted by exactly one of four writers");
    }
}
