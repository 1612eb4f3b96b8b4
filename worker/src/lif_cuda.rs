//! Launching the fused LIF kernels (`worker/cuda/lif.cu`) on a CUDA device (`cuda` feature).
//!
//! build.rs compiles lif.cu to PTX with the toolkit's nvcc; the PTX is embedded here and loaded
//! once per device (candle's custom-module cache). [`forward`] and [`backward`] are the `cuda_fwd`
//! of lif.rs's fused ops; their arguments come from [`LifKernelArgs`], as the CPU twin's do.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};

use crate::lif::{ChannelAffine, Drive, Lif};
use crate::lif_kernel::LifKernelArgs;

/// lif.cu compiled by build.rs (nvcc --ptx).
const LIF_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lif.ptx"));
/// The module name under which candle caches the loaded PTX.
const MODULE: &str = "ccsrp_lif";

/// Threads per block; the grid is capped and the kernels loop (grid-stride) over the neurons.
const BLOCK: u32 = 256;
const MAX_BLOCKS: usize = 65_535;

fn launch_config(m: usize) -> LaunchConfig {
    let blocks = m.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The f32 slice of a contiguous CUDA tensor, from its start offset.
fn input_slice<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, f32>> {
    if storage.dtype() != DType::F32 {
        candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype());
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor");
    };
    Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
}

/// The scale's and shift's lengths of an affine.
fn affine_lens(affine: Option<&ChannelAffine>) -> Option<(usize, usize)> {
    affine.map(|a| (a.scale.elem_count(), a.shift.elem_count()))
}

/// A placeholder for an absent affine's buffers (the kernels never read them then).
fn placeholder(dev: &CudaDevice) -> candle_core::Result<CudaSlice<f32>> {
    dev.alloc_zeros::<f32>(1)
}

/// Runs `f` with the device buffer of the f32 CUDA tensor `t` (an affine's scale or shift).
fn with_device_values<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&CudaView<'_, f32>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        candle_core::bail!("fused LIF (CUDA): the affine's {what} is not on a CUDA device");
    };
    f(&input_slice(cuda, layout, what)?)
}

/// Spikes `[T*rows, ...]` of the fused forward kernel for the current in `storage`.
pub(crate) fn forward(
    lif: &Lif,
    drive: Drive,
    affine: Option<&ChannelAffine>,
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dims = layout.dims();
    let args = LifKernelArgs::new(lif, drive, affine_lens(affine), dims)?;
    let dev = storage.device();
    // SAFETY: every element is written by the kernel (each neuron writes all T of its spikes).
    let spikes = unsafe { dev.alloc::<f32>(args.t_steps * args.m)? };
    match affine {
        Some(a) => with_device_values(&a.scale, "scale", |scale| {
            with_device_values(&a.shift, "shift", |shift| {
                launch_forward(&args, storage, layout, &spikes, scale, shift)
            })
        })?,
        None => {
            let unused = placeholder(dev)?;
            let view = unused.slice(..);
            launch_forward(&args, storage, layout, &spikes, &view, &view)?
        }
    }
    let mut out_dims = dims.to_vec();
    out_dims[0] = args.t_steps * args.rows;
    let out = CudaStorage {
        slice: CudaStorageSlice::F32(spikes),
        device: dev.clone(),
    };
    Ok((out, Shape::from(out_dims)))
}

fn launch_forward(
    args: &LifKernelArgs,
    storage: &CudaStorage,
    layout: &Layout,
    spikes: &CudaSlice<f32>,
    scale: &CudaView<'_, f32>,
    shift: &CudaView<'_, f32>,
) -> candle_core::Result<()> {
    let x = input_slice(storage, layout, "fused LIF input (CUDA)")?;
    let dev = storage.device();
    let func = dev.get_or_load_custom_func("ccsrp_lif_forward", MODULE, LIF_PTX)?;
    let (m, t_steps, channels, spatial) = (
        args.m as u64,
        args.t_steps as u32,
        args.channels as u32,
        args.spatial as u64,
    );
    let (constant, has_affine) = (args.constant_drive as i32, args.has_affine as i32);
    let (nonzero_reset, decay_input) = (args.nonzero_reset as i32, args.decay_input as i32);
    let mut b = func.builder();
    b.arg(&x);
    b.arg(spikes);
    b.arg(scale);
    b.arg(shift);
    b.arg(&m);
    b.arg(&t_steps);
    b.arg(&constant);
    b.arg(&has_affine);
    b.arg(&channels);
    b.arg(&spatial);
    b.arg(&args.v_reset);
    b.arg(&args.v_threshold);
    b.arg(&args.inv_tau);
    b.arg(&nonzero_reset);
    b.arg(&decay_input);
    // SAFETY: the argument list is the kernel's signature in lif.cu; the buffers hold the lengths
    // the kernel indexes (input_len, T*m, channels).
    unsafe { b.launch(launch_config(args.m)) }.w()?;
    Ok(())
}

