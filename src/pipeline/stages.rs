//! Steps shared by `run`, `score` and `merge`: reading the data set with
//! its problems as failures, the items' snapshot, judging the planned
//! responses (reusing stored judgments) and writing the plan and reports,
//! and writing the manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::core::error::{Error, Result};
use crate::core::sample::Sample;
use crate::dataset;
use crate::judge::Judge;
use crate::report;
use crate::runlog::manifest::{
    file_info, short, Config, DatasetInfo, Invocation, JudgeInfo, Manifest, ResponsesInfo, SCHEMA,
};
use crate::runlog::store::{self, RunDir};
use crate::runlog::{
    judgment_key, Failure, GenerationRecord, ItemInfo, JudgmentRecord, Plan, Shard,
};

/// What a `run`, `score` or `merge` did: the report it wrote, the items
/// that failed (listed in the report), judgments made now and reused.
pub struct Outcome {
    pub report: crate::metrics::Report,
    pub failures: usize,
    pub judged: usize,
    pub reused: usize,
}

/// Whether a record (item id, or a location when it has none) is the
/// shard's: attack variants and their failures go with the base item.
pub(crate) fn owned_by(
    sh: &Shard,
    by_id: &HashMap<&str, &Sample>,
    id: &str,
    location: &str,
) -> bool {
    let key = match by_id.get(id).map(|s| &s.variant) {
        Some(crate::core::sample::Variant::Attack { base_id, .. }) => base_id.as_str(),
        Some(_) => id,
        None => match id.split_once('~') {
            Some((base, _)) if by_id.contains_key(base) => base,
            _ if id.is_empty() => location,
            _ => id,
        },
    };
    sh.owns(key)
}

/// Load the data set of a run: its read problems become item failures, and
/// media paths are checked against the canonical data set folder.
pub(crate) fn load_dataset(
    spec: &str,
    opts: &dataset::ReadOptions,
) -> Result<(dataset::Dataset, Vec<Failure>, PathBuf)> {
    let ds = dataset::load(spec, opts)?;
    if ds.samples.is_empty() {
        let first = ds
            .problems
            .first()
            .map(|p| format!("{}: {}", p.location, p.message))
            .unwrap_or_default();
        return Err(Error::Usage(format!(
            "{spec}: none of the data set's items could be read ({} problems; the first: {first})\n  fix: run `anjeon data validate {spec}` to list them all",
            ds.problems.len()
        )));
    }
    let failures = ds
        .problems
        .iter()
        .map(|p| Failure {
            location: p.location.clone(),
            id: String::new(),
            stage: "dataset".into(),
            reason: p.message.clone(),
        })
        .collect();
    let root = ds.canonical_root()?;
    Ok((ds, failures, root))
}

/// Record a judge and the invocation in an existing manifest.
pub(crate) fn add_judge_to_manifest(run: &RunDir, judge: &Judge) -> Result<()> {
    let path = run.file("manifest.json");
    let mut m = Manifest::read(&path)?;
    m.push_invocation();
    let info = judge_info(judge);
    if !m.judges.contains(&info) {
        m.judges.push(info);
    }
    m.write(&path)
}

pub(crate) fn judge_info(judge: &Judge) -> JudgeInfo {
    let model = match judge {
        Judge::Model(m) => Some(serde_json::json!({
            "name": m.model.name,
            "architecture": m.model.architecture,
            "fingerprint": m.model.fingerprint(),
            "files": m.model.files.iter().map(|(p, h)| serde_json::json!({"path": p.display().to_string(), "sha256": h})).collect::<Vec<_>>(),
            "chat_template": {"origin": m.model.template.origin, "sha256": m.model.template.hash()},
            "rubrics": m.rubrics().iter().map(|r| serde_json::json!({"id": r.id(), "file": r.origin, "sha256": r.sha256, "labels": r.labels})).collect::<Vec<_>>(),
            "max_response_tokens": m.max_response_tokens,
        })),
        Judge::Head(h) | Judge::Ensemble(h, _) => Some(serde_json::json!({
            "embedder": {"path": h.embedder.dir.display().to_string(), "sha256": h.embedder.sha256},
            "heads": h.heads.iter().map(|x| serde_json::json!({"name": x.spec.name, "task": x.spec.task, "sha256": x.sha256, "layout": x.spec.layout, "max_tokens": x.spec.max_tokens, "temperature": x.spec.temperature, "threshold": x.spec.threshold})).collect::<Vec<_>>(),
            "ensemble_detector_weight": matches!(judge, Judge::Ensemble(..)).then_some(crate::judge::ENSEMBLE_DETECTOR_WEIGHT),
        })),
        Judge::Refusal(_) => None,
    };
    JudgeInfo {
        name: judge.name(),
        fingerprint: judge.fingerprint(),
        prompt_sha256: judge.prompt_sha256(),
        model,
    }
}

