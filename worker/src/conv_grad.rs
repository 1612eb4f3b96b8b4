//! Convolution gradients as forward operations, for the GPU.
//!
//! candle differentiates `conv2d` with its own `conv_transpose2d` for the input gradient (30-37 ms
//! per large VGG layer on an H200) and, in the cuDNN build, a naive direct kernel for the weight
//! gradient (117-433 ms). [`conv_same`] computes the same convolution (stride 1, "same" padding,
//! square odd kernel) with the same forward value but its own backward, made only of operations
//! that are fast on a GPU:
//! - input gradient: the forward convolution of the output gradient with the flipped,
//!   channel-transposed kernel ([`flipped_transposed`]), padding `k - 1 - p = p`: cuDNN's forward
//!   convolution in a `cudnn` build;
//! - weight gradient (only when asked): cuDNN's backward-filter in a `cudnn` build on a CUDA device
//!   (`conv_cudnn`); otherwise, and as its CPU counterpart, for each of the `k*k` taps one matrix
//!   multiply `dW[:, :, ky, kx] = G [O, N*H*W] · X_shift(ky, kx)ᵀ [N*H*W, C]` (cuBLAS on a GPU),
//!   `X_shift` the zero-padded input shifted by the tap ([`weight_grad`]).
//!
//! The forward value is candle's `conv2d` of the detached operands (cuDNN in a `cudnn` build); a
//! custom op ([`ForwardGrads`]) attaches the backward to it (its forward copies that value: one
//! memory pass, against a transposed convolution in the backward). Everything is plain tensor
//! operations, so the CPU build tests it against candle's own gradients; `conv.rs` uses it on CUDA
//! devices only (the CPU has its own im2col and fixed-order kernels).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// `conv2d(x, w, padding (k-1)/2, stride 1)` for `x` `[N, C, H, W]` and `w` `[O, C, k, k]` (k odd),
/// differentiable w.r.t. `x` and, with `weight_grad`, w.r.t. `w`, through forward ops only.
pub fn conv_same(x: &Tensor, w: &Tensor, weight_grad: bool) -> candle_core::Result<Tensor> {
    let padding = same_padding(x, w)?;
    let y = x
        .detach()
        .conv2d(&w.detach(), padding, 1, 1, 1)?
        .contiguous()?;
    let w_arg = if weight_grad { w.clone() } else { w.detach() };
    x.apply_op3(&w_arg, &y, ForwardGrads { weight_grad })
}

/// The padding of a "same" convolution of `w` over `x`, checking the shapes fit.
fn same_padding(x: &Tensor, w: &Tensor) -> candle_core::Result<usize> {
    let (_, c, _, _) = x.dims4()?;
    let (_, cin, kh, kw) = w.dims4()?;
    if cin != c || kh != kw || kh % 2 == 0 {
        candle_core::bail!(
            "same-padding convolution: kernel {:?} over input {:?} (expected [out, {c}, k, k], k odd)",
            w.dims(),
            x.dims()
        );
    }
    Ok((kh - 1) / 2)
}

/// `w` `[O, C, k, k]` as the kernel of its adjoint: `[C, O, k, k]` with both spatial axes
/// reversed (`out[c, o, ky, kx] = w[o, c, k-1-ky, k-1-kx]`).
pub fn flipped_transposed(w: &Tensor) -> candle_core::Result<Tensor> {
    let k = w.dim(2)?;
    let reversed: Vec<u32> = (0..k as u32).rev().collect();
    let idx = Tensor::new(reversed.as_slice(), w.device())?;
    w.transpose(0, 1)?
        .contiguous()?
        .index_select(&idx, 2)?
        .index_select(&idx, 3)?
        .contiguous()
}

/// The input gradient of the "same" convolution: `conv2d(grad, flipped_transposed(w))`.
pub fn input_grad(grad: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let padding = (w.dim(2)? - 1) / 2;
    grad.conv2d(&flipped_transposed(w)?, padding, 1, 1, 1)
}

/// The weight gradient `[O, C, k, k]` of the "same" convolution, one matrix multiply per tap.
pub fn weight_grad(x: &Tensor, grad: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let o = grad.dim(1)?;
    let p = (k - 1) / 2;
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let g = grad
        .transpose(0, 1)?
        .contiguous()?
        .reshape((o, n * h * wd))?;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let shifted = padded
                .narrow(2, ky, h)?
                .narrow(3, kx, wd)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((c, n * h * wd))?;
            taps.push(g.matmul(&shifted.t()?)?);
        }
    }
    Tensor::stack(&taps, 2)?.reshape((o, c, k, k))
}

