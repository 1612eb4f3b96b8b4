//! White-box L-inf attacks in pixel space: FGSM and PGD with random start.
//!
//! - [`AttackParams`]: which attack and its budget (serde, validated: every bad field is an error
//!   naming it). Defaults are DESIGN's shared-adversarial-set attack: PGD-7, eps 8/255, step 2/255,
//!   random start.
//! - [`PixelClassifier`]: what an attack needs from a model, logits of pixels in [0, 1] that stay
//!   differentiable with respect to the pixels. The SNN implements it in eval mode (batch-norm
//!   running statistics), with gradients through the LIF surrogate; a pruned or mutated copy of a
//!   model is attacked the same way.
//! - [`attack`]: adversarial pixels as an f32 tensor; [`attack_to_u8`] quantises them to the u8 form
//!   the shared adversarial set is stored in.
//!
//! Contracts: pixels are `[B, C, H, W]` f32 in [0, 1] (the model normalises internally); the loss
//! is cross-entropy of the classifier's logits (the SNN's are already averaged over T); every
//! result lies in `[x - eps, x + eps] ∩ [0, 1]`. The random start is drawn from the caller's seeded
//! RNG on the CPU, so the result is deterministic for a seed on a given backend.

use crate::data::ImageSet;
use crate::model::{images_to_tensor, ModelError, SnnModel};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Errors of an attack: bad parameters (naming the field) or a tensor failure.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error("attack parameter `{field}`: {reason}")]
    InvalidParam { field: &'static str, reason: String },
    #[error("attack input: {0}")]
    InvalidInput(String),
    #[error("attacked model: {0}")]
    Model(#[from] ModelError),
    #[error("attack tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Which attack to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    /// No perturbation: the clean images.
    None,
    /// Fast gradient sign method: one step of size `eps`.
    Fgsm,
    /// Projected gradient descent: `steps` signed steps of size `step`, projected onto the eps-ball.
    Pgd,
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AttackKind::None),
            "fgsm" => Ok(AttackKind::Fgsm),
            "pgd" => Ok(AttackKind::Pgd),
            other => Err(format!(
                "unknown attack `{other}`: expected none, fgsm or pgd"
            )),
        }
    }
}

impl std::fmt::Display for AttackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttackKind::None => "none",
            AttackKind::Fgsm => "fgsm",
            AttackKind::Pgd => "pgd",
        })
    }
}

/// An L-inf attack and its budget, in pixel units (1.0 = full intensity range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttackParams {
    pub kind: AttackKind,
    /// Radius of the L-inf ball, in [0, 1]. Put it on the 1/255 grid (8/255) and the u8 copy of
    /// the adversarial images keeps the bound exactly.
    pub eps: f64,
    /// PGD step size (> 0); unused by FGSM, whose single step is `eps`.
    pub step: f64,
    /// PGD iterations (>= 1); unused by FGSM.
    pub steps: usize,
    /// PGD starts from a uniform point of the eps-ball (drawn from the caller's RNG).
    pub random_start: bool,
}

impl Default for AttackParams {
    fn default() -> Self {
        AttackParams {
            kind: AttackKind::Pgd,
            eps: 8.0 / 255.0,
            step: 2.0 / 255.0,
            steps: 7,
            random_start: true,
        }
    }
}

impl AttackParams {
    /// No attack (clean images).
    pub fn none() -> Self {
        AttackParams {
            kind: AttackKind::None,
            ..Default::default()
        }
    }

    /// FGSM with radius `eps`.
    pub fn fgsm(eps: f64) -> Self {
        AttackParams {
            kind: AttackKind::Fgsm,
            eps,
            step: eps,
            steps: 1,
            random_start: false,
        }
    }

    /// PGD-`steps` with radius `eps`, step `step` and a random start.
    pub fn pgd(eps: f64, step: f64, steps: usize) -> Self {
        AttackParams {
            kind: AttackKind::Pgd,
            eps,
            step,
            steps,
            random_start: true,
        }
    }

