//! The master's protocol spoken directly from the test with the generated client types, against a
//! real `ccsrp master` process: refused workers, hostile results, big artifacts, and the read-only
//! services (status, reflection) while a job runs; hostile sizes and strings (an announced 4 GiB
//! under a memory limit, megabyte fields, floods of unauthenticated calls); one master per state
//! dir and unreadable checkpoints.

mod common;

use std::time::Duration;

use ccsrp_proto::artifact_chunks::sha256_hex;
use ccsrp_proto::v1::artifacts_client::ArtifactsClient;
use ccsrp_proto::v1::coordinator_client::CoordinatorClient;
use ccsrp_proto::v1::{
    task, task_result, ArtifactChunk, CandidateCount, CandidateCountsResult, GetArtifactRequest,
    HeartbeatRequest, LeaseRequest, LeaseState, RegisterRequest, ResultBatch, Task, TaskResult,
};
use ccsrp_worker::runtime::artifact_cache::ArtifactCache;
use ccsrp_worker::runtime::master_client::MasterClient;
use ccsrp_worker::runtime::tasks::{ArtifactIo, TaskExecutor};
use ccsrp_worker::runtime::Uuid;
use tonic::Code;

use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn worker_with_a_wrong_or_missing_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let cluster = Cluster::start(dir.path(), &job, Some("right-token"));
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "wrong-token").unwrap();
    for (name, token) in [("no-token", None), ("wrong-token", Some(&wrong))] {
        let mut args = vec!["worker", "--master", &cluster.url, "--give-up-after", "20"];
        let shown;
        if let Some(path) = token {
            shown = path.display().to_string();
            args.extend(["--token-file", &shown]);
        }
        let mut worker = Proc::start(dir.path(), name, &args, &[]);
        let status = worker.wait(Duration::from_secs(60));
        let log = worker.log_text();
        assert!(!status.success(), "{name}: a refused worker must fail");
        assert!(
            log.contains("refused") && log.to_lowercase().contains("token"),
            "{name}: the error must say the token was refused:\n{log}"
        );
    }
    let rt = runtime();
    rt.block_on(async {
        let mut bare = CoordinatorClient::connect(cluster.url.clone())
            .await
            .unwrap();
        let refused = bare
            .register(RegisterRequest {
                worker_id: Uuid::new_v4().to_string(),
                protocol_version: ccsrp_proto::PROTOCOL_VERSION,
                backend: "cpu".into(),
                capacity: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    });
}

/// A result equal to `good` but for `change`.
fn altered(good: &TaskResult, change: impl FnOnce(&mut TaskResult)) -> TaskResult {
    let mut r = good.clone();
    change(&mut r);
    r
}

fn counts_of(r: &mut TaskResult) -> &mut Vec<CandidateCount> {
    match &mut r.outcome {
        Some(task_result::Outcome::CandidateCounts(CandidateCountsResult { counts })) => counts,
        _ => panic!("not a candidate-count result"),
    }
}

#[test]
fn hostile_results_are_rejected_without_harming_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    cluster.add_worker();
    // Let the real worker train the dense model and build the adversarial set first: the fake
    // worker below lets every other kind of task expire, and while it raced the real worker for
    // the single training task it could win every re-issue and stall the test.
    wait_status(&cluster.url, Duration::from_secs(300), "coevolution", |s| {
        s["phase"]
            .as_str()
            .is_some_and(|p| p.contains("coevolution"))
    });
    let rt = runtime();
    let url = cluster.url.clone();
    let cache_dir = dir.path().join("fake-cache");
    rt.block_on(async move {
        let token = ccsrp_proto::auth::BearerToken::new(None).unwrap();
        let mut client = MasterClient::connect(&url, &token).await.unwrap();
        let worker_id = Uuid::new_v4().to_string();
        let job = client
            .coordinator
            .register(RegisterRequest {
                worker_id: worker_id.clone(),
                protocol_version: ccsrp_proto::PROTOCOL_VERSION,
                backend: "cpu".into(),
                device: "test".into(),
                threads: 1,
                capacity: 1,
                artifacts: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        // Lease until this fake worker holds a candidate evaluation.
        let task: Task = loop {
            let reply = client
                .coordinator
                .lease(LeaseRequest {
                    worker_id: worker_id.clone(),
                    max_tasks: 1,
                    wait_ms: 1000,
                })
                .await
                .unwrap()
                .into_inner();
            assert_ne!(
                reply.state,
                LeaseState::JobDone as i32,
                "job ended before a candidate task was leased"
            );
            if let Some(t) = reply.tasks.into_iter().next() {
                if matches!(t.kind, Some(task::Kind::EvaluateCandidates(_))) {
                    break t;
                }
                // Not the kind this test needs: let its lease expire, the real worker redoes it.
            }
        };
        // The real answer, computed with the worker library itself.
        let io = ArtifactIo::new(
            client.clone(),
            ArtifactCache::open(&cache_dir).unwrap(),
            tokio::runtime::Handle::current(),
        );
        let dataset = job.dataset.clone().unwrap_or_default();
        let leased = task.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut executor = TaskExecutor::new(dataset, None, "cpu").unwrap();
            executor.execute(&leased, &io)
        })
        .await
        .unwrap()
        .unwrap();
        let good = TaskResult {
            worker_id: worker_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            outcome: Some(outcome),
        };
        let samples = counts_of(&mut good.clone())[0].samples;
        let hostile = [
            (
                "unknown task",
                altered(&good, |r| r.task_id = "it9.g9.l9.s9".into()),
            ),
            (
                "counts above the samples",
                altered(&good, |r| counts_of(r)[0].clean = samples + 1),
            ),
            (
                "a wrong mask length",
                altered(&good, |r| counts_of(r)[0].mask_filters += 1),
            ),
            (
                "a candidate missing",
                altered(&good, |r| {
                    counts_of(r).pop();
                }),
            ),
            (
                "an unknown candidate",
                altered(&good, |r| counts_of(r)[0].candidate_id = "c999999".into()),
            ),
            ("no outcome", altered(&good, |r| r.outcome = None)),
        ];
        for (what, result) in hostile {
            let reply = client
                .coordinator
                .report(tokio_stream::iter([ResultBatch {
                    results: vec![result],
                }]))
                .await;
            match reply {
                Err(status) => assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound
                    ),
                    "{what}: unexpected status {status:?}"
                ),
                Ok(summary) => {
                    let s = summary.into_inner();
                    assert_eq!(s.accepted, 0, "{what}: must not be accepted");
                    assert_eq!(s.dropped, 1, "{what}: must be dropped");
                }
            }
        }
        let first = client
            .coordinator
            .report(tokio_stream::iter([ResultBatch {
                results: vec![good.clone()],
            }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (first.accepted, first.dropped),
            (1, 0),
            "the true result is accepted"
        );
        let again = client
            .coordinator
            .report(tokio_stream::iter([ResultBatch {
                results: vec![good],
            }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (again.accepted, again.dropped),
            (0, 1),
            "a duplicate is dropped"
        );
    });
    let out = cluster.wait_done(Duration::from_secs(600));
    for name in RESULT_FILES {
        assert!(out.join(name).exists(), "{name} written: the job finished");
    }
}

#[test]
fn big_artifact_travels_intact_and_status_and_reflection_answer_while_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let mut cluster = Cluster::start(dir.path(), &job, None);
    cluster.add_worker();

    let status = wait_status(
        &cluster.url,
        Duration::from_secs(120),
        "a running job",
        |s| !s["done"].as_bool().unwrap_or(false) && s["workers_alive"].as_u64().unwrap_or(0) >= 1,
    );
    assert!(
        status["phase"].is_string(),
        "status --json names the phase: {status}"
    );
    assert!(
        status.get("tasks_done").is_some(),
        "status --json counts tasks: {status}"
    );

    let rt = runtime();
    let url = cluster.url.clone();
    rt.block_on(async move {
        // 9 MiB + 3 bytes of a pattern that changes across chunk boundaries.
        let bytes: Vec<u8> = (0..(9 << 20) + 3).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let token = ccsrp_proto::auth::BearerToken::new(None).unwrap();
        let mut client = MasterClient::connect(&url, &token).await.unwrap();
        let name = client.put_artifact(&bytes).await.unwrap();
        assert_eq!(name, ccsrp_proto::artifact_chunks::sha256_hex(&bytes));
        let back = client.get_artifact(&name).await.unwrap();
        assert!(back == bytes, "the downloaded artifact differs from the uploaded one");

        use tonic_reflection::pb::{v1, v1alpha};
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut replies = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().expect("a reflection reply");
        let services: Vec<String> = match reply.message_response {
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection reply {other:?}"),
        };
        for service in ["ccsrp.v1.Coordinator", "ccsrp.v1.Artifacts", "ccsrp.v1.Progress", "grpc.health.v1.Health"] {
            assert!(services.iter().any(|s| s == service), "reflection v1 lists {service}: {services:?}");
        }

        let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut replies = alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().expect("a v1alpha reflection reply");
        assert!(
            matches!(
                reply.message_response,
                Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(ref l))
                    if l.service.iter().any(|s| s.name == "ccsrp.v1.Coordinator")
            ),
            "reflection v1alpha lists ccsrp.v1.Coordinator: {reply:?}"
        );
    });
    cluster.wait_done(Duration::from_secs(600));
}

