//! Training an SNN: from scratch (`ccsrp train`) and fine-tuning a pruned network (the worker's
//! fine-tune task).
//!
//! - [`TrainConfig`]: the recipe (serde, defaults, [`TrainConfig::validate`] names the bad field).
//!   [`TrainConfig::default`] trains from scratch; [`TrainConfig::fine_tune`] is DESIGN's step 5
//!   (2 epochs, lr 0.01, half of each batch FGSM at eps/2).
//! - [`train`]: runs the recipe on a model in place, reporting [`TrainProgress`] after every batch,
//!   and returns a [`TrainSummary`].
//!
//! The recipe: SGD with momentum (PyTorch's form: `buf = momentum * buf + g`, `w -= lr * buf`,
//! first step `buf = g`), L2 weight decay added to the gradient of conv and classifier weights only
//! (tensors of rank >= 2; batch-norm parameters and biases are not decayed), learning rate
//! `lr * (1 + cos(pi * step / steps)) / 2` over all steps, mean cross-entropy on the T-averaged
//! logits. Each epoch visits the images in a fresh seeded shuffle; each image is augmented on the
//! fly ([`crate::augment`]: crop + flip for 3-channel images, crop only for 1-channel images).
//!
//! Adversarial training: the first `round(adversarial_fraction * B)` images of each batch are
//! replaced by their adversarial versions ([`crate::attack`]), made against the current weights in
//! eval mode (running batch-norm statistics, which the attack does not change); the step then
//! trains on the mixed batch in train mode.
//!
//! Determinism: one ChaCha8 stream seeded by `seed` drives the shuffle, augmentation and PGD random
//! starts, so on the CPU the same model, data and config give the same weights.

