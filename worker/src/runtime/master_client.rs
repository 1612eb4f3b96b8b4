//! The worker's connection to its master: one gRPC channel carrying the `Coordinator` and
//! `Artifacts` services, the shared-token header on every call, and chunked artifact transfer. The
//! channel is TLS for an `https://` master (`ccsrp_proto::tls`); a failed TLS handshake is
//! [`ClientError::Tls`], which retrying cannot fix.
//!
//! Artifacts move in chunks of [`CHUNK_BYTES`] (1 MiB), far below gRPC's 4 MiB message limit, and
//! are checked against their sha256 on arrival; a download that does not hash to its name is an
//! error, never cached.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

use ccsrp_proto::artifact_chunks::{chunks, sha256_hex, Assembler};
use ccsrp_proto::auth::BearerToken;
use ccsrp_proto::tls::{handshake_failure, ClientTls};
use ccsrp_proto::v1::artifacts_client::ArtifactsClient;
use ccsrp_proto::v1::coordinator_client::CoordinatorClient;
use ccsrp_proto::v1::GetArtifactRequest;

/// Largest artifact a worker accepts from a master (a hostile size must not exhaust memory).
pub const MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// A failed exchange with the master.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("master address {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to master {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    TlsSettings(#[from] ccsrp_proto::tls::TlsError),
    #[error("TLS with master {url}: {reason}")]
    Tls { url: String, reason: String },
    #[error("{call}: {status}")]
    Rpc {
        call: &'static str,
        #[source]
        status: Status,
    },
    #[error("artifact {sha256}: {reason}")]
    Artifact { sha256: String, reason: String },
}

impl ClientError {
    /// The gRPC status of a failed call, when the master answered at all.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// Clients of both worker-facing services over one channel.
#[derive(Clone)]
pub struct MasterClient {
    pub coordinator: CoordinatorClient<InterceptedService<Channel, BearerToken>>,
    pub artifacts: ArtifactsClient<InterceptedService<Channel, BearerToken>>,
}

impl MasterClient {
    /// Dials `url` (e.g. `http://127.0.0.1:50051`) without TLS files (an `https://` URL trusts
    /// the public web roots).
    pub async fn connect(url: &str, token: &BearerToken) -> Result<MasterClient, ClientError> {
        MasterClient::connect_with_tls(url, token, &ClientTls::none()).await
    }

    /// Dials `url` with `tls`: `https://` over TLS, `http://` plain.
    pub async fn connect_with_tls(
        url: &str,
        token: &BearerToken,
        tls: &ClientTls,
    ) -> Result<MasterClient, ClientError> {
        let endpoint = tls.endpoint(url)?;
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| match handshake_failure(&source) {
                Some(reason) => ClientError::Tls {
                    url: url.to_string(),
                    reason,
                },
                None => ClientError::Connect {
                    url: url.to_string(),
                    source,
                },
            })?;
        Ok(MasterClient {
            coordinator: CoordinatorClient::with_interceptor(channel.clone(), token.clone()),
            artifacts: ArtifactsClient::with_interceptor(channel, token.clone()),
        })
    }

    /// Uploads `bytes` in 1 MiB chunks and returns their sha256, the artifact's name.
    pub async fn put_artifact(&mut self, bytes: &[u8]) -> Result<String, ClientError> {
        let sha256 = sha256_hex(bytes);
        let info = self
            .artifacts
            .put_artifact(tokio_stream::iter(chunks(bytes, &sha256)))
            .await
            .map_err(|status| ClientError::Rpc {
                call: "PutArtifact",
                status,
            })?
            .into_inner();
        if info.sha256 != sha256 {
            return Err(ClientError::Artifact {
                sha256,
                reason: format!("master stored it as {}", info.sha256),
            });
        }
        Ok(sha256)
    }

    /// Downloads artifact `sha256`; its bytes are checked to hash to the name.
    pub async fn get_artifact(&mut self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        let fail = |reason: String| ClientError::Artifact {
            sha256: sha256.to_string(),
            reason,
        };
        let rpc = |status| ClientError::Rpc {
            call: "GetArtifact",
            status,
        };
        let mut stream = self
            .artifacts
            .get_artifact(GetArtifactRequest {
                sha256: sha256.to_string(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let mut assembler = Assembler::new(MAX_ARTIFACT_BYTES);
        while let Some(chunk) = stream.message().await.map_err(rpc)? {
            assembler.push(chunk).map_err(|e| fail(e.to_string()))?;
        }
        let (name, bytes) = assembler.finish().map_err(|e| fail(e.to_string()))?;
        if name != sha256 {
            return Err(fail(format!("master sent artifact {name} instead")));
        }
        Ok(bytes)
    }
}
