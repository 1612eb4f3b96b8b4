//! Batch normalisation with batch statistics (the training form) as one fused CPU op.
//!
//! As a chain of candle tensor ops, training-mode batch norm costs a dozen full passes forward and
//! backward, and its backward sums gradients over the batch and spatial dimensions with candle's
//! generic (single-threaded, strided) reduction, which dominated training time. Here the forward is
//! two passes (statistics, then normalise) and the backward uses the closed form:
//!
//! - `x̂ = (x - mean) / sqrt(var + eps)`, `y = gamma * x̂ + beta` (biased `var`, as PyTorch);
//! - `dbeta = Σ dy`, `dgamma = Σ dy·x̂` (sums over batch and space, per channel);
//! - `dx = gamma / sqrt(var + eps) · (dy - dbeta / M - x̂ · dgamma / M)`, `M` values per channel.
//!
//! Sums are accumulated in f64 in a fixed order, so the result does not depend on thread counts.
//! The batch statistics are handed back through [`BatchStats`] for the running-statistics update.
//! Other devices use the same formulas as tensor ops ([`batch_norm_train`] picks).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_buffer::contiguous_f32;

/// Per-channel mean and biased variance of the last batch a [`batch_norm_train`] call saw.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Training-mode batch norm of `x` `[N, C, H, W]` with `gamma`, `beta` `[C]`: differentiable with
/// respect to all three. Returns the output and the batch statistics.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let c = x.dim(1)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2 {
        let slot = Arc::new(Mutex::new(None));
        let op = BatchNormTrain {
            eps,
            stats: slot.clone(),
        };
        let y = x
            .contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
        let stats = slot
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("batch norm produced no statistics".into()))?;
        return Ok((y, stats));
    }
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
    let normed = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
    let y = normed
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    let stats = BatchStats {
        mean: mean.detach().flatten_all()?.to_vec1()?,
        var: var.detach().flatten_all()?.to_vec1()?,
    };
    Ok((y, stats))
}

/// `x` split as `[outer, C, inner]` (outer = N, inner = H*W).
fn split_dims(dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        candle_core::bail!("batch norm needs [N, C, ...], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Per-channel mean and biased variance (f64 sums in a fixed order; channels in parallel).
fn channel_stats(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * inner).max(1) as f64;
    let per_channel: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |img: usize| &x[(img * c + ch) * inner..][..inner];
            let sum: f64 = (0..n)
                .map(|img| plane(img).iter().map(|&v| f64::from(v)).sum::<f64>())
                .sum();
            let mu = sum / m;
            let sq: f64 = (0..n)
                .map(|img| {
                    plane(img)
                        .iter()
                        .map(|&v| {
                            let d = f64::from(v) - mu;
                            d * d
                        })
                        .sum::<f64>()
                })
                .sum();
            (mu, sq / m)
        })
        .collect();
    per_channel.into_iter().unzip()
}

