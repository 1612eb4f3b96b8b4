//! `ccsrp eval` (placeholder until its issue lands).

#[derive(clap::Args)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ccsrp eval` is not built yet")
}
