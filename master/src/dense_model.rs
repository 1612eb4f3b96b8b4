//! The description of a given dense model, read from its safetensors file without any tensor code.
//!
//! A ccsrp model file (worker crate, `model_file`) is safetensors: an 8-byte little-endian header
//! length, a JSON header naming each tensor's shape, then the data. Its metadata key
//! `ccsrp.model_spec` holds the architecture (`"32,M,64,M"`: conv widths, `M` = a 2x2 average pool
//! after the previous conv), the input shape and the time steps. Filters, input channels and
//! kernels come from the conv weights' shapes (`features.{i}.weight`, `[out, in, k, k]`, in index
//! order), the classes and classifier inputs from `classifier.weight` (`[classes, features]`);
//! convs keep their input size (stride 1, same padding) and each pool halves it.
//!
//! A residual network (architecture `resnet:...`) is read from spikingjelly's tensor names: the
//! stem `conv1.weight`, the basic blocks `layer{s}.{b}.conv1.weight` / `conv2.weight` /
//! `downsample.0.weight` (the 1x1 shortcut conv, where present) and `fc.weight`. Each block's
//! conv1 is one prunable layer reading the residual path; the first block of every stage after the
//! first has stride 2 (the architecture's rule), so its map is `ceil(side / 2)`. The stem, the
//! shortcuts and the classifier are fixed parts ([`ModelDescription::fixed_macs`]).

use std::io::Read;
use std::path::Path;

use ccsrp_proto::v1::{ConvLayer, ModelDescription};
use serde_json::Value;

/// Metadata key of the model spec (the worker's `model_file::SPEC_METADATA_KEY`).
pub const SPEC_METADATA_KEY: &str = "ccsrp.model_spec";

/// Largest header read (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A model file whose description cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("dense model {path}: {detail}")]
pub struct DenseModelError {
    pub path: String,
    pub detail: String,
}

