//! The master's side of the optional shared token: loading it, and the interceptor that checks it on
//! every RPC of every service (`ccsrp_proto::auth::check`), so a worker or client without it gets
//! UNAUTHENTICATED before any handler runs. Refusals are logged rate-limited per peer
//! ([`crate::peer_log`]): a client hammering the master without the token adds a few lines and a
//! periodic count, not a line per call.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::peer_log::{peer_of, show, PeerLog};

/// Environment variable holding the job's token (used when no token file is given).
pub const TOKEN_ENV: &str = "CCSRP_TOKEN";

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("token from {source_name}: must be non-empty printable ASCII without spaces")]
    Malformed { source_name: String },
}

/// The job's shared token, if it has one.
#[derive(Debug, Clone, Default)]
pub struct AccessToken(Option<Arc<str>>);

impl AccessToken {
    /// No token: every request is accepted.
    pub fn none() -> AccessToken {
        AccessToken(None)
    }

    /// A token given directly (e.g. by an embedding program).
    pub fn new(token: &str, source_name: &str) -> Result<AccessToken, TokenError> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed {
                source_name: source_name.to_string(),
            });
        }
        Ok(AccessToken(Some(token.into())))
    }

    /// The token from `file` (surrounding whitespace ignored) when given, else from
    /// [`TOKEN_ENV`] when set and non-empty, else none.
    pub fn load(file: Option<&Path>) -> Result<AccessToken, TokenError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
                path: path.display().to_string(),
                error,
            })?;
            return AccessToken::new(&text, &path.display().to_string());
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => AccessToken::new(&v, TOKEN_ENV),
            _ => Ok(AccessToken::none()),
        }
    }

    /// The token's text, if any.
    pub fn secret(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Interceptor for every service: refuses requests without the job's token.
#[derive(Clone)]
pub struct RequireToken {
    token: AccessToken,
    log: Arc<PeerLog>,
}

impl RequireToken {
    /// Refusals logged through a log of their own.
    pub fn new(token: AccessToken) -> RequireToken {
        RequireToken::with_log(token, Arc::new(PeerLog::default()))
    }

    /// Refusals logged through `log` (the job's, so one flush summarises every peer).
    pub fn with_log(token: AccessToken, log: Arc<PeerLog>) -> RequireToken {
        RequireToken { token, log }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if let Err(status) = ccsrp_proto::auth::check(&req, self.token.secret()) {
            let peer = peer_of(req.remote_addr());
            if self.log.allow(peer, "request refused") {
                tracing::warn!(peer = %show(peer), reason = status.message(), "request refused");
            }
            return Err(status);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(
            AccessToken::load(Some(&path)).unwrap().secret(),
            Some("abc123")
        );
        std::fs::write(&path, "has space").unwrap();
        let err = AccessToken::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
    }

    #[test]
    fn missing_token_file_names_the_file() {
        let err = AccessToken::load(Some(Path::new("/nonexistent/tok")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tok"), "{err}");
    }
}
