//! What the report reads from a results directory, and where it looks for baselines.
//!
//! From `OUT_DIR`: `summary.json` (required: dense, answer, settings), `iterations.json` (every
//! iteration's network), `fronts.json` (each layer's first fronts; the last generation of each
//! iteration is drawn), `checkpoint.json` (the stop limits, if present).
//!
//! Baselines (`ccsrp prune`'s `summary.json`s): every `--baseline PATH` (a summary file, or a
//! directory holding one), and, found on their own, the `summary.json` of every subdirectory of
//! `OUT_DIR` and of every sibling directory of `OUT_DIR` (`experiments/run.sh` puts `ccsrp/`,
//! `l1-match/`, `random-50/`, ... side by side) that is not a job's (`method` other than "ccsrp")
//! and was pruned from the same dense model (same `dense.model` sha256): only those compare.
//!
//! Strong robustness (`ccsrp eval --strong --json`, as `experiments/run.sh` writes it): for a
//! network in directory D, `D/strong.json` or `D/../strong-<name of D>.json`; for the dense
//! network `OUT_DIR/strong-dense.json` or `OUT_DIR/../strong-dense.json`. The count used is
//! `worst_case_correct` of `images`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ReportError;
use crate::outcome::IterationRecord;
use crate::results::NetworkSummary;
use ccsrp_proto::energy::EnergyEstimate;

/// One entry of `iterations.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Iteration {
    #[serde(flatten)]
    pub record: IterationRecord,
    #[serde(default)]
    pub energy: Option<EnergyEstimate>,
}

/// One point of a front in `fronts.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct FrontPoint {
    pub clean: u64,
    pub adversarial: u64,
    pub macs: u64,
    #[serde(default)]
    pub representative: bool,
}

/// One layer's first front after one generation.
#[derive(Debug, Clone, Deserialize)]
pub struct Front {
    pub iteration: u32,
    pub generation: u32,
    pub layer: u32,
    pub points: Vec<FrontPoint>,
}

/// A network of the summary table with where it came from.
#[derive(Debug, Clone)]
pub struct Network {
    /// "dense", "ccsrp", or a baseline's directory name.
    pub name: String,
    /// "dense", "ccsrp" or the baseline's criterion.
    pub method: String,
    pub summary: NetworkSummary,
    /// Test drops versus the dense network (percentage points), clean and PGD.
    pub test_drops: (f64, f64),
    /// Strong robust accuracy (worst case per image), percent, where measured.
    pub strong: Option<f64>,
}

/// Everything one report is drawn from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub dir: PathBuf,
    /// `summary.json` as it is (its settings are listed as they are).
    pub summary: serde_json::Value,
    pub dense: Network,
    pub answer: Network,
    pub iterations: Vec<Iteration>,
    pub fronts: Vec<Front>,
    pub baselines: Vec<Network>,
    /// `[stop]` max clean and robust drops (percentage points), from the checkpoint.
    pub stop: Option<(f64, f64)>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let text = std::fs::read(path).map_err(|error| ReportError::Read {
        path: path.display().to_string(),
        error,
    })?;
    serde_json::from_slice(&text).map_err(|e| ReportError::Parse {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn field<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    name: &str,
    path: &Path,
) -> Result<T, ReportError> {
    let v = value.get(name).cloned().ok_or_else(|| ReportError::Parse {
        path: path.display().to_string(),
        detail: format!("no field `{name}`"),
    })?;
    serde_json::from_value(v).map_err(|e| ReportError::Parse {
        path: path.display().to_string(),
        detail: format!("field `{name}`: {e}"),
    })
}

fn number(value: &serde_json::Value, name: &str) -> f64 {
    value.get(name).and_then(|v| v.as_f64()).unwrap_or(0.0)
}

/// Strong robust accuracy in percent from the first readable `ccsrp eval --strong --json` file.
fn strong(candidates: &[PathBuf]) -> Option<f64> {
    candidates.iter().find_map(|p| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        let correct = v.get("worst_case_correct")?.as_f64()?;
        let images = v.get("images")?.as_f64()?;
        (images > 0.0).then(|| 100.0 * correct / images)
    })
}

/// Strong files of the network in `dir`.
fn strong_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join("strong.json")];
    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        out.push(parent.join(format!("strong-{}.json", name.to_string_lossy())));
    }
    out
}

/// The stop limits from anywhere in the checkpoint (the engine's config holds one `stop`).
fn stop_limits(value: &serde_json::Value) -> Option<(f64, f64)> {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(c), Some(r)) = (
                map.get("max_clean_drop").and_then(|v| v.as_f64()),
                map.get("max_robust_drop").and_then(|v| v.as_f64()),
            ) {
                return Some((c, r));
            }
            map.values().find_map(stop_limits)
        }
        serde_json::Value::Array(items) => items.iter().find_map(stop_limits),
        _ => None,
    }
}

