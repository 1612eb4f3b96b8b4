//! [`serve`]: runs one job's master on a listener until the job is done (plus a linger for workers
//! to learn it) or shutdown is requested, then writes the final checkpoint and the results.
//!
//! Startup: lock the state dir (one master per state dir: an advisory lock on
//! `<state dir>/master.lock`, held while serving, so a second master on the same dir is refused),
//! open the artifact store, resume the engine from the state dir's checkpoint when there is
//! one and it fits the job (else start it, importing the dense model file into the store, and
//! remove an earlier run's result files from the out dir: `results::remove_stale`), then serve
//! Coordinator, Artifacts, Progress (all behind the token check), health and reflection (v1 and
//! v1alpha), over TLS when [`MasterOptions::tls`] is set (`ccsrp_proto::tls` reads the PEM files;
//! with a client CA, mutual TLS; the token check stays on top). Two background tasks run beside the server: the checkpointer (at most one write per
//! `runtime.checkpoint_seconds`, only when the state changed) and upkeep: lease expiry, forgetting
//! workers not seen lately, and the periodic summaries of rate-limited log lines.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccsrp_proto::v1::artifacts_server::ArtifactsServer;
use ccsrp_proto::v1::coordinator_server::CoordinatorServer;
use ccsrp_proto::v1::progress_server::ProgressServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::artifact_store::{ArtifactStore, StoreError};
use crate::auth::{AccessToken, RequireToken};
use crate::checkpoint::{self, CheckpointError};
use crate::dense_model::{self, DenseModelError};
use crate::job::{Job, JobFailure, JobSettings};
use crate::job_config::JobConfig;
use crate::results::{self, ResultsError};
use crate::service::artifacts::ArtifactService;
use crate::service::coordinator::CoordinatorService;
use crate::service::progress::ProgressService;
use crate::shutdown::{self, Shutdown};
use crate::{DenseModel, Engine, EngineError, JobSpec, Outcome};

/// How to run a master.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    pub config: JobConfig,
    /// Checkpoint and artifact store live here; an existing checkpoint is resumed.
    pub state_dir: PathBuf,
    /// Where results go when the job ends (`<state dir>/results` when absent).
    pub out_dir: Option<PathBuf>,
    pub token: AccessToken,
    /// How long the master keeps serving after the job is done, so workers and watchers learn it.
    pub linger: Duration,
    /// TLS for every connection (from `ccsrp_proto::tls::server_config`); None: plain HTTP/2.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Why a master stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    DenseModel(#[from] DenseModelError),
    #[error("job: {0}")]
    Engine(#[from] EngineError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("background task failed: {0}")]
    Task(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("state dir {path}: {error}")]
    StateDir { path: String, error: std::io::Error },
    #[error("state dir {path} is in use by another master{holder} (it holds the lock {lock}): one master per state dir; stop it, or give this one another --state-dir")]
    StateDirInUse {
        path: String,
        lock: String,
        holder: String,
    },
    #[error("checkpoint {path}: the saved state cannot be resumed (it panicked: {detail}); use a fresh --state-dir (or remove the file to start the job over)")]
    Resume { path: String, detail: String },
}

/// Name of the lock file in the state dir.
pub const LOCK_FILE: &str = "master.lock";

/// A state dir locked for one master: released when dropped (or when the process ends, however).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Locks `state_dir` (created if needed) for this process: an advisory lock on
/// `<state dir>/master.lock`, which holds the holder's process id. A second master on the same
/// dir gets [`ServeError::StateDirInUse`].
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, ServeError> {
    let dir_error = |error| ServeError::StateDir {
        path: state_dir.display().to_string(),
        error,
    };
    std::fs::create_dir_all(state_dir).map_err(dir_error)?;
    let path = state_dir.join(LOCK_FILE);
    let lock_error = |error| ServeError::StateDir {
        path: path.display().to_string(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .map_err(lock_error)?;
            Ok(StateLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = (&file).take(32).read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!(" (process {pid})"),
                Err(_) => String::new(),
            };
            Err(ServeError::StateDirInUse {
                path: state_dir.display().to_string(),
                lock: path.display().to_string(),
                holder,
            })
        }
        Err(TryLockError::Error(error)) => Err(lock_error(error)),
    }
}

