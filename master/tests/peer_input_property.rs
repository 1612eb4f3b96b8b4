//! Property tests of everything the master parses: a given dense model's safetensors header
//! ([`dense_model`]), the job file ([`JobConfig`]), the checkpoint ([`checkpoint`]) and every
//! message a worker sends ([`Job::register`], [`Job::heartbeat`], [`Job::report`], which maps
//! results through `wire` into the engine). Inputs are random, or valid ones mutated (bit flips,
//! truncation, inserted and deleted bytes, huge length and size fields): the answer is a value or
//! an error, never a panic (overflow checks are on in the test profile), and no single allocation
//! exceeds [`ALLOC_LIMIT`] (the global allocator refuses it, which aborts the binary).

mod fuzz;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ccsrp_master::artifact_store::ArtifactStore;
use ccsrp_master::checkpoint;
use ccsrp_master::dense_model::{self, SPEC_METADATA_KEY};
use ccsrp_master::engine::{DenseModel, JobSpec};
use ccsrp_master::job::{Job, JobSettings, Leased};
use ccsrp_master::job_config::JobConfig;
use ccsrp_master::{Engine, EngineConfig, WorkItem, WorkOutput, WorkResult};
use ccsrp_proto::v1::{self, task_result, ConvLayer, ModelDescription};
use fuzz::{apply, mutations, BoundedAlloc};
use proptest::prelude::*;
use prost::Message;
use support::Evaluator;

/// No input here justifies more than this in one allocation; everything valid is far smaller.
const ALLOC_LIMIT: usize = 64 << 20;

#[global_allocator]
static ALLOC: BoundedAlloc<ALLOC_LIMIT> = BoundedAlloc;

const WORKER: &str = "6f1c2a9e-3b7d-4c55-9a0e-1d2f3a4b5c6d";

fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A JSON header of a given model as `ccsrp train` writes it (8,M,16,M on 1x16x16, 10 classes).
fn model_header() -> Vec<u8> {
    let spec = serde_json::json!({
        "architecture": "8,M,16,M", "timesteps": 4,
        "input": {"channels": 1, "height": 16, "width": 16},
    });
    let tensor =
        |shape: &[u64]| serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [0, 0]});
    serde_json::to_vec(&serde_json::json!({
        "__metadata__": { SPEC_METADATA_KEY: spec.to_string() },
        "features.0.weight": tensor(&[8, 1, 3, 3]),
        "features.1.weight": tensor(&[8]),
        "features.4.weight": tensor(&[16, 8, 3, 3]),
        "classifier.weight": tensor(&[10, 16 * 16]),
    }))
    .unwrap()
}

/// The whole file: header length, header, no tensor data (the master never reads it).
fn model_file(header: &[u8]) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header].concat()
}

/// A description the master read must be one the engine can take or refuse, without panicking.
fn engine_takes(description: ModelDescription) {
    let spec = JobSpec {
        seed: 1,
        config: EngineConfig::default(),
        dense: DenseModel::Given {
            model: v1_name("dense"),
            description,
        },
        eval_samples: 64,
        eval_shards: 2,
    };
    if let Ok(mut engine) = Engine::new(spec) {
        let _ = engine.ask();
        let _ = engine.progress();
    }
}

fn v1_name(s: &str) -> ccsrp_master::ModelRef {
    ccsrp_master::ModelRef(s.to_string())
}

/// Any u32 a description may hold, biased to the edges.
fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        1u32..=64,
        Just(0),
        Just(u32::MAX),
        Just(1 << 16),
        Just((1 << 16) + 1),
        any::<u32>()
    ]
}

fn description() -> impl Strategy<Value = ModelDescription> {
    let layer = (
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        any::<bool>(),
    )
        .prop_map(
            |(filters, in_channels, kernel, out_height, out_width, pool_after)| ConvLayer {
                filters,
                in_channels,
                kernel,
                out_height,
                out_width,
                pool_after,
                ..Default::default()
            },
        )
        // Residual networks' fields: a block's inner conv with any sizes.
        .prop_flat_map(|l| {
            (Just(l), edgy_u32(), any::<bool>(), edgy_u32()).prop_map(
                |(mut l, stride, fixed_input, consumer_filters)| {
                    l.stride = stride;
                    l.fixed_input = fixed_input;
                    l.consumer_filters = consumer_filters;
                    l
                },
            )
        });
    (
        prop::collection::vec(layer, 0..4),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        any::<bool>(),
    )
        .prop_map(
            |(mut layers, classifier_spatial, classes, timesteps, chain)| {
                // Half the cases chain in_channels to the previous filters, so the checks reach the
                // sizes rather than stopping at the first inconsistency.
                if chain {
                    for i in 1..layers.len() {
                        layers[i].in_channels = layers[i - 1].filters;
                    }
                }
                ModelDescription {
                    layers,
                    classifier_spatial,
                    classes,
                    timesteps,
                    ..Default::default()
                }
            },
        )
}

