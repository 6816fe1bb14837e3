//! # dp-metrics
//!
//! Quantitative metrics for analysing *why* DP-SGD loses accuracy and how adaptive methods
//! change optimisation, computed the same way for every training method (algorithms.md §14):
//!
//! * **Loss-landscape geometry** — filter-normalised 1-D/2-D slices ([`random_slice_1d`],
//!   [`random_slice_2d`]), interpolation and barrier height ([`interpolate`]), total variation
//!   and roughness ([`tv_summary_1d`], [`tv_summary_2d`], [`rof_roughness`]), sharpness and
//!   flatness ([`random_direction_sharpness`], [`flatness_width_1d`]), Hessian spectrum
//!   ([`top_eigenvalue`], [`max_eigenvalue`], [`min_eigenvalue`], [`hutchinson_trace`]). Models plug in through
//!   the small [`LossSurface`] trait; dp-core models through [`CoreModelSurface`].
//! * **Optimisation metrics** from per-example gradients `[n, d]` — clipping statistics,
//!   clipping bias, dispersion and signal-to-noise ([`clipping_stats`]), gradient
//!   misalignment per group ([`gradient_misalignment`]).
//! * **Models and representations** — sparsity, Hoyer sparsity, pruning masks and their
//!   Jaccard overlap ([`sparsity_report`], [`magnitude_pruning_mask`]), linear CKA
//!   ([`linear_cka`]), per-group accuracy and the disparate-impact gap ([`accuracy_by_group`],
//!   [`disparate_impact`]).
//! * **Empirical privacy** — a loss-threshold membership-inference attack
//!   ([`loss_threshold_attack`]) with AUC and TPR at low FPR.
//! * **Output** — every metric returns plain serde structs; [`MetricsLogger`] appends them to a
//!   JSONL file, and [`plot`] writes CSV/JSON and PNG/SVG heatmaps, contours and line plots.
//!
//! ## Contract: analysis only
//!
//! These metrics are **analysis, not part of training**. They are computed on a fixed probe
//! set, without noise, and are never released. They cost no privacy budget *only because they
//! are not released and do not influence the trained model*: nothing computed or logged here
//! may feed back into training (no clip-norm tuning, early stopping, learning-rate schedules or
//! model selection driven by these values on private data). Doing so would make them part of
//! the mechanism, and the accountant's ε would no longer cover the release. The membership
//! inference attack is an empirical sanity check *beside* the accountant's ε, never a
//! replacement for it.
//!
//! All accumulation is in `f64`. Random directions and probes are drawn from seeded
//! `rand_chacha` (candle's CPU RNG cannot be seeded), so results are reproducible. Library
//! functions never panic on bad input; they return [`MetricsError`].
//!
//! ## Example
//!
//! Two questions about a dp-core model on a fixed probe set: how much does clipping at
//! `C = 0.1` bias the mean gradient, and what does the loss look like around the weights?
//!
//! ```
//! use dp_core::{models, per_example_gradients, CrossEntropy, Init};
//! use dp_metrics::{clipping_stats, linspace, random_slice_1d, BiasHandling};
//! use dp_metrics::{CoreModelSurface, LossSurface};
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let mut model = models::mlp(&[4, 8, 3], &dev, 0)?;
//! let x = Init::seeded(1).normal(&[20, 4], 1.0, &dev)?;
//! let y = Tensor::from_vec((0..20u32).map(|i| i % 3).collect::<Vec<_>>(), 20, &dev)?;
//!
//! // Per-example gradients `[n, d]`, then the clipping statistics (noise multiplier 1).
//! let g = per_example_gradients(&mut model, &x, &y, &CrossEntropy)?;
//! let stats = clipping_stats(&g, 0.1, Some(1.0), &[])?;
//! assert_eq!((stats.n, stats.d), (20, 4 * 8 + 8 + 8 * 3 + 3));
//! assert!((0.0..=1.0).contains(&stats.clipped_fraction));
//! assert!(stats.clipped_fraction > 0.0 && stats.bias.bias_norm > 0.0); // C = 0.1 clips: the mean moves
//!
//! // A filter-normalised 1-D slice of the loss through the weights (α = 0 is the model).
//! let mut surface = CoreModelSurface::new(&mut model, x, y)?;
//! let theta = surface.parameters();
//! let slice = random_slice_1d(&mut surface, &theta, 0, BiasHandling::Zero, &linspace(-1.0, 1.0, 5))?;
//! assert!((slice.losses[slice.center_index()] - surface.loss_at(&theta)?).abs() < 1e-9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adapters;
pub mod cka;
pub mod clipping;
pub mod directions;
pub mod error;
pub mod group_accuracy;
pub mod hessian;
pub mod landscape;
pub mod logger;
pub mod loss_change;
pub mod membership;
pub mod misalignment;
pub mod plot;
pub mod sharpness;
pub mod sparsity;
pub mod surface;
pub mod total_variation;

