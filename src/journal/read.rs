//! Reading a run's rows: recipients in audience order, owned ([`Journal::for_each_recipient`]) or
//! borrowed from the database row without an allocation per row
//! ([`Journal::for_each_recipient_ref`], the report's scan of ten million rows); and its calls
//! ([`Journal::calls`], and what the report shows of them).
//!
//! Invariants: both recipient scans give the same rows and values (the owned one is the borrowed
//! one copied); a row reads its own time, else its answered call's, else the run's start (see
//! `rows::RunView`). Must not: write.

use crate::store::params;
use jiff::Timestamp;

use super::deferred::{self, DeferredRow, Window};
use super::pack::decode_list;
use super::rows::{rows_at, RunView};
use super::schema::{parse_ts, rk_range, run_key, MAX_LINE};
use super::{
    CallEnd, CallRow, CallState, Journal, JournalError, RecipientRef, RecipientRow, RecipientStatus,
};

/// PostgreSQL: the recipient scan reads the times of a run's answered calls into memory first
/// when it has at most this many (about 70 bytes each: 7 MB at most), else with each row.
const PG_CALL_TIMES: usize = 100_000;

impl Journal {
    /// Every recipient row of a run in audience order, streamed to `f` (stops at its first error).
    pub fn for_each_recipient<E: From<JournalError>>(
        &self,
        run_id: &str,
        mut f: impl FnMut(RecipientRow) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_recipient_ref::<E>(run_id, 0..=MAX_LINE, |r| f(r.to_row()))
    }

    /// The highest audience line of a run's recipient rows (None: no rows).
    pub fn last_line(&self, run_id: &str) -> Result<Option<u64>, JournalError> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(None);
        };
        let _snapshot = self.conn.snapshot().map_err(self.db())?;
        let (lo, hi) = rk_range(key);
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(rk) FROM recipients WHERE rk BETWEEN ?1 AND ?2",
                params![lo, hi],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        let (_, _, deferred) = super::deferred::extent(&self.conn, key).map_err(self.db())?;
        let line = max.map(|v| v & MAX_LINE as i64);
        Ok(line.max(deferred).map(|v| v as u64))
    }

    /// The recipient rows of a run whose audience line is in `lines`, in audience order,
    /// borrowed from the database row (no allocation per row: the report's scan of ten million
    /// rows). Same rows and values as [`Self::for_each_recipient`]; stops at `f`'s first error.
    pub fn for_each_recipient_ref<E: From<JournalError>>(
        &self,
        run_id: &str,
        lines: std::ops::RangeInclusive<u64>,
        f: impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.scan_recipients(run_id, lines, PG_CALL_TIMES, WINDOW, f)
    }

    /// [`Self::for_each_recipient_ref`], reading the call times into memory on PostgreSQL when
    /// the run has at most `call_times` answered calls, and `window` lines at a time when it has
    /// deferred rows ([`WINDOW`]).
    pub(super) fn scan_recipients<E: From<JournalError>>(
        &self,
        run_id: &str,
        lines: std::ops::RangeInclusive<u64>,
        call_times: usize,
        window: i64,
        mut f: impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        // One state of the journal for every statement below (its windows, the call times),
        // whatever another process commits meanwhile: an answered call's rows move from its
        // deferred entry to rows and its delivered entry in one commit, and a scan in several
        // statements must not see them in both places, or in neither.
        let _snapshot = self.conn.snapshot().map_err(self.db())?;
        let Some(view) = RunView::load(&self.conn, run_id).map_err(self.db())? else {
            return Ok(());
        };
        let (lo, _) = rk_range(view.key);
        let (first, last) = (
            (*lines.start()).min(MAX_LINE) as i64,
            (*lines.end()).min(MAX_LINE) as i64,
        );
        // Streamed (`for_each`): one row at a time, text borrowed from the database row.
        let mut buf = String::new();
        // On PostgreSQL a streaming scan holds the connection: nothing else may be asked on it
        // until the scan ends, so the time of the call that answered a row (which SQLite looks up
        // as it goes, one call at a time, `RunView::time`) is read before the scan: every answered
        // call's time into memory when the run has at most `PG_CALL_TIMES` of them (a shared
        // Content: one call per 500 recipients; the scan is then a plain range scan). A run with
        // more (a personalized one: a call per recipient) reads it with the row instead: a
        // subquery on the calls' key, one index probe a row whatever the planner's statistics say
        // (a join was planned as a scan of every call per row while the statistics were stale).
        let pg = self.conn.backend() == crate::store::Backend::Postgres;
        let call_times = if pg {
            self.answered_call_times(run_id, call_times)
                .map_err(self.db())?
        } else {
            None
        };
        let probe = pg && call_times.is_none();
        let sql = if probe {
            "SELECT r.rk, r.id, r.raw_id, r.status, r.message_id, r.attempts, r.call_seq, r.variant,
                    r.error_code, r.error_message, r.detail, r.at, r.variant_name,
                    (SELECT c.updated_at FROM calls c
                     WHERE c.run_id = ?3 AND c.seq = r.call_seq AND c.state IN ('done', 'unknown'))
             FROM recipients r
             WHERE r.rk BETWEEN ?1 AND ?2 ORDER BY r.rk"
        } else {
            "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                    error_message, detail, at, variant_name
             FROM recipients WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk"
        };
        // A run may hold rows per call (`deferred`: a run in progress its calls' unanswered rows,
        // any run its calls' delivered ones): then the scan goes through the lines a window at a
        // time, each window's packed rows read first and merged in line order (memory: one
        // window's). Otherwise one range scan.
        let merge = deferred::any(&self.conn, view.key).map_err(self.db())?;
        let windows: Vec<(i64, i64)> = if merge {
            let end = self.last_line(run_id)?.map_or(-1, |l| (l as i64).min(last));
            (first..=end)
                .step_by(window.max(1) as usize)
                .map(|w| (w, (w + window.max(1) - 1).min(end)))
                .collect()
        } else {
            vec![(first, last)]
        };
        for (wfirst, wlast) in windows {
            let mut waiting = if merge {
                deferred::in_window(&self.conn, view.key, run_id, wfirst, wlast)
                    .map_err(self.db())?
            } else {
                Window::default()
            };
            let (from, to) = (lo | wfirst, lo | wlast);
            let with_run = params![from, to, run_id];
            let without = params![from, to];
            self.conn
                .for_each(sql, if probe { with_run } else { without }, |r| {
                    let db = self.db();
                    let line = (r.get::<i64>(0).map_err(&db)? as u64) & MAX_LINE;
                    while waiting.rows.front().is_some_and(|d| (d.line as u64) < line) {
                        if let Some(d) = waiting.rows.pop_front() {
                            emit_deferred(&view, &d, &waiting.times, &mut buf, &mut f)?;
                        }
                    }
                    scan_row(self, &view, r, &call_times, probe, &mut buf, &mut f)
                })
                .map_err(self.db())??;
            for d in &waiting.rows {
                emit_deferred(&view, d, &waiting.times, &mut buf, &mut f)?;
            }
        }
        Ok(())
    }
}

