//! The inference convolutions on the CPU: batch norm folded into the conv, one fixed summation
//! order per output, and an event-driven path for sparse (spike) inputs.
//!
//! [`FoldedConv`] is a 3x3 same-padding convolution with batch norm folded in
//! (`w' = w * scale`, bias `shift`). Every output is summed over its inputs in one order,
//! `k = c*9 + ky*3 + kx` ascending, each term added with one fused multiply-add
//! (`acc = x.mul_add(w, acc)`), then the bias is added. Two kernels keep that order:
//! - **dense**: im2col rows and a register-tiled kernel (16 pixels x 6 output channels per tile);
//! - **event-driven**: for every nonzero input (a spike, or a pooled spike), in channel then raster
//!   order, its weight columns are accumulated into the 9 outputs it reaches. An output sees its
//!   inputs in the same `k` order as the dense kernel, and a zero input adds nothing in the dense
//!   kernel either (`0 * w + acc = acc`), so both kernels give the same bits.
//!
//! Each row (one image at one time step) is computed by one thread, rows are spread over the
//! current rayon pool, and no sum is split across threads: results do not depend on the thread
//! count or the batch size, nor on which kernel ran. A row takes the event-driven kernel when its
//! fraction of nonzero inputs is below [`EVENT_RATE_LIMIT`] (measured break-even), so a densely
//! firing layer never gets slower.
//!
//! [`FoldedLinear`] is the classifier in the same spirit: inputs in ascending order, zeros skipped.
//!
//! On x86_64 with AVX-512 or AVX2 and FMA (checked at run time) the kernels use 16- or 8-wide
//! fused multiply-adds; elsewhere scalar `f32::mul_add` gives the same bits (vectors run across
//! pixels or output channels, never along a sum).

use candle_core::Tensor;
use rayon::prelude::*;

/// A row whose fraction of nonzero inputs is below this takes the event-driven kernel.
pub(crate) const EVENT_RATE_LIMIT: f32 = 0.25;

/// Output channels per tile of the dense kernel.
const TILE_OUT: usize = 6;
/// Pixels per tile of the dense kernel (two 16-wide or four 8-wide vectors).
const TILE_PIX: usize = 32;
/// Output channels are padded to this for the event kernel's weight rows (one 16-wide vector).
const LANES: usize = 16;

/// Which kernel a row takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelChoice {
    /// By the row's fraction of nonzero inputs ([`EVENT_RATE_LIMIT`]).
    ByRate,
    // Forced kernels, for the tests that compare them.
    #[cfg_attr(not(test), allow(dead_code))]
    Dense,
    #[cfg_attr(not(test), allow(dead_code))]
    Event,
}

/// A 3x3, padding-1 convolution with batch norm folded in, for inference.
pub(crate) struct FoldedConv {
    in_channels: usize,
    out_channels: usize,
    /// `[out/6 tiles][K][6]` (zero padded): the dense kernel's weight panels.
    panels: Vec<f32>,
    /// `[K][out padded to 8]`: the event kernel's weight rows.
    rows: Vec<f32>,
    bias: Vec<f32>,
}