/// Directories that may hold a baseline found on its own: `dir`'s subdirectories and siblings.
fn candidate_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut list = |d: &Path| {
        if let Ok(entries) = std::fs::read_dir(d) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .filter(|p| p.canonicalize().map_or(true, |c| c != canonical))
                .collect();
            dirs.sort();
            out.extend(dirs);
        }
    };
    list(dir);
    if let Some(parent) = canonical.parent() {
        list(parent);
    }
    out
}

fn baseline(
    path: &Path,
    dense_model: &str,
    explicit: bool,
) -> Result<Option<Network>, ReportError> {
    let file = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    if !explicit && !file.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value = match read_json(&file) {
        Ok(v) => v,
        Err(e) if explicit => return Err(e),
        Err(_) => return Ok(None),
    };
    let method = value
        .get("method")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let dense: Option<NetworkSummary> = field(&value, "dense", &file).ok();
    let same_dense = dense.as_ref().is_some_and(|d| d.model == dense_model);
    if !explicit && (method == "ccsrp" || !same_dense) {
        return Ok(None);
    }
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| method.clone());
    let summary = match field(&value, "pruned", &file) {
        Ok(s) => s,
        Err(e) if explicit => return Err(e),
        Err(_) => return Ok(None),
    };
    Ok(Some(Network {
        name,
        method,
        summary,
        test_drops: (
            number(&value, "test_clean_drop"),
            number(&value, "test_robust_drop"),
        ),
        strong: strong(&strong_files(&dir)),
    }))
}

/// Reads the results in `dir` and the baselines (`explicit` first, then those found on their own).
pub fn read(dir: &Path, explicit: &[PathBuf]) -> Result<Inputs, ReportError> {
    let summary_path = dir.join("summary.json");
    let summary: serde_json::Value = read_json(&summary_path)?;
    let dense_summary: NetworkSummary = field(&summary, "dense", &summary_path)?;
    let answer_summary: NetworkSummary = field(&summary, "pruned", &summary_path)?;
    let mut dense_strong = vec![dir.join("strong-dense.json")];
    if let Some(parent) = dir.parent() {
        dense_strong.push(parent.join("strong-dense.json"));
    }
    let dense = Network {
        name: "dense".into(),
        method: "dense".into(),
        strong: strong(&dense_strong),
        summary: dense_summary,
        test_drops: (0.0, 0.0),
    };
    let answer = Network {
        name: "ccsrp".into(),
        method: summary
            .get("method")
            .and_then(|m| m.as_str())
            .unwrap_or("ccsrp")
            .to_string(),
        strong: strong(&strong_files(dir)),
        summary: answer_summary,
        test_drops: (
            number(&summary, "test_clean_drop"),
            number(&summary, "test_robust_drop"),
        ),
    };
    let iterations: Vec<Iteration> = read_json(&dir.join("iterations.json"))?;
    let fronts: Vec<Front> = read_json(&dir.join("fronts.json"))?;
    let stop = read_json::<serde_json::Value>(&dir.join("checkpoint.json"))
        .ok()
        .and_then(|v| stop_limits(&v));
    let mut baselines = Vec::new();
    for path in explicit {
        baselines.extend(baseline(path, &dense.summary.model, true)?);
    }
    let given: Vec<PathBuf> = explicit
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    for d in candidate_dirs(dir) {
        let same = |p: PathBuf| p.canonicalize().is_ok_and(|c| given.contains(&c));
        if same(d.clone()) || same(d.join("summary.json")) {
            continue;
        }
        baselines.extend(baseline(&d, &dense.summary.model, false)?);
    }
    Ok(Inputs {
        dir: dir.to_path_buf(),
        summary,
        dense,
        answer,
        iterations,
        fronts,
        baselines,
        stop,
    })
}

impl Inputs {
    /// The fronts after the last generation of each iteration, for `layer`, by iteration.
    pub fn last_fronts(&self, layer: u32) -> Vec<&Front> {
        let mut out: Vec<&Front> = Vec::new();
        for f in self.fronts.iter().filter(|f| f.layer == layer) {
            match out.iter_mut().find(|o| o.iteration == f.iteration) {
                Some(o) if o.generation < f.generation => *o = f,
                Some(_) => {}
                None => out.push(f),
            }
        }
        out.sort_by_key(|f| f.iteration);
        out
    }

    /// Layers that have fronts.
    pub fn front_layers(&self) -> Vec<u32> {
        let mut layers: Vec<u32> = self.fronts.iter().map(|f| f.layer).collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }
}
