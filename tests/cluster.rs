//! A job served by a real `ccsrp master` process to real `ccsrp worker` processes on loopback,
//! with faults: its results must equal those of `ccsrp run` on the same job, byte for byte.
//!
//! The reference (`ccsrp run --workers 2`) is computed once and shared by the tests of this file.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// The embedded run's results, computed once (the temp dir lives as long as the test process).
fn reference() -> &'static PathBuf {
    static REFERENCE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &REFERENCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let job = write_job(dir.path(), "");
            let out = embedded_run(dir.path(), &job, 2);
            (dir, out)
        })
        .1
}

fn phase_is(status: &serde_json::Value, phase: &str) -> bool {
    status["phase"].as_str().is_some_and(|p| p.contains(phase))
}

/// Whether `line` starts with a UTC time stamp such as `2026-11-30T19:40:37Z `.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() > 21
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && &line[19..21] == "Z "
}

#[test]
fn three_worker_processes_give_the_embedded_runs_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    // `ccsrp watch` with its stdout in a file, as in `ccsrp watch | cat` or a pod's log.
    let mut watch = Proc::start(
        dir.path(),
        "watch",
        &["watch", "--master", &cluster.url],
        &[],
    );
    for _ in 0..3 {
        cluster.add_worker();
    }
    let out = cluster.wait_done(JOB_TIMEOUT);
    let watched = watch.wait(Duration::from_secs(60));
    let log = watch.log_text();
    assert!(watched.success(), "watch exited with {watched}:\n{log}");
    let (events, summary): (Vec<&str>, Vec<&str>) = log.lines().partition(|l| stamped(l));
    assert!(
        events
            .iter()
            .any(|l| l.contains("coevolution: iteration 1/1 generation ")
                && l.contains("layer bests: L0 ")),
        "a line per generation with each layer's best:\n{log}"
    );
    assert!(
        events.last().is_some_and(
            |l| l.contains(" done: iteration 1/1") && l.contains("(6/6 steps, 100.0%)")
        ),
        "the last time-stamped line says the job is done:\n{log}"
    );
    // `best` is absent until an iteration's network is accepted: the dense network is `dense`,
    // never `best`.
    assert!(
        !log.contains("best network (iteration 0)"),
        "the dense network shown as the best:\n{log}"
    );
    assert!(
        summary
            .first()
            .is_some_and(|l| l.starts_with("job e2e: done (finished)")),
        "then the summary:\n{log}"
    );
    for worker in &mut cluster.workers {
        let status = worker.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            worker.name,
            worker.log_text()
        );
    }
    assert_same_results(reference(), &out);
    check_fronts_and_reproduce_commands(&out);
}

