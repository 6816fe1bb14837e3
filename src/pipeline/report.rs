//! `dp-lab report DIR`: every finished run of a sweep merged into `results.csv` and
//! `results.json`, and a self-contained `report.html` (plots inlined as SVG, nothing fetched
//! to view it) with `report.md` beside it (plots as SVG files in `report/`).
//!
//! Runs are grouped by dataset and *label*: the method's name for a private run, the
//! regime's for a run that is not DP (whose ε is never a number; it is drawn as a horizontal
//! reference line). Seeds are averaged; the band of each curve is the min–max over seeds.

use super::config::MaskSourceChoice;
use super::error::{io, Result};
use super::metrics::penultimate_cka;
use super::run::{load_dataset, load_released_model, write_atomic, RunResult};
use super::sweep_dir::SweepDir;
use candle_core::Device;
use dp_metrics::plot::{line_plot, LinePlot, Series};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What `report` wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// Runs included.
    pub runs: usize,
    /// `results.csv`.
    pub csv: PathBuf,
    /// `results.json`.
    pub json: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// The plots (SVG files under `report/`).
    pub plots: Vec<PathBuf>,
}

/// The label a run is grouped under.
pub fn label(r: &RunResult) -> String {
    let base = base_label(r);
    match (r.config.sparsity > 0.0, r.config.mask_source) {
        (false, _) => base,
        (true, MaskSourceChoice::Init) => format!("{base} sparsity {}", r.config.sparsity),
        (true, src) => format!(
            "{base} sparsity {} ({} mask)",
            r.config.sparsity,
            src.label()
        ),
    }
}

/// The label without sparsity: the method's name, or the regime's for a run that is not DP.
fn base_label(r: &RunResult) -> String {
    if r.dp {
        r.config.method.name.clone()
    } else if r.config.regime.replace('-', "_") == "private" {
        format!("{} (not DP)", r.config.method.name)
    } else {
        format!("{} (not DP)", r.config.regime.replace('-', "_"))
    }
}

/// Examples of the test set the CKA to the non-private model is measured on.
const CKA_EXAMPLES: usize = 1000;

/// The non-private run `r` is compared with: same dataset, model, seed, epochs, batch size
/// and optimiser, trained without privacy; of the same sparsity and mask source if the sweep
/// has one, else dense.
fn non_private_reference<'a>(r: &RunResult, all: &'a [RunResult]) -> Option<&'a RunResult> {
    let same_setting = |o: &&RunResult| {
        o.config.regime == "non-private"
            && o.config.dataset == r.config.dataset
            && o.config.data_dir == r.config.data_dir
            && o.config.model == r.config.model
            && o.config.mlp_hidden == r.config.mlp_hidden
            && o.config.seed == r.config.seed
            && o.config.epochs == r.config.epochs
            && o.config.batch_size == r.config.batch_size
            // The same optimiser, not its learning rate: the non-private baseline is
            // trained at a learning rate of its own (clipped gradients are smaller).
            && o.config.optimizer.name == r.config.optimizer.name
    };
    let same_mask = |o: &&RunResult| {
        o.config.sparsity == r.config.sparsity && o.config.mask_source == r.config.mask_source
    };
    all.iter().filter(same_setting).find(same_mask).or_else(|| {
        all.iter()
            .filter(same_setting)
            .find(|o| o.config.sparsity == 0.0)
    })
}

