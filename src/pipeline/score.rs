//! `score`: judge responses that already exist (a JSONL file, or the data
//! set's own reference answers), or re-score a run directory (`--from`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Location, Result};
use crate::core::sample::Sample;
use crate::dataset;
use crate::judge::Judge;
use crate::runlog::manifest::{file_info, AttackSpec, Config, Manifest, ResponsesInfo};
use crate::runlog::store::{self, RunDir};
use crate::runlog::{read_plan, Failure, GenerationRecord, Shard};

use super::stages::*;

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

struct Response {
    sample_id: String,
    model: String,
    text: String,
    source: String,
}

/// The judge of a `score`: on the CPU, nothing fetched, exact file formats,
/// held to the run's `--max-context`.
fn load_judge(
    args: &ScoreSpec,
    limits: &crate::core::limits::Limits,
) -> Result<crate::judge::Judge> {
    args.judge.load(
        "cpu",
        false,
        crate::model::Requantize::Off,
        limits.max_context,
    )
}

fn read_responses(
    args: &ScoreSpec,
    responses: &str,
    samples: &HashMap<&str, &Sample>,
    failures: &mut Vec<Failure>,
) -> Result<Vec<Response>> {
    let path = Path::new(responses);
    let mut bad = Vec::new();
    let recs =
        crate::dataset::record::read_jsonl(path, &mut bad, args.read.limits.max_record_bytes())?;
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

pub fn score(args: &ScoreSpec) -> Result<Outcome> {
    if let Some(dir) = &args.from {
        return rescore(args, dir);
    }
    let shard = Shard::resolve(args.shard.as_deref(), args.shards, &|k| {
        std::env::var(k).ok()
    })?;
    let responses_arg = args.responses.clone().unwrap_or_default();
    let Some(out) = args.out.clone() else {
        return Err(Error::Usage(
            "score: no run directory\n  fix: pass --out DIR (or --from DIR to re-score a run)"
                .into(),
        ));
    };
    let opts = args.read.options()?;
    let (ds, mut failures, root) = load_dataset(&args.dataset, &opts)?;
    let mut judge = load_judge(args, &opts.limits)?;
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
        if let Some(m) = dataset::media_problem(s, &root, &opts.limits) {
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
    let mut judge = load_judge(args, &opts.limits)?;
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
        limits: opts.limits.clone(),
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
