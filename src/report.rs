//! Reports rendered from a run directory's records: `report.json` (stable
//! keys), `report.md`, `items.csv`, `report.html`. Reports are a pure
//! function of the store and `plan.json`, so a killed and resumed run gives
//! the same `report.json` as an uninterrupted one. What the numbers are is
//! `metrics`'s; this module only reads, renders and writes.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use crate::core::error::{Error, Result};
use crate::core::stats::Estimate;
use crate::judge::{attack_success, Verdict};
use crate::metrics::*;
use crate::runlog::store;
use crate::runlog::{
    load_records, load_run, GenerationRecord, ItemInfo, JudgmentRecord, Loaded, Manifest, RunDir,
};

/// Re-render the reports of a locked run directory from its store.
pub fn render(run: &RunDir) -> Result<Report> {
    let l = load_records(run)?;
    let jmap: HashMap<String, &JudgmentRecord> =
        l.judgments.iter().map(|j| (j.key.clone(), j)).collect();
    let plan_gens: Vec<&GenerationRecord> = l.gens.iter().collect();
    let rep = build(
        dataset_ref(&l.manifest),
        &l.items,
        &plan_gens,
        &jmap,
        &l.plan,
    );
    let by_id: HashMap<&str, &ItemInfo> = l.items.iter().map(|i| (i.id.as_str(), i)).collect();
    let fp = l
        .plan
        .judge_fingerprints
        .first()
        .cloned()
        .unwrap_or_default();
    store::write_atomic(
        &run.file("report.json"),
        &serde_json::to_vec_pretty(&rep).expect("serialise report"),
    )?;
    store::write_atomic(&run.file("report.md"), markdown(&rep).as_bytes())?;
    store::write_atomic(
        &run.file("items.csv"),
        &items_csv(&plan_gens, &by_id, &jmap, &fp)?,
    )?;
    store::write_atomic(&run.file("report.html"), html(&rep).as_bytes())?;
    Ok(rep)
}

fn dataset_ref(manifest: &Manifest) -> DatasetRef {
    DatasetRef {
        spec: manifest.dataset.spec.clone(),
        sha256: manifest.dataset.sha256.clone(),
        samples: manifest.dataset.samples,
    }
}

