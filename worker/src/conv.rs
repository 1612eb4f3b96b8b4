//! The 3x3 same-padding convolution of the VGG layers on the CPU.
//!
//! On the CPU, candle's direct convolution is an order of magnitude slower than im2col + one large
//! matrix multiply (candle's gemm is blocked and multi-threaded), so both passes unroll the
//! input into columns `[C*9, N*H*W]` and multiply `[out, C*9]` by them; the backward of the
//! unrolling is its adjoint (col2im). Other devices use candle's
//! `conv2d` (cuDNN/CUDA kernels). Results equal `conv2d` up to float summation order.
//!
//! The attacks' convolution ([`conv3x3_input_grad`]) instead runs on the fixed-order kernels of
//! [`crate::event_conv`] both ways (its backward is the convolution of the output gradient with
//! the flipped, transposed kernel), as does inference (`SnnModel::run_inference`).
//!
//! On a CUDA device the differentiable convolutions ([`conv3x3_graph`], [`conv3x3_input_grad`])
//! go through [`crate::conv_grad::conv_same`]: candle's (cuDNN) forward with the input gradient as
//! a forward convolution and the weight gradient through cuDNN's backward-filter (one matrix
//! multiply per tap without cuDNN), instead of candle's slow transposed-convolution and direct
//! weight-gradient kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_buffer::contiguous_f32;
use crate::event_conv::{FoldedConv, KernelChoice};

/// `conv2d(x, w, padding 1, stride 1)` for `x` `[N, C, H, W]` and `w` `[out, C, 3, 3]`, no graph.
pub(crate) fn conv3x3(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !im2col_applies(x, w)? {
        return x.conv2d(w, 1, 1, 1, 1);
    }
    im2col_conv(x, w, false)
}

/// `conv2d(x, w, padding 1, stride 1)` with an autograd graph: im2col (whose backward is col2im)
/// and a matrix multiply, so backward passes also run on gemm.
pub(crate) fn conv3x3_graph(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if forward_grads_apply(x, w)? {
        return crate::conv_grad::conv_same(x, w, true);
    }
    if !im2col_applies(x, w)? {
        return x.conv2d(w, 1, 1, 1, 1);
    }
    im2col_conv(x, w, true)
}

/// Whether [`crate::conv_grad::conv_same`] serves `x` and `w`: a CUDA tensor and a 3x3 kernel
/// over its channels (padding 1 is then its "same" padding).
fn forward_grads_apply(x: &Tensor, w: &Tensor) -> candle_core::Result<bool> {
    let (_, c, _, _) = x.dims4()?;
    let (_, cin, kh, kw) = w.dims4()?;
    Ok(x.device().is_cuda() && (cin, kh, kw) == (c, 3, 3))
}

/// `conv2d(x, w, padding 1, stride 2)` with an autograd graph (a residual network's downsampling
/// conv): the stride-1 im2col columns at every second row and column (output side `ceil(H/2)`),
/// then one gemm, so the multiplies are those of the strided conv.
pub(crate) fn conv3x3_stride2_graph(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !im2col_applies(x, w)? {
        candle_core::bail!(
            "conv3x3_stride2_graph: a CPU tensor and a 3x3 kernel over its channels"
        );
    }
    let (n, c, h, wd) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), wd.div_ceil(2));
    let out = w.dim(0)?;
    let cols = x.contiguous()?.apply_op1(Im2Col3x3)?;
    let keep: Vec<u32> = (0..n)
        .flat_map(|img| {
            (0..ho)
                .flat_map(move |y| (0..wo).map(move |x| (img * h * wd + 2 * y * wd + 2 * x) as u32))
        })
        .collect();
    let cols = cols.index_select(&Tensor::new(keep.as_slice(), x.device())?, 1)?;
    let y = w.reshape((out, c * 9))?.matmul(&cols)?;
    y.reshape((out, n, ho * wo))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, out, ho, wo))
}

/// Whether the im2col path serves `x` and `w`: a CPU tensor and a 3x3 kernel over its channels.
fn im2col_applies(x: &Tensor, w: &Tensor) -> candle_core::Result<bool> {
    let (_, c, _, _) = x.dims4()?;
    let (_, cin, kh, kw) = w.dims4()?;
    Ok(x.device().is_cpu() && (cin, kh, kw) == (c, 3, 3))
}

