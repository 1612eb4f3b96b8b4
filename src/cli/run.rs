//! `ccsrp run`: a whole job in one process. The master's library serves on `127.0.0.1:0` and N
//! worker loops dial it, so the embedded run exercises exactly the code paths of a cluster (real
//! gRPC, leases, artifacts, checkpoints); only the processes differ.
//!
//! Without `--config` the job is [`DEFAULT_JOB`]: the `small` SNN trained on the built-in synthetic
//! dataset and pruned in two outer iterations, sized to finish in a few minutes on 2 CPU cores.
//! A dense model trained by an earlier run with the same data, pretraining settings and seed is
//! reused from the cache directory instead of being trained again.
//!
//! SIGINT or SIGTERM stops the job in any phase within about a second (`cli::stop`): the workers
//! cancel their tasks at the next batch, the master writes its checkpoint, and the message says
//! how to resume (`--resume`). A run without `--resume` starts afresh: it clears `<out>/state`,
//! and the master removes an earlier run's result files from the out dir, so the out dir never
//! holds one run's results beside another's partial state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use ccsrp_master::artifact_store::ArtifactStore;
use ccsrp_master::auth::AccessToken;
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::server::{serve, MasterOptions};
use ccsrp_master::shutdown;
use ccsrp_proto::artifact_chunks::sha256_hex;
use ccsrp_proto::v1::progress_client::ProgressClient;
use ccsrp_proto::v1::{JobStatus, StatusRequest};
use ccsrp_worker::runtime::{run_worker, Uuid, WorkerOptions};

use crate::cli::stop::{self, StopSignals};
use crate::cli::worker::init_tracing;

/// The job `ccsrp run` runs without `--config` (every field not named here has the default of
/// the job file reference in README). Sized for 2 CPU cores: a `small` SNN (32-M-64-M-128-M, T = 4)
/// trained 3 epochs on 4,000 synthetic images, candidates scored on 256 held-out images in 4
/// shards, 2 outer iterations of 3 generations, tested on 500 images with FGSM and PGD-7.
pub const DEFAULT_JOB: &str = r#"
[job]
name = "ccsrp-run"
seed = 1

[data]
kind = "synthetic"
eval_size = 256
eval_shards = 4
val_size = 500
train_limit = 4000
test_limit = 500

[pretrain]
arch = "small"
timesteps = 4
epochs = 3

[evolution]
iterations = 2
generations = 3

[finetune]
epochs = 1

[test_attack.pgd]
steps = 7

[runtime]
lease_seconds = 120
heartbeat_seconds = 5
"#;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Job file (see the README, "The job file"); default: the built-in small synthetic job.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker loops in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Dataset (synthetic, fashion-mnist, mnist, cifar10, svhn, folder): replaces `[data] kind`.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Dataset directory: replaces `[data] data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Results directory; the job's state lives in its `state/` sub-directory.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Replaces `[job] seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluation device of the workers: cpu or cuda:N (the job's backend must match).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Artifact cache of the workers, also where trained dense models are kept for reuse.
    #[arg(long, default_value = ".ccsrp-cache")]
    pub cache_dir: PathBuf,
    /// Continue the job in `<out>/state` instead of starting afresh.
    #[arg(long)]
    pub resume: bool,
    /// Print one JSON object (the summary) instead of a human summary.
    #[arg(long)]
    pub json: bool,
}

/// The job after the command line's replacements.
fn job_config(args: &RunArgs) -> anyhow::Result<JobConfig> {
    let mut config = match &args.config {
        Some(path) => JobConfig::load(path)?,
        None => JobConfig::parse(DEFAULT_JOB, "the built-in default job")?,
    };
    if let Some(dataset) = &args.dataset {
        config.data.kind = dataset.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.data.data_dir = dir.display().to_string();
    }
    if let Some(seed) = args.seed {
        config.job.seed = seed;
    }
    if args.workers == 0 {
        anyhow::bail!("--workers 0: expected at least 1 worker");
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("job after the command-line replacements: {e}"))?;
    Ok(config)
}

