//! The engine on a synthetic problem with a known answer, driven through ask/tell end to end.

mod support;

use ccsrp_master::outcome::StopReason;
use ccsrp_master::{Engine, EngineConfig, Phase};
use support::{spec, Evaluator, Problem};

#[test]
fn engine_prunes_low_utility_filters_within_the_stop_limits() {
    let config = EngineConfig::default();
    let mut engine = Engine::new(spec(42, config.clone(), 4, true)).unwrap();
    assert_eq!(engine.progress().phase, Phase::Pretraining);
    let mut evaluator = Evaluator::new(Problem::new(7), 4);
    let answered = support::run_in_order(&mut engine, &mut evaluator);

    let outcome = engine.outcome().expect("done");
    let answer = &outcome.answer;
    let reduction = outcome.macs_reduction();
    let mut high_kept = 0usize;
    let mut high_total = 0usize;
    let mut low_pruned = 0usize;
    let mut low_total = 0usize;
    for (l, kept) in answer.kept_filters.iter().enumerate() {
        for f in 0..support::WIDTHS[l] as usize {
            let is_kept = kept.contains(&(f as u32));
            if evaluator.problem.is_high(l, f) {
                high_total += 1;
                high_kept += usize::from(is_kept);
            } else {
                low_total += 1;
                low_pruned += usize::from(!is_kept);
            }
        }
    }
    let high_fraction = high_kept as f64 / high_total as f64;
    let low_fraction = low_pruned as f64 / low_total as f64;
    println!(
        "synthetic: {answered} items, {} iterations ({:?}), MACs {} -> {} ({:.1}% pruned), \
         high-utility filters kept {high_kept}/{high_total} ({:.1}%), low-utility pruned \
         {low_pruned}/{low_total} ({:.1}%), clean drop {:.2} pt, robust drop {:.2} pt",
        outcome.iterations.len(),
        outcome.reason,
        outcome.dense.macs,
        answer.macs,
        100.0 * reduction,
        100.0 * high_fraction,
        100.0 * low_fraction,
        answer.clean_drop,
        answer.robust_drop,
    );
    for r in &outcome.iterations {
        println!(
            "  iteration {}: MACs {} clean drop {:.2} robust drop {:.2} within {}",
            r.network.iteration,
            r.network.macs,
            r.network.clean_drop,
            r.network.robust_drop,
            r.within_limits
        );
    }
    assert!(
        reduction >= 0.40,
        "pruned only {:.1}% of MACs",
        100.0 * reduction
    );
    assert!(answer.clean_drop <= config.stop.max_clean_drop);
    assert!(answer.robust_drop <= config.stop.max_robust_drop);
    assert!(
        high_fraction >= 0.99,
        "kept only {high_kept}/{high_total} high-utility filters"
    );
    assert_eq!(engine.progress().phase, Phase::Done);
    // Ratio bound and non-emptiness held for every candidate the engine ever scored.
    for c in &engine.history().candidates {
        assert!(
            c.mask.kept() >= config.min_keep(c.mask.filters).max(1),
            "{c:?}"
        );
    }
    if let StopReason::LimitExceeded { iteration } = outcome.reason {
        let last = outcome.iterations.last().unwrap();
        assert_eq!(last.network.iteration, iteration);
        assert!(!last.within_limits);
        assert_eq!(answer.iteration + 1, iteration);
    }
    // Every finished iteration is a point of the result; the answer is the last within the limits.
    assert!(outcome
        .iterations
        .iter()
        .filter(|r| r.within_limits)
        .all(|r| r.network.iteration <= answer.iteration));
}

/// Runs the synthetic job with the given stop limits to the end.
fn run_with_limits(max_clean_drop: f64, max_robust_drop: f64) -> ccsrp_master::Outcome {
    let mut config = EngineConfig::default();
    config.stop.max_clean_drop = max_clean_drop;
    config.stop.max_robust_drop = max_robust_drop;
    let mut engine = Engine::new(spec(5, config, 2, false)).unwrap();
    let mut evaluator = Evaluator::new(Problem::new(2), 2);
    support::run_in_order(&mut engine, &mut evaluator);
    engine.outcome().expect("done").clone()
}

#[test]
fn exceeding_a_limit_stops_and_answers_the_last_network_within_it() {
    let outcome = run_with_limits(0.1, 2.0);
    let StopReason::LimitExceeded { iteration } = outcome.reason else {
        panic!(
            "expected the clean limit to stop the search: {:?}",
            outcome.reason
        );
    };
    let last = outcome.iterations.last().unwrap();
    assert_eq!(last.network.iteration, iteration);
    assert!(last.network.clean_drop > 0.1 && !last.within_limits);
    assert_eq!(outcome.answer.iteration, iteration - 1);
    assert!(outcome.answer.clean_drop <= 0.1);
    assert!(outcome.iterations[..outcome.iterations.len() - 1]
        .iter()
        .all(|r| r.within_limits));
}

#[test]
fn the_test_split_cannot_change_the_trajectory_or_the_answer() {
    let run = |test_quality: Option<f64>| {
        let mut config = EngineConfig::default();
        config.evolution.iterations = 3;
        let mut engine = Engine::new(spec(5, config, 2, false)).unwrap();
        let mut evaluator = Evaluator::new(Problem::new(2), 2);
        evaluator.test_quality = test_quality;
        support::run_in_order(&mut engine, &mut evaluator);
        engine.outcome().expect("done").clone()
    };
    let reference = run(None);
    // Test accuracy collapses for every pruned network (it would break any limit on test drops),
    // or soars: the decisions, which read validation only, must not move.
    for test_quality in [Some(0.0), Some(1.0)] {
        let other = run(test_quality);
        assert_eq!(other.reason, reference.reason);
        assert_eq!(other.answer.kept_filters, reference.answer.kept_filters);
        assert_eq!(other.answer.validation, reference.answer.validation);
        assert_eq!(other.iterations.len(), reference.iterations.len());
        for (a, b) in other.iterations.iter().zip(&reference.iterations) {
            assert_eq!(a.masks, b.masks);
            assert_eq!(a.within_limits, b.within_limits);
            assert_eq!(
                (a.network.clean_drop, a.network.robust_drop),
                (b.network.clean_drop, b.network.robust_drop)
            );
        }
        assert_ne!(
            other.answer.test, reference.answer.test,
            "the test counts did change"
        );
    }
}

#[test]
fn a_first_iteration_over_the_limit_answers_the_dense_model() {
    let outcome = run_with_limits(0.0, 0.0);
    assert_eq!(outcome.reason, StopReason::LimitExceeded { iteration: 1 });
    assert_eq!(outcome.answer, outcome.dense);
    assert_eq!(outcome.macs_reduction(), 0.0);
}
