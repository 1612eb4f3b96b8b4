//! The trajectory is a function of the job alone: not of result arrival order, shard count,
//! duplicates, or where the state was checkpointed.

mod support;

use ccsrp_master::{Engine, EngineConfig, History, Outcome, Told, WorkItem};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{spec, Evaluator, Problem};

/// A short search that still runs several iterations, generations and re-scorings.
fn small_config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.evolution.iterations = 3;
    c.evolution.generations = 3;
    c.evolution.crossover_rate = 0.3;
    c
}

fn finish(engine: Engine) -> (History, Outcome) {
    let outcome = engine.outcome().expect("done").clone();
    (engine.history().clone(), outcome)
}

fn run_in_order(config: EngineConfig, shards: u32) -> (History, Outcome) {
    let mut engine = Engine::new(spec(9, config, shards, false)).unwrap();
    let mut evaluator = Evaluator::new(Problem::new(3), shards);
    support::run_in_order(&mut engine, &mut evaluator);
    finish(engine)
}

/// Answers items in a random order: each step either asks for new items or answers a random
/// pending one; sometimes re-sends an already accepted result.
fn run_shuffled(config: EngineConfig, shards: u32, order_seed: u64) -> (History, Outcome) {
    let mut engine = Engine::new(spec(9, config, shards, false)).unwrap();
    let mut evaluator = Evaluator::new(Problem::new(3), shards);
    let mut rng = ChaCha8Rng::seed_from_u64(order_seed);
    let mut pending: Vec<WorkItem> = Vec::new();
    let mut sent = Vec::new();
    while !engine.is_done() {
        if pending.is_empty() || rng.random_bool(0.2) {
            let mut fresh = engine.ask();
            fresh.shuffle(&mut rng);
            pending.extend(fresh);
            if pending.is_empty() {
                panic!("engine waits with nothing outstanding");
            }
            continue;
        }
        let item = pending.swap_remove(rng.random_range(0..pending.len()));
        let result = evaluator.answer(&item);
        assert_eq!(engine.tell(result.clone()).unwrap(), Told::Accepted);
        sent.push(result);
        if rng.random_bool(0.1) {
            let again = sent[rng.random_range(0..sent.len())].clone();
            assert_eq!(engine.tell(again).unwrap(), Told::Duplicate);
        }
    }
    finish(engine)
}

#[test]
fn arrival_order_does_not_change_the_trajectory() {
    let reference = run_in_order(small_config(), 3);
    for order_seed in 0..3 {
        let shuffled = run_shuffled(small_config(), 3, order_seed);
        assert!(shuffled == reference, "order seed {order_seed} diverged");
    }
}

#[test]
fn shard_count_does_not_change_the_trajectory() {
    let reference = run_in_order(small_config(), 1);
    assert!(
        reference.1.answer.macs < reference.1.dense.macs,
        "the search pruned nothing"
    );
    for shards in [2, 5, 16] {
        assert!(
            run_in_order(small_config(), shards) == reference,
            "{shards} shards diverged"
        );
        assert!(run_shuffled(small_config(), shards, u64::from(shards)) == reference);
    }
}

#[test]
fn base_collaboration_is_deterministic_too() {
    let mut c = small_config();
    c.evolution.collaboration = ccsrp_master::config::Collaboration::Base;
    assert!(run_in_order(c.clone(), 2) == run_shuffled(c, 4, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_and_restore_at_any_point_gives_the_same_trajectory(every in 1usize..30, shards in 1u32..4) {
        let reference = run_in_order(small_config(), shards);
        let mut engine = Engine::new(spec(9, small_config(), shards, false)).unwrap();
        let mut evaluator = Evaluator::new(Problem::new(3), shards);
        let mut answered = 0usize;
        let mut pending: Vec<WorkItem> = Vec::new();
        while !engine.is_done() {
            if answered.is_multiple_of(every) {
                // Checkpoint mid-flight: items handed out but unanswered must survive the restart.
                let json = serde_json::to_string(&engine).unwrap();
                let restored: Engine = serde_json::from_str(&json).unwrap();
                prop_assert!(restored == engine);
                let mut outstanding = restored.outstanding();
                outstanding.sort_by(|a, b| a.id.cmp(&b.id));
                let mut held = pending.clone();
                held.sort_by(|a, b| a.id.cmp(&b.id));
                prop_assert!(outstanding == held);
                engine = restored;
            }
            if pending.is_empty() {
                pending = engine.ask();
                prop_assert!(!pending.is_empty(), "engine waits with nothing outstanding");
            }
            let item = pending.remove(0);
            engine.tell(evaluator.answer(&item)).unwrap();
            answered += 1;
        }
        prop_assert!(finish(engine) == reference);
    }
}