/// A small job that goes through every phase in a few dozen items.
fn small_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.evolution.iterations = 2;
    config.evolution.generations = 1;
    config.evolution.population = 2;
    config.evolution.offspring = 2;
    config
}

/// An engine advanced by `steps` correct answers (in the order asked), with the evaluator.
fn engine_after(steps: usize) -> (Engine, Evaluator) {
    let mut engine = Engine::new(support::spec(7, small_config(), 2, true)).unwrap();
    let mut evaluator = Evaluator::new(support::Problem::new(3), 2);
    let mut pending: Vec<WorkItem> = Vec::new();
    for _ in 0..steps {
        pending.extend(engine.ask());
        if pending.is_empty() {
            break;
        }
        let item = pending.remove(0);
        let result = evaluator.answer(&item);
        engine.tell(result).unwrap();
    }
    (engine, evaluator)
}

/// The wire form of a correct result, with every artifact it names put into `store` (the
/// evaluator's names are not sha256s: the stored bytes are the name itself).
fn to_wire(result: &WorkResult, attempt: u32, store: &ArtifactStore) -> v1::TaskResult {
    let stored = |name: &str| store.put(name.as_bytes()).unwrap();
    let outcome = match &result.output {
        WorkOutput::Trained { model, description } => {
            task_result::Outcome::Trained(v1::TrainedResult {
                model: stored(&model.0),
                description: Some(description.clone()),
            })
        }
        WorkOutput::TestMetrics(m) => task_result::Outcome::TestMetrics(v1::TestMetricsResult {
            samples: m.test.samples,
            clean: m.test.clean,
            fgsm: m.test.fgsm,
            pgd: m.test.pgd,
            validation: Some(v1::SplitCounts {
                samples: m.validation.samples,
                clean: m.validation.clean,
                fgsm: m.validation.fgsm,
                pgd: m.validation.pgd,
            }),
            activity: m.activity.as_ref().map(v1::Activity::from),
        }),
        WorkOutput::AdversarialShard { artifact, samples } => {
            task_result::Outcome::AdversarialShard(v1::AdversarialShardResult {
                artifact: stored(&artifact.0),
                samples: *samples,
            })
        }
        WorkOutput::CandidateCounts { counts } => {
            task_result::Outcome::CandidateCounts(v1::CandidateCountsResult {
                counts: counts
                    .iter()
                    .map(|c| v1::CandidateCount {
                        candidate_id: c.candidate.to_string(),
                        clean: c.clean,
                        adversarial: c.adversarial,
                        samples: c.samples,
                        mask_filters: c.mask_filters,
                    })
                    .collect(),
            })
        }
        WorkOutput::FineTuned { model } => task_result::Outcome::FineTuned(v1::FineTunedResult {
            model: stored(&model.0),
        }),
    };
    v1::TaskResult {
        worker_id: WORKER.into(),
        task_id: result.id.0.clone(),
        attempt,
        outcome: Some(outcome),
    }
}

/// A served job whose engine answered `steps` items, `WORKER` registered and holding a lease on
/// every ready task; returns the job, the leased tasks and their correct results.
fn served_job(steps: usize, store_dir: &Path) -> (Job, Vec<v1::Task>, Vec<v1::TaskResult>) {
    let (engine, mut evaluator) = engine_after(steps);
    let mut pending = engine.outstanding();
    let mut engine = engine;
    pending.extend(engine.ask());
    let store = ArtifactStore::open(store_dir).unwrap();
    let config = JobConfig::parse("", "test job").unwrap();
    let job = Job::new(JobSettings::of(&config), engine, store);
    job.register(&v1::RegisterRequest {
        worker_id: WORKER.into(),
        protocol_version: ccsrp_proto::PROTOCOL_VERSION,
        backend: "cpu".into(),
        ..Default::default()
    })
    .unwrap();
    let tasks = match job.try_lease(WORKER, 64, Instant::now()).unwrap() {
        Leased::Tasks(tasks) => tasks,
        Leased::NoWorkYet | Leased::JobDone => Vec::new(),
    };
    let results = tasks
        .iter()
        .filter_map(|t| {
            let item = pending.iter().find(|i| i.id.0 == t.task_id)?;
            Some(to_wire(&evaluator.answer(item), t.attempt, job.store()))
        })
        .collect();
    (job, tasks, results)
}

