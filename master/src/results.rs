//! The job's results, written to the out dir when it ends:
//! - `model.safetensors`: the answer network (a copy of its artifact, loadable by `ccsrp eval`);
//! - `iterations.json`: every outer iteration's network (validation and test counts, MACs, kept
//!   filters, masks, spikes and SOPs as counted, and `energy`: their per-image estimate);
//! - `dense.safetensors`: the dense network (what the reproduce commands evaluate);
//! - `fronts.json` / `fronts.csv`: each layer's first front after every generation (0..=G) of
//!   every iteration (fitness counts, MACs, kept filters, the representative marked);
//! - `summary.json` ([`Summary`]): dense versus pruned (validation and test clean, FGSM, PGD
//!   correct counts and accuracies in percent, MACs, parameters, kept filters), the fine-tuning
//!   recipe and epochs the answer cost, and the data splits: what `ccsrp prune` reads to run a
//!   baseline at equal cost, and writes in the same shape; for a job also [`RunInfo`] (versions,
//!   job file digest, dataset sizes, attacks, wall time per phase, and the `ccsrp eval` commands
//!   that reproduce each test number);
//! - `checkpoint.json`: the final job state;
//! - `report.html` and its figures (`crate::report`), drawn from the files above.
//!
//! An out dir never mixes runs: a job that starts afresh removes these files (and `failed.json`)
//! left there by an earlier run ([`remove_stale`]) before it computes anything, and they are
//! written only when the job ends.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use serde::Deserialize;

use crate::artifact_store::{write_atomic, StoreError};
use crate::config::{FineTuneParams, TestAttackParams};
use crate::job::Job;
use crate::outcome::{IterationRecord, NetworkRecord, StopReason};
use crate::work::TestMetrics;
use crate::Engine;
use ccsrp_proto::activity::Activity;
use ccsrp_proto::energy::{self, EnergyEstimate, EnergyModel};
use ccsrp_proto::v1::ModelDescription;

/// Results that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("out dir {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("results: {0}")]
    Store(#[from] StoreError),
    #[error("results: the job has no outcome yet")]
    NotDone,
}

/// One network in `summary.json`. Accuracies are percentages rounded to 0.01, beside the exact
/// correct counts they come from (scripts should use the counts); `val_*` are the validation
/// split's (what the stop rule read), the unprefixed ones the test split's (for the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// 0 for the dense network; a baseline's pruned network has 1.
    pub iteration: u32,
    /// sha256 of the model file's bytes.
    pub model: String,
    pub val_samples: u64,
    #[serde(default)]
    pub val_clean_correct: u64,
    #[serde(default)]
    pub val_fgsm_correct: u64,
    #[serde(default)]
    pub val_pgd_correct: u64,
    pub val_clean_accuracy: f64,
    pub val_fgsm_accuracy: f64,
    pub val_pgd_accuracy: f64,
    pub test_samples: u64,
    #[serde(default)]
    pub clean_correct: u64,
    #[serde(default)]
    pub fgsm_correct: u64,
    #[serde(default)]
    pub pgd_correct: u64,
    pub clean_accuracy: f64,
    pub fgsm_accuracy: f64,
    pub pgd_accuracy: f64,
    pub macs: u64,
    pub parameters: u64,
    /// Filters kept per prunable layer.
    pub kept_filters: Vec<u32>,
    /// Spikes, SOPs and energy per image on the clean test images (absent if not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<EnergyEstimate>,
}

/// The data a result was measured on: enough to cut the same splits again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub kind: String,
    pub data_dir: String,
    pub seed: u64,
    pub eval_size: u32,
    pub val_size: u32,
    /// 0 = every image.
    pub train_limit: u32,
    /// 0 = every image.
    pub test_limit: u32,
}

/// `summary.json`: what a job (or a `ccsrp prune` baseline) produced, dense against pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// "ccsrp" for a job; the criterion ("l1", "random") for a `ccsrp prune` baseline.
    pub method: String,
    /// Why the search ended (absent for a baseline).
    pub stop_reason: Option<StopReason>,
    pub dense: NetworkSummary,
    pub pruned: NetworkSummary,
    /// Fraction of the dense MACs removed, in [0, 1).
    pub macs_reduction: f64,
    /// Outer iterations run (1 for a baseline: one prune, one fine-tuning).
    pub iterations: usize,
    /// Validation drops (pruned vs dense, percentage points, rounded to 0.01): what the stop rule
    /// compared.
    pub clean_drop: f64,
    pub robust_drop: f64,
    /// Test drops, for the record.
    pub test_clean_drop: f64,
    pub test_robust_drop: f64,
    /// Epochs of fine-tuning the pruned network received in all (for a job: `finetune.epochs` per
    /// iteration up to the answer's), so a baseline can get the same budget.
    pub finetune_epochs: u32,
    /// The fine-tuning recipe (`epochs` is per iteration for a job).
    pub finetune: FineTuneParams,
    /// The white-box attacks both networks were tested with.
    pub test_attack: TestAttackParams,
    pub data: DataSummary,
    /// How the job ran (absent for a baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
}

