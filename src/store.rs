//! One SQL surface over both state backends: SQLite in the state directory (rusqlite) and the
//! PostgreSQL state store (`[state] url`, the blocking `postgres` crate), so one piece of code runs
//! the same statements on either.
//!
//! Owns: [`Conn`] (a connection to either backend: `execute`, `execute_batch`, `query_row`,
//! `query_opt`, `query_map`, `query`, the streaming [`Conn::for_each`], [`Conn::prepare`] for a
//! statement run in a loop, [`Conn::transaction`], and the PostgreSQL-only bulk write
//! [`Conn::copy_in`], a binary `COPY … FROM STDIN`), [`Value`] (a parameter: integer, text, bytes
//! or null; `Option<T>` is null or `T`; PostgreSQL-only arrays `BIGINT[]`/`TEXT[]`/`BYTEA[]` for
//! a bulk write through `unnest`) with the [`params!`](crate::store::params) macro, [`Row`] (an
//! owned result row with typed getters, [`FromCell`]), [`RowRef`] (a row borrowed during a scan)
//! and [`StoreError`].
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
//! connection, except inside a transaction (that statement fails; the caller retries whole). A
//! reconnect re-applies the connection's session statements ([`Conn::postgres_with`]: a reader's
//! read-only session stays read only).
//! The `postgres` client runs a runtime of its own: a [`Conn`] to PostgreSQL must be opened and
//! used off the async runtime's threads (tokio's blocking pool is fine); dropping it anywhere is
//! safe ([`crate::pg::OffRuntime`]).
//!
//! Rows are read into owned values ([`Cell`]) before the caller's closure sees them: one code path
//! for both backends, at the cost of a copy per value (the callers read a few rows at a time).
//! A scan of many rows uses [`Conn::for_each`] instead: one row at a time, borrowed from the
//! backend ([`RowRef`]: integers without a copy, text and bytes as `&str`/`&[u8]`), never
//! collected — a run of ten million recipients is read in flat memory on both backends.
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
    /// A value read back that its owner could not understand (a malformed packed list).
    #[error("{0}")]
    Value(Box<dyn std::error::Error + Send + Sync>),
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

impl StoreError {
    /// Whether PostgreSQL gave up waiting on another session: a lock held longer than
    /// `lock_timeout` (55P03), a `statement_timeout` (57014), a deadlock or a serialization
    /// failure. Another process holds what this one wants; trying again later may succeed (the
    /// PostgreSQL counterpart of SQLite's SQLITE_BUSY).
    pub fn is_lock_wait(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            StoreError::Postgres(e) => e.code().is_some_and(|c| {
                *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::QUERY_CANCELED
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
            }),
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
    /// PostgreSQL only: a `BIGINT[]` (for `unnest`, a bulk write of many rows in one statement).
    Ints(&'a [Option<i64>]),
    /// PostgreSQL only: a `TEXT[]`.
    Texts(&'a [Option<&'a str>]),
    /// PostgreSQL only: a `BYTEA[]`.
    BytesArray(&'a [Option<&'a [u8]>]),
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

/// A value a parameter borrows from ([`params!`](crate::store::params) takes each argument by
/// reference, so an owned `String`, `Vec<u8>` or a temporary such as `ts(now)` is a parameter
/// as it is, for the statement it is written in).
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}
macro_rules! to_value_via_from {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::from(*self)
            }
        }
    )*};
}
to_value_via_from!(i64, i32, u32, bool);
impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// `params![a, b, c]`: a `&[Value]` borrowing each argument ([`ToValue`]).
#[macro_export]
macro_rules! store_params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::ToValue::to_value(&$v)),*][..]
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
            Value::Ints(_) | Value::Texts(_) | Value::BytesArray(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "an array parameter is PostgreSQL only (SQLite has no arrays: write one row per statement)"
                        .into(),
                ))
            }
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
            Value::Ints(v) => array_to_sql(v, ty, out, "BIGINT[]"),
            Value::Texts(v) => array_to_sql(v, ty, out, "TEXT[]"),
            Value::BytesArray(v) => array_to_sql(v, ty, out, "BYTEA[]"),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        // Checked per value in `to_sql`, with a message naming both types.
        true
    }

    postgres::types::to_sql_checked!();
}

