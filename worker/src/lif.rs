//! Multi-step leaky integrate-and-fire neurons, numerically as spikingjelly's `LIFNode`
//! (hard reset, `decay_input`, `detach_reset=False`).
//!
//! Per step t, with membrane potential `v` starting at `v_reset`:
//! - charge: `h = v + (x - (v - v_reset)) / tau` (`decay_input`), else `h = v - (v - v_reset) / tau + x`;
//! - fire: `s = (h >= v_threshold)`;
//! - hard reset: `v = h * (1 - s) + v_reset * s`.
//!
//! `1 / tau` is applied as a multiplication by the f32 nearest to `1/tau` (exact for the default
//! tau = 2).
//!
//! Two paths compute the same spikes:
//! - [`Lif::forward`]: differentiable. The spike is `heaviside(h) + (h - h.detach()) * k.detach()` with
//!   `k` the surrogate derivative at `h`: its value is exactly the Heaviside step and its gradient
//!   `ds/dh = k` ([`SurrogateKind`]). Only plain tensor ops, so it runs on every backend.
//! - [`Lif::forward_inference`]: no graph. On CPU one fused loop over the f32 buffer (optionally
//!   applying a per-channel affine first: the folded batch norm); elsewhere the same tensor ops as the
//!   differentiable path on detached tensors. Both give bit-identical spikes to [`Lif::forward`].
//!
//! With the `cuda` feature, CUDA f32 tensors take the fused ops too: their `cuda_fwd` launches the
//! kernels of `worker/cuda/lif.cu` (`lif_cuda`), whose algorithm the CPU twin in
//! [`crate::lif_kernel`] pins against this file's CPU ops.
//!
//! Layout: multi-step tensors are step-major `[T*B, ...]` (rows `t*B..(t+1)*B` are step t), so a conv
//! runs once over all steps and only the neuron loop is sequential in T. [`Drive::Constant`] feeds a
//! `[B, ...]` current at every step (direct encoding of the first layer).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::cpu_buffer::contiguous_f32;
use serde::{Deserialize, Serialize};

/// Surrogate gradient of the spike function. Only the backward pass depends on it: the spikes are
/// always the exact Heaviside step. At each kind's default alpha every surrogate peaks at 1 (at
/// `h = v_threshold`) and integrates to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurrogateKind {
    /// `ds/dh = alpha * sg * (1 - sg)`, `sg = sigmoid(alpha * (h - v_threshold))` (default alpha 4).
    Sigmoid,
    /// spikingjelly's `ATan`: `ds/dh = alpha / 2 / (1 + (pi/2 * alpha * (h - v_threshold))^2)`
    /// (spikingjelly's default alpha is 2).
    Atan,
    /// The triangle: `ds/dh = alpha * max(0, 1 - alpha * |h - v_threshold|)`, peak `alpha`,
    /// half-width `1 / alpha` (default alpha 1: peak 1, zero beyond `|h - v_threshold| >= 1`).
    /// It is the derivative of spikingjelly's `PiecewiseQuadratic` surrogate (Esser et al. 2016),
    /// the triangle of Bellec et al. 2018 with `gamma = alpha` and width `1 / alpha`.
    Triangle,
}

impl SurrogateKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [SurrogateKind; 3] = [
        SurrogateKind::Sigmoid,
        SurrogateKind::Atan,
        SurrogateKind::Triangle,
    ];

    /// The standard sharpness of the kind: sigmoid 4, atan 2 (spikingjelly's defaults), triangle 1.
    pub fn default_alpha(self) -> f64 {
        match self {
            SurrogateKind::Sigmoid => 4.0,
            SurrogateKind::Atan => 2.0,
            SurrogateKind::Triangle => 1.0,
        }
    }

    /// The name in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SurrogateKind::Sigmoid => "sigmoid",
            SurrogateKind::Atan => "atan",
            SurrogateKind::Triangle => "triangle",
        }
    }
}

impl std::fmt::Display for SurrogateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SurrogateKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SurrogateKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| format!("unknown surrogate `{s}`: expected sigmoid, atan or triangle"))
    }
}

/// A surrogate and its sharpness: what an attack differentiates the spikes through.
///
/// Text form `name[:alpha]` (`sigmoid`, `atan:2`, `triangle:0.5`); without `:alpha` the kind's
/// [`SurrogateKind::default_alpha`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurrogateSpec {
    pub kind: SurrogateKind,
    pub alpha: f64,
}

impl SurrogateSpec {
    /// `kind` at its default alpha.
    pub fn new(kind: SurrogateKind) -> SurrogateSpec {
        SurrogateSpec {
            kind,
            alpha: kind.default_alpha(),
        }
    }

    /// Every kind at its default alpha: `sigmoid:4`, `atan:2`, `triangle:1`.
    pub fn standard() -> Vec<SurrogateSpec> {
        SurrogateKind::ALL.map(SurrogateSpec::new).to_vec()
    }

    /// The surrogate of neuron constants `p`.
    pub fn of(p: &LifParams) -> SurrogateSpec {
        SurrogateSpec {
            kind: p.surrogate,
            alpha: p.alpha,
        }
    }

