//! Seeded random streams. Every random decision draws from its own stream, named by its purpose and
//! position in the search (iteration, layer, generation, shard) and derived from the job seed, so
//! no decision depends on how many draws another one made, on result arrival order, or on where a
//! checkpoint was taken. Nothing random is stored: a stream is re-derived whenever it is needed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for, and where in the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The seed handed to the worker that trains the dense model.
    PretrainSeed,
    /// Initial members of one layer's subpopulation.
    InitialPopulation { iteration: u32, layer: u32 },
    /// One layer's offspring in one generation.
    Offspring {
        iteration: u32,
        layer: u32,
        generation: u32,
    },
    /// The random masks of the mutated copy attacked for one adversarial shard.
    AdversarialMutation { iteration: u32, shard: u32 },
    /// The seed handed to the worker that builds one adversarial shard (PGD's random start).
    AdversarialSeed { iteration: u32, shard: u32 },
    /// The seed handed to the worker that fine-tunes one iteration's network.
    FineTuneSeed { iteration: u32 },
}

impl Stream {
    fn words(self) -> [u64; 4] {
        match self {
            Stream::PretrainSeed => [1, 0, 0, 0],
            Stream::InitialPopulation { iteration, layer } => {
                [2, iteration.into(), layer.into(), 0]
            }
            Stream::Offspring {
                iteration,
                layer,
                generation,
            } => [3, iteration.into(), layer.into(), generation.into()],
            Stream::AdversarialMutation { iteration, shard } => {
                [4, iteration.into(), shard.into(), 0]
            }
            Stream::AdversarialSeed { iteration, shard } => [5, iteration.into(), shard.into(), 0],
            Stream::FineTuneSeed { iteration } => [6, iteration.into(), 0, 0],
        }
    }
}

/// One step of splitmix64: a bijective mixer with full avalanche.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit seed of `stream` under `job_seed`.
pub fn seed(job_seed: u64, stream: Stream) -> u64 {
    stream
        .words()
        .iter()
        .fold(splitmix64(job_seed), |h, &w| splitmix64(h ^ splitmix64(w)))
}

/// A fresh generator for `stream` under `job_seed`.
pub fn rng(job_seed: u64, stream: Stream) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed(job_seed, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_differ_by_purpose_and_position_and_repeat_exactly() {
        let a = Stream::Offspring {
            iteration: 1,
            layer: 2,
            generation: 3,
        };
        let b = Stream::Offspring {
            iteration: 1,
            layer: 3,
            generation: 2,
        };
        let c = Stream::InitialPopulation {
            iteration: 1,
            layer: 2,
        };
        let seeds = [seed(7, a), seed(7, b), seed(7, c), seed(8, a)];
        for i in 0..seeds.len() {
            for j in i + 1..seeds.len() {
                assert_ne!(seeds[i], seeds[j], "{i} vs {j}");
            }
        }
        let x: u64 = rng(7, a).random();
        let y: u64 = rng(7, a).random();
        assert_eq!(x, y);
    }
}
