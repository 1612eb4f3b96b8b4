//! The network the search works on: checking a model description, and what splicing (pruning every
//! layer by its representative) does to the description and to the map back to the dense model's
//! filters.
//!
//! Masks always index the *current* network's filters; [`Network::kept_filters`] remembers which
//! of the dense model's filters those are, so the outcome can name them.

use ccsrp_proto::cost;
use ccsrp_proto::v1::{Mask, ModelDescription};
use serde::{Deserialize, Serialize};

use crate::work::ModelRef;

/// A model description that the engine cannot optimise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model description: {field} = {value}: expected {expected}")]
pub struct DescriptionError {
    /// Path inside the description, e.g. `layers[2].in_channels`.
    pub field: String,
    pub value: String,
    pub expected: String,
}

fn invalid(field: String, value: u32, expected: impl Into<String>) -> DescriptionError {
    DescriptionError {
        field,
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// Most prunable layers a description may have: far beyond any VGG-style SNN, and a bound on the
/// engine's per-layer state (subpopulations, masks) whatever a peer announces.
pub const MAX_LAYERS: usize = 1024;

/// Most filters one layer may have: the masks over them (a bit each, per candidate) stay small.
pub const MAX_FILTERS: u32 = 1 << 16;

/// Checks that `d` describes prunable conv layers the cost calculator and the masks can use:
/// 1..=[`MAX_LAYERS`] layers of 1..=[`MAX_FILTERS`] filters, every size >= 1, a VGG layer's input
/// channels equal to the previous layer's filters (a residual block's inner conv reads the
/// residual path instead), strides of at most 2, and MACs and parameters that fit in 64 bits (so
/// every pruned network's cost is exact too).
pub fn validate_description(d: &ModelDescription) -> Result<(), DescriptionError> {
    if d.layers.is_empty() || d.layers.len() > MAX_LAYERS {
        return Err(DescriptionError {
            field: "layers".into(),
            value: format!("{} layers", d.layers.len()),
            expected: format!("1..={MAX_LAYERS} prunable layers"),
        });
    }
    for (i, l) in d.layers.iter().enumerate() {
        let field = |f: &str| format!("layers[{i}].{f}");
        for (name, v) in [
            ("filters", l.filters),
            ("kernel", l.kernel),
            ("out_height", l.out_height),
            ("out_width", l.out_width),
            ("in_channels", l.in_channels),
        ] {
            if v == 0 {
                return Err(invalid(field(name), v, "a value >= 1"));
            }
        }
        if l.filters > MAX_FILTERS {
            return Err(invalid(
                field("filters"),
                l.filters,
                format!("at most {MAX_FILTERS}"),
            ));
        }
        if l.stride > 2 {
            return Err(invalid(field("stride"), l.stride, "0, 1 or 2"));
        }
        if l.consumer_filters > MAX_FILTERS {
            return Err(invalid(
                field("consumer_filters"),
                l.consumer_filters,
                format!("at most {MAX_FILTERS}"),
            ));
        }
        if l.consumer_filters > 0 && (!l.fixed_input || l.pool_after) {
            return Err(invalid(
                field("consumer_filters"),
                l.consumer_filters,
                "0 unless the layer is a residual block's inner conv (fixed_input, no pool)",
            ));
        }
        if i > 0 && !l.fixed_input && l.in_channels != d.layers[i - 1].filters {
            return Err(invalid(
                field("in_channels"),
                l.in_channels,
                format!("{} (the previous layer's filters)", d.layers[i - 1].filters),
            ));
        }
    }
    for (name, v) in [
        ("classifier_spatial", d.classifier_spatial),
        ("classes", d.classes),
        ("timesteps", d.timesteps),
    ] {
        if v == 0 {
            return Err(invalid(name.into(), v, "a value >= 1"));
        }
    }
    let dense = cost::dense_kept(d);
    if let Err(e) = cost::macs(d, &dense).and_then(|_| cost::parameters(d, &dense)) {
        return Err(DescriptionError {
            field: "layers".into(),
            value: e.to_string(),
            expected: "sizes whose MACs and parameters fit in 64 bits".into(),
        });
    }
    Ok(())
}

/// MACs of `d` with `kept[l]` filters in layer l. The engine only asks for counts in
/// 1..=filters of a validated description, where the calculator cannot fail; should it ever,
/// u64::MAX ranks that network last instead of aborting the job.
pub fn macs(d: &ModelDescription, kept: &[u32]) -> u64 {
    cost::macs(d, kept).unwrap_or(u64::MAX)
}

/// The description after pruning every layer by `masks` (one per layer, over its filters).
pub fn prune_description(d: &ModelDescription, masks: &[Mask]) -> ModelDescription {
    let mut out = d.clone();
    let mut previous_kept = None;
    for (layer, mask) in out.layers.iter_mut().zip(masks) {
        // A layer reading the residual path keeps its input channels whatever the masks.
        if let (Some(k), false) = (previous_kept, layer.fixed_input) {
            layer.in_channels = k;
        }
        layer.filters = mask.kept();
        previous_kept = Some(layer.filters);
    }
    out
}

/// One network of the search and its lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub model: ModelRef,
    pub description: ModelDescription,
    /// Per layer: the dense model's filter index of each current filter.
    pub kept_filters: Vec<Vec<u32>>,
}

impl Network {
    /// The dense model: every filter is its own original.
    pub fn dense(model: ModelRef, description: ModelDescription) -> Network {
        let kept_filters = description
            .layers
            .iter()
            .map(|l| (0..l.filters).collect())
            .collect();
        Network {
            model,
            description,
            kept_filters,
        }
    }

    /// MACs of the whole network.
    pub fn macs(&self) -> u64 {
        macs(&self.description, &cost::dense_kept(&self.description))
    }

    /// The network `model` obtained by pruning this one by `masks`.
    pub fn spliced(&self, masks: &[Mask], model: ModelRef) -> Network {
        let kept_filters = self
            .kept_filters
            .iter()
            .zip(masks)
            .map(|(orig, m)| {
                m.kept_indices()
                    .into_iter()
                    .filter_map(|i| orig.get(i).copied())
                    .collect()
            })
            .collect();
        Network {
            model,
            description: prune_description(&self.description, masks),
            kept_filters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccsrp_proto::v1::ConvLayer;
    use proptest::prelude::*;

    fn vgg(widths: &[u32]) -> ModelDescription {
        let mut in_channels = 3;
        let layers = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let side = 32 >> (i / 2);
                let l = ConvLayer {
                    filters: w,
                    in_channels,
                    kernel: 3,
                    out_height: side,
                    out_width: side,
                    pool_after: i % 2 == 1,
                    ..Default::default()
                };
                in_channels = w;
                l
            })
            .collect();
        ModelDescription {
            layers,
            classifier_spatial: 4,
            classes: 10,
            timesteps: 4,
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn all_ones_masks_cost_the_dense_macs(widths in prop::collection::vec(1u32..70, 1..6)) {
            let d = vgg(&widths);
            let net = Network::dense(ModelRef("m".into()), d.clone());
            let ones: Vec<Mask> = widths.iter().map(|&w| Mask::all(w)).collect();
            let kept: Vec<u32> = ones.iter().map(|m| m.kept()).collect();
            prop_assert_eq!(macs(&d, &kept), cost::dense_macs(&d));
            let spliced = net.spliced(&ones, ModelRef("n".into()));
            prop_assert_eq!(spliced.macs(), net.macs());
            prop_assert_eq!(&spliced.description, &d);
        }
    }

    #[test]
    fn splicing_twice_maps_filters_back_to_the_dense_model() {
        let d = vgg(&[4, 6]);
        let net = Network::dense(ModelRef("a".into()), d);
        let once = net.spliced(
            &[
                Mask::from_keep(&[true, false, true, true]),
                Mask::from_keep(&[false, true, true, true, true, false]),
            ],
            ModelRef("b".into()),
        );
        assert_eq!(once.kept_filters, vec![vec![0, 2, 3], vec![1, 2, 3, 4]]);
        assert_eq!(once.description.layers[1].in_channels, 3);
        assert_eq!(once.description.layers[1].filters, 4);
        assert!(validate_description(&once.description).is_ok());
        let twice = once.spliced(
            &[
                Mask::from_keep(&[false, true, true]),
                Mask::from_keep(&[true, true, false, true]),
            ],
            ModelRef("c".into()),
        );
        assert_eq!(twice.kept_filters, vec![vec![2, 3], vec![1, 2, 4]]);
        assert_eq!(twice.macs(), cost::macs(&vgg(&[4, 6]), &[2, 3]).unwrap());
    }

    #[test]
    fn inconsistent_description_names_the_field() {
        let mut d = vgg(&[4, 6]);
        d.layers[1].in_channels = 5;
        let e = validate_description(&d).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model description: layers[1].in_channels = 5: expected 4 (the previous layer's filters)"
        );
        d.layers.clear();
        assert_eq!(validate_description(&d).unwrap_err().field, "layers");
    }
}
