//! The map between the engine's work items/results and the `ccsrp.v1` wire messages.
//!
//! Outbound ([`task`]) is total. Inbound ([`work_result`]) checks what the engine cannot: that the
//! message has an outcome, that artifact names are sha256s, that candidate ids parse. Counts,
//! kinds and candidate sets are checked by `Engine::tell`.

use ccsrp_proto::activity::Activity;
use ccsrp_proto::artifact_chunks::is_sha256_hex;
use ccsrp_proto::v1::{self, task, task_result};

use crate::config::{FineTuneParams, PgdParams, PretrainParams};
use crate::{
    ArtifactRef, CandidateCount, CandidateId, HeldOutMetrics, ModelRef, TestMetrics, WorkId,
    WorkItem, WorkKind, WorkOutput, WorkResult,
};

/// A result message that cannot be read as a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("task {task_id}: result has no outcome")]
    NoOutcome { task_id: String },
    /// `value` as sent, quoted and cut by `ccsrp_proto::quote::quote`.
    #[error("task {task_id}: {field} = {value}: expected a sha256 (64 lowercase hex digits)")]
    BadArtifactName {
        task_id: String,
        field: &'static str,
        value: String,
    },
    /// `value` as sent, quoted and cut by `ccsrp_proto::quote::quote`.
    #[error("task {task_id}: candidate_id {value}: expected `c<number>` as issued")]
    BadCandidateId { task_id: String, value: String },
    #[error("task {task_id}: trained result has no model description")]
    NoDescription { task_id: String },
    #[error("task {task_id}: test metrics have no validation counts")]
    NoValidation { task_id: String },
    #[error("task {task_id}: a failure report is not a result")]
    Failure { task_id: String },
}

fn attack(p: &PgdParams) -> v1::Attack {
    v1::Attack {
        eps: p.eps,
        step: p.step,
        steps: p.steps,
        random_start: p.random_start,
    }
}

fn pretrain_params(p: &PretrainParams) -> v1::TrainParams {
    v1::TrainParams {
        epochs: p.epochs,
        batch_size: p.batch_size,
        learning_rate: p.lr,
        momentum: p.momentum,
        adversarial_fraction: 0.0,
        adversarial_eps: 0.0,
        params_json: serde_json::to_string(p).unwrap_or_default(),
    }
}

fn finetune_params(p: &FineTuneParams) -> v1::TrainParams {
    v1::TrainParams {
        epochs: p.epochs,
        batch_size: p.batch_size,
        learning_rate: p.lr,
        momentum: p.momentum,
        adversarial_fraction: p.adversarial_fraction,
        adversarial_eps: p.fgsm_eps,
        params_json: serde_json::to_string(p).unwrap_or_default(),
    }
}

/// Wire form of `kind`.
pub fn task_kind(kind: &WorkKind) -> task::Kind {
    match kind {
        WorkKind::TrainDense { params, seed } => task::Kind::TrainDense(v1::TrainDenseTask {
            params: Some(pretrain_params(params)),
            seed: *seed,
        }),
        WorkKind::EvaluateTest {
            iteration,
            model,
            attack: a,
        } => task::Kind::EvaluateTest(v1::EvaluateTestTask {
            iteration: *iteration,
            model: model.0.clone(),
            attack: Some(attack(&a.pgd)),
            fgsm_eps: a.fgsm_eps,
        }),
        WorkKind::BuildAdversarialShard {
            iteration,
            shard,
            model,
            mutation,
            attack: a,
            seed,
        } => task::Kind::BuildAdversarialShard(v1::BuildAdversarialShardTask {
            iteration: *iteration,
            shard: *shard,
            model: model.0.clone(),
            mutation: mutation.clone(),
            attack: Some(attack(a)),
            seed: *seed,
        }),
        WorkKind::EvaluateCandidates {
            iteration,
            generation,
            layer,
            shard,
            model,
            adversarial,
            context,
            candidates,
        } => task::Kind::EvaluateCandidates(v1::EvaluateCandidatesTask {
            iteration: *iteration,
            generation: *generation,
            layer: *layer,
            shard: *shard,
            model: model.0.clone(),
            adversarial: adversarial.0.clone(),
            context: context.clone(),
            candidates: candidates
                .iter()
                .map(|(id, mask)| v1::Candidate {
                    candidate_id: id.to_string(),
                    mask: Some(mask.clone()),
                })
                .collect(),
        }),
        WorkKind::FineTune {
            iteration,
            model,
            masks,
            params,
            seed,
        } => task::Kind::FineTune(v1::FineTuneTask {
            iteration: *iteration,
            model: model.0.clone(),
            masks: masks.clone(),
            params: Some(finetune_params(params)),
            seed: *seed,
        }),
    }
}