/// A PutArtifact whose only chunk announces `total` bytes and carries one; the master's answer.
async fn announce(url: &str, total: u64) -> tonic::Status {
    let mut artifacts = ArtifactsClient::connect(url.to_string()).await.unwrap();
    let chunk = ArtifactChunk {
        sha256: sha256_hex(b"x"),
        total_bytes: total,
        offset: 0,
        data: b"x".to_vec(),
    };
    match artifacts.put_artifact(tokio_stream::iter([chunk])).await {
        Ok(info) => panic!("a 1-byte upload announcing {total} bytes was stored: {info:?}"),
        Err(status) => status,
    }
}

#[test]
fn a_4_gib_announcement_under_a_memory_limit_is_refused_and_the_master_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // The limit stays at its default, 4 GiB: the announcement below is within it.
    let job = write_job(dir.path(), "max_artifact_mib = 4096\n");
    let port = free_port();
    let args = master_args(dir.path(), port, &job, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The master needs a few hundred MiB of address space; 4 GiB at once cannot fit in 1.5 GiB.
    let mut master = Proc::start_limited(dir.path(), "master", &args, 1536 << 20);
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url, &master, Duration::from_secs(60));
    let rt = runtime();
    let target = url.clone();
    rt.block_on(async move {
        let url = target;
        let err = announce(&url, 4 << 30).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("announced 4294967296"),
            "the refusal says what was wrong: {}",
            err.message()
        );
        // Four at once, and one over the limit (refused at its first chunk).
        let (a, b, c, d) = tokio::join!(
            announce(&url, 4 << 30),
            announce(&url, 4 << 30),
            announce(&url, 4 << 30),
            announce(&url, 4 << 30)
        );
        for e in [a, b, c, d] {
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
        let err = announce(&url, 5 << 30).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("runtime.max_artifact_mib = 4096"),
            "{}",
            err.message()
        );
        // Still serving: a real artifact makes the round trip.
        let token = ccsrp_proto::auth::BearerToken::new(None).unwrap();
        let mut client = MasterClient::connect(&url, &token).await.unwrap();
        let bytes: Vec<u8> = (0..(3 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
        let name = client.put_artifact(&bytes).await.unwrap();
        assert!(client.get_artifact(&name).await.unwrap() == bytes);
    });
    assert!(
        master.is_running(),
        "the master died; log:\n{}",
        master.log_text()
    );
    assert!(status(&url).is_some(), "the master answers status");
}

