//! The report end to end: a small job (`ccsrp run` on a dense model from `ccsrp train`) leaves
//! `report.html` and its SVGs; after an L1 baseline (`ccsrp prune --match`, in a sibling
//! directory) `ccsrp report` draws it too. Every SVG parses as XML and each plot holds the series
//! and points the results call for (read back by the drawing contract of
//! `ccsrp_master::report::chart`: one filled circle of radius 4 per point in its series' colour,
//! one unfilled ring of radius 8 per highlighted point, one filled rect per bar plus one in the
//! legend). The page opens in headless Chromium (Debian's `chromium`) without a console message
//! and its screenshot is not blank. Without chromium the test fails: it never skips.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{bin, ccsrp, write_job};

/// Series colours in order (`chart::PALETTE`).
const PALETTE: [&str; 6] = [
    "#1F77B4", "#D62728", "#2CA02C", "#FF7F0E", "#9467BD", "#8C564B",
];

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The finished job's out dir (`<dir>/out`) with an L1 baseline beside it (`<dir>/l1`), made
/// once for every test of this file in cargo's scratch dir for tests (remade on each run, left
/// there to look at: `<target>/tmp/report-e2e/out/report.html`).
fn finished_job() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-e2e");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the last run's report-e2e");
        }
        std::fs::create_dir_all(&dir).expect("create report-e2e");
        let dense = common::train_small_dense(&dir);
        let job = write_job(&dir, &format!("[model]\npath = {dense:?}\n"));
        let out = dir.join("out");
        let run = Command::new(bin())
            .args(["run", "--workers", "1", "--config"])
            .arg(&job)
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .env_remove("CCSRP_TOKEN")
            .output()
            .expect("run ccsrp run");
        assert!(run.status.success(), "ccsrp run: {}", stderr(&run));
        assert!(
            out.join("report.html").is_file(),
            "the job wrote no report.html"
        );
        let summary = out.join("summary.json");
        let prune = ccsrp(&[
            "prune",
            "--model",
            &dense,
            "--method",
            "l1",
            "--match",
            summary.to_str().unwrap(),
            "--out",
            dir.join("l1").to_str().unwrap(),
        ]);
        assert!(prune.status.success(), "ccsrp prune: {}", stderr(&prune));
        let report = ccsrp(&["report", out.to_str().unwrap()]);
        assert!(report.status.success(), "ccsrp report: {}", stderr(&report));
        assert_eq!(
            String::from_utf8_lossy(&report.stdout).trim(),
            out.join("report.html").display().to_string()
        );
        out
    })
}

/// Counts of the drawing primitives of one SVG.
struct Svg {
    /// Filled markers (radius 4) by fill colour.
    markers: BTreeMap<String, usize>,
    /// Unfilled rings (radius 8).
    rings: usize,
    /// Filled rects by colour.
    rects: BTreeMap<String, usize>,
    texts: Vec<String>,
}

fn svg(path: &Path) -> Svg {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut out = Svg {
        markers: BTreeMap::new(),
        rings: 0,
        rects: BTreeMap::new(),
        texts: Vec::new(),
    };
    for n in doc.descendants() {
        let fill = n.attribute("fill").unwrap_or("").to_ascii_uppercase();
        match n.tag_name().name() {
            "circle" if n.attribute("r") == Some("4") && fill != "NONE" => {
                *out.markers.entry(fill).or_default() += 1
            }
            "circle" if n.attribute("r") == Some("8") && fill == "NONE" => out.rings += 1,
            "rect" => *out.rects.entry(fill).or_default() += 1,
            "text" => out.texts.push(n.text().unwrap_or("").trim().to_string()),
            _ => {}
        }
    }
    out
}

