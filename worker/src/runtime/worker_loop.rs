//! The worker's life: register, pull a lease, evaluate, report, repeat until the job is done.
//!
//! The loop is built to outlive its master: every failure to reach it (refused connection, broken
//! stream, master restarted from its checkpoint) leads back to a fresh connection and a new
//! registration after an exponential backoff (0.2 s doubling to 5 s), and a finished result whose
//! report failed is sent again once the master is back (the master drops it if the lease moved
//! on: results are idempotent). Only a *refusal* ends the worker with an error: a wrong token, a
//! protocol version or backend the job does not accept, or a failed TLS handshake (the master's
//! certificate not signed by the worker's `--tls-ca`, or the master refusing the worker's). Evaluation runs on a blocking thread while
//! a heartbeat keeps the lease alive. A task that fails (an error, or a panic caught around it) is
//! reported with its reason and the worker goes on; the master decides when a task is hopeless.
//!
//! Stopping: when the shutdown future resolves, the task in progress is cancelled ([`Cancel`]):
//! its computation ends at its next batch, nothing is reported for it (a stopping worker's
//! half-done task is neither a result nor a failure), and its lease expires so that another
//! worker computes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;

use ccsrp_proto::quote::quote;
use ccsrp_proto::v1::{
    task_result, HeartbeatRequest, LeaseReply, LeaseRequest, LeaseState, RegisterReply,
    RegisterRequest, ResultBatch, Task, TaskFailure, TaskResult,
};
use ccsrp_proto::PROTOCOL_VERSION;

use crate::cancel::Cancel;

use super::artifact_cache::ArtifactCache;
use super::master_client::{ClientError, MasterClient};
use super::tasks::{ArtifactIo, TaskExecutor};
use super::WorkerError;

/// How a worker finds and joins its job.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The master's URL, e.g. `http://127.0.0.1:50051`.
    pub master: String,
    /// The job's shared token, when it has one.
    pub token: Option<String>,
    /// TLS files for an `https://` master (the CA that signed its certificate, a client
    /// certificate for mutual TLS); none for a plain `http://` one.
    pub tls: ccsrp_proto::tls::ClientTls,
    /// Where fetched artifacts are cached (content-addressed, shared across jobs).
    pub cache_dir: PathBuf,
    /// A local copy of the dataset; without it the worker loads the job's dataset spec as given
    /// (the synthetic dataset is generated locally, deterministically).
    pub data_dir: Option<PathBuf>,
    /// `cpu` or `cuda:N`: the evaluation device. Its kind is the backend the worker registers with.
    pub device: String,
    /// Threads used for evaluation (informational to the master; the CLI sizes candle's pool).
    pub threads: u32,
    /// This worker's id; a fresh UUID per process unless given.
    pub worker_id: uuid::Uuid,
    /// Give up when the master has been unreachable this long (None: never).
    pub give_up_after: Option<Duration>,
}

/// Runs the worker until the master says the job is done (`Ok`), the master refuses the worker,
/// `shutdown` resolves (`Ok`, leaving any leased task to expire and be re-run elsewhere; its
/// computation is cancelled and ends at its next batch), or the master stays unreachable for
/// `give_up_after`.
pub async fn run_worker(
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let cancel = Cancel::new();
    tokio::pin!(shutdown);
    tokio::select! {
        r = work(options, &cancel) => r,
        () = &mut shutdown => {
            cancel.cancel();
            tracing::info!("worker shutting down: the task in progress stops at its next batch");
            Ok(())
        }
    }
}

fn backend_of(device: &str) -> &str {
    if device.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    }
}

/// Whether a failed call means "try again later" rather than "you are not welcome".
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::BadUrl { .. }
        | ClientError::TlsSettings(_)
        | ClientError::Tls { .. }
        | ClientError::Artifact { .. } => false,
        ClientError::Rpc { status: s, .. } => matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Internal
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::NotFound
        ),
    }
}