struct BatchNormTrain {
    eps: f64,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "batch norm input")?;
        let gamma = contiguous_f32(gs, gl, "batch norm weight")?;
        let beta = contiguous_f32(bs, bl, "batch norm bias")?;
        let (n, c, inner) = split_dims(xl.dims())?;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batch norm: {} weights and {} biases for {c} channels",
                gamma.len(),
                beta.len()
            );
        }
        let (mean, var) = channel_stats(x, n, c, inner);
        let coefficients: Vec<(f32, f32)> = (0..c)
            .map(|ch| {
                let inv = 1.0 / (var[ch] + self.eps).sqrt();
                let a = f64::from(gamma[ch]) * inv;
                ((a) as f32, (f64::from(beta[ch]) - mean[ch] * a) as f32)
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut((c * inner).max(1))
            .zip(x.par_chunks((c * inner).max(1)))
            .for_each(|(yi, xi)| {
                for (ch, &(a, b)) in coefficients.iter().enumerate() {
                    let range = ch * inner..(ch + 1) * inner;
                    for (o, &v) in yi[range.clone()].iter_mut().zip(&xi[range]) {
                        *o = v * a + b;
                    }
                }
            });
        let stats = BatchStats {
            mean: mean.iter().map(|&v| v as f32).collect(),
            var: var.iter().map(|&v| v as f32).collect(),
        };
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some(stats);
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let len = x.elem_count();
        let all = x.apply_op3_no_bwd(
            &gamma.contiguous()?,
            &grad.contiguous()?,
            &BatchNormBackward { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = all.narrow(0, len, c)?;
        let dbeta = all.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// From `(x, gamma, dy)`: `[dx (flattened), dgamma, dbeta]` in one flat tensor.
struct BatchNormBackward {
    eps: f64,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "batch norm input")?;
        let gamma = contiguous_f32(gs, gl, "batch norm weight")?;
        let dy = contiguous_f32(dys, dyl, "batch norm output gradient")?;
        let (n, c, inner) = split_dims(xl.dims())?;
        if dy.len() != x.len() || gamma.len() != c {
            candle_core::bail!("batch norm backward: mismatched shapes");
        }
        let (mean, var) = channel_stats(x, n, c, inner);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // Per channel (in parallel): dgamma, dbeta.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mu, is) = (mean[ch], inv[ch]);
                let (mut sg, mut sb) = (0f64, 0f64);
                for img in 0..n {
                    let off = (img * c + ch) * inner;
                    for (&v, &g) in x[off..off + inner].iter().zip(&dy[off..off + inner]) {
                        let g = f64::from(g);
                        sb += g;
                        sg += g * (f64::from(v) - mu) * is;
                    }
                }
                (sg, sb)
            })
            .collect();
        let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let m = (n * inner).max(1) as f64;
        // dx = k * (dy - dbeta/M - x̂ * dgamma/M), as dx = k*dy + a*x + b in f32.
        let coefficients: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let k = f64::from(gamma[ch]) * inv[ch];
                let a = -k * dgamma[ch] / m * inv[ch];
                let b = -k * dbeta[ch] / m - a * mean[ch];
                (k as f32, a as f32, b as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, tail) = out.split_at_mut(x.len());
        let image = (c * inner).max(1);
        dx.par_chunks_mut(image)
            .zip(x.par_chunks(image).zip(dy.par_chunks(image)))
            .for_each(|(dxi, (xi, dyi))| {
                for (ch, &(k, a, b)) in coefficients.iter().enumerate() {
                    let r = ch * inner..(ch + 1) * inner;
                    for ((o, &v), &g) in dxi[r.clone()].iter_mut().zip(&xi[r.clone()]).zip(&dyi[r])
                    {
                        *o = k * g + a * v + b;
                    }
                }
            });
        for ch in 0..c {
            tail[ch] = dgamma[ch] as f32;
            tail[c + ch] = dbeta[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// The textbook tensor-op formulation, as the reference.
    fn reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Tensor {
        let c = x.dim(1).unwrap();
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let centered = x.broadcast_sub(&mean).unwrap();
        let var = centered.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        centered
            .broadcast_div(&var.affine(1.0, eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
    }

    #[test]
    fn fused_batch_norm_equals_tensor_ops_forward_and_backward() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let dev = Device::Cpu;
        let (n, c, h, w) = (6, 4, 3, 5);
        let mut vals = |k: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..k).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x = Var::from_vec(vals(n * c * h * w, -2.0, 3.0), (n, c, h, w), &dev).unwrap();
        let gamma = Var::from_vec(vals(c, 0.5, 1.5), c, &dev).unwrap();
        let beta = Var::from_vec(vals(c, -0.5, 0.5), c, &dev).unwrap();
        let g = Tensor::from_vec(vals(n * c * h * w, -1.0, 1.0), (n, c, h, w), &dev).unwrap();
        let (fused, stats) =
            batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
        let refr = reference(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5);
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a.len(), b.len());
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() < 2e-5 * (1.0 + q.abs()),
                    "{what}[{i}]: {p} vs {q}"
                );
            }
        };
        close(&fused, &refr, "output");
        let mean = x.as_tensor().mean_keepdim((0, 2, 3)).unwrap();
        close(
            &Tensor::new(stats.mean.as_slice(), &dev).unwrap(),
            &mean,
            "mean",
        );
        let gf = fused
            .mul(&g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = refr.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&x, "dx"), (&gamma, "dgamma"), (&beta, "dbeta")] {
            close(
                gf.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
                what,
            );
        }
    }
}
