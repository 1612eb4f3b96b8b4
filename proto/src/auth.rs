//! The shared-token scheme of `ccsrp.v1`: every RPC carries `authorization: Bearer <token>` when the
//! job has a token. [`BearerToken`] is the client side (a tonic interceptor); [`check`] is the rule
//! the master applies to every request.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// Metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// Client interceptor adding the job's token (or nothing when the job has none).
#[derive(Clone, Default)]
pub struct BearerToken {
    header: Option<MetadataValue<Ascii>>,
}

/// A token that cannot travel in gRPC metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token must be non-empty printable ASCII without spaces")]
pub struct BadToken;

impl BearerToken {
    /// An interceptor sending `token`, or no header at all for `None`.
    pub fn new(token: Option<&str>) -> Result<BearerToken, BadToken> {
        let header = match token {
            None => None,
            Some(t) => {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(BadToken);
                }
                Some(format!("Bearer {t}").parse().map_err(|_| BadToken)?)
            }
        };
        Ok(BearerToken { header })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        Ok(req)
    }
}

/// Accepts `req` when `expected` is `None` or its bearer token equals `expected` (compared in
/// constant time); otherwise UNAUTHENTICATED saying whether the token was missing or wrong.
pub fn check<T>(req: &Request<T>, expected: Option<&str>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(value) = req.metadata().get(AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing `authorization: Bearer <token>` metadata: this job requires a token",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated("wrong token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn sent_with(token: Option<&str>) -> Request<()> {
        BearerToken::new(token)
            .unwrap()
            .call(Request::new(()))
            .unwrap()
    }

    #[test]
    fn matching_token_is_accepted() {
        assert!(check(&sent_with(Some("s3cret")), Some("s3cret")).is_ok());
    }

    #[test]
    fn wrong_or_missing_token_is_unauthenticated() {
        let wrong = check(&sent_with(Some("nope")), Some("s3cret")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = check(&sent_with(None), Some("s3cret")).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing"));
    }

    #[test]
    fn job_without_token_accepts_everyone() {
        assert!(check(&sent_with(Some("anything")), None).is_ok());
        assert!(check(&sent_with(None), None).is_ok());
    }

    #[test]
    fn tokens_with_spaces_or_control_bytes_are_refused() {
        assert!(BearerToken::new(Some("a b")).is_err());
        assert!(BearerToken::new(Some("")).is_err());
        assert!(BearerToken::new(Some("a\n")).is_err());
    }
}
