//! A snapshot of where the engine is, for status displays.

use serde::{Deserialize, Serialize};

use crate::outcome::NetworkRecord;

/// What the engine is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Training the dense model.
    Pretraining,
    /// Building the shared adversarial set and scoring the initial subpopulations (generation 0).
    Adversarial,
    /// Scoring the offspring of a generation (1..=G), or generation 0's members.
    Evolving,
    FineTuning,
    Testing,
    Done,
}

/// Where the search stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    /// Current outer iteration, 1..=K (0 before the first).
    pub iteration: u32,
    pub generation: u32,
    /// Results accepted over the whole job.
    pub items_done: u64,
    /// Items created and not yet answered (handed out or not).
    pub items_outstanding: u64,
    /// Evaluated candidates over the whole job.
    pub candidates_evaluated: u64,
    /// The last network within the stop limits so far (the dense model once tested).
    pub best: Option<NetworkRecord>,
}