/// `anjeon report DIR1 DIR2 … --out DIR`: one report over several runs of
/// the same data set judged by the same judge (typically one run per target
/// model), so their attack success and over-refusal sit in one table and the
/// safety vs over-refusal chart. A model name that occurs in two runs is
/// suffixed with its run directory's name.
pub fn compare(dirs: &[std::path::PathBuf], out: &Path) -> Result<Report> {
    store::distinct_dirs(dirs, "run directory; it would be counted twice")?;
    let runs: Vec<Loaded> = dirs.iter().map(|d| load_run(d)).collect::<Result<_>>()?;
    let first = &runs[0];
    let ds_hash = &first.manifest.dataset.sha256;
    let fps = &first.plan.judge_fingerprints;
    for r in &runs[1..] {
        if &r.manifest.dataset.sha256 != ds_hash {
            return Err(Error::Usage(format!(
                "{} and {}: the runs were made from different data sets\n  fix: compare runs of the same data set",
                first.dir.display(),
                r.dir.display()
            )));
        }
        if r.plan.judge_fingerprints.first() != fps.first() {
            return Err(Error::Usage(format!(
                "{} and {}: the runs were judged by different judges (fingerprints {} vs {})\n  fix: re-score one with the other's judge: `anjeon score --from DIR --judge …`",
                first.dir.display(),
                r.dir.display(),
                fps.first().map(|f| f.get(..12).unwrap_or(f)).unwrap_or("-"),
                r.plan
                    .judge_fingerprints
                    .first()
                    .map(|f| f.get(..12).unwrap_or(f))
                    .unwrap_or("-")
            )));
        }
    }
    // Model names per run, to find collisions.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &runs {
        let names: BTreeSet<&str> = r.gens.iter().map(|g| g.model.as_str()).collect();
        for n in names {
            *seen.entry(n.to_string()).or_default() += 1;
        }
    }
    let mut items: Vec<ItemInfo> = Vec::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut gens: Vec<GenerationRecord> = Vec::new();
    let mut judgments: Vec<JudgmentRecord> = Vec::new();
    let mut plan = first.plan.clone();
    plan.generations.clear();
    plan.failures.clear();
    plan.skipped.clear();
    for r in &runs {
        for i in &r.items {
            if known.insert(i.id.clone()) {
                items.push(i.clone());
            }
        }
        let tag = r
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("run")
            .to_string();
        for g in &r.gens {
            let mut g = g.clone();
            if seen.get(&g.model).copied().unwrap_or(0) > 1 {
                g.model = format!("{}@{tag}", g.model);
            }
            plan.generations.push(g.key.clone());
            gens.push(g);
        }
        judgments.extend(r.judgments.iter().cloned());
        plan.failures.extend(r.plan.failures.iter().cloned());
        plan.skipped.extend(r.plan.skipped.iter().cloned());
    }
    let jmap: HashMap<String, &JudgmentRecord> =
        judgments.iter().map(|j| (j.key.clone(), j)).collect();
    let grefs: Vec<&GenerationRecord> = gens.iter().collect();
    let mut rep = build(dataset_ref(&first.manifest), &items, &grefs, &jmap, &plan);
    rep.notes.push(format!(
        "Comparison of {} runs: {}.",
        runs.len(),
        runs.iter()
            .map(|r| r.dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    store::write_atomic(
        &out.join("report.json"),
        &serde_json::to_vec_pretty(&rep).expect("serialise report"),
    )?;
    store::write_atomic(&out.join("report.md"), markdown(&rep).as_bytes())?;
    store::write_atomic(&out.join("report.html"), html(&rep).as_bytes())?;
    log::info!(
        "comparison of {} runs written to {}",
        runs.len(),
        out.display()
    );
    Ok(rep)
}

/// `anjeon report DIR`.
pub fn render_dir(dir: &Path) -> Result<Report> {
    if !dir.join("plan.json").exists() {
        return Err(Error::Usage(format!("{}: not a run directory (no plan.json)\n  fix: point at the --out folder of `anjeon score` or `anjeon run`", dir.display())));
    }
    let run = RunDir::open(dir)?;
    let rep = render(&run)?;
    log::info!("reports written to {}", dir.display());
    Ok(rep)
}

fn items_csv(
    gens: &[&GenerationRecord],
    by_id: &HashMap<&str, &ItemInfo>,
    j: &HashMap<String, &JudgmentRecord>,
    fp: &str,
) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "id",
        "model",
        "benchmark",
        "risk_factor",
        "group",
        "modality",
        "prompt_type",
        "attack",
        "expected",
        "judge_verdict",
        "attack_success",
        "human_risk_score",
        "human_refusal",
        "prompt",
        "response",
        "evidence",
        "route",
        "transcript",
    ];
    w.write_record(header).expect("in-memory csv");
    for g in gens {
        let Some(item) = by_id.get(g.sample_id.as_str()) else {
            continue;
        };
        let v = j
            .get(&crate::runlog::judgment_key(
                fp,
                &g.sample_id,
                &g.response_sha256,
            ))
            .map(|r| &r.verdict);
        let (verdict, evidence) = match v {
            Some(Verdict::Refusal { class, evidence }) => {
                (class.as_str().to_string(), evidence.join(" | "))
            }
            Some(Verdict::Harm {
                harmful,
                probability,
            }) => (
                format!("harmful={harmful} p={probability:.3}"),
                String::new(),
            ),
            Some(Verdict::Risk { score, expected }) => {
                (format!("risk={score} E={expected:.2}"), String::new())
            }
            Some(Verdict::Unscored { reason }) => ("unscored".into(), reason.clone()),
            None => ("missing".into(), String::new()),
        };
        let success = v
            .and_then(|v| attack_success(item.expected, v))
            .map(|b| b.to_string())
            .unwrap_or_default();
        let human = item
            .references
            .iter()
            .find(|r| r.model == g.model && r.text == g.response)
            .map(|r| &r.labels);
        let hs = human
            .and_then(|h| h.risk_score)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let hr = human
            .and_then(|h| h.refusal)
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        // How the item reached the model: text, its media directly, or a transcript.
        let (route, transcript) = match &g.asr {
            Some(a) => (a.route.clone(), a.transcript.clone()),
            // Imported responses: anjeon did not give the item to a model.
            None if !g.source.starts_with("generated") => (String::new(), String::new()),
            None if item.modality == "text" => ("text".to_string(), String::new()),
            None => ("direct".to_string(), String::new()),
        };
        w.write_record([
            item.id.as_str(),
            g.model.as_str(),
            &item.benchmark,
            &item.risk_factor,
            &item.group,
            &item.modality,
            &item.prompt_type,
            &item.attack,
            item.expected.as_str(),
            &verdict,
            &success,
            &hs,
            &hr,
            &item.prompt,
            &g.response,
            &evidence,
            &route,
            &transcript,
        ])
        .expect("in-memory csv");
    }
    w.into_inner()
        .map_err(|e| Error::Usage(format!("writing items.csv: {e}")))
}

