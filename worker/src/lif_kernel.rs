//! The fused LIF GPU kernels' parameters and their CPU twin.
//!
//! `worker/cuda/lif.cu` holds two CUDA kernels, one thread per neuron:
//! - `ccsrp_lif_forward`: the T-step neuron loop, each membrane potential in a register, each input
//!   read once and each spike written once;
//! - `ccsrp_lif_backward`: backpropagation through time with the surrogate gradient (the
//!   potentials recomputed forward into a scratch buffer, then one reverse loop).
//!
//! [`LifKernelArgs`] derives every kernel argument from a [`Lif`] layer, its [`Drive`], the optional
//! constant channel affine and the input's dims; the CUDA launch (`lif_cuda`, `cuda` feature) and
//! the twin here both take them from it. [`forward_twin`] and [`backward_twin`] run the kernels'
//! per-neuron loops in Rust, operation for operation in the same f32 order, so the normal CPU build
//! tests the kernels' algorithm against `lif.rs`'s fused CPU op (the reference), and
//! `bench/gpu-check.sh` compares the GPU's results with the twin's.

use crate::lif::{Drive, Lif, SurrogateKind};

/// `surrogate` argument of `ccsrp_lif_backward`: sigmoid (`SURROGATE_SIGMOID` in lif.cu).
pub const SURROGATE_SIGMOID: i32 = 0;
/// `surrogate` argument: atan.
pub const SURROGATE_ATAN: i32 = 1;
/// `surrogate` argument: triangle.
pub const SURROGATE_TRIANGLE: i32 = 2;

/// Every argument of the two kernels but the buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct LifKernelArgs {
    /// Rows (images) per step.
    pub rows: usize,
    /// Neurons per step (`rows * per_row`).
    pub m: usize,
    pub t_steps: usize,
    /// The input is `[m]`, the same current at every step (else `[T, m]`).
    pub constant_drive: bool,
    /// A per-channel affine `x * scale[c] + shift[c]` (held constant) is applied to the current.
    pub has_affine: bool,
    /// Channels of the affine (1 without one).
    pub channels: usize,
    /// Values per channel block (`H * W`; `per_row` without an affine).
    pub spatial: usize,
    pub v_reset: f32,
    pub v_threshold: f32,
    pub inv_tau: f32,
    pub nonzero_reset: bool,
    pub decay_input: bool,
    /// `SURROGATE_*`.
    pub surrogate: i32,
    pub alpha: f32,
    /// `dh/dx`: `1/tau` with `decay_input`, else 1.
    pub dh_dx: f32,
    /// `dh/dv_prev = 1 - 1/tau`.
    pub dv_dvprev: f32,
}

impl LifKernelArgs {
    /// The arguments for `lif` on an input of `dims` (`[T*B, ...]`, or `[B, ...]` for a constant
    /// drive), with an affine of `affine_lens` (its scale's and shift's lengths) in front. Errors:
    /// rows not a multiple of T, an affine whose length is not the channel count.
    pub fn new(
        lif: &Lif,
        drive: Drive,
        affine_lens: Option<(usize, usize)>,
        dims: &[usize],
    ) -> candle_core::Result<LifKernelArgs> {
        let Some((&rows, rest)) = dims.split_first() else {
            candle_core::bail!("fused LIF kernel: input has no dimensions");
        };
        let t_steps = lif.timesteps();
        let rows = match drive {
            Drive::Constant => rows,
            Drive::EveryStep if rows.is_multiple_of(t_steps) => rows / t_steps,
            Drive::EveryStep => {
                candle_core::bail!("LIF input has {rows} rows, not a multiple of T = {t_steps}")
            }
        };
        let per_row: usize = rest.iter().product();
        let (channels, spatial) = match affine_lens {
            Some((scales, shifts)) => {
                let c = rest.first().copied().unwrap_or(0);
                if scales != c || shifts != c || c == 0 {
                    candle_core::bail!(
                        "channel affine has {scales} scales and {shifts} shifts for {c} channels"
                    );
                }
                (c, per_row / c)
            }
            None => (1, per_row),
        };
        let p = lif.params();
        let inv_tau = (1.0 / p.tau) as f32;
        Ok(LifKernelArgs {
            rows,
            m: rows * per_row,
            t_steps,
            constant_drive: drive == Drive::Constant,
            has_affine: affine_lens.is_some(),
            channels,
            spatial: spatial.max(1),
            v_reset: p.v_reset as f32,
            v_threshold: p.v_threshold as f32,
            inv_tau,
            nonzero_reset: p.v_reset != 0.0,
            decay_input: p.decay_input,
            surrogate: match p.surrogate {
                SurrogateKind::Sigmoid => SURROGATE_SIGMOID,
                SurrogateKind::Atan => SURROGATE_ATAN,
                SurrogateKind::Triangle => SURROGATE_TRIANGLE,
            },
            alpha: p.alpha as f32,
            dh_dx: if p.decay_input { inv_tau } else { 1.0 },
            dv_dvprev: 1.0 - inv_tau,
        })
    }

