//! Model files: one safetensors file (or byte buffer) holds a whole [`SnnModel`].
//!
//! - Metadata key [`SPEC_METADATA_KEY`] (`"ccsrp.model_spec"`) holds the [`ModelSpec`] as JSON, so
//!   the file alone rebuilds the model (the only metadata key, so the bytes are deterministic).
//! - Tensor names are the PyTorch `state_dict` of the equivalent module
//!   `features = nn.Sequential(...)` followed by `classifier = nn.Linear(...)`: walking the conv
//!   layers in order with a running index `i` starting at 0, conv layer l contributes
//!   `features.{i}` = `Conv2d(bias=False)` (`weight` `[out, in, 3, 3]`),
//!   `features.{i+1}` = `BatchNorm2d` (`weight`, `bias`, `running_mean`, `running_var`, each `[out]`),
//!   `features.{i+2}` = LIF neuron (no tensors), and when a pool follows it
//!   `features.{i+3}` = `AvgPool2d(2)` (no tensors); `i` then advances by 3, or 4 with the pool.
//!   The classifier is `classifier.weight` `[classes, features]` and `classifier.bias` `[classes]`,
//!   features flattened in (C, H, W) order. For `"8,M,16,M"`: `features.0.weight`,
//!   `features.1.*`, `features.4.weight`, `features.5.*`, `classifier.*`.
//! - A residual network ([`crate::resnet_arch`]) uses spikingjelly's ResNet names instead
//!   (`conv1.weight`, `bn1.*`, `layer{s}.{b}.conv1.weight`, `layer{s}.{b}.bn1.*`,
//!   `layer{s}.{b}.conv2.weight`, `layer{s}.{b}.bn2.*`, `layer{s}.{b}.downsample.{0,1}.*`,
//!   `fc.*`; the full rule is in `resnet_model.rs`).
//! - Files are written in f32. Loading accepts F32, F64, F16 and BF16 (converted to f32), skips
//!   PyTorch's `*.num_batches_tracked` counters, and refuses any other extra tensor (it would be a
//!   parameter this model does not have, e.g. a conv bias), a missing or mis-shaped tensor, absent or
//!   unreadable metadata and truncated files, naming the file and the tensor.

use crate::arch::LayerGeometry;
use crate::model::{expected_shapes, ModelError, ModelSpec, SnnModel};
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// Safetensors metadata key holding the model spec as JSON.
pub const SPEC_METADATA_KEY: &str = "ccsrp.model_spec";

/// Largest header accepted when reading only the metadata (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A model file that cannot be read or written. `source` names the file (or `<bytes>`).
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{source_name}: {error}")]
    Io {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: not a readable safetensors model (truncated or corrupt?): {detail}")]
    Format { source_name: String, detail: String },
    #[error("{source_name}: no {SPEC_METADATA_KEY:?} metadata: not a ccsrp model file")]
    MissingSpec { source_name: String },
    #[error("{source_name}: metadata {SPEC_METADATA_KEY:?} is not a valid model spec: {detail}")]
    BadSpec { source_name: String, detail: String },
    #[error("{source_name}: tensor {name} has dtype {dtype}, expected F32, F64, F16 or BF16")]
    Dtype {
        source_name: String,
        name: String,
        dtype: String,
    },
    #[error("{source_name}: unexpected tensor {name}: the architecture has no such parameter")]
    UnexpectedTensor { source_name: String, name: String },
    #[error("{source_name}: {error}")]
    Model {
        source_name: String,
        error: ModelError,
    },
}

/// Module names of one conv layer in the `features` sequential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerNames {
    pub(crate) conv: String,
    pub(crate) batch_norm: String,
}

/// The naming rule of the module doc, for each layer.
pub(crate) fn layer_names(geometry: &[LayerGeometry]) -> Vec<LayerNames> {
    let mut i = 0;
    geometry
        .iter()
        .map(|g| {
            let names = LayerNames {
                conv: format!("features.{i}"),
                batch_norm: format!("features.{}", i + 1),
            };
            i += if g.pool_after { 4 } else { 3 };
            names
        })
        .collect()
}

