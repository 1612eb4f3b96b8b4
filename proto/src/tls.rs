//! Transport security of ccsrp's gRPC: TLS through rustls (tonic's `tls-ring` feature).
//!
//! - [`server_config`]: the master's certificate chain and key (`--tls-cert`, `--tls-key`) and,
//!   for mutual TLS, the CA its clients' certificates must be signed by (`--tls-client-ca`).
//! - [`ClientTls`]: what a client trusts (`--tls-ca`, the CA that signed the master's certificate;
//!   the public web roots without it) and its own certificate for mutual TLS (`--tls-cert`,
//!   `--tls-key`); [`ClientTls::endpoint`] dials a master URL: `https://` uses TLS, `http://` is
//!   plain, and TLS files with an `http://` URL are an error rather than silently unused.
//! - [`handshake_failure`]: recognises a failed TLS handshake inside a connection or call error,
//!   so that callers report it (a refusal: retrying cannot help) instead of retrying.
//!
//! Every PEM file is read and checked here once, at startup: a missing, unreadable or invalid
//! file, or a key that does not belong to its certificate, is an error naming the flag and the
//! file. The bearer token stays a second factor on top of TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: cannot read it: {error}")]
    Read {
        flag: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{flag} {path}: {detail}")]
    Invalid {
        flag: &'static str,
        path: String,
        detail: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("master URL {url:?}: {detail}")]
    Url { url: String, detail: String },
}

/// One PEM file given by a flag.
struct PemFile {
    flag: &'static str,
    path: String,
    bytes: Vec<u8>,
}

impl PemFile {
    fn read(flag: &'static str, path: &Path) -> Result<PemFile, TlsError> {
        let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
            flag,
            path: path.display().to_string(),
            error,
        })?;
        Ok(PemFile {
            flag,
            path: path.display().to_string(),
            bytes,
        })
    }

    fn invalid(&self, detail: impl Into<String>) -> TlsError {
        TlsError::Invalid {
            flag: self.flag,
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// Every certificate in the file; at least one.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(self.invalid(
                "no certificate in it (expected a PEM block `-----BEGIN CERTIFICATE-----`)",
            ));
        }
        Ok(certs)
    }

    /// The first private key in the file.
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => self.invalid(
                "no private key in it (expected a PEM block `-----BEGIN PRIVATE KEY-----`, \
                 `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
            ),
            e => self.invalid(format!("not valid PEM: {e}")),
        })
    }

    /// The file's certificates as trust anchors (a CA bundle); each must parse as one.
    fn trust_anchors(&self) -> Result<Certificate, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in self.certificates()?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                self.invalid(format!("certificate {} is not a usable CA: {e}", i + 1))
            })?;
        }
        Ok(Certificate::from_pem(&self.bytes))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `key` is the private key of the first certificate of `cert` (and that rustls can
/// sign with it), returning the pair as a tonic identity.
fn identity(cert: &PemFile, key: &PemFile) -> Result<Identity, TlsError> {
    let chain = cert.certificates()?;
    let private_key = key.private_key()?;
    let signing_key = provider()
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| key.invalid(format!("unusable private key: {e}")))?;
    rustls::sign::CertifiedKey::new(chain, signing_key)
        .keys_match()
        .or_else(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
            e => Err(e),
        })
        .map_err(|e| {
            TlsError::Usage(format!(
                "{} {} does not fit the certificate in {} {}: {e}",
                key.flag, key.path, cert.flag, cert.path
            ))
        })?;
    Ok(Identity::from_pem(&cert.bytes, &key.bytes))
}

/// The master's TLS: its certificate chain `cert` and key `key` (PEM), and with `client_ca` mutual
/// TLS: every client must present a certificate signed by that CA.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    let cert = PemFile::read("--tls-cert", cert)?;
    let key = PemFile::read("--tls-key", key)?;
    let mut config = ServerTlsConfig::new().identity(identity(&cert, &key)?);
    if let Some(ca) = client_ca {
        let ca = PemFile::read("--tls-client-ca", ca)?;
        config = config.client_ca_root(ca.trust_anchors()?);
    }
    Ok(config)
}

/// A client's TLS settings: none (plain `http://`, or the public web roots for `https://`), or
/// the CA that signed the master's certificate and optionally a client certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// Built from the files; None when no file was given.
    config: Option<ClientTlsConfig>,
}

impl ClientTls {
    /// No TLS files: `http://` is plain, `https://` trusts the public web roots.
    pub fn none() -> ClientTls {
        ClientTls::default()
    }

