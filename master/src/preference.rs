//! The preference score that picks a layer's representative among its first front.
//!
//! Each objective is normalised to [0, 1] over the layer's population (min-max; an objective
//! with zero range contributes 0 for everyone), then weighted: robust and clean counts as they
//! are, compactness as (max MACs - MACs) / range. This is the only place floats enter selection;
//! it is a fixed sequence of IEEE operations on integers, so it is the same on every machine.

use crate::config::ObjectivesConfig;
use crate::fitness::Fitness;

fn normalised(v: u64, lo: u64, hi: u64) -> f64 {
    if hi == lo {
        0.0
    } else {
        (v - lo) as f64 / (hi - lo) as f64
    }
}

/// Score of each member of `population` (higher is preferred).
pub fn scores(population: &[Fitness], weights: &ObjectivesConfig) -> Vec<f64> {
    let range = |f: fn(&Fitness) -> u64| {
        let lo = population.iter().map(f).min().unwrap_or(0);
        let hi = population.iter().map(f).max().unwrap_or(0);
        (lo, hi)
    };
    let (clo, chi) = range(|f| f.clean);
    let (alo, ahi) = range(|f| f.adversarial);
    let (mlo, mhi) = range(|f| f.macs);
    population
        .iter()
        .map(|f| {
            weights.robust_weight * normalised(f.adversarial, alo, ahi)
                + weights.clean_weight * normalised(f.clean, clo, chi)
                + weights.compactness_weight * normalised(mhi - (f.macs - mlo), mlo, mhi)
        })
        .collect()
}

/// Index (into `population`) of the preferred member among `candidates`: highest score, then fewer
/// MACs, then the earlier candidate.
pub fn preferred(
    population: &[Fitness],
    candidates: &[usize],
    weights: &ObjectivesConfig,
) -> Option<usize> {
    let s = scores(population, weights);
    candidates.iter().copied().reduce(|best, c| {
        let better =
            s[c] > s[best] || (s[c] == s[best] && population[c].macs < population[best].macs);
        if better {
            c
        } else {
            best
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(clean: u64, adversarial: u64, macs: u64) -> Fitness {
        Fitness {
            clean,
            adversarial,
            samples: 100,
            macs,
        }
    }

    #[test]
    fn default_weights_favour_robustness_over_clean_and_compactness() {
        let pop = [f(90, 10, 100), f(80, 20, 100), f(85, 15, 50)];
        let w = ObjectivesConfig::default();
        // Scores: 0.3 ; 0.5 ; 0.25 + 0.15 + 0.2 = 0.6
        assert_eq!(preferred(&pop, &[0, 1, 2], &w), Some(2));
        assert_eq!(preferred(&pop, &[0, 1], &w), Some(1));
    }

    #[test]
    fn equal_scores_prefer_fewer_macs_then_earlier() {
        let pop = [f(50, 50, 10), f(50, 50, 10), f(50, 50, 10)];
        assert_eq!(
            preferred(&pop, &[2, 1], &ObjectivesConfig::default()),
            Some(2)
        );
        assert_eq!(preferred(&[], &[], &ObjectivesConfig::default()), None);
    }
}
