//! The spiking ResNet of [`crate::resnet_arch`] inside [`SnnModel`]: its weights, state-dict
//! names, forward passes, MACs and description. A child module of [`crate::model`], so the VGG
//! code path dispatches here with `if let Some(r) = &self.residual` and both share the
//! normalisation, the LIF neurons and the classifier.
//!
//! Tensor names are spikingjelly's (`spiking_resnet` / `sew_resnet` with the CIFAR stem):
//! `conv1.weight`, `bn1.*` (stem); `layer{s}.{b}.conv1.weight`, `layer{s}.{b}.bn1.*`,
//! `layer{s}.{b}.conv2.weight`, `layer{s}.{b}.bn2.*`, and when the shortcut is a conv
//! `layer{s}.{b}.downsample.0.weight` (1x1) and `layer{s}.{b}.downsample.1.*` (batch norm), with
//! `s` from 1 and `b` from 0; `fc.weight` `[classes, C_last]`, `fc.bias`. (`bn.*` is `weight`,
//! `bias`, `running_mean`, `running_var`; PyTorch's `num_batches_tracked` is skipped on loading.)
//!
//! Passes. The stem conv runs once on the `[B, ...]` image and its LIF neurons on that constant
//! current (as VGG's layer 0); every block then runs on `[T*B, ...]`. Convolutions:
//! - 3x3 stride 1: the VGG convs of [`crate::conv`] (training, attacks) and the folded, fixed-order
//!   CPU kernels of [`crate::event_conv`] (inference, batch norm folded in);
//! - 3x3 stride 2 (first block of stages >= 2): training takes the im2col columns of every second
//!   row and column (`ceil(H/2)` outputs) into the gemm; inference and attacks run the stride-1
//!   kernels and keep every second row and column: exactly the strided conv, at 4x its MACs;
//! - 1x1 shortcut: every `stride`-th input pixel, then a pointwise product: one batched matrix
//!   product with a graph, and a fixed-order loop (batch norm folded in) for inference on the CPU.
//!
//! Off the CPU the 3x3 convs are candle's `conv2d`: with its stride for inference, at stride 1
//! then every second row and column with a graph (candle's strided `conv2d` backward gets even
//! sides wrong). The global average pool is the mean over H and W of the last block's output; the
//! classifier and the mean over T are VGG's.

use super::{ModelError, SnnModel, BN_EPS};
use crate::event_conv::FoldedConv;
use crate::lif::{ChannelAffine, Drive};
use crate::resnet_arch::{BlockGeometry, ResidualGeometry};
use candle_core::{Tensor, Var, D};
use rayon::prelude::*;

/// Batch-norm parameters and running statistics of one conv.
#[derive(Debug)]
pub(crate) struct BatchNorm {
    pub(crate) weight: Var,
    pub(crate) bias: Var,
    pub(crate) running_mean: Var,
    pub(crate) running_var: Var,
}

/// A conv without bias, its batch norm, and its kernel side and stride.
#[derive(Debug)]
pub(crate) struct ConvBn {
    pub(crate) weight: Var,
    pub(crate) bn: BatchNorm,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
}

/// One basic block.
#[derive(Debug)]
pub(crate) struct ResBlock {
    pub(crate) geometry: BlockGeometry,
    /// The prunable inner conv.
    pub(crate) conv1: ConvBn,
    pub(crate) conv2: ConvBn,
    /// The 1x1 shortcut conv when the shape changes.
    pub(crate) downsample: Option<ConvBn>,
}

/// The stem and blocks of a spiking ResNet (the classifier is [`SnnModel`]'s).
#[derive(Debug)]
pub(crate) struct ResNet {
    pub(crate) geometry: ResidualGeometry,
    pub(crate) stem: ConvBn,
    pub(crate) blocks: Vec<ResBlock>,
}

/// State-dict name prefix of a block (`layer{s}.{b}`).
pub(crate) fn block_prefix(b: &BlockGeometry) -> String {
    format!("layer{}.{}", b.stage, b.index)
}

const BN_SUFFIXES: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// Expected tensors of a residual network, in state-dict order (module doc).
pub(crate) fn expected_shapes(g: &ResidualGeometry, classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut conv_bn = |conv: String, bn: String, shape: [usize; 4]| {
        out.push((format!("{conv}.weight"), shape.to_vec()));
        for suffix in BN_SUFFIXES {
            out.push((format!("{bn}.{suffix}"), vec![shape[0]]));
        }
    };
    conv_bn(
        "conv1".into(),
        "bn1".into(),
        [g.stem, g.input.channels, 3, 3],
    );
    for b in &g.blocks {
        let p = block_prefix(b);
        conv_bn(
            format!("{p}.conv1"),
            format!("{p}.bn1"),
            [b.inner, b.in_channels, 3, 3],
        );
        conv_bn(
            format!("{p}.conv2"),
            format!("{p}.bn2"),
            [b.out_channels, b.inner, 3, 3],
        );
        if b.downsample {
            conv_bn(
                format!("{p}.downsample.0"),
                format!("{p}.downsample.1"),
                [b.out_channels, b.in_channels, 1, 1],
            );
        }
    }
    out.push(("fc.weight".into(), vec![classes, g.features()]));
    out.push(("fc.bias".into(), vec![classes]));
    out
}

impl BatchNorm {
    fn take(next: &mut dyn FnMut() -> Result<Var, ModelError>) -> Result<BatchNorm, ModelError> {
        Ok(BatchNorm {
            weight: next()?,
            bias: next()?,
            running_mean: next()?,
            running_var: next()?,
        })
    }

