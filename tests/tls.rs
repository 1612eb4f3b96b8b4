//! End to end over TLS: the real `ccsrp` binary on loopback ports with a CA and certificates made
//! in the test (rcgen). A TLS master finishes a job for a worker that trusts its CA; a worker or a
//! status client with the wrong CA, and a plain-http client, are refused with a clear error; with
//! `--tls-client-ca` (mutual TLS) a client without a certificate is refused and one with a
//! certificate signed by that CA is served. Unusable PEM files stop the master at once, naming the
//! flag and the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{ccsrp, free_port, master_args, write_job, Proc};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, its certificate in `dir/<name>-ca.pem`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        Ca { issuer, pem }
    }

    /// A certificate for 127.0.0.1 and localhost signed by this CA: (certificate, key) files.
    fn sign(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Starts a master with `tls` flags (and a token) on a fresh port; returns it and its port.
fn start_master(dir: &Path, tls: &[String]) -> (Proc, u16) {
    let job = write_job(dir, "");
    let token = dir.join("token");
    std::fs::write(&token, "tls-test-token").unwrap();
    let port = free_port();
    let mut args = master_args(dir, port, &job, Some(&token));
    args.extend(tls.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Proc::start(dir, "master", &args, &[]), port)
}

/// Polls `ccsrp health` with `client` flags until it answers SERVING.
fn wait_serving(url: &str, client: &[String], master: &Proc) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let mut args = vec!["health".to_string(), "--master".into(), url.to_string()];
        args.extend(client.iter().cloned());
        if run(&args).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("master at {url} never served; log:\n{}", master.log_text());
}

fn run(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ccsrp(&args)
}