/// An array parameter, checked against the type PostgreSQL expects (`want` names ours).
fn array_to_sql<T: postgres::types::ToSql>(
    v: &[T],
    ty: &postgres::types::Type,
    out: &mut bytes::BytesMut,
    want: &str,
) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
    if <&[T] as postgres::types::ToSql>::accepts(ty) {
        <&[T] as postgres::types::ToSql>::to_sql(&v, ty, out)
    } else {
        Err(format!(
            "a {want} parameter where PostgreSQL expects {ty} (cast it: CAST(?1 AS {want}))"
        )
        .into())
    }
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
        let c = self.cells.get(index).ok_or_else(|| StoreError::Type {
            index,
            want: T::want(),
            found: "no such column",
        })?;
        T::from_cell(c).ok_or_else(|| StoreError::Type {
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

/// The PostgreSQL client of a [`Conn`], or an error when a streaming scan ([`Conn::for_each`])
/// on the same connection is still reading (the protocol allows one statement at a time: read
/// what the scan's rows need before it, or with it).
/// Rows of a simple query: each column as text (None: NULL).
pub type TextRows = Vec<Vec<Option<String>>>;

/// The rows of the last statement of a simple query, as text.
fn last_rows(messages: Vec<postgres::SimpleQueryMessage>) -> TextRows {
    let (mut done, mut rows) = (Vec::new(), Vec::new());
    for m in messages {
        match m {
            postgres::SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_string))
                    .collect::<Vec<_>>(),
            ),
            postgres::SimpleQueryMessage::CommandComplete(_) => done = std::mem::take(&mut rows),
            _ => {}
        }
    }
    done
}

/// `v` as an SQL string literal (standard-conforming strings: a quote is doubled).
pub fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn held(p: &RefCell<Pg>) -> Result<std::cell::RefMut<'_, Pg>, StoreError> {
    p.try_borrow_mut().map_err(|_| StoreError::Sql {
        sql: String::new(),
        why: "a statement on a PostgreSQL connection while a streaming scan (for_each) on it is \
              still reading",
    })
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
    /// Session statements run on every (re)connect, after the store's own settings (e.g. a
    /// reader's `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`): a silent reconnect
    /// keeps the session what its owner made it.
    on_connect: Vec<String>,
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
            self.client = Some(OffRuntime::new(pg_connect(&self.url, &self.on_connect)?));
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

fn pg_connect<S: AsRef<str>>(
    url: &PgUrl,
    on_connect: &[S],
) -> Result<postgres::Client, StoreError> {
    let mut client = crate::pg::connect(url)?;
    client.batch_execute(
        "SET lock_timeout = '30s'; SET idle_in_transaction_session_timeout = '10s'",
    )?;
    let m = crate::pg::schema::migrate(&mut client)?;
    for (v, name) in &m.applied {
        tracing::info!(version = v, "state store: applied migration: {name}");
    }
    // After the migrations: a read-only session could not apply them.
    for sql in on_connect {
        client.batch_execute(sql.as_ref())?;
    }
    Ok(client)
}

fn pg_row(r: &postgres::Row) -> Result<Row, StoreError> {
    let mut cells = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        cells.push(pg_cell(r, i)?);
    }
    Ok(Row { cells })
}

fn pg_cell(r: &postgres::Row, i: usize) -> Result<Cell, StoreError> {
    use postgres::types::Type;
    let ty = r
        .columns()
        .get(i)
        .ok_or_else(|| StoreError::Type {
            index: i,
            want: "a column",
            found: "no such column",
        })?
        .type_();
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
    Ok(cell.unwrap_or(Cell::Null))
}

fn sqlite_cell(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Cell> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(v) => Cell::Int(v),
        ValueRef::Real(v) => Cell::Real(v),
        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
    })
}

