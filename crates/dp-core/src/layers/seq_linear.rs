//! The per-sample rule shared by `Linear` and `Conv2d` (a convolution is a linear layer
//! over the unfolded patches, with the output positions as a sequence axis).
//!
//! Notation: activations `A` of shape `[B, T, p]`, output gradients `G` of shape
//! `[B, T, r]`; the weight is `[r, p]`. The per-example weight gradient is `G_iᵀ A_i` and
//! the bias gradient `Σ_t G_{i,t}` (Opacus's Linear grad sampler).
//!
//! This is a layer rule, not a kernel: it keeps the records, picks ghost or materialised
//! norms ([`GradMode`]) and writes each step as a candle expression, handing f32 host
//! tensors to `crate::kernels::gemm` (decided by `crate::kernels::dispatch::applies`).

use crate::error::Result;
use crate::kernels::dispatch;
use crate::kernels::gemm as host_gemm;
use crate::layer::GradMode;
use candle_core::{Tensor, D};

/// Record kept by a linear-type layer between forward and per-sample rule.
#[derive(Debug, Default)]
pub(crate) struct SeqLinearRecord {
    /// `[B, T, p]`
    pub a: Option<Tensor>,
    /// `[B, T, r]`
    pub g: Option<Tensor>,
    /// Materialised per-example gradients (weight `[B, r, p]`, bias `[B, r]`) if computed.
    pub materialized: Option<(Tensor, Option<Tensor>)>,
    /// Positions recorded before `a` and `g` (BAM's mixed record, [`AscentOffsets::mix`]):
    /// the record is then `[first.a; a]`, `[first.g; g]`, kept in two halves so that norms
    /// and sums need not copy them into one.
    pub first: Option<FirstPositions>,
}

/// The first half of a split record (see [`SeqLinearRecord::first`]).
#[derive(Debug, Clone)]
pub(crate) struct FirstPositions {
    /// `[B, T₁, p]`
    pub a: Tensor,
    /// `[B, T₁, r]`
    pub g: Tensor,
    /// `G₁ᵀA₁` (and `Σ_t G₁`) already materialised, unscaled, with the factor that makes them
    /// this half's gradients: `c·W` equals `g`ᵀ`a` (the plain pass formed `W`).
    pub materialized: Option<(Tensor, Option<Tensor>, f64)>,
}

/// Folds groups of `k` consecutive examples into one example whose positions are the
/// copies' positions, and scales the output gradients by `1/k`: the per-example gradient
/// `Σ_t G_tᵀ A_t` of the folded example is then the mean of the copies' gradients.
pub(crate) fn fold_examples(t: &Tensor, k: usize, scale: bool) -> Result<Tensor> {
    let dims = t.dims();
    let n = dims[0];
    if k == 0 || !n.is_multiple_of(k) {
        return Err(crate::CoreError::InvalidArgument(format!(
            "batch of {n} rows is not a whole number of groups of {k} augmented copies"
        )));
    }
    let mut new = vec![n / k, k * dims[1]];
    new.extend_from_slice(&dims[2..]);
    let f = t.reshape(new)?;
    Ok(if scale { (f / k as f64)? } else { f })
}

impl SeqLinearRecord {
    /// See [`fold_examples`].
    pub fn group(&mut self, k: usize) -> Result<()> {
        self.join()?;
        if let (Some(a), Some(g)) = (&self.a, &self.g) {
            self.a = Some(fold_examples(a, k, false)?);
            self.g = Some(fold_examples(g, k, true)?);
        }
        self.materialized = None;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.a = None;
        self.g = None;
        self.materialized = None;
        self.first = None;
    }

    /// Concatenates a split record into one (for the rules without a split form).
    fn join(&mut self) -> Result<()> {
        if let Some(f) = self.first.take() {
            if let (Some(a), Some(g)) = (&self.a, &self.g) {
                self.a = Some(Tensor::cat(&[&f.a, a], 1)?);
                self.g = Some(Tensor::cat(&[&f.g, g], 1)?);
            }
        }
        Ok(())
    }
}

/// The per-layer choice of Bu et al. 2022 (mixed ghost clipping), by arithmetic cost: the
/// ghost norm costs `O(B·T²·(p+r))` (two `T×T` Gram matrices), materialising costs
/// `O(B·T·p·r)`; use the ghost norm when `T·(p+r) ≤ p·r`. (Their memory rule, `2T² < p·r`,
/// agrees for linear layers and for late convolutions; for mid-sized convolutions it picks
/// the slower path on a CPU, measured with `bench_step`.)
pub(crate) fn prefer_ghost(t: usize, p: usize, r: usize) -> bool {
    t * (p + r) <= p * r
}

