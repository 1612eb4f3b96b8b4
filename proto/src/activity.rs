//! Spikes and synaptic operations (SOPs) of a network on a set of images: what a worker counts
//! and the master and `ccsrp eval` turn into rates, SOPs per image and energy ([`crate::energy`]).
//!
//! A spike of layer l at (channel, y, x) drives every synapse that reads it, exactly:
//! - it reaches the next layer's input at (y', x') = (y/2, x/2) after a 2x2 average pool
//!   (`pool_after`), or (y, x) without one; a spike in the row or column that an odd-sized pool
//!   drops drives nothing;
//! - for a conv layer l+1 (k x k, same padding k/2) it drives `kept_{l+1}` output channels at each
//!   output position whose window covers (y', x'): `kept_{l+1} * rows(y') * cols(x')` synapses,
//!   where `rows(y')` is the number of output rows o with |o - y'| <= k/2 inside the map. Inside
//!   the map that is the full k x k; a spike on the border drives fewer (padding has no synapses);
//! - for the last layer, the classifier reads every pooled feature: `classes` synapses;
//! - for a residual block's inner conv (`consumer_filters` set) the reader is the block's second
//!   conv (same k, stride 1, same padding, same map): `consumer_filters * rows(y) * cols(x)`.
//!   The other spiking layers of a residual network are not prunable layers: the worker counts
//!   their SOPs from its own graph, and `Activity.layers` then lists every spiking layer in
//!   forward order, not one entry per prunable layer.
//!
//! With the 2x2 average pool folded into the next layer's weights, each of the four spikes under a
//! pool window is its own event, so SOPs count spikes, not pooled values. [`fan_out`] gives the
//! per-position fan-out; SOPs = sum over spikes of their fan-out, counted exactly (integers) on the
//! evaluated images over all T steps.

use serde::{Deserialize, Serialize};

use crate::v1::ModelDescription;

/// Spikes of one conv layer's LIF neurons summed over images and steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerActivity {
    /// Neuron-steps observed: images x T x kept filters x height x width.
    pub neuron_steps: u64,
    pub spikes: u64,
    /// Synapses the spikes drove (see the module docs).
    pub sops: u64,
}

/// Spikes and SOPs of every conv layer of a network over `images` images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub images: u64,
    pub layers: Vec<LayerActivity>,
}

/// The counts as they travel (`ccsrp.v1.Activity`, in `TestMetricsResult`).
impl From<&Activity> for crate::v1::Activity {
    fn from(a: &Activity) -> Self {
        crate::v1::Activity {
            images: a.images,
            layers: a
                .layers
                .iter()
                .map(|l| crate::v1::LayerActivity {
                    neuron_steps: l.neuron_steps,
                    spikes: l.spikes,
                    sops: l.sops,
                })
                .collect(),
        }
    }
}

/// The counts as received; the engine checks them against the task (`ccsrp_master`).
impl From<&crate::v1::Activity> for Activity {
    fn from(a: &crate::v1::Activity) -> Self {
        Activity {
            images: a.images,
            layers: a
                .layers
                .iter()
                .map(|l| LayerActivity {
                    neuron_steps: l.neuron_steps,
                    spikes: l.spikes,
                    sops: l.sops,
                })
                .collect(),
        }
    }
}

impl LayerActivity {
    /// Fraction of neurons firing per step.
    pub fn rate(&self) -> f64 {
        ratio(self.spikes, self.neuron_steps)
    }
}

impl Activity {
    /// Spikes of every layer of one image over all T steps.
    pub fn spikes_per_image(&self) -> f64 {
        ratio(self.layers.iter().map(|l| l.spikes).sum(), self.images)
    }

    /// SOPs of one image over all T steps.
    pub fn sops_per_image(&self) -> f64 {
        ratio(self.total_sops(), self.images)
    }

    /// SOPs over every image.
    pub fn total_sops(&self) -> u64 {
        self.layers.iter().map(|l| l.sops).sum()
    }

    /// Adds the counts of `other` (more images of the same network) to these.
    pub fn add(&mut self, other: &Activity) {
        self.images += other.images;
        if self.layers.len() < other.layers.len() {
            self.layers
                .resize(other.layers.len(), LayerActivity::default());
        }
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            a.neuron_steps += b.neuron_steps;
            a.spikes += b.spikes;
            a.sops += b.sops;
        }
    }
}

/// `num / den`, 0 when `den` is 0.
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Output positions o in 0..size of a same-padded window of `kernel` that read input position p.
fn covering(p: usize, size: usize, kernel: u32) -> u64 {
    let half = (kernel / 2) as usize;
    let lo = p.saturating_sub(half);
    let hi = (p + half).min(size.saturating_sub(1));
    if p >= size {
        0
    } else {
        (hi - lo + 1) as u64
    }
}

