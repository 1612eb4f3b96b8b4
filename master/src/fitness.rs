//! The fitness triple of a candidate and its exact aggregation over shards.
//!
//! Counts are integers so that a candidate's fitness is the same whichever workers scored which
//! shards and in whatever order they answered: the sum over shards is exact and order-free.

use serde::{Deserialize, Serialize};

/// A candidate's objectives: correct counts on the eval split and on the shared adversarial set
/// (out of `samples` each), and the MACs of the assembled network it was scored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fitness {
    pub clean: u64,
    pub adversarial: u64,
    pub samples: u64,
    pub macs: u64,
}

impl Fitness {
    /// The three maximised objectives of selection: (clean, robust, -MACs).
    pub fn objectives(&self) -> [i128; 3] {
        [
            i128::from(self.clean),
            i128::from(self.adversarial),
            -i128::from(self.macs),
        ]
    }
}

/// Per-shard counts of one candidate, summed once every shard has reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTally {
    /// `(clean, adversarial, samples)` per shard; `None` until that shard reports.
    shards: Vec<Option<(u64, u64, u64)>>,
}

impl ShardTally {
    pub fn new(shards: u32) -> ShardTally {
        ShardTally {
            shards: vec![None; shards as usize],
        }
    }

    /// Records shard `shard`'s counts (a repeat overwrites with the same values; the engine only
    /// records each shard once).
    pub fn record(&mut self, shard: u32, clean: u64, adversarial: u64, samples: u64) {
        if let Some(slot) = self.shards.get_mut(shard as usize) {
            *slot = Some((clean, adversarial, samples));
        }
    }

    /// The summed counts with the given MACs, or `None` while a shard is missing.
    pub fn complete(&self, macs: u64) -> Option<Fitness> {
        let mut f = Fitness {
            clean: 0,
            adversarial: 0,
            samples: 0,
            macs,
        };
        for s in &self.shards {
            let (c, a, n) = (*s)?;
            f.clean += c;
            f.adversarial += a;
            f.samples += n;
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitness_is_complete_only_when_every_shard_reported() {
        let mut t = ShardTally::new(3);
        t.record(2, 5, 4, 10);
        t.record(0, 7, 1, 10);
        assert_eq!(t.complete(99), None);
        t.record(1, 3, 3, 9);
        assert_eq!(
            t.complete(99),
            Some(Fitness {
                clean: 15,
                adversarial: 8,
                samples: 29,
                macs: 99
            })
        );
    }

    #[test]
    fn objectives_maximise_counts_and_minimise_macs() {
        let f = Fitness {
            clean: 1,
            adversarial: 2,
            samples: 3,
            macs: 4,
        };
        assert_eq!(f.objectives(), [1, 2, -4]);
    }
}