/// Per-example squared norm of the weight (and bias) gradient by the ghost-norm identity
/// `‖G_iᵀA_i‖²_F = ⟨A_iA_iᵀ, G_iG_iᵀ⟩_F` (Li et al. 2021, §4), which for `T = 1` reduces to
/// `‖a_i‖²‖g_i‖²`; the bias part is `‖Σ_t G_{i,t}‖²`.
pub(crate) fn ghost_sq_norms(a: &Tensor, g: &Tensor, bias: bool) -> Result<Tensor> {
    if dispatch::applies(&[a, g]) {
        return Ok(host_gemm::ghost_sq_norms(a, g, bias)?);
    }
    let (_b, t, _p) = a.dims3()?;
    let w = if t == 1 {
        let a2 = a.sqr()?.sum(D::Minus1)?.sum(1)?;
        let g2 = g.sqr()?.sum(D::Minus1)?.sum(1)?;
        (a2 * g2)?
    } else {
        let ga = a.matmul(&a.t()?)?; // [B, T, T]
        let gg = g.matmul(&g.t()?)?;
        (ga * gg)?.sum((1, 2))?
    };
    if bias {
        let gb = g.sum(1)?.sqr()?.sum(1)?;
        Ok((w + gb)?)
    } else {
        Ok(w)
    }
}

/// Materialised per-example gradients: weight `[B, r, p]`, bias `[B, r]`.
pub(crate) fn per_sample(a: &Tensor, g: &Tensor, bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    if dispatch::applies(&[a, g]) {
        let (w, b, _) = host_gemm::per_sample_with_norms(a, g, bias)?;
        return Ok((w, b));
    }
    let w = g.t()?.matmul(a)?; // [B, r, T] x [B, T, p]
    let b = if bias { Some(g.sum(1)?) } else { None };
    Ok((w, b))
}

/// Squared norms of materialised per-example gradients.
pub(crate) fn materialized_sq_norms(w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let n = w.sqr()?.flatten_from(1)?.sum(1)?;
    match b {
        Some(b) => Ok((n + b.sqr()?.sum(1)?)?),
        None => Ok(n),
    }
}

/// Squared norms over several materialised per-example tensors of one layer (see
/// `host_gemm::materialized_sq_norms`, which agrees with the norms of [`rule_sq_norms`]'s
/// materialised path to the bit).
pub(crate) fn parts_sq_norms(parts: &[&Tensor]) -> Result<Tensor> {
    if dispatch::applies(parts) {
        return Ok(host_gemm::materialized_sq_norms(parts)?);
    }
    let mut total: Option<Tensor> = None;
    for p in parts {
        let n = p.sqr()?.flatten_from(1)?.sum(1)?;
        total = Some(match total {
            Some(t) => (t + n)?,
            None => n,
        });
    }
    total.ok_or_else(|| crate::CoreError::InvalidArgument("no per-example tensors".into()))
}

