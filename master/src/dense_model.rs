//! The description of a given dense model, read from its safetensors file without any tensor code.
//!
//! A ccsrp model file (worker crate, `model_file`) is safetensors: an 8-byte little-endian header
//! length, a JSON header naming each tensor's shape, then the data. Its metadata key
//! `ccsrp.model_spec` holds the architecture (`"32,M,64,M"`: conv widths, `M` = a 2x2 average pool
//! after the previous conv), the input shape and the time steps. Filters, input channels and
//! kernels come from the conv weights' shapes (`features.{i}.weight`, `[out, in, k, k]`, in index
//! order), the classes and classifier inputs from `classifier.weight` (`[classes, features]`);
//! convs keep their input size (stride 1, same padding) and each pool halves it.

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
}
