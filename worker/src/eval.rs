//! Accuracy and activity of a model on u8 images, batched and without an autograd graph.
//!
//! Counts are exact integers (`u64`): fitness aggregates over shards by addition and must not
//! depend on how the images were batched. The predicted class is the first largest logit (ties go
//! to the lower class index; a NaN logit is never the largest), decided on the host so every
//! backend breaks ties the same way.

use crate::data::ImageSet;
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
    let layers = model.num_layers();
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
            let sops = sops_from_position_counts(&desc, l, &per_position).ok_or_else(|| {
                ModelError::Input {
                    what: "spikes",
                    expected: format!("a spike map of layer {l} as its description says"),
                    got: format!("{:?}", s.dims()),
                }
            })?;
            let a = &mut out.layers[l];
            a.spikes += per_position.iter().sum::<u64>();
            a.neuron_steps += s.elem_count() as u64;
            a.sops += sops;
            Ok(())
        })?;
    }
    Ok(out)
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
}
