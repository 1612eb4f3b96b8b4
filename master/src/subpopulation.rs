//! One prunable layer's subpopulation: its members, how it breeds offspring, and how (mu + lambda)
//! selection and the preference score choose its survivors and its representative.

use ccsrp_proto::v1::Mask;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{EvolutionConfig, ObjectivesConfig};
use crate::fitness::Fitness;
use crate::history::LayerGeneration;
use crate::pareto;
use crate::preference;
use crate::variation;
use crate::work::CandidateId;

/// A scored member of a subpopulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The evaluation its fitness comes from.
    pub candidate: CandidateId,
    /// Over the layer's filters at the iteration's start.
    pub mask: Mask,
    pub fitness: Fitness,
    /// Digest of the other layers' masks it was scored with (see [`context_digest`]); a member
    /// scored in another context than the current one is re-scored before it competes.
    pub context: u64,
}

/// A layer's members after a generation's selection, in rank order, and its representative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subpopulation {
    pub members: Vec<Member>,
    /// Index into `members`.
    pub representative: usize,
}

/// How many tries an offspring gets to differ from its layer's members and earlier offspring
/// before a duplicate is accepted (tiny layers may have no unseen mask left within the bound).
const DISTINCT_TRIES: usize = 8;

impl Subpopulation {
    /// The representative member.
    pub fn representative(&self) -> &Member {
        &self.members[self
            .representative
            .min(self.members.len().saturating_sub(1))]
    }

    /// `lambda` offspring masks: a uniformly chosen parent, uniform crossover with a second one
    /// with probability `crossover_rate`, bit-flip mutation, repair to `min_keep`.
    pub fn offspring<R: Rng>(
        &self,
        cfg: &EvolutionConfig,
        min_keep: u32,
        rng: &mut R,
    ) -> Vec<Mask> {
        let parents: Vec<Vec<bool>> = self.members.iter().map(|m| m.mask.to_keep()).collect();
        let mut seen: Vec<Vec<bool>> = parents.clone();
        let mut out = Vec::with_capacity(cfg.offspring as usize);
        for _ in 0..cfg.offspring {
            let mut child = Vec::new();
            for _ in 0..DISTINCT_TRIES {
                let a = &parents[rng.random_range(0..parents.len())];
                child = if rng.random_bool(cfg.crossover_rate) {
                    let b = &parents[rng.random_range(0..parents.len())];
                    variation::uniform_crossover(a, b, rng)
                } else {
                    a.clone()
                };
                variation::mutate(&mut child, cfg.mutation_rate, rng);
                variation::repair(&mut child, min_keep, rng);
                if !seen.contains(&child) {
                    break;
                }
            }
            out.push(Mask::from_keep(&child));
            seen.push(child);
        }
        out
    }

    /// (mu + lambda) selection over `pool` (all scored in the same context): NSGA-II on
    /// (clean, robust, -MACs), then the representative is the first-front survivor with the best
    /// preference score over the survivors. Also returns the generation's record for the history.
    pub fn select(
        pool: Vec<Member>,
        mu: usize,
        weights: &ObjectivesConfig,
    ) -> (Subpopulation, LayerGeneration) {
        let points: Vec<[i128; 3]> = pool.iter().map(|m| m.fitness.objectives()).collect();
        let (chosen, fronts) = pareto::select(&points, mu);
        let members: Vec<Member> = chosen.iter().map(|&i| pool[i].clone()).collect();
        let survivor_points: Vec<[i128; 3]> =
            members.iter().map(|m| m.fitness.objectives()).collect();
        let first = pareto::non_dominated_sort(&survivor_points)
            .into_iter()
            .next()
            .unwrap_or_default();
        let fitness: Vec<Fitness> = members.iter().map(|m| m.fitness).collect();
        let representative = preference::preferred(&fitness, &first, weights).unwrap_or(0);
        let record = LayerGeneration {
            fronts: fronts
                .iter()
                .map(|f| f.iter().map(|&i| pool[i].candidate).collect())
                .collect(),
            survivors: members.iter().map(|m| m.candidate).collect(),
            representative: members
                .get(representative)
                .map_or(CandidateId(0), |m| m.candidate),
        };
        (
            Subpopulation {
                members,
                representative,
            },
            record,
        )
    }

    /// Indices of the members on the first front.
    pub fn first_front(&self) -> Vec<usize> {
        let points: Vec<[i128; 3]> = self
            .members
            .iter()
            .map(|m| m.fitness.objectives())
            .collect();
        pareto::non_dominated_sort(&points)
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// FNV-1a digest of every layer's mask but `layer`'s: the context a layer-`layer` candidate is
/// scored in. Equal digests mean equal contexts (up to 64-bit collisions).
pub fn context_digest(context: &[Mask], layer: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for (j, m) in context.iter().enumerate().filter(|(j, _)| *j != layer) {
        for b in (j as u32)
            .to_le_bytes()
            .into_iter()
            .chain(m.filters.to_le_bytes())
        {
            eat(b);
        }
        for &b in &m.bits {
            eat(b);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn member(id: u64, keep: &[bool], clean: u64, adversarial: u64, macs: u64) -> Member {
        Member {
            candidate: CandidateId(id),
            mask: Mask::from_keep(keep),
            fitness: Fitness {
                clean,
                adversarial,
                samples: 100,
                macs,
            },
            context: 0,
        }
    }

    #[test]
    fn selection_drops_dominated_members_and_picks_a_first_front_representative() {
        let pool = vec![
            member(1, &[true, true, true], 90, 50, 300),
            member(2, &[true, true, false], 90, 50, 200),
            member(3, &[true, false, false], 60, 20, 100),
            member(4, &[false, true, true], 80, 40, 200),
        ];
        let (sub, record) = Subpopulation::select(pool, 3, &ObjectivesConfig::default());
        let ids: Vec<u64> = sub.members.iter().map(|m| m.candidate.0).collect();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&1) || !ids.contains(&4), "{ids:?}");
        assert_eq!(sub.representative().candidate, CandidateId(2));
        assert_eq!(record.representative, CandidateId(2));
        assert_eq!(record.fronts[0], vec![CandidateId(2), CandidateId(3)]);
    }

    #[test]
    fn offspring_respect_the_bound_and_differ_from_parents_when_possible() {
        let sub = Subpopulation {
            members: vec![member(1, &[true; 20], 1, 1, 1)],
            representative: 0,
        };
        let cfg = EvolutionConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let kids = sub.offspring(&cfg, 18, &mut rng);
        assert_eq!(kids.len(), cfg.offspring as usize);
        for k in &kids {
            assert!(k.kept() >= 18);
            assert_ne!(k, &Mask::all(20));
        }
    }

    #[test]
    fn context_digest_ignores_the_layers_own_mask() {
        let a = vec![Mask::all(4), Mask::from_keep(&[true, false]), Mask::all(3)];
        let mut b = a.clone();
        b[1] = Mask::all(2);
        assert_eq!(context_digest(&a, 1), context_digest(&b, 1));
        assert_ne!(context_digest(&a, 0), context_digest(&b, 0));
    }
}
