//! What `imcast schedule DIR` shows: each campaign's next occurrences (in its zone and UTC) and
//! its past ones with their outcome from the `sched_*` tables, which daemon (host, pid)
//! decided or claimed each, and the daemons on the store (`sched_roster`) with whether each looks
//! alive at `now` ([`state::DaemonRow::alive`]: not stopped and seen within
//! [`state::ALIVE_BEATS`] refresh intervals). An active occurrence (claimed, running, paused)
//! whose daemon does not look alive gets a note: with the journal in a PostgreSQL store, a live
//! daemon whose folder has the campaign takes it over once the run's lease expired; otherwise
//! (one state directory, or the journal not in the store yet) it resumes when that daemon
//! restarts. An
//! occurrence a daemon took over names its holder now and whom it was taken over from
//! ([`state::taken_over`]). Builds data only; the command renders it (human text or JSON).
//! `imcast status` shows the same list of daemons ([`daemon_views`], [`render_daemons`]).
//! Must not: write to the state database.

use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;

use super::source::{scan_dir, CampaignSource};
use super::state::{self, StateError};

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    pub now: String,
    /// The daemons on the store (the state directory's, or every one on `[state] url`).
    pub daemons: Vec<DaemonView>,
    pub campaigns: Vec<CampaignView>,
    pub invalid: Vec<InvalidFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignView {
    pub name: String,
    /// File name inside the folder.
    pub file: String,
    /// `None`: no schedule; the daemon never fires it.
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub not_after_seconds: Option<u64>,
    pub overlap: Option<String>,
    pub quiet_hours: Option<String>,
    pub paused: bool,
    pub next: Vec<When>,
    pub past: Vec<Past>,
}

