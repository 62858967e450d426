//! The PostgreSQL state store's schema: versioned migrations, applied in order, recorded in
//! `imcast_schema` (one row per applied version: its name, when, and by which imcast).
//!
//! Owns: [`MIGRATIONS`] (append-only: a released migration is never edited, a change is a new
//! version), [`migrate`] and the refusal of a newer schema ([`SchemaError::Newer`]).
//!
//! Invariants: migrations run in one transaction under a transaction-scoped advisory lock
//! ([`SCHEMA_LOCK`]), so two hosts starting at once apply each version once and nobody sees a
//! half-migrated schema; a store whose highest version is above [`SCHEMA_VERSION`] is never
//! touched (an older imcast would not know what the newer tables mean; every host sharing a store
//! must run a version that knows its schema). Opening the limiter, or a connection of the store
//! layer (`crate::store::Conn::postgres`: the scheduler's occurrence record), applies what is
//! missing (as the SQLite files do on open); `imcast state migrate` does the same on request and
//! says what it did.
//!
//! Must not: drop or rewrite data a released version wrote without a migration that says so.

/// Serializes schema changes between processes (an arbitrary constant: "imcast" + 1).
pub const SCHEMA_LOCK: i64 = 0x696d_6361_7374_0001;

/// One schema version.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    /// What it adds, for people (`imcast state migrate` prints it).
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every version, in order (versions 1, 2, … without gaps).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "the account limiter's log (imcast_throttle_key, imcast_throttle_log)",
        sql: "
    CREATE TABLE imcast_throttle_key(
        key TEXT PRIMARY KEY,
        units BIGINT NOT NULL DEFAULT 0,
        tat_ns BIGINT);
    CREATE TABLE imcast_throttle_log(
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL,
        at_ns BIGINT NOT NULL,
        count BIGINT NOT NULL,
        until_ns BIGINT NOT NULL,
        done BOOLEAN NOT NULL);
    CREATE INDEX imcast_throttle_log_key_until
        ON imcast_throttle_log(key, until_ns) INCLUDE (count);",
    },
    Migration {
        version: 2,
        name: "the scheduler's occurrence record (sched_campaign, sched_occurrence)",
        // The same names and columns as the SQLite tables (`daemon::state`), so one SQL text
        // serves both backends (`crate::store`); integers are BIGINT.
        sql: "
    CREATE TABLE sched_campaign(
        name TEXT PRIMARY KEY,
        cursor BIGINT,
        paused BIGINT NOT NULL DEFAULT 0,
        path TEXT,
        next_fire BIGINT,
        updated_at BIGINT NOT NULL);
    CREATE TABLE sched_occurrence(
        campaign TEXT NOT NULL,
        occurrence BIGINT NOT NULL,
        status TEXT NOT NULL,
        run_key TEXT NOT NULL,
        content_hash TEXT,
        recorded_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        paused_by TEXT,
        detail TEXT,
        node TEXT,
        host TEXT,
        pid BIGINT,
        claimed_at BIGINT,
        PRIMARY KEY (campaign, occurrence));
    CREATE INDEX sched_occurrence_status ON sched_occurrence(status);",
    },
    Migration {
        version: 3,
        name: "the account limiter's decision as one function (imcast_throttle_decide)",
        sql: THROTTLE_DECIDE,
    },
    Migration {
        version: 4,
        name: "the daemon roster (sched_roster)",
        // The same columns as the SQLite table (`daemon::state::migrate`); self-contained.
        sql: "
    CREATE TABLE sched_roster(
        node TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        version TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        every_secs BIGINT NOT NULL,
        stopped_at BIGINT);",
    },
    Migration {
        version: 5,
        name: "the run registry: which state directory sends each campaign occurrence (imcast_run_registry)",
        // Unused since migration 6 moved the journal (runs and their leases) into the store: the
        // interim run registry was removed; the table stays, as migrations are history.
        sql: "
    CREATE TABLE imcast_run_registry(
        campaign TEXT NOT NULL,
        occurrence TEXT NOT NULL,
        run_id TEXT,
        plan_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        state_dir TEXT NOT NULL,
        lease_expires_ms BIGINT,
        fence BIGINT NOT NULL,
        opened_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        finished_ms BIGINT,
        PRIMARY KEY (campaign, occurrence));",
    },
    Migration {
        version: 6,
        name: "the journal: runs, recipients, calls, counters, control, leases, stages, attempts, report facts (runs, recipients, calls, call_plan, run_variants, run_counts, run_invocations, run_stages, control, attempts, report_runs, report_variants, sched_control)",
        sql: JOURNAL,
    },
    Migration {
        version: 7,
        name: "free space in the recipients' pages (fillfactor 50), so an outcome rewrites its row in place",
        // A recipient row is written twice: seeded `pending`, then its outcome. With full pages
        // (the default fillfactor, 100) every outcome's new row version went to another page and
        // added an entry to the primary key's index (a non-HOT update: measured 3 % HOT). Half of
        // each page left free keeps the new version in its page with no index entry (measured
        // 86 % HOT, the outcome update about a third cheaper); the table is no larger, as the
        // second version filled another page before. Applies to the pages written from now on.
        sql: "ALTER TABLE recipients SET (fillfactor = 50);",
    },
    Migration {
        version: 8,
        name: "rows per call: a new run's pending rows held per plan call until its outcome writes them (deferred), a call's plainly delivered rows kept per call (delivered); recipients' pages full again (fillfactor 100)",
        // A planned row is now written once, by its call's outcome (see `journal::deferred`):
        // the free space migration 7 left for a second version is no longer used by most rows.
        sql: "
    CREATE TABLE deferred(
        run_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        lo BIGINT NOT NULL,
        hi BIGINT NOT NULL,
        n BIGINT NOT NULL,
        variant BIGINT,
        lines BYTEA NOT NULL,
        ids BYTEA NOT NULL,
        PRIMARY KEY(run_key, seq));
    CREATE INDEX deferred_lo ON deferred(run_key, lo);
    CREATE INDEX deferred_wide ON deferred(run_key, lo) WHERE hi - lo > 65536;
    CREATE TABLE delivered(
        run_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        lo BIGINT NOT NULL,
        hi BIGINT NOT NULL,
        n BIGINT NOT NULL,
        variant BIGINT,
        attempts BIGINT NOT NULL,
        lines BYTEA NOT NULL,
        ids BYTEA NOT NULL,
        mids BYTEA NOT NULL,
        PRIMARY KEY(run_key, seq));
    CREATE INDEX delivered_lo ON delivered(run_key, lo);
    CREATE INDEX delivered_wide ON delivered(run_key, lo) WHERE hi - lo > 65536;
    ALTER TABLE recipients SET (fillfactor = 100);",
    },
    Migration {
        version: 9,
        name: "the limiter's decision deletes a key's ended entries once a window, or when the key is near its limit, instead of at every decision (imcast_throttle_decide, imcast_throttle_key.sweep_ns)",
        sql: THROTTLE_DECIDE_SWEEP,
    },
    Migration {
        version: 10,
        name: "several admissions of one process decided in one call, in order, each by the one rule (imcast_throttle_decide_batch)",
        sql: THROTTLE_DECIDE_BATCH,
    },
];

