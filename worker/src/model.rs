//! The spiking VGG: [`ModelSpec`] (what a model is, serialisable) and [`SnnModel`] (its weights on a
//! device and the forward passes).
//!
//! Forward pass (direct encoding, multi-step):
//! 1. pixels `[B, C, H, W]` in [0, 1] are normalised per channel (`(p - mean) / std`): the model owns
//!    its normalisation, so attacks work in pixel space;
//! 2. layer 0: conv -> batch norm once on `[B, ...]` (the input is the same at every step), then the
//!    LIF neurons run T steps on that constant current, giving spikes `[T*B, ...]`;
//! 3. every later layer: conv -> batch norm -> LIF on `[T*B, ...]` (one conv call for all steps),
//!    then the optional 2x2 average pool;
//! 4. flatten (C, H, W order) -> linear classifier on every step; the logits are the mean over T.
//!
//! Batch norm follows PyTorch (eps 1e-5, momentum 0.1, running variance unbiased). In evaluation it
//! is the per-channel affine `x * scale + shift` with `scale = weight / sqrt(running_var + eps)`,
//! `shift = bias - running_mean * scale`, computed identically on the differentiable path
//! ([`SnnModel::forward`] with `train = false`) and the inference path ([`SnnModel::forward_eval`]), so
//! both give the same spikes. The layer-0 batch statistics are taken over the B images once (a
//! T-fold copy has the same mean and biased variance).
//!
//! A spiking ResNet ([`crate::resnet_arch`]) lives in [`SnnModel`] too: its stem and blocks are in
//! the `residual` field (module `resnet`, file `resnet_model.rs`), its classifier is the VGG one,
//! and every pass dispatches there.
//!
//! Every forward pass first checks the computing thread's cancellation token ([`crate::cancel`]):
//! once it is cancelled, the pass fails with [`ModelError::Cancelled`].

use crate::arch::{ArchError, Architecture, InputShape, LayerGeometry, KERNEL};
use crate::data::ImageSet;
use crate::event_conv::{FoldedConv, FoldedLinear};
use crate::lif::{ChannelAffine, Drive, Lif, LifError, LifParams, SurrogateSpec};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;

#[path = "resnet_model.rs"]
pub(crate) mod resnet;

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Batch-norm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// Batch norm with batch statistics (the fused op of [`crate::batch_norm`]), `[weight, bias]`;
/// updates `[running_mean, running_var]` with momentum [`BN_MOMENTUM`] and the unbiased variance,
/// as PyTorch. Shared by the VGG layers and the residual network's batch norms.
pub(crate) fn bn_train_update(
    y: &Tensor,
    [weight, bias]: [&Var; 2],
    [running_mean, running_var]: [&Var; 2],
) -> candle_core::Result<Tensor> {
    let (out, stats) =
        crate::batch_norm::batch_norm_train(y, weight.as_tensor(), bias.as_tensor(), BN_EPS)?;
    let c = stats.mean.len();
    let n = (y.elem_count() / c.max(1)) as f64;
    let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    let m = BN_MOMENTUM;
    let device = y.device();
    let mean = Tensor::from_vec(stats.mean, c, device)?;
    let var = Tensor::from_vec(stats.var, c, device)?;
    let new_mean = running_mean
        .as_tensor()
        .affine(1.0 - m, 0.0)?
        .add(&mean.affine(m, 0.0)?)?;
    let new_var = running_var
        .as_tensor()
        .affine(1.0 - m, 0.0)?
        .add(&var.affine(m * unbiased, 0.0)?)?;
    running_mean.set(&new_mean.detach())?;
    running_var.set(&new_var.detach())?;
    Ok(out)
}