    /// Checks alpha is finite and positive.
    pub fn validate(&self) -> Result<(), LifError> {
        if self.alpha.is_finite() && self.alpha > 0.0 {
            Ok(())
        } else {
            Err(LifError::BadParam {
                field: "alpha",
                value: self.alpha,
                expected: "expected a finite number > 0",
            })
        }
    }
}

impl std::fmt::Display for SurrogateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.alpha)
    }
}

impl std::str::FromStr for SurrogateSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, alpha) = match s.split_once(':') {
            Some((name, alpha)) => (name, Some(alpha)),
            None => (s, None),
        };
        let kind: SurrogateKind = name.parse()?;
        let alpha = match alpha {
            None => kind.default_alpha(),
            Some(text) => text.trim().parse::<f64>().map_err(|_| {
                format!("surrogate `{s}`: alpha `{text}` is not a number (expected name[:alpha])")
            })?,
        };
        let spec = SurrogateSpec { kind, alpha };
        spec.validate()
            .map_err(|_| format!("surrogate `{s}`: alpha must be a finite number > 0"))?;
        Ok(spec)
    }
}

/// Neuron constants; the defaults are spikingjelly's (tau 2, threshold 1, reset 0, decay_input) with
/// the sigmoid surrogate at alpha 4.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifParams {
    pub tau: f64,
    pub v_threshold: f64,
    pub v_reset: f64,
    pub decay_input: bool,
    pub surrogate: SurrogateKind,
    /// Sharpness of the surrogate ([`SurrogateKind`] gives each formula and its default).
    pub alpha: f64,
}

impl Default for LifParams {
    fn default() -> Self {
        LifParams {
            tau: 2.0,
            v_threshold: 1.0,
            v_reset: 0.0,
            decay_input: true,
            surrogate: SurrogateKind::Sigmoid,
            alpha: 4.0,
        }
    }
}

/// Neuron constants that cannot describe a LIF neuron.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LifError {
    #[error("lif.{field} = {value}: {expected}")]
    BadParam {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("LIF needs at least one time step")]
    NoTimesteps,
}

impl LifParams {
    /// Checks every constant is finite, `tau >= 1` (a leak factor `1/tau` above 1 diverges),
    /// `alpha > 0` and `v_reset < v_threshold`.
    pub fn validate(&self) -> Result<(), LifError> {
        let bad = |field, value, expected| {
            Err(LifError::BadParam {
                field,
                value,
                expected,
            })
        };
        if !(self.tau.is_finite() && self.tau >= 1.0) {
            return bad("tau", self.tau, "expected a finite number >= 1");
        }
        if !self.v_threshold.is_finite() {
            return bad("v_threshold", self.v_threshold, "expected a finite number");
        }
        if !(self.v_reset.is_finite() && self.v_reset < self.v_threshold) {
            return bad(
                "v_reset",
                self.v_reset,
                "expected a finite number below v_threshold",
            );
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad("alpha", self.alpha, "expected a finite number > 0");
        }
        Ok(())
    }
}

/// How the input current reaches the neurons over the T steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// The current is `[T*B, ...]`, one slice per step.
    EveryStep,
    /// The current is `[B, ...]` and the same at every step (direct encoding).
    Constant,
}

/// A per-channel affine `x * scale[c] + shift[c]` applied to the current before the neuron (the
/// inference form of batch norm). Channel is dimension 1; both tensors are `[C]` f32.
#[derive(Debug, Clone)]
pub struct ChannelAffine {
    pub scale: Tensor,
    pub shift: Tensor,
}

impl ChannelAffine {
    /// The same affine with its tensors detached from any autograd graph.
    pub fn detached(&self) -> ChannelAffine {
        ChannelAffine {
            scale: self.scale.detach(),
            shift: self.shift.detach(),
        }
    }

    /// Applies the affine with tensor ops (differentiable), in the same f32 order as the fused loop:
    /// `x * scale` then `+ shift`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.scale.dim(0)?;
        let mut shape = vec![1usize; x.rank()];
        if shape.len() < 2 {
            candle_core::bail!(
                "channel affine needs a tensor with a channel dimension, got {:?}",
                x.shape()
            );
        }
        shape[1] = c;
        x.broadcast_mul(&self.scale.reshape(shape.as_slice())?)?
            .broadcast_add(&self.shift.reshape(shape.as_slice())?)
    }
}

/// A layer of multi-step LIF neurons simulated for `timesteps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lif {
    params: LifParams,
    timesteps: usize,
}

impl Lif {
    pub fn new(params: LifParams, timesteps: usize) -> Result<Lif, LifError> {
        params.validate()?;
        if timesteps == 0 {
            return Err(LifError::NoTimesteps);
        }
        Ok(Lif { params, timesteps })
    }

    pub fn params(&self) -> &LifParams {
        &self.params
    }

    pub fn timesteps(&self) -> usize {
        self.timesteps
    }