/// What a job's `summary.json` records about the run beside its results. The results are a
/// function of the job file and the seed; these fields (wall times, paths) are not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Version of the ccsrp that wrote the summary, and of its master-worker protocol.
    pub ccsrp_version: String,
    pub protocol_version: u32,
    /// The job file (path as given) and the sha256 of its bytes; absent for the built-in job.
    pub job_file: Option<crate::job_config::JobFile>,
    /// Fingerprint of the job's result-relevant settings (what checkpoints are tied to).
    pub job_fingerprint: String,
    pub seed: u64,
    pub backend: String,
    /// The images each split held (`train_limit` caps the training images; 0 = every one).
    pub eval_images: u32,
    pub eval_shards: u32,
    pub validation_images: u64,
    pub test_images: u64,
    pub train_limit: u32,
    /// The search's attack (the shared adversarial set of each iteration).
    pub search_attack: crate::config::AdversarialConfig,
    /// Wall time per phase as the master saw it, in seconds (a resumed job counts from the
    /// restart), and in all.
    pub phase_seconds: Vec<PhaseTime>,
    pub total_seconds: f64,
    /// The `ccsrp eval` command that reproduces each reported test number.
    pub reproduce: Vec<Reproduce>,
}

/// The wall time of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
}

/// A command that reproduces reported numbers exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reproduce {
    /// "dense" or "pruned".
    pub network: String,
    /// What it reproduces, e.g. "test clean, FGSM and PGD".
    pub numbers: String,
    pub command: String,
}

fn accuracy(count: u64, samples: u64) -> f64 {
    crate::job::percent(count, samples)
}

/// A drop in percentage points, rounded to 0.01 (the exact counts are beside it).
fn drop_points(value: f64) -> f64 {
    crate::job::round_to(value, 2)
}

/// `text` as one shell word: unchanged when it is plain, else single-quoted.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The `ccsrp eval --held-out` command that measures `model_file` on the job's test split exactly
/// as the job did (same images, attacks, attack seed and u8 quantisation).
pub fn held_out_command(
    model_file: &Path,
    data: &DataSummary,
    attack: &TestAttackParams,
) -> String {
    let mut words = vec![
        "ccsrp".to_string(),
        "eval".into(),
        "--held-out".into(),
        "--model".into(),
        shell_word(&model_file.display().to_string()),
        "--dataset".into(),
        shell_word(&data.kind),
    ];
    if !data.data_dir.is_empty() {
        words.push("--data-dir".into());
        words.push(shell_word(&data.data_dir));
    }
    words.push("--seed".into());
    words.push(data.seed.to_string());
    if data.test_limit > 0 {
        words.push("--limit".into());
        words.push(data.test_limit.to_string());
    }
    let pgd = &attack.pgd;
    words.extend([
        "--fgsm-eps".into(),
        attack.fgsm_eps.to_string(),
        "--eps".into(),
        pgd.eps.to_string(),
        "--step".into(),
        pgd.step.to_string(),
        "--steps".into(),
        pgd.steps.to_string(),
    ]);
    if !pgd.random_start {
        words.push("--no-random-start".into());
    }
    words.join(" ")
}

impl NetworkSummary {
    /// The summary of the network `model` (sha256) from its counts on the validation and test
    /// splits; `kept_filters` are its filters per prunable layer.
    pub fn new(
        iteration: u32,
        model: String,
        validation: &TestMetrics,
        test: &TestMetrics,
        macs: u64,
        parameters: u64,
        kept_filters: Vec<u32>,
    ) -> NetworkSummary {
        let (v, t) = (validation, test);
        NetworkSummary {
            iteration,
            model,
            val_samples: v.samples,
            val_clean_correct: v.clean,
            val_fgsm_correct: v.fgsm,
            val_pgd_correct: v.pgd,
            val_clean_accuracy: accuracy(v.clean, v.samples),
            val_fgsm_accuracy: accuracy(v.fgsm, v.samples),
            val_pgd_accuracy: accuracy(v.pgd, v.samples),
            test_samples: t.samples,
            clean_correct: t.clean,
            fgsm_correct: t.fgsm,
            pgd_correct: t.pgd,
            clean_accuracy: accuracy(t.clean, t.samples),
            fgsm_accuracy: accuracy(t.fgsm, t.samples),
            pgd_accuracy: accuracy(t.pgd, t.samples),
            macs,
            parameters,
            kept_filters,
            energy: None,
        }
    }