/// Adds `cka_to_non_private` (linear CKA of the penultimate representations, see
/// [`penultimate_cka`]) to every run that is not itself non-private and has a reference run
/// in the sweep. Released weights are read from each run's `model/`; a run whose weights
/// are missing is left without the metric.
pub fn attach_cka(dir: &SweepDir, results: &mut [RunResult]) -> Result<()> {
    let dev = Device::Cpu;
    let mut test_sets: BTreeMap<String, dp_data::Dataset> = BTreeMap::new();
    let pairs: Vec<(usize, String)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.config.regime != "non-private")
        .filter_map(|(i, r)| non_private_reference(r, results).map(|o| (i, o.run_id.clone())))
        .collect();
    for (i, ref_id) in pairs {
        let r = &results[i];
        let Some(reference) = results.iter().find(|o| o.run_id == ref_id) else {
            continue;
        };
        let (Ok(mut a), Ok(mut b)) = (
            load_released_model(&r.config, &dir.run(&r.run_id).0, &dev),
            load_released_model(&reference.config, &dir.run(&ref_id).0, &dev),
        ) else {
            continue;
        };
        if !test_sets.contains_key(&r.dataset) {
            test_sets.insert(r.dataset.clone(), load_dataset(&r.config)?.test);
        }
        let test = &test_sets[&r.dataset];
        let cka = penultimate_cka(&mut a, &mut b, test, CKA_EXAMPLES, &dev)?;
        results[i].metrics.insert("cka_to_non_private".into(), cka);
    }
    Ok(())
}

/// The finished runs of `dir`, in expansion order (runs of a manifest-less directory of run
/// folders are read too, in name order).
pub fn collect(dir: &SweepDir) -> Result<Vec<RunResult>> {
    let ids: Vec<String> = match dir.manifest() {
        Ok(m) => m.runs.into_iter().map(|r| r.id).collect(),
        Err(_) => {
            let runs = dir.root.join("runs");
            let mut v: Vec<String> = std::fs::read_dir(&runs)
                .map_err(io(&runs))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect();
            v.sort();
            v
        }
    };
    Ok(ids
        .iter()
        .filter_map(|id| dir.run(id).read_result())
        .collect())
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| format!("{v}"))
}