/// Any result message: random ids and attempts, any outcome with any field values.
fn any_result(task_ids: Vec<String>) -> impl Strategy<Value = v1::TaskResult> {
    let id = prop_oneof![
        prop::sample::select(if task_ids.is_empty() {
            vec![String::new()]
        } else {
            task_ids
        }),
        ".{0,80}",
    ];
    let name = prop_oneof![Just("a".repeat(64)), "[0-9a-f]{64}", ".{0,70}"];
    let counts = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    let outcome = prop_oneof![
        (name.clone(), prop::option::of(description())).prop_map(|(model, description)| {
            task_result::Outcome::Trained(v1::TrainedResult { model, description })
        }),
        (
            counts,
            prop::option::of(counts),
            prop::option::of((
                any::<u64>(),
                prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..6)
            ))
        )
            .prop_map(|((s, c, f, p), v, a)| {
                task_result::Outcome::TestMetrics(v1::TestMetricsResult {
                    samples: s,
                    clean: c,
                    fgsm: f,
                    pgd: p,
                    validation: v.map(|(samples, clean, fgsm, pgd)| v1::SplitCounts {
                        samples,
                        clean,
                        fgsm,
                        pgd,
                    }),
                    activity: a.map(|(images, layers)| v1::Activity {
                        images,
                        layers: layers
                            .into_iter()
                            .map(|(neuron_steps, spikes, sops)| v1::LayerActivity {
                                neuron_steps,
                                spikes,
                                sops,
                            })
                            .collect(),
                    }),
                })
            }),
        (name.clone(), any::<u64>()).prop_map(|(artifact, samples)| {
            task_result::Outcome::AdversarialShard(v1::AdversarialShardResult { artifact, samples })
        }),
        prop::collection::vec(
            (
                "c[0-9]{1,3}|.{0,8}",
                0u64..40,
                0u64..40,
                0u64..40,
                edgy_u32()
            ),
            0..6
        )
        .prop_map(|counts| {
            task_result::Outcome::CandidateCounts(v1::CandidateCountsResult {
                counts: counts
                    .into_iter()
                    .map(
                        |(candidate_id, clean, adversarial, samples, mask_filters)| {
                            v1::CandidateCount {
                                candidate_id,
                                clean,
                                adversarial,
                                samples,
                                mask_filters,
                            }
                        },
                    )
                    .collect(),
            })
        }),
        name.prop_map(|model| task_result::Outcome::FineTuned(v1::FineTunedResult { model })),
        ".{0,40}".prop_map(|reason| task_result::Outcome::Failed(v1::TaskFailure { reason })),
    ];
    (
        id,
        prop_oneof![Just(1u32), any::<u32>()],
        prop::option::of(outcome),
        prop_oneof![Just(WORKER.to_string()), ".{0,40}"],
    )
        .prop_map(|(task_id, attempt, outcome, worker_id)| v1::TaskResult {
            worker_id,
            task_id,
            attempt,
            outcome,
        })
}

