//! Physical structured pruning: a smaller network with the pruned filters sliced out, so its cost
//! falls with its MACs (nothing is multiplied by a zero mask).
//!
//! Pruning filter f of layer l removes output channel f of conv l (weight rows), its batch-norm
//! channel (weight, bias, running statistics), input channel f of conv l+1, or, for the last layer,
//! the classifier's input features `f*HW..(f+1)*HW` (flatten order C, H, W). The result's spec has
//! the smaller widths; everything else (LIF, T, normalisation, classes) is unchanged.
//!
//! In a residual network, pruning filter f of prunable layer l (block l's conv1) removes output
//! channel f of that conv1, its `bn1` channel and input channel f of the block's conv2; the
//! residual path (stem, conv2 outputs, shortcuts, classifier) keeps all its channels. The spec
//! records the new inner widths (`;inner=...`).

use crate::model::{ModelError, SnnModel};
use candle_core::Tensor;
use ccsrp_proto::v1::Mask;
use std::collections::HashMap;

impl SnnModel {
    /// The network keeping, in every conv layer l, the filters set in `masks[l]` (one mask per conv
    /// layer, over its current filters, keeping at least one). An error names the layer whose mask
    /// does not fit.
    pub fn prune(&self, masks: &[Mask]) -> Result<SnnModel, ModelError> {
        let geometry = self.geometry();
        if masks.len() != geometry.len() {
            return Err(ModelError::MaskCount {
                expected: geometry.len(),
                got: masks.len(),
            });
        }
        let mut kept: Vec<Vec<u32>> = Vec::with_capacity(masks.len());
        for (layer, (mask, g)) in masks.iter().zip(geometry).enumerate() {
            mask.validate(g.filters as u32)
                .map_err(|source| ModelError::Mask { layer, source })?;
            kept.push(mask.kept_indices().into_iter().map(|i| i as u32).collect());
        }
        let device = self.device();
        let state: HashMap<String, Tensor> = self.state().into_iter().collect();
        let tensor = |name: &str| {
            state.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })
        };
        if let Some(r) = &self.residual {
            let mut pruned = state.clone();
            for (b, k) in r.geometry.blocks.iter().zip(&kept) {
                let p = crate::model::resnet::block_prefix(b);
                let rows = Tensor::new(k.as_slice(), device)?;
                let mut names = vec![format!("{p}.conv1.weight")];
                names.extend(
                    ["weight", "bias", "running_mean", "running_var"]
                        .map(|suffix| format!("{p}.bn1.{suffix}")),
                );
                for name in names {
                    pruned.insert(name.clone(), tensor(&name)?.index_select(&rows, 0)?);
                }
                let name = format!("{p}.conv2.weight");
                pruned.insert(name.clone(), tensor(&name)?.index_select(&rows, 1)?);
            }
            let mut spec = self.spec().clone();
            let widths: Vec<usize> = kept.iter().map(Vec::len).collect();
            spec.architecture = spec.architecture.with_widths(&widths);
            return SnnModel::from_state(spec, device, &pruned);
        }
        let names = crate::model_file::layer_names(geometry);
        let mut pruned = HashMap::new();
        for (l, n) in names.iter().enumerate() {
            let rows = Tensor::new(kept[l].as_slice(), device)?;
            let name = format!("{}.weight", n.conv);
            let mut weight = tensor(&name)?.index_select(&rows, 0)?;
            if l > 0 {
                let inputs = Tensor::new(kept[l - 1].as_slice(), device)?;
                weight = weight.index_select(&inputs, 1)?;
            }
            pruned.insert(name, weight);
            for suffix in ["weight", "bias", "running_mean", "running_var"] {
                let name = format!("{}.{suffix}", n.batch_norm);
                pruned.insert(name.clone(), tensor(&name)?.index_select(&rows, 0)?);
            }
        }
        let last = geometry.len() - 1;
        let classifier = tensor("classifier.weight")?;
        let per_channel = (classifier.dim(1)? / geometry[last].filters.max(1)) as u32;
        let features: Vec<u32> = kept[last]
            .iter()
            .flat_map(|&f| f * per_channel..(f + 1) * per_channel)
            .collect();
        pruned.insert(
            "classifier.weight".to_string(),
            classifier.index_select(&Tensor::new(features.as_slice(), device)?, 1)?,
        );
        pruned.insert(
            "classifier.bias".to_string(),
            tensor("classifier.bias")?.clone(),
        );
        let mut spec = self.spec().clone();
        let widths: Vec<usize> = kept.iter().map(Vec::len).collect();
        spec.architecture = spec.architecture.with_widths(&widths);
        SnnModel::from_state(spec, device, &pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{random_masks, random_pixels, tiny_spec};
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    /// The dense model with the pruned filters silenced: batch-norm scale 0 and shift -1e6 make the
    /// channel's current hugely negative, so its spikes are 0 at every step (the spike output
    /// multiplied by the mask) while the unmodified dense code path runs.
    fn silenced(model: &SnnModel, masks: &[Mask]) -> SnnModel {
        let copy = model.try_clone().unwrap();
        for (block, mask) in copy.blocks.iter().zip(masks) {
            let keep: Vec<f32> = mask
                .to_keep()
                .iter()
                .map(|&k| f32::from(u8::from(k)))
                .collect();
            let keep = Tensor::new(keep.as_slice(), &Device::Cpu).unwrap();
            let w = block.bn_weight.as_tensor().mul(&keep).unwrap();
            let off = keep.affine(1e6, -1e6).unwrap();
            let b = block
                .bn_bias
                .as_tensor()
                .mul(&keep)
                .unwrap()
                .add(&off)
                .unwrap();
            set(&block.bn_weight, &w);
            set(&block.bn_bias, &b);
        }
        copy
    }

    fn set(v: &Var, t: &Tensor) {
        v.set(t).unwrap();
    }

    #[test]
    fn sliced_network_equals_the_dense_one_with_pruned_spikes_silenced() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for arch in ["6,M,5,M", "5,7,M,4"] {
            let model = SnnModel::new(tiny_spec(arch, 3), &Device::Cpu, 4).unwrap();
            let x = random_pixels(8, 3);
            for _ in 0..4 {
                let masks = random_masks(&model, 0.6, &mut rng);
                let pruned = model.prune(&masks).unwrap();
                let widths: Vec<usize> = masks.iter().map(|m| m.kept() as usize).collect();
                assert_eq!(pruned.spec().architecture.widths(), widths);
                let a = pruned.forward_eval(&x).unwrap();
                let b = silenced(&model, &masks).forward_eval(&x).unwrap();
                let d = a.sub(&b).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{arch} {masks:?}");
                let desc = model.description();
                let kept: Vec<u32> = masks.iter().map(Mask::kept).collect();
                assert_eq!(
                    pruned.macs(),
                    ccsrp_proto::cost::macs(&desc, &kept).unwrap()
                );
            }
        }
    }

    #[test]
    fn masks_that_do_not_fit_name_the_layer() {
        let model = SnnModel::new(tiny_spec("6,M,5,M", 2), &Device::Cpu, 4).unwrap();
        let err = model
            .prune(&[Mask::all(6), Mask::from_keep(&[false; 5])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 1") && err.contains("keeps no filter"),
            "{err}"
        );
        let err = model
            .prune(&[Mask::all(5), Mask::all(5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 0"), "{err}");
        assert!(matches!(
            model.prune(&[Mask::all(6)]),
            Err(ModelError::MaskCount {
                expected: 2,
                got: 1
            })
        ));
    }
}