    /// Differentiable spikes `[T*B, ...]` (f32 0/1) for the current (see [`Drive`]).
    ///
    /// On CPU (f32) one fused op: the neuron loop forward, and backpropagation through time in one
    /// reverse loop (the potentials are recomputed from the current), with exactly the gradient of
    /// the tensor-op graph. On a CUDA device (f32) the same fused op launches the kernels of
    /// `worker/cuda/lif.cu` (`lif_cuda`); elsewhere the tensor-op graph itself.
    pub fn forward(&self, current: &Tensor, drive: Drive) -> candle_core::Result<Tensor> {
        if let Some(kernel) = self.fused(current, drive, None)? {
            return current.contiguous()?.apply_op1(kernel);
        }
        self.tensor_path(current, drive, true)
    }

    /// Spikes for `affine.apply(current)`, differentiable w.r.t. `current` only (the affine is a
    /// constant: batch norm in eval mode under an attack). On CPU one fused op each way.
    pub fn forward_affine_const(
        &self,
        current: &Tensor,
        drive: Drive,
        affine: &ChannelAffine,
    ) -> candle_core::Result<Tensor> {
        if let Some(kernel) = self.fused(current, drive, Some(affine))? {
            return current.contiguous()?.apply_op1(kernel);
        }
        self.tensor_path(&affine.detached().apply(current)?, drive, true)
    }

    /// The differentiable neuron loop as plain tensor ops (every backend; the reference the fused
    /// CPU op is tested against).
    #[cfg(test)]
    pub(crate) fn forward_graph(
        &self,
        current: &Tensor,
        drive: Drive,
    ) -> candle_core::Result<Tensor> {
        self.tensor_path(current, drive, true)
    }

    /// Spikes without an autograd graph, bit-identical to [`Lif::forward`] fed
    /// `affine.apply(current)` (or `current` when `affine` is `None`).
    pub fn forward_inference(
        &self,
        current: &Tensor,
        drive: Drive,
        affine: Option<&ChannelAffine>,
    ) -> candle_core::Result<Tensor> {
        let current = current.detach();
        if let Some(kernel) = self.fused(&current, drive, affine)? {
            return current.contiguous()?.apply_op1_no_bwd(&kernel);
        }
        let current = match affine {
            Some(a) => a.detached().apply(&current)?,
            None => current,
        };
        self.tensor_path(&current, drive, false)
    }

    /// The fused kernel for `current` (with `affine` in front), when it applies: a CPU f32 tensor,
    /// or a CUDA f32 tensor in a `cuda` build (lif.cu's kernels).
    fn fused(
        &self,
        current: &Tensor,
        drive: Drive,
        affine: Option<&ChannelAffine>,
    ) -> candle_core::Result<Option<FusedLif>> {
        let fused_device =
            current.device().is_cpu() || cfg!(feature = "cuda") && current.device().is_cuda();
        if !(fused_device && current.dtype() == DType::F32) {
            return Ok(None);
        }
        // The CPU loops read the affine from host vectors; the CUDA kernels from the device
        // tensors (no copy to the host, no synchronisation).
        let (host_affine, device_affine) = match affine {
            Some(a) if current.device().is_cpu() => (
                Some((
                    a.scale.detach().to_vec1::<f32>()?,
                    a.shift.detach().to_vec1::<f32>()?,
                )),
                None,
            ),
            Some(a) => (
                None,
                Some(ChannelAffine {
                    scale: a.scale.detach().to_dtype(DType::F32)?.contiguous()?,
                    shift: a.shift.detach().to_dtype(DType::F32)?.contiguous()?,
                }),
            ),
            None => (None, None),
        };
        Ok(Some(FusedLif {
            lif: *self,
            drive,
            affine: host_affine,
            device_affine,
        }))
    }

    fn step_rows(&self, current: &Tensor, drive: Drive) -> candle_core::Result<usize> {
        self.step_rows_from(current.dim(0)?, drive)
    }

    /// The neuron loop with tensor ops; `track` adds the surrogate-gradient term.
    fn tensor_path(
        &self,
        current: &Tensor,
        drive: Drive,
        track: bool,
    ) -> candle_core::Result<Tensor> {
        let p = &self.params;
        let b = self.step_rows(current, drive)?;
        let inv_tau = 1.0 / p.tau;
        let step_shape = {
            let mut d = current.dims().to_vec();
            d[0] = b;
            d
        };
        let mut v = Tensor::full(p.v_reset as f32, step_shape.as_slice(), current.device())?;
        let mut spikes = Vec::with_capacity(self.timesteps);
        for t in 0..self.timesteps {
            let x = match drive {
                Drive::Constant => current.clone(),
                Drive::EveryStep => current.narrow(0, t * b, b)?,
            };
            let leak = if p.v_reset == 0.0 {
                v.clone()
            } else {
                v.affine(1.0, -p.v_reset)?
            };
            let h = if p.decay_input {
                v.add(&x.sub(&leak)?.affine(inv_tau, 0.0)?)?
            } else {
                v.sub(&leak.affine(inv_tau, 0.0)?)?.add(&x)?
            };
            let fired = h.ge(p.v_threshold)?.to_dtype(current.dtype())?;
            let s = if track {
                let detached = h.detach();
                let k = self.surrogate_derivative(&detached)?;
                h.sub(&detached)?.mul(&k)?.add(&fired)?
            } else {
                fired
            };
            v = h.mul(&s.affine(-1.0, 1.0)?)?;
            if p.v_reset != 0.0 {
                v = v.add(&s.affine(p.v_reset, 0.0)?)?;
            }
            spikes.push(s);
        }
        Tensor::cat(&spikes, 0)
    }