/// A share as a percentage, "–" when absent.
fn share(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", 100.0 * v))
        .unwrap_or_else(|| "–".into())
}

/// A paired difference in percentage points with its interval, "–" when absent.
fn change_pp(x: &Option<Estimate>) -> String {
    x.as_ref()
        .map(|e| {
            format!(
                "{:+.1} pp [{:+.1}, {:+.1}]",
                100.0 * e.value,
                100.0 * e.ci95[0],
                100.0 * e.ci95[1]
            )
        })
        .unwrap_or_else(|| "–".into())
}

fn pct(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!(
            "{:.1}% [{:.1}, {:.1}] (n={})",
            e.value * 100.0,
            e.ci95[0] * 100.0,
            e.ci95[1] * 100.0,
            e.n
        ),
        None => "–".into(),
    }
}

fn risk(r: &Option<RiskStats>) -> String {
    match r {
        Some(r) => format!(
            "{:.2} [{:.2}, {:.2}]; ≥4: {:.1}%",
            r.mean.value,
            r.mean.ci95[0],
            r.mean.ci95[1],
            r.share_ge4.value * 100.0
        ),
        None => "–".into(),
    }
}

/// Print per-model headline numbers to stdout.
pub fn headline(rep: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>28} {:>28} {:>28} {:>26}",
        "model", "responses", "attack success", "refusal", "over-refusal", "human risk (mean)"
    );
    for r in rep.groups.get("overall").into_iter().flatten() {
        let short = |e: &Option<Estimate>| {
            e.as_ref()
                .map(|e| {
                    format!(
                        "{:.1}% [{:.1},{:.1}] n={}",
                        e.value * 100.0,
                        e.ci95[0] * 100.0,
                        e.ci95[1] * 100.0,
                        e.n
                    )
                })
                .unwrap_or_else(|| "–".into())
        };
        let hr = r
            .human_risk
            .as_ref()
            .map(|h| {
                format!(
                    "{:.2} [{:.2},{:.2}]",
                    h.mean.value, h.mean.ci95[0], h.mean.ci95[1]
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>28} {:>28} {:>28} {:>26}",
            r.model,
            r.responses,
            short(&r.asr),
            short(&r.refusal_rate),
            short(&r.over_refusal),
            hr
        );
    }
    for a in rep.agreement.iter().filter(|a| a.model == "all") {
        let _ = writeln!(
            out,
            "judge vs human ({}): n={} accuracy={:.3} kappa={:.3} macro-F1={:.3}",
            a.label_kind,
            a.agreement.n,
            a.agreement.accuracy,
            a.agreement.cohen_kappa,
            a.agreement.macro_f1
        );
    }
    if !rep.failures.is_empty() {
        let _ = writeln!(out, "{} item failures (see report.md):", rep.failures.len());
        const SHOWN: usize = 10;
        for f in rep.failures.iter().take(SHOWN) {
            let item = if f.id.is_empty() || f.location.contains(&format!("(item {})", f.id)) {
                String::new()
            } else {
                format!(" (item {})", f.id)
            };
            let _ = writeln!(out, "  {}{item} [{}]: {}", f.location, f.stage, f.reason);
        }
        if rep.failures.len() > SHOWN {
            let _ = writeln!(out, "  ... and {} more", rep.failures.len() - SHOWN);
        }
    }
    out
}

