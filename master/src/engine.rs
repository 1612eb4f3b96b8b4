//! The outer loop of CCSRP as a state machine behind an ask/tell interface.
//!
//! ```text
//! [TrainDense] -> EvaluateTest(dense) ─────────────────────────────────────────────┐ (baseline)
//!             └-> iteration k: BuildAdversarialShard x S ─> generation 0 (initial members)
//!                 ─> generations 1..=G (offspring, all layers at once) ─> splice ─> FineTune
//!                 ─> EvaluateTest ─> stop rule (needs the baseline) ─> iteration k+1 | done
//! ```
//!
//! `EvaluateTest` measures a network on the validation split and on the test split; the stop rule
//! (the only decision taken between iterations) reads the validation counts alone, so the test
//! split cannot change the trajectory or the answer.
//!
//! [`Engine::ask`] hands out the items that became ready; [`Engine::tell`] folds in one result,
//! in any order. A step advances only when every item it waits for has been answered, and each
//! random decision draws from its own seeded stream ([`crate::rng`]), so the trajectory is the same
//! whatever the arrival order, the number of workers, or where a checkpoint was taken; the engine's
//! own decisions do not depend on the shard count either (only the workers' adversarial shards do,
//! each attacking its own random mutation).
//!
//! Invariants: every subpopulation is non-empty (mu >= 1), every mask keeps between the ratio
//! bound and all of its layer's filters, and every open item belongs to the current step.
//! The whole state is serde-serialisable; nothing random is held outside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ccsrp_proto::shard::shard_range;
use ccsrp_proto::v1::{Mask, ModelDescription};
use serde::{Deserialize, Serialize};

use crate::config::{Collaboration, ConfigError, EngineConfig};
use crate::fitness::ShardTally;
use crate::history::{CandidateRecord, GenerationRecord, History, LayerFront};
use crate::outcome::{IterationRecord, NetworkRecord, Outcome, StopReason};
use crate::progress::{Phase, Progress};
use crate::rng::{self, Stream};
use crate::splice::{self, DescriptionError, Network};
use crate::subpopulation::{context_digest, Member, Subpopulation};
use crate::variation;
use crate::work::{
    ArtifactRef, CandidateCount, CandidateId, HeldOutMetrics, ModelRef, TestMetrics, Told, WorkId,
    WorkItem, WorkKind, WorkOutput, WorkResult,
};

/// Where the dense model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DenseModel {
    /// An existing trained model and its description.
    Given {
        model: ModelRef,
        description: ModelDescription,
    },
    /// The first work item trains it (with the `[pretrain]` parameters).
    Train,
}

/// Everything the engine needs to run a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job seed every random stream and worker seed derives from.
    pub seed: u64,
    pub config: EngineConfig,
    pub dense: DenseModel,
    /// Size of the evaluation split E.
    pub eval_samples: u64,
    /// Shards E is cut into (`ccsrp_proto::shard`); one adversarial shard and one evaluation item
    /// per layer and generation each.
    pub eval_shards: u32,
}

/// A job the engine cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("dense model: {0}")]
    Description(#[from] DescriptionError),
    #[error("dense model: the model reference is empty: expected a content address")]
    EmptyModel,
    #[error("eval_shards = {shards}: expected 1 <= value <= eval_samples ({samples})")]
    Shards { shards: u32, samples: u64 },
}

/// A result that does not fit the item it claims to answer. The engine's state is unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TellError {
    #[error("result for {id}: no such work item was issued")]
    UnknownItem { id: WorkId },
    #[error("result for {id}: the item was already answered with a different result")]
    AlreadyAnswered { id: WorkId },
    #[error("result for {id}: expected a {expected} result, got {got}")]
    WrongKind {
        id: WorkId,
        expected: &'static str,
        got: &'static str,
    },
    #[error("result for {id}: candidate counts do not match the item's candidates (missing {missing:?}, unexpected or repeated {unexpected:?})")]
    CandidateSet {
        id: WorkId,
        missing: Vec<CandidateId>,
        unexpected: Vec<CandidateId>,
    },
    #[error("result for {id}: {field} = {value}: expected {expected}")]
    Invalid {
        id: WorkId,
        field: String,
        value: String,
        expected: String,
    },
}

/// One item created and not yet answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenItem {
    item: WorkItem,
    handed_out: bool,
}

impl OpenItem {
    /// A candidate evaluation (the items a generation waits for).
    fn is_evaluation(&self) -> bool {
        matches!(self.item.kind, WorkKind::EvaluateCandidates { .. })
    }
}