    /// Evaluation form `x * scale + shift` (as [`SnnModel::bn_affine`]).
    fn affine(&self, track: bool) -> candle_core::Result<ChannelAffine> {
        let (w, bias) = if track {
            (
                self.weight.as_tensor().clone(),
                self.bias.as_tensor().clone(),
            )
        } else {
            (
                self.weight.as_tensor().detach(),
                self.bias.as_tensor().detach(),
            )
        };
        let rm = self.running_mean.as_tensor().detach();
        let rv = self.running_var.as_tensor().detach();
        let scale = w.div(&rv.affine(1.0, BN_EPS)?.sqrt()?)?;
        let shift = bias.sub(&rm.mul(&scale)?)?;
        Ok(ChannelAffine { scale, shift })
    }

    /// Training form with batch statistics; updates the running statistics
    /// ([`crate::model::bn_train_update`], as the VGG layers).
    fn train(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        crate::model::bn_train_update(
            y,
            [&self.weight, &self.bias],
            [&self.running_mean, &self.running_var],
        )
    }

    fn vars(&self) -> [&Var; 4] {
        [
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ]
    }
}

/// Which forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Batch statistics, gradients to the weights and the input.
    Train,
    /// Running statistics, gradients to the weights and the input.
    Graph,
    /// Running statistics, gradients to the input only (attacks).
    InputGrad,
    /// No graph (evaluation).
    Inference,
}

/// Where a residual pass starts.
pub(crate) enum Start {
    /// The normalised image `[B, C, H, W]`: the stem runs first.
    Image(Tensor),
    /// The input of block `b` (`[T*B, C, H, W]`).
    Block(usize, Tensor),
}

/// Every second row and column (`[N, C, H, W]` -> `[N, C, ceil(H/2), ceil(W/2)]`).
fn every_second(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let rows: Vec<u32> = (0..h as u32).step_by(2).collect();
    let cols: Vec<u32> = (0..w as u32).step_by(2).collect();
    let rows = Tensor::new(rows.as_slice(), x.device())?;
    let cols = Tensor::new(cols.as_slice(), x.device())?;
    x.index_select(&rows, 2)?.index_select(&cols, 3)
}

impl ConvBn {
    fn take(
        next: &mut dyn FnMut() -> Result<Var, ModelError>,
        kernel: usize,
        stride: usize,
    ) -> Result<ConvBn, ModelError> {
        Ok(ConvBn {
            weight: next()?,
            bn: BatchNorm::take(next)?,
            kernel,
            stride,
        })
    }

    /// `conv(x)` without batch norm, for the graph passes (`input_only`: the weight is a
    /// constant).
    fn conv_graph(&self, x: &Tensor, input_only: bool) -> candle_core::Result<Tensor> {
        let w = if input_only {
            self.weight.as_tensor().detach()
        } else {
            self.weight.as_tensor().clone()
        };
        if self.kernel == 1 {
            // One batched matrix product `[out, C] x [N, C, H*W]` (candle's CPU conv2d, and its
            // transposed conv in the backward pass, are far slower).
            let x = if self.stride == 2 {
                every_second(x)?
            } else {
                x.clone()
            };
            let (n, c, h, wd) = x.dims4()?;
            let out = w.dim(0)?;
            let y = w
                .reshape((out, c))?
                .broadcast_matmul(&x.reshape((n, c, h * wd))?)?;
            return y.reshape((n, out, h, wd));
        }
        if self.stride == 2 && !input_only && x.device().is_cpu() {
            return crate::conv::conv3x3_stride2_graph(x, &w);
        }
        // Stride 1 (these fall back to candle's conv2d off the CPU), then every second row and
        // column for stride 2: candle's own strided conv2d has a wrong backward for even sides.
        let y = if input_only {
            crate::conv::conv3x3_input_grad(x, &w)?
        } else {
            crate::conv::conv3x3_graph(x, &w)?
        };
        if self.stride == 2 {
            every_second(&y)
        } else {
            Ok(y)
        }
    }

    /// `bn(conv(x))` without a graph, batch norm folded in.
    fn infer(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let affine = self.bn.affine(false)?;
        let w = self.weight.as_tensor().detach();
        if !x.device().is_cpu() {
            let y = x.conv2d(&w, self.kernel / 2, self.stride, 1, 1)?;
            return Ok(affine.apply(&y)?);
        }
        let (out, cin, _, _) = w.dims4()?;
        let weights = w.flatten_all()?.to_vec1::<f32>()?;
        let scale = affine.scale.to_vec1::<f32>()?;
        let shift = affine.shift.to_vec1::<f32>()?;
        if self.kernel == 1 {
            let x = if self.stride == 2 {
                every_second(x)?
            } else {
                x.clone()
            };
            return Ok(pointwise_folded(&x, &weights, (out, cin), &scale, &shift)?);
        }
        let y = FoldedConv::new(&weights, (out, cin), &scale, &shift)
            .map_err(|e| ModelError::Candle(candle_core::Error::Msg(e)))?
            .apply(x)?;
        Ok(if self.stride == 2 {
            every_second(&y)?
        } else {
            y
        })
    }

    /// `bn(conv(x))` for `pass`.
    fn current(&self, x: &Tensor, pass: Pass) -> Result<Tensor, ModelError> {
        Ok(match pass {
            Pass::Train => self.bn.train(&self.conv_graph(x, false)?)?,
            Pass::Graph => self.bn.affine(true)?.apply(&self.conv_graph(x, false)?)?,
            Pass::InputGrad => self.bn.affine(false)?.apply(&self.conv_graph(x, true)?)?,
            Pass::Inference => self.infer(x)?,
        })
    }

