//! Each task kind of the protocol mapped to this crate's library calls.
//!
//! | task                      | what runs                                                          |
//! |---------------------------|--------------------------------------------------------------------|
//! | `TrainDense`              | a fresh model of the pretrain architecture, trained on train       |
//! | `EvaluateTest`            | clean, FGSM and PGD correct counts on validation and on test       |
//! | `BuildAdversarialShard`   | the model pruned by the mutation, PGD on one eval shard, u8 images |
//! | `EvaluateCandidates`      | per candidate: clean and adversarial correct counts on one shard   |
//! | `FineTune`                | the model pruned by the masks, fine-tuned on train                 |
//!
//! Candidates are scored with the prefix cache: the network pruned by the context (the other
//! layers' representatives) runs once per shard and image set, every layer's input is kept, and a
//! layer-l candidate network (physically pruned, never masked) runs from layer l on.
//!
//! Every random choice comes from the task's seed (or, for the test attack, from the model's
//! hash), so results are the same on every worker of the job's backend.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use ccsrp_proto::shard::shard_range;
use ccsrp_proto::v1::{self, task, task_result, Mask, Task};

use crate::attack::AttackParams;
use crate::data::{DatasetKind, DatasetSpec, ImageSet, Splits};
use crate::eval::{activity, predictions, DEFAULT_BATCH};
use crate::held_out::{attacked, held_out_counts, SplitCounts};
use crate::model::{images_to_tensor, ModelSpec, SnnModel};
use crate::train::{train, TrainConfig};

use super::adversarial_shard;
use super::artifact_cache::ArtifactCache;
use super::master_client::MasterClient;
use super::prefix_cache::{PrefixCache, PrefixKey};
use super::WorkerError;

/// Images per forward or attack batch. Fixed, so that a task's arithmetic (and its random draws)
/// does not depend on the worker.
pub const BATCH: usize = 64;

/// Bytes of layer inputs the prefix cache may hold.
pub const PREFIX_CACHE_BYTES: usize = 1 << 30;

/// Models kept loaded between tasks.
const MODELS_KEPT: usize = 4;

