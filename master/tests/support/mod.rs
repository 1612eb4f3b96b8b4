//! A synthetic pruning problem with a known answer, and an in-process evaluator that answers every
//! work kind from it, so tests drive the engine's whole state machine through ask/tell.
//!
//! Each filter of the dense model has a hidden utility: "high" filters carry the accuracy, "low"
//! ones almost nothing. A network's quality q is the product over layers of the fraction of the
//! layer's total utility it keeps; sample i of a split is classified correctly iff a fixed hash of
//! (split, i) falls below `base * q`, so counts are monotone in the kept utility, additive over any
//! shard split and independent of which worker computes them. MACs come from the real calculator
//! inside the engine. Fine-tuning recovers nothing; the test split uses its own hashes.

#![allow(dead_code)]

use std::collections::BTreeMap;

use ccsrp_master::engine::{DenseModel, JobSpec};
use ccsrp_master::rng::splitmix64;
use ccsrp_master::{
    ArtifactRef, CandidateCount, Engine, EngineConfig, HeldOutMetrics, ModelRef, TestMetrics,
    WorkItem, WorkKind, WorkOutput, WorkResult,
};
use ccsrp_proto::shard::shard_range;
use ccsrp_proto::v1::{ConvLayer, Mask, ModelDescription};

/// Dense widths of the synthetic VGG.
pub const WIDTHS: [u32; 4] = [32, 64, 64, 128];
pub const EVAL_SAMPLES: u64 = 2000;
pub const TEST_SAMPLES: u64 = 10_000;
pub const VAL_SAMPLES: u64 = 2_000;
const CLEAN_BASE: f64 = 0.9;
const ROBUST_BASE: f64 = 0.5;

pub fn description() -> ModelDescription {
    let mut in_channels = 3;
    let layers = WIDTHS
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let side = 32 >> (i / 2);
            let l = ConvLayer {
                filters: w,
                in_channels,
                kernel: 3,
                out_height: side,
                out_width: side,
                pool_after: i % 2 == 1,
                ..Default::default()
            };
            in_channels = w;
            l
        })
        .collect();
    ModelDescription {
        layers,
        classifier_spatial: 64,
        classes: 10,
        timesteps: 4,
        ..Default::default()
    }
}

/// The hidden problem: per layer, per dense filter, its utility.
pub struct Problem {
    pub utility: Vec<Vec<f64>>,
}

impl Problem {
    /// A third of each layer's filters (chosen by `seed`) are high utility (0.5..1.5), the rest
    /// carry 1/1000 of that.
    pub fn new(seed: u64) -> Problem {
        let utility = WIDTHS
            .iter()
            .enumerate()
            .map(|(l, &w)| {
                (0..w)
                    .map(|f| {
                        let h = splitmix64(seed ^ splitmix64(((l as u64) << 32) | u64::from(f)));
                        let spread = 0.5 + (h >> 11) as f64 / (1u64 << 53) as f64;
                        if h.is_multiple_of(3) {
                            spread
                        } else {
                            spread / 1000.0
                        }
                    })
                    .collect()
            })
            .collect();
        Problem { utility }
    }

    pub fn is_high(&self, layer: usize, filter: usize) -> bool {
        self.utility[layer][filter] >= 0.5
    }

    /// Product over layers of the kept fraction of utility, for dense filter indices `kept`.
    pub fn quality(&self, kept: &[Vec<u32>]) -> f64 {
        self.utility
            .iter()
            .zip(kept)
            .map(|(u, k)| {
                let total: f64 = u.iter().sum();
                let kept: f64 = k.iter().map(|&f| u[f as usize]).sum();
                kept / total
            })
            .product()
    }
}

/// Correct count on samples `range` of split `salt` at accuracy `p`.
fn count(salt: u64, range: std::ops::Range<usize>, p: f64) -> u64 {
    let threshold = (p.clamp(0.0, 1.0) * 2f64.powi(64)).min(u64::MAX as f64) as u64;
    range
        .filter(|&i| splitmix64(salt ^ splitmix64(i as u64)) < threshold)
        .count() as u64
}

/// Answers every work kind from a [`Problem`]; remembers which dense filters each model keeps.
pub struct Evaluator {
    pub problem: Problem,
    pub eval_shards: u32,
    /// Model ref -> per layer, the dense filter indices it keeps.
    pub models: BTreeMap<String, Vec<Vec<u32>>>,
    /// How the test split's counts are made: `None` as the validation split's (another draw),
    /// `Some(q)`: every network scores quality `q` on test, whatever it is.
    pub test_quality: Option<f64>,
}

impl Evaluator {
    pub fn new(problem: Problem, eval_shards: u32) -> Evaluator {
        let mut models = BTreeMap::new();
        models.insert(
            "dense".to_string(),
            WIDTHS.iter().map(|&w| (0..w).collect()).collect(),
        );
        Evaluator {
            problem,
            eval_shards,
            models,
            test_quality: None,
        }
    }

