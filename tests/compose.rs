//! The deployment files (deploy/) tested for real.
//!
//! - `compose_cluster_finishes_the_job_despite_a_killed_worker`: builds the runtime image from this
//!   very binary (deploy/Dockerfile.scratch: the workspace builds static binaries, so nothing is
//!   pulled), starts deploy/docker-compose.yml under a project name of its own with one master and
//!   two workers on a tiny synthetic job, kills one worker container mid-run, and checks that the
//!   job finishes with the same summary as `ccsrp run` with the same job file, that `ccsrp status
//!   --json` answers from the host during and after the run, that the master (PID 1 of its
//!   container) stops promptly on SIGTERM, and that `compose down -v` leaves no container, volume
//!   or network behind. A guard tears the cluster and the image down on failure too.
//! - `k8s_configmap_carries_the_default_job_file`: the Kubernetes ConfigMap holds deploy/job.toml
//!   verbatim (the two copies cannot drift apart).
//!
//! The compose test needs a Docker engine and a compose tool (`docker compose` or `docker-compose`,
//! whichever the machine has). Without them it fails, saying so, unless `CCSRP_SKIP_DOCKER=1` is
//! set explicitly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ccsrp");

/// The master's gRPC port inside its container (deploy/docker-compose.yml).
const MASTER_PORT: &str = "7070";

/// How long the whole cluster run may take before the test gives up.
const JOB_DEADLINE: Duration = Duration::from_secs(900);

/// How long `docker stop` of the master may take: "promptly" is well under compose's 30 s grace.
const PROMPT_STOP: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny job both the cluster and the embedded run execute: the synthetic dataset, the `tiny`
/// network, two outer iterations of three generations (long enough to kill a worker mid-run on a
/// loaded machine), short leases so that the killed worker's
/// tasks are re-issued within seconds.
const TINY_JOB: &str = r#"
[job]
name = "compose-e2e"
seed = 7

[data]
kind = "synthetic"
eval_size = 64
val_size = 64
eval_shards = 4
train_limit = 2048       # pretraining lasts seconds, so status polls see the job under way
test_limit = 64

[pretrain]
arch = "tiny"
timesteps = 2
epochs = 2

[evolution]
iterations = 2
generations = 3
population = 3
offspring = 3

[stop]                   # never stop early: the job's length must not depend on 64 images
max_clean_drop = 100.0
max_robust_drop = 100.0

[adversarial]
steps = 2

[finetune]
epochs = 1

[test_attack.pgd]
steps = 2

[runtime]
lease_seconds = 5
heartbeat_seconds = 1
"#;

/// `cmd` rendered for error messages.
fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to the end; panics naming the command when it cannot be started.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", render(cmd)))
}

/// Runs `cmd`, which must succeed; returns its stdout. The panic carries the command and stderr.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n{}{}",
        render(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

/// The compose tool this machine has: `docker compose` (v2) or `docker-compose` (v1).
#[derive(Clone)]
struct ComposeTool {
    program: &'static str,
    prefix: &'static [&'static str],
}

