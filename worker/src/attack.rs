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
//! - Robustness you can believe (surrogate gradients can mask gradients: a model that looks robust
//!   through its own surrogate may fall through another): an [`AttackRun`] is an attack with random
//!   restarts, differentiated through a chosen [`SurrogateSpec`] (the forward pass is unchanged) or
//!   crafted on a source model (transfer). [`per_image_correct`] gives one run's per-image
//!   correctness (correct only if every restart fails), [`robustness`] a list of runs and the
//!   worst case per image, [`strong_robustness`] the [`StrongAttackPlan`] the final tables report.
//!
//! The worst case is always the AND of per-image correctness bitmaps ([`correct_under_all`]), never
//! the minimum of per-attack totals, and an image counts as robust only if it is also classified
//! correctly on the clean input. Adding restarts, surrogates or attacks to a list therefore never
//! raises its worst-case count: every run's restart `r` draws its random start from its own ChaCha8
//! stream, a function of (seed, attack parameters, surrogate, transfer, `r`) alone
//! ([`AttackRun`] documents it), so a run gives the same bitmap whatever else is evaluated.
//!
//! Contracts: pixels are `[B, C, H, W]` f32 in [0, 1] (the model normalises internally); the loss
//! is cross-entropy of the classifier's logits (the SNN's are already averaged over T); every
//! result lies in `[x - eps, x + eps] ∩ [0, 1]`. The random start is drawn from the caller's seeded
//! RNG on the CPU, so the result is deterministic for a seed on a given backend.

use crate::data::ImageSet;
use crate::lif::{SurrogateKind, SurrogateSpec};
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

/// One attack of a robustness evaluation: `params` run `restarts` times, each restart from its own
/// random start; an image survives the run only if it is classified correctly after every restart.
///
/// The gradients go through `surrogate` (`None`: the crafting model's own; the forward pass is
/// never changed). With `transfer` the examples are crafted on a source model (see [`robustness`])
/// and scored on the evaluated model.
///
/// Random streams: restart `r` draws from ChaCha8 seeded by a mix of (seed, `params`, surrogate,
/// `transfer`, `r`), consumed batch by batch; restart 0 of a white-box run through the model's own
/// surrogate uses the seed itself, so it reproduces [`robust_counts`] exactly (and `ccsrp eval`
/// without the strong flags prints the numbers it always did). FGSM and PGD without a random start
/// are deterministic: they run once whatever `restarts` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackRun {
    pub params: AttackParams,
    /// Random restarts (>= 1).
    pub restarts: usize,
    /// The surrogate the gradients go through; `None` = the crafting model's own.
    pub surrogate: Option<SurrogateSpec>,
    /// Crafted on the source model instead of the evaluated one.
    pub transfer: bool,
}

impl AttackRun {
    /// `params`, once, white-box through the model's own surrogate.
    pub fn new(params: AttackParams) -> AttackRun {
        AttackRun {
            params,
            restarts: 1,
            surrogate: None,
            transfer: false,
        }
    }

    /// The same run with `restarts` random restarts.
    pub fn with_restarts(self, restarts: usize) -> AttackRun {
        AttackRun { restarts, ..self }
    }

    /// The same run differentiated through `surrogate`.
    pub fn through(self, surrogate: SurrogateSpec) -> AttackRun {
        AttackRun {
            surrogate: Some(surrogate),
            ..self
        }
    }

    /// The same run crafted on the source model (a transfer attack).
    pub fn transferred(self) -> AttackRun {
        AttackRun {
            transfer: true,
            ..self
        }
    }

    /// Whether restarts can differ: PGD with a random start.
    pub fn is_randomised(&self) -> bool {
        self.params.kind == AttackKind::Pgd && self.params.random_start
    }

    /// Checks the parameters, `restarts >= 1` and the surrogate; the error names the field
    /// (`eps`, `step`, `steps`, `restarts`, `surrogate`).
    pub fn validate(&self) -> Result<(), AttackError> {
        self.params.validate()?;
        if self.restarts == 0 {
            return Err(AttackError::InvalidParam {
                field: "restarts",
                reason: "expected at least 1 restart, got 0".into(),
            });
        }
        if let Some(s) = &self.surrogate {
            s.validate().map_err(|_| AttackError::InvalidParam {
                field: "surrogate",
                reason: format!("{s}: alpha must be a finite number > 0"),
            })?;
        }
        Ok(())
    }