/// Bookkeeping of items: open ones in creation order, and a digest of every accepted result (for
/// idempotence; a digest instead of the result keeps checkpoints small over long jobs).
///
/// Indexed so that every operation a result costs is O(log n), not O(open items): open items by
/// creation sequence, their ids, the ones not yet handed out, and how many are candidate
/// evaluations. Serialised as the plain list of open items in creation order ([`LedgerForm`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "LedgerForm", into = "LedgerForm")]
struct Ledger {
    open: BTreeMap<u64, OpenItem>,
    answered: BTreeMap<WorkId, u64>,
    by_id: HashMap<WorkId, u64>,
    not_handed_out: BTreeSet<u64>,
    open_evaluations: usize,
    next_seq: u64,
}

/// Equal when the open items (in creation order) and the answered digests are: the indexes and
/// sequence numbers are bookkeeping (a restored ledger renumbers its items).
impl PartialEq for Ledger {
    fn eq(&self, other: &Ledger) -> bool {
        self.answered == other.answered && self.open.values().eq(other.open.values())
    }
}

/// The serialised form of [`Ledger`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LedgerForm {
    open: Vec<OpenItem>,
    answered: BTreeMap<WorkId, u64>,
}

impl From<LedgerForm> for Ledger {
    fn from(form: LedgerForm) -> Ledger {
        let mut ledger = Ledger {
            answered: form.answered,
            ..Ledger::default()
        };
        for item in form.open {
            ledger.insert(item);
        }
        ledger
    }
}

impl From<Ledger> for LedgerForm {
    fn from(ledger: Ledger) -> LedgerForm {
        LedgerForm {
            open: ledger.open.into_values().collect(),
            answered: ledger.answered,
        }
    }
}

/// FNV-1a over the result's JSON form: deterministic (fixed field order, no hash maps inside), so
/// a repeated result has the same digest on every run and after a restore.
fn output_digest(output: &WorkOutput) -> u64 {
    let bytes = serde_json::to_vec(output).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Ledger {
    fn push(&mut self, id: String, kind: WorkKind) {
        self.insert(OpenItem {
            item: WorkItem {
                id: WorkId(id),
                kind,
            },
            handed_out: false,
        });
    }

    fn insert(&mut self, open: OpenItem) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !open.handed_out {
            self.not_handed_out.insert(seq);
        }
        if open.is_evaluation() {
            self.open_evaluations += 1;
        }
        self.by_id.insert(open.item.id.clone(), seq);
        self.open.insert(seq, open);
    }

    fn get(&self, id: &WorkId) -> Option<&OpenItem> {
        self.by_id.get(id).and_then(|seq| self.open.get(seq))
    }

    fn remove(&mut self, id: &WorkId) -> Option<OpenItem> {
        let seq = self.by_id.remove(id)?;
        self.not_handed_out.remove(&seq);
        let open = self.open.remove(&seq)?;
        if open.is_evaluation() {
            self.open_evaluations -= 1;
        }
        Some(open)
    }

    /// Marks every not-yet-handed-out item handed out and returns them in creation order.
    fn hand_out(&mut self) -> Vec<WorkItem> {
        let seqs = std::mem::take(&mut self.not_handed_out);
        seqs.into_iter()
            .filter_map(|seq| {
                let o = self.open.get_mut(&seq)?;
                o.handed_out = true;
                Some(o.item.clone())
            })
            .collect()
    }
}

/// A candidate of the current generation waiting for its shard counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Candidate {
    id: CandidateId,
    mask: Mask,
    /// The member it re-scores in a new context, if it is not an offspring.
    rescores: Option<usize>,
    tally: ShardTally,
}

/// After the generations: what the iteration is waiting for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Stage {
    Evolving,
    FineTuning {
        masks: Vec<Mask>,
    },
    Testing {
        masks: Vec<Mask>,
        model: ModelRef,
    },
    /// The test result is in; the stop rule still needs the dense baseline.
    AwaitingBaseline {
        masks: Vec<Mask>,
        model: ModelRef,
        metrics: HeldOutMetrics,
    },
}

/// State of the current outer iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Iteration {
    number: u32,
    /// The network being pruned (the last one within the limits).
    network: Network,
    /// Per layer: fewest filters a mask may keep (ratio bound).
    min_keep: Vec<u32>,
    adversarial: Vec<Option<ArtifactRef>>,
    generation: u32,
    /// Empty until generation 0 is scored.
    layers: Vec<Subpopulation>,
    /// Per layer: the candidates of the current generation.
    batch: Vec<Vec<Candidate>>,
    stage: Stage,
}

