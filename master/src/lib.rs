//! The ccsrp master: everything that decides, nothing that computes tensors.
//!
//! # The coevolution engine (pure: no I/O, no clocks, no tensors)
//! - [`engine`]: [`Engine`], the outer loop of CCSRP as an ask/tell state machine over a
//!   [`JobSpec`]; the runtime and the in-process evaluator drive it the same way.
//! - [`work`]: the items it hands out ([`WorkItem`], [`WorkKind`]) and the results it takes
//!   ([`WorkResult`], [`WorkOutput`]).
//! - [`config`]: [`EngineConfig`], the `[evolution]`, `[objectives]`, `[stop]`, `[adversarial]`,
//!   `[finetune]`, `[test_attack]`, `[pretrain]` sections of a job file, with defaults and checks.
//! - [`subpopulation`]: one layer's members, offspring, (mu + lambda) selection, representative.
//! - [`variation`]: initial masks, bit-flip mutation, uniform crossover, ratio-bound repair.
//! - [`pareto`]: non-dominated sorting and crowding distance (NSGA-II).
//! - [`preference`]: the weighted score that picks a representative from a first front.
//! - [`fitness`]: the integer fitness triple and its exact aggregation over shards.
//! - [`splice`]: model descriptions, splicing, and the map back to the dense model's filters.
//! - [`rng`]: one seeded stream per (purpose, iteration, layer, generation, shard).
//! - [`history`], [`outcome`], [`progress`]: what the search saw, what it answered, where it is.
//!
//! # The runtime (gRPC, leases, artifacts, checkpoints)
//! - [`server`]: [`server::serve`] runs one job on a listener until done or shut down; writes the
//!   final checkpoint and the results ([`results`]), then the report ([`report`]: `report.html`
//!   and its SVG figures, drawn with `plotters`).
//! - [`job`]: the served state (engine + [`lease::LeaseTable`] + workers + artifact store), one
//!   lock held only for bookkeeping; [`wire`] maps work items and results to `ccsrp.v1`.
//! - [`service`]: the Coordinator, Artifacts and Progress gRPC services.
//! - [`lease`], [`artifact_store`], [`checkpoint`], [`auth`], [`shutdown`]: one concept each.
//! - [`peer_log`]: log lines about peers, rate-limited per peer (client strings in messages are
//!   quoted through `ccsrp_proto::quote`, cut to a few hundred bytes).
//! - [`job_config`]: the job file; [`dense_model`]: a given model's description without tensors;
//!   [`client`]: connections for the progress readers (`ccsrp status/watch/health`).

pub mod config;
pub mod engine;
pub mod fitness;
pub mod history;
pub mod outcome;
pub mod pareto;
pub mod preference;
pub mod progress;
pub mod rng;
pub mod splice;
pub mod subpopulation;
pub mod variation;
pub mod work;

pub mod artifact_store;
pub mod auth;
pub mod checkpoint;
pub mod client;
pub mod dense_model;
pub mod job;
pub mod job_config;
pub mod lease;
pub mod peer_log;
pub mod report;
pub mod results;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod wire;

pub use config::EngineConfig;
pub use engine::{DenseModel, Engine, EngineError, JobSpec, TellError};
pub use history::{History, LayerFront};
pub use outcome::Outcome;
pub use progress::{Phase, Progress, Steps};
pub use work::{
    ArtifactRef, CandidateCount, CandidateId, HeldOutMetrics, ModelRef, TestMetrics, Told, WorkId,
    WorkItem, WorkKind, WorkOutput, WorkResult,
};
