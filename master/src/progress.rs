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

/// Where a job stands in steps whose total is known before it starts, so a display over them
/// never moves backwards (task counts grow as work is discovered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    pub done: u32,
    pub total: u32,
}

impl Steps {
    /// Steps of a job of `iterations` outer iterations of `generations` generations: 1 for the
    /// dense network (trained or read, then tested), then per iteration one per generation
    /// (0..=generations), one for fine-tuning and one for testing. A job the stop rule ends early
    /// is at the total once done.
    pub fn of(
        phase: Phase,
        iteration: u32,
        generation: u32,
        iterations: u32,
        generations: u32,
    ) -> Steps {
        let per_iteration = generations.saturating_add(3);
        let total = per_iteration.saturating_mul(iterations).saturating_add(1);
        let before = |i: u32| 1 + i.saturating_sub(1).saturating_mul(per_iteration);
        let done = match phase {
            Phase::Pretraining => 0,
            Phase::Adversarial | Phase::Evolving => before(iteration) + generation.min(generations),
            Phase::FineTuning => before(iteration) + generations + 1,
            Phase::Testing => before(iteration) + generations + 2,
            Phase::Done => total,
        };
        Steps {
            done: done.min(total),
            total,
        }
    }

    /// `done / total` in percent.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            100.0 * f64::from(self.done) / f64::from(self.total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_never_move_backwards_and_end_at_the_total() {
        let (k, g) = (2, 3);
        let mut positions = vec![(Phase::Pretraining, 0, 0)];
        for it in 1..=k {
            positions.push((Phase::Adversarial, it, 0));
            for gen in 0..=g {
                positions.push((Phase::Evolving, it, gen));
            }
            positions.push((Phase::FineTuning, it, g));
            positions.push((Phase::Testing, it, g));
        }
        positions.push((Phase::Done, k, g));
        let steps: Vec<Steps> = positions
            .iter()
            .map(|&(p, i, gen)| Steps::of(p, i, gen, k, g))
            .collect();
        assert!(steps.iter().all(|s| s.total == 1 + k * (g + 3)));
        for w in steps.windows(2) {
            assert!(w[0].done <= w[1].done, "{:?} then {:?}", w[0], w[1]);
        }
        assert_eq!(steps[0].done, 0);
        assert_eq!(steps.last().map(|s| s.done), Some(13));
        // A job stopped after its first iteration is done all the same.
        assert_eq!(Steps::of(Phase::Done, 1, g, k, g).percent(), 100.0);
        // Every step of the sequence is reached, one at a time.
        let mut distinct: Vec<u32> = steps.iter().map(|s| s.done).collect();
        distinct.dedup();
        assert_eq!(distinct, (0..=13).collect::<Vec<_>>());
    }
}