/// The coevolution engine: all job state, serialisable for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    spec: JobSpec,
    ledger: Ledger,
    next_candidate: u64,
    dense: Option<Network>,
    baseline: Option<HeldOutMetrics>,
    /// The last network within the stop limits.
    accepted: Option<Network>,
    best: Option<NetworkRecord>,
    iteration: Option<Iteration>,
    records: Vec<IterationRecord>,
    history: History,
    outcome: Option<Outcome>,
}

const BASELINE_ITERATION: u32 = 0;

impl Engine {
    /// Checks the job and creates its first items (training the dense model, or the baseline test
    /// and iteration 1).
    pub fn new(spec: JobSpec) -> Result<Engine, EngineError> {
        spec.config.validate()?;
        if spec.eval_shards == 0 || u64::from(spec.eval_shards) > spec.eval_samples {
            return Err(EngineError::Shards {
                shards: spec.eval_shards,
                samples: spec.eval_samples,
            });
        }
        let given = match &spec.dense {
            DenseModel::Given { model, description } => {
                if model.0.trim().is_empty() {
                    return Err(EngineError::EmptyModel);
                }
                splice::validate_description(description)?;
                Some(Network::dense(model.clone(), description.clone()))
            }
            DenseModel::Train => None,
        };
        let mut engine = Engine {
            ledger: Ledger::default(),
            next_candidate: 0,
            dense: None,
            baseline: None,
            accepted: None,
            best: None,
            iteration: None,
            records: Vec::new(),
            history: History::default(),
            outcome: None,
            spec,
        };
        match given {
            Some(network) => engine.start_with_dense(network),
            None => {
                let kind = WorkKind::TrainDense {
                    params: engine.spec.config.pretrain.clone(),
                    seed: rng::seed(engine.spec.seed, Stream::PretrainSeed),
                };
                engine.ledger.push("pretrain".into(), kind);
            }
        }
        Ok(engine)
    }

    /// The job this engine runs.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// New work items that became ready since the last call, in creation order. Each item is
    /// returned once; the engine then counts it as outstanding. Empty while waiting or when done.
    pub fn ask(&mut self) -> Vec<WorkItem> {
        self.ledger.hand_out()
    }

    /// Every item handed out by [`Engine::ask`] and not yet answered (to re-lease after a restart).
    pub fn outstanding(&self) -> Vec<WorkItem> {
        self.ledger
            .open
            .values()
            .filter(|o| o.handed_out)
            .map(|o| o.item.clone())
            .collect()
    }

    /// Folds in one result. A result for an item that was never issued, of the wrong kind, for other
    /// candidates or with impossible counts is an error and changes nothing; the same result again
    /// is [`Told::Duplicate`]. A result for an item created but not yet asked for is accepted.
    pub fn tell(&mut self, result: WorkResult) -> Result<Told, TellError> {
        let Some(open) = self.ledger.get(&result.id) else {
            return match self.ledger.answered.get(&result.id) {
                Some(&previous) if previous == output_digest(&result.output) => Ok(Told::Duplicate),
                Some(_) => Err(TellError::AlreadyAnswered { id: result.id }),
                None => Err(TellError::UnknownItem { id: result.id }),
            };
        };
        self.check(&open.item, &result.output)?;
        let Some(OpenItem { item, .. }) = self.ledger.remove(&result.id) else {
            return Err(TellError::UnknownItem { id: result.id });
        };
        self.ledger
            .answered
            .insert(result.id.clone(), output_digest(&result.output));
        self.apply(item.kind, result.output);
        Ok(Told::Accepted)
    }

    /// Whether the search has ended (see [`Engine::outcome`]).
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The final answer, once done.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Every evaluated candidate and every generation's fronts so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The finished outer iterations so far.
    pub fn iterations(&self) -> &[IterationRecord] {
        &self.records
    }

    /// Where the search stands.
    pub fn progress(&self) -> Progress {
        let (phase, iteration, generation) = self.position();
        Progress {
            phase,
            iteration,
            generation,
            items_done: self.ledger.answered.len() as u64,
            items_outstanding: self.ledger.open.len() as u64,
            candidates_evaluated: self.history.candidates.len() as u64,
            best: self.best.clone(),
        }
    }

