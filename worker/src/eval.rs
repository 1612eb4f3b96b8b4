//! Accuracy and activity of a model on u8 images, batched and without an autograd graph.
//!
//! Counts are exact integers (`u64`): fitness aggregates over shards by addition and must not
//! depend on how the images were batched. The predicted class is the first largest logit (ties go
//! to the lower class index; a NaN logit is never the largest), decided on the host so every
//! backend breaks ties the same way.
//!
//! Activity of a residual network lists every spiking layer in forward order (the stem; per
//! block sn1, for SEW the shortcut's neurons when it has a conv, sn2). A layer's SOPs are its spike
//! events (the LIF outputs, before a SEW addition) times the synapses each drives in every conv or
//! classifier that reads it, border-exact: a conv of stride 2 covers fewer outputs, and the global
//! average pool + classifier reads every position (`classes` synapses). In SEW-ResNet a block's
//! output is the sum of its sn2 and its shortcut, so spikes passing identity shortcuts also drive
//! the convs of later blocks.

use crate::data::ImageSet;
use crate::model::resnet::ResNet;
use crate::model::{pixels_to_tensor, ModelError, SnnModel};
use candle_core::{DType, Tensor};
use ccsrp_proto::activity::{sops_from_position_counts, Activity, LayerActivity};

/// Images per forward pass when the caller has no better number (memory grows with T x batch).
pub const DEFAULT_BATCH: usize = 100;

/// Predicted class of every row of `logits` (`[B, classes]`).
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>, ModelError> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut best = 0usize;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() && !v.is_nan() {
                    best = i;
                }
            }
            best as u32
        })
        .collect())
}

/// Images of `set` the model classifies correctly.
pub fn count_correct(model: &SnnModel, set: &ImageSet, batch: usize) -> Result<u64, ModelError> {
    count_correct_pixels(
        model,
        &set.pixels,
        &set.labels,
        (set.channels, set.height, set.width),
        batch,
    )
}

/// Images (u8 CHW, back to back, e.g. an adversarial shard) classified as their label.
pub fn count_correct_pixels(
    model: &SnnModel,
    pixels: &[u8],
    labels: &[u32],
    shape: (usize, usize, usize),
    batch: usize,
) -> Result<u64, ModelError> {
    let mut correct = 0;
    for_each_batch(model, pixels, labels, shape, batch, |_, logits, labels| {
        correct += predictions(logits)?
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count() as u64;
        Ok(())
    })?;
    Ok(correct)
}

/// Runs the inference pass over `pixels` in batches of `batch` images; `f(first_image, logits,
/// labels)` sees each batch.
fn for_each_batch(
    model: &SnnModel,
    pixels: &[u8],
    labels: &[u32],
    (c, h, w): (usize, usize, usize),
    batch: usize,
    mut f: impl FnMut(usize, &Tensor, &[u32]) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let image = c * h * w;
    if pixels.len() != labels.len() * image {
        return Err(ModelError::Input {
            what: "images",
            expected: format!(
                "{} labels x {image} bytes = {} bytes",
                labels.len(),
                labels.len() * image
            ),
            got: format!("{} bytes", pixels.len()),
        });
    }
    let batch = batch.max(1);
    for (i, chunk) in labels.chunks(batch).enumerate() {
        let start = i * batch;
        let bytes = &pixels[start * image..(start + chunk.len()) * image];
        let x = pixels_to_tensor(bytes, chunk.len(), (c, h, w), model.device())?;
        let logits = model.forward_eval(&x)?;
        f(start, &logits, chunk)?;
    }
    Ok(())
}

/// Fraction of neurons firing per step in each conv layer (spikes / (T x images x neurons)), over
/// `set`.
pub fn spike_rates(model: &SnnModel, set: &ImageSet, batch: usize) -> Result<Vec<f64>, ModelError> {
    Ok(activity(model, set, batch)?
        .layers
        .iter()
        .map(|l| l.rate())
        .collect())
}