/// Version 6: the journal's tables (`crate::journal`), the final schema of the SQLite journal
/// (its migrations 1-11, `journal::schema`) with the same table, column and index names, so one
/// SQL text serves both backends (`crate::store`). Integers are BIGINT, byte lists BYTEA, text
/// stays TEXT. Where PostgreSQL differs: `recipients.rk` is a plain BIGINT primary key (on SQLite
/// the rowid: the table b-tree itself); `run_invocations."user"` is quoted (a reserved word in
/// PostgreSQL: a statement must write `"user"`, which SQLite reads the same); no `WITHOUT ROWID`;
/// no `extra_migrations` (other stages' tables are created here, not by
/// `Journal::migrate_extra`). Also the report's facts (`report::facts`: `report_runs`,
/// `report_variants`) and the daemon's log of control requests (`daemon::state::log_control`,
/// `sched_control`, written in the journal's transaction that ends the request; its SQLite
/// `AUTOINCREMENT` id is an identity column here).
const JOURNAL: &str = "
    CREATE TABLE runs(
        id TEXT PRIMARY KEY,
        campaign TEXT NOT NULL,
        occurrence TEXT,
        plan_hash TEXT NOT NULL,
        content_key TEXT,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        flags TEXT NOT NULL,
        is_test BIGINT NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT,
        stop_reason TEXT,
        audit TEXT NOT NULL,
        limit_count BIGINT NOT NULL,
        limit_window_ms BIGINT NOT NULL,
        total_calls BIGINT NOT NULL,
        continued_from TEXT,
        owner TEXT,
        key BIGINT,
        first_resend_seq BIGINT,
        retry_of TEXT,
        fence BIGINT NOT NULL DEFAULT 0,
        fence_holder TEXT,
        fence_at_ms BIGINT,
        lease_expires_ms BIGINT);
    CREATE INDEX runs_campaign ON runs(campaign, created_at);
    CREATE UNIQUE INDEX runs_key ON runs(key);
    CREATE UNIQUE INDEX runs_one_unfinished ON runs(campaign, COALESCE(occurrence, ''))
        WHERE is_test = 0 AND status IN ('running', 'paused', 'interrupted');
    CREATE TABLE recipients(
        rk BIGINT PRIMARY KEY,
        id BIGINT,
        status BIGINT NOT NULL,
        call_seq BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0,
        refusals BIGINT NOT NULL DEFAULT 0,
        message_id BIGINT,
        variant BIGINT,
        at BIGINT,
        raw_id TEXT,
        variant_name TEXT,
        error_code TEXT,
        error_message TEXT,
        detail TEXT);
    CREATE INDEX recipients_refused ON recipients(id) WHERE refusals > 0;
    CREATE TABLE run_variants(
        run_key BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        variant TEXT NOT NULL,
        PRIMARY KEY(run_key, idx),
        UNIQUE(run_key, variant));
    CREATE TABLE call_plan(
        run_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        lines BYTEA NOT NULL,
        PRIMARY KEY(run_key, seq));
    CREATE TABLE calls(
        run_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        variant TEXT NOT NULL,
        receivers BYTEA NOT NULL,
        strays BYTEA,
        n_receivers BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        client_msg_id TEXT,
        error_code TEXT,
        error_message TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY(run_id, seq));
    CREATE TABLE run_counts(
        run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY(run_id, status));
    CREATE TABLE run_invocations(
        run_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at TEXT NOT NULL,
        decision TEXT NOT NULL,
        via TEXT NOT NULL,
        \"user\" TEXT,
        host TEXT,
        imcast_version TEXT,
        flags TEXT NOT NULL,
        PRIMARY KEY(run_id, seq));
    CREATE TABLE run_stages(
        run_id TEXT NOT NULL,
        idx BIGINT NOT NULL,
        name TEXT NOT NULL,
        first_call BIGINT NOT NULL,
        calls BIGINT NOT NULL,
        recipients BIGINT NOT NULL,
        not_before TEXT,
        state TEXT NOT NULL,
        gate TEXT,
        gate_at TEXT,
        detail TEXT,
        started_at TEXT,
        finished_at TEXT,
        PRIMARY KEY(run_id, idx));
    CREATE TABLE control(
        campaign TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        requested_by TEXT);
    CREATE TABLE attempts(
        run_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        attempt BIGINT NOT NULL,
        at_ns BIGINT NOT NULL,
        receivers BIGINT NOT NULL,
        code TEXT,
        PRIMARY KEY(run_key, seq, attempt));
    CREATE INDEX attempts_at ON attempts(run_key, at_ns);
    CREATE TABLE report_runs(
        run_id TEXT PRIMARY KEY,
        campaign_file TEXT,
        app_id BIGINT,
        distinct_contents BIGINT NOT NULL);
    CREATE TABLE report_variants(
        run_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        recipients BIGINT NOT NULL,
        msg_type BIGINT NOT NULL,
        content TEXT NOT NULL,
        content_bytes BIGINT NOT NULL,
        ext TEXT NOT NULL,
        variant_name TEXT NOT NULL DEFAULT '',
        PRIMARY KEY(run_id, variant));
    CREATE TABLE sched_control(
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        campaign TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'cancel')),
        requested_at BIGINT NOT NULL,
        handled_at BIGINT,
        result TEXT);";

