//! Connections for the progress readers (`ccsrp status`, `ccsrp watch`, `ccsrp health`): a channel
//! to a master URL (TLS for `https://`, see `ccsrp_proto::tls`), the token on every call, and the
//! standard health check.

use ccsrp_proto::auth::BearerToken;
use ccsrp_proto::tls::{handshake_failure, ClientTls};
use ccsrp_proto::v1::progress_client::ProgressClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("master at {url}: {detail}")]
    Tls { url: String, detail: String },
    #[error(transparent)]
    TlsSettings(#[from] ccsrp_proto::tls::TlsError),
    #[error("token: {0}")]
    Token(#[from] ccsrp_proto::auth::BadToken),
}

/// A progress client with the token attached to each call.
pub type Progress = ProgressClient<InterceptedService<Channel, BearerToken>>;

/// Connects to `url` (`http://host:port` or, with TLS, `https://host:port`; a bare `host:port`
/// gets `https://` when `tls` has files, else `http://`).
pub async fn channel(url: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    let endpoint = tls.endpoint(url)?;
    let full = endpoint.uri().to_string();
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| match handshake_failure(&e) {
            Some(detail) => ClientError::Tls {
                url: full.clone(),
                detail,
            },
            None => ClientError::Connect {
                url: full.clone(),
                detail: e.to_string(),
            },
        })
}

/// A progress client for `url`, sending `token` when given.
pub async fn progress(
    url: &str,
    token: Option<&str>,
    tls: &ClientTls,
) -> Result<Progress, ClientError> {
    let interceptor = BearerToken::new(token)?;
    Ok(ProgressClient::with_interceptor(
        channel(url, tls).await?,
        interceptor,
    ))
}

/// A failed call's message for people: what went wrong with TLS when that is why (a master
/// refusing this client's certificate shows only as a closed connection to the call, so
/// [`ClientTls::diagnose`] asks the master itself), else the status message and code.
pub async fn explain(url: &str, tls: &ClientTls, status: &tonic::Status) -> String {
    if let Some(reason) = handshake_failure(status) {
        return reason;
    }
    if tls.is_configured()
        && matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
        )
    {
        if let Some(reason) = tls.diagnose(url).await {
            return reason;
        }
    }
    // A TLS master cuts a plain HTTP/2 connection short: the call sees a cancelled or broken one.
    let plain = tls
        .endpoint(url)
        .is_ok_and(|e| e.uri().scheme_str() == Some("http"));
    let hint = if plain
        && matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
        ) {
        "; if the master serves TLS (--tls-cert), dial it with https:// and --tls-ca"
    } else {
        ""
    };
    format!("{} ({:?}){hint}", status.message(), status.code())
}

/// The standard gRPC health status of the whole server (service ""): Ok(true) when SERVING.
pub async fn is_serving(url: &str, tls: &ClientTls) -> Result<bool, tonic::Status> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let channel = channel(url, tls)
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