use crate::attack::{attack, count_correct, AttackError, AttackKind, AttackParams};
use crate::augment::Augmentation;
use crate::data::ImageSet;
use crate::model::{pixels_to_tensor, ModelError, SnnModel};
use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training config `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("training data: {0}")]
    Data(String),
    #[error(
        "training diverged: loss {loss} at epoch {epoch}, batch {batch}; lower the learning rate"
    )]
    Diverged {
        epoch: usize,
        batch: usize,
        loss: f32,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("adversarial training: {0}")]
    Attack(#[from] AttackError),
    #[error("training tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// A training recipe. Every field has a default; see the module doc for what each step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training images (>= 1).
    pub epochs: usize,
    /// Images per step (>= 1).
    pub batch_size: usize,
    /// Peak learning rate (> 0), decayed by a cosine to 0 over all steps.
    pub lr: f64,
    /// SGD momentum, in [0, 1).
    pub momentum: f64,
    /// L2 weight decay (>= 0) on conv and classifier weights.
    pub weight_decay: f64,
    /// Seed of the shuffle, augmentation and attack random starts.
    pub seed: u64,
    /// Random crop (and flip for 3-channel images) of every training image.
    pub augment: bool,
    /// Attack used for adversarial training; kind `none` trains on clean images only.
    pub adversarial: AttackParams,
    /// Fraction of each batch replaced by adversarial images, in [0, 1].
    pub adversarial_fraction: f64,
}

impl Default for TrainConfig {
    /// From-scratch training: 10 epochs, batch 64, lr 0.1, momentum 0.9, weight decay 5e-4,
    /// augmentation on, no adversarial training.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            augment: true,
            adversarial: AttackParams::none(),
            adversarial_fraction: 0.5,
        }
    }
}

impl TrainConfig {
    /// DESIGN's fine-tuning of a pruned network: 2 epochs, lr 0.01 (cosine), and half of each batch
    /// FGSM examples at `eps / 2`.
    pub fn fine_tune(eps: f64) -> TrainConfig {
        TrainConfig {
            epochs: 2,
            lr: 0.01,
            adversarial: AttackParams::fgsm(eps / 2.0),
            adversarial_fraction: 0.5,
            ..TrainConfig::default()
        }
    }

    /// Checks every field; the error names the first bad one (`adversarial.eps` for the attack's).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field, reason: String| Err(TrainError::InvalidConfig { field, reason });
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1, got 0".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1, got 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("must be a positive number, got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(
                "momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("must be a non-negative number, got {}", self.weight_decay),
            );
        }
        if !(self.adversarial_fraction.is_finite()
            && (0.0..=1.0).contains(&self.adversarial_fraction))
        {
            return bad(
                "adversarial_fraction",
                format!("must be in [0, 1], got {}", self.adversarial_fraction),
            );
        }
        match self.adversarial.validate() {
            Err(AttackError::InvalidParam { field, reason }) => {
                let field = match field {
                    "eps" => "adversarial.eps",
                    "step" => "adversarial.step",
                    "steps" => "adversarial.steps",
                    other => other,
                };
                bad(field, reason)
            }
            other => Ok(other?),
        }
    }

    /// Adversarial images in a batch of `batch` images.
    fn adversarial_count(&self, batch: usize) -> usize {
        if self.adversarial.kind == AttackKind::None {
            0
        } else {
            ((self.adversarial_fraction * batch as f64).round() as usize).min(batch)
        }
    }
}

/// Where a training run is, reported after every batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainProgress {
    /// 1-based epoch number, of `epochs`.
    pub epoch: usize,
    pub epochs: usize,
    /// 1-based batch number within the epoch, of `batches`.
    pub batch: usize,
    pub batches: usize,
    /// Mean loss of this epoch's batches so far.
    pub loss: f64,
    /// Accuracy on this epoch's training batches so far (as trained on: augmented, adversarial
    /// where replaced).
    pub accuracy: f64,
    /// Learning rate of the step just taken.
    pub lr: f64,
}

/// What a finished training run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    pub epochs: usize,
    pub steps: usize,
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Training accuracy of the last epoch (on the batches as trained on).
    pub train_accuracy: f64,
    /// Wall-clock seconds per epoch, averaged over the run.
    pub seconds_per_epoch: f64,
}

/// Trains `model` in place on `data` with `config`, calling `progress` after every batch.
///
/// Errors: a bad config (naming the field), data that does not fit the model (shape, labels out of
/// range, no images), a non-finite loss (diverged), or a tensor failure.
pub fn train(
    model: &mut SnnModel,
    data: &ImageSet,
    config: &TrainConfig,
    progress: &mut dyn FnMut(&TrainProgress),
) -> Result<TrainSummary, TrainError> {
    config.validate()?;
    check_data(model, data)?;
    let device = model.device().clone();
    let (c, h, w) = (data.channels, data.height, data.width);
    let augmentation = if config.augment {
        Augmentation::for_shape(c, h, w)
    } else {
        Augmentation::None
    };
    let mut optimizer = Sgd::new(model.trainable_vars(), config);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let n = data.len();
    let batches = n.div_ceil(config.batch_size);
    let total_steps = config.epochs * batches;
    let mut order: Vec<usize> = (0..n).collect();
    let mut batch_pixels = Vec::with_capacity(config.batch_size * data.image_bytes());
    let mut scratch = Vec::new();
    let mut epoch_losses = Vec::with_capacity(config.epochs);
    let mut train_accuracy = 0.0;
    let started = Instant::now();
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0usize);
        for (batch, indices) in order.chunks(config.batch_size).enumerate() {
            batch_pixels.clear();
            for &i in indices {
                let start = batch_pixels.len();
                batch_pixels.extend_from_slice(data.image(i));
                augmentation.apply(&mut batch_pixels[start..], c, h, w, &mut rng, &mut scratch);
            }
            let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
            let x = pixels_to_tensor(&batch_pixels, indices.len(), (c, h, w), &device)?;
            let y = Tensor::new(labels.as_slice(), &device)?;
            let n_adv = config.adversarial_count(indices.len());
            let x = if n_adv > 0 {
                let adv = attack(
                    &*model,
                    &x.narrow(0, 0, n_adv)?,
                    &y.narrow(0, 0, n_adv)?,
                    &config.adversarial,
                    &mut rng,
                )?;
                if n_adv == indices.len() {
                    adv
                } else {
                    Tensor::cat(&[adv, x.narrow(0, n_adv, indices.len() - n_adv)?], 0)?
                }
            } else {
                x
            };
            let logits = model.forward(&x, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    batch: batch + 1,
                    loss: loss_value,
                });
            }
            let step = epoch * batches + batch;
            let lr = cosine_lr(config.lr, step, total_steps);
            optimizer.step(&loss.backward()?, lr)?;
            loss_sum += f64::from(loss_value);
            correct += count_correct(&logits.detach(), &y)?;
            seen += indices.len();
            progress(&TrainProgress {
                epoch: epoch + 1,
                epochs: config.epochs,
                batch: batch + 1,
                batches,
                loss: loss_sum / (batch + 1) as f64,
                accuracy: correct as f64 / seen as f64,
                lr,
            });
        }
        epoch_losses.push(loss_sum / batches as f64);
        train_accuracy = correct as f64 / seen.max(1) as f64;
    }
    Ok(TrainSummary {
        epochs: config.epochs,
        steps: total_steps,
        final_loss: epoch_losses.last().copied().unwrap_or(f64::NAN),
        epoch_losses,
        train_accuracy,
        seconds_per_epoch: started.elapsed().as_secs_f64() / config.epochs as f64,
    })
}

/// Learning rate of 0-based `step` of `total`: `peak * (1 + cos(pi * step / total)) / 2`.
pub fn cosine_lr(peak: f64, step: usize, total: usize) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

fn check_data(model: &SnnModel, data: &ImageSet) -> Result<(), TrainError> {
    let input = model.spec().input;
    if (data.channels, data.height, data.width) != (input.channels, input.height, input.width) {
        return Err(TrainError::Data(format!(
            "images are {}x{}x{}, the model takes {}x{}x{}",
            data.channels, data.height, data.width, input.channels, input.height, input.width
        )));
    }
    if data.is_empty() {
        return Err(TrainError::Data("the training set has no images".into()));
    }
    if data.pixels.len() != data.len() * data.image_bytes() {
        return Err(TrainError::Data(format!(
            "{} labels need {} pixel bytes, got {}",
            data.len(),
            data.len() * data.image_bytes(),
            data.pixels.len()
        )));
    }
    let classes = model.spec().classes();
    if let Some(bad) = data.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(TrainError::Data(format!(
            "label {bad} is out of range: the model has {classes} classes"
        )));
    }
    Ok(())
}

/// SGD with momentum and decoupled-from-BN weight decay (see the module doc).
struct Sgd {
    vars: Vec<Var>,
    velocity: Vec<Option<Tensor>>,
    decay: Vec<bool>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    fn new(vars: Vec<Var>, config: &TrainConfig) -> Sgd {
        let decay = vars.iter().map(|v| v.as_tensor().rank() >= 2).collect();
        Sgd {
            velocity: vec![None; vars.len()],
            vars,
            decay,
            momentum: config.momentum,
            weight_decay: config.weight_decay,
        }
    }

    fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> candle_core::Result<()> {
        for ((var, velocity), decay) in self.vars.iter().zip(&mut self.velocity).zip(&self.decay) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let weight = var.as_tensor().detach();
            let grad = if *decay && self.weight_decay > 0.0 {
                (grad + (&weight * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            let buf = match velocity.take() {
                Some(v) if self.momentum > 0.0 => ((v * self.momentum)? + grad)?,
                _ => grad,
            };
            var.set(&(weight - (&buf * lr)?)?)?;
            *velocity = Some(buf);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Architecture, InputShape};
    use crate::data::synthetic::{generate, SyntheticSplit};
    use crate::model::{ModelSpec, Normalisation};
    use candle_core::Device;

    fn tiny_model(set: &ImageSet, seed: u64) -> SnnModel {
        let mut spec = ModelSpec::new(
            Architecture::preset("tiny").unwrap(),
            2,
            InputShape {
                channels: set.channels,
                height: set.height,
                width: set.width,
            },
            set.class_names.clone(),
        );
        spec.normalisation = Normalisation::from_images(set);
        SnnModel::new(spec, &Device::Cpu, seed).unwrap()
    }

    fn small_data() -> ImageSet {
        generate(160, 16, 16, 3, SyntheticSplit::Train)
    }

    fn quick(epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: 32,
            lr: 0.05,
            ..TrainConfig::default()
        }
    }

    fn weights(model: &SnnModel) -> Vec<Vec<f32>> {
        model
            .trainable_vars()
            .iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn training_lowers_the_loss() {
        // A task the tiny SNN learns within a few epochs, so the loss must fall clearly.
        let data = crate::attack::tests::quadrant_images(400, 1);
        let mut model = tiny_model(&data, 1);
        let config = TrainConfig {
            batch_size: 25,
            augment: false,
            ..quick(4)
        };
        let summary = train(&mut model, &data, &config, &mut |_| {}).unwrap();
        assert_eq!(summary.epoch_losses.len(), 4);
        let first = summary.epoch_losses[0];
        assert!(
            summary.final_loss < first - 0.1,
            "losses {:?}",
            summary.epoch_losses
        );
    }

    #[test]
    fn same_seed_gives_the_same_weights_on_cpu() {
        let data = small_data();
        let config = TrainConfig {
            adversarial: AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 2),
            ..quick(1)
        };
        let run = |seed| {
            let mut model = tiny_model(&data, 1);
            let config = TrainConfig {
                seed,
                ..config.clone()
            };
            train(&mut model, &data, &config, &mut |_| {}).unwrap();
            weights(&model)
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a, run(6));
    }

    #[test]
    fn progress_is_reported_after_every_batch() {
        let data = small_data();
        let mut model = tiny_model(&data, 1);
        let mut seen = Vec::new();
        let config = TrainConfig {
            batch_size: 50,
            ..quick(2)
        };
        train(&mut model, &data, &config, &mut |p| {
            seen.push((p.epoch, p.batch, p.batches))
        })
        .unwrap();
        // 160 images in batches of 50: 4 batches (the last one of 10) per epoch.
        assert_eq!(seen.len(), 8);
        assert_eq!(seen[0], (1, 1, 4));
        assert_eq!(seen[7], (2, 4, 4));
    }

    #[test]
    fn fine_tuning_with_fgsm_halves_runs_and_changes_the_weights() {
        let data = small_data();
        let mut model = tiny_model(&data, 2);
        let before = weights(&model);
        let config = TrainConfig {
            batch_size: 32,
            ..TrainConfig::fine_tune(8.0 / 255.0)
        };
        assert_eq!(config.adversarial_count(32), 16);
        let summary = train(&mut model, &data, &config, &mut |_| {}).unwrap();
        assert!(summary.final_loss.is_finite());
        assert_ne!(weights(&model), before);
    }

    #[test]
    fn cosine_schedule_starts_at_the_peak_and_ends_near_zero() {
        assert_eq!(cosine_lr(0.1, 0, 100), 0.1);
        assert!((cosine_lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(cosine_lr(0.1, 99, 100) < 1e-4);
    }

    #[test]
    fn bad_config_is_an_error_naming_the_field() {
        let field_of = |config: TrainConfig| match config.validate() {
            Err(TrainError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid-config error, got {other:?}"),
        };
        assert_eq!(
            field_of(TrainConfig {
                epochs: 0,
                ..Default::default()
            }),
            "epochs"
        );
        assert_eq!(
            field_of(TrainConfig {
                batch_size: 0,
                ..Default::default()
            }),
            "batch_size"
        );
        assert_eq!(
            field_of(TrainConfig {
                lr: -1.0,
                ..Default::default()
            }),
            "lr"
        );
        assert_eq!(
            field_of(TrainConfig {
                momentum: 1.0,
                ..Default::default()
            }),
            "momentum"
        );
        assert_eq!(
            field_of(TrainConfig {
                adversarial_fraction: 1.5,
                ..Default::default()
            }),
            "adversarial_fraction"
        );
        assert_eq!(field_of(TrainConfig::fine_tune(-0.1)), "adversarial.eps");
        assert!(TrainConfig::default().validate().is_ok());
        assert!(TrainConfig::fine_tune(8.0 / 255.0).validate().is_ok());
    }

    #[test]
    fn data_that_does_not_fit_the_model_is_an_error() {
        let data = small_data();
        let mut model = tiny_model(&data, 1);
        let other = generate(10, 12, 12, 0, SyntheticSplit::Train);
        let err = train(&mut model, &other, &quick(1), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("12x12"), "{err}");
        let mut bad_labels = data.slice(0..10);
        bad_labels.labels[3] = 10;
        let err = train(&mut model, &bad_labels, &quick(1), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("label 10"), "{err}");
    }
}