/// After any input the job still answers its readers and leases.
fn job_still_serves(job: &Job) {
    let _ = job.status();
    let _ = job.fronts();
    let _ = job.try_lease(WORKER, 64, Instant::now());
    let _ = job.heartbeat(WORKER, &[]);
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn dense_model_header_of_random_bytes_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(dense_model::description_from_header(&bytes).is_err());
    }

    /// A mutated header is read or refused; what is read goes to the engine, which takes or
    /// refuses it.
    #[test]
    fn dense_model_header_mutated_is_read_or_refused(edits in mutations()) {
        if let Ok(d) = dense_model::description_from_header(&apply(&model_header(), &edits)) {
            engine_takes(d);
        }
    }

    /// The whole file, mutated (including its 8-byte header length): read or refused, never an
    /// allocation of the announced header length beyond the file.
    #[test]
    fn dense_model_file_mutated_is_read_or_refused(edits in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, apply(&model_file(&model_header()), &edits)).unwrap();
        if let Ok(d) = dense_model::read_description(&path) {
            engine_takes(d);
        }
    }

    /// Shapes and spec fields of any size: a description or an error.
    #[test]
    fn dense_model_header_of_any_sizes_is_read_or_refused(
        shapes in prop::collection::vec(prop::collection::vec(any::<u64>(), 0..5), 4),
        arch in prop_oneof![Just("8,M,16,M".to_string()), "[0-9M, ]{0,12}"],
        timesteps in prop_oneof![Just(serde_json::json!(4)), Just(serde_json::json!(u64::MAX)), Just(serde_json::json!(-1))],
        side in prop_oneof![Just(16u64), Just(0), Just(u64::MAX), any::<u64>()],
    ) {
        let spec = serde_json::json!({
            "architecture": arch, "timesteps": timesteps,
            "input": {"channels": 1, "height": side, "width": side},
        });
        let mut header = serde_json::json!({ "__metadata__": { SPEC_METADATA_KEY: spec.to_string() } });
        for (name, shape) in ["features.0.weight", "features.1.weight", "features.4.weight", "classifier.weight"].iter().zip(&shapes) {
            header[*name] = serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [0, 0]});
        }
        if let Ok(d) = dense_model::description_from_header(&serde_json::to_vec(&header).unwrap()) {
            engine_takes(d);
        }
    }

    /// Any description a worker may report as its trained model: the engine takes or refuses it.
    #[test]
    fn any_description_is_taken_or_refused_by_the_engine(d in description()) {
        engine_takes(d);
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// Random text and mutations of the deployed job file and of a file naming every field: a
    /// config or an error; an accepted config yields settings, a fingerprint and an engine.
    #[test]
    fn job_file_mutated_is_parsed_or_refused(
        edits in mutations(),
        full in any::<bool>(),
    ) {
        let base = if full {
            toml::to_string(&JobConfig::parse("", "default").unwrap()).unwrap()
        } else {
            include_str!("../../deploy/job.toml").to_string()
        };
        let text = String::from_utf8_lossy(&apply(base.as_bytes(), &edits)).into_owned();
        if let Ok(config) = JobConfig::parse(&text, "job.toml") {
            let _ = JobSettings::of(&config);
            let _ = config.fingerprint();
            let _ = config.runtime.forget_workers_after();
            let d = config.data.clone();
            let e = &config.evolution;
            // A job's own size (population, shards) is the user's choice, not a parser's: build
            // the engine where the job is one a test can afford.
            if d.eval_shards <= 64 && e.population <= 64 && e.offspring <= 64 {
                let spec = JobSpec {
                    seed: config.job.seed,
                    config: config.engine_config(),
                    dense: DenseModel::Train,
                    eval_samples: u64::from(d.eval_size),
                    eval_shards: d.eval_shards,
                };
                if let Ok(mut engine) = Engine::new(spec) {
                    let _ = engine.ask();
                }
            }
        }
    }

    #[test]
    fn job_file_of_random_text_is_parsed_or_refused(text in ".{0,200}") {
        let _ = JobConfig::parse(&text, "job.toml");
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// A checkpoint of a job mid-run, mutated: refused, or an engine that still answers (its
    /// outstanding items, progress and fronts) and runs on without panicking.
    #[test]
    fn checkpoint_mutated_is_read_or_refused(steps in 0usize..40, edits in mutations()) {
        let (engine, mut evaluator) = engine_after(steps);
        let bytes = checkpoint::encode("fp", &engine).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint::path_in(dir.path());
        std::fs::write(&path, apply(&bytes, &edits)).unwrap();
        if let Ok(Some(mut read)) = checkpoint::read(&path, "fp") {
            let _ = read.outstanding();
            let _ = read.progress();
            let _ = read.fronts();
            // Driven on (the evaluator, from before the mutation, may not know what a mutated
            // state asks: such items are skipped); the engine itself must not panic.
            let mut pending = read.outstanding();
            for _ in 0..60 {
                pending.extend(read.ask());
                if pending.is_empty() { break; }
                let item = pending.remove(0);
                let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluator.answer(&item))) else { continue };
                let _ = read.tell(r);
            }
        }
    }

    /// A worker's result for a task it holds, as protobuf bytes mutated: refused with a status,
    /// or folded in; the job keeps serving either way.
    #[test]
    fn result_message_mutated_is_taken_or_refused(steps in 0usize..40, pick in any::<prop::sample::Index>(), edits in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let (job, _, results) = served_job(steps, dir.path());
        if results.is_empty() {
            return Ok(());
        }
        let valid = &results[pick.index(results.len())];
        let bytes = apply(&valid.encode_to_vec(), &edits);
        if let Ok(result) = v1::TaskResult::decode(&bytes[..]) {
            let _ = job.report(WORKER, &result);
        }
        job_still_serves(&job);
    }
}

