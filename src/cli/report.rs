//! `ccsrp report OUT_DIR`: draws `OUT_DIR/report.html` and its figures (`OUT_DIR/*.svg`) from a
//! finished job's results, with the baselines it finds beside them or is given
//! (`ccsrp_master::report`). A job writes its report when it ends; run this again after the
//! baselines (`ccsrp prune`) or strong evaluations have finished.

use std::path::PathBuf;

use anyhow::Context;

use ccsrp_master::report::{write, ReportOptions};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// A finished job's results directory (`ccsrp run --out` / the master's out dir).
    pub out_dir: PathBuf,
    /// A baseline to draw: a `ccsrp prune` summary.json or the directory holding it (repeat for
    /// more). Also drawn without it: the summary.json of every subdirectory and sibling
    /// directory of OUT_DIR pruned from the same dense model.
    #[arg(long, value_name = "PATH")]
    pub baseline: Vec<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    for b in &args.baseline {
        if !b.exists() {
            anyhow::bail!("--baseline {}: no such file or directory", b.display());
        }
    }
    let page = write(
        &args.out_dir,
        &ReportOptions {
            baselines: args.baseline.clone(),
        },
    )
    .with_context(|| format!("report of {}", args.out_dir.display()))?;
    println!("{}", page.display());
    Ok(())
}