/// Spikes and synaptic operations of every conv layer over `set` (all T steps), counted exactly:
/// each spike adds its fan-out ([`ccsrp_proto::activity::fan_out`]) to its layer's SOPs.
pub fn activity(model: &SnnModel, set: &ImageSet, batch: usize) -> Result<Activity, ModelError> {
    let desc = model.description();
    let readers = model
        .residual
        .as_ref()
        .map(|r| residual_readers(r, model.spec().classes()));
    let layers = readers.as_ref().map_or(model.num_layers(), Vec::len);
    let mut out = Activity {
        images: set.len() as u64,
        layers: vec![LayerActivity::default(); layers],
    };
    let image = set.image_bytes();
    let batch = batch.max(1);
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let bytes = &set.pixels[start * image..end * image];
        let x = pixels_to_tensor(
            bytes,
            end - start,
            (set.channels, set.height, set.width),
            model.device(),
        )?;
        let input = model.normalised_input(&x)?;
        model.run_inference(0, input, |l, s| {
            // Spikes per output position, summed over steps x images and channels.
            let per_position: Vec<u64> = s
                .to_dtype(DType::U32)?
                .sum(0)?
                .sum(0)?
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(u64::from)
                .collect();
            let sops = match &readers {
                Some(readers) => readers.get(l).and_then(|r| r.sops(&per_position)),
                None => sops_from_position_counts(&desc, l, &per_position),
            };
            let sops = sops.ok_or_else(|| ModelError::Input {
                what: "spikes",
                expected: format!("a spike map of layer {l} as its description says"),
                got: format!("{:?}", s.dims()),
            })?;
            let a = out
                .layers
                .get_mut(l)
                .ok_or_else(|| ModelError::NoSuchLayer { layer: l, layers })?;
            a.spikes += per_position.iter().sum::<u64>();
            a.neuron_steps += s.elem_count() as u64;
            a.sops += sops;
            Ok(())
        })?;
    }
    Ok(out)
}

/// Names of the entries of [`activity`], the spiking layers' modules in the PyTorch model: for a
/// VGG `features.{i}` (each prunable layer's LIF, see [`crate::model_file`]); for a ResNet
/// spikingjelly's `sn1` (stem), then per block `layer{s}.{b}.sn1`, for SEW with a conv shortcut
/// `layer{s}.{b}.downsample_sn`, and `layer{s}.{b}.sn2`.
pub fn activity_layer_names(model: &SnnModel) -> Vec<String> {
    let Some(r) = &model.residual else {
        return crate::model_file::layer_names(model.geometry())
            .iter()
            .filter_map(|n| {
                let i: usize = n.batch_norm.strip_prefix("features.")?.parse().ok()?;
                Some(format!("features.{}", i + 1))
            })
            .collect();
    };
    let mut names = vec!["sn1".to_string()];
    for b in &r.blocks {
        let p = crate::model::resnet::block_prefix(&b.geometry);
        names.push(format!("{p}.sn1"));
        if r.geometry.sew && b.downsample.is_some() {
            names.push(format!("{p}.downsample_sn"));
        }
        names.push(format!("{p}.sn2"));
    }
    names
}

/// A conv or the classifier reading a spiking layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// A `kernel` x `kernel` conv (padding `kernel / 2`) of `stride` with `filters` outputs of
    /// `height` x `width`.
    Conv {
        kernel: usize,
        stride: usize,
        filters: usize,
        height: usize,
        width: usize,
    },
    /// Global average pool + classifier: every position drives one synapse per class.
    Classifier { classes: usize },
}

impl Reader {
    /// Synapses a spike at (y, x) drives.
    fn fan_out(&self, y: usize, x: usize) -> u64 {
        match *self {
            Reader::Conv {
                kernel,
                stride,
                filters,
                height,
                width,
            } => {
                let pad = kernel / 2;
                // Outputs o with |o * stride - p| <= pad.
                let covered = |p: usize, size: usize| {
                    (0..size)
                        .filter(|&o| (o * stride).abs_diff(p) <= pad)
                        .count() as u64
                };
                covered(y, height) * covered(x, width) * filters as u64
            }
            Reader::Classifier { classes } => classes as u64,
        }
    }
}

/// A spiking layer's output map and its readers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LifReaders {
    height: usize,
    width: usize,
    readers: Vec<Reader>,
}

impl LifReaders {
    /// SOPs of spikes counted per position (`height * width` counts), or `None` when the counts do
    /// not fit the map.
    fn sops(&self, per_position: &[u64]) -> Option<u64> {
        if per_position.len() != self.height * self.width {
            return None;
        }
        let mut total = 0u64;
        for (p, &count) in per_position.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let (y, x) = (p / self.width, p % self.width);
            let fan: u64 = self.readers.iter().map(|r| r.fan_out(y, x)).sum();
            total = total.checked_add(count.checked_mul(fan)?)?;
        }
        Some(total)
    }
}

