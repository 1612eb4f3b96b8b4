//! Spike rate and synaptic operations per layer, dense against the answer, as grouped bars
//! (series `dense`, `ccsrp`; one bar per layer). Drawn only when both networks carry an energy
//! estimate (spikes counted on the clean test images).

use super::chart::{Figure, Style};
use super::inputs::Inputs;
use ccsrp_proto::energy::{EnergyEstimate, LayerSops};

/// What is measured per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    SpikeRate,
    Sops,
}

impl Measure {
    pub fn file(self) -> &'static str {
        match self {
            Measure::SpikeRate => "spike_rate.svg",
            Measure::Sops => "sops.svg",
        }
    }

    fn of(self, l: &LayerSops) -> f64 {
        match self {
            Measure::SpikeRate => l.spike_rate,
            Measure::Sops => l.sops_per_image / 1e6,
        }
    }
}

/// The figure, or None when a network has no energy estimate.
pub fn figure(inputs: &Inputs, measure: Measure) -> Option<Figure> {
    let dense = inputs.dense.summary.energy.as_ref()?;
    let answer = inputs.answer.summary.energy.as_ref()?;
    let (title, y) = match measure {
        Measure::SpikeRate => (
            "Spike rate per layer (clean test images)",
            "spikes per neuron per step",
        ),
        Measure::Sops => (
            "Synaptic operations per layer (clean test images)",
            "SOPs per image over all T steps (millions)",
        ),
    };
    let mut f = Figure::new(
        title,
        "spiking layer (VGG: each conv layer, the classifier's synapses with the last; ResNet: every LIF, see eval's spiking_layers)",
        y,
    );
    f.bar_width = 0.38;
    f.integer_x = true;
    let bars = |e: &EnergyEstimate, shift: f64| -> Vec<(f64, f64)> {
        e.layers
            .iter()
            .enumerate()
            .map(|(l, s)| (l as f64 + shift, measure.of(s)))
            .collect()
    };
    f.push("dense", Style::Bars, bars(dense, -0.2));
    f.push(inputs.answer.name.clone(), Style::Bars, bars(answer, 0.2));
    Some(f)
}