/// A result row borrowed from the backend while [`Conn::for_each`] is on it: typed getters
/// ([`RowRef::get`], owned as [`Row::get`]) and borrowed text and bytes ([`RowRef::str`],
/// [`RowRef::bytes`], no allocation), for scans of millions of rows.
pub struct RowRef<'r> {
    inner: RowRefInner<'r>,
}

enum RowRefInner<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl RowRef<'_> {
    /// Column `index` (from 0) as `T` (an integer reads without an allocation).
    pub fn get<T: FromCell>(&self, index: usize) -> Result<T, StoreError> {
        let c = match &self.inner {
            // Integers and NULL (most of a scan's cells) without `sqlite_cell`'s general path.
            RowRefInner::Sqlite(r) => match r.get_ref(index)? {
                rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                rusqlite::types::ValueRef::Null => Cell::Null,
                _ => sqlite_cell(r, index)?,
            },
            RowRefInner::Postgres(r) => pg_cell(r, index)?,
        };
        T::from_cell(&c).ok_or_else(|| StoreError::Type {
            index,
            want: T::want(),
            found: c.kind(),
        })
    }

    /// Column `index` as text borrowed from the row (None: NULL).
    pub fn str(&self, index: usize) -> Result<Option<&str>, StoreError> {
        match &self.inner {
            RowRefInner::Sqlite(r) => match r.get_ref(index)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                rusqlite::types::ValueRef::Text(t) => {
                    std::str::from_utf8(t)
                        .map(Some)
                        .map_err(|_| StoreError::Type {
                            index,
                            want: "UTF-8 text",
                            found: "text that is not UTF-8",
                        })
                }
                v => Err(StoreError::Type {
                    index,
                    want: "text",
                    found: sqlite_kind(v),
                }),
            },
            RowRefInner::Postgres(r) => Ok(r.try_get::<_, Option<&str>>(index)?),
        }
    }

    /// Column `index` as bytes borrowed from the row (None: NULL).
    pub fn bytes(&self, index: usize) -> Result<Option<&[u8]>, StoreError> {
        match &self.inner {
            RowRefInner::Sqlite(r) => match r.get_ref(index)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                rusqlite::types::ValueRef::Blob(b) => Ok(Some(b)),
                v => Err(StoreError::Type {
                    index,
                    want: "bytes",
                    found: sqlite_kind(v),
                }),
            },
            RowRefInner::Postgres(r) => Ok(r.try_get::<_, Option<&[u8]>>(index)?),
        }
    }
}

fn sqlite_kind(v: rusqlite::types::ValueRef<'_>) -> &'static str {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "bytes",
    }
}

/// A statement prepared once and run many times ([`Conn::prepare`]): on SQLite the prepared
/// statement itself (from the connection's cache), on PostgreSQL the connection's cached one.
pub struct Stmt<'c> {
    inner: StmtInner<'c>,
}

enum StmtInner<'c> {
    /// The statement and, per parameter, the integer or NULL bound to it now (None: unknown, or
    /// text/bytes, which are bound every time).
    Sqlite(rusqlite::CachedStatement<'c>, Vec<Option<Bound>>),
    Postgres(&'c RefCell<Pg>, String),
}

/// A scalar bound to a SQLite parameter (see [`Stmt::execute`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Null,
    Int(i64),
}

