//! Shared normalisation kernels: statistics over the last axis of a `[N, M]` view.

use crate::error::Result;
use candle_core::{Tensor, D};

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
