//! The master over a real loopback gRPC server: leases, results, auth, artifacts, reflection,
//! health, checkpoint and resume. The test acts as a worker through the public protocol.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ccsrp_master::auth::AccessToken;
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::server::{serve, MasterOptions, ServeReport};
use ccsrp_master::shutdown::{self, ShutdownTrigger};
use ccsrp_proto::artifact_chunks::{chunks, sha256_hex, Assembler};
use ccsrp_proto::auth::BearerToken;
use ccsrp_proto::v1::artifacts_client::ArtifactsClient;
use ccsrp_proto::v1::coordinator_client::CoordinatorClient;
use ccsrp_proto::v1::progress_client::ProgressClient;
use ccsrp_proto::v1::{
    self, task, task_result, ConvLayer, GetArtifactRequest, HeartbeatRequest, LeaseRequest,
    LeaseState, ModelDescription, RegisterRequest, StatusRequest, TaskResult,
};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Coordinator = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

struct Master {
    addr: SocketAddr,
    stop: ShutdownTrigger,
    handle: JoinHandle<Result<ServeReport, ccsrp_master::server::ServeError>>,
}

async fn start(config: &str, state: &Path, token: Option<&str>) -> Master {
    let config = JobConfig::parse(config, "test job").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = shutdown::channel();
    let options = MasterOptions {
        config,
        state_dir: state.to_path_buf(),
        out_dir: None,
        token: token.map_or(AccessToken::none(), |t| {
            AccessToken::new(t, "test").unwrap()
        }),
        linger: Duration::from_millis(100),
        tls: None,
    };
    let handle = tokio::spawn(serve(options, listener, shutdown));
    Master { addr, stop, handle }
}