/// Where a dense model trained for this job's data, pretraining settings and seed is kept.
fn dense_cache_path(config: &JobConfig, cache_dir: &Path) -> PathBuf {
    let key = serde_json::json!({
        "seed": config.job.seed,
        "backend": config.job.backend,
        "data": config.data,
        "pretrain": config.pretrain,
    });
    let digest = sha256_hex(key.to_string().as_bytes());
    cache_dir.join(format!("dense-{}.safetensors", &digest[..16]))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = job_config(&args)?;
    if !args.json {
        init_tracing_quiet();
    }
    let bar = progress_bar(args.json);
    let signals = StopSignals::listen({
        let bar = bar.clone();
        move |signal| {
            stop::announce(
                &bar,
                signal,
                "the workers leave their tasks and the master saves the job's state",
            )
        }
    })?;
    let state_dir = args.out.join("state");
    if !args.resume && state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).with_context(|| {
            format!(
                "clearing the previous run's state in {}",
                state_dir.display()
            )
        })?;
    }
    let dense_cache = dense_cache_path(&config, &args.cache_dir);
    let reused = config.model.path.is_none() && dense_cache.exists();
    if reused {
        config.model.path = Some(dense_cache.clone());
    }
    let trains_dense = config.model.path.is_none();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run_job(
        &args,
        config.clone(),
        &state_dir,
        bar,
        signals.first(),
    ));
    // Cancelled tasks end at their next batch; a step that cannot be cancelled (loading a
    // dataset) does not hold the exit longer than this.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = report?;
    if let Some(failure) = &report.failure {
        anyhow::bail!(
            "job failed: {failure} (distinct reasons: {}); see {}; fix the cause and run again with --resume to resume",
            failure.distinct_reasons().join("; "),
            args.out.join(ccsrp_master::server::FAILED_FILE).display()
        );
    }
    let Some(outcome) = report.outcome else {
        if let Some(stopped) = signals.stopped() {
            return Err(stopped
                .then(format!(
                    "the job's state is saved in {}; to resume it, run: {}",
                    state_dir.display(),
                    resume_command(std::env::args().skip(1))
                ))
                .into());
        }
        anyhow::bail!("the job stopped before it finished");
    };

    if trains_dense {
        let store = ArtifactStore::open(&state_dir.join("artifacts"))?;
        let bytes = store.get(&outcome.dense.model.0)?;
        std::fs::create_dir_all(&args.cache_dir)
            .with_context(|| format!("--cache-dir {}", args.cache_dir.display()))?;
        std::fs::write(&dense_cache, bytes)
            .with_context(|| format!("caching the dense model in {}", dense_cache.display()))?;
    }

    let summary_path = args.out.join("summary.json");
    let summary = std::fs::read_to_string(&summary_path)
        .with_context(|| format!("reading {}", summary_path.display()))?;
    if args.json {
        println!("{}", summary.trim());
    } else {
        let dense = &outcome.dense;
        let answer = &outcome.answer;
        let pct = |c: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * c as f64 / n as f64
            }
        };
        println!(
            "dense model{}: validation clean {:.1}% PGD {:.1}% | test clean {:.1}%  FGSM {:.1}%  PGD {:.1}%  {} MACs",
            if reused { " (reused from cache)" } else { "" },
            pct(dense.validation.clean, dense.validation.samples),
            pct(dense.validation.pgd, dense.validation.samples),
            pct(dense.test.clean, dense.test.samples),
            pct(dense.test.fgsm, dense.test.samples),
            pct(dense.test.pgd, dense.test.samples),
            dense.macs
        );
        println!(
            "pruned (iteration {}): validation clean {:.1}% PGD {:.1}% | test clean {:.1}%  FGSM {:.1}%  PGD {:.1}%  {} MACs ({:.1}% fewer)",
            answer.iteration,
            pct(answer.validation.clean, answer.validation.samples),
            pct(answer.validation.pgd, answer.validation.samples),
            pct(answer.test.clean, answer.test.samples),
            pct(answer.test.fgsm, answer.test.samples),
            pct(answer.test.pgd, answer.test.samples),
            answer.macs,
            100.0 * outcome.macs_reduction()
        );
        println!(
            "filters kept per layer: {:?} of {:?}",
            answer.kept_filters.iter().map(Vec::len).collect::<Vec<_>>(),
            dense.kept_filters.iter().map(Vec::len).collect::<Vec<_>>()
        );
        println!("results in {}", args.out.display());
    }
    Ok(())
}