/// How a master ended.
#[derive(Debug)]
pub struct ServeReport {
    /// The job's answer, when it finished (None when stopped by shutdown first).
    pub outcome: Option<Outcome>,
    /// Where the results were written (when finished).
    pub out_dir: Option<PathBuf>,
    /// Why the job failed, when one task failed `runtime.max_task_failures` times (`failed.json`
    /// in the out dir says the same; the checkpoint stays resumable).
    pub failure: Option<JobFailure>,
}

/// Name of the file in the out dir that says why a job failed.
pub const FAILED_FILE: &str = "failed.json";

/// Opens the job in `state_dir`: the resumed checkpoint, or a fresh engine.
pub fn open_job(config: &JobConfig, state_dir: &Path) -> Result<Job, ServeError> {
    std::fs::create_dir_all(state_dir).map_err(|error| ServeError::StateDir {
        path: state_dir.display().to_string(),
        error,
    })?;
    let store = ArtifactStore::open(&state_dir.join("artifacts"))?;
    let settings = JobSettings::of(config);
    let checkpoint_path = checkpoint::path_in(state_dir);
    let resumed = checkpoint::read(&checkpoint_path, &settings.fingerprint)?;
    if let Some(engine) = &resumed {
        let expected = JobSpec {
            seed: config.job.seed,
            config: config.engine_config(),
            dense: match &config.model.path {
                // Compared by kind only: the file is not read when resuming.
                Some(_) => DenseModel::Given {
                    model: crate::ModelRef(String::new()),
                    description: Default::default(),
                },
                None => DenseModel::Train,
            },
            eval_samples: u64::from(config.data.eval_size),
            eval_shards: config.data.eval_shards,
        };
        checkpoint::check_fits(&checkpoint_path, engine, &expected, &store)?;
    }
    let is_resumed = resumed.is_some();
    let engine = match resumed {
        Some(engine) => {
            let p = engine.progress();
            tracing::info!(
                iteration = p.iteration,
                generation = p.generation,
                done = p.items_done,
                "resumed from checkpoint"
            );
            engine
        }
        None => {
            let dense = match &config.model.path {
                Some(path) => {
                    let description = dense_model::read_description(path)?;
                    let model = store.import(path)?;
                    DenseModel::Given {
                        model: crate::ModelRef(model),
                        description,
                    }
                }
                None => DenseModel::Train,
            };
            Engine::new(JobSpec {
                seed: config.job.seed,
                config: config.engine_config(),
                dense,
                eval_samples: u64::from(config.data.eval_size),
                eval_shards: config.data.eval_shards,
            })?
        }
    };
    if !is_resumed {
        return Ok(Job::new(settings, engine, store));
    }
    // A checkpoint that parsed and fits the job may still hold an inconsistent state (edited by
    // hand, say): queueing its outstanding items is the first use of it, so a panic there is
    // reported as an error naming the file rather than taking the process down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Job::new(settings, engine, store)
    }))
    .map_err(|panic| ServeError::Resume {
        path: checkpoint_path.display().to_string(),
        detail: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string()),
    })
}