/// The CSV: one row per run, fixed columns then one column per metric.
pub fn write_csv(path: &Path, results: &[RunResult]) -> Result<()> {
    let metric_names: BTreeSet<&String> = results.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "run_id",
        "dataset",
        "model",
        "method",
        "regime",
        "label",
        "dp",
        "target_epsilon",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sparsity",
        "seed",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "clip",
        "steps",
        "test_accuracy",
        "seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(metric_names.iter().map(|m| m.to_string()));
    let csv_err = |e: csv::Error| super::error::PipelineError::Other(format!("csv: {e}"));
    w.write_record(&header).map_err(csv_err)?;
    for r in results {
        let c = &r.config;
        let mut row = vec![
            r.run_id.clone(),
            r.dataset.clone(),
            format!("{:?}", c.model).to_lowercase(),
            c.method.name.clone(),
            c.regime.clone(),
            label(r),
            r.dp.to_string(),
            fmt_opt(c.epsilon),
            // Never a number for a run that is not DP.
            r.epsilon.map_or("not DP".into(), |e| format!("{e}")),
            format!("{}", r.delta),
            format!("{}", r.noise_multiplier),
            format!("{}", c.sparsity),
            c.seed.to_string(),
            format!("{}", c.epochs),
            format!("{}", c.batch_size),
            c.optimizer.name.clone(),
            format!("{}", c.optimizer.lr),
            format!("{}", c.method.clip),
            r.steps.to_string(),
            fmt_opt(r.test_accuracy),
            format!("{:.3}", r.seconds),
        ];
        row.extend(
            metric_names
                .iter()
                .map(|m| fmt_opt(r.metrics.get(*m).copied())),
        );
        w.write_record(&row).map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| super::error::PipelineError::Other(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Mean, min, max and count.
fn stats(v: &[f64]) -> (f64, f64, f64, usize) {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, lo, hi, n)
}

fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let (m, ..) = stats(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Runs that differ only in their seed: the config without the seed, as a key.
fn config_key(r: &RunResult) -> String {
    let mut c = r.config.clone();
    c.seed = 0;
    serde_json::to_string(&c).unwrap_or_default()
}

/// A plot of `value` against ε per label: private runs as curves over their target ε (the
/// spent ε when no target), not-DP runs as flat lines over the ε range.
fn curves_over(
    runs: &[&RunResult],
    x_of: &dyn Fn(&RunResult) -> Option<f64>,
    value: &dyn Fn(&RunResult) -> Option<f64>,
    flat_when_no_x: bool,
) -> Vec<Series> {
    let mut by_label: BTreeMap<String, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    let mut flat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut xs = BTreeSet::new();
    for r in runs {
        let Some(v) = value(r).filter(|v| v.is_finite()) else {
            continue;
        };
        match x_of(r) {
            Some(x) if x.is_finite() => {
                let k = (x * 1e6).round() as i64;
                xs.insert(k);
                by_label
                    .entry(label(r))
                    .or_default()
                    .entry(k)
                    .or_default()
                    .push(v);
            }
            _ if flat_when_no_x => flat.entry(label(r)).or_default().push(v),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, pts) in by_label {
        let x: Vec<f64> = pts.keys().map(|k| *k as f64 / 1e6).collect();
        let st: Vec<_> = pts.values().map(|v| stats(v)).collect();
        out.push(
            Series::new(name, x, st.iter().map(|s| s.0).collect()).with_band(
                st.iter().map(|s| s.1).collect(),
                st.iter().map(|s| s.2).collect(),
            ),
        );
    }
    if let (Some(&lo), Some(&hi)) = (xs.first(), xs.last()) {
        for (name, v) in flat {
            let (m, a, b, _) = stats(&v);
            let x = vec![lo as f64 / 1e6, hi as f64 / 1e6];
            out.push(Series::new(name, x, vec![m, m]).with_band(vec![a, a], vec![b, b]));
        }
    }
    out
}

fn target_eps(r: &RunResult) -> Option<f64> {
    if !r.dp {
        return None;
    }
    r.config.epsilon.or(r.epsilon)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let mut s = format!(
            "### {}\n\n| {} |\n|{}\n",
            self.title,
            self.header.join(" | "),
            "---|".repeat(self.header.len())
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
    fn html(&self) -> String {
        let mut s = format!("<h3>{}</h3>\n<table>\n<tr>", html_escape(&self.title));
        for h in &self.header {
            let _ = write!(s, "<th>{}</th>", html_escape(h));
        }
        s += "</tr>\n";
        for r in &self.rows {
            s += "<tr>";
            for c in r {
                let _ = write!(s, "<td>{}</td>", html_escape(c));
            }
            s += "</tr>\n";
        }
        s + "</table>\n"
    }
}

/// Writes the results and the report into `dir` (the report's plots into `dir/report/`).
pub fn write_report(dir: &SweepDir) -> Result<ReportFiles> {
    let mut results = collect(dir)?;
    attach_cka(dir, &mut results)?;
    let root = &dir.root;
    let csv = root.join("results.csv");
    let json = root.join("results.json");
    write_csv(&csv, &results)?;
    write_atomic(&json, &serde_json::to_vec_pretty(&results)?)?;
    let plot_dir = root.join("report");
    std::fs::create_dir_all(&plot_dir).map_err(io(&plot_dir))?;
    let datasets: BTreeSet<String> = results.iter().map(|r| r.dataset.clone()).collect();
    let mut plots: Vec<(String, PathBuf)> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    let mut add_plot = |name: String, plot: LinePlot| -> Result<()> {
        if plot.series.is_empty() {
            return Ok(());
        }
        let file = plot_dir.join(format!("{name}.svg"));
        line_plot(&file, &plot)?;
        plots.push((plot.title.clone(), file));
        Ok(())
    };
    for ds in &datasets {
        let runs: Vec<&RunResult> = results.iter().filter(|r| &r.dataset == ds).collect();
        let acc = |r: &RunResult| r.test_accuracy;
        add_plot(
            format!("{ds}-accuracy-vs-epsilon"),
            curves_over(&runs, &target_eps, &acc, true)
                .into_iter()
                .fold(
                    LinePlot::new(
                        format!("{ds}: test accuracy against ε (band: seeds min–max)"),
                        "ε",
                        "test accuracy",
                    ),
                    LinePlot::with_series,
                ),
        )?;
        let sparsities: BTreeSet<i64> = runs
            .iter()
            .map(|r| (r.config.sparsity * 1e6) as i64)
            .collect();
        if sparsities.len() > 1 {
            let mut p = LinePlot::new(
                format!("{ds}: test accuracy against sparsity"),
                "sparsity",
                "test accuracy",
            );
            // One curve per (method or regime, ε, mask source); a dense run belongs to the
            // curve of every mask source its setting was pruned with.
            let base = |r: &RunResult| {
                if r.dp {
                    format!("{} ε={}", base_label(r), fmt_opt(target_eps(r)))
                } else {
                    base_label(r)
                }
            };
            let mut sources: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
            for r in runs.iter().filter(|r| r.config.sparsity > 0.0) {
                sources
                    .entry(base(r))
                    .or_default()
                    .insert(r.config.mask_source.label());
            }
            let mut groups: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
            for r in &runs {
                let b = base(r);
                let srcs: Vec<&str> = if r.config.sparsity > 0.0 {
                    vec![r.config.mask_source.label()]
                } else {
                    sources
                        .get(&b)
                        .map_or(vec!["init"], |s| s.iter().copied().collect())
                };
                for src in srcs {
                    groups
                        .entry(format!("{b} ({src} mask)"))
                        .or_default()
                        .push(r);
                }
            }
            for (name, g) in groups {
                let mut pts: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                for r in g {
                    if let Some(a) = r.test_accuracy {
                        pts.entry((r.config.sparsity * 1e6) as i64)
                            .or_default()
                            .push(a);
                    }
                }
                let st: Vec<_> = pts.values().map(|v| stats(v)).collect();
                p = p.with_series(
                    Series::new(
                        name,
                        pts.keys().map(|k| *k as f64 / 1e6).collect(),
                        st.iter().map(|s| s.0).collect(),
                    )
                    .with_band(
                        st.iter().map(|s| s.1).collect(),
                        st.iter().map(|s| s.2).collect(),
                    ),
                );
            }
            add_plot(format!("{ds}-accuracy-vs-sparsity"), p)?;
        }
        let metric_names: BTreeSet<String> = runs
            .iter()
            .flat_map(|r| r.metrics.keys().cloned())
            .filter(|m| !m.starts_with("per_class_accuracy.") || m.ends_with("worst"))
            .collect();
        for m in &metric_names {
            let value = |r: &RunResult| r.metrics.get(m).copied();
            let p = curves_over(&runs, &target_eps, &value, true)
                .into_iter()
                .fold(
                    LinePlot::new(
                        format!("{ds}: {m} against ε (analysis only)"),
                        "ε",
                        m.clone(),
                    ),
                    LinePlot::with_series,
                );
            add_plot(format!("{ds}-{}-vs-epsilon", m.replace('.', "_")), p)?;
        }
        // Per-class accuracy, where it was computed.
        let classes: BTreeSet<String> = runs
            .iter()
            .flat_map(|r| r.metrics.keys().cloned())
            .filter(|m| m.starts_with("per_class_accuracy.") && !m.ends_with("worst"))
            .collect();
        if !classes.is_empty() {
            let mut groups: BTreeMap<(String, String), Vec<&RunResult>> = BTreeMap::new();
            for r in &runs {
                groups
                    .entry((label(r), fmt_opt(target_eps(r))))
                    .or_default()
                    .push(r);
            }
            let mut header = vec!["label".to_string(), "ε".to_string()];
            header.extend(
                classes
                    .iter()
                    .map(|c| c.trim_start_matches("per_class_accuracy.").to_string()),
            );
            let rows = groups
                .into_iter()
                .map(|((l, e), g)| {
                    let mut row = vec![l, if e.is_empty() { "not DP".into() } else { e }];
                    for c in &classes {
                        let v: Vec<f64> =
                            g.iter().filter_map(|r| r.metrics.get(c).copied()).collect();
                        row.push(if v.is_empty() {
                            String::new()
                        } else {
                            format!("{:.3}", stats(&v).0)
                        });
                    }
                    row
                })
                .collect();
            tables.push(Table {
                title: format!("{ds}: per-class test accuracy (mean over seeds)"),
                header,
                rows,
            });
        }
    }
    // The best configuration per (method, dataset, ε), over configs averaged across seeds.
    type Best<'a> = (f64, f64, usize, &'a RunResult, f64);
    let mut best: BTreeMap<(String, String, String), Best> = BTreeMap::new();
    let mut by_config: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for r in &results {
        by_config.entry(config_key(r)).or_default().push(r);
    }
    for runs in by_config.values() {
        let accs: Vec<f64> = runs.iter().filter_map(|r| r.test_accuracy).collect();
        if accs.is_empty() {
            continue;
        }
        let r0 = runs[0];
        let (mean, ..) = stats(&accs);
        let spent = runs
            .iter()
            .filter_map(|r| r.epsilon)
            .fold(f64::NEG_INFINITY, f64::max);
        let key = (r0.dataset.clone(), label(r0), fmt_opt(target_eps(r0)));
        if best.get(&key).is_none_or(|b| mean > b.0) {
            best.insert(key, (mean, sd(&accs), accs.len(), r0, spent));
        }
    }
    let rows = best
        .iter()
        .map(|((ds, l, e), (mean, s, n, r, spent))| {
            vec![
                ds.clone(),
                l.clone(),
                if e.is_empty() {
                    "not DP".into()
                } else {
                    e.clone()
                },
                format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * s),
                n.to_string(),
                if spent.is_finite() {
                    format!("{spent:.3}")
                } else {
                    "not DP".into()
                },
                format!(
                    "lr {} clip {} B {} epochs {}",
                    r.config.optimizer.lr,
                    r.config.method.clip,
                    r.config.batch_size,
                    r.config.epochs
                ),
            ]
        })
        .collect();
    tables.insert(
        0,
        Table {
            title: "Best configuration per (dataset, method, ε): test accuracy % (mean ± sd over seeds), chosen on test accuracy (optimistic: for reporting, not for tuning)".into(),
            header: ["dataset", "method", "target ε", "accuracy %", "seeds", "ε spent (max)", "configuration"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rows,
        },
    );

    let title = match dir.manifest() {
        Ok(m) => format!(
            "dp-lab sweep '{}' ({} of {} runs finished)",
            m.name,
            results.len(),
            m.runs.len()
        ),
        Err(_) => format!("dp-lab results ({} runs)", results.len()),
    };
    let mut md = format!("# {title}\n\nMetrics are analysis only (computed without noise, never released). A run that is not DP has no ε.\n\n");
    let mut html = format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}svg{{max-width:100%;height:auto}}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p>Metrics are analysis only (computed without noise, never released). A run that is not DP has no ε.</p>\n",
        html_escape(&title),
        html_escape(&title)
    );
    for t in &tables {
        md += &t.markdown();
        md += "\n";
        html += &t.html();
    }
    md += "## Plots\n\n";
    html += "<h2>Plots</h2>\n";
    for (t, file) in &plots {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let _ = writeln!(md, "![{t}](report/{name})\n");
        let svg = std::fs::read_to_string(file).map_err(io(file))?;
        let svg = svg.trim_start();
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or(rest, |(_, s)| s).trim_start(),
            None => svg,
        };
        let _ = writeln!(
            html,
            "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>",
            html_escape(t)
        );
    }
    html += "</body>\n</html>\n";
    let html_path = root.join("report.html");
    let md_path = root.join("report.md");
    write_atomic(&html_path, html.as_bytes())?;
    write_atomic(&md_path, md.as_bytes())?;
    Ok(ReportFiles {
        runs: results.len(),
        csv,
        json,
        html: html_path,
        markdown: md_path,
        plots: plots.into_iter().map(|p| p.1).collect(),
    })
}
