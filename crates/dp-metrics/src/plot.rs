//! CSV/JSON writers and PNG/SVG plots (heatmaps, contours and line plots) with plotters.
//!
//! The output format follows the file extension (`.png` or `.svg`). Text is rendered with an
//! embedded DejaVu Sans (see `assets/DejaVuSans-LICENSE.txt`) through plotters' pure-Rust
//! `ab_glyph` backend, registered as the `"sans-serif"` family, so no system fonts,
//! fontconfig or freetype are needed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde::{Deserialize, Serialize};

use crate::error::{ensure_finite, MetricsError, Result};
use crate::landscape::{Grid2d, Slice1d, Slice2d};

static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

/// Registers the embedded font once (idempotent; called by every plot function).
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "embedded font is invalid".to_string())
        })
        .clone()
        .map_err(MetricsError::Plot)
}

fn perr<E: std::fmt::Display>(e: E) -> MetricsError {
    MetricsError::Plot(e.to_string())
}

#[derive(Clone, Copy)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "png" => Ok(Format::Png),
        Some(e) if e == "svg" => Ok(Format::Svg),
        _ => Err(MetricsError::InvalidArgument(format!(
            "{}: use a .png or .svg extension",
            path.display()
        ))),
    }
}

/// Renders with the backend matching the path's extension.
macro_rules! render {
    ($path:expr, $size:expr, $draw:ident, $($arg:expr),*) => {{
        ensure_font()?;
        match format_of($path)? {
            Format::Png => {
                let root = BitMapBackend::new($path, $size).into_drawing_area();
                $draw(&root, $($arg),*)?;
                root.present().map_err(perr)?;
            }
            Format::Svg => {
                let root = SVGBackend::new($path, $size).into_drawing_area();
                $draw(&root, $($arg),*)?;
                root.present().map_err(perr)?;
            }
        }
        Ok(())
    }};
}

// ---------------------------------------------------------------- writers

/// Writes any serde value as pretty JSON.
///
/// ```
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_{}.json", std::process::id()));
/// dp_metrics::plot::write_json(&p, &dp_metrics::linspace(0.0, 1.0, 3))?;
/// assert!(std::fs::read_to_string(&p)?.contains("0.5"));
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn write_json<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    serde_json::to_writer_pretty(&mut w, value)?;
    w.write_all(b"\n")?;
    w.flush()?;
    Ok(())
}

/// Writes a 1-D slice as CSV with header `alpha,loss`.
///
/// ```
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_{}.csv", std::process::id()));
/// let s = dp_metrics::Slice1d { alphas: vec![0.0, 1.0], losses: vec![2.0, 3.0] };
/// dp_metrics::plot::write_slice_1d_csv(&p, &s)?;
/// assert_eq!(std::fs::read_to_string(&p)?, "alpha,loss\n0,2\n1,3\n");
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn write_slice_1d_csv(path: impl AsRef<Path>, slice: &Slice1d) -> Result<()> {
    if slice.alphas.len() != slice.losses.len() {
        return Err(MetricsError::ShapeMismatch("slice alphas/losses".into()));
    }
    let mut w = BufWriter::new(File::create(path)?);
    writeln!(w, "alpha,loss")?;
    for (a, l) in slice.alphas.iter().zip(&slice.losses) {
        writeln!(w, "{a},{l}")?;
    }
    w.flush()?;
    Ok(())
}