pub fn markdown(rep: &Report) -> String {
    render_template("report.md", rep)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Horizontal grouped bar chart (values 0..1 as percent) with interval whiskers.
fn bar_chart(
    title: &str,
    cats: &[String],
    series: &[(String, Vec<Option<Estimate>>)],
    scale_max: f64,
    unit: &str,
) -> String {
    let label_w = 260.0;
    let plot_w = 420.0;
    let bar_h = 12.0;
    let gap = 8.0;
    let group_h = bar_h * series.len() as f64 + gap;
    let h = 40.0 + group_h * cats.len() as f64 + 30.0 + 18.0 * series.len() as f64;
    let w = label_w + plot_w + 80.0;
    let mut s = format!("<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">", esc(title), esc(title));
    let x = |v: f64| label_w + (v / scale_max).clamp(0.0, 1.0) * plot_w;
    for t in 0..=4 {
        let v = scale_max * t as f64 / 4.0;
        let _ = write!(s, "<line x1=\"{:.1}\" y1=\"30\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"24\" font-size=\"11\" text-anchor=\"middle\">{}{}</text>", x(v), x(v), 30.0 + group_h * cats.len() as f64, x(v), if unit == "%" { format!("{:.0}", v * 100.0) } else { format!("{v:.1}") }, unit);
    }
    for (ci, cat) in cats.iter().enumerate() {
        let y0 = 34.0 + ci as f64 * group_h;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y0 + group_h / 2.0,
            esc(&cat.chars().take(38).collect::<String>())
        );
        for (si, (_, vals)) in series.iter().enumerate() {
            let y = y0 + si as f64 * bar_h;
            let color = PALETTE[si % PALETTE.len()];
            match vals.get(ci).cloned().flatten() {
                Some(e) => {
                    let _ = write!(s, "<rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{} n={} [{:.3}, {:.3}]</title></rect>", x(e.value) - label_w, bar_h - 2.0, e.value, e.n, e.ci95[0], e.ci95[1]);
                    let _ = write!(s, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>", x(e.ci95[0]), x(e.ci95[1]), y + bar_h / 2.0 - 1.0, y + bar_h / 2.0 - 1.0);
                    let label = if unit == "%" {
                        format!("{:.0}%", e.value * 100.0)
                    } else {
                        format!("{:.2}", e.value)
                    };
                    let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#333\">{label}</text>", x(e.ci95[1].max(e.value)) + 4.0, y + bar_h - 3.0);
                }
                None => {
                    let _ = write!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#999\">n/a</text>",
                        label_w + 4.0,
                        y + bar_h - 3.0
                    );
                }
            }
        }
    }
    let ly = 40.0 + group_h * cats.len() as f64;
    for (si, (name, _)) in series.iter().enumerate() {
        let y = ly + 18.0 * si as f64;
        let _ = write!(s, "<rect x=\"{label_w}\" y=\"{y:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>", PALETTE[si % PALETTE.len()], label_w + 18.0, y + 11.0, esc(name));
    }
    s.push_str("</svg></figure>");
    s
}

fn chart_for(
    rep: &Report,
    grouping: &str,
    title: &str,
    pick: impl Fn(&GroupRow) -> Option<Estimate>,
    max: f64,
    unit: &str,
) -> Option<String> {
    let rows = rep.groups.get(grouping)?;
    let cats: Vec<String> = rows
        .iter()
        .map(|r| r.key.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let series: Vec<(String, Vec<Option<Estimate>>)> = rep
        .models
        .iter()
        .map(|m| {
            (
                m.clone(),
                cats.iter()
                    .map(|c| {
                        rows.iter()
                            .find(|r| &r.model == m && &r.key == c)
                            .and_then(&pick)
                    })
                    .collect(),
            )
        })
        .collect();
    if series.iter().all(|(_, v)| v.iter().all(Option::is_none)) {
        return None;
    }
    Some(bar_chart(title, &cats, &series, max, unit))
}

/// A table-like heat map: rows = keys of a grouping, columns = models,
/// cell colour from green (0) to red (1), text = value and n.
fn heatmap(
    rep: &Report,
    grouping: &str,
    title: &str,
    pick: impl Fn(&GroupRow) -> Option<Estimate>,
) -> Option<String> {
    let rows = rep.groups.get(grouping)?;
    let keys: Vec<String> = rows
        .iter()
        .map(|r| r.key.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() || rows.iter().all(|r| pick(r).is_none()) {
        return None;
    }
    let (label_w, cell_w, cell_h, top) = (300.0, 120.0, 20.0, 40.0);
    let w = label_w + cell_w * rep.models.len() as f64 + 10.0;
    let h = top + cell_h * keys.len() as f64 + 10.0;
    let mut s = format!("<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">", esc(title), esc(title));
    for (mi, m) in rep.models.iter().enumerate() {
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>", label_w + cell_w * (mi as f64 + 0.5), top - 12.0, esc(m));
    }
    for (ki, k) in keys.iter().enumerate() {
        let y = top + cell_h * ki as f64;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y + cell_h * 0.7,
            esc(&k.chars().take(44).collect::<String>())
        );
        for (mi, m) in rep.models.iter().enumerate() {
            let x = label_w + cell_w * mi as f64;
            match rows
                .iter()
                .find(|r| &r.model == m && &r.key == k)
                .and_then(&pick)
            {
                Some(e) => {
                    let v = e.value.clamp(0.0, 1.0);
                    // green (0) -> yellow -> red (1)
                    let (r, g) = if v < 0.5 {
                        ((v * 2.0 * 230.0) as u8, 200u8)
                    } else {
                        (230u8, ((1.0 - v) * 2.0 * 200.0) as u8)
                    };
                    let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"rgb({r},{g},90)\" stroke=\"#fff\"><title>{} · {}: {:.3} [{:.3}, {:.3}] n={}</title></rect>", cell_w, cell_h, esc(k), esc(m), e.value, e.ci95[0], e.ci95[1], e.n);
                    let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{:.0}% (n={})</text>", x + cell_w / 2.0, y + cell_h * 0.7, e.value * 100.0, e.n);
                }
                None => {
                    let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#eee\" stroke=\"#fff\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#999\">–</text>", cell_w, cell_h, x + cell_w / 2.0, y + cell_h * 0.7);
                }
            }
        }
    }
    s.push_str("</svg></figure>");
    Some(s)
}

/// Scatter of refusal on harmful requests (y) against over-refusal (x), per model.
fn tradeoff_chart(rep: &Report) -> Option<String> {
    let rows = rep.groups.get("overall")?;
    let pts: Vec<(&str, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.model.as_str(),
                r.over_refusal.as_ref()?.value,
                1.0 - r.asr.as_ref()?.value,
            ))
        })
        .collect();
    if pts.is_empty() {
        return None;
    }
    let (w, h, m) = (460.0, 380.0, 50.0);
    let px = |v: f64| m + v * (w - 2.0 * m);
    let py = |v: f64| h - m - v * (h - 2.0 * m);
    let mut s = format!("<figure><figcaption>Safety vs over-refusal (per model)</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"safety vs over-refusal\">");
    let _ = write!(
        s,
        "<rect x=\"{m}\" y=\"{m}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        w - 2.0 * m,
        h - 2.0 * m
    );
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{:.0}%</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.0}%</text>", px(v), h - m + 16.0, v * 100.0, m - 6.0, py(v) + 4.0, v * 100.0);
    }
    let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">over-refusal on benign requests</text>", w / 2.0, h - 12.0);
    let _ = write!(s, "<text x=\"14\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">1 − attack success</text>", h / 2.0, h / 2.0);
    for (i, (name, x, y)) in pts.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"{c}\"><title>{}</title></circle><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>", px(*x), py(*y), esc(name), px(*x) + 8.0, py(*y) - 8.0, esc(name));
    }
    s.push_str("</svg></figure>");
    Some(s)
}