/// `ccsrp status` with the token and `client` flags: must fail; returns its stderr.
fn refused_status(dir: &Path, url: &str, client: &[String]) -> String {
    let mut args = vec![
        "status".to_string(),
        "--master".into(),
        url.to_string(),
        "--token-file".into(),
        s(&dir.join("token")),
    ];
    args.extend(client.iter().cloned());
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "status {client:?} against {url} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A worker process with the token and `client` flags.
fn start_worker(dir: &Path, name: &str, url: &str, client: &[String]) -> Proc {
    let mut args = vec![
        "worker".to_string(),
        "--master".into(),
        url.to_string(),
        "--threads".into(),
        "1".into(),
        "--cache-dir".into(),
        s(&dir.join(format!("cache-{name}"))),
        "--token-file".into(),
        s(&dir.join("token")),
        "--give-up-after".into(),
        "60".into(),
    ];
    args.extend(client.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(dir, name, &args, &[])
}

#[test]
fn a_tls_master_serves_the_right_ca_and_refuses_the_wrong_one_and_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ca = Ca::new(dir, "right");
    let wrong = Ca::new(dir, "wrong");
    let (cert, key) = ca.sign(dir, "master");
    let (mut master, port) = start_master(
        dir,
        &["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&key)],
    );
    let url = format!("https://127.0.0.1:{port}");
    let right = vec!["--tls-ca".to_string(), s(&ca.pem)];
    let wrong_ca = vec!["--tls-ca".to_string(), s(&wrong.pem)];
    wait_serving(&url, &right, &master);

    // A client with the wrong CA: refused, saying why and which flag to fix.
    let e = refused_status(dir, &url, &wrong_ca);
    assert!(
        e.contains("not signed by a CA this client trusts") && e.contains("--tls-ca"),
        "{e}"
    );
    // Plain HTTP/2 to the TLS master.
    let plain = format!("http://127.0.0.1:{port}");
    let e = refused_status(dir, &plain, &[]);
    assert!(e.contains("dial it with https://"), "{e}");
    // TLS flags with an http:// URL: a usage error, not silently plain.
    let e = refused_status(dir, &plain, &right);
    assert!(e.contains("use https://"), "{e}");
    // A worker with the wrong CA gives up at once (retrying cannot help) with the reason.
    let mut bad_worker = start_worker(dir, "worker-wrong-ca", &url, &wrong_ca);
    let status = bad_worker.wait(Duration::from_secs(30));
    let log = bad_worker.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("not signed by a CA this client trusts"),
        "{log}"
    );

    // The right CA (and the token) completes the job.
    let mut worker = start_worker(dir, "worker", &url, &right);
    let status = master.wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "master exited with {status}; log:\n{}\nworker log:\n{}",
        master.log_text(),
        worker.log_text()
    );
    assert!(dir.join("out/summary.json").is_file());
    assert!(worker.wait(Duration::from_secs(30)).success());
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ca = Ca::new(dir, "cluster");
    let other = Ca::new(dir, "other");
    let (cert, key) = ca.sign(dir, "master");
    let (client_cert, client_key) = ca.sign(dir, "client");
    let (stranger_cert, stranger_key) = other.sign(dir, "stranger");
    let (master, port) = start_master(
        dir,
        &[
            "--tls-cert".into(),
            s(&cert),
            "--tls-key".into(),
            s(&key),
            "--tls-client-ca".into(),
            s(&ca.pem),
        ],
    );
    let url = format!("https://127.0.0.1:{port}");
    let with_cert = vec![
        "--tls-ca".to_string(),
        s(&ca.pem),
        "--tls-cert".into(),
        s(&client_cert),
        "--tls-key".into(),
        s(&client_key),
    ];
    wait_serving(&url, &with_cert, &master);

    // The status of a client with a certificate from the cluster's CA.
    let mut args = vec![
        "status".to_string(),
        "--master".into(),
        url.clone(),
        "--json".into(),
        "--token-file".into(),
        s(&dir.join("token")),
    ];
    args.extend(with_cert.iter().cloned());
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No client certificate: refused, naming the flags that fix it.
    let ca_only = vec!["--tls-ca".to_string(), s(&ca.pem)];
    let e = refused_status(dir, &url, &ca_only);
    assert!(e.contains("--tls-cert"), "{e}");
    // A certificate from another CA: refused too.
    let stranger = vec![
        "--tls-ca".to_string(),
        s(&ca.pem),
        "--tls-cert".into(),
        s(&stranger_cert),
        "--tls-key".into(),
        s(&stranger_key),
    ];
    refused_status(dir, &url, &stranger);
    // A worker without a client certificate stops with the reason instead of retrying.
    let mut worker = start_worker(dir, "worker-no-cert", &url, &ca_only);
    let status = worker.wait(Duration::from_secs(30));
    let log = worker.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("--tls-cert"), "{log}");
}

#[test]
fn unusable_pem_files_stop_the_master_naming_the_flag_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ca = Ca::new(dir, "cluster");
    let (cert, key) = ca.sign(dir, "master");
    let (_, other_key) = ca.sign(dir, "other");
    let missing = dir.join("missing.pem");
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&key),
            ],
            vec![
                format!("--tls-cert {}", s(&missing)),
                "cannot read it".into(),
            ],
        ),
        (
            // The certificate given as the key.
            vec!["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&cert)],
            vec![format!("--tls-key {}", s(&cert)), "no private key".into()],
        ),
        (
            // The key given as the certificate.
            vec!["--tls-cert".into(), s(&key), "--tls-key".into(), s(&key)],
            vec![format!("--tls-cert {}", s(&key)), "no certificate".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&other_key),
            ],
            vec![
                format!("--tls-key {}", s(&other_key)),
                "does not fit".into(),
            ],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&key),
                "--tls-client-ca".into(),
                s(&key),
            ],
            vec![
                format!("--tls-client-ca {}", s(&key)),
                "no certificate".into(),
            ],
        ),
    ];
    for (flags, expected) in cases {
        let job = write_job(dir, "");
        let mut args = master_args(dir, free_port(), &job, None);
        args.extend(flags.iter().cloned());
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        for text in &expected {
            assert!(stderr.contains(text.as_str()), "{flags:?}: {stderr}");
        }
    }
}