/// Exponential backoff between reconnection attempts, with a deadline after the last success.
struct Backoff {
    delay: Duration,
    failing_since: Option<Instant>,
    give_up_after: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new(give_up_after: Option<Duration>) -> Backoff {
        Backoff {
            delay: Self::FIRST,
            failing_since: None,
            give_up_after,
        }
    }

    fn succeeded(&mut self) {
        self.delay = Self::FIRST;
        self.failing_since = None;
    }

    /// Waits before the next attempt; Err once the master has been unreachable too long.
    async fn failed(&mut self, master: &str, error: &ClientError) -> Result<(), WorkerError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if let Some(limit) = self.give_up_after {
            if since.elapsed() >= limit {
                return Err(WorkerError::Unreachable {
                    master: master.to_string(),
                    seconds: limit.as_secs(),
                    last: error.to_string(),
                });
            }
        }
        tracing::warn!(master, error = %error, retry_in_ms = self.delay.as_millis() as u64, "master unreachable");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
        Ok(())
    }
}

/// One registered session with the master.
struct Session {
    client: MasterClient,
    job: RegisterReply,
}

async fn register(options: &WorkerOptions, cache: &ArtifactCache) -> Result<Session, ClientError> {
    let token = ccsrp_proto::auth::BearerToken::new(options.token.as_deref()).map_err(|e| {
        ClientError::BadUrl {
            url: options.master.clone(),
            reason: format!("shared token: {e}"),
        }
    })?;
    let mut client = MasterClient::connect_with_tls(&options.master, &token, &options.tls).await?;
    let job = client
        .coordinator
        .register(RegisterRequest {
            worker_id: options.worker_id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            backend: backend_of(&options.device).to_string(),
            device: options.device.clone(),
            threads: options.threads,
            capacity: 1,
            artifacts: cache.names(),
        })
        .await;
    let job = match job {
        Ok(reply) => reply.into_inner(),
        Err(status) => return Err(register_failure(options, status).await),
    };
    Ok(Session { client, job })
}

/// A refused `Register`, or a TLS failure: with TLS 1.3 a master that refuses this worker's
/// certificate says so after the handshake, and the call sees only a closed connection, so a
/// handshake of its own finds the master's reason.
async fn register_failure(options: &WorkerOptions, status: tonic::Status) -> ClientError {
    let mut reason = ccsrp_proto::tls::handshake_failure(&status);
    if reason.is_none()
        && options.tls.is_configured()
        && matches!(
            status.code(),
            Code::Unknown | Code::Cancelled | Code::Unavailable
        )
    {
        reason = options.tls.diagnose(&options.master).await;
    }
    match reason {
        Some(reason) => ClientError::Tls {
            url: options.master.clone(),
            reason,
        },
        None => ClientError::Rpc {
            call: "Register",
            status,
        },
    }
}

/// Connects and registers, retrying transient failures with backoff.
async fn connect(
    options: &WorkerOptions,
    cache: &ArtifactCache,
    backoff: &mut Backoff,
) -> Result<Session, WorkerError> {
    loop {
        match register(options, cache).await {
            Ok(session) => {
                backoff.succeeded();
                tracing::info!(
                    worker_id = %options.worker_id,
                    job = session.job.job_name,
                    backend = session.job.backend,
                    "registered with master"
                );
                return Ok(session);
            }
            Err(e) if is_transient(&e) => backoff.failed(&options.master, &e).await?,
            Err(e) => return Err(WorkerError::Refused(e)),
        }
    }
}

