//! `ccsrp status` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct StatusArgs {}

pub fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp status` is not built yet")
}
