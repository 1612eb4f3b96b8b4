//! Classic filter-pruning criteria, the baselines a CCSRP result is compared with (`ccsrp prune`).
//!
//! - [`Criterion::L1`]: keep the filters with the largest L1 norm of their conv weights (Li et al.,
//!   "Pruning Filters for Efficient ConvNets", 2017); ties go to the lower index.
//! - [`Criterion::Random`]: keep a seeded uniform random subset of each layer's filters.
//!
//! How many filters each layer keeps is decided separately ([`uniform_keep`], [`uniform_keep_for_macs`],
//! or a given allocation), so "how many per layer" and "which filters" can be ablated apart. Costs
//! come from [`ccsrp_proto::cost`]: they depend only on the counts kept.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use ccsrp_proto::cost::{self, CostError};
use ccsrp_proto::v1::{Mask, ModelDescription};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{ModelError, SnnModel};

/// Which filters a baseline keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// The filters with the largest L1 norm of their conv weights.
    L1,
    /// A seeded uniform random subset.
    Random,
}

impl std::str::FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "l1" => Ok(Criterion::L1),
            "random" => Ok(Criterion::Random),
            other => Err(format!("unknown method `{other}`: expected l1 or random")),
        }
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Criterion::L1 => "l1",
            Criterion::Random => "random",
        })
    }
}