    /// Checks every field the chosen kind uses; the error names the first bad one.
    pub fn validate(&self) -> Result<(), AttackError> {
        let bad = |field, reason: String| Err(AttackError::InvalidParam { field, reason });
        if self.kind == AttackKind::None {
            return Ok(());
        }
        if !self.eps.is_finite() || !(0.0..=1.0).contains(&self.eps) {
            return bad(
                "eps",
                format!("must be in [0, 1] (pixel units), got {}", self.eps),
            );
        }
        if self.kind == AttackKind::Pgd {
            if !self.step.is_finite() || self.step <= 0.0 || self.step > 1.0 {
                return bad(
                    "step",
                    format!("must be in (0, 1] (pixel units), got {}", self.step),
                );
            }
            if self.steps == 0 {
                return bad("steps", "PGD needs at least 1 step, got 0".to_string());
            }
        }
        Ok(())
    }
}

/// A model an attack can differentiate through.
pub trait PixelClassifier {
    /// Logits `[B, classes]` of pixels `[B, C, H, W]` in [0, 1], differentiable w.r.t. the pixels.
    /// Must not change the model (no batch-norm statistics updates): attacks run in eval mode.
    fn logits(&self, pixels: &Tensor) -> Result<Tensor, AttackError>;
}

impl PixelClassifier for SnnModel {
    /// The differentiable pass in eval mode: running batch-norm statistics, surrogate gradients,
    /// weights held constant.
    fn logits(&self, pixels: &Tensor) -> Result<Tensor, AttackError> {
        Ok(self.forward_input_grad(pixels)?)
    }
}

/// Gradient of the mean cross-entropy loss w.r.t. `pixels`, and the loss.
pub fn input_gradient<M: PixelClassifier + ?Sized>(
    model: &M,
    pixels: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, f32), AttackError> {
    let x = Var::from_tensor(&pixels.detach())?;
    let logits = model.logits(x.as_tensor())?;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    let mut grads = loss.backward()?;
    let grad = grads.remove(x.as_tensor()).ok_or_else(|| {
        AttackError::InvalidInput("the model's logits do not depend on its input pixels".into())
    })?;
    Ok((grad, loss.to_scalar::<f32>()?))
}

/// Adversarial pixels for `pixels` (`[B, C, H, W]` f32 in [0, 1]) with true `labels` (`[B]` u32).
///
/// Returns a detached tensor of the same shape with every pixel within `eps` of the input and in
/// [0, 1]. `rng` supplies PGD's random start (and nothing else), so a seeded RNG makes the result
/// deterministic.
pub fn attack<M: PixelClassifier + ?Sized, R: Rng + ?Sized>(
    model: &M,
    pixels: &Tensor,
    labels: &Tensor,
    params: &AttackParams,
    rng: &mut R,
) -> Result<Tensor, AttackError> {
    params.validate()?;
    check_input(pixels, labels)?;
    let clean = pixels.detach();
    match params.kind {
        AttackKind::None => Ok(clean),
        AttackKind::Fgsm => {
            let (grad, _) = input_gradient(model, &clean, labels)?;
            let adv = (&clean + (grad.sign()? * params.eps)?)?;
            Ok(adv.clamp(0f32, 1f32)?.detach())
        }
        AttackKind::Pgd => {
            let lo = (&clean - params.eps)?.clamp(0f32, 1f32)?;
            let hi = (&clean + params.eps)?.clamp(0f32, 1f32)?;
            let mut adv = if params.random_start {
                let noise = uniform_noise(clean.dims(), params.eps, clean.device(), rng)?;
                (&clean + noise)?.clamp(&lo, &hi)?
            } else {
                clean.clone()
            };
            for _ in 0..params.steps {
                let (grad, _) = input_gradient(model, &adv, labels)?;
                adv = (&adv + (grad.sign()? * params.step)?)?
                    .clamp(&lo, &hi)?
                    .detach();
            }
            Ok(adv)
        }
    }
}