/// Serves the job on `listener` until it is done (plus `linger`) or `shutdown` fires.
pub async fn serve(
    options: MasterOptions,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<ServeReport, ServeError> {
    // Held until this function returns: no other master serves this state dir meanwhile.
    let _lock = lock_state_dir(&options.state_dir)?;
    let checkpoint_path = checkpoint::path_in(&options.state_dir);
    let fresh = !checkpoint_path.exists();
    let job = Arc::new(open_job(&options.config, &options.state_dir)?);
    // Internal stop: fired by the outer shutdown or when the job is done and lingered.
    let (stop, stopped) = shutdown::channel();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health
        .set_serving::<ArtifactsServer<ArtifactService>>()
        .await;
    health
        .set_serving::<ProgressServer<ProgressService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ccsrp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let auth = RequireToken::with_log(options.token.clone(), job.peer_log().clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.clone())?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1,
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            auth.clone(),
        ))
        .add_service(CoordinatorServer::with_interceptor(
            CoordinatorService::new(job.clone(), stopped.clone()),
            auth.clone(),
        ))
        .add_service(ArtifactsServer::with_interceptor(
            ArtifactService::new(job.clone()),
            auth.clone(),
        ))
        .add_service(ProgressServer::with_interceptor(
            ProgressService::new(job.clone(), stopped.clone()),
            auth,
        ));

    let checkpointer = tokio::spawn(run_checkpointer(
        job.clone(),
        checkpoint_path.clone(),
        options.config.runtime.checkpoint_interval(),
        stopped.clone(),
    ));
    let expiry = tokio::spawn(run_upkeep(job.clone(), stopped.clone()));
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| options.state_dir.join("results"));
    if fresh {
        // A job starting afresh never leaves an earlier run's results beside its partial state.
        let removed = results::remove_stale(&out_dir)?;
        if !removed.is_empty() {
            tracing::info!(out_dir = %out_dir.display(), ?removed, "removed an earlier run's results");
        }
    }
    let watcher = tokio::spawn(watch_for_end(
        job.clone(),
        shutdown,
        stop.clone(),
        options.linger,
        (out_dir.clone(), checkpoint_path.clone()),
    ));

    let local = listener.local_addr().ok();
    tracing::info!(listen = ?local, job = %job.settings().name, tls = options.tls.is_some(), "master serving");
    let mut graceful = stopped.clone();
    let mut hard = stopped.clone();
    let server = router
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            graceful.wait().await
        });
    tokio::select! {
        r = server => r?,
        _ = async {
            hard.wait().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        } => tracing::warn!("connections still open 3 s after shutdown: closing them"),
    }
    stop.trigger();
    job.wake_all();
    health
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = checkpointer.await;
    let _ = expiry.await;
    // The watcher has written the results if it saw the job end (it finished before the server).
    let written = if watcher.is_finished() {
        watcher.await.ok().flatten()
    } else {
        watcher.abort();
        None
    };

    let outcome = job.with_engine(|e| e.outcome().cloned());
    let failure = job.failure();
    if let Some(failure) = &failure {
        write_failed(failure, &out_dir, &checkpoint_path).await?;
    }
    let out_dir = match (&outcome, written) {
        (Some(_), None) => Some(write_final(&job, &out_dir, &checkpoint_path).await?),
        (_, written) => {
            // The checkpointer has stopped: this write is the last word on the state.
            write_checkpoint(&job, &checkpoint_path).await?;
            written
        }
    };
    Ok(ServeReport {
        outcome,
        out_dir,
        failure,
    })
}

/// Writes `failed.json` (the failed task, the workers' reasons, how to resume) in `out_dir`.
async fn write_failed(
    failure: &JobFailure,
    out_dir: &Path,
    checkpoint_path: &Path,
) -> Result<(), ServeError> {
    let json = serde_json::json!({
        "state": "failed",
        "task_id": failure.task_id,
        "failures": failure.reasons.len(),
        "reasons": failure.reasons,
        "checkpoint": checkpoint_path.display().to_string(),
        "resume": "fix the cause, then restart the master on the same state dir: the job resumes from its checkpoint with fresh failure counts",
    });
    let path = out_dir.join(FAILED_FILE);
    let io_error = |error| ServeError::StateDir {
        path: path.display().to_string(),
        error,
    };
    tokio::fs::create_dir_all(out_dir).await.map_err(io_error)?;
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    tokio::fs::write(&path, text + "\n")
        .await
        .map_err(io_error)?;
    Ok(())
}

/// Writes the checkpoint now.
async fn write_checkpoint(job: &Arc<Job>, path: &Path) -> Result<(), ServeError> {
    let bytes = job.with_engine(|e| checkpoint::encode(&job.settings().fingerprint, e))?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || checkpoint::write(&path, &bytes))
        .await
        .map_err(|e| ServeError::Task(format!("checkpoint: {e}")))??;
    Ok(())
}