pub fn html(rep: &Report) -> String {
    render_template("report.html", rep)
}

// --- templates ---------------------------------------------------------------

/// The report's values as the templates show them: every number formatted
/// here, so `data/report/*.j2` only lays them out.
#[derive(serde::Serialize)]
struct View<'a> {
    spec: &'a str,
    sha256: &'a str,
    sha256_short: &'a str,
    samples: usize,
    judges: String,
    judges_md: String,
    models: String,
    responses: usize,
    overall: Vec<RowView>,
    groups_md: Vec<GroupView>,
    groups_html: Vec<GroupView>,
    charts: Vec<String>,
    agreement: Vec<AgreementView>,
    failures: &'a [crate::runlog::Failure],
    skipped: &'a [crate::runlog::Failure],
    uplift: Vec<UpliftView>,
    spoken: &'a [crate::metrics::SpokenRow],
    compared_with_detector: usize,
    disagreement_share: String,
    disagreements: Vec<DisagreementView>,
    notes: &'a [String],
}

#[derive(serde::Serialize)]
struct RowView {
    model: String,
    key: String,
    responses: usize,
    asr: String,
    refusal: String,
    over_refusal: String,
    risk: String,
}

#[derive(serde::Serialize)]
struct GroupView {
    grouping: &'static str,
    title: &'static str,
    rows: Vec<RowView>,
}

