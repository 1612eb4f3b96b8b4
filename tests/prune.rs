//! `ccsrp prune` end to end: a tiny dense model trained by `ccsrp train` on the splits of the small
//! job, pruned by L1 and random at a keep ratio, at a MACs target and matched to a summary; the
//! summary's shape and numbers; bad flags.

mod common;

use std::path::Path;

use common::{ccsrp, train_small_dense as train_dense, write_job};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read summary")).expect("parse summary")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn prune_writes_a_model_and_a_job_shaped_summary_at_the_asked_amount() {
    let dir = tempfile::tempdir().unwrap();
    let dense = train_dense(dir.path());
    let job = write_job(dir.path(), "");
    let job = job.to_str().unwrap();
    let l1_dir = dir.path().join("l1");
    let run = ccsrp(&[
        "prune",
        "--model",
        &dense,
        "--method",
        "l1",
        "--keep-ratio",
        "0.5",
        "--config",
        job,
        "--out",
        l1_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON object");
    let summary = json(&l1_dir.join("summary.json"));
    assert_eq!(printed, summary);
    assert_eq!(summary["method"], "l1");
    assert_eq!(summary["amount"], "keep_ratio");
    // The job's fine-tuning recipe and budget (SMALL_JOB: 1 epoch), splits and attacks.
    assert_eq!(summary["finetune_epochs"], 1);
    assert_eq!(summary["data"]["val_size"], 64);
    assert_eq!(summary["test_attack"]["pgd"]["steps"], 2);
    let dense_kept: Vec<u64> =
        serde_json::from_value(summary["dense"]["kept_filters"].clone()).unwrap();
    let kept: Vec<u64> = serde_json::from_value(summary["pruned"]["kept_filters"].clone()).unwrap();
    let half: Vec<u64> = dense_kept
        .iter()
        .map(|&n| ((n as f64) * 0.5).round() as u64)
        .collect();
    assert_eq!(kept, half);
    for net in ["dense", "pruned"] {
        assert_eq!(summary[net]["val_samples"], 64);
        assert_eq!(summary[net]["test_samples"], 64);
        for field in [
            "val_clean_accuracy",
            "clean_accuracy",
            "fgsm_accuracy",
            "pgd_accuracy",
        ] {
            let v = summary[net][field].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{net}.{field} = {v}");
        }
    }
    let dense_macs = summary["dense"]["macs"].as_u64().unwrap();
    let macs = summary["pruned"]["macs"].as_u64().unwrap();
    assert!(macs < dense_macs);
    // The written model is the pruned network.
    let info = ccsrp(&[
        "info",
        l1_dir.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["macs"].as_u64(), Some(macs), "{info}");

    // Random at the MACs of that summary (`--match`): the same uniform counts, other filters,
    // and the settings read from the summary.
    let random_dir = dir.path().join("random");
    let summary_path = l1_dir.join("summary.json");
    let run = ccsrp(&[
        "prune",
        "--model",
        &dense,
        "--method",
        "random",
        "--match",
        summary_path.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        random_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let random = json(&random_dir.join("summary.json"));
    assert_eq!(random["pruned"]["macs"].as_u64(), Some(macs));
    assert_eq!(random["target_macs"].as_u64(), Some(macs));
    assert_eq!(
        random["pruned"]["kept_filters"],
        summary["pruned"]["kept_filters"]
    );
    assert_eq!(random["data"], summary["data"]);
    // The dense network's counts are the same measurement, reused or not.
    assert_eq!(random["dense"], summary["dense"]);
}

#[test]
fn bad_prune_flags_are_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let missing = missing.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--method", "l1", "--keep-ratio", "1.5"],
            "--keep-ratio 1.5",
        ),
        (&["--method", "l1", "--keep-ratio", "0"], "--keep-ratio 0"),
        (
            &["--method", "l2", "--keep-ratio", "0.5"],
            "unknown method `l2`",
        ),
        (&["--method", "l1"], "--keep-ratio"),
        (&["--method", "l1", "--match", missing], "--match"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["prune", "--model", missing, "--out", out];
        args.extend_from_slice(flags);
        let run = ccsrp(&args);
        assert!(!run.status.success(), "{args:?} succeeded");
        let text = stderr(&run);
        assert!(
            text.contains(expected),
            "{args:?}: expected {expected:?} in {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    let run = ccsrp(&[
        "prune",
        "--model",
        missing,
        "--method",
        "l1",
        "--keep-ratio",
        "0.5",
        "--out",
        out,
    ]);
    let text = stderr(&run);
    assert!(
        !run.status.success() && text.contains("--model") && text.contains("missing.safetensors"),
        "{text}"
    );
}
