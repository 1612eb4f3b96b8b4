//! Layer inputs for the prefix cache (DESIGN.md section 5).
//!
//! Every candidate of layer l shares layers < l with the representatives network, so a worker runs
//! that network once per shard ([`SnnModel::layer_inputs`]), keeps what enters each layer, and scores
//! a layer-l candidate from layer l on ([`SnnModel::forward_from`]). A candidate pruned only in
//! layers >= l sees exactly the representatives network's layer-l input.
//!
//! Entry 0 is the normalised image `[B, C, H, W]` f32. Entry l >= 1 is the spike output of layer
//! l-1 *before* its pool, `[T*B, C, H, W]` as u8 (spikes are 0/1: exact, a quarter of f32); the pool
//! is re-applied in [`SnnModel::forward_from`], because pooled spikes are no longer binary.
//!
//! In a residual network prunable layer l is block l's conv1, and entry l is what enters block l
//! (`[T*B, C, H, W]`, the stem's spikes for l = 0): spikes, or for SEW-ResNet small integers (at
//! most one more than the blocks before), stored as u8 too (f32 in a network of 255 blocks or more).

use crate::model::resnet::{Pass, ResNet, Start};
use crate::model::{ModelError, SnnModel};
use candle_core::{DType, Tensor};

impl SnnModel {
    /// What enters every conv layer for `pixels` (`[B, C, H, W]` in [0, 1]); see the module doc.
    pub fn layer_inputs(&self, pixels: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        if let Some(r) = &self.residual {
            let mut inputs = Vec::with_capacity(r.blocks.len());
            let image = self.normalised_input(pixels)?;
            self.resnet_pass(
                r,
                Start::Image(image),
                Pass::Inference,
                &mut |_, _| Ok(()),
                &mut |_, x| {
                    inputs.push(x.to_dtype(cache_dtype(r))?);
                    Ok(())
                },
            )?;
            return Ok(inputs);
        }
        let layers = self.num_layers();
        let mut inputs = vec![self.normalised_input(pixels)?];
        self.run_inference(0, inputs[0].clone(), |l, spikes| {
            if l + 1 < layers {
                inputs.push(spikes.to_dtype(DType::U8)?);
            }
            Ok(())
        })?;
        Ok(inputs)
    }

    /// Logits `[B, classes]` running only layers `layer..` on `input`, which is entry `layer` of
    /// [`SnnModel::layer_inputs`] (of this network or of any network equal to it below `layer`).
    /// Equals [`SnnModel::forward_eval`] of the whole network.
    pub fn forward_from(&self, layer: usize, input: &Tensor) -> Result<Tensor, ModelError> {
        let layers = self.num_layers();
        if layer >= layers {
            return Err(ModelError::NoSuchLayer { layer, layers });
        }
        let t = self.spec().timesteps;
        let expected = if let Some(r) = &self.residual {
            let b = &r.geometry.blocks[layer];
            (b.in_channels, b.in_height, b.in_width, t)
        } else if layer == 0 {
            let i = self.spec().input;
            (i.channels, i.height, i.width, 1)
        } else {
            let g = &self.geometry()[layer - 1];
            (g.filters, g.height, g.width, t)
        };
        let ok = matches!(input.dims(), [rows, c, h, w]
            if *rows > 0 && rows.is_multiple_of(expected.3) && (*c, *h, *w) == (expected.0, expected.1, expected.2));
        if !ok {
            return Err(ModelError::Input {
                what: "layer input shape",
                expected: format!(
                    "[{}, {}, {}, {}] for layer {layer}",
                    if expected.3 == 1 { "B" } else { "T*B" },
                    expected.0,
                    expected.1,
                    expected.2
                ),
                got: format!("{:?}", input.dims()),
            });
        }
        let input = input.detach().to_dtype(DType::F32)?;
        if let Some(r) = &self.residual {
            return self.resnet_pass(
                r,
                Start::Block(layer, input),
                Pass::Inference,
                &mut |_, _| Ok(()),
                &mut |_, _| Ok(()),
            );
        }
        self.run_inference(layer, input, |_, _| Ok(()))
    }
}

/// How a residual network's block inputs are cached: u8 while they fit (module doc).
fn cache_dtype(r: &ResNet) -> DType {
    if r.blocks.len() < 255 {
        DType::U8
    } else {
        DType::F32
    }
}

#[cfg(test)]
mod tests {
    use crate::model::tests::{random_pixels, tiny_spec};
    use crate::model::SnnModel;
    use candle_core::{DType, Device};
    use ccsrp_proto::v1::Mask;

    #[test]
    fn running_from_any_layer_on_its_cached_input_equals_the_full_pass() {
        let model = SnnModel::new(tiny_spec("4,M,6,5,M", 3), &Device::Cpu, 2).unwrap();
        let x = random_pixels(5, 4);
        let full: Vec<Vec<f32>> = model.forward_eval(&x).unwrap().to_vec2().unwrap();
        let inputs = model.layer_inputs(&x).unwrap();
        assert_eq!(inputs.len(), 3);
        assert_eq!(inputs[1].dtype(), DType::U8);
        assert_eq!(inputs[1].dims(), &[15, 4, 12, 12]);
        for (l, input) in inputs.iter().enumerate() {
            let from: Vec<Vec<f32>> = model.forward_from(l, input).unwrap().to_vec2().unwrap();
            assert_eq!(from, full, "layer {l}");
        }
    }

    #[test]
    fn a_candidate_pruned_from_layer_l_on_reuses_the_dense_prefix() {
        let model = SnnModel::new(tiny_spec("4,M,6,5,M", 2), &Device::Cpu, 2).unwrap();
        let x = random_pixels(4, 5);
        let inputs = model.layer_inputs(&x).unwrap();
        let masks = [
            Mask::all(4),
            Mask::from_keep(&[true, false, true, true, false, true]),
            Mask::from_keep(&[false, true, true, true, true]),
        ];
        let candidate = model.prune(&masks).unwrap();
        let direct: Vec<Vec<f32>> = candidate.forward_eval(&x).unwrap().to_vec2().unwrap();
        let cached: Vec<Vec<f32>> = candidate
            .forward_from(1, &inputs[1])
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(cached, direct);
    }

    #[test]
    fn wrong_layer_or_input_shape_is_an_error() {
        let model = SnnModel::new(tiny_spec("4,M,6", 2), &Device::Cpu, 2).unwrap();
        let inputs = model.layer_inputs(&random_pixels(2, 0)).unwrap();
        assert!(model.forward_from(2, &inputs[1]).is_err());
        let err = model.forward_from(0, &inputs[1]).unwrap_err().to_string();
        assert!(err.contains("layer 0"), "{err}");
    }
}