/// [`attack`], then quantised to u8 pixels (round to nearest of p * 255), flattened in `[B, C, H, W]`
/// order: the stored form of the shared adversarial set. With `eps` on the 1/255 grid and u8-born
/// input pixels, the rounded pixels still lie within `eps` of the originals.
pub fn attack_to_u8<M: PixelClassifier + ?Sized, R: Rng + ?Sized>(
    model: &M,
    pixels: &Tensor,
    labels: &Tensor,
    params: &AttackParams,
    rng: &mut R,
) -> Result<Vec<u8>, AttackError> {
    let adv = attack(model, pixels, labels, params, rng)?;
    Ok(quantize_u8(&adv)?)
}

/// Pixels in [0, 1] to u8 (round to nearest of p * 255, clamped), flattened in row-major order.
pub fn quantize_u8(pixels: &Tensor) -> candle_core::Result<Vec<u8>> {
    (pixels.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()
}

/// Clean and adversarial correct counts of a model over some images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobustCounts {
    pub images: u64,
    pub clean_correct: u64,
    pub adversarial_correct: u64,
}

/// Attacks images `range` of `set` in batches of `batch_size` and counts correct predictions of
/// `model` on the clean and on the adversarial (f32, unquantised) images, both with the inference
/// pass. The random starts come from one ChaCha8 stream seeded by `seed`, consumed batch by batch,
/// so the counts are deterministic for (seed, batch size) on a backend.
pub fn robust_counts(
    model: &SnnModel,
    set: &ImageSet,
    range: Range<usize>,
    params: &AttackParams,
    seed: u64,
    batch_size: usize,
) -> Result<RobustCounts, AttackError> {
    params.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = RobustCounts {
        images: 0,
        clean_correct: 0,
        adversarial_correct: 0,
    };
    for_each_batch(model, set, range, batch_size, |x, y| {
        counts.images += y.dim(0)? as u64;
        counts.clean_correct += count_correct(&model.forward_eval(x)?, y)?;
        let adv = if params.kind == AttackKind::None {
            x.clone()
        } else {
            attack(model, x, y, params, &mut rng)?
        };
        counts.adversarial_correct += count_correct(&model.forward_eval(&adv)?, y)?;
        Ok(())
    })?;
    Ok(counts)
}

/// Adversarial copies of images `range` of `set`, as u8 pixels (same shape, labels and class
/// names): the stored form of a shared adversarial set. Random starts as in [`robust_counts`].
pub fn adversarial_set(
    model: &SnnModel,
    set: &ImageSet,
    range: Range<usize>,
    params: &AttackParams,
    seed: u64,
    batch_size: usize,
) -> Result<ImageSet, AttackError> {
    params.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(range.len() * set.image_bytes());
    let labels = set
        .labels
        .get(range.clone())
        .ok_or_else(|| {
            AttackError::InvalidInput(format!(
                "image range {}..{} is outside the set's {} images",
                range.start,
                range.end,
                set.len()
            ))
        })?
        .to_vec();
    for_each_batch(model, set, range, batch_size, |x, y| {
        pixels.extend(attack_to_u8(model, x, y, params, &mut rng)?);
        Ok(())
    })?;
    Ok(ImageSet {
        channels: set.channels,
        height: set.height,
        width: set.width,
        pixels,
        labels,
        class_names: set.class_names.clone(),
    })
}

/// Rows of `logits` (`[B, classes]`) whose predicted class ([`crate::eval::predictions`]: ties to
/// the lower index, decided on the host) equals `labels` (`[B]` u32).
pub(crate) fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<u64, ModelError> {
    let labels: Vec<u32> = labels.to_vec1()?;
    Ok(crate::eval::predictions(logits)?
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count() as u64)
}

/// Calls `f(pixels, labels)` for consecutive batches of `range` on the model's device.
fn for_each_batch(
    model: &SnnModel,
    set: &ImageSet,
    range: Range<usize>,
    batch_size: usize,
    mut f: impl FnMut(&Tensor, &Tensor) -> Result<(), AttackError>,
) -> Result<(), AttackError> {
    if batch_size == 0 {
        return Err(AttackError::InvalidInput(
            "batch size must be at least 1, got 0".into(),
        ));
    }
    if range.start > range.end || range.end > set.len() {
        return Err(AttackError::InvalidInput(format!(
            "image range {}..{} is outside the set's {} images",
            range.start,
            range.end,
            set.len()
        )));
    }
    let device = model.device();
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch_size).min(range.end);
        let x = images_to_tensor(set, start..end, device)?;
        let y = Tensor::new(&set.labels[start..end], device)?;
        f(&x, &y)?;
        start = end;
    }
    Ok(())
}

