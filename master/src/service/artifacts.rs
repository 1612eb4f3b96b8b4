//! `ccsrp.v1.Artifacts`: chunked upload and download of content-addressed artifacts.
//!
//! What an upload may make the master hold is bounded: its buffer grows with the bytes that
//! arrive (never from the size the first chunk announces) up to `runtime.max_artifact_mib`; an
//! upload that sends nothing for `runtime.upload_idle_seconds` is cancelled; at most
//! `runtime.max_uploads_per_connection` uploads run on one connection (RESOURCE_EXHAUSTED beyond)
//! and `runtime.max_uploads` in all (a further one waits up to the idle timeout for a slot, then
//! RESOURCE_EXHAUSTED). A partial upload is freed as soon as it ends: finished, refused, idle,
//! cancelled by the client or cut off with its connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ccsrp_proto::artifact_chunks::{chunks, is_sha256_hex, Assembler, TransferError};
use ccsrp_proto::v1::artifacts_server::Artifacts;
use ccsrp_proto::v1::{ArtifactChunk, ArtifactInfo, GetArtifactRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::artifact_store::StoreError;
use crate::job::Job;
use crate::peer_log::{peer_of, show};

/// The artifact service of one job.
pub struct ArtifactService {
    job: Arc<Job>,
    uploads: Arc<Uploads>,
}

impl ArtifactService {
    pub fn new(job: Arc<Job>) -> ArtifactService {
        let s = job.settings();
        let uploads = Arc::new(Uploads::new(s.max_uploads, s.max_uploads_per_connection));
        ArtifactService { job, uploads }
    }
}

/// The uploads in progress: slots in total and per connection.
#[derive(Debug)]
pub struct Uploads {
    total: Arc<Semaphore>,
    max_total: u32,
    per_connection: Mutex<HashMap<Option<SocketAddr>, u32>>,
    max_per_connection: u32,
}

/// One upload's slot, given back when dropped.
#[derive(Debug)]
pub struct UploadSlot {
    uploads: Arc<Uploads>,
    connection: Option<SocketAddr>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut per = self
            .uploads
            .per_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per.get_mut(&self.connection) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.connection);
            }
        }
    }
}

impl Uploads {
    pub fn new(max_total: u32, max_per_connection: u32) -> Uploads {
        Uploads {
            total: Arc::new(Semaphore::new(max_total as usize)),
            max_total,
            per_connection: Mutex::new(HashMap::new()),
            max_per_connection,
        }
    }

    /// A slot for an upload on `connection`: refused at once when the connection has its
    /// maximum in progress, after waiting up to `wait` when every slot is taken.
    pub async fn enter(
        self: &Arc<Self>,
        connection: Option<SocketAddr>,
        wait: Duration,
    ) -> Result<UploadSlot, Status> {
        let mut slot = {
            let mut per = self
                .per_connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = per.entry(connection).or_insert(0);
            if *n >= self.max_per_connection {
                return Err(Status::resource_exhausted(format!(
                    "{n} uploads in progress on this connection, the most one connection may run (runtime.max_uploads_per_connection = {}): finish one first",
                    self.max_per_connection
                )));
            }
            *n += 1;
            UploadSlot {
                uploads: self.clone(),
                connection,
                _permit: None,
            }
        };
        match tokio::time::timeout(wait, self.total.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                slot._permit = Some(permit);
                Ok(slot)
            }
            Ok(Err(_closed)) => Err(Status::unavailable("master is shutting down")),
            Err(_) => Err(Status::resource_exhausted(format!(
                "every upload slot is taken (runtime.max_uploads = {}) and none came free within {} s: retry later",
                self.max_total,
                wait.as_secs_f64()
            ))),
        }
    }

    /// Uploads in progress now.
    pub fn in_progress(&self) -> usize {
        self.max_total as usize - self.total.available_permits()
    }
}

fn transfer_status(e: TransferError, limit_mib: u64) -> Status {
    match e {
        TransferError::DigestMismatch { .. } => Status::data_loss(e.to_string()),
        TransferError::TooLarge { .. } => {
            Status::invalid_argument(format!("{e} (runtime.max_artifact_mib = {limit_mib})"))
        }
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
        let connection = request.remote_addr();
        let peer = peer_of(connection);
        let settings = self.job.settings();
        let idle = settings.upload_idle;
        let refused = |status: Status| {
            if self.job.peer_log().allow(peer, "artifact upload refused") {
                tracing::warn!(peer = %show(peer), code = ?status.code(), reason = status.message(), "artifact upload refused");
            }
            status
        };
        let _slot = self
            .uploads
            .enter(connection, idle)
            .await
            .map_err(refused)?;
        let mut stream = request.into_inner();
        let limit_mib = settings.max_artifact_bytes >> 20;
        let mut assembler = Assembler::new(settings.max_artifact_bytes);
        loop {
            let next = match tokio::time::timeout(idle, stream.message()).await {
                Ok(next) => next?,
                Err(_) => {
                    return Err(refused(Status::deadline_exceeded(format!(
                        "upload sent nothing for {} s (runtime.upload_idle_seconds): cancelled, the {} bytes received are dropped",
                        idle.as_secs_f64(),
                        assembler.received()
                    ))))
                }
            };
            let Some(chunk) = next else { break };
            assembler
                .push(chunk)
                .map_err(|e| refused(transfer_status(e, limit_mib)))?;
        }
        let (sha256, bytes) = assembler
            .finish()
            .map_err(|e| refused(transfer_status(e, limit_mib)))?;
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
            return Err(store_status(StoreError::BadName(
                ccsrp_proto::quote::quote(&name),
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test]
    async fn slots_are_capped_per_connection_and_in_total_and_given_back() {
        let uploads = Arc::new(Uploads::new(3, 2));
        let wait = Duration::from_millis(50);
        let a1 = uploads.enter(conn(1), wait).await.unwrap();
        let _a2 = uploads.enter(conn(1), wait).await.unwrap();
        let err = uploads.enter(conn(1), wait).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message()
                .contains("runtime.max_uploads_per_connection = 2"),
            "{}",
            err.message()
        );
        let _b1 = uploads.enter(conn(2), wait).await.unwrap();
        assert_eq!(uploads.in_progress(), 3);
        let err = uploads.enter(conn(3), wait).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("runtime.max_uploads = 3"),
            "{}",
            err.message()
        );
        // A refused upload holds nothing; an ended one gives its slot back.
        assert_eq!(uploads.in_progress(), 3);
        drop(a1);
        assert_eq!(uploads.in_progress(), 2);
        let _c1 = uploads.enter(conn(3), wait).await.unwrap();
        let a3 = uploads.enter(conn(1), wait).await;
        assert!(a3.is_err(), "every slot is taken again");
        let per = uploads.per_connection.lock().unwrap();
        assert_eq!(per.get(&conn(1)), Some(&1));
        assert_eq!(per.get(&conn(3)), Some(&1));
    }

    #[tokio::test]
    async fn a_waiting_upload_gets_the_slot_another_gives_back() {
        let uploads = Arc::new(Uploads::new(1, 1));
        let first = uploads.enter(conn(1), Duration::ZERO).await.unwrap();
        let waiter = {
            let uploads = uploads.clone();
            tokio::spawn(async move { uploads.enter(conn(2), Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
    }
}
