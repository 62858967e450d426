//! `imcast validate`: everything checkable offline, for every file; every problem listed.

use anyhow::anyhow;

use crate::cli::{GlobalArgs, ValidateArgs};
use crate::exit::{CmdResult, Exit, Failure};
use crate::plan::PlanOptions;
use crate::spec::LoadOptions;

pub fn run(_g: &GlobalArgs, a: &ValidateArgs) -> CmdResult {
    let opts = LoadOptions {
        allow_endpoints: a.allow_endpoint.clone(),
    };
    let mut bad = 0usize;
    for file in &a.files {
        let c = match crate::spec::load(file, &opts) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
                continue;
            }
        };
        let extra = match crate::config::account_suppress(file, None) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
                continue;
            }
        };
        match crate::plan::build(
            &c,
            &PlanOptions {
                extra_suppress: extra,
            },
        ) {
            Ok(p) => {
                let n = p.counts();
                crate::outln!(
                    "ok  {}: {} valid of {} rows, {} calls",
                    file.display(),
                    n.valid,
                    n.total,
                    n.calls
                );
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!("{bad} of {} campaign file(s) invalid", a.files.len()),
        ));
    }
    Ok(Exit::Ok)
}
