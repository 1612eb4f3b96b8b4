//! `ccsrp watch` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct WatchArgs {}

pub fn run(_args: WatchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp watch` is not built yet")
}
