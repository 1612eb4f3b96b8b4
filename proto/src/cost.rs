//! MACs and parameter counts of a VGG-style SNN described by a [`ModelDescription`], for any number
//! of filters kept per layer.
//!
//! Pruning filter f of layer l removes output channel f of conv l, its batch-norm channel, and input
//! channel f of conv l+1 (or `classifier_spatial` input features of the classifier). The cost
//! therefore depends only on how many filters each layer keeps, not on which.
//!
//! MACs count one image over all T steps: `T * (sum_l k^2 * in_l * kept_l * H_l * W_l + in_fc * classes)`.
//! Batch norm, LIF and pooling are not counted (no multiply-accumulates with weights).
//! Parameters count conv weights, batch-norm weight and bias, classifier weight and bias
//! (running statistics are buffers, not parameters).

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

/// Input channels of each layer once every layer keeps `kept` filters.
fn in_channels<'a>(desc: &'a ModelDescription, kept: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
    let first = desc.layers.first().map_or(0, |l| u64::from(l.in_channels));
    std::iter::once(first).chain(kept.iter().map(|&k| u64::from(k)))
}

/// MACs of one image over all T steps with `kept[l]` filters kept in layer l. Checked arithmetic:
/// a description from a peer may hold any u32s, and an overflow is [`CostError::Overflow`].
pub fn macs(desc: &ModelDescription, kept: &[u32]) -> Result<u64, CostError> {
    check(desc, kept)?;
    let overflow = CostError::Overflow { what: "MACs" };
    let mut conv: u64 = 0;
    for ((l, &k), cin) in desc.layers.iter().zip(kept).zip(in_channels(desc, kept)) {
        let layer = [l.kernel, l.kernel, k, l.out_height, l.out_width]
            .into_iter()
            .try_fold(cin, |acc, v| acc.checked_mul(u64::from(v)))
            .ok_or_else(|| overflow.clone())?;
        conv = conv.checked_add(layer).ok_or_else(|| overflow.clone())?;
    }
    let fc = [desc.classifier_spatial, desc.classes]
        .into_iter()
        .try_fold(u64::from(*kept.last().unwrap_or(&0)), |acc, v| {
            acc.checked_mul(u64::from(v))
        })
        .ok_or_else(|| overflow.clone())?;
    conv.checked_add(fc)
        .and_then(|per_step| per_step.checked_mul(u64::from(desc.timesteps)))
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
    let mut conv: u64 = 0;
    for ((l, &k), cin) in desc.layers.iter().zip(kept).zip(in_channels(desc, kept)) {
        // Conv weights k*k*in*kept, plus batch-norm weight and bias (2 per kept filter).
        let layer = [l.kernel, l.kernel, k]
            .into_iter()
            .try_fold(cin, |acc, v| acc.checked_mul(u64::from(v)))
            .and_then(|w| w.checked_add(2 * u64::from(k)))
            .ok_or_else(|| overflow.clone())?;
        conv = conv.checked_add(layer).ok_or_else(|| overflow.clone())?;
    }
    let fc = u64::from(*kept.last().unwrap_or(&0))
        .checked_mul(u64::from(desc.classifier_spatial))
        .and_then(|fc_in| fc_in.checked_mul(u64::from(desc.classes)))
        .and_then(|w| w.checked_add(u64::from(desc.classes)))
        .ok_or_else(|| overflow.clone())?;
    conv.checked_add(fc).ok_or(overflow)
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
        };
        ModelDescription {
            layers: vec![conv(4, 1, 8, true), conv(6, 4, 4, true)],
            classifier_spatial: 4,
            classes: 10,
            timesteps: 2,
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
}