/// im2col + one gemm; `graph` records the unrolling for autograd (its backward is col2im).
fn im2col_conv(x: &Tensor, w: &Tensor, graph: bool) -> candle_core::Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let out = w.dim(0)?;
    let x = x.contiguous()?;
    let cols = if graph {
        x.apply_op1(Im2Col3x3)?
    } else {
        x.apply_op1_no_bwd(&Im2Col3x3)?
    };
    let y = w.reshape((out, c * 9))?.matmul(&cols)?;
    y.reshape((out, n, h * wd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, out, h, wd))
}

/// `conv2d(x, w, padding 1, stride 1)` differentiable w.r.t. `x` only (`w` held constant), for
/// attacks: the backward pass is `col2im(wᵀ · dy)`. (Through [`conv3x3_graph`], candle's matmul
/// backward would also compute the weight gradient, a second gemm as large as the forward one.)
pub(crate) fn conv3x3_input_grad(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if forward_grads_apply(x, w)? {
        return crate::conv_grad::conv_same(x, w, false);
    }
    if !im2col_applies(x, w)? {
        return x.conv2d(&w.detach(), 1, 1, 1, 1);
    }
    let (out, c, _, _) = w.dims4()?;
    let values = w.detach().flatten_all()?.to_vec1::<f32>()?;
    // The backward is the convolution of dy with the flipped, transposed kernel:
    // flipped[ci, o, ky, kx] = w[o, ci, 2 - ky, 2 - kx].
    let mut flipped = vec![0f32; values.len()];
    for o in 0..out {
        for ci in 0..c {
            for tap in 0..9 {
                flipped[(ci * out + o) * 9 + 8 - tap] = values[(o * c + ci) * 9 + tap];
            }
        }
    }
    let plain = |weights: &[f32], dims: (usize, usize)| {
        FoldedConv::new(weights, dims, &vec![1.0; dims.0], &vec![0.0; dims.0])
            .map_err(candle_core::Error::Msg)
    };
    x.contiguous()?.apply_op1(ConstantWeightConv3x3 {
        forward: plain(&values, (out, c))?,
        backward: plain(&flipped, (c, out))?,
    })
}

/// [`conv3x3`] as one op with the input-only backward of [`conv3x3_input_grad`], both passes on the
/// fixed-order kernels of [`crate::event_conv`] (sparse spikes forward, dense gradients backward).
struct ConstantWeightConv3x3 {
    forward: FoldedConv,
    backward: FoldedConv,
}

impl CustomOp1 for ConstantWeightConv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3-constant-weight"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = contiguous_f32(storage, layout, "conv3x3 input")?;
        let (n, _, h, w) = layout.shape().dims4()?;
        let y = self
            .forward
            .forward(data, (h, w), KernelChoice::ByRate)
            .map_err(candle_core::Error::Msg)?;
        let shape = Shape::from((n, self.forward.out_channels(), h, w));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward.apply(&grad_res.contiguous()?)?))
    }
}

/// Unrolls `[N, C, H, W]` into `[C*9, N*H*W]`: row `c*9 + ky*3 + kx` holds, for every output pixel,
/// the input at offset `(ky-1, kx-1)` (zero outside the image).
struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col-3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "im2col input")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let plane = h * w;
        let m = n * plane;
        let mut cols = vec![0f32; c * 9 * m];
        // Rows are disjoint: one parallel work item per row.
        cols.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let (ci, ky, kx) = (r / 9, (r % 9) / 3, r % 3);
                for img in 0..n {
                    let src = &x[(img * c + ci) * plane..][..plane];
                    let dst = &mut row[img * plane..][..plane];
                    for y in 0..h {
                        let sy = y + ky;
                        if sy < 1 || sy > h {
                            continue;
                        }
                        let src_row = &src[(sy - 1) * w..][..w];
                        let dst_row = &mut dst[y * w..][..w];
                        match kx {
                            0 => dst_row[1..].copy_from_slice(&src_row[..w - 1]),
                            1 => dst_row.copy_from_slice(src_row),
                            _ => dst_row[..w - 1].copy_from_slice(&src_row[1..]),
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((c * 9, m))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let grad = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Col2Im3x3 { n, c, h, w })?;
        Ok(Some(grad))
    }
}