    fn kept(&self, model: &ModelRef) -> Vec<Vec<u32>> {
        self.models
            .get(&model.0)
            .cloned()
            .unwrap_or_else(|| panic!("evaluator: unknown model {model:?}"))
    }

    /// Dense indices kept by `model` under `masks` (over the model's current filters).
    fn apply(&self, model: &ModelRef, masks: &[Mask]) -> Vec<Vec<u32>> {
        self.kept(model)
            .iter()
            .zip(masks)
            .map(|(orig, m)| m.kept_indices().iter().map(|&i| orig[i]).collect())
            .collect()
    }

    fn test_metrics(&self, kept: &[Vec<u32>]) -> HeldOutMetrics {
        let q = self.problem.quality(kept);
        let split = |samples: u64, salt: u64, q: f64| {
            let n = samples as usize;
            TestMetrics {
                samples,
                clean: count(salt + 1, 0..n, CLEAN_BASE * q),
                fgsm: count(salt + 2, 0..n, (ROBUST_BASE + 0.1) * q),
                pgd: count(salt + 3, 0..n, ROBUST_BASE * q),
            }
        };
        HeldOutMetrics {
            validation: split(VAL_SAMPLES, 20, q),
            test: split(TEST_SAMPLES, 10, self.test_quality.unwrap_or(q)),
            activity: None,
        }
    }

    pub fn answer(&mut self, item: &WorkItem) -> WorkResult {
        let output = match &item.kind {
            WorkKind::TrainDense { .. } => WorkOutput::Trained {
                model: ModelRef("dense".into()),
                description: description(),
            },
            WorkKind::EvaluateTest { model, .. } => {
                WorkOutput::TestMetrics(self.test_metrics(&self.kept(model)))
            }
            WorkKind::BuildAdversarialShard {
                iteration, shard, ..
            } => WorkOutput::AdversarialShard {
                artifact: ArtifactRef(format!("adv-{iteration}-{shard}")),
                samples: shard_range(
                    EVAL_SAMPLES as usize,
                    self.eval_shards as usize,
                    *shard as usize,
                )
                .len() as u64,
            },
            WorkKind::EvaluateCandidates {
                layer,
                shard,
                model,
                context,
                candidates,
                ..
            } => {
                let range = shard_range(
                    EVAL_SAMPLES as usize,
                    self.eval_shards as usize,
                    *shard as usize,
                );
                let counts = candidates
                    .iter()
                    .map(|(id, mask)| {
                        let mut masks = context.clone();
                        masks[*layer as usize] = mask.clone();
                        let q = self.problem.quality(&self.apply(model, &masks));
                        CandidateCount {
                            candidate: *id,
                            clean: count(1, range.clone(), CLEAN_BASE * q),
                            adversarial: count(2, range.clone(), ROBUST_BASE * q),
                            samples: range.len() as u64,
                            mask_filters: mask.filters,
                        }
                    })
                    .collect();
                WorkOutput::CandidateCounts { counts }
            }
            WorkKind::FineTune { model, masks, .. } => {
                let kept = self.apply(model, masks);
                let name = format!("ft-{:016x}", digest(&kept));
                self.models.insert(name.clone(), kept);
                WorkOutput::FineTuned {
                    model: ModelRef(name),
                }
            }
        };
        WorkResult {
            id: item.id.clone(),
            output,
        }
    }
}

fn digest(kept: &[Vec<u32>]) -> u64 {
    kept.iter().enumerate().fold(0, |h, (l, k)| {
        k.iter().fold(splitmix64(h ^ l as u64), |h, &f| {
            splitmix64(h ^ u64::from(f))
        })
    })
}

/// A job over the synthetic problem.
pub fn spec(seed: u64, config: EngineConfig, eval_shards: u32, train: bool) -> JobSpec {
    JobSpec {
        seed,
        config,
        dense: if train {
            DenseModel::Train
        } else {
            DenseModel::Given {
                model: ModelRef("dense".into()),
                description: description(),
            }
        },
        eval_samples: EVAL_SAMPLES,
        eval_shards,
    }
}

/// Drives `engine` to the end, answering each batch of asked items in order. Returns the number
/// of items answered.
pub fn run_in_order(engine: &mut Engine, evaluator: &mut Evaluator) -> usize {
    let mut answered = 0;
    loop {
        let items = engine.ask();
        if items.is_empty() {
            assert!(engine.is_done(), "engine waits with nothing outstanding");
            return answered;
        }
        for item in &items {
            let result = evaluator.answer(item);
            engine.tell(result).expect("evaluator result accepted");
            answered += 1;
        }
    }
}