impl Stmt<'_> {
    /// Run it with `params`; the number of rows it changed.
    ///
    /// SQLite: a parameter keeps its binding from one execution to the next, so an integer or
    /// NULL equal to the one already bound is not bound again. A loop writing many rows mostly
    /// changes a key or two per row (the rest is the call's or the run's); binding only those
    /// measured about a quarter off the per-row cost of the journal's row updates.
    pub fn execute(&mut self, params: &[Value<'_>]) -> Result<usize, StoreError> {
        match &mut self.inner {
            StmtInner::Sqlite(st, bound) => {
                let want = st.parameter_count();
                if params.len() != want {
                    bound.iter_mut().for_each(|b| *b = None);
                    return Err(rusqlite::Error::InvalidParameterCount(params.len(), want).into());
                }
                bound.resize(want, None);
                for (i, (p, b)) in params.iter().zip(bound.iter_mut()).enumerate() {
                    let now = match *p {
                        Value::Null => Some(Bound::Null),
                        Value::Int(v) => Some(Bound::Int(v)),
                        _ => None,
                    };
                    if now.is_some() && *b == now {
                        continue;
                    }
                    // Forget the binding first: if binding fails it is unknown.
                    *b = None;
                    st.raw_bind_parameter(i + 1, p)?;
                    *b = now;
                }
                Ok(st.raw_execute()?)
            }
            StmtInner::Postgres(p, sql) => held(p)?.execute(sql, params),
        }
    }

    /// Its first row through `f`, if any.
    pub fn query_opt<T>(
        &mut self,
        params: &[Value<'_>],
        f: impl FnOnce(&RowRef<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match &mut self.inner {
            StmtInner::Sqlite(st, bound) => {
                // `query` binds every parameter afresh.
                bound.iter_mut().for_each(|b| *b = None);
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                match rows.next()? {
                    Some(r) => f(&RowRef {
                        inner: RowRefInner::Sqlite(r),
                    })
                    .map(Some),
                    None => Ok(None),
                }
            }
            StmtInner::Postgres(p, sql) => {
                let mut p = held(p)?;
                let st = p.statement(sql)?;
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                match p.client()?.query_opt(&st, &refs)? {
                    Some(r) => f(&RowRef {
                        inner: RowRefInner::Postgres(&r),
                    })
                    .map(Some),
                    None => Ok(None),
                }
            }
        }
    }
}

fn sqlite_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    let mut cells = Vec::with_capacity(n);
    for i in 0..n {
        cells.push(sqlite_cell(r, i)?);
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
        Self::postgres_with(url, &[])
    }

    /// [`Conn::postgres`], then `on_connect` (session statements without parameters, e.g.
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`) on this session and on every
    /// session a silent reconnect opens later, so the connection keeps its settings.
    pub fn postgres_with(url: &PgUrl, on_connect: &[&str]) -> Result<Conn, StoreError> {
        let client = pg_connect(url, on_connect)?;
        Ok(Conn {
            inner: Inner::Postgres(Box::new(RefCell::new(Pg {
                url: url.clone(),
                client: Some(OffRuntime::new(client)),
                stmts: HashMap::new(),
                in_tx: false,
                on_connect: on_connect.iter().map(|s| (*s).to_string()).collect(),
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
            Inner::Postgres(p) => held(p)?.execute(sql, params),
        }
    }

    /// Run statements without parameters, separated by `;` (schema, `BEGIN`/`COMMIT`).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(p) => Ok(held(p)?.client()?.batch_execute(sql)?),
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
            Inner::Postgres(p) => held(p)?.query(sql, params),
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

    /// Every row of a query streamed through `f`, one at a time, never collected (SQLite: the
    /// prepared statement's rows; PostgreSQL: `query_raw`'s row stream): memory stays flat
    /// however many rows the query returns. The outer result is the store's (preparing,
    /// fetching); the inner one is `f`'s first error, which stops the scan.
    pub fn for_each<E>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&RowRef<'_>) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(r) = rows.next()? {
                    if let Err(e) = f(&RowRef {
                        inner: RowRefInner::Sqlite(r),
                    }) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(()))
            }
            Inner::Postgres(p) => {
                use postgres::fallible_iterator::FallibleIterator;
                let mut p = held(p)?;
                let st = p.statement(sql)?;
                let mut rows = p.client()?.query_raw(&st, params.iter())?;
                while let Some(r) = rows.next()? {
                    if let Err(e) = f(&RowRef {
                        inner: RowRefInner::Postgres(&r),
                    }) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(()))
            }
        }
    }

    /// PostgreSQL only: many rows into one table through one binary `COPY … FROM STDIN`
    /// (`sql`: `COPY t(a, b) FROM STDIN (FORMAT binary)`, `types`: the columns' types in that
    /// order), each row given to [`CopyRows::row`] by `rows`. The fastest bulk write PostgreSQL
    /// has (no statement per row, no arrays to build); inside the caller's transaction like any
    /// statement. An error from `rows` aborts the copy. Returns the rows written.
    pub fn copy_in(
        &self,
        sql: &str,
        types: &[CopyType],
        rows: impl FnOnce(&mut CopyRows<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let Inner::Postgres(p) = &self.inner else {
            return Err(StoreError::Sql {
                sql: sql.to_string(),
                why: "COPY is PostgreSQL only (SQLite: a prepared insert, one row per execution)",
            });
        };
        let mut p = held(p)?;
        let w = p.client()?.copy_in(sql)?;
        let mut rows_w = CopyRows {
            w,
            types: types.to_vec(),
            buf: Vec::with_capacity(COPY_CHUNK + 4096),
            rows: 0,
        };
        // The binary format's header: signature, flags, header extension length.
        rows_w.buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        rows_w.buf.extend_from_slice(&0i32.to_be_bytes());
        rows_w.buf.extend_from_slice(&0i32.to_be_bytes());
        rows(&mut rows_w)?;
        // The trailer: a field count of -1.
        rows_w.buf.extend_from_slice(&(-1i16).to_be_bytes());
        rows_w.send()?;
        let CopyRows { w, rows, .. } = rows_w;
        let n = w.finish()?;
        debug_assert_eq!(n, rows);
        Ok(n)
    }

    /// A statement to run many times (a loop writing one row per statement).
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(Stmt {
                inner: StmtInner::Sqlite(c.prepare_cached(sql)?, Vec::new()),
            }),
            Inner::Postgres(p) => {
                held(p)?.statement(sql)?;
                Ok(Stmt {
                    inner: StmtInner::Postgres(p, sql.to_string()),
                })
            }
        }
    }

    /// Begin a transaction (SQLite: `IMMEDIATE`; PostgreSQL: `READ COMMITTED`; see the module
    /// doc). Statements run on the returned [`Tx`] (it derefs to this connection).
    pub fn transaction(&self) -> Result<Tx<'_>, StoreError> {
        self.transaction_then("")
    }

    /// [`Conn::transaction`], then on PostgreSQL the statements `pg_first` (parameterless,
    /// `;`-separated, SQL of the caller's own, never input) in the same round trip as the
    /// `BEGIN`: a journal write's advisory lock and its commit's durability setting cost no trip
    /// of their own. If they fail, the transaction is rolled back before the error returns.
    /// SQLite runs nothing more.
    pub fn transaction_then(&self, pg_first: &str) -> Result<Tx<'_>, StoreError> {
        Ok(self.transaction_then_read(pg_first, None)?.0)
    }

    /// [`Conn::transaction_then`], and on PostgreSQL `pg_read` too (one query after
    /// `pg_first`, in the same round trip; SQL of the caller's own, any value in it quoted with
    /// [`quote_literal`]): its rows, each column as text (None: NULL). SQLite runs neither and
    /// returns None: the caller reads the usual way.
    pub fn transaction_then_read(
        &self,
        pg_first: &str,
        pg_read: Option<&str>,
    ) -> Result<(Tx<'_>, Option<TextRows>), StoreError> {
        let mut read = None;
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Inner::Postgres(p) => {
                let mut p = held(p)?;
                if p.in_tx {
                    return Err(StoreError::Sql {
                        sql: "BEGIN".into(),
                        why: "a transaction is already open on this connection",
                    });
                }
                let client = p.client()?;
                let mut sql = if pg_first.is_empty() {
                    "BEGIN ISOLATION LEVEL READ COMMITTED".to_string()
                } else {
                    format!("BEGIN ISOLATION LEVEL READ COMMITTED; {pg_first}")
                };
                let res = match pg_read {
                    None => client.batch_execute(&sql).map(|()| None),
                    Some(q) => {
                        sql = format!("{}; {q}", sql.trim_end().trim_end_matches(';'));
                        client.simple_query(&sql).map(|m| Some(last_rows(m)))
                    }
                };
                match res {
                    Ok(rows) => read = rows,
                    Err(e) => {
                        // The BEGIN may have run: end it here, as a dropped Tx would.
                        if !client.is_closed() && client.batch_execute("ROLLBACK").is_err() {
                            p.client = None;
                        }
                        return Err(e.into());
                    }
                }
                p.in_tx = true;
            }
        }
        Ok((
            Tx {
                conn: self,
                open: true,
            },
            read,
        ))
    }

    /// Several reads that must see one state of the database (a scan in several statements
    /// while another process writes): SQLite a deferred `BEGIN` (a WAL reader's snapshot, taken
    /// at its first read; writers go on), PostgreSQL `REPEATABLE READ READ ONLY`. Ends when the
    /// returned guard is dropped. None when a transaction is already open on this connection
    /// (its statements see what it sees).
    pub fn snapshot(&self) -> Result<Option<Snapshot<'_>>, StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                if !c.is_autocommit() {
                    return Ok(None);
                }
                c.execute_batch("BEGIN")?;
            }
            Inner::Postgres(p) => {
                let mut p = held(p)?;
                if p.in_tx {
                    return Ok(None);
                }
                p.client()?
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                p.in_tx = true;
            }
        }
        Ok(Some(Snapshot { conn: self }))
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

/// A column's type in a binary COPY ([`Conn::copy_in`]): `BIGINT`, `TEXT` or `BYTEA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyType {
    Int,
    Text,
    Bytes,
}

/// Bytes of a [`Conn::copy_in`] gathered before they are handed to the connection.
const COPY_CHUNK: usize = 64 << 10;

/// The rows of a [`Conn::copy_in`] being written: encoded here in PostgreSQL's binary COPY
/// format (a field count, then each field's length and big-endian bytes; -1 for NULL) and sent
/// [`COPY_CHUNK`] at a time. The `postgres` crate's own binary writer runs its runtime once a
/// row (measured: about 3,300 instructions a row, a tenth of a run's client CPU on PostgreSQL).
pub struct CopyRows<'c> {
    w: postgres::CopyInWriter<'c>,
    types: Vec<CopyType>,
    buf: Vec<u8>,
    rows: u64,
}

impl CopyRows<'_> {
    /// One row: a value per column, in the COPY's column order (`Value::Int`, `Value::Text`,
    /// `Value::Bytes` or `Value::Null`, as the column's [`CopyType`]).
    pub fn row(&mut self, values: &[Value<'_>]) -> Result<(), StoreError> {
        let bad = |why| StoreError::Sql {
            sql: String::new(),
            why,
        };
        if values.len() != self.types.len() {
            return Err(bad(
                "a COPY row with another number of values than the COPY has columns",
            ));
        }
        let fields = i16::try_from(values.len()).map_err(|_| bad("a COPY of too many columns"))?;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        for (v, t) in values.iter().zip(&self.types) {
            let bytes: &[u8] = match (*v, t) {
                (Value::Null, _) => {
                    self.buf.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                (Value::Int(i), CopyType::Int) => {
                    self.buf.extend_from_slice(&8i32.to_be_bytes());
                    self.buf.extend_from_slice(&i.to_be_bytes());
                    continue;
                }
                (Value::Text(s), CopyType::Text) => s.as_bytes(),
                (Value::Bytes(b), CopyType::Bytes) => b,
                _ => {
                    return Err(bad(
                        "a COPY value of another type than its column (integer, text or bytes)",
                    ))
                }
            };
            let len = i32::try_from(bytes.len()).map_err(|_| bad("a COPY value over 2 GB"))?;
            self.buf.extend_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(bytes);
        }
        self.rows += 1;
        if self.buf.len() >= COPY_CHUNK {
            self.send()?;
        }
        Ok(())
    }

    /// Hand what is gathered to the connection.
    fn send(&mut self) -> Result<(), StoreError> {
        use std::io::Write;
        self.w.write_all(&self.buf).map_err(|e| {
            // The connection's own error comes back wrapped in an I/O error.
            let kind = e.kind();
            match e.into_inner().map(|i| i.downcast::<postgres::Error>()) {
                Some(Ok(pg)) => StoreError::Postgres(*pg),
                Some(Err(other)) => StoreError::Value(other),
                None => StoreError::Value(Box::new(std::io::Error::from(kind))),
            }
        })?;
        self.buf.clear();
        Ok(())
    }
}

/// A read-only snapshot ([`Conn::snapshot`]): ends (nothing to commit) when dropped.
pub struct Snapshot<'c> {
    conn: &'c Conn,
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        // A read-only transaction: ending it cannot lose anything; a failure drops the
        // PostgreSQL connection (see `end`).
        let _ = self.conn.end("COMMIT");
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

    /// `for_each` streams every row (borrowed text and bytes, typed integers) and stops at the
    /// closure's first error; a prepared `Stmt` runs many times.
    fn streams_rows(c: &Conn) {
        let blob = match c.backend() {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        };
        c.execute_batch(&format!(
            "CREATE TABLE s(k BIGINT PRIMARY KEY, t TEXT, b {blob})"
        ))
        .expect("schema");
        let mut ins = c
            .prepare("INSERT INTO s(k, t, b) VALUES (?1, ?2, ?3)")
            .expect("prepare");
        for k in 0..1000i64 {
            let t = (k % 2 == 0).then(|| format!("t{k}"));
            ins.execute(params![k, t.as_ref(), &k.to_le_bytes()[..]])
                .expect("insert");
        }
        drop(ins);
        let (mut n, mut sum, mut texts) = (0, 0i64, 0);
        c.for_each(
            "SELECT k, t, b FROM s WHERE k >= ?1 ORDER BY k",
            params![0i64],
            |r| {
                let k: i64 = r.get(0)?;
                assert_eq!(r.bytes(2)?, Some(&k.to_le_bytes()[..]));
                if let Some(t) = r.str(1)? {
                    assert_eq!(t, format!("t{k}"));
                    texts += 1;
                }
                n += 1;
                sum += k;
                Ok::<_, StoreError>(())
            },
        )
        .expect("scan")
        .expect("rows");
        assert_eq!((n, sum, texts), (1000, 999 * 1000 / 2, 500));
        let mut seen = 0;
        let stopped = c
            .for_each("SELECT k FROM s ORDER BY k", params![], |_| {
                seen += 1;
                if seen == 10 {
                    Err("enough")
                } else {
                    Ok(())
                }
            })
            .expect("scan");
        assert_eq!((stopped, seen), (Err("enough"), 10));
        let e = c
            .for_each("SELECT t FROM s WHERE k = 0", params![], |r| {
                r.get::<i64>(0).map(|_| ())
            })
            .expect("scan")
            .expect_err("text is not an integer");
        assert!(e.to_string().contains("column 0"), "{e}");
        let mut get = c.prepare("SELECT t FROM s WHERE k = ?1").expect("prepare");
        assert_eq!(
            get.query_opt(params![2i64], |r| r.get::<Option<String>>(0))
                .expect("q"),
            Some(Some("t2".into()))
        );
        assert_eq!(
            get.query_opt(params![5000i64], |r| r.get::<Option<String>>(0))
                .expect("q"),
            None
        );
    }

    #[test]
    fn for_each_streams_on_sqlite_and_arrays_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Conn::sqlite(crate::db::open(&dir.path().join("t.db"), "NORMAL").expect("open"));
        streams_rows(&c);
        let e = c
            .execute("SELECT ?1", &[Value::Ints(&[Some(1)])])
            .expect_err("no arrays on SQLite");
        assert!(e.to_string().contains("PostgreSQL only"), "{e}");
        let e = c
            .copy_in(
                "COPY s(k) FROM STDIN (FORMAT binary)",
                &[CopyType::Int],
                |_| Ok(()),
            )
            .expect_err("no COPY on SQLite");
        assert!(e.to_string().contains("PostgreSQL only"), "{e}");
    }

    #[test]
    fn for_each_streams_and_arrays_unnest_on_postgres() {
        let Some(db) = test_db("store_stream") else {
            return;
        };
        let url = db.url().clone();
        std::thread::spawn(move || {
            let c = Conn::postgres(&url).expect("connect");
            streams_rows(&c);
            // One statement writes many rows from arrays (NULLs inside them too).
            let ks: Vec<Option<i64>> = (5000..5100).map(Some).collect();
            let ts: Vec<Option<&str>> = (0..100).map(|i| (i % 3 != 0).then_some("x")).collect();
            let bs: Vec<Option<&[u8]>> = (0..100).map(|_| Some(&b"\x01"[..])).collect();
            let n = c
                .execute(
                    "INSERT INTO s(k, t, b)
                     SELECT * FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS TEXT[]), CAST(?3 AS BYTEA[]))",
                    &[Value::Ints(&ks), Value::Texts(&ts), Value::BytesArray(&bs)],
                )
                .expect("unnest");
            assert_eq!(n, 100);
            let (count, nulls): (i64, i64) = c
                .query_row(
                    "SELECT COUNT(*), COUNT(*) - COUNT(t) FROM s WHERE k >= 5000",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("count");
            assert_eq!((count, nulls), (100, 34));
            // An array where PostgreSQL expects a scalar is an error naming both.
            let e = c
                .execute(
                    "UPDATE s SET k = ?1 WHERE k = -1",
                    &[Value::Ints(&[Some(1)])],
                )
                .expect_err("not an array column");
            assert!(format!("{e:?}").contains("BIGINT[]"), "{e:?}");
            // A binary COPY writes every row (NULLs too) inside the caller's transaction; a row
            // of the wrong width, or an error from the caller, aborts it (nothing written).
            let tx = c.transaction().expect("begin");
            let copy = "COPY s(k, t, b) FROM STDIN (FORMAT binary)";
            let types = [CopyType::Int, CopyType::Text, CopyType::Bytes];
            let n = tx
                .copy_in(copy, &types, |w| {
                    for k in 6000..6010 {
                        let t = (k % 2 == 0).then_some("y");
                        w.row(&[Value::Int(k), t.into(), Value::Bytes(b"\x02")])?;
                    }
                    Ok(())
                })
                .expect("copy");
            assert_eq!(n, 10);
            tx.commit().expect("commit");
            let (count, nulls): (i64, i64) = c
                .query_row(
                    "SELECT COUNT(*), COUNT(*) - COUNT(t) FROM s WHERE k >= 6000",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("count");
            assert_eq!((count, nulls), (10, 5));
            let e = c
                .copy_in(copy, &types, |w| w.row(&[Value::Int(7000)]))
                .expect_err("a row of the wrong width");
            assert!(e.to_string().contains("number of values"), "{e}");
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM s WHERE k >= 7000", params![], |r| {
                    r.get(0)
                })
                .expect("count");
            assert_eq!(n, 0, "an aborted COPY writes nothing");
            let e = c
                .copy_in(copy, &types, |w| {
                    w.row(&[Value::Text("7001"), Value::Null, Value::Null])
                })
                .expect_err("text in an integer column");
            assert!(e.to_string().contains("another type"), "{e}");
            // Many rows: sent in several chunks, every one arrives, in one COPY.
            let long = "z".repeat(100);
            let n = c
                .copy_in(copy, &types, |w| {
                    for k in 8000..10_000 {
                        w.row(&[Value::Int(k), Value::Text(&long), Value::Null])?;
                    }
                    Ok(())
                })
                .expect("a COPY larger than a chunk");
            assert_eq!(n, 2000);
            let (count, total): (i64, i64) = c
                .query_row(
                    "SELECT COUNT(*), CAST(SUM(length(t)) AS BIGINT) FROM s WHERE k >= 8000",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("count");
            assert_eq!((count, total), (2000, 200_000));
        })
        .join()
        .expect("thread");
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