    /// Multiply-accumulates per step of this conv for an output of `out_h x out_w`.
    fn macs(&self, (out_h, out_w): (usize, usize)) -> u64 {
        (self.weight.as_tensor().elem_count() * out_h * out_w) as u64
    }
}

/// A 1x1 conv with batch norm folded in: `y[n, o, p] = sum_c x[n, c, p] * (w[o, c] * scale[o])`
/// (channels ascending, one fused multiply-add each) `+ shift[o]`; one image row per thread, so
/// results do not depend on the thread count.
fn pointwise_folded(
    x: &Tensor,
    weight: &[f32],
    (out, cin): (usize, usize),
    scale: &[f32],
    shift: &[f32],
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if c != cin || weight.len() != out * cin || scale.len() != out || shift.len() != out {
        candle_core::bail!(
            "1x1 conv: expected {out}x{cin} weights for {c} input channels, got {} weights",
            weight.len()
        );
    }
    let plane = h * w;
    let folded: Vec<f32> = (0..out * cin).map(|i| weight[i] * scale[i / cin]).collect();
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; n * out * plane];
    y.par_chunks_mut(out * plane.max(1))
        .zip(values.par_chunks(cin * plane.max(1)))
        .for_each(|(y, x)| {
            for o in 0..out {
                let row = &mut y[o * plane..(o + 1) * plane];
                row.iter_mut().for_each(|v| *v = 0.0);
                for ci in 0..cin {
                    let wv = folded[o * cin + ci];
                    let input = &x[ci * plane..(ci + 1) * plane];
                    for (acc, &xv) in row.iter_mut().zip(input) {
                        *acc = xv.mul_add(wv, *acc);
                    }
                }
                row.iter_mut().for_each(|v| *v += shift[o]);
            }
        });
    Tensor::from_vec(y, (n, out, h, w), x.device())
}

impl ResNet {
    /// Takes the vars of [`expected_shapes`] order (without the classifier) from `next`.
    pub(crate) fn from_vars(
        geometry: ResidualGeometry,
        next: &mut dyn FnMut() -> Result<Var, ModelError>,
    ) -> Result<ResNet, ModelError> {
        let stem = ConvBn::take(next, 3, 1)?;
        let mut blocks = Vec::with_capacity(geometry.blocks.len());
        for g in &geometry.blocks {
            let conv1 = ConvBn::take(next, 3, g.stride)?;
            let conv2 = ConvBn::take(next, 3, 1)?;
            let downsample = if g.downsample {
                Some(ConvBn::take(next, 1, g.stride)?)
            } else {
                None
            };
            blocks.push(ResBlock {
                geometry: *g,
                conv1,
                conv2,
                downsample,
            });
        }
        Ok(ResNet {
            geometry,
            stem,
            blocks,
        })
    }

    /// Parameters and buffers by name, in [`expected_shapes`] order (without the classifier).
    pub(crate) fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |conv: String, bn: String, cb: &ConvBn| {
            out.push((format!("{conv}.weight"), cb.weight.as_tensor().detach()));
            for (suffix, v) in BN_SUFFIXES.iter().zip(cb.bn.vars()) {
                out.push((format!("{bn}.{suffix}"), v.as_tensor().detach()));
            }
        };
        push("conv1".into(), "bn1".into(), &self.stem);
        for b in &self.blocks {
            let p = block_prefix(&b.geometry);
            push(format!("{p}.conv1"), format!("{p}.bn1"), &b.conv1);
            push(format!("{p}.conv2"), format!("{p}.bn2"), &b.conv2);
            if let Some(d) = &b.downsample {
                push(format!("{p}.downsample.0"), format!("{p}.downsample.1"), d);
            }
        }
        out
    }

    /// Every conv with its batch norm, stem first.
    pub(crate) fn convs(&self) -> Vec<&ConvBn> {
        let mut out = vec![&self.stem];
        for b in &self.blocks {
            out.push(&b.conv1);
            out.push(&b.conv2);
            out.extend(b.downsample.as_ref());
        }
        out
    }

    /// Trainable parameters (conv weights, batch-norm weights and biases), stem first.
    pub(crate) fn trainable_vars(&self) -> Vec<Var> {
        self.convs()
            .into_iter()
            .flat_map(|c| [c.weight.clone(), c.bn.weight.clone(), c.bn.bias.clone()])
            .collect()
    }

    /// Index of the first spiking layer of block `b` (stem = 0; per block sn1, the SEW shortcut's
    /// neurons when it has a conv, sn2).
    pub(crate) fn first_lif(&self, b: usize) -> usize {
        1 + self.blocks[..b]
            .iter()
            .map(|blk| self.lifs_of(blk))
            .sum::<usize>()
    }

    fn lifs_of(&self, b: &ResBlock) -> usize {
        if self.geometry.sew && b.downsample.is_some() {
            3
        } else {
            2
        }
    }

    /// Number of spiking layers (the entries of an activity record).
    #[cfg(test)]
    pub(crate) fn lif_count(&self) -> usize {
        self.first_lif(self.blocks.len())
    }

    /// Multiply-accumulates per step of the stem, every block and the shortcuts (no classifier).
    pub(crate) fn macs_per_step(&self) -> u64 {
        let input = self.geometry.input;
        let mut total = self.stem.macs((input.height, input.width));
        for b in &self.blocks {
            let out = (b.geometry.height, b.geometry.width);
            total += b.conv1.macs(out) + b.conv2.macs(out);
            total += b.downsample.as_ref().map_or(0, |d| d.macs(out));
        }
        total
    }
}

