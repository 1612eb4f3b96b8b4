//! `ccsrp info` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct InfoArgs {}

pub fn run(_args: InfoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp info` is not built yet")
}