    /// This summary with the energy estimate of `activity` (counted on the network `desc`).
    pub fn with_energy(
        mut self,
        activity: Option<&Activity>,
        desc: &ModelDescription,
        model: &EnergyModel,
    ) -> NetworkSummary {
        self.energy = activity.map(|a| energy::estimate(a, desc, model));
        self
    }
}

fn network_summary(r: &NetworkRecord, energy: &EnergyModel) -> NetworkSummary {
    let kept: Vec<u32> = r.kept_filters.iter().map(|k| k.len() as u32).collect();
    NetworkSummary::new(
        r.iteration,
        r.model.0.clone(),
        &r.validation,
        &r.test,
        r.macs,
        ccsrp_proto::cost::parameters(&r.description, &kept).unwrap_or(0),
        kept,
    )
    .with_energy(r.activity.as_ref(), &r.description, energy)
}

/// One entry of `iterations.json`: the record and its energy estimate.
#[derive(Serialize)]
struct IterationEntry<'a> {
    #[serde(flatten)]
    record: &'a IterationRecord,
    energy: Option<EnergyEstimate>,
}

fn iteration_entries<'a>(
    records: &'a [IterationRecord],
    model: &EnergyModel,
) -> Vec<IterationEntry<'a>> {
    records
        .iter()
        .map(|record| IterationEntry {
            record,
            energy: record
                .network
                .activity
                .as_ref()
                .map(|a| energy::estimate(a, &record.network.description, model)),
        })
        .collect()
}

#[derive(Serialize)]
struct FrontPoint {
    candidate: String,
    kept: u32,
    filters: u32,
    clean: u64,
    adversarial: u64,
    samples: u64,
    macs: u64,
    representative: bool,
}

#[derive(Serialize)]
struct FrontRecord {
    iteration: u32,
    generation: u32,
    layer: u32,
    points: Vec<FrontPoint>,
}

/// First fronts after every generation of every iteration, in order.
fn all_fronts(engine: &Engine) -> Vec<FrontRecord> {
    let history = engine.history();
    let mut out = Vec::new();
    for g in &history.generations {
        for (layer, lg) in g.layers.iter().enumerate() {
            let points = lg
                .fronts
                .first()
                .into_iter()
                .flatten()
                .filter_map(|id| history.candidate(*id))
                .map(|c| FrontPoint {
                    candidate: c.id.to_string(),
                    kept: c.mask.kept(),
                    filters: c.mask.filters,
                    clean: c.fitness.clean,
                    adversarial: c.fitness.adversarial,
                    samples: c.fitness.samples,
                    macs: c.fitness.macs,
                    representative: c.id == lg.representative,
                })
                .collect();
            out.push(FrontRecord {
                iteration: g.iteration,
                generation: g.generation,
                layer: layer as u32,
                points,
            });
        }
    }
    out
}

fn fronts_csv(fronts: &[FrontRecord]) -> String {
    let mut csv = String::from(
        "iteration,generation,layer,candidate,kept,filters,clean,adversarial,samples,macs,representative\n",
    );
    for f in fronts {
        for p in &f.points {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                f.iteration,
                f.generation,
                f.layer,
                p.candidate,
                p.kept,
                p.filters,
                p.clean,
                p.adversarial,
                p.samples,
                p.macs,
                p.representative
            );
        }
    }
    csv
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The files [`write`] writes into the out dir.
pub const FILES: [&str; 7] = [
    "model.safetensors",
    "dense.safetensors",
    "iterations.json",
    "fronts.json",
    "fronts.csv",
    "summary.json",
    "checkpoint.json",
];

/// Removes from `dir` the result files of an earlier run ([`FILES`], `failed.json`, and the
/// report: `report.html` and its figures, [`crate::report::is_report_file`]), so that a job
/// starting afresh never leaves them beside its own partial state; other files are left alone.
/// Returns the names removed.
pub fn remove_stale(dir: &Path) -> Result<Vec<String>, ResultsError> {
    let io = |path: &Path, error| ResultsError::Io {
        path: path.display().to_string(),
        error,
    };
    let mut names: Vec<String> = FILES
        .into_iter()
        .chain([crate::server::FAILED_FILE])
        .map(String::from)
        .collect();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry.map_err(|e| io(dir, e))?.file_name();
                if let Some(name) = name.to_str() {
                    if crate::report::is_report_file(name) {
                        names.push(name.to_string());
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    }
    let mut removed = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(&path, error)),
        }
    }
    Ok(removed)
}

