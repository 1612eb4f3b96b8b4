//! Throughput benchmark of the master (not a test): N simulated workers on loopback answer every
//! task at zero cost (fixed counts), and we measure how many results per second the master absorbs
//! and how long lease calls take.
//!
//! ```text
//! cargo run --release -p ccsrp-master --example throughput -- [workers=256] [max_tasks=16] [shards=1024] [layers=6] [generations=4]
//! ```
//! Prints one JSON object: results/s, candidate counts/s, lease latency p50/p99 (ms).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccsrp_master::auth::AccessToken;
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::server::{serve, MasterOptions};
use ccsrp_master::shutdown;
use ccsrp_proto::artifact_chunks::{chunks, sha256_hex};
use ccsrp_proto::shard::shard_range;
use ccsrp_proto::v1::artifacts_client::ArtifactsClient;
use ccsrp_proto::v1::coordinator_client::CoordinatorClient;
use ccsrp_proto::v1::{
    self, task, task_result, LeaseRequest, LeaseState, RegisterRequest, ResultBatch, TaskResult,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn arg(i: usize, default: u32) -> u32 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A safetensors header carrying a model spec (what the master reads of a dense model).
fn model_file(layers: u32) -> Vec<u8> {
    let arch = vec!["64"; layers as usize].join(",") + ",M";
    let spec = serde_json::json!({
        "architecture": arch, "timesteps": 4,
        "input": {"channels": 3, "height": 8, "width": 8},
    });
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "ccsrp.model_spec": spec.to_string() }),
    );
    for l in 0..layers {
        let cin = if l == 0 { 3 } else { 64 };
        header.insert(
            format!("features.{}.weight", 3 * l),
            serde_json::json!({"dtype": "F32", "shape": [64, cin, 3, 3], "data_offsets": [0, 0]}),
        );
    }
    header.insert(
        "classifier.weight".into(),
        serde_json::json!({"dtype": "F32", "shape": [10, 64 * 16], "data_offsets": [0, 0]}),
    );
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes
}

fn answer(t: &v1::Task, worker: &str, eval: u32, shards: u32, artifact: &str) -> TaskResult {
    let shard_len = |s: u32| shard_range(eval as usize, shards as usize, s as usize).len() as u64;
    let outcome = match &t.kind {
        Some(task::Kind::EvaluateCandidates(e)) => {
            let n = shard_len(e.shard);
            task_result::Outcome::CandidateCounts(v1::CandidateCountsResult {
                counts: e
                    .candidates
                    .iter()
                    .map(|c| {
                        let kept = c.mask.as_ref().map_or(0, |m| m.kept() as u64);
                        v1::CandidateCount {
                            candidate_id: c.candidate_id.clone(),
                            clean: n * kept / 80,
                            adversarial: n * kept / 160,
                            samples: n,
                            mask_filters: c.mask.as_ref().map_or(0, |m| m.filters),
                        }
                    })
                    .collect(),
            })
        }
        Some(task::Kind::BuildAdversarialShard(b)) => {
            task_result::Outcome::AdversarialShard(v1::AdversarialShardResult {
                artifact: artifact.to_string(),
                samples: shard_len(b.shard),
            })
        }
        Some(task::Kind::EvaluateTest(_)) => {
            task_result::Outcome::TestMetrics(v1::TestMetricsResult {
                samples: 1000,
                clean: 900,
                fgsm: 600,
                pgd: 500,
                validation: Some(v1::SplitCounts {
                    samples: 1000,
                    clean: 900,
                    fgsm: 600,
                    pgd: 500,
                }),
                activity: None,
            })
        }
        Some(task::Kind::FineTune(_)) => task_result::Outcome::FineTuned(v1::FineTunedResult {
            model: artifact.to_string(),
        }),
        Some(task::Kind::TrainDense(_)) | None => {
            task_result::Outcome::FineTuned(v1::FineTunedResult {
                model: artifact.to_string(),
            })
        }
    };
    TaskResult {
        worker_id: worker.to_string(),
        task_id: t.task_id.clone(),
        attempt: t.attempt,
        outcome: Some(outcome),
    }
}

struct WorkerStats {
    results: u64,
    candidates: u64,
    lease_latencies_us: Vec<u64>,
}