/// Logs only warnings unless `RUST_LOG` says otherwise: the progress bar is the display.
fn init_tracing_quiet() {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    init_tracing();
}

/// The command line that resumes this run: the same arguments (after the program name) with
/// `--resume`, quoted for a POSIX shell where needed.
fn resume_command(args: impl Iterator<Item = String>) -> String {
    let quote = |arg: &str| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
        if plain {
            arg.to_string()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    let mut words: Vec<String> = args.map(|a| quote(&a)).collect();
    if !words.iter().any(|w| w == "--resume") {
        words.push("--resume".into());
    }
    format!("ccsrp {}", words.join(" "))
}

/// Serves the job and runs the workers until the job ends or `signal` resolves.
async fn run_job(
    args: &RunArgs,
    config: JobConfig,
    state_dir: &Path,
    bar: ProgressBar,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ccsrp_master::server::ServeReport> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the embedded master")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (trigger, stop) = shutdown::channel();
    let master = tokio::spawn(serve(
        MasterOptions {
            config,
            state_dir: state_dir.to_path_buf(),
            out_dir: Some(args.out.clone()),
            token: AccessToken::none(),
            linger: Duration::from_millis(500),
        },
        listener,
        stop,
    ));

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let options = WorkerOptions {
            master: url.clone(),
            token: None,
            cache_dir: args.cache_dir.clone(),
            data_dir: args.data_dir.clone(),
            device: args.device.clone(),
            threads,
            worker_id: Uuid::new_v4(),
            give_up_after: Some(Duration::from_secs(30)),
        };
        let mut stop = trigger.subscribe();
        workers.push(tokio::spawn(async move {
            run_worker(options, async move { stop.wait().await }).await
        }));
    }

    let progress = tokio::spawn(show_progress(url.clone(), bar));
    let interrupt = {
        let trigger = trigger.clone();
        // The display's connection would hold the master's graceful shutdown open.
        let display = progress.abort_handle();
        tokio::spawn(async move {
            signal.await;
            display.abort();
            trigger.trigger();
        })
    };

    let report = master.await.context("the embedded master panicked")?;
    trigger.trigger();
    progress.abort();
    interrupt.abort();
    for worker in workers {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "embedded worker stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "embedded worker panicked"),
        }
    }
    Ok(report?)
}

/// The progress bar on stderr (hidden with `--json`; indicatif hides it when stderr is not a
/// terminal).
fn progress_bar(json: bool) -> ProgressBar {
    if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    }
}

/// Feeds `bar` from the master's Status.
async fn show_progress(url: String, bar: ProgressBar) {
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tasks  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut client = loop {
        match ProgressClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    loop {
        if let Ok(status) = client.status(StatusRequest {}).await {
            let s: JobStatus = status.into_inner();
            bar.set_length(s.tasks_done + s.tasks_pending);
            bar.set_position(s.tasks_done);
            bar.set_message(progress_message(&s));
            if s.done {
                bar.finish_with_message(progress_message(&s));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress_message(s: &JobStatus) -> String {
    let mut message = format!(
        "{} | iteration {}/{} | generation {}/{}",
        s.phase, s.iteration, s.iterations, s.generation, s.generations
    );
    if let (Some(dense), Some(best)) = (&s.dense, &s.best) {
        let pct = |c: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * c as f64 / n as f64
            }
        };
        message.push_str(&format!(
            " | best: validation clean {:.1}% PGD {:.1}% MACs {:.0}% of dense",
            pct(best.val_clean_correct, best.val_samples),
            pct(best.val_pgd_correct, best.val_samples),
            pct(best.macs, dense.macs)
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> std::vec::IntoIter<String> {
        args.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_resume_command_repeats_the_arguments_with_resume() {
        assert_eq!(
            resume_command(words(&["run", "--config", "exp/job.toml", "--out", "out"])),
            "ccsrp run --config exp/job.toml --out out --resume"
        );
        assert_eq!(
            resume_command(words(&["run", "--resume", "--seed", "3"])),
            "ccsrp run --resume --seed 3"
        );
        assert_eq!(
            resume_command(words(&["run", "--out", "my results", "--data-dir", "it's"])),
            r"ccsrp run --out 'my results' --data-dir 'it'\''s' --resume"
        );
    }
}
