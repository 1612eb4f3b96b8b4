//! Each layer's first front after the last generation of every iteration: clean against
//! adversarial correct count on the eval split, each candidate coloured by its network's MACs
//! (dark = fewer, yellow = more, one scale for the whole figure), the representative ringed. One
//! SVG per layer (`fronts_layer<L>.svg`), one panel per iteration (fronts of different iterations
//! score different networks on different adversarial shards, so they share no axes).

use super::chart::{scale_colour, Figure, Series, Style, PALETTE};
use super::inputs::Inputs;

/// File name of layer `layer`'s figure.
pub fn file(layer: u32) -> String {
    format!("fronts_layer{layer}.svg")
}

/// The panels of layer `layer` (one per iteration), and the MACs range of the colour scale.
pub fn panels(inputs: &Inputs, layer: u32) -> (Vec<Figure>, (u64, u64)) {
    let fronts = inputs.last_fronts(layer);
    let macs = fronts.iter().flat_map(|f| f.points.iter().map(|p| p.macs));
    let lo = macs.clone().min().unwrap_or(0);
    let hi = macs.max().unwrap_or(0);
    let panels = fronts
        .iter()
        .map(|front| {
            let mut f = Figure::new(
                &format!(
                    "iteration {}, generation {}",
                    front.iteration, front.generation
                ),
                "clean correct",
                "adversarial correct",
            );
            let mut s = Series::new("", PALETTE[0], Style::Markers);
            for p in &front.points {
                s.points.push((p.clean as f64, p.adversarial as f64));
                s.point_colours
                    .push(scale_colour(p.macs as f64, lo as f64, hi as f64));
                if p.representative {
                    f.rings.push((p.clean as f64, p.adversarial as f64));
                }
            }
            f.series.push(s);
            f
        })
        .collect();
    (panels, (lo, hi))
}