/// Writes a 2-D slice as long-format CSV with header `alpha,beta,loss` (row-major).
///
/// ```
/// use dp_metrics::{Grid2d, Slice2d};
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc2_{}.csv", std::process::id()));
/// let s = Slice2d { alphas: vec![0.0, 1.0], betas: vec![5.0], losses: Grid2d::new(2, 1, vec![1.0, 2.0])? };
/// dp_metrics::plot::write_slice_2d_csv(&p, &s)?;
/// assert_eq!(std::fs::read_to_string(&p)?, "alpha,beta,loss\n0,5,1\n1,5,2\n");
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn write_slice_2d_csv(path: impl AsRef<Path>, slice: &Slice2d) -> Result<()> {
    check_slice2d(slice)?;
    let mut w = BufWriter::new(File::create(path)?);
    writeln!(w, "alpha,beta,loss")?;
    for (i, a) in slice.alphas.iter().enumerate() {
        for (j, b) in slice.betas.iter().enumerate() {
            writeln!(w, "{a},{b},{}", slice.losses.get(i, j))?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Writes named series as long-format CSV with header `series,x,y`.
///
/// ```
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc3_{}.csv", std::process::id()));
/// let s = vec![dp_metrics::plot::Series::new("dp", vec![0.0], vec![1.5])];
/// dp_metrics::plot::write_series_csv(&p, &s)?;
/// assert_eq!(std::fs::read_to_string(&p)?, "series,x,y\ndp,0,1.5\n");
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn write_series_csv(path: impl AsRef<Path>, series: &[Series]) -> Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    writeln!(w, "series,x,y")?;
    for s in series {
        s.check()?;
        let name = s.name.replace([',', '\n'], " ");
        for (x, y) in s.x.iter().zip(&s.y) {
            writeln!(w, "{name},{x},{y}")?;
        }
    }
    w.flush()?;
    Ok(())
}

fn check_slice2d(s: &Slice2d) -> Result<()> {
    if s.losses.rows != s.alphas.len()
        || s.losses.cols != s.betas.len()
        || s.losses.values.len() != s.losses.rows * s.losses.cols
    {
        return Err(MetricsError::ShapeMismatch(
            "2-D slice grid does not match alphas x betas".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- line plots

/// One named curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// x values.
    pub x: Vec<f64>,
    /// y values (same length as x).
    pub y: Vec<f64>,
    /// A shaded band `(lower, upper)` around the curve (e.g. the spread over seeds), same
    /// length as x.
    #[serde(default)]
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

impl Series {
    /// A named series.
    pub fn new(name: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            x,
            y,
            band: None,
        }
    }

    /// The series with a shaded band from `lower` to `upper` (drawn under the curve).
    ///
    /// ```
    /// use dp_metrics::plot::{line_plot, LinePlot, Series};
    /// let s = Series::new("DP-SGD", vec![1.0, 3.0], vec![0.8, 0.9]).with_band(vec![0.78, 0.88], vec![0.82, 0.91]);
    /// let p = std::env::temp_dir().join(format!("dp_metrics_doc_band_{}.svg", std::process::id()));
    /// line_plot(&p, &LinePlot::new("acc", "ε", "accuracy").with_series(s))?;
    /// # std::fs::remove_file(&p)?;
    /// # Ok::<(), dp_metrics::MetricsError>(())
    /// ```
    pub fn with_band(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.band = Some((lower, upper));
        self
    }

    fn check(&self) -> Result<()> {
        if self.x.len() != self.y.len() {
            return Err(MetricsError::ShapeMismatch(format!(
                "series {}: x and y differ in length",
                self.name
            )));
        }
        if let Some((lo, hi)) = &self.band {
            if lo.len() != self.x.len() || hi.len() != self.x.len() {
                return Err(MetricsError::ShapeMismatch(format!(
                    "series {}: the band differs in length from x",
                    self.name
                )));
            }
            ensure_finite(lo, "band lower")?;
            ensure_finite(hi, "band upper")?;
        }
        Ok(())
    }
}

/// A line plot of several named series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinePlot {
    /// Title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
    /// Plot log₁₀ y (all y must be > 0).
    pub log_y: bool,
    /// Image size in pixels.
    pub size: (u32, u32),
}

impl LinePlot {
    /// A plot with the given labels, no series, linear y, 900×600.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            log_y: false,
            size: (900, 600),
        }
    }

    /// Adds a series.
    pub fn with_series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Axis tick text: no "-0.0", trailing zeros trimmed, scientific notation for tiny/huge values.
fn tick_label(v: &f64) -> String {
    let v = *v;
    if v.abs() < 1e-12 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-3 {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        let pad = 0.5 * lo.abs().max(1e-9);
        (lo - pad, hi + pad)
    }
}

fn draw_lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plot: &LinePlot) -> Result<()> {
    let mut series = Vec::with_capacity(plot.series.len());
    for s in &plot.series {
        s.check()?;
        ensure_finite(&s.x, "series x")?;
        ensure_finite(&s.y, "series y")?;
        let y: Vec<f64> = if plot.log_y {
            if s.y.iter().any(|v| *v <= 0.0) {
                return Err(MetricsError::InvalidArgument("log_y needs y > 0".into()));
            }
            s.y.iter().map(|v| v.log10()).collect()
        } else {
            s.y.clone()
        };
        let band = match &s.band {
            Some((lo, hi)) if plot.log_y => {
                if lo.iter().chain(hi).any(|v| *v <= 0.0) {
                    return Err(MetricsError::InvalidArgument(
                        "log_y needs a band > 0".into(),
                    ));
                }
                Some((
                    lo.iter().map(|v| v.log10()).collect::<Vec<_>>(),
                    hi.iter().map(|v| v.log10()).collect::<Vec<_>>(),
                ))
            }
            other => other.clone(),
        };
        series.push((s.name.as_str(), s.x.clone(), y, band));
    }
    let fold = |it: &mut dyn Iterator<Item = f64>| {
        it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        })
    };
    let (x0, x1) = fold(&mut series.iter().flat_map(|s| s.1.iter().copied()));
    let (y0, y1) = fold(&mut series.iter().flat_map(|s| {
        let band = s.3.iter().flat_map(|(lo, hi)| lo.iter().chain(hi));
        s.2.iter().chain(band).copied()
    }));
    let (x0, x1) = if x0.is_finite() {
        padded_range(x0, x1)
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = if y0.is_finite() {
        padded_range(y0, y1)
    } else {
        (0.0, 1.0)
    };
    let y_label = if plot.log_y {
        format!("log10 {}", plot.y_label)
    } else {
        plot.y_label.clone()
    };

    root.fill(&WHITE).map_err(perr)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&plot.title, (FONT, 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc(&plot.x_label)
        .y_desc(&y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(perr)?;
    for (i, (_, x, _, band)) in series.iter().enumerate() {
        if let Some((lo, hi)) = band {
            let color = PALETTE[i % PALETTE.len()];
            let outline: Vec<(f64, f64)> = x
                .iter()
                .copied()
                .zip(hi.iter().copied())
                .chain(x.iter().copied().zip(lo.iter().copied()).rev())
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.18).filled(),
                )))
                .map_err(perr)?;
        }
    }
    for (i, (name, x, y, _)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                x.iter().copied().zip(y.iter().copied()),
                color.stroke_width(2),
            ))
            .map_err(perr)?
            .label(*name)
            .legend(move |(px, py)| {
                PathElement::new(vec![(px, py), (px + 22, py)], color.stroke_width(2))
            });
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(perr)?;
    }
    Ok(())
}