/// The wire task for `item` under lease attempt `attempt`.
pub fn task(item: &WorkItem, attempt: u32, lease_ms: u64) -> v1::Task {
    v1::Task {
        task_id: item.id.0.clone(),
        attempt,
        lease_ms,
        kind: Some(task_kind(&item.kind)),
    }
}

fn artifact_name(task_id: &str, field: &'static str, value: &str) -> Result<String, WireError> {
    if is_sha256_hex(value) {
        Ok(value.to_string())
    } else {
        Err(WireError::BadArtifactName {
            task_id: task_id.to_string(),
            field,
            value: ccsrp_proto::quote::quote(value),
        })
    }
}

fn candidate_id(task_id: &str, value: &str) -> Result<CandidateId, WireError> {
    value
        .strip_prefix('c')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| format!("c{n}") == value)
        .map(CandidateId)
        .ok_or_else(|| WireError::BadCandidateId {
            task_id: task_id.to_string(),
            value: ccsrp_proto::quote::quote(value),
        })
}

/// The engine's form of a worker's result.
pub fn work_result(r: &v1::TaskResult) -> Result<WorkResult, WireError> {
    let id = &r.task_id;
    let Some(outcome) = &r.outcome else {
        return Err(WireError::NoOutcome {
            task_id: id.clone(),
        });
    };
    let output = match outcome {
        // `Job::report` counts failures before reading results.
        task_result::Outcome::Failed(_) => {
            return Err(WireError::Failure {
                task_id: id.clone(),
            })
        }
        task_result::Outcome::Trained(t) => WorkOutput::Trained {
            model: ModelRef(artifact_name(id, "trained.model", &t.model)?),
            description: t
                .description
                .clone()
                .ok_or_else(|| WireError::NoDescription {
                    task_id: id.clone(),
                })?,
        },
        task_result::Outcome::TestMetrics(m) => {
            let v = m
                .validation
                .as_ref()
                .ok_or_else(|| WireError::NoValidation {
                    task_id: id.clone(),
                })?;
            WorkOutput::TestMetrics(HeldOutMetrics {
                validation: TestMetrics {
                    samples: v.samples,
                    clean: v.clean,
                    fgsm: v.fgsm,
                    pgd: v.pgd,
                },
                test: TestMetrics {
                    samples: m.samples,
                    clean: m.clean,
                    fgsm: m.fgsm,
                    pgd: m.pgd,
                },
                activity: m.activity.as_ref().map(Activity::from),
            })
        }
        task_result::Outcome::AdversarialShard(a) => WorkOutput::AdversarialShard {
            artifact: ArtifactRef(artifact_name(
                id,
                "adversarial_shard.artifact",
                &a.artifact,
            )?),
            samples: a.samples,
        },
        task_result::Outcome::CandidateCounts(c) => WorkOutput::CandidateCounts {
            counts: c
                .counts
                .iter()
                .map(|c| {
                    Ok(CandidateCount {
                        candidate: candidate_id(id, &c.candidate_id)?,
                        clean: c.clean,
                        adversarial: c.adversarial,
                        samples: c.samples,
                        mask_filters: c.mask_filters,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        task_result::Outcome::FineTuned(f) => WorkOutput::FineTuned {
            model: ModelRef(artifact_name(id, "fine_tuned.model", &f.model)?),
        },
    };
    Ok(WorkResult {
        id: WorkId(id.clone()),
        output,
    })
}

/// Artifacts a result refers to (they must be in the store before the result is accepted).
pub fn referenced_artifacts(output: &WorkOutput) -> Vec<&str> {
    match output {
        WorkOutput::Trained { model, .. } | WorkOutput::FineTuned { model } => vec![&model.0],
        WorkOutput::AdversarialShard { artifact, .. } => vec![&artifact.0],
        WorkOutput::TestMetrics(_) | WorkOutput::CandidateCounts { .. } => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_ids_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(
            candidate_id("t", &CandidateId(42).to_string()),
            Ok(CandidateId(42))
        );
        for bad in ["42", "c", "c-1", "c01", "cx", ""] {
            assert!(candidate_id("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn result_without_outcome_or_with_a_bad_artifact_name_is_refused() {
        let mut r = v1::TaskResult {
            task_id: "it1.ft".into(),
            ..Default::default()
        };
        assert!(matches!(work_result(&r), Err(WireError::NoOutcome { .. })));
        r.outcome = Some(task_result::Outcome::FineTuned(v1::FineTunedResult {
            model: "../x".into(),
        }));
        let err = work_result(&r).unwrap_err().to_string();
        assert!(err.contains("fine_tuned.model"), "{err}");
    }
}
