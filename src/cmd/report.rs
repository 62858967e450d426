//! `imcast report FILE [--run ID] [--report-format csv,jsonl] [--open]`: rewrite a run's report
//! (report.html, summary.json and the per-recipient files) from the journal, and optionally open
//! report.html in a browser. `--mock` reads the mock runs (`<state>/mock/`); a mock run's report
//! always goes under `reports/mock/` — decided from the run's recorded flags, so
//! `--state-dir .imcast/mock` cannot put it among the real campaign's reports.
//!
//! `--open` never fails the command: with no browser to hand (no `xdg-open`/`open`, or no
//! graphical session on Linux) it prints the page's path and says so.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::cli::{GlobalArgs, ReportArgs};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::report::{write_report_with, ReportOptions};

pub fn run(_g: &GlobalArgs, args: &ReportArgs) -> CmdResult {
    let name = super::status::campaign_name(&args.file)?;
    let (base, paths) = super::status::paths_for(
        &args.file,
        &args.state,
        args.report_dir.as_deref(),
        args.mock,
    );
    let formats = match args.report_format {
        Some(f) => f,
        None => paths.account_config().exit(Exit::Invalid)?.report_formats,
    };
    let hint = || {
        if args.mock {
            String::new()
        } else {
            super::status::mock_hint(&base, &name, &args.file, "report")
                .map(|h| format!(". {h}"))
                .unwrap_or_default()
        }
    };
    let Some(j) = super::status::open_existing(&paths, args.mock)? else {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "campaign {name:?} has no {}runs (no journal at {}); pass --state-dir if it lives elsewhere{}",
                if args.mock { "mock " } else { "" },
                paths.state_dir.display(),
                hint()
            ),
        ));
    };
    let run = match &args.run {
        Some(id) => j
            .run(id)
            .exit(Exit::Internal)?
            .filter(|r| r.campaign == name),
        None => j.latest_run(&name, true).exit(Exit::Internal)?,
    };
    let Some(run) = run else {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "campaign {name:?} has no {}run {}; `imcast status {}{}` shows the latest{}",
                if args.mock { "mock " } else { "" },
                args.run.as_deref().unwrap_or("yet"),
                args.file.display(),
                if args.mock { " --mock" } else { "" },
                hint()
            ),
        ));
    };
    // A mock run's report goes under reports/mock/ whatever the state directory was called.
    let reports_dir =
        super::status::reports_dir_for(&run, &base, args.mock, args.report_dir.is_some());
    let opts = ReportOptions {
        formats,
        campaign_file: Some(args.file.clone()),
        ..ReportOptions::default()
    };
    let p = match write_report_with(&j, &run.id, &reports_dir, &opts) {
        Ok(p) => p,
        Err(e) => {
            if let Some(path) = e.disk_full() {
                return Err(Failure::new(
                    Exit::Environment,
                    anyhow!(
                        "the disk is full: imcast could not write {}, so the report of run {} was not \
                         written. Nothing was lost: the journal holds the run. Free space, then run \
                         `imcast report {}` again",
                        path.display(),
                        run.id,
                        args.file.display()
                    ),
                ));
            }
            return Err(Failure::new(Exit::Internal, e));
        }
    };
    crate::errln!("Report of run {} written: {}", run.id, p.html.display());
    if p.compressed {
        crate::errln!(
            "The run has more than {} rows: the per-recipient files are zstd-compressed (read them with zstdcat).",
            crate::report::fmt_count(crate::report::COMPRESS_ABOVE_ROWS)
        );
    }
    if args.open {
        match open_in_browser(&p.html) {
            Ok(how) => crate::errln!("Opened {} with {how}.", p.html.display()),
            Err(why) => crate::errln!(
                "Not opened: {why}. The page is {}; open it in any browser.",
                p.html.display()
            ),
        }
    }
    crate::outln!("{}", p.dir.display());
    Ok(Exit::Ok)
}

/// Open `page` with the desktop's opener; Err says why there is no browser to hand.
fn open_in_browser(page: &Path) -> Result<String, String> {
    let (opener, needs_display) = if cfg!(target_os = "macos") {
        ("open", false)
    } else if cfg!(windows) {
        ("explorer", false)
    } else {
        ("xdg-open", true)
    };
    if needs_display
        && std::env::var_os("DISPLAY").is_none_or(|v| v.is_empty())
        && std::env::var_os("WAYLAND_DISPLAY").is_none_or(|v| v.is_empty())
    {
        return Err("no graphical session (neither DISPLAY nor WAYLAND_DISPLAY is set)".into());
    }
    let Some(bin) = find_in_path(opener) else {
        return Err(format!("no `{opener}` on PATH"));
    };
    let mut child = std::process::Command::new(&bin)
        .arg(page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{} could not start: {e}", bin.display()))?;
    // The opener hands the page to the browser and returns; wait a little for its verdict,
    // without ever hanging the command on it.
    for _ in 0..50 {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(opener.into()),
            Ok(Some(st)) => return Err(format!("`{opener}` failed ({st})")),
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Err(format!("`{opener}`: {e}")),
        }
    }
    Ok(opener.into())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
