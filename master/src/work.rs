//! The engine's side of the work protocol: what [`crate::Engine::ask`] hands out ([`WorkItem`])
//! and what [`crate::Engine::tell`] takes back ([`WorkResult`]).
//!
//! Items are keyed by a deterministic [`WorkId`] (`it2.g3.l1.s5`), so a re-issued or duplicated
//! task carries the same id and its result folds in once. The runtime maps each [`WorkKind`] to a
//! gRPC task and each worker reply to a [`WorkOutput`]; nothing here knows about the wire.

use std::fmt;

use ccsrp_proto::v1::{Mask, ModelDescription};
use serde::{Deserialize, Serialize};

use crate::config::{FineTuneParams, PgdParams, PretrainParams, TestAttackParams};

/// Content address (sha256 hex) of a model artifact: weights plus architecture. Opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelRef(pub String);

/// Content address (sha256 hex) of one shard of the shared adversarial set. Opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArtifactRef(pub String);

/// Deterministic name of a work item, unique over the job: the same item always has the same id,
/// whichever run, restart or worker produced it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkId(pub String);

impl fmt::Display for WorkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One evaluation of one layer mask in one generation's context. Numbered in the order the engine
/// creates them (deterministic), unique over the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CandidateId(pub u64);

impl fmt::Display for CandidateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A task for a worker, with everything it needs besides artifacts and data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    pub id: WorkId,
    pub kind: WorkKind,
}

/// What to compute. Every mask is over the filters of the network named by `model` (the current
/// network, after earlier splices), one per prunable layer in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkKind {
    /// Train the dense model from scratch. Answer: [`WorkOutput::Trained`].
    TrainDense { params: PretrainParams, seed: u64 },
    /// Clean, FGSM and PGD accuracy of `model` on the validation split (what the stop rule reads)
    /// and on the test split (for the record; iteration 0: the dense baseline).
    /// Answer: [`WorkOutput::TestMetrics`].
    EvaluateTest {
        iteration: u32,
        model: ModelRef,
        attack: TestAttackParams,
    },
    /// PGD examples for eval shard `shard`, attacking `model` pruned by `mutation` (random masks
    /// drawn by the engine). Answer: [`WorkOutput::AdversarialShard`].
    BuildAdversarialShard {
        iteration: u32,
        shard: u32,
        model: ModelRef,
        mutation: Vec<Mask>,
        attack: PgdParams,
        seed: u64,
    },
    /// Clean correct counts on eval shard `shard` and adversarial correct counts on the matching
    /// adversarial shard, for each candidate mask of `layer` placed in `context` (one mask per layer;
    /// `context[layer]` is replaced by each candidate). All candidates share layers below `layer`,
    /// so a worker may cache their activations. Answer: [`WorkOutput::CandidateCounts`].
    EvaluateCandidates {
        iteration: u32,
        generation: u32,
        layer: u32,
        shard: u32,
        model: ModelRef,
        adversarial: ArtifactRef,
        context: Vec<Mask>,
        candidates: Vec<(CandidateId, Mask)>,
    },
    /// Prune `model` by `masks` (physically) and fine-tune it. Answer: [`WorkOutput::FineTuned`].
    FineTune {
        iteration: u32,
        model: ModelRef,
        masks: Vec<Mask>,
        params: FineTuneParams,
        seed: u64,
    },
}

impl WorkKind {
    /// Short name of the kind, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            WorkKind::TrainDense { .. } => "train_dense",
            WorkKind::EvaluateTest { .. } => "evaluate_test",
            WorkKind::BuildAdversarialShard { .. } => "build_adversarial_shard",
            WorkKind::EvaluateCandidates { .. } => "evaluate_candidates",
            WorkKind::FineTune { .. } => "fine_tune",
        }
    }

    /// Name of the output kind that answers this work kind.
    pub fn answer_name(&self) -> &'static str {
        match self {
            WorkKind::TrainDense { .. } => "trained",
            WorkKind::EvaluateTest { .. } => "test_metrics",
            WorkKind::BuildAdversarialShard { .. } => "adversarial_shard",
            WorkKind::EvaluateCandidates { .. } => "candidate_counts",
            WorkKind::FineTune { .. } => "fine_tuned",
        }
    }
}

/// A worker's answer to the item `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkResult {
    pub id: WorkId,
    pub output: WorkOutput,
}

/// Accuracies on one held-out split (validation or test) as exact counts of correctly classified
/// images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMetrics {
    pub samples: u64,
    pub clean: u64,
    pub fgsm: u64,
    pub pgd: u64,
}

/// An [`WorkKind::EvaluateTest`] answer: the validation split's counts, which the job's decisions
/// read, and the test split's, which are only recorded; with the spikes and synaptic operations
/// on the clean test images (absent from older workers and checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOutMetrics {
    pub validation: TestMetrics,
    pub test: TestMetrics,
    #[serde(default)]
    pub activity: Option<ccsrp_proto::activity::Activity>,
}

impl TestMetrics {
    /// Clean accuracy in percent.
    pub fn clean_percent(&self) -> f64 {
        percent(self.clean, self.samples)
    }

    /// Robust (PGD) accuracy in percent.
    pub fn robust_percent(&self) -> f64 {
        percent(self.pgd, self.samples)
    }
}

fn percent(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        100.0 * count as f64 / samples as f64
    }
}

/// One candidate's correct counts on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateCount {
    pub candidate: CandidateId,
    /// Correctly classified clean images of the shard.
    pub clean: u64,
    /// Correctly classified adversarial images of the shard.
    pub adversarial: u64,
    /// Images in the shard (must equal the shard's size).
    pub samples: u64,
    /// Length of the mask the worker evaluated (must equal the candidate's mask length).
    #[serde(default)]
    pub mask_filters: u32,
}

/// What a worker computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkOutput {
    Trained {
        model: ModelRef,
        description: ModelDescription,
    },
    TestMetrics(HeldOutMetrics),
    AdversarialShard {
        artifact: ArtifactRef,
        samples: u64,
    },
    CandidateCounts {
        counts: Vec<CandidateCount>,
    },
    FineTuned {
        model: ModelRef,
    },
}

impl WorkOutput {
    /// Short name of the kind, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            WorkOutput::Trained { .. } => "trained",
            WorkOutput::TestMetrics(_) => "test_metrics",
            WorkOutput::AdversarialShard { .. } => "adversarial_shard",
            WorkOutput::CandidateCounts { .. } => "candidate_counts",
            WorkOutput::FineTuned { .. } => "fine_tuned",
        }
    }
}

/// How [`crate::Engine::tell`] took a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Folded into the state.
    Accepted,
    /// The same result was already accepted; nothing changed.
    Duplicate,
}