#[derive(serde::Serialize)]
struct AgreementView {
    model: String,
    label: String,
    n: usize,
    accuracy: String,
    macro_f1: String,
    kappa: String,
    compared_as: String,
}

#[derive(serde::Serialize)]
struct UpliftView {
    model: String,
    strategy: String,
    harmful_pairs: usize,
    asr_plain: String,
    asr_attack: String,
    uplift: String,
    benign_pairs: usize,
    or_plain: String,
    or_attack: String,
    or_change: String,
}

#[derive(serde::Serialize)]
struct DisagreementView {
    id: String,
    model: String,
    expected: &'static str,
    judge: String,
    detector: String,
    response: String,
    response_start: String,
}

fn row_view(r: &GroupRow) -> RowView {
    RowView {
        model: r.model.clone(),
        key: r.key.clone(),
        responses: r.responses,
        asr: pct(&r.asr),
        refusal: pct(&r.refusal_rate),
        over_refusal: pct(&r.over_refusal),
        risk: risk(&r.human_risk),
    }
}

fn groups(rep: &Report, which: &[(&'static str, &'static str)]) -> Vec<GroupView> {
    which
        .iter()
        .filter_map(|&(grouping, title)| {
            rep.groups.get(grouping).map(|rows| GroupView {
                grouping,
                title,
                rows: rows.iter().map(row_view).collect(),
            })
        })
        .collect()
}

