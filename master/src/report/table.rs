//! The report's tables as HTML: the summary table (dense, answer, baselines; test split) and the
//! job's settings as `summary.json` lists them (every field but the two networks, flattened).

use std::fmt::Write as _;

use super::inputs::{Inputs, Network};

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Column headers of the summary table.
pub const COLUMNS: [&str; 13] = [
    "network",
    "method",
    "clean %",
    "FGSM %",
    "PGD %",
    "strong robust %",
    "MACs",
    "parameters",
    "SOPs / image",
    "energy / image (SNN)",
    "energy / image (as ANN)",
    "clean drop (pp)",
    "PGD drop (pp)",
];

fn row(n: &Network) -> [String; 13] {
    let s = &n.summary;
    let energy = s.energy.as_ref();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    [
        n.name.clone(),
        n.method.clone(),
        format!("{:.2}", s.clean_accuracy),
        format!("{:.2}", s.fgsm_accuracy),
        format!("{:.2}", s.pgd_accuracy),
        opt(n.strong.map(|v| format!("{v:.2}"))),
        s.macs.to_string(),
        s.parameters.to_string(),
        opt(energy.map(|e| format!("{:.0}", e.sops_per_image))),
        opt(energy.map(|e| format!("{:.2} uJ", e.energy_pj * 1e-6))),
        opt(energy.map(|e| format!("{:.2} uJ", e.ann_energy_pj * 1e-6))),
        format!("{:.2}", n.test_drops.0),
        format!("{:.2}", n.test_drops.1),
    ]
}

/// The networks of the table, in row order.
pub fn networks(inputs: &Inputs) -> Vec<&Network> {
    let mut out = vec![&inputs.dense, &inputs.answer];
    out.extend(&inputs.baselines);
    out
}

/// The summary table.
pub fn summary_html(inputs: &Inputs) -> String {
    let mut html = String::from("<table class=\"summary\">\n<tr>");
    for c in COLUMNS {
        let _ = write!(html, "<th>{}</th>", escape(c));
    }
    html.push_str("</tr>\n");
    for n in networks(inputs) {
        html.push_str("<tr>");
        for cell in row(n) {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// `key = value` rows of the settings: `summary.json` without the networks, then the stop
/// limits and the energy per operation.
pub fn settings_rows(inputs: &Inputs) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    if let serde_json::Value::Object(map) = &inputs.summary {
        for (k, v) in map {
            if k != "dense" && k != "pruned" {
                flatten(k, v, &mut rows);
            }
        }
    }
    if let Some((clean, robust)) = inputs.stop {
        rows.push(("stop.max_clean_drop".into(), clean.to_string()));
        rows.push(("stop.max_robust_drop".into(), robust.to_string()));
    }
    if let Some(e) = &inputs.answer.summary.energy {
        rows.push(("energy.e_ac_pj".into(), e.e_ac_pj.to_string()));
        rows.push(("energy.e_mac_pj".into(), e.e_mac_pj.to_string()));
    }
    rows
}

/// The settings table.
pub fn settings_html(inputs: &Inputs) -> String {
    let mut html = String::from("<table class=\"settings\">\n");
    for (k, v) in settings_rows(inputs) {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&k),
            escape(&v)
        );
    }
    html.push_str("</table>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn settings_flatten_nested_fields() {
        let mut rows = Vec::new();
        flatten("", &serde_json::json!({"a": {"b": 1, "c": "x"}}), &mut rows);
        assert_eq!(
            rows,
            vec![("a.b".into(), "1".into()), ("a.c".into(), "x".into())]
        );
    }
}