    /// The best network tested so far (the dense one first), as in [`Engine::progress`].
    pub fn best(&self) -> Option<&NetworkRecord> {
        self.best.as_ref()
    }

    /// Where the search is: (phase, iteration, generation), as in [`Engine::progress`] (cheap).
    pub fn position(&self) -> (Phase, u32, u32) {
        let (iteration, generation, phase) = match (&self.outcome, &self.iteration) {
            (Some(_), it) => (
                it.as_ref().map_or(0, |i| i.number),
                it.as_ref().map_or(0, |i| i.generation),
                Phase::Done,
            ),
            (None, None) => (0, 0, Phase::Pretraining),
            (None, Some(it)) => {
                let phase = match it.stage {
                    Stage::Evolving if it.adversarial.iter().any(Option::is_none) => {
                        Phase::Adversarial
                    }
                    Stage::Evolving => Phase::Evolving,
                    Stage::FineTuning { .. } => Phase::FineTuning,
                    Stage::Testing { .. } | Stage::AwaitingBaseline { .. } => Phase::Testing,
                };
                (it.number, it.generation, phase)
            }
        };
        (phase, iteration, generation)
    }

    /// Each layer's current first front and representative (empty before generation 0 is scored).
    pub fn fronts(&self) -> Vec<LayerFront> {
        let Some(it) = &self.iteration else {
            return Vec::new();
        };
        it.layers
            .iter()
            .enumerate()
            .map(|(l, sub)| LayerFront {
                layer: l as u32,
                iteration: it.number,
                generation: it.generation,
                members: sub
                    .first_front()
                    .into_iter()
                    .filter_map(|i| self.history.candidate(sub.members[i].candidate).cloned())
                    .collect(),
                representative: sub.representative().candidate,
            })
            .collect()
    }

    fn shard_samples(&self, shard: u32) -> u64 {
        shard_range(
            self.spec.eval_samples as usize,
            self.spec.eval_shards as usize,
            shard as usize,
        )
        .len() as u64
    }

    /// Validates `output` against `item` without changing anything.
    fn check(&self, item: &WorkItem, output: &WorkOutput) -> Result<(), TellError> {
        let id = &item.id;
        let invalid = |field: &str, value: String, expected: String| TellError::Invalid {
            id: id.clone(),
            field: field.to_string(),
            value,
            expected,
        };
        let non_empty = |field: &str, v: &str| {
            if v.trim().is_empty() {
                Err(invalid(field, "\"\"".into(), "a content address".into()))
            } else {
                Ok(())
            }
        };
        let at_most = |field: &str, v: u64, samples: u64| {
            if v > samples {
                Err(invalid(
                    field,
                    v.to_string(),
                    format!("<= samples ({samples})"),
                ))
            } else {
                Ok(())
            }
        };
        match (&item.kind, output) {
            (WorkKind::TrainDense { .. }, WorkOutput::Trained { model, description }) => {
                non_empty("model", &model.0)?;
                splice::validate_description(description)
                    .map_err(|e| invalid(&format!("description.{}", e.field), e.value, e.expected))
            }
            (WorkKind::EvaluateTest { .. }, WorkOutput::TestMetrics(held_out)) => {
                for (split, m) in [
                    ("validation", &held_out.validation),
                    ("test", &held_out.test),
                ] {
                    if m.samples == 0 {
                        return Err(invalid(
                            &format!("{split}.samples"),
                            "0".into(),
                            "a value >= 1".into(),
                        ));
                    }
                    at_most(&format!("{split}.clean"), m.clean, m.samples)?;
                    at_most(&format!("{split}.fgsm"), m.fgsm, m.samples)?;
                    at_most(&format!("{split}.pgd"), m.pgd, m.samples)?;
                }
                if let Some(a) = &held_out.activity {
                    if a.images != held_out.test.samples {
                        return Err(invalid(
                            "activity.images",
                            a.images.to_string(),
                            format!("{} (test.samples)", held_out.test.samples),
                        ));
                    }
                    for (l, layer) in a.layers.iter().enumerate() {
                        if layer.spikes > layer.neuron_steps {
                            return Err(invalid(
                                &format!("activity.layers[{l}].spikes"),
                                layer.spikes.to_string(),
                                format!("<= neuron_steps ({})", layer.neuron_steps),
                            ));
                        }
                    }
                }
                Ok(())
            }
            (
                WorkKind::BuildAdversarialShard { shard, .. },
                WorkOutput::AdversarialShard { artifact, samples },
            ) => {
                non_empty("artifact", &artifact.0)?;
                let expected = self.shard_samples(*shard);
                if *samples != expected {
                    return Err(invalid(
                        "samples",
                        samples.to_string(),
                        format!("{expected} (the size of eval shard {shard})"),
                    ));
                }
                Ok(())
            }
            (
                WorkKind::EvaluateCandidates {
                    shard, candidates, ..
                },
                WorkOutput::CandidateCounts { counts },
            ) => self.check_counts(id, *shard, candidates, counts),
            (WorkKind::FineTune { .. }, WorkOutput::FineTuned { model }) => {
                non_empty("model", &model.0)
            }
            (kind, out) => Err(TellError::WrongKind {
                id: id.clone(),
                expected: kind.answer_name(),
                got: out.name(),
            }),
        }
    }

