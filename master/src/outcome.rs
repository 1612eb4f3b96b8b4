//! The job's answer and the per-iteration records the stop rule was applied to.

use ccsrp_proto::v1::{Mask, ModelDescription};
use serde::{Deserialize, Serialize};

use crate::work::{ModelRef, TestMetrics};

/// One network the search produced: the dense model (iteration 0) or a spliced, fine-tuned one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// 0 for the dense model.
    pub iteration: u32,
    pub model: ModelRef,
    pub description: ModelDescription,
    /// Per layer: indices of the dense model's filters this network keeps, ascending.
    pub kept_filters: Vec<Vec<u32>>,
    pub macs: u64,
    /// Counts on the validation split: what the stop rule reads.
    pub validation: TestMetrics,
    /// Counts on the test split: recorded, never read by a decision.
    pub test: TestMetrics,
    /// Validation accuracy drops versus the dense model, in percentage points (0 for the dense
    /// model): the stop rule compares these with its limits.
    pub clean_drop: f64,
    pub robust_drop: f64,
    /// Test accuracy drops versus the dense model, in percentage points: for the record.
    pub test_clean_drop: f64,
    pub test_robust_drop: f64,
    /// Spikes and synaptic operations on the clean test images (absent if the worker did not
    /// count them).
    #[serde(default)]
    pub activity: Option<ccsrp_proto::activity::Activity>,
}

/// One finished outer iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// The representatives the network was spliced by (over the previous network's filters).
    pub masks: Vec<Mask>,
    pub network: NetworkRecord,
    /// Whether the network's validation drops stayed within the stop limits.
    pub within_limits: bool,
}

/// Why the search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The given iteration's network exceeded a stop limit; the answer is the one before it.
    LimitExceeded { iteration: u32 },
    /// All K outer iterations ran within the limits.
    IterationsExhausted,
}

/// The final answer once the engine is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub reason: StopReason,
    /// The dense model with its validation and test metrics.
    pub dense: NetworkRecord,
    /// The last network within the limits (the dense model if the first iteration exceeded them).
    pub answer: NetworkRecord,
    pub iterations: Vec<IterationRecord>,
}

impl Outcome {
    /// Fraction of the dense model's MACs the answer removes, in [0, 1).
    pub fn macs_reduction(&self) -> f64 {
        if self.dense.macs == 0 {
            0.0
        } else {
            1.0 - self.answer.macs as f64 / self.dense.macs as f64
        }
    }
}