impl FoldedConv {
    /// From conv weights `[out, in, 3, 3]` (flattened) and the batch norm's `scale` and `shift`
    /// (one per output channel).
    pub(crate) fn new(
        weight: &[f32],
        (out_channels, in_channels): (usize, usize),
        scale: &[f32],
        shift: &[f32],
    ) -> Result<FoldedConv, String> {
        let k = in_channels * 9;
        if weight.len() != out_channels * k
            || scale.len() != out_channels
            || shift.len() != out_channels
        {
            return Err(format!(
                "folded conv: expected {out_channels}x{in_channels}x3x3 weights and {out_channels} \
                 scales and shifts, got {} weights, {} scales, {} shifts",
                weight.len(),
                scale.len(),
                shift.len()
            ));
        }
        let tiles = out_channels.div_ceil(TILE_OUT);
        let mut panels = vec![0f32; tiles * k * TILE_OUT];
        let padded = out_channels.div_ceil(LANES) * LANES;
        let mut rows = vec![0f32; k * padded];
        for o in 0..out_channels {
            for kk in 0..k {
                let w = weight[o * k + kk] * scale[o];
                panels[((o / TILE_OUT) * k + kk) * TILE_OUT + o % TILE_OUT] = w;
                rows[kk * padded + o] = w;
            }
        }
        Ok(FoldedConv {
            in_channels,
            out_channels,
            panels,
            rows,
            bias: shift.to_vec(),
        })
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The convolution of a `[rows, in, h, w]` f32 tensor (its kernels chosen by spike rate).
    pub(crate) fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, _, h, w) = x.dims4()?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let y = self
            .forward(&values, (h, w), KernelChoice::ByRate)
            .map_err(candle_core::Error::Msg)?;
        Tensor::from_vec(y, (rows, self.out_channels, h, w), x.device())
    }

    /// `x` is `[rows, in, h, w]` (flattened); returns `[rows, out, h, w]`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        choice: KernelChoice,
    ) -> Result<Vec<f32>, String> {
        self.forward_on(x, (h, w), choice, Isa::detect())
    }

    fn forward_on(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        choice: KernelChoice,
        isa: Isa,
    ) -> Result<Vec<f32>, String> {
        let plane = h * w;
        let per_row = self.in_channels * plane;
        if per_row == 0 || !x.len().is_multiple_of(per_row) {
            return Err(format!(
                "folded conv: {} input values are not whole rows of {}x{h}x{w}",
                x.len(),
                self.in_channels
            ));
        }
        let out_row = self.out_channels * plane;
        let mut out = vec![0f32; x.len() / per_row * out_row];
        out.par_chunks_mut(out_row)
            .zip(x.par_chunks(per_row))
            .for_each_init(Vec::new, |scratch, (y, x)| {
                let event = match choice {
                    KernelChoice::Dense => false,
                    KernelChoice::Event => true,
                    KernelChoice::ByRate => {
                        let nonzero = x.iter().filter(|v| **v != 0.0).count();
                        (nonzero as f32) < EVENT_RATE_LIMIT * per_row as f32
                    }
                };
                if event {
                    self.event_row(x, (h, w), y, scratch, isa);
                } else {
                    self.dense_row(x, (h, w), y, scratch, isa);
                }
            });
        Ok(out)
    }

    /// One row by im2col and the tiled kernel; `y` is `[out, h*w]`.
    fn dense_row(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        y: &mut [f32],
        scratch: &mut Vec<f32>,
        isa: Isa,
    ) {
        let plane = h * w;
        let k = self.in_channels * 9;
        // Columns padded to whole tiles, plus one tile so rows do not alias in the cache.
        let stride = plane.div_ceil(TILE_PIX) * TILE_PIX + TILE_PIX;
        let cols_len = k * stride;
        let tiles = self.out_channels.div_ceil(TILE_OUT);
        let acc_len = tiles * TILE_OUT * stride;
        // Every value read is written first (im2col zeroes the padding), so no clearing.
        if scratch.len() < cols_len + acc_len {
            scratch.resize(cols_len + acc_len, 0.0);
        }
        let (cols, acc) = scratch.split_at_mut(cols_len);
        im2col_row(x, self.in_channels, (h, w), stride, cols);
        let pix_tiles = plane.div_ceil(TILE_PIX);
        for t in 0..tiles {
            let panel = &self.panels[t * k * TILE_OUT..][..k * TILE_OUT];
            let acc = &mut acc[t * TILE_OUT * stride..][..TILE_OUT * stride];
            for p in 0..pix_tiles {
                tile(cols, stride, p * TILE_PIX, panel, k, acc, isa);
            }
        }
        for (o, out) in y.chunks_exact_mut(plane).enumerate() {
            let bias = self.bias[o];
            let src = &acc[o * stride..][..plane];
            out.iter_mut().zip(src).for_each(|(d, s)| *d = s + bias);
        }
    }

    /// One row by scattering every nonzero input's weight columns; `y` is `[out, h*w]`.
    fn event_row(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        y: &mut [f32],
        scratch: &mut Vec<f32>,
        isa: Isa,
    ) {
        let plane = h * w;
        let padded = self.rows.len() / (self.in_channels * 9).max(1);
        scratch.clear();
        scratch.resize(plane * padded, 0.0);
        let acc = &mut scratch[..];
        for c in 0..self.in_channels {
            let channel = &x[c * plane..][..plane];
            for qy in 0..h {
                for qx in 0..w {
                    let v = channel[qy * w + qx];
                    if v == 0.0 {
                        continue;
                    }
                    // Input (qy, qx) reaches output (qy + 1 - ky, qx + 1 - kx) through tap (ky, kx).
                    for ky in 0..3 {
                        let Some(py) = (qy + 1).checked_sub(ky).filter(|py| *py < h) else {
                            continue;
                        };
                        for kx in 0..3 {
                            let Some(px) = (qx + 1).checked_sub(kx).filter(|px| *px < w) else {
                                continue;
                            };
                            let row = &self.rows[(c * 9 + ky * 3 + kx) * padded..][..padded];
                            let out = &mut acc[(py * w + px) * padded..][..padded];
                            axpy(v, row, out, isa);
                        }
                    }
                }
            }
        }
        for (o, out) in y.chunks_exact_mut(plane).enumerate() {
            let bias = self.bias[o];
            out.iter_mut()
                .enumerate()
                .for_each(|(p, d)| *d = acc[p * padded + o] + bias);
        }
    }
}

