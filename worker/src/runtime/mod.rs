//! The worker's side of the distributed runtime: it pulls tasks from a master over gRPC and
//! answers them with this crate's SNN code.
//!
//! - [`worker_loop`]: register, lease, evaluate, report, heartbeat; reconnection with backoff.
//! - [`master_client`]: the channel to the master, the token on every call, chunked artifacts.
//! - [`adversarial_shard`]: the byte form of one shard of the shared adversarial set.
//! - [`artifact_cache`]: fetched models and adversarial shards on disk, named by sha256.
//! - [`tasks`]: each task kind mapped to library calls (training, attacks, evaluation).
//! - [`prefix_cache`]: layer inputs of the representatives network, reused by every candidate of
//!   a layer (DESIGN.md section 5).
//!
//! Every result is a function of the task alone (its seed, masks and artifacts), so it is the same
//! whichever worker computed it, and a task re-run after a lost lease gives the same answer.

pub mod adversarial_shard;
pub mod artifact_cache;
pub mod master_client;
pub mod prefix_cache;
pub mod tasks;
pub mod worker_loop;

pub use uuid::Uuid;
pub use worker_loop::{run_worker, WorkerOptions};

/// Why a worker stopped before its job was done.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the master refused this worker: {0}")]
    Refused(#[source] master_client::ClientError),
    #[error("master {master} unreachable for {seconds} s, giving up (last error: {last})")]
    Unreachable {
        master: String,
        seconds: u64,
        last: String,
    },
    #[error(transparent)]
    Cache(#[from] artifact_cache::CacheError),
    #[error("dataset of the job: {0}")]
    Data(String),
    #[error("device: {0}")]
    Device(String),
    #[error("worker bug: {0}")]
    Internal(String),
    #[error("the worker is stopping: its task in progress was cancelled")]
    Stopped,
}
