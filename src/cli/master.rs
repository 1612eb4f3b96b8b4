//! `ccsrp master` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct MasterArgs {}

pub fn run(_args: MasterArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp master` is not built yet")
}