/// Version 3: one admission decision in one call (one round trip), the same exact rule as
/// `throttle.rs` decides for SQLite (the limiter's test suite runs on both backends and keeps them
/// identical). Arguments, one array element per rule: the key, the units this call needs, the
/// limit, the window (ns), the pacing increment and tolerance (ns; NULL: not paced) and the
/// entry's fallback end; then `now` and the pending ends (id, key, end, close). Returns the wait
/// in ns (> 0: nothing admitted, ask again then) and, when admitted, the entries' ids in rule
/// order. Everything it does (ends written, ended entries deleted) commits with the statement.
/// Replaced by version 9 ([`THROTTLE_DECIDE_SWEEP`]; the same arguments and rule).
const THROTTLE_DECIDE: &str = "
    CREATE FUNCTION imcast_throttle_decide(
        p_keys text[], p_need bigint[], p_limit bigint[], p_window bigint[],
        p_pace_step bigint[], p_pace_tol bigint[], p_until bigint[], p_now bigint,
        p_end_ids bigint[], p_end_keys text[], p_end_until bigint[], p_end_close boolean[],
        OUT wait_ns bigint, OUT ids bigint[])
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        all_keys text[];
        n_locked int;
        i int;
        used bigint;
        tat bigint;
        excess bigint;
        free_at bigint;
        w bigint;
        new_tat bigint[] := ARRAY[]::bigint[];
        new_id bigint;
    BEGIN
        -- Every key whose entries this decision touches, locked in key order (no deadlock
        -- between decisions on overlapping keys), its row created when missing.
        all_keys := ARRAY(SELECT DISTINCT k FROM unnest(p_keys || COALESCE(p_end_keys, '{}'))
                          AS u(k) ORDER BY k);
        PERFORM 1 FROM imcast_throttle_key WHERE key = ANY(all_keys) ORDER BY key FOR UPDATE;
        GET DIAGNOSTICS n_locked = ROW_COUNT;
        IF n_locked < cardinality(all_keys) THEN
            INSERT INTO imcast_throttle_key(key) SELECT unnest(all_keys)
                ON CONFLICT (key) DO NOTHING;
            PERFORM 1 FROM imcast_throttle_key WHERE key = ANY(all_keys) ORDER BY key
                FOR UPDATE;
        END IF;
        -- The pending ends: a close sets the end once (the first close wins), an extension
        -- only pushes it out.
        IF cardinality(p_end_ids) > 0 THEN
            UPDATE imcast_throttle_log l
            SET until_ns = CASE WHEN e.close THEN e.until_ns
                                ELSE GREATEST(l.until_ns, e.until_ns) END,
                done = e.close
            FROM unnest(p_end_ids, p_end_until, p_end_close) AS e(id, until_ns, close)
            WHERE l.id = e.id AND NOT l.done;
        END IF;
        -- Entries that ended before now stop counting: deleted, their units off the totals.
        WITH gone AS (
            DELETE FROM imcast_throttle_log WHERE key = ANY(p_keys) AND until_ns < p_now
            RETURNING key, count),
        s AS (SELECT key, SUM(count)::bigint AS n FROM gone GROUP BY key)
        UPDATE imcast_throttle_key t SET units = t.units - s.n FROM s WHERE t.key = s.key;
        wait_ns := 0;
        FOR i IN 1 .. cardinality(p_keys) LOOP
            SELECT k.units, k.tat_ns INTO used, tat FROM imcast_throttle_key k
                WHERE k.key = p_keys[i];
            used := COALESCE(used, 0);
            -- 1. The hard guarantee: what counts now plus this call stays within the limit.
            IF used + p_need[i] > p_limit[i] THEN
                excess := used + p_need[i] - p_limit[i];
                SELECT e.until_ns INTO free_at FROM (
                    SELECT l.until_ns, (SUM(l.count) OVER (ORDER BY l.until_ns, l.id
                                         ROWS UNBOUNDED PRECEDING))::bigint AS freed
                    FROM imcast_throttle_log l WHERE l.key = p_keys[i]) e
                WHERE e.freed >= excess ORDER BY e.until_ns LIMIT 1;
                IF NOT FOUND THEN
                    free_at := NULL;
                END IF;
                -- Nothing in flight frees before now + W: asking again then misses nothing.
                w := LEAST(COALESCE(free_at + 1 - p_now, p_window[i] + 1), p_window[i] + 1);
                wait_ns := GREATEST(wait_ns, GREATEST(w, 1));
            END IF;
            -- 2. Pacing (smoothness, not safety).
            IF p_pace_step[i] IS NOT NULL THEN
                tat := GREATEST(COALESCE(tat, p_now), p_now);
                IF tat - p_now > p_pace_tol[i] THEN
                    wait_ns := GREATEST(wait_ns, tat - p_now - p_pace_tol[i]);
                END IF;
                new_tat[i] := tat + p_pace_step[i];
            END IF;
        END LOOP;
        IF wait_ns > 0 THEN
            ids := NULL;
            RETURN;
        END IF;
        ids := ARRAY[]::bigint[];
        FOR i IN 1 .. cardinality(p_keys) LOOP
            INSERT INTO imcast_throttle_log(key, at_ns, count, until_ns, done)
                VALUES (p_keys[i], p_now, p_need[i], p_until[i], false)
                RETURNING id INTO new_id;
            ids := ids || new_id;
            UPDATE imcast_throttle_key SET units = units + p_need[i],
                tat_ns = CASE WHEN new_tat[i] IS NULL THEN tat_ns
                              ELSE GREATEST(COALESCE(tat_ns, new_tat[i]), new_tat[i]) END
                WHERE key = p_keys[i];
        END LOOP;
    END
    $fn$;";