/// Unrolls one `[c, h, w]` image into `cols` `[c*9][stride]`: row `c*9 + ky*3 + kx` holds, for
/// every pixel, the input at offset `(ky-1, kx-1)` (zero outside the image and in the padding).
fn im2col_row(x: &[f32], channels: usize, (h, w): (usize, usize), stride: usize, cols: &mut [f32]) {
    let plane = h * w;
    for ci in 0..channels {
        let src = &x[ci * plane..][..plane];
        for ky in 0..3 {
            for kx in 0..3 {
                let (dst, pad) =
                    cols[(ci * 9 + ky * 3 + kx) * stride..][..stride].split_at_mut(plane);
                pad.fill(0.0);
                for y in 0..h {
                    let dst_row = &mut dst[y * w..][..w];
                    let sy = y + ky;
                    if sy < 1 || sy > h {
                        dst_row.fill(0.0);
                        continue;
                    }
                    let src_row = &src[(sy - 1) * w..][..w];
                    match kx {
                        0 => {
                            dst_row[0] = 0.0;
                            dst_row[1..].copy_from_slice(&src_row[..w - 1]);
                        }
                        1 => dst_row.copy_from_slice(src_row),
                        _ => {
                            dst_row[..w - 1].copy_from_slice(&src_row[1..]);
                            dst_row[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// The widest fused multiply-add the CPU has (checked at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                if std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// `acc[o*stride + p0 + i] = sum_k cols[k*stride + p0 + i] * panel[k*6 + o]` for the 6 x 32 tile
/// at pixel `p0`, k ascending, one fused multiply-add per term.
fn tile(
    cols: &[f32],
    stride: usize,
    p0: usize,
    panel: &[f32],
    k: usize,
    acc: &mut [f32],
    isa: Isa,
) {
    assert!(p0 + TILE_PIX <= stride && cols.len() >= k * stride && panel.len() >= k * TILE_OUT);
    assert!(acc.len() >= TILE_OUT * stride);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU has the features (`Isa::detect`); the bounds are asserted above.
        Isa::Avx512 => return unsafe { tile_avx512(cols, stride, p0, panel, k, acc) },
        Isa::Avx2 => {
            for half in [p0, p0 + TILE_PIX / 2] {
                // SAFETY: as above; each half is 16 pixels within the tile.
                unsafe { tile_avx2(cols, stride, half, panel, k, acc) };
            }
            return;
        }
        Isa::Scalar => {}
    }
    let _ = isa;
    let mut sums = [[0f32; TILE_PIX]; TILE_OUT];
    for kk in 0..k {
        let col = &cols[kk * stride + p0..][..TILE_PIX];
        let w = &panel[kk * TILE_OUT..][..TILE_OUT];
        for (sum, w) in sums.iter_mut().zip(w) {
            for (s, x) in sum.iter_mut().zip(col) {
                *s = x.mul_add(*w, *s);
            }
        }
    }
    for (o, sum) in sums.iter().enumerate() {
        acc[o * stride + p0..][..TILE_PIX].copy_from_slice(sum);
    }
}

/// [`tile`] with 16-wide vectors (2 x 6 accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    cols: &[f32],
    stride: usize,
    p0: usize,
    panel: &[f32],
    k: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut s = [[_mm512_setzero_ps(); 2]; TILE_OUT];
    let c = cols.as_ptr().add(p0);
    let w = panel.as_ptr();
    for kk in 0..k {
        let x0 = _mm512_loadu_ps(c.add(kk * stride));
        let x1 = _mm512_loadu_ps(c.add(kk * stride + 16));
        let wk = w.add(kk * TILE_OUT);
        for (o, s) in s.iter_mut().enumerate() {
            let wv = _mm512_set1_ps(*wk.add(o));
            s[0] = _mm512_fmadd_ps(x0, wv, s[0]);
            s[1] = _mm512_fmadd_ps(x1, wv, s[1]);
        }
    }
    let a = acc.as_mut_ptr().add(p0);
    for (o, s) in s.iter().enumerate() {
        _mm512_storeu_ps(a.add(o * stride), s[0]);
        _mm512_storeu_ps(a.add(o * stride + 16), s[1]);
    }
}

/// 16 pixels of [`tile`] with 8-wide vectors (2 x 6 accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    cols: &[f32],
    stride: usize,
    p0: usize,
    panel: &[f32],
    k: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut s = [[_mm256_setzero_ps(); 2]; TILE_OUT];
    let c = cols.as_ptr().add(p0);
    let w = panel.as_ptr();
    for kk in 0..k {
        let x0 = _mm256_loadu_ps(c.add(kk * stride));
        let x1 = _mm256_loadu_ps(c.add(kk * stride + 8));
        let wk = w.add(kk * TILE_OUT);
        for (o, s) in s.iter_mut().enumerate() {
            let wv = _mm256_broadcast_ss(&*wk.add(o));
            s[0] = _mm256_fmadd_ps(x0, wv, s[0]);
            s[1] = _mm256_fmadd_ps(x1, wv, s[1]);
        }
    }
    let a = acc.as_mut_ptr().add(p0);
    for (o, s) in s.iter().enumerate() {
        _mm256_storeu_ps(a.add(o * stride), s[0]);
        _mm256_storeu_ps(a.add(o * stride + 8), s[1]);
    }
}

/// `out[i] = v * row[i] + out[i]` (fused) for every `i`.
fn axpy(v: f32, row: &[f32], out: &mut [f32], isa: Isa) {
    assert_eq!(row.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && row.len().is_multiple_of(LANES) {
        // SAFETY: the CPU has the features (`Isa::detect`); equal lengths, a multiple of 16.
        unsafe {
            if isa == Isa::Avx512 {
                axpy_avx512(v, row, out)
            } else {
                axpy_avx2(v, row, out)
            }
        };
        return;
    }
    let _ = isa;
    out.iter_mut()
        .zip(row)
        .for_each(|(o, w)| *o = v.mul_add(*w, *o));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(v: f32, row: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let vv = _mm512_set1_ps(v);
    let (r, o) = (row.as_ptr(), out.as_mut_ptr());
    for i in (0..row.len()).step_by(16) {
        let acc = _mm512_loadu_ps(o.add(i));
        _mm512_storeu_ps(
            o.add(i),
            _mm512_fmadd_ps(vv, _mm512_loadu_ps(r.add(i)), acc),
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(v: f32, row: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let vv = _mm256_set1_ps(v);
    let (r, o) = (row.as_ptr(), out.as_mut_ptr());
    for i in (0..row.len()).step_by(8) {
        let acc = _mm256_loadu_ps(o.add(i));
        _mm256_storeu_ps(
            o.add(i),
            _mm256_fmadd_ps(vv, _mm256_loadu_ps(r.add(i)), acc),
        );
    }
}

/// The classifier for inference: `y = x W^T + b` per row, inputs in ascending order, zeros skipped.
pub(crate) struct FoldedLinear {
    features: usize,
    classes: usize,
    /// `[features][classes padded to 8]`.
    rows: Vec<f32>,
    bias: Vec<f32>,
}

impl FoldedLinear {
    /// From the weight `[classes, features]` (flattened) and the bias.
    pub(crate) fn new(
        weight: &[f32],
        (classes, features): (usize, usize),
        bias: &[f32],
    ) -> Result<FoldedLinear, String> {
        if weight.len() != classes * features || bias.len() != classes {
            return Err(format!(
                "classifier: expected {classes}x{features} weights and {classes} biases, got {} \
                 and {}",
                weight.len(),
                bias.len()
            ));
        }
        let padded = classes.div_ceil(LANES) * LANES;
        let mut rows = vec![0f32; features * padded];
        for c in 0..classes {
            for f in 0..features {
                rows[f * padded + c] = weight[c * features + f];
            }
        }
        Ok(FoldedLinear {
            features,
            classes,
            rows,
            bias: bias.to_vec(),
        })
    }

    /// `x` is `[rows, features]`; returns `[rows, classes]`.
    pub(crate) fn forward(&self, x: &[f32]) -> Result<Vec<f32>, String> {
        if self.features == 0 || !x.len().is_multiple_of(self.features) {
            return Err(format!(
                "classifier: {} input values are not whole rows of {} features",
                x.len(),
                self.features
            ));
        }
        let padded = self.rows.len() / self.features;
        let isa = Isa::detect();
        let mut out = vec![0f32; x.len() / self.features * self.classes];
        out.par_chunks_mut(self.classes.max(1))
            .zip(x.par_chunks(self.features))
            .for_each_init(Vec::new, |acc, (y, x)| {
                acc.clear();
                acc.resize(padded, 0f32);
                for (f, &v) in x.iter().enumerate() {
                    if v != 0.0 {
                        axpy(v, &self.rows[f * padded..][..padded], acc, isa);
                    }
                }
                for ((d, a), b) in y.iter_mut().zip(acc.iter()).zip(&self.bias) {
                    *d = a + b;
                }
            });
        Ok(out)
    }
}

/// `x W^T + b` for `x` `[rows, features]` on the CPU, differentiable w.r.t. `x` only (`w`
/// `[classes, features]` and `b` held constant): forward by [`FoldedLinear`], backward
/// `dx[f] = sum_c dy[c] * w[c, f]` over c ascending per row. Both sum in a fixed order per output.
pub(crate) fn linear_input_grad(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (classes, features) = w.dims2()?;
    let weight = w.detach().flatten_all()?.to_vec1::<f32>()?;
    let linear = FoldedLinear::new(&weight, (classes, features), &b.detach().to_vec1::<f32>()?)
        .map_err(candle_core::Error::Msg)?;
    x.contiguous()?.apply_op1(ConstantLinear {
        linear,
        weight,
        classes,
    })
}

struct ConstantLinear {
    linear: FoldedLinear,
    /// `[classes, features]`.
    weight: Vec<f32>,
    classes: usize,
}

impl candle_core::CustomOp1 for ConstantLinear {
    fn name(&self) -> &'static str {
        "linear-constant-weight"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::cpu_buffer::contiguous_f32(storage, layout, "classifier input")?;
        let (rows, _) = layout.shape().dims2()?;
        let y = self.linear.forward(x).map_err(candle_core::Error::Msg)?;
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((rows, self.classes)),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, features) = arg.dims2()?;
        let dy = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let isa = Isa::detect();
        let mut dx = vec![0f32; rows * features];
        dx.par_chunks_mut(features.max(1))
            .zip(dy.par_chunks(self.classes.max(1)))
            .for_each(|(dx, dy)| {
                for (c, &g) in dy.iter().enumerate() {
                    if g != 0.0 {
                        axpy(g, &self.weight[c * features..][..features], dx, isa);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, (rows, features), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn values(n: usize, rng: &mut impl Rng, range: std::ops::Range<f32>) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(range.clone())).collect()
    }

    /// Binary spikes at `rate`, or pooled spikes (multiples of 1/4) when `pooled`.
    fn spikes(n: usize, rate: f64, pooled: bool, rng: &mut impl Rng) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if !rng.random_bool(rate) {
                    0.0
                } else if pooled {
                    rng.random_range(1..=4) as f32 / 4.0
                } else {
                    1.0
                }
            })
            .collect()
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn event_and_dense_kernels_give_the_same_bits_and_equal_candles_conv() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (rows, c, h, w, out) in [
            (3, 5, 6, 7, 13),
            (2, 3, 1, 1, 2),
            (4, 8, 4, 4, 16),
            (1, 2, 12, 12, 7),
        ] {
            let wv = values(out * c * 9, &mut rng, -1.0..1.0);
            let scale = values(out, &mut rng, 0.5..2.0);
            let shift = values(out, &mut rng, -1.0..1.0);
            let conv = FoldedConv::new(&wv, (out, c), &scale, &shift).unwrap();
            for (rate, pooled) in [(0.02, false), (0.2, false), (0.6, true), (1.0, false)] {
                let x = spikes(rows * c * h * w, rate, pooled, &mut rng);
                let dense = conv.forward(&x, (h, w), KernelChoice::Dense).unwrap();
                let event = conv.forward(&x, (h, w), KernelChoice::Event).unwrap();
                let chosen = conv.forward(&x, (h, w), KernelChoice::ByRate).unwrap();
                assert_eq!(dense, event, "{rows}x{c}x{h}x{w} -> {out}, rate {rate}");
                assert_eq!(dense, chosen);
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    if isa == Isa::Scalar || Isa::detect() == isa || Isa::detect() == Isa::Avx512 {
                        for choice in [KernelChoice::Dense, KernelChoice::Event] {
                            let y = conv.forward_on(&x, (h, w), choice, isa).unwrap();
                            assert_eq!(y, dense, "{isa:?} {choice:?}");
                        }
                    }
                }
                let xt = Tensor::from_vec(x, (rows, c, h, w), &Device::Cpu).unwrap();
                let kt = Tensor::from_vec(wv.clone(), (out, c, 3, 3), &Device::Cpu).unwrap();
                let st = Tensor::from_vec(scale.clone(), (1, out, 1, 1), &Device::Cpu).unwrap();
                let bt = Tensor::from_vec(shift.clone(), (1, out, 1, 1), &Device::Cpu).unwrap();
                let reference = xt
                    .conv2d(&kt, 1, 1, 1, 1)
                    .unwrap()
                    .broadcast_mul(&st)
                    .unwrap()
                    .broadcast_add(&bt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let d = dense
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "difference from conv2d {d}");
            }
        }
    }

    #[test]
    fn real_valued_input_equals_candles_conv() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let (rows, c, h, w, out) = (2, 3, 9, 5, 4);
        let wv = values(out * c * 9, &mut rng, -1.0..1.0);
        let x = values(rows * c * h * w, &mut rng, -2.0..2.0);
        let conv = FoldedConv::new(&wv, (out, c), &[1.0; 4], &[0.0; 4]).unwrap();
        let ours = conv.forward(&x, (h, w), KernelChoice::ByRate).unwrap();
        assert_eq!(ours, conv.forward(&x, (h, w), KernelChoice::Event).unwrap());
        let xt = Tensor::from_vec(x, (rows, c, h, w), &Device::Cpu).unwrap();
        let kt = Tensor::from_vec(wv, (out, c, 3, 3), &Device::Cpu).unwrap();
        let reference = xt.conv2d(&kt, 1, 1, 1, 1).unwrap();
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "difference from conv2d {d}");
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count_or_the_batch() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (rows, c, h, w, out) = (9, 6, 8, 8, 10);
        let wv = values(out * c * 9, &mut rng, -1.0..1.0);
        let conv = FoldedConv::new(&wv, (out, c), &[1.5; 10], &[0.1; 10]).unwrap();
        let x = spikes(rows * c * h * w, 0.3, false, &mut rng);
        let one = pool(1).install(|| conv.forward(&x, (h, w), KernelChoice::ByRate).unwrap());
        for threads in [2, 3, 8] {
            let many =
                pool(threads).install(|| conv.forward(&x, (h, w), KernelChoice::ByRate).unwrap());
            assert_eq!(one, many, "{threads} threads");
        }
        let per_row = c * h * w;
        let alone = conv
            .forward(&x[4 * per_row..5 * per_row], (h, w), KernelChoice::ByRate)
            .unwrap();
        assert_eq!(alone, one[4 * out * h * w..5 * out * h * w]);
        let wl = values(3 * per_row, &mut rng, -1.0..1.0);
        let linear = FoldedLinear::new(&wl, (3, per_row), &[0.5, -0.5, 0.0]).unwrap();
        let a = pool(1).install(|| linear.forward(&x).unwrap());
        let b = pool(3).install(|| linear.forward(&x).unwrap());
        assert_eq!(a, b);
        let xt = Tensor::from_vec(x, (rows, per_row), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(wl, (3, per_row), &Device::Cpu).unwrap();
        let bt = Tensor::new(&[0.5f32, -0.5, 0.0], &Device::Cpu).unwrap();
        let reference = xt.matmul(&wt.t().unwrap()).unwrap();
        let reference = reference.broadcast_add(&bt).unwrap();
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = a
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "difference from matmul {d}");
    }

    #[test]
    fn classifier_input_gradient_equals_candles_matmul_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let (rows, features, classes) = (5, 37, 3);
        let x = candle_core::Var::from_vec(
            spikes(rows * features, 0.3, true, &mut rng),
            (rows, features),
            &Device::Cpu,
        )
        .unwrap();
        let w = values(classes * features, &mut rng, -1.0..1.0);
        let w = Tensor::from_vec(w, (classes, features), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu).unwrap();
        let g = values(rows * classes, &mut rng, -1.0..1.0);
        let g = Tensor::from_vec(g, (rows, classes), &Device::Cpu).unwrap();
        let ours = linear_input_grad(x.as_tensor(), &w, &b).unwrap();
        let reference = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            let d = a.sub(b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap()
        };
        assert!(max_diff(&ours, &reference) < 1e-5);
        let grad = |y: &Tensor| {
            let grads = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            grads.get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_diff(&grad(&ours), &grad(&reference)) < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(FoldedConv::new(&[0.0; 10], (2, 1), &[1.0; 2], &[0.0; 2]).is_err());
        let conv = FoldedConv::new(&[0.0; 18], (2, 1), &[1.0; 2], &[0.0; 2]).unwrap();
        let err = conv
            .forward(&[0.0; 5], (2, 2), KernelChoice::ByRate)
            .unwrap_err();
        assert!(err.contains("2x2"), "{err}");
        assert!(FoldedLinear::new(&[0.0; 5], (2, 3), &[0.0; 2]).is_err());
    }

    /// Per-layer kernel times on the `small` shapes (T = 4, 100 images), against candle's
    /// im2col + gemm, to set [`EVENT_RATE_LIMIT`].
    #[test]
    #[ignore = "benchmark: cargo test -p ccsrp-worker --release --lib -- --ignored --nocapture kernel_speed"]
    fn kernel_speed_on_small_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (rows, c, hw, out) in [(100, 3, 32, 32), (400, 32, 16, 64), (400, 64, 8, 128)] {
            let wv = values(out * c * 9, &mut rng, -1.0..1.0);
            let conv = FoldedConv::new(&wv, (out, c), &vec![1.0; out], &vec![0.0; out]).unwrap();
            let kt = Tensor::from_vec(wv, (out, c, 3, 3), &Device::Cpu).unwrap();
            for rate in [0.05, 0.1, 0.2, 0.3, 0.5] {
                let x = spikes(rows * c * hw * hw, rate, false, &mut rng);
                let time = |choice| {
                    let start = std::time::Instant::now();
                    conv.forward(&x, (hw, hw), choice).unwrap();
                    start.elapsed().as_secs_f64() * 1e3
                };
                let (d, e) = (time(KernelChoice::Dense), time(KernelChoice::Event));
                let xt = Tensor::from_vec(x.clone(), (rows, c, hw, hw), &Device::Cpu).unwrap();
                let start = std::time::Instant::now();
                crate::conv::conv3x3(&xt, &kt).unwrap();
                let g = start.elapsed().as_secs_f64() * 1e3;
                println!("{c}->{out} @{hw}x{hw} rate {rate}: dense {d:.1} ms, event {e:.1} ms, candle gemm {g:.1} ms");
            }
        }
    }
}