/// The description of the model in the safetensors file at `path`.
pub fn read_description(path: &Path) -> Result<ModelDescription, DenseModelError> {
    let fail = |detail: String| DenseModelError {
        path: path.display().to_string(),
        detail,
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| fail(format!("no safetensors header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(fail(format!(
            "header of {len} bytes exceeds {MAX_HEADER_BYTES}: not a safetensors file"
        )));
    }
    // Checked before allocating: a forged length must not cost its size in memory.
    if len > file_len.saturating_sub(8) {
        return Err(fail(format!(
            "truncated: the header length says {len} bytes, the file has {} after it",
            file_len.saturating_sub(8)
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| fail(format!("truncated safetensors header: {e}")))?;
    description_from_header(&header).map_err(fail)
}

fn shape(header: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<u64>> {
    header
        .get(name)?
        .get("shape")?
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect()
}

/// The description from a safetensors JSON header.
pub fn description_from_header(header: &[u8]) -> Result<ModelDescription, String> {
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    let spec_text = header
        .get("__metadata__")
        .and_then(|m| m.get(SPEC_METADATA_KEY))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {SPEC_METADATA_KEY:?} metadata: not a ccsrp model file"))?;
    let spec: Value = serde_json::from_str(spec_text)
        .map_err(|e| format!("metadata {SPEC_METADATA_KEY:?} is not JSON: {e}"))?;
    let arch = spec
        .get("architecture")
        .and_then(Value::as_str)
        .ok_or("model spec has no architecture string")?;
    let timesteps = spec
        .get("timesteps")
        .and_then(Value::as_u64)
        .ok_or("model spec has no timesteps")?;
    let input = spec.get("input").ok_or("model spec has no input shape")?;
    let dim = |k: &str| {
        input
            .get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("model spec input has no {k}"))
    };
    let (mut height, mut width) = (dim("height")?, dim("width")?);
    if arch.trim_start().to_ascii_lowercase().starts_with("resnet")
        || arch
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("sew-resnet")
    {
        return residual_description(&header, dim("channels")?, (height, width), timesteps);
    }
    let mut convs: Vec<(u64, Vec<u64>)> = header
        .keys()
        .filter_map(|k| {
            let index = k.strip_prefix("features.")?.strip_suffix(".weight")?;
            let index: u64 = index.parse().ok()?;
            let s = shape(&header, k)?;
            (s.len() == 4).then_some((index, s))
        })
        .collect();
    convs.sort();
    let mut layers: Vec<ConvLayer> = Vec::new();
    let mut next_conv = convs.iter();
    for item in arch.split(',').map(str::trim) {
        if item.eq_ignore_ascii_case("m") {
            let last = layers.last_mut().ok_or("architecture starts with a pool")?;
            last.pool_after = true;
            height /= 2;
            width /= 2;
            continue;
        }
        let (index, s) = next_conv.next().ok_or(format!(
            "architecture {arch:?} has more convs than the file's tensors"
        ))?;
        let name = format!("features.{index}.weight");
        layers.push(ConvLayer {
            filters: fit(s[0], &name)?,
            in_channels: fit(s[1], &name)?,
            kernel: fit(s[2], &name)?,
            out_height: fit(height, "model spec input height")?,
            out_width: fit(width, "model spec input width")?,
            pool_after: false,
            ..Default::default()
        });
    }
    let classifier = shape(&header, "classifier.weight")
        .filter(|s| s.len() == 2)
        .ok_or("no 2-D classifier.weight tensor")?;
    let last = layers.last().ok_or("architecture has no conv layer")?;
    if last.filters == 0 || classifier[1] % u64::from(last.filters) != 0 {
        return Err(format!(
            "classifier.weight has {} inputs, not a multiple of the last layer's {} filters",
            classifier[1], last.filters
        ));
    }
    Ok(ModelDescription {
        classifier_spatial: fit(classifier[1] / u64::from(last.filters), "classifier.weight")?,
        classes: fit(classifier[0], "classifier.weight")?,
        timesteps: fit(timesteps, "model spec timesteps")?,
        layers,
        ..Default::default()
    })
}

/// A tensor's shape that must have `rank` dimensions.
fn shape_of(
    header: &serde_json::Map<String, Value>,
    name: &str,
    rank: usize,
) -> Result<Vec<u64>, String> {
    let s = shape(header, name).ok_or(format!("no tensor {name}"))?;
    if s.len() != rank {
        return Err(format!(
            "tensor {name} has shape {s:?}, expected {rank} dimensions"
        ));
    }
    Ok(s)
}

/// The description of a residual network from spikingjelly-named tensors (module docs).
fn residual_description(
    header: &serde_json::Map<String, Value>,
    image_channels: u64,
    (mut height, mut width): (u64, u64),
    timesteps: u64,
) -> Result<ModelDescription, String> {
    let overflow = || "the network's sizes overflow 64 bits: no real model".to_string();
    let mul = |v: &[u64]| {
        v.iter()
            .try_fold(1u64, |acc, &x| acc.checked_mul(x))
            .ok_or_else(overflow)
    };
    let stem = shape_of(header, "conv1.weight", 4)?;
    if stem[1] != image_channels {
        return Err(format!(
            "conv1.weight reads {} channels, the model spec's input has {image_channels}",
            stem[1]
        ));
    }
    let mut fixed_macs = mul(&[stem[0], stem[1], stem[2], stem[3], height, width])?;
    let input_layer_macs = fixed_macs;
    let mut fixed_parameters = mul(&[stem[0], stem[1], stem[2], stem[3]])?
        .checked_add(mul(&[2, stem[0]])?)
        .ok_or_else(overflow)?;
    // Blocks in forward order: (stage, block) from the names layer{s}.{b}.conv1.weight.
    let mut blocks: Vec<(u64, u64)> = header
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("layer")?.strip_suffix(".conv1.weight")?;
            let (s, b) = rest.split_once('.')?;
            Some((s.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    blocks.sort();
    if blocks.is_empty() {
        return Err("no residual block (no tensor layer{s}.{b}.conv1.weight)".into());
    }
    // Stages numbered 1, 2, ... and blocks 0, 1, ... in each, without gaps: the stride rule
    // (first block of every later stage) depends on it.
    for (i, &(stage, block)) in blocks.iter().enumerate() {
        let expected = match i.checked_sub(1).map(|p| blocks[p]) {
            None => [(1, 0)].to_vec(),
            Some((s, b)) => [(s, b + 1), (s + 1, 0)].to_vec(),
        };
        if !expected.contains(&(stage, block)) {
            return Err(format!(
                "residual blocks must be numbered layer1.0, layer1.1, ..., layer2.0, ... without gaps; found layer{stage}.{block} after {}",
                i.checked_sub(1)
                    .map_or("the stem".to_string(), |p| format!("layer{}.{}", blocks[p].0, blocks[p].1))
            ));
        }
    }
    let kernel = |name: &str, s: &[u64], k: u64| {
        if s[2] == k && s[3] == k {
            Ok(())
        } else {
            Err(format!(
                "tensor {name} has a {}x{} kernel, expected {k}x{k} (the CIFAR-stem spiking ResNet)",
                s[2], s[3]
            ))
        }
    };
    kernel("conv1.weight", &stem, 3)?;
    let mut channels = stem[0];
    let mut layers = Vec::with_capacity(blocks.len());
    for &(stage, block) in &blocks {
        let prefix = format!("layer{stage}.{block}");
        let conv1 = shape_of(header, &format!("{prefix}.conv1.weight"), 4)?;
        let conv2 = shape_of(header, &format!("{prefix}.conv2.weight"), 4)?;
        kernel(&format!("{prefix}.conv1.weight"), &conv1, 3)?;
        kernel(&format!("{prefix}.conv2.weight"), &conv2, 3)?;
        if conv1[1] != channels {
            return Err(format!(
                "{prefix}.conv1.weight reads {} channels, the residual path has {channels}",
                conv1[1]
            ));
        }
        if conv2[1] != conv1[0] {
            return Err(format!(
                "{prefix}.conv2.weight reads {} channels, {prefix}.conv1.weight has {} filters",
                conv2[1], conv1[0]
            ));
        }
        let stride: u64 = if block == 0 && stage >= 2 { 2 } else { 1 };
        height = height.div_ceil(stride);
        width = width.div_ceil(stride);
        let shortcut = format!("{prefix}.downsample.0.weight");
        match shape(header, &shortcut) {
            Some(s) if s.len() == 4 => {
                kernel(&shortcut, &s, 1)?;
                fixed_macs = fixed_macs
                    .checked_add(mul(&[s[0], s[1], s[2], s[3], height, width])?)
                    .ok_or_else(overflow)?;
                fixed_parameters = fixed_parameters
                    .checked_add(mul(&[s[0], s[1], s[2], s[3]])?)
                    .and_then(|p| p.checked_add(s[0].checked_mul(2)?))
                    .ok_or_else(overflow)?;
            }
            Some(s) => return Err(format!("tensor {shortcut} has shape {s:?}, expected 4 dimensions")),
            None if stride != 1 || conv2[0] != channels => {
                return Err(format!(
                    "block {prefix} changes the map (stride {stride}, {channels} -> {} channels) but has no shortcut conv {shortcut}",
                    conv2[0]
                ))
            }
            None => {}
        }
        // conv2's batch norm is on the residual path: fixed.
        fixed_parameters = fixed_parameters
            .checked_add(mul(&[2, conv2[0]])?)
            .ok_or_else(overflow)?;
        let name = format!("{prefix}.conv1.weight");
        layers.push(ConvLayer {
            filters: fit(conv1[0], &name)?,
            in_channels: fit(conv1[1], &name)?,
            kernel: fit(conv1[2], &name)?,
            out_height: fit(height, "model spec input height")?,
            out_width: fit(width, "model spec input width")?,
            pool_after: false,
            stride: fit(stride, &name)?,
            fixed_input: true,
            consumer_filters: fit(conv2[0], &format!("{prefix}.conv2.weight"))?,
        });
        channels = conv2[0];
    }
    let fc = shape_of(header, "fc.weight", 2)?;
    if fc[1] != channels {
        return Err(format!(
            "fc.weight has {} inputs, the last stage has {channels} channels",
            fc[1]
        ));
    }
    fixed_macs = fixed_macs
        .checked_add(mul(&[fc[0], fc[1]])?)
        .ok_or_else(overflow)?;
    fixed_parameters = fixed_parameters
        .checked_add(mul(&[fc[0], fc[1]])?)
        .and_then(|p| p.checked_add(fc[0]))
        .ok_or_else(overflow)?;
    Ok(ModelDescription {
        layers,
        classifier_spatial: 1,
        classes: fit(fc[0], "fc.weight")?,
        timesteps: fit(timesteps, "model spec timesteps")?,
        fixed_macs,
        fixed_parameters,
        classifier_features: fit(channels, "fc.weight")?,
        input_layer_macs,
    })
}

/// A size from the header as the description's u32, or an error naming where it came from (a
/// value past u32 is no real model, and must not wrap to a small one).
fn fit(value: u64, what: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{what}: size {value} exceeds {}", u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(arch: &str, tensors: &[(&str, Vec<u64>)]) -> Vec<u8> {
        let spec = serde_json::json!({
            "architecture": arch, "timesteps": 4,
            "input": {"channels": 1, "height": 16, "width": 16},
        });
        let mut map = serde_json::Map::new();
        map.insert(
            "__metadata__".into(),
            serde_json::json!({ SPEC_METADATA_KEY: spec.to_string(), "format": "pt" }),
        );
        for (name, shape) in tensors {
            map.insert(
                (*name).into(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}),
            );
        }
        serde_json::to_vec(&map).unwrap()
    }

    #[test]
    fn description_follows_weight_shapes_and_pools() {
        let h = header(
            "8,M,16,M",
            &[
                ("features.0.weight", vec![6, 1, 3, 3]),
                ("features.1.weight", vec![6]),
                ("features.4.weight", vec![16, 6, 3, 3]),
                ("classifier.weight", vec![10, 16 * 16]),
            ],
        );
        let d = description_from_header(&h).unwrap();
        assert_eq!(d.layers.len(), 2);
        assert_eq!((d.layers[0].filters, d.layers[0].out_height), (6, 16));
        assert!(d.layers[0].pool_after);
        assert_eq!((d.layers[1].in_channels, d.layers[1].out_width), (6, 8));
        assert_eq!((d.classifier_spatial, d.classes, d.timesteps), (16, 10, 4));
    }

    #[test]
    fn file_without_spec_is_refused_with_the_reason() {
        let err = description_from_header(b"{}").unwrap_err();
        assert!(err.contains(SPEC_METADATA_KEY), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, [1u8, 2]).unwrap();
        let err = read_description(&path).unwrap_err().to_string();
        assert!(err.contains("m.safetensors"), "{err}");
    }

    #[test]
    fn a_residual_network_is_read_from_spikingjelly_names() {
        // resnet:4;4x1,8x1 on 1x16x16: stem 1->4, block 1.0 (4->4, stride 1, identity shortcut),
        // block 2.0 (4->8, stride 2, 1x1 shortcut), fc 8->10.
        let h = header(
            "resnet:4;4x1,8x1",
            &[
                ("conv1.weight", vec![4, 1, 3, 3]),
                ("bn1.weight", vec![4]),
                ("layer1.0.conv1.weight", vec![3, 4, 3, 3]),
                ("layer1.0.conv2.weight", vec![4, 3, 3, 3]),
                ("layer2.0.conv1.weight", vec![8, 4, 3, 3]),
                ("layer2.0.conv2.weight", vec![8, 8, 3, 3]),
                ("layer2.0.downsample.0.weight", vec![8, 4, 1, 1]),
                ("fc.weight", vec![10, 8]),
            ],
        );
        let d = description_from_header(&h).unwrap();
        assert_eq!(d.layers.len(), 2);
        let (a, b) = (&d.layers[0], &d.layers[1]);
        assert_eq!(
            (a.filters, a.in_channels, a.out_height, a.stride),
            (3, 4, 16, 1)
        );
        assert_eq!(
            (b.filters, b.in_channels, b.out_height, b.stride),
            (8, 4, 8, 2)
        );
        assert!(a.fixed_input && b.fixed_input);
        assert_eq!((a.consumer_filters, b.consumer_filters), (4, 8));
        let stem = 4 * 9 * 256;
        assert_eq!(d.input_layer_macs, stem);
        assert_eq!(d.fixed_macs, stem + 8 * 4 * 64 + 80);
        assert_eq!(
            d.fixed_parameters,
            (36 + 8) + 2 * 4 + (2 * 8 + 32 + 16) + 90
        );
        assert_eq!(
            (d.classifier_features, d.classifier_spatial, d.classes),
            (8, 1, 10)
        );
        // Dense MACs per image: stem, both blocks' convs, the shortcut and fc, times T = 4.
        let convs = 9 * 4 * 3 * 256 + 9 * 3 * 4 * 256 + 9 * 4 * 8 * 64 + 9 * 8 * 8 * 64;
        assert_eq!(
            ccsrp_proto::cost::dense_macs(&d),
            4 * (stem + convs + 8 * 4 * 64 + 80)
        );
    }

    #[test]
    fn a_residual_block_that_changes_the_map_without_a_shortcut_is_refused() {
        let h = header(
            "resnet:4;8x1",
            &[
                ("conv1.weight", vec![4, 1, 3, 3]),
                ("layer1.0.conv1.weight", vec![8, 4, 3, 3]),
                ("layer1.0.conv2.weight", vec![8, 8, 3, 3]),
                ("fc.weight", vec![10, 8]),
            ],
        );
        let err = description_from_header(&h).unwrap_err();
        assert!(err.contains("layer1.0.downsample.0.weight"), "{err}");
        let h = header("resnet:4;8x1", &[("conv1.weight", vec![4, 1, 3, 3])]);
        let err = description_from_header(&h).unwrap_err();
        assert!(err.contains("no residual block"), "{err}");
    }

    #[test]
    fn residual_files_the_worker_would_refuse_are_refused_here_first() {
        let block = |s: u32, b: u32| {
            [
                (format!("layer{s}.{b}.conv1.weight"), vec![4, 4, 3, 3]),
                (format!("layer{s}.{b}.conv2.weight"), vec![4, 4, 3, 3]),
            ]
        };
        let file = |blocks: Vec<(String, Vec<u64>)>, stem: Vec<u64>| {
            let mut t: Vec<(String, Vec<u64>)> = vec![("conv1.weight".into(), stem)];
            t.extend(blocks);
            t.push(("fc.weight".into(), vec![10, 4]));
            let t: Vec<(&str, Vec<u64>)> = t.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
            description_from_header(&header("resnet:4;4x2", &t))
        };
        // A gap in the block numbering.
        let gap: Vec<_> = block(1, 0).into_iter().chain(block(1, 2)).collect();
        let err = file(gap, vec![4, 1, 3, 3]).unwrap_err();
        assert!(err.contains("layer1.2"), "{err}");
        // The ImageNet stem (7x7).
        let err = file(block(1, 0).to_vec(), vec![4, 1, 7, 7]).unwrap_err();
        assert!(err.contains("conv1.weight") && err.contains("7x7"), "{err}");
        // Contiguous blocks with 3x3 kernels are read.
        let ok: Vec<_> = block(1, 0).into_iter().chain(block(1, 1)).collect();
        assert_eq!(file(ok, vec![4, 1, 3, 3]).unwrap().layers.len(), 2);
    }
}
