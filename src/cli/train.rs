//! `ccsrp train` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp train` is not built yet")
}