/// State-dict names (without `.weight`) of the prunable convs, in layer order: `features.{i}`
/// (VGG) or `layer{s}.{b}.conv1` (a residual block's inner conv).
pub(crate) fn prunable_conv_names(model: &SnnModel) -> Vec<String> {
    match &model.residual {
        Some(r) => r
            .geometry
            .blocks
            .iter()
            .map(|b| format!("{}.conv1", crate::model::resnet::block_prefix(b)))
            .collect(),
        None => layer_names(model.geometry())
            .into_iter()
            .map(|n| n.conv)
            .collect(),
    }
}

impl SnnModel {
    /// The model as safetensors bytes (f32 tensors + the spec in the metadata).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelFileError> {
        let err = |e: candle_core::Error| ModelFileError::Model {
            source_name: "<bytes>".into(),
            error: e.into(),
        };
        let mut tensors = Vec::new();
        for (name, t) in self.state() {
            tensors.push((name, t.to_device(&Device::Cpu).map_err(err)?));
        }
        let spec = serde_json::to_string(self.spec()).map_err(|e| ModelFileError::BadSpec {
            source_name: "<bytes>".into(),
            detail: e.to_string(),
        })?;
        // One key only: safetensors takes the metadata as a HashMap, whose iteration order (and so
        // the header bytes) would differ between processes with two keys, and a model artifact's
        // sha256 must be the same whichever worker trained it.
        let metadata = HashMap::from([(SPEC_METADATA_KEY.to_string(), spec)]);
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| ModelFileError::Format {
            source_name: "<bytes>".into(),
            detail: e.to_string(),
        })
    }

    /// Writes the model to `path` (through a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        let bytes = self.to_bytes()?;
        let io = |error| ModelFileError::Io {
            source_name: path.display().to_string(),
            error,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a model file onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<SnnModel, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|error| ModelFileError::Io {
            source_name: path.display().to_string(),
            error,
        })?;
        load_named(&bytes, device, &path.display().to_string())
    }

    /// Rebuilds a model from the bytes of a model file (as workers receive it) onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<SnnModel, ModelFileError> {
        load_named(bytes, device, "<bytes>")
    }
}

