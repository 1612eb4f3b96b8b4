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

#[test]
fn three_worker_processes_give_the_embedded_runs_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    for _ in 0..3 {
        cluster.add_worker();
    }
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
