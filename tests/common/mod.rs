//! Helpers of the end-to-end tests: the real `ccsrp` binary started as child processes on
//! loopback ports, a small job file, and the comparison of two runs' results.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ccsrp")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A child process killed (SIGKILL) when dropped, with its output in a log file.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `ccsrp args...`, stdout and stderr into `dir/<name>.log`.
    pub fn start(dir: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(bin());
        command.args(args);
        for (k, v) in envs {
            command.env(k, v);
        }
        Proc::spawn_logged(dir, name, command, "spawn ccsrp")
    }

    /// Starts `ccsrp args...` with its address space limited to `bytes` (`ulimit -v` in a shell
    /// that then execs the binary), so that an allocation beyond it fails as under a container's
    /// memory limit.
    pub fn start_limited(dir: &Path, name: &str, args: &[&str], bytes: u64) -> Proc {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -v \"$0\" && exec \"$@\"")
            .arg((bytes / 1024).to_string())
            .arg(bin())
            .args(args);
        Proc::spawn_logged(dir, name, command, "spawn sh -c ulimit -v ... ccsrp")
    }

    /// Spawns `command` without the token variable, logging at info, stdout and stderr appended
    /// to `dir/<name>.log`.
    fn spawn_logged(dir: &Path, name: &str, mut command: Command, what: &str) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let child = command
            .env_remove("CCSRP_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect(what);
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit status, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > timeout {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `ccsrp args...` to completion.
pub fn ccsrp(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("CCSRP_TOKEN")
        .output()
        .expect("run ccsrp")
}

/// Polls `ccsrp health` until the master serves, failing after `timeout`.
pub fn wait_serving(url: &str, master: &Proc, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ccsrp(&["health", "--master", url]).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("master at {url} never served; log:\n{}", master.log_text());
}

/// `ccsrp status --master URL --json`, parsed; None while the master does not answer.
pub fn status(url: &str) -> Option<serde_json::Value> {
    let out = ccsrp(&["status", "--master", url, "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls the status until `pred` holds, failing after `timeout`.
pub fn wait_status(
    url: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(s) = status(url) {
            if pred(&s) {
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("status never reached: {what}");
}

/// A small, fast job: `tiny` SNN, a few hundred synthetic images, one outer iteration of one
/// generation, short leases so that a killed worker's task moves on within seconds.
pub const SMALL_JOB: &str = r#"
[job]
name = "e2e"
seed = 7

[data]
kind = "synthetic"
eval_size = 64
val_size = 64
eval_shards = 2
train_limit = 256
test_limit = 64

[pretrain]
arch = "tiny"
timesteps = 2
epochs = 1
batch_size = 32

[evolution]
iterations = 1
generations = 2
population = 3
offspring = 2

[adversarial]
steps = 2

[finetune]
epochs = 1
batch_size = 32

[test_attack.pgd]
steps = 2

[runtime]
lease_seconds = 4
heartbeat_seconds = 1
checkpoint_seconds = 0.1
"#;

/// Writes [`SMALL_JOB`] (plus `extra` lines appended to it) into `dir/job.toml`.
pub fn write_job(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(&path, format!("{SMALL_JOB}\n{extra}")).expect("write job file");
    path
}

/// Trains the job's dense model (same seed and hold-outs as SMALL_JOB) into `dir/dense.safetensors`.
pub fn train_small_dense(dir: &Path) -> String {
    let out = dir.join("dense.safetensors");
    let out = out.to_str().expect("utf-8 path").to_string();
    let run = ccsrp(&[
        "train",
        "--dataset",
        "synthetic",
        "--arch",
        "tiny",
        "--timesteps",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--eval-size",
        "64",
        "--val-size",
        "64",
        "--seed",
        "7",
        "--out",
        &out,
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// The result files two runs of the same job must agree on, byte for byte (`summary.json` but
/// for its `run` record: wall times and paths, see [`summary_results`]).
pub const RESULT_FILES: &[&str] = &[
    "summary.json",
    "dense.safetensors",
    "iterations.json",
    "fronts.json",
    "fronts.csv",
    "model.safetensors",
];

/// The bytes of `summary.json` without its `run` record (how the job ran: wall times, paths of the
/// out dir), which differ between two runs of the same job; every other result is the same.
pub fn summary_results(bytes: &[u8]) -> Vec<u8> {
    let mut summary: serde_json::Value =
        serde_json::from_slice(bytes).expect("summary.json parses");
    let run = summary.as_object_mut().and_then(|o| o.remove("run"));
    assert!(run.is_some(), "a job's summary.json has a run record");
    serde_json::to_vec_pretty(&summary).expect("serialise summary")
}

/// Panics naming the first result file that differs between two out dirs.
pub fn assert_same_results(expected: &Path, got: &Path) {
    for name in RESULT_FILES {
        let read = |dir: &Path| {
            let bytes = std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
            if *name == "summary.json" {
                summary_results(&bytes)
            } else {
                bytes
            }
        };
        let (a, b) = (read(expected), read(got));
        if a != b {
            panic!(
                "{name} differs between {} and {}:\n--- expected\n{}\n--- got\n{}",
                expected.display(),
                got.display(),
                String::from_utf8_lossy(&a)
                    .chars()
                    .take(3000)
                    .collect::<String>(),
                String::from_utf8_lossy(&b)
                    .chars()
                    .take(3000)
                    .collect::<String>()
            );
        }
    }
}

/// A master process on a fresh loopback port with its state and results under `dir`.
pub struct Cluster {
    pub dir: PathBuf,
    pub url: String,
    pub port: u16,
    pub master: Proc,
    pub workers: Vec<Proc>,
    pub job: PathBuf,
    pub token_file: Option<PathBuf>,
}

impl Cluster {
    /// Starts a master on `job` (and waits until it serves).
    pub fn start(dir: &Path, job: &Path, token: Option<&str>) -> Cluster {
        let port = free_port();
        let token_file = token.map(|t| {
            let path = dir.join("token");
            std::fs::write(&path, t).expect("write token");
            path
        });
        let master = spawn_master(dir, port, job, token_file.as_deref(), "master");
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            master,
            workers: Vec::new(),
            job: job.to_path_buf(),
            token_file,
        };
        wait_serving(&cluster.url, &cluster.master, Duration::from_secs(60));
        cluster
    }

    /// SIGKILLs the master and starts a new one on the same port and state dir.
    pub fn restart_master(&mut self) {
        self.master.kill();
        self.master = spawn_master(
            &self.dir,
            self.port,
            &self.job,
            self.token_file.as_deref(),
            "master-restarted",
        );
        wait_serving(&self.url, &self.master, Duration::from_secs(60));
    }

    /// Starts a worker process with its own cache dir (and the job's token, if any).
    pub fn add_worker(&mut self) -> usize {
        let n = self.workers.len();
        let cache = self.dir.join(format!("cache-{n}"));
        let mut args = vec![
            "worker".to_string(),
            "--master".into(),
            self.url.clone(),
            "--threads".into(),
            "1".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ];
        if let Some(token) = &self.token_file {
            args.push("--token-file".into());
            args.push(token.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = Proc::start(&self.dir, &format!("worker-{n}"), &args, &[]);
        self.workers.push(worker);
        n
    }

    /// Waits for the master to finish the job and exit 0; returns the results directory.
    pub fn wait_done(&mut self, timeout: Duration) -> PathBuf {
        let status = self.master.wait(timeout);
        assert!(
            status.success(),
            "master exited with {status}; log:\n{}",
            self.master.log_text()
        );
        self.dir.join("out")
    }
}

/// The arguments of `ccsrp master` on 127.0.0.1:`port` with state in `dir/state` and results in
/// `dir/out`.
pub fn master_args(dir: &Path, port: u16, job: &Path, token_file: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "master".to_string(),
        "--config".into(),
        job.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--out".into(),
        dir.join("out").display().to_string(),
    ];
    if let Some(token) = token_file {
        args.push("--token-file".into());
        args.push(token.display().to_string());
    }
    args
}

/// Starts `ccsrp master` on 127.0.0.1:`port` with state in `dir/state` and results in `dir/out`.
pub fn spawn_master(
    dir: &Path,
    port: u16,
    job: &Path,
    token_file: Option<&Path>,
    name: &str,
) -> Proc {
    let args = master_args(dir, port, job, token_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(dir, name, &args, &[])
}

/// `ccsrp run --config job --out dir/out` (the embedded reference); returns the results dir.
pub fn embedded_run(dir: &Path, job: &Path, workers: usize) -> PathBuf {
    let out = dir.join("out");
    let cache = dir.join("cache");
    let output = Command::new(bin())
        .args([
            "run",
            "--config",
            &job.display().to_string(),
            "--workers",
            &workers.to_string(),
            "--out",
            &out.display().to_string(),
            "--cache-dir",
            &cache.display().to_string(),
            "--json",
        ])
        .env_remove("CCSRP_TOKEN")
        .output()
        .expect("run ccsrp run");
    assert!(
        output.status.success(),
        "ccsrp run failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}
