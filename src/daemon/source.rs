//! Where the daemon's campaigns come from: a [`CampaignSource`] turns one file into a
//! [`LoadedCampaign`] (name, content hash, schedule, quiet hours and an opaque payload the
//! runner gets back), and [`scan_dir`] loads every campaign file of a folder.
//!
//! Invariants: a file that fails to load is reported with its error and never yields a
//! campaign; two files claiming the same `name:` are both reported and the later one (by path)
//! is rejected. Must not: send anything or touch the state database.
//!
//! [`StandInSource`] is a STAND-IN until the spec stream lands: it reads only `name:` and
//! `schedule:` with serde-saphyr. At merge it is replaced by an adapter over `spec::load`
//! (whose `Campaign` becomes the payload).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::schedule::{QuietHours, RawSchedule, Schedule};

/// Whatever the runner needs to start a run (the loaded campaign); the daemon never looks inside.
pub type Payload = Arc<dyn Any + Send + Sync>;

/// One valid campaign file.
#[derive(Clone)]
pub struct LoadedCampaign {
    pub name: String,
    /// Hex hash of what decides what is sent (the plan hash once the plan stage is wired).
    pub content_hash: String,
    pub schedule: Option<Schedule>,
    pub quiet_hours: Option<QuietHours>,
    pub payload: Payload,
}

impl std::fmt::Debug for LoadedCampaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCampaign")
            .field("name", &self.name)
            .field("content_hash", &self.content_hash)
            .field("schedule", &self.schedule.as_ref().map(|s| s.describe()))
            .finish_non_exhaustive()
    }
}

/// Loads one campaign file. The error is a complete message for people (file, field, fix).
pub trait CampaignSource: Send + Sync {
    fn load(&self, path: &Path) -> Result<LoadedCampaign, String>;
}

/// Campaign files in `dir`: `*.yaml` / `*.yml`, not hidden, not recursive, sorted by path.
pub fn campaign_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Load every campaign file in `dir`. Duplicate names: the first file (by path) wins, the later
/// one is an error naming both.
pub fn scan_dir(
    dir: &Path,
    source: &dyn CampaignSource,
) -> std::io::Result<Vec<(PathBuf, Result<LoadedCampaign, String>)>> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for path in campaign_files(dir)? {
        let loaded = source.load(&path).and_then(|c| {
            if let Some(first) = seen.get(&c.name) {
                return Err(format!(
                    "{}: campaign name {:?} is already used by {}; names must be unique in the folder",
                    path.display(),
                    c.name,
                    first.display()
                ));
            }
            seen.insert(c.name.clone(), path.clone());
            Ok(c)
        });
        out.push((path, loaded));
    }
    Ok(out)
}

/// STAND-IN (replaced by `spec::load` at merge): reads `name:` and `schedule:` only.
#[derive(Debug, Default, Clone, Copy)]
pub struct StandInSource;

#[derive(serde::Deserialize)]
struct StandInFile {
    name: Option<String>,
    schedule: Option<RawSchedule>,
}

impl CampaignSource for StandInSource {
    fn load(&self, path: &Path) -> Result<LoadedCampaign, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: StandInFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = file.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| {
            format!(
                "{}: name: missing; every campaign needs a `name:`",
                path.display()
            )
        })?;
        let raw = file.schedule.unwrap_or_default();
        let schedule = Schedule::from_raw(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
        let quiet_hours = raw
            .quiet_hours
            .as_ref()
            .map(QuietHours::from_raw)
            .transpose()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let content_hash = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(LoadedCampaign {
            name,
            content_hash,
            schedule,
            quiet_hours,
            payload: Arc::new(text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_reads_name_and_schedule_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.yaml"),
            "name: a\naction: batch\nschedule:\n  cron: \"0 9 * * *\"\n  timezone: Asia/Shanghai\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("b.yml"),
            "name: b\nschedule:\n  cron: \"0 9 * * *\"\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("c.yaml"), "name: a\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "name: x\n").expect("write");
        let got = scan_dir(dir.path(), &StandInSource).expect("scan");
        assert_eq!(got.len(), 3);
        let a = got[0].1.as_ref().expect("a valid");
        assert_eq!(a.name, "a");
        assert!(a.schedule.is_some());
        let b = got[1].1.as_ref().expect_err("b invalid");
        assert!(b.contains("schedule.timezone: required"), "{b}");
        let c = got[2].1.as_ref().expect_err("c duplicate");
        assert!(c.contains("already used by"), "{c}");
    }
}
