//! `ccsrp health`: the standard gRPC health check, for container health checks.

#[derive(clap::Args)]
pub struct HealthArgs {
    /// The master, e.g. http://127.0.0.1:50051 (https://... for a master serving TLS).
    #[arg(long)]
    master: String,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
}

pub fn run(args: HealthArgs) -> anyhow::Result<()> {
    let tls = args.tls.load(&args.master)?;
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(ccsrp_master::client::is_serving(&args.master, &tls)) {
        Ok(true) => {
            println!("SERVING");
            Ok(())
        }
        Ok(false) => anyhow::bail!("master {} is not serving", args.master),
        Err(status) => anyhow::bail!(
            "health check of {} failed: {}",
            args.master,
            runtime.block_on(ccsrp_master::client::explain(&args.master, &tls, &status))
        ),
    }
}
