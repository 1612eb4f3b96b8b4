//! MACs and parameter counts of an SNN described by a [`ModelDescription`] (VGG-style or residual),
//! for any number of filters kept per layer.
//!
//! Pruning filter f of layer l removes output channel f of conv l and its batch-norm channel, and
//! the one input channel of whatever reads it: in a VGG stack conv l+1 (or `classifier_spatial`
//! input features of the classifier after the last layer); in a residual network the block's
//! second conv (`consumer_filters` outputs). A residual block's inner conv reads the residual path
//! (`fixed_input`), so its input channels never change. The cost therefore depends only on how
//! many filters each layer keeps, not on which.
//!
//! MACs count one image over all T steps, `T * (fixed + sum_l k^2 * in_l * kept_l * H_l * W_l +
//! sum_l k^2 * kept_l * consumer_l * H_l * W_l + classifier)`, where `in_l` is `kept_{l-1}` in a
//! VGG stack and the fixed `in_channels` for layer 0 and for `fixed_input` layers, and the
//! classifier term is `kept_last * classifier_spatial * classes` unless `classifier_features`
//! fixes it (then it is inside `fixed_macs`).
//! Batch norm, LIF and pooling are not counted (no multiply-accumulates with weights).
//! Parameters count conv weights, batch-norm weight and bias, classifier weight and bias
//! (running statistics are buffers, not parameters), plus `fixed_parameters`.

use crate::v1::ModelDescription;

/// The per-layer kept counts do not fit the description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("expected kept filter counts for {expected} layers, got {got}")]
    LayerCount { expected: usize, got: usize },
    #[error("layer {layer}: kept {kept} filters, expected 1..={filters}")]
    KeptOutOfRange {
        layer: usize,
        kept: u32,
        filters: u32,
    },
    /// A description so large that its count does not fit in 64 bits: no real network.
    #[error(
        "the description's {what} overflow 64 bits (layer sizes, classes or timesteps too large)"
    )]
    Overflow { what: &'static str },
}

fn check(desc: &ModelDescription, kept: &[u32]) -> Result<(), CostError> {
    if kept.len() != desc.layers.len() {
        return Err(CostError::LayerCount {
            expected: desc.layers.len(),
            got: kept.len(),
        });
    }
    for (layer, (l, &k)) in desc.layers.iter().zip(kept).enumerate() {
        if k == 0 || k > l.filters {
            return Err(CostError::KeptOutOfRange {
                layer,
                kept: k,
                filters: l.filters,
            });
        }
    }
    Ok(())
}

/// Input channels of each layer once every layer keeps `kept` filters: the previous layer's kept
/// filters, or the fixed `in_channels` for layer 0 and for layers reading the residual path.
fn in_channels<'a>(desc: &'a ModelDescription, kept: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
    desc.layers.iter().enumerate().map(move |(i, l)| {
        if i == 0 || l.fixed_input {
            u64::from(l.in_channels)
        } else {
            u64::from(kept[i - 1])
        }
    })
}

/// `a * b * c * ...` of u32 sizes on top of a u64, or `None` on overflow.
fn product(start: u64, factors: &[u32]) -> Option<u64> {
    factors
        .iter()
        .try_fold(start, |acc, &v| acc.checked_mul(u64::from(v)))
}

/// MACs of one image over all T steps with `kept[l]` filters kept in layer l. Checked arithmetic:
/// a description from a peer may hold any u32s, and an overflow is [`CostError::Overflow`].
pub fn macs(desc: &ModelDescription, kept: &[u32]) -> Result<u64, CostError> {
    check(desc, kept)?;
    let overflow = CostError::Overflow { what: "MACs" };
    let mut per_step: u64 = desc.fixed_macs;
    for ((l, &k), cin) in desc.layers.iter().zip(kept).zip(in_channels(desc, kept)) {
        let own = product(cin, &[l.kernel, l.kernel, k, l.out_height, l.out_width]);
        let consumer = product(
            u64::from(l.consumer_filters),
            &[l.kernel, l.kernel, k, l.out_height, l.out_width],
        );
        per_step = own
            .zip(consumer)
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|layer| per_step.checked_add(layer))
            .ok_or_else(|| overflow.clone())?;
    }
    if desc.classifier_features == 0 {
        let fc = product(
            u64::from(*kept.last().unwrap_or(&0)),
            &[desc.classifier_spatial, desc.classes],
        )
        .ok_or_else(|| overflow.clone())?;
        per_step = per_step.checked_add(fc).ok_or_else(|| overflow.clone())?;
    }
    per_step
        .checked_mul(u64::from(desc.timesteps))
        .ok_or(overflow)
}

/// MACs of the dense (unpruned) model.
pub fn dense_macs(desc: &ModelDescription) -> u64 {
    let kept = dense_kept(desc);
    macs(desc, &kept).unwrap_or(0)
}

/// Every layer keeping all its filters.
pub fn dense_kept(desc: &ModelDescription) -> Vec<u32> {
    desc.layers.iter().map(|l| l.filters).collect()
}