pub use adapters::{layer_activations, CoreModelSurface};
pub use cka::{cka_by_layer, linear_cka, linear_cka_features, linear_cka_gram, LayerCka};
pub use clipping::{
    bias_stats, clip_factors, clipping_bias_vector, clipping_stats, norm_quantiles,
    per_example_norms, quantile, tracking_error, transform_bias_stats, BiasStats, ClippingStats,
    LayerClipStats, NormQuantiles,
};
pub use group_accuracy::{
    accuracy_by_class, accuracy_by_group, disparate_impact, predictions_from_logits,
    AccuracyReport, DisparateImpact, GroupAccuracy, PrivacyCost,
};
pub use logger::{read_log, LogRecord, MetricsLogger};
pub use loss_change::{loss_change_decomposition, LossChangeDecomposition, StepGradients};
pub use membership::{
    loss_threshold_attack, roc_curve, MembershipReport, TprAtFpr, DEFAULT_FPR_LEVELS,
};
pub use misalignment::{
    gradient_misalignment, gradient_misalignment_with_factors, group_mean_gradients,
    GroupGradientAccumulator, GroupMisalignment, MisalignmentReport,
};
pub use sparsity::{
    hoyer_sparsity, magnitude_pruning_mask, mask_jaccard, name_params, random_pruning_mask,
    sparsity_report, LayerMask, LayerSparsity, PruneScope, PruningMask, SparsityReport, Threshold,
};

pub use directions::{
    filter_normalize, filter_normalized_direction, random_direction, BiasHandling,
};
pub use error::{MetricsError, Result};
pub use hessian::{
    hessian_vector_product, hutchinson_trace, max_eigenvalue, min_eigenvalue, top_eigenvalue,
    EigenEstimate, HutchinsonConfig, PowerIterationConfig, TraceEstimate, DEFAULT_HVP_EPS_SCALE,
    MIN_EPS_SCALE_F32,
};
pub use landscape::{
    barrier_height, interpolate, linspace, mean_sd, random_slice_1d, random_slice_2d, slice_1d,
    slice_2d, Grid2d, Interpolation, MeanSd, Slice1d, Slice2d,
};
pub use sharpness::{
    flatness_area_2d, flatness_width_1d, random_direction_sharpness, summarize_slices_1d,
    FlatnessArea, Kappa, RadiusSharpness, SharpnessConfig, SharpnessReport, SliceSummary1d,
};
pub use surface::{flatten_params, LossSurface, ParamLayout, QuadraticSurface};
pub use total_variation::{
    rof_denoise, rof_roughness, roughness_1d, temporal_tv, tv_1d, tv_2d_anisotropic,
    tv_2d_isotropic, tv_summary_1d, tv_summary_2d, RofConfig, RofRoughness, RofSolution,
    TvSummary1d, TvSummary2d,
};