/// Snapshot of the items (deterministic: data set order, then attack
/// variants) for re-reporting.
pub(crate) fn write_snapshot(
    run: &RunDir,
    ds: &dataset::Dataset,
    variants: &[Sample],
    root: &Path,
) -> Result<()> {
    let mut snap = Vec::new();
    for s in ds.samples.iter().chain(variants) {
        serde_json::to_writer(&mut snap, &ItemInfo::of(s, root)).expect("serialise item");
        snap.push(b'\n');
    }
    store::write_atomic(&run.file("samples.jsonl"), &snap)
}

/// Judge the planned generations (reusing stored judgments), write
/// `plan.json` and the reports, print the headline.
pub(crate) fn judge_and_report(
    run: &RunDir,
    by_id: &HashMap<&str, &Sample>,
    judge: &mut Judge,
    (plan_keys, order): (Vec<String>, Vec<u64>),
    mut failures: Vec<Failure>,
    skipped: Vec<Failure>,
    seed: u64,
) -> Result<Outcome> {
    let gens = run.stage::<GenerationRecord>("generations.jsonl")?;
    let mut judgments = run.stage::<JudgmentRecord>("judgments.jsonl")?;
    if gens.repaired_torn_tail || judgments.repaired_torn_tail {
        log::info!(
            "note: a torn record from an interrupted run was dropped and will be recomputed"
        );
    }
    let fp = judge.fingerprint();
    let mut detector = Judge::Refusal(crate::judge::refusal::RefusalDetector::new());
    let dfp = detector.fingerprint();
    let mut fps = vec![fp.clone()];
    if dfp != fp {
        fps.push(dfp.clone());
    }
    let (mut judged, mut reused) = (0, 0);
    let pb = crate::core::progress::bar(plan_keys.len() as u64, "judging");
    let t0 = std::time::Instant::now();
    // Pending judgments go to the judge in chunks (a head judge embeds a
    // chunk in batches, a model judge packs its passes); each is appended as
    // soon as its chunk is judged.
    let chunk = judge.chunk();
    let mut pending: Vec<(&GenerationRecord, &Sample, String, String)> = Vec::new();
    let flush = |pending: &mut Vec<(&GenerationRecord, &Sample, String, String)>,
                 judge: &mut Judge,
                 judgments: &mut store::Stage<JudgmentRecord>|
     -> Result<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let items: Vec<_> = pending
            .iter()
            .map(|(_, s, prompt, _)| crate::judge::model::Item::of(s, prompt))
            .collect();
        let pairs: Vec<_> = items
            .iter()
            .zip(pending.iter())
            .map(|(i, (g, ..))| (i, g.response.as_str()))
            .collect();
        let js = judge.judge_many(&pairs);
        let n = js.len();
        for ((g, _, _, jkey), j) in pending.drain(..).zip(js) {
            judgments.append(JudgmentRecord::of(g, judge, &fp, jkey, j))?;
        }
        Ok(n)
    };
    for k in &plan_keys {
        let Some(g) = gens.get(k) else {
            return Err(Error::Store {
                path: run.file("plan.json"),
                line: 1,
                msg: format!("the plan lists generation {k}, which generations.jsonl does not hold (an edited or mixed-up run directory)"),
            });
        };
        let Some(sample) = by_id.get(g.sample_id.as_str()) else {
            pb.inc(1);
            continue;
        };
        // A generated attack variant is judged against its base item's plain
        // request, not the wrapper, encoding or image pointer the target saw.
        let prompt = crate::attack::judged_request(sample, by_id);
        let item = crate::judge::model::Item::of(sample, &prompt);
        // The detector beside a model judge: cheap, always stored.
        let dkey = judgment_key(&dfp, &g.sample_id, &g.response_sha256);
        if dfp != fp && !judgments.contains(&dkey) {
            let j = detector.judge(&item, &g.response);
            judgments.append(JudgmentRecord::of(g, &detector, &dfp, dkey, j))?;
        }
        let jkey = judgment_key(&fp, &g.sample_id, &g.response_sha256);
        if judgments.contains(&jkey) || pending.iter().any(|p| p.3 == jkey) {
            reused += 1;
        } else {
            pending.push((g, sample, prompt, jkey));
            if pending.len() >= chunk {
                judged += flush(&mut pending, judge, &mut judgments)?;
            }
        }
        pb.inc(1);
    }
    judged += flush(&mut pending, judge, &mut judgments)?;
    pb.finish_and_clear();
    if judged > 0 && !matches!(judge, Judge::Model(_) | Judge::Refusal(_)) {
        let wall = t0.elapsed().as_secs_f64();
        log::info!(
            "judge {}: {judged} judgments in {wall:.1} s ({:.2} judgments/s)",
            judge.name(),
            judged as f64 / wall.max(1e-9)
        );
    }
    if let (Judge::Model(m), true) = (&*judge, judged > 0) {
        let st = &m.stats;
        let wall = t0.elapsed().as_secs_f64();
        log::info!(
            "model judge: {judged} judgments in {wall:.1} s ({:.2} judgments/s); rubric prefix {} tokens in {:.1} s ({:.0}% of judge time), items {} tokens computed + {} from the rubric cache in {:.1} s",
            judged as f64 / wall.max(1e-9),
            st.rubric_tokens,
            st.rubric_s,
            100.0 * st.rubric_s / (st.rubric_s + st.item_s).max(1e-9),
            st.item_tokens,
            st.cached_tokens,
            st.item_s
        );
    }
    judgments.sync()?;
    drop((gens, judgments));
    failures.sort();
    failures.dedup();
    // Sorted, so that shards merged by `anjeon merge` list them as one run does.
    let mut skipped = skipped;
    skipped.sort();
    skipped.dedup();
    let plan = Plan {
        judge_fingerprints: fps,
        generations: plan_keys,
        failures,
        skipped,
        seed,
        order,
    };
    store::write_atomic(
        &run.file("plan.json"),
        &serde_json::to_vec_pretty(&plan).expect("serialise plan"),
    )?;
    let rep = report::render(run)?;
    log::info!(
        "judged {} responses ({judged} judged now, {reused} reused from the store); reports in {}",
        plan.generations.len(),
        run.path.display()
    );
    Ok(Outcome {
        report: rep,
        failures: plan.failures.len(),
        judged,
        reused,
    })
}