    fn check_counts(
        &self,
        id: &WorkId,
        shard: u32,
        candidates: &[(CandidateId, Mask)],
        counts: &[CandidateCount],
    ) -> Result<(), TellError> {
        let mut expected: Vec<CandidateId> = candidates.iter().map(|(c, _)| *c).collect();
        expected.sort_unstable();
        let mut got: Vec<CandidateId> = counts.iter().map(|c| c.candidate).collect();
        got.sort_unstable();
        if got != expected {
            let mut unexpected: Vec<CandidateId> = got.clone();
            for c in &expected {
                if let Some(p) = unexpected.iter().position(|u| u == c) {
                    unexpected.remove(p);
                }
            }
            let missing = expected.into_iter().filter(|c| !got.contains(c)).collect();
            return Err(TellError::CandidateSet {
                id: id.clone(),
                missing,
                unexpected,
            });
        }
        let samples = self.shard_samples(shard);
        for c in counts {
            let invalid = |field: &str, v: u64, expected: String| TellError::Invalid {
                id: id.clone(),
                field: format!("counts[{}].{field}", c.candidate),
                value: v.to_string(),
                expected,
            };
            if c.samples != samples {
                return Err(invalid(
                    "samples",
                    c.samples,
                    format!("{samples} (the size of eval shard {shard})"),
                ));
            }
            if c.clean > samples {
                return Err(invalid("clean", c.clean, format!("<= samples ({samples})")));
            }
            if c.adversarial > samples {
                return Err(invalid(
                    "adversarial",
                    c.adversarial,
                    format!("<= samples ({samples})"),
                ));
            }
            let filters = candidates
                .iter()
                .find(|(id, _)| *id == c.candidate)
                .map_or(0, |(_, m)| m.filters);
            if c.mask_filters != filters {
                return Err(invalid(
                    "mask_filters",
                    u64::from(c.mask_filters),
                    format!("{filters} (the length of the candidate's mask)"),
                ));
            }
        }
        Ok(())
    }

    /// Folds in a checked result and advances the state machine.
    fn apply(&mut self, kind: WorkKind, output: WorkOutput) {
        match (kind, output) {
            (_, WorkOutput::Trained { model, description }) => {
                self.start_with_dense(Network::dense(model, description));
            }
            (WorkKind::EvaluateTest { iteration, .. }, WorkOutput::TestMetrics(m)) => {
                if iteration == BASELINE_ITERATION {
                    self.on_baseline(m);
                } else {
                    self.on_test(m);
                }
            }
            (
                WorkKind::BuildAdversarialShard { shard, .. },
                WorkOutput::AdversarialShard { artifact, .. },
            ) => self.on_adversarial(shard, artifact),
            (
                WorkKind::EvaluateCandidates { layer, shard, .. },
                WorkOutput::CandidateCounts { counts },
            ) => self.on_counts(layer, shard, &counts),
            (_, WorkOutput::FineTuned { model }) => self.on_finetuned(model),
            _ => {}
        }
    }

    fn start_with_dense(&mut self, network: Network) {
        self.ledger.push(
            format!("it{BASELINE_ITERATION}.test"),
            WorkKind::EvaluateTest {
                iteration: BASELINE_ITERATION,
                model: network.model.clone(),
                attack: self.spec.config.test_attack.clone(),
            },
        );
        self.dense = Some(network.clone());
        self.accepted = Some(network);
        self.start_iteration(1);
    }

    fn new_candidate(&mut self) -> CandidateId {
        let id = CandidateId(self.next_candidate);
        self.next_candidate += 1;
        id
    }