/// Draws a line plot to `path` (`.png` or `.svg`).
///
/// ```
/// use dp_metrics::plot::{line_plot, LinePlot, Series};
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_lines_{}.svg", std::process::id()));
/// let plot = LinePlot::new("Interpolation", "λ", "loss")
///     .with_series(Series::new("non-DP → DP", vec![0.0, 0.5, 1.0], vec![0.2, 0.9, 0.4]));
/// line_plot(&p, &plot)?;
/// assert!(std::fs::read_to_string(&p)?.contains("Interpolation"));
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn line_plot(path: impl AsRef<Path>, plot: &LinePlot) -> Result<()> {
    let path = path.as_ref();
    render!(path, plot.size, draw_lines, plot)
}

/// Plots several 1-D slices (e.g. one per direction seed, or DP vs non-DP) against α.
///
/// ```
/// use dp_metrics::{linspace, Slice1d};
/// let a = linspace(-1.0, 1.0, 11);
/// let s = Slice1d { losses: a.iter().map(|x| x * x).collect(), alphas: a };
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_s1_{}.png", std::process::id()));
/// dp_metrics::plot::plot_slices_1d(&p, "1-D slice", &[("seed 0", &s)])?;
/// assert!(std::fs::metadata(&p)?.len() > 0);
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn plot_slices_1d(
    path: impl AsRef<Path>,
    title: &str,
    slices: &[(&str, &Slice1d)],
) -> Result<()> {
    let mut plot = LinePlot::new(title, "α", "loss");
    for (name, s) in slices {
        plot.series
            .push(Series::new(*name, s.alphas.clone(), s.losses.clone()));
    }
    line_plot(path, &plot)
}

