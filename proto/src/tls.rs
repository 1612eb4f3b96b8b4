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
    fn trust_anchors(&self) -> Result<(Certificate, rustls::RootCertStore), TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in self.certificates()?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                self.invalid(format!("certificate {} is not a usable CA: {e}", i + 1))
            })?;
        }
        Ok((Certificate::from_pem(&self.bytes), roots))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, checked to belong together.
struct KeyPair {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Checks that `key` is the private key of the first certificate of `cert` (and that rustls can
/// sign with it).
fn key_pair(cert: &PemFile, key: &PemFile) -> Result<KeyPair, TlsError> {
    let chain = cert.certificates()?;
    let private_key = key.private_key()?;
    let signing_key = provider()
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| key.invalid(format!("unusable private key: {e}")))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
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
    Ok(KeyPair {
        identity: Identity::from_pem(&cert.bytes, &key.bytes),
        chain,
        key: private_key,
    })
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
    let mut config = ServerTlsConfig::new().identity(key_pair(&cert, &key)?.identity);
    if let Some(ca) = client_ca {
        let ca = PemFile::read("--tls-client-ca", ca)?;
        config = config.client_ca_root(ca.trust_anchors()?.0);
    }
    Ok(config)
}

/// A client's TLS settings: none (plain `http://`, or the public web roots for `https://`), or
/// the CA that signed the master's certificate and optionally a client certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// Built from the files; None when no file was given.
    config: Option<ClientTlsConfig>,
    /// The same settings for [`ClientTls::diagnose`]'s own handshake (with --tls-ca only).
    probe: Option<Arc<rustls::ClientConfig>>,
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
        let mut roots = None;
        match ca {
            Some(ca) => {
                let (certificate, store) = PemFile::read("--tls-ca", ca)?.trust_anchors()?;
                config = config.ca_certificate(certificate);
                roots = Some(store);
            }
            None => config = config.with_webpki_roots(),
        }
        let pair = match (cert, key) {
            (Some(cert), Some(key)) => Some(key_pair(
                &PemFile::read("--tls-cert", cert)?,
                &PemFile::read("--tls-key", key)?,
            )?),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => return Err(TlsError::Usage(
                "--tls-cert and --tls-key go together: a client certificate and its private key"
                    .into(),
            )),
        };
        if let Some(pair) = &pair {
            config = config.identity(pair.identity.clone());
        }
        let probe = roots.and_then(|roots| probe_config(roots, pair));
        Ok(ClientTls {
            config: Some(config),
            probe,
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

/// rustls settings equal to tonic's for `roots` and the client certificate `pair` (h2 by ALPN).
fn probe_config(
    roots: rustls::RootCertStore,
    pair: Option<KeyPair>,
) -> Option<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match pair {
        Some(pair) => builder.with_client_auth_cert(pair.chain, pair.key).ok()?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(Arc::new(config))
}

impl ClientTls {
    /// Why calls to the `https://` master at `url` fail, when TLS is why: a handshake of its own
    /// with the same settings, then a wait for the master's first bytes. With TLS 1.3 a master
    /// that refuses the client's certificate says so only after the handshake, and the gRPC
    /// call sees just a closed connection; this finds the master's alert. None when the
    /// handshake works (or cannot be tried: no --tls-ca, an unreachable master).
    pub async fn diagnose(&self, url: &str) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let probe = self.probe.clone()?;
        let endpoint = self.endpoint(url).ok()?;
        let uri = endpoint.uri();
        if uri.scheme_str() != Some("https") {
            return None;
        }
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
        let wait = std::time::Duration::from_secs(5);
        let tcp = tokio::time::timeout(
            wait,
            tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(443))),
        )
        .await
        .ok()?
        .ok()?;
        let mut tls = match tokio::time::timeout(
            wait,
            tokio_rustls::TlsConnector::from(probe).connect(name, tcp),
        )
        .await
        .ok()?
        {
            Ok(tls) => tls,
            Err(e) => return handshake_failure(&e),
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, tls.read(&mut byte)).await {
            Ok(Err(e)) => handshake_failure(&e),
            _ => None,
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
        // h2 keeps only the text of an I/O error (a TLS alert the master sent after the
        // handshake, refusing this client's certificate, arrives that way): rustls's wording.
        if let Some(alert) = alert_in_text(&e.to_string()) {
            return Some(explain(&rustls::Error::AlertReceived(alert)));
        }
        current = e.source();
    }
    None
}

/// The alert of rustls's "received fatal alert: NAME" in `text`, for the alerts a server sends
/// when it refuses a client's certificate.
fn alert_in_text(text: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let (_, after) = text.split_once("received fatal alert: ")?;
    let name: String = after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    [
        A::CertificateRequired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateUnknown,
        A::HandshakeFailure,
        A::AccessDenied,
        A::DecryptError,
        A::UnsupportedCertificate,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
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
            | AlertDescription::HandshakeFailure
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::UnsupportedCertificate,
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
    fn an_alert_known_only_by_its_text_is_recognised() {
        let io = std::io::Error::other("received fatal alert: CertificateRequired");
        let reason = handshake_failure(&io).unwrap();
        assert!(reason.contains("--tls-cert and --tls-key"), "{reason}");
        let other = std::io::Error::other("connection reset by peer");
        assert_eq!(handshake_failure(&other), None);
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