/// Lines a window of [`Journal::scan_recipients`] covers when the run has deferred rows.
pub(super) const WINDOW: i64 = 1 << 16;

/// A packed row as the scan gives it (see `deferred`): `pending` with its plan call and variant
/// and nothing else, or `sent` with its message id, its call's attempts and its call's time.
fn emit_deferred<E: From<JournalError>>(
    view: &RunView,
    d: &DeferredRow,
    times: &[String],
    buf: &mut String,
    f: &mut impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let status = match d.sent {
        Some(_) => RecipientStatus::Sent,
        None => RecipientStatus::Pending,
    };
    let call_time = d
        .sent
        .and_then(|s| s.time)
        .and_then(|i| times.get(i))
        .map(String::as_str);
    let time = view
        .time_given(status, call_time, None, buf)
        .map_err(|e| JournalError::Corrupt(e.to_string()))?;
    f(&RecipientRef {
        line: d.line as u64,
        id: Some(d.id as u64),
        raw_id: None,
        status,
        message_id: d.sent.map(|s| s.message_id as u64),
        attempts: d
            .sent
            .map_or(0, |s| s.attempts.clamp(0, u32::MAX as i64) as u32),
        call: Some(d.call_seq as u64),
        variant: d
            .variant
            .and_then(|i| view.variants.get(&i))
            .map(String::as_str),
        error_code: None,
        error_message: None,
        detail: None,
        time,
        variant_name: None,
    })
}