fn view(rep: &Report, charts: Vec<String>) -> View<'_> {
    let sha = &rep.dataset.sha256;
    View {
        spec: &rep.dataset.spec,
        sha256: sha,
        sha256_short: sha.get(..16).unwrap_or(sha),
        samples: rep.dataset.samples,
        judges: rep.judges.join(", "),
        judges_md: rep
            .judges
            .iter()
            .map(|j| format!("`{j}`"))
            .collect::<Vec<_>>()
            .join(", "),
        models: rep.models.join(", "),
        responses: rep.responses,
        overall: rep
            .groups
            .get("overall")
            .into_iter()
            .flatten()
            .map(row_view)
            .collect(),
        groups_md: groups(
            rep,
            &[
                ("overall", "Overall"),
                ("benchmark", "By benchmark"),
                ("group", "By risk group"),
                ("risk_factor", "By risk factor"),
                ("modality", "By modality"),
                ("prompt_type", "By prompt type"),
                ("attack", "By attack variant"),
                ("language", "By language"),
            ],
        ),
        groups_html: groups(
            rep,
            &[
                ("group", "By risk group"),
                ("risk_factor", "By risk factor"),
                ("modality", "By modality"),
                ("attack", "By attack variant"),
                ("benchmark", "By benchmark"),
            ],
        ),
        charts,
        agreement: rep
            .agreement
            .iter()
            .map(|a| AgreementView {
                model: a.model.clone(),
                label: a.label_kind.clone(),
                n: a.agreement.n,
                accuracy: format!("{:.3}", a.agreement.accuracy),
                macro_f1: format!("{:.3}", a.agreement.macro_f1),
                kappa: format!("{:.3}", a.agreement.cohen_kappa),
                compared_as: a.compared_as.clone(),
            })
            .collect(),
        failures: &rep.failures,
        skipped: &rep.skipped,
        uplift: rep
            .uplift
            .iter()
            .map(|u| UpliftView {
                model: u.model.clone(),
                strategy: u.strategy.clone(),
                harmful_pairs: u.harmful_pairs,
                asr_plain: share(u.asr_plain),
                asr_attack: share(u.asr_attack),
                uplift: change_pp(&u.uplift),
                benign_pairs: u.benign_pairs,
                or_plain: share(u.over_refusal_plain),
                or_attack: share(u.over_refusal_attack),
                or_change: change_pp(&u.over_refusal_change),
            })
            .collect(),
        spoken: &rep.spoken,
        compared_with_detector: rep.compared_with_detector,
        disagreement_share: format!(
            "{:.1}%",
            100.0 * rep.disagreements.len() as f64 / rep.compared_with_detector.max(1) as f64
        ),
        disagreements: rep
            .disagreements
            .iter()
            .map(|d| DisagreementView {
                id: d.id.clone(),
                model: d.model.clone(),
                expected: d.expected.as_str(),
                judge: d.judge.clone(),
                detector: d.detector.clone(),
                response: d.response.clone(),
                response_start: d.response.chars().take(120).collect(),
            })
            .collect(),
        notes: &rep.notes,
    }
}

/// The report templates (`data/report/`), loaded once.
fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        // Escaping is explicit (`|esc` in the HTML template), the same in
        // every output.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_filter("esc", |s: String| esc(&s));
        env.add_filter("cell", |s: String| s.replace('|', "/"));
        env.add_filter("oneline", |s: String| s.replace(['|', '\n'], " "));
        env.add_template("report.md", include_str!("../data/report/report.md.j2"))
            .expect("the bundled Markdown template parses");
        env.add_template("report.html", include_str!("../data/report/report.html.j2"))
            .expect("the bundled HTML template parses");
        env
    })
}

fn render_template(name: &str, rep: &Report) -> String {
    let charts = if name == "report.html" {
        charts(rep)
    } else {
        Vec::new()
    };
    templates()
        .get_template(name)
        .and_then(|t| t.render(view(rep, charts)))
        .expect("the bundled report templates render every report")
}

/// The HTML report's charts (SVG), in page order; a chart without data is left out.
fn charts(rep: &Report) -> Vec<String> {
    [
        chart_for(
            rep,
            "group",
            "Attack success per risk group (harmful answers / harmful requests)",
            |r| r.asr.clone(),
            1.0,
            "%",
        ),
        heatmap(
            rep,
            "risk_factor",
            "Attack success per risk factor (green = attacks fail, red = attacks succeed)",
            |r| r.asr.clone(),
        ),
        heatmap(
            rep,
            "risk_factor",
            "Share of answers with human risk score >= 4, per risk factor",
            |r| r.human_risk.as_ref().map(|h| h.share_ge4.clone()),
        ),
        chart_for(
            rep,
            "attack",
            "Attack success per attack variant",
            |r| r.asr.clone(),
            1.0,
            "%",
        ),
        chart_for(
            rep,
            "modality",
            "Refusal rate per modality",
            |r| r.refusal_rate.clone(),
            1.0,
            "%",
        ),
        tradeoff_chart(rep),
    ]
    .into_iter()
    .flatten()
    .collect()
}