async fn work(options: WorkerOptions, cancel: &Cancel) -> Result<(), WorkerError> {
    let cache = ArtifactCache::open(&options.cache_dir)?;
    let mut backoff = Backoff::new(options.give_up_after);
    let mut session = connect(&options, &cache, &mut backoff).await?;
    let executor = Arc::new(std::sync::Mutex::new(TaskExecutor::new(
        session.job.dataset.clone().unwrap_or_default(),
        options.data_dir.clone(),
        &options.device,
    )?));
    // A finished result not yet acknowledged by the master (sent again after reconnecting).
    let mut unreported: Option<TaskResult> = None;
    loop {
        if let Some(result) = unreported.take() {
            match report(&mut session.client, result.clone()).await {
                Ok(()) => backoff.succeeded(),
                Err(e) if is_transient(&e) || is_unregistered(&e) => {
                    unreported = Some(result);
                    backoff.failed(&options.master, &e).await?;
                    session = connect(&options, &cache, &mut backoff).await?;
                    continue;
                }
                Err(e) => {
                    // The master judged the result malformed: it stays unanswered, the lease
                    // expires and another attempt computes it again.
                    tracing::error!(worker_id = %options.worker_id, task_id = result.task_id, error = %e, "result refused by the master");
                }
            }
        }
        let reply = match lease(&mut session.client, &options).await {
            Ok(reply) => {
                backoff.succeeded();
                reply
            }
            Err(e) if is_transient(&e) || is_unregistered(&e) => {
                backoff.failed(&options.master, &e).await?;
                session = connect(&options, &cache, &mut backoff).await?;
                continue;
            }
            Err(e) => return Err(WorkerError::Refused(e)),
        };
        match LeaseState::try_from(reply.state).unwrap_or(LeaseState::Unspecified) {
            LeaseState::JobDone => {
                tracing::info!(worker_id = %options.worker_id, "job done");
                return Ok(());
            }
            LeaseState::Tasks => {}
            LeaseState::NoWorkYet | LeaseState::Unspecified => continue,
        }
        for task in reply.tasks {
            let result = execute(&options, &session, &cache, &executor, cancel, task).await?;
            if let Some(result) = result {
                unreported = Some(result);
                break;
            }
        }
    }
}

/// A master that restarted forgets its workers: it answers with FAILED_PRECONDITION or
/// NOT_FOUND naming the unknown worker; registering again fixes it.
fn is_unregistered(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| s.code() == Code::FailedPrecondition && s.message().contains("worker"))
}