/// One row of [`Journal::scan_recipients`]'s statement, given to `f`.
fn scan_row<E: From<JournalError>>(
    j: &Journal,
    view: &RunView,
    r: &crate::store::RowRef<'_>,
    call_times: &Option<std::collections::HashMap<i64, String>>,
    probe: bool,
    buf: &mut String,
    f: &mut impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let db = j.db();
    let line = (r.get::<i64>(0).map_err(&db)? as u64) & MAX_LINE;
    let id = r.get::<Option<i64>>(1).map_err(&db)?.map(|v| v as u64);
    let message_id = r.get::<Option<i64>>(4).map_err(&db)?.map(|v| v as u64);
    let attempts = r.get::<i64>(5).map_err(&db)? as u32;
    let call_seq = r.get::<Option<i64>>(6).map_err(&db)?;
    let status = RecipientStatus::from_code(r.get::<i64>(3).map_err(&db)?)?;
    let variant = r
        .get::<Option<i64>>(7)
        .map_err(&db)?
        .and_then(|i| view.variants.get(&i))
        .map(String::as_str);
    let at = r.get::<Option<i64>>(11).map_err(&db)?;
    let time = if let Some(times) = &call_times {
        let t = call_seq.and_then(|c| times.get(&c)).map(String::as_str);
        view.time_given(status, t, at, buf)
    } else if probe {
        view.time_given(status, r.str(13).map_err(&db)?, at, buf)
    } else {
        view.time(&j.conn, status, call_seq, at, buf)
    }
    .map_err(&db)?;
    let row = RecipientRef {
        line,
        id,
        raw_id: r.str(2).map_err(&db)?,
        status,
        message_id,
        attempts,
        call: call_seq.map(|v| v as u64),
        variant,
        error_code: r.str(8).map_err(&db)?,
        error_message: r.str(9).map_err(&db)?,
        detail: r.str(10).map_err(&db)?,
        time,
        variant_name: r.str(12).map_err(&db)?,
    };
    f(&row)
}

