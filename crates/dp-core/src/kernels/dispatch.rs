//! The one place that decides between a host kernel and the candle op, and that hands
//! kernels their f32 host data.
//!
//! Every kernel, every layer and the noise read their tensors through here, so the rule
//! "f32 on the CPU takes the host kernel, everything else (other dtypes, CUDA) the candle
//! expression" is written once. This module depends on no kernel: kernels depend on it, the
//! layers depend on it and on the kernels, and nothing here calls back (which keeps the
//! module graph a tree rather than the circle `cpu_ops` ↔ `host_gemm` it replaces).

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

/// Whether `t` can use the host kernels (f32 on the CPU).
pub(crate) fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// [`fast_path`] for the pooling and im2col/col2im kernels, which derive the batch size by
/// dividing by the image's row length `H·W·C`: that is zero for an image with no channels,
/// so an empty tensor takes candle's ops, which handle it.
pub(crate) fn fast_path_rows(t: &Tensor) -> bool {
    fast_path(t) && t.elem_count() > 0
}

/// Whether the host kernels apply to every tensor in `ts` (f32 on the CPU).
pub(crate) fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| fast_path(t))
}

/// Runs `f` on the contiguous f32 host data of `t` (copied first only if `t` is not
/// contiguous); an error, not a panic, for any other dtype or device.
pub(crate) fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*s else {
        candle_core::bail!("host kernels need f32 CPU tensors")
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("host kernels need contiguous data".into()))?;
    Ok(f(&v[a..b]))
}

/// The f32 values a candle custom op (`CustomOp1::cpu_fwd`) receives, as one slice; `op`
/// names the kernel in the error for other dtypes or a non-contiguous layout.
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("{op}: input must be contiguous"),
        },
        _ => candle_core::bail!("{op}: f32 only"),
    }
}
