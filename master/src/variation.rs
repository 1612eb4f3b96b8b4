//! Making masks: initial members, bit-flip mutation, uniform crossover, and the repair that
//! enforces the ratio bound.
//!
//! Masks here are one bool per filter (true = keep); the engine packs them into
//! [`ccsrp_proto::v1::Mask`] to store and send. Every function returns a mask that keeps at least
//! `min_keep >= 1` filters, so no sequence of variations can produce an empty layer or prune past
//! the bound.

use rand::seq::IndexedRandom;
use rand::Rng;

/// The initial member `index` of a layer with `filters` filters: member 0 keeps everything, the
/// others keep each filter with probability `keep_probability`, then are repaired.
pub fn initial_member<R: Rng>(
    index: u32,
    filters: u32,
    keep_probability: f64,
    min_keep: u32,
    rng: &mut R,
) -> Vec<bool> {
    if index == 0 {
        return vec![true; filters as usize];
    }
    random_mask(filters, keep_probability, min_keep, rng)
}

/// Keeps each of `filters` filters with probability `keep_probability`, then repairs to `min_keep`.
pub fn random_mask<R: Rng>(
    filters: u32,
    keep_probability: f64,
    min_keep: u32,
    rng: &mut R,
) -> Vec<bool> {
    let mut keep: Vec<bool> = (0..filters)
        .map(|_| rng.random_bool(keep_probability))
        .collect();
    repair(&mut keep, min_keep, rng);
    keep
}

/// Flips each bit with probability `rate`.
pub fn mutate<R: Rng>(keep: &mut [bool], rate: f64, rng: &mut R) {
    for k in keep.iter_mut() {
        if rng.random_bool(rate) {
            *k = !*k;
        }
    }
}

/// Each bit from `a` or `b` with equal probability (masks of equal length).
pub fn uniform_crossover<R: Rng>(a: &[bool], b: &[bool], rng: &mut R) -> Vec<bool> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| if rng.random_bool(0.5) { x } else { y })
        .collect()
}

/// Restores randomly chosen pruned filters until the mask keeps at least `min_keep` (clamped to
/// 1..=len). A mask already within the bound is left unchanged. The choice comes from `rng`, so it
/// is deterministic given the stream and unbiased across filter positions.
pub fn repair<R: Rng>(keep: &mut [bool], min_keep: u32, rng: &mut R) {
    let min_keep = (min_keep as usize).clamp(1, keep.len().max(1));
    let kept = keep.iter().filter(|&&k| k).count();
    if kept >= min_keep || keep.is_empty() {
        return;
    }
    let pruned: Vec<usize> = (0..keep.len()).filter(|&i| !keep[i]).collect();
    for &i in pruned.choose_multiple(rng, min_keep - kept) {
        keep[i] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[derive(Debug, Clone)]
    enum Op {
        Mutate(f64),
        Crossover,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0.0f64..=1.0).prop_map(Op::Mutate), Just(Op::Crossover)]
    }

    proptest! {
        #[test]
        fn ratio_bound_and_non_emptiness_hold_after_any_variation_sequence(
            filters in 1u32..80,
            ratio in 0.0f64..=1.0,
            keep_p in 0.0f64..=1.0,
            ops in prop::collection::vec(op(), 0..20),
            seed in any::<u64>(),
        ) {
            let min_keep = ((f64::from(filters) * ratio).ceil() as u32).max(1);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut a = initial_member(1, filters, keep_p, min_keep, &mut rng);
            let b = initial_member(2, filters, keep_p, min_keep, &mut rng);
            for o in ops {
                match o {
                    Op::Mutate(rate) => mutate(&mut a, rate, &mut rng),
                    Op::Crossover => a = uniform_crossover(&a, &b, &mut rng),
                }
                repair(&mut a, min_keep, &mut rng);
                let kept = a.iter().filter(|&&k| k).count() as u32;
                prop_assert_eq!(a.len() as u32, filters);
                prop_assert!(kept >= min_keep && kept >= 1, "kept {} < {}", kept, min_keep);
            }
        }
    }

    #[test]
    fn member_zero_keeps_every_filter() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(initial_member(0, 5, 0.0, 1, &mut rng), vec![true; 5]);
    }

    #[test]
    fn repair_restores_exactly_up_to_the_bound_and_keeps_kept_filters() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut keep = vec![true, false, false, false, true, false];
        repair(&mut keep, 4, &mut rng);
        assert_eq!(keep.iter().filter(|&&k| k).count(), 4);
        assert!(keep[0] && keep[4]);
        let mut none = vec![false; 3];
        repair(&mut none, 0, &mut rng);
        assert_eq!(none.iter().filter(|&&k| k).count(), 1);
    }
}