// ---------------------------------------------------------------- heatmaps and contours

/// How a 2-D grid is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SurfaceStyle {
    /// Filled colour cells.
    Heatmap,
    /// Contour lines only (coloured by level).
    Contour,
    /// Filled cells with black contour lines on top.
    HeatmapWithContours,
}

/// Options of [`plot_surface`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurfaceOptions {
    /// Title.
    pub title: String,
    /// x-axis label (the first direction, grid rows).
    pub x_label: String,
    /// y-axis label (the second direction, grid columns).
    pub y_label: String,
    /// Colour-bar label.
    pub value_label: String,
    /// Drawing style.
    pub style: SurfaceStyle,
    /// Number of contour levels (evenly spaced between min and max, exclusive).
    pub contour_levels: usize,
    /// Colour by log₁₀ of the value (all values must be > 0).
    pub log_scale: bool,
    /// Image size in pixels.
    pub size: (u32, u32),
}

impl Default for SurfaceOptions {
    fn default() -> Self {
        Self {
            title: "Loss landscape".into(),
            x_label: "α".into(),
            y_label: "β".into(),
            value_label: "loss".into(),
            style: SurfaceStyle::HeatmapWithContours,
            contour_levels: 12,
            log_scale: false,
            size: (820, 700),
        }
    }
}