/// Synapses driven by one spike of layer `layer` at each of its output positions, row-major
/// `[out_height * out_width]` (the same for every channel and step); `None` if `layer` does not
/// exist. See the module docs for the rule.
pub fn fan_out(desc: &ModelDescription, layer: usize) -> Option<Vec<u64>> {
    let l = desc.layers.get(layer)?;
    let (h, w) = (l.out_height as usize, l.out_width as usize);
    let (ph, pw) = if l.pool_after { (h / 2, w / 2) } else { (h, w) };
    let to_input = |p: usize, pooled: usize| {
        let q = if l.pool_after { p / 2 } else { p };
        (q < pooled).then_some(q)
    };
    let mut out = vec![0u64; h * w];
    for y in 0..h {
        for x in 0..w {
            let (Some(iy), Some(ix)) = (to_input(y, ph), to_input(x, pw)) else {
                continue;
            };
            out[y * w + x] = match desc.layers.get(layer + 1) {
                _ if l.consumer_filters > 0 => {
                    u64::from(l.consumer_filters)
                        * covering(iy, ph, l.kernel)
                        * covering(ix, pw, l.kernel)
                }
                Some(next) => {
                    u64::from(next.filters)
                        * covering(iy, next.out_height as usize, next.kernel)
                        * covering(ix, next.out_width as usize, next.kernel)
                }
                None => u64::from(desc.classes),
            };
        }
    }
    Some(out)
}

/// SOPs of layer `layer` from its spike counts per output position (summed over channels, images
/// and steps, row-major); `None` if the layer does not exist or the counts have the wrong length.
pub fn sops_from_position_counts(
    desc: &ModelDescription,
    layer: usize,
    counts: &[u64],
) -> Option<u64> {
    let fan = fan_out(desc, layer)?;
    (fan.len() == counts.len()).then(|| fan.iter().zip(counts).map(|(f, c)| f * c).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ConvLayer;

    fn desc(second_filters: u32) -> ModelDescription {
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
            layers: vec![conv(4, 1, 5, true), conv(second_filters, 4, 2, false)],
            classifier_spatial: 4,
            classes: 3,
            timesteps: 2,
            ..Default::default()
        }
    }

    #[test]
    fn interior_spikes_drive_k_squared_times_the_next_layers_filters() {
        // Layer 0: 5x5 pooled to 2x2 (row and column 4 dropped); layer 1's 2x2 map with a 3x3
        // window: every input position is read by all 4 outputs.
        let fan = fan_out(&desc(6), 0).unwrap();
        assert_eq!(fan[0], 6 * 2 * 2);
        assert_eq!(fan[3 * 5 + 3], 6 * 4);
        assert_eq!(fan[4], 0, "the column the pool drops");
        assert_eq!(fan[4 * 5], 0, "the row the pool drops");
        // The last layer drives the classifier's outputs.
        assert_eq!(fan_out(&desc(6), 1).unwrap(), vec![3; 4]);
        assert_eq!(fan_out(&desc(6), 2), None);
    }

    #[test]
    fn border_positions_drive_fewer_outputs_than_k_squared() {
        let mut d = desc(5);
        d.layers[0].pool_after = false;
        d.layers[1].out_height = 5;
        d.layers[1].out_width = 5;
        let fan = fan_out(&d, 0).unwrap();
        assert_eq!(fan[2 * 5 + 2], 5 * 9, "interior");
        assert_eq!(fan[0], 5 * 4, "corner");
        assert_eq!(fan[2], 5 * 6, "edge");
    }

    #[test]
    fn fewer_filters_in_the_next_layer_lower_the_fan_out_exactly() {
        let counts: Vec<u64> = (0..25).collect();
        let dense = sops_from_position_counts(&desc(6), 0, &counts).unwrap();
        let pruned = sops_from_position_counts(&desc(2), 0, &counts).unwrap();
        assert_eq!(pruned * 6, dense * 2);
        assert_eq!(sops_from_position_counts(&desc(6), 0, &[1, 2]), None);
    }

    #[test]
    fn activity_adds_and_divides() {
        let mut a = Activity {
            images: 2,
            layers: vec![LayerActivity {
                neuron_steps: 10,
                spikes: 4,
                sops: 40,
            }],
        };
        a.add(&a.clone());
        assert_eq!(a.images, 4);
        assert_eq!(a.layers[0].rate(), 0.4);
        assert_eq!(a.sops_per_image(), 20.0);
        assert_eq!(a.spikes_per_image(), 2.0);
    }

    #[test]
    fn a_residual_inner_convs_spikes_drive_its_blocks_second_conv() {
        let d = ModelDescription {
            layers: vec![ConvLayer {
                filters: 4,
                in_channels: 8,
                kernel: 3,
                out_height: 3,
                out_width: 3,
                fixed_input: true,
                consumer_filters: 7,
                ..Default::default()
            }],
            classes: 10,
            timesteps: 1,
            classifier_features: 8,
            ..Default::default()
        };
        let fan = fan_out(&d, 0).unwrap();
        assert_eq!(fan[4], 7 * 9, "centre");
        assert_eq!(fan[0], 7 * 4, "corner");
        assert_eq!(fan[1], 7 * 6, "edge");
    }
}
