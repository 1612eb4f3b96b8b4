//! The job's results, written to the out dir when it ends:
//! - `model.safetensors`: the answer network (a copy of its artifact, loadable by `ccsrp eval`);
//! - `iterations.json`: every outer iteration's network (validation and test counts, MACs, kept
//!   filters, masks);
//! - `fronts.json` / `fronts.csv`: each layer's first front after the last generation of every
//!   iteration (fitness counts, MACs, kept filters, the representative marked);
//! - `summary.json` ([`Summary`]): dense versus pruned (validation and test clean, FGSM, PGD
//!   accuracy, MACs, parameters, kept filters), the fine-tuning recipe and epochs the answer cost,
//!   and the data splits: what `ccsrp prune` reads to run a baseline at equal cost, and writes in
//!   the same shape;
//! - `checkpoint.json`: the final job state.
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
use crate::outcome::{NetworkRecord, StopReason};
use crate::work::TestMetrics;
use crate::Engine;

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

/// One network in `summary.json`. Accuracies are percentages; `val_*` are the validation split's
/// (what the stop rule read), the unprefixed ones the test split's (for the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// 0 for the dense network; a baseline's pruned network has 1.
    pub iteration: u32,
    /// sha256 of the model file's bytes.
    pub model: String,
    pub val_samples: u64,
    pub val_clean_accuracy: f64,
    pub val_fgsm_accuracy: f64,
    pub val_pgd_accuracy: f64,
    pub test_samples: u64,
    pub clean_accuracy: f64,
    pub fgsm_accuracy: f64,
    pub pgd_accuracy: f64,
    pub macs: u64,
    pub parameters: u64,
    /// Filters kept per prunable layer.
    pub kept_filters: Vec<u32>,
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
    /// Validation drops (pruned vs dense, percentage points): what the stop rule compared.
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
}

fn accuracy(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        100.0 * count as f64 / samples as f64
    }
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
            val_clean_accuracy: accuracy(v.clean, v.samples),
            val_fgsm_accuracy: accuracy(v.fgsm, v.samples),
            val_pgd_accuracy: accuracy(v.pgd, v.samples),
            test_samples: t.samples,
            clean_accuracy: accuracy(t.clean, t.samples),
            fgsm_accuracy: accuracy(t.fgsm, t.samples),
            pgd_accuracy: accuracy(t.pgd, t.samples),
            macs,
            parameters,
            kept_filters,
        }
    }
}

fn network_summary(r: &NetworkRecord) -> NetworkSummary {
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

/// First fronts after the last generation of every iteration.
fn final_fronts(engine: &Engine) -> Vec<FrontRecord> {
    let history = engine.history();
    let gens = &history.generations;
    let mut out = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let last_of_iteration = gens.get(i + 1).is_none_or(|n| n.iteration != g.iteration);
        if !last_of_iteration {
            continue;
        }
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
pub const FILES: [&str; 6] = [
    "model.safetensors",
    "iterations.json",
    "fronts.json",
    "fronts.csv",
    "summary.json",
    "checkpoint.json",
];

/// Removes from `dir` the result files of an earlier run ([`FILES`] and `failed.json`), so that a
/// job starting afresh never leaves them beside its own partial state; other files are left alone.
/// Returns the names removed.
pub fn remove_stale(dir: &Path) -> Result<Vec<&'static str>, ResultsError> {
    let mut removed = Vec::new();
    for name in FILES.into_iter().chain([crate::server::FAILED_FILE]) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(ResultsError::Io {
                    path: path.display().to_string(),
                    error,
                })
            }
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
    let (outcome, fronts, config) = job.with_engine(|e| {
        (
            e.outcome().cloned(),
            final_fronts(e),
            e.spec().config.clone(),
        )
    });
    let outcome = outcome.ok_or(ResultsError::NotDone)?;
    let model = job.store().get(&outcome.answer.model.0)?;
    write_atomic(&dir.join("model.safetensors"), &model)?;
    write_atomic(&dir.join("iterations.json"), &json(&outcome.iterations))?;
    write_atomic(&dir.join("fronts.json"), &json(&fronts))?;
    write_atomic(&dir.join("fronts.csv"), fronts_csv(&fronts).as_bytes())?;
    let d = &job.settings().dataset;
    let answer = &outcome.answer;
    let summary = Summary {
        method: "ccsrp".into(),
        stop_reason: Some(outcome.reason),
        dense: network_summary(&outcome.dense),
        pruned: network_summary(answer),
        macs_reduction: outcome.macs_reduction(),
        iterations: outcome.iterations.len(),
        clean_drop: answer.clean_drop,
        robust_drop: answer.robust_drop,
        test_clean_drop: answer.test_clean_drop,
        test_robust_drop: answer.test_robust_drop,
        finetune_epochs: answer.iteration * config.finetune.epochs,
        finetune: config.finetune.clone(),
        test_attack: config.test_attack.clone(),
        data: DataSummary {
            kind: d.kind.clone(),
            data_dir: d.data_dir.clone(),
            seed: d.seed,
            eval_size: d.eval_size,
            val_size: d.val_size,
            train_limit: d.train_limit,
            test_limit: d.test_limit,
        },
    };
    write_atomic(&dir.join("summary.json"), &json(&summary))?;
    let state = std::fs::read(checkpoint).map_err(|error| ResultsError::Io {
        path: checkpoint.display().to_string(),
        error,
    })?;
    write_atomic(&dir.join("checkpoint.json"), &state)?;
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
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "old").unwrap();
        }
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let mut removed = remove_stale(dir.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            ["failed.json", "model.safetensors", "summary.json"]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "state"]);
        assert!(remove_stale(&dir.path().join("absent")).unwrap().is_empty());
    }
}