/// A viridis-like colour map on [0, 1] (piecewise-linear through viridis anchor colours).
pub fn colormap(t: f64) -> RGBColor {
    const ANCHORS: [(f64, f64, f64); 6] = [
        (68.0, 1.0, 84.0),
        (65.0, 68.0, 135.0),
        (42.0, 120.0, 142.0),
        (34.0, 168.0, 132.0),
        (122.0, 209.0, 81.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (ANCHORS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(ANCHORS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Contour segments of `grid` at `level` by marching squares; coordinates from `xs` (rows)
/// and `ys` (columns). Saddles are resolved with the cell-centre average.
///
/// ```
/// use dp_metrics::Grid2d;
/// let g = Grid2d::new(2, 2, vec![0.0, 0.0, 1.0, 1.0])?;
/// let segs = dp_metrics::plot::contour_segments(&g, &[0.0, 1.0], &[0.0, 1.0], 0.5);
/// assert_eq!(segs, vec![((0.5, 0.0), (0.5, 1.0))]);
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn contour_segments(
    grid: &Grid2d,
    xs: &[f64],
    ys: &[f64],
    level: f64,
) -> Vec<((f64, f64), (f64, f64))> {
    let mut segs = Vec::new();
    if xs.len() != grid.rows || ys.len() != grid.cols || grid.values.len() != grid.rows * grid.cols
    {
        return segs;
    }
    for i in 0..grid.rows.saturating_sub(1) {
        for j in 0..grid.cols.saturating_sub(1) {
            // Corners counter-clockwise: (i,j), (i+1,j), (i+1,j+1), (i,j+1).
            let c = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)];
            let v: Vec<f64> = c.iter().map(|&(a, b)| grid.get(a, b)).collect();
            let mut pts = Vec::with_capacity(4);
            for e in 0..4 {
                let (p, q) = (e, (e + 1) % 4);
                let (vp, vq) = (v[p], v[q]);
                if (vp >= level) != (vq >= level) {
                    let t = (level - vp) / (vq - vp);
                    let (xp, yp) = (xs[c[p].0], ys[c[p].1]);
                    let (xq, yq) = (xs[c[q].0], ys[c[q].1]);
                    pts.push((xp + t * (xq - xp), yp + t * (yq - yp)));
                }
            }
            match pts.len() {
                2 => segs.push((pts[0], pts[1])),
                4 => {
                    let centre = v.iter().sum::<f64>() / 4.0;
                    if (centre >= level) == (v[0] >= level) {
                        segs.push((pts[0], pts[3]));
                        segs.push((pts[1], pts[2]));
                    } else {
                        segs.push((pts[0], pts[1]));
                        segs.push((pts[2], pts[3]));
                    }
                }
                _ => {}
            }
        }
    }
    segs
}

/// Cell edges: midpoints between grid coordinates, extended by half a step at the ends.
fn cell_edges(c: &[f64]) -> Vec<f64> {
    if c.len() == 1 {
        return vec![c[0] - 0.5, c[0] + 0.5];
    }
    let mut e = Vec::with_capacity(c.len() + 1);
    e.push(c[0] - (c[1] - c[0]) / 2.0);
    for w in c.windows(2) {
        e.push((w[0] + w[1]) / 2.0);
    }
    let n = c.len();
    e.push(c[n - 1] + (c[n - 1] - c[n - 2]) / 2.0);
    e
}

fn draw_surface<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    xs: &[f64],
    ys: &[f64],
    grid: &Grid2d,
    opts: &SurfaceOptions,
) -> Result<()> {
    let grid = if opts.log_scale {
        if grid.values.iter().any(|v| *v <= 0.0) {
            return Err(MetricsError::InvalidArgument(
                "log_scale needs values > 0".into(),
            ));
        }
        grid.map(f64::log10)
    } else {
        grid.clone()
    };
    let (vmin, vmax) = grid.min_max();
    let span = if vmax > vmin { vmax - vmin } else { 1.0 };
    let norm = |v: f64| (v - vmin) / span;
    let xe = cell_edges(xs);
    let ye = cell_edges(ys);
    let (x0, x1) = (xe[0], xe[xe.len() - 1]);
    let (y0, y1) = (ye[0], ye[ye.len() - 1]);
    let levels: Vec<f64> = (1..=opts.contour_levels)
        .map(|k| vmin + span * k as f64 / (opts.contour_levels + 1) as f64)
        .collect();

    root.fill(&WHITE).map_err(perr)?;
    let (w, _) = root.dim_in_pixel();
    let (main, bar) = root.split_horizontally(w.saturating_sub(120));
    let mut chart = ChartBuilder::on(&main)
        .caption(&opts.title, (FONT, 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&opts.x_label)
        .y_desc(&opts.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .draw()
        .map_err(perr)?;
    if opts.style != SurfaceStyle::Contour {
        let mut cells = Vec::with_capacity(grid.values.len());
        for i in 0..grid.rows {
            for j in 0..grid.cols {
                let c = colormap(norm(grid.get(i, j)));
                cells.push(Rectangle::new(
                    [(xe[i], ye[j]), (xe[i + 1], ye[j + 1])],
                    c.filled(),
                ));
            }
        }
        chart.draw_series(cells).map_err(perr)?;
    }
    if opts.style != SurfaceStyle::Heatmap {
        for &level in &levels {
            let (color, width) = if opts.style == SurfaceStyle::Contour {
                (colormap(norm(level)), 2)
            } else {
                (BLACK, 1)
            };
            let segs = contour_segments(&grid, xs, ys, level);
            chart
                .draw_series(
                    segs.into_iter()
                        .map(|(p, q)| PathElement::new(vec![p, q], color.stroke_width(width))),
                )
                .map_err(perr)?;
        }
    }
    if (x0..=x1).contains(&0.0) && (y0..=y1).contains(&0.0) {
        let marker = if opts.style == SurfaceStyle::Contour {
            BLACK
        } else {
            WHITE
        };
        chart
            .draw_series(std::iter::once(Circle::new((0.0, 0.0), 4, marker.filled())))
            .map_err(perr)?;
    }
    // Colour bar.
    let label = if opts.log_scale {
        format!("log10 {}", opts.value_label)
    } else {
        opts.value_label.clone()
    };
    let (b0, b1) = if vmax > vmin {
        (vmin, vmax)
    } else {
        (vmin - 0.5, vmin + 0.5)
    };
    let mut cb = ChartBuilder::on(&bar)
        .caption(label, (FONT, 15))
        .margin_top(20)
        .margin_bottom(65)
        .margin_right(10)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, b0..b1)
        .map_err(perr)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style((FONT, 13))
        .y_label_formatter(&tick_label)
        .draw()
        .map_err(perr)?;
    let steps = 128;
    cb.draw_series((0..steps).map(|k| {
        let a = b0 + (b1 - b0) * k as f64 / steps as f64;
        let b = b0 + (b1 - b0) * (k + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            colormap((k as f64 + 0.5) / steps as f64).filled(),
        )
    }))
    .map_err(perr)?;
    Ok(())
}

/// Draws a grid as a heatmap and/or contour plot with a colour bar to `path` (`.png`/`.svg`).
/// `xs` are the row coordinates (x axis), `ys` the column coordinates (y axis).
///
/// ```
/// use dp_metrics::{plot::{plot_surface, SurfaceOptions}, Grid2d, linspace};
/// let xs = linspace(-1.0, 1.0, 21);
/// let g = Grid2d::from_fn(21, 21, |i, j| xs[i].powi(2) + 2.0 * xs[j].powi(2))?;
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_surf_{}.svg", std::process::id()));
/// plot_surface(&p, &xs, &xs, &g, &SurfaceOptions::default())?;
/// assert!(std::fs::read_to_string(&p)?.contains("Loss landscape"));
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn plot_surface(
    path: impl AsRef<Path>,
    xs: &[f64],
    ys: &[f64],
    grid: &Grid2d,
    opts: &SurfaceOptions,
) -> Result<()> {
    if xs.len() != grid.rows
        || ys.len() != grid.cols
        || grid.values.len() != grid.rows * grid.cols
        || xs.is_empty()
        || ys.is_empty()
    {
        return Err(MetricsError::ShapeMismatch(
            "grid does not match xs x ys".into(),
        ));
    }
    ensure_finite(xs, "xs")?;
    ensure_finite(ys, "ys")?;
    ensure_finite(&grid.values, "grid")?;
    if xs.windows(2).any(|w| w[1] <= w[0]) || ys.windows(2).any(|w| w[1] <= w[0]) {
        return Err(MetricsError::InvalidArgument(
            "xs and ys must be strictly increasing".into(),
        ));
    }
    let path = path.as_ref();
    render!(path, opts.size, draw_surface, xs, ys, grid, opts)
}

/// Draws a 2-D landscape slice (α on x, β on y) with [`plot_surface`].
///
/// ```
/// use dp_metrics::{plot::{plot_slice_2d, SurfaceOptions, SurfaceStyle}, Grid2d, Slice2d, linspace};
/// let a = linspace(-1.0, 1.0, 11);
/// let s = Slice2d { losses: Grid2d::from_fn(11, 11, |i, j| 1.0 + a[i] * a[i] + a[j] * a[j])?, alphas: a.clone(), betas: a };
/// let p = std::env::temp_dir().join(format!("dp_metrics_doc_s2_{}.png", std::process::id()));
/// let opts = SurfaceOptions { style: SurfaceStyle::Contour, log_scale: true, ..Default::default() };
/// plot_slice_2d(&p, &s, &opts)?;
/// assert!(std::fs::read(&p)?.starts_with(b"\x89PNG"));
/// # std::fs::remove_file(&p)?;
/// # Ok::<(), dp_metrics::MetricsError>(())
/// ```
pub fn plot_slice_2d(path: impl AsRef<Path>, slice: &Slice2d, opts: &SurfaceOptions) -> Result<()> {
    check_slice2d(slice)?;
    plot_surface(path, &slice.alphas, &slice.betas, &slice.losses, opts)
}
