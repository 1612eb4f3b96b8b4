//! `ccsrp health` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct HealthArgs {}

pub fn run(_args: HealthArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp health` is not built yet")
}
