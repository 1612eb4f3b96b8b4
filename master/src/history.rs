//! The record of the whole search: every evaluated candidate's fitness and every generation's
//! fronts per layer, kept compactly (masks packed, fronts as candidate ids) so that the results
//! and the progress service can show the trade-offs the search saw, not only its answer.

use ccsrp_proto::v1::Mask;
use serde::{Deserialize, Serialize};

use crate::fitness::Fitness;
use crate::work::CandidateId;

/// One evaluated candidate: a layer mask scored in one generation's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub id: CandidateId,
    pub iteration: u32,
    pub generation: u32,
    pub layer: u32,
    /// Over the layer's filters at the iteration's start.
    pub mask: Mask,
    pub fitness: Fitness,
}

/// One layer after one generation's selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerGeneration {
    /// Non-dominated fronts of the selection pool (parents and offspring), best first.
    pub fronts: Vec<Vec<CandidateId>>,
    /// The surviving members, in rank order.
    pub survivors: Vec<CandidateId>,
    pub representative: CandidateId,
}

/// Every layer after one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub iteration: u32,
    pub generation: u32,
    pub layers: Vec<LayerGeneration>,
}

/// The whole search so far, in the order it happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Sorted by id (ids are handed out in creation order).
    pub candidates: Vec<CandidateRecord>,
    pub generations: Vec<GenerationRecord>,
}

impl History {
    /// The record of candidate `id`, if it has been evaluated.
    pub fn candidate(&self, id: CandidateId) -> Option<&CandidateRecord> {
        self.candidates
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.candidates[i])
    }
}

/// A layer's current first front, for the progress service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerFront {
    pub layer: u32,
    pub iteration: u32,
    pub generation: u32,
    /// First-front members of the current subpopulation.
    pub members: Vec<CandidateRecord>,
    pub representative: CandidateId,
}
