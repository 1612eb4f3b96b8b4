//! Choosing the compute device from a user's string (`--device cpu|cuda|cuda:N`).
//!
//! Never falls back to the CPU silently: a job pins its backend, because CPU and GPU arithmetic differ
//! in the last bits and fitness values must not depend on which worker computed them.

use candle_core::Device;

/// A device string that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {given:?}: expected cpu, cuda or cuda:N (N a GPU index)")]
    Syntax { given: String },
    #[error("device {given:?}: this binary was built without CUDA support; rebuild with --features cuda")]
    CudaNotBuilt { given: String },
    #[error("device {given:?}: cannot open CUDA GPU {ordinal}: {detail}")]
    CudaUnavailable {
        given: String,
        ordinal: usize,
        detail: String,
    },
}

/// Parses `cpu`, `cuda` (GPU 0) or `cuda:N` and opens the device.
pub fn parse_device(text: &str) -> Result<Device, DeviceError> {
    let given = text.trim();
    let ordinal = match given.to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(DeviceError::Syntax {
                    given: text.to_string(),
                })
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::CudaNotBuilt {
            given: text.to_string(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| DeviceError::CudaUnavailable {
        given: text.to_string(),
        ordinal,
        detail: e.to_string(),
    })
}

/// Canonical name of a device (`cpu` or `cuda:N`), e.g. to record the backend a job pinned.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_round_trips_its_name() {
        let d = parse_device(" CPU ").unwrap();
        assert!(d.is_cpu());
        assert_eq!(device_name(&d), "cpu");
    }

    #[test]
    fn malformed_device_strings_are_rejected() {
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(
                matches!(parse_device(bad), Err(DeviceError::Syntax { .. })),
                "{bad}"
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_to_rebuild() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