/// Writes every result file of the finished job into `dir` (each atomically).
pub fn write(job: &Job, dir: &Path, checkpoint: &Path) -> Result<(), ResultsError> {
    std::fs::create_dir_all(dir).map_err(|error| ResultsError::Io {
        path: dir.display().to_string(),
        error,
    })?;
    let (outcome, fronts, config) =
        job.with_engine(|e| (e.outcome().cloned(), all_fronts(e), e.spec().config.clone()));
    let outcome = outcome.ok_or(ResultsError::NotDone)?;
    let model = job.store().get(&outcome.answer.model.0)?;
    write_atomic(&dir.join("model.safetensors"), &model)?;
    let energy = job.settings().energy;
    let dense_model = job.store().get(&outcome.dense.model.0)?;
    write_atomic(&dir.join("dense.safetensors"), &dense_model)?;
    write_atomic(
        &dir.join("iterations.json"),
        &json(&iteration_entries(&outcome.iterations, &energy)),
    )?;
    write_atomic(&dir.join("fronts.json"), &json(&fronts))?;
    write_atomic(&dir.join("fronts.csv"), fronts_csv(&fronts).as_bytes())?;
    let settings = job.settings();
    let d = &settings.dataset;
    let answer = &outcome.answer;
    let data = DataSummary {
        kind: d.kind.clone(),
        data_dir: d.data_dir.clone(),
        seed: d.seed,
        eval_size: d.eval_size,
        val_size: d.val_size,
        train_limit: d.train_limit,
        test_limit: d.test_limit,
    };
    let reproduce = [
        ("dense", "dense.safetensors"),
        ("pruned", "model.safetensors"),
    ]
    .into_iter()
    .map(|(network, file)| Reproduce {
        network: network.into(),
        numbers: "test clean, FGSM and PGD".into(),
        command: held_out_command(&dir.join(file), &data, &config.test_attack),
    })
    .collect();
    let run = RunInfo {
        ccsrp_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: ccsrp_proto::PROTOCOL_VERSION,
        job_file: settings.job_file.clone(),
        job_fingerprint: settings.fingerprint.clone(),
        seed: d.seed,
        backend: settings.backend.into(),
        eval_images: d.eval_size,
        eval_shards: d.eval_shards,
        validation_images: answer.validation.samples,
        test_images: answer.test.samples,
        train_limit: d.train_limit,
        search_attack: config.adversarial.clone(),
        phase_seconds: job
            .phase_seconds()
            .into_iter()
            .map(|(phase, seconds)| PhaseTime {
                phase,
                seconds: crate::job::round_to(seconds, 1),
            })
            .collect(),
        total_seconds: crate::job::round_to(job.elapsed().as_secs_f64(), 1),
        reproduce,
    };
    let summary = Summary {
        method: "ccsrp".into(),
        stop_reason: Some(outcome.reason),
        dense: network_summary(&outcome.dense, &energy),
        pruned: network_summary(answer, &energy),
        macs_reduction: outcome.macs_reduction(),
        iterations: outcome.iterations.len(),
        clean_drop: drop_points(answer.clean_drop),
        robust_drop: drop_points(answer.robust_drop),
        test_clean_drop: drop_points(answer.test_clean_drop),
        test_robust_drop: drop_points(answer.test_robust_drop),
        finetune_epochs: answer.iteration * config.finetune.epochs,
        finetune: config.finetune.clone(),
        test_attack: config.test_attack.clone(),
        data,
        run: Some(run),
    };
    write_atomic(&dir.join("summary.json"), &json(&summary))?;
    let state = std::fs::read(checkpoint).map_err(|error| ResultsError::Io {
        path: checkpoint.display().to_string(),
        error,
    })?;
    write_atomic(&dir.join("checkpoint.json"), &state)?;
    // The report is a view of the files above: a failure to draw it is logged, not fatal
    // (`ccsrp report DIR` draws it again).
    if let Err(e) = crate::report::write(dir, &crate::report::ReportOptions::default()) {
        tracing::warn!("results in {}: report not written: {e}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_results_are_removed_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "summary.json",
            "model.safetensors",
            "failed.json",
            "report.html",
            "fronts_layer12.svg",
            "notes.txt",
            "fronts_layer.svg",
        ] {
            std::fs::write(dir.path().join(name), "old").unwrap();
        }
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let mut removed = remove_stale(dir.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                "failed.json",
                "fronts_layer12.svg",
                "model.safetensors",
                "report.html",
                "summary.json"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["fronts_layer.svg", "notes.txt", "state"]);
        assert!(remove_stale(&dir.path().join("absent")).unwrap().is_empty());
    }
}