/// Readers of every spiking layer of a residual network, in [`ResNet::first_lif`] order.
fn residual_readers(r: &ResNet, classes: usize) -> Vec<LifReaders> {
    let input = r.geometry.input;
    let map = |height, width| LifReaders {
        height,
        width,
        readers: Vec::new(),
    };
    let mut lifs = vec![map(input.height, input.width)];
    // The spiking layers whose outputs add up to the current block input.
    let mut feeding: Vec<usize> = vec![0];
    for b in &r.blocks {
        let g = &b.geometry;
        let conv = |kernel, stride, filters| Reader::Conv {
            kernel,
            stride,
            filters,
            height: g.height,
            width: g.width,
        };
        let conv1 = conv(3, g.stride, b.conv1.weight.as_tensor().dims()[0]);
        let downsample = b
            .downsample
            .as_ref()
            .map(|_| conv(1, g.stride, g.out_channels));
        for &l in &feeding {
            lifs[l].readers.push(conv1);
            lifs[l].readers.extend(downsample);
        }
        lifs.push(LifReaders {
            readers: vec![conv(3, 1, g.out_channels)],
            ..map(g.height, g.width)
        });
        let shortcut_lif = if r.geometry.sew && b.downsample.is_some() {
            lifs.push(map(g.height, g.width));
            Some(lifs.len() - 1)
        } else {
            None
        };
        lifs.push(map(g.height, g.width));
        let sn2 = lifs.len() - 1;
        feeding = if !r.geometry.sew {
            vec![sn2]
        } else if let Some(s) = shortcut_lif {
            vec![s, sn2]
        } else {
            feeding.push(sn2);
            feeding
        };
    }
    for &l in &feeding {
        lifs[l].readers.push(Reader::Classifier { classes });
    }
    lifs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_spec;
    use candle_core::Device;

    fn images(n: usize) -> ImageSet {
        ImageSet {
            channels: 1,
            height: 12,
            width: 12,
            pixels: (0..n * 144).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn ties_go_to_the_lower_class_and_nan_never_wins() {
        let logits = Tensor::new(
            &[[1f32, 3.0, 3.0], [f32::NAN, 0.0, -1.0], [0.0, 0.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(predictions(&logits).unwrap(), vec![1, 1, 0]);
    }

    #[test]
    fn counts_do_not_depend_on_the_batch_size() {
        let model = SnnModel::new(tiny_spec("4,M,6,M", 2), &Device::Cpu, 8).unwrap();
        let set = images(23);
        let all = count_correct(&model, &set, 100).unwrap();
        assert_eq!(count_correct(&model, &set, 5).unwrap(), all);
        let x = pixels_to_tensor(&set.pixels, 23, (1, 12, 12), &Device::Cpu).unwrap();
        let direct = predictions(&model.forward_eval(&x).unwrap()).unwrap();
        let expected = direct
            .iter()
            .zip(&set.labels)
            .filter(|(p, l)| p == l)
            .count() as u64;
        assert_eq!(all, expected);
    }

    #[test]
    fn spike_rates_are_fractions_per_layer() {
        let model = SnnModel::new(tiny_spec("4,M,6,M", 2), &Device::Cpu, 8).unwrap();
        let rates = spike_rates(&model, &images(7), 3).unwrap();
        assert_eq!(rates.len(), 2);
        assert!(rates.iter().all(|r| (0.0..=1.0).contains(r)));
        assert!(rates.iter().any(|&r| r > 0.0));
    }

    /// SOPs by brute force: every spike, every synapse of the next layer (or the classifier) that
    /// reads the position it lands on after the pool.
    fn brute_force_sops(model: &SnnModel, set: &ImageSet) -> Vec<u64> {
        let geometry = model.geometry().to_vec();
        let classes = model.spec().classes() as u64;
        let mut sops = vec![0u64; geometry.len()];
        let x = pixels_to_tensor(&set.pixels, set.len(), (1, 12, 12), &Device::Cpu).unwrap();
        let input = model.normalised_input(&x).unwrap();
        model
            .run_inference(0, input, |l, s| {
                let g = geometry[l];
                let (n, c, h, w) = s.dims4()?;
                let flat = s.flatten_all()?.to_vec1::<f32>()?;
                let (ph, pw) = g.output_spatial();
                for (at, &v) in flat.iter().enumerate() {
                    assert_eq!(flat.len(), n * c * h * w);
                    if v == 0.0 {
                        continue;
                    }
                    let (y, x) = ((at / w) % h, at % w);
                    let (iy, ix) = if g.pool_after { (y / 2, x / 2) } else { (y, x) };
                    if iy >= ph || ix >= pw {
                        continue;
                    }
                    let Some(next) = geometry.get(l + 1) else {
                        sops[l] += classes;
                        continue;
                    };
                    for _out_channel in 0..next.filters {
                        for oy in 0..next.height {
                            for ox in 0..next.width {
                                if oy.abs_diff(iy) <= 1 && ox.abs_diff(ix) <= 1 {
                                    sops[l] += 1;
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
            .unwrap();
        sops
    }

    #[test]
    fn sops_equal_a_brute_force_count() {
        // 12x12 -> 4 filters, no pool (borders) -> 5 filters, pool to 6x6 -> 3 filters 6x6, pool
        // to 3x3 -> 2 filters, pool drops row and column 2 -> classifier. A low threshold so that
        // every layer of the untrained network spikes.
        let mut spec = tiny_spec("4,5,M,3,M,2,M", 3);
        spec.lif.v_threshold = 0.05;
        let model = SnnModel::new(spec, &Device::Cpu, 5).unwrap();
        let set = images(9);
        let a = activity(&model, &set, 4).unwrap();
        let sops: Vec<u64> = a.layers.iter().map(|l| l.sops).collect();
        assert!(sops.iter().all(|&s| s > 0), "{sops:?}");
        assert_eq!(sops, brute_force_sops(&model, &set));
        assert_eq!(a.images, 9);
        assert_eq!(a.layers[0].neuron_steps, 9 * 3 * 4 * 144);
        assert_eq!(
            activity(&model, &set, 100).unwrap(),
            a,
            "batching changes nothing"
        );
    }

    #[test]
    fn pruning_the_next_layers_filters_lowers_the_fan_out_exactly() {
        use ccsrp_proto::v1::Mask;
        let model = SnnModel::new(tiny_spec("4,M,6,M", 2), &Device::Cpu, 8).unwrap();
        let set = images(7);
        let dense = activity(&model, &set, 100).unwrap();
        let keep = [true, false, true, false, false, true];
        let pruned = model
            .prune(&[Mask::all(4), Mask::from_keep(&keep)])
            .unwrap();
        let after = activity(&pruned, &set, 100).unwrap();
        // Layer 0 spikes exactly as before; each spike now drives 3 of the 6 filters.
        assert_eq!(after.layers[0].spikes, dense.layers[0].spikes);
        assert_eq!(after.layers[0].sops * 6, dense.layers[0].sops * 3);
        assert!(after.layers[0].sops < dense.layers[0].sops);
    }

    #[test]
    fn mismatched_pixels_and_labels_are_an_error() {
        let model = SnnModel::new(tiny_spec("4,M", 2), &Device::Cpu, 8).unwrap();
        let err = count_correct_pixels(&model, &[0; 100], &[0], (1, 12, 12), 4).unwrap_err();
        assert!(err.to_string().contains("144 bytes"), "{err}");
    }

    /// Synapses a conv (`kernel`, `stride`, padding `kernel / 2`, `filters` outputs of
    /// `out_h x out_w`) drives from input `x` `[N, C, H, W]`, by walking every output and tap.
    fn brute_conv(
        x: &Tensor,
        kernel: usize,
        stride: usize,
        filters: usize,
        out: (usize, usize),
    ) -> u64 {
        let (n, c, h, w) = x.dims4().unwrap();
        let v = x
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let pad = kernel / 2;
        let mut total = 0u64;
        for oy in 0..out.0 {
            for ox in 0..out.1 {
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                        if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                            continue;
                        }
                        let (iy, ix) = (iy - pad, ix - pad);
                        for img in 0..n {
                            for ch in 0..c {
                                total += v[((img * c + ch) * h + iy) * w + ix] as u64;
                            }
                        }
                    }
                }
            }
        }
        total * filters as u64
    }

    #[test]
    fn residual_sops_equal_a_brute_force_count_over_every_conv_and_the_classifier() {
        use crate::model::resnet::{Pass, Start};
        use crate::model::tests::tiny_spec;
        for arch in [
            "resnet:3;3x1,4x2,5x1",
            "resnet:3;3x1,4x2,5x1;sew",
            "resnet:3;5x1;sew",
        ] {
            let mut spec = tiny_spec(arch, 2);
            spec.lif.v_threshold = 0.3;
            let model = SnnModel::new(spec, &Device::Cpu, 5).unwrap();
            let set = images(5);
            let a = activity(&model, &set, 2).unwrap();
            assert_eq!(
                activity(&model, &set, 100).unwrap(),
                a,
                "batching changes nothing"
            );
            let r = model.residual.as_ref().unwrap();
            assert_eq!(a.layers.len(), r.lif_count());
            assert!(
                a.layers.iter().all(|l| l.sops > 0 && l.spikes > 0),
                "{arch}: {a:?}"
            );
            // Brute force: what enters every block, what sn1 gives, and the last block's output.
            let x = pixels_to_tensor(&set.pixels, set.len(), (1, 12, 12), &Device::Cpu).unwrap();
            let mut block_inputs = Vec::new();
            let mut outputs = Vec::new();
            model
                .resnet_pass(
                    r,
                    Start::Image(model.normalised_input(&x).unwrap()),
                    Pass::Inference,
                    &mut |_, s| {
                        outputs.push(s.clone());
                        Ok(())
                    },
                    &mut |_, x| {
                        block_inputs.push(x.clone());
                        Ok(())
                    },
                )
                .unwrap();
            let mut total = 0u64;
            let mut lif = 1;
            let mut last = None;
            for (b, input) in r.blocks.iter().zip(&block_inputs) {
                let g = &b.geometry;
                let out = (g.height, g.width);
                total += brute_conv(input, 3, g.stride, g.inner, out);
                let sn1 = &outputs[lif];
                total += brute_conv(sn1, 3, 1, g.out_channels, out);
                // What SEW adds to sn2 (the spiking ResNet adds inside sn2: nothing after it).
                let shortcut = if b.downsample.is_some() {
                    total += brute_conv(input, 1, g.stride, g.out_channels, out);
                    if r.geometry.sew {
                        lif += 1;
                        Some(outputs[lif].clone())
                    } else {
                        None
                    }
                } else if r.geometry.sew {
                    Some(input.clone())
                } else {
                    None
                };
                lif += 2;
                let sn2 = outputs[lif - 1].clone();
                last = Some(match shortcut {
                    Some(s) => sn2.add(&s).unwrap(),
                    None => sn2,
                });
            }
            let last = last.unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            total += last as u64 * 3;
            let ours: u64 = a.layers.iter().map(|l| l.sops).sum();
            assert_eq!(ours, total, "{arch}");
            // Per layer where nothing is shared: the stem drives block 0's convs, sn1 conv2.
            let g0 = &r.blocks[0].geometry;
            let mut stem = brute_conv(&block_inputs[0], 3, 1, g0.inner, (g0.height, g0.width));
            if r.blocks[0].downsample.is_some() {
                stem += brute_conv(
                    &block_inputs[0],
                    1,
                    1,
                    g0.out_channels,
                    (g0.height, g0.width),
                );
            }
            if r.geometry.sew && r.blocks[0].downsample.is_none() {
                assert!(a.layers[0].sops > stem, "{arch}: also read by block 1");
            } else {
                assert_eq!(a.layers[0].sops, stem, "{arch}");
            }
            assert_eq!(
                a.layers[1].sops,
                brute_conv(&outputs[1], 3, 1, g0.out_channels, (g0.height, g0.width)),
                "{arch}"
            );
            assert_eq!(a.layers[0].neuron_steps, 5 * 2 * 3 * 144);
            assert_eq!(activity_layer_names(&model).len(), a.layers.len());
        }
    }

    #[test]
    fn activity_entries_are_named_after_the_pytorch_neuron_modules() {
        use crate::model::tests::tiny_spec;
        let name = |arch: &str| {
            activity_layer_names(&SnnModel::new(tiny_spec(arch, 2), &Device::Cpu, 0).unwrap())
        };
        assert_eq!(name("4,M,6"), vec!["features.2", "features.6"]);
        assert_eq!(
            name("resnet:4;4x1,8x1"),
            vec![
                "sn1",
                "layer1.0.sn1",
                "layer1.0.sn2",
                "layer2.0.sn1",
                "layer2.0.sn2"
            ]
        );
        assert_eq!(
            name("resnet:4;4x1,8x1;sew"),
            vec![
                "sn1",
                "layer1.0.sn1",
                "layer1.0.sn2",
                "layer2.0.sn1",
                "layer2.0.downsample_sn",
                "layer2.0.sn2"
            ]
        );
    }
}