/// Writes the final checkpoint and the results directory of a finished job.
async fn write_final(
    job: &Arc<Job>,
    out_dir: &Path,
    checkpoint_path: &Path,
) -> Result<PathBuf, ServeError> {
    write_checkpoint(job, checkpoint_path).await?;
    // A failure of an earlier run of this job (since fixed and resumed) is history now.
    let _ = tokio::fs::remove_file(out_dir.join(FAILED_FILE)).await;
    let (job2, dir2, ck) = (
        job.clone(),
        out_dir.to_path_buf(),
        checkpoint_path.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || results::write(&job2, &dir2, &ck))
        .await
        .map_err(|e| ServeError::Task(format!("results: {e}")))??;
    tracing::info!(out_dir = %out_dir.display(), "results written");
    Ok(out_dir.to_path_buf())
}

/// Fires `stop` on the outer shutdown, or once the job is done and `linger` passed. When the job
/// ends, writes the results at once (before the linger, so they are on disk as soon as the job is
/// done) and returns their directory.
async fn watch_for_end(
    job: Arc<Job>,
    mut shutdown: Shutdown,
    stop: shutdown::ShutdownTrigger,
    linger: Duration,
    (out_dir, checkpoint_path): (PathBuf, PathBuf),
) -> Option<PathBuf> {
    let (mut ticks, _) = job.subscribe();
    let mut written = None;
    loop {
        if let Some(failure) = job.failure() {
            write_checkpoint(&job, &checkpoint_path)
                .await
                .unwrap_or_else(|e| tracing::error!(error = %e, "checkpoint not written"));
            if let Err(e) = write_failed(&failure, &out_dir, &checkpoint_path).await {
                tracing::error!(error = %e, "writing {FAILED_FILE} failed; retrying at shutdown");
            }
            tracing::error!(failure = %failure, linger_s = linger.as_secs_f64(), "job failed");
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = shutdown.wait() => {}
            }
            break;
        }
        if job.is_done() {
            match write_final(&job, &out_dir, &checkpoint_path).await {
                Ok(dir) => written = Some(dir),
                Err(e) => {
                    tracing::error!(error = %e, "writing the results failed; retrying at shutdown")
                }
            }
            tracing::info!(linger_s = linger.as_secs_f64(), "job done");
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = shutdown.wait() => {}
            }
            break;
        }
        tokio::select! {
            changed = ticks.changed() => if changed.is_err() { break },
            _ = shutdown.wait() => break,
        }
    }
    stop.trigger();
    written
}

/// Writes the checkpoint at most once per `interval`, when the state changed.
async fn run_checkpointer(job: Arc<Job>, path: PathBuf, interval: Duration, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait() => return,
        }
        let Some(encoded) = job.checkpoint_if_dirty() else {
            continue;
        };
        let path = path.clone();
        let written = match encoded {
            Ok(bytes) => tokio::task::spawn_blocking(move || checkpoint::write(&path, &bytes))
                .await
                .unwrap_or_else(|e| {
                    Err(CheckpointError::Format {
                        path: checkpoint::CHECKPOINT_FILE.into(),
                        detail: e.to_string(),
                    })
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "checkpoint not written (will retry)");
        }
    }
}

/// Re-queues expired leases as their deadlines pass; about once a second, forgets the workers
/// not seen lately and logs the summaries of rate-limited log lines.
async fn run_upkeep(job: Arc<Job>, mut stop: Shutdown) {
    const MAX_SLEEP: Duration = Duration::from_millis(500);
    const HOUSEKEEPING: Duration = Duration::from_secs(1);
    let mut last_housekeeping = Instant::now();
    loop {
        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            last_housekeeping = Instant::now();
            let forgotten = job.forget_stale_workers(last_housekeeping);
            if forgotten > 0 {
                tracing::info!(
                    forgotten,
                    unseen_s = job.settings().forget_workers_after.as_secs_f64(),
                    "workers not seen lately forgotten"
                );
            }
            job.peer_log().flush();
        }
        let next = job.expire_leases();
        let now = std::time::Instant::now();
        let sleep = next
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(MAX_SLEEP)
            .clamp(Duration::from_millis(5), MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.wait() => return,
        }
    }
}