    /// `ds/dh` at the (detached) potentials `h`.
    fn surrogate_derivative(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let p = &self.params;
        match p.surrogate {
            SurrogateKind::Sigmoid => {
                let sg = candle_nn::ops::sigmoid(&h.affine(p.alpha, -p.alpha * p.v_threshold)?)?;
                sg.mul(&sg.affine(-1.0, 1.0)?)?.affine(p.alpha, 0.0)
            }
            SurrogateKind::Atan => {
                let c = std::f64::consts::FRAC_PI_2 * p.alpha;
                h.affine(c, -c * p.v_threshold)?
                    .sqr()?
                    .affine(1.0, 1.0)?
                    .recip()?
                    .affine(p.alpha / 2.0, 0.0)
            }
            SurrogateKind::Triangle => h
                .affine(p.alpha, -p.alpha * p.v_threshold)?
                .abs()?
                .affine(-1.0, 1.0)?
                .relu()?
                .affine(p.alpha, 0.0),
        }
    }
}

/// The CPU inference kernel: affine (optional) + the whole T-step neuron loop in one pass per step.
struct FusedLif {
    lif: Lif,
    drive: Drive,
    affine: Option<(Vec<f32>, Vec<f32>)>,
    /// The affine of a CUDA input, on its device (then `affine` is `None`).
    device_affine: Option<ChannelAffine>,
}

impl FusedLif {
    fn run(&self, x: &[f32], dims: &[usize]) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
        let t_steps = self.lif.timesteps;
        let rows = self.lif.step_rows_from(dims[0], self.drive)?;
        let per_row: usize = dims[1..].iter().product();
        let m = rows * per_row;
        let (channels, spatial) = channel_blocks(dims, per_row, &self.affine)?;
        let consts = Consts::of(&self.lif.params);
        let (drive, affine) = (self.drive, &self.affine);
        let block = spatial.max(1);
        let per_chunk = block * (NEURON_CHUNK / block).max(1);
        let out = par_neuron_chunks(m, t_steps, per_chunk, |lo, hi| {
            let len = hi - lo;
            let mut out = vec![0f32; t_steps * len];
            let mut v = vec![consts.v_reset; len];
            for t in 0..t_steps {
                let out_t = &mut out[t * len..(t + 1) * len];
                let xt = match drive {
                    Drive::Constant => &x[lo..hi],
                    Drive::EveryStep => &x[t * m + lo..t * m + hi],
                };
                match affine {
                    None => consts.steps(xt, &mut v, out_t, |x| x),
                    Some((scale, shift)) => {
                        for (b, ((xs, vs), os)) in xt
                            .chunks_exact(block)
                            .zip(v.chunks_exact_mut(block))
                            .zip(out_t.chunks_exact_mut(block))
                            .enumerate()
                        {
                            let ch = (lo / block + b) % channels;
                            let (a, b) = (scale[ch], shift[ch]);
                            consts.steps(xs, vs, os, |x| x * a + b);
                        }
                    }
                }
            }
            out
        });
        let mut out_dims = dims.to_vec();
        out_dims[0] = rows * t_steps;
        Ok((out, out_dims))
    }
}

/// Neurons per parallel work item of the fused kernels.
const NEURON_CHUNK: usize = 16 * 1024;

/// Runs `f(lo, hi)` for chunks of `chunk` neurons of `m` in parallel; each returns its neurons'
/// values for `steps` steps (`[steps, hi - lo]`), assembled here into `[steps, m]`. Neurons are
/// independent and each chunk's arithmetic is fixed, so the result does not depend on threads.
fn par_neuron_chunks(
    m: usize,
    steps: usize,
    chunk: usize,
    f: impl Fn(usize, usize) -> Vec<f32> + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let bounds: Vec<(usize, usize)> = (0..m)
        .step_by(chunk.max(1))
        .map(|lo| (lo, (lo + chunk).min(m)))
        .collect();
    let parts: Vec<Vec<f32>> = bounds.par_iter().map(|&(lo, hi)| f(lo, hi)).collect();
    let mut out = vec![0f32; steps * m];
    for (&(lo, hi), part) in bounds.iter().zip(&parts) {
        for (t, values) in part.chunks_exact(hi - lo).enumerate().take(steps) {
            out[t * m + lo..t * m + hi].copy_from_slice(values);
        }
    }
    out
}

impl Lif {
    fn step_rows_from(&self, rows: usize, drive: Drive) -> candle_core::Result<usize> {
        match drive {
            Drive::Constant => Ok(rows),
            Drive::EveryStep if rows.is_multiple_of(self.timesteps) => Ok(rows / self.timesteps),
            Drive::EveryStep => candle_core::bail!(
                "LIF input has {rows} rows, not a multiple of T = {}",
                self.timesteps
            ),
        }
    }
}