/// `Σ_i w_i G_iᵀ A_i` and `Σ_i w_i Σ_t G_{i,t}` as two matrix products over the flattened
/// batch (book-keeping, Bu et al. 2022): the weights scale the rows of `G`, and the
/// batch reduction is a GEMM (candle's `sum(0)` over a large leading axis is slow).
pub(crate) fn weighted_sum(
    a: &Tensor,
    g: &Tensor,
    weights: &Tensor,
    bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if dispatch::applies(&[a, g]) {
        return Ok(host_gemm::weighted_sum(a, g, weights, bias)?);
    }
    let (b, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    let gw = g.broadcast_mul(&weights.to_dtype(g.dtype())?.reshape((b, 1, 1))?)?; // [B, T, r]
    let gw2 = gw.reshape((b * t, r))?;
    let a2 = a.reshape((b * t, p))?;
    let dw = gw2.t()?.matmul(&a2)?; // [r, p]
    let db = if bias {
        let ones = Tensor::ones((1, b * t), gw2.dtype(), gw2.device())?;
        Some(ones.matmul(&gw2)?.reshape(r)?)
    } else {
        None
    };
    Ok((dw, db))
}

/// `Σ_i w_i X_i` for materialised per-example tensors `X` of shape `[B, ...]`.
pub(crate) fn weighted_sum_materialized(x: &Tensor, weights: &Tensor) -> Result<Tensor> {
    if dispatch::applies(&[x]) {
        return Ok(host_gemm::weighted_sum_materialized(x, weights)?);
    }
    let dims = x.dims().to_vec();
    let b = dims[0];
    let flat = x.reshape((b, ()))?;
    let w = weights.reshape((1, b))?.to_dtype(flat.dtype())?;
    Ok(w.matmul(&flat)?.reshape(&dims[1..])?)
}

/// Shared implementation of [`crate::PerSampleGrad`] for linear-type layers.
pub(crate) fn rule_sq_norms(
    rec: &mut SeqLinearRecord,
    layer: &str,
    mode: GradMode,
    bias: bool,
) -> Result<Tensor> {
    if rec.first.is_some() {
        if let Some(n) = split_sq_norms(rec, layer, mode, bias)? {
            return Ok(n);
        }
        rec.join()?;
    }
    let (a, g) = record(rec, layer)?;
    let (_, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    let ghost = match mode {
        GradMode::Ghost => true,
        GradMode::Materialize => false,
        GradMode::Auto => prefer_ghost(t, p, r),
    };
    if ghost {
        rec.materialized = None;
        ghost_sq_norms(&a, &g, bias)
    } else if dispatch::applies(&[&a, &g]) {
        let (w, b, n) = host_gemm::per_sample_with_norms(&a, &g, bias)?;
        rec.materialized = Some((w, b));
        Ok(n)
    } else {
        let (w, b) = per_sample(&a, &g, bias)?;
        let n = materialized_sq_norms(&w, b.as_ref())?;
        rec.materialized = Some((w, b));
        Ok(n)
    }
}

/// [`rule_sq_norms`] of a split record on the host kernels, without joining its halves (the
/// same ghost-or-materialise choice as for the joined record); `None` where they do not
/// apply (other dtypes and devices join the record instead).
fn split_sq_norms(
    rec: &mut SeqLinearRecord,
    layer: &str,
    mode: GradMode,
    bias: bool,
) -> Result<Option<Tensor>> {
    let (a2, g2) = record(rec, layer)?;
    let Some(first) = rec.first.as_ref() else {
        return Ok(None);
    };
    if !dispatch::applies(&[&first.a, &first.g, &a2, &g2]) {
        return Ok(None);
    }
    let (_, t2, p) = a2.dims3()?;
    let (t1, r) = (first.a.dim(1)?, g2.dim(2)?);
    let ghost = match mode {
        GradMode::Ghost => true,
        GradMode::Materialize => false,
        GradMode::Auto => prefer_ghost(t1 + t2, p, r),
    };
    if ghost {
        rec.materialized = None;
        return Ok(Some(host_gemm::ghost_sq_norms_split(
            &first.a, &first.g, &a2, &g2, bias,
        )?));
    }
    let half = match &first.materialized {
        Some((w, b, c)) if bias == b.is_some() && dispatch::applies(&[w]) => {
            host_gemm::FirstHalf::Materialized {
                w,
                b: b.as_ref(),
                scale: *c as f32,
            }
        }
        _ => host_gemm::FirstHalf::Record {
            a: &first.a,
            g: &first.g,
        },
    };
    let (w, b, n) = host_gemm::per_sample_split_with_norms(half, &a2, &g2, bias)?;
    rec.materialized = Some((w, b));
    Ok(Some(n))
}

pub(crate) fn rule_per_sample(
    rec: &mut SeqLinearRecord,
    layer: &str,
    bias: bool,
) -> Result<Vec<Tensor>> {
    if let Some((w, b)) = &rec.materialized {
        let mut v = vec![w.clone()];
        v.extend(b.clone());
        return Ok(v);
    }
    rec.join()?;
    let (a, g) = record(rec, layer)?;
    let (w, b) = per_sample(&a, &g, bias)?;
    let mut v = vec![w];
    v.extend(b);
    Ok(v)
}

/// Per-example squared norms over the coordinates `masks` keeps (weight, then bias; `None`:
/// dense). For `T = 1` the weight part is `Σ_jk M_jk g_j² a_k² = ((g⊙g) M ⊙ (a⊙a))·1`, one
/// product the size of a forward pass; for sequences and convolutions the per-example
/// gradients are materialised (and kept, so the weighted sum reuses them), then masked.
pub(crate) fn rule_masked_sq_norms(
    rec: &mut SeqLinearRecord,
    layer: &str,
    bias: bool,
    masks: &[Option<Tensor>],
) -> Result<Tensor> {
    rec.join()?;
    let (a, g) = record(rec, layer)?;
    let (b, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    if t == 1 && rec.materialized.is_none() {
        let a2 = a.reshape((b, p))?.sqr()?;
        let g2 = g.reshape((b, r))?.sqr()?;
        let mut sq = match masks.first().and_then(|m| m.as_ref()) {
            Some(m) => (g2.matmul(&m.to_dtype(g2.dtype())?)? * &a2)?.sum(1)?,
            None => (g2.sum(1)? * a2.sum(1)?)?,
        };
        if bias {
            sq = match masks.get(1).and_then(|m| m.as_ref()) {
                Some(m) => (sq + g2.broadcast_mul(&m.to_dtype(g2.dtype())?)?.sum(1)?)?,
                None => (sq + g2.sum(1)?)?,
            };
        }
        return Ok(sq);
    }
    if rec.materialized.is_none() {
        rec.materialized = Some(per_sample(&a, &g, bias)?);
    }
    let grads = rule_per_sample(rec, layer, bias)?;
    crate::mask::masked_sq_norms_of(&grads, masks)
}

pub(crate) fn rule_weighted_sum(
    rec: &mut SeqLinearRecord,
    layer: &str,
    weights: &Tensor,
    bias: bool,
) -> Result<Vec<Tensor>> {
    if let Some((w, b)) = &rec.materialized {
        let mut v = vec![weighted_sum_materialized(w, weights)?];
        if let Some(b) = b {
            v.push(weighted_sum_materialized(b, weights)?);
        }
        return Ok(v);
    }
    if let Some(first) = &rec.first {
        let (a2, g2) = record(rec, layer)?;
        if dispatch::applies(&[&first.a, &first.g, &a2, &g2]) {
            // Σ_i w_i [G₁; G₂]_iᵀ[A₁; A₂]_i = Σ_i w_i G₁ᵢᵀA₁ᵢ + Σ_i w_i G₂ᵢᵀA₂ᵢ.
            let (dw1, db1) = host_gemm::weighted_sum(&first.a, &first.g, weights, bias)?;
            let (dw2, db2) = host_gemm::weighted_sum(&a2, &g2, weights, bias)?;
            let mut v = vec![(dw1 + dw2)?];
            if let (Some(b1), Some(b2)) = (db1, db2) {
                v.push((b1 + b2)?);
            }
            return Ok(v);
        }
        rec.join()?;
    }
    let (a, g) = record(rec, layer)?;
    let (_, t, p) = a.dims3()?;
    let r = g.dim(2)?;
    if !prefer_ghost(t, p, r) && !dispatch::applies(&[&a, &g]) {
        // Long sequences (early convolutions): one GEMM with a reduction over B·T rows
        // and a tiny `r×p` output runs on one core; the per-example products
        // (`B·r·p` values, small exactly when this branch is taken) parallelise over the
        // batch and are then reduced with one `[1, B]` product.
        let (w, b) = per_sample(&a, &g, bias)?;
        let mut v = vec![weighted_sum_materialized(&w, weights)?];
        if let Some(b) = b {
            v.push(weighted_sum_materialized(&b, weights)?);
        }
        return Ok(v);
    }
    let (dw, db) = weighted_sum(&a, &g, weights, bias)?;
    let mut v = vec![dw];
    v.extend(db);
    Ok(v)
}

fn record(rec: &SeqLinearRecord, layer: &str) -> Result<(Tensor, Tensor)> {
    let missing = |what: &str| crate::CoreError::MissingRecord {
        layer: layer.to_string(),
        what: what.to_string(),
    };
    let a = rec
        .a
        .clone()
        .ok_or_else(|| missing("no recorded input activations"))?;
    let g = rec
        .g
        .clone()
        .ok_or_else(|| missing("no recorded output gradient"))?;
    Ok((a, g))
}

/// Per-example parameter offsets of a linear-type layer (see
/// [`crate::PerSampleGrad::set_example_offsets`]): weight `[B, r, p]`, bias `[B, r]`.
#[derive(Debug, Clone)]
pub(crate) struct ExampleOffsets {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl ExampleOffsets {
    /// Checks `offsets` against a weight of shape `weight_dims` (any rank; flattened to
    /// `[r, p]` from its second axis) and the presence of a bias.
    pub fn new(
        offsets: Vec<Tensor>,
        weight_dims: &[usize],
        bias: bool,
        layer: &str,
    ) -> Result<Self> {
        let want = 1 + usize::from(bias);
        if offsets.len() != want {
            return Err(crate::CoreError::InvalidArgument(format!(
                "{layer}: {} offset tensors for {want} parameters",
                offsets.len()
            )));
        }
        let mut it = offsets.into_iter();
        let w = it.next().ok_or_else(|| {
            crate::CoreError::InvalidArgument(format!("{layer}: no weight offset"))
        })?;
        let b = w.dim(0)?;
        if w.rank() != weight_dims.len() + 1 || &w.dims()[1..] != weight_dims {
            return Err(crate::error::shape_err(
                &format!("{layer} weight offsets"),
                &format!("[B, {weight_dims:?}]"),
                w.dims(),
            ));
        }
        let r = weight_dims[0];
        let weight = w.reshape((b, r, ()))?;
        let bias = match it.next() {
            Some(t) if t.dims() == [b, r] => Some(t),
            Some(t) => {
                return Err(crate::error::shape_err(
                    &format!("{layer} bias offsets"),
                    &format!("[{b}, {r}]"),
                    t.dims(),
                ))
            }
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// Offsets set for one batch size refuse a forward pass over another.
    pub fn check_examples(&self, b: usize, layer: &str) -> Result<()> {
        let n = self.weight.dim(0)?;
        if n != b {
            return Err(crate::CoreError::InvalidArgument(format!(
                "{layer}: per-example offsets for {n} examples, forward pass over {b}"
            )));
        }
        Ok(())
    }

    /// The offsets of output rows `start..start+len` (one channel group of a convolution).
    pub fn narrow_outputs(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(1, start, len)?,
            bias: match &self.bias {
                Some(b) => Some(b.narrow(1, start, len)?),
                None => None,
            },
        })
    }

    /// `A_i Δ_iᵀ + Δb_i` for activations `[B, T, p]`: what the offsets add to the output
    /// `[B, T, r]`.
    pub fn forward(&self, a: &Tensor) -> Result<Tensor> {
        let y = if dispatch::applies(&[a, &self.weight]) {
            host_gemm::batched_apply(a, &self.weight, true)?
        } else {
            // candle's CPU matmul reads a transposed right operand in place.
            a.contiguous()?.matmul(&self.weight.t()?)? // [B, T, p] x [B, p, r]
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.unsqueeze(1)?)?,
            None => y,
        })
    }

    /// `G_i Δ_i` for output gradients `[B, T, r]`: what the offsets add to the input
    /// gradient `[B, T, p]`.
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        if dispatch::applies(&[g, &self.weight]) {
            return Ok(host_gemm::batched_apply(g, &self.weight, false)?);
        }
        Ok(g.contiguous()?.matmul(&self.weight)?)
    }
}

/// `(X_i Y_iᵀ + c·11ᵀ) Z_i` per example (`c = 1` if `ones`): `X [B, T, m]`, `Y [B, S, m]`,
/// `Z [B, S, n]` → `[B, T, n]` (see `host_gemm::gram_apply`).
pub(crate) fn gram_apply(x: &Tensor, y: &Tensor, z: &Tensor, ones: bool) -> Result<Tensor> {
    if dispatch::applies(&[x, y, z]) {
        return Ok(host_gemm::gram_apply(x, y, z, ones)?);
    }
    let gram = x.contiguous()?.matmul(&y.contiguous()?.t()?)?; // [B, T, S]
    let gram = if ones { (gram + 1.0)? } else { gram };
    Ok(gram.matmul(&z.contiguous()?)?)
}

/// Whether BAM's ascent offset `Δ_i = s_i G_iᵀA_i` of a linear-type layer is cheaper kept
/// factored than materialised. Factored, the second forward and backward each cost
/// `T²·(p+r)` per example (a `T×T` position Gram, then applied); materialised, forming
/// `Δ_i` and applying it in both passes costs `3·T·p·r`. Linear layers (`T = 1`) and late
/// convolutions keep it factored; early convolutions (many positions, few channels)
/// materialise it.
pub(crate) fn prefer_factored(t: usize, p: usize, r: usize) -> bool {
    2 * t * (p + r) <= 3 * p * r
}

/// BAM's ascent offsets of a linear-type layer (Knolle et al. 2023), built from the layer's
/// own record of the plain pass: `Δ_i = s_i·G_iᵀA_i` (bias `s_i·Σ_t G_{i,t}`), i.e. the
/// example's plain gradient scaled by `s_i = r/‖g_i‖`, kept as its factors (or materialised
/// where [`prefer_factored`] says so). The plain record is kept too, so that after the second
/// pass the mixed gradient `h_i = (1−α)G_iᵀA_i + αG′_iᵀA′_i` becomes an ordinary record of
/// `2T` positions, `[A_i; A′_i]` and `[(1−α)G_i; αG′_i]` ([`AscentOffsets::mix`]), whose
/// ghost norm and book-keeping sum need no per-example gradient.
#[derive(Debug, Clone)]
pub(crate) struct AscentOffsets {
    /// Plain activations `A` `[B, T, p]`.
    a: Tensor,
    /// Plain output gradients `G` `[B, T, r]`.
    g: Tensor,
    /// `s_i G_i` `[B, T, r]`.
    gs: Tensor,
    bias: bool,
    /// `Δ` materialised (weight `[B, r, p]`, bias `[B, r]`), when that is cheaper.
    materialized: Option<ExampleOffsets>,
    /// The plain per-example gradients `G_iᵀA_i`, where the plain pass's norms formed them.
    plain: Option<(Tensor, Option<Tensor>)>,
}

impl AscentOffsets {
    /// From `rec` (after the plain forward and backward) and the scales `s` (`[B]`, any
    /// float dtype). With `factored = None` the cheaper form is chosen by [`prefer_factored`].
    pub fn new(
        rec: &SeqLinearRecord,
        layer: &str,
        scales: &Tensor,
        bias: bool,
        factored: Option<bool>,
    ) -> Result<Self> {
        let (a, g) = record(rec, layer)?;
        let (b, t, p) = a.dims3()?;
        let r = g.dim(2)?;
        if scales.dims() != [b] {
            return Err(crate::error::shape_err(
                &format!("{layer} ascent scales"),
                &format!("[{b}]"),
                scales.dims(),
            ));
        }
        let s = scales.to_dtype(g.dtype())?;
        let gs = g.broadcast_mul(&s.reshape((b, 1, 1))?)?;
        let materialized = if factored.unwrap_or_else(|| prefer_factored(t, p, r)) {
            None
        } else {
            let (w, bb) = match &rec.materialized {
                // The plain pass's norms already formed `G_iᵀA_i`: scale it.
                Some((w, bb)) => (
                    w.broadcast_mul(&s.reshape((b, 1, 1))?)?,
                    match bb {
                        Some(bb) => Some(bb.broadcast_mul(&s.reshape((b, 1))?)?),
                        None => None,
                    },
                ),
                None => per_sample(&a, &gs, bias)?,
            };
            Some(ExampleOffsets {
                weight: w,
                bias: bb,
            })
        };
        Ok(Self {
            a,
            g,
            gs,
            bias,
            materialized,
            plain: rec.materialized.clone(),
        })
    }

    /// Offsets built for one batch size refuse a forward pass over another.
    pub fn check_examples(&self, b: usize, layer: &str) -> Result<()> {
        let n = self.a.dim(0)?;
        if n != b {
            return Err(crate::CoreError::InvalidArgument(format!(
                "{layer}: ascent offsets for {n} examples, forward pass over {b}"
            )));
        }
        Ok(())
    }

    /// `A′_i Δ_iᵀ + Δb_i` for activations `A′` `[B, T′, p]`: `(A′_iA_iᵀ + 11ᵀ)(s_iG_i)`
    /// factored (the `11ᵀ` adds the bias offset `Σ_t s_iG_{i,t}` to every position).
    pub fn forward(&self, a_new: &Tensor) -> Result<Tensor> {
        match &self.materialized {
            Some(off) => off.forward(a_new),
            None => gram_apply(a_new, &self.a, &self.gs, self.bias),
        }
    }

    /// `G′_i Δ_i` for output gradients `G′` `[B, T′, r]`: `(G′_i(s_iG_i)ᵀ) A_i` factored.
    pub fn input_grad(&self, g_new: &Tensor) -> Result<Tensor> {
        match &self.materialized {
            Some(off) => off.input_grad(g_new),
            None => gram_apply(g_new, &self.gs, &self.a, false),
        }
    }

    /// Replaces `rec` (the record of the pass at the ascent points) by the mixed record of
    /// `2T` positions, `[A; A′]` and `[(1−α)G; αG′]`: its per-example gradient is
    /// `(1−α)G_iᵀA_i + αG′_iᵀA′_i`. The two halves are kept apart
    /// ([`SeqLinearRecord::first`]): the norms and sums of the mixed record are formed from
    /// them (and from the plain `G_iᵀA_i` where the plain pass materialised it) without a
    /// `[B, 2T, p]` copy.
    pub fn mix(self, rec: &mut SeqLinearRecord, layer: &str, alpha: f64) -> Result<()> {
        let (a2, g2) = record(rec, layer)?;
        if a2.dims() != self.a.dims() || g2.dims() != self.g.dims() {
            return Err(crate::error::shape_err(
                &format!("{layer} record at the ascent points"),
                &format!("{:?} and {:?}", self.a.dims(), self.g.dims()),
                a2.dims(),
            ));
        }
        rec.first = Some(FirstPositions {
            a: self.a,
            g: self.g.affine(1.0 - alpha, 0.0)?,
            materialized: self.plain.map(|(w, b)| (w, b, 1.0 - alpha)),
        });
        rec.g = Some(g2.affine(alpha, 0.0)?);
        rec.materialized = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, seeded_normal};
    use candle_core::DType;

    /// Both forms of BAM's ascent offsets act as the explicit `Δ_i = s_i G_iᵀA_i` does, on the
    /// host kernels (f32) and on candle's ops (f64), with and without a bias.
    #[test]
    fn factored_and_materialised_ascent_offsets_match_the_explicit_offset() {
        let (b, t, p, r) = (3, 4, 5, 6);
        for dtype in [DType::F32, DType::F64] {
            for bias in [false, true] {
                let a = seeded_normal(&[b, t, p], 1).to_dtype(dtype).unwrap();
                let g = seeded_normal(&[b, t, r], 2).to_dtype(dtype).unwrap();
                let a2 = seeded_normal(&[b, t, p], 3).to_dtype(dtype).unwrap();
                let g2 = seeded_normal(&[b, t, r], 4).to_dtype(dtype).unwrap();
                let s = Tensor::new(&[0.5f64, 0.0, 2.0], &candle_core::Device::Cpu).unwrap();
                let rec = SeqLinearRecord {
                    a: Some(a.clone()),
                    g: Some(g.clone()),
                    materialized: None,
                    first: None,
                };
                // The explicit offsets and what they add.
                let sd = s.to_dtype(dtype).unwrap();
                let w = g
                    .t()
                    .unwrap()
                    .matmul(&a)
                    .unwrap()
                    .broadcast_mul(&sd.reshape((b, 1, 1)).unwrap())
                    .unwrap();
                let mut want_y = a2.matmul(&w.t().unwrap()).unwrap();
                if bias {
                    let db = g
                        .sum(1)
                        .unwrap()
                        .broadcast_mul(&sd.reshape((b, 1)).unwrap())
                        .unwrap();
                    want_y = want_y.broadcast_add(&db.unsqueeze(1).unwrap()).unwrap();
                }
                let want_dx = g2.matmul(&w).unwrap();
                for factored in [true, false] {
                    let off = AscentOffsets::new(&rec, "test", &s, bias, Some(factored)).unwrap();
                    assert_eq!(off.materialized.is_none(), factored);
                    assert_close(&off.forward(&a2).unwrap(), &want_y, 1e-4);
                    assert_close(&off.input_grad(&g2).unwrap(), &want_dx, 1e-4);
                }
                // The mix is the record of h_i = ½G_iᵀA_i + ½G′_iᵀA′_i (bias: column sums).
                let off = AscentOffsets::new(&rec, "test", &s, bias, None).unwrap();
                let mut rec2 = SeqLinearRecord {
                    a: Some(a2.clone()),
                    g: Some(g2.clone()),
                    materialized: None,
                    first: None,
                };
                off.mix(&mut rec2, "test", 0.25).unwrap();
                let got = rule_per_sample(&mut rec2, "test", bias).unwrap();
                let want_w = ((g.t().unwrap().matmul(&a).unwrap() * 0.75).unwrap()
                    + (g2.t().unwrap().matmul(&a2).unwrap() * 0.25).unwrap())
                .unwrap();
                assert_close(&got[0], &want_w, 1e-4);
                if bias {
                    let want_b = ((g.sum(1).unwrap() * 0.75).unwrap()
                        + (g2.sum(1).unwrap() * 0.25).unwrap())
                    .unwrap();
                    assert_close(&got[1], &want_b, 1e-4);
                }
                // Offsets for one batch size refuse another, and the scales must match it.
                assert!(off_check(&rec, &s));
                assert!(
                    AscentOffsets::new(&rec, "test", &s.narrow(0, 0, 2).unwrap(), bias, None)
                        .is_err()
                );
            }
        }
    }

    /// A mixed record kept in two halves gives the norms, per-example gradients and weighted
    /// sum of `h_i = (1−α)G_iᵀA_i + αG′_iᵀA′_i` formed explicitly: in every mode, one and
    /// several positions, with and without a bias and with and without the plain gradients
    /// materialised by the plain pass, on the host kernels (f32) and joined on candle's ops
    /// (f64).
    #[test]
    fn split_mixed_record_matches_the_explicit_mix() {
        let (b, p, r, alpha) = (3, 5, 6, 0.25);
        for dtype in [DType::F32, DType::F64] {
            for t in [1, 4] {
                for bias in [false, true] {
                    for plain_materialized in [false, true] {
                        for mode in [GradMode::Auto, GradMode::Ghost, GradMode::Materialize] {
                            let a = seeded_normal(&[b, t, p], 1).to_dtype(dtype).unwrap();
                            let g = seeded_normal(&[b, t, r], 2).to_dtype(dtype).unwrap();
                            let a2 = seeded_normal(&[b, t, p], 3).to_dtype(dtype).unwrap();
                            let g2 = seeded_normal(&[b, t, r], 4).to_dtype(dtype).unwrap();
                            let s = Tensor::new(&[0.5f64, 0.0, 2.0], &candle_core::Device::Cpu)
                                .unwrap();
                            let rec = SeqLinearRecord {
                                a: Some(a.clone()),
                                g: Some(g.clone()),
                                materialized: plain_materialized
                                    .then(|| per_sample(&a, &g, bias).unwrap()),
                                first: None,
                            };
                            let off = AscentOffsets::new(&rec, "test", &s, bias, None).unwrap();
                            let mut mixed = SeqLinearRecord {
                                a: Some(a2.clone()),
                                g: Some(g2.clone()),
                                materialized: None,
                                first: None,
                            };
                            off.mix(&mut mixed, "test", alpha).unwrap();
                            assert!(mixed.first.is_some());
                            let hw = ((g.t().unwrap().matmul(&a).unwrap() * (1.0 - alpha))
                                .unwrap()
                                + (g2.t().unwrap().matmul(&a2).unwrap() * alpha).unwrap())
                            .unwrap();
                            let hb = ((g.sum(1).unwrap() * (1.0 - alpha)).unwrap()
                                + (g2.sum(1).unwrap() * alpha).unwrap())
                            .unwrap();
                            let mut want_sq =
                                hw.sqr().unwrap().flatten_from(1).unwrap().sum(1).unwrap();
                            if bias {
                                want_sq = (want_sq + hb.sqr().unwrap().sum(1).unwrap()).unwrap();
                            }
                            let what = format!(
                                "{dtype:?} t={t} bias={bias} plain={plain_materialized} {mode:?}"
                            );
                            let sq = rule_sq_norms(&mut mixed, "test", mode, bias).unwrap();
                            assert_close(&sq, &want_sq, 1e-4);
                            let wts = Tensor::new(&[0.3f32, -1.0, 2.0], &candle_core::Device::Cpu)
                                .unwrap();
                            let sum = rule_weighted_sum(&mut mixed, "test", &wts, bias).unwrap();
                            let wd = wts.to_dtype(dtype).unwrap();
                            let want_w = hw
                                .broadcast_mul(&wd.reshape((b, 1, 1)).unwrap())
                                .unwrap()
                                .sum(0)
                                .unwrap();
                            assert_close(&sum[0], &want_w, 1e-4);
                            assert_eq!(sum.len(), 1 + usize::from(bias), "{what}");
                            if bias {
                                let want_b = hb
                                    .broadcast_mul(&wd.reshape((b, 1)).unwrap())
                                    .unwrap()
                                    .sum(0)
                                    .unwrap();
                                assert_close(&sum[1], &want_b, 1e-4);
                            }
                            let per = rule_per_sample(&mut mixed, "test", bias).unwrap();
                            assert_close(&per[0], &hw, 1e-4);
                            if bias {
                                assert_close(&per[1], &hb, 1e-4);
                            }
                        }
                    }
                }
            }
        }
    }

    fn off_check(rec: &SeqLinearRecord, s: &Tensor) -> bool {
        let off = AscentOffsets::new(rec, "test", s, false, None).unwrap();
        off.check_examples(3, "test").is_ok() && off.check_examples(2, "test").is_err()
    }
}
