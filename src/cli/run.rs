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

use std::io::IsTerminal;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget};

use ccsrp_master::artifact_store::ArtifactStore;
use ccsrp_master::auth::AccessToken;
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::results::{NetworkSummary, Summary};
use ccsrp_master::server::{serve, MasterOptions};
use ccsrp_master::shutdown;
use ccsrp_proto::artifact_chunks::sha256_hex;
use ccsrp_proto::v1::progress_client::ProgressClient;
use ccsrp_proto::v1::{JobStatus, StatusRequest};
use ccsrp_worker::runtime::{run_worker, Uuid, WorkerOptions};

use super::progress_view;
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
        let summary: Summary = serde_json::from_str(&summary)
            .with_context(|| format!("reading {}", summary_path.display()))?;
        if reused {
            println!("dense model reused from {}", dense_cache.display());
        }
        print!("{}", summary_table(&summary));
        let report = args.out.join("report.html");
        if report.exists() {
            println!("report: {}", report.display());
        }
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
            // Loopback only: no TLS.
            tls: None,
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
            tls: ccsrp_proto::tls::ClientTls::none(),
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

    // Drawn on stderr when it is a terminal (made in `run`, so a signal can end it); taken off
    // the screen before the summary is printed.
    let lines = !args.json && !std::io::stderr().is_terminal();
    let progress = tokio::spawn(show_progress(url.clone(), bar.clone(), lines));
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
    bar.finish_and_clear();
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

/// The progress bar over the job's steps on stderr (hidden with `--json`; indicatif hides it when
/// stderr is not a terminal).
fn progress_bar(json: bool) -> ProgressBar {
    if json {
        ProgressBar::hidden()
    } else {
        progress_view::steps_bar(ProgressDrawTarget::stderr())
    }
}

/// Feeds `bar` (over the job's steps) from the master's Status; with `lines` (stderr not a
/// terminal) prints a time-stamped line on stderr whenever the search moves instead.
async fn show_progress(url: String, bar: ProgressBar, lines: bool) {
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut client = loop {
        match ProgressClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut position = None;
    loop {
        if let Ok(status) = client.status(StatusRequest {}).await {
            let s: JobStatus = status.into_inner();
            progress_view::update_bar(&bar, &s);
            let now = (s.phase.clone(), s.iteration, s.generation);
            if position.as_ref() != Some(&now) {
                position = Some(now);
                let line = progress_view::generation_line(&s);
                if lines {
                    eprintln!("{}", progress_view::timestamped_now(&line));
                } else {
                    bar.println(line);
                }
            }
            if s.done || s.failed {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The summary for people: dense and pruned on validation and test, MACs, parameters, filters
/// kept, the drops (rounded; `summary.json` has the exact counts), and the `ccsrp eval` commands
/// that reproduce the test numbers.
pub fn summary_table(s: &Summary) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>11}  {}",
        "network",
        "val clean",
        "val PGD",
        "clean",
        "FGSM",
        "PGD",
        "MACs",
        "parameters",
        "filters kept"
    );
    out.push_str(&header);
    out.push('\n');
    let row = |label: String, n: &NetworkSummary| {
        format!(
            "{:<22} {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>12.4e} {:>11}  {:?}\n",
            label,
            n.val_clean_accuracy,
            n.val_pgd_accuracy,
            n.clean_accuracy,
            n.fgsm_accuracy,
            n.pgd_accuracy,
            n.macs as f64,
            n.parameters,
            n.kept_filters
        )
    };
    out += &row("dense".into(), &s.dense);
    out += &row(
        format!("pruned (iteration {})", s.pruned.iteration),
        &s.pruned,
    );
    out += &format!(
        "drops (points): validation clean {:.2}, PGD {:.2}; test clean {:.2}, PGD {:.2}; MACs {:.1}% fewer\n",
        s.clean_drop,
        s.robust_drop,
        s.test_clean_drop,
        s.test_robust_drop,
        100.0 * s.macs_reduction
    );
    out += &format!(
        "validation: {} images, test: {} images (accuracies in percent; exact counts in summary.json)\n",
        s.pruned.val_samples, s.pruned.test_samples
    );
    if let Some(run) = &s.run {
        for r in &run.reproduce {
            out += &format!(
                "reproduce the {} network's {}: {}\n",
                r.network, r.numbers, r.command
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_table_rounds_for_people_and_prints_the_reproduce_commands() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/summary.json"
        ))
        .unwrap();
        let summary: Summary = serde_json::from_str(&text).unwrap();
        let table = summary_table(&summary);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("network"), "{table}");
        assert!(
            lines[1].starts_with("dense") && lines[1].contains("81.40%"),
            "{table}"
        );
        assert!(lines[2].starts_with("pruned (iteration 2)"), "{table}");
        assert!(
            lines[3].starts_with("drops (points): validation clean 3.20, PGD -1.00;"),
            "{table}"
        );
        assert!(
            table.contains("reproduce the pruned network's test clean, FGSM and PGD: ccsrp eval --held-out --model out/model.safetensors"),
            "{table}"
        );
    }

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