/// `(channels, values per channel block)` of a `[rows, C, ...]` tensor under `affine`, checking
/// the affine has one scale and shift per channel; without an affine one block per row.
fn channel_blocks(
    dims: &[usize],
    per_row: usize,
    affine: &Option<(Vec<f32>, Vec<f32>)>,
) -> candle_core::Result<(usize, usize)> {
    match affine {
        Some((scale, shift)) => {
            let c = dims.get(1).copied().unwrap_or(0);
            if scale.len() != c || shift.len() != c {
                candle_core::bail!(
                    "channel affine has {} scales and {} shifts for {c} channels",
                    scale.len(),
                    shift.len()
                );
            }
            Ok((c, per_row / c.max(1)))
        }
        None => Ok((1, per_row)),
    }
}

#[derive(Clone, Copy)]
struct Consts {
    v_reset: f32,
    v_threshold: f32,
    inv_tau: f32,
    nonzero_reset: bool,
    decay_input: bool,
}

impl Consts {
    fn of(p: &LifParams) -> Consts {
        Consts {
            v_reset: p.v_reset as f32,
            v_threshold: p.v_threshold as f32,
            inv_tau: (1.0 / p.tau) as f32,
            nonzero_reset: p.v_reset != 0.0,
            decay_input: p.decay_input,
        }
    }

    /// The potential `h` after charging `v` with `x`: the exact f32 operations of the tensor path.
    #[inline(always)]
    fn charge(&self, v: f32, x: f32) -> f32 {
        let k = self.inv_tau;
        let leak = if self.nonzero_reset {
            v - self.v_reset
        } else {
            v
        };
        if self.decay_input {
            v + ((x - leak) * k + 0.0)
        } else {
            (v - (leak * k + 0.0)) + x
        }
    }

    /// One step for a run of neurons: spikes into `os`, `vs` advanced past the reset.
    #[inline(always)]
    fn steps(&self, xs: &[f32], vs: &mut [f32], os: &mut [f32], current: impl Fn(f32) -> f32) {
        for ((&x, v), o) in xs.iter().zip(vs.iter_mut()).zip(os.iter_mut()) {
            let h = self.charge(*v, current(x));
            let fired = h >= self.v_threshold;
            *o = if fired { 1.0 } else { 0.0 };
            *v = if fired { self.v_reset } else { h };
        }
    }

    /// One step's potentials `h` (before the spike) into `hs`, `vs` advanced past the reset.
    #[inline(always)]
    fn potentials(&self, xs: &[f32], vs: &mut [f32], hs: &mut [f32]) {
        for ((&x, v), ho) in xs.iter().zip(vs.iter_mut()).zip(hs.iter_mut()) {
            let h = self.charge(*v, x);
            *ho = h;
            *v = if h >= self.v_threshold {
                self.v_reset
            } else {
                h
            };
        }
    }
}

impl CustomOp1 for FusedLif {
    fn name(&self) -> &'static str {
        "fused-lif"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = contiguous_f32(storage, layout, "fused LIF input")?;
        let (out, dims) = self.run(data, layout.dims())?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::lif_cuda::forward(
            &self.lif,
            self.drive,
            self.device_affine.as_ref(),
            storage,
            layout,
        )
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &LifBackward {
                lif: self.lif,
                drive: self.drive,
                affine: self.affine.clone(),
                device_affine: self.device_affine.clone(),
            },
        )?;
        Ok(Some(grad))
    }
}

/// Backpropagation through time of the neuron loop: from the current `x` and the gradient of the
/// spikes, the gradient of the current. The potentials `h_t` are recomputed forward (the same f32
/// operations as the forward pass), then one reverse loop applies, per step,
/// `dL/dh = dL/ds * k(h) + dL/dv * ((1 - s) + (v_reset - h) * k(h))` (hard reset through the
/// surrogate, `detach_reset=False`), `dL/dx = dL/dh * dh/dx` and `dL/dv_prev = dL/dh * (1 - 1/tau)`.
/// With a channel affine (held constant) the current is `x * scale + shift` and `dL/dx` is scaled.
struct LifBackward {
    lif: Lif,
    drive: Drive,
    affine: Option<(Vec<f32>, Vec<f32>)>,
    /// The affine of a CUDA input (read by the CUDA kernel only).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_affine: Option<ChannelAffine>,
}