    /// The canonical form against a crafting model whose own surrogate is `own`: a surrogate equal
    /// to `own` becomes `None`, a deterministic attack runs once. Equal canonical runs give equal
    /// bitmaps, so [`robustness`] evaluates each only once.
    pub fn normalised(&self, own: SurrogateSpec) -> AttackRun {
        let mut run = self.clone();
        if run.surrogate == Some(own) {
            run.surrogate = None;
        }
        if !run.is_randomised() {
            run.restarts = 1;
        }
        run
    }

    /// A short name for people, e.g. `pgd-50 x2 via atan:2` or `transfer pgd-50 x2 via sigmoid:4`;
    /// `surrogate` is the one the gradients went through.
    pub fn label(&self, surrogate: SurrogateSpec) -> String {
        let p = &self.params;
        let mut name = match p.kind {
            AttackKind::None => "clean".to_string(),
            AttackKind::Fgsm => "fgsm".to_string(),
            AttackKind::Pgd => format!("pgd-{}", p.steps),
        };
        if self.transfer {
            name = format!("transfer {name}");
        }
        if self.restarts > 1 {
            name = format!("{name} x{}", self.restarts);
        }
        if p.kind != AttackKind::None {
            name = format!("{name} via {surrogate}");
        }
        name
    }

    /// The random stream of restart `restart` (see the type's documentation).
    fn stream_seed(&self, seed: u64, restart: usize) -> u64 {
        if restart == 0 && self.surrogate.is_none() && !self.transfer {
            return seed;
        }
        let p = &self.params;
        let kind = match p.kind {
            AttackKind::None => 0u64,
            AttackKind::Fgsm => 1,
            AttackKind::Pgd => 2,
        };
        let (surrogate, alpha) = match &self.surrogate {
            None => (0u64, 0u64),
            Some(s) => (
                1 + SurrogateKind::ALL
                    .iter()
                    .position(|k| *k == s.kind)
                    .unwrap_or(0) as u64,
                s.alpha.to_bits(),
            ),
        };
        [
            kind,
            p.eps.to_bits(),
            p.step.to_bits(),
            p.steps as u64,
            u64::from(p.random_start),
            surrogate,
            alpha,
            u64::from(self.transfer),
            restart as u64,
        ]
        .iter()
        .fold(splitmix64(seed ^ 0x0ccb_5eed_a77a_c4ed), |h, &w| {
            splitmix64(h ^ w)
        })
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One attack run's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttackOutcome {
    /// The run, canonical ([`AttackRun::normalised`]).
    pub run: AttackRun,
    /// The surrogate its gradients went through (the crafting model's own when `run.surrogate` is
    /// `None`).
    pub surrogate: SurrogateSpec,
    /// Images classified correctly after every restart (clean correctness not required).
    pub correct: u64,
    /// Per image of the evaluated range, in order: correct after every restart.
    #[serde(skip)]
    pub per_image: Vec<bool>,
}

impl AttackOutcome {
    pub fn new(run: AttackRun, surrogate: SurrogateSpec, per_image: Vec<bool>) -> AttackOutcome {
        AttackOutcome {
            correct: per_image.iter().filter(|c| **c).count() as u64,
            run,
            surrogate,
            per_image,
        }
    }

    /// [`AttackRun::label`] with the surrogate used.
    pub fn label(&self) -> String {
        self.run.label(self.surrogate)
    }
}

/// Clean accuracy, every attack's robust count and the worst case per image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrongRobustness {
    pub images: u64,
    pub clean_correct: u64,
    /// One entry per distinct (canonical) run, in the order given.
    pub attacks: Vec<AttackOutcome>,
    /// Images classified correctly on the clean input AND after every restart of every attack,
    /// decided per image.
    pub worst_case_correct: u64,
    /// Per image: correct on the clean input.
    #[serde(skip)]
    pub clean: Vec<bool>,
    /// Per image: correct on the clean input and under every attack.
    #[serde(skip)]
    pub worst_case: Vec<bool>,
}

impl StrongRobustness {
    /// Combines per-image bitmaps (all of the same length as `clean`) into the report: the worst
    /// case is [`correct_under_all`] of the clean bitmap and every attack's.
    pub fn new(
        clean: Vec<bool>,
        attacks: Vec<AttackOutcome>,
    ) -> Result<StrongRobustness, AttackError> {
        let worst_case = correct_under_all(
            clean.len(),
            std::iter::once(clean.as_slice()).chain(attacks.iter().map(|a| a.per_image.as_slice())),
        )?;
        Ok(StrongRobustness {
            images: clean.len() as u64,
            clean_correct: clean.iter().filter(|c| **c).count() as u64,
            worst_case_correct: worst_case.iter().filter(|c| **c).count() as u64,
            attacks,
            clean,
            worst_case,
        })
    }