/// The gradient of the current (the shape of `x`) from the gradient of the spikes, by the fused
/// backward kernel.
pub(crate) fn backward(
    lif: &Lif,
    drive: Drive,
    affine: Option<&ChannelAffine>,
    x_storage: &CudaStorage,
    x_layout: &Layout,
    grad_storage: &CudaStorage,
    grad_layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let args = LifKernelArgs::new(lif, drive, affine_lens(affine), x_layout.dims())?;
    let dev = x_storage.device();
    // SAFETY: the kernel writes every element (each neuron's T values, or 1 for a constant drive).
    let grad_x = unsafe { dev.alloc::<f32>(args.input_len())? };
    let inputs = BackwardInputs {
        x: input_slice(x_storage, x_layout, "fused LIF backward input (CUDA)")?,
        grad: input_slice(
            grad_storage,
            grad_layout,
            "fused LIF backward gradient (CUDA)",
        )?,
    };
    if inputs.grad.len() != args.t_steps * args.m {
        candle_core::bail!(
            "LIF backward: {} spike gradients for {} steps of {}",
            inputs.grad.len(),
            args.t_steps,
            args.m
        );
    }
    match affine {
        Some(a) => with_device_values(&a.scale, "scale", |scale| {
            with_device_values(&a.shift, "shift", |shift| {
                launch_backward(&args, dev, &inputs, &grad_x, scale, shift)
            })
        })?,
        None => {
            let unused = placeholder(dev)?;
            let view = unused.slice(..);
            launch_backward(&args, dev, &inputs, &grad_x, &view, &view)?
        }
    }
    let out = CudaStorage {
        slice: CudaStorageSlice::F32(grad_x),
        device: dev.clone(),
    };
    Ok((out, x_layout.shape().clone()))
}

/// The backward kernel's two inputs: the current and the gradient of the spikes.
struct BackwardInputs<'a> {
    x: CudaView<'a, f32>,
    grad: CudaView<'a, f32>,
}

fn launch_backward(
    args: &LifKernelArgs,
    dev: &CudaDevice,
    inputs: &BackwardInputs<'_>,
    grad_x: &CudaSlice<f32>,
    scale: &CudaView<'_, f32>,
    shift: &CudaView<'_, f32>,
) -> candle_core::Result<()> {
    let func = dev.get_or_load_custom_func("ccsrp_lif_backward", MODULE, LIF_PTX)?;
    // SAFETY: the kernel writes all T potentials of a neuron before reading them.
    let hs = unsafe { dev.alloc::<f32>(args.t_steps * args.m)? };
    let (m, t_steps, channels, spatial) = (
        args.m as u64,
        args.t_steps as u32,
        args.channels as u32,
        args.spatial as u64,
    );
    let (constant, has_affine) = (args.constant_drive as i32, args.has_affine as i32);
    let (nonzero_reset, decay_input) = (args.nonzero_reset as i32, args.decay_input as i32);
    let mut b = func.builder();
    b.arg(&inputs.x);
    b.arg(&inputs.grad);
    b.arg(grad_x);
    b.arg(&hs);
    b.arg(scale);
    b.arg(shift);
    b.arg(&m);
    b.arg(&t_steps);
    b.arg(&constant);
    b.arg(&has_affine);
    b.arg(&channels);
    b.arg(&spatial);
    b.arg(&args.v_reset);
    b.arg(&args.v_threshold);
    b.arg(&args.inv_tau);
    b.arg(&nonzero_reset);
    b.arg(&decay_input);
    b.arg(&args.surrogate);
    b.arg(&args.alpha);
    b.arg(&args.dh_dx);
    b.arg(&args.dv_dvprev);
    // SAFETY: the argument list is the kernel's signature in lif.cu; hs and grad are T*m, x and
    // grad_x input_len, scale and shift one value per channel (read only with an affine).
    unsafe { b.launch(launch_config(args.m)) }.w()?;
    Ok(())
}
