//! Energy estimate of one image through a network, from its measured [`Activity`]:
//! `E_AC * SOPs + E_MAC * first-layer MACs` for the SNN (the first layer's input is real-valued
//! pixels, so it multiplies; every later synapse only accumulates a spike), and `E_MAC * MACs of
//! one pass` for the same network run as an ANN.
//!
//! Defaults are the 45 nm figures SNN papers use (Horowitz, ISSCC 2014): 0.9 pJ per 32-bit float
//! add, 4.6 pJ per 32-bit float multiply-add. The first layer's MACs count every step
//! (`T * k^2 * in * filters * H * W`, as [`crate::cost`] counts them); the ANN runs once, so its
//! MACs are the network's MACs divided by T.

use serde::{Deserialize, Serialize};

use crate::activity::{ratio, Activity};
use crate::v1::ModelDescription;

/// pJ per accumulate (a spike through one synapse) by default.
pub const DEFAULT_E_AC_PJ: f64 = 0.9;
/// pJ per multiply-accumulate by default.
pub const DEFAULT_E_MAC_PJ: f64 = 4.6;

/// Energy per operation, in picojoules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyModel {
    #[serde(default = "default_e_ac")]
    pub e_ac_pj: f64,
    #[serde(default = "default_e_mac")]
    pub e_mac_pj: f64,
}

fn default_e_ac() -> f64 {
    DEFAULT_E_AC_PJ
}

fn default_e_mac() -> f64 {
    DEFAULT_E_MAC_PJ
}

impl Default for EnergyModel {
    fn default() -> Self {
        EnergyModel {
            e_ac_pj: DEFAULT_E_AC_PJ,
            e_mac_pj: DEFAULT_E_MAC_PJ,
        }
    }
}

/// One conv layer's activity per image over all T steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSops {
    pub spikes_per_image: f64,
    /// Fraction of neurons firing per step.
    pub spike_rate: f64,
    pub sops_per_image: f64,
}

/// Spikes, SOPs and energy of one image over all T steps (the ANN figures: one pass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyEstimate {
    /// Images the activity was counted on.
    pub images: u64,
    pub layers: Vec<LayerSops>,
    pub spikes_per_image: f64,
    pub sops_per_image: f64,
    /// MACs of the first conv layer over all T steps (its input is not spikes).
    pub first_layer_macs: u64,
    /// MACs of the same network as an ANN, one pass.
    pub ann_macs: u64,
    pub e_ac_pj: f64,
    pub e_mac_pj: f64,
    /// `e_ac_pj * sops_per_image + e_mac_pj * first_layer_macs`.
    pub energy_pj: f64,
    /// `e_mac_pj * ann_macs`.
    pub ann_energy_pj: f64,
}

/// MACs over all T steps of the conv that reads the analog image: `input_layer_macs` when the
/// description sets it (a residual network's stem), otherwise layer 0's.
pub fn first_layer_macs(desc: &ModelDescription) -> u64 {
    let t = u64::from(desc.timesteps);
    if desc.input_layer_macs > 0 {
        return t.saturating_mul(desc.input_layer_macs);
    }
    desc.layers.first().map_or(0, |l| {
        [
            l.kernel,
            l.kernel,
            l.in_channels,
            l.filters,
            l.out_height,
            l.out_width,
        ]
        .into_iter()
        .fold(t, |acc, v| acc.saturating_mul(u64::from(v)))
    })
}

/// MACs of `desc` run once as an ANN (its MACs over T steps divided by T).
pub fn ann_macs(desc: &ModelDescription) -> u64 {
    crate::cost::dense_macs(desc) / u64::from(desc.timesteps.max(1))
}

/// The estimate for `activity` measured on the network `desc` (its current, pruned shape).
pub fn estimate(
    activity: &Activity,
    desc: &ModelDescription,
    model: &EnergyModel,
) -> EnergyEstimate {
    let first = first_layer_macs(desc);
    let ann = ann_macs(desc);
    let sops = activity.sops_per_image();
    EnergyEstimate {
        images: activity.images,
        layers: activity
            .layers
            .iter()
            .map(|l| LayerSops {
                spikes_per_image: ratio(l.spikes, activity.images),
                spike_rate: l.rate(),
                sops_per_image: ratio(l.sops, activity.images),
            })
            .collect(),
        spikes_per_image: activity.spikes_per_image(),
        sops_per_image: sops,
        first_layer_macs: first,
        ann_macs: ann,
        e_ac_pj: model.e_ac_pj,
        e_mac_pj: model.e_mac_pj,
        energy_pj: model.e_ac_pj * sops + model.e_mac_pj * first as f64,
        ann_energy_pj: model.e_mac_pj * ann as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::LayerActivity;
    use crate::v1::ConvLayer;

    #[test]
    fn energy_is_accumulates_plus_first_layer_multiplies() {
        let conv = |filters, in_channels| ConvLayer {
            filters,
            in_channels,
            kernel: 3,
            out_height: 4,
            out_width: 4,
            pool_after: false,
            ..Default::default()
        };
        let desc = ModelDescription {
            layers: vec![conv(2, 1), conv(3, 2)],
            classifier_spatial: 16,
            classes: 10,
            timesteps: 4,
            ..Default::default()
        };
        let activity = Activity {
            images: 2,
            layers: vec![
                LayerActivity {
                    neuron_steps: 256,
                    spikes: 64,
                    sops: 1000,
                },
                LayerActivity {
                    neuron_steps: 384,
                    spikes: 10,
                    sops: 100,
                },
            ],
        };
        let e = estimate(&activity, &desc, &EnergyModel::default());
        assert_eq!(e.first_layer_macs, 4 * 9 * 2 * 16);
        assert_eq!(e.ann_macs, 9 * 2 * 16 + 9 * 2 * 3 * 16 + 3 * 16 * 10);
        assert_eq!(e.sops_per_image, 550.0);
        assert_eq!(e.layers[0].spike_rate, 0.25);
        assert!((e.energy_pj - (0.9 * 550.0 + 4.6 * 1152.0)).abs() < 1e-9);
        assert!((e.ann_energy_pj - 4.6 * e.ann_macs as f64).abs() < 1e-9);
    }
}