/// Why one task could not be computed (it is logged and reported to the master as a
/// `TaskFailure`; the master re-issues the task, and fails the job after
/// `runtime.max_task_failures` failures of it).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task {task_id}: {reason}")]
    Malformed { task_id: String, reason: String },
    #[error("artifact: {0}")]
    Artifact(String),
    #[error("dataset: {0}")]
    Data(#[from] crate::data::DataError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("model file: {0}")]
    ModelFile(String),
    #[error("attack: {0}")]
    Attack(#[from] crate::attack::AttackError),
    #[error("training: {0}")]
    Train(String),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Artifact access for a task running on a blocking thread: the local cache first, then the
/// master.
pub struct ArtifactIo {
    client: MasterClient,
    cache: ArtifactCache,
    runtime: tokio::runtime::Handle,
}

impl ArtifactIo {
    pub fn new(
        client: MasterClient,
        cache: ArtifactCache,
        runtime: tokio::runtime::Handle,
    ) -> ArtifactIo {
        ArtifactIo {
            client,
            cache,
            runtime,
        }
    }

    /// The bytes of artifact `sha256`, checked against the name.
    pub fn fetch(&self, sha256: &str) -> Result<Vec<u8>, TaskError> {
        let failed = |e: &dyn std::fmt::Display| TaskError::Artifact(format!("{sha256}: {e}"));
        if let Some(bytes) = self.cache.get(sha256).map_err(|e| failed(&e))? {
            return Ok(bytes);
        }
        let mut client = self.client.clone();
        let bytes = self
            .runtime
            .block_on(client.get_artifact(sha256))
            .map_err(|e| failed(&e))?;
        self.cache.put(sha256, &bytes).map_err(|e| failed(&e))?;
        Ok(bytes)
    }

    /// Uploads `bytes` to the master (and keeps a copy in the cache); returns the sha256.
    pub fn upload(&self, bytes: &[u8]) -> Result<String, TaskError> {
        let mut client = self.client.clone();
        let sha256 = self
            .runtime
            .block_on(client.put_artifact(bytes))
            .map_err(|e| TaskError::Artifact(e.to_string()))?;
        self.cache
            .put(&sha256, bytes)
            .map_err(|e| TaskError::Artifact(e.to_string()))?;
        Ok(sha256)
    }
}

/// Layer inputs of one image set through one pruned network, per batch of [`BATCH`] images.
struct LayerInputs {
    batches: Vec<Vec<Tensor>>,
}

/// The worker's compute state: device, data, loaded models and the prefix cache.
pub struct TaskExecutor {
    device: Device,
    dataset: DatasetSpec,
    eval_shards: u32,
    splits: Option<Arc<Splits>>,
    models: Vec<(String, Arc<SnnModel>)>,
    adversarial: Vec<(String, Arc<ImageSet>)>,
    prefix: PrefixCache<LayerInputs>,
}

impl TaskExecutor {
    /// An executor for the job's dataset (`data_dir` replaces the job's directory when given) on
    /// `device` (`cpu` or `cuda:N`). Data is loaded on the first task that needs it.
    pub fn new(
        dataset: v1::DatasetSpec,
        data_dir: Option<std::path::PathBuf>,
        device: &str,
    ) -> Result<TaskExecutor, WorkerError> {
        let device =
            crate::device::parse_device(device).map_err(|e| WorkerError::Device(e.to_string()))?;
        let kind: DatasetKind = dataset
            .kind
            .parse()
            .map_err(|e| WorkerError::Data(format!("dataset kind {:?}: {e}", dataset.kind)))?;
        let data_dir = data_dir.or_else(|| {
            (!dataset.data_dir.is_empty()).then(|| std::path::PathBuf::from(&dataset.data_dir))
        });
        let limit = |n: u32| (n > 0).then_some(n as usize);
        let spec = DatasetSpec {
            kind,
            data_dir,
            eval_size: dataset.eval_size as usize,
            val_size: dataset.val_size as usize,
            seed: dataset.seed,
            train_limit: limit(dataset.train_limit),
            test_limit: limit(dataset.test_limit),
        };
        Ok(TaskExecutor {
            device,
            dataset: spec,
            eval_shards: dataset.eval_shards.max(1),
            splits: None,
            models: Vec::new(),
            adversarial: Vec::new(),
            prefix: PrefixCache::new(PREFIX_CACHE_BYTES),
        })
    }

    /// Drops the loaded models, adversarial shards and cached layer inputs (after a task
    /// panicked half-way through them); the dataset stays.
    pub fn forget_caches(&mut self) {
        self.models.clear();
        self.adversarial.clear();
        self.prefix = PrefixCache::new(PREFIX_CACHE_BYTES);
    }

    /// Computes `task`'s result.
    pub fn execute(
        &mut self,
        task: &Task,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let malformed = |reason: &str| TaskError::Malformed {
            task_id: task.task_id.clone(),
            reason: reason.to_string(),
        };
        match task
            .kind
            .as_ref()
            .ok_or_else(|| malformed("no task kind"))?
        {
            task::Kind::TrainDense(t) => self.train_dense(t, io),
            task::Kind::EvaluateTest(t) => self.evaluate_test(t, io),
            task::Kind::BuildAdversarialShard(t) => self.build_adversarial_shard(t, io),
            task::Kind::EvaluateCandidates(t) => self.evaluate_candidates(t, io),
            task::Kind::FineTune(t) => self.fine_tune(t, io),
        }
    }

    fn splits(&mut self) -> Result<Arc<Splits>, TaskError> {
        if let Some(splits) = &self.splits {
            return Ok(Arc::clone(splits));
        }
        let splits = Arc::new(self.dataset.load()?);
        tracing::info!(
            dataset = self.dataset.kind.name(),
            train = splits.train.len(),
            eval = splits.eval.len(),
            test = splits.test.len(),
            "dataset loaded"
        );
        self.splits = Some(Arc::clone(&splits));
        Ok(splits)
    }

    fn model(&mut self, sha256: &str, io: &ArtifactIo) -> Result<Arc<SnnModel>, TaskError> {
        if let Some(at) = self.models.iter().position(|(k, _)| k == sha256) {
            let entry = self.models.remove(at);
            let model = Arc::clone(&entry.1);
            self.models.push(entry);
            return Ok(model);
        }
        let bytes = io.fetch(sha256)?;
        let model = Arc::new(
            SnnModel::from_bytes(&bytes, &self.device)
                .map_err(|e| TaskError::ModelFile(format!("artifact {sha256}: {e}")))?,
        );
        self.models.push((sha256.to_string(), Arc::clone(&model)));
        if self.models.len() > MODELS_KEPT {
            self.models.remove(0);
        }
        Ok(model)
    }

    fn eval_shard(&mut self, shard: u32) -> Result<ImageSet, TaskError> {
        let splits = self.splits()?;
        if shard >= self.eval_shards {
            return Err(TaskError::Malformed {
                task_id: format!("shard {shard}"),
                reason: format!("the eval split has {} shards", self.eval_shards),
            });
        }
        let range = shard_range(splits.eval.len(), self.eval_shards as usize, shard as usize);
        Ok(splits.eval.slice(range))
    }

    fn upload_model(&self, model: &SnnModel, io: &ArtifactIo) -> Result<String, TaskError> {
        let bytes = model
            .to_bytes()
            .map_err(|e| TaskError::ModelFile(e.to_string()))?;
        io.upload(&bytes)
    }

    fn train_dense(
        &mut self,
        t: &v1::TrainDenseTask,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let splits = self.splits()?;
        let pretrain: PretrainRecord = parse_params(t.params.as_ref())?;
        let architecture = crate::arch::Architecture::from_name_or_list(&pretrain.arch)
            .map_err(|e| TaskError::Train(format!("pretrain.arch {:?}: {e}", pretrain.arch)))?;
        let train_set = &splits.train;
        let mut spec = ModelSpec::new(
            architecture,
            pretrain.timesteps,
            crate::arch::InputShape {
                channels: train_set.channels,
                height: train_set.height,
                width: train_set.width,
            },
            train_set.class_names.clone(),
        );
        spec.normalisation = crate::model::Normalisation::from_images(train_set);
        let mut model = SnnModel::new(spec, &self.device, t.seed)?;
        let config = train_config(t.params.as_ref(), t.seed)?;
        train(&mut model, train_set, &config, &mut |_| {})
            .map_err(|e| TaskError::Train(e.to_string()))?;
        let sha256 = self.upload_model(&model, io)?;
        Ok(task_result::Outcome::Trained(v1::TrainedResult {
            model: sha256,
            description: Some(model.description()),
        }))
    }

    fn fine_tune(
        &mut self,
        t: &v1::FineTuneTask,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let splits = self.splits()?;
        let model = self.model(&t.model, io)?;
        let mut pruned = model.prune(&t.masks)?;
        let config = train_config(t.params.as_ref(), t.seed)?;
        train(&mut pruned, &splits.train, &config, &mut |_| {})
            .map_err(|e| TaskError::Train(e.to_string()))?;
        let sha256 = self.upload_model(&pruned, io)?;
        Ok(task_result::Outcome::FineTuned(v1::FineTunedResult {
            model: sha256,
        }))
    }

    fn evaluate_test(
        &mut self,
        t: &v1::EvaluateTestTask,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let splits = self.splits()?;
        let model = self.model(&t.model, io)?;
        let attack = t.attack.as_ref().ok_or_else(|| TaskError::Malformed {
            task_id: format!("evaluate_test {}", t.iteration),
            reason: "no attack settings".into(),
        })?;
        let counts = held_out_counts(&model, &t.model, &splits, t.fgsm_eps, &pgd_params(attack))?;
        let split = |c: SplitCounts| v1::SplitCounts {
            samples: c.samples,
            clean: c.clean,
            fgsm: c.fgsm,
            pgd: c.pgd,
        };
        let activity = activity(&model, &splits.test, DEFAULT_BATCH)?;
        Ok(task_result::Outcome::TestMetrics(v1::TestMetricsResult {
            samples: counts.test.samples,
            clean: counts.test.clean,
            fgsm: counts.test.fgsm,
            pgd: counts.test.pgd,
            validation: Some(split(counts.validation)),
            activity: Some((&activity).into()),
        }))
    }

    fn build_adversarial_shard(
        &mut self,
        t: &v1::BuildAdversarialShardTask,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let shard = self.eval_shard(t.shard)?;
        let model = self.model(&t.model, io)?;
        let mutated = model.prune(&t.mutation)?;
        let attack = t.attack.as_ref().ok_or_else(|| TaskError::Malformed {
            task_id: format!("build_adversarial_shard {}/{}", t.iteration, t.shard),
            reason: "no attack settings".into(),
        })?;
        let images = attacked(&mutated, &shard, &pgd_params(attack), t.seed, &self.device)?;
        let sha256 = io.upload(&adversarial_shard::encode(&images))?;
        Ok(task_result::Outcome::AdversarialShard(
            v1::AdversarialShardResult {
                artifact: sha256,
                samples: images.len() as u64,
            },
        ))
    }

    fn adversarial_images(
        &mut self,
        sha256: &str,
        io: &ArtifactIo,
    ) -> Result<Arc<ImageSet>, TaskError> {
        if let Some((_, set)) = self.adversarial.iter().find(|(k, _)| k == sha256) {
            return Ok(Arc::clone(set));
        }
        let splits = self.splits()?;
        let bytes = io.fetch(sha256)?;
        let set = Arc::new(
            adversarial_shard::decode(&bytes, &splits.eval.class_names)
                .map_err(|e| TaskError::Artifact(format!("{sha256}: {e}")))?,
        );
        self.adversarial
            .push((sha256.to_string(), Arc::clone(&set)));
        if self.adversarial.len() > 2 * self.eval_shards as usize {
            self.adversarial.remove(0);
        }
        Ok(set)
    }

    /// Layer inputs of `images` through `network` (the model pruned by the context), cached.
    fn layer_inputs(
        &mut self,
        key: PrefixKey,
        network: &SnnModel,
        images: &ImageSet,
    ) -> Result<Arc<LayerInputs>, TaskError> {
        if let Some(inputs) = self.prefix.get(&key) {
            return Ok(inputs);
        }
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        for start in (0..images.len()).step_by(BATCH) {
            let pixels = images_to_tensor(
                images,
                start..(start + BATCH).min(images.len()),
                &self.device,
            )?;
            let inputs = network.layer_inputs(&pixels)?;
            bytes += inputs
                .iter()
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum::<usize>();
            batches.push(inputs);
        }
        let inputs = Arc::new(LayerInputs { batches });
        self.prefix.insert(key, Arc::clone(&inputs), bytes);
        Ok(inputs)
    }

    fn evaluate_candidates(
        &mut self,
        t: &v1::EvaluateCandidatesTask,
        io: &ArtifactIo,
    ) -> Result<task_result::Outcome, TaskError> {
        let malformed = |reason: String| TaskError::Malformed {
            task_id: format!(
                "evaluate_candidates {}/{}/{}/{}",
                t.iteration, t.generation, t.layer, t.shard
            ),
            reason,
        };
        let layer = t.layer as usize;
        if layer >= t.context.len() {
            return Err(malformed(format!(
                "layer {layer} of {} context masks",
                t.context.len()
            )));
        }
        let clean = self.eval_shard(t.shard)?;
        let adversarial = self.adversarial_images(&t.adversarial, io)?;
        if adversarial.labels != clean.labels {
            return Err(malformed(format!(
                "adversarial shard {} does not hold the labels of eval shard {}",
                t.adversarial, t.shard
            )));
        }
        let model = self.model(&t.model, io)?;
        let network = model.prune(&t.context)?;
        let key = |adversarial: Option<String>| PrefixKey {
            model: t.model.clone(),
            context: t.context.clone(),
            shard: t.shard,
            adversarial,
        };
        let clean_inputs = self.layer_inputs(key(None), &network, &clean)?;
        let adversarial_inputs =
            self.layer_inputs(key(Some(t.adversarial.clone())), &network, &adversarial)?;
        let mut counts = Vec::with_capacity(t.candidates.len());
        for candidate in &t.candidates {
            let mask: &Mask = candidate.mask.as_ref().ok_or_else(|| {
                malformed(format!("candidate {} has no mask", candidate.candidate_id))
            })?;
            let mut masks = t.context.clone();
            masks[layer] = mask.clone();
            let candidate_network = model.prune(&masks)?;
            counts.push(v1::CandidateCount {
                candidate_id: candidate.candidate_id.clone(),
                clean: correct_from(&candidate_network, layer, &clean_inputs, &clean.labels)?,
                adversarial: correct_from(
                    &candidate_network,
                    layer,
                    &adversarial_inputs,
                    &adversarial.labels,
                )?,
                samples: clean.len() as u64,
                mask_filters: mask.filters,
            });
        }
        Ok(task_result::Outcome::CandidateCounts(
            v1::CandidateCountsResult { counts },
        ))
    }
}

/// The pretrain parameters the worker reads from the engine's record (other fields are the
/// engine's business).
#[derive(serde::Deserialize)]
struct PretrainRecord {
    arch: String,
    timesteps: usize,
}

/// Fields of the engine's training record that the wire message does not carry.
#[derive(serde::Deserialize)]
struct TrainRecord {
    weight_decay: Option<f64>,
}

fn parse_params<T: serde::de::DeserializeOwned>(
    params: Option<&v1::TrainParams>,
) -> Result<T, TaskError> {
    let params =
        params.ok_or_else(|| TaskError::Train("task carries no training parameters".into()))?;
    serde_json::from_str(&params.params_json)
        .map_err(|e| TaskError::Train(format!("training parameters (params_json): {e}")))
}

/// The training configuration of a task: the wire fields, seeded by the task.
fn train_config(params: Option<&v1::TrainParams>, seed: u64) -> Result<TrainConfig, TaskError> {
    let p = params.ok_or_else(|| TaskError::Train("task carries no training parameters".into()))?;
    let record: TrainRecord = parse_params(Some(p))?;
    let mut config = TrainConfig {
        epochs: p.epochs as usize,
        batch_size: p.batch_size as usize,
        lr: p.learning_rate,
        momentum: p.momentum,
        seed,
        ..TrainConfig::default()
    };
    if let Some(weight_decay) = record.weight_decay {
        config.weight_decay = weight_decay;
    }
    if p.adversarial_fraction > 0.0 {
        config.adversarial_fraction = p.adversarial_fraction;
        config.adversarial = AttackParams::fgsm(p.adversarial_eps);
    }
    config
        .validate()
        .map_err(|e| TaskError::Train(e.to_string()))?;
    Ok(config)
}

fn pgd_params(attack: &v1::Attack) -> AttackParams {
    AttackParams {
        random_start: attack.random_start,
        ..AttackParams::pgd(attack.eps, attack.step, attack.steps as usize)
    }
}

/// Correctly classified images when `network` runs from `layer` on the cached inputs.
fn correct_from(
    network: &SnnModel,
    layer: usize,
    inputs: &LayerInputs,
    labels: &[u32],
) -> Result<u64, TaskError> {
    let mut total = 0;
    for (batch, chunk) in inputs.batches.iter().zip(labels.chunks(BATCH)) {
        let logits = network.forward_from(layer, &batch[layer])?;
        total += predictions(&logits)?
            .iter()
            .zip(chunk)
            .filter(|(p, l)| p == l)
            .count() as u64;
    }
    Ok(total)
}