/// A model that cannot be built or run, or an input it cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model spec: {0}")]
    Arch(#[from] ArchError),
    #[error("model spec: {0}")]
    Lif(#[from] LifError),
    #[error("model spec: {field}: {expected}")]
    Spec {
        field: &'static str,
        expected: String,
    },
    #[error("{what}: expected {expected}, got {got}")]
    Input {
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("tensor {name}: expected shape {expected:?}, got {got:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor {name} is missing")]
    MissingTensor { name: String },
    #[error("masks: expected one per conv layer ({expected}), got {got}")]
    MaskCount { expected: usize, got: usize },
    #[error("mask of layer {layer}: {source}")]
    Mask {
        layer: usize,
        source: ccsrp_proto::mask::MaskError,
    },
    #[error("layer {layer} does not exist: the model has {layers} conv layers")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// The thread's [`crate::cancel::Cancel`] token was cancelled before this forward pass.
    #[error(transparent)]
    Cancelled(#[from] crate::cancel::Cancelled),
}

/// Per-channel input normalisation `(p - mean) / std` of pixels p in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalisation {
    /// No normalisation (mean 0, std 1) for `channels` channels.
    pub fn identity(channels: usize) -> Normalisation {
        Normalisation {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Per-channel mean and (population) standard deviation of the pixels of `set`, in [0, 1] units;
    /// a constant channel gets std 1.
    pub fn from_images(set: &ImageSet) -> Normalisation {
        let c = set.channels;
        let plane = set.height * set.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for image in set.pixels.chunks_exact(set.image_bytes().max(1)) {
            for (ch, values) in image.chunks_exact(plane.max(1)).enumerate() {
                for &p in values {
                    let x = f64::from(p) / 255.0;
                    sum[ch] += x;
                    sq[ch] += x * x;
                }
            }
        }
        let n = (set.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n - m * m).max(0.0).sqrt();
                if sd > 1e-6 {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Normalisation {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }
}

/// Everything that defines a model except its weights; stored as JSON in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Conv widths and pools, e.g. `"32,M,64,M,128,M"`.
    pub architecture: Architecture,
    /// Simulation steps T.
    pub timesteps: usize,
    #[serde(default)]
    pub lif: LifParams,
    pub input: InputShape,
    pub normalisation: Normalisation,
    /// Class names in label order; the classifier has one output per name.
    pub class_names: Vec<String>,
}

impl ModelSpec {
    /// A spec with default LIF constants and no normalisation.
    pub fn new(
        architecture: Architecture,
        timesteps: usize,
        input: InputShape,
        class_names: Vec<String>,
    ) -> ModelSpec {
        ModelSpec {
            architecture,
            timesteps,
            lif: LifParams::default(),
            input,
            normalisation: Normalisation::identity(input.channels),
            class_names,
        }
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// Checks the spec and returns the per-layer geometry and the classifier's input features.
    pub fn geometry(&self) -> Result<(Vec<LayerGeometry>, usize), ModelError> {
        let geometry = self.architecture.geometry(self.input)?;
        self.lif.validate()?;
        if self.timesteps == 0 {
            return Err(ModelError::Spec {
                field: "timesteps",
                expected: "at least 1".into(),
            });
        }
        if self.class_names.is_empty() {
            return Err(ModelError::Spec {
                field: "class_names",
                expected: "at least one class".into(),
            });
        }
        let c = self.input.channels;
        let n = &self.normalisation;
        if n.mean.len() != c || n.std.len() != c {
            return Err(ModelError::Spec {
                field: "normalisation",
                expected: format!(
                    "{c} means and {c} stds (one per input channel), got {} and {}",
                    n.mean.len(),
                    n.std.len()
                ),
            });
        }
        if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || n.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ModelError::Spec {
                field: "normalisation",
                expected: format!("finite means and positive stds, got {n:?}"),
            });
        }
        Ok(geometry)
    }
}

/// One prunable layer's parameters and buffers.
#[derive(Debug)]
pub(crate) struct ConvBlock {
    pub(crate) weight: Var,
    pub(crate) bn_weight: Var,
    pub(crate) bn_bias: Var,
    pub(crate) running_mean: Var,
    pub(crate) running_var: Var,
}

/// A spiking VGG or ResNet with its weights on one device.
///
/// Weights are candle [`Var`]s: [`SnnModel::trainable_vars`] hands them to an optimiser, and
/// [`SnnModel::forward`] with `train = true` updates the batch-norm running statistics in place.
/// There is no `Clone`: copies share nothing ([`SnnModel::try_clone`]).
#[derive(Debug)]
pub struct SnnModel {
    spec: ModelSpec,
    device: Device,
    geometry: Vec<LayerGeometry>,
    lif: Lif,
    pub(crate) blocks: Vec<ConvBlock>,
    pub(crate) classifier_weight: Var,
    pub(crate) classifier_bias: Var,
    /// The stem and blocks of a residual network (then `blocks` is empty).
    pub(crate) residual: Option<resnet::ResNet>,
    norm_mean: Tensor,
    norm_std: Tensor,
}

/// Expected parameter and buffer shapes of a spec, in state-dict order.
pub(crate) fn expected_shapes(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let (geometry, features) = spec.geometry()?;
    if let Some(r) = spec.architecture.residual() {
        return Ok(resnet::expected_shapes(
            &r.geometry(spec.input)?,
            spec.classes(),
        ));
    }
    let names = crate::model_file::layer_names(&geometry);
    let mut out = Vec::new();
    for (g, n) in geometry.iter().zip(&names) {
        out.push((
            format!("{}.weight", n.conv),
            vec![g.filters, g.in_channels, KERNEL, KERNEL],
        ));
        for suffix in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.{suffix}", n.batch_norm), vec![g.filters]));
        }
    }
    out.push(("classifier.weight".into(), vec![spec.classes(), features]));
    out.push(("classifier.bias".into(), vec![spec.classes()]));
    Ok(out)
}

impl SnnModel {
    /// A freshly initialised model: conv weights Kaiming-uniform (`U(+-sqrt(6 / fan_in))`), batch
    /// norm weight 1 / bias 0 / running mean 0 / running var 1, classifier as PyTorch's `Linear`
    /// (`U(+-1/sqrt(fan_in))`). Drawn from ChaCha8 seeded by `seed` on the host, so the same seed
    /// gives the same weights on every device.
    pub fn new(spec: ModelSpec, device: &Device, seed: u64) -> Result<SnnModel, ModelError> {
        let shapes = expected_shapes(&spec)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut state = HashMap::new();
        for (name, shape) in shapes {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.starts_with("classifier.") || name.starts_with("fc.") {
                let fan_in = spec_classifier_fan_in(&spec)?;
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else if name.ends_with(".running_var")
                || (name.ends_with(".weight") && shape.len() == 1)
            {
                vec![1.0; n]
            } else if shape.len() == 1 {
                vec![0.0; n]
            } else {
                let fan_in: usize = shape[1..].iter().product();
                let bound = (6.0 / fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            state.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        SnnModel::from_state(spec, device, &state)
    }

    /// Builds a model from named tensors (the naming rule of [`crate::model_file`]); every expected
    /// tensor must be present with its exact shape; any float dtype is converted to f32. The tensors
    /// are copied: the model shares no storage with `state`.
    pub(crate) fn from_state(
        spec: ModelSpec,
        device: &Device,
        state: &HashMap<String, Tensor>,
    ) -> Result<SnnModel, ModelError> {
        let (geometry, _) = spec.geometry()?;
        let lif = Lif::new(spec.lif, spec.timesteps)?;
        let mut vars = Vec::new();
        for (name, shape) in expected_shapes(&spec)? {
            let t = state
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name,
                    expected: shape,
                    got: t.dims().to_vec(),
                });
            }
            let t = t.detach().to_dtype(DType::F32)?.to_device(device)?;
            vars.push(Var::from_tensor(&t)?);
        }
        let mut vars = vars.into_iter();
        let mut next = || {
            vars.next().ok_or_else(|| ModelError::Spec {
                field: "architecture",
                expected: "a tensor for every parameter".into(),
            })
        };
        let residual = match spec.architecture.residual() {
            Some(r) => Some(resnet::ResNet::from_vars(
                r.geometry(spec.input)?,
                &mut next,
            )?),
            None => None,
        };
        let mut blocks = Vec::with_capacity(geometry.len());
        if residual.is_none() {
            for _ in &geometry {
                blocks.push(ConvBlock {
                    weight: next()?,
                    bn_weight: next()?,
                    bn_bias: next()?,
                    running_mean: next()?,
                    running_var: next()?,
                });
            }
        }
        let classifier_weight = next()?;
        let classifier_bias = next()?;
        let c = spec.input.channels;
        let norm_mean = Tensor::from_slice(&spec.normalisation.mean, (1, c, 1, 1), device)?;
        let norm_std = Tensor::from_slice(&spec.normalisation.std, (1, c, 1, 1), device)?;
        Ok(SnnModel {
            spec,
            device: device.clone(),
            geometry,
            lif,
            blocks,
            classifier_weight,
            classifier_bias,
            residual,
            norm_mean,
            norm_std,
        })
    }

    /// Parameters and buffers by state-dict name, in [`expected_shapes`] order (detached views).
    pub(crate) fn state(&self) -> Vec<(String, Tensor)> {
        if let Some(r) = &self.residual {
            let mut out = r.state();
            out.push((
                "fc.weight".into(),
                self.classifier_weight.as_tensor().detach(),
            ));
            out.push(("fc.bias".into(), self.classifier_bias.as_tensor().detach()));
            return out;
        }
        let names = crate::model_file::layer_names(&self.geometry);
        let mut out = Vec::new();
        for (b, n) in self.blocks.iter().zip(&names) {
            out.push((format!("{}.weight", n.conv), b.weight.as_tensor().detach()));
            out.push((
                format!("{}.weight", n.batch_norm),
                b.bn_weight.as_tensor().detach(),
            ));
            out.push((
                format!("{}.bias", n.batch_norm),
                b.bn_bias.as_tensor().detach(),
            ));
            out.push((
                format!("{}.running_mean", n.batch_norm),
                b.running_mean.as_tensor().detach(),
            ));
            out.push((
                format!("{}.running_var", n.batch_norm),
                b.running_var.as_tensor().detach(),
            ));
        }
        out.push((
            "classifier.weight".into(),
            self.classifier_weight.as_tensor().detach(),
        ));
        out.push((
            "classifier.bias".into(),
            self.classifier_bias.as_tensor().detach(),
        ));
        out
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sizes of the prunable layers (current widths).
    pub fn geometry(&self) -> &[LayerGeometry] {
        &self.geometry
    }

    /// Number of prunable (conv) layers.
    pub fn num_layers(&self) -> usize {
        self.geometry.len()
    }

    /// A copy on `device` sharing no storage with `self`.
    pub fn to_device(&self, device: &Device) -> Result<SnnModel, ModelError> {
        let state: HashMap<String, Tensor> = self.state().into_iter().collect();
        SnnModel::from_state(self.spec.clone(), device, &state)
    }

    /// A deep copy on the same device.
    pub fn try_clone(&self) -> Result<SnnModel, ModelError> {
        self.to_device(&self.device)
    }

    /// A deep copy (same device) whose LIF neurons backpropagate through `surrogate` instead
    /// (the spec's `lif.surrogate` and `lif.alpha` replaced). Spikes, logits and weights are
    /// unchanged: only gradients differ, e.g. to attack a model through another surrogate.
    pub fn with_surrogate(&self, surrogate: SurrogateSpec) -> Result<SnnModel, ModelError> {
        let mut spec = self.spec.clone();
        spec.lif.surrogate = surrogate.kind;
        spec.lif.alpha = surrogate.alpha;
        let state: HashMap<String, Tensor> = self.state().into_iter().collect();
        SnnModel::from_state(spec, &self.device, &state)
    }

    /// A deep copy (same device) with every conv weight multiplied by `factor`: below 1 the
    /// layers fire less, above 1 more (benchmarks and tests of the sparse kernels).
    pub fn with_scaled_conv_weights(&self, factor: f64) -> Result<SnnModel, ModelError> {
        let copy = self.try_clone()?;
        for b in &copy.blocks {
            b.weight.set(&b.weight.as_tensor().affine(factor, 0.0)?)?;
        }
        for c in copy.residual.iter().flat_map(|r| r.convs()) {
            c.weight.set(&c.weight.as_tensor().affine(factor, 0.0)?)?;
        }
        Ok(copy)
    }

    /// The surrogate gradient the model's LIF neurons backpropagate through.
    pub fn surrogate(&self) -> SurrogateSpec {
        SurrogateSpec::of(&self.spec.lif)
    }

    /// Trainable parameters (conv weights, batch-norm weights and biases, classifier weight and bias);
    /// running statistics are buffers and not included.
    pub fn trainable_vars(&self) -> Vec<Var> {
        let mut vars = match &self.residual {
            Some(r) => r.trainable_vars(),
            None => Vec::with_capacity(3 * self.blocks.len() + 2),
        };
        for b in &self.blocks {
            vars.push(b.weight.clone());
            vars.push(b.bn_weight.clone());
            vars.push(b.bn_bias.clone());
        }
        vars.push(self.classifier_weight.clone());
        vars.push(self.classifier_bias.clone());
        vars
    }

    /// Checks `pixels` is `[B, C, H, W]` f32 of this model's input shape on its device.
    fn check_pixels(&self, pixels: &Tensor) -> Result<(), ModelError> {
        let i = self.spec.input;
        let ok_shape = matches!(pixels.dims(), [b, c, h, w] if *b > 0 && *c == i.channels && *h == i.height && *w == i.width);
        if !ok_shape {
            return Err(ModelError::Input {
                what: "pixels tensor shape",
                expected: format!("[B >= 1, {}, {}, {}]", i.channels, i.height, i.width),
                got: format!("{:?}", pixels.dims()),
            });
        }
        if pixels.dtype() != DType::F32 {
            return Err(ModelError::Input {
                what: "pixels tensor dtype",
                expected: "f32".into(),
                got: format!("{:?}", pixels.dtype()),
            });
        }
        if !pixels.device().same_device(&self.device) {
            return Err(ModelError::Input {
                what: "pixels tensor device",
                expected: format!("{:?}", self.device.location()),
                got: format!("{:?}", pixels.device().location()),
            });
        }
        Ok(())
    }

    fn normalise(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        pixels
            .broadcast_sub(&self.norm_mean)?
            .broadcast_div(&self.norm_std)
    }

    /// Batch norm of layer `l` in evaluation form, as `x * scale + shift`. With `track` the scale and
    /// shift carry gradients to the batch-norm weight and bias.
    pub(crate) fn bn_affine(&self, l: usize, track: bool) -> candle_core::Result<ChannelAffine> {
        let b = &self.blocks[l];
        let (w, bias) = if track {
            (
                b.bn_weight.as_tensor().clone(),
                b.bn_bias.as_tensor().clone(),
            )
        } else {
            (
                b.bn_weight.as_tensor().detach(),
                b.bn_bias.as_tensor().detach(),
            )
        };
        let rm = b.running_mean.as_tensor().detach();
        let rv = b.running_var.as_tensor().detach();
        let scale = w.div(&rv.affine(1.0, BN_EPS)?.sqrt()?)?;
        let shift = bias.sub(&rm.mul(&scale)?)?;
        Ok(ChannelAffine { scale, shift })
    }

    /// Batch norm of layer `l` with batch statistics; updates its running statistics
    /// ([`bn_train_update`]).
    fn bn_train(&self, l: usize, y: &Tensor) -> candle_core::Result<Tensor> {
        let b = &self.blocks[l];
        bn_train_update(
            y,
            [&b.bn_weight, &b.bn_bias],
            [&b.running_mean, &b.running_var],
        )
    }

    /// Logits `[B, classes]`, differentiable w.r.t. `pixels` (`[B, C, H, W]` f32 in [0, 1]) and the
    /// weights. `train = true` uses batch statistics and updates the batch-norm running statistics;
    /// `train = false` uses the running statistics and gives the same logits as
    /// [`SnnModel::forward_eval`].
    pub fn forward(&self, pixels: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_graph(pixels, train, true)
    }

    /// Logits differentiable w.r.t. `pixels` only (running statistics, weights held constant): the
    /// pass white-box attacks differentiate, without the cost of weight gradients.
    pub fn forward_input_grad(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_graph(pixels, false, false)
    }

    fn forward_graph(
        &self,
        pixels: &Tensor,
        train: bool,
        weight_grads: bool,
    ) -> Result<Tensor, ModelError> {
        crate::cancel::check()?;
        self.check_pixels(pixels)?;
        let mut x = self.normalise(pixels)?;
        if let Some(r) = &self.residual {
            return self.resnet_graph(r, x, train, weight_grads);
        }
        for l in 0..self.blocks.len() {
            let drive = if l == 0 {
                Drive::Constant
            } else {
                Drive::EveryStep
            };
            let w = self.blocks[l].weight.as_tensor();
            let y = if weight_grads {
                crate::conv::conv3x3_graph(&x, w)?
            } else {
                crate::conv::conv3x3_input_grad(&x, w)?
            };
            let s = if train {
                self.lif.forward(&self.bn_train(l, &y)?, drive)?
            } else if weight_grads {
                self.lif
                    .forward(&self.bn_affine(l, true)?.apply(&y)?, drive)?
            } else {
                self.lif
                    .forward_affine_const(&y, drive, &self.bn_affine(l, false)?)?
            };
            x = self.pool(l, s)?;
        }
        Ok(self.classify(&x, weight_grads)?)
    }

    /// Logits `[B, classes]` without an autograd graph: running batch-norm statistics and the fused
    /// LIF kernel. Deterministic for a given device.
    pub fn forward_eval(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        self.check_pixels(pixels)?;
        let x = self.normalise(&pixels.detach())?;
        self.run_inference(0, x, |_, _| Ok(()))
    }

    /// The inference pass from layer `start`: `input` is the normalised image for `start = 0`, else
    /// the pre-pool spikes `[T*B, ...]` of layer `start - 1`. `visit(l, spikes)` sees the pre-pool
    /// spikes of every layer run. For a residual network: `input` is the block `start`'s input
    /// (the normalised image for 0, where the stem runs first) and `visit(lif, output)` sees every
    /// spiking layer's output, numbered by [`resnet::ResNet::first_lif`].
    pub(crate) fn run_inference(
        &self,
        start: usize,
        input: Tensor,
        mut visit: impl FnMut(usize, &Tensor) -> Result<(), ModelError>,
    ) -> Result<Tensor, ModelError> {
        if let Some(r) = &self.residual {
            let start = if start == 0 {
                resnet::Start::Image(input)
            } else {
                resnet::Start::Block(start, input)
            };
            return self.resnet_pass(
                r,
                start,
                resnet::Pass::Inference,
                &mut visit,
                &mut |_, _| Ok(()),
            );
        }
        crate::cancel::check()?;
        let mut x = if start == 0 {
            input
        } else {
            self.pool(start - 1, input)?
        };
        for l in start..self.blocks.len() {
            let drive = if l == 0 {
                Drive::Constant
            } else {
                Drive::EveryStep
            };
            let s = if self.device.is_cpu() {
                let y = self.folded_conv(l)?.apply(&x)?;
                self.lif.forward_inference(&y, drive, None)?
            } else {
                let y = crate::conv::conv3x3(&x, &self.blocks[l].weight.as_tensor().detach())?;
                self.lif
                    .forward_inference(&y, drive, Some(&self.bn_affine(l, false)?))?
            };
            visit(l, &s)?;
            x = self.pool(l, s)?;
        }
        if self.device.is_cpu() {
            return self.classify_inference(&x);
        }
        Ok(self.classify(&x, false)?)
    }

    /// Layer `l`'s conv with its batch norm folded in, for the CPU inference kernels.
    fn folded_conv(&self, l: usize) -> Result<FoldedConv, ModelError> {
        let w = self.blocks[l].weight.as_tensor();
        let (out, cin, _, _) = w.dims4()?;
        let affine = self.bn_affine(l, false)?;
        FoldedConv::new(
            &w.flatten_all()?.to_vec1::<f32>()?,
            (out, cin),
            &affine.scale.to_vec1::<f32>()?,
            &affine.shift.to_vec1::<f32>()?,
        )
        .map_err(|e| ModelError::Candle(candle_core::Error::Msg(e)))
    }

    /// [`SnnModel::classify`] without a graph on the CPU: the event-driven classifier
    /// ([`FoldedLinear`]) on every step's features, then the mean over T (steps summed in order).
    fn classify_inference(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        let msg = |e| ModelError::Candle(candle_core::Error::Msg(e));
        let (classes, n) = self.classifier_dims();
        let linear = FoldedLinear::new(
            &self
                .classifier_weight
                .as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?,
            (classes, n),
            &self.classifier_bias.as_tensor().to_vec1::<f32>()?,
        )
        .map_err(msg)?;
        let x = features.flatten_all()?.to_vec1::<f32>()?;
        let logits = linear.forward(&x).map_err(msg)?;
        let t = self.spec.timesteps;
        let rows = logits.len() / classes.max(1);
        let batch = rows / t;
        let mut mean = vec![0f32; batch * classes];
        for step in logits.chunks_exact(batch * classes) {
            mean.iter_mut().zip(step).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= t as f32);
        Ok(Tensor::from_vec(mean, (batch, classes), &self.device)?)
    }

    /// Normalised pixels for the inference pass.
    pub(crate) fn normalised_input(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        self.check_pixels(pixels)?;
        Ok(self.normalise(&pixels.detach())?)
    }

    fn pool(&self, l: usize, spikes: Tensor) -> candle_core::Result<Tensor> {
        if self.geometry[l].pool_after {
            spikes.avg_pool2d(2)
        } else {
            Ok(spikes)
        }
    }

    /// Classifier on every step's features `[T*B, C, H, W]`, then the mean over T.
    fn classify(&self, features: &Tensor, track: bool) -> candle_core::Result<Tensor> {
        let (w, b) = if track {
            (
                self.classifier_weight.as_tensor().clone(),
                self.classifier_bias.as_tensor().clone(),
            )
        } else {
            (
                self.classifier_weight.as_tensor().detach(),
                self.classifier_bias.as_tensor().detach(),
            )
        };
        let rows = features.dim(0)?;
        let t = self.spec.timesteps;
        let logits = if !track && features.device().is_cpu() {
            crate::event_conv::linear_input_grad(&features.flatten_from(1)?, &w, &b)?
        } else {
            features
                .flatten_from(1)?
                .matmul(&w.t()?)?
                .broadcast_add(&b)?
        };
        let classes = logits.dim(D::Minus1)?;
        logits.reshape((t, rows / t, classes))?.mean(0)
    }

    /// The description the master optimises over, from the actual weight shapes.
    pub fn description(&self) -> ccsrp_proto::v1::ModelDescription {
        if let Some(r) = &self.residual {
            return self.resnet_description(r);
        }
        let layers = self
            .blocks
            .iter()
            .zip(&self.geometry)
            .map(|(b, g)| {
                let d = b.weight.as_tensor().dims();
                ccsrp_proto::v1::ConvLayer {
                    filters: d[0] as u32,
                    in_channels: d[1] as u32,
                    kernel: d[2] as u32,
                    out_height: g.height as u32,
                    out_width: g.width as u32,
                    pool_after: g.pool_after,
                    ..Default::default()
                }
            })
            .collect::<Vec<_>>();
        let (classes, features) = self.classifier_dims();
        let last_filters = self
            .blocks
            .last()
            .map_or(1, |b| b.weight.as_tensor().dims()[0]);
        ccsrp_proto::v1::ModelDescription {
            layers,
            classifier_spatial: (features / last_filters.max(1)) as u32,
            classes: classes as u32,
            timesteps: self.spec.timesteps as u32,
            ..Default::default()
        }
    }

    fn classifier_dims(&self) -> (usize, usize) {
        let d = self.classifier_weight.as_tensor().dims();
        (d[0], d[1])
    }

    /// Multiply-accumulates of one image over all T steps, from the weight shapes
    /// (`T * (sum_l k^2 * in_l * out_l * H_l * W_l + features * classes)`).
    pub fn macs(&self) -> u64 {
        if let Some(r) = &self.residual {
            let fc = self.classifier_weight.as_tensor().elem_count() as u64;
            return self.spec.timesteps as u64 * (r.macs_per_step() + fc);
        }
        let conv: u64 = self
            .blocks
            .iter()
            .zip(&self.geometry)
            .map(|(b, g)| (b.weight.as_tensor().elem_count() * g.height * g.width) as u64)
            .sum();
        let fc = self.classifier_weight.as_tensor().elem_count() as u64;
        self.spec.timesteps as u64 * (conv + fc)
    }

    /// Trainable parameters (conv weights, batch-norm weight and bias, classifier weight and bias).
    pub fn parameters(&self) -> u64 {
        self.trainable_vars()
            .iter()
            .map(|v| v.as_tensor().elem_count() as u64)
            .sum()
    }
}

fn spec_classifier_fan_in(spec: &ModelSpec) -> Result<usize, ModelError> {
    Ok(spec.geometry()?.1)
}

/// Images `range` of `set` as a `[B, C, H, W]` f32 tensor of `pixel / 255` on `device`.
pub fn images_to_tensor(
    set: &ImageSet,
    range: Range<usize>,
    device: &Device,
) -> Result<Tensor, ModelError> {
    if range.start > range.end || range.end > set.len() {
        return Err(ModelError::Input {
            what: "image range",
            expected: format!("a range within 0..{}", set.len()),
            got: format!("{}..{}", range.start, range.end),
        });
    }
    let n = set.image_bytes();
    let bytes = set
        .pixels
        .get(range.start * n..range.end * n)
        .ok_or_else(|| ModelError::Input {
            what: "image set pixels",
            expected: format!("{} bytes ({} images of {n})", set.len() * n, set.len()),
            got: format!("{} bytes", set.pixels.len()),
        })?;
    pixels_to_tensor(
        bytes,
        range.len(),
        (set.channels, set.height, set.width),
        device,
    )
}

/// `count` u8 CHW images as a `[count, C, H, W]` f32 tensor of `pixel / 255` on `device`.
pub fn pixels_to_tensor(
    bytes: &[u8],
    count: usize,
    (c, h, w): (usize, usize, usize),
    device: &Device,
) -> Result<Tensor, ModelError> {
    if bytes.len() != count * c * h * w {
        return Err(ModelError::Input {
            what: "image bytes",
            expected: format!(
                "{count} images of {c}x{h}x{w} = {} bytes",
                count * c * h * w
            ),
            got: format!("{} bytes", bytes.len()),
        });
    }
    let values: Vec<f32> = bytes.iter().map(|&p| f32::from(p) / 255.0).collect();
    Ok(Tensor::from_vec(values, (count, c, h, w), device)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny random model on 1x12x12 images with 3 classes.
    pub(crate) fn tiny_spec(arch: &str, timesteps: usize) -> ModelSpec {
        let mut spec = ModelSpec::new(
            arch.parse().unwrap(),
            timesteps,
            InputShape {
                channels: 1,
                height: 12,
                width: 12,
            },
            vec!["a".into(), "b".into(), "c".into()],
        );
        spec.normalisation = Normalisation {
            mean: vec![0.4],
            std: vec![0.3],
        };
        spec
    }

    /// The bits of the cross-entropy loss's gradient w.r.t. the pixels `x` (what attacks follow).
    pub(crate) fn input_gradient_bits(m: &SnnModel, x: &Tensor, labels: &Tensor) -> Vec<u32> {
        let v = Var::from_tensor(x).unwrap();
        let logits = m.forward_input_grad(v.as_tensor()).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, labels).unwrap();
        let g = loss.backward().unwrap();
        let g: Vec<f32> = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        g.iter().map(|v| v.to_bits()).collect()
    }

    /// One random keep-mask per prunable layer, each filter kept with probability `keep` and at
    /// least one kept.
    pub(crate) fn random_masks(
        model: &SnnModel,
        keep: f64,
        rng: &mut impl rand::Rng,
    ) -> Vec<ccsrp_proto::v1::Mask> {
        model
            .geometry()
            .iter()
            .map(|g| {
                let mut kept: Vec<bool> = (0..g.filters).map(|_| rng.random_bool(keep)).collect();
                let i = rng.random_range(0..g.filters);
                kept[i] = true;
                ccsrp_proto::v1::Mask::from_keep(&kept)
            })
            .collect()
    }

    pub(crate) fn random_pixels(b: usize, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..b * 144)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        Tensor::from_vec(v, (b, 1, 12, 12), &Device::Cpu).unwrap()
    }

    #[test]
    fn same_seed_gives_the_same_model_and_other_seeds_differ() {
        let dev = Device::Cpu;
        let a = SnnModel::new(tiny_spec("4,M,6", 3), &dev, 1).unwrap();
        let b = SnnModel::new(tiny_spec("4,M,6", 3), &dev, 1).unwrap();
        let c = SnnModel::new(tiny_spec("4,M,6", 3), &dev, 2).unwrap();
        let x = random_pixels(5, 0);
        let la: Vec<Vec<f32>> = a.forward_eval(&x).unwrap().to_vec2().unwrap();
        let lb: Vec<Vec<f32>> = b.forward_eval(&x).unwrap().to_vec2().unwrap();
        let lc: Vec<Vec<f32>> = c.forward_eval(&x).unwrap().to_vec2().unwrap();
        assert_eq!(la, lb);
        assert_ne!(la, lc);
    }

    #[test]
    fn eval_pass_equals_the_differentiable_pass_without_training() {
        let m = SnnModel::new(tiny_spec("4,M,6,M", 4), &Device::Cpu, 3).unwrap();
        let x = random_pixels(6, 1);
        let fast = m.forward_eval(&x).unwrap();
        let slow = m.forward(&x, false).unwrap();
        assert_eq!(fast.dims(), &[6, 3]);
        let d = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn eval_pass_equals_the_differentiable_pass_at_low_and_high_spike_rates() {
        let m = SnnModel::new(tiny_spec("8,6,M,5,M", 4), &Device::Cpu, 4).unwrap();
        let x = random_pixels(6, 3);
        for factor in [0.4, 1.0, 3.0] {
            let m = m.with_scaled_conv_weights(factor).unwrap();
            let mut rates = Vec::new();
            m.run_inference(0, m.normalised_input(&x).unwrap(), |_, s| {
                rates.push(s.mean_all()?.to_scalar::<f32>()?);
                Ok(())
            })
            .unwrap();
            let fast = m.forward_eval(&x).unwrap();
            let slow = m.forward(&x, false).unwrap();
            let d = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "weights x{factor} (spike rates {rates:?}): {d}");
        }
    }

    #[test]
    fn inference_results_do_not_depend_on_the_thread_count() {
        let m = SnnModel::new(tiny_spec("8,6,M,5,M", 3), &Device::Cpu, 5).unwrap();
        let x = random_pixels(7, 6);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let full: Vec<Vec<f32>> = m.forward_eval(&x).unwrap().to_vec2().unwrap();
                let inputs = m.layer_inputs(&x).unwrap();
                let from: Vec<Vec<f32>> = m.forward_from(2, &inputs[2]).unwrap().to_vec2().unwrap();
                let bits: Vec<u32> = full.iter().flatten().map(|v| v.to_bits()).collect();
                (
                    bits,
                    from,
                    crate::eval::predictions(&m.forward_eval(&x).unwrap()).unwrap(),
                )
            })
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn attack_input_gradients_do_not_depend_on_the_thread_count() {
        let m = SnnModel::new(tiny_spec("8,6,M,5,M", 3), &Device::Cpu, 6).unwrap();
        let x = random_pixels(5, 7);
        let labels = Tensor::new(&[0u32, 1, 2, 0, 1], &Device::Cpu).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| input_gradient_bits(&m, &x, &labels))
        };
        let one = run(1);
        assert!(one.iter().any(|b| *b != 0), "a nonzero gradient");
        for threads in [2, 3, 8] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn training_forward_is_differentiable_and_updates_running_statistics() {
        let m = SnnModel::new(tiny_spec("4,M,6,M", 2), &Device::Cpu, 3).unwrap();
        let x = Var::from_tensor(&random_pixels(4, 2)).unwrap();
        let before: Vec<f32> = m.blocks[0].running_mean.as_tensor().to_vec1().unwrap();
        let logits = m.forward(x.as_tensor(), true).unwrap();
        let grads = logits.sum_all().unwrap().backward().unwrap();
        for v in m.trainable_vars() {
            assert!(grads.get(v.as_tensor()).is_some());
        }
        let gx = grads.get(x.as_tensor()).unwrap();
        assert_eq!(gx.dims(), &[4, 1, 12, 12]);
        let after: Vec<f32> = m.blocks[0].running_mean.as_tensor().to_vec1().unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn another_surrogate_changes_the_gradient_but_not_the_logits() {
        use crate::lif::SurrogateKind;
        let m = SnnModel::new(tiny_spec("4,M,6,M", 3), &Device::Cpu, 3).unwrap();
        let x = random_pixels(4, 5);
        let labels = Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu).unwrap();
        let grad = |m: &SnnModel| {
            let v = Var::from_tensor(&x).unwrap();
            let logits = m.forward_input_grad(v.as_tensor()).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            let g = loss.backward().unwrap();
            let g: Vec<f32> = g
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let l: Vec<Vec<f32>> = m.forward_eval(&x).unwrap().to_vec2().unwrap();
            (g, l)
        };
        assert_eq!(m.surrogate().to_string(), "sigmoid:4");
        let (g0, l0) = grad(&m);
        for kind in [SurrogateKind::Atan, SurrogateKind::Triangle] {
            let other = m.with_surrogate(SurrogateSpec::new(kind)).unwrap();
            assert_eq!(other.surrogate(), SurrogateSpec::new(kind));
            assert_eq!(other.spec().lif.surrogate, kind);
            let (g, l) = grad(&other);
            assert_eq!(l, l0, "{kind:?}: the forward pass must not change");
            assert_ne!(g, g0, "{kind:?}: the gradient must change");
        }
        let bad = SurrogateSpec {
            kind: SurrogateKind::Atan,
            alpha: -1.0,
        };
        assert!(m.with_surrogate(bad).is_err());
    }

    #[test]
    fn macs_and_parameters_from_weights_equal_the_shared_calculator() {
        let m = SnnModel::new(tiny_spec("4,M,6,5,M", 3), &Device::Cpu, 0).unwrap();
        let d = m.description();
        let kept = ccsrp_proto::cost::dense_kept(&d);
        assert_eq!(m.macs(), ccsrp_proto::cost::macs(&d, &kept).unwrap());
        assert_eq!(
            m.parameters(),
            ccsrp_proto::cost::parameters(&d, &kept).unwrap()
        );
        assert_eq!(d.layers.len(), 3);
        assert_eq!(d.classifier_spatial, 9);
        assert_eq!(d.classes, 3);
        // 3 * (9*1*4*144 + 9*4*6*36 + 9*6*5*36 + 5*9*3)
        assert_eq!(m.macs(), 3 * (5184 + 7776 + 9720 + 135));
    }

    #[test]
    fn wrong_input_shape_is_an_error_naming_the_expected_shape() {
        let m = SnnModel::new(tiny_spec("4,M", 2), &Device::Cpu, 0).unwrap();
        let x = Tensor::zeros((2, 3, 12, 12), DType::F32, &Device::Cpu).unwrap();
        let err = m.forward_eval(&x).unwrap_err().to_string();
        assert!(
            err.contains("[B >= 1, 1, 12, 12]") && err.contains("[2, 3, 12, 12]"),
            "{err}"
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let mut spec = tiny_spec("4,M", 2);
        spec.normalisation.std = vec![];
        let err = SnnModel::new(spec, &Device::Cpu, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("normalisation"), "{err}");
        let mut spec = tiny_spec("4,M", 2);
        spec.timesteps = 0;
        assert!(SnnModel::new(spec, &Device::Cpu, 0).is_err());
    }

    /// The DESIGN.md section 7 anchor: `small`, T = 4, 1,000 CIFAR-sized images (PyTorch eager
    /// 1.52 s, spikingjelly 1.28 s on the 2-core CPU).
    #[test]
    #[ignore = "benchmark: cargo test -p ccsrp-worker --lib -- --ignored --nocapture clean_pass_speed"]
    fn clean_pass_speed_of_small_on_cifar_sized_images() {
        let mut spec = ModelSpec::new(
            Architecture::preset("small").unwrap(),
            4,
            InputShape {
                channels: 3,
                height: 32,
                width: 32,
            },
            (0..10).map(|i| i.to_string()).collect(),
        );
        spec.normalisation = Normalisation::identity(3);
        let m = SnnModel::new(spec, &Device::Cpu, 0).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let batch = 100;
        let v: Vec<f32> = (0..batch * 3 * 32 * 32)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        let x = Tensor::from_vec(v, (batch, 3, 32, 32), &Device::Cpu).unwrap();
        m.forward_eval(&x).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..10 {
            m.forward_eval(&x).unwrap();
        }
        println!(
            "forward_eval, 1000 images: {:.3} s",
            start.elapsed().as_secs_f64()
        );
        let start = std::time::Instant::now();
        for _ in 0..10 {
            m.forward(&x, false).unwrap();
        }
        println!(
            "forward (graph), 1000 images: {:.3} s",
            start.elapsed().as_secs_f64()
        );
    }

    #[test]
    fn images_become_pixels_over_255_in_chw_order() {
        let set = ImageSet {
            channels: 1,
            height: 1,
            width: 2,
            pixels: vec![0, 255, 51, 102],
            labels: vec![0, 1],
            class_names: vec!["x".into(), "y".into()],
        };
        let t = images_to_tensor(&set, 1..2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 1, 1, 2]);
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.2, 0.4]
        );
        assert!(images_to_tensor(&set, 1..3, &Device::Cpu).is_err());
    }
}