    fn start_iteration(&mut self, number: u32) {
        let Some(network) = self.accepted.clone() else {
            return;
        };
        let cfg = &self.spec.config;
        let filters: Vec<u32> = network
            .description
            .layers
            .iter()
            .map(|l| l.filters)
            .collect();
        let min_keep: Vec<u32> = filters.iter().map(|&f| cfg.min_keep(f)).collect();
        for shard in 0..self.spec.eval_shards {
            let mut r = rng::rng(
                self.spec.seed,
                Stream::AdversarialMutation {
                    iteration: number,
                    shard,
                },
            );
            let mutation = filters
                .iter()
                .map(|&f| {
                    Mask::from_keep(&variation::random_mask(
                        f,
                        cfg.adversarial.keep_probability,
                        1,
                        &mut r,
                    ))
                })
                .collect();
            let kind = WorkKind::BuildAdversarialShard {
                iteration: number,
                shard,
                model: network.model.clone(),
                mutation,
                attack: cfg.adversarial.attack(),
                seed: rng::seed(
                    self.spec.seed,
                    Stream::AdversarialSeed {
                        iteration: number,
                        shard,
                    },
                ),
            };
            self.ledger.push(format!("it{number}.adv.s{shard}"), kind);
        }
        let mut batch = Vec::with_capacity(filters.len());
        for (layer, (&f, &min)) in filters.iter().zip(&min_keep).enumerate() {
            let mut r = rng::rng(
                self.spec.seed,
                Stream::InitialPopulation {
                    iteration: number,
                    layer: layer as u32,
                },
            );
            let masks: Vec<Mask> = (0..self.spec.config.evolution.population)
                .map(|i| {
                    let keep_p = self.spec.config.evolution.init_keep_probability;
                    Mask::from_keep(&variation::initial_member(i, f, keep_p, min, &mut r))
                })
                .collect();
            let candidates = masks
                .into_iter()
                .map(|mask| Candidate {
                    id: self.new_candidate(),
                    mask,
                    rescores: None,
                    tally: ShardTally::new(self.spec.eval_shards),
                })
                .collect();
            batch.push(candidates);
        }
        self.iteration = Some(Iteration {
            number,
            adversarial: vec![None; self.spec.eval_shards as usize],
            network,
            min_keep,
            generation: 0,
            layers: Vec::new(),
            batch,
            stage: Stage::Evolving,
        });
    }

    /// The masks every layer other than the scored one takes this generation.
    fn context(&self, it: &Iteration) -> Vec<Mask> {
        let all_ones = || {
            it.network
                .description
                .layers
                .iter()
                .map(|l| Mask::all(l.filters))
                .collect()
        };
        match self.spec.config.evolution.collaboration {
            Collaboration::Representatives if !it.layers.is_empty() => it
                .layers
                .iter()
                .map(|s| s.representative().mask.clone())
                .collect(),
            _ => all_ones(),
        }
    }