    /// Reads and checks the files: `ca` (`--tls-ca`, the CA bundle that signed the master's
    /// certificate) and the client certificate `cert` (`--tls-cert`) with its key `key`
    /// (`--tls-key`) for a master that requires mutual TLS.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(ClientTls::none());
        }
        let mut config = ClientTlsConfig::new();
        match ca {
            Some(ca) => {
                config = config.ca_certificate(PemFile::read("--tls-ca", ca)?.trust_anchors()?)
            }
            None => config = config.with_webpki_roots(),
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert = PemFile::read("--tls-cert", cert)?;
                let key = PemFile::read("--tls-key", key)?;
                config = config.identity(identity(&cert, &key)?);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => return Err(TlsError::Usage(
                "--tls-cert and --tls-key go together: a client certificate and its private key"
                    .into(),
            )),
        }
        Ok(ClientTls {
            config: Some(config),
        })
    }

    /// Whether any TLS file was given.
    pub fn is_configured(&self) -> bool {
        self.config.is_some()
    }

    /// The endpoint for a master at `url`: `https://host:port` with TLS, `http://host:port` plain;
    /// a bare `host:port` gets `https://` when TLS files were given, else `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let full = if url.contains("://") {
            url.to_string()
        } else if self.is_configured() {
            format!("https://{url}")
        } else {
            format!("http://{url}")
        };
        let bad = |detail: String| TlsError::Url {
            url: url.to_string(),
            detail,
        };
        let endpoint = Endpoint::from_shared(full.clone()).map_err(|e| bad(e.to_string()))?;
        match endpoint.uri().scheme_str() {
            Some("https") => {
                let config = self
                    .config
                    .clone()
                    .unwrap_or_else(|| ClientTlsConfig::new().with_webpki_roots());
                endpoint
                    .tls_config(config)
                    .map_err(|e| bad(format!("TLS settings: {e}")))
            }
            Some("http") if self.is_configured() => Err(TlsError::Usage(format!(
                "--tls-ca/--tls-cert given but the master URL {full} is plain http://: use https:// \
                 for a master serving TLS (or drop the TLS flags)"
            ))),
            Some("http") => Ok(endpoint),
            other => Err(bad(format!(
                "unsupported scheme {:?}: expected http:// or https://",
                other.unwrap_or("")
            ))),
        }
    }
}

/// Why a TLS handshake failed, when `error` or one of its sources is a rustls error: a sentence
/// saying what to change. None for errors that are not about TLS (a refused connection, say).
pub fn handshake_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        // io::Error::source skips the error it wraps: look inside.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(explain(tls));
        }
        current = e.source();
    }
    None
}

fn explain(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => format!(
            "TLS handshake failed: the master's certificate is not signed by a CA this client trusts \
             ({error}); give --tls-ca the CA certificate that signed the master's --tls-cert"
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "TLS handshake failed: the master's certificate does not name the host of the URL \
             ({error}); dial a name or address listed in its subject alternative names"
        ),
        Error::InvalidCertificate(_) => {
            format!("TLS handshake failed: the master's certificate was refused: {error}")
        }
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure,
        ) => format!(
            "TLS handshake failed: the master refused this client ({error}); a master with \
             --tls-client-ca wants a client certificate signed by that CA (--tls-cert and --tls-key)"
        ),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => format!(
            "TLS handshake failed: {error}; is the master serving TLS? A master without --tls-cert \
             takes http:// URLs"
        ),
        _ => format!("TLS handshake failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_file_names_the_flag_and_the_file() {
        let e = server_config(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--tls-cert /nonexistent/cert.pem: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = write(dir.path(), "ca.pem", "hello\n");
        let e = ClientTls::load(Some(&not_pem), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-ca") && e.contains("no certificate in it"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_block_of_garbage_is_not_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(
            dir.path(),
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = ClientTls::load(Some(&garbage), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-ca") && e.contains("not a usable CA"),
            "{e}"
        );
    }

    #[test]
    fn client_certificate_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", "");
        let e = ClientTls::load(None, Some(&cert), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert and --tls-key go together"), "{e}");
    }

    #[test]
    fn urls_choose_tls_by_scheme() {
        let plain = ClientTls::none();
        assert_eq!(
            plain.endpoint("127.0.0.1:1").unwrap().uri().scheme_str(),
            Some("http")
        );
        assert!(plain.endpoint("https://127.0.0.1:1").is_ok());
        let e = plain.endpoint("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("expected http:// or https://"), "{e}");
    }
}
