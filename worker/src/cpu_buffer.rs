//! The f32 buffer behind a CPU tensor, as the fused custom ops (`conv`, `lif`, `batch_norm`) read
//! their inputs.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// The values of a contiguous f32 CPU tensor; anything else is an error naming `what` (the op and
/// the operand).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor");
    };
    Ok(&data[start..end])
}