impl LifBackward {
    fn run(&self, x: &[f32], grad_s: &[f32], dims: &[usize]) -> candle_core::Result<Vec<f32>> {
        let t_steps = self.lif.timesteps;
        let rows = self.lif.step_rows_from(dims[0], self.drive)?;
        let per_row: usize = dims[1..].iter().product();
        let m = rows * per_row;
        if grad_s.len() != t_steps * m {
            candle_core::bail!(
                "LIF backward: {} spike gradients for {t_steps} steps of {m}",
                grad_s.len()
            );
        }
        // The current the neurons see (after the affine, when there is one).
        let affined;
        let (c, spatial) = channel_blocks(dims, per_row, &self.affine)?;
        let spatial = spatial.max(1);
        let (x, channel_scale) = match &self.affine {
            Some((scale, shift)) => {
                let mut cur = x.to_vec();
                for (block, xs) in cur.chunks_exact_mut(spatial).enumerate() {
                    let (a, b) = (scale[block % c], shift[block % c]);
                    xs.iter_mut().for_each(|x| *x = *x * a + b);
                }
                affined = cur;
                (&affined[..], Some(scale))
            }
            None => (x, None),
        };
        let p = &self.lif.params;
        let consts = Consts::of(p);
        let (vr, vth, k) = (consts.v_reset, consts.v_threshold, consts.inv_tau);
        let surrogate = Surrogate::new(p);
        let dh_dx = if p.decay_input { k } else { 1.0 };
        let dv_dvprev = 1.0 - k;
        let drive = self.drive;
        let steps_out = if drive == Drive::Constant { 1 } else { t_steps };
        // Neurons are independent: chunks of them run in parallel, each with its own potentials.
        // Per neuron the arithmetic and its order are fixed, so the result is thread-count free.
        let chunk = |lo: usize, hi: usize| -> Vec<f32> {
            let len = hi - lo;
            let step_x = |t: usize| match drive {
                Drive::Constant => &x[lo..hi],
                Drive::EveryStep => &x[t * m + lo..t * m + hi],
            };
            // Forward again, keeping every step's potential h_t.
            let mut hs = vec![0f32; t_steps * len];
            let mut v = vec![vr; len];
            for t in 0..t_steps {
                consts.potentials(step_x(t), &mut v, &mut hs[t * len..(t + 1) * len]);
            }
            let mut gx = vec![0f32; steps_out * len];
            let grad_v = &mut v;
            grad_v.iter_mut().for_each(|g| *g = 0.0);
            for t in (0..t_steps).rev() {
                let h_t = &hs[t * len..(t + 1) * len];
                let gs_t = &grad_s[t * m + lo..t * m + hi];
                let gx_t = match drive {
                    Drive::Constant => &mut gx[..],
                    Drive::EveryStep => &mut gx[t * len..(t + 1) * len],
                };
                for (((&h, &gs), gv), gx) in h_t
                    .iter()
                    .zip(gs_t)
                    .zip(grad_v.iter_mut())
                    .zip(gx_t.iter_mut())
                {
                    let kh = surrogate.derivative(h);
                    let s = if h >= vth { 1.0 } else { 0.0 };
                    let gh = gs * kh + *gv * ((1.0 - s) + (vr - h) * kh);
                    *gx += gh * dh_dx;
                    *gv = gh * dv_dvprev;
                }
            }
            gx
        };
        let mut grad_x = par_neuron_chunks(m, steps_out, NEURON_CHUNK, chunk);
        if let Some(scale) = channel_scale {
            for (block, gs) in grad_x.chunks_exact_mut(spatial).enumerate() {
                let a = scale[block % c];
                gs.iter_mut().for_each(|g| *g *= a);
            }
        }
        Ok(grad_x)
    }
}

impl candle_core::CustomOp2 for LifBackward {
    fn name(&self) -> &'static str {
        "fused-lif-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, "fused LIF backward input")?;
        let grad = contiguous_f32(grad, grad_layout, "fused LIF backward gradient")?;
        let out = self.run(x, grad, x_layout.dims())?;
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::lif_cuda::backward(
            &self.lif,
            self.drive,
            self.device_affine.as_ref(),
            x,
            x_layout,
            grad,
            grad_layout,
        )
    }
}

/// The surrogate derivative `ds/dh` in f32.
struct Surrogate {
    kind: SurrogateKind,
    alpha: f32,
    v_threshold: f32,
}

impl Surrogate {
    fn new(p: &LifParams) -> Surrogate {
        Surrogate {
            kind: p.surrogate,
            alpha: p.alpha as f32,
            v_threshold: p.v_threshold as f32,
        }
    }