async fn channel(addr: SocketAddr) -> Channel {
    for _ in 0..100 {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("master at {addr} never came up");
}

async fn coordinator(addr: SocketAddr, token: Option<&str>) -> Coordinator {
    CoordinatorClient::with_interceptor(channel(addr).await, BearerToken::new(token).unwrap())
}

fn register_request(id: &str) -> RegisterRequest {
    RegisterRequest {
        worker_id: id.into(),
        protocol_version: ccsrp_proto::PROTOCOL_VERSION,
        backend: "cpu".into(),
        device: "test".into(),
        threads: 1,
        capacity: 1,
        artifacts: vec![],
    }
}

const W1: &str = "7f8e4c3a-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
const W2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

async fn lease_one(c: &mut Coordinator, worker: &str) -> v1::LeaseReply {
    c.lease(LeaseRequest {
        worker_id: worker.into(),
        max_tasks: 1,
        wait_ms: 2000,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn report(
    c: &mut Coordinator,
    results: Vec<TaskResult>,
) -> Result<v1::ReportSummary, tonic::Status> {
    c.report(tokio_stream::iter([v1::ResultBatch { results }]))
        .await
        .map(|r| r.into_inner())
}

fn description() -> ModelDescription {
    ModelDescription {
        layers: vec![
            ConvLayer {
                filters: 8,
                in_channels: 1,
                kernel: 3,
                out_height: 8,
                out_width: 8,
                pool_after: true,
                ..Default::default()
            },
            ConvLayer {
                filters: 8,
                in_channels: 8,
                kernel: 3,
                out_height: 4,
                out_width: 4,
                pool_after: true,
                ..Default::default()
            },
        ],
        classifier_spatial: 4,
        classes: 4,
        timesteps: 2,
        ..Default::default()
    }
}

async fn upload(
    addr: SocketAddr,
    token: Option<&str>,
    bytes: &[u8],
) -> Result<v1::ArtifactInfo, tonic::Status> {
    let mut a =
        ArtifactsClient::with_interceptor(channel(addr).await, BearerToken::new(token).unwrap());
    let cs = chunks(bytes, &sha256_hex(bytes));
    a.put_artifact(tokio_stream::iter(cs))
        .await
        .map(|r| r.into_inner())
}

fn trained(worker: &str, t: &v1::Task, model: &str) -> TaskResult {
    TaskResult {
        worker_id: worker.into(),
        task_id: t.task_id.clone(),
        attempt: t.attempt,
        outcome: Some(task_result::Outcome::Trained(v1::TrainedResult {
            model: model.into(),
            description: Some(description()),
        })),
    }
}

const SMALL_JOB: &str = "[data]\neval_size = 8\neval_shards = 2\n[runtime]\nlease_seconds = 0.4\nheartbeat_seconds = 0.1\ncheckpoint_seconds = 0.05\n";

#[tokio::test]
async fn expired_lease_is_reissued_and_the_late_result_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let mut c = coordinator(m.addr, None).await;
    c.register(register_request(W1)).await.unwrap();
    c.register(register_request(W2)).await.unwrap();
    let first = lease_one(&mut c, W1).await;
    assert_eq!(first.state, LeaseState::Tasks as i32);
    let t1 = first.tasks[0].clone();
    assert!(matches!(t1.kind, Some(task::Kind::TrainDense(_))));
    assert_eq!(t1.attempt, 1);
    // W1 never heartbeats: its lease expires and W2's long poll gets the task.
    let second = lease_one(&mut c, W2).await;
    assert_eq!(second.tasks.len(), 1, "expired task re-issued");
    let t2 = second.tasks[0].clone();
    assert_eq!((t2.task_id.as_str(), t2.attempt), (t1.task_id.as_str(), 2));
    let hb = c
        .heartbeat(HeartbeatRequest {
            worker_id: W1.into(),
            task_ids: vec![t1.task_id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost_task_ids, vec![t1.task_id.clone()]);

    let model = upload(m.addr, None, b"dense weights").await.unwrap().sha256;
    let late = report(&mut c, vec![trained(W1, &t1, &model)])
        .await
        .unwrap();
    assert_eq!((late.accepted, late.dropped), (0, 1));
    let ok = report(&mut c, vec![trained(W2, &t2, &model)])
        .await
        .unwrap();
    assert_eq!((ok.accepted, ok.dropped), (1, 0));
    let dup = report(&mut c, vec![trained(W2, &t2, &model)])
        .await
        .unwrap();
    assert_eq!((dup.accepted, dup.dropped), (0, 1), "duplicate dropped");
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn malformed_and_unknown_results_are_refused_without_harming_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let mut c = coordinator(m.addr, None).await;
    c.register(register_request(W1)).await.unwrap();
    let t = lease_one(&mut c, W1).await.tasks[0].clone();
    let model = upload(m.addr, None, b"dense weights").await.unwrap().sha256;

    let unknown = TaskResult {
        task_id: "no-such-task".into(),
        ..trained(W1, &t, &model)
    };
    let s = report(&mut c, vec![unknown]).await.unwrap();
    assert_eq!((s.accepted, s.dropped), (0, 1));

    let wrong_kind = TaskResult {
        outcome: Some(task_result::Outcome::TestMetrics(v1::TestMetricsResult {
            samples: 10,
            clean: 11,
            fgsm: 0,
            pgd: 0,
            validation: None,
            activity: None,
        })),
        ..trained(W1, &t, &model)
    };
    let err = report(&mut c, vec![wrong_kind]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let missing_artifact = trained(W1, &t, &sha256_hex(b"never uploaded"));
    let err = report(&mut c, vec![missing_artifact]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let mut bad_description = trained(W1, &t, &model);
    if let Some(task_result::Outcome::Trained(tr)) = &mut bad_description.outcome {
        tr.description.as_mut().unwrap().layers[1].in_channels = 3;
    }
    let err = report(&mut c, vec![bad_description]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let unregistered = TaskResult {
        worker_id: W2.into(),
        ..trained(W2, &t, &model)
    };
    let err = report(&mut c, vec![unregistered]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The job is unharmed: the real result is still accepted.
    let ok = report(&mut c, vec![trained(W1, &t, &model)]).await.unwrap();
    assert_eq!(ok.accepted, 1);
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn registration_with_wrong_protocol_backend_or_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let mut c = coordinator(m.addr, None).await;
    let mut r = register_request(W1);
    r.protocol_version = 99;
    let err = c.register(r).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("protocol"), "{}", err.message());
    let mut r = register_request(W1);
    r.backend = "cuda".into();
    let err = c.register(r).await.unwrap_err();
    assert!(err.message().contains("pinned"), "{}", err.message());
    let err = c.register(register_request("worker-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .lease(LeaseRequest {
            worker_id: W1.into(),
            max_tasks: 1,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn wrong_or_missing_token_is_unauthenticated_on_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), Some("s3cret")).await;
    for token in [None, Some("wrong")] {
        let mut c = coordinator(m.addr, token).await;
        let err = c.register(register_request(W1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let mut p = ProgressClient::with_interceptor(
            channel(m.addr).await,
            BearerToken::new(token).unwrap(),
        );
        assert_eq!(
            p.status(StatusRequest {}).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            upload(m.addr, token, b"x").await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let mut c = coordinator(m.addr, Some("s3cret")).await;
    c.register(register_request(W1)).await.unwrap();
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn artifact_over_8_mib_round_trips_in_chunks_and_corruption_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let bytes: Vec<u8> = (0..9 * 1024 * 1024 + 123u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let info = upload(m.addr, None, &bytes).await.unwrap();
    assert_eq!(
        (info.sha256.clone(), info.bytes),
        (sha256_hex(&bytes), bytes.len() as u64)
    );

    let mut a = ArtifactsClient::new(channel(m.addr).await);
    let mut stream = a
        .get_artifact(GetArtifactRequest {
            sha256: info.sha256.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut assembler = Assembler::new(u64::MAX);
    let mut n = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= ccsrp_proto::artifact_chunks::CHUNK_BYTES);
        assembler.push(chunk).unwrap();
        n += 1;
    }
    assert_eq!(n, 10);
    assert_eq!(assembler.finish().unwrap().1, bytes);

    let mut corrupt = chunks(&bytes[..1000], &sha256_hex(&bytes[..1000]));
    corrupt[0].data[3] ^= 1;
    let err = a
        .put_artifact(tokio_stream::iter(corrupt))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    let err = a
        .get_artifact(GetArtifactRequest {
            sha256: sha256_hex(b"absent"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_is_serving_and_reflection_answers_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    channel(m.addr).await;
    assert!(ccsrp_master::client::is_serving(
        &format!("http://{}", m.addr),
        &ccsrp_proto::tls::ClientTls::none()
    )
    .await
    .unwrap());

    use tonic_reflection::pb::{v1 as r1, v1alpha as r1a};
    let mut c1 = r1::server_reflection_client::ServerReflectionClient::new(channel(m.addr).await);
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = c1
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("v1 reflection did not list services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "ccsrp.v1.Coordinator",
        "ccsrp.v1.Artifacts",
        "ccsrp.v1.Progress",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }

    let mut c1a = r1a::server_reflection_client::ServerReflectionClient::new(channel(m.addr).await);
    let req = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = c1a
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    assert!(matches!(
        reply.message_response,
        Some(r1a::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn restarted_master_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let mut c = coordinator(m.addr, None).await;
    c.register(register_request(W1)).await.unwrap();
    let t = lease_one(&mut c, W1).await.tasks[0].clone();
    let model = upload(m.addr, None, b"dense weights").await.unwrap().sha256;
    report(&mut c, vec![trained(W1, &t, &model)]).await.unwrap();
    let mut p = ProgressClient::new(channel(m.addr).await);
    let before = p.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(before.tasks_done, 1);
    m.stop.trigger();
    assert!(m.handle.await.unwrap().unwrap().outcome.is_none());

    let m = start(SMALL_JOB, dir.path(), None).await;
    let mut p = ProgressClient::new(channel(m.addr).await);
    let after = p.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (after.tasks_done, after.tasks_pending),
        (before.tasks_done, before.tasks_pending)
    );
    let mut c = coordinator(m.addr, None).await;
    c.register(register_request(W1)).await.unwrap();
    let next = lease_one(&mut c, W1).await;
    assert!(
        !next.tasks.is_empty() && next.tasks[0].task_id != t.task_id,
        "the trained model is not asked for again"
    );
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();

    let other = start(
        "[job]\nseed = 99\n[data]\neval_size = 8\neval_shards = 2\n",
        dir.path(),
        None,
    )
    .await;
    let err = other.handle.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("another job"), "{err}");
}

#[tokio::test]
async fn a_second_master_on_the_same_state_dir_is_refused_while_the_first_serves() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(SMALL_JOB, dir.path(), None).await;
    let mut p = ProgressClient::new(channel(first.addr).await);
    p.status(StatusRequest {}).await.unwrap();

    let second = start(SMALL_JOB, dir.path(), None).await;
    let err = second.handle.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("in use by another master") && err.contains("master.lock"),
        "{err}"
    );
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "the error names the holder: {err}"
    );
    // The first is untouched and still serving.
    p.status(StatusRequest {}).await.unwrap();
    first.stop.trigger();
    first.handle.await.unwrap().unwrap();

    // Once the first has stopped, the state dir is free again.
    let third = start(SMALL_JOB, dir.path(), None).await;
    let mut p = ProgressClient::new(channel(third.addr).await);
    p.status(StatusRequest {}).await.unwrap();
    third.stop.trigger();
    third.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_checkpoint_that_does_not_parse_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("checkpoint.json"),
        b"{\"version\": 1, \"job\": ",
    )
    .unwrap();
    let m = start(SMALL_JOB, dir.path(), None).await;
    let err = m.handle.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("checkpoint.json"), "{err}");
}

/// An upload on `ch` that announces 1 MiB and sends one byte every 100 ms while `feeding` holds
/// (then nothing, the stream kept open); its call resolves when the master answers.
fn held_upload(
    ch: Channel,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    JoinHandle<Result<v1::ArtifactInfo, tonic::Status>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feeding = std::sync::Arc::new(AtomicBool::new(true));
    let flag = feeding.clone();
    tokio::spawn(async move {
        let mut offset = 0u64;
        while !tx.is_closed() {
            if flag.load(Ordering::Relaxed) {
                let chunk = v1::ArtifactChunk {
                    sha256: if offset == 0 {
                        sha256_hex(b"never finished")
                    } else {
                        String::new()
                    },
                    total_bytes: 1 << 20,
                    offset,
                    data: vec![0],
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
                offset += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let call = tokio::spawn(async move {
        ArtifactsClient::new(ch)
            .put_artifact(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    (feeding, call)
}

async fn upload_on(ch: Channel, bytes: &[u8]) -> Result<v1::ArtifactInfo, tonic::Status> {
    ArtifactsClient::new(ch)
        .put_artifact(tokio_stream::iter(chunks(bytes, &sha256_hex(bytes))))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn uploads_are_capped_per_connection_and_in_total_and_idle_ones_are_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{SMALL_JOB}max_uploads = 3\nmax_uploads_per_connection = 2\nupload_idle_seconds = 1\n"
    );
    let m = start(&config, dir.path(), None).await;
    let (a, b, c) = (
        channel(m.addr).await,
        channel(m.addr).await,
        channel(m.addr).await,
    );
    let (_fa1, a1) = held_upload(a.clone());
    let (_fa2, a2) = held_upload(a.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A third upload on connection A is refused at once.
    let started = std::time::Instant::now();
    let err = upload_on(a.clone(), b"third").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("runtime.max_uploads_per_connection = 2"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_millis(900));

    // B takes the last slot; C waits for one (up to the idle timeout), then is refused.
    let (fb1, b1) = held_upload(b.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = upload_on(c.clone(), b"from c").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("runtime.max_uploads = 3"),
        "{}",
        err.message()
    );

    // B stops sending but keeps its stream open: cancelled after the idle timeout...
    fb1.store(false, std::sync::atomic::Ordering::Relaxed);
    let err = tokio::time::timeout(Duration::from_secs(5), b1)
        .await
        .expect("an idle upload is cancelled within the idle timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("runtime.upload_idle_seconds"),
        "{}",
        err.message()
    );
    // ... and its slot serves C.
    let info = upload_on(c.clone(), b"from c").await.unwrap();
    assert_eq!(info.sha256, sha256_hex(b"from c"));

    a1.abort();
    a2.abort();
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn registrations_are_capped_and_workers_not_seen_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    // lease_seconds = 0.4: a worker unseen for 1.2 s is forgotten.
    let m = start(&format!("{SMALL_JOB}max_workers = 2\n"), dir.path(), None).await;
    let mut c = coordinator(m.addr, None).await;
    const W3: &str = "5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f";
    c.register(register_request(W1)).await.unwrap();
    c.register(register_request(W2)).await.unwrap();
    let err = c.register(register_request(W3)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("runtime.max_workers = 2"),
        "{}",
        err.message()
    );
    let mut p = ProgressClient::new(channel(m.addr).await);
    let status = p.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.workers_alive, 0, "registrations alone are not alive");

    // W1 keeps heartbeating; W2 goes silent and is forgotten, which makes room for W3.
    for _ in 0..10 {
        c.heartbeat(HeartbeatRequest {
            worker_id: W1.into(),
            task_ids: vec![],
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = p.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.workers_alive, 1);
    let err = c
        .heartbeat(HeartbeatRequest {
            worker_id: W2.into(),
            task_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.register(register_request(W3)).await.unwrap();
    m.stop.trigger();
    m.handle.await.unwrap().unwrap();
}
