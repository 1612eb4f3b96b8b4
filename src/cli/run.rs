//! `ccsrp run` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct RunArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp run` is not built yet")
}