async fn lease(
    client: &mut MasterClient,
    options: &WorkerOptions,
) -> Result<LeaseReply, ClientError> {
    client
        .coordinator
        .lease(LeaseRequest {
            worker_id: options.worker_id.to_string(),
            max_tasks: 1,
            wait_ms: 2_000,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|status| ClientError::Rpc {
            call: "Lease",
            status,
        })
}

async fn report(client: &mut MasterClient, result: TaskResult) -> Result<(), ClientError> {
    let task_id = result.task_id.clone();
    let summary = client
        .coordinator
        .report(tokio_stream::iter([ResultBatch {
            results: vec![result],
        }]))
        .await
        .map_err(|status| ClientError::Rpc {
            call: "Report",
            status,
        })?
        .into_inner();
    tracing::info!(
        task_id,
        accepted = summary.accepted,
        dropped = summary.dropped,
        "result reported"
    );
    Ok(())
}

/// Runs one task on a blocking thread while heartbeats keep its lease; the result to report. A
/// task that fails (an error, or a panic caught here) is reported as a `TaskFailure` with the
/// reason, quoted and cut short: the master re-issues it, and fails the job after
/// `runtime.max_task_failures` failures of one task. The worker goes on with its next task. A task
/// cancelled by `cancel` is not reported at all: the worker is stopping ([`WorkerError::Stopped`]).
async fn execute(
    options: &WorkerOptions,
    session: &Session,
    cache: &ArtifactCache,
    executor: &Arc<std::sync::Mutex<TaskExecutor>>,
    cancel: &Cancel,
    task: Task,
) -> Result<Option<TaskResult>, WorkerError> {
    let task_id = task.task_id.clone();
    let attempt = task.attempt;
    let started = Instant::now();
    tracing::info!(worker_id = %options.worker_id, task_id, attempt, "task started");

    let heartbeat = {
        let mut client = session.client.clone();
        let request = HeartbeatRequest {
            worker_id: options.worker_id.to_string(),
            task_ids: vec![task_id.clone()],
        };
        let every = Duration::from_millis(session.job.heartbeat_ms.clamp(100, 60_000));
        AbortOnDrop(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match client.coordinator.heartbeat(request.clone()).await {
                    Ok(reply) if !reply.get_ref().lost_task_ids.is_empty() => {
                        tracing::warn!(task_ids = ?reply.get_ref().lost_task_ids, "lease lost: the result will be dropped by the master");
                    }
                    Ok(_) => {}
                    Err(status) => tracing::warn!(error = %status, "heartbeat failed"),
                }
            }
        }))
    };

    let io = ArtifactIo::new(
        session.client.clone(),
        cache.clone(),
        tokio::runtime::Handle::current(),
    );
    let executor = Arc::clone(executor);
    let compute_cancel = cancel.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut executor = executor.lock().map_err(|_| {
            WorkerError::Internal("task executor poisoned by an earlier panic".into())
        })?;
        let run = compute_cancel.scope(|| catch_panic(|| executor.execute(&task, &io)));
        if run.is_err() {
            // What the task left half-built is not to be trusted: drop the caches.
            executor.forget_caches();
        }
        Ok::<_, WorkerError>(run)
    })
    .await;
    drop(heartbeat);
    if cancel.is_cancelled() {
        tracing::info!(worker_id = %options.worker_id, task_id, "task cancelled: not reported");
        return Err(WorkerError::Stopped);
    }
    let outcome: Result<task_result::Outcome, String> = match outcome {
        Ok(Ok(Ok(r))) => r.map_err(|e| e.to_string()),
        Ok(Ok(Err(panic))) => Err(format!("panicked: {panic}")),
        Ok(Err(e)) => return Err(e),
        Err(join) => {
            return Err(WorkerError::Internal(format!(
                "task {task_id} panicked: {join}"
            )))
        }
    };
    match outcome {
        Ok(outcome) => {
            tracing::info!(
                worker_id = %options.worker_id,
                task_id,
                seconds = started.elapsed().as_secs_f64(),
                "task finished"
            );
            Ok(Some(TaskResult {
                worker_id: options.worker_id.to_string(),
                task_id,
                attempt,
                outcome: Some(outcome),
            }))
        }
        Err(e) => {
            tracing::error!(worker_id = %options.worker_id, task_id, error = %e, "task failed");
            Ok(Some(TaskResult {
                worker_id: options.worker_id.to_string(),
                task_id,
                attempt,
                outcome: Some(task_result::Outcome::Failed(TaskFailure {
                    reason: quote(&e),
                })),
            }))
        }
    }
}

/// A task's heartbeat: stopped when the task ends, and also when the worker's future is dropped
/// in the middle of it (shutdown), so no heartbeat outlives its task.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `f`, catching a panic: Err holds the panic's message.
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_devices_register_the_cuda_backend() {
        assert_eq!(backend_of("cuda:1"), "cuda");
        assert_eq!(backend_of("cuda"), "cuda");
        assert_eq!(backend_of("cpu"), "cpu");
    }

    #[test]
    fn a_panicking_task_is_caught_with_its_message() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let index = 9;
        let caught = catch_panic(|| {
            let v: Vec<u32> = Vec::new();
            v[index]
        });
        assert!(
            caught
                .as_ref()
                .is_err_and(|m| m.contains("index out of bounds")),
            "{caught:?}"
        );
        assert_eq!(
            catch_panic(|| -> u32 { panic!("static text") }),
            Err("static text".to_string())
        );
    }

    #[test]
    fn refusals_are_not_retried_but_outages_are() {
        let refused = ClientError::Rpc {
            call: "Register",
            status: tonic::Status::unauthenticated("wrong token"),
        };
        let outage = ClientError::Rpc {
            call: "Lease",
            status: tonic::Status::unavailable("connection refused"),
        };
        assert!(!is_transient(&refused));
        assert!(is_transient(&outage));
    }
}