    /// `count / images` (0 for no images).
    pub fn accuracy(&self, count: u64) -> f64 {
        count as f64 / self.images.max(1) as f64
    }
}

/// Per image: `true` where every bitmap is `true` (all for no bitmaps). Each bitmap must hold
/// `images` entries. This is how a worst case over attacks is computed: per image, never as the
/// minimum of the attacks' totals (two attacks that fool different images leave fewer robust
/// images than either alone).
pub fn correct_under_all<'a>(
    images: usize,
    bitmaps: impl IntoIterator<Item = &'a [bool]>,
) -> Result<Vec<bool>, AttackError> {
    let mut all = vec![true; images];
    for (i, bitmap) in bitmaps.into_iter().enumerate() {
        if bitmap.len() != images {
            return Err(AttackError::InvalidInput(format!(
                "correctness bitmap {i} has {} entries for {images} images",
                bitmap.len()
            )));
        }
        all.iter_mut().zip(bitmap).for_each(|(a, b)| *a &= *b);
    }
    Ok(all)
}

/// Checks a transfer source can stand in for `model`: the same input shape, the same class names
/// in the same order, the same device.
pub fn check_source(model: &SnnModel, source: &SnnModel) -> Result<(), AttackError> {
    let (m, s) = (model.spec(), source.spec());
    if m.input != s.input {
        return Err(AttackError::InvalidInput(format!(
            "the source model takes {}x{}x{} images, the evaluated model {}x{}x{}",
            s.input.channels,
            s.input.height,
            s.input.width,
            m.input.channels,
            m.input.height,
            m.input.width
        )));
    }
    if m.class_names != s.class_names {
        return Err(AttackError::InvalidInput(format!(
            "the source model's classes {:?} differ from the evaluated model's {:?}",
            s.class_names, m.class_names
        )));
    }
    if !model.device().same_device(source.device()) {
        return Err(AttackError::InvalidInput(format!(
            "the source model is on {:?}, the evaluated model on {:?}",
            source.device().location(),
            model.device().location()
        )));
    }
    Ok(())
}

/// Per image of `range`: `model` classifies the clean image correctly (inference pass).
pub fn clean_correct_per_image(
    model: &SnnModel,
    set: &ImageSet,
    range: Range<usize>,
    batch_size: usize,
) -> Result<Vec<bool>, AttackError> {
    per_image_correct(
        model,
        None,
        set,
        range,
        &AttackRun::new(AttackParams::none()),
        0, // no attack, no random stream
        batch_size,
    )
}

/// Per image of `range`: `model` (inference pass) classifies the adversarial image of every
/// restart of `run` correctly. The examples are crafted on `model`, or with `run.transfer` on
/// `source` (which must pass [`check_source`]), through `run.surrogate` when given. Random starts
/// as documented on [`AttackRun`]; deterministic for (seed, batch size) on a backend.
pub fn per_image_correct(
    model: &SnnModel,
    source: Option<&SnnModel>,
    set: &ImageSet,
    range: Range<usize>,
    run: &AttackRun,
    seed: u64,
    batch_size: usize,
) -> Result<Vec<bool>, AttackError> {
    run.validate()?;
    let crafter = if run.transfer {
        let source = source.ok_or_else(|| AttackError::InvalidParam {
            field: "source",
            reason: "a transfer attack needs a source model to craft its examples on".into(),
        })?;
        check_source(model, source)?;
        source
    } else {
        model
    };
    let run = run.normalised(crafter.surrogate());
    let switched;
    let crafter = match run.surrogate {
        Some(s) => {
            switched = crafter.with_surrogate(s)?;
            &switched
        }
        None => crafter,
    };
    let mut correct = vec![true; range.len()];
    for restart in 0..run.restarts {
        let mut rng = ChaCha8Rng::seed_from_u64(run.stream_seed(seed, restart));
        let mut offset = 0;
        for_each_batch(model, set, range.clone(), batch_size, |x, y| {
            let adv = if run.params.kind == AttackKind::None {
                x.clone()
            } else {
                attack(crafter, x, y, &run.params, &mut rng)?
            };
            let hits = correct_rows(&model.forward_eval(&adv)?, y)?;
            let slots = correct
                .get_mut(offset..offset + hits.len())
                .ok_or_else(|| {
                    AttackError::InvalidInput("batch outside the evaluated range".into())
                })?;
            slots.iter_mut().zip(&hits).for_each(|(c, h)| *c &= *h);
            offset += hits.len();
            Ok(())
        })?;
    }
    Ok(correct)
}