fn check_input(pixels: &Tensor, labels: &Tensor) -> Result<(), AttackError> {
    let dims = pixels.dims();
    if dims.len() != 4 {
        return Err(AttackError::InvalidInput(format!(
            "pixels must be [B, C, H, W], got shape {dims:?}"
        )));
    }
    if labels.dims() != [dims[0]] {
        return Err(AttackError::InvalidInput(format!(
            "labels must be [{}] for {} images, got shape {:?}",
            dims[0],
            dims[0],
            labels.dims()
        )));
    }
    if pixels.dtype() != DType::F32 {
        return Err(AttackError::InvalidInput(format!(
            "pixels must be f32, got {:?}",
            pixels.dtype()
        )));
    }
    Ok(())
}

/// Uniform noise in [-eps, eps], drawn on the CPU from `rng` so that it is backend-independent.
fn uniform_noise<R: Rng + ?Sized>(
    dims: &[usize],
    eps: f64,
    device: &Device,
    rng: &mut R,
) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let eps = eps as f32;
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-eps..=eps)).collect();
    Tensor::from_vec(values, dims, device)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A linear classifier over flattened pixels: a real differentiable model small enough to
    /// reason about, so the attacks' arithmetic can be checked independently of the SNN.
    struct Linear {
        weight: Tensor, // [classes, C*H*W]
    }

    impl PixelClassifier for Linear {
        fn logits(&self, pixels: &Tensor) -> Result<Tensor, AttackError> {
            Ok(pixels.flatten_from(1)?.matmul(&self.weight.t()?)?)
        }
    }

    fn setup() -> (Linear, Tensor, Tensor) {
        let dev = Device::Cpu;
        // Class 0 likes bright pixels, class 1 dark ones.
        let w: Vec<f32> = (0..2 * 12)
            .map(|i| if i < 12 { 1.0 } else { -1.0 })
            .collect();
        let weight = Tensor::from_vec(w, (2, 12), &dev).unwrap();
        let px: Vec<f32> = (0..4 * 12)
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect();
        let pixels = Tensor::from_vec(px, (4, 3, 2, 2), &dev).unwrap();
        let labels = Tensor::new(&[0u32, 1, 0, 1], &dev).unwrap();
        (Linear { weight }, pixels, labels)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn range(t: &Tensor) -> (f32, f32) {
        let f = t.flatten_all().unwrap();
        (
            f.min(0).unwrap().to_scalar().unwrap(),
            f.max(0).unwrap().to_scalar().unwrap(),
        )
    }

    #[test]
    fn input_gradient_reaches_every_pixel() {
        let (model, pixels, labels) = setup();
        let (grad, loss) = input_gradient(&model, &pixels, &labels).unwrap();
        assert_eq!(grad.dims(), pixels.dims());
        assert!(loss.is_finite() && loss > 0.0);
        let zeros = grad
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            zeros.iter().all(|g| *g > 0.0),
            "every pixel moves the linear model's loss"
        );
    }

    #[test]
    fn fgsm_moves_every_pixel_by_eps_against_the_true_class_unless_clamped() {
        let (model, pixels, labels) = setup();
        let eps = 4.0 / 255.0;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let adv = attack(&model, &pixels, &labels, &AttackParams::fgsm(eps), &mut rng).unwrap();
        let x = pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = adv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (x, a)) in x.iter().zip(&a).enumerate() {
            let image = i / 12;
            // True class 0 (bright) is attacked by darkening, class 1 by brightening.
            let expected = if image % 2 == 0 {
                x - eps as f32
            } else {
                x + eps as f32
            };
            assert!(
                (a - expected.clamp(0.0, 1.0)).abs() < 1e-6,
                "pixel {i}: {x} -> {a}"
            );
        }
    }

    #[test]
    fn pgd_output_stays_within_eps_and_the_unit_interval() {
        let (model, pixels, labels) = setup();
        let eps = 8.0 / 255.0;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let params = AttackParams::pgd(eps, 3.0 / 255.0, 10);
        let adv = attack(&model, &pixels, &labels, &params, &mut rng).unwrap();
        assert!(max_abs_diff(&adv, &pixels) <= eps as f32 + 1e-6);
        let (lo, hi) = range(&adv);
        assert!(lo >= 0.0 && hi <= 1.0);
    }

    #[test]
    fn pgd_raises_the_loss_above_the_clean_loss() {
        let (model, pixels, labels) = setup();
        let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let adv = attack(&model, &pixels, &labels, &params, &mut rng).unwrap();
        let (_, clean_loss) = input_gradient(&model, &pixels, &labels).unwrap();
        let (_, adv_loss) = input_gradient(&model, &adv, &labels).unwrap();
        assert!(
            adv_loss > clean_loss + 0.1,
            "clean {clean_loss}, adversarial {adv_loss}"
        );
    }

    #[test]
    fn pgd_with_the_same_seed_is_deterministic() {
        let (model, pixels, labels) = setup();
        let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 3);
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            attack_to_u8(&model, &pixels, &labels, &params, &mut rng).unwrap()
        };
        assert_eq!(run(1), run(1));
    }

    #[test]
    fn u8_adversarial_images_keep_the_eps_bound_on_the_255_grid() {
        let (model, pixels, labels) = setup();
        let clean_u8 = quantize_u8(&pixels).unwrap();
        let eps_levels = 8u8;
        let params = AttackParams::pgd(eps_levels as f64 / 255.0, 2.0 / 255.0, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let adv_u8 = attack_to_u8(&model, &pixels, &labels, &params, &mut rng).unwrap();
        assert_eq!(adv_u8.len(), clean_u8.len());
        assert!(clean_u8
            .iter()
            .zip(&adv_u8)
            .all(|(c, a)| c.abs_diff(*a) <= eps_levels));
        assert_ne!(adv_u8, clean_u8);
    }

    #[test]
    fn none_returns_the_clean_pixels() {
        let (model, pixels, labels) = setup();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let adv = attack(&model, &pixels, &labels, &AttackParams::none(), &mut rng).unwrap();
        assert_eq!(max_abs_diff(&adv, &pixels), 0.0);
    }

    #[test]
    fn bad_params_are_errors_naming_the_field() {
        let field_of = |p: AttackParams| match p.validate() {
            Err(AttackError::InvalidParam { field, .. }) => field,
            other => panic!("expected an invalid-parameter error, got {other:?}"),
        };
        assert_eq!(field_of(AttackParams::fgsm(-0.1)), "eps");
        assert_eq!(field_of(AttackParams::fgsm(f64::NAN)), "eps");
        assert_eq!(field_of(AttackParams::pgd(0.1, 0.0, 7)), "step");
        assert_eq!(field_of(AttackParams::pgd(0.1, 0.01, 0)), "steps");
        assert!(AttackParams::default().validate().is_ok());
        assert!(AttackParams {
            eps: -1.0,
            ..AttackParams::none()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn mismatched_labels_are_an_input_error() {
        let (model, pixels, _) = setup();
        let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = attack(&model, &pixels, &labels, &AttackParams::fgsm(0.1), &mut rng);
        assert!(matches!(err, Err(AttackError::InvalidInput(_))));
    }

    #[test]
    fn params_read_from_toml_style_json_with_defaults() {
        let p: AttackParams = serde_json::from_str(r#"{"kind":"fgsm","eps":0.1}"#).unwrap();
        assert_eq!(p.kind, AttackKind::Fgsm);
        assert_eq!(p.steps, 7);
        assert!(serde_json::from_str::<AttackParams>(r#"{"epsilon":0.1}"#).is_err());
    }
    /// A generated 4-class task a `tiny` SNN learns in seconds: 1x16x16 grey noise (0.35..0.65)
    /// with one quadrant brighter by 0.15; the class is the quadrant. The margin is small enough
    /// for an eps-0.1 attack to flip many predictions.
    pub(crate) fn quadrant_images(count: usize, seed: u64) -> ImageSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pixels = Vec::with_capacity(count * 256);
        let labels: Vec<u32> = (0..count).map(|i| (i % 4) as u32).collect();
        for &label in &labels {
            for y in 0..16 {
                for x in 0..16 {
                    let quadrant = (y / 8) * 2 + x / 8;
                    let bright = if quadrant == label as usize {
                        0.15
                    } else {
                        0.0
                    };
                    let p: f64 = rng.random_range(0.35..0.65) + bright;
                    pixels.push((p * 255.0).round() as u8);
                }
            }
        }
        ImageSet {
            channels: 1,
            height: 16,
            width: 16,
            pixels,
            labels,
            class_names: ["top-left", "top-right", "bottom-left", "bottom-right"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// A `tiny` SNN (T = 2) trained on [`quadrant_images`], and held-out images.
    fn trained_snn() -> (SnnModel, ImageSet) {
        use crate::arch::{Architecture, InputShape};
        use crate::model::{ModelSpec, Normalisation};
        use crate::train::{train, TrainConfig};
        let data = quadrant_images(400, 1);
        let test = quadrant_images(100, 2);
        let mut spec = ModelSpec::new(
            Architecture::preset("tiny").unwrap(),
            2,
            InputShape {
                channels: 1,
                height: 16,
                width: 16,
            },
            data.class_names.clone(),
        );
        spec.normalisation = Normalisation::from_images(&data);
        let mut model = SnnModel::new(spec, &Device::Cpu, 4).unwrap();
        let config = TrainConfig {
            epochs: 4,
            batch_size: 25,
            lr: 0.05,
            augment: false,
            ..TrainConfig::default()
        };
        train(&mut model, &data, &config, &mut |_| {}).unwrap();
        (model, test)
    }

    #[test]
    fn fgsm_and_pgd_lower_a_trained_snns_accuracy_and_pgd_at_least_as_much() {
        let (model, test) = trained_snn();
        let eps = 0.1;
        let n = test.len();
        let fgsm = robust_counts(&model, &test, 0..n, &AttackParams::fgsm(eps), 0, 50).unwrap();
        let pgd = robust_counts(
            &model,
            &test,
            0..n,
            &AttackParams::pgd(eps, 0.025, 7),
            0,
            50,
        )
        .unwrap();
        assert_eq!(fgsm.clean_correct, pgd.clean_correct);
        assert!(
            fgsm.clean_correct > n as u64 / 2,
            "the model must learn the task: {fgsm:?}"
        );
        assert!(fgsm.adversarial_correct < fgsm.clean_correct, "{fgsm:?}");
        assert!(
            pgd.adversarial_correct <= fgsm.adversarial_correct,
            "fgsm {fgsm:?}, pgd {pgd:?}"
        );
    }

    #[test]
    fn snn_input_gradient_reaches_the_image_and_u8_set_keeps_the_bound() {
        let (model, test) = trained_snn();
        let x = images_to_tensor(&test, 0..20, &Device::Cpu).unwrap();
        let y = Tensor::new(&test.labels[0..20], &Device::Cpu).unwrap();
        let (grad, _) = input_gradient(&model, &x, &y).unwrap();
        let norm: f32 = grad.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "the surrogate gradient must reach the pixels");
        let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 3);
        let adv = adversarial_set(&model, &test, 0..20, &params, 1, 8).unwrap();
        assert_eq!(adv.labels, test.labels[0..20]);
        let clean = &test.pixels[..20 * test.image_bytes()];
        assert_eq!(adv.pixels.len(), clean.len());
        assert!(clean
            .iter()
            .zip(&adv.pixels)
            .all(|(c, a)| c.abs_diff(*a) <= 8));
        assert_eq!(
            adv,
            adversarial_set(&model, &test, 0..20, &params, 1, 8).unwrap()
        );
    }
}
