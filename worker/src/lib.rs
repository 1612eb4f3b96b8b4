//! The ccsrp worker: everything that computes tensors.
//!
//! The SNN, bottom up:
//! - [`lif`]: multi-step LIF neurons (spikingjelly-compatible), differentiable with surrogate
//!   gradients, plus a fused no-graph path for inference.
//! - [`lif_kernel`]: the fused LIF GPU kernels' arguments and their CPU twin (the kernels,
//!   `worker/cuda/lif.cu`, are launched by `lif_cuda` in a `cuda` build).
//! - [`arch`]: VGG-style architectures from `"64,M,128,M"` strings and presets, with their geometry;
//!   [`resnet_arch`]: spiking ResNets (`resnet:16;16x1,32x1`, `resnet18`, ...).
//! - [`model`]: [`model::ModelSpec`] and [`model::SnnModel`]: init, training/eval forward passes,
//!   the model description for the master, MACs and parameters.
//! - [`model_file`]: safetensors files (PyTorch `state_dict` names, the spec in the metadata).
//! - [`prune`]: physical structured pruning by per-layer keep-masks.
//! - [`criterion`]: the classic criteria baselines prune by (L1 norm, random) and uniform keep
//!   ratios, solved for a MACs target.
//! - [`prefix`]: layer inputs and running from layer l on (the prefix cache).
//! - [`eval`]: exact correct counts and spike rates on u8 images.
//! - [`conv_grad`]: convolution gradients as forward ops (a forward convolution for the input, a
//!   matrix multiply per tap for the weights): the GPU's differentiable convolution.
//! - `event_conv` (internal): the CPU inference kernels: batch norm folded into the conv, one
//!   summation order per output whatever the thread count, event-driven on sparse spikes.
//! - [`held_out`]: a network's clean, FGSM and PGD counts on the validation and test splits.
//! - [`device`]: `cpu` / `cuda:N` parsing, never falling back silently.
//! - [`cancel`]: the token that stops training, attacks and evaluation between batches.
//!
//! Around it: [`data`] (datasets as u8 images), [`attack`], [`augment`], [`train`], and
//! [`runtime`]: the worker loop that pulls tasks from a master and runs them with all of the above.

pub mod allocator;
pub mod arch;
pub mod attack;
pub mod augment;
pub mod batch_norm;
pub mod cancel;
mod conv;
#[cfg(feature = "cudnn")]
mod conv_cudnn;
pub mod conv_grad;
mod cpu_buffer;
pub mod criterion;
pub mod data;
pub mod device;
pub mod eval;
mod event_conv;
pub mod held_out;
pub mod lif;
#[cfg(feature = "cuda")]
mod lif_cuda;
pub mod lif_kernel;
pub mod model;
pub mod model_file;
pub mod prefix;
pub mod prune;
pub mod resnet_arch;
pub mod runtime;
pub mod train;