#[test]
fn huge_client_strings_give_short_status_messages_and_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let cluster = Cluster::start(dir.path(), &job, Some("s3cret"));
    std::thread::sleep(Duration::from_millis(300));
    let log_before = cluster.master.log_text().len();
    let rt = runtime();
    let url = cluster.url.clone();
    rt.block_on(async move {
        // gRPC's default 4 MiB message limit stops larger fields before any handler: 3 MiB is
        // the largest bogus field that reaches the master's code.
        let big = "x".repeat(3 << 20);
        let token = ccsrp_proto::auth::BearerToken::new(Some("s3cret")).unwrap();
        let mut client = MasterClient::connect(&url, &token).await.unwrap();
        let request = |worker_id: &str, backend: &str, device: &str| RegisterRequest {
            worker_id: worker_id.to_string(),
            protocol_version: ccsrp_proto::PROTOCOL_VERSION,
            backend: backend.to_string(),
            device: device.to_string(),
            threads: 1,
            capacity: 1,
            artifacts: vec![],
        };
        let worker_id = Uuid::new_v4().to_string();
        let mut refusals = Vec::new();
        let c = &mut client.coordinator;
        refusals.push((
            "register: worker_id",
            c.register(request(&big, "cpu", "test")).await.unwrap_err(),
        ));
        refusals.push((
            "register: backend",
            c.register(request(&worker_id, &big, "test"))
                .await
                .unwrap_err(),
        ));
        // Accepted: the device is only logged.
        c.register(request(&worker_id, "cpu", &big)).await.unwrap();
        let result = TaskResult {
            worker_id: worker_id.clone(),
            task_id: big.clone(),
            attempt: 1,
            outcome: None,
        };
        refusals.push((
            "report: task_id",
            c.report(tokio_stream::iter([ResultBatch {
                results: vec![result],
            }]))
            .await
            .unwrap_err(),
        ));
        refusals.push((
            "heartbeat: task_ids",
            c.heartbeat(HeartbeatRequest {
                worker_id: worker_id.clone(),
                task_ids: vec![big.clone()],
            })
            .await
            .unwrap_err(),
        ));
        refusals.push((
            "heartbeat: worker_id",
            c.heartbeat(HeartbeatRequest {
                worker_id: big.clone(),
                task_ids: vec![],
            })
            .await
            .unwrap_err(),
        ));
        refusals.push((
            "lease: worker_id",
            c.lease(LeaseRequest {
                worker_id: big.clone(),
                max_tasks: 1,
                wait_ms: 0,
            })
            .await
            .unwrap_err(),
        ));
        let a = &mut client.artifacts;
        refusals.push((
            "put_artifact: sha256",
            a.put_artifact(tokio_stream::iter([ArtifactChunk {
                sha256: big.clone(),
                ..Default::default()
            }]))
            .await
            .unwrap_err(),
        ));
        refusals.push((
            "get_artifact: sha256",
            a.get_artifact(GetArtifactRequest {
                sha256: big.clone(),
            })
            .await
            .unwrap_err(),
        ));
        for (what, status) in &refusals {
            assert!(
                status.message().len() < 1024,
                "{what}: a {}-byte status message: {}...",
                status.message().len(),
                &status.message()[..200]
            );
            assert!(
                status.message().contains(&format!("{} bytes", big.len())),
                "{what}: the message states the original length: {}",
                status.message()
            );
        }

        // A flood of calls without the token: each refused, few log lines.
        let mut bare = CoordinatorClient::connect(url.clone()).await.unwrap();
        for _ in 0..300 {
            let err = bare
                .register(request(&worker_id, "cpu", "test"))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
        }
    });
    let log = cluster.master.log_text();
    let grown = &log[log_before..];
    assert!(
        grown.len() < 32 << 10,
        "the master's log grew by {} bytes:\n{}",
        grown.len(),
        grown.chars().take(3000).collect::<String>()
    );
    for line in grown.lines() {
        assert!(
            line.len() < 2048,
            "a {}-byte log line: {}...",
            line.len(),
            &line[..300]
        );
    }
    let refused = grown
        .lines()
        .filter(|l| l.contains("request refused"))
        .count();
    assert!(
        (1..=6).contains(&refused),
        "{refused} lines for 300 unauthenticated calls:\n{grown}"
    );
}

#[test]
fn a_second_master_on_the_same_state_dir_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let cluster = Cluster::start(dir.path(), &job, None);
    let mut second = spawn_master(dir.path(), free_port(), &job, None, "second-master");
    let exit = second.wait(Duration::from_secs(60));
    let log = second.log_text();
    assert!(!exit.success(), "the second master must fail:\n{log}");
    assert!(
        log.contains("in use by another master")
            && log.contains("master.lock")
            && log.contains(&dir.path().join("state").display().to_string()),
        "the error names the state dir and its lock:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        status(&cluster.url).is_some(),
        "the first master still serves"
    );
}

#[test]
fn a_checkpoint_that_does_not_parse_stops_the_master_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("checkpoint.json"),
        b"{\"version\": 1, \"job\": [",
    )
    .unwrap();
    let mut master = spawn_master(dir.path(), free_port(), &job, None, "master");
    let exit = master.wait(Duration::from_secs(60));
    let log = master.log_text();
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains(&state.join("checkpoint.json").display().to_string()),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
