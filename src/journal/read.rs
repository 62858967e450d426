//! Reading a run's recipient rows in audience order: owned ([`Journal::for_each_recipient`]) or
//! borrowed from the database row without an allocation per row
//! ([`Journal::for_each_recipient_ref`], the report's scan of ten million rows).
//!
//! Invariants: both give the same rows and values; a row never updated reads the run's start
//! time. Must not: write.

use rusqlite::{params, OptionalExtension};

use super::schema::{rk_range, run_key, MAX_LINE};
use super::{Journal, JournalError, RecipientRef, RecipientRow, RecipientStatus};

impl Journal {
    /// Every recipient row of a run in audience order, streamed to `f` (stops at its first error).
    pub fn for_each_recipient<E: From<JournalError>>(
        &self,
        run_id: &str,
        mut f: impl FnMut(RecipientRow) -> Result<(), E>,
    ) -> Result<(), E> {
        let run: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT key, created_at FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db())?;
        let Some((key, created_at)) = run else {
            return Ok(());
        };
        let (lo, hi) = rk_range(key);
        let mut st = self
            .conn
            .prepare(
                "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                        error_message, detail, updated_at
                 FROM recipients WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk",
            )
            .map_err(self.db())?;
        let mut rows = st.query(params![lo, hi]).map_err(self.db())?;
        while let Some(r) = rows.next().map_err(self.db())? {
            let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<RecipientRow> {
                let status: rusqlite::types::ValueRef<'_> = r.get_ref(3)?;
                let id = r.get::<_, Option<i64>>(1)?.map(|v| v as u64);
                let raw_id: Option<String> = r.get(2)?;
                Ok(RecipientRow {
                    line: (r.get::<_, i64>(0)? as u64) & MAX_LINE,
                    raw_id: raw_id.unwrap_or_else(|| id.map(|v| v.to_string()).unwrap_or_default()),
                    id,
                    status: status
                        .as_str()
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(RecipientStatus::Unknown),
                    message_id: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    attempts: r.get::<_, i64>(5)? as u32,
                    call: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    variant: r.get(7)?,
                    error_code: r.get(8)?,
                    error_message: r.get(9)?,
                    detail: r.get(10)?,
                    time: Some(
                        r.get::<_, Option<String>>(11)?
                            .unwrap_or_else(|| created_at.clone()),
                    ),
                })
            };
            f(get(r).map_err(self.db())?)?;
        }
        Ok(())
    }

    /// The highest audience line of a run's recipient rows (None: no rows).
    pub fn last_line(&self, run_id: &str) -> Result<Option<u64>, JournalError> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(None);
        };
        let (lo, hi) = rk_range(key);
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(rk) FROM recipients WHERE rk BETWEEN ?1 AND ?2",
                params![lo, hi],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(max.map(|v| (v as u64) & MAX_LINE))
    }

    /// The recipient rows of a run whose audience line is in `lines`, in audience order,
    /// borrowed from the database row (no allocation per row: the report's scan of ten million
    /// rows). Same rows and values as [`Self::for_each_recipient`]; stops at `f`'s first error.
    pub fn for_each_recipient_ref<E: From<JournalError>>(
        &self,
        run_id: &str,
        lines: std::ops::RangeInclusive<u64>,
        mut f: impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let run: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT key, created_at FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db())?;
        let Some((key, created_at)) = run else {
            return Ok(());
        };
        let (lo, _) = rk_range(key);
        let (first, last) = (
            (*lines.start()).min(MAX_LINE) as i64,
            (*lines.end()).min(MAX_LINE) as i64,
        );
        let mut st = self
            .conn
            .prepare(
                "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                        error_message, detail, updated_at
                 FROM recipients WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk",
            )
            .map_err(self.db())?;
        let mut rows = st
            .query(params![lo | first, lo | last])
            .map_err(self.db())?;
        fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'a str>> {
            match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                v => v.as_str().map(Some).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e))
                }),
            }
        }
        fn int(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
            r.get::<_, Option<i64>>(i)
        }
        while let Some(r) = rows.next().map_err(self.db())? {
            let line = (r.get::<_, i64>(0).map_err(self.db())? as u64) & MAX_LINE;
            let id = int(r, 1).map_err(self.db())?.map(|v| v as u64);
            let message_id = int(r, 4).map_err(self.db())?.map(|v| v as u64);
            let attempts = r.get::<_, i64>(5).map_err(self.db())? as u32;
            let call = int(r, 6).map_err(self.db())?.map(|v| v as u64);
            let status = text(r, 3)
                .map_err(self.db())?
                .and_then(|s| s.parse().ok())
                .unwrap_or(RecipientStatus::Unknown);
            let row = RecipientRef {
                line,
                id,
                raw_id: text(r, 2).map_err(self.db())?,
                status,
                message_id,
                attempts,
                call,
                variant: text(r, 7).map_err(self.db())?,
                error_code: text(r, 8).map_err(self.db())?,
                error_message: text(r, 9).map_err(self.db())?,
                detail: text(r, 10).map_err(self.db())?,
                time: text(r, 11).map_err(self.db())?.unwrap_or(&created_at),
            };
            f(&row)?;
        }
        Ok(())
    }

    /// All recipient rows of a run (small runs and tests; large runs use [`Self::for_each_recipient`]).
    pub fn recipients(&self, run_id: &str) -> Result<Vec<RecipientRow>, JournalError> {
        let mut v = Vec::new();
        self.for_each_recipient::<JournalError>(run_id, |r| {
            v.push(r);
            Ok(())
        })?;
        Ok(v)
    }
}