    /// Input values the kernels read: `m` for a constant drive, else `T * m`.
    pub fn input_len(&self) -> usize {
        if self.constant_drive {
            self.m
        } else {
            self.t_steps * self.m
        }
    }

    /// `(scale, shift)` of neuron `i`'s channel, `(1, 0)` without an affine (lif.cu's prologue).
    fn channel_affine(&self, affine: Affine<'_>, i: usize) -> (f32, f32) {
        match affine {
            Some((scale, shift)) => {
                let ch = (i / self.spatial) % self.channels;
                (scale[ch], shift[ch])
            }
            None => (1.0, 0.0),
        }
    }

    /// `lif_charge`.
    fn charge(&self, v: f32, x: f32) -> f32 {
        let leak = if self.nonzero_reset {
            v - self.v_reset
        } else {
            v
        };
        if self.decay_input {
            v + ((x - leak) * self.inv_tau + 0.0)
        } else {
            (v - (leak * self.inv_tau + 0.0)) + x
        }
    }

    /// `lif_current`.
    fn current(&self, x: &[f32], i: usize, t: usize, a: f32, b: f32) -> f32 {
        let xi = if self.constant_drive {
            x[i]
        } else {
            x[t * self.m + i]
        };
        if self.has_affine {
            xi * a + b
        } else {
            xi
        }
    }

    /// `lif_surrogate`.
    fn surrogate(&self, h: f32) -> f32 {
        let (alpha, u) = (self.alpha, h - self.v_threshold);
        match self.surrogate {
            SURROGATE_SIGMOID => {
                let sg = 1.0 / (1.0 + (-alpha * u).exp());
                alpha * sg * (1.0 - sg)
            }
            SURROGATE_ATAN => {
                let z = std::f32::consts::FRAC_PI_2 * alpha * u;
                alpha / 2.0 / (1.0 + z * z)
            }
            _ => alpha * (1.0 - alpha * u.abs()).max(0.0),
        }
    }

    fn check_input(&self, what: &str, len: usize, expected: usize) -> candle_core::Result<()> {
        if len != expected {
            candle_core::bail!("fused LIF twin: {what} has {len} values, expected {expected}");
        }
        Ok(())
    }

    /// Checks `affine` is there exactly when the arguments say so, one value per channel.
    fn check_affine(&self, affine: Affine<'_>) -> candle_core::Result<()> {
        match affine {
            Some((scale, shift)) if self.has_affine => {
                self.check_input("affine scale", scale.len(), self.channels)?;
                self.check_input("affine shift", shift.len(), self.channels)
            }
            None if !self.has_affine => Ok(()),
            _ => candle_core::bail!(
                "fused LIF twin: the arguments {} an affine",
                if self.has_affine { "expect" } else { "have no" }
            ),
        }
    }
}

/// The optional `(scale, shift)` of the affine in front of the neurons.
pub type Affine<'a> = Option<(&'a [f32], &'a [f32])>;

