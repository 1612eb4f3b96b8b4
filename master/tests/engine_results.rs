//! Malformed, misdirected and repeated results: clear errors, untouched state, idempotence.

mod support;

use ccsrp_master::engine::EngineError;
use ccsrp_master::{
    CandidateId, Engine, EngineConfig, TellError, Told, WorkId, WorkItem, WorkKind, WorkOutput,
    WorkResult,
};
use support::{spec, Evaluator, Problem};

/// An engine advanced to its first candidate evaluation, with that item.
fn at_first_evaluation() -> (Engine, Evaluator, WorkItem) {
    let mut engine = Engine::new(spec(1, EngineConfig::default(), 2, false)).unwrap();
    let mut evaluator = Evaluator::new(Problem::new(1), 2);
    loop {
        for item in engine.ask() {
            if matches!(item.kind, WorkKind::EvaluateCandidates { .. }) {
                return (engine, evaluator, item);
            }
            engine.tell(evaluator.answer(&item)).unwrap();
        }
    }
}

fn counts_of(result: &mut WorkResult) -> &mut Vec<ccsrp_master::CandidateCount> {
    match &mut result.output {
        WorkOutput::CandidateCounts { counts } => counts,
        other => panic!("expected counts, got {other:?}"),
    }
}

#[test]
fn malformed_results_are_rejected_without_touching_the_state() {
    let (mut engine, mut evaluator, item) = at_first_evaluation();
    let good = evaluator.answer(&item);
    let before = engine.clone();

    let unknown = WorkResult {
        id: WorkId("it9.g9.l9.s9".into()),
        output: good.output.clone(),
    };
    assert!(matches!(
        engine.tell(unknown),
        Err(TellError::UnknownItem { .. })
    ));

    let wrong_kind = WorkResult {
        id: item.id.clone(),
        output: WorkOutput::FineTuned {
            model: ccsrp_master::ModelRef("x".into()),
        },
    };
    let e = engine.tell(wrong_kind).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "result for {}: expected a candidate_counts result, got fine_tuned",
            item.id
        )
    );

    let mut missing = good.clone();
    let dropped = counts_of(&mut missing).pop().unwrap().candidate;
    match engine.tell(missing).unwrap_err() {
        TellError::CandidateSet {
            missing,
            unexpected,
            ..
        } => {
            assert_eq!(missing, vec![dropped]);
            assert!(unexpected.is_empty());
        }
        other => panic!("{other}"),
    }

    let mut foreign = good.clone();
    counts_of(&mut foreign)[0].candidate = CandidateId(999_999);
    assert!(matches!(
        engine.tell(foreign),
        Err(TellError::CandidateSet { .. })
    ));

    let mut repeated = good.clone();
    let first = counts_of(&mut repeated)[0];
    counts_of(&mut repeated)[1] = first;
    assert!(matches!(
        engine.tell(repeated),
        Err(TellError::CandidateSet { .. })
    ));

    let mut too_many = good.clone();
    let samples = counts_of(&mut too_many)[0].samples;
    counts_of(&mut too_many)[0].clean = samples + 1;
    let e = engine.tell(too_many).unwrap_err();
    assert!(e.to_string().contains(".clean = "), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("expected <= samples ({samples})")),
        "{e}"
    );

    let mut wrong_samples = good.clone();
    counts_of(&mut wrong_samples)[0].samples = samples + 5;
    let e = engine.tell(wrong_samples).unwrap_err();
    assert!(e.to_string().contains("the size of eval shard"), "{e}");

    let mut wrong_mask = good.clone();
    counts_of(&mut wrong_mask)[0].mask_filters += 1;
    let e = engine.tell(wrong_mask).unwrap_err();
    assert!(e.to_string().contains(".mask_filters = "), "{e}");
    assert!(
        e.to_string().contains("length of the candidate's mask"),
        "{e}"
    );

    assert!(engine == before, "a rejected result changed the state");
    assert_eq!(engine.tell(good.clone()).unwrap(), Told::Accepted);
    assert_eq!(engine.tell(good.clone()).unwrap(), Told::Duplicate);

    let mut conflicting = good;
    counts_of(&mut conflicting)[0].clean ^= 1;
    assert!(matches!(
        engine.tell(conflicting),
        Err(TellError::AlreadyAnswered { .. })
    ));
}

