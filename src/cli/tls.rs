//! The TLS flags: the master's (`--tls-cert`, `--tls-key`, `--tls-client-ca`) and every client's
//! (`--tls-ca`, and `--tls-cert`/`--tls-key` for mutual TLS), read into tonic's TLS settings by
//! `ccsrp_proto::tls`. README "TLS" says how to make the certificates.

use std::path::PathBuf;

use ccsrp_proto::tls::ClientTls;

/// TLS flags of a master.
#[derive(clap::Args)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate (PEM; the chain, the master's own certificate first).
    /// Clients then dial https://. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse clients (workers, status, watch, health) without a certificate signed by
    /// this CA (PEM). Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server's TLS settings, or None without --tls-cert.
    pub fn load(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(ccsrp_proto::tls::server_config(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            _ => Ok(None),
        }
    }
}

/// TLS flags of a client of the master.
#[derive(clap::Args)]
pub struct ClientTlsArgs {
    /// For an https:// master: the CA certificate (PEM) that signed its --tls-cert [default: the
    /// public web roots].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// For a master with --tls-client-ca (mutual TLS): this client's certificate (PEM), signed by
    /// that CA. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Reads and checks the files; `master` is the URL the client will dial, checked against them
    /// (TLS files with an http:// URL are an error).
    pub fn load(&self, master: &str) -> anyhow::Result<ClientTls> {
        let tls = ClientTls::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?;
        tls.endpoint(master)?;
        Ok(tls)
    }
}