impl ComposeTool {
    fn find() -> Option<ComposeTool> {
        let candidates = [
            ComposeTool {
                program: "docker",
                prefix: &["compose"],
            },
            ComposeTool {
                program: "docker-compose",
                prefix: &[],
            },
        ];
        candidates.into_iter().find(|tool| {
            Command::new(tool.program)
                .args(tool.prefix)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }
}

/// Docker and compose, or `None` when the caller asked to skip with `CCSRP_SKIP_DOCKER=1`.
/// Panics with what is missing otherwise: CI has Docker, so its absence is a failure.
fn docker_or_skip() -> Option<ComposeTool> {
    let skip = std::env::var("CCSRP_SKIP_DOCKER").is_ok_and(|v| v == "1");
    let engine = docker(&["info", "--format", "{{.ServerVersion}}"]).output();
    let problem = match &engine {
        Err(e) => Some(format!("the `docker` command cannot be run ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "`docker info` failed: the Docker engine is not reachable ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    };
    let tool = ComposeTool::find();
    let problem = problem.or_else(|| {
        tool.is_none()
            .then(|| "neither `docker compose` nor `docker-compose` works".to_string())
    });
    match (problem, skip) {
        (None, _) => tool,
        (Some(p), true) => {
            eprintln!("skipping the compose test (CCSRP_SKIP_DOCKER=1): {p}");
            None
        }
        (Some(p), false) => panic!(
            "the compose end-to-end test needs Docker: {p}. Start the Docker engine and install \
             a compose tool, or set CCSRP_SKIP_DOCKER=1 to skip this test explicitly"
        ),
    }
}

/// A name no other run of this test uses: compose project names and image tags derive from it.
fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("ccsrpe2e{}x{nanos}", std::process::id())
}

/// The runtime image built from this test's binary; removed when dropped.
struct TestImage {
    tag: String,
}

impl TestImage {
    /// Builds deploy/Dockerfile.scratch from a context holding the binary and an empty directory,
    /// as deploy/build-image.sh does.
    fn build(tag: String) -> TestImage {
        let context = tempfile::tempdir().expect("temp dir for the build context");
        std::fs::copy(BIN, context.path().join("ccsrp")).expect("copy the ccsrp binary");
        std::fs::create_dir(context.path().join("empty")).expect("empty dir in the context");
        let image = TestImage { tag };
        let dockerfile = repo().join("deploy/Dockerfile.scratch");
        ok(docker(&["build", "-q", "-t", &image.tag, "-f"])
            .arg(&dockerfile)
            .arg(context.path()));
        image
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]).output();
    }
}

/// One compose project running deploy/docker-compose.yml; torn down (`down -v`) when dropped, with
/// the services' logs printed first when the test is failing.
struct Cluster {
    tool: ComposeTool,
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.tool.program);
        c.args(self.tool.prefix)
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("deploy/docker-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    }

    /// Container ids of `service`'s running and stopped containers.
    fn containers(&self, service: &str) -> Vec<String> {
        ok(&mut self.compose(&["ps", "-q", service]))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// `host:port` where the master's gRPC port is published on the host.
    fn master_address(&self) -> String {
        let published = ok(&mut self.compose(&["port", "master", MASTER_PORT]));
        let port = published
            .trim()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            port.parse::<u16>().is_ok_and(|p| p > 0),
            "`compose port master {MASTER_PORT}` printed {published:?}: expected HOST:PORT"
        );
        format!("127.0.0.1:{port}")
    }

    fn down(&self) -> Output {
        output(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "10"]))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(logs) = self
                .compose(&["logs", "--no-color", "--tail", "60"])
                .output()
            {
                eprintln!(
                    "--- compose logs of {} ---\n{}{}",
                    self.project,
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
        let _ = self.down();
    }
}

/// Writes `text` to `path` readable by everyone: the container's unprivileged user reads the job
/// file through a bind mount.
fn write_world_readable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `ccsrp status --json` against `address` from the host; `None` when it did not answer.
fn status(address: &str, token: &str) -> Option<Value> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--master"])
        .arg(format!("http://{address}"))
        .env("CCSRP_TOKEN", token)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether a status report says the job is finished.
fn job_finished(status: &Value) -> bool {
    status["phase"].as_str() == Some("done")
}

/// Whether a status report shows evaluation under way (some task done, the job not finished).
fn job_under_way(status: &Value) -> bool {
    status["tasks_done"].as_u64().is_some_and(|n| n > 0) && !job_finished(status)
}

/// Labels compose puts on everything of a project; nothing with it may survive `down -v`.
fn leftovers(project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let mut found = Vec::new();
    for kind in [
        &["ps", "-a", "-q", "--filter"][..],
        &["volume", "ls", "-q", "--filter"][..],
        &["network", "ls", "-q", "--filter"][..],
    ] {
        let mut cmd = docker(kind);
        cmd.arg(&filter);
        found.extend(
            ok(&mut cmd)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{} {}", kind[0], l.trim())),
        );
    }
    found
}

#[test]
fn compose_cluster_finishes_the_job_despite_a_killed_worker() {
    let Some(tool) = docker_or_skip() else {
        return;
    };
    let name = unique_name();
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    write_world_readable(&job, TINY_JOB);
    let token = format!("token-{name}");
    let env_file = dir.path().join("ccsrp.env");
    write_world_readable(&env_file, &format!("CCSRP_TOKEN={token}\nRUST_LOG=info\n"));

    let image = TestImage::build(format!("ccsrp-e2e:{name}"));
    let cluster = Cluster {
        tool,
        project: name.clone(),
        env: vec![
            ("CCSRP_IMAGE", image.tag.clone()),
            ("CCSRP_ENV_FILE", env_file.display().to_string()),
            ("CCSRP_JOB_FILE", job.display().to_string()),
            // 0: a free host port, found with `compose port`; parallel runs never collide.
            ("CCSRP_MASTER_PORT", "0".to_string()),
            ("CCSRP_WORKER_THREADS", "1".to_string()),
        ],
    };
    // `up -d` returns once the master is healthy (the workers depend on it) and both workers started.
    ok(&mut cluster.compose(&["up", "-d", "--scale", "worker=2"]));
    let address = cluster.master_address();
    let workers = cluster.containers("worker");
    assert_eq!(
        workers.len(),
        2,
        "expected two worker containers: {workers:?}"
    );

    // Mid-run: once evaluation is under way, kill one worker; its leases must expire and be re-run.
    let start = Instant::now();
    let mut answered_during_run = false;
    let mut killed = false;
    let final_status = loop {
        assert!(
            start.elapsed() < JOB_DEADLINE,
            "the job did not finish within {JOB_DEADLINE:?}"
        );
        if let Some(s) = status(&address, &token) {
            answered_during_run |= !job_finished(&s);
            if !killed && job_under_way(&s) {
                ok(&mut docker(&["kill", &workers[0]]));
                killed = true;
                eprintln!("killed worker {} at {s}", workers[0]);
            }
            if job_finished(&s) {
                break s;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        killed,
        "the job finished before a worker could be killed mid-run: {final_status}"
    );
    assert!(
        answered_during_run,
        "`ccsrp status --json` never answered while the job ran"
    );

    // After the run: the status still answers, and the surviving worker exited 0 by itself.
    let after = status(&address, &token).expect("`ccsrp status --json` answers after the run");
    assert!(job_finished(&after), "status after the run: {after}");
    let survivor_deadline = Instant::now() + Duration::from_secs(60);
    let survivor_exit = loop {
        let state = ok(&mut docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &workers[1],
        ]));
        let mut parts = state.split_whitespace();
        if parts.next() == Some("exited") {
            break parts.next().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < survivor_deadline,
            "the surviving worker did not exit after the job finished: {state}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(survivor_exit, "0", "the surviving worker's exit code");

    let master = cluster.containers("master");
    assert_eq!(master.len(), 1, "expected one master container: {master:?}");
    // The master is PID 1 of its container: SIGTERM (docker stop) must end it promptly, well
    // before the grace period after which docker would SIGKILL it.
    let stop_started = Instant::now();
    ok(&mut docker(&["stop", "-t", "30", &master[0]]));
    let stop_took = stop_started.elapsed();
    assert!(
        stop_took < PROMPT_STOP,
        "the master took {stop_took:?} to stop on SIGTERM (expected under {PROMPT_STOP:?})"
    );
    let master_exit = ok(&mut docker(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}}",
        &master[0],
    ]));
    assert_eq!(
        master_exit.trim(),
        "0",
        "the master's exit code after SIGTERM"
    );