/// A keep count that does not fit a layer.
#[derive(Debug, thiserror::Error)]
pub enum CriterionError {
    #[error("the model has no prunable layers")]
    NoLayers,
    #[error("expected filter counts for {expected} prunable layers, got {got}")]
    LayerCount { expected: usize, got: usize },
    #[error("layer {layer}: keep {keep} filters, expected 1..={filters}")]
    KeepOutOfRange {
        layer: usize,
        keep: usize,
        filters: usize,
    },
    #[error("keep ratio {0}: expected a number in (0, 1]")]
    Ratio(f64),
    #[error("{0}")]
    Cost(#[from] CostError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The same fraction `ratio` of filters in every layer: `round(ratio * filters)`, at least 1.
pub fn uniform_keep(filters: &[usize], ratio: f64) -> Result<Vec<usize>, CriterionError> {
    if !ratio.is_finite() || ratio <= 0.0 || ratio > 1.0 {
        return Err(CriterionError::Ratio(ratio));
    }
    Ok(filters
        .iter()
        .map(|&n| ((ratio * n as f64).round() as usize).clamp(1, n.max(1)))
        .collect())
}

/// The uniform keep ratio whose MACs come closest to `target_macs` (ties: the larger network, then
/// the larger ratio), its per-layer counts and their MACs. Every ratio `k / n` of every layer is a breakpoint of the step function
/// ratio -> counts, so trying them all finds the exact optimum.
pub fn uniform_keep_for_macs(
    description: &ModelDescription,
    target_macs: u64,
) -> Result<(f64, Vec<usize>, u64), CriterionError> {
    let filters: Vec<usize> = description
        .layers
        .iter()
        .map(|l| l.filters as usize)
        .collect();
    let mut ratios: Vec<f64> = filters
        .iter()
        .flat_map(|&n| (1..=n).map(move |k| k as f64 / n as f64))
        .collect();
    // Midpoints between breakpoints reach the counts that rounding puts between two of them.
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    let mids: Vec<f64> = ratios.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    ratios.extend(mids);
    ratios.sort_by(f64::total_cmp);
    let mut best: Option<(u64, u64, f64, Vec<usize>)> = None;
    for ratio in ratios {
        let keep = uniform_keep(&filters, ratio)?;
        let counts: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        let macs = cost::macs(description, &counts)?;
        let distance = macs.abs_diff(target_macs);
        let better = match &best {
            None => true,
            // Ratios ascend: on a tie the later (larger) ratio wins.
            Some((d, m, _, _)) => distance < *d || (distance == *d && macs >= *m),
        };
        if better {
            best = Some((distance, macs, ratio, keep));
        }
    }
    let (_, macs, ratio, keep) = best.ok_or(CriterionError::NoLayers)?;
    Ok((ratio, keep, macs))
}

/// L1 norm of every filter's conv weights, per prunable layer.
pub fn filter_l1_norms(model: &SnnModel) -> Result<Vec<Vec<f64>>, CriterionError> {
    let state: HashMap<String, Tensor> = model.state().into_iter().collect();
    let names = crate::model_file::prunable_conv_names(model);
    let mut norms = Vec::with_capacity(names.len());
    for n in &names {
        let name = format!("{n}.weight");
        let weight = state
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        let per_filter = weight
            .to_dtype(DType::F64)?
            .abs()?
            .flatten_from(1)?
            .sum(1)?
            .to_vec1::<f64>()?;
        norms.push(per_filter);
    }
    Ok(norms)
}

/// The masks keeping `keep[l]` filters of every layer l, chosen by `criterion` (`seed` drives
/// [`Criterion::Random`] only).
pub fn select_filters(
    model: &SnnModel,
    criterion: Criterion,
    keep: &[usize],
    seed: u64,
) -> Result<Vec<Mask>, CriterionError> {
    let filters: Vec<usize> = model.geometry().iter().map(|g| g.filters).collect();
    if keep.len() != filters.len() {
        return Err(CriterionError::LayerCount {
            expected: filters.len(),
            got: keep.len(),
        });
    }
    for (layer, (&k, &n)) in keep.iter().zip(&filters).enumerate() {
        if k == 0 || k > n {
            return Err(CriterionError::KeepOutOfRange {
                layer,
                keep: k,
                filters: n,
            });
        }
    }
    let chosen: Vec<Vec<usize>> = match criterion {
        Criterion::L1 => filter_l1_norms(model)?
            .iter()
            .zip(keep)
            .map(|(norms, &k)| {
                let mut order: Vec<usize> = (0..norms.len()).collect();
                order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
                order.truncate(k);
                order
            })
            .collect(),
        Criterion::Random => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            filters
                .iter()
                .zip(keep)
                .map(|(&n, &k)| sample(&mut rng, n, k).into_vec())
                .collect()
        }
    };
    Ok(chosen
        .iter()
        .zip(&filters)
        .map(|(kept, &n)| {
            let mut flags = vec![false; n];
            for &i in kept {
                flags[i] = true;
            }
            Mask::from_keep(&flags)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_spec;
    use candle_core::Device;

    #[test]
    fn l1_keeps_the_filters_with_the_largest_weights() {
        let model = SnnModel::new(tiny_spec("8,M,12,M,16", 2), &Device::Cpu, 3).unwrap();
        let norms = filter_l1_norms(&model).unwrap();
        let keep: Vec<usize> = norms.iter().map(|n| n.len() / 2).collect();
        let masks = select_filters(&model, Criterion::L1, &keep, 0).unwrap();
        for (layer, (mask, norms)) in masks.iter().zip(&norms).enumerate() {
            assert_eq!(mask.kept() as usize, keep[layer]);
            let kept = mask.kept_indices();
            let weakest_kept = kept.iter().map(|&i| norms[i]).fold(f64::MAX, f64::min);
            let strongest_dropped = (0..norms.len())
                .filter(|i| !kept.contains(i))
                .map(|i| norms[i])
                .fold(f64::MIN, f64::max);
            assert!(
                weakest_kept >= strongest_dropped,
                "layer {layer}: kept a filter of norm {weakest_kept} over one of {strongest_dropped}"
            );
        }
    }

    #[test]
    fn l1_norm_is_the_sum_of_absolute_conv_weights() {
        let model = SnnModel::new(tiny_spec("8,M,12,M,16", 2), &Device::Cpu, 5).unwrap();
        let state: HashMap<String, Tensor> = model.state().into_iter().collect();
        let names = crate::model_file::layer_names(model.geometry());
        let weight = state[&format!("{}.weight", names[0].conv)]
            .to_dtype(DType::F64)
            .unwrap();
        let filter0: f64 = weight
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|w| w.abs())
            .sum();
        let norms = filter_l1_norms(&model).unwrap();
        assert!((norms[0][0] - filter0).abs() < 1e-9);
    }

    #[test]
    fn random_selection_is_seeded_and_keeps_the_asked_counts() {
        let model = SnnModel::new(tiny_spec("8,M,12,M,16", 2), &Device::Cpu, 1).unwrap();
        let keep: Vec<usize> = model.geometry().iter().map(|g| g.filters - 1).collect();
        let a = select_filters(&model, Criterion::Random, &keep, 9).unwrap();
        let b = select_filters(&model, Criterion::Random, &keep, 9).unwrap();
        assert_eq!(a, b);
        for (m, &k) in a.iter().zip(&keep) {
            assert_eq!(m.kept() as usize, k);
        }
    }

    #[test]
    fn bad_counts_and_ratios_are_errors_naming_the_layer() {
        let model = SnnModel::new(tiny_spec("8,M,12,M,16", 2), &Device::Cpu, 1).unwrap();
        let mut keep: Vec<usize> = model.geometry().iter().map(|g| g.filters).collect();
        keep[1] = 0;
        let err = select_filters(&model, Criterion::L1, &keep, 0).unwrap_err();
        assert!(
            err.to_string().starts_with("layer 1: keep 0 filters"),
            "{err}"
        );
        assert!(select_filters(&model, Criterion::L1, &keep[..1], 0).is_err());
        assert!(uniform_keep(&[8, 16], 0.0).is_err());
        assert!(uniform_keep(&[8, 16], 1.5).is_err());
        assert_eq!(uniform_keep(&[8, 16], 0.5).unwrap(), vec![4, 8]);
        assert_eq!(uniform_keep(&[3], 0.01).unwrap(), vec![1]);
    }

    #[test]
    fn the_solved_ratio_reaches_the_closest_uniform_macs() {
        let model = SnnModel::new(tiny_spec("8,M,12,M,16", 2), &Device::Cpu, 1).unwrap();
        let description = model.description();
        let dense = cost::dense_macs(&description);
        let target = dense / 2;
        let (ratio, keep, macs) = uniform_keep_for_macs(&description, target).unwrap();
        let counts: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        assert_eq!(cost::macs(&description, &counts).unwrap(), macs);
        assert_eq!(
            uniform_keep(&keep_filters(&description), ratio).unwrap(),
            keep
        );
        // No uniform ratio on a fine grid comes closer.
        for step in 1..=1000 {
            let r = step as f64 / 1000.0;
            let k: Vec<u32> = uniform_keep(&keep_filters(&description), r)
                .unwrap()
                .iter()
                .map(|&k| k as u32)
                .collect();
            let m = cost::macs(&description, &k).unwrap();
            assert!(
                m.abs_diff(target) >= macs.abs_diff(target),
                "ratio {r}: {m} beats {macs}"
            );
        }
        let (full, _, dense_again) = uniform_keep_for_macs(&description, dense).unwrap();
        assert_eq!((full, dense_again), (1.0, dense));
    }

    fn keep_filters(d: &ModelDescription) -> Vec<usize> {
        d.layers.iter().map(|l| l.filters as usize).collect()
    }

    #[test]
    fn l1_selection_on_a_resnet_reads_the_blocks_inner_convs_and_prunes_to_the_macs() {
        let model = SnnModel::new(tiny_spec("resnet:3;4x1,6x1", 2), &Device::Cpu, 1).unwrap();
        let state: HashMap<String, Tensor> = model.state().into_iter().collect();
        let norms = filter_l1_norms(&model).unwrap();
        assert_eq!(norms.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 6]);
        let w = state["layer2.0.conv1.weight"].to_dtype(DType::F64).unwrap();
        let filter2: f64 = w
            .get(2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((norms[1][2] - filter2).abs() < 1e-9);
        let description = model.description();
        let (_, keep, macs) =
            uniform_keep_for_macs(&description, cost::dense_macs(&description) * 3 / 4).unwrap();
        let masks = select_filters(&model, Criterion::L1, &keep, 0).unwrap();
        assert_eq!(model.prune(&masks).unwrap().macs(), macs);
    }
}
