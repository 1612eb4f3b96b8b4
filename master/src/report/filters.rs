//! Filters kept per layer, iteration by iteration: one path per network over the layers, the
//! dense network first as the reference (series `dense`, then `iteration K`; one point per layer).

use super::chart::{Figure, Style};
use super::inputs::Inputs;

pub const FILE: &str = "filters.svg";

/// The figure of kept filters per layer.
pub fn figure(inputs: &Inputs) -> Figure {
    let mut f = Figure::new("Filters kept per layer", "conv layer", "filters kept");
    f.integer_x = true;
    let path = |kept: &[u32]| -> Vec<(f64, f64)> {
        kept.iter()
            .enumerate()
            .map(|(l, &k)| (l as f64, f64::from(k)))
            .collect()
    };
    f.push(
        "dense",
        Style::Path,
        path(&inputs.dense.summary.kept_filters),
    );
    for it in &inputs.iterations {
        let r = &it.record.network;
        let kept: Vec<u32> = r.kept_filters.iter().map(|k| k.len() as u32).collect();
        let label = if it.record.within_limits {
            format!("iteration {}", r.iteration)
        } else {
            format!("iteration {} (over the limits)", r.iteration)
        };
        f.push(label, Style::Path, path(&kept));
    }
    f
}