/// Version 9: [`THROTTLE_DECIDE`]'s rule unchanged, with less work a decision. Measured with
/// `pgbench` calling the function alone (BENCHMARKS.md), 0.48 ms a decision became 0.39 ms
/// (0.22 ms with the commit's flush left out).
///
/// - A key's ended entries are deleted (their units taken off its total) only when the key's
///   total, ended entries included, would refuse this call, or once a window
///   (`imcast_throttle_key.sweep_ns`: the next sweep; NULL: at the next decision). The rule
///   needs the ended entries gone only to judge a call the total would refuse: a total that
///   still counts some ended entries is never below the true one, so when it admits, the true
///   one admits too; when it would refuse, the sweep comes first and the rule runs on the true
///   total and the true entries, exactly as before. Between sweeps the log keeps at most about
///   two windows of entries. Before, every decision deleted the entries ended since the last
///   one: a delete whose index scan stepped over the rows it had just deleted, not yet vacuumed,
///   and that was a quarter of the function's time.
/// - The keys' state is read in one statement, the new entries inserted and the totals updated
///   in one statement each (ids drawn from the log's identity sequence first, so they come back
///   in rule order), instead of a statement per rule for each.
///
/// SQLite (`store::decide_by_steps`) still deletes at every decision: in-process, it costs
/// nothing worth saving. The limiter's suite, run on both backends, checks they decide alike.
const THROTTLE_DECIDE_SWEEP: &str = "
    ALTER TABLE imcast_throttle_key ADD COLUMN sweep_ns BIGINT;
    CREATE OR REPLACE FUNCTION imcast_throttle_decide(
        p_keys text[], p_need bigint[], p_limit bigint[], p_window bigint[],
        p_pace_step bigint[], p_pace_tol bigint[], p_until bigint[], p_now bigint,
        p_end_ids bigint[], p_end_keys text[], p_end_until bigint[], p_end_close boolean[],
        OUT wait_ns bigint, OUT ids bigint[])
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        all_keys text[];
        n_locked int;
        i int;
        used bigint[];
        tat bigint[];
        sweep_at bigint[];
        sweep text[] := ARRAY[]::text[];
        sweep_next bigint[] := ARRAY[]::bigint[];
        t bigint;
        excess bigint;
        free_at bigint;
        w bigint;
        new_tat bigint[] := ARRAY[]::bigint[];
    BEGIN
        -- Every key whose entries this decision touches, locked in key order (no deadlock
        -- between decisions on overlapping keys), its row created when missing.
        all_keys := ARRAY(SELECT DISTINCT k FROM unnest(p_keys || COALESCE(p_end_keys, '{}'))
                          AS u(k) ORDER BY k);
        PERFORM 1 FROM imcast_throttle_key WHERE key = ANY(all_keys) ORDER BY key FOR UPDATE;
        GET DIAGNOSTICS n_locked = ROW_COUNT;
        IF n_locked < cardinality(all_keys) THEN
            INSERT INTO imcast_throttle_key(key) SELECT unnest(all_keys)
                ON CONFLICT (key) DO NOTHING;
            PERFORM 1 FROM imcast_throttle_key WHERE key = ANY(all_keys) ORDER BY key
                FOR UPDATE;
        END IF;
        -- The pending ends: a close sets the end once (the first close wins), an extension
        -- only pushes it out.
        IF cardinality(p_end_ids) > 0 THEN
            UPDATE imcast_throttle_log l
            SET until_ns = CASE WHEN e.close THEN e.until_ns
                                ELSE GREATEST(l.until_ns, e.until_ns) END,
                done = e.close
            FROM unnest(p_end_ids, p_end_until, p_end_close) AS e(id, until_ns, close)
            WHERE l.id = e.id AND NOT l.done;
        END IF;
        -- The rules' keys' state, in rule order.
        SELECT array_agg(k.units ORDER BY u.i), array_agg(k.tat_ns ORDER BY u.i),
               array_agg(k.sweep_ns ORDER BY u.i)
            INTO used, tat, sweep_at
            FROM unnest(p_keys) WITH ORDINALITY AS u(key, i) JOIN imcast_throttle_key k USING (key);
        -- Entries that ended before now stop counting: deleted, their units off the totals,
        -- for a key whose total (ended entries included) would refuse this call, or whose
        -- sweep is due; the next sweep one window from now.
        FOR i IN 1 .. cardinality(p_keys) LOOP
            IF used[i] + p_need[i] > p_limit[i] OR sweep_at[i] IS NULL OR p_now >= sweep_at[i] THEN
                sweep := sweep || p_keys[i];
                sweep_next := sweep_next || (p_now + p_window[i]);
            END IF;
        END LOOP;
        IF cardinality(sweep) > 0 THEN
            WITH gone AS (
                DELETE FROM imcast_throttle_log WHERE key = ANY(sweep) AND until_ns < p_now
                RETURNING key, count),
            s AS (SELECT key, SUM(count)::bigint AS n FROM gone GROUP BY key),
            x AS (SELECT key, MAX(n) AS next FROM unnest(sweep, sweep_next) AS x(key, n) GROUP BY key)
            UPDATE imcast_throttle_key t SET units = t.units - COALESCE(s.n, 0), sweep_ns = x.next
            FROM x LEFT JOIN s USING (key) WHERE t.key = x.key;
            SELECT array_agg(k.units ORDER BY u.i)
                INTO used
                FROM unnest(p_keys) WITH ORDINALITY AS u(key, i) JOIN imcast_throttle_key k USING (key);
        END IF;
        wait_ns := 0;
        FOR i IN 1 .. cardinality(p_keys) LOOP
            -- 1. The hard guarantee: what counts now plus this call stays within the limit.
            IF used[i] + p_need[i] > p_limit[i] THEN
                excess := used[i] + p_need[i] - p_limit[i];
                SELECT e.until_ns INTO free_at FROM (
                    SELECT l.until_ns, (SUM(l.count) OVER (ORDER BY l.until_ns, l.id
                                         ROWS UNBOUNDED PRECEDING))::bigint AS freed
                    FROM imcast_throttle_log l WHERE l.key = p_keys[i]) e
                WHERE e.freed >= excess ORDER BY e.until_ns LIMIT 1;
                IF NOT FOUND THEN
                    free_at := NULL;
                END IF;
                -- Nothing in flight frees before now + W: asking again then misses nothing.
                w := LEAST(COALESCE(free_at + 1 - p_now, p_window[i] + 1), p_window[i] + 1);
                wait_ns := GREATEST(wait_ns, GREATEST(w, 1));
            END IF;
            -- 2. Pacing (smoothness, not safety).
            IF p_pace_step[i] IS NOT NULL THEN
                t := GREATEST(COALESCE(tat[i], p_now), p_now);
                IF t - p_now > p_pace_tol[i] THEN
                    wait_ns := GREATEST(wait_ns, t - p_now - p_pace_tol[i]);
                END IF;
                new_tat[i] := t + p_pace_step[i];
            END IF;
        END LOOP;
        IF wait_ns > 0 THEN
            ids := NULL;
            RETURN;
        END IF;
        -- Admitted: the entries (ids drawn first, in rule order), then the totals and the
        -- pacing times (a key twice in the rules: the sum of its units, the latest time).
        ids := ARRAY(SELECT nextval('imcast_throttle_log_id_seq')
                     FROM generate_series(1, cardinality(p_keys)));
        INSERT INTO imcast_throttle_log(id, key, at_ns, count, until_ns, done) OVERRIDING SYSTEM VALUE
            SELECT u.id, u.key, p_now, u.need, u.until_ns, false
            FROM unnest(ids, p_keys, p_need, p_until) AS u(id, key, need, until_ns);
        UPDATE imcast_throttle_key k SET units = k.units + a.need,
            tat_ns = CASE WHEN a.tat IS NULL THEN k.tat_ns
                          ELSE GREATEST(COALESCE(k.tat_ns, a.tat), a.tat) END
            FROM (SELECT u.key, SUM(u.need)::bigint AS need, MAX(u.tat) AS tat
                  FROM unnest(p_keys, p_need, new_tat) AS u(key, need, tat) GROUP BY u.key) a
            WHERE k.key = a.key;
    END
    $fn$;";

