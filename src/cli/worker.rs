//! `ccsrp worker`: join a job served by `ccsrp master` and evaluate its tasks until it is done.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use ccsrp_worker::runtime::{run_worker, Uuid, WorkerOptions};

use super::stop::{self, StopSignals};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The master's address, e.g. http://10.0.0.5:50051, or https://... for a master serving TLS
    /// (a bare host:port gets https:// with TLS flags, else http://).
    #[arg(long)]
    pub master: String,
    /// Threads for evaluation (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where fetched models and adversarial shards are cached (by sha256).
    #[arg(long, default_value = ".ccsrp-cache")]
    pub cache_dir: PathBuf,
    /// A local copy of the job's dataset (default: the path the job names; synthetic data is generated).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluation device: cpu or cuda:N. Must match the job's backend.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// File holding the job's shared token (else the CCSRP_TOKEN environment variable, else none).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Give up after the master has been unreachable this many seconds (0: never).
    #[arg(long, default_value_t = 300)]
    pub give_up_after: u64,
    #[command(flatten)]
    pub tls: super::tls::ClientTlsArgs,
}

/// The shared token: `--token-file` wins over `CCSRP_TOKEN`; surrounding whitespace is ignored.
pub fn read_token(token_file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?,
        ),
        None => std::env::var("CCSRP_TOKEN").ok(),
    };
    Ok(token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// `http://` is added to a bare `host:port`.
pub fn master_url(master: &str) -> String {
    if master.contains("://") {
        master.to_string()
    } else {
        format!("http://{master}")
    }
}

/// Sizes the CPU thread pool candle computes with; must run before any tensor work starts.
pub fn set_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if args.threads == Some(0) {
        anyhow::bail!("--threads 0: expected at least 1 thread");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    set_threads(threads);
    init_tracing();
    let tls = args.tls.load(&args.master)?;
    let master = if tls.is_configured() && !args.master.contains("://") {
        format!("https://{}", args.master)
    } else {
        master_url(&args.master)
    };
    let options = WorkerOptions {
        master,
        token: read_token(args.token_file.as_deref())?,
        tls,
        cache_dir: args.cache_dir,
        data_dir: args.data_dir,
        device: args.device,
        threads: threads as u32,
        worker_id: Uuid::new_v4(),
        give_up_after: (args.give_up_after > 0).then(|| Duration::from_secs(args.give_up_after)),
    };
    let signals = StopSignals::listen(|signal| {
        stop::announce(
            &indicatif::ProgressBar::hidden(),
            signal,
            "the task in progress stops after its current batch and is left to another worker",
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run_worker(options, signals.first()));
    // A cancelled task ends at its next batch; a step that cannot be cancelled (loading a
    // dataset) does not hold the exit longer than this.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(())
}

/// Logs to stderr; `RUST_LOG` filters (default: info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
