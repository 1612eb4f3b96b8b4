//! The job's results, written to the out dir when it ends:
//! - `model.safetensors`: the answer network (a copy of its artifact, loadable by `ccsrp eval`);
//! - `iterations.json`: every outer iteration's network (test counts, MACs, kept filters, masks);
//! - `fronts.json` / `fronts.csv`: each layer's first front after the last generation of every
//!   iteration (fitness counts, MACs, kept filters, the representative marked);
//! - `summary.json`: dense versus pruned (clean, FGSM, PGD accuracy, MACs, parameters, kept filters);
//! - `checkpoint.json`: the final job state.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::artifact_store::{write_atomic, StoreError};
use crate::job::Job;
use crate::outcome::{NetworkRecord, StopReason};
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

#[derive(Serialize)]
struct NetworkSummary {
    iteration: u32,
    model: String,
    test_samples: u64,
    clean_accuracy: f64,
    fgsm_accuracy: f64,
    pgd_accuracy: f64,
    macs: u64,
    parameters: u64,
    kept_filters: Vec<u32>,
}

fn accuracy(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        100.0 * count as f64 / samples as f64
    }
}

fn network_summary(r: &NetworkRecord) -> NetworkSummary {
    let kept: Vec<u32> = r.kept_filters.iter().map(|k| k.len() as u32).collect();
    NetworkSummary {
        iteration: r.iteration,
        model: r.model.0.clone(),
        test_samples: r.test.samples,
        clean_accuracy: accuracy(r.test.clean, r.test.samples),
        fgsm_accuracy: accuracy(r.test.fgsm, r.test.samples),
        pgd_accuracy: accuracy(r.test.pgd, r.test.samples),
        macs: r.macs,
        parameters: ccsrp_proto::cost::parameters(&r.description, &kept).unwrap_or(0),
        kept_filters: kept,
    }
}

#[derive(Serialize)]
struct Summary {
    stop_reason: StopReason,
    dense: NetworkSummary,
    pruned: NetworkSummary,
    macs_reduction: f64,
    iterations: usize,
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

/// Writes every result file of the finished job into `dir` (each atomically).
pub fn write(job: &Job, dir: &Path, checkpoint: &Path) -> Result<(), ResultsError> {
    std::fs::create_dir_all(dir).map_err(|error| ResultsError::Io {
        path: dir.display().to_string(),
        error,
    })?;
    let (outcome, fronts) = job.with_engine(|e| (e.outcome().cloned(), final_fronts(e)));
    let outcome = outcome.ok_or(ResultsError::NotDone)?;
    let model = job.store().get(&outcome.answer.model.0)?;
    write_atomic(&dir.join("model.safetensors"), &model)?;
    write_atomic(&dir.join("iterations.json"), &json(&outcome.iterations))?;
    write_atomic(&dir.join("fronts.json"), &json(&fronts))?;
    write_atomic(&dir.join("fronts.csv"), fronts_csv(&fronts).as_bytes())?;
    let summary = Summary {
        stop_reason: outcome.reason,
        dense: network_summary(&outcome.dense),
        pruned: network_summary(&outcome.answer),
        macs_reduction: outcome.macs_reduction(),
        iterations: outcome.iterations.len(),
    };
    write_atomic(&dir.join("summary.json"), &json(&summary))?;
    let state = std::fs::read(checkpoint).map_err(|error| ResultsError::Io {
        path: checkpoint.display().to_string(),
        error,
    })?;
    write_atomic(&dir.join("checkpoint.json"), &state)?;
    Ok(())
}