async fn worker(
    addr: SocketAddr,
    index: u32,
    max_tasks: u32,
    eval: u32,
    shards: u32,
    artifact: Arc<String>,
) -> WorkerStats {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("loopback URL")
        .connect()
        .await
        .expect("connect to the master");
    let mut c = CoordinatorClient::new(channel);
    let id = format!("00000000-0000-4000-8000-{index:012x}");
    c.register(RegisterRequest {
        worker_id: id.clone(),
        protocol_version: ccsrp_proto::PROTOCOL_VERSION,
        backend: "cpu".into(),
        device: "sim".into(),
        threads: 1,
        capacity: max_tasks,
        artifacts: vec![],
    })
    .await
    .expect("register");
    let (tx, rx) = mpsc::channel(1024);
    let mut reporter = c.clone();
    let report = tokio::spawn(async move { reporter.report(ReceiverStream::new(rx)).await });
    let mut stats = WorkerStats {
        results: 0,
        candidates: 0,
        lease_latencies_us: Vec::new(),
    };
    loop {
        let t0 = Instant::now();
        let reply = match c
            .lease(LeaseRequest {
                worker_id: id.clone(),
                max_tasks,
                wait_ms: 1000,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => break,
        };
        if reply.state == LeaseState::JobDone as i32 {
            break;
        }
        if reply.tasks.is_empty() {
            continue;
        }
        stats
            .lease_latencies_us
            .push(t0.elapsed().as_micros() as u64);
        // Every task of the lease is answered at once: one message carries them all.
        let mut results = Vec::with_capacity(reply.tasks.len());
        for t in &reply.tasks {
            if let Some(task::Kind::EvaluateCandidates(e)) = &t.kind {
                stats.candidates += e.candidates.len() as u64;
            }
            stats.results += 1;
            results.push(answer(t, &id, eval, shards, &artifact));
        }
        if tx.send(ResultBatch { results }).await.is_err() {
            return stats;
        }
    }
    drop(tx);
    let _ = report.await;
    stats
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers = arg(1, 256);
    let max_tasks = arg(2, 16);
    let shards = arg(3, 1024);
    let layers = arg(4, 6);
    let generations = arg(5, 4);
    let eval = shards * 16;
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("dense.safetensors");
    std::fs::write(&model, model_file(layers))?;
    let config = JobConfig::parse(
        &format!(
            "[data]\neval_size = {eval}\neval_shards = {shards}\n[model]\npath = {:?}\n\
             [evolution]\niterations = 1\ngenerations = {generations}\n\
             [runtime]\ncheckpoint_seconds = 1.0\n",
            model.display().to_string()
        ),
        "benchmark job",
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, shutdown) = shutdown::channel();
    let master = tokio::spawn(serve(
        MasterOptions {
            config,
            state_dir: dir.path().join("state"),
            out_dir: Some(dir.path().join("out")),
            token: AccessToken::none(),
            linger: Duration::from_millis(200),
            tls: None,
        },
        listener,
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let blob = b"adversarial shard and fine-tuned model stand-in".to_vec();
    let sha = sha256_hex(&blob);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    ArtifactsClient::new(channel)
        .put_artifact(tokio_stream::iter(chunks(&blob, &sha)))
        .await?;
    let artifact = Arc::new(sha);

    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|i| tokio::spawn(worker(addr, i, max_tasks, eval, shards, artifact.clone())))
        .collect();
    let mut results = 0;
    let mut candidates = 0;
    let mut latencies = Vec::new();
    for h in handles {
        let s = h.await?;
        results += s.results;
        candidates += s.candidates;
        latencies.extend(s.lease_latencies_us);
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.trigger();
    let report = master.await??;
    latencies.sort_unstable();
    let summary = serde_json::json!({
        "workers": workers,
        "max_tasks_per_lease": max_tasks,
        "eval_shards": shards,
        "layers": layers,
        "generations": generations,
        "job_done": report.outcome.is_some(),
        "seconds": elapsed,
        "results": results,
        "results_per_second": results as f64 / elapsed,
        "candidate_counts_per_second": candidates as f64 / elapsed,
        "lease_calls_with_tasks": latencies.len(),
        "lease_latency_ms_p50": percentile(&latencies, 0.5),
        "lease_latency_ms_p99": percentile(&latencies, 0.99),
    });
    println!("{summary}");
    Ok(())
}