/// `ccsrp_lif_forward` on the CPU: spikes `[T, m]` for the input `x` (with `affine` in front
/// when the arguments have one).
pub fn forward_twin(
    args: &LifKernelArgs,
    affine: Affine<'_>,
    x: &[f32],
) -> candle_core::Result<Vec<f32>> {
    args.check_input("input", x.len(), args.input_len())?;
    args.check_affine(affine)?;
    let (m, t_steps) = (args.m, args.t_steps);
    let mut spikes = vec![0f32; t_steps * m];
    for i in 0..m {
        let (a, b) = args.channel_affine(affine, i);
        let mut v = args.v_reset;
        for t in 0..t_steps {
            let h = args.charge(v, args.current(x, i, t, a, b));
            let fired = h >= args.v_threshold;
            spikes[t * m + i] = if fired { 1.0 } else { 0.0 };
            v = if fired { args.v_reset } else { h };
        }
    }
    Ok(spikes)
}

/// `ccsrp_lif_backward` on the CPU: the gradient of the input (`x`'s shape) from the gradient of
/// the spikes `[T, m]`.
pub fn backward_twin(
    args: &LifKernelArgs,
    affine: Affine<'_>,
    x: &[f32],
    grad_s: &[f32],
) -> candle_core::Result<Vec<f32>> {
    args.check_input("input", x.len(), args.input_len())?;
    args.check_affine(affine)?;
    let (m, t_steps) = (args.m, args.t_steps);
    args.check_input("spike gradient", grad_s.len(), t_steps * m)?;
    let mut grad_x = vec![0f32; args.input_len()];
    let mut hs = vec![0f32; t_steps * m];
    for i in 0..m {
        let (a, b) = args.channel_affine(affine, i);
        let mut v = args.v_reset;
        for t in 0..t_steps {
            let h = args.charge(v, args.current(x, i, t, a, b));
            hs[t * m + i] = h;
            v = if h >= args.v_threshold {
                args.v_reset
            } else {
                h
            };
        }
        let mut gv = 0f32;
        let mut gx_sum = 0f32;
        for t in (0..t_steps).rev() {
            let at = t * m + i;
            let h = hs[at];
            let gs = grad_s[at];
            let kh = args.surrogate(h);
            let s = if h >= args.v_threshold { 1.0 } else { 0.0 };
            let through_v = (1.0 - s) + (args.v_reset - h) * kh;
            let gh = gs * kh + gv * through_v;
            if args.constant_drive {
                gx_sum += gh * args.dh_dx;
            } else {
                let mut g = 0.0 + gh * args.dh_dx;
                if args.has_affine {
                    g *= a;
                }
                grad_x[at] = g;
            }
            gv = gh * args.dv_dvprev;
        }
        if args.constant_drive {
            grad_x[i] = if args.has_affine { gx_sum * a } else { gx_sum };
        }
    }
    Ok(grad_x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lif::{ChannelAffine, LifParams};
    use candle_core::{Device, Tensor, Var};
    use rand::{Rng, SeedableRng};

    fn params_under_test() -> Vec<LifParams> {
        vec![
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
        ]
    }

    /// The twin against lif.rs's fused CPU op (itself tested against the tensor graph): spikes
    /// identical, gradients within 1e-6, for every surrogate, both drives, with and without the
    /// constant channel affine.
    #[test]
    fn twin_equals_the_fused_cpu_op_forward_and_backward() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        let (t, b, c, hw) = (5usize, 3usize, 4usize, 6usize);
        let dev = Device::Cpu;
        for params in params_under_test() {
            let l = Lif::new(params, t).unwrap();
            for drive in [Drive::EveryStep, Drive::Constant] {
                for with_affine in [false, true] {
                    let rows = if drive == Drive::Constant { b } else { t * b };
                    let xs: Vec<f32> = (0..rows * c * hw)
                        .map(|_| rng.random_range(-1.0f32..3.0))
                        .collect();
                    let gs: Vec<f32> = (0..t * b * c * hw)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect();
                    let scale: Vec<f32> = (0..c).map(|_| rng.random_range(0.2f32..2.0)).collect();
                    let shift: Vec<f32> = (0..c).map(|_| rng.random_range(-0.5f32..0.5)).collect();
                    let affine = ChannelAffine {
                        scale: Tensor::new(scale.as_slice(), &dev).unwrap(),
                        shift: Tensor::new(shift.as_slice(), &dev).unwrap(),
                    };
                    let x = Var::from_vec(xs.clone(), (rows, c, 2, 3), &dev).unwrap();
                    let g = Tensor::from_vec(gs.clone(), (t * b, c, 2, 3), &dev).unwrap();
                    let spikes = if with_affine {
                        l.forward_affine_const(x.as_tensor(), drive, &affine)
                    } else {
                        l.forward(x.as_tensor(), drive)
                    }
                    .unwrap();
                    let grads = spikes
                        .mul(&g)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    let reference_grad: Vec<f32> = grads
                        .get(x.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let reference: Vec<f32> = spikes.flatten_all().unwrap().to_vec1().unwrap();

                    let args = LifKernelArgs::new(
                        &l,
                        drive,
                        with_affine.then_some((c, c)),
                        &[rows, c, 2, 3],
                    )
                    .unwrap();
                    let host_affine = with_affine.then_some((&scale[..], &shift[..]));
                    let twin = forward_twin(&args, host_affine, &xs).unwrap();
                    let what = format!("{params:?} {drive:?} affine {with_affine}");
                    assert_eq!(twin, reference, "{what}: spikes");
                    assert!(twin.contains(&1.0) && twin.contains(&0.0), "{what}");
                    let twin_grad = backward_twin(&args, host_affine, &xs, &gs).unwrap();
                    assert_eq!(twin_grad.len(), reference_grad.len());
                    assert!(reference_grad.iter().any(|v| v.abs() > 1e-3), "{what}");
                    for (i, (a, r)) in twin_grad.iter().zip(&reference_grad).enumerate() {
                        assert!(
                            (a - r).abs() <= 1e-6 * (1.0 + r.abs()),
                            "{what} [{i}]: twin {a} vs fused op {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn arguments_follow_the_layer_and_refuse_bad_shapes() {
        let l = Lif::new(LifParams::default(), 4).unwrap();
        let a = LifKernelArgs::new(&l, Drive::EveryStep, None, &[8, 3, 2, 2]).unwrap();
        assert_eq!((a.m, a.t_steps, a.channels, a.spatial), (24, 4, 1, 12));
        assert_eq!((a.inv_tau, a.dh_dx, a.dv_dvprev), (0.5, 0.5, 0.5));
        assert_eq!(a.input_len(), 96);
        let affine = Some((3, 3));
        let c = LifKernelArgs::new(&l, Drive::Constant, affine, &[2, 3, 2, 2]).unwrap();
        assert_eq!((c.m, c.channels, c.spatial, c.input_len()), (24, 3, 4, 24));
        let err = LifKernelArgs::new(&l, Drive::EveryStep, None, &[6, 3]).unwrap_err();
        assert!(err.to_string().contains("not a multiple of T = 4"), "{err}");
        let err = LifKernelArgs::new(&l, Drive::Constant, affine, &[2, 5, 2]).unwrap_err();
        assert!(err.to_string().contains("for 5 channels"), "{err}");
        let err = forward_twin(&a, None, &[0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("expected 96"), "{err}");
        let err = forward_twin(&c, None, &[0.0; 24]).unwrap_err();
        assert!(err.to_string().contains("expect an affine"), "{err}");
        let (scale, shift) = ([1.0f32; 2], [0.0f32; 3]);
        let err = forward_twin(&c, Some((&scale, &shift)), &[0.0; 24]).unwrap_err();
        assert!(
            err.to_string().contains("affine scale has 2 values"),
            "{err}"
        );
    }
}