/// The weight gradient where it is computed: through cuDNN's backward-filter on a CUDA device in a
/// `cudnn` build (`conv_cudnn`), else [`weight_grad`].
fn weight_grad_on_device(x: &Tensor, grad: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if x.device().is_cuda() {
        let op = crate::conv_cudnn::WeightGrad {
            k,
            padding: (k - 1) / 2,
        };
        return x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op);
    }
    weight_grad(x, grad, k)
}

/// Identity on the precomputed forward value (third operand) whose backward is [`input_grad`] and,
/// with `weight_grad`, [`weight_grad`].
struct ForwardGrads {
    weight_grad: bool,
}

/// A copy of the contiguous, offset-0 value operand.
fn copy_value<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    if l.contiguous_offsets() != Some((0, l.shape().elem_count())) {
        candle_core::bail!("conv_same: the forward value must be contiguous from offset 0");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

impl CustomOp3 for ForwardGrads {
    fn name(&self) -> &'static str {
        "conv-same-forward-grads"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        y_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_value(y, y_layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        y_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy_value(y, y_layout)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = input_grad(grad, &w.detach())?;
        let gw = if self.weight_grad {
            Some(weight_grad_on_device(&x.detach(), grad, w.dim(2)?)?)
        } else {
            None
        };
        Ok((Some(gx), gw, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn flipped_transposed_kernel_is_indexed_as_documented() {
        let w = random(&[2, 3, 3, 3], 1);
        let f = flipped_transposed(&w).unwrap();
        assert_eq!(f.dims(), &[3, 2, 3, 3]);
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let fv: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
        for o in 0..2 {
            for c in 0..3 {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let got = fv[((c * 2 + o) * 3 + ky) * 3 + kx];
                        let want = wv[((o * 3 + c) * 3 + (2 - ky)) * 3 + (2 - kx)];
                        assert_eq!(got, want, "o {o} c {c} ky {ky} kx {kx}");
                    }
                }
            }
        }
    }

    /// Forward value and both gradients against candle's own conv2d and its autograd, for 3x3 and
    /// 5x5 kernels and non-square images.
    #[test]
    fn value_and_gradients_equal_candles_conv2d() {
        for (k, (n, c, o, h, wd)) in [
            (3, (2, 3, 4, 6, 5)),
            (5, (3, 2, 3, 7, 7)),
            (1, (2, 4, 2, 3, 3)),
        ] {
            let x = Var::from_tensor(&random(&[n, c, h, wd], 2)).unwrap();
            let w = Var::from_tensor(&random(&[o, c, k, k], 3)).unwrap();
            let g = random(&[n, o, h, wd], 4);
            let reference = x
                .as_tensor()
                .conv2d(w.as_tensor(), (k - 1) / 2, 1, 1, 1)
                .unwrap();
            let ours = conv_same(x.as_tensor(), w.as_tensor(), true).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(
                max_rel_err(&ours, &reference) == 0.0,
                "k {k}: forward value"
            );
            let grads = |y: &Tensor| y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let (gr, go) = (grads(&reference), grads(&ours));
            let (rx, ox) = (
                gr.get(x.as_tensor()).unwrap(),
                go.get(x.as_tensor()).unwrap(),
            );
            let (rw, ow) = (
                gr.get(w.as_tensor()).unwrap(),
                go.get(w.as_tensor()).unwrap(),
            );
            assert!(
                max_rel_err(ox, rx) < 1e-5,
                "k {k}: input gradient {}",
                max_rel_err(ox, rx)
            );
            assert!(
                max_rel_err(ow, rw) < 1e-5,
                "k {k}: weight gradient {}",
                max_rel_err(ow, rw)
            );
            // Without the weight gradient: the same input gradient, none for the weight.
            let only_x = conv_same(x.as_tensor(), w.as_tensor(), false).unwrap();
            let gi = grads(&only_x);
            assert!(max_rel_err(gi.get(x.as_tensor()).unwrap(), rx) < 1e-5);
            assert!(gi.get(w.as_tensor()).is_none());
        }
    }

    #[test]
    fn shapes_that_are_not_a_same_convolution_are_refused() {
        let x = random(&[1, 3, 4, 4], 5);
        let err = conv_same(&x, &random(&[2, 3, 2, 2], 6), false).unwrap_err();
        assert!(err.to_string().contains("k odd"), "{err}");
        let err = conv_same(&x, &random(&[2, 4, 3, 3], 6), false).unwrap_err();
        assert!(err.to_string().contains("[out, 3, k, k]"), "{err}");
    }
}