/// Any result message (ids of leased tasks or not, any outcome and field values), then the
/// correct results: the job refuses what is wrong and still takes what is right.
#[test]
fn any_result_message_is_refused_or_taken_and_the_job_goes_on() {
    let mut runner = proptest::test_runner::TestRunner::new(cases(64));
    let steps = prop_oneof![Just(0usize), Just(3), Just(12), 0usize..40];
    runner
        .run(&steps, |steps| {
            let dir = tempfile::tempdir().unwrap();
            let (job, tasks, results) = served_job(steps, dir.path());
            let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
            let mut inner = proptest::test_runner::TestRunner::new(cases(8));
            inner.run(&prop::collection::vec(any_result(ids), 1..6), |sent| {
                for result in &sent {
                    // A failure report releases the task; the correct result may then be stale.
                    let _ = job.report(WORKER, result);
                }
                job_still_serves(&job);
                Ok(())
            })?;
            for result in &results {
                let _ = job.report(WORKER, result);
            }
            job_still_serves(&job);
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(cases(128))]

    /// Registrations and heartbeats with any ids, versions, backends and task lists.
    #[test]
    fn registration_and_heartbeat_of_any_fields_are_taken_or_refused(
        worker_id in prop_oneof![Just(WORKER.to_string()), Just(WORKER.to_uppercase()), ".{0,60}"],
        protocol_version in prop_oneof![Just(ccsrp_proto::PROTOCOL_VERSION), any::<u32>()],
        backend in prop_oneof![Just("cpu".to_string()), ".{0,10}"],
        task_ids in prop::collection::vec(".{0,30}", 0..8),
        max_tasks in any::<u32>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (job, _, _) = served_job(0, dir.path());
        let _ = job.register(&v1::RegisterRequest {
            worker_id: worker_id.clone(),
            protocol_version,
            backend,
            device: "x".repeat(1000),
            threads: u32::MAX,
            capacity: u32::MAX,
            artifacts: task_ids.clone(),
        });
        let _ = job.heartbeat(&worker_id, &task_ids);
        let _ = job.try_lease(&worker_id, max_tasks, Instant::now() + Duration::from_secs(1));
        job_still_serves(&job);
    }
}

/// A header length beyond the file is refused before anything of that size is allocated (with the
/// 64 MiB allocation bound, an allocation of the announced 99 MB would abort this test).
#[test]
fn dense_model_header_length_beyond_the_file_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, [&99_999_999u64.to_le_bytes()[..], b"{}"].concat()).unwrap();
    let err = dense_model::read_description(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.safetensors") && err.contains("99999999"),
        "{err}"
    );
}

/// A reported description whose MACs overflow 64 bits is refused with the field, not a panic.
#[test]
fn a_trained_description_whose_cost_overflows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (job, tasks, results) = served_job(0, dir.path());
    assert_eq!(tasks.len(), 1, "the first task trains the dense model");
    let mut result = results[0].clone();
    let Some(task_result::Outcome::Trained(trained)) = &mut result.outcome else {
        panic!("expected a trained result, got {result:?}");
    };
    let description = trained.description.as_mut().unwrap();
    for layer in &mut description.layers {
        layer.out_height = u32::MAX;
        layer.out_width = u32::MAX;
    }
    let status = job.report(WORKER, &result).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("overflow"),
        "{}",
        status.message()
    );
    // The correct result is still taken.
    assert!(job.report(WORKER, &results[0]).is_ok());
}