/// Which images each run of [`robustness`] attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackScope {
    /// Every run attacks every image: each run's count is that attack's own robust accuracy.
    EveryImage,
    /// A run attacks only the images still robust (correct on the clean input and under every
    /// earlier run); the others count as not robust. The worst case per image is over the same
    /// attacks as with [`AttackScope::EveryImage`] (an image once fooled stays fooled; only the
    /// random starts differ, being drawn for the images attacked), at a fraction of the cost; a
    /// run's count is then cumulative: robust under it and every run before it.
    Survivors,
}

/// Clean accuracy and every run of `runs` on images `range` of `set`, with the worst case per
/// image. Runs are made canonical ([`AttackRun::normalised`]) and a run equal to an earlier one is
/// evaluated once. `source` is the model transfer runs craft on (checked with [`check_source`]
/// when given); a transfer run without one is an error naming `source`. `scope` says which images
/// each run attacks.
#[allow(clippy::too_many_arguments)]
pub fn robustness(
    model: &SnnModel,
    source: Option<&SnnModel>,
    set: &ImageSet,
    range: Range<usize>,
    runs: &[AttackRun],
    seed: u64,
    batch_size: usize,
    scope: AttackScope,
) -> Result<StrongRobustness, AttackError> {
    for run in runs {
        run.validate()?;
        if run.transfer && source.is_none() {
            return Err(AttackError::InvalidParam {
                field: "source",
                reason: "a transfer attack needs a source model to craft its examples on".into(),
            });
        }
    }
    if let Some(source) = source {
        check_source(model, source)?;
    }
    let clean = clean_correct_per_image(model, set, range.clone(), batch_size)?;
    let mut attacks: Vec<AttackOutcome> = Vec::with_capacity(runs.len());
    for run in runs {
        let own = match (run.transfer, source) {
            (true, Some(source)) => source.surrogate(),
            _ => model.surrogate(),
        };
        let run = run.normalised(own);
        if attacks.iter().any(|a| a.run == run) {
            continue;
        }
        let per_image = match scope {
            AttackScope::EveryImage => {
                per_image_correct(model, source, set, range.clone(), &run, seed, batch_size)?
            }
            AttackScope::Survivors => {
                let survivors: Vec<usize> = (0..range.len())
                    .filter(|&i| clean[i] && attacks.iter().all(|a: &AttackOutcome| a.per_image[i]))
                    .collect();
                let mut per_image = vec![false; range.len()];
                if !survivors.is_empty() {
                    let images: Vec<usize> = survivors.iter().map(|i| range.start + i).collect();
                    let subset = set.select(&images);
                    let hits = per_image_correct(
                        model,
                        source,
                        &subset,
                        0..subset.len(),
                        &run,
                        seed,
                        batch_size,
                    )?;
                    for (&i, hit) in survivors.iter().zip(hits) {
                        per_image[i] = hit;
                    }
                }
                per_image
            }
        };
        attacks.push(AttackOutcome::new(
            run.clone(),
            run.surrogate.unwrap_or(own),
            per_image,
        ));
    }
    StrongRobustness::new(clean, attacks)
}

/// Default iterations of the strong PGD.
pub const STRONG_PGD_STEPS: usize = 50;
/// Default random restarts of every PGD run of the strong evaluation.
pub const STRONG_RESTARTS: usize = 2;

/// The strong robustness evaluation the final tables report: the worst case per image over
/// - FGSM at `eps` (one step of `eps`), white-box through the model's own surrogate (`fgsm`);
/// - PGD-`pgd_steps` at `eps` with step `pgd_step` (default `2.5 * eps / pgd_steps`, the usual
///   rule: the steps can cross the eps-ball 2.5 times) and a random start, `restarts` times,
///   through the model's own surrogate and through every one of `surrogates`;
/// - with a source model and `transfer`: the same PGD crafted on the source (through its own
///   surrogate) and scored on the model;
/// - every run of `extra` (e.g. a command line's configured attack);
///
/// and an image counts only if it is also correct on the clean input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrongAttackPlan {
    /// L-inf radius of FGSM and the strong PGD, in [0, 1] pixel units.
    pub eps: f64,
    /// Strong PGD iterations (default [`STRONG_PGD_STEPS`]).
    pub pgd_steps: usize,
    /// Strong PGD step; `None` = `2.5 * eps / pgd_steps`.
    pub pgd_step: Option<f64>,
    /// Random restarts of the strong PGD runs (default [`STRONG_RESTARTS`]).
    pub restarts: usize,
    /// Surrogates the strong PGD also differentiates through (default: sigmoid:4, atan:2,
    /// triangle:1); the model's own is always included.
    pub surrogates: Vec<SurrogateSpec>,
    /// Include FGSM.
    pub fgsm: bool,
    /// Include the transfer PGD when a source model is given.
    pub transfer: bool,
    /// Further runs.
    pub extra: Vec<AttackRun>,
}

