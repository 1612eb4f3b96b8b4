//! `report.html` and its figures: the view of a finished job's results for people.
//!
//! [`write`] reads a results directory ([`inputs`]: summary, iterations, fronts, checkpoint, and
//! baselines found beside it or named), builds each figure as data ([`chart::Figure`]), draws it
//! with `plotters`' SVG backend, and writes every figure as its own `.svg` plus one self-contained
//! `report.html` holding them inline (no scripts, no fonts or styles fetched). The master writes it
//! with the other results when a job ends; `ccsrp report OUT_DIR` draws it again (e.g. once
//! baselines have run).
//!
//! - [`chart`]: the figure model and its drawing (the SVG contract the tests read back);
//! - [`inputs`]: what is read, and where baselines and strong-attack results are looked for;
//! - [`accuracy`]: test accuracy against MACs and against energy, with baselines and stop limits;
//! - [`filters`]: filters kept per layer per iteration;
//! - [`fronts`]: each layer's last first front of every iteration, coloured by MACs;
//! - [`spikes`]: spike rate and SOPs per layer, dense against the answer;
//! - [`table`]: the summary and settings tables;
//! - [`page`]: the HTML page.

pub mod accuracy;
pub mod chart;
pub mod filters;
pub mod fronts;
pub mod inputs;
pub mod page;
pub mod spikes;
pub mod table;

use std::path::{Path, PathBuf};

use crate::artifact_store::write_atomic;

/// The page's file name in the results directory.
pub const PAGE: &str = "report.html";

/// A report that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not the results file expected: {detail}")]
    Parse { path: String, detail: String },
    #[error("{0}")]
    Draw(#[from] chart::DrawError),
    #[error("writing the report: {0}")]
    Write(#[from] crate::artifact_store::StoreError),
}

/// Whether `name` is a file [`write`] writes: the page or one of its figures (so a job starting
/// afresh can remove an earlier run's report).
pub fn is_report_file(name: &str) -> bool {
    let fixed = [
        PAGE,
        accuracy::Cost::Macs.file(),
        accuracy::Cost::Energy.file(),
        filters::FILE,
        spikes::Measure::SpikeRate.file(),
        spikes::Measure::Sops.file(),
    ];
    fixed.contains(&name)
        || name
            .strip_prefix("fronts_layer")
            .and_then(|rest| rest.strip_suffix(".svg"))
            .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// What to draw beyond the results directory itself.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Baseline summaries (files or directories holding `summary.json`), drawn before those found
    /// on their own.
    pub baselines: Vec<PathBuf>,
}

/// One drawn figure.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// File name in the results directory.
    pub file: String,
    /// What it shows, for the page.
    pub caption: String,
    pub svg: String,
}

/// Every figure of the report, drawn.
pub fn figures(inputs: &inputs::Inputs) -> Result<Vec<Drawn>, ReportError> {
    let mut out = Vec::new();
    for cost in [accuracy::Cost::Macs, accuracy::Cost::Energy] {
        let figure = accuracy::figure(inputs, cost);
        let has_points = figure.series.iter().any(|s| !s.points.is_empty());
        if has_points {
            out.push(Drawn {
                file: cost.file().into(),
                caption: "Clean and PGD test accuracy; the search's iterations as a path, the \
                          answer ringed, baselines as single points; horizontal lines: the dense \
                          accuracy minus the stop rule's allowed drops."
                    .into(),
                svg: chart::render(&figure)?,
            });
        }
    }
    out.push(Drawn {
        file: filters::FILE.into(),
        caption: "Filters kept in each conv layer by each iteration's network (dense: the \
                  reference)."
            .into(),
        svg: chart::render(&filters::figure(inputs))?,
    });
    for layer in inputs.front_layers() {
        let (panels, (lo, hi)) = fronts::panels(inputs, layer);
        let scale = format!("colour: MACs, dark {lo} to yellow {hi}; ringed: representative");
        out.push(Drawn {
            file: fronts::file(layer),
            svg: chart::render_panels(
                &format!("Layer {layer}: first fronts (eval split)"),
                &panels,
                3,
                &scale,
            )?,
            caption: format!(
                "Layer {layer}: the first front after each iteration's last generation, clean \
                 against adversarial correct count on the eval split; {scale}."
            ),
        });
    }
    for measure in [spikes::Measure::SpikeRate, spikes::Measure::Sops] {
        if let Some(figure) = spikes::figure(inputs, measure) {
            out.push(Drawn {
                file: measure.file().into(),
                caption: "Dense network against the answer, measured on the clean test images."
                    .into(),
                svg: chart::render(&figure)?,
            });
        }
    }
    Ok(out)
}

/// Draws the report of the results in `dir`: every figure as `dir/<figure>.svg` and the page as
/// `dir/report.html`; returns the page's path.
pub fn write(dir: &Path, options: &ReportOptions) -> Result<PathBuf, ReportError> {
    let inputs = inputs::read(dir, &options.baselines)?;
    let drawn = figures(&inputs)?;
    for d in &drawn {
        write_atomic(&dir.join(&d.file), d.svg.as_bytes())?;
    }
    let path = dir.join(PAGE);
    write_atomic(&path, page::html(&inputs, &drawn).as_bytes())?;
    Ok(path)
}
