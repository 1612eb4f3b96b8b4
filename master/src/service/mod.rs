//! The gRPC services of `ccsrp.v1` over a shared [`crate::job::Job`]:
//! - [`coordinator`]: Register, Lease (long poll), Report (client stream), Heartbeat.
//! - [`artifacts`]: PutArtifact / GetArtifact in 1 MiB chunks, sha256 checked.
//! - [`progress`]: Status, Events (server stream), Fronts.
//!
//! Handlers hold the job lock only inside `Job` methods, never across an await.

pub mod artifacts;
pub mod coordinator;
pub mod progress;