impl SnnModel {
    fn spike(&self, current: &Tensor, drive: Drive, pass: Pass) -> Result<Tensor, ModelError> {
        Ok(match pass {
            Pass::Inference => self.lif.forward_inference(current, drive, None)?,
            _ => self.lif.forward(current, drive)?,
        })
    }

    /// Runs block `blk` on `x`; `visit(lif, output)` sees each spiking layer's output.
    fn run_block(
        &self,
        blk: &ResBlock,
        sew: bool,
        x: &Tensor,
        pass: Pass,
        lif: &mut usize,
        visit: &mut dyn FnMut(usize, &Tensor) -> Result<(), ModelError>,
    ) -> Result<Tensor, ModelError> {
        let mut seen = |s: &Tensor| -> Result<(), ModelError> {
            visit(*lif, s)?;
            *lif += 1;
            Ok(())
        };
        let x1 = self.spike(&blk.conv1.current(x, pass)?, Drive::EveryStep, pass)?;
        seen(&x1)?;
        let main = blk.conv2.current(&x1, pass)?;
        if sew {
            let shortcut = match &blk.downsample {
                Some(d) => {
                    let s = self.spike(&d.current(x, pass)?, Drive::EveryStep, pass)?;
                    seen(&s)?;
                    s
                }
                None => x.clone(),
            };
            let out = self.spike(&main, Drive::EveryStep, pass)?;
            seen(&out)?;
            Ok(out.add(&shortcut)?)
        } else {
            let shortcut = match &blk.downsample {
                Some(d) => d.current(x, pass)?,
                None => x.clone(),
            };
            let out = self.spike(&main.add(&shortcut)?, Drive::EveryStep, pass)?;
            seen(&out)?;
            Ok(out)
        }
    }

    /// A residual pass from `start` to the logits `[B, classes]`. `visit(lif, output)` sees every
    /// spiking layer's output (`[T*B, C, H, W]`, lif numbered as [`ResNet::first_lif`]);
    /// `block_input(b, x)` sees what enters every block run.
    pub(crate) fn resnet_pass(
        &self,
        r: &ResNet,
        start: Start,
        pass: Pass,
        visit: &mut dyn FnMut(usize, &Tensor) -> Result<(), ModelError>,
        block_input: &mut dyn FnMut(usize, &Tensor) -> Result<(), ModelError>,
    ) -> Result<Tensor, ModelError> {
        crate::cancel::check()?;
        let (first, mut x) = match start {
            Start::Image(image) => {
                let s = self.spike(&r.stem.current(&image, pass)?, Drive::Constant, pass)?;
                visit(0, &s)?;
                (0, s)
            }
            Start::Block(b, x) => (b, x),
        };
        let mut lif = r.first_lif(first.min(r.blocks.len()));
        for (b, blk) in r.blocks.iter().enumerate().skip(first) {
            block_input(b, &x)?;
            x = self.run_block(blk, r.geometry.sew, &x, pass, &mut lif, visit)?;
        }
        let pooled = x.flatten_from(2)?.mean(D::Minus1)?;
        match pass {
            Pass::Inference if pooled.device().is_cpu() => self.classify_inference(&pooled),
            Pass::Inference | Pass::InputGrad => Ok(self.classify(&pooled, false)?),
            Pass::Train | Pass::Graph => Ok(self.classify(&pooled, true)?),
        }
    }

    /// [`SnnModel::forward_graph`] of a residual network on the normalised image.
    pub(crate) fn resnet_graph(
        &self,
        r: &ResNet,
        x: Tensor,
        train: bool,
        weight_grads: bool,
    ) -> Result<Tensor, ModelError> {
        let pass = match (train, weight_grads) {
            (true, _) => Pass::Train,
            (false, true) => Pass::Graph,
            (false, false) => Pass::InputGrad,
        };
        self.resnet_pass(r, Start::Image(x), pass, &mut |_, _| Ok(()), &mut |_, _| {
            Ok(())
        })
    }