/// fronts.json holds every generation of the iteration, and the `ccsrp eval` command
/// `summary.json` stores for each network gives exactly its test counts.
fn check_fronts_and_reproduce_commands(out: &std::path::Path) {
    let read = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join(name)).expect(name);
        serde_json::from_str(&text).expect(name)
    };
    let fronts = read("fronts.json");
    let mut generations: Vec<(u64, u64)> = fronts
        .as_array()
        .expect("fronts.json is a list")
        .iter()
        .map(|f| {
            (
                f["iteration"].as_u64().unwrap(),
                f["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    generations.dedup();
    assert_eq!(
        generations,
        [(1, 0), (1, 1), (1, 2)],
        "fronts of every generation"
    );

    let summary = read("summary.json");
    let reproduce = summary["run"]["reproduce"]
        .as_array()
        .expect("run.reproduce");
    assert_eq!(reproduce.len(), 2);
    for r in reproduce {
        let network = &summary[r["network"].as_str().unwrap()];
        let command = r["command"].as_str().unwrap();
        let words: Vec<&str> = command.split(' ').collect();
        assert_eq!(words[..3], ["ccsrp", "eval", "--held-out"], "{command}");
        // With the workers' compute-thread count (see the README, Determinism).
        let output = std::process::Command::new(bin())
            .args(&words[1..])
            .arg("--json")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("run ccsrp eval");
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&output.stdout).expect("eval --json");
        for (ours, theirs) in [
            ("clean_correct", "clean_correct"),
            ("fgsm_correct", "fgsm_correct"),
            ("pgd_correct", "pgd_correct"),
            ("images", "test_samples"),
        ] {
            assert!(got[ours].is_u64(), "{ours} of {command}: {got}");
            assert_eq!(got[ours], network[theirs], "{ours} of {command}");
        }
    }
}

#[test]
fn worker_killed_mid_lease_has_its_task_rerun_elsewhere_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    let victim = cluster.add_worker();
    // Alone, the victim necessarily holds the lease of the task the job waits for.
    wait_status(&cluster.url, JOB_TIMEOUT, "a leased task", |s| {
        s["tasks_leased"].as_u64().unwrap_or(0) > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    cluster.workers[victim].kill();
    cluster.add_worker();
    cluster.add_worker();
    let out = cluster.wait_done(JOB_TIMEOUT);
    assert_same_results(reference(), &out);
}

#[test]
fn master_killed_mid_generation_resumes_from_its_state_dir_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    cluster.add_worker();
    cluster.add_worker();
    let seen = wait_status(&cluster.url, JOB_TIMEOUT, "a generation under way", |s| {
        s["generation"].as_u64().unwrap_or(0) >= 1 && !s["done"].as_bool().unwrap_or(false)
    });
    assert!(!phase_is(&seen, "done"));
    cluster.restart_master();
    let out = cluster.wait_done(JOB_TIMEOUT);
    for worker in &mut cluster.workers {
        let status = worker.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            worker.name,
            worker.log_text()
        );
    }
    assert_same_results(reference(), &out);
}

/// A job whose data cannot load fails fast: each worker reports its task's failure, the third
/// failure of the task fails the job, `ccsrp run` exits non-zero with the worker's message on
/// stderr and leaves `failed.json` (state, task, reasons) in its out dir.
#[test]
fn a_job_whose_data_cannot_load_fails_fast_with_the_workers_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let stderr_path = dir.path().join("run.stderr");
    let mut child = std::process::Command::new(bin())
        .args(["run", "--dataset", "fashion-mnist", "--workers", "2"])
        .args(["--data-dir", "/nonexistent/ccsrp-data"])
        .arg("--out")
        .arg(&out)
        .arg("--cache-dir")
        .arg(&cache)
        .env_remove("CCSRP_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn ccsrp run");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ccsrp run on missing data still running after 60 s; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("job failed: task pretrain failed 3 times")
            && stderr.contains("/nonexistent/ccsrp-data/train-images-idx3-ubyte: not found"),
        "{stderr}"
    );
    let failed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("failed.json")).unwrap()).unwrap();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["task_id"], "pretrain");
    assert_eq!(failed["reasons"].as_array().map(Vec::len), Some(3));
    assert!(out.join("state").join("checkpoint.json").exists());
}

/// An IDX file (MNIST format) of `dims` with `data`.
fn idx_file(path: &std::path::Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// A master and a worker process on a job whose data directory is missing: the job fails (status
/// `failed` with the task and the worker's reasons, `failed.json`, the master exits non-zero);
/// once the data is there, a master restarted on the same state dir resumes the job with fresh
/// failure counts and the task that failed goes through.
#[test]
fn a_failed_job_is_reported_and_resumes_once_the_cause_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        SMALL_JOB.replace(
            "kind = \"synthetic\"",
            &format!(
                "kind = \"mnist\"\ndata_dir = {:?}",
                data.display().to_string()
            ),
        ),
    )
    .unwrap();
    let mut cluster = Cluster::start(dir.path(), &job, None);
    cluster.add_worker();
    let failed = wait_status(&cluster.url, Duration::from_secs(60), "job failed", |s| {
        s["failed"] == true
    });
    assert_eq!(failed["phase"], "failed");
    assert_eq!(failed["failed_task"], "pretrain");
    assert!(
        failed["failure_reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("train-images-idx3-ubyte")),
        "{failed}"
    );
    let human = ccsrp(&["status", "--master", &cluster.url]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("FAILED: task pretrain failed 3 times"),
        "{human}"
    );
    let exit = cluster.master.wait(Duration::from_secs(30));
    assert!(!exit.success(), "{}", cluster.master.log_text());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/failed.json")).unwrap())
            .unwrap();
    assert_eq!(report["task_id"], "pretrain");

    // Fix the cause: 28x28 IDX files of 320 training and 64 test images.
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, n) in [("train", 320u32), ("t10k", 64)] {
        let pixels: Vec<u8> = (0..n * 784).map(|i| (i * 7 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        idx_file(
            &data.join(format!("{prefix}-images-idx3-ubyte")),
            2051,
            &[n, 28, 28],
            &pixels,
        );
        idx_file(
            &data.join(format!("{prefix}-labels-idx1-ubyte")),
            2049,
            &[n],
            &labels,
        );
    }
    cluster.restart_master();
    cluster.add_worker();
    let resumed = wait_status(
        &cluster.url,
        Duration::from_secs(240),
        "the failed task done after the restart",
        |s| s["failed"] != true && s["tasks_done"].as_u64().is_some_and(|n| n >= 1),
    );
    assert_ne!(resumed["phase"], "failed");
}
