//! `ccsrp prune`: the baselines a CCSRP result is judged against. Prunes a dense model file by a
//! classic criterion (L1 norm or random), fine-tunes it with a given budget, measures it on the
//! validation and test splits exactly as a job measures its networks, and writes a model file
//! and a `summary.json` in the shape of a job's.
//!
//! Settings come, most specific first, from the flags, from a job's `summary.json`
//! (`--match`, `--allocation-from` or `--budget-from`: its data splits, fine-tuning recipe and
//! the epochs the job spent fine-tuning its answer, and its test attacks), from `--config job.toml`,
//! or from the job file defaults. `--keep-ratio 1.0` is the control: the dense network given the
//! same fine-tuning.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use ccsrp_master::config::{FineTuneParams, TestAttackParams};
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::results::{DataSummary, NetworkSummary, Summary};
use ccsrp_master::TestMetrics;
use ccsrp_proto::artifact_chunks::sha256_hex;
use ccsrp_proto::cost;
use ccsrp_proto::energy::EnergyModel;
use ccsrp_worker::attack::AttackParams;
use ccsrp_worker::criterion::{select_filters, uniform_keep, uniform_keep_for_macs, Criterion};
use ccsrp_worker::data::{DatasetKind, DatasetSpec, ImageSet, Splits};
use ccsrp_worker::device::parse_device;
use ccsrp_worker::eval::{activity, DEFAULT_BATCH};
use ccsrp_worker::held_out::{held_out_counts, HeldOutCounts, SplitCounts};
use ccsrp_worker::model::SnnModel;
use ccsrp_worker::train::{train, TrainConfig, TrainProgress};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["keep_ratio", "macs", "match_summary", "allocation_from"])))]
pub struct PruneArgs {
    /// The dense model file to prune.
    #[arg(long)]
    pub model: PathBuf,
    /// Which filters go: l1 (smallest L1 norm of their conv weights) or random (seeded).
    #[arg(long)]
    pub method: Criterion,
    /// Keep this fraction of the filters of every prunable layer, in (0, 1]; 1.0 is the
    /// dense-plus-fine-tuning control.
    #[arg(long)]
    pub keep_ratio: Option<f64>,
    /// Keep the uniform fraction whose MACs (per image, all T steps) come closest to this.
    #[arg(long)]
    pub macs: Option<u64>,
    /// Keep the uniform fraction whose MACs come closest to the pruned network's of this job
    /// summary (and take the data, recipe and budget from it).
    #[arg(long = "match", value_name = "SUMMARY")]
    pub match_summary: Option<PathBuf>,
    /// Keep as many filters per layer as the pruned network of this job summary (the filters
    /// themselves chosen by --method), and take the data, recipe and budget from it.
    #[arg(long, value_name = "SUMMARY")]
    pub allocation_from: Option<PathBuf>,
    /// Take the data splits, fine-tuning recipe and budget, and test attacks from this job
    /// summary (implied by --match and --allocation-from).
    #[arg(long, value_name = "SUMMARY")]
    pub budget_from: Option<PathBuf>,
    /// A job file to take the data, recipe and attacks from when no summary gives them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the dataset kind.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Override the dataset's directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Fine-tuning epochs in all (default: the summary's `finetune_epochs`, else the job file's
    /// `finetune.epochs`); 0 skips fine-tuning.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Seed of the random criterion and of fine-tuning's shuffle and attacks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Directory for `model.safetensors` and `summary.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Print the summary as one JSON object instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

/// What the baseline inherits from a job: where its data is, how it fine-tunes, how it is tested.
struct Settings {
    data: DataSummary,
    finetune: FineTuneParams,
    test_attack: TestAttackParams,
    epochs: u32,
    /// The job summary the settings came from, if any.
    summary: Option<Summary>,
}

/// `summary.json` of a baseline: a job's summary plus how the amount was chosen.
#[derive(Serialize)]
struct PruneReport {
    #[serde(flatten)]
    summary: Summary,
    /// How the per-layer counts were chosen: "keep_ratio", "macs", "match" or "allocation".
    amount: &'static str,
    /// The uniform keep ratio (absent for an allocation).
    keep_ratio: Option<f64>,
    /// The MACs asked for (`--macs`, or the matched summary's pruned network).
    target_macs: Option<u64>,
    seed: u64,
    seconds: f64,
}

fn read_summary(path: &Path, flag: &str) -> anyhow::Result<Summary> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag} {}: cannot read the job summary", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{flag} {}: not a ccsrp summary.json (expected the file a job writes to its out dir)",
            path.display()
        )
    })
}

