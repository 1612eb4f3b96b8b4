//! `ccsrp worker` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct WorkerArgs {}

pub fn run(_args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp worker` is not built yet")
}