/// Write or extend `manifest.json`: a new directory gets a full manifest; a
/// resumed one gets the invocation, judge and model appended. A directory
/// made from another data set is refused.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_manifest(
    run: &RunDir,
    ds: &dataset::Dataset,
    judge: &Judge,
    responses: ResponsesInfo,
    model: Option<serde_json::Value>,
    config: Config,
    seed: u64,
    shard: Option<Shard>,
) -> Result<()> {
    let path = run.file("manifest.json");
    let files = ds
        .files
        .iter()
        .map(|f| file_info(f))
        .collect::<Result<Vec<_>>>()?;
    let dataset = DatasetInfo {
        spec: ds.spec.clone(),
        sha256: ds.hash.clone(),
        files,
        samples: ds.samples.len(),
    };
    let judge_info = judge_info(judge);
    let invocation = Invocation::now();
    let manifest = match path.exists() {
        true => {
            let mut m = Manifest::read(&path)?;
            if m.dataset.sha256 != dataset.sha256 {
                return Err(Error::Usage(format!(
                    "{}: this run directory was made from another data set (sha256 {} vs {} now)\n  fix: use a new --out directory for a different data set",
                    run.path.display(),
                    m.dataset_short(),
                    short(&dataset.sha256)
                )));
            }
            if m.shard != shard {
                let show = |s: Option<Shard>| {
                    s.map_or("the whole data set".to_string(), |s| format!("shard {s}"))
                };
                return Err(Error::Usage(format!(
                    "{}: this run directory holds {}, not {}\n  fix: resume it with the same shard, or use a new --out directory",
                    run.path.display(),
                    show(m.shard),
                    show(shard)
                )));
            }
            m.invocations.push(invocation);
            if !m.judges.contains(&judge_info) {
                m.judges.push(judge_info);
            }
            if let Some(t) = model.filter(|t| !m.models.contains(t)) {
                m.models.push(t);
            }
            m.responses = responses;
            m
        }
        false => Manifest {
            schema: SCHEMA.into(),
            anjeon_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: option_env!("ANJEON_GIT_REV").unwrap_or("unknown").into(),
            created_at: invocation.at.clone(),
            invocations: vec![invocation],
            dataset,
            responses,
            models: model.into_iter().collect(),
            judges: vec![judge_info],
            config,
            seed,
            shard,
            merged_from: Vec::new(),
        },
    };
    manifest.write(&path)
}
