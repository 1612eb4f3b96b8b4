//! `ccsrp.v1.Artifacts`: chunked upload and download of content-addressed artifacts.

use std::pin::Pin;
use std::sync::Arc;

use ccsrp_proto::artifact_chunks::{chunks, is_sha256_hex, Assembler, TransferError};
use ccsrp_proto::v1::artifacts_server::Artifacts;
use ccsrp_proto::v1::{ArtifactChunk, ArtifactInfo, GetArtifactRequest};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::artifact_store::StoreError;
use crate::job::Job;

/// The artifact service of one job.
pub struct ArtifactService {
    job: Arc<Job>,
}

impl ArtifactService {
    pub fn new(job: Arc<Job>) -> ArtifactService {
        ArtifactService { job }
    }
}

fn transfer_status(e: TransferError) -> Status {
    match e {
        TransferError::DigestMismatch { .. } => Status::data_loss(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::BadName(_) => Status::invalid_argument(e.to_string()),
        StoreError::Missing(_) => Status::not_found(e.to_string()),
        StoreError::Corrupt { .. } => Status::data_loss(e.to_string()),
        StoreError::Io { .. } => Status::internal(e.to_string()),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Artifacts for ArtifactService {
    async fn put_artifact(
        &self,
        request: Request<Streaming<ArtifactChunk>>,
    ) -> Result<Response<ArtifactInfo>, Status> {
        let mut stream = request.into_inner();
        let mut assembler = Assembler::new(self.job.settings().max_artifact_bytes);
        while let Some(chunk) = stream.message().await? {
            assembler.push(chunk).map_err(|e| {
                tracing::warn!(reason = %e, "artifact upload refused");
                transfer_status(e)
            })?;
        }
        let (sha256, bytes) = assembler.finish().map_err(|e| {
            tracing::warn!(reason = %e, "artifact upload refused");
            transfer_status(e)
        })?;
        let size = bytes.len() as u64;
        let job = self.job.clone();
        let stored = tokio::task::spawn_blocking(move || job.store().put(&bytes))
            .await
            .map_err(|e| Status::internal(format!("artifact store task failed: {e}")))?
            .map_err(store_status)?;
        debug_assert_eq!(stored, sha256);
        tracing::debug!(sha256 = %sha256, bytes = size, "artifact stored");
        Ok(Response::new(ArtifactInfo {
            sha256,
            bytes: size,
        }))
    }

    type GetArtifactStream = ChunkStream;

    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let name = request.into_inner().sha256;
        if !is_sha256_hex(&name) {
            return Err(store_status(StoreError::BadName(name)));
        }
        let job = self.job.clone();
        let lookup = name.clone();
        let bytes = tokio::task::spawn_blocking(move || job.store().get(&lookup))
            .await
            .map_err(|e| Status::internal(format!("artifact store task failed: {e}")))?
            .map_err(store_status)?;
        let stream = tokio_stream::iter(chunks(&bytes, &name).into_iter().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}