#[test]
fn a_malformed_trained_description_names_the_field() {
    let mut engine = Engine::new(spec(1, EngineConfig::default(), 1, true)).unwrap();
    let item = engine.ask().remove(0);
    let mut description = support::description();
    description.layers[2].in_channels = 7;
    let e = engine
        .tell(WorkResult {
            id: item.id,
            output: WorkOutput::Trained {
                model: ccsrp_master::ModelRef("m".into()),
                description,
            },
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "result for pretrain: description.layers[2].in_channels = 7: expected 64 (the previous layer's filters)"
    );
}

#[test]
fn bad_jobs_are_refused_with_the_reason() {
    let mut c = EngineConfig::default();
    c.evolution.ratio_bound = 0.0;
    let e = Engine::new(spec(1, c, 1, false)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: evolution.ratio_bound = 0: expected 0 < value <= 1"
    );
    let mut s = spec(1, EngineConfig::default(), 0, false);
    assert!(matches!(
        Engine::new(s.clone()),
        Err(EngineError::Shards { .. })
    ));
    s.eval_shards = 3000;
    assert_eq!(
        Engine::new(s).unwrap_err().to_string(),
        "eval_shards = 3000: expected 1 <= value <= eval_samples (2000)"
    );
}

#[test]
fn items_are_handed_out_once_and_stay_outstanding_until_answered() {
    let mut engine = Engine::new(spec(1, EngineConfig::default(), 2, false)).unwrap();
    let first = engine.ask();
    // The dense baseline test and one adversarial shard per eval shard are ready at once.
    let ids: Vec<String> = first.iter().map(|i| i.id.0.clone()).collect();
    assert_eq!(ids, vec!["it0.test", "it1.adv.s0", "it1.adv.s1"]);
    assert!(engine.ask().is_empty());
    assert_eq!(engine.outstanding(), first);
    let mut evaluator = Evaluator::new(Problem::new(1), 2);
    engine.tell(evaluator.answer(&first[1])).unwrap();
    let next = engine.ask();
    // Shard 0's adversarial examples unlock generation 0's evaluations on shard 0, one per layer.
    let ids: Vec<String> = next.iter().map(|i| i.id.0.clone()).collect();
    assert_eq!(
        ids,
        vec![
            "it1.g0.l0.s0",
            "it1.g0.l1.s0",
            "it1.g0.l2.s0",
            "it1.g0.l3.s0"
        ]
    );
    assert_eq!(engine.outstanding().len(), 2 + 4);
}

#[test]
fn test_metrics_with_impossible_activity_are_rejected_naming_the_field() {
    use ccsrp_proto::activity::{Activity, LayerActivity};
    let mut engine = Engine::new(spec(1, EngineConfig::default(), 2, false)).unwrap();
    let mut evaluator = Evaluator::new(Problem::new(1), 2);
    let item = engine
        .ask()
        .into_iter()
        .find(|i| matches!(i.kind, WorkKind::EvaluateTest { .. }))
        .expect("the dense network's test evaluation");
    let mut with_activity = |images: u64, spikes: u64| {
        let mut r = evaluator.answer(&item);
        let WorkOutput::TestMetrics(m) = &mut r.output else {
            panic!("expected test metrics, got {:?}", r.output)
        };
        let samples = m.test.samples;
        m.activity = Some(Activity {
            images: samples + images,
            layers: vec![LayerActivity {
                neuron_steps: 100,
                spikes,
                sops: 7 * spikes,
            }],
        });
        r
    };
    let before = engine.clone();
    let e = engine.tell(with_activity(1, 10)).unwrap_err();
    assert!(e.to_string().contains("activity.images"), "{e}");
    let e = engine.tell(with_activity(0, 101)).unwrap_err();
    assert!(e.to_string().contains("activity.layers[0].spikes"), "{e}");
    assert_eq!(engine, before);
    assert_eq!(engine.tell(with_activity(0, 100)).unwrap(), Told::Accepted);
}