fn settings(args: &PruneArgs) -> anyhow::Result<Settings> {
    let summary_source = [
        ("--match", &args.match_summary),
        ("--allocation-from", &args.allocation_from),
        ("--budget-from", &args.budget_from),
    ]
    .into_iter()
    .find_map(|(flag, path)| path.as_ref().map(|p| (flag, p)));
    let mut s = if let Some((flag, path)) = summary_source {
        let summary = read_summary(path, flag)?;
        Settings {
            data: summary.data.clone(),
            finetune: summary.finetune.clone(),
            test_attack: summary.test_attack.clone(),
            epochs: summary.finetune_epochs,
            summary: Some(summary),
        }
    } else {
        let config = match &args.config {
            Some(path) => JobConfig::load(path).context("--config")?,
            None => JobConfig::parse("", "the job file defaults").context("job defaults")?,
        };
        let d = &config.data;
        Settings {
            data: DataSummary {
                kind: d.kind.clone(),
                data_dir: d.data_dir.clone(),
                seed: config.job.seed,
                eval_size: d.eval_size,
                val_size: d.val_size,
                train_limit: d.train_limit,
                test_limit: d.test_limit,
            },
            finetune: config.finetune.clone(),
            test_attack: config.test_attack.clone(),
            epochs: config.finetune.epochs,
            summary: None,
        }
    };
    if let Some(kind) = args.dataset {
        s.data.kind = kind.to_string();
    }
    if let Some(dir) = &args.data_dir {
        s.data.data_dir = dir.display().to_string();
    }
    if let Some(epochs) = args.epochs {
        s.epochs = epochs;
    }
    Ok(s)
}

fn load_splits(data: &DataSummary) -> anyhow::Result<Splits> {
    let kind: DatasetKind = data
        .kind
        .parse()
        .with_context(|| format!("dataset kind {:?}", data.kind))?;
    let limit = |n: u32| (n > 0).then_some(n as usize);
    let spec = DatasetSpec {
        kind,
        data_dir: (!data.data_dir.is_empty()).then(|| PathBuf::from(&data.data_dir)),
        eval_size: data.eval_size as usize,
        val_size: data.val_size as usize,
        seed: data.seed,
        train_limit: limit(data.train_limit),
        test_limit: limit(data.test_limit),
    };
    spec.load()
        .with_context(|| format!("dataset {} ({})", data.kind, data.data_dir))
}

fn finetune_config(s: &Settings, seed: u64) -> TrainConfig {
    let f = &s.finetune;
    let mut config = TrainConfig {
        epochs: s.epochs as usize,
        batch_size: f.batch_size as usize,
        lr: f.lr,
        momentum: f.momentum,
        weight_decay: f.weight_decay,
        seed,
        ..TrainConfig::default()
    };
    if f.adversarial_fraction > 0.0 {
        config.adversarial_fraction = f.adversarial_fraction;
        config.adversarial = AttackParams::fgsm(f.fgsm_eps);
    }
    config
}

/// The summary of `model`, with its spikes, SOPs and default energy estimate on `test`.
fn network_summary(
    iteration: u32,
    sha256: &str,
    counts: &HeldOutCounts,
    model: &SnnModel,
    test: &ImageSet,
) -> anyhow::Result<NetworkSummary> {
    let description = model.description();
    let kept: Vec<u32> = description.layers.iter().map(|l| l.filters).collect();
    let metrics = |c: &SplitCounts| TestMetrics {
        samples: c.samples,
        clean: c.clean,
        fgsm: c.fgsm,
        pgd: c.pgd,
    };
    Ok(NetworkSummary::new(
        iteration,
        sha256.to_string(),
        &metrics(&counts.validation),
        &metrics(&counts.test),
        cost::macs(&description, &kept)?,
        cost::parameters(&description, &kept)?,
        kept,
    )
    .with_energy(
        Some(&activity(model, test, DEFAULT_BATCH)?),
        &description,
        &EnergyModel::default(),
    ))
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let signals = super::stop::StopSignals::listen(|signal| {
        if std::io::stderr().is_terminal() {
            // The fine-tuning progress line ends in a carriage return, not a newline.
            eprintln!();
        }
        super::stop::announce(
            &indicatif::ProgressBar::hidden(),
            signal,
            "pruning stops after its current batch, no result is written",
        )
    })?;
    let out = args.out.clone();
    signals.run_cancellable(
        || prune_and_measure(args),
        Some(format!("nothing was written to {}", out.display())),
    )
}

