#!/usr/bin/env python3
"""One experiment's results table from the files experiments/run.sh leaves in its work dir.

    python3 experiments/table.py WORK_DIR --name NAME

Reads WORK_DIR/ccsrp/summary.json (the job), WORK_DIR/{control,l1-*,random-*}/summary.json
(`ccsrp prune`), WORK_DIR/strong-*.json (`ccsrp eval --strong --json`) and commands.log (wall
times), and writes WORK_DIR/results.md and WORK_DIR/results.json. Every number is copied from
those files; nothing is computed but ratios and differences.
"""

import argparse
import json
import os
import re
import sys

ROWS = [
    ("dense", "dense (adversarially trained)"),
    ("control", "dense + same fine-tuning (control)"),
    ("ccsrp", "CCSRP"),
    ("l1-match", "L1, uniform, at CCSRP's MACs"),
    ("random-match", "random, uniform, at CCSRP's MACs"),
    ("l1-50", "L1, uniform, 50 % MACs removed"),
    ("random-50", "random, uniform, 50 % MACs removed"),
    ("l1-70", "L1, uniform, 70 % MACs removed"),
    ("random-70", "random, uniform, 70 % MACs removed"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def strong_accuracy(report):
    """The worst case per image over every attack the strong evaluation ran, in percent."""
    if report is None or not report.get("strong"):
        return None
    return 100.0 * report["worst_case_correct"] / max(report["images"], 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    work = args.work

    job = load(os.path.join(work, "ccsrp", "summary.json"))
    if job is None:
        sys.exit(f"{work}/ccsrp/summary.json: run the ccsrp step first")
    rows = []
    for key, label in ROWS:
        if key == "dense":
            net, epochs = job["dense"], 0
        elif key == "ccsrp":
            net, epochs = job["pruned"], job["finetune_epochs"]
        else:
            s = load(os.path.join(work, key, "summary.json"))
            if s is None:
                continue
            net, epochs = s["pruned"], s["finetune_epochs"]
        strong = load(os.path.join(work, f"strong-{key}.json"))
        rows.append(
            {
                "network": key,
                "label": label,
                "macs": net["macs"],
                "macs_removed": 100.0 * (1 - net["macs"] / job["dense"]["macs"]),
                "parameters": net["parameters"],
                "kept_filters": net["kept_filters"],
                "finetune_epochs": epochs,
                "val_clean": net["val_clean_accuracy"],
                "val_pgd": net["val_pgd_accuracy"],
                "test_images": net["test_samples"],
                "clean": net["clean_accuracy"],
                "fgsm": net["fgsm_accuracy"],
                "pgd": net["pgd_accuracy"],
                "strong_images": strong["images"] if strong else None,
                "strong_robust": strong_accuracy(strong),
                "strong_attacks": [a["name"] for a in strong["attacks"]] if strong and "attacks" in strong else None,
            }
        )
    times = {}
    log = os.path.join(work, "commands.log")
    if os.path.exists(log):
        command = None
        for line in open(log):
            if line.startswith("$ "):
                command = line[2:].strip()
            elif line.startswith("# ") and command:
                m = re.match(r"# (\d+) s", line)
                if m:
                    # Show the command as a user types it.
                    shown = re.sub(r"^\S*/ccsrp ", "ccsrp ", command)
                    times[shown] = int(m.group(1))
    dense = rows[0]

    def fmt(v, digits=2):
        return "n/a" if v is None else f"{v:.{digits}f}"

    md = [
        f"## {args.name}: dense vs CCSRP vs uniform baselines",
        "",
        f"Test split: {dense['test_images']} images; PGD = PGD-{job['test_attack']['pgd']['steps']} "
        f"(eps {job['test_attack']['pgd']['eps']:.4f}); strong = worst case per image over every attack "
        "of `ccsrp eval --strong` (below). Drops are against the dense network, in points.",
        "",
        "| network | MACs removed | params | fine-tune epochs | val clean | val PGD | test clean | FGSM | PGD | strong robust | clean drop | strong drop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        strong_drop = (
            None
            if r["strong_robust"] is None or dense["strong_robust"] is None
            else dense["strong_robust"] - r["strong_robust"]
        )
        md.append(
            f"| {r['label']} | {r['macs_removed']:.1f} % | {r['parameters']:,} | {r['finetune_epochs']} | "
            f"{fmt(r['val_clean'])} | {fmt(r['val_pgd'])} | {fmt(r['clean'])} | {fmt(r['fgsm'])} | "
            f"{fmt(r['pgd'])} | {fmt(r['strong_robust'])} | {fmt(dense['clean'] - r['clean'])} | "
            f"{fmt(strong_drop)} |"
        )
    attacks = next((r["strong_attacks"] for r in rows if r["strong_attacks"]), None)
    if attacks:
        md += ["", "Strong evaluation's attacks: " + ", ".join(attacks) + "."]
    md += [
        "",
        f"CCSRP: stop reason {json.dumps(job['stop_reason'])}, {job['iterations']} iterations, "
        f"filters kept per layer {job['pruned']['kept_filters']} of {job['dense']['kept_filters']}.",
        "",
        "Commands and wall times (from commands.log):",
        "",
    ]
    for command, seconds in times.items():
        md.append(f"- `{command}`: {seconds} s")
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"name": args.name, "rows": rows, "times_s": times, "job": job}, f, indent=2)
    print("\n".join(md))


if __name__ == "__main__":
    main()
