//! Wire types of ccsrp: the versioned gRPC package `ccsrp.v1` (compiled from `proto/ccsrp/v1/*.proto`)
//! and the arithmetic on the model description that master and workers must agree on exactly.
//!
//! - [`v1`]: generated messages and services (model description; the `Coordinator`, `Artifacts`
//!   and `Progress` services).
//! - [`activity`]: spikes and synaptic operations (SOPs) per layer, and each spike's fan-out.
//! - [`artifact_chunks`]: cutting artifacts into 1 MiB chunks and reassembling them, sha256 checked.
//! - [`auth`]: the shared bearer token (client interceptor and the server's check).
//! - [`cost`]: MACs and parameter counts of a model description for any per-layer filter counts.
//! - [`energy`]: energy estimate (E_AC x SOPs + E_MAC x first-layer MACs) and the ANN's.
//! - [`mask`]: packing and checking of per-layer keep-masks.
//! - [`quote`]: bounded quoting of peer input in status messages and log lines.
//! - [`shard`]: the one rule that cuts a split into shards.
//! - [`tls`]: TLS for the gRPC connections (PEM files into tonic's config types, handshake errors).

pub mod activity;
pub mod artifact_chunks;
pub mod auth;
pub mod cost;
pub mod energy;
pub mod mask;
pub mod quote;
pub mod shard;
pub mod tls;

/// Generated code of the `ccsrp.v1` protobuf package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ccsrp.v1");
}

/// The protocol version this build speaks (`ccsrp.v1.ProtocolVersion.PROTOCOL_VERSION_CURRENT`).
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::Current as u32;

/// Encoded `FileDescriptorSet` of `ccsrp.v1`, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ccsrp_v1_descriptor");