impl Default for StrongAttackPlan {
    fn default() -> Self {
        StrongAttackPlan::standard(8.0 / 255.0)
    }
}

impl StrongAttackPlan {
    /// The default plan at radius `eps`: FGSM, PGD-50 (step `2.5 * eps / 50`) with 2 restarts
    /// through the model's own surrogate and sigmoid:4, atan:2 and triangle:1, and the transfer PGD
    /// when a source is given.
    pub fn standard(eps: f64) -> StrongAttackPlan {
        StrongAttackPlan {
            eps,
            pgd_steps: STRONG_PGD_STEPS,
            pgd_step: None,
            restarts: STRONG_RESTARTS,
            surrogates: SurrogateSpec::standard(),
            fgsm: true,
            transfer: true,
            extra: Vec::new(),
        }
    }

    /// The strong PGD's parameters.
    pub fn pgd(&self) -> AttackParams {
        let steps = self.pgd_steps.max(1);
        let step = self.pgd_step.unwrap_or(if self.eps > 0.0 {
            2.5 * self.eps / steps as f64
        } else {
            // A zero ball: every step is projected away; any valid step gives the clean image.
            1.0 / 255.0
        });
        AttackParams {
            kind: AttackKind::Pgd,
            eps: self.eps,
            step,
            steps: self.pgd_steps,
            random_start: true,
        }
    }

    /// Checks every field; the error names it (`eps`, `pgd_steps`, `step`, `restarts`, `surrogate`).
    pub fn validate(&self) -> Result<(), AttackError> {
        if self.pgd_steps == 0 {
            return Err(AttackError::InvalidParam {
                field: "pgd_steps",
                reason: "the strong PGD needs at least 1 step, got 0".into(),
            });
        }
        for run in self.runs(true) {
            run.validate()?;
        }
        Ok(())
    }

    /// The runs of the plan, `extra` first; the transfer PGD only `with_source`.
    pub fn runs(&self, with_source: bool) -> Vec<AttackRun> {
        let mut runs = self.extra.clone();
        if self.fgsm {
            runs.push(AttackRun::new(AttackParams::fgsm(self.eps)));
        }
        let pgd = AttackRun::new(self.pgd()).with_restarts(self.restarts);
        runs.push(pgd.clone());
        runs.extend(self.surrogates.iter().map(|s| pgd.clone().through(*s)));
        if with_source && self.transfer {
            runs.push(pgd.transferred());
        }
        runs
    }
}

/// [`robustness`] over the runs of `plan` (validated first), each on the images no earlier run
/// fooled ([`AttackScope::Survivors`]): the strong robust accuracy is the result's
/// `worst_case_correct`.
pub fn strong_robustness(
    model: &SnnModel,
    source: Option<&SnnModel>,
    set: &ImageSet,
    range: Range<usize>,
    plan: &StrongAttackPlan,
    seed: u64,
    batch_size: usize,
) -> Result<StrongRobustness, AttackError> {
    plan.validate()?;
    robustness(
        model,
        source,
        set,
        range,
        &plan.runs(source.is_some()),
        seed,
        batch_size,
        AttackScope::Survivors,
    )
}