/// Trainable parameters with `kept[l]` filters kept in layer l (checked like [`macs`]).
pub fn parameters(desc: &ModelDescription, kept: &[u32]) -> Result<u64, CostError> {
    check(desc, kept)?;
    let overflow = CostError::Overflow { what: "parameters" };
    let mut total: u64 = desc.fixed_parameters;
    for ((l, &k), cin) in desc.layers.iter().zip(kept).zip(in_channels(desc, kept)) {
        // Conv weights k*k*in*kept, plus batch-norm weight and bias (2 per kept filter), plus the
        // consumer conv's input-channel slices k*k*consumer per kept filter.
        let own =
            product(cin, &[l.kernel, l.kernel, k]).and_then(|w| w.checked_add(2 * u64::from(k)));
        let consumer = product(u64::from(l.consumer_filters), &[l.kernel, l.kernel, k]);
        total = own
            .zip(consumer)
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|layer| total.checked_add(layer))
            .ok_or_else(|| overflow.clone())?;
    }
    if desc.classifier_features == 0 {
        let fc = product(
            u64::from(*kept.last().unwrap_or(&0)),
            &[desc.classifier_spatial, desc.classes],
        )
        .and_then(|w| w.checked_add(u64::from(desc.classes)))
        .ok_or_else(|| overflow.clone())?;
        total = total.checked_add(fc).ok_or_else(|| overflow.clone())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ConvLayer;

    fn two_layers() -> ModelDescription {
        let conv = |filters, in_channels, side, pool_after| ConvLayer {
            filters,
            in_channels,
            kernel: 3,
            out_height: side,
            out_width: side,
            pool_after,
            ..Default::default()
        };
        ModelDescription {
            layers: vec![conv(4, 1, 8, true), conv(6, 4, 4, true)],
            classifier_spatial: 4,
            classes: 10,
            timesteps: 2,
            ..Default::default()
        }
    }

    #[test]
    fn dense_macs_count_every_conv_and_the_classifier_per_step() {
        let d = two_layers();
        let conv0 = 9 * 4 * 64;
        let conv1 = 9 * 4 * 6 * 16;
        let fc = 6 * 4 * 10;
        assert_eq!(dense_macs(&d), 2 * (conv0 + conv1 + fc));
    }

    #[test]
    fn pruning_a_filter_also_removes_the_next_layers_input_channel() {
        let d = two_layers();
        let conv0 = 9 * 3 * 64;
        let conv1 = 9 * 3 * 2 * 16;
        let fc = 2 * 4 * 10;
        assert_eq!(macs(&d, &[3, 2]).unwrap(), 2 * (conv0 + conv1 + fc));
        assert_eq!(
            parameters(&d, &[3, 2]).unwrap(),
            (9 * 3 + 6) + (9 * 3 * 2 + 4) + (2 * 4 * 10 + 10)
        );
    }

    #[test]
    fn empty_or_oversized_layers_are_errors() {
        let d = two_layers();
        assert_eq!(
            macs(&d, &[0, 2]),
            Err(CostError::KeptOutOfRange {
                layer: 0,
                kept: 0,
                filters: 4
            })
        );
        assert_eq!(
            macs(&d, &[4, 7]),
            Err(CostError::KeptOutOfRange {
                layer: 1,
                kept: 7,
                filters: 6
            })
        );
        assert_eq!(
            macs(&d, &[4]),
            Err(CostError::LayerCount {
                expected: 2,
                got: 1
            })
        );
    }

    /// A residual stage: stem 3->8 (fixed), one block whose inner conv (prunable, 8->4, reads the
    /// residual path) feeds a second conv 4->8 on the path, classifier on 8 pooled features.
    fn residual() -> ModelDescription {
        ModelDescription {
            layers: vec![ConvLayer {
                filters: 4,
                in_channels: 8,
                kernel: 3,
                out_height: 4,
                out_width: 4,
                fixed_input: true,
                consumer_filters: 8,
                ..Default::default()
            }],
            classifier_spatial: 1,
            classes: 10,
            timesteps: 2,
            fixed_macs: 9 * 3 * 8 * 16 + 8 * 10,
            fixed_parameters: 9 * 3 * 8 + 2 * 8 + 2 * 8 + 8 * 10 + 10,
            classifier_features: 8,
            input_layer_macs: 9 * 3 * 8 * 16,
        }
    }

    #[test]
    fn residual_inner_filters_cost_their_conv_and_the_consumers_input_channel() {
        let d = residual();
        let fixed = 9 * 3 * 8 * 16 + 8 * 10;
        assert_eq!(
            dense_macs(&d),
            2 * (fixed + 9 * 8 * 4 * 16 + 9 * 4 * 8 * 16)
        );
        assert_eq!(
            macs(&d, &[1]).unwrap(),
            2 * (fixed + 9 * 8 * 16 + 9 * 8 * 16)
        );
        let fixed_params = 9 * 3 * 8 + 2 * 8 + 2 * 8 + 8 * 10 + 10;
        assert_eq!(
            parameters(&d, &[3]).unwrap(),
            fixed_params + (9 * 8 * 3 + 2 * 3) + 9 * 3 * 8
        );
    }

    #[test]
    fn a_fixed_input_layer_ignores_the_previous_layers_kept_filters() {
        let mut d = residual();
        let mut second = d.layers[0];
        second.filters = 2;
        d.layers.push(second);
        let a = macs(&d, &[4, 2]).unwrap();
        let b = macs(&d, &[1, 2]).unwrap();
        // Only layer 0's own and consumer terms change: 3 fewer filters each 2 * 9*8*16 per step.
        assert_eq!(a - b, 2 * 3 * (9 * 8 * 16 + 9 * 8 * 16));
    }
}