#[derive(Debug, Clone, Serialize)]
pub struct When {
    pub local: String,
    pub utc: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Past {
    pub local: String,
    pub utc: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The host of the daemon that decided or claimed it (recorded since imcast knew more than
    /// one daemon on a store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Its daemon's node id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Set when it is active (claimed, running, paused) and its daemon does not look alive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `taken over from HOST (pid N) at UTC`: the daemon above took it (and its run) over from
    /// that one, which was not alive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<String>,
}

/// One daemon of the roster.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonView {
    /// Its state directory's node id.
    pub node: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: String,
    pub last_seen: String,
    /// Seconds between `last_seen` and `now` (negative: its clock is ahead of this one).
    pub last_seen_ago_seconds: i64,
    /// Not stopped and seen within `alive_window_seconds`.
    pub alive: bool,
    /// [`state::ALIVE_BEATS`] times its refresh interval.
    pub alive_window_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

impl DaemonView {
    fn state(&self) -> String {
        let ago = humantime::format_duration(std::time::Duration::from_secs(
            self.last_seen_ago_seconds.max(0).unsigned_abs(),
        ));
        if self.stopped_at.is_some() {
            format!("stopped {ago} ago")
        } else if self.alive {
            format!("alive, last seen {ago} ago")
        } else {
            format!("NOT ALIVE, last seen {ago} ago")
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InvalidFile {
    pub file: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("campaign folder {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The roster as people read it at `now` (also `imcast status`'s list of daemons).
pub fn daemon_views(roster: &[state::DaemonRow], now: Timestamp) -> Vec<DaemonView> {
    let at = |s: i64| ts(s).to_string();
    roster
        .iter()
        .map(|d| DaemonView {
            node: d.node.clone(),
            host: d.host.clone(),
            pid: d.pid,
            version: d.version.clone(),
            started_at: at(d.started_at),
            last_seen: at(d.last_seen),
            last_seen_ago_seconds: now.as_second() - d.last_seen,
            alive: d.alive(now.as_second()),
            alive_window_seconds: d.alive_window(),
            stopped_at: d.stopped_at.map(at),
        })
        .collect()
}

/// The daemons block of the human text (`imcast schedule`, `imcast status`): a header line and
/// one line per daemon; empty when there are none.
pub fn render_daemons(daemons: &[DaemonView]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if let Some(d) = daemons.first() {
        let _ = writeln!(
            o,
            "daemons (alive: seen within {} refresh intervals, {}):",
            state::ALIVE_BEATS,
            humantime::format_duration(std::time::Duration::from_secs(
                d.alive_window_seconds.max(0).unsigned_abs()
            ))
        );
        for d in daemons {
            let _ = writeln!(
                o,
                "  {} (pid {}, node {}, imcast {})   started {}   {}",
                d.host,
                d.pid,
                d.node.get(..8).unwrap_or(&d.node),
                d.version,
                d.started_at,
                d.state()
            );
        }
    }
    o
}

/// Build the view. `conn` is the state database if it exists; `past` caps past rows per campaign.
pub fn schedule_view(
    dir: &Path,
    source: &dyn CampaignSource,
    conn: Option<&state::Conn>,
    now: Timestamp,
    next: usize,
    past: usize,
) -> Result<ScheduleView, ViewError> {
    let files = scan_dir(dir, source).map_err(|e| ViewError::Dir {
        path: dir.display().to_string(),
        source: e,
    })?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let roster = match conn {
        Some(conn) => state::roster(conn)?,
        None => Vec::new(),
    };
    let daemons = daemon_views(&roster, now);
    // In a shared store (the journal is there too), another daemon takes a silent one's runs
    // over; on one state directory they wait for a daemon there.
    let takeover = conn.is_some_and(|c| c.backend() == crate::store::Backend::Postgres);
    let note = |r: &state::OccurrenceRow| -> Option<String> {
        if !state::status::ACTIVE.contains(&r.status.as_str()) {
            return None;
        }
        let d = daemons.iter().find(|d| Some(&d.node) == r.node.as_ref())?;
        let how = if d.stopped_at.is_some() {
            "stopped"
        } else {
            "not alive"
        };
        (!d.alive).then(|| {
            if takeover {
                format!(
                    "its daemon on {} (pid {}) is {how}: a live daemon whose folder has this \
                     campaign takes it over once the run's lease has expired (or that daemon \
                     resumes it when it restarts first)",
                    d.host, d.pid
                )
            } else {
                format!(
                    "its daemon on {} (pid {}) is {how}: it resumes when that daemon restarts \
                     (no other daemon takes over a run in progress yet)",
                    d.host, d.pid
                )
            }
        })
    };
    let mut campaigns = Vec::new();
    let mut invalid = Vec::new();
    for (path, res) in files {
        let c = match res {
            Ok(c) => c,
            Err(e) => {
                let prefix = format!("{}: ", path.display());
                let shown = e.strip_prefix(&prefix).unwrap_or(&e).to_string();
                invalid.push(InvalidFile {
                    file: file_name(&path),
                    error: shown,
                });
                continue;
            }
        };
        let sched = c.schedule.as_ref();
        let next_list = sched
            .map(|s| {
                s.upcoming(now, next)
                    .into_iter()
                    .map(|t| When {
                        local: s.local(t),
                        utc: t.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (rows, paused) = match conn {
            Some(conn) => (
                state::occurrences(conn, Some(&c.name))?,
                state::campaign(conn, &c.name)?.is_some_and(|r| r.paused),
            ),
            None => (Vec::new(), false),
        };
        let skip = rows.len().saturating_sub(past);
        let past_list = rows
            .into_iter()
            .skip(skip)
            .map(|r| {
                let t = ts(r.occurrence);
                let note = note(&r);
                let taken_over = state::taken_over(r.detail.as_deref()).map(str::to_string);
                Past {
                    local: sched.map(|s| s.local(t)).unwrap_or_else(|| t.to_string()),
                    utc: t.to_string(),
                    status: r.status,
                    detail: r.detail,
                    host: r.host,
                    pid: r.pid,
                    node: r.node,
                    note,
                    taken_over,
                }
            })
            .collect();
        campaigns.push(CampaignView {
            name: c.name.clone(),
            file: file_name(&path),
            schedule: sched.map(|s| s.describe()),
            timezone: sched.map(|s| s.timezone_name().to_string()),
            not_after_seconds: sched.map(|s| s.not_after().as_secs()),
            overlap: sched.map(|s| s.overlap().as_str().to_string()),
            quiet_hours: c.quiet_hours.as_ref().map(|q| q.describe()),
            paused,
            next: next_list,
            past: past_list,
        });
    }
    Ok(ScheduleView {
        now: now.to_string(),
        daemons,
        campaigns,
        invalid,
    })
}

/// Human text for [`ScheduleView`].
pub fn render_human(v: &ScheduleView) -> String {
    use std::fmt::Write as _;
    let mut o = render_daemons(&v.daemons);
    for c in &v.campaigns {
        let _ = writeln!(
            o,
            "{} ({}){}",
            c.name,
            c.file,
            if c.paused { "  [paused]" } else { "" }
        );
        match &c.schedule {
            None => {
                let _ = writeln!(
                    o,
                    "  no schedule: the daemon never fires it (send with `imcast run`)"
                );
            }
            Some(s) => {
                let _ = writeln!(
                    o,
                    "  {s}; not_after {}; overlap {}",
                    humantime::format_duration(std::time::Duration::from_secs(
                        c.not_after_seconds.unwrap_or(0)
                    )),
                    c.overlap.as_deref().unwrap_or("skip")
                );
            }
        }
        if let Some(q) = &c.quiet_hours {
            let _ = writeln!(o, "  quiet hours {q}");
        }
        if c.schedule.is_some() {
            if c.next.is_empty() {
                let _ = writeln!(o, "  next: none");
            } else {
                let _ = writeln!(o, "  next:");
                for w in &c.next {
                    let _ = writeln!(o, "    {}   {}", w.local, w.utc);
                }
            }
        }
        if !c.past.is_empty() {
            let _ = writeln!(o, "  past:");
            for p in &c.past {
                let by = match (&p.host, p.pid) {
                    (Some(h), Some(pid)) => format!("   by {h} (pid {pid})"),
                    (Some(h), None) => format!("   by {h}"),
                    _ => String::new(),
                };
                let _ = writeln!(o, "    {}   {}   {}{by}", p.local, p.utc, p.status);
                if let Some(t) = &p.taken_over {
                    let _ = writeln!(o, "      {t}");
                }
                if let Some(n) = &p.note {
                    let _ = writeln!(o, "      note: {n}");
                }
            }
        }
    }
    for i in &v.invalid {
        let _ = writeln!(o, "INVALID {}: {}", i.file, i.error);
    }
    if v.campaigns.is_empty() && v.invalid.is_empty() {
        let _ = writeln!(o, "no campaign files (*.yaml, *.yml) in the folder");
    }
    o
}