/// Version 10: `imcast_throttle_decide_batch`, several admissions of one process decided in one
/// round trip (`throttle::Limiter::acquire`: the calls queued behind the one deciding). It calls
/// `imcast_throttle_decide` once per admission, in order, in the statement's one transaction, so
/// each is decided exactly as alone at the same instant (each call sees the entries and pacing
/// time the previous ones wrote), and stops at the first that must wait: the calls behind it are
/// not decided (first come, first served; they ask again). The pending ends go with the first.
/// Admission `a`'s rules are `p_first[a] ..= p_first[a + 1] - 1` of the other arrays (the last's
/// run to their end). One row per decided admission, in order.
const THROTTLE_DECIDE_BATCH: &str = "
    CREATE FUNCTION imcast_throttle_decide_batch(
        p_first int[], p_keys text[], p_need bigint[], p_limit bigint[], p_window bigint[],
        p_pace_step bigint[], p_pace_tol bigint[], p_until bigint[], p_now bigint,
        p_end_ids bigint[], p_end_keys text[], p_end_until bigint[], p_end_close boolean[])
    RETURNS TABLE(wait_ns bigint, ids bigint[])
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        a int;
        lo int;
        hi int;
    BEGIN
        FOR a IN 1 .. cardinality(p_first) LOOP
            lo := p_first[a];
            hi := CASE WHEN a < cardinality(p_first) THEN p_first[a + 1] - 1
                       ELSE cardinality(p_keys) END;
            SELECT d.wait_ns, d.ids INTO wait_ns, ids FROM imcast_throttle_decide(
                p_keys[lo:hi], p_need[lo:hi], p_limit[lo:hi], p_window[lo:hi],
                p_pace_step[lo:hi], p_pace_tol[lo:hi], p_until[lo:hi], p_now,
                CASE WHEN a = 1 THEN p_end_ids ELSE '{}'::bigint[] END,
                CASE WHEN a = 1 THEN p_end_keys ELSE '{}'::text[] END,
                CASE WHEN a = 1 THEN p_end_until ELSE '{}'::bigint[] END,
                CASE WHEN a = 1 THEN p_end_close ELSE '{}'::boolean[] END) d;
            RETURN NEXT;
            EXIT WHEN wait_ns > 0;
        END LOOP;
    END
    $fn$;";