    /// The description of a residual network (the contract of `ccsrp.v1.ModelDescription`): one
    /// prunable layer per block (its conv1), everything else fixed.
    pub(crate) fn resnet_description(&self, r: &ResNet) -> ccsrp_proto::v1::ModelDescription {
        let input = r.geometry.input;
        let (classes, features) = self.classifier_dims();
        let layers = r
            .blocks
            .iter()
            .map(|b| {
                let d = b.conv1.weight.as_tensor().dims();
                ccsrp_proto::v1::ConvLayer {
                    filters: d[0] as u32,
                    in_channels: d[1] as u32,
                    kernel: d[2] as u32,
                    out_height: b.geometry.height as u32,
                    out_width: b.geometry.width as u32,
                    pool_after: false,
                    stride: b.geometry.stride as u32,
                    fixed_input: true,
                    consumer_filters: b.conv2.weight.as_tensor().dims()[0] as u32,
                }
            })
            .collect();
        let stem = r.stem.macs((input.height, input.width));
        let shortcut_macs: u64 = r
            .blocks
            .iter()
            .filter_map(|b| {
                let out = (b.geometry.height, b.geometry.width);
                b.downsample.as_ref().map(|d| d.macs(out))
            })
            .sum();
        let count = |v: &Var| v.as_tensor().elem_count() as u64;
        let mut fixed_parameters = count(&r.stem.weight) + count(&r.stem.bn.weight) * 2;
        for b in &r.blocks {
            fixed_parameters += 2 * count(&b.conv2.bn.weight);
            if let Some(d) = &b.downsample {
                fixed_parameters += count(&d.weight) + 2 * count(&d.bn.weight);
            }
        }
        fixed_parameters += (classes * features + classes) as u64;
        ccsrp_proto::v1::ModelDescription {
            layers,
            classifier_spatial: 1,
            classes: classes as u32,
            timesteps: self.spec.timesteps as u32,
            fixed_macs: stem + shortcut_macs + (classes * features) as u64,
            fixed_parameters,
            classifier_features: features as u32,
            input_layer_macs: stem,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::tests::{input_gradient_bits, random_masks, random_pixels, tiny_spec};
    use crate::model::ModelSpec;
    use candle_core::{DType, Device};
    use ccsrp_proto::v1::Mask;
    use rand::{Rng, SeedableRng};

    /// Stage sides on 12x12 images: 12, 6, 3, 2 (ceil), every kind of block: identity shortcut,
    /// 1x1 stride-2 shortcut, a width change without stride is not here (see `WIDENING`).
    pub(crate) const ARCH: &str = "resnet:3;3x1,4x2,5x1,4x1";
    /// A width change at stride 1 (1x1 shortcut without stride).
    const WIDENING: &str = "resnet:3;5x1";

    /// A tiny residual spec (1x12x12 images, 3 classes) with a low threshold, so that every
    /// spiking layer of the untrained network fires.
    pub(crate) fn res_spec(arch: &str, timesteps: usize) -> ModelSpec {
        let mut spec = tiny_spec(arch, timesteps);
        spec.lif.v_threshold = 0.3;
        spec
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn variants() -> Vec<String> {
        vec![
            ARCH.to_string(),
            format!("{ARCH};sew"),
            WIDENING.to_string(),
            format!("{WIDENING};sew"),
        ]
    }

    #[test]
    fn eval_pass_equals_the_differentiable_pass_and_spikes_flow() {
        for arch in variants() {
            let m = SnnModel::new(res_spec(&arch, 2), &Device::Cpu, 3).unwrap();
            let x = random_pixels(5, 1);
            let fast = m.forward_eval(&x).unwrap();
            assert_eq!(fast.dims(), &[5, 3]);
            let slow = m.forward(&x, false).unwrap();
            assert!(max_diff(&fast, &slow) < 1e-5, "{arch}");
            let attack = m.forward_input_grad(&x).unwrap();
            assert!(max_diff(&fast, &attack) < 1e-5, "{arch}");
            let mut outputs = Vec::new();
            m.run_inference(0, m.normalised_input(&x).unwrap(), |l, s| {
                outputs.push((l, s.sum_all()?.to_scalar::<f32>()?));
                Ok(())
            })
            .unwrap();
            let r = m.residual.as_ref().unwrap();
            assert_eq!(outputs.len(), r.lif_count(), "{arch}");
            assert!(
                outputs
                    .iter()
                    .enumerate()
                    .all(|(i, (l, s))| *l == i && *s > 0.0),
                "{arch}: every spiking layer fires: {outputs:?}"
            );
        }
    }

    #[test]
    fn sew_differs_from_the_spiking_resnet_with_the_same_weights() {
        let plain = SnnModel::new(res_spec(ARCH, 2), &Device::Cpu, 3).unwrap();
        let sew = SnnModel::new(res_spec(&format!("{ARCH};sew"), 2), &Device::Cpu, 3).unwrap();
        assert_eq!(
            plain.state().iter().map(|(n, _)| n).collect::<Vec<_>>(),
            sew.state().iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        let x = random_pixels(4, 2);
        let a = plain.forward_eval(&x).unwrap();
        let b = sew.forward_eval(&x).unwrap();
        assert!(max_diff(&a, &b) > 1e-3);
    }

    #[test]
    fn training_forward_reaches_every_parameter_and_updates_running_statistics() {
        for arch in variants() {
            let m = SnnModel::new(res_spec(&arch, 2), &Device::Cpu, 3).unwrap();
            let x = Var::from_tensor(&random_pixels(4, 2)).unwrap();
            let r = m.residual.as_ref().unwrap();
            let before: Vec<Vec<f32>> = r
                .convs()
                .iter()
                .map(|c| c.bn.running_mean.as_tensor().to_vec1().unwrap())
                .collect();
            let logits = m.forward(x.as_tensor(), true).unwrap();
            let grads = logits.sum_all().unwrap().backward().unwrap();
            let vars = m.trainable_vars();
            // stem + per block conv1, conv2 (+ downsample), 3 vars each, + classifier.
            let convs = r.convs().len();
            assert_eq!(vars.len(), 3 * convs + 2, "{arch}");
            for (i, v) in vars.iter().enumerate() {
                assert!(grads.get(v.as_tensor()).is_some(), "{arch}: var {i}");
            }
            assert_eq!(
                grads.get(x.as_tensor()).unwrap().dims(),
                &[4, 1, 12, 12],
                "{arch}"
            );
            for (c, b) in r.convs().iter().zip(before) {
                let after: Vec<f32> = c.bn.running_mean.as_tensor().to_vec1().unwrap();
                assert_ne!(after, b, "{arch}");
            }
        }
    }

    #[test]
    fn attack_gradients_are_nonzero_and_do_not_depend_on_the_thread_count() {
        let m = SnnModel::new(res_spec(&format!("{ARCH};sew"), 2), &Device::Cpu, 6).unwrap();
        let x = random_pixels(3, 7);
        let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let eval: Vec<Vec<f32>> = m.forward_eval(&x).unwrap().to_vec2().unwrap();
                (input_gradient_bits(&m, &x, &labels), eval)
            })
        };
        let one = run(1);
        assert!(one.0.iter().any(|b| *b != 0), "a nonzero gradient");
        for threads in [2, 3] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn description_follows_the_contract_and_macs_equal_the_shared_calculator() {
        // Hand count for resnet:4;4x1,8x1 on 1x12x12, 3 classes, T = 2.
        let m = SnnModel::new(res_spec("resnet:4;4x1,8x1", 2), &Device::Cpu, 0).unwrap();
        let d = m.description();
        assert_eq!(d.layers.len(), 2);
        let l0 = &d.layers[0];
        assert_eq!(
            (
                l0.filters,
                l0.in_channels,
                l0.kernel,
                l0.out_height,
                l0.stride
            ),
            (4, 4, 3, 12, 1)
        );
        assert!(l0.fixed_input && !l0.pool_after);
        assert_eq!(l0.consumer_filters, 4);
        let l1 = &d.layers[1];
        assert_eq!(
            (
                l1.filters,
                l1.in_channels,
                l1.out_height,
                l1.out_width,
                l1.stride
            ),
            (8, 4, 6, 6, 2)
        );
        assert_eq!(l1.consumer_filters, 8);
        assert_eq!(
            (d.classifier_spatial, d.classifier_features, d.classes),
            (1, 8, 3)
        );
        let stem = 9 * 4 * 144;
        assert_eq!(d.input_layer_macs, stem);
        assert_eq!(d.fixed_macs, stem + 4 * 8 * 36 + 8 * 3);
        assert_eq!(
            d.fixed_parameters,
            9 * 4 + 8 + 2 * 4 + 2 * 8 + (4 * 8 + 16) + (8 * 3 + 3)
        );
        let per_step =
            stem + 2 * 9 * 4 * 4 * 144 + 9 * 4 * 8 * 36 + 9 * 8 * 8 * 36 + 4 * 8 * 36 + 24;
        assert_eq!(m.macs(), 2 * per_step);
        for arch in variants() {
            let m = SnnModel::new(res_spec(&arch, 3), &Device::Cpu, 0).unwrap();
            let d = m.description();
            let kept = ccsrp_proto::cost::dense_kept(&d);
            assert_eq!(
                m.macs(),
                ccsrp_proto::cost::macs(&d, &kept).unwrap(),
                "{arch}"
            );
            assert_eq!(
                m.parameters(),
                ccsrp_proto::cost::parameters(&d, &kept).unwrap(),
                "{arch}"
            );
        }
    }

    /// The dense model with the pruned conv1 filters masked: their weights zeroed and their batch
    /// norm shifted to -1e6, so those sn1 neurons never fire (the spike output times the mask).
    fn masked(model: &SnnModel, masks: &[Mask]) -> SnnModel {
        let copy = model.try_clone().unwrap();
        let r = copy.residual.as_ref().unwrap();
        for (b, mask) in r.blocks.iter().zip(masks) {
            let keep: Vec<f32> = mask
                .to_keep()
                .iter()
                .map(|&k| f32::from(u8::from(k)))
                .collect();
            let keep = Tensor::new(keep.as_slice(), &Device::Cpu).unwrap();
            let w = b.conv1.weight.as_tensor();
            let zeroed = w
                .broadcast_mul(&keep.reshape((keep.dim(0).unwrap(), 1, 1, 1)).unwrap())
                .unwrap();
            b.conv1.weight.set(&zeroed).unwrap();
            let bw = b.conv1.bn.weight.as_tensor().mul(&keep).unwrap();
            let off = keep.affine(1e6, -1e6).unwrap();
            let bb = b
                .conv1
                .bn
                .bias
                .as_tensor()
                .mul(&keep)
                .unwrap()
                .add(&off)
                .unwrap();
            b.conv1.bn.weight.set(&bw).unwrap();
            b.conv1.bn.bias.set(&bb).unwrap();
        }
        copy
    }

    #[test]
    fn pruned_network_equals_the_masked_dense_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for arch in variants() {
            let model = SnnModel::new(res_spec(&arch, 2), &Device::Cpu, 4).unwrap();
            let x = random_pixels(6, 3);
            for _ in 0..3 {
                let masks = random_masks(&model, 0.5, &mut rng);
                let pruned = model.prune(&masks).unwrap();
                let widths: Vec<usize> = masks.iter().map(|m| m.kept() as usize).collect();
                assert_eq!(pruned.spec().architecture.widths(), widths);
                let a = pruned.forward_eval(&x).unwrap();
                let b = masked(&model, &masks).forward_eval(&x).unwrap();
                assert!(max_diff(&a, &b) < 1e-5, "{arch} {masks:?}");
                assert_eq!(
                    crate::eval::predictions(&a).unwrap(),
                    crate::eval::predictions(&b).unwrap()
                );
                let desc = model.description();
                let kept: Vec<u32> = masks.iter().map(Mask::kept).collect();
                assert_eq!(
                    pruned.macs(),
                    ccsrp_proto::cost::macs(&desc, &kept).unwrap()
                );
                assert_eq!(
                    pruned.parameters(),
                    ccsrp_proto::cost::parameters(&desc, &kept).unwrap()
                );
                // The pruned spec names its inner widths and rebuilds the same network.
                let bytes = pruned.to_bytes().unwrap();
                let back = SnnModel::from_bytes(&bytes, &Device::Cpu).unwrap();
                assert_eq!(back.spec(), pruned.spec());
                assert_eq!(
                    back.forward_eval(&x).unwrap().to_vec2::<f32>().unwrap(),
                    a.to_vec2::<f32>().unwrap()
                );
            }
        }
    }

    #[test]
    fn masks_that_do_not_fit_a_block_name_the_layer() {
        let model = SnnModel::new(res_spec("resnet:4;4x1,8x1", 2), &Device::Cpu, 4).unwrap();
        let err = model
            .prune(&[Mask::all(4), Mask::all(4)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 1"), "{err}");
        assert!(model.prune(&[Mask::all(4)]).is_err());
    }

    #[test]
    fn running_from_any_block_on_its_cached_input_equals_the_full_pass() {
        for arch in variants() {
            let model = SnnModel::new(res_spec(&arch, 3), &Device::Cpu, 2).unwrap();
            let x = random_pixels(4, 4);
            let full: Vec<Vec<f32>> = model.forward_eval(&x).unwrap().to_vec2().unwrap();
            let inputs = model.layer_inputs(&x).unwrap();
            assert_eq!(inputs.len(), model.num_layers());
            for (l, (input, b)) in inputs
                .iter()
                .zip(&model.residual.as_ref().unwrap().geometry.blocks)
                .enumerate()
            {
                assert_eq!(input.dtype(), DType::U8);
                assert_eq!(input.dims(), &[12, b.in_channels, b.in_height, b.in_width]);
                let from: Vec<Vec<f32>> = model.forward_from(l, input).unwrap().to_vec2().unwrap();
                assert_eq!(from, full, "{arch} block {l}");
            }
            assert!(model.forward_from(model.num_layers(), &inputs[0]).is_err());
            if model.num_layers() < 3 {
                continue;
            }
            // A candidate pruned from block 1 on sees the dense network's block-1 input.
            let mut masks: Vec<Mask> = model
                .geometry()
                .iter()
                .map(|g| Mask::all(g.filters as u32))
                .collect();
            masks[1] = Mask::from_keep(&[true, false, true, false]);
            let candidate = model.prune(&masks).unwrap();
            let direct: Vec<Vec<f32>> = candidate.forward_eval(&x).unwrap().to_vec2().unwrap();
            let cached: Vec<Vec<f32>> = candidate
                .forward_from(1, &inputs[1])
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(cached, direct, "{arch}");
            let err = model.forward_from(1, &inputs[2]).unwrap_err().to_string();
            assert!(err.contains("layer 1"), "{err}");
        }
    }

    #[test]
    fn sew_block_outputs_are_integers_above_one() {
        let model = SnnModel::new(res_spec(&format!("{ARCH};sew"), 2), &Device::Cpu, 2).unwrap();
        let inputs = model.layer_inputs(&random_pixels(4, 4)).unwrap();
        let max: Vec<u8> = inputs
            .iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<u8>()
                    .unwrap()
            })
            .collect();
        assert!(max.iter().any(|&m| m >= 2), "{max:?}");
    }

    #[test]
    fn inference_does_not_depend_on_the_thread_count() {
        let m = SnnModel::new(res_spec(ARCH, 3), &Device::Cpu, 5).unwrap();
        let x = random_pixels(5, 6);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let full: Vec<Vec<f32>> = m.forward_eval(&x).unwrap().to_vec2().unwrap();
                full.iter()
                    .flatten()
                    .map(|v| v.to_bits())
                    .collect::<Vec<u32>>()
            })
        };
        let one = run(1);
        for threads in [2, 4] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn pointwise_kernel_equals_a_1x1_conv() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let x: Vec<f32> = (0..2 * 3 * 5 * 4)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let w: Vec<f32> = (0..4 * 3).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = Tensor::from_vec(x, (2, 3, 5, 4), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w.clone(), (4, 3, 1, 1), &Device::Cpu).unwrap();
        let scale = [0.5f32, 2.0, 1.0, -1.0];
        let shift = [0.1f32, 0.0, -0.3, 1.0];
        let ours = pointwise_folded(&x, &w, (4, 3), &scale, &shift).unwrap();
        let affine = ChannelAffine {
            scale: Tensor::new(&scale, &Device::Cpu).unwrap(),
            shift: Tensor::new(&shift, &Device::Cpu).unwrap(),
        };
        let reference = affine.apply(&x.conv2d(&wt, 0, 1, 1, 1).unwrap()).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        // Stride 2 keeps every second pixel: rows 0, 2, 4 and columns 0, 2.
        let strided = every_second(&x).unwrap();
        assert_eq!(strided.dims(), &[2, 3, 3, 2]);
        let direct = x.conv2d(&wt, 0, 2, 1, 1).unwrap();
        let via = every_second(&x).unwrap().conv2d(&wt, 0, 1, 1, 1).unwrap();
        assert!(max_diff(&direct, &via) < 1e-6);
    }

    #[test]
    fn strided_3x3_conv_equals_candles_strided_conv() {
        let m = SnnModel::new(res_spec("resnet:3;3x1,4x1", 2), &Device::Cpu, 1).unwrap();
        let r = m.residual.as_ref().unwrap();
        let conv = &r.blocks[1].conv1;
        assert_eq!(conv.stride, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let v: Vec<f32> = (0..2 * 3 * 7 * 6)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        let x = Tensor::from_vec(v, (2, 3, 7, 6), &Device::Cpu).unwrap();
        let ours = conv.conv_graph(&x, false).unwrap();
        let reference = x.conv2d(conv.weight.as_tensor(), 1, 2, 1, 1).unwrap();
        assert_eq!(ours.dims(), &[2, 4, 4, 3]);
        assert!(max_diff(&ours, &reference) < 1e-5);
        assert!(max_diff(&conv.conv_graph(&x, true).unwrap(), &reference) < 1e-5);
        // Gradients to the input and the weight equal candle's strided conv's.
        let probe: Vec<f32> = (0..reference.elem_count())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let probe = Tensor::from_vec(probe, reference.dims(), &Device::Cpu).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let grads = |y: Tensor| {
            let g = y
                .mul(&probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                g.get(xv.as_tensor()).unwrap().clone(),
                g.get(conv.weight.as_tensor()).unwrap().clone(),
            )
        };
        let (gx, gw) = grads(conv.conv_graph(xv.as_tensor(), false).unwrap());
        // (candle's strided conv2d has a wrong backward at even sides: stride 1, then every
        // second row and column, is the reference.)
        let (rx, rw) = grads(
            every_second(
                &xv.as_tensor()
                    .conv2d(conv.weight.as_tensor(), 1, 1, 1, 1)
                    .unwrap(),
            )
            .unwrap(),
        );
        assert!(max_diff(&gx, &rx) < 1e-4);
        assert!(max_diff(&gw, &rw) < 1e-4);
        let folded = conv.infer(&x).unwrap();
        let affine = conv.bn.affine(false).unwrap();
        assert!(max_diff(&folded, &affine.apply(&reference).unwrap()) < 1e-5);
    }

    #[test]
    fn resnets_train_adversarially_and_pgd_attacks_them() {
        use crate::attack::{attack, AttackParams};
        use crate::train::{train, TrainConfig};
        let data = crate::attack::tests::quadrant_images(200, 1);
        for arch in ["resnet:4;4x1,8x1", "resnet:4;4x1,8x1;sew"] {
            let mut spec = ModelSpec::new(
                arch.parse().unwrap(),
                2,
                crate::arch::InputShape {
                    channels: 1,
                    height: 16,
                    width: 16,
                },
                data.class_names.clone(),
            );
            spec.normalisation = crate::model::Normalisation::from_images(&data);
            let mut model = SnnModel::new(spec, &Device::Cpu, 1).unwrap();
            let config = TrainConfig {
                epochs: 4,
                batch_size: 25,
                lr: 0.05,
                augment: false,
                adversarial: AttackParams::fgsm(2.0 / 255.0),
                adversarial_fraction: 0.5,
                ..TrainConfig::default()
            };
            let summary = train(&mut model, &data, &config, &mut |_| {}).unwrap();
            assert!(
                summary.final_loss < summary.epoch_losses[0],
                "{arch}: {:?}",
                summary.epoch_losses
            );
            let x = crate::model::images_to_tensor(&data, 0..20, &Device::Cpu).unwrap();
            let labels = Tensor::new(&data.labels[..20], &Device::Cpu).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let eps = 8.0 / 255.0;
            let adv = attack(
                &model,
                &x,
                &labels,
                &AttackParams::pgd(eps, 2.0 / 255.0, 3),
                &mut rng,
            )
            .unwrap();
            assert!(max_diff(&adv, &x) <= eps as f32 + 1e-6);
            let loss = |p: &Tensor| {
                let logits = model.forward_eval(p).unwrap();
                candle_nn::loss::cross_entropy(&logits, &labels)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(loss(&adv) > loss(&x), "{arch}: PGD raises the loss");
        }
    }

    /// `resnet-tiny`, T = 4, CIFAR-sized images: inference and training-pass speed on this CPU,
    /// next to the VGG `small`.
    #[test]
    #[ignore = "benchmark: cargo test -p ccsrp-worker --lib -- --ignored --nocapture resnet_tiny_speed"]
    fn resnet_tiny_speed_on_cifar_sized_images() {
        for name in ["small", "resnet-tiny", "sew-resnet-tiny"] {
            let spec = ModelSpec::new(
                crate::arch::Architecture::preset(name).unwrap(),
                4,
                crate::arch::InputShape {
                    channels: 3,
                    height: 32,
                    width: 32,
                },
                (0..10).map(|i| i.to_string()).collect(),
            );
            let m = SnnModel::new(spec, &Device::Cpu, 0).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let batch = 100;
            let v: Vec<f32> = (0..batch * 3 * 32 * 32)
                .map(|_| rng.random_range(0.0f32..1.0))
                .collect();
            let x = Tensor::from_vec(v, (batch, 3, 32, 32), &Device::Cpu).unwrap();
            m.forward_eval(&x).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..3 {
                m.forward_eval(&x).unwrap();
            }
            let eval = start.elapsed().as_secs_f64() / 3.0 * 10.0;
            let start = std::time::Instant::now();
            let logits = m.forward(&x, true).unwrap();
            logits.sum_all().unwrap().backward().unwrap();
            let train = start.elapsed().as_secs_f64() * 10.0;
            println!(
                "{name}: forward_eval {eval:.2} s, training forward+backward {train:.2} s per 1000 \
                 images ({} MACs per image)",
                m.macs()
            );
        }
    }
}
