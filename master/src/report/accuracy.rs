//! Test accuracy (clean and PGD) against cost: the dense network, the search's iterations as a
//! connected path, each baseline, and the stop limits.
//!
//! Series, in order: `dense clean`, `dense PGD` (one point each); `ccsrp clean`, `ccsrp PGD`
//! (one point per iteration, joined in iteration order); per baseline `<name> clean` and
//! `<name> PGD` (one point each). The answer is ringed (clean and PGD). Limits: the dense
//! network's test accuracy minus `[stop]`'s max drops (the stop rule reads validation drops; the
//! line shows where the same drop lies on the test split). Against energy, a network without an
//! energy estimate is left out.

use super::chart::{Figure, Limit, Style};
use super::inputs::{Inputs, Network};
use crate::results::NetworkSummary;

/// The cost on the x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// MACs per image over all T steps, in millions.
    Macs,
    /// Estimated SNN energy per image, in microjoules.
    Energy,
}

impl Cost {
    fn of(self, n: &NetworkSummary) -> Option<f64> {
        match self {
            Cost::Macs => Some(n.macs as f64 / 1e6),
            Cost::Energy => n.energy.as_ref().map(|e| e.energy_pj * 1e-6),
        }
    }

    /// File name of the figure.
    pub fn file(self) -> &'static str {
        match self {
            Cost::Macs => "accuracy_macs.svg",
            Cost::Energy => "accuracy_energy.svg",
        }
    }
}

fn point(cost: Cost, n: &NetworkSummary, robust: bool) -> Option<(f64, f64)> {
    let y = if robust {
        n.pgd_accuracy
    } else {
        n.clean_accuracy
    };
    cost.of(n).map(|x| (x, y))
}

fn single(f: &mut Figure, cost: Cost, n: &Network) {
    for (robust, kind) in [(false, "clean"), (true, "PGD")] {
        let points = point(cost, &n.summary, robust).into_iter().collect();
        f.push(format!("{} {kind}", n.name), Style::Markers, points);
    }
}

/// The figure of accuracy against `cost`.
pub fn figure(inputs: &Inputs, cost: Cost) -> Figure {
    let (title, x_label) = match cost {
        Cost::Macs => (
            "Test accuracy against MACs",
            "MACs per image over all T steps (millions)",
        ),
        Cost::Energy => (
            "Test accuracy against estimated energy",
            "SNN energy per image (uJ)",
        ),
    };
    let mut f = Figure::new(title, x_label, "test accuracy (%)");
    single(&mut f, cost, &inputs.dense);
    let networks: Vec<NetworkSummary> = inputs
        .iterations
        .iter()
        .map(|it| {
            let r = &it.record.network;
            let kept: Vec<u32> = r.kept_filters.iter().map(|k| k.len() as u32).collect();
            let mut s = NetworkSummary::new(
                r.iteration,
                r.model.0.clone(),
                &r.validation,
                &r.test,
                r.macs,
                0,
                kept,
            );
            s.energy = it.energy.clone();
            s
        })
        .collect();
    for (robust, kind) in [(false, "clean"), (true, "PGD")] {
        let points = networks
            .iter()
            .filter_map(|n| point(cost, n, robust))
            .collect();
        f.push(format!("ccsrp {kind}"), Style::Path, points);
    }
    for b in &inputs.baselines {
        single(&mut f, cost, b);
    }
    for robust in [false, true] {
        f.rings.extend(point(cost, &inputs.answer.summary, robust));
    }
    if let Some((clean, robust)) = inputs.stop {
        let d = &inputs.dense.summary;
        f.limits.push(Limit {
            label: format!("dense clean - {clean} pp (stop limit)"),
            y: d.clean_accuracy - clean,
            colour: plotters::style::RGBColor(31, 119, 180),
        });
        f.limits.push(Limit {
            label: format!("dense PGD - {robust} pp (stop limit)"),
            y: d.pgd_accuracy - robust,
            colour: plotters::style::RGBColor(214, 39, 40),
        });
    }
    f
}