/// The schema version this build knows (the last migration's).
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS imcast_schema(
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT NOT NULL)";

/// Errors checking or migrating the schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the state store's schema is version {found} (migrated by {by}), newer than this imcast \
         ({ours}) knows (up to version {known}); upgrade imcast on this host: every host sharing \
         the store must run a version that knows its schema"
    )]
    Newer {
        found: i32,
        known: i32,
        by: String,
        ours: &'static str,
    },
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version before (0: a store imcast had never used).
    pub from: i32,
    /// The version now ([`SCHEMA_VERSION`]).
    pub to: i32,
    /// The versions applied now, with their names.
    pub applied: Vec<(i32, &'static str)>,
}

/// Who applies a migration, as recorded in `imcast_schema.applied_by`.
pub fn applied_by() -> String {
    format!("imcast {}", env!("CARGO_PKG_VERSION"))
}

/// Bring the schema to [`SCHEMA_VERSION`] (blocking: off the async runtime), or refuse a newer one
/// without touching it.
pub fn migrate(client: &mut postgres::Client) -> Result<Migrated, SchemaError> {
    migrate_with(client, MIGRATIONS)
}

/// [`migrate`] with another list (tests: a "newer" build).
pub fn migrate_with(
    client: &mut postgres::Client,
    migrations: &[Migration],
) -> Result<Migrated, SchemaError> {
    let known = migrations.last().map_or(0, |m| m.version);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(TABLE)?;
    let top = tx.query_opt(
        "SELECT version, applied_by FROM imcast_schema ORDER BY version DESC LIMIT 1",
        &[],
    )?;
    let (from, by): (i32, String) = match top {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (0, String::new()),
    };
    if from > known {
        return Err(SchemaError::Newer {
            found: from,
            known,
            by,
            ours: concat!("imcast ", env!("CARGO_PKG_VERSION")),
        });
    }
    let mut applied = Vec::new();
    let who = applied_by();
    for m in migrations.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql)?;
        tx.execute(
            "INSERT INTO imcast_schema(version, name, applied_by) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &who],
        )?;
        applied.push((m.version, m.name));
    }
    tx.commit()?;
    Ok(Migrated {
        from,
        to: from.max(known),
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pg::test_db;

    /// The journal's tables in the store (migration 6), in the order the test compares them.
    const JOURNAL_TABLES: &[&str] = &[
        "runs",
        "recipients",
        "calls",
        "call_plan",
        "deferred",
        "delivered",
        "run_variants",
        "run_counts",
        "run_invocations",
        "run_stages",
        "control",
        "attempts",
        "report_runs",
        "report_variants",
        "sched_control",
    ];

    /// Tables of the state directory's SQLite file that are not in migration 6, and why.
    const NOT_IN_JOURNAL_MIGRATION: &[&str] = &[
        // The SQLite journal's own bookkeeping.
        "extra_migrations",
        "sqlite_sequence",
        // The scheduler's: already in the store (migrations 2 and 4).
        "sched_campaign",
        "sched_occurrence",
        "sched_roster",
        // Per state directory by design (`daemon::state`): its node id and daemon slot.
        "sched_node",
        "sched_daemon",
    ];

    /// (column, type, not null) of a table as the store layer sees it: SQLite's declared type
    /// mapped to PostgreSQL's (INTEGER → bigint, TEXT → text, BLOB → bytea); a primary key
    /// column counts as NOT NULL (PostgreSQL makes it so; SQLite's statements never store NULL
    /// there).
    type Columns = Vec<(String, String, bool)>;

    fn sqlite_columns(c: &rusqlite::Connection, table: &str) -> Columns {
        let mut st = c
            .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")
            .expect("prepare");
        st.query_map([table], |r| {
            let ty: String = r.get(1)?;
            let ty = match ty.to_ascii_uppercase().as_str() {
                "INTEGER" => "bigint",
                "TEXT" => "text",
                "BLOB" => "bytea",
                other => panic!("{table}: a column of type {other}"),
            };
            Ok((
                r.get::<_, String>(0)?,
                ty.to_string(),
                r.get::<_, i64>(2)? != 0 || r.get::<_, i64>(3)? > 0,
            ))
        })
        .expect("columns")
        .collect::<Result<_, _>>()
        .expect("columns")
    }

    /// The SQLite journal's final schema (its migrations, the report's tables, the daemon's
    /// control log) is migration 6's: the same tables, the same columns in the same order, the
    /// same types and NOT NULLs, and the same explicit index names (`runs_one_unfinished` above
    /// all: the journal recognizes a second unfinished run by that name), so one SQL text runs on
    /// both. And no table of the journal's file is left out by mistake.
    #[test]
    fn the_journal_migration_is_the_sqlite_journals_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = crate::journal::Journal::open(dir.path()).expect("journal");
        j.migrate_extra("report", crate::report::facts::MIGRATIONS)
            .expect("report tables");
        let lite = j.connection().as_sqlite().expect("sqlite");
        crate::daemon::state::migrate(lite).expect("scheduler tables");
        let all: Vec<String> = lite
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("tables")
            .collect::<Result<_, _>>()
            .expect("tables");
        for t in &all {
            assert!(
                JOURNAL_TABLES.contains(&t.as_str())
                    || NOT_IN_JOURNAL_MIGRATION.contains(&t.as_str()),
                "table {t} of the state directory's file is neither in store migration 6 nor said \
                 to stay out of it"
            );
        }
        let lite_indexes = |t: &str| -> Vec<String> {
            lite.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
                 AND sql IS NOT NULL ORDER BY name",
            )
            .expect("prepare")
            .query_map([t], |r| r.get(0))
            .expect("indexes")
            .collect::<Result<_, _>>()
            .expect("indexes")
        };
        let want: Vec<(Columns, Vec<String>)> = JOURNAL_TABLES
            .iter()
            .map(|t| (sqlite_columns(lite, t), lite_indexes(t)))
            .collect();
        assert!(want.iter().all(|(c, _)| !c.is_empty()), "{want:?}");

        let Some(db) = test_db("journal_schema") else {
            return;
        };
        let got: Vec<(Columns, Vec<String>)> = db.with_client(|c| {
            migrate(c).expect("migrate");
            JOURNAL_TABLES
                .iter()
                .map(|t| {
                    let cols = c
                        .query(
                            "SELECT column_name::text, data_type::text, is_nullable = 'NO'
                             FROM information_schema.columns
                             WHERE table_schema = current_schema() AND table_name = $1
                             ORDER BY ordinal_position",
                            &[t],
                        )
                        .expect("columns")
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect();
                    // Explicit indexes only (not those of a primary key or UNIQUE constraint).
                    let idx = c
                        .query(
                            "SELECT indexname::text FROM pg_indexes i
                             WHERE schemaname = current_schema() AND tablename = $1
                               AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                                               WHERE k.conname = i.indexname)
                             ORDER BY indexname",
                            &[t],
                        )
                        .expect("indexes")
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    (cols, idx)
                })
                .collect()
        });
        for ((t, w), g) in JOURNAL_TABLES.iter().zip(&want).zip(&got) {
            assert_eq!(
                g, w,
                "table {t}: PostgreSQL (left) and SQLite (right) differ"
            );
        }
        // The unfinished-run index is partial and unique, as on SQLite.
        let def: String = db.with_client(|c| {
            c.query_one(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'runs_one_unfinished'",
                &[],
            )
            .expect("index")
            .get(0)
        });
        assert!(
            def.starts_with("CREATE UNIQUE INDEX") && def.contains("WHERE"),
            "{def}"
        );
        // Version 7 kept half of the recipients' pages free for the outcome's row version;
        // version 8 (deferred rows: a planned row is written once, by its outcome) fills them.
        let opts: Option<Vec<String>> = db.with_client(|c| {
            c.query_one(
                "SELECT reloptions FROM pg_class WHERE relname = 'recipients'",
                &[],
            )
            .expect("recipients")
            .get(0)
        });
        assert_eq!(opts, Some(vec!["fillfactor=100".to_string()]));
    }

    #[test]
    fn versions_are_one_to_n_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
        assert_eq!(SCHEMA_VERSION, 10, "the limiter's batch is version 10");
        assert!(MIGRATIONS[5].sql.contains("runs_one_unfinished"));
    }

    #[test]
    fn migrates_once_then_refuses_a_newer_schema_untouched() {
        let Some(db) = test_db("schema") else { return };
        db.with_client(|c| {
            let first = migrate(c).expect("migrate");
            assert_eq!(first.from, 0);
            assert_eq!(first.to, SCHEMA_VERSION);
            assert_eq!(first.applied.len(), MIGRATIONS.len());
            // Again: nothing to do.
            let again = migrate(c).expect("migrate again");
            assert_eq!(again.from, SCHEMA_VERSION);
            assert!(again.applied.is_empty());
            // A newer build adds a version …
            let mut newer = MIGRATIONS.to_vec();
            newer.push(Migration {
                version: SCHEMA_VERSION + 1,
                name: "a table of the future",
                sql: "CREATE TABLE imcast_future(x INT)",
            });
            let up = migrate_with(c, &newer).expect("newer migrates");
            assert_eq!(
                up.applied,
                vec![(SCHEMA_VERSION + 1, "a table of the future")]
            );
            // … and this build refuses the store, naming both versions, changing nothing.
            let err = migrate(c).expect_err("refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("version {}", SCHEMA_VERSION + 1))
                    && msg.contains(&format!("up to version {SCHEMA_VERSION}"))
                    && msg.contains("upgrade imcast"),
                "{msg}"
            );
            let n: i64 = c
                .query_one("SELECT count(*) FROM imcast_schema", &[])
                .expect("count")
                .get(0);
            assert_eq!(n, i64::from(SCHEMA_VERSION) + 1);
        });
    }
}
