//! `ccsrp master`: serve one job to workers over gRPC (over TLS with `--tls-cert`) until it is done
//! (or SIGTERM/SIGINT).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ccsrp_master::auth::AccessToken;
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::server::{serve, MasterOptions};
use ccsrp_master::shutdown;

use super::stop::{self, StopSignals};

#[derive(clap::Args)]
pub struct MasterArgs {
    /// The job file (TOML): [job], [data], [model], [runtime] and the engine's sections.
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:50051.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Checkpoint and artifacts; an existing checkpoint of the same job is resumed.
    #[arg(long)]
    state_dir: PathBuf,
    /// Where results go when the job ends [default: <state-dir>/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// File holding the shared token every RPC must carry [default: $CCSRP_TOKEN, else none].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Seconds to keep serving after the job is done, so workers learn it and exit (the results
    /// are written when the job ends, before this wait).
    #[arg(long, default_value_t = 5.0)]
    linger_seconds: f64,
    #[command(flatten)]
    tls: super::tls::ServerTlsArgs,
}

pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let config = JobConfig::load(&args.config)?;
    let token = AccessToken::load(args.token_file.as_deref())?;
    let tls = args.tls.load()?;
    if !(args.linger_seconds.is_finite() && args.linger_seconds >= 0.0) {
        anyhow::bail!(
            "--linger-seconds {}: expected a number >= 0",
            args.linger_seconds
        );
    }
    let options = MasterOptions {
        config,
        state_dir: args.state_dir,
        out_dir: args.out,
        token,
        linger: Duration::from_secs_f64(args.linger_seconds),
        tls,
    };
    let signals = StopSignals::listen(|signal| {
        stop::announce(
            &indicatif::ProgressBar::hidden(),
            signal,
            "the master writes its checkpoint and exits",
        )
    })?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
        let (trigger, shutdown) = shutdown::channel();
        let signal = signals.first();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("termination signal: shutting down");
            trigger.trigger();
        });
        let report = serve(options, listener, shutdown).await?;
        if let Some(failure) = &report.failure {
            anyhow::bail!(
                "job failed: {failure} (distinct reasons: {}); fix the cause and restart the master on the same --state-dir to resume",
                failure.distinct_reasons().join("; ")
            );
        }
        match (&report.outcome, &report.out_dir) {
            (Some(o), Some(dir)) => println!(
                "job done: MACs -{:.1}%, results in {}",
                100.0 * o.macs_reduction(),
                dir.display()
            ),
            _ => println!("master stopped before the job was done; restart it on the same --state-dir to resume"),
        }
        Ok(())
    })
}