    #[inline(always)]
    fn derivative(&self, h: f32) -> f32 {
        let u = h - self.v_threshold;
        match self.kind {
            SurrogateKind::Sigmoid => {
                let sg = 1.0 / (1.0 + (-self.alpha * u).exp());
                self.alpha * sg * (1.0 - sg)
            }
            SurrogateKind::Atan => {
                let z = std::f32::consts::FRAC_PI_2 * self.alpha * u;
                self.alpha / 2.0 / (1.0 + z * z)
            }
            SurrogateKind::Triangle => self.alpha * (1.0 - self.alpha * u.abs()).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn lif(timesteps: usize) -> Lif {
        Lif::new(LifParams::default(), timesteps).unwrap()
    }

    #[test]
    fn constant_current_charges_fires_and_resets_as_hand_computed() {
        // tau 2, v_th 1: x = 1.5 -> h = 0.75 (no spike), h = 0.75 + (1.5 - 0.75)/2 = 1.125 (spike, v=0),
        // h = 0.75, h = 1.125 ...; x = 2 -> h = 1 fires at once (h >= v_th).
        let x = Tensor::new(&[[1.5f32, 2.0, 0.5]], &Device::Cpu).unwrap();
        let s = lif(4).forward(&x, Drive::Constant).unwrap();
        let s: Vec<Vec<f32>> = s.to_vec2().unwrap();
        assert_eq!(
            s,
            vec![
                vec![0.0, 1.0, 0.0],
                vec![1.0, 1.0, 0.0],
                vec![0.0, 1.0, 0.0],
                vec![1.0, 1.0, 0.0]
            ]
        );
    }

    #[test]
    fn per_step_current_uses_each_steps_slice_and_leaks() {
        // B = 1, two neurons, T = 3: x_t rows. Neuron 0: 1.0 -> h 0.5; 0 -> h 0.25; 2 -> h 1.125 spike.
        let x = Tensor::new(&[[1.0f32, 4.0], [0.0, -2.0], [2.0, 1.0]], &Device::Cpu).unwrap();
        let s: Vec<Vec<f32>> = lif(3)
            .forward(&x, Drive::EveryStep)
            .unwrap()
            .to_vec2()
            .unwrap();
        // Neuron 1: 4 -> h 2 spike (v 0); -2 -> h -1; 1 -> h -1 + (1 + 1)/2 = 0.
        assert_eq!(s, vec![vec![0.0, 1.0], vec![0.0, 0.0], vec![1.0, 0.0]]);
    }

    #[test]
    fn nonzero_reset_and_input_without_decay_follow_spikingjelly() {
        let params = LifParams {
            v_reset: -0.5,
            decay_input: false,
            ..LifParams::default()
        };
        let l = Lif::new(params, 3).unwrap();
        // v0 = -0.5: h = v - (v - vr)/2 + x = -0.5 + 1.6 = 1.1 spike -> v = -0.5; again 1.1 spike;
        // x = 0.9: h = 0.4 no spike.
        let x = Tensor::new(&[[1.6f32], [1.6], [0.9]], &Device::Cpu).unwrap();
        let s: Vec<Vec<f32>> = l.forward(&x, Drive::EveryStep).unwrap().to_vec2().unwrap();
        assert_eq!(s, vec![vec![1.0], vec![1.0], vec![0.0]]);
    }

    fn surrogate_gradient_matches(kind: SurrogateKind, alpha: f64, formula: impl Fn(f64) -> f64) {
        let params = LifParams {
            surrogate: kind,
            alpha,
            ..LifParams::default()
        };
        let l = Lif::new(params, 1).unwrap();
        let xs = [-1.0f32, 0.5, 1.9, 2.0, 2.4, 3.0];
        let x = Var::new(&xs, &Device::Cpu).unwrap();
        let s = l.forward(x.as_tensor(), Drive::Constant).unwrap();
        let grads = s.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        for (&xi, &gi) in xs.iter().zip(&g) {
            // One step from v = 0: h = x / 2, dh/dx = 1/2.
            let expected = formula(f64::from(xi) / 2.0 - 1.0) * 0.5;
            assert!(
                (f64::from(gi) - expected).abs() < 1e-6,
                "{kind:?} x={xi}: gradient {gi}, expected {expected}"
            );
        }
    }

    #[test]
    fn sigmoid_surrogate_gradient_equals_the_formula() {
        surrogate_gradient_matches(SurrogateKind::Sigmoid, 4.0, |u| {
            let sg = 1.0 / (1.0 + (-4.0 * u).exp());
            4.0 * sg * (1.0 - sg)
        });
    }

    #[test]
    fn atan_surrogate_gradient_equals_the_formula() {
        surrogate_gradient_matches(SurrogateKind::Atan, 2.0, |u| {
            let z = std::f64::consts::FRAC_PI_2 * 2.0 * u;
            2.0 / 2.0 / (1.0 + z * z)
        });
    }

    #[test]
    fn triangle_surrogate_gradient_equals_the_formula() {
        for alpha in [1.0, 2.0] {
            surrogate_gradient_matches(SurrogateKind::Triangle, alpha, |u| {
                alpha * (1.0 - alpha * u.abs()).max(0.0)
            });
        }
    }

    #[test]
    fn surrogate_specs_parse_print_and_serialise() {
        let s: SurrogateSpec = "atan".parse().unwrap();
        assert_eq!(s, SurrogateSpec::new(SurrogateKind::Atan));
        assert_eq!(s.alpha, 2.0);
        let t: SurrogateSpec = " triangle:0.5".parse().unwrap();
        assert_eq!((t.kind, t.alpha), (SurrogateKind::Triangle, 0.5));
        assert_eq!(t.to_string(), "triangle:0.5");
        assert_eq!(t.to_string().parse::<SurrogateSpec>(), Ok(t));
        assert_eq!(
            SurrogateSpec::standard()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            ["sigmoid:4", "atan:2", "triangle:1"]
        );
        for bad in ["relu", "atan:0", "atan:-1", "atan:x", "sigmoid:inf", ""] {
            let err = bad.parse::<SurrogateSpec>().unwrap_err();
            assert!(err.contains(bad.trim()) || err.contains("unknown"), "{err}");
        }
        // The model-file spec names the triangle `triangle` and reads it back.
        let p = LifParams {
            surrogate: SurrogateKind::Triangle,
            alpha: 1.0,
            ..LifParams::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""surrogate":"triangle""#), "{json}");
        assert_eq!(serde_json::from_str::<LifParams>(&json).unwrap(), p);
        assert!(serde_json::from_str::<LifParams>(r#"{"surrogate":"box"}"#).is_err());
        let err = Lif::new(
            LifParams {
                surrogate: SurrogateKind::Triangle,
                alpha: 0.0,
                ..LifParams::default()
            },
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("lif.alpha"), "{err}");
    }

    #[test]
    fn fused_inference_gives_exactly_the_differentiable_paths_spikes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (t, b, c, hw) = (4usize, 3usize, 5usize, 6usize);
        let per_step = b * c * hw;
        let data: Vec<f32> = (0..t * per_step)
            .map(|_| rng.random_range(-1.0f32..3.0))
            .collect();
        let scale: Vec<f32> = (0..c).map(|_| rng.random_range(0.2f32..2.0)).collect();
        let shift: Vec<f32> = (0..c).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        let dev = Device::Cpu;
        let affine = ChannelAffine {
            scale: Tensor::new(scale.as_slice(), &dev).unwrap(),
            shift: Tensor::new(shift.as_slice(), &dev).unwrap(),
        };
        for params in [
            LifParams::default(),
            LifParams {
                v_reset: -0.3,
                decay_input: false,
                tau: 3.0,
                ..LifParams::default()
            },
        ] {
            let l = Lif::new(params, t).unwrap();
            let every = Tensor::from_vec(data.clone(), (t * b, c, 2, 3), &dev).unwrap();
            let constant = every.narrow(0, 0, b).unwrap();
            for (x, drive) in [(&every, Drive::EveryStep), (&constant, Drive::Constant)] {
                let reference = l.forward(&affine.apply(x).unwrap(), drive).unwrap();
                let fused = l.forward_inference(x, drive, Some(&affine)).unwrap();
                assert_eq!(fused.dims(), &[t * b, c, 2, 3]);
                let r: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
                let f: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(r, f, "{params:?} {drive:?}");
                assert!(r.contains(&1.0) && r.contains(&0.0));
                let plain = l.forward_inference(x, drive, None).unwrap();
                let plain_ref = l.forward(x, drive).unwrap();
                assert_eq!(
                    plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    plain_ref.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
        }
    }

    #[test]
    fn fused_backward_equals_the_tensor_graphs_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (t, b, c, hw) = (4usize, 3usize, 5usize, 6usize);
        let dev = Device::Cpu;
        for params in [
            LifParams::default(),
            LifParams {
                surrogate: SurrogateKind::Atan,
                alpha: 2.0,
                ..LifParams::default()
            },
            LifParams {
                surrogate: SurrogateKind::Triangle,
                alpha: 1.0,
                ..LifParams::default()
            },
            LifParams {
                v_reset: -0.3,
                decay_input: false,
                tau: 3.0,
                ..LifParams::default()
            },
        ] {
            let l = Lif::new(params, t).unwrap();
            for drive in [Drive::EveryStep, Drive::Constant] {
                let rows = if drive == Drive::Constant { b } else { t * b };
                let xs: Vec<f32> = (0..rows * c * hw)
                    .map(|_| rng.random_range(-1.0f32..3.0))
                    .collect();
                let gs: Vec<f32> = (0..t * b * c * hw)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                let x = Var::from_vec(xs, (rows, c, hw), &dev).unwrap();
                let g = Tensor::from_vec(gs, (t * b, c, hw), &dev).unwrap();
                let fused = l.forward(x.as_tensor(), drive).unwrap();
                let graph = l.forward_graph(x.as_tensor(), drive).unwrap();
                let fv: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
                let gv: Vec<f32> = graph.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(fv, gv, "{params:?} {drive:?}: spikes");
                let grad = |y: &Tensor| {
                    let gr = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                    let v: Vec<f32> = gr
                        .get(x.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    v
                };
                let (a, r) = (grad(&fused), grad(&graph));
                assert!(r.iter().any(|v| v.abs() > 1e-3));
                for (i, (a, r)) in a.iter().zip(&r).enumerate() {
                    assert!(
                        (a - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{params:?} {drive:?} [{i}]: fused {a} vs graph {r}"
                    );
                }
                // With a constant channel affine in front.
                let scale: Vec<f32> = (0..c).map(|_| rng.random_range(0.2f32..2.0)).collect();
                let shift: Vec<f32> = (0..c).map(|_| rng.random_range(-0.5f32..0.5)).collect();
                let affine = ChannelAffine {
                    scale: Tensor::new(scale.as_slice(), &dev).unwrap(),
                    shift: Tensor::new(shift.as_slice(), &dev).unwrap(),
                };
                let fused = l
                    .forward_affine_const(x.as_tensor(), drive, &affine)
                    .unwrap();
                let graph = l
                    .forward_graph(&affine.apply(x.as_tensor()).unwrap(), drive)
                    .unwrap();
                let (fa, ga) = (grad(&fused), grad(&graph));
                for (i, (a, r)) in fa.iter().zip(&ga).enumerate() {
                    assert!(
                        (a - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{params:?} {drive:?} affine [{i}]: fused {a} vs graph {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_constants_are_refused_naming_the_field() {
        let err = Lif::new(
            LifParams {
                tau: 0.5,
                ..LifParams::default()
            },
            4,
        )
        .unwrap_err();
        assert!(err.to_string().contains("lif.tau"), "{err}");
        assert_eq!(
            Lif::new(LifParams::default(), 0),
            Err(LifError::NoTimesteps)
        );
    }
}