/// Prunes, fine-tunes and measures; writes the model file and the summary once all is measured.
fn prune_and_measure(args: PruneArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(r) = args.keep_ratio {
        if !r.is_finite() || r <= 0.0 || r > 1.0 {
            anyhow::bail!("--keep-ratio {r}: expected a fraction in (0, 1]");
        }
    }
    if args.macs == Some(0) {
        anyhow::bail!("--macs 0: expected a positive number of MACs");
    }
    let settings = settings(&args)?;
    let device = parse_device(&args.device).context("--device")?;
    let model_bytes = std::fs::read(&args.model).with_context(|| {
        format!(
            "--model {}: cannot read the model file",
            args.model.display()
        )
    })?;
    let dense_sha = sha256_hex(&model_bytes);
    let dense = SnnModel::load(&args.model, &device)?;
    let description = dense.description();
    let filters: Vec<usize> = description
        .layers
        .iter()
        .map(|l| l.filters as usize)
        .collect();
    let summary = settings.summary.as_ref();
    if let Some(s) = summary {
        let widths: Vec<usize> = s.dense.kept_filters.iter().map(|&k| k as usize).collect();
        if widths != filters {
            anyhow::bail!(
                "--model {} has filters {filters:?} per layer, but the job summary's dense network \
                 has {widths:?}: give the dense model the job pruned",
                args.model.display()
            );
        }
        if s.dense.model != dense_sha && !args.json {
            eprintln!(
                "warning: --model {} (sha256 {}) is not the job's dense model ({}); the comparison \
                 holds only if they are the same network",
                args.model.display(),
                &dense_sha[..12],
                s.dense.model.get(..12).unwrap_or(&s.dense.model)
            );
        }
    }

    let (amount, keep, keep_ratio, target_macs) = if let Some(r) = args.keep_ratio {
        ("keep_ratio", uniform_keep(&filters, r)?, Some(r), None)
    } else if let Some(target) = args.macs {
        let (r, keep, _) = uniform_keep_for_macs(&description, target)?;
        ("macs", keep, Some(r), Some(target))
    } else if args.match_summary.is_some() {
        let target = summary.map(|s| s.pruned.macs).unwrap_or(0);
        let (r, keep, _) = uniform_keep_for_macs(&description, target)?;
        ("match", keep, Some(r), Some(target))
    } else {
        let keep: Vec<usize> = summary
            .map(|s| s.pruned.kept_filters.iter().map(|&k| k as usize).collect())
            .unwrap_or_default();
        ("allocation", keep, None, None)
    };
    let masks = select_filters(&dense, args.method, &keep, args.seed)?;
    let mut pruned = dense.prune(&masks)?;
    let kept_counts: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
    let macs = cost::macs(&description, &kept_counts)?;
    if !args.json {
        eprintln!(
            "{} keeps {:?} of {:?} filters: {} MACs ({:.1}% of dense){}",
            args.method,
            keep,
            filters,
            macs,
            100.0 * macs as f64 / cost::dense_macs(&description).max(1) as f64,
            target_macs.map_or(String::new(), |t| format!(", target {t}"))
        );
    }

    let splits = load_splits(&settings.data)?;
    if settings.epochs > 0 {
        let config = finetune_config(&settings, args.seed);
        let batches = splits.train.len().div_ceil(config.batch_size.max(1));
        let show = !args.json;
        let tty = std::io::stderr().is_terminal();
        let mut report = |p: &TrainProgress| {
            let last = p.batch == p.batches;
            if show && (last || (tty && p.batch.is_multiple_of(20))) {
                eprint!(
                    "{}fine-tuning epoch {}/{} batch {}/{batches}: loss {:.4}, accuracy {:.2}%, {:.0} s{}",
                    if tty { "\r" } else { "" },
                    p.epoch,
                    p.epochs,
                    p.batch,
                    p.loss,
                    100.0 * p.accuracy,
                    started.elapsed().as_secs_f64(),
                    if last || !tty { "\n" } else { "" }
                );
            }
        };
        train(&mut pruned, &splits.train, &config, &mut report).context("fine-tuning")?;
    }
    let model_path = args.out.join("model.safetensors");
    let pruned_bytes = pruned.to_bytes()?;
    let pruned_sha = sha256_hex(&pruned_bytes);

    let attack = &settings.test_attack;
    let pgd = AttackParams {
        random_start: attack.pgd.random_start,
        ..AttackParams::pgd(attack.pgd.eps, attack.pgd.step, attack.pgd.steps as usize)
    };
    if !args.json {
        eprintln!(
            "measuring on {} validation and {} test images (clean, FGSM, PGD-{})",
            splits.validation.len(),
            splits.test.len(),
            attack.pgd.steps
        );
    }
    let pruned_counts = held_out_counts(&pruned, &pruned_sha, &splits, attack.fgsm_eps, &pgd)?;
    let pruned_summary = network_summary(1, &pruned_sha, &pruned_counts, &pruned, &splits.test)?;
    // The job measured its dense network with the same procedure: reuse those counts when the
    // model and the splits are the job's.
    let dense_summary =
        match summary.filter(|s| s.dense.model == dense_sha && s.data == settings.data) {
            Some(s) => s.dense.clone(),
            None => {
                let counts = held_out_counts(&dense, &dense_sha, &splits, attack.fgsm_eps, &pgd)?;
                network_summary(0, &dense_sha, &counts, &dense, &splits.test)?
            }
        };
    // Percentage points rounded to 0.01, as in a job's summary (the counts are beside them).
    let drop = |a: f64, b: f64| ccsrp_master::job::round_to(a - b, 2);
    let report = PruneReport {
        summary: Summary {
            method: args.method.to_string(),
            stop_reason: None,
            macs_reduction: 1.0 - pruned_summary.macs as f64 / dense_summary.macs.max(1) as f64,
            iterations: 1,
            clean_drop: drop(
                dense_summary.val_clean_accuracy,
                pruned_summary.val_clean_accuracy,
            ),
            robust_drop: drop(
                dense_summary.val_pgd_accuracy,
                pruned_summary.val_pgd_accuracy,
            ),
            test_clean_drop: drop(dense_summary.clean_accuracy, pruned_summary.clean_accuracy),
            test_robust_drop: drop(dense_summary.pgd_accuracy, pruned_summary.pgd_accuracy),
            finetune_epochs: settings.epochs,
            finetune: settings.finetune.clone(),
            test_attack: settings.test_attack.clone(),
            data: settings.data.clone(),
            dense: dense_summary,
            pruned: pruned_summary,
            run: None,
        },
        amount,
        keep_ratio,
        target_macs,
        seed: args.seed,
        seconds: started.elapsed().as_secs_f64(),
    };
    // Written together, once everything is measured: a stopped run leaves no half of a result.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create the directory", args.out.display()))?;
    std::fs::write(&model_path, &pruned_bytes)
        .with_context(|| format!("cannot write {}", model_path.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let summary_path = args.out.join("summary.json");
    std::fs::write(&summary_path, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let line = |label: &str, n: &NetworkSummary| {
            println!(
                "{label}: validation clean {:.2}% PGD {:.2}% | test clean {:.2}% FGSM {:.2}% PGD {:.2}% | {} MACs, {} parameters, filters {:?}",
                n.val_clean_accuracy,
                n.val_pgd_accuracy,
                n.clean_accuracy,
                n.fgsm_accuracy,
                n.pgd_accuracy,
                n.macs,
                n.parameters,
                n.kept_filters
            )
        };
        let s = &report.summary;
        line("dense ", &s.dense);
        line(&format!("{:<6}", s.method), &s.pruned);
        println!(
            "{:.1}% fewer MACs after {} fine-tuning epochs; test drops: clean {:.2} pt, PGD {:.2} pt",
            100.0 * s.macs_reduction,
            s.finetune_epochs,
            s.test_clean_drop,
            s.test_robust_drop
        );
        println!(
            "wrote {} and {} ({:.0} s)",
            model_path.display(),
            summary_path.display(),
            report.seconds
        );
    }
    Ok(())
}