/// Per row of `logits` (`[B, classes]`): the predicted class equals `labels` (`[B]` u32).
fn correct_rows(logits: &Tensor, labels: &Tensor) -> Result<Vec<bool>, ModelError> {
    let labels: Vec<u32> = labels.to_vec1()?;
    Ok(crate::eval::predictions(logits)?
        .iter()
        .zip(&labels)
        .map(|(p, l)| p == l)
        .collect())
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

    /// [`trained_snn`], trained once and shared by the tests of this module (training is the slow
    /// part; the model is only read).
    fn shared_trained_snn() -> &'static (SnnModel, ImageSet) {
        static TRAINED: std::sync::OnceLock<(SnnModel, ImageSet)> = std::sync::OnceLock::new();
        TRAINED.get_or_init(trained_snn)
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
        let (model, test) = shared_trained_snn();
        let eps = 0.1;
        let n = test.len();
        let fgsm = robust_counts(model, test, 0..n, &AttackParams::fgsm(eps), 0, 50).unwrap();
        let pgd =
            robust_counts(model, test, 0..n, &AttackParams::pgd(eps, 0.025, 7), 0, 50).unwrap();
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
        let (model, test) = shared_trained_snn();
        let x = images_to_tensor(test, 0..20, &Device::Cpu).unwrap();
        let y = Tensor::new(&test.labels[0..20], &Device::Cpu).unwrap();
        let (grad, _) = input_gradient(model, &x, &y).unwrap();
        let norm: f32 = grad.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "the surrogate gradient must reach the pixels");
        let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 3);
        let adv = adversarial_set(model, test, 0..20, &params, 1, 8).unwrap();
        assert_eq!(adv.labels, test.labels[0..20]);
        let clean = &test.pixels[..20 * test.image_bytes()];
        assert_eq!(adv.pixels.len(), clean.len());
        assert!(clean
            .iter()
            .zip(&adv.pixels)
            .all(|(c, a)| c.abs_diff(*a) <= 8));
        assert_eq!(
            adv,
            adversarial_set(model, test, 0..20, &params, 1, 8).unwrap()
        );
    }

    /// Whether every image correct in `more` is also correct in `fewer` (pointwise implication):
    /// what the worst case over a superset of attacks (`more`) must satisfy against a subset.
    fn implies(more: &[bool], fewer: &[bool]) -> bool {
        more.len() == fewer.len() && more.iter().zip(fewer).all(|(m, f)| !*m || *f)
    }

    fn count(bitmap: &[bool]) -> u64 {
        bitmap.iter().filter(|c| **c).count() as u64
    }

    #[test]
    fn worst_case_is_the_per_image_and_not_the_minimum_of_totals() {
        let s = SurrogateSpec::new(SurrogateKind::Sigmoid);
        let a = AttackRun::new(AttackParams::fgsm(0.1));
        let b = AttackRun::new(AttackParams::pgd(0.1, 0.025, 7));
        // Image 4 is wrong on the clean input; attack a fools image 0, attack b image 1.
        let clean = vec![true, true, true, true, false];
        let fooled_by_a = vec![false, true, true, true, true];
        let fooled_by_b = vec![true, false, true, true, true];
        let report = StrongRobustness::new(
            clean.clone(),
            vec![
                AttackOutcome::new(a, s, fooled_by_a),
                AttackOutcome::new(b, s, fooled_by_b),
            ],
        )
        .unwrap();
        assert_eq!(report.images, 5);
        assert_eq!(report.clean_correct, 4);
        assert_eq!(
            report.attacks.iter().map(|a| a.correct).collect::<Vec<_>>(),
            [4, 4]
        );
        let min_of_totals = report
            .attacks
            .iter()
            .map(|a| a.correct)
            .chain([report.clean_correct])
            .min()
            .unwrap();
        assert_eq!(min_of_totals, 4);
        assert_eq!(report.worst_case, [false, false, true, true, false]);
        assert_eq!(report.worst_case_correct, 2);
        assert!(report.worst_case_correct < min_of_totals);
        // Bitmaps of another length are refused.
        assert!(matches!(
            correct_under_all(3, [&[true, false][..]]),
            Err(AttackError::InvalidInput(_))
        ));
        assert_eq!(
            correct_under_all(2, std::iter::empty::<&[bool]>()).unwrap(),
            [true, true]
        );
    }

    #[test]
    fn survivors_scope_attacks_only_unfooled_images_and_counts_cumulatively() {
        let (model, test) = shared_trained_snn();
        let n = test.len();
        let eps = 0.07;
        let runs = [
            AttackRun::new(AttackParams::fgsm(eps)),
            AttackRun::new(AttackParams::pgd(eps, eps / 4.0, 5)).with_restarts(2),
        ];
        let report = robustness(
            model,
            None,
            test,
            0..n,
            &runs,
            3,
            50,
            AttackScope::Survivors,
        )
        .unwrap();
        let every = robustness(
            model,
            None,
            test,
            0..n,
            &runs,
            3,
            50,
            AttackScope::EveryImage,
        )
        .unwrap();
        assert!(implies(&report.attacks[0].per_image, &report.clean));
        assert!(implies(
            &report.attacks[1].per_image,
            &report.attacks[0].per_image
        ));
        assert_eq!(report.worst_case, report.attacks[1].per_image);
        assert!(
            report.attacks[1].correct < report.clean_correct,
            "the attack bites"
        );
        // The same attacks: the worst cases agree but for images whose random start differs.
        let differ = report
            .worst_case
            .iter()
            .zip(&every.worst_case)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differ * 10 <= n,
            "{differ} of {n} images differ between the scopes"
        );
    }

    #[test]
    fn worst_case_over_a_superset_of_attacks_is_never_higher() {
        let (model, test) = shared_trained_snn();
        let n = test.len();
        // At eps 0.07 PGD-5 leaves about 3/4 of the images: enough on both sides to compare.
        let eps = 0.07;
        let pgd5 = AttackRun::new(AttackParams::pgd(eps, eps / 4.0, 5));
        let eval = |runs: &[AttackRun]| {
            robustness(
                model,
                None,
                test,
                0..n,
                runs,
                3,
                50,
                AttackScope::EveryImage,
            )
            .unwrap()
        };
        // Nested lists: more restarts, then more surrogates, then more steps and FGSM.
        let one = eval(std::slice::from_ref(&pgd5));
        let restarts = eval(&[pgd5.clone().with_restarts(3)]);
        let surrogates: Vec<AttackRun> = SurrogateSpec::standard()
            .into_iter()
            .map(|s| pgd5.clone().with_restarts(3).through(s))
            .collect();
        let surrogates_report = eval(&surrogates);
        let mut everything = surrogates.clone();
        everything.push(AttackRun::new(AttackParams::pgd(eps, 0.01, 12)).with_restarts(2));
        everything.push(AttackRun::new(AttackParams::fgsm(eps)));
        let everything_report = eval(&everything);

        assert!(
            one.clean_correct > n as u64 / 2,
            "the model must learn: {one:?}"
        );
        assert!(
            one.worst_case_correct < one.clean_correct,
            "PGD must bite: {one:?}"
        );
        assert!(
            everything_report.worst_case_correct < one.worst_case_correct,
            "the stronger list must find more: {} vs {}",
            everything_report.worst_case_correct,
            one.worst_case_correct
        );
        // sigmoid:4 is the model's own: it is canonicalised and evaluated once.
        assert_eq!(surrogates_report.attacks.len(), 3);
        assert_eq!(surrogates_report.attacks[0].run.surrogate, None);
        assert_eq!(
            surrogates_report.attacks[0].label(),
            "pgd-5 x3 via sigmoid:4"
        );
        let reports = [&one, &restarts, &surrogates_report, &everything_report];
        for pair in reports.windows(2) {
            let (fewer, more) = (pair[0], pair[1]);
            assert_eq!(fewer.clean, more.clean);
            assert!(implies(&more.worst_case, &fewer.worst_case));
            assert!(more.worst_case_correct <= fewer.worst_case_correct);
        }
        // Restart 0 is the single run's stream, so restarts only remove images.
        assert!(implies(
            &restarts.attacks[0].per_image,
            &one.attacks[0].per_image
        ));
        // A run gives the same bitmap whatever else is evaluated beside it.
        for (a, b) in surrogates_report
            .attacks
            .iter()
            .zip(&everything_report.attacks)
        {
            assert_eq!(a, b);
        }
        // The worst case is the per-image AND of clean and every attack, below every total.
        for r in reports {
            let and = correct_under_all(
                n,
                std::iter::once(r.clean.as_slice())
                    .chain(r.attacks.iter().map(|a| a.per_image.as_slice())),
            )
            .unwrap();
            assert_eq!(r.worst_case, and);
            assert_eq!(r.worst_case_correct, count(&and));
            assert!(r.attacks.iter().all(|a| a.correct == count(&a.per_image)));
            assert!(r.attacks.iter().all(|a| r.worst_case_correct <= a.correct));
        }
        // The first run through the model's own surrogate is robust_counts' run exactly.
        let legacy = robust_counts(model, test, 0..n, &pgd5.params, 3, 50).unwrap();
        assert_eq!(legacy.clean_correct, one.clean_correct);
        assert_eq!(legacy.adversarial_correct, one.attacks[0].correct);
        // Deterministic.
        assert_eq!(eval(&surrogates), surrogates_report);
    }

    #[test]
    fn strong_robustness_runs_the_plan_with_a_transfer_source() {
        let (model, test) = shared_trained_snn();
        let n = test.len();
        // An untrained model of the same shape as the transfer source.
        let source = SnnModel::new(model.spec().clone(), &Device::Cpu, 99).unwrap();
        let plan = StrongAttackPlan {
            pgd_steps: 5,
            ..StrongAttackPlan::standard(0.07)
        };
        assert!((plan.pgd().step - 2.5 * 0.07 / 5.0).abs() < 1e-12);
        let strong = strong_robustness(model, Some(&source), test, 0..n, &plan, 0, 50).unwrap();
        let labels: Vec<String> = strong.attacks.iter().map(|a| a.label()).collect();
        assert_eq!(
            labels,
            [
                "fgsm via sigmoid:4",
                "pgd-5 x2 via sigmoid:4",
                "pgd-5 x2 via atan:2",
                "pgd-5 x2 via triangle:1",
                "transfer pgd-5 x2 via sigmoid:4",
            ]
        );
        // Each run on every image, so that the runs' own counts compare.
        let every = robustness(
            model,
            Some(&source),
            test,
            0..n,
            &plan.runs(true),
            0,
            50,
            AttackScope::EveryImage,
        )
        .unwrap();
        // The same attacks; only the random starts of the images attacked differ.
        let gap = every.worst_case_correct.abs_diff(strong.worst_case_correct);
        assert!(
            gap * 10 <= n as u64,
            "survivors {} vs every image {}",
            strong.worst_case_correct,
            every.worst_case_correct
        );
        let transfer = &every.attacks[4];
        let white_box = &every.attacks[1];
        assert!(transfer.run.transfer);
        assert!(
            transfer.correct > white_box.correct,
            "an untrained source transfers worse than white-box: {} vs {}",
            transfer.correct,
            white_box.correct
        );
        assert!(strong
            .attacks
            .iter()
            .all(|a| strong.worst_case_correct <= a.correct));
        // Without a source the transfer run is simply not part of the plan; the rest is unchanged.
        let no_source = strong_robustness(model, None, test, 0..n, &plan, 0, 50).unwrap();
        assert_eq!(no_source.attacks[..], strong.attacks[..4]);
        assert!(no_source.worst_case_correct >= strong.worst_case_correct);
        // A transfer run needs a source of the same shape and classes.
        let transfer_run = [AttackRun::new(plan.pgd()).transferred()];
        let err = robustness(
            model,
            None,
            test,
            0..n,
            &transfer_run,
            0,
            50,
            AttackScope::EveryImage,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttackError::InvalidParam {
                    field: "source",
                    ..
                }
            ),
            "{err}"
        );
        let mut other = model.spec().clone();
        other.class_names.reverse();
        let renamed = SnnModel::new(other, &Device::Cpu, 1).unwrap();
        let err = robustness(
            model,
            Some(&renamed),
            test,
            0..n,
            &transfer_run,
            0,
            50,
            AttackScope::EveryImage,
        )
        .unwrap_err();
        assert!(err.to_string().contains("classes"), "{err}");
    }

    #[test]
    fn bad_runs_and_plans_are_errors_naming_the_field() {
        let field_of = |r: Result<(), AttackError>| match r {
            Err(AttackError::InvalidParam { field, .. }) => field,
            other => panic!("expected an invalid-parameter error, got {other:?}"),
        };
        let pgd = AttackRun::new(AttackParams::pgd(0.1, 0.01, 3));
        assert_eq!(
            field_of(pgd.clone().with_restarts(0).validate()),
            "restarts"
        );
        let bad = SurrogateSpec {
            kind: SurrogateKind::Atan,
            alpha: f64::NAN,
        };
        assert_eq!(field_of(pgd.clone().through(bad).validate()), "surrogate");
        let plan = StrongAttackPlan::default();
        assert!(plan.validate().is_ok());
        assert_eq!(plan.pgd().steps, STRONG_PGD_STEPS);
        assert!((plan.pgd().step - 2.5 * (8.0 / 255.0) / 50.0).abs() < 1e-15);
        let zero = StrongAttackPlan {
            pgd_steps: 0,
            ..plan.clone()
        };
        assert_eq!(field_of(zero.validate()), "pgd_steps");
        let zero = StrongAttackPlan {
            restarts: 0,
            ..plan.clone()
        };
        assert_eq!(field_of(zero.validate()), "restarts");
        let far = StrongAttackPlan {
            eps: 2.0,
            ..plan.clone()
        };
        assert_eq!(field_of(far.validate()), "eps");
        // eps 0 is a valid (clean) plan.
        assert!(StrongAttackPlan::standard(0.0).validate().is_ok());
        // Canonical form: FGSM runs once; the model's own surrogate is `None`.
        let own = SurrogateSpec::new(SurrogateKind::Sigmoid);
        let fgsm = AttackRun::new(AttackParams::fgsm(0.1))
            .with_restarts(5)
            .through(own);
        assert_eq!(
            fgsm.normalised(own),
            AttackRun::new(AttackParams::fgsm(0.1))
        );
        // Streams differ by restart, surrogate and transfer; restart 0 white-box is the seed.
        let seeds = [
            pgd.stream_seed(7, 0),
            pgd.stream_seed(7, 1),
            pgd.clone()
                .through(SurrogateSpec::new(SurrogateKind::Atan))
                .stream_seed(7, 0),
            pgd.clone().transferred().stream_seed(7, 0),
        ];
        assert_eq!(seeds[0], 7);
        for i in 0..seeds.len() {
            for j in i + 1..seeds.len() {
                assert_ne!(seeds[i], seeds[j]);
            }
        }
    }
}