    /// Creates the current generation's evaluation items for `shard`, one per layer.
    fn push_evaluations(&mut self, shard: u32) {
        let Some(it) = &self.iteration else {
            return;
        };
        let Some(Some(adversarial)) = it.adversarial.get(shard as usize).cloned() else {
            return;
        };
        let context = self.context(it);
        let mut items = Vec::new();
        for (layer, batch) in it.batch.iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let kind = WorkKind::EvaluateCandidates {
                iteration: it.number,
                generation: it.generation,
                layer: layer as u32,
                shard,
                model: it.network.model.clone(),
                adversarial: adversarial.clone(),
                context: context.clone(),
                candidates: batch.iter().map(|c| (c.id, c.mask.clone())).collect(),
            };
            items.push((
                format!("it{}.g{}.l{layer}.s{shard}", it.number, it.generation),
                kind,
            ));
        }
        for (id, kind) in items {
            self.ledger.push(id, kind);
        }
    }

    fn on_adversarial(&mut self, shard: u32, artifact: ArtifactRef) {
        let Some(it) = &mut self.iteration else {
            return;
        };
        if let Some(slot) = it.adversarial.get_mut(shard as usize) {
            *slot = Some(artifact);
        }
        // Generation 0's candidates are fixed at the iteration's start: score them on this shard now.
        self.push_evaluations(shard);
    }

    fn on_counts(&mut self, layer: u32, shard: u32, counts: &[CandidateCount]) {
        let Some(it) = &mut self.iteration else {
            return;
        };
        let Some(batch) = it.batch.get_mut(layer as usize) else {
            return;
        };
        for c in counts {
            if let Some(cand) = batch.iter_mut().find(|x| x.id == c.candidate) {
                cand.tally.record(shard, c.clean, c.adversarial, c.samples);
            }
        }
        // Every shard's item exists once its adversarial shard does; the generation is complete
        // when all of those items are answered (O(open items), not O(candidates x shards)).
        let all_shards_built = it.adversarial.iter().all(Option::is_some);
        let evaluating = self.ledger.open_evaluations > 0;
        if all_shards_built && !evaluating {
            self.finish_generation();
        }
    }

    /// Scores the generation's candidates, selects every layer, updates all representatives at
    /// once, and starts the next generation or the splice.
    fn finish_generation(&mut self) {
        let Some(mut it) = self.iteration.take() else {
            return;
        };
        let context = self.context(&it);
        let kept: Vec<u32> = context.iter().map(Mask::kept).collect();
        let mu = self.spec.config.evolution.population as usize;
        let mut layers = Vec::with_capacity(it.batch.len());
        let mut record = GenerationRecord {
            iteration: it.number,
            generation: it.generation,
            layers: Vec::with_capacity(it.batch.len()),
        };
        for (l, batch) in it.batch.iter().enumerate() {
            let digest = context_digest(&context, l);
            let macs_of = |mask: &Mask| {
                let mut k = kept.clone();
                k[l] = mask.kept();
                splice::macs(&it.network.description, &k)
            };
            let scored: Vec<(Option<usize>, Member)> = batch
                .iter()
                .filter_map(|c| {
                    let fitness = c.tally.complete(macs_of(&c.mask))?;
                    Some((
                        c.rescores,
                        Member {
                            candidate: c.id,
                            mask: c.mask.clone(),
                            fitness,
                            context: digest,
                        },
                    ))
                })
                .collect();
            for (_, m) in &scored {
                self.history.candidates.push(CandidateRecord {
                    id: m.candidate,
                    iteration: it.number,
                    generation: it.generation,
                    layer: l as u32,
                    mask: m.mask.clone(),
                    fitness: m.fitness,
                });
            }
            let mut pool: Vec<Member> = Vec::new();
            if let Some(sub) = it.layers.get(l) {
                for (i, old) in sub.members.iter().enumerate() {
                    match scored.iter().find(|(r, _)| *r == Some(i)) {
                        Some((_, fresh)) => pool.push(fresh.clone()),
                        None => {
                            let mut m = old.clone();
                            m.fitness.macs = macs_of(&m.mask);
                            pool.push(m);
                        }
                    }
                }
            }
            pool.extend(
                scored
                    .into_iter()
                    .filter(|(r, _)| r.is_none())
                    .map(|(_, m)| m),
            );
            let (sub, layer_record) = Subpopulation::select(pool, mu, &self.spec.config.objectives);
            layers.push(sub);
            record.layers.push(layer_record);
        }
        self.history.generations.push(record);
        it.layers = layers;
        it.batch = Vec::new();

        if it.generation < self.spec.config.evolution.generations {
            it.generation += 1;
            self.breed(&mut it);
            self.iteration = Some(it);
            for shard in 0..self.spec.eval_shards {
                self.push_evaluations(shard);
            }
        } else {
            let masks: Vec<Mask> = it
                .layers
                .iter()
                .map(|s| s.representative().mask.clone())
                .collect();
            self.ledger.push(
                format!("it{}.finetune", it.number),
                WorkKind::FineTune {
                    iteration: it.number,
                    model: it.network.model.clone(),
                    masks: masks.clone(),
                    params: self.spec.config.finetune.clone(),
                    seed: rng::seed(
                        self.spec.seed,
                        Stream::FineTuneSeed {
                            iteration: it.number,
                        },
                    ),
                },
            );
            it.stage = Stage::FineTuning { masks };
            self.iteration = Some(it);
        }
    }

    /// The next generation's candidates per layer: lambda offspring, plus the members scored in
    /// another context than the new one (when re-scoring is on).
    fn breed(&mut self, it: &mut Iteration) {
        let context = self.context(it);
        let evolution = self.spec.config.evolution.clone();
        let mut batch = Vec::with_capacity(it.layers.len());
        for (l, sub) in it.layers.iter().enumerate() {
            let digest = context_digest(&context, l);
            let mut r = rng::rng(
                self.spec.seed,
                Stream::Offspring {
                    iteration: it.number,
                    layer: l as u32,
                    generation: it.generation,
                },
            );
            let mut candidates = Vec::new();
            if evolution.rescore_parents {
                for (i, m) in sub.members.iter().enumerate() {
                    if m.context != digest {
                        candidates.push(Candidate {
                            id: self.new_candidate(),
                            mask: m.mask.clone(),
                            rescores: Some(i),
                            tally: ShardTally::new(self.spec.eval_shards),
                        });
                    }
                }
            }
            for mask in sub.offspring(&evolution, it.min_keep[l], &mut r) {
                candidates.push(Candidate {
                    id: self.new_candidate(),
                    mask,
                    rescores: None,
                    tally: ShardTally::new(self.spec.eval_shards),
                });
            }
            batch.push(candidates);
        }
        it.batch = batch;
    }

    fn on_finetuned(&mut self, model: ModelRef) {
        let Some(it) = &mut self.iteration else {
            return;
        };
        let Stage::FineTuning { masks } = &it.stage else {
            return;
        };
        let masks = masks.clone();
        self.ledger.push(
            format!("it{}.test", it.number),
            WorkKind::EvaluateTest {
                iteration: it.number,
                model: model.clone(),
                attack: self.spec.config.test_attack.clone(),
            },
        );
        it.stage = Stage::Testing { masks, model };
    }

    fn on_test(&mut self, metrics: HeldOutMetrics) {
        let Some(it) = &mut self.iteration else {
            return;
        };
        let Stage::Testing { masks, model } = &it.stage else {
            return;
        };
        it.stage = Stage::AwaitingBaseline {
            masks: masks.clone(),
            model: model.clone(),
            metrics,
        };
        self.conclude_iteration();
    }

    fn on_baseline(&mut self, metrics: HeldOutMetrics) {
        self.baseline = Some(metrics.clone());
        if self.best.is_none() {
            self.best = self
                .dense
                .as_ref()
                .map(|d| self.network_record(0, d, metrics.clone()));
        }
        self.conclude_iteration();
    }

    fn network_record(&self, iteration: u32, n: &Network, m: HeldOutMetrics) -> NetworkRecord {
        let drops = |base: &TestMetrics, now: &TestMetrics| {
            (
                base.clean_percent() - now.clean_percent(),
                base.robust_percent() - now.robust_percent(),
            )
        };
        let ((clean_drop, robust_drop), (test_clean_drop, test_robust_drop)) = match &self.baseline
        {
            Some(b) => (drops(&b.validation, &m.validation), drops(&b.test, &m.test)),
            None => ((0.0, 0.0), (0.0, 0.0)),
        };
        NetworkRecord {
            iteration,
            model: n.model.clone(),
            description: n.description.clone(),
            kept_filters: n.kept_filters.clone(),
            macs: n.macs(),
            validation: m.validation,
            test: m.test,
            clean_drop,
            robust_drop,
            test_clean_drop,
            test_robust_drop,
            activity: m.activity,
        }
    }

    /// Applies the stop rule once both the iteration's evaluation and the baseline are known. It
    /// reads the validation drops only.
    fn conclude_iteration(&mut self) {
        if self.baseline.is_none() {
            return;
        }
        let Some(it) = &self.iteration else {
            return;
        };
        let Stage::AwaitingBaseline {
            masks,
            model,
            metrics,
        } = &it.stage
        else {
            return;
        };
        let number = it.number;
        let network = it.network.spliced(masks, model.clone());
        let record = self.network_record(number, &network, metrics.clone());
        let stop = &self.spec.config.stop;
        let within_limits =
            record.clean_drop <= stop.max_clean_drop && record.robust_drop <= stop.max_robust_drop;
        self.records.push(IterationRecord {
            masks: masks.clone(),
            network: record.clone(),
            within_limits,
        });
        if within_limits {
            self.accepted = Some(network);
            self.best = Some(record);
        }
        let reason = if !within_limits {
            Some(StopReason::LimitExceeded { iteration: number })
        } else if number >= self.spec.config.evolution.iterations {
            Some(StopReason::IterationsExhausted)
        } else {
            None
        };
        match reason {
            None => self.start_iteration(number + 1),
            Some(reason) => self.finish(reason),
        }
    }

    fn finish(&mut self, reason: StopReason) {
        let (Some(dense), Some(baseline)) = (&self.dense, self.baseline.clone()) else {
            return;
        };
        let dense = self.network_record(0, dense, baseline);
        let answer = self.best.clone().unwrap_or_else(|| dense.clone());
        self.outcome = Some(Outcome {
            reason,
            dense,
            answer,
            iterations: self.records.clone(),
        });
    }
}
