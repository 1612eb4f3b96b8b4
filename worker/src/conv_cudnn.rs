//! The convolution weight gradient through cuDNN's backward-filter (`cudnn` feature).
//!
//! [`WeightGrad`] is a candle custom op on `(x, dy)` giving `dW` `[O, C, k, k]` of the stride-1
//! "same" convolution, launched through cudarc's cuDNN bindings on the tensors' CUDA stream (cuDNN
//! picks the algorithm by its heuristics). It runs on CUDA tensors only; its CPU counterpart is
//! [`crate::conv_grad::weight_grad`] (one matrix multiply per tap), which the CPU build tests against
//! candle's own `conv2d` gradient and `bench/gpu-check.sh` compares it with on the GPU.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::safe::{ConvBackwardFilter, Cudnn};
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaStorageSlice, DeviceId};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Shape};

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device (as candle keeps its own).
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|handles| {
        if let Some(h) = handles.borrow().get(&dev.id()) {
            return Ok(h.clone());
        }
        let h = Cudnn::new(dev.cuda_stream())?;
        handles.borrow_mut().insert(dev.id(), h.clone());
        Ok(h)
    })
}

/// `dW` of `conv2d(x, w, padding, stride 1)` for a `k x k` kernel, from `x` and the output gradient.
pub(crate) struct WeightGrad {
    pub k: usize,
    pub padding: usize,
}

fn dim_i32(v: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| {
        candle_core::Error::Msg(format!("cuDNN weight gradient: {what} = {v} exceeds i32"))
    })
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "cudnn-conv-weight-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "the cuDNN weight gradient runs on CUDA tensors only (conv_grad::weight_grad is the CPU's)"
        )
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        dy: &CudaStorage,
        dy_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = x_layout.shape().dims4()?;
        let (dn, o, dh, dw_) = dy_layout.shape().dims4()?;
        let k = self.k;
        // Output side of a stride-1 conv: side + 2 padding + 1 - k (none when the kernel is larger).
        let out_side = |side: usize| (side + 2 * self.padding + 1).checked_sub(k);
        if k == 0 || (Some(dn), out_side(h), out_side(w)) != (Some(n), Some(dh), Some(dw_)) {
            candle_core::bail!(
                "cuDNN weight gradient: output gradient {:?} does not fit input {:?} with a {k}x{k} \
                 kernel and padding {}",
                dy_layout.dims(),
                x_layout.dims(),
                self.padding
            );
        }
        if x.dtype() != DType::F32 || dy.dtype() != DType::F32 {
            candle_core::bail!("cuDNN weight gradient: expected f32 tensors");
        }
        let (Some((xs, xe)), Some((ds, de))) = (
            x_layout.contiguous_offsets(),
            dy_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("cuDNN weight gradient: expected contiguous tensors");
        };
        // Sized from the usize dims (each fits i32, their product need not).
        let grad_len: usize = [c, k, k]
            .into_iter()
            .try_fold(o, |acc, d| acc.checked_mul(d))
            .ok_or_else(|| {
                candle_core::Error::Msg("cuDNN weight gradient: dW size overflows".into())
            })?;
        let xv = x.as_cuda_slice::<f32>()?.slice(xs..xe);
        let dyv = dy.as_cuda_slice::<f32>()?.slice(ds..de);
        let dev = x.device();
        let cudnn = handle(dev)?;
        let pad = dim_i32(self.padding, "padding")?;
        let conv = cudnn.create_conv2d::<f32>(
            [pad, pad],
            [1, 1],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (n, c, o, ki) = (
            dim_i32(n, "batch")?,
            dim_i32(c, "in channels")?,
            dim_i32(o, "out channels")?,
            dim_i32(k, "kernel")?,
        );
        let x_desc = cudnn
            .create_4d_tensor::<f32>(nchw, [n, c, dim_i32(h, "height")?, dim_i32(w, "width")?])?;
        let dy_desc = cudnn.create_4d_tensor::<f32>(
            nchw,
            [n, o, dim_i32(dh, "height")?, dim_i32(dw_, "width")?],
        )?;
        let dw_desc = cudnn.create_4d_filter::<f32>(nchw, [o, c, ki, ki])?;
        let op = ConvBackwardFilter {
            conv: &conv,
            x: &x_desc,
            dw: &dw_desc,
            dy: &dy_desc,
        };
        let algo = op.pick_algorithm()?;
        let workspace_bytes = op.get_workspace_size(algo)?;
        let mut workspace = dev.alloc_zeros::<u8>(workspace_bytes.max(1))?;
        let mut grad_w: CudaSlice<f32> = dev.alloc_zeros::<f32>(grad_len)?;
        // SAFETY: the descriptors describe exactly these buffers: x [n, c, h, w], dy [n, o, dh, dw]
        // (contiguous NCHW f32 views), dW [o, c, k, k] f32, and a workspace of the size cuDNN asked.
        unsafe {
            op.launch::<CudaSlice<u8>, _, _, _>(
                algo,
                Some(&mut workspace),
                (1f32, 0f32),
                &xv,
                &mut grad_w,
                &dyv,
            )?;
        }
        let out = CudaStorage {
            slice: CudaStorageSlice::F32(grad_w),
            device: dev.clone(),
        };
        Ok((out, Shape::from((o as usize, c as usize, k, k))))
    }
}