/// The adjoint of [`Im2Col3x3`]: sums every column entry back onto the input pixel it came from.
struct Col2Im3x3 {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "col2im-3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, "col2im input")?;
        let Col2Im3x3 { n, c, h, w } = *self;
        let plane = h * w;
        let m = n * plane;
        if cols.len() != c * 9 * m {
            candle_core::bail!("col2im: {} values for {c}x9 rows of {m}", cols.len());
        }
        let mut x = vec![0f32; n * c * plane];
        // Images are disjoint: one parallel work item per image (the sum order per pixel is fixed).
        x.par_chunks_mut((c * plane).max(1))
            .enumerate()
            .for_each(|(img, image)| {
                for ci in 0..c {
                    for ky in 0..3usize {
                        for kx in 0..3usize {
                            let row = &cols[(ci * 9 + ky * 3 + kx) * m..][..m];
                            {
                                let src = &row[img * plane..][..plane];
                                let dst = &mut image[ci * plane..][..plane];
                                for y in 0..h {
                                    let sy = y + ky;
                                    if sy < 1 || sy > h {
                                        continue;
                                    }
                                    let src_row = &src[y * w..][..w];
                                    let dst_row = &mut dst[(sy - 1) * w..][..w];
                                    let (d, s) = match kx {
                                        0 => (&mut dst_row[..w - 1], &src_row[1..]),
                                        1 => (&mut dst_row[..], src_row),
                                        _ => (&mut dst_row[1..], &src_row[..w - 1]),
                                    };
                                    d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(x), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    #[test]
    fn im2col_convolution_equals_candles_conv2d() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (n, c, h, w, out) in [(2, 3, 5, 4, 4), (3, 2, 1, 1, 2), (1, 4, 2, 7, 3)] {
            let xv: Vec<f32> = (0..n * c * h * w)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let wv: Vec<f32> = (0..out * c * 9)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let x = Tensor::from_vec(xv, (n, c, h, w), &Device::Cpu).unwrap();
            let k = Tensor::from_vec(wv, (out, c, 3, 3), &Device::Cpu).unwrap();
            let a = conv3x3(&x, &k).unwrap();
            let b = x.conv2d(&k, 1, 1, 1, 1).unwrap();
            assert_eq!(a.dims(), b.dims());
            let d = a.sub(&b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{n}x{c}x{h}x{w}");
        }
    }

    #[test]
    fn graph_convolution_gradients_equal_candles_conv2d_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (n, c, h, w, out) = (2, 3, 5, 4, 4);
        let xv: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let wv: Vec<f32> = (0..out * c * 9)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let gv: Vec<f32> = (0..n * out * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let x = candle_core::Var::from_vec(xv, (n, c, h, w), &Device::Cpu).unwrap();
        let k = candle_core::Var::from_vec(wv, (out, c, 3, 3), &Device::Cpu).unwrap();
        let g = Tensor::from_vec(gv, (n, out, h, w), &Device::Cpu).unwrap();
        let ours = conv3x3_graph(x.as_tensor(), k.as_tensor()).unwrap();
        let reference = x.as_tensor().conv2d(k.as_tensor(), 1, 1, 1, 1).unwrap();
        let go = ours.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = reference
            .mul(&g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let constant = conv3x3_input_grad(x.as_tensor(), k.as_tensor()).unwrap();
        let gc = constant
            .mul(&g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(gc.get(k.as_tensor()).is_none(), "no weight gradient");
        let d = gc
            .get(x.as_tensor())
            .unwrap()
            .sub(gr.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "input gradient difference {d}");
        for v in [&x, &k] {
            let d = go
                .get(v.as_tensor())
                .unwrap()
                .sub(gr.get(v.as_tensor()).unwrap())
                .unwrap();
            let d = d
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "gradient difference {d}");
        }
    }
}
