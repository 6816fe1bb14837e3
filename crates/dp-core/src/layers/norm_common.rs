//! Shared normalisation kernels: statistics over the last axis of a `[N, M]` view.

use crate::error::{CoreError, Result};
use candle_core::{Tensor, D};

/// The ε that [`crate::layers::LayerNorm`], [`crate::layers::GroupNorm`] and
/// [`crate::layers::NonAffineGroupNorm`] add to the variance unless `with_eps` sets
/// another: PyTorch's default (`nn.LayerNorm`, `nn.GroupNorm`), so that a model ported
/// from PyTorch normalises the same way without saying so.
pub const NORM_EPS: f64 = 1e-5;

/// `eps` if it keeps `1/sqrt(var + eps)` finite for a constant row (`var = 0`): a
/// positive, finite number in f32 too (1e-300 is 0 in f32 and gives 0/0 = NaN, 1e300 is ∞).
pub(crate) fn check_eps(eps: f64) -> Result<f64> {
    let e = eps as f32;
    if eps.is_finite() && e > 0.0 && e.is_finite() {
        Ok(eps)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "normalisation eps {eps} must be finite and > 0 (in f32 too)"
        )))
    }
}

/// Refuses a `groups` that does not split `channels` into equal non-empty groups.
pub(crate) fn check_groups(groups: usize, channels: usize) -> Result<()> {
    if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
        return Err(CoreError::InvalidArgument(format!(
            "GroupNorm: {channels} channels cannot be split into {groups} non-empty groups"
        )));
    }
    Ok(())
}

/// `x̂ = (x − mean)/sqrt(var + eps)` over the last axis; returns `(x̂, rstd)` with
/// `rstd` of shape `[N, 1]`.
pub(crate) fn normalize_last(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let m = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / m)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / m)?;
    let rstd = (var + eps)?.sqrt()?.recip()?;
    Ok((xc.broadcast_mul(&rstd)?, rstd))
}

/// Backward of [`normalize_last`]: given `dx̂`, returns
/// `dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))` (all means over the last axis).
pub(crate) fn normalize_last_backward(
    xhat: &Tensor,
    rstd: &Tensor,
    dxhat: &Tensor,
) -> Result<Tensor> {
    let m = xhat.dim(D::Minus1)? as f64;
    let mean_d = (dxhat.sum_keepdim(D::Minus1)? / m)?;
    let mean_dx = ((dxhat * xhat)?.sum_keepdim(D::Minus1)? / m)?;
    let inner = dxhat
        .broadcast_sub(&mean_d)?
        .sub(&xhat.broadcast_mul(&mean_dx)?)?;
    Ok(inner.broadcast_mul(rstd)?)
}