    // The cluster's summary, copied out of the results volume (the master writes
    // its results when it stops; `docker cp` reads a stopped container's volumes).
    let copied = dir.path().join("cluster-summary.json");
    ok(docker(&["cp"])
        .arg(format!("{}:/results/summary.json", master[0]))
        .arg(&copied));

    // The embedded run of the same job file, computing with the same number of threads as each
    // compose worker (CCSRP_WORKER_THREADS = 1): the summaries must then be identical. (The CPU
    // matrix kernels may sum in another order with another thread count, so a job's exact bits
    // are pinned per compute-thread count.)
    let embedded = dir.path().join("embedded");
    ok(Command::new(BIN)
        .args(["run", "--workers", "2", "--config"])
        .arg(&job)
        .env("RAYON_NUM_THREADS", "1")
        .arg("--out")
        .arg(&embedded)
        .arg("--cache-dir")
        .arg(dir.path().join("embedded-cache")));
    let read = |p: &Path| -> Value {
        let text =
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
    };
    // Without the `run` records (wall times, paths), which differ between any two runs.
    let results = |mut v: Value| {
        v.as_object_mut().and_then(|o| o.remove("run"));
        v
    };
    let cluster_summary = results(read(&copied));
    let embedded_summary = results(read(&embedded.join("summary.json")));
    assert_eq!(
        cluster_summary, embedded_summary,
        "the compose cluster (one worker killed) and the embedded run disagree"
    );

    // `down -v` leaves nothing of the project behind.
    let down = cluster.down();
    assert!(
        down.status.success(),
        "compose down -v failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = leftovers(&name);
    assert!(
        left.is_empty(),
        "left behind by `compose down -v`: {left:?}"
    );
    drop(cluster);
    let tag = image.tag.clone();
    drop(image);
    let inspect = output(&mut docker(&["image", "inspect", &tag]));
    assert!(
        !inspect.status.success(),
        "the test image {tag} was not removed"
    );
}

/// The YAML block scalar under `key: |` in `yaml`, with its indentation removed.
fn block_scalar(yaml: &str, key: &str) -> Option<String> {
    let mut lines = yaml.lines();
    let header = format!("{key}: |");
    lines.find(|l| l.trim() == header)?;
    let mut indent = None;
    let mut text = String::new();
    for line in lines {
        if line.trim().is_empty() {
            text.push('\n');
            continue;
        }
        let this = line.len() - line.trim_start().len();
        let block = *indent.get_or_insert(this);
        if this < block {
            break;
        }
        text.push_str(&line[block..]);
        text.push('\n');
    }
    Some(text.trim_end_matches('\n').to_string() + "\n")
}

#[test]
fn k8s_configmap_carries_the_default_job_file() {
    let read = |p: &str| {
        std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
    };
    let configmap = read("deploy/k8s/base/job-configmap.yaml");
    let embedded = block_scalar(&configmap, "job.toml")
        .expect("deploy/k8s/base/job-configmap.yaml has a `job.toml: |` block");
    assert_eq!(
        embedded,
        read("deploy/job.toml"),
        "deploy/k8s/base/job-configmap.yaml's job.toml differs from deploy/job.toml"
    );
}
