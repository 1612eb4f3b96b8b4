//! The HTML page: title, the summary table, every figure inline (its SVG as is) with its
//! caption and file name, and the settings. One file, nothing fetched: no scripts, no external
//! styles or fonts.

use std::fmt::Write as _;

use super::inputs::Inputs;
use super::table::{escape, settings_html, summary_html};
use super::Drawn;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;\
text-align:right;font-size:14px}table.settings th,table.settings td{text-align:left}\
figure{margin:2em 0}figcaption{font-size:14px;color:#444;max-width:760px}svg{max-width:100%;height:auto}";

/// The page for `inputs` with the `drawn` figures.
pub fn html(inputs: &Inputs, drawn: &[Drawn]) -> String {
    let title = format!("ccsrp report: {}", inputs.dir.display());
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    html.push_str(
        "<h2>Summary</h2>\n<p>Test split. Accuracies in percent; drops in percentage points \
         against the dense network; MACs, SOPs and energy per image over all T steps (SOPs and \
         energy measured on the clean test images; energy = E_AC x SOPs + E_MAC x first-layer \
         MACs, the ANN's = E_MAC x MACs of one pass).</p>\n",
    );
    html.push_str(&summary_html(inputs));
    html.push_str("<h2>Figures</h2>\n");
    for d in drawn {
        let svg = d
            .svg
            .trim_start_matches(|c: char| c != '<')
            .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = write!(
            html,
            "<figure id=\"{}\">\n{}\n<figcaption>{} (<code>{}</code>)</figcaption>\n</figure>\n",
            escape(&d.file),
            svg.trim(),
            escape(&d.caption),
            escape(&d.file)
        );
    }
    html.push_str("<h2>Settings</h2>\n");
    html.push_str(&settings_html(inputs));
    html.push_str("</body>\n</html>\n");
    html
}
