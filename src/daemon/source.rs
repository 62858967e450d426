//! Where the daemon's campaigns come from: a [`CampaignSource`] turns one file into a
//! [`LoadedCampaign`] (name, content hash, schedule, quiet hours and a typed [`Payload`] the
//! runner gets back), and [`scan_dir`] loads every campaign file of a folder.
//!
//! Invariants: a file that fails to load is reported with its error and never yields a
//! campaign; two files claiming the same `name:` are both reported and the later one (by path)
//! is rejected. Must not: send anything or touch the state database.
//!
//! [`SpecSource`] is the real one: `spec::load` (the full validation `imcast validate` does),
//! payload = [`Payload::Campaign`], content hash over the campaign file and every input it reads
//! (audience and exclude CSVs, a template file, `imcast.toml` and its suppression lists).
//! [`StandInSource`] reads only `name:` and `schedule:` (payload = [`Payload::Text`]); the
//! scheduler's simulated-clock tests use it so their files need no audience or message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::schedule::{QuietHours, RawSchedule, Schedule};

/// What the runner gets back to start a run of a loaded file; the daemon never looks inside.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The validated campaign ([`SpecSource`]): what `run::run_campaign` sends.
    Campaign(Arc<crate::spec::Campaign>),
    /// The file's text ([`StandInSource`]): scheduler tests, nothing to send.
    Text(Arc<str>),
}

impl Payload {
    /// The loaded campaign, if this payload is one.
    pub fn campaign(&self) -> Option<&crate::spec::Campaign> {
        match self {
            Payload::Campaign(c) => Some(c),
            Payload::Text(_) => None,
        }
    }

    /// The file's text, if this payload is a stand-in's.
    pub fn text(&self) -> Option<&str> {
        match self {
            Payload::Text(t) => Some(t),
            Payload::Campaign(_) => None,
        }
    }
}

/// One valid campaign file.
#[derive(Clone)]
pub struct LoadedCampaign {
    pub name: String,
    /// Hex SHA-256 of the files that decide what is sent (paths and contents); not the plan hash.
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

/// (length, mtime, hex sha256) of one input file.
type CachedHash = (u64, Option<SystemTime>, String);

/// Loads campaigns with `spec::load`; the payload is the `spec::Campaign`.
#[derive(Debug, Default)]
pub struct SpecSource {
    opts: crate::spec::LoadOptions,
    /// File hashes keyed by (path, length, mtime): a large audience CSV is read again only when
    /// its metadata changes, not at every rescan. (A same-length rewrite within one filesystem
    /// timestamp tick of the previous read would go unnoticed here; the run's own plan hash in
    /// the journal still decides what is sent.)
    cache: Mutex<BTreeMap<PathBuf, CachedHash>>,
}

impl SpecSource {
    pub fn new(opts: crate::spec::LoadOptions) -> Self {
        SpecSource {
            opts,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// Hex sha256 of a file's bytes (cached by length + mtime); a missing file hashes as "missing".
    fn file_hash(&self, path: &Path) -> String {
        let Ok(meta) = std::fs::metadata(path) else {
            return "missing".into();
        };
        let key = (meta.len(), meta.modified().ok());
        if let Ok(g) = self.cache.lock() {
            if let Some((len, mtime, h)) = g.get(path) {
                if (*len, *mtime) == key {
                    return h.clone();
                }
            }
        }
        let h = match std::fs::File::open(path) {
            Ok(mut f) => {
                let mut hasher = Sha256::new();
                match std::io::copy(&mut f, &mut hasher) {
                    Ok(_) => hex::encode(hasher.finalize()),
                    Err(_) => "unreadable".into(),
                }
            }
            Err(_) => "unreadable".into(),
        };
        if let Ok(mut g) = self.cache.lock() {
            g.insert(path.to_path_buf(), (key.0, key.1, h.clone()));
        }
        h
    }

    /// Every file whose content decides what the campaign sends.
    fn inputs(c: &crate::spec::Campaign) -> Vec<PathBuf> {
        use crate::spec::{Body, MessageKind, Source};
        let mut v = vec![c.path.clone()];
        for src in std::iter::once(&c.audience.source).chain(c.audience.exclude.iter()) {
            if let Source::Csv { path, .. } = src {
                v.push(path.clone());
            }
        }
        if let MessageKind::Text {
            body: Body::File(p),
        }
        | MessageKind::Raw {
            body: Body::File(p),
        } = &c.message.kind
        {
            v.push(p.clone());
        }
        let paths = crate::config::RepoPaths::discover(&c.path, None, None, None);
        if let Some(cfg) = &paths.config {
            v.push(cfg.clone());
            if let Ok(acc) = paths.account_config() {
                v.extend(acc.suppress);
            }
        }
        v
    }
}

impl CampaignSource for SpecSource {
    fn load(&self, path: &Path) -> Result<LoadedCampaign, String> {
        let c = crate::spec::load(path, &self.opts).map_err(|e| e.to_string())?;
        let mut h = Sha256::new();
        for input in Self::inputs(&c) {
            h.update(input.display().to_string().as_bytes());
            h.update([0]);
            h.update(self.file_hash(&input).as_bytes());
            h.update([0]);
        }
        Ok(LoadedCampaign {
            name: c.name.clone(),
            content_hash: hex::encode(h.finalize()),
            schedule: c.schedule.clone(),
            quiet_hours: c.quiet_hours.clone(),
            payload: Payload::Campaign(Arc::new(c)),
        })
    }
}

/// Reads `name:` and `schedule:` only (for scheduler tests): reads `name:` and `schedule:` only.
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
            payload: Payload::Text(text.into()),
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

    #[test]
    fn spec_source_hash_follows_the_campaign_and_its_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "user_id\n1\n2\n").expect("csv");
        let file = dir.path().join("c.yaml");
        let text = "version: 1\nname: c\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { csv: a.csv }\nmessage: { type: text, text: hi }\nschedule: { cron: \"0 9 * * *\", timezone: UTC }\n";
        std::fs::write(&file, text).expect("yaml");
        let src = SpecSource::default();
        let a = src.load(&file).expect("valid");
        assert_eq!(a.name, "c");
        assert!(a.schedule.is_some());
        assert_eq!(a.payload.campaign().map(|c| c.name.as_str()), Some("c"));
        assert_eq!(src.load(&file).expect("valid").content_hash, a.content_hash);
        std::fs::write(&csv, "user_id\n1\n33\n").expect("csv");
        let b = src.load(&file).expect("valid");
        assert_ne!(b.content_hash, a.content_hash, "audience change");
        std::fs::write(&file, text.replace("text: hi", "text: ho")).expect("yaml");
        let c = src.load(&file).expect("valid");
        assert_ne!(c.content_hash, b.content_hash, "campaign change");
        std::fs::write(&file, "version: 1\nname: c\n").expect("yaml");
        let e = src.load(&file).expect_err("invalid");
        assert!(e.contains("c.yaml"), "{e}");
    }
}