impl Journal {
    /// The time of every answered call (done or unknown) of a run, by call number; None when the
    /// run has more than `bound` of them (memory stays bounded: the caller reads each row's call
    /// time another way).
    fn answered_call_times(
        &self,
        run_id: &str,
        bound: usize,
    ) -> Result<Option<std::collections::HashMap<i64, String>>, crate::store::StoreError> {
        let mut times = std::collections::HashMap::new();
        let mut over = false;
        self.conn.for_each(
            "SELECT seq, updated_at FROM calls
             WHERE run_id = ?1 AND state IN ('done', 'unknown') LIMIT ?2",
            params![run_id, bound as i64 + 1],
            |r| {
                if times.len() >= bound {
                    over = true;
                    return Ok(());
                }
                let t = r.str(1)?.unwrap_or_default().to_string();
                times.insert(r.get::<i64>(0)?, t);
                Ok::<_, crate::store::StoreError>(())
            },
        )??;
        Ok((!over).then_some(times))
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

    /// Every call of a run, in call order (small runs and tests).
    pub fn calls(&self, run_id: &str) -> Result<Vec<CallRow>, JournalError> {
        self.call_rows(run_id, None, None)
    }

    /// The first `limit` calls of a run in `state`, in call order.
    pub fn calls_in_state(
        &self,
        run_id: &str,
        state: CallState,
        limit: usize,
    ) -> Result<Vec<CallRow>, JournalError> {
        self.call_rows(run_id, Some(state), Some(limit))
    }

    fn call_rows(
        &self,
        run_id: &str,
        state: Option<CallState>,
        limit: Option<usize>,
    ) -> Result<Vec<CallRow>, JournalError> {
        // No limit: i64::MAX rows (LIMIT -1 is SQLite's, PostgreSQL refuses a negative one).
        let limit = limit.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let raw = self
            .conn
            .query_map(
                "SELECT seq, variant, receivers, state, attempts, client_msg_id, error_code,
                        error_message, updated_at, strays
                 FROM calls WHERE run_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
                 ORDER BY seq LIMIT ?3",
                params![run_id, state.map(CallState::as_str), limit],
                |r| {
                    Ok((
                        r.get::<i64>(0)?,
                        r.get::<String>(1)?,
                        r.get::<Vec<u8>>(2)?,
                        r.get::<String>(3)?,
                        r.get::<i64>(4)?,
                        r.get::<Option<String>>(5)?,
                        r.get::<Option<String>>(6)?,
                        r.get::<Option<String>>(7)?,
                        (r.get::<String>(8)?, r.get::<Option<Vec<u8>>>(9)?),
                    ))
                },
            )
            .map_err(self.db())?;
        let key = run_key(&self.conn, run_id).map_err(self.db())?.unwrap_or(0);
        let by_line = |seq: i64, lines: &[u8], strays: Option<&[u8]>| {
            let rks: Vec<i64> = decode_list(lines)?
                .into_iter()
                .map(|l| (key << 32) | (l & MAX_LINE as i64))
                .collect();
            let found = rows_at(&self.conn, &rks).map_err(self.db())?;
            let mut by_rk: std::collections::HashMap<i64, u64> =
                found.iter().map(|(id, f)| (f.rk, *id)).collect();
            // A call not answered yet: its receivers may still be deferred rows.
            if by_rk.len() < rks.len() {
                if let Some(e) = deferred::peek(&self.conn, key, seq).map_err(self.db())? {
                    for (line, id) in e.lines.iter().zip(&e.ids) {
                        by_rk.insert((key << 32) | line, *id as u64);
                    }
                }
                let sent = deferred::peek_delivered(&self.conn, key, seq).map_err(self.db())?;
                if let Some(d) = sent {
                    for (line, id) in d.lines.iter().zip(&d.ids) {
                        by_rk.insert((key << 32) | line, *id as u64);
                    }
                }
            }
            let mut ids = Vec::with_capacity(rks.len());
            for rk in rks {
                ids.push(*by_rk.get(&rk).ok_or_else(|| {
                    JournalError::Corrupt(format!("call {seq} names a row the run does not hold"))
                })?);
            }
            if let Some(s) = strays {
                ids.extend(decode_list(s)?.into_iter().map(|v| v as u64));
            }
            Ok::<_, JournalError>(ids)
        };
        raw.into_iter()
            .map(
                |(
                    seq,
                    variant,
                    receivers,
                    state,
                    attempts,
                    client_msg_id,
                    code,
                    message,
                    (at, strays),
                )| {
                    Ok(CallRow {
                        seq: seq.max(0) as u64,
                        receivers: by_line(seq, &receivers, strays.as_deref())?,
                        variant,
                        state: state.parse()?,
                        attempts: attempts.max(0) as u64,
                        client_msg_id,
                        error_code: code,
                        error_message: message,
                        updated_at: parse_ts(&at)?,
                    })
                },
            )
            .collect()
    }

    /// Every answered call (done or unknown) of a run, in no particular order: when it was
    /// answered and how many receivers it carried, without reading the receivers themselves (the
    /// report's timeline of a run of millions). Stops at `f`'s first error.
    pub fn for_each_answered_call<E: From<JournalError>>(
        &self,
        run_id: &str,
        mut f: impl FnMut(CallEnd) -> Result<(), E>,
    ) -> Result<(), E> {
        self.conn
            .for_each(
                "SELECT updated_at, n_receivers FROM calls
                 WHERE run_id = ?1 AND state IN ('done', 'unknown')",
                params![run_id],
                |r| {
                    let at: Timestamp = parse_ts(r.str(0).map_err(self.db())?.unwrap_or(""))?;
                    let receivers = r.get::<i64>(1).map_err(self.db())?.max(0) as u64;
                    f(CallEnd { at, receivers })
                },
            )
            .map_err(self.db())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::journal::testutil::*;
    use crate::journal::{RecipientUpdate, ResumeOptions};

    #[test]
    fn calls_read_back_as_written_and_answered_ones_are_counted_without_their_receivers() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        let later = now() + jiff::SignedDuration::from_secs(5);
        j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[RecipientUpdate {
                id: 101,
                status: RecipientStatus::Sent,
                message_id: Some(7),
                error_code: None,
                error_message: None,
                detail: None,
            }],
            Some(("Partial", "one of two")),
            later,
        )
        .expect("outcome");
        j.mark_in_flight(&id, 1, "v", &[103, 104], Some("imcast-x"), now())
            .expect("mark");
        j.mark_in_flight(&id, 2, "w", &[], None, now())
            .expect("mark");
        j.recover(&id, Action::Batch).expect("recover");
        let calls = j.calls(&id).expect("calls");
        assert_eq!(
            calls.iter().map(|c| (c.seq, c.state)).collect::<Vec<_>>(),
            [
                (0, CallState::Done),
                (1, CallState::Unknown),
                (2, CallState::Unknown)
            ]
        );
        assert_eq!(calls[0].receivers, [101, 102]);
        assert_eq!(calls[0].updated_at, later);
        assert_eq!(calls[0].error_code.as_deref(), Some("Partial"));
        assert_eq!(calls[1].client_msg_id.as_deref(), Some("imcast-x"));
        assert_eq!(calls[1].attempts, 1);
        let unknown = j
            .calls_in_state(&id, CallState::Unknown, 1)
            .expect("unknown");
        assert_eq!(unknown.len(), 1, "limited");
        assert_eq!(unknown[0].seq, 1);
        let mut ends = Vec::new();
        j.for_each_answered_call::<JournalError>(&id, |c| {
            ends.push((c.at, c.receivers));
            Ok(())
        })
        .expect("ends");
        ends.sort();
        assert_eq!(ends, [(now(), 0), (now(), 2), (later, 2)]);
    }
}
