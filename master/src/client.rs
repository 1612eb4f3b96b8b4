//! Connections for the progress readers (`ccsrp status`, `ccsrp watch`, `ccsrp health`): a channel
//! to a master URL, the token on every call, and the standard health check.

use ccsrp_proto::auth::BearerToken;
use ccsrp_proto::v1::progress_client::ProgressClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A client call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("master URL {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot reach the master at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("token: {0}")]
    Token(#[from] ccsrp_proto::auth::BadToken),
}

/// A progress client with the token attached to each call.
pub type Progress = ProgressClient<InterceptedService<Channel, BearerToken>>;

/// Connects to `url` (`http://host:port`; a bare `host:port` gets `http://`).
pub async fn channel(url: &str) -> Result<Channel, ClientError> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(full.clone()).map_err(|e| ClientError::Url {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            url: full,
            detail: e.to_string(),
        })
}

/// A progress client for `url`, sending `token` when given.
pub async fn progress(url: &str, token: Option<&str>) -> Result<Progress, ClientError> {
    let interceptor = BearerToken::new(token)?;
    Ok(ProgressClient::with_interceptor(
        channel(url).await?,
        interceptor,
    ))
}

/// The standard gRPC health status of the whole server (service ""): Ok(true) when SERVING.
pub async fn is_serving(url: &str) -> Result<bool, tonic::Status> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let channel = channel(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(reply.status == ServingStatus::Serving as i32)
}