#[test]
fn every_figure_holds_the_series_and_points_of_the_results() {
    let out = finished_job();
    let iterations = json(&out.join("iterations.json"));
    let iterations = iterations.as_array().expect("iterations.json is a list");
    let k = iterations.len();
    assert!(k >= 1);
    let summary = json(&out.join("summary.json"));
    let layers = summary["dense"]["kept_filters"].as_array().unwrap().len();
    // SOPs and energy are in the summary.
    for net in ["dense", "pruned"] {
        let e = &summary[net]["energy"];
        assert!(e["sops_per_image"].as_f64().unwrap() > 0.0, "{net}: {e}");
        assert!(e["energy_pj"].as_f64().unwrap() > 0.0, "{net}: {e}");
        assert_eq!(e["layers"].as_array().unwrap().len(), layers);
        assert_eq!(e["e_ac_pj"], 0.9);
    }
    assert!(iterations[0]["energy"]["sops_per_image"].as_f64().unwrap() > 0.0);

    // Accuracy against MACs and energy: dense (clean, PGD), the path of k iterations (clean, PGD),
    // the L1 baseline (clean, PGD); the answer ringed twice; the stop limits in the legend.
    for file in ["accuracy_macs.svg", "accuracy_energy.svg"] {
        let s = svg(&out.join(file));
        let expected = [1, 1, k, k, 1, 1];
        for (colour, n) in PALETTE.iter().zip(expected) {
            assert_eq!(
                s.markers.get(*colour).copied().unwrap_or(0),
                n,
                "{file} {colour}"
            );
        }
        assert_eq!(s.markers.len(), 6, "{file}: {:?}", s.markers);
        assert_eq!(s.rings, 2, "{file}");
        assert!(
            s.texts.iter().any(|t| t == "l1 clean"),
            "{file}: {:?}",
            s.texts
        );
        assert_eq!(
            s.texts.iter().filter(|t| t.contains("stop limit")).count(),
            2,
            "{file}"
        );
    }

    // Filters kept: the dense reference and each iteration, one point per layer.
    let s = svg(&out.join("filters.svg"));
    assert_eq!(s.markers.len(), k + 1, "{:?}", s.markers);
    for colour in &PALETTE[..k + 1] {
        assert_eq!(s.markers[*colour], layers);
    }

    // Fronts: per layer, every point of each iteration's last-generation front, each front's
    // representative ringed.
    let fronts = json(&out.join("fronts.json"));
    for layer in 0..layers {
        let mut last: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
        for f in fronts.as_array().unwrap() {
            if f["layer"].as_u64() != Some(layer as u64) {
                continue;
            }
            let (it, gen) = (
                f["iteration"].as_u64().unwrap(),
                f["generation"].as_u64().unwrap(),
            );
            let points = f["points"].as_array().unwrap().len();
            let e = last.entry(it).or_insert((gen, points));
            if gen >= e.0 {
                *e = (gen, points);
            }
        }
        let s = svg(&out.join(format!("fronts_layer{layer}.svg")));
        let points: usize = last.values().map(|v| v.1).sum();
        assert_eq!(s.markers.values().sum::<usize>(), points, "layer {layer}");
        assert_eq!(
            s.rings,
            last.len(),
            "layer {layer}: one representative per front"
        );
    }

    // Spike rate and SOPs: dense and answer, one bar per layer (plus the legend's).
    for file in ["spike_rate.svg", "sops.svg"] {
        let s = svg(&out.join(file));
        for colour in &PALETTE[..2] {
            assert_eq!(
                s.rects.get(*colour).copied(),
                Some(layers + 1),
                "{file} {colour}"
            );
        }
    }

    // The page holds every figure inline and fetches nothing.
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 5 + layers);
    for banned in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!page.contains(banned), "report.html contains {banned}");
    }
    for row in ["<td>dense</td>", "<td>ccsrp</td>", "<td>l1</td>"] {
        assert!(page.contains(row), "summary table lacks {row}");
    }
}

#[test]
fn the_page_opens_in_headless_chromium_and_is_not_blank() {
    let out = finished_job();
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!("headless Chromium is required: install Debian's `chromium` (apt-get install chromium)")
        });
    let shot = out.join("screenshot.png");
    let profile = out.join("chromium-profile");
    let page = std::fs::canonicalize(out.join("report.html")).unwrap();
    let run = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args([
            "--enable-logging=stderr",
            "--log-level=0",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let log = stderr(&run);
    assert!(run.status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged: {console:?}");
    let image = image::open(&shot)
        .unwrap_or_else(|e| panic!("{}: {e}", shot.display()))
        .to_rgb8();
    let total = image.pixels().len();
    let inked = image
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    assert!(
        inked * 100 > total,
        "screenshot nearly blank: {inked} of {total} pixels not white"
    );
    // Colour, not only text: the figures' markers are drawn.
    let blue = image.pixels().filter(|p| p.0 == [31, 119, 180]).count();
    assert!(
        blue > 20,
        "no figure colours in the screenshot ({blue} pixels)"
    );
}

#[test]
fn a_missing_results_dir_or_baseline_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-out");
    let run = ccsrp(&["report", missing.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("no-such-out/summary.json"),
        "{}",
        stderr(&run)
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let out = finished_job();
    for (baseline, expected) in [
        (dir.path().join("nope"), "--baseline"),
        (bad.clone(), "no field `pruned`"),
    ] {
        let run = ccsrp(&[
            "report",
            out.to_str().unwrap(),
            "--baseline",
            baseline.to_str().unwrap(),
        ]);
        assert!(!run.status.success(), "{baseline:?} accepted");
        let text = stderr(&run);
        assert!(
            text.contains(expected)
                && text.contains(baseline.file_name().unwrap().to_str().unwrap()),
            "{text}"
        );
    }
}