fn load_named(
    bytes: &[u8],
    device: &Device,
    source_name: &str,
) -> Result<SnnModel, ModelFileError> {
    let format = |detail: String| ModelFileError::Format {
        source_name: source_name.to_string(),
        detail,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let spec = spec_from_metadata(metadata.metadata().as_ref(), source_name)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let expected: HashSet<String> = expected_shapes(&spec)
        .map_err(|error| ModelFileError::Model {
            source_name: source_name.to_string(),
            error,
        })?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut state = HashMap::new();
    for (name, view) in st.iter() {
        if name.ends_with(".num_batches_tracked") {
            continue;
        }
        if !expected.contains(name) {
            return Err(ModelFileError::UnexpectedTensor {
                source_name: source_name.to_string(),
                name: name.to_string(),
            });
        }
        if !matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16
        ) {
            return Err(ModelFileError::Dtype {
                source_name: source_name.to_string(),
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let t: Tensor = view
            .load(&Device::Cpu)
            .map_err(|e| format(format!("tensor {name}: {e}")))?;
        state.insert(name.to_string(), t);
    }
    SnnModel::from_state(spec, device, &state).map_err(|error| ModelFileError::Model {
        source_name: source_name.to_string(),
        error,
    })
}

fn spec_from_metadata(
    metadata: Option<&HashMap<String, String>>,
    source_name: &str,
) -> Result<ModelSpec, ModelFileError> {
    let json = metadata
        .and_then(|m| m.get(SPEC_METADATA_KEY))
        .ok_or_else(|| ModelFileError::MissingSpec {
            source_name: source_name.to_string(),
        })?;
    let spec: ModelSpec = serde_json::from_str(json).map_err(|e| ModelFileError::BadSpec {
        source_name: source_name.to_string(),
        detail: e.to_string(),
    })?;
    spec.geometry().map_err(|e| ModelFileError::BadSpec {
        source_name: source_name.to_string(),
        detail: e.to_string(),
    })?;
    Ok(spec)
}

/// Parses the JSON header of a safetensors file (given its bytes from the start, at least the
/// header) and returns the spec in its metadata.
fn spec_from_header(header: &[u8], source_name: &str) -> Result<ModelSpec, ModelFileError> {
    let format = |detail: String| ModelFileError::Format {
        source_name: source_name.to_string(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format(format!("header JSON: {e}")))?;
    let metadata: Option<HashMap<String, String>> = match value.get("__metadata__") {
        Some(m) => Some(
            serde_json::from_value(m.clone())
                .map_err(|e| format(format!("__metadata__ is not a string map: {e}")))?,
        ),
        None => None,
    };
    spec_from_metadata(metadata.as_ref(), source_name)
}

fn header_len(prefix: [u8; 8], source_name: &str) -> Result<usize, ModelFileError> {
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES {
        return Err(ModelFileError::Format {
            source_name: source_name.to_string(),
            detail: format!("header of {n} bytes exceeds the {MAX_HEADER_BYTES} limit"),
        });
    }
    Ok(n as usize)
}

/// The spec of a model file, reading only its header.
pub fn read_spec(path: &Path) -> Result<ModelSpec, ModelFileError> {
    let source_name = path.display().to_string();
    let io = |error| ModelFileError::Io {
        source_name: source_name.clone(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(io)?;
    let n = header_len(prefix, &source_name)?;
    // Checked before allocating: a forged length must not cost its size in memory.
    if n as u64 > file_len.saturating_sub(8) {
        return Err(ModelFileError::Format {
            source_name: source_name.clone(),
            detail: format!(
                "the header length says {n} bytes, the file has {} after it",
                file_len.saturating_sub(8)
            ),
        });
    }
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(io)?;
    spec_from_header(&header, &source_name)
}

/// The spec of a model held in memory, reading only its header.
pub fn read_spec_from_bytes(bytes: &[u8]) -> Result<ModelSpec, ModelFileError> {
    let truncated = || ModelFileError::Format {
        source_name: "<bytes>".into(),
        detail: format!(
            "{} bytes is shorter than the safetensors header",
            bytes.len()
        ),
    };
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(truncated)?;
    let n = header_len(prefix, "<bytes>")?;
    let header = bytes.get(8..8 + n).ok_or_else(truncated)?;
    spec_from_header(header, "<bytes>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{random_pixels, tiny_spec};
    use candle_core::DType;

    fn model() -> SnnModel {
        SnnModel::new(tiny_spec("4,M,6", 2), &Device::Cpu, 5).unwrap()
    }

    fn logits(m: &SnnModel) -> Vec<Vec<f32>> {
        m.forward_eval(&random_pixels(3, 9))
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    /// Serialises arbitrary named tensors with the model's spec, as another tool would.
    fn file_with(m: &SnnModel, tensors: Vec<(String, Tensor)>) -> Vec<u8> {
        let metadata = HashMap::from([(
            SPEC_METADATA_KEY.to_string(),
            serde_json::to_string(m.spec()).unwrap(),
        )]);
        safetensors::serialize(tensors, Some(metadata)).unwrap()
    }

    #[test]
    fn names_follow_the_pytorch_sequential_indices() {
        let names: Vec<String> = model().state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![
                "features.0.weight",
                "features.1.weight",
                "features.1.bias",
                "features.1.running_mean",
                "features.1.running_var",
                "features.4.weight",
                "features.5.weight",
                "features.5.bias",
                "features.5.running_mean",
                "features.5.running_var",
                "classifier.weight",
                "classifier.bias"
            ]
        );
    }

    #[test]
    fn bytes_and_files_round_trip_to_the_same_logits_and_spec() {
        let m = model();
        let bytes = m.to_bytes().unwrap();
        let back = SnnModel::from_bytes(&bytes, &Device::Cpu).unwrap();
        assert_eq!(logits(&back), logits(&m));
        assert_eq!(read_spec_from_bytes(&bytes).unwrap(), *m.spec());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        m.save(&path).unwrap();
        assert_eq!(
            logits(&SnnModel::load(&path, &Device::Cpu).unwrap()),
            logits(&m)
        );
        assert_eq!(read_spec(&path).unwrap(), *m.spec());
    }

    #[test]
    fn pytorch_extras_and_other_float_dtypes_are_accepted() {
        let m = model();
        let mut tensors: Vec<(String, Tensor)> = m
            .state()
            .into_iter()
            .map(|(n, t)| {
                let t = if n.starts_with("features.0") {
                    t.to_dtype(DType::F64).unwrap()
                } else {
                    t
                };
                let t = if n.starts_with("features.5") {
                    t.to_dtype(DType::BF16).unwrap()
                } else {
                    t
                };
                (n, t)
            })
            .collect();
        tensors.push((
            "features.1.num_batches_tracked".into(),
            Tensor::new(7i64, &Device::Cpu).unwrap(),
        ));
        let back = SnnModel::from_bytes(&file_with(&m, tensors), &Device::Cpu).unwrap();
        let d = back.blocks[0]
            .weight
            .as_tensor()
            .sub(m.blocks[0].weight.as_tensor())
            .unwrap();
        assert_eq!(
            d.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert_eq!(back.blocks[1].weight.as_tensor().dtype(), DType::F32);
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named_with_the_expected_shape() {
        let m = model();
        let without: Vec<_> = m
            .state()
            .into_iter()
            .filter(|(n, _)| n != "features.5.running_var")
            .collect();
        let err = SnnModel::from_bytes(&file_with(&m, without), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("features.5.running_var") && err.contains("missing"),
            "{err}"
        );

        let reshaped: Vec<_> = m
            .state()
            .into_iter()
            .map(|(n, t)| {
                if n == "classifier.weight" {
                    (n, Tensor::zeros((3, 10), DType::F32, &Device::Cpu).unwrap())
                } else {
                    (n, t)
                }
            })
            .collect();
        let err = SnnModel::from_bytes(&file_with(&m, reshaped), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("classifier.weight")
                && err.contains("[3, 216]")
                && err.contains("[3, 10]"),
            "{err}"
        );

        let mut extra = m.state();
        extra.push((
            "features.0.bias".into(),
            Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        ));
        let err = SnnModel::from_bytes(&file_with(&m, extra), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected tensor features.0.bias"), "{err}");
    }

    #[test]
    fn truncated_files_and_missing_metadata_are_clear_errors() {
        let m = model();
        let bytes = m.to_bytes().unwrap();
        let err = SnnModel::from_bytes(&bytes[..bytes.len() - 10], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(read_spec_from_bytes(&bytes[..5]).is_err());

        let plain = safetensors::serialize(m.state(), None).unwrap();
        let err = SnnModel::from_bytes(&plain, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ccsrp.model_spec"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.safetensors");
        let err = SnnModel::load(&missing, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.safetensors"), "{err}");
    }

    /// spikingjelly's `state_dict` of `resnet:4;4x1,8x1` on 1x12x12 images with 3 classes,
    /// written out as PyTorch names it (`spiking_resnet` with the CIFAR stem; the LIF modules
    /// `sn1`, `sn2` hold no tensors), with the shapes a 1-channel model has.
    const SPIKINGJELLY_RESNET: [(&str, &[usize]); 38] = [
        ("conv1.weight", &[4, 1, 3, 3]),
        ("bn1.weight", &[4]),
        ("bn1.bias", &[4]),
        ("bn1.running_mean", &[4]),
        ("bn1.running_var", &[4]),
        ("bn1.num_batches_tracked", &[]),
        ("layer1.0.conv1.weight", &[4, 4, 3, 3]),
        ("layer1.0.bn1.weight", &[4]),
        ("layer1.0.bn1.bias", &[4]),
        ("layer1.0.bn1.running_mean", &[4]),
        ("layer1.0.bn1.running_var", &[4]),
        ("layer1.0.bn1.num_batches_tracked", &[]),
        ("layer1.0.conv2.weight", &[4, 4, 3, 3]),
        ("layer1.0.bn2.weight", &[4]),
        ("layer1.0.bn2.bias", &[4]),
        ("layer1.0.bn2.running_mean", &[4]),
        ("layer1.0.bn2.running_var", &[4]),
        ("layer1.0.bn2.num_batches_tracked", &[]),
        ("layer2.0.conv1.weight", &[8, 4, 3, 3]),
        ("layer2.0.bn1.weight", &[8]),
        ("layer2.0.bn1.bias", &[8]),
        ("layer2.0.bn1.running_mean", &[8]),
        ("layer2.0.bn1.running_var", &[8]),
        ("layer2.0.bn1.num_batches_tracked", &[]),
        ("layer2.0.conv2.weight", &[8, 8, 3, 3]),
        ("layer2.0.bn2.weight", &[8]),
        ("layer2.0.bn2.bias", &[8]),
        ("layer2.0.bn2.running_mean", &[8]),
        ("layer2.0.bn2.running_var", &[8]),
        ("layer2.0.bn2.num_batches_tracked", &[]),
        ("layer2.0.downsample.0.weight", &[8, 4, 1, 1]),
        ("layer2.0.downsample.1.weight", &[8]),
        ("layer2.0.downsample.1.bias", &[8]),
        ("layer2.0.downsample.1.running_mean", &[8]),
        ("layer2.0.downsample.1.running_var", &[8]),
        ("layer2.0.downsample.1.num_batches_tracked", &[]),
        ("fc.weight", &[3, 8]),
        ("fc.bias", &[3]),
    ];

    fn resnet_model(arch: &str) -> SnnModel {
        SnnModel::new(tiny_spec(arch, 2), &Device::Cpu, 5).unwrap()
    }

    /// The fixed list as another tool would write it: float tensors hold their index in the list
    /// (so a name mix-up shows), counters are i64 scalars.
    fn spikingjelly_file(m: &SnnModel, skip: Option<&str>) -> Vec<u8> {
        let tensors: Vec<(String, Tensor)> = SPIKINGJELLY_RESNET
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| Some(*name) != skip)
            .map(|(i, (name, shape))| {
                let t = if shape.is_empty() {
                    Tensor::new(3i64, &Device::Cpu).unwrap()
                } else {
                    let n: usize = shape.iter().product();
                    // Positive values: running variances must be, the rest does not care.
                    let v: Vec<f32> = (0..n).map(|k| (i + 1) as f32 + k as f32 * 1e-3).collect();
                    Tensor::from_vec(v, *shape, &Device::Cpu).unwrap()
                };
                (name.to_string(), t)
            })
            .collect();
        file_with(m, tensors)
    }

    #[test]
    fn a_spikingjelly_named_resnet_state_dict_loads_as_saved() {
        for arch in ["resnet:4;4x1,8x1", "resnet:4;4x1,8x1;sew"] {
            let m = resnet_model(arch);
            let ours: Vec<String> = m.state().into_iter().map(|(n, _)| n).collect();
            let theirs: Vec<&str> = SPIKINGJELLY_RESNET
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !n.ends_with("num_batches_tracked"))
                .collect();
            assert_eq!(ours, theirs, "{arch}");
            let back = SnnModel::from_bytes(&spikingjelly_file(&m, None), &Device::Cpu).unwrap();
            let state: HashMap<String, Tensor> = back.state().into_iter().collect();
            for (i, (name, shape)) in SPIKINGJELLY_RESNET.iter().enumerate() {
                if shape.is_empty() {
                    continue;
                }
                let first = state[*name]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0];
                assert_eq!(first, (i + 1) as f32, "{arch}: {name}");
                assert_eq!(state[*name].dims(), *shape, "{arch}: {name}");
            }
        }
    }

    #[test]
    fn resnet_files_round_trip_and_name_missing_or_misshapen_tensors() {
        for arch in ["resnet:3;3x1,4x2", "resnet:3;3x1,4x2;sew;inner=2,3,1"] {
            let m = resnet_model(arch);
            let bytes = m.to_bytes().unwrap();
            let back = SnnModel::from_bytes(&bytes, &Device::Cpu).unwrap();
            assert_eq!(logits(&back), logits(&m), "{arch}");
            assert_eq!(read_spec_from_bytes(&bytes).unwrap(), *m.spec());
            assert_eq!(back.spec().architecture.to_string(), arch);
        }
        let m = resnet_model("resnet:4;4x1,8x1");
        let err = SnnModel::from_bytes(
            &spikingjelly_file(&m, Some("layer2.0.downsample.0.weight")),
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tensor layer2.0.downsample.0.weight is missing"),
            "{err}"
        );
        let mut tensors = m.state();
        for (name, t) in tensors.iter_mut() {
            if name == "layer1.0.conv1.weight" {
                *t = Tensor::zeros((4, 4, 1, 1), DType::F32, &Device::Cpu).unwrap();
            }
        }
        let err = SnnModel::from_bytes(&file_with(&m, tensors), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor layer1.0.conv1.weight: expected shape [4, 4, 3, 3]"),
            "{err}"
        );
        let mut tensors = m.state();
        tensors.push((
            "layer1.0.downsample.0.weight".into(),
            Tensor::zeros((4, 4, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        ));
        let err = SnnModel::from_bytes(&file_with(&m, tensors), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unexpected tensor layer1.0.downsample.0.weight"),
            "{err}"
        );
    }
}
